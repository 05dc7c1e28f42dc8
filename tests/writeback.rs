//! Write-back (`-o writeback`) on real servers through real mounts: closes return once
//! the data is durable locally, and everything acknowledged reaches the server, whole,
//! after `kill -9` of the mount, after the server refused it for a while, and beside a
//! file another client changed meanwhile. Every check looks at the server's own disk.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::mount::{force_unmount, run, scratch_dir, MountConfig, Mounted, ServerScratch};
use common::{Server, Tls};
use openssl::sha::Sha256;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

fn sh(script: &str) -> String {
    let out = run(
        Command::new("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(script)
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
    let mut hasher = Sha256::new();
    hasher.update(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    common::hex(&hasher.finish())
}

/// Every file under `root`: relative path → (size, mtime, sha-256), directories as None.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<(u64, i64, String)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            // An upload landing renames its temporary file meanwhile: not a file yet.
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".ftpsfs-")
            {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
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

/// Waits until `check` holds, at most `limit`.
fn eventually(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after {limit:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The journal's records and data files under `cache`.
fn journal_files(cache: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(servers) = fs::read_dir(cache.join("writeback")) else {
        return found;
    };
    for server in servers.flatten() {
        for entry in fs::read_dir(server.path()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with(suffix) {
                found.push(entry.path());
            }
        }
    }
    found
}

/// ftpsfs's temporary files left on the server's disk under `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".ftpsfs-") {
                found.push(name);
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// Small files of many sizes, with old modification times (rsync -a keeps them), in
/// two directories.
fn make_source(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(if i % 2 == 0 { "a" } else { "b/c" });
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("file {i}.bin"));
        fs::write(&path, common::content((i as u64 * 977) % 40_000, i as u64)).unwrap();
        let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64 * 61);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

fn ftpsfs(args: &[&str]) -> std::process::Output {
    run(
        Command::new(env!("CARGO_BIN_EXE_ftpsfs")).args(args),
        COMMAND_TIMEOUT,
    )
}

fn writeback_config(
    server: Server,
    scratch: &ServerScratch,
    cache: &Path,
    mnt: &Path,
) -> MountConfig {
    MountConfig::new(server, Tls::V13)
        .remote_dir(&scratch.name)
        .mountpoint(mnt)
        .option("writeback")
        .option(&format!("cache_dir={}", cache.display()))
        .env("RUST_LOG", "ftpsfs=debug")
}

/// rsync and cp into the mount, `kill -9` of the mount as soon as they return, and a
/// new mount with the same cache directory: every file lands, byte for byte, with its
/// time, and the journal empties.
fn lands_everything_after_kill_9(server: Server) {
    let scratch = ServerScratch::new();
    let local = scratch_dir("wb-kill9");
    let (source, cache, mnt) = (local.join("src"), local.join("cache"), local.join("mnt"));
    fs::create_dir(&mnt).unwrap();
    make_source(&source, 160);
    let config = || writeback_config(server, &scratch, &cache, &mnt);
    let mut m = Mounted::with(config());
    let started = Instant::now();
    sh(&format!(
        "rsync -a {}/ {}/rsync/",
        source.display(),
        mnt.display()
    ));
    sh(&format!("cp -r {} {}/cp", source.display(), mnt.display()));
    let returned = started.elapsed();
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10))
        .expect("ftpsfs still alive after SIGKILL");
    let queued = journal_files(&cache, ".item").len();
    assert!(
        queued > 0,
        "nothing was queued when the mount was killed: the test proves nothing"
    );
    force_unmount(&mnt);

    let remounted = Instant::now();
    let m2 = Mounted::with(config());
    let expected = tree(&source);
    eventually("every file on the server", Duration::from_secs(120), || {
        tree(&scratch.local("rsync")) == expected
            && tree(&scratch.local("cp")).len() == expected.len()
    });
    // cp keeps no times: only the content is compared.
    for (path, file) in &expected {
        if let Some((size, _, sum)) = file {
            let copied = scratch.local("cp").join(path);
            assert_eq!(fs::metadata(&copied).unwrap().len(), *size);
            assert_eq!(&sha256(&copied), sum, "{}", path.display());
        }
    }
    eventually("the journal empty", Duration::from_secs(10), || {
        journal_files(&cache, ".item").is_empty() && journal_files(&cache, ".data").is_empty()
    });
    eventually("no temporary files", Duration::from_secs(10), || {
        temporaries(&scratch.dir).is_empty()
    });
    assert!(
        m2.log().contains("taken back"),
        "the second mount did not take the journal back"
    );
    eprintln!(
        "{server:?}: rsync + cp of {} files returned in {returned:?}; {queued} were still queued at kill -9, all landed {:?} after the remount began",
        expected.len(),
        remounted.elapsed()
    );
    drop(m2);
    drop(m);
    let _ = fs::remove_dir_all(&local);
}

#[test]
fn proftpd_writeback_lands_everything_after_kill_9() {
    lands_everything_after_kill_9(Server::Proftpd);
}

#[test]
fn vsftpd_writeback_lands_everything_after_kill_9() {
    lands_everything_after_kill_9(Server::Vsftpd);
}

/// A directory the server refuses to write in: closes still succeed (the data is safe
/// locally), the mount shows the files as written, rsync's renames are folded into the
/// queued uploads, fsync reports the refusal, `ftpsfs stats` lists the items. A file
/// another client changes meanwhile is kept, ours lands beside it. A data file torn
/// while the mount is down is reported and never uploaded. Once the directory is
/// writable again, `ftpsfs queue --retry` lands the rest, one STOR each.
fn refused_then_retried(server: Server) {
    let scratch = ServerScratch::new();
    let local = scratch_dir("wb-refused");
    let (source, cache, mnt) = (local.join("src"), local.join("cache"), local.join("mnt"));
    fs::create_dir(&mnt).unwrap();
    make_source(&source, 12);
    let shared = scratch.local("ro/shared.txt");
    let config = || writeback_config(server, &scratch, &cache, &mnt);
    let mut m = Mounted::with(config());
    fs::create_dir(mnt.join("ro")).unwrap();
    fs::write(mnt.join("ro/shared.txt"), b"version one").unwrap();
    eventually("shared.txt on the server", Duration::from_secs(20), || {
        fs::read(&shared).is_ok_and(|d| d == b"version one")
    });
    let ro = scratch.local("ro");
    // Directories are made on the server at once; the files in them are refused.
    fs::create_dir_all(mnt.join("ro/a")).unwrap();
    fs::create_dir_all(mnt.join("ro/b/c")).unwrap();
    let writable = |on: bool| {
        for dir in ["", "a", "b", "b/c"] {
            let mode = if on { 0o755 } else { 0o555 };
            fs::set_permissions(ro.join(dir), fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    writable(false);

    sh(&format!(
        "rsync -a {}/ {}/ro/",
        source.display(),
        mnt.display()
    ));
    fs::write(mnt.join("ro/shared.txt"), b"our version, longer").unwrap();
    // A new file here, whose name another client takes on the server meanwhile.
    fs::write(mnt.join("ro/fresh.txt"), b"our new file").unwrap();
    let mut open = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.join("ro/synced.txt"))
        .unwrap();
    open.write_all(b"fsync me").unwrap();
    let refused = open
        .sync_all()
        .expect_err("fsync of a file the server refuses succeeded");
    drop(open);

    // Read your writes: the mount shows what was written, the server has none of it.
    let expected = tree(&source);
    let shown = tree(&mnt.join("ro"));
    for (path, file) in &expected {
        assert_eq!(
            shown.get(path),
            Some(file),
            "{} through the mount",
            path.display()
        );
        if file.is_some() {
            assert!(
                !ro.join(path).exists(),
                "{} reached the server",
                path.display()
            );
        }
    }
    assert_eq!(
        fs::read(mnt.join("ro/shared.txt")).unwrap(),
        b"our version, longer"
    );
    assert_eq!(fs::read(&shared).unwrap(), b"version one");
    let stats =
        || String::from_utf8_lossy(&ftpsfs(&["stats", mnt.to_str().unwrap()]).stdout).into_owned();
    eventually(
        "stats listing the refused upload",
        Duration::from_secs(20),
        || {
            let stats = stats();
            stats.contains("ro/shared.txt") && stats.contains("refused")
        },
    );

    // The mount dies; one queued file's data is torn; another client changes shared.txt.
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10))
        .expect("alive after SIGKILL");
    force_unmount(&mnt);
    let records = journal_files(&cache, ".item");
    let torn_record = records
        .iter()
        .find(|r| {
            fs::read_to_string(r)
                .unwrap()
                .contains(&common::hex(b"file 3.bin"))
        })
        .expect("file 3.bin's record");
    let torn_data = torn_record.with_extension("data");
    File::options()
        .write(true)
        .open(&torn_data)
        .unwrap()
        .set_len(3)
        .unwrap();
    fs::write(&shared, b"their version").unwrap();
    fs::write(ro.join("fresh.txt"), b"their new file").unwrap();

    let m2 = Mounted::with(config());
    let stats =
        String::from_utf8_lossy(&ftpsfs(&["stats", mnt.to_str().unwrap()]).stdout).into_owned();
    assert!(stats.contains("damaged, not uploaded"), "stats:\n{stats}");
    writable(true);
    let retried = ftpsfs(&["queue", mnt.to_str().unwrap(), "--retry"]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    eventually("the queue empty", Duration::from_secs(60), || {
        journal_files(&cache, ".item").len() == 1
    });
    // Everything landed, with rsync's times, except the torn file.
    let landed = tree(&ro);
    for (path, file) in &expected {
        if path.ends_with("file 3.bin") {
            assert!(!ro.join(path).exists(), "the torn file was uploaded");
        } else {
            assert_eq!(
                landed.get(path),
                Some(file),
                "{} on the server",
                path.display()
            );
        }
    }
    assert_eq!(fs::read(ro.join("synced.txt")).unwrap(), b"fsync me");
    assert_eq!(
        fs::read(&shared).unwrap(),
        b"their version",
        "the other client's change"
    );
    assert_eq!(
        fs::read(ro.join("fresh.txt")).unwrap(),
        b"their new file",
        "the file another client created under our new file's name"
    );
    for (name, ours) in [
        ("shared.txt", b"our version, longer".as_slice()),
        ("fresh.txt", b"our new file"),
    ] {
        let beside: Vec<String> = fs::read_dir(&ro)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{name}.conflict-")))
            .collect();
        assert_eq!(beside.len(), 1, "{beside:?}");
        assert_eq!(fs::read(ro.join(&beside[0])).unwrap(), ours);
    }
    assert!(
        temporaries(&scratch.dir).is_empty(),
        "{:?}",
        temporaries(&scratch.dir)
    );
    // rsync's temporary names never reached the server: one STOR per file, none of
    // them to a `.file N.bin.XXXXXX` name.
    // (A STOR the server refused before the retry may have gone out more than once.)
    let retry_log = m2.log();
    let landed = retry_log
        .lines()
        .filter(|l| l.contains("upload landed") && l.contains(".bin"))
        .count();
    let rsync_files = expected.values().filter(|f| f.is_some()).count();
    assert_eq!(landed, rsync_files - 1, "uploads landed after the retry");
    let stors: Vec<&str> = retry_log
        .lines()
        .filter(|l| l.contains("-> STOR "))
        .collect();
    assert!(
        !stors.iter().any(|l| l.contains("..file ")),
        "an upload went to an rsync temporary name:\n{}",
        stors.join("\n")
    );
    let log = m.log() + &retry_log;
    assert!(
        !log.lines()
            .any(|l| l.contains("-> RNFR") && l.contains("/.file ")),
        "an rsync temporary name was renamed on the server"
    );
    eprintln!("{server:?}: fsync of a refused file: {refused}");
    drop(m2);
    let _ = fs::remove_dir_all(&local);
}

#[test]
fn proftpd_writeback_keeps_refused_files_and_other_clients_changes() {
    refused_then_retried(Server::Proftpd);
}

#[test]
fn vsftpd_writeback_keeps_refused_files_and_other_clients_changes() {
    refused_then_retried(Server::Vsftpd);
}

fn strict_server(root: &Path, port: u16) -> common::strict_server::StrictServer {
    let env = common::env();
    let mut options = common::strict_server::StrictServerOptions::new(
        root,
        env.certs.join("server.pem"),
        env.certs.join("server.key"),
        common::strict_server::TlsVersion::Tls13,
        env.user.clone(),
        &env.password,
    );
    options.writable = true;
    options.port = port;
    common::strict_server::StrictServer::start(options).expect("start the strict server")
}

/// The server goes away with files queued, and so does the mount (`kill -9`): the
/// copy still completes (into a directory listed before), nothing reaches the server
/// meanwhile, and once the server is back a new mount lands every file.
#[test]
fn strict_writeback_lands_everything_after_a_server_outage_and_kill_9() {
    let local = scratch_dir("wb-outage");
    let (root, source, cache, mnt) = (
        local.join("served"),
        local.join("src"),
        local.join("cache"),
        local.join("mnt"),
    );
    fs::create_dir_all(root.join("in")).unwrap();
    fs::create_dir(&mnt).unwrap();
    make_source(&source, 20);
    let mut server = strict_server(&root, 0);
    let port = server.port();
    let config = || {
        MountConfig::new(Server::External, Tls::V13)
            .port(port)
            .mountpoint(&mnt)
            .option("writeback")
            .option(&format!("cache_dir={}", cache.display()))
            .env("RUST_LOG", "ftpsfs=debug")
    };
    let mut m = Mounted::with(config());
    assert!(fs::read_dir(mnt.join("in")).unwrap().next().is_none());
    server.stop();
    let started = Instant::now();
    // Directories are made on the server at once: the files go into one listed before.
    sh(&format!(
        "cp -p {}/a/* {}/in/",
        source.display(),
        mnt.display()
    ));
    let returned = started.elapsed();
    let expected = tree(&source.join("a"));
    assert_eq!(tree(&mnt.join("in")), expected, "the mount shows the copy");
    assert!(
        tree(&root.join("in")).is_empty(),
        "something reached a stopped server"
    );
    eventually(
        "stats saying the uploads are retried",
        Duration::from_secs(20),
        || {
            let out = ftpsfs(&["stats", mnt.to_str().unwrap()]);
            String::from_utf8_lossy(&out.stdout).contains("retrying after")
        },
    );
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10))
        .expect("alive after SIGKILL");
    force_unmount(&mnt);
    assert!(!journal_files(&cache, ".item").is_empty());

    let _server = strict_server(&root, port);
    let m2 = Mounted::with(config());
    eventually("every file on the server", Duration::from_secs(60), || {
        tree(&root.join("in")) == expected
    });
    eventually("the journal empty", Duration::from_secs(10), || {
        journal_files(&cache, ".item").is_empty()
    });
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
    eprintln!(
        "cp of {} files with the server down returned in {returned:?}; all landed after it came back",
        expected.len()
    );
    drop(m2);
    drop(m);
    let _ = fs::remove_dir_all(&local);
}

/// A write-back mount of a strict server of its own (TLS 1.3), which serves
/// `local/served` with `files` in it from the start; more `-o` options in `extra`.
struct WritebackOnStrict {
    m: Mounted,
    server: common::strict_server::StrictServer,
    local: PathBuf,
    root: PathBuf,
    cache: PathBuf,
    mnt: PathBuf,
}

impl WritebackOnStrict {
    fn start(label: &str, files: &[(&str, &[u8])], extra: &[&str]) -> Self {
        let local = scratch_dir(label);
        let (root, cache, mnt) = (local.join("served"), local.join("cache"), local.join("mnt"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir(&mnt).unwrap();
        for (name, body) in files {
            fs::write(root.join(name), body).unwrap();
        }
        let server = strict_server(&root, 0);
        let mut config = MountConfig::new(Server::External, Tls::V13)
            .port(server.port())
            .mountpoint(&mnt)
            .option("writeback")
            .option(&format!("cache_dir={}", cache.display()))
            .env("RUST_LOG", "ftpsfs=debug");
        for option in extra {
            config = config.option(option);
        }
        let m = Mounted::with(config);
        Self {
            m,
            server,
            local,
            root,
            cache,
            mnt,
        }
    }
}

/// A queued file opened again with O_TRUNC while its upload waits (the server refuses
/// data connections for now): what lands is what the program left, an empty file after
/// `: > name`, the new bytes alone after a rewrite held open across the item's next
/// try; never the queued content (the queued item used to land under the open, undoing
/// the truncation, and a write after it landed beside the old bytes).
#[test]
fn strict_writeback_an_open_with_o_trunc_supersedes_the_queued_upload() {
    let old = &b"the server's old content\n"[..];
    let WritebackOnStrict {
        m,
        server,
        local,
        root,
        cache,
        mnt,
    } = WritebackOnStrict::start(
        "wb-otrunc",
        &[("emptied.txt", old), ("rewritten.txt", old)],
        &[],
    );
    server.set_refuse_upload_data(true);
    fs::write(mnt.join("emptied.txt"), b"queued, then emptied\n").unwrap();
    fs::write(
        mnt.join("rewritten.txt"),
        b"queued content, longer than what replaces it\n",
    )
    .unwrap();
    // `: > emptied.txt`
    drop(
        File::options()
            .write(true)
            .truncate(true)
            .open(mnt.join("emptied.txt"))
            .unwrap(),
    );
    let mut held = File::options()
        .write(true)
        .truncate(true)
        .open(mnt.join("rewritten.txt"))
        .unwrap();
    server.set_refuse_upload_data(false);
    // The queued items are tried again meanwhile (1 s after their first refusal).
    thread::sleep(Duration::from_secs(4));
    held.write_all(b"new\n").unwrap();
    held.sync_all().unwrap();
    drop(held);
    File::options()
        .write(true)
        .open(mnt.join("emptied.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(fs::read(root.join("rewritten.txt")).unwrap(), b"new\n");
    assert_eq!(fs::read(root.join("emptied.txt")).unwrap(), b"");
    assert_eq!(fs::read(mnt.join("emptied.txt")).unwrap(), b"");
    eventually("the journal empty", Duration::from_secs(10), || {
        journal_files(&cache, ".item").is_empty()
    });
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
    drop(m);
    let _ = fs::remove_dir_all(&local);
}

/// A queued file's next writer (its upload waits: the item does not land under a
/// writer) killed before it closes: the content closed before lands on its own, without
/// an fsync or a remount (the item's tries used to end while the writer had it).
#[test]
fn strict_writeback_lands_the_queued_content_after_its_next_writer_is_killed() {
    let WritebackOnStrict {
        m,
        server,
        local,
        root,
        cache,
        mnt,
    } = WritebackOnStrict::start("wb-killed-next", &[], &[]);
    server.set_refuse_upload_data(true);
    let acknowledged = b"closed and acknowledged\n";
    fs::write(mnt.join("f.txt"), acknowledged).unwrap();
    // Opens without truncating, overwrites the start, outlives the item's next try
    // (1 s after its first refusal) and is killed.
    let mut writer = Command::new("bash")
        .arg("-c")
        // (`exec 1>&3` rather than `>&3` per command: a redirection of its own would
        // close a copy of the descriptor after the write, which is a close of the file.)
        .arg("exec 3<> \"$1\"; exec 1>&3; printf GARBAGE; sleep 2.5; kill -9 $$")
        .arg("writer")
        .arg(mnt.join("f.txt"))
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    server.set_refuse_upload_data(false);
    assert!(!writer.wait().unwrap().success());
    eventually(
        "the acknowledged content on the server",
        Duration::from_secs(10),
        || fs::read(root.join("f.txt")).ok().as_deref() == Some(&acknowledged[..]),
    );
    assert_eq!(fs::read(mnt.join("f.txt")).unwrap(), acknowledged);
    eventually("the journal empty", Duration::from_secs(10), || {
        journal_files(&cache, ".item").is_empty()
    });
    drop(m);
    let _ = fs::remove_dir_all(&local);
}

/// A queued file written again under a queue cap it alone fills (the server refuses
/// uploads for now): its close replaces its own item, so it does not wait for room that
/// only that item's upload could free (which the close itself held back, until the 30 s
/// stall let it through over the cap).
#[test]
fn strict_writeback_a_rewrite_never_waits_for_the_item_it_replaces() {
    let WritebackOnStrict {
        mut m,
        server,
        local,
        root,
        mnt,
        ..
    } = WritebackOnStrict::start("wb-own-room", &[], &["writeback_size=1M"]);
    server.set_refuse_upload_data(true);
    let first = common::content(700_000, 1);
    let second = common::content(700_000, 2);
    fs::write(mnt.join("big.bin"), &first).unwrap();
    fs::write(mnt.join("big.bin"), &second).unwrap();
    server.set_refuse_upload_data(false);
    File::options()
        .write(true)
        .open(mnt.join("big.bin"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert!(fs::read(root.join("big.bin")).unwrap() == second);
    m.unmount();
    let log = m.log();
    assert!(
        !log.contains("over writeback_size"),
        "a close waited for its own queued item:\n{log}"
    );
    let _ = fs::remove_dir_all(&local);
}

/// A big file written in order goes up while it is written (its upload is on the
/// server's disk before the close), lands as that one upload, and a file written out of
/// order after its upload began, or killed right after its close, still lands whole.
fn big_files_upload_while_written(server: Server) {
    const BIG: u64 = 24 * 1024 * 1024;
    let scratch = ServerScratch::new();
    let local = scratch_dir("wb-follow");
    let (cache, mnt) = (local.join("cache"), local.join("mnt"));
    fs::create_dir(&mnt).unwrap();
    let config = || writeback_config(server, &scratch, &cache, &mnt);
    let mut m = Mounted::with(config());
    let write_in_order = |name: &str, seed: u64| -> (File, Vec<u8>) {
        let data = common::content(BIG, seed);
        let mut file = File::create(mnt.join(name)).unwrap();
        for chunk in data.chunks(1 << 20) {
            file.write_all(chunk).unwrap();
        }
        (file, data)
    };
    let sum = |data: &[u8]| {
        let mut hasher = Sha256::new();
        hasher.update(data);
        common::hex(&hasher.finish())
    };
    let on_server = |name: &str, data: &[u8]| {
        let path = scratch.local(name);
        path.exists()
            && fs::metadata(&path).unwrap().len() == data.len() as u64
            && sha256(&path) == sum(data)
    };

    // In order: the upload is under way before the close.
    let (open, followed) = write_in_order("followed.bin", 1);
    eventually(
        "an upload of followed.bin on the server before its close",
        Duration::from_secs(30),
        || {
            fs::read_dir(&scratch.dir).unwrap().flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(".ftpsfs-")
                    && name.ends_with("followed.bin")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        },
    );
    drop(open);
    eventually(
        "followed.bin on the server",
        Duration::from_secs(60),
        || on_server("followed.bin", &followed),
    );

    // Out of order after the upload began: given up, and the file lands as written.
    let (open, mut rewritten) = write_in_order("rewritten.bin", 2);
    eventually(
        "rewritten.bin's upload begun",
        Duration::from_secs(30),
        || {
            m.log()
                .matches("uploading while the file is written")
                .count()
                >= 2
        },
    );
    use std::os::unix::fs::FileExt;
    open.write_all_at(b"changed near the start", 4096).unwrap();
    rewritten[4096..4096 + 22].copy_from_slice(b"changed near the start");
    drop(open);
    eventually(
        "rewritten.bin on the server",
        Duration::from_secs(60),
        || on_server("rewritten.bin", &rewritten),
    );
    assert!(m
        .log()
        .contains("the upload following the writes is given up"));

    // Killed right after the close: the next mount lands it and deletes the follower's.
    let (open, killed) = write_in_order("killed.bin", 3);
    drop(open);
    m.signal(libc::SIGKILL);
    m.wait_exit(Duration::from_secs(10))
        .expect("alive after SIGKILL");
    force_unmount(&mnt);
    let log = m.log();
    let m2 = Mounted::with(config());
    eventually("killed.bin on the server", Duration::from_secs(60), || {
        on_server("killed.bin", &killed)
    });
    eventually("no temporary files", Duration::from_secs(20), || {
        temporaries(&scratch.dir).is_empty()
    });
    eventually("the journal empty", Duration::from_secs(10), || {
        journal_files(&cache, ".item").is_empty()
    });
    // followed.bin went up once: the upload that followed its writes.
    let stors = log
        .lines()
        .filter(|l| l.contains("-> STOR ") && l.contains("followed.bin"))
        .count();
    assert_eq!(stors, 1, "uploads of followed.bin");
    drop(m2);
    let _ = fs::remove_dir_all(&local);
}

#[test]
fn vsftpd_writeback_uploads_big_files_while_they_are_written() {
    big_files_upload_while_written(Server::Vsftpd);
}

#[test]
fn proftpd_writeback_uploads_big_files_while_they_are_written() {
    big_files_upload_while_written(Server::Proftpd);
}
