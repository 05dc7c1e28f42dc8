//! LIST listings (Unix and DOS): no panic, and no entry whose name could escape its directory.
#![no_main]

use ftpsfs::ftp::listing::{parse_listing, parse_list_line, ListingFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = parse_list_line(line, 1_795_737_600);
    }
    let listing = parse_listing(data, ListingFormat::List, 1_795_737_600);
    for entry in &listing.entries {
        assert!(!entry.name.is_empty());
        assert!(entry.name != b"." && entry.name != b"..");
        assert!(!entry.name.contains(&b'/') && !entry.name.contains(&0));
    }
});
