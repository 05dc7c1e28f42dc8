//! The listing parsers on listings captured from the real test servers
//! (`tests/data/transcripts/`, bytes exactly as the servers sent them).

use std::fs;
use std::path::Path;

use ftpsfs::ftp::listing::{parse_listing, Entry, EntryKind, Listing, ListingFormat};

/// When the transcripts were captured (2026-11-27 08:00 UTC): "Nov 27 07:51" must land in 2026.
const CAPTURED_AT: i64 = 1_795_766_400;

fn parse(file: &str, format: ListingFormat) -> Listing {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/transcripts")
        .join(file);
    let body = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_listing(&body, format, CAPTURED_AT)
}

fn entry<'a>(listing: &'a Listing, name: &str) -> &'a Entry {
    listing
        .entries
        .iter()
        .find(|e| e.name == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn check_root(listing: &Listing, file: &str) {
    let names: Vec<String> = listing
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    for expected in [
        ".hidden",
        "SHA256SUMS",
        "dir1",
        "empty.txt",
        "large.bin",
        "link-to-small",
        "many",
        "medium.bin",
        "small.txt",
        "with space.txt",
        "ünïcödé-名前.txt",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{file}: {expected} missing from {names:?}"
        );
    }
    assert_eq!(listing.entries.len(), 11, "{file}: {names:?}");
    // Only "." and ".." may be skipped.
    for skipped in &listing.skipped {
        assert!(
            skipped.line.ends_with(b" .") || skipped.line.ends_with(b" .."),
            "{file}: skipped {:?}: {}",
            String::from_utf8_lossy(&skipped.line),
            skipped.reason
        );
    }
    assert_eq!(entry(listing, "large.bin").size, Some(64 * 1024 * 1024));
    assert_eq!(entry(listing, "large.bin").kind, EntryKind::File);
    assert_eq!(entry(listing, "empty.txt").size, Some(0));
    assert_eq!(entry(listing, "dir1").kind, EntryKind::Dir);
    assert_eq!(entry(listing, "link-to-small").kind, EntryKind::Symlink);
    let small = entry(listing, "small.txt");
    assert_eq!(small.size, Some(13));
    assert_eq!(small.mode, Some(0o644));
    // small.txt's mtime is fixed by scripts/servers.sh: 2020-01-02 03:04:05 UTC.
    let modified = small.modified.expect("mtime");
    assert_eq!(
        modified.unix_seconds - modified.unix_seconds % 86_400,
        1_577_934_245 - 1_577_934_245 % 86_400,
        "{file}"
    );
}

#[test]
fn vsftpd_list() {
    let listing = parse("vsftpd-list-a-root.txt", ListingFormat::List);
    check_root(&listing, "vsftpd-list-a-root.txt");
    assert_eq!(
        entry(&listing, "link-to-small").link_target.as_deref(),
        Some(&b"small.txt"[..])
    );
}

#[test]
fn pureftpd_list() {
    let listing = parse("pureftpd-list-a-root.txt", ListingFormat::List);
    check_root(&listing, "pureftpd-list-a-root.txt");
}

#[test]
fn proftpd_list() {
    let listing = parse("proftpd-list-a-root.txt", ListingFormat::List);
    check_root(&listing, "proftpd-list-a-root.txt");
}

#[test]
fn proftpd_mlsd() {
    let listing = parse("proftpd-mlsd-root.txt", ListingFormat::Mlsd);
    check_root(&listing, "proftpd-mlsd-root.txt");
    let small = entry(&listing, "small.txt");
    assert_eq!(small.modified.map(|t| t.unix_seconds), Some(1_577_934_245));
}

#[test]
fn pureftpd_mlsd() {
    let listing = parse("pureftpd-mlsd-root.txt", ListingFormat::Mlsd);
    check_root(&listing, "pureftpd-mlsd-root.txt");
}

#[test]
fn nested_directories() {
    for (file, format) in [
        ("vsftpd-list-a-dir1.txt", ListingFormat::List),
        ("proftpd-mlsd-dir1.txt", ListingFormat::Mlsd),
        ("pureftpd-mlsd-dir1.txt", ListingFormat::Mlsd),
    ] {
        let listing = parse(file, format);
        assert_eq!(listing.entries.len(), 1, "{file}");
        assert_eq!(listing.entries[0].name, b"dir2");
        assert_eq!(listing.entries[0].kind, EntryKind::Dir);
    }
}
