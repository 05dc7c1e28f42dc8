//! The filesystem logic's write semantics, without FUSE or root: [`FtpFs`] over a pool
//! that talks to an in-process strict server (FileZilla Server's TLS rules, and its
//! refusal to rename onto an existing file) serving a temporary directory.
//!
//! Each test checks what reached the server's disk, not only what the filesystem says.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::local::{LocalConfig, LocalFs};
use common::strict_server::DropAt;
use common::Tls;
use ftpsfs::fs::meta::inode::ROOT_INODE;
use ftpsfs::fs::ops::namespace::RenameFlags;
use ftpsfs::fs::write::file::{Closer, OpenMode, SetAttr};
use ftpsfs::fs::{FsError, FtpFs};

const WRITE: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: false,
};
const TRUNCATE: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: true,
};
const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
};

/// Writes `data` to a new file `name` in `parent` in pieces of `piece` bytes, in order,
/// and closes it; returns the file's inode and the close's result.
async fn write_new(
    fs: &FtpFs,
    parent: u64,
    name: &str,
    data: &[u8],
    piece: usize,
) -> (u64, Result<(), FsError>) {
    let (attr, opened) = fs
        .create(parent, name.as_bytes(), 0o644, WRITE, 1)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    for (i, chunk) in data.chunks(piece.max(1)).enumerate() {
        if let Err(e) = fs
            .write(opened.handle, (i * piece) as u64, chunk.to_vec(), 1)
            .await
        {
            let closed = fs.flush(opened.handle, Closer::Program).await;
            fs.release(opened.handle).await;
            return (attr.ino, Err(closed.err().unwrap_or(e)));
        }
    }
    let closed = fs.flush(opened.handle, Closer::Program).await;
    fs.release(opened.handle).await;
    (attr.ino, closed)
}

/// The whole content of `ino`, read through the filesystem.
async fn read_all(fs: &FtpFs, ino: u64) -> Vec<u8> {
    let opened = fs.open(ino, READ, 1).await.expect("open for reading");
    let mut out = Vec::new();
    loop {
        let data = fs
            .read(opened.handle, out.len() as u64, 256 * 1024)
            .await
            .expect("read");
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    fs.release(opened.handle).await;
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Waits until `check` holds (background deletes), at most 5 s.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn no_temporary_files(local: &LocalFs, dir: &str) -> bool {
    local
        .server_names(dir)
        .iter()
        .all(|name| !name.starts_with(".ftpsfs-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_lands_whole_and_nothing_else_is_left() {
    let local = LocalFs::new();
    let data = pattern(5 * 1024 * 1024 + 17, 1);
    let (ino, closed) = write_new(&local.fs, ROOT_INODE, "big.bin", &data, 128 * 1024).await;
    closed.expect("close");
    assert_eq!(fs::read(local.on_server("big.bin")).unwrap(), data);
    assert_eq!(local.server_names(""), ["big.bin"]);
    let attr = local.fs.lookup(ROOT_INODE, b"big.bin").await.unwrap();
    assert_eq!((attr.ino, attr.size), (ino, data.len() as u64));
    assert_eq!(read_all(&local.fs, ino).await, data, "read after write");
    assert_eq!(
        fs::read_dir(&local.staging).map_or(0, |d| d.count()),
        0,
        "a file written in order needs no staging file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_file_keeps_its_old_content_until_the_new_one_is_complete() {
    let local = LocalFs::new();
    fs::write(local.on_server("doc.txt"), b"old content").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"doc.txt").await.unwrap();
    let opened = local.fs.open(attr.ino, TRUNCATE, 1).await.unwrap();
    let new = pattern(3 * 1024 * 1024, 2);
    for (i, chunk) in new.chunks(64 * 1024).enumerate() {
        local
            .fs
            .write(opened.handle, (i * 64 * 1024) as u64, chunk.to_vec(), 1)
            .await
            .unwrap();
        assert_eq!(
            fs::read(local.on_server("doc.txt")).unwrap(),
            b"old content",
            "the final name changed before the upload was complete"
        );
    }
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(fs::read(local.on_server("doc.txt")).unwrap(), new);
    // The strict server refuses to rename onto a file, like FileZilla Server: the old
    // one was moved aside and deleted.
    assert_eq!(local.server_names(""), ["doc.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_out_of_order_fall_back_to_a_staging_file() {
    let local = LocalFs::new();
    let (attr, opened) = local
        .fs
        .create(ROOT_INODE, b"random.bin", 0o644, WRITE, 1)
        .await
        .unwrap();
    let mut expected = pattern(2 * 1024 * 1024, 3);
    local
        .fs
        .write(opened.handle, 0, expected.clone(), 1)
        .await
        .unwrap();
    // Back to the start: the stream cannot take this, the staging file can.
    local
        .fs
        .write(opened.handle, 10, b"XYZ".to_vec(), 1)
        .await
        .unwrap();
    expected[10..13].copy_from_slice(b"XYZ");
    // A hole past the end reads as zeros.
    local
        .fs
        .write(
            opened.handle,
            expected.len() as u64 + 100,
            b"end".to_vec(),
            1,
        )
        .await
        .unwrap();
    expected.extend_from_slice(&[0; 100]);
    expected.extend_from_slice(b"end");
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(fs::read(local.on_server("random.bin")).unwrap(), expected);
    assert_eq!(read_all(&local.fs, attr.ino).await, expected);
    eventually("the streamed part's temporary file deleted", || {
        no_temporary_files(&local, "")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_truncation_change_the_file_on_the_server() {
    let local = LocalFs::new();
    fs::write(local.on_server("log.txt"), b"line 1\n").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"log.txt").await.unwrap();
    // `>>`: opened without O_TRUNC, written at the end.
    let opened = local.fs.open(attr.ino, WRITE, 1).await.unwrap();
    local
        .fs
        .write(opened.handle, 7, b"line 2\n".to_vec(), 1)
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(
        fs::read(local.on_server("log.txt")).unwrap(),
        b"line 1\nline 2\n"
    );

    // truncate(2) without an open file: uploaded at once.
    let shrunk = local
        .fs
        .setattr(
            attr.ino,
            SetAttr {
                size: Some(4),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(shrunk.size, 4);
    assert_eq!(fs::read(local.on_server("log.txt")).unwrap(), b"line");
    local
        .fs
        .setattr(
            attr.ino,
            SetAttr {
                size: Some(6),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(fs::read(local.on_server("log.txt")).unwrap(), b"line\0\0");
    local
        .fs
        .setattr(
            attr.ino,
            SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(fs::read(local.on_server("log.txt")).unwrap(), b"");
    assert_eq!(local.server_names(""), ["log.txt"]);
}

/// A writer killed while another handle on the same file goes on writing (two opens,
/// two processes) is not the file's end: the other's close lands all that was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_the_files_other_writers_alone() {
    let local = LocalFs::new();
    let (attr, first) = local
        .fs
        .create(ROOT_INODE, b"shared.txt", 0o644, WRITE, 1)
        .await
        .unwrap();
    local
        .fs
        .write(first.handle, 0, b"one,".to_vec(), 1)
        .await
        .unwrap();
    let second = local.fs.open(attr.ino, WRITE, 2).await.unwrap();
    local
        .fs
        .write(second.handle, 4, b"two".to_vec(), 2)
        .await
        .unwrap();
    local
        .fs
        .flush(first.handle, Closer::KilledProcess)
        .await
        .unwrap();
    local.fs.release(first.handle).await;
    local
        .fs
        .flush(second.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(second.handle).await;
    assert_eq!(fs::read(local.on_server("shared.txt")).unwrap(), b"one,two");
}

/// truncate(2) to a shorter length fetches what stays of the file, not all of it (a
/// log cut to its first kilobyte must not download gigabytes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_fetches_only_what_stays() {
    let local = LocalFs::new();
    let original = common::content(16 << 20, 3);
    fs::write(local.on_server("big.bin"), &original).unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"big.bin").await.unwrap();
    let before = local.fs.stats().bytes_fetched;
    let cut = local
        .fs
        .setattr(
            attr.ino,
            SetAttr {
                size: Some(1000),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cut.size, 1000);
    assert!(fs::read(local.on_server("big.bin")).unwrap() == original[..1000]);
    let fetched = local.fs.stats().bytes_fetched - before;
    assert!(fetched <= 4 << 20, "fetched {fetched} bytes to keep 1000");
}

/// An ftruncate(2) or write(2) that needs the server's copy, and cannot fetch it (the
/// download stalls), fails alone: the file's content is still the server's, so the
/// next write through the same descriptor lands beside the server's bytes, never
/// beside zeros (the failed fetch used to leave an empty local copy as the content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_of_the_servers_copy_never_uploads_zeros() {
    let local = LocalFs::new();
    let original = common::content(50_000, 7);
    fs::write(local.on_server("kept.bin"), &original).unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"kept.bin").await.unwrap();
    let opened = local.fs.open(attr.ino, WRITE, 1).await.unwrap();
    local.server.set_stall_data_after(Some(0));
    let grown = local
        .fs
        .setattr(
            attr.ino,
            SetAttr {
                size: Some(60_000),
                ..SetAttr::default()
            },
        )
        .await;
    assert!(grown.is_err(), "the truncation could not fetch the file");
    local.server.set_stall_data_after(None);
    local
        .fs
        .write(opened.handle, 0, b"HEAD".to_vec(), 1)
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    let mut expected = original.clone();
    expected[..4].copy_from_slice(b"HEAD");
    assert!(
        fs::read(local.on_server("kept.bin")).unwrap() == expected,
        "the server's bytes after the write"
    );
    assert_eq!(local.server_names(""), ["kept.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_redirect_uploads_once_with_the_data() {
    let local = LocalFs::new();
    fs::write(local.on_server("out.txt"), b"previous").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"out.txt").await.unwrap();
    // `echo hi > out.txt`: open with O_TRUNC, the shell's close of its copy of the
    // descriptor, then the program's write and close.
    let opened = local.fs.open(attr.ino, TRUNCATE, 1).await.unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    assert_eq!(
        fs::read(local.on_server("out.txt")).unwrap(),
        b"previous",
        "the truncation alone was uploaded"
    );
    local
        .fs
        .write(opened.handle, 0, b"hi\n".to_vec(), 1)
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(fs::read(local.on_server("out.txt")).unwrap(), b"hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_new_file_is_on_the_server_when_close_returns() {
    let local = LocalFs::new();
    let (attr, opened) = local
        .fs
        .create(ROOT_INODE, b"empty", 0o600, WRITE, 1)
        .await
        .unwrap();
    // Visible in this mount at once.
    assert_eq!(
        local.fs.lookup(ROOT_INODE, b"empty").await.unwrap().ino,
        attr.ino
    );
    let dir = local.fs.opendir(ROOT_INODE).await.unwrap();
    let names: Vec<Vec<u8>> = local
        .fs
        .readdir(dir, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    local.fs.releasedir(dir);
    assert!(names.contains(&b"empty".to_vec()), "{names:?}");
    // close() is the flush; the kernel sends the release later, without waiting.
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    assert!(
        local.on_server("empty").exists(),
        "`touch` returned before the file existed"
    );
    local.fs.release(opened.handle).await;
    let meta = fs::metadata(local.on_server("empty")).unwrap();
    assert_eq!(meta.len(), 0);
    // FileZilla Server cannot set modes: the file has the server's, and shows it.
    assert_eq!(meta.mode() & 0o777, 0o644);
    let shown = local.fs.lookup(ROOT_INODE, b"empty").await.unwrap();
    assert_eq!(shown.perm, 0o644);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_the_server_as_it_was() {
    let local = LocalFs::new();
    fs::write(local.on_server("keep.txt"), b"precious").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"keep.txt").await.unwrap();
    let opened = local.fs.open(attr.ino, TRUNCATE, 1).await.unwrap();
    local
        .fs
        .write(opened.handle, 0, pattern(1024 * 1024, 4), 1)
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::KilledProcess)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;

    let (_, created) = local
        .fs
        .create(ROOT_INODE, b"half.bin", 0o644, WRITE, 1)
        .await
        .unwrap();
    local
        .fs
        .write(created.handle, 0, pattern(512 * 1024, 5), 1)
        .await
        .unwrap();
    local
        .fs
        .flush(created.handle, Closer::KilledProcess)
        .await
        .unwrap();
    local.fs.release(created.handle).await;

    assert_eq!(fs::read(local.on_server("keep.txt")).unwrap(), b"precious");
    assert!(matches!(
        local.fs.lookup(ROOT_INODE, b"half.bin").await,
        Err(FsError::NotFound)
    ));
    eventually("the streams' temporary files deleted", || {
        local.server_names("") == ["keep.txt"]
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_a_quota_give_their_errno_at_close_and_keep_the_old_file() {
    let local = LocalFs::new();
    fs::write(local.on_server("data.bin"), b"old").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"data.bin").await.unwrap();
    for (reply, errno) in [(452, libc::ENOSPC), (552, libc::EDQUOT)] {
        local.server.set_space_left(Some(100_000), reply);
        let opened = local.fs.open(attr.ino, TRUNCATE, 1).await.unwrap();
        let data = pattern(1024 * 1024, 6);
        let mut failed = None;
        for (i, chunk) in data.chunks(64 * 1024).enumerate() {
            if let Err(e) = local
                .fs
                .write(opened.handle, (i * 65536) as u64, chunk.to_vec(), 1)
                .await
            {
                failed = Some(e);
                break;
            }
        }
        let closed = local.fs.flush(opened.handle, Closer::Program).await;
        local.fs.release(opened.handle).await;
        let error = closed.err().or(failed).expect("the upload must fail");
        assert_eq!(error.errno(), errno, "{reply}: {error}");
        assert_eq!(fs::read(local.on_server("data.bin")).unwrap(), b"old");
        local.server.set_space_left(None, 452);
        eventually("the cut-off temporary file deleted", || {
            local.server_names("") == ["data.bin"]
        });
    }
    // The same filesystem goes on working.
    let (_, closed) = write_new(&local.fs, ROOT_INODE, "after.txt", b"fine", 4).await;
    closed.unwrap();
    assert_eq!(fs::read(local.on_server("after.txt")).unwrap(), b"fine");
}

/// The kernel sends a handle's release after close() returned, so a program that opens
/// the file again may find the failed handle still open: the new open starts afresh,
/// while the failed handle keeps reporting its own failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_reported_to_its_handles_only() {
    let local = LocalFs::new();
    fs::write(local.on_server("data.bin"), b"old").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"data.bin").await.unwrap();
    local.server.set_space_left(Some(1000), 452);
    let failed = local.fs.open(attr.ino, TRUNCATE, 1).await.unwrap();
    let _ = local
        .fs
        .write(failed.handle, 0, pattern(200_000, 1), 1)
        .await;
    let closed = local.fs.flush(failed.handle, Closer::Program).await;
    assert_eq!(closed.unwrap_err().errno(), libc::ENOSPC);
    local.server.set_space_left(None, 452);
    // Opened again before the failed handle's release.
    let again = local.fs.open(attr.ino, TRUNCATE, 2).await.unwrap();
    local
        .fs
        .write(again.handle, 0, b"new".to_vec(), 2)
        .await
        .unwrap();
    local.fs.flush(again.handle, Closer::Program).await.unwrap();
    assert_eq!(fs::read(local.on_server("data.bin")).unwrap(), b"new");
    let failed_again = local.fs.flush(failed.handle, Closer::Program).await;
    assert_eq!(failed_again.unwrap_err().errno(), libc::ENOSPC);
    local.fs.release(failed.handle).await;
    local.fs.release(again.handle).await;
    assert_eq!(read_all(&local.fs, attr.ino).await, b"new");
}

/// A server whose passive ports are all taken for a moment answers EPSV with 425: the
/// upload asks again rather than failing, whether EPSV went out alone or together with
/// the STOR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_ask_again_when_no_passive_port_is_free() {
    // On TLS 1.2 every session resumes, so later uploads send STOR with their EPSV.
    for tls in [Tls::V12, Tls::V13] {
        let local = LocalFs::with(LocalConfig {
            tls,
            ..LocalConfig::default()
        });
        for i in 0..3 {
            local.server.set_passive_ports_busy(2);
            let name = format!("f{i}");
            let (_, closed) = write_new(&local.fs, ROOT_INODE, &name, name.as_bytes(), 4).await;
            closed.unwrap();
            assert_eq!(fs::read(local.on_server(&name)).unwrap(), name.as_bytes());
        }
    }
}

/// A listing whose data ends cleanly (close_notify) but whose final reply is 426 was cut
/// short by the server: it is an error, and nothing of it is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_cut_short_is_an_error_and_not_cached() {
    let local = LocalFs::new();
    for i in 0..40 {
        fs::write(local.on_server(format!("file-{i:02}")), b"x").unwrap();
    }
    local.server.set_cut_listings(true);
    let listed = local.fs.opendir(ROOT_INODE).await;
    assert_eq!(listed.err().map(|e| e.errno()), Some(libc::EIO));
    assert!(local.fs.lookup(ROOT_INODE, b"file-39").await.is_err());
    local.server.set_cut_listings(false);
    let dir = local.fs.opendir(ROOT_INODE).await.unwrap();
    assert_eq!(local.fs.readdir(dir, 0).unwrap().len(), 40 + 2);
    local.fs.releasedir(dir);
}

/// A server may keep an accepted REST offset when it refuses the RETR that followed: the
/// connection must not serve another transfer, which would start mid-file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_retr_after_rest_does_not_shift_the_next_read() {
    let local = LocalFs::new();
    local.server.set_keep_rest_after_refusal(true);
    let big = pattern(3 << 20, 9);
    fs::write(local.on_server("gone.bin"), &big).unwrap();
    let small: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("small-{i}"), pattern(1000 + i, i as u8)))
        .collect();
    for (name, data) in &small {
        fs::write(local.on_server(name), data).unwrap();
    }
    let gone = local.fs.lookup(ROOT_INODE, b"gone.bin").await.unwrap();
    let opened = local.fs.open(gone.ino, READ, 1).await.unwrap();
    fs::remove_file(local.on_server("gone.bin")).unwrap();
    // REST 2097152 accepted, RETR refused: the file is gone.
    assert!(local.fs.read(opened.handle, 2 << 20, 4096).await.is_err());
    local.fs.release(opened.handle).await;
    for (name, data) in &small {
        let attr = local.fs.lookup(ROOT_INODE, name.as_bytes()).await.unwrap();
        assert_eq!(&read_all(&local.fs, attr.ino).await, data, "{name}");
    }
}

/// A file rewritten on the server with the same size, between two reads of one open
/// file, is never served as a mix of the two: the second read, ranged or streaming, gives
/// ESTALE, and the file read again afterwards is the new content whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_between_two_reads_is_never_mixed() {
    let local = LocalFs::new();
    let old = pattern(3 << 20, 1);
    let new = pattern(3 << 20, 2);
    let cases = [("ranged.bin", 2 << 20), ("streamed.bin", 4096)];
    for (name, _) in cases {
        fs::write(local.on_server(name), &old).unwrap();
    }
    for (name, second_read_at) in cases {
        let on_server = local.on_server(name);
        let attr = local.fs.lookup(ROOT_INODE, name.as_bytes()).await.unwrap();
        let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
        let first = local.fs.read(opened.handle, 0, 4096).await.unwrap();
        assert_eq!(&first[..], &old[..4096], "{name}");
        fs::write(&on_server, &new).unwrap();
        let later = SystemTime::now() + Duration::from_secs(120);
        fs::File::options()
            .write(true)
            .open(&on_server)
            .unwrap()
            .set_modified(later)
            .unwrap();
        // At 4096 the read is sequential: past the 16 KiB the first read fetched, it
        // starts a stream. At 2 MiB it is a ranged fetch.
        match local.fs.read(opened.handle, second_read_at, 64 << 10).await {
            Err(FsError::Changed) => {}
            Ok(data) => {
                let at = second_read_at as usize;
                let mixed = data[..] != old[at..at + data.len()];
                panic!(
                    "{name}: the read after the rewrite gave {} bytes{}",
                    data.len(),
                    if mixed {
                        ", some of the new content"
                    } else {
                        " of the old content"
                    }
                );
            }
            Err(e) => panic!("{name}: {e}"),
        }
        local.fs.release(opened.handle).await;
        assert_eq!(read_all(&local.fs, attr.ino).await, new, "{name} reopened");
    }
}

/// vsftpd lists times to the minute. A file read whole, then reopened under a newer
/// listing, is checked with one MDTM against the time its blocks were downloaded at, and
/// served from the cache: nothing is downloaded again. A same-size rewrite within the
/// listed minute is still seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_under_a_coarse_listing_reuses_what_the_first_read_fetched() {
    let local = LocalFs::with(LocalConfig {
        list_only: true,
        dir_ttl: Duration::from_millis(200),
        ..LocalConfig::default()
    });
    let on_server = local.on_server("coarse.bin");
    let old = pattern(200 << 10, 5);
    fs::write(&on_server, &old).unwrap();
    // Second 10 of a minute an hour ago: LIST shows hours and minutes only.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = (now - 3600) / 60 * 60;
    let set_second = |second: u64| {
        fs::File::options()
            .write(true)
            .open(&on_server)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(minute + second))
            .unwrap();
    };
    set_second(10);
    let attr = local.fs.lookup(ROOT_INODE, b"coarse.bin").await.unwrap();
    assert_eq!(read_all(&local.fs, attr.ino).await, old);
    let fetched = |fs: &FtpFs| fs.stats().range_fetches + fs.stats().streams;
    let before = fetched(&local.fs);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    assert!(opened.keep_cache, "the kernel's pages were dropped");
    local.fs.release(opened.handle).await;
    assert_eq!(read_all(&local.fs, attr.ino).await, old);
    assert_eq!(fetched(&local.fs), before, "downloads on reopening");

    let new = pattern(200 << 10, 6);
    fs::write(&on_server, &new).unwrap();
    set_second(40);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
    assert!(
        !opened.keep_cache,
        "the kernel kept pages of the old content"
    );
    local.fs.release(opened.handle).await;
    assert_eq!(read_all(&local.fs, attr.ino).await, new);
}

/// Writes `count` small files `fNN.bin` into `dir` on the server; returns their names and
/// contents in name order.
fn small_files(local: &LocalFs, dir: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    fs::create_dir(local.on_server(dir)).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("f{i:02}.bin"), pattern(3000 + i * 100, i as u8)))
        .collect();
    for (name, data) in &files {
        fs::write(local.on_server(format!("{dir}/{name}")), data).unwrap();
    }
    files
}

/// Small files read one after another in name order (as rsync reads them) are read ahead
/// on spare connections, each downloaded once; read out of order, nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_read_in_order_are_read_ahead_once() {
    let local = LocalFs::new();
    let files = small_files(&local, "many", 40);
    let shuffled = small_files(&local, "shuffled", 40);
    fs::create_dir(local.on_server("sniffed")).unwrap();
    for i in 0..20 {
        fs::write(
            local.on_server(format!("sniffed/s{i:02}.dat")),
            pattern(64 << 10, i as u8),
        )
        .unwrap();
    }
    let dir = local.fs.lookup(ROOT_INODE, b"many").await.unwrap();
    let before = local.fs.stats();
    for (name, data) in &files {
        let attr = local.fs.lookup(dir.ino, name.as_bytes()).await.unwrap();
        assert_eq!(&read_all(&local.fs, attr.ino).await, data, "{name}");
    }
    let after = local.fs.stats();
    let ahead = after.files_read_ahead - before.files_read_ahead;
    let by_reader = after.range_fetches - before.range_fetches;
    assert!(
        ahead >= 20,
        "{ahead} files read ahead, {by_reader} fetched by their reader"
    );
    assert_eq!(ahead + by_reader, 40, "downloads for 40 files");

    // Interleaved: no file follows the one before in any order.
    let files = shuffled;
    let dir = local.fs.lookup(ROOT_INODE, b"shuffled").await.unwrap();
    let before = local.fs.stats();
    for i in 0..20 {
        for (name, data) in [&files[i], &files[i + 20]] {
            let attr = local.fs.lookup(dir.ino, name.as_bytes()).await.unwrap();
            assert_eq!(&read_all(&local.fs, attr.ino).await, data, "{name}");
        }
    }
    let after = local.fs.stats();
    assert_eq!(
        after.files_read_ahead, before.files_read_ahead,
        "read ahead out of order"
    );

    // A file browser sniffing the first bytes of each file in order reads none to its
    // end: nothing is downloaded whole for it.
    let dir = local.fs.lookup(ROOT_INODE, b"sniffed").await.unwrap();
    let before = local.fs.stats();
    for i in 0..20 {
        let name = format!("s{i:02}.dat");
        let attr = local.fs.lookup(dir.ino, name.as_bytes()).await.unwrap();
        let opened = local.fs.open(attr.ino, READ, 1).await.unwrap();
        let head = local.fs.read(opened.handle, 0, 4096).await.unwrap();
        assert_eq!(&head[..], &pattern(64 << 10, i as u8)[..4096]);
        local.fs.release(opened.handle).await;
    }
    let after = local.fs.stats();
    assert_eq!(
        after.files_read_ahead, before.files_read_ahead,
        "read ahead for a sniffer"
    );
    assert!(after.bytes_fetched - before.bytes_fetched <= 20 * (16 << 10));
}

/// On a server whose listing times are coarse (vsftpd), a file read ahead after its
/// listing arrived is as new as the listing: opening it sends no MDTM of its own (each
/// RETR carries one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_ahead_under_a_coarse_listing_need_no_check() {
    let local = LocalFs::with(LocalConfig {
        list_only: true,
        ..LocalConfig::default()
    });
    let files = small_files(&local, "coarse", 30);
    let dir = local.fs.lookup(ROOT_INODE, b"coarse").await.unwrap();
    let before = local.server.commands().len();
    for (name, data) in &files {
        let attr = local.fs.lookup(dir.ino, name.as_bytes()).await.unwrap();
        assert_eq!(&read_all(&local.fs, attr.ino).await, data, "{name}");
    }
    let commands = local.server.commands()[before..].to_vec();
    let count = |verb: &str| commands.iter().filter(|c| c.starts_with(verb)).count();
    assert!(local.fs.stats().files_read_ahead >= 10);
    assert_eq!(count("RETR "), 30, "{commands:?}");
    assert_eq!(
        count("MDTM "),
        count("RETR "),
        "MDTM besides those with RETR: {commands:?}"
    );
}

/// Readers of one block at once share one fetch: those waiting find the block cached
/// when the first fetch ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_a_block_share_one_fetch() {
    let local = LocalFs::new();
    // Larger than a block, so that no reading ahead of small files fetches them first.
    let data = pattern(2 << 20, 3);
    for round in 0..5 {
        fs::write(local.on_server(format!("shared-{round}.bin")), &data).unwrap();
    }
    for round in 0..5 {
        let name = format!("shared-{round}.bin");
        let attr = local.fs.lookup(ROOT_INODE, name.as_bytes()).await.unwrap();
        let before = local.fs.stats().range_fetches;
        let readers: Vec<_> = (0..8)
            .map(|i| {
                let fs = local.fs.clone();
                tokio::spawn(async move {
                    let opened = fs.open(attr.ino, READ, 10 + i).await.unwrap();
                    let read = fs.read(opened.handle, 0, 4096).await.unwrap().to_vec();
                    fs.release(opened.handle).await;
                    read
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.unwrap(), &data[..4096]);
        }
        assert_eq!(local.fs.stats().range_fetches - before, 1, "round {round}");
    }
}

/// Listing ahead is a guess: a user who opens the directory meanwhile does not wait for
/// it on a slow server, but lists it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_listing_ahead_does_not_hold_up_the_user() {
    let local = LocalFs::with(LocalConfig {
        dir_prefetch: 8,
        ..LocalConfig::default()
    });
    fs::create_dir(local.on_server("slow")).unwrap();
    fs::write(local.on_server("slow/inside"), b"x").unwrap();
    local
        .server
        .set_slow_next_listing("slow", Duration::from_secs(8));
    // Opening the root lists "slow" ahead, in the background.
    let root = local.fs.opendir(ROOT_INODE).await.unwrap();
    local.fs.releasedir(root);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slow = local.fs.lookup(ROOT_INODE, b"slow").await.unwrap();
    let started = Instant::now();
    let dir = local.fs.opendir(slow.ino).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(local.fs.readdir(dir, 0).unwrap().len(), 3);
    local.fs.releasedir(dir);
    assert!(
        waited < Duration::from_secs(4),
        "the user waited {waited:?} for a listing ahead"
    );
}

/// MLSD does not say where a symlink points (ProFTPD, Pure-FTPd): `LIST -a` of the
/// directory does, once for all its links, even when they are read all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_targets_of_a_directory_are_listed_once() {
    let local = LocalFs::new();
    local.server.set_show_symlinks(true);
    fs::create_dir(local.on_server("links")).unwrap();
    for i in 0..8 {
        fs::write(local.on_server(format!("links/t{i}")), b"x").unwrap();
        std::os::unix::fs::symlink(format!("t{i}"), local.on_server(format!("links/l{i}")))
            .unwrap();
    }
    let dir = local.fs.lookup(ROOT_INODE, b"links").await.unwrap();
    let mut links = Vec::new();
    for i in 0..8 {
        let name = format!("l{i}");
        links.push(local.fs.lookup(dir.ino, name.as_bytes()).await.unwrap().ino);
    }
    let before = local.fs.stats().listings;
    // A slow LIST: the readlinks all ask while it is on its way.
    local
        .server
        .set_slow_next_listing("links", Duration::from_millis(300));
    let reads: Vec<_> = links
        .iter()
        .map(|&ino| {
            let fs = local.fs.clone();
            tokio::spawn(async move { fs.readlink(ino).await })
        })
        .collect();
    for (i, read) in reads.into_iter().enumerate() {
        assert_eq!(read.await.unwrap().unwrap(), format!("t{i}").into_bytes());
    }
    assert_eq!(local.fs.stats().listings - before, 1);
}

/// The kernel forgetting what readdirplus handed it lets the inode table shrink back:
/// a long-lived mount does not keep every name it ever showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_inodes_are_dropped() {
    let local = LocalFs::new();
    fs::create_dir(local.on_server("synthetic")).unwrap();
    local.server.set_synthetic_tree(Some([1, 1, 100_000]));
    // What the kernel does: look the path up, read the directory with readdirplus.
    let mut held = Vec::new();
    let mut dir = ROOT_INODE;
    for name in ["synthetic", "d0000", "e0000"] {
        dir = local.fs.lookup(dir, name.as_bytes()).await.unwrap().ino;
        local.fs.remember(dir);
        held.push(dir);
    }
    let handle = local.fs.opendir(dir).await.unwrap();
    let entries = local.fs.readdirplus(handle, 0).unwrap();
    local.fs.releasedir(handle);
    assert_eq!(entries.len(), 100_002);
    assert!(local.fs.inodes_held() > 100_000);
    // A name handed out keeps its number while the kernel holds it.
    let f17 = local.fs.lookup(dir, b"f0017").await.unwrap();
    local.fs.remember(f17.ino);
    assert_eq!(f17.ino, entries[2 + 17].ino);
    // Memory pressure: the kernel forgets them all but f0017 and its directories.
    for entry in &entries[2..] {
        local.fs.forget(entry.ino, 1);
    }
    // Any later call may sweep; opening the directory again is one.
    let handle = local.fs.opendir(ROOT_INODE).await.unwrap();
    local.fs.releasedir(handle);
    // Sweeps look at the whole table, so they wait for enough change and spare small
    // tables (see inode.rs): what is left is bounded by that, not by what was seen.
    let held_now = local.fs.inodes_held();
    assert!(
        held_now < 20_000,
        "{held_now} inodes held after the kernel forgot 100,000"
    );
    // What is still held kept its number.
    assert_eq!(local.fs.lookup(dir, b"f0017").await.unwrap().ino, f17.ino);
    assert_eq!(local.fs.getattr(f17.ino).await.unwrap().size, 1234);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_are_made_removed_and_renamed() {
    let local = LocalFs::new();
    let dir = local.fs.mkdir(ROOT_INODE, b"d", 0o755).await.unwrap();
    assert!(local.on_server("d").is_dir());
    // A directory this mount made is empty: opening and reading it lists nothing.
    let listings = local.fs.stats().listings;
    let opened = local.fs.opendir(dir.ino).await.unwrap();
    let names: Vec<Vec<u8>> = local
        .fs
        .readdir(opened, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
        .collect();
    local.fs.releasedir(opened);
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(
        local.fs.stats().listings,
        listings,
        "listings to open a new directory"
    );
    assert_eq!(
        local
            .fs
            .mkdir(ROOT_INODE, b"d", 0o755)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    // Made by someone else after this mount listed the root: EEXIST all the same, and
    // the name shows from then on.
    fs::create_dir(local.on_server("by-another")).unwrap();
    assert_eq!(
        local
            .fs
            .mkdir(ROOT_INODE, b"by-another", 0o755)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    assert!(local.fs.lookup(ROOT_INODE, b"by-another").await.is_ok());
    local.fs.rmdir(ROOT_INODE, b"by-another").await.unwrap();
    let (_, closed) = write_new(&local.fs, dir.ino, "f.txt", b"inside", 6).await;
    closed.unwrap();
    assert_eq!(
        local.fs.rmdir(ROOT_INODE, b"d").await.unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    local
        .fs
        .rename(ROOT_INODE, b"d", ROOT_INODE, b"e", RenameFlags::default())
        .await
        .unwrap();
    assert!(local.on_server("e/f.txt").is_file());
    let moved = local.fs.lookup(ROOT_INODE, b"e").await.unwrap();
    assert_eq!(moved.ino, dir.ino, "a renamed directory keeps its inode");
    let file = local.fs.lookup(moved.ino, b"f.txt").await.unwrap();
    assert_eq!(read_all(&local.fs, file.ino).await, b"inside");
    local.fs.unlink(moved.ino, b"f.txt").await.unwrap();
    assert_eq!(
        local
            .fs
            .unlink(moved.ino, b"f.txt")
            .await
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    local.fs.rmdir(ROOT_INODE, b"e").await.unwrap();
    assert_eq!(local.server_names(""), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_replace_files_even_where_the_server_refuses_to() {
    for rename_over_existing in [false, true] {
        let local = LocalFs::with(LocalConfig {
            rename_over_existing,
            ..LocalConfig::default()
        });
        fs::write(local.on_server("target"), b"old").unwrap();
        fs::write(local.on_server("source"), b"new").unwrap();
        local
            .fs
            .rename(
                ROOT_INODE,
                b"source",
                ROOT_INODE,
                b"target",
                RenameFlags::default(),
            )
            .await
            .unwrap();
        assert_eq!(fs::read(local.on_server("target")).unwrap(), b"new");
        assert_eq!(local.server_names(""), ["target"]);
        fs::write(local.on_server("other"), b"x").unwrap();
        local.fs.getattr(ROOT_INODE).await.unwrap();
        let refused = local
            .fs
            .rename(
                ROOT_INODE,
                b"target",
                ROOT_INODE,
                b"target2",
                RenameFlags {
                    no_replace: true,
                    exchange: false,
                },
            )
            .await;
        assert!(refused.is_ok(), "no file named target2: {refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_modes_and_owners() {
    let local = LocalFs::new();
    let (ino, closed) = write_new(&local.fs, ROOT_INODE, "t.txt", b"time", 4).await;
    closed.unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_577_934_245);
    let attr = local
        .fs
        .setattr(
            ino,
            SetAttr {
                mtime: Some(when),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(attr.mtime, when);
    assert_eq!(
        fs::metadata(local.on_server("t.txt")).unwrap().mtime(),
        1_577_934_245
    );
    // FileZilla Server has no SITE CHMOD: chmod is a logged no-op, not an error.
    local
        .fs
        .setattr(
            ino,
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .await
        .expect("chmod without SITE CHMOD");
    // chown to the owner shown is a no-op (cp -a, rsync -a as root); to another, EPERM.
    local
        .fs
        .setattr(
            ino,
            SetAttr {
                uid: Some(1000),
                gid: Some(1000),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    let err = local
        .fs
        .setattr(
            ino,
            SetAttr {
                uid: Some(0),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EPERM);
    // A time set while the file is being written goes up with it.
    let (attr, opened) = local
        .fs
        .create(ROOT_INODE, b"later.txt", 0o644, WRITE, 1)
        .await
        .unwrap();
    local
        .fs
        .write(opened.handle, 0, b"x".to_vec(), 1)
        .await
        .unwrap();
    local
        .fs
        .setattr(
            attr.ino,
            SetAttr {
                mtime: Some(when),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(
        fs::metadata(local.on_server("later.txt")).unwrap().mtime(),
        1_577_934_245
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_ftp_cannot_carry_and_links_are_refused() {
    let local = LocalFs::new();
    for bad in [&b"a\r\nDELE b"[..], b"a\nb", b"a\0b"] {
        let err = local
            .fs
            .create(ROOT_INODE, bad, 0o644, WRITE, 1)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
        let err = local.fs.mkdir(ROOT_INODE, bad, 0o755).await.unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
    }
    let long = vec![b'x'; 256];
    let err = local
        .fs
        .create(ROOT_INODE, &long, 0o644, WRITE, 1)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    assert_eq!(local.fs.symlink().unwrap_err().errno(), libc::EPERM);
    assert_eq!(local.fs.link().unwrap_err().errno(), libc::EPERM);
    assert_eq!(local.server_names(""), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_filesystem_changes_nothing() {
    let local = LocalFs::with(LocalConfig {
        read_only: true,
        ..LocalConfig::default()
    });
    fs::write(local.on_server("f"), b"x").unwrap();
    let attr = local.fs.lookup(ROOT_INODE, b"f").await.unwrap();
    let erofs = |r: Result<(), FsError>| assert_eq!(r.unwrap_err().errno(), libc::EROFS);
    erofs(local.fs.open(attr.ino, WRITE, 1).await.map(drop));
    erofs(local.fs.open(attr.ino, TRUNCATE, 1).await.map(drop));
    erofs(
        local
            .fs
            .create(ROOT_INODE, b"g", 0o644, WRITE, 1)
            .await
            .map(drop),
    );
    erofs(local.fs.mkdir(ROOT_INODE, b"d", 0o755).await.map(drop));
    erofs(local.fs.unlink(ROOT_INODE, b"f").await);
    erofs(local.fs.rmdir(ROOT_INODE, b"f").await);
    erofs(
        local
            .fs
            .rename(ROOT_INODE, b"f", ROOT_INODE, b"g", RenameFlags::default())
            .await,
    );
    erofs(
        local
            .fs
            .setattr(
                attr.ino,
                SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            )
            .await
            .map(drop),
    );
    erofs(local.fs.symlink().map(drop));
    assert_eq!(fs::read(local.on_server("f")).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_reply_was_lost_is_checked_not_repeated() {
    let local = LocalFs::new();
    for (perform, expect_ok) in [(true, true), (false, false)] {
        fs::write(local.on_server("victim"), b"x").unwrap();
        local.fs.lookup(ROOT_INODE, b"victim").await.ok();
        local.server.set_drop_at(Some(DropAt {
            verb: "DELE".into(),
            perform,
        }));
        let result = local.fs.unlink(ROOT_INODE, b"victim").await;
        assert_eq!(result.is_ok(), expect_ok, "performed {perform}: {result:?}");
        assert_eq!(local.on_server("victim").exists(), !perform);
        let _ = fs::remove_file(local.on_server("victim"));
        // Forget the stale listing before the next round.
        let _ = local.fs.getattr(ROOT_INODE).await;
    }
}

/// A deletion, or a rename onto the file, that the server did not carry out leaves the
/// file's pending changes as they were: its writer's close still uploads them (they
/// used to be dropped before the server was asked, so a refusal lost them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delete_or_replace_keeps_the_files_changes() {
    let local = LocalFs::new();
    // Names of their own each round, all there before the first listing.
    for round in 0..2 {
        fs::write(local.on_server(format!("kept{round}")), b"old").unwrap();
        fs::write(local.on_server(format!("other{round}")), b"other").unwrap();
    }
    for (round, verb) in ["DELE", "RNFR"].into_iter().enumerate() {
        let body = format!("written while {verb} failed, {round}").into_bytes();
        let (kept, other) = (format!("kept{round}"), format!("other{round}"));
        let ino = local
            .fs
            .lookup(ROOT_INODE, kept.as_bytes())
            .await
            .unwrap()
            .ino;
        local.fs.lookup(ROOT_INODE, other.as_bytes()).await.unwrap();
        let opened = local.fs.open(ino, WRITE, 1).await.unwrap();
        local
            .fs
            .write(opened.handle, 0, body.clone(), 1)
            .await
            .unwrap();
        local.server.set_drop_at(Some(DropAt {
            verb: verb.into(),
            perform: false,
        }));
        let refused = match verb {
            "DELE" => local.fs.unlink(ROOT_INODE, kept.as_bytes()).await,
            _ => {
                local
                    .fs
                    .rename(
                        ROOT_INODE,
                        other.as_bytes(),
                        ROOT_INODE,
                        kept.as_bytes(),
                        RenameFlags::default(),
                    )
                    .await
            }
        };
        assert!(
            matches!(refused, Err(FsError::Remote(_))),
            "{verb} was not carried out: {refused:?}"
        );
        local
            .fs
            .flush(opened.handle, Closer::Program)
            .await
            .unwrap();
        local.fs.release(opened.handle).await;
        assert_eq!(fs::read(local.on_server(&kept)).unwrap(), body, "{verb}");
        assert_eq!(fs::read(local.on_server(&other)).unwrap(), b"other");
    }
}

/// A session that died at the end of an upload (no final reply): the default mode's
/// close() uploads the file once more, to a new temporary name, and succeeds; nothing
/// but the file is left. (A dropped File hides close()'s error, so a hiccup failing it
/// loses the write silently for many programs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_session_died_at_its_end_is_sent_again() {
    let local = LocalFs::new();
    let old = common::content(50_000, 1);
    fs::write(local.on_server("edited"), &old).unwrap();
    let ino = local.fs.lookup(ROOT_INODE, b"edited").await.unwrap().ino;
    // A write inside the file: the upload is sent whole from a local copy at close.
    let opened = local.fs.open(ino, WRITE, 1).await.unwrap();
    local
        .fs
        .write(opened.handle, 10, b"changed".to_vec(), 1)
        .await
        .unwrap();
    local.server.set_hang_up_before_upload_reply();
    let closed = local.fs.flush(opened.handle, Closer::Program).await;
    local.fs.release(opened.handle).await;
    closed.expect("close() after a session died at the end of the upload");
    let mut expected = old.clone();
    expected[10..17].copy_from_slice(b"changed");
    assert!(
        fs::read(local.on_server("edited")).unwrap() == expected,
        "the server's copy"
    );
    // The first try's temporary file goes too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = local.server_names("");
        if names == ["edited"] {
            break;
        }
        assert!(Instant::now() < deadline, "left: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that hung up on an idle connection (vsftpd after "500 Input line too
/// long", any server at its idle timeout): the next change goes out on another
/// connection and succeeds, instead of being written into the closed one and failing
/// as unconfirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_while_idle_is_not_lent() {
    let local = LocalFs::new();
    // The first login's reply-order probe is over before the fault is set.
    drop(local.fs.pool().get().await.unwrap());
    for round in 0..5 {
        local.server.set_hang_up_after(Some("NOOP"));
        let mut conn = local.fs.pool().get().await.unwrap();
        conn.noop().await.unwrap();
        drop(conn);
        // The server's FIN reaches the client's socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let name = format!("d{round}");
        local
            .fs
            .mkdir(ROOT_INODE, name.as_bytes(), 0o755)
            .await
            .unwrap_or_else(|e| panic!("round {round}: mkdir after a hang-up: {e}"));
        assert!(local.on_server(&name).is_dir());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_earlier_mounts_are_hidden_and_old_ones_deleted() {
    let local = LocalFs::new();
    let old = SystemTime::now() - Duration::from_secs(3 * 3600);
    let old_secs = old.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let stale = format!(".ftpsfs-tmp.{old_secs:x}.0123456789abcdef.report.pdf");
    let fresh = format!(
        ".ftpsfs-tmp.{:x}.fedcba9876543210.report.pdf",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    let path = local.on_server(&stale);
    fs::write(&path, b"cut off").unwrap();
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(old).unwrap();
    fs::write(local.on_server(&fresh), b"in progress").unwrap();
    fs::write(local.on_server("report.pdf"), b"real").unwrap();
    let dir = local.fs.opendir(ROOT_INODE).await.unwrap();
    let names: Vec<String> = local
        .fs
        .readdir(dir, 0)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    local.fs.releasedir(dir);
    assert_eq!(names, [".", "..", "report.pdf"]);
    assert!(matches!(
        local.fs.lookup(ROOT_INODE, stale.as_bytes()).await,
        Err(FsError::NotFound)
    ));
    eventually("the old leftover deleted", || !path.exists());
    assert!(
        local.on_server(&fresh).exists(),
        "a recent one may be another mount's upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_resume_on_tls_1_2_too() {
    let local = LocalFs::with(LocalConfig {
        tls: Tls::V12,
        ..LocalConfig::default()
    });
    for i in 0..20 {
        let (_, closed) = write_new(
            &local.fs,
            ROOT_INODE,
            &format!("f{i}"),
            &pattern(1000, i),
            300,
        )
        .await;
        closed.unwrap();
    }
    assert_eq!(local.server.data_connections_rejected(), 0);
    assert_eq!(local.server_names("").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_close_of_an_inherited_descriptor_uploads_nothing() {
    let local = LocalFs::new();
    let (_, opened) = local
        .fs
        .create(ROOT_INODE, b"log.bin", 0o644, WRITE, 7)
        .await
        .unwrap();
    local
        .fs
        .write(opened.handle, 0, pattern(100_000, 8), 7)
        .await
        .unwrap();
    // A child of the writer (fork, then execve) closes its copy of the descriptor.
    assert!(local.fs.is_writer(opened.handle, 7));
    assert!(!local.fs.is_writer(opened.handle, 99));
    local
        .fs
        .flush(opened.handle, Closer::Bystander)
        .await
        .unwrap();
    assert_eq!(
        local.server_names(""),
        Vec::<String>::new(),
        "uploaded mid-write"
    );
    local
        .fs
        .write(opened.handle, 100_000, b"more".to_vec(), 7)
        .await
        .unwrap();
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    let mut expected = pattern(100_000, 8);
    expected.extend_from_slice(b"more");
    assert_eq!(fs::read(local.on_server("log.bin")).unwrap(), expected);
}

/// The names a fresh `readdir` of `ino` shows, without `.` and `..`.
async fn names_in(fs: &FtpFs, ino: u64) -> Vec<String> {
    let handle = fs.opendir(ino).await.expect("opendir");
    let entries = fs.readdir(handle, 0).expect("readdir");
    fs.releasedir(handle);
    entries
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|name| name != "." && name != "..")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_predates_an_upload_is_not_kept_as_it_came() {
    let local = LocalFs::with(LocalConfig {
        dir_ttl: Duration::from_secs(1),
        ..LocalConfig::default()
    });
    fs::write(local.on_server("old"), b"x").unwrap();
    let (_, opened) = local
        .fs
        .create(ROOT_INODE, b"new", 0o644, WRITE, 1)
        .await
        .unwrap();
    local
        .fs
        .write(opened.handle, 0, pattern(64 * 1024, 9), 1)
        .await
        .unwrap();
    // Let the root's listing expire, then make the next one slow: it reads the
    // directory while the upload is still under its temporary name, and arrives after
    // the upload was renamed into place.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    local
        .server
        .set_listing_delay(Some(Duration::from_millis(800)));
    let listings_before = local.fs.stats().listings;
    let fs = local.fs.clone();
    let reader = tokio::spawn(async move { names_in(&fs, ROOT_INODE).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    local
        .fs
        .flush(opened.handle, Closer::Program)
        .await
        .unwrap();
    local.fs.release(opened.handle).await;
    assert_eq!(local.server_names(""), ["new", "old"]);
    let landed_while_listing = !reader.is_finished();
    let mut names = reader.await.unwrap();
    names.sort();
    local.server.set_listing_delay(None);
    assert_eq!(
        names,
        ["new", "old"],
        "a listing older than the upload was used"
    );
    assert!(
        landed_while_listing && local.fs.stats().listings > listings_before,
        "the upload did not land while the listing was in flight: nothing was tested"
    );
    // And the cache holds the fresh listing, not the stale one.
    assert_eq!(names_in(&local.fs, ROOT_INODE).await.len(), 2);
    assert!(local.fs.lookup(ROOT_INODE, b"new").await.is_ok());
}

/// A file read within the second of its time, then rewritten on the server with the same
/// size in that same second (so with the same time to the second, all MDTM and MLSD say),
/// is read anew at the first open after the listing expired: data read that close to the
/// file's time is not trusted until fetched once more (git's racily clean entries). Both
/// with MLSD's exact times and with LIST's minutes checked by MDTM (vsftpd's way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_size_rewrite_within_the_second_of_a_read_is_seen() {
    for list_only in [false, true] {
        let local = LocalFs::with(LocalConfig {
            list_only,
            dir_ttl: Duration::from_millis(500),
            ..LocalConfig::default()
        });
        // A whole second ahead of this clock, so that the read below always falls within
        // the file's second, whenever the test runs.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let second = UNIX_EPOCH + Duration::from_secs(now + 1);
        let on_server = local.on_server("racy.txt");
        let write = |content: &[u8]| {
            fs::write(&on_server, content).unwrap();
            fs::File::options()
                .write(true)
                .open(&on_server)
                .unwrap()
                .set_modified(second)
                .unwrap();
        };
        write(b"first content\n");
        let attr = local.fs.lookup(ROOT_INODE, b"racy.txt").await.unwrap();
        assert_eq!(read_all(&local.fs, attr.ino).await, b"first content\n");

        write(b"other content\n");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let attr = local.fs.lookup(ROOT_INODE, b"racy.txt").await.unwrap();
        assert_eq!(
            read_all(&local.fs, attr.ino).await,
            b"other content\n",
            "list_only {list_only}: the old bytes were served after the listing expired"
        );
    }
}

/// A failed upload's temporary file that could not be deleted before the unmount (the
/// server went down) is recorded in the cache directory, and the next mount of the same
/// server deletes it at once, not an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_left_at_unmount_are_deleted_by_the_next_mount() {
    use common::local::{certs, PASSWORD, USER};
    use common::strict_server::{StrictServer, StrictServerOptions, TlsVersion};

    let mut local = LocalFs::new();
    // The upload fails (disk full) and leaves its temporary file; the first try to
    // delete it loses its connection, and the server is gone before the next.
    local.server.set_space_left(Some(1000), 452);
    local.server.set_drop_at(Some(DropAt {
        verb: "DELE".into(),
        perform: false,
    }));
    let (_, closed) = write_new(
        &local.fs,
        ROOT_INODE,
        "big.bin",
        &pattern(64 * 1024, 3),
        16 * 1024,
    )
    .await;
    assert!(closed.is_err(), "the upload should have failed");
    eventually("the first deletion tried", || {
        local
            .server
            .commands()
            .iter()
            .any(|c| c.starts_with("DELE"))
    });
    let port = local.server.port();
    local.server.stop();
    let left = local.fs.finish(Duration::from_secs(2)).await;
    assert_eq!(left, 1, "{:?}", local.server_names(""));
    assert!(
        local
            .server_names("")
            .iter()
            .any(|n| n.starts_with(".ftpsfs-tmp.")),
        "{:?}",
        local.server_names("")
    );

    // The server is back; the next mount with the same cache directory deletes it.
    let certs = certs();
    local.server = StrictServer::start(StrictServerOptions {
        writable: true,
        port,
        io_timeout: Duration::from_secs(5),
        ..StrictServerOptions::new(
            &local.root,
            &certs.cert,
            &certs.key,
            TlsVersion::Tls13,
            USER,
            PASSWORD,
        )
    })
    .expect("restart the strict server");
    let second = local.remount(&LocalConfig::default());
    second.start().await.expect("mount again");
    eventually("the leftover deleted by the next mount", || {
        local
            .server_names("")
            .iter()
            .all(|n| !n.starts_with(".ftpsfs-"))
    });
    let records = fs::read_dir(local.staging.join("leftovers"))
        .map(|dirs| {
            dirs.flatten()
                .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(records, 0, "the record of what was left is not removed");
}

/// A server that gives up a passive port left waiting (a short passive timeout, as
/// FileZilla Server or IIS may have) refuses the upload that comes to a data connection
/// opened ahead: close() still succeeds, as the upload goes again on another connection
/// with a port of its own; every file on the server is whole and nothing else is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_when_the_server_drops_data_connections_opened_ahead() {
    let local = LocalFs::new();
    local.server.set_impatient_passive(true);
    let pipelining = local.fs.pool().connect_options().pipelining.clone();
    let mut names = Vec::new();
    // Until an upload has met a port the server gave up (the pool lends whichever
    // connection is idle, so not necessarily the second upload), and two more after it.
    let mut after_refusal = 0;
    while after_refusal < 2 {
        assert!(names.len() < 12, "no upload met a port the server gave up");
        if !pipelining.opens_ahead() {
            after_refusal += 1;
        }
        let name = format!("f{}", names.len());
        let body = common::content(20_000, names.len() as u64);
        let (_, closed) = write_new(&local.fs, ROOT_INODE, &name, &body, 4096).await;
        closed.unwrap_or_else(|e| panic!("close() of {name}: {e}"));
        assert!(
            fs::read(local.on_server(&name)).unwrap() == body,
            "{name} on the server"
        );
        names.push(name);
        // Longer than the server waits: a port opened ahead is given up.
        tokio::time::sleep(common::strict_server::PASSIVE_PATIENCE * 4).await;
    }
    assert!(
        pipelining
            .describe()
            .contains("no data connection opened ahead"),
        "{}",
        pipelining.describe()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = local.server_names("");
        left.sort();
        let mut expected = names.clone();
        expected.sort();
        if left == expected {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
