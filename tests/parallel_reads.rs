//! Parallel ranged reads, in the filesystem layer over the in-process strict server:
//! a sequential reader whose one stream is held back by its connection (here a server
//! that limits each download's speed) gets disjoint ranges fetched on several
//! connections, assembled in order, never mixed across two versions of the file, and
//! whole even when one range's connection breaks.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use common::content;
use common::local::{LocalConfig, LocalFs};
use common::strict_server::DropAt;
use ftpsfs::fs::meta::inode::ROOT_INODE;
use ftpsfs::fs::write::file::OpenMode;
use ftpsfs::fs::{FsError, FtpFs, ParallelReads};

const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
};
const MIB: u64 = 1 << 20;
/// Each download's speed: slow enough that a reader always waits for its stream.
const RATE: u64 = 24_000_000;

fn splitting_fs(max_readahead: u64) -> LocalFs {
    let local = LocalFs::with(LocalConfig {
        parallel_reads: ParallelReads::Always,
        max_readahead,
        cache_size: 128 * MIB,
        ..LocalConfig::default()
    });
    local.server.set_data_rate(Some(RATE));
    local
}

/// Reads `ino` from `from` in 256 KiB reads, in order, up to `to` or the first error.
async fn read_range(fs: &FtpFs, handle: u64, from: u64, to: u64) -> (Vec<u8>, Option<FsError>) {
    let mut out = Vec::new();
    while from + (out.len() as u64) < to {
        let want = (to - from - out.len() as u64).min(256 * 1024) as u32;
        match fs.read(handle, from + out.len() as u64, want).await {
            Ok(data) if data.is_empty() => break,
            Ok(data) => out.extend_from_slice(&data),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// The offsets of the ranged downloads the server received (REST), in order.
fn rest_offsets(commands: &[String]) -> Vec<u64> {
    commands
        .iter()
        .filter_map(|c| c.strip_prefix("REST "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_held_back_by_its_connection_gets_ranges_in_parallel_and_whole() {
    let local = splitting_fs(32 * MIB);
    let data = content(48 * MIB, 1);
    fs::write(local.on_server("big"), &data).unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"big").await.unwrap();
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    let (read, error) = read_range(&local.fs, opened.handle, 0, u64::MAX).await;
    local.fs.release(opened.handle).await;
    assert!(error.is_none(), "{error:?}");
    assert!(read == data, "the file read differs from the server's");

    let ranges = local.fs.stats().parallel_ranges;
    assert!(ranges >= 2, "ranges fetched in parallel: {ranges}");
    // Each range starts on a block, at least 8 MiB from the others, and no two start at
    // the same place: nothing was fetched twice.
    let mut starts: Vec<u64> = rest_offsets(&local.server.commands())
        .into_iter()
        .filter(|&offset| offset >= 8 * MIB)
        .collect();
    starts.sort_unstable();
    assert!(starts.len() >= 2, "ranged downloads: {starts:?}");
    assert!(starts.iter().all(|s| s % MIB == 0), "{starts:?}");
    assert!(
        starts.windows(2).all(|w| w[1] - w[0] >= 8 * MIB),
        "ranges shorter than 8 MiB: {starts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_ranges_never_mix_two_versions_of_a_file() {
    // A 16 MiB budget: the ranges cannot run more than 16 MiB ahead of the reader, so
    // most of the file is fetched after it changes.
    let local = splitting_fs(16 * MIB);
    let old = content(64 * MIB, 2);
    fs::write(local.on_server("changing"), &old).unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"changing").await.unwrap();
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    let (first, error) = read_range(&local.fs, opened.handle, 0, 12 * MIB).await;
    assert!(error.is_none(), "{error:?}");
    let split = rest_offsets(&local.server.commands());
    assert!(
        split.iter().any(|&offset| offset >= 8 * MIB),
        "no parallel range before the change: {split:?}"
    );

    // Same size, other bytes, another time: only the server's exact time tells.
    let new = content(64 * MIB, 3);
    fs::write(local.on_server("changing"), &new).unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(local.on_server("changing"))
        .unwrap()
        .set_modified(later)
        .unwrap();

    let (rest, error) = read_range(&local.fs, opened.handle, 12 * MIB, u64::MAX).await;
    local.fs.release(opened.handle).await;
    assert!(
        matches!(error, Some(FsError::Changed)),
        "reading on after the change: {error:?} after {} more bytes",
        rest.len()
    );
    let mut read = first;
    read.extend_from_slice(&rest);
    assert!(
        read[..] == old[..read.len()],
        "{} bytes read, not all of the old version",
        read.len()
    );
    // Read again, the file is the new version, whole.
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    let (again, error) = read_range(&local.fs, opened.handle, 0, u64::MAX).await;
    local.fs.release(opened.handle).await;
    assert!(error.is_none(), "{error:?}");
    assert!(again == new, "the file read again is not the new version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_whose_connection_breaks_is_fetched_again() {
    let local = splitting_fs(32 * MIB);
    let data = content(48 * MIB, 4);
    fs::write(local.on_server("big"), &data).unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"big").await.unwrap();
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    let (mut read, error) = read_range(&local.fs, opened.handle, 0, 4 * MIB).await;
    assert!(error.is_none(), "{error:?}");
    // The next ranged download's connection drops without an answer.
    local.server.set_drop_at(Some(DropAt {
        verb: "REST".into(),
        perform: false,
    }));
    let (rest, error) = read_range(&local.fs, opened.handle, 4 * MIB, u64::MAX).await;
    local.fs.release(opened.handle).await;
    assert!(error.is_none(), "{error:?}");
    read.extend_from_slice(&rest);
    assert!(read == data, "the file read differs from the server's");
    assert!(
        local.fs.stats().parallel_ranges >= 1,
        "no range was fetched in parallel"
    );
    assert!(
        local
            .server
            .commands()
            .iter()
            .filter(|c| c.starts_with("REST "))
            .count()
            >= 3,
        "the dropped download was not retried"
    );
}
