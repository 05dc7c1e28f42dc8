//! Writing through a real mount, on every test server and TLS version, the way people
//! write: `cp -r`, `rsync -a` (twice), `tar -x`, editors saving, `mkdir -p`, `mv`, `rm -r`,
//! `truncate`, `>>`, and many small files in a row.
//!
//! Every check looks at the server's own disk (the served tree is a local directory), not
//! only at the mount. Each test works in its own `.ftpsfs-scratch-*` directory.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mount::{run, scratch_dir, MountConfig, Mounted, ServerScratch};
use common::{Server, Tls};
use openssl::sha::Sha256;

/// Deadline for one external command on a mount.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Small files written one after another: the bar for uploads in a row.
const SMALL_FILES: usize = 200;

fn sh(script: &str, dir: &Path) -> String {
    let out = run(
        Command::new("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("LC_ALL", "C"),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{script}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    common::hex(&hasher.finish())
}

/// Waits until `check` holds (a temporary file deleted in the background), at most 10 s.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after 10 s");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Names under `dir` (recursively) that are ftpsfs's temporary files.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".ftpsfs-") {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    found
}

fn assert_no_leftovers(dir: &Path) {
    eventually(&format!("temporary files under {}", dir.display()), || {
        leftovers(dir).is_empty()
    });
}

/// Every file under `root`: relative path → (size, mtime, sha-256), directories as None.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<(u64, i64, String)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(relative, None);
                stack.push(path);
            } else {
                out.insert(relative, Some((meta.len(), meta.mtime(), sha256(&path))));
            }
        }
    }
    out
}

/// A tree of the kinds of names and files a user copies: UTF-8 and spaces, empty files,
/// nested directories, old modification times.
fn make_tree(root: &Path) {
    let files: &[(&str, usize)] = &[
        ("plain.txt", 100),
        ("with space.txt", 2_000),
        ("ünïcödé-名前.txt", 3_000),
        ("empty", 0),
        ("sub/empty too", 0),
        ("sub/deeper/deepest/leaf.bin", 70_000),
        ("sub/deeper/half-a-meg.bin", 512 * 1024 + 7),
        ("another dir/x", 1),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let data: Vec<u8> = (0..*len).map(|j| (j * 7 + i * 13) as u8).collect();
        fs::write(&path, data).unwrap();
        // Files of 2019, whose times listings give to the day.
        let when = UNIX_EPOCH + Duration::from_secs(1_557_126_489 + i as u64 * 3_601);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

fn write_mount(server: Server, tls: Tls) -> Mounted {
    Mounted::with(MountConfig::new(server, tls))
}

/// `cp -r`, `rsync -a` twice, `tar -x`, and one larger file, checked on the server's disk.
fn copies(server: Server, tls: Tls) {
    let scratch = ServerScratch::new();
    let local = scratch_dir("copies-src");
    let source = local.join("tree");
    make_tree(&source);
    let m = write_mount(server, tls);
    let target = m.join(&scratch.name);

    sh(
        &format!("cp -r {} {}/cp", source.display(), target.display()),
        &local,
    );
    let copied = tree(&scratch.local("cp"));
    let expected = tree(&source);
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, file) in &expected {
        if let (Some((size, _, sum)), Some(Some((copied_size, _, copied_sum)))) =
            (file, copied.get(path))
        {
            assert_eq!((size, sum), (copied_size, copied_sum), "{}", path.display());
        }
    }

    sh(
        &format!("rsync -a {}/ {}/rsync/", source.display(), target.display()),
        &local,
    );
    assert_eq!(
        tree(&scratch.local("rsync")),
        expected,
        "rsync -a: files and mtimes"
    );
    let again = sh(
        &format!(
            "rsync -ai --stats {}/ {}/rsync/",
            source.display(),
            target.display()
        ),
        &local,
    );
    assert!(
        again.contains("Number of regular files transferred: 0"),
        "the second rsync -a transferred files:\n{again}"
    );

    sh("tar -C tree -cf tree.tar .", &local);
    sh(
        &format!(
            "mkdir {0}/tar && tar -C {0}/tar -xf tree.tar",
            target.display()
        ),
        &local,
    );
    assert_eq!(
        tree(&scratch.local("tar")),
        expected,
        "tar -x: files and mtimes"
    );
    // And through the mount, as the user sees it.
    assert_eq!(
        tree(&target.join("tar")),
        expected,
        "tar -x seen through the mount"
    );

    let medium = local.join("medium.bin");
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&medium, &data).unwrap();
    sh(&format!("cp medium.bin {}/", target.display()), &local);
    assert_eq!(sha256(&scratch.local("medium.bin")), sha256(&medium));
    assert_eq!(
        sha256(&target.join("medium.bin")),
        sha256(&medium),
        "read back"
    );
    assert_no_leftovers(&scratch.dir);
    let _ = fs::remove_dir_all(&local);
}

/// Editors' save patterns, the namespace, truncation and appends.
fn edits(server: Server, tls: Tls) {
    let scratch = ServerScratch::new();
    let m = write_mount(server, tls);
    let dir = m.join(&scratch.name);
    let on_server = |name: &str| fs::read(scratch.local(name)).unwrap_or_default();
    let names = || {
        let mut names: Vec<String> = fs::read_dir(&scratch.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    fs::write(dir.join("doc.txt"), b"version 1\n").unwrap();
    assert_eq!(on_server("doc.txt"), b"version 1\n");

    // vim: a probe file 4913, the original renamed to a backup, the new one written
    // and synced, the backup deleted.
    File::create(dir.join("4913")).unwrap();
    fs::remove_file(dir.join("4913")).unwrap();
    fs::rename(dir.join("doc.txt"), dir.join("doc.txt~")).unwrap();
    let mut file = File::create(dir.join("doc.txt")).unwrap();
    file.write_all(b"version 2 (vim)\n").unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::remove_file(dir.join("doc.txt~")).unwrap();
    assert_eq!(on_server("doc.txt"), b"version 2 (vim)\n");

    // GIO / gedit: a .goutputstream-XXXXXX renamed over the target.
    fs::write(dir.join(".goutputstream-ABC123"), b"version 3 (gio)\n").unwrap();
    fs::rename(dir.join(".goutputstream-ABC123"), dir.join("doc.txt")).unwrap();
    assert_eq!(on_server("doc.txt"), b"version 3 (gio)\n");

    // Python's os.replace.
    fs::write(dir.join("doc.txt.tmp"), b"version 4 (os.replace)\n").unwrap();
    fs::rename(dir.join("doc.txt.tmp"), dir.join("doc.txt")).unwrap();
    assert_eq!(on_server("doc.txt"), b"version 4 (os.replace)\n");

    // Firefox: the download goes to .part, the target is truncated, then replaced.
    fs::write(dir.join("doc.txt.part"), b"version 5 (firefox)\n").unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join("doc.txt"))
        .unwrap();
    fs::rename(dir.join("doc.txt.part"), dir.join("doc.txt")).unwrap();
    assert_eq!(on_server("doc.txt"), b"version 5 (firefox)\n");
    assert_no_leftovers(&scratch.dir);
    assert_eq!(names(), ["doc.txt"]);

    // mkdir -p, mv of files and directories across directories, rm -r.
    fs::create_dir_all(dir.join("a/b/c")).unwrap();
    fs::create_dir_all(dir.join("x/y")).unwrap();
    fs::write(dir.join("a/b/c/f"), b"f").unwrap();
    fs::rename(dir.join("a/b/c/f"), dir.join("x/y/f")).unwrap();
    fs::rename(dir.join("a/b"), dir.join("x/y/b")).unwrap();
    assert!(scratch.local("x/y/b/c").is_dir());
    assert_eq!(on_server("x/y/f"), b"f");
    assert!(!scratch.local("a/b").exists());
    assert_eq!(fs::read(dir.join("x/y/f")).unwrap(), b"f");
    let err = fs::remove_dir(dir.join("x")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTEMPTY),
        "rmdir of a full directory"
    );
    sh("rm -r x a", &dir);
    assert_eq!(names(), ["doc.txt"]);

    // truncate to 0, shrink, grow; appends.
    let log = dir.join("log.txt");
    fs::write(&log, b"0123456789").unwrap();
    sh("truncate -s 4 log.txt", &dir);
    assert_eq!(on_server("log.txt"), b"0123");
    sh("truncate -s 6 log.txt", &dir);
    assert_eq!(on_server("log.txt"), b"0123\0\0");
    sh("truncate -s 0 log.txt", &dir);
    assert_eq!(on_server("log.txt"), b"");
    sh("echo one >> log.txt && echo two >> log.txt", &dir);
    assert_eq!(on_server("log.txt"), b"one\ntwo\n");
    assert_eq!(fs::read(&log).unwrap(), b"one\ntwo\n", "read after write");
    assert_eq!(fs::metadata(&log).unwrap().len(), 8);

    // Permissions and times; links are refused.
    fs::set_permissions(&log, fs::Permissions::from_mode(0o600)).unwrap();
    if server.has_chmod() {
        assert_eq!(
            fs::metadata(scratch.local("log.txt")).unwrap().mode() & 0o777,
            0o600
        );
    }
    sh("touch -d '2020-01-02 03:04:05 UTC' log.txt", &dir);
    assert_eq!(
        fs::metadata(scratch.local("log.txt")).unwrap().mtime(),
        1_577_934_245
    );
    assert_eq!(fs::metadata(&log).unwrap().mtime(), 1_577_934_245);
    let err = std::os::unix::fs::symlink("log.txt", dir.join("link")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = fs::hard_link(&log, dir.join("hard")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert_no_leftovers(&scratch.dir);
    assert_eq!(names(), ["doc.txt", "log.txt"]);
}

/// Many small files in a row, each its own upload: every data connection resumes its
/// control connection's session (the mount's counters, logged at unmount), and every
/// file arrives whole.
fn small_files(server: Server, tls: Tls) {
    let scratch = ServerScratch::new();
    let mut m = Mounted::with(MountConfig::new(server, tls).env("RUST_LOG", "ftpsfs::mount=info"));
    let dir = m.join(&scratch.name);
    for i in 0..SMALL_FILES {
        let body = format!("small file {i}\n").repeat(i % 9 + 1);
        fs::write(dir.join(format!("f{i:03}")), body)
            .unwrap_or_else(|e| panic!("{server:?} {tls:?}: file {i}: {e}"));
    }
    for i in 0..SMALL_FILES {
        let expected = format!("small file {i}\n").repeat(i % 9 + 1);
        let got = fs::read(scratch.local(&format!("f{i:03}"))).unwrap();
        assert_eq!(got, expected.as_bytes(), "f{i:03} on the server");
    }
    assert_no_leftovers(&scratch.dir);
    assert!(m.unmount().success());
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("unmounted"))
        .unwrap_or_else(|| panic!("no unmount line in:\n{log}"));
    let number_after = |words: &str| -> u64 {
        let start = line
            .find(words)
            .unwrap_or_else(|| panic!("{words}: {line}"))
            + words.len();
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let resumed = number_after("data connections resumed ");
    let full = number_after("full handshakes ");
    println!("{server:?} {tls:?}: {SMALL_FILES} small files: {line}");
    assert!(resumed + full >= SMALL_FILES as u64, "{line}");
    if server.resumes(tls) {
        assert_eq!(full, 0, "{line}");
    }
}

/// One gibibyte of random data, copied in and checked by SHA-256 on the server's disk.
fn one_gibibyte(server: Server, tls: Tls) {
    static SOURCE: OnceLock<(PathBuf, String)> = OnceLock::new();
    let (source, sum) = SOURCE.get_or_init(|| {
        let path = common::env().data.parent().unwrap().join("random-1g.bin");
        if fs::metadata(&path).map_or(true, |m| m.len() != 1 << 30) {
            sh(
                &format!(
                    "head -c 1G /dev/urandom > {0}.tmp && mv {0}.tmp {0}",
                    path.display()
                ),
                Path::new("/"),
            );
        }
        let sum = sha256(&path);
        (path, sum)
    });
    let scratch = ServerScratch::new();
    let m = write_mount(server, tls);
    let started = Instant::now();
    sh(
        &format!(
            "cp {} {}/",
            source.display(),
            m.join(&scratch.name).display()
        ),
        Path::new("/"),
    );
    let elapsed = started.elapsed();
    assert_eq!(&sha256(&scratch.local("random-1g.bin")), sum);
    println!(
        "{server:?} {tls:?}: cp of 1 GiB in {elapsed:?} ({:.0} MB/s)",
        1073.741824 / elapsed.as_secs_f64()
    );
    assert_no_leftovers(&scratch.dir);
}

/// Eight writers and eight readers in one directory at once: afterwards the listing
/// through the mount, the server's disk and every file's bytes agree.
fn concurrent(server: Server, tls: Tls) {
    let scratch = ServerScratch::new();
    for i in 0..8 {
        scratch.write(&format!("existing-{i}"), &vec![i as u8; 300_000 + i * 1000]);
    }
    let m = write_mount(server, tls);
    let dir = m.join(&scratch.name);
    let data = |i: usize| -> Vec<u8> {
        (0..(1 << 20) + i * 4099)
            .map(|j| (j as u32).wrapping_mul(i as u32 + 3) as u8)
            .collect()
    };
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let dir = dir.clone();
            thread::spawn(move || fs::write(dir.join(format!("new-{i}")), data(i)))
        })
        .collect();
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let dir = dir.clone();
            thread::spawn(move || {
                for _ in 0..3 {
                    let got = fs::read(dir.join(format!("existing-{i}")))?;
                    assert_eq!(got, vec![i as u8; 300_000 + i * 1000]);
                    fs::read_dir(&dir)?.count();
                }
                Ok::<(), std::io::Error>(())
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap().expect("writer");
    }
    for reader in readers {
        reader.join().unwrap().expect("reader");
    }
    assert_no_leftovers(&scratch.dir);
    let mut through_mount: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    through_mount.sort();
    let mut on_disk: Vec<String> = fs::read_dir(&scratch.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(through_mount, on_disk);
    assert_eq!(on_disk.len(), 16);
    for i in 0..8 {
        let expected = data(i);
        assert_eq!(
            fs::read(scratch.local(&format!("new-{i}"))).unwrap(),
            expected
        );
        assert_eq!(
            fs::metadata(dir.join(format!("new-{i}"))).unwrap().len(),
            expected.len() as u64
        );
    }
}

/// A server that refuses to replace files (ProFTPD's `AllowOverwrite off`): overwriting
/// still works, through moving the old file aside.
fn overwrites(server: Server, tls: Tls) {
    let scratch = ServerScratch::new();
    scratch.write("existing.txt", b"old");
    let m = write_mount(server, tls);
    let dir = m.join(&scratch.name);
    fs::write(dir.join("existing.txt"), b"new content").unwrap();
    assert_eq!(
        fs::read(scratch.local("existing.txt")).unwrap(),
        b"new content"
    );
    fs::write(dir.join("other.txt"), b"other").unwrap();
    fs::rename(dir.join("other.txt"), dir.join("existing.txt")).unwrap();
    assert_eq!(fs::read(scratch.local("existing.txt")).unwrap(), b"other");
    assert_no_leftovers(&scratch.dir);
    let started = SystemTime::now();
    fs::write(dir.join("existing.txt"), b"third").unwrap();
    assert_eq!(fs::read(scratch.local("existing.txt")).unwrap(), b"third");
    assert!(started.elapsed().unwrap() < Duration::from_secs(10));
}

macro_rules! write_suite {
    ($module:ident, $server:expr, $tls:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn cp_rsync_and_tar_land_whole() {
                super::copies($server, $tls)
            }

            #[test]
            fn editors_namespace_truncation_and_appends() {
                super::edits($server, $tls)
            }

            #[test]
            fn two_hundred_small_files_all_resume() {
                super::small_files($server, $tls)
            }
        }
    };
}

write_suite!(vsftpd_tls12, Server::Vsftpd, Tls::V12);
write_suite!(vsftpd_tls13, Server::Vsftpd, Tls::V13);
write_suite!(vsftpd_implicit_tls12, Server::VsftpdImplicit, Tls::V12);
write_suite!(vsftpd_implicit_tls13, Server::VsftpdImplicit, Tls::V13);
write_suite!(proftpd_tls12, Server::Proftpd, Tls::V12);
write_suite!(proftpd_tls13, Server::Proftpd, Tls::V13);
write_suite!(
    proftpd_no_overwrite_tls13,
    Server::ProftpdNoOverwrite,
    Tls::V13
);
write_suite!(pureftpd_tls12, Server::PureFtpd, Tls::V12);
write_suite!(pureftpd_tls13, Server::PureFtpd, Tls::V13);
write_suite!(strict_tls12, Server::Strict, Tls::V12);
write_suite!(strict_tls13, Server::Strict, Tls::V13);

#[test]
fn vsftpd_tls13_one_gibibyte() {
    one_gibibyte(Server::Vsftpd, Tls::V13)
}

#[test]
fn proftpd_tls13_one_gibibyte() {
    one_gibibyte(Server::Proftpd, Tls::V13)
}

#[test]
fn vsftpd_tls13_eight_writers_and_readers() {
    concurrent(Server::Vsftpd, Tls::V13)
}

#[test]
fn strict_tls13_eight_writers_and_readers() {
    concurrent(Server::Strict, Tls::V13)
}

#[test]
fn proftpd_no_overwrite_replaces_files_all_the_same() {
    overwrites(Server::ProftpdNoOverwrite, Tls::V13)
}

#[test]
fn strict_replaces_files_all_the_same() {
    overwrites(Server::Strict, Tls::V13)
}

/// `mkdir d 0151` then `rmdir d` (pjdfstest's rmdir checks): a directory the server
/// cannot read is removed when empty, and is ENOTEMPTY when full. vsftpd lists such a
/// directory as one entry, itself, which used to make it look full.
fn unreadable_directories(server: Server) {
    use std::os::unix::fs::DirBuilderExt;
    let scratch = ServerScratch::new();
    let m = write_mount(server, Tls::V13);
    let dir = m.join(&scratch.name);

    fs::DirBuilder::new()
        .mode(0o151)
        .create(dir.join("empty"))
        .unwrap();
    let mode = fs::metadata(scratch.dir.join("empty")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o151, "the server did not take the mode");
    fs::remove_dir(dir.join("empty")).expect("rmdir of an empty directory without its read bit");
    assert!(!scratch.dir.join("empty").exists(), "still on the server");

    fs::create_dir(dir.join("full")).unwrap();
    fs::write(dir.join("full").join("f"), b"x").unwrap();
    fs::set_permissions(dir.join("full"), fs::Permissions::from_mode(0o151)).unwrap();
    let error = fs::remove_dir(dir.join("full")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOTEMPTY), "{error}");
    assert!(scratch.dir.join("full").join("f").exists());
    fs::set_permissions(scratch.dir.join("full"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn vsftpd_removes_an_empty_directory_it_cannot_read() {
    unreadable_directories(Server::Vsftpd)
}

#[test]
fn proftpd_removes_an_empty_directory_it_cannot_read() {
    unreadable_directories(Server::Proftpd)
}

#[test]
fn pureftpd_removes_an_empty_directory_it_cannot_read() {
    unreadable_directories(Server::PureFtpd)
}

/// A file `depth` directories of `len`-byte names below `root`, and the names.
fn deep_names(depth: usize, len: usize, tag: char) -> Vec<String> {
    (0..depth)
        .map(|i| format!("{tag}{i:02}{}", "d".repeat(len - 3)))
        .collect()
}

/// `cd` into each of `dirs` in turn, then `then`: a path longer than PATH_MAX on the
/// server's disk is reached one directory at a time.
fn in_deep_dir(dirs: &[String], then: &str) -> String {
    let mut script: Vec<String> = dirs.iter().map(|d| format!("cd {d}")).collect();
    script.push(then.to_string());
    script.join(" && ")
}

/// Paths longer than a server's command line (vsftpd takes 4,094 bytes, and hangs up
/// on longer lines): a mount of a deep directory (`above` levels of 200-byte names),
/// with a tree inside it as deep as the local PATH_MAX allows, works as near the root:
/// mkdir, write, list, read, chmod, touch, rename (within a directory and between two),
/// unlink, rmdir. The server's disk shows the result, with no temporary file left.
fn long_paths(server: Server, above: usize) {
    let scratch = ServerScratch::new();
    // The server's path above the mount...
    let above = deep_names(above, 200, 'r');
    let mut root = scratch.dir.clone();
    for dir in &above {
        root.push(dir);
    }
    fs::create_dir_all(&root).unwrap();
    let owner = fs::metadata(&scratch.dir).unwrap();
    let mut chown = scratch.dir.clone();
    for dir in &above {
        chown.push(dir);
        std::os::unix::fs::chown(&chown, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let remote = format!("{}/{}", scratch.name, above.join("/"));
    let m = Mounted::with(MountConfig::new(server, Tls::V13).remote_dir(&remote));

    // ...and 2.6 KB below it (2.7 KB locally).
    let below = deep_names(10, 240, 'a');
    let mut deep = m.path().to_path_buf();
    for dir in &below {
        deep.push(dir);
    }
    fs::create_dir_all(&deep).expect("mkdir -p of a deep tree");
    let other = deep.parent().unwrap().join("b".repeat(240));
    fs::create_dir(&other).unwrap();
    let name = "f".repeat(200);
    let content = common::content(100_000, 7);
    fs::write(deep.join(&name), &content).expect("write at the bottom");
    fs::set_permissions(deep.join(&name), fs::Permissions::from_mode(0o640)).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options()
        .write(true)
        .open(deep.join(&name))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let listed: Vec<_> = fs::read_dir(&deep)
        .expect("listing the bottom")
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, [std::ffi::OsString::from(&name)]);
    fs::rename(deep.join(&name), deep.join("renamed")).expect("rename within a directory");
    fs::rename(deep.join("renamed"), other.join(&name)).expect("rename between directories");
    fs::write(deep.join("gone"), b"x").unwrap();
    fs::remove_file(deep.join("gone")).expect("unlink at the bottom");
    fs::create_dir(deep.join("empty")).unwrap();
    fs::remove_dir(deep.join("empty")).expect("rmdir at the bottom");

    // Read back through a new mount: RETR, not the cache.
    drop(m);
    let m = Mounted::with(MountConfig::new(server, Tls::V13).remote_dir(&remote));
    let mut moved = m.path().to_path_buf();
    for dir in &below[..below.len() - 1] {
        moved.push(dir);
    }
    let moved = moved.join("b".repeat(240)).join(&name);
    assert!(
        fs::read(&moved).expect("read at the bottom") == content,
        "other bytes"
    );
    assert_eq!(fs::metadata(&moved).unwrap().mode() & 0o777, 0o640);
    drop(m);

    // On the server's disk (maybe deeper than its PATH_MAX: one directory at a time).
    let mut dirs = above.clone();
    dirs.extend(below[..below.len() - 1].iter().cloned());
    let listing = sh(
        &in_deep_dir(
            &dirs,
            "ls -A . * && sha256sum b*/f* && stat -c 'mtime %Y' b*/f*",
        ),
        &scratch.dir,
    );
    let mut expected = Sha256::new();
    expected.update(&content);
    assert!(
        listing.contains(&common::hex(&expected.finish())),
        "not the bytes written: {listing}"
    );
    if server != Server::PureFtpd {
        // Pure-FTPd sets no times (no MFMT, no SITE UTIME).
        assert!(listing.contains("mtime 1600000000"), "{listing}");
    }
    let last = below.last().unwrap();
    dirs.push(last.clone());
    let bottom = sh(&in_deep_dir(&dirs, "ls -A ."), &scratch.dir);
    assert_eq!(bottom.trim(), "", "left at the bottom (a temporary file?)");
}

/// 4.3 KB from the login directory: vsftpd refuses such a line, but works relative
/// to its working directory below its own PATH_MAX.
#[test]
fn vsftpd_serves_paths_longer_than_its_command_line() {
    long_paths(Server::Vsftpd, 8)
}

/// ProFTPD and Pure-FTPd read 4 KB lines but resolve every path in full, so their own
/// PATH_MAX is the limit ("550 File name too long"): 3.3 KB, sent relative to the
/// directory all the same.
#[test]
fn proftpd_serves_long_paths() {
    long_paths(Server::Proftpd, 3)
}

#[test]
fn pureftpd_serves_long_paths() {
    long_paths(Server::PureFtpd, 3)
}

/// A command killed in the middle of `{ ...; } > file` is one writer of the shell's
/// descriptor: the shell goes on writing, and its close lands all that was written (the
/// killed command's close used to throw the whole file away; the shell's later writes
/// went nowhere while its close succeeded).
#[test]
fn vsftpd_a_command_killed_inside_a_redirect_loses_nothing() {
    let scratch = ServerScratch::new();
    let m = write_mount(Server::Vsftpd, Tls::V13);
    let dir = m.join(&scratch.name);
    sh(
        "{ echo head; sh -c 'echo middle; kill -9 $$' || true; echo tail; } > out.txt",
        &dir,
    );
    let expected = b"head\nmiddle\ntail\n";
    assert_eq!(fs::read(dir.join("out.txt")).unwrap(), expected);
    assert_eq!(fs::read(scratch.dir.join("out.txt")).unwrap(), expected);
    // Alone, a killed writer's file is still not taken for whole.
    sh("sh -c 'echo partial; kill -9 $$' > alone.txt || true", &dir);
    drop(m);
    assert!(
        !scratch.dir.join("alone.txt").exists(),
        "a killed writer's new file was uploaded"
    );
}

/// Closes `file` and returns what close(2) said.
fn close_checked(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    if unsafe { libc::close(file.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// truncate(2) right after the last close (pjdfstest's truncate::shrink_not_empty):
/// the kernel sends the release of the closed handle on its own, and a truncate that
/// met that release between its look-up and its change used to be lost (3 in 150 on
/// ProFTPD): the size stayed, on the mount and on the server.
fn truncate_after_close(server: Server) {
    let scratch = ServerScratch::new();
    let m = write_mount(server, Tls::V13);
    let dir = m.join(&scratch.name);
    for i in 0..150 {
        let path = dir.join(format!("t{i}"));
        fs::write(&path, common::content(12_345, i)).unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        close_checked(file).unwrap_or_else(|e| panic!("round {i}: close: {e}"));
        let file = File::options().write(true).open(&path).unwrap();
        file.set_len(23_456).unwrap();
        // The upload's result comes with the close (a dropped File would hide it).
        close_checked(file).unwrap_or_else(|e| panic!("round {i}: close after ftruncate: {e}"));
        assert_eq!(fs::metadata(&path).unwrap().len(), 23_456, "round {i}");
        // A truncate(2) by path, right after a close.
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::truncate(c_path.as_ptr(), 1) },
            0,
            "round {i}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            1,
            "round {i}: on the mount"
        );
    }
    drop(m);
    for i in 0..150 {
        let on_disk = fs::metadata(scratch.dir.join(format!("t{i}")))
            .unwrap()
            .len();
        assert_eq!(on_disk, 1, "t{i} on the server's disk");
    }
}

#[test]
fn proftpd_truncate_right_after_close_is_never_lost() {
    truncate_after_close(Server::Proftpd)
}

#[test]
fn vsftpd_truncate_right_after_close_is_never_lost() {
    truncate_after_close(Server::Vsftpd)
}
