//! Reply parser: any bytes, split into lines as the control connection would.
#![no_main]

use ftpsfs::ftp::features::Features;
use ftpsfs::ftp::reply::ReplyParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parser = ReplyParser::default();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match parser.push_line(line) {
            Ok(Some(reply)) => {
                let _ = reply.to_string();
                let _ = Features::from_reply(&reply);
            }
            Ok(None) => {}
            Err(_) => parser = ReplyParser::default(),
        }
    }
});
