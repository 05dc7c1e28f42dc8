//! EPSV (229) and PASV (227) reply parsers.
#![no_main]

use ftpsfs::ftp::passive::{parse_epsv, parse_pasv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(port) = parse_epsv(&text) {
        assert_ne!(port, 0);
    }
    if let Ok((_, port)) = parse_pasv(&text) {
        assert_ne!(port, 0);
    }
});
