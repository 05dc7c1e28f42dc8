//! The persistent block cache (`disk_cache=`), in the filesystem layer over the
//! in-process strict server: a second mount of the same server reads what the first one
//! downloaded from disk, without a RETR, unless the file changed or a block on disk is
//! damaged; and the cache stays within its size.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::local::{LocalConfig, LocalFs};
use common::mount::scratch_dir;
use ftpsfs::fs::meta::inode::ROOT_INODE;
use ftpsfs::fs::write::file::OpenMode;
use ftpsfs::fs::FtpFs;

const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
};
const MIB: u64 = 1 << 20;

fn content(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) as u8) ^ seed ^ ((i >> 12) as u8))
        .collect()
}

fn with_disk_cache(dir: &Path, size: u64) -> LocalConfig {
    LocalConfig {
        disk_cache_dir: Some(dir.to_path_buf()),
        disk_cache_size: size,
        ..LocalConfig::default()
    }
}

/// Puts `data` on the server's disk as `name`, an hour old: blocks read within a second
/// of a file's time are racy, and never stored on disk (see docs/SEMANTICS.md).
fn put(local: &LocalFs, name: &str, data: &[u8]) {
    let path = local.on_server(name);
    fs::write(&path, data).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

async fn read_file(fs: &FtpFs, name: &str) -> Vec<u8> {
    let attr = fs.lookup(ROOT_INODE, name.as_bytes()).await.unwrap();
    let opened = fs.open(attr.ino, READ, 1).await.unwrap();
    let mut out = Vec::new();
    loop {
        let data = fs
            .read(opened.handle, out.len() as u64, 128 * 1024)
            .await
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    fs.release(opened.handle).await;
    out
}

/// Block files under the cache directory, with their sizes.
fn block_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "blk") {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// Waits for the disk writes (in the background) of `blocks` blocks.
async fn wait_for_blocks_written(fs: &FtpFs, blocks: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs.stats().disk_blocks_written < blocks {
        assert!(
            Instant::now() < deadline,
            "only {} of {blocks} blocks reached the disk",
            fs.stats().disk_blocks_written
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn retrs_since(commands: &[String], mark: usize) -> usize {
    commands[mark..]
        .iter()
        .filter(|c| c.starts_with("RETR "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_mount_reads_from_disk_without_downloading() {
    let cache = scratch_dir("disk-cache-remount");
    let config = with_disk_cache(&cache, 64 * MIB);
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let big = content(5 * MIB + 123, 1);
    let small = content(40_000, 2);
    put(&local, "big", &big);
    put(&local, "small", &small);
    assert!(read_file(&local.fs, "big").await == big);
    assert!(read_file(&local.fs, "small").await == small);
    // Six blocks of the big file, one of the small one.
    wait_for_blocks_written(&local.fs, 7).await;

    let second = local.remount(&config);
    let mark = local.server.commands().len();
    assert!(read_file(&second, "big").await == big, "big file from disk");
    assert!(
        read_file(&second, "small").await == small,
        "small file from disk"
    );
    let commands = local.server.commands();
    assert_eq!(
        retrs_since(&commands, mark),
        0,
        "downloads after the remount: {:?}",
        &commands[mark..]
    );
    assert_eq!(second.stats().disk_hits, 7);
    // One MDTM per file checks the disk's blocks against the server's time.
    let mdtm = commands[mark..]
        .iter()
        .filter(|c| c.starts_with("MDTM "))
        .count();
    assert_eq!(mdtm, 2, "{:?}", &commands[mark..]);
    let _ = fs::remove_dir_all(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_between_mounts_is_fetched_anew() {
    let cache = scratch_dir("disk-cache-changed");
    let config = with_disk_cache(&cache, 64 * MIB);
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let old = content(2 * MIB, 3);
    put(&local, "f", &old);
    assert!(read_file(&local.fs, "f").await == old);
    wait_for_blocks_written(&local.fs, 2).await;

    // Same size, other bytes, another time.
    let new = content(2 * MIB, 4);
    put(&local, "f", &new);
    fs::File::options()
        .write(true)
        .open(local.on_server("f"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(1800))
        .unwrap();
    let second = local.remount(&config);
    let mark = local.server.commands().len();
    assert!(
        read_file(&second, "f").await == new,
        "the old version was served"
    );
    assert!(retrs_since(&local.server.commands(), mark) > 0);
    assert_eq!(second.stats().disk_hits, 0);
    wait_for_blocks_written(&second, 2).await;
    // The old version's blocks are gone from the disk; the new one's are there.
    assert_eq!(block_files(&cache).len(), 2, "{:?}", block_files(&cache));
    let _ = fs::remove_dir_all(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_on_disk_is_fetched_again() {
    let cache = scratch_dir("disk-cache-damaged");
    let config = with_disk_cache(&cache, 64 * MIB);
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let data = content(4 * MIB, 5);
    put(&local, "f", &data);
    assert!(read_file(&local.fs, "f").await == data);
    wait_for_blocks_written(&local.fs, 4).await;

    // One block with a flipped bit, one cut short.
    let files = block_files(&cache);
    assert_eq!(files.len(), 4);
    let mut flipped = fs::read(&files[0].0).unwrap();
    let middle = flipped.len() - 1000;
    flipped[middle] ^= 0x10;
    fs::write(&files[0].0, &flipped).unwrap();
    let cut = fs::read(&files[1].0).unwrap();
    fs::write(&files[1].0, &cut[..cut.len() / 2]).unwrap();

    let second = local.remount(&config);
    let mark = local.server.commands().len();
    assert!(
        read_file(&second, "f").await == data,
        "damaged data was served"
    );
    assert!(retrs_since(&local.server.commands(), mark) > 0);
    // The first damaged block is always looked at; the second may come from the stream
    // that replaced the first before the reader gets to it.
    let corrupt = second.report().cache.disk.map_or(0, |d| d.corrupt);
    assert!(
        (1..=2).contains(&corrupt),
        "damaged blocks found: {corrupt}"
    );
    let _ = fs::remove_dir_all(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_stays_within_its_size() {
    let cache = scratch_dir("disk-cache-size");
    let local = LocalFs::with(with_disk_cache(&cache, 3 * MIB + 4096));
    let data = content(8 * MIB, 6);
    put(&local, "f", &data);
    assert!(read_file(&local.fs, "f").await == data);
    wait_for_blocks_written(&local.fs, 8).await;
    let held: u64 = block_files(&cache).iter().map(|(_, len)| len).sum();
    assert!(held <= 3 * MIB + 4096, "{held} bytes on disk");
    assert_eq!(block_files(&cache).len(), 3);
    let _ = fs::remove_dir_all(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_read_in_random_pieces_is_kept_once_whole() {
    let cache = scratch_dir("disk-cache-pieces");
    let config = with_disk_cache(&cache, 64 * MIB);
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let data = content(MIB, 7);
    put(&local, "f", &data);
    let attr = local.fs.lookup(ROOT_INODE, b"f").await.unwrap();
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    // Back to front, 256 KiB at a time: every read is a ranged fetch of its own piece.
    for piece in (0..4u64).rev() {
        let read = local
            .fs
            .read(opened.handle, piece * 256 * 1024, 256 * 1024)
            .await
            .unwrap();
        assert!(read[..] == data[piece as usize * 256 * 1024..][..256 * 1024]);
    }
    local.fs.release(opened.handle).await;
    wait_for_blocks_written(&local.fs, 1).await;

    let second = local.remount(&config);
    let mark = local.server.commands().len();
    assert!(read_file(&second, "f").await == data);
    assert_eq!(retrs_since(&local.server.commands(), mark), 0);
    let _ = fs::remove_dir_all(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_under_the_same_listing_checks_the_disk_once() {
    let cache = scratch_dir("disk-cache-reopen");
    let config = with_disk_cache(&cache, 64 * MIB);
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let data = content(MIB + 5, 8);
    put(&local, "f", &data);
    assert!(read_file(&local.fs, "f").await == data);
    wait_for_blocks_written(&local.fs, 2).await;

    let second = local.remount(&config);
    let mark = local.server.commands().len();
    for _ in 0..3 {
        assert!(read_file(&second, "f").await == data);
    }
    let commands = local.server.commands();
    let mdtm = commands[mark..]
        .iter()
        .filter(|c| c.starts_with("MDTM "))
        .count();
    assert_eq!(mdtm, 1, "{:?}", &commands[mark..]);
    assert_eq!(retrs_since(&commands, mark), 0);
    let _ = fs::remove_dir_all(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_this_mount_rewrites_leaves_the_disk_cache() {
    use ftpsfs::fs::write::file::Closer;
    const TRUNCATE: OpenMode = OpenMode {
        read: false,
        write: true,
        truncate: true,
    };
    let cache = scratch_dir("disk-cache-rewrite");
    let config = with_disk_cache(&cache, 64 * MIB);
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let old = content(100_000, 9);
    put(&local, "f", &old);
    assert!(read_file(&local.fs, "f").await == old);
    wait_for_blocks_written(&local.fs, 1).await;

    // Same size, within the same second most likely: MDTM alone could not tell.
    let new = content(100_000, 10);
    let attr = local.fs.lookup(ROOT_INODE, b"f").await.unwrap();
    let opened = local.fs.open(attr.ino, TRUNCATE, 1).await.unwrap();
    local
        .fs
        .write(opened.handle, 0, new.clone(), 1)
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(fs::read(local.on_server("f")).unwrap(), new);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !block_files(&cache).is_empty() {
        assert!(Instant::now() < deadline, "the old blocks stayed on disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = local.remount(&config);
    assert!(
        read_file(&second, "f").await == new,
        "the old content was served"
    );
    let _ = fs::remove_dir_all(cache);
}

/// Blocks read within a second of the file's time could predate a same-size rewrite in
/// that second: they are never stored on disk, where a later mount would trust them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racily_read_blocks_are_not_stored_on_disk() {
    let cache = scratch_dir("disk-cache-racy");
    let local = LocalFs::with(with_disk_cache(&cache, 64 * MIB));
    let racy = content(MIB, 7);
    fs::write(local.on_server("racy"), &racy).unwrap();
    // A second ahead of this clock: the read below falls within the file's second.
    fs::File::options()
        .write(true)
        .open(local.on_server("racy"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(1))
        .unwrap();
    let old = content(MIB, 8);
    put(&local, "old", &old);
    assert!(read_file(&local.fs, "racy").await == racy);
    assert!(read_file(&local.fs, "old").await == old);
    wait_for_blocks_written(&local.fs, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        block_files(&cache).len(),
        1,
        "the racily read block went to disk: {:?}",
        block_files(&cache)
    );
    let _ = fs::remove_dir_all(cache);
}
