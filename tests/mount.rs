//! The FUSE mount's reading side, mounted for real (`ftpsfs URL MOUNTPOINT -f`) against every
//! test server on TLS 1.2 and TLS 1.3, and used the way people use it: `find`, `ls -lR`,
//! `sha256sum -c`, `cp -r`, `rsync -a`, plain std::fs calls.
//!
//! Needs the servers of `scripts/servers.sh start`, /dev/fuse, fusermount3 and rsync.
//! Every test mounts into its own directory under /tmp, so they run in parallel.
//!
//! The tests that change files in the served tree do it in `.ftpsfs-scratch-*` directories
//! at its top, which the whole-tree comparisons leave out (and servers.sh keeps out of
//! SHA256SUMS): they come and go while other tests walk the tree.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mount::{
    force_unmount, is_fuse_mounted, mounted_fstype, pids_with_arg, process_alive, read_at_most,
    run, scratch_dir, wait_timeout, MountConfig, Mounted, ServerScratch, EXIT_TIMEOUT,
};
use common::{env, expected_sha256, hex, target, Server, Tls};
use openssl::sha::Sha256;

/// Top-level entries of the served tree that belong to running tests, not to the sample data.
const SCRATCH_PREFIX: &str = ".ftpsfs-scratch-";

/// Deadline for one external command (`find`, `sha256sum`, `rsync` ...) on a mount.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

const HUGE: &str = "huge.bin";
const HUGE_SIZE: u64 = 256 << 20;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn data() -> &'static Path {
    &env().data
}

/// Whether the server's listings show `link-to-small` as a symlink. The strict server
/// follows symlinks in its listings (like FileZilla Server), so through it the link is a
/// plain copy of small.txt; every other server lists it as a symlink.
fn shows_symlinks(server: Server) -> bool {
    server != Server::Strict
}

/// Whether the server's listings are `LIST` (vsftpd has no MLSD), whose times are rounded
/// down to the minute (recent files) or to the day (older than six months).
fn lists_with_list(server: Server) -> bool {
    matches!(server, Server::Vsftpd | Server::VsftpdImplicit)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Checks a modification time seen through the mount against the local one, at the
/// precision of the server's listing. The mount may be more precise (MDTM), never off.
fn check_mtime(server: Server, name: &str, local: i64, mounted: i64) -> Result<(), String> {
    if lists_with_list(server) {
        // `Mon DD HH:MM` within the last ~6 months, else `Mon DD  YYYY`.
        let precision = if unix_now() - local > 180 * 86400 {
            86400
        } else {
            60
        };
        if mounted <= local && local - mounted < precision {
            return Ok(());
        }
        Err(format!(
            "{name}: mtime {mounted} through the mount, {local} locally: more than the listing's {precision} s precision apart"
        ))
    } else if mounted == local {
        Ok(())
    } else {
        Err(format!(
            "{name}: mtime {mounted} through the mount, {local} locally (MLSD gives the exact second)"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink(PathBuf),
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    /// Bytes for files and symlinks; directories' sizes are not compared.
    size: u64,
    mtime: i64,
}

/// Every entry under `root` (not following symlinks), by relative path, leaving out the
/// top-level scratch directories. Also asserts that no directory lists a name twice.
fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let mut seen = BTreeSet::new();
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            let name = entry.file_name();
            assert!(
                name != "." && name != "..",
                "{} lists {name:?}",
                dir.display()
            );
            assert!(
                seen.insert(name.clone()),
                "{} lists {name:?} twice",
                dir.display()
            );
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if dir == root && name.as_bytes().starts_with(SCRATCH_PREFIX.as_bytes()) {
                continue;
            }
            let meta = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let kind = if meta.file_type().is_symlink() {
                Kind::Symlink(
                    fs::read_link(&path)
                        .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())),
                )
            } else if meta.is_dir() {
                Kind::Dir
            } else if meta.is_file() {
                Kind::File
            } else {
                panic!(
                    "{}: neither file, dir nor symlink: {meta:?}",
                    path.display()
                )
            };
            let is_dir = kind == Kind::Dir;
            out.insert(
                relative,
                Node {
                    kind,
                    size: if is_dir { 0 } else { meta.len() },
                    mtime: meta.mtime(),
                },
            );
            if is_dir {
                visit(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

/// The local data tree as this server shows it.
fn expected_tree(server: Server) -> BTreeMap<PathBuf, Node> {
    let mut tree = walk(data());
    assert!(
        matches!(&tree[Path::new("link-to-small")].kind, Kind::Symlink(t) if t == Path::new("small.txt")),
        "the sample data's link-to-small is not a symlink to small.txt: rerun scripts/servers.sh start"
    );
    if !shows_symlinks(server) {
        let small = tree[Path::new("small.txt")].clone();
        tree.insert("link-to-small".into(), small);
    }
    tree
}

fn show(paths: &[&PathBuf]) -> String {
    let mut s: Vec<String> = paths.iter().take(20).map(|p| format!("{p:?}")).collect();
    if paths.len() > 20 {
        s.push(format!("... {} more", paths.len() - 20));
    }
    s.join(", ")
}

/// `find DIR -mindepth 1` as `type size path` lines (directories without a size), sorted,
/// scratch directories left out.
fn find_lines(dir: &Path) -> Vec<String> {
    let out = run(
        Command::new("find")
            .arg(dir)
            .args([
                "-mindepth",
                "1",
                "(",
                "-type",
                "d",
                "-printf",
                "d - %P\\n",
                ")",
            ])
            .args(["-o", "-printf", "%y %s %P\\n"]),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "find {}: {}\n{}",
        dir.display(),
        out.status,
        text(&out.stderr)
    );
    let mut lines: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| {
            !l.splitn(3, ' ')
                .nth(2)
                .is_some_and(|p| p.starts_with(SCRATCH_PREFIX))
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn tree_matches(server: Server, tls: Tls) {
    let m = Mounted::new(server, tls);
    let expected = expected_tree(server);
    let mounted = walk(m.path());

    let missing: Vec<&PathBuf> = expected
        .keys()
        .filter(|k| !mounted.contains_key(*k))
        .collect();
    let extra: Vec<&PathBuf> = mounted
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{server:?} {tls:?}: missing from the mount: [{}]; only in the mount: [{}]",
        show(&missing),
        show(&extra)
    );
    let mut errors = Vec::new();
    for (path, want) in &expected {
        let got = &mounted[path];
        let name = path.display();
        if got.kind != want.kind {
            errors.push(format!(
                "{name}: {:?} through the mount, {:?} expected",
                got.kind, want.kind
            ));
            continue;
        }
        if want.kind != Kind::Dir && got.size != want.size {
            errors.push(format!(
                "{name}: {} bytes through the mount, {} expected",
                got.size, want.size
            ));
        }
        if let Err(e) = check_mtime(server, &name.to_string(), want.mtime, got.mtime) {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "{server:?} {tls:?}: {} differences, first ones:\n{}",
        errors.len(),
        errors
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The names the sample data is there for, spelled out so that a broken sample tree
    // cannot make the comparison above vacuous.
    for name in [
        "with space.txt",
        "ünïcödé-名前.txt",
        ".hidden",
        "empty.txt",
        "dir1/dir2/dir3/deep.txt",
        "many/f0000.txt",
        "many/f2999.txt",
        "large.bin",
        HUGE,
    ] {
        assert!(
            mounted.contains_key(Path::new(name)),
            "{name} missing from the mount"
        );
    }
    assert_eq!(mounted[Path::new("empty.txt")].size, 0);
    assert_eq!(
        fs::read_dir(m.join("many")).unwrap().count(),
        3000,
        "entries in many/"
    );
    assert_eq!(
        fs::read_to_string(m.join("dir1/dir2/dir3/deep.txt")).unwrap(),
        "deep\n"
    );
    let small = fs::read(data().join("small.txt")).unwrap();
    let link = m.join("link-to-small");
    if shows_symlinks(server) {
        let meta = fs::symlink_metadata(&link).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{server:?}: link-to-small is {meta:?}"
        );
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("small.txt"));
    } else {
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
    }
    // Through the link (followed by the kernel, or served as a copy).
    assert_eq!(fs::read(&link).unwrap(), small);
    // small.txt's mtime is fixed: 2020-01-02 03:04:05 UTC.
    let small_mtime = fs::metadata(m.join("small.txt")).unwrap().mtime();
    check_mtime(server, "small.txt", 1_577_934_245, small_mtime).unwrap();

    // The same through find(1) and ls(1).
    let mut local_find = find_lines(data());
    if !shows_symlinks(server) {
        for line in &mut local_find {
            if line.ends_with(" link-to-small") {
                *line = format!("f {} link-to-small", small.len());
            }
        }
        local_find.sort();
    }
    let mount_find = find_lines(m.path());
    if mount_find != local_find {
        let a: BTreeSet<_> = local_find.iter().collect();
        let b: BTreeSet<_> = mount_find.iter().collect();
        panic!(
            "{server:?} {tls:?}: find differs; only local: {:?}; only in the mount: {:?}",
            a.difference(&b).take(20).collect::<Vec<_>>(),
            b.difference(&a).take(20).collect::<Vec<_>>()
        );
    }
    // `ls -R .` prints no hidden names, hence no scratch directories, and relative headers.
    let ls = |dir: &Path, args: &[&str]| {
        let out = run(
            Command::new("ls")
                .args(args)
                .arg(".")
                .current_dir(dir)
                .env("LC_ALL", "C"),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "ls {args:?} in {}: {}\n{}",
            dir.display(),
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    assert_eq!(ls(m.path(), &["-R"]), ls(data(), &["-R"]), "ls -R");
    assert_eq!(
        ls(m.path(), &["-lR"]).lines().count(),
        ls(data(), &["-lR"]).lines().count(),
        "lines of ls -lR"
    );
}

/// `sha256sum -c` processes run at once over SHA256SUMS: the mount's default number of
/// connections. One process would spend most of its time waiting for 3000 small
/// transfers one after the other (about 40 s against the strict server, which polls).
const SHA256SUM_PROCESSES: usize = 4;

fn checksums_match(server: Server, tls: Tls) {
    let m = Mounted::new(server, tls);
    let sums = fs::read_to_string(data().join("SHA256SUMS")).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    let files = lines.len();
    assert!(files > 3000, "SHA256SUMS lists only {files} files");
    // Every file, dealt round-robin into the lists, so the big ones are read in parallel.
    let lists = scratch_dir("sums");
    let _cleanup = RemoveOnDrop(lists.clone());
    let list_paths: Vec<PathBuf> = (0..SHA256SUM_PROCESSES)
        .map(|i| {
            let part: String = lines
                .iter()
                .skip(i)
                .step_by(SHA256SUM_PROCESSES)
                .map(|l| format!("{l}\n"))
                .collect();
            let path = lists.join(format!("SHA256SUMS.{i}"));
            fs::write(&path, part).unwrap();
            path
        })
        .collect();
    let started = Instant::now();
    let checkers: Vec<_> = list_paths
        .into_iter()
        .map(|list| {
            let mount = m.path().to_path_buf();
            thread::spawn(move || {
                run(
                    Command::new("sha256sum")
                        .arg("-c")
                        .arg(&list)
                        .current_dir(&mount),
                    COMMAND_TIMEOUT,
                )
            })
        })
        .collect();
    let mut checked = 0;
    for (i, checker) in checkers.into_iter().enumerate() {
        let out = checker.join().expect("sha256sum thread");
        let stdout = text(&out.stdout);
        let bad: Vec<&str> = stdout.lines().filter(|l| !l.ends_with(": OK")).collect();
        assert!(
            out.status.success() && bad.is_empty(),
            "{server:?} {tls:?}: sha256sum -c (part {i}): {}\n{}\n{}",
            out.status,
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
            text(&out.stderr)
        );
        checked += stdout.lines().count();
    }
    assert_eq!(checked, files, "files checked");
    println!(
        "{server:?} {tls:?}: sha256sum -c of {files} files in {:?}",
        started.elapsed()
    );
}

fn require_rsync() {
    let found = Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "rsync is not installed: this test copies the mount with `rsync -a`; add rsync to scripts/install-deps.sh (or apt-get install rsync)"
    );
}

/// `diff -r A B`, without the scratch directories (and `many`, if asked).
fn diff(a: &Path, b: &Path, dereference: bool, exclude_many: bool) {
    let mut command = Command::new("diff");
    command
        .arg("-r")
        .arg(format!("--exclude={SCRATCH_PREFIX}*"));
    if !dereference {
        command.arg("--no-dereference");
    }
    if exclude_many {
        command.arg("--exclude=many");
    }
    let out = run(command.arg(a).arg(b), COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "diff -r {} {}: {}\n{}{}",
        a.display(),
        b.display(),
        out.status,
        text(&out.stdout)
            .lines()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        text(&out.stderr)
    );
}

fn copies_match(server: Server, tls: Tls) {
    require_rsync();
    let m = Mounted::new(server, tls);
    let tmp = scratch_dir("copy");
    let _cleanup = RemoveOnDrop(tmp.clone());

    let out = run(
        Command::new("cp").arg("-r").arg(m.join("dir1")).arg(&tmp),
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "cp -r: {}", text(&out.stderr));
    diff(&data().join("dir1"), &tmp.join("dir1"), true, false);
    assert_eq!(
        fs::read_to_string(tmp.join("dir1/dir2/dir3/deep.txt")).unwrap(),
        "deep\n"
    );

    let copy = tmp.join("rsync");
    let started = Instant::now();
    let mut source = m.path().as_os_str().to_owned();
    source.push("/");
    let mut rsync = Command::new("rsync");
    rsync.arg("-a").arg(format!("--exclude=/{SCRATCH_PREFIX}*"));
    // The strict server polls its sockets and needs ~14 ms per transfer: its 3000 files
    // in many/ alone would take 40 s here. Its every_file_matches_sha256sums and
    // tree_matches_local_data tests cover many/ through the mount.
    let skip_many = server == Server::Strict;
    if skip_many {
        rsync.arg("--exclude=/many/");
    }
    let out = run(rsync.arg(&source).arg(&copy), COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{server:?} {tls:?}: rsync -a: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    println!(
        "{server:?} {tls:?}: rsync -a of the mount in {:?}",
        started.elapsed()
    );
    // Through servers that show symlinks, rsync -a must have copied a symlink.
    diff(data(), &copy, !shows_symlinks(server), skip_many);
    let link = fs::symlink_metadata(copy.join("link-to-small")).unwrap();
    assert_eq!(link.file_type().is_symlink(), shows_symlinks(server));
    if !skip_many {
        assert_eq!(fs::read_dir(copy.join("many")).unwrap().count(), 3000);
    }
    // rsync -a kept the modification times the mount showed.
    for name in ["small.txt", "large.bin", "dir1/dir2/dir3/deep.txt"] {
        assert_eq!(
            fs::metadata(copy.join(name)).unwrap().mtime(),
            fs::metadata(m.join(name)).unwrap().mtime(),
            "{name}: mtime of the rsync copy"
        );
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, result: io::Result<T>) {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => panic!("{what}: expected EROFS, got {other:?}"),
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn libc_result(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn writes_fail(server: Server, tls: Tls) {
    let m = Mounted::with(MountConfig::new(server, tls).option("ro"));
    let small = m.join("small.txt");
    let new = m.join("new-file.txt");
    assert_erofs("create a file", File::create(&new));
    assert_erofs(
        "create_new a file",
        OpenOptions::new().write(true).create_new(true).open(&new),
    );
    assert_erofs(
        "open for writing",
        OpenOptions::new().write(true).open(&small),
    );
    assert_erofs(
        "open for appending",
        OpenOptions::new().append(true).open(&small),
    );
    assert_erofs(
        "open read-write",
        OpenOptions::new().read(true).write(true).open(&small),
    );
    assert_erofs("mkdir", fs::create_dir(m.join("new-dir")));
    assert_erofs("mkdir in a subdir", fs::create_dir(m.join("dir1/new-dir")));
    assert_erofs("rm", fs::remove_file(&small));
    assert_erofs(
        "rm in a subdir",
        fs::remove_file(m.join("dir1/dir2/dir3/deep.txt")),
    );
    assert_erofs("rmdir", fs::remove_dir(m.join("dir1/dir2/dir3")));
    assert_erofs("rename", fs::rename(&small, m.join("renamed.txt")));
    assert_erofs(
        "symlink",
        std::os::unix::fs::symlink("small.txt", m.join("new-link")),
    );
    assert_erofs("hard link", fs::hard_link(&small, m.join("new-hard-link")));
    assert_erofs(
        "chmod",
        fs::set_permissions(&small, fs::Permissions::from_mode(0o600)),
    );
    assert_erofs("chown", std::os::unix::fs::chown(&small, Some(0), Some(0)));
    assert_erofs(
        "truncate",
        libc_result(unsafe { libc::truncate(c_path(&small).as_ptr(), 0) }),
    );
    // touch: utimensat(path, NULL) sets both times to now.
    assert_erofs(
        "touch (utimensat)",
        libc_result(unsafe {
            libc::utimensat(libc::AT_FDCWD, c_path(&small).as_ptr(), std::ptr::null(), 0)
        }),
    );
    for path in [&small, &new] {
        let out = run(
            Command::new("touch").arg(path).env("LC_ALL", "C"),
            COMMAND_TIMEOUT,
        );
        assert!(
            !out.status.success() && text(&out.stderr).contains("Read-only file system"),
            "touch {}: {} {}",
            path.display(),
            out.status,
            text(&out.stderr)
        );
    }
    // Nothing changed, through the mount or on the server.
    assert_eq!(
        fs::read(&small).unwrap(),
        fs::read(data().join("small.txt")).unwrap()
    );
    for name in [
        "new-file.txt",
        "new-dir",
        "renamed.txt",
        "new-link",
        "new-hard-link",
    ] {
        assert!(
            !data().join(name).exists(),
            "{name} was created on the server"
        );
        match fs::symlink_metadata(m.join(name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => panic!("{name} through the mount: {other:?}"),
        }
    }
    assert!(data().join("dir1/dir2/dir3/deep.txt").exists());
}

fn assert_errno<T: std::fmt::Debug>(what: &str, errno: i32, result: io::Result<T>) {
    match result {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        other => panic!(
            "{what}: expected {}, got {other:?}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

fn missing_paths(server: Server, tls: Tls) {
    let m = Mounted::new(server, tls);
    let enoent = libc::ENOENT;
    assert_errno(
        "read a missing file",
        enoent,
        fs::read(m.join("no-such-file.txt")),
    );
    assert_errno(
        "open a missing file",
        enoent,
        File::open(m.join("no-such-file.txt")),
    );
    assert_errno(
        "stat a missing file",
        enoent,
        fs::metadata(m.join("no-such-file.txt")),
    );
    assert_errno(
        "list a missing dir",
        enoent,
        fs::read_dir(m.join("no-such-dir")),
    );
    assert_errno(
        "read in a missing dir",
        enoent,
        fs::read(m.join("dir1/no-such-dir/file.txt")),
    );
    assert_errno(
        "missing file in a subdir",
        enoent,
        fs::read(m.join("dir1/dir2/nope.txt")),
    );
    assert_errno(
        "list a file",
        libc::ENOTDIR,
        fs::read_dir(m.join("small.txt")),
    );
    assert_errno(
        "path through a file",
        libc::ENOTDIR,
        fs::read(m.join("small.txt/x")),
    );
    let out = run(
        Command::new("ls")
            .arg(m.join("no-such-dir"))
            .env("LC_ALL", "C"),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.code() == Some(2) && text(&out.stderr).contains("No such file or directory"),
        "ls of a missing dir: {} {}",
        out.status,
        text(&out.stderr)
    );
    // Asking twice (now from the mount's cache) gives the same answer, and real names
    // still work afterwards.
    assert_errno(
        "read a missing file again",
        enoent,
        fs::read(m.join("no-such-file.txt")),
    );
    assert_eq!(
        fs::read(m.join("small.txt")).unwrap(),
        fs::read(data().join("small.txt")).unwrap()
    );
}

/// Reads all of `file` with `buf_size` reads, returning the SHA-256 and the byte count.
fn sha256_of(mut file: File, buf_size: usize) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; buf_size];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finish()), total))
}

fn huge_sequential(server: Server, tls: Tls) {
    let m = Mounted::new(server, tls);
    assert_eq!(fs::metadata(m.join(HUGE)).unwrap().len(), HUGE_SIZE);
    let started = Instant::now();
    let (sha, total) = sha256_of(File::open(m.join(HUGE)).unwrap(), 1 << 20).unwrap();
    assert_eq!(total, HUGE_SIZE);
    assert_eq!(
        sha,
        expected_sha256(HUGE),
        "{server:?} {tls:?}: SHA-256 of {HUGE}"
    );
    let elapsed = started.elapsed();
    println!(
        "{server:?} {tls:?}: read {HUGE} sequentially in {elapsed:?} ({:.0} MiB/s)",
        256.0 / elapsed.as_secs_f64()
    );
}

/// xorshift64*: reproducible offsets without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn huge_random(server: Server, tls: Tls) {
    let m = Mounted::new(server, tls);
    let remote = File::open(m.join(HUGE)).unwrap();
    let local = File::open(data().join(HUGE)).unwrap();
    let seed = 0x5eed_f7b5_0000_0001u64 ^ (tls as u64);
    let mut rng = Rng(seed);
    let mib = 1u64 << 20;
    // Edges first: both ends, block boundaries (1 MiB blocks by default), past the end.
    let mut reads: Vec<(u64, usize)> = vec![
        (0, 1),
        (HUGE_SIZE - 1, 1),
        (mib - 1, 2),
        (4 * mib - 7, 3 * mib as usize),
        (HUGE_SIZE - 10, 100),
        (HUGE_SIZE, 10),
        (HUGE_SIZE + 12345, 10),
    ];
    while reads.len() < 200 {
        let offset = rng.below(HUGE_SIZE);
        let len = match rng.below(4) {
            0 => 1 + rng.below(512),
            1 => 1 + rng.below(64 * 1024),
            _ => 1 + rng.below(3 * mib),
        };
        reads.push((offset, len as usize));
    }
    let started = Instant::now();
    let mut bytes = 0usize;
    for (i, &(offset, len)) in reads.iter().enumerate() {
        let got = read_at_most(&remote, offset, len)
            .unwrap_or_else(|e| panic!("read {i}: {len} bytes at {offset}: {e}"));
        let want = read_at_most(&local, offset, len).unwrap();
        assert_eq!(
            got.len(),
            want.len(),
            "{server:?} {tls:?}: read {i} (seed {seed:#x}): {len} bytes at {offset}"
        );
        if let Some(pos) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{server:?} {tls:?}: read {i} (seed {seed:#x}): {len} bytes at {offset}: first difference at file offset {}",
                offset + pos as u64
            );
        }
        bytes += got.len();
    }
    println!(
        "{server:?} {tls:?}: {} random reads ({} MiB) in {:?}",
        reads.len(),
        bytes >> 20,
        started.elapsed()
    );
}

fn huge_concurrent(server: Server, tls: Tls) {
    let m = Mounted::new(server, tls);
    let expected = expected_sha256(HUGE);
    let started = Instant::now();
    let path = m.join(HUGE);
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let file = File::open(&path).map_err(|e| format!("reader {i}: open: {e}"))?;
                // Different buffer sizes: different FUSE read patterns.
                sha256_of(file, (64 << 10) << (i % 4)).map_err(|e| format!("reader {i}: {e}"))
            })
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let (sha, total) = reader
            .join()
            .expect("reader thread")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(total, HUGE_SIZE, "reader {i}");
        assert_eq!(
            sha, expected,
            "{server:?} {tls:?}: reader {i}: SHA-256 of {HUGE}"
        );
    }
    println!(
        "{server:?} {tls:?}: 8 concurrent readers of {HUGE} in {:?}",
        started.elapsed()
    );
}

macro_rules! mount_suite {
    ($module:ident, $server:expr, $tls:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn tree_matches_local_data() {
                super::tree_matches($server, $tls)
            }

            #[test]
            fn every_file_matches_sha256sums() {
                super::checksums_match($server, $tls)
            }

            #[test]
            fn cp_and_rsync_copies_are_identical() {
                super::copies_match($server, $tls)
            }

            #[test]
            fn a_read_only_mount_refuses_every_change() {
                super::writes_fail($server, $tls)
            }

            #[test]
            fn missing_paths_are_enoent() {
                super::missing_paths($server, $tls)
            }
        }
    };
}

macro_rules! huge_suite {
    ($module:ident, $server:expr, $tls:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn huge_file_sequential_read() {
                super::huge_sequential($server, $tls)
            }

            #[test]
            fn huge_file_random_reads() {
                super::huge_random($server, $tls)
            }

            #[test]
            fn huge_file_eight_concurrent_readers() {
                super::huge_concurrent($server, $tls)
            }
        }
    };
}

mount_suite!(vsftpd_tls12, Server::Vsftpd, Tls::V12);
mount_suite!(vsftpd_tls13, Server::Vsftpd, Tls::V13);
mount_suite!(vsftpd_implicit_tls12, Server::VsftpdImplicit, Tls::V12);
mount_suite!(vsftpd_implicit_tls13, Server::VsftpdImplicit, Tls::V13);
mount_suite!(proftpd_tls12, Server::Proftpd, Tls::V12);
mount_suite!(proftpd_tls13, Server::Proftpd, Tls::V13);
mount_suite!(pureftpd_tls12, Server::PureFtpd, Tls::V12);
mount_suite!(pureftpd_tls13, Server::PureFtpd, Tls::V13);
mount_suite!(strict_tls12, Server::Strict, Tls::V12);
mount_suite!(strict_tls13, Server::Strict, Tls::V13);

huge_suite!(vsftpd_tls13_huge, Server::Vsftpd, Tls::V13);
huge_suite!(proftpd_tls12_huge, Server::Proftpd, Tls::V12);
huge_suite!(strict_tls13_huge, Server::Strict, Tls::V13);

// ---- vsftpd only: changes on the server, the mount's lifecycle, failures ----

/// How long after a change on the server a `dir_cache=1` mount must show it.
const AFTER_DIR_CACHE: Duration = Duration::from_millis(2500);

#[test]
fn vsftpd_changed_file_is_seen_after_dir_cache_expires() {
    let scratch = ServerScratch::new();
    let first = b"first version\n".as_slice();
    let second = b"second version: longer, different content\n".as_slice();
    let relative = scratch.write("changing.txt", first);
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).dir_cache(1));
    let path = m.join(&relative);
    assert_eq!(fs::read(&path).unwrap(), first);
    assert_eq!(fs::metadata(&path).unwrap().len(), first.len() as u64);

    scratch.write("changing.txt", second);
    thread::sleep(AFTER_DIR_CACHE);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        second.len() as u64,
        "size through the mount {AFTER_DIR_CACHE:?} after the change (dir_cache=1)"
    );
    assert_eq!(
        text(&fs::read(&path).unwrap()),
        text(second),
        "content through the mount {AFTER_DIR_CACHE:?} after the change (dir_cache=1)"
    );
}

#[test]
fn vsftpd_same_size_new_mtime_is_seen_after_dir_cache_expires() {
    let scratch = ServerScratch::new();
    let first = b"version A of the file\n".as_slice();
    let second = b"version B of the file\n".as_slice();
    assert_eq!(first.len(), second.len());
    let relative = scratch.write("same-size.txt", first);
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V12).dir_cache(1));
    let path = m.join(&relative);
    assert_eq!(fs::read(&path).unwrap(), first);
    let old_mtime = fs::metadata(&path).unwrap().mtime();

    scratch.write("same-size.txt", second);
    // A different day, so that even LIST's precision shows the change.
    let out = Command::new("touch")
        .args(["-d", "2021-03-04 05:06:07 UTC"])
        .arg(scratch.local("same-size.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "touch -d: {}", text(&out.stderr));
    let new_local = fs::metadata(scratch.local("same-size.txt"))
        .unwrap()
        .mtime();
    assert_eq!(new_local, 1_614_834_367);
    thread::sleep(AFTER_DIR_CACHE);

    let meta = fs::metadata(&path).unwrap();
    assert_ne!(
        meta.mtime(),
        old_mtime,
        "mtime through the mount did not change"
    );
    check_mtime(Server::Vsftpd, "same-size.txt", new_local, meta.mtime()).unwrap();
    assert_eq!(
        text(&fs::read(&path).unwrap()),
        text(second),
        "content through the mount after a same-size change with a new mtime (dir_cache=1)"
    );
}

/// vsftpd lists times to the minute: a file rewritten with the same size within the same
/// minute looks unchanged in the listing. The exact time (MDTM) is checked before cached
/// data is reused under a newer listing, so the new bytes are read.
#[test]
fn vsftpd_same_size_same_minute_rewrite_is_seen() {
    let scratch = ServerScratch::new();
    let first = b"0123456789".as_slice();
    let second = b"abcdefghij".as_slice();
    // Recent (so LIST shows the minute, not the day), at second 5 and then 35 of one
    // minute.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = (now - 3600) / 60 * 60;
    let set_time = |seconds: u64| {
        File::options()
            .write(true)
            .open(scratch.local("rewritten.bin"))
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(minute + seconds))
            .unwrap();
    };
    let relative = scratch.write("rewritten.bin", first);
    set_time(5);
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).dir_cache(1));
    let path = m.join(&relative);
    assert_eq!(fs::read(&path).unwrap(), first);
    assert_eq!(fs::read(&path).unwrap(), first, "a re-read");

    scratch.write("rewritten.bin", second);
    set_time(35);
    thread::sleep(AFTER_DIR_CACHE);
    assert_eq!(
        text(&fs::read(&path).unwrap()),
        text(second),
        "old bytes served after a same-size rewrite within the listed minute"
    );
    // And the exact time is what the mount shows from then on.
    assert_eq!(fs::read(&path).unwrap(), second);
}

/// An absolute symlink target points into the local machine's own tree once the kernel
/// follows it; with `transform_symlinks` one inside the mounted directory is shown
/// relative and resolves inside the mount.
#[test]
fn vsftpd_transform_symlinks_makes_absolute_targets_inside_the_mount_relative() {
    let scratch = ServerScratch::new();
    fs::create_dir(scratch.local("sub")).unwrap();
    fs::set_permissions(scratch.local("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    scratch.write("sub/file.txt", b"reached through the link\n");
    // vsftpd chroots to the data directory: "/" there is its root.
    let inside = format!("/{}/sub/file.txt", scratch.name);
    std::os::unix::fs::symlink(&inside, scratch.local("abs-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", scratch.local("outside-link")).unwrap();

    let m = Mounted::new(Server::Vsftpd, Tls::V13);
    let dir = m.join(&scratch.name);
    assert_eq!(
        fs::read_link(dir.join("abs-link")).unwrap(),
        Path::new(&inside)
    );
    drop(m);

    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).option("transform_symlinks"));
    let dir = m.join(&scratch.name);
    assert_eq!(
        fs::read_link(dir.join("abs-link")).unwrap(),
        Path::new("sub/file.txt")
    );
    assert_eq!(
        fs::read(dir.join("abs-link")).unwrap(),
        b"reached through the link\n"
    );
    // vsftpd's root is the mount's root: the server's /etc/hostname is the mount's, not
    // the local machine's (targets outside a mounted subdirectory stay as they are; see
    // names.rs's tests).
    assert_eq!(
        fs::read_link(dir.join("outside-link")).unwrap(),
        Path::new("../etc/hostname")
    );
    let err = fs::read(dir.join("outside-link")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

#[test]
fn vsftpd_mount_unmount_cycles_leave_nothing_behind() {
    for cycle in 0..5 {
        let mut m = Mounted::new(Server::Vsftpd, Tls::V13);
        let mountpoint = m.path().to_path_buf();
        let pid = m.pid();
        let out = run(Command::new("ls").arg(m.path()), COMMAND_TIMEOUT);
        assert!(
            out.status.success() && text(&out.stdout).lines().any(|l| l == "small.txt"),
            "cycle {cycle}: ls: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let status = m.unmount();
        assert!(
            status.success(),
            "cycle {cycle}: ftpsfs exited with {status}; log:\n{}",
            m.log()
        );
        assert!(
            !process_alive(pid),
            "cycle {cycle}: ftpsfs pid {pid} still there"
        );
        assert_eq!(
            mounted_fstype(&mountpoint),
            None,
            "cycle {cycle}: still in /proc/self/mountinfo"
        );
        assert_eq!(
            fs::read_dir(&mountpoint).unwrap().count(),
            0,
            "cycle {cycle}: the unmounted mountpoint is not the empty directory again"
        );
        assert!(
            pids_with_arg(&mountpoint).is_empty(),
            "cycle {cycle}: processes left"
        );
        drop(m);
        assert!(
            !mountpoint.exists(),
            "cycle {cycle}: mountpoint not cleaned up"
        );
    }
}

/// A background ftpsfs found by its mountpoint: unmounted and ended (by PID) on drop.
struct Background {
    mountpoint: PathBuf,
}

impl Drop for Background {
    fn drop(&mut self) {
        if mounted_fstype(&self.mountpoint).is_some() {
            force_unmount(&self.mountpoint);
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while !pids_with_arg(&self.mountpoint).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        for pid in pids_with_arg(&self.mountpoint) {
            eprintln!("killing leftover ftpsfs pid {pid}");
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        if mounted_fstype(&self.mountpoint).is_none() {
            let _ = fs::remove_dir_all(self.mountpoint.parent().unwrap());
        }
    }
}

#[test]
fn vsftpd_detached_mount_returns_once_mounted() {
    let target = target(Server::Vsftpd, Tls::V13);
    let dir = scratch_dir("detach");
    let mountpoint = dir.join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let _guard = Background {
        mountpoint: mountpoint.clone(),
    };
    let config = MountConfig::new(Server::Vsftpd, Tls::V13);
    // stderr is a pipe, as in `out=$(ftpsfs ...)`: the background process must not keep
    // it open, or the caller waits for EOF until the unmount.
    let mut child = config
        .command(&target, &mountpoint, false)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftpsfs");
    let mut stderr = child.stderr.take().unwrap();
    let (eof_tx, eof_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let _ = eof_tx.send(buf);
    });
    let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("ftpsfs without -f did not return within 20 s")
    });
    // Mounted at the moment the parent returns: scripts go on using the mountpoint.
    let mounted_on_return = mounted_fstype(&mountpoint);
    let stderr_eof = eof_rx.recv_timeout(Duration::from_secs(5));
    assert!(
        status.success(),
        "ftpsfs without -f exited with {status}: {}",
        stderr_eof.as_ref().map(|b| text(b)).unwrap_or_default()
    );
    assert!(
        mounted_on_return
            .as_deref()
            .is_some_and(|t| t.starts_with("fuse")),
        "not mounted when the parent exited 0 ({mounted_on_return:?})"
    );
    let daemons = pids_with_arg(&mountpoint);
    assert_eq!(daemons.len(), 1, "background processes: {daemons:?}");
    let daemon = daemons[0];
    assert_ne!(daemon, child.id(), "the parent is still running");

    assert_eq!(
        fs::read(mountpoint.join("small.txt")).unwrap(),
        fs::read(data().join("small.txt")).unwrap()
    );
    assert_eq!(fs::read_dir(mountpoint.join("many")).unwrap().count(), 3000);

    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        text(&out.stderr)
    );
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while process_alive(daemon) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !process_alive(daemon),
        "background ftpsfs (pid {daemon}) still running {EXIT_TIMEOUT:?} after fusermount3 -u"
    );
    assert!(!is_fuse_mounted(&mountpoint));
    assert!(
        stderr_eof.is_ok(),
        "the background ftpsfs kept the caller's stderr open after the parent exited (`$(ftpsfs ...)` would hang until unmount); detach must redirect stdin/stdout/stderr"
    );
}

/// Runs ftpsfs with a wrong password; returns (status, stderr).
fn mount_with_wrong_password(foreground: bool) -> (std::process::ExitStatus, String) {
    let target = target(Server::Vsftpd, Tls::V12);
    let dir = scratch_dir("badpass");
    let mountpoint = dir.join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let _guard = Background {
        mountpoint: mountpoint.clone(),
    };
    let mut config = MountConfig::new(Server::Vsftpd, Tls::V12);
    let wrong = "not-the-password-4711";
    config.password = Some(wrong.into());
    let log = dir.join("stderr");
    let started = Instant::now();
    let mut child = config
        .command(&target, &mountpoint, foreground)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("spawn ftpsfs");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "ftpsfs (foreground: {foreground}) with a wrong password still running after 20 s: {}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(
        !stderr.contains(wrong),
        "password in the error output: {stderr}"
    );
    assert_eq!(
        mounted_fstype(&mountpoint),
        None,
        "mounted despite the failed login"
    );
    thread::sleep(Duration::from_millis(200));
    assert!(
        pids_with_arg(&mountpoint).is_empty(),
        "a process is left running after the failed login"
    );
    println!(
        "wrong password, foreground {foreground}: {status} after {:?}",
        started.elapsed()
    );
    (status, stderr)
}

#[test]
fn vsftpd_wrong_password_fails_with_one_line() {
    // Both modes run before anything is asserted, so a failure reports both.
    let mut problems = Vec::new();
    for foreground in [false, true] {
        let mode = if foreground { "with -f" } else { "detaching" };
        let (status, stderr) = mount_with_wrong_password(foreground);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if status.success() || status.code().is_none() {
            problems.push(format!("{mode}: exit status {status}"));
        }
        if lines.len() != 1 || !lines[0].contains("530") {
            problems.push(format!(
                "{mode}: expected one line with the server's 530 on stderr, got {} lines:\n{stderr}",
                lines.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn vsftpd_sigterm_and_sigint_unmount_and_exit_0() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut m = Mounted::new(Server::Vsftpd, Tls::V13);
        assert_eq!(
            fs::read_to_string(m.join("dir1/dir2/dir3/deep.txt")).unwrap(),
            "deep\n"
        );
        let mountpoint = m.path().to_path_buf();
        m.signal(signal);
        let status = m
            .wait_exit(EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("{name}: ftpsfs still running after {EXIT_TIMEOUT:?}"));
        assert_eq!(
            status.code(),
            Some(0),
            "{name}: exit status {status}; log:\n{}",
            m.log()
        );
        assert_eq!(
            mounted_fstype(&mountpoint),
            None,
            "{name}: still mounted after exit"
        );
    }
}

#[test]
fn vsftpd_sigterm_while_busy_still_ends_the_mount() {
    // A SIGTERM that arrives while a file is open must not leave a process that ignores
    // every later signal: either it unmounts lazily and exits at once (as libfuse
    // filesystems do), or a SIGTERM after the file is closed ends it.
    let mut m = Mounted::new(Server::Vsftpd, Tls::V12);
    let mountpoint = m.path().to_path_buf();
    let open = File::open(m.join("small.txt")).unwrap();
    m.signal(libc::SIGTERM);
    if let Some(status) = m.wait_exit(Duration::from_secs(3)) {
        assert_eq!(
            status.code(),
            Some(0),
            "exit status {status}; log:\n{}",
            m.log()
        );
        assert_eq!(
            mounted_fstype(&mountpoint),
            None,
            "still mounted after exit"
        );
        drop(open);
        return;
    }
    if !is_fuse_mounted(&mountpoint) {
        // Detached lazily (umount -l): the process ends once the last open file closes.
        drop(open);
        let status = m.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "lazily detached, the file closed, but ftpsfs still runs {EXIT_TIMEOUT:?} later; log:\n{}",
                m.log()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "exit status {status}; log:\n{}",
            m.log()
        );
        return;
    }
    drop(open);
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "a SIGTERM sent while a file was open, then another once it was closed: ftpsfs still running {EXIT_TIMEOUT:?} later; log:\n{}",
            m.log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        m.log()
    );
    assert_eq!(
        mounted_fstype(&mountpoint),
        None,
        "still mounted after exit"
    );
}

/// The per-mount flags of `path` (mountinfo's sixth field: ro/rw, nosuid, noexec, ...).
fn mount_flags(path: &Path) -> Vec<String> {
    let path = fs::canonicalize(path).unwrap();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .rfind(|line| line.split(' ').nth(4) == path.to_str())
        .unwrap_or_else(|| panic!("{} not in mountinfo", path.display()));
    line.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(String::from)
        .collect()
}

/// Standard flags with a meaning to the kernel reach it: `noexec` stops programs on the
/// mount from running, and so on, while the FUSE defaults `nosuid` and `nodev` stay.
#[test]
fn strict_kernel_flags_are_applied() {
    let scratch = ServerScratch::new();
    let script = scratch.dir.join("run-me.sh");
    fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let run_script = |m: &Mounted| Command::new(m.join(&scratch.name).join("run-me.sh")).output();

    let m = Mounted::new(Server::Strict, Tls::V13);
    let flags = mount_flags(m.path());
    for flag in ["nosuid", "nodev"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} missing: {flags:?}");
    }
    assert!(!flags.iter().any(|f| f == "noexec"), "{flags:?}");
    let out = run_script(&m).unwrap();
    assert_eq!(
        out.stdout,
        b"ran\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);

    let m = Mounted::with(MountConfig::new(Server::Strict, Tls::V13).option("noexec,noatime"));
    let flags = mount_flags(m.path());
    for flag in ["noexec", "noatime", "nosuid", "nodev"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} missing: {flags:?}");
    }
    let err = run_script(&m).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    drop(m);

    // The last of a pair wins, as with mount(8).
    let m = Mounted::with(MountConfig::new(Server::Strict, Tls::V13).option("noexec,exec"));
    assert!(!mount_flags(m.path()).iter().any(|f| f == "noexec"));
}

#[test]
fn vsftpd_fstab_options_are_accepted() {
    // What an fstab line's options reach ftpsfs as (mount.fuse3 passes them through).
    let fstab = "defaults,_netdev,noauto,nofail,nosuid,nodev,noexec,user,x-systemd.automount,x-systemd.mount-timeout=30";
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).option(fstab));
    assert_eq!(
        fs::read(m.join("small.txt")).unwrap(),
        fs::read(data().join("small.txt")).unwrap()
    );
    drop(m);
    // mount(8) adds `rw` unless the line says `ro` (`mount -t fuse.ftpsfs URL DIR` with no
    // -o runs `ftpsfs URL DIR -o rw`): the mount comes up writable.
    let scratch = ServerScratch::new();
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).option("rw,_netdev"));
    let new = m.join(&scratch.name).join("new-file.txt");
    fs::write(&new, b"written through an fstab mount").unwrap();
    assert_eq!(
        fs::read(scratch.local("new-file.txt")).unwrap(),
        b"written through an fstab mount"
    );
    drop(m);
    // `ro` keeps it read-only.
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).option("ro,_netdev"));
    assert_erofs(
        "create a file",
        File::create(m.join(&scratch.name).join("other.txt")),
    );
}

/// Runs `ftpsfs stats` on `mountpoint` (with `--json` when asked); its output, or the
/// error line.
fn ftpsfs_stats(mountpoint: &Path, json: bool) -> Result<String, String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ftpsfs"));
    command.arg("stats").arg(mountpoint);
    if json {
        command.arg("--json");
    }
    let out = command.output().unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// `ftpsfs stats` shows the connections, an upload while it runs (with the bytes sent),
/// resumed data connections, cache counters and the errors programs got; the attributes
/// it reads are not listed, so nothing copies them.
#[test]
fn vsftpd_stats_show_connections_uploads_and_errors() {
    let scratch = ServerScratch::new();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let relative = scratch.write("read.bin", &content);
    let m = Mounted::new(Server::Vsftpd, Tls::V13);
    assert_eq!(fs::read(m.join(&relative)).unwrap(), content);
    assert!(fs::metadata(m.join(&scratch.name).join("no-such-file")).is_err());

    // A writer that keeps its file open after 2 MiB: the upload is in flight.
    let upload = m.join(&scratch.name).join("up.bin");
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let upload = upload.clone();
        thread::spawn(move || {
            let mut file = File::create(&upload).unwrap();
            io::Write::write_all(&mut file, &vec![7u8; 2 << 20]).unwrap();
            close_rx.recv().unwrap();
            drop(file);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let json = loop {
        let json = ftpsfs_stats(m.path(), true).unwrap();
        if json.contains("\"sent\":2097152") {
            break json;
        }
        assert!(
            Instant::now() < deadline,
            "no upload of 2 MiB in flight:\n{json}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        json.contains("\"uploads\":[{\"path\":\"") && json.contains("up.bin\""),
        "{json}"
    );
    let human = ftpsfs_stats(m.path(), false).unwrap();
    assert!(human.contains("uploads in flight: 1"), "{human}");
    assert!(human.contains("up.bin: 2.0 MiB sent in "), "{human}");
    close_tx.send(()).unwrap();
    writer.join().unwrap();
    assert_eq!(fs::metadata(&upload).unwrap().len(), 2 << 20);

    let json = ftpsfs_stats(m.path(), true).unwrap();
    assert!(json.contains("\"uploads\":[]"), "{json}");
    assert!(json.contains("\"data_full\":0"), "{json}");
    assert!(!json.contains("\"data_resumed\":0,"), "{json}");
    assert!(json.contains("\"errors\":{\"ENOENT\":"), "{json}");
    assert!(json.contains("\"server\":{\"reachable\":true}"), "{json}");
    let human = ftpsfs_stats(m.path(), false).unwrap();
    assert!(human.contains("connections: "), "{human}");
    assert!(human.contains("  conn "), "{human}");
    assert!(human.contains("errors returned: ENOENT "), "{human}");

    // Nothing lists the attributes, so `cp -a` and `rsync -X` do not copy them.
    let root = CString::new(m.path().as_os_str().as_bytes()).unwrap();
    let mut names = [0u8; 256];
    // SAFETY: the buffer is writable for its length.
    let listed = unsafe { libc::listxattr(root.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert_eq!(listed, 0, "attributes listed on the mount's root");

    let elsewhere = ftpsfs_stats(Path::new("/tmp"), false).unwrap_err();
    assert!(elsewhere.contains("not an ftpsfs mount"), "{elsewhere}");
}

/// A file read through the mount within the second of its time, then rewritten on the
/// server with the same size in that same second (the same time, to the second, in LIST,
/// MLSD and MDTM), is read anew once `dir_cache` expires: the block cache and the
/// kernel's page cache do not trust data read that close to the file's time.
fn same_second_rewrite_is_seen(server: Server) {
    let scratch = ServerScratch::new();
    let first = b"version A of the file\n".as_slice();
    let second = b"version B of the file\n".as_slice();
    // A second ahead of this clock: the read below falls within the file's second.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let the_second = std::time::UNIX_EPOCH + Duration::from_secs(now + 1);
    let write = |content: &[u8]| {
        let relative = scratch.write("racy.txt", content);
        File::options()
            .write(true)
            .open(scratch.local("racy.txt"))
            .unwrap()
            .set_modified(the_second)
            .unwrap();
        relative
    };
    let relative = write(first);
    let m = Mounted::with(MountConfig::new(server, Tls::V13).dir_cache(1));
    let path = m.join(&relative);
    assert_eq!(fs::read(&path).unwrap(), first);
    write(second);
    thread::sleep(AFTER_DIR_CACHE);
    assert_eq!(
        text(&fs::read(&path).unwrap()),
        text(second),
        "{server:?}: old bytes after a same-size rewrite in the same second (dir_cache=1)"
    );
}

#[test]
fn vsftpd_same_second_rewrite_is_seen() {
    same_second_rewrite_is_seen(Server::Vsftpd)
}

#[test]
fn proftpd_same_second_rewrite_is_seen() {
    same_second_rewrite_is_seen(Server::Proftpd)
}

#[test]
fn pureftpd_same_second_rewrite_is_seen() {
    same_second_rewrite_is_seen(Server::PureFtpd)
}

#[test]
fn strict_same_second_rewrite_is_seen() {
    same_second_rewrite_is_seen(Server::Strict)
}
