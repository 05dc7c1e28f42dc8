//! Memory of a long-lived mount: a walk over a million entries (the strict server makes
//! the tree up as it is listed) stays under a stated bound, and a second walk, after the
//! kernel dropped its caches and forgot the inodes, does not raise it.
//!
//! Needs root (drop_caches), /dev/fuse and fusermount3, and the test certificates and
//! credentials of `scripts/servers.sh start` (the servers themselves need not run).

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::mount::{scratch_dir, MountConfig, Mounted};
use common::{Server, Tls};

/// The bound on the mount's resident memory during and after the walk. The kernel holds
/// an inode for every entry it was shown until memory pressure or drop_caches evicts it,
/// and ftpsfs must keep a number for each of those (about 250 bytes); listings are capped
/// at 250,000 names (fs/dircache.rs).
const RSS_BOUND_MIB: u64 = 512;

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `find` over the tree; returns the number of paths it printed.
fn walk(m: &Mounted) -> usize {
    let out = Command::new("find")
        .arg(m.join("synthetic"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "find failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

#[test]
fn a_million_entry_walk_stays_bounded() {
    let root = scratch_dir("synthetic-tree");
    fs::create_dir(root.join("synthetic")).unwrap();
    let server = common::strict_server_for(&root);
    // 100 directories of 100 directories of 100 files: 1,010,100 entries.
    server.set_synthetic_tree(Some([100, 100, 100]));
    // More connections than the default list more directories ahead at once: the walk
    // waits on 10,100 listings.
    let m = Mounted::with(
        MountConfig::new(Server::External, Tls::V13)
            .port(server.port())
            .option("timeout=20,connections=12"),
    );
    let expected = 1 + 100 + 100 * 100 + 100 * 100 * 100;
    let before = rss_kib(m.pid());

    let started = Instant::now();
    assert_eq!(walk(&m), expected);
    let first = rss_kib(m.pid());
    let first_took = started.elapsed();

    // What memory pressure does: the kernel drops its dentries and inodes, and forgets
    // them; ftpsfs lets their numbers go.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let started = Instant::now();
    assert_eq!(walk(&m), expected);
    let second = rss_kib(m.pid());
    let second_took = started.elapsed();

    println!(
        "MEMORY million-entry walk: RSS {} MiB before, {} MiB after the first walk ({:.1} s), \
         {} MiB after the second ({:.1} s)",
        before / 1024,
        first / 1024,
        first_took.as_secs_f64(),
        second / 1024,
        second_took.as_secs_f64()
    );
    assert!(
        first / 1024 < RSS_BOUND_MIB && second / 1024 < RSS_BOUND_MIB,
        "RSS {} then {} MiB, over {RSS_BOUND_MIB} MiB",
        first / 1024,
        second / 1024
    );
    // Freed memory is reused, so the second walk needs no more than the first (allowing
    // the allocator's slack).
    assert!(
        second <= first + first / 10 + 16 * 1024,
        "the second walk raised RSS from {} to {} MiB",
        first / 1024,
        second / 1024
    );
    drop(m);
    let _ = fs::remove_dir_all(&root);
}
