//! Writes cut off by faults, through a real mount: the server stopped mid-upload, the
//! network cut, the writer killed, a full disk and a quota. Each must give the right errno
//! at close (or at the write that met it), leave the final name as it was (absent for a
//! new file, the old content for an overwrite), remove its temporary file (at once, or
//! once the server is back), and leave the mount working without a remount.
//!
//! Network cuts happen in a private network namespace holding the server and ftpsfs;
//! full disks are small tmpfs mounts inside the served tree.
//!
//! Needs root, /dev/fuse, fusermount3, unshare/nsenter, ip, mount, and the test servers
//! and data of `scripts/servers.sh start`.

mod common;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::mount::{run, MountConfig, Mounted, ServerScratch};
use common::netns::Netns;
use common::strict_server::{StrictServer, StrictServerOptions, TlsVersion};
use common::{env, Server, Tls};

/// The `timeout=` of these mounts.
const TIMEOUT: u64 = 3;
const MIB: usize = 1 << 20;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

fn strict_options() -> StrictServerOptions {
    let env = env();
    StrictServerOptions {
        writable: true,
        ..StrictServerOptions::new(
            &env.data,
            env.certs.join("server.pem"),
            env.certs.join("server.key"),
            TlsVersion::Tls13,
            env.user.clone(),
            env.password.clone(),
        )
    }
}

fn fault_mount(port: u16) -> MountConfig {
    MountConfig::new(Server::External, Tls::V13)
        .port(port)
        .dir_cache(1)
        .option(&format!("timeout={TIMEOUT}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// Waits until `check` holds, at most `limit`.
fn eventually(what: &str, limit: Duration, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// ftpsfs's temporary files in `dir` on the server's disk.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(".ftpsfs-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A file open for writing through the mount, written `MIB` at a time.
struct Writer {
    file: File,
    written: usize,
    error: Option<io::Error>,
}

impl Writer {
    fn create(path: &Path) -> Writer {
        Writer {
            file: File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            written: 0,
            error: None,
        }
    }

    /// Writes `count` MiB; stops at the first error, which it keeps.
    fn write(&mut self, count: usize, seed: u8) {
        for _ in 0..count {
            if self.error.is_some() {
                return;
            }
            match self.file.write_all(&pattern(MIB, seed)) {
                Ok(()) => self.written += MIB,
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Closes the file; returns the first error of the writes or of the close.
    fn close(self) -> Option<io::Error> {
        let fd = std::os::fd::IntoRawFd::into_raw_fd(self.file);
        // SAFETY: the descriptor came from the File and is closed once.
        let closed = unsafe { libc::close(fd) };
        let close_error = (closed != 0).then(io::Error::last_os_error);
        self.error.or(close_error)
    }
}

fn assert_errno(what: &str, error: Option<io::Error>, expected: &[i32]) -> i32 {
    let error = error.unwrap_or_else(|| panic!("{what}: succeeded"));
    let code = error.raw_os_error().unwrap_or(0);
    assert!(
        expected.contains(&code),
        "{what}: {error} (errno {code}), expected one of {expected:?}"
    );
    code
}

fn report(fault: &str, errno: i32, detail: &str) {
    println!(
        "WRITE FAULT {fault}: {} at close; {detail}",
        io::Error::from_raw_os_error(errno)
    );
}

#[test]
fn server_stopped_mid_upload_keeps_the_old_file_then_cleans_up() {
    let scratch = ServerScratch::new();
    scratch.write("old.bin", b"the old content");
    let mut server = StrictServer::start(strict_options()).unwrap();
    let port = server.port();
    let m = Mounted::with(fault_mount(port));
    let dir = m.join(&scratch.name);
    let mut new = Writer::create(&dir.join("new.bin"));
    let mut old = Writer::create(&dir.join("old.bin"));
    new.write(4, 1);
    old.write(4, 2);
    assert!(new.error.is_none() && old.error.is_none());

    server.stop();
    let started = Instant::now();
    new.write(4, 1);
    old.write(4, 2);
    let new_errno = assert_errno("the new file's close", new.close(), &[libc::EIO]);
    assert_errno("the overwrite's close", old.close(), &[libc::EIO]);
    let to_error = started.elapsed();
    assert!(
        !scratch.local("new.bin").exists(),
        "a short file under the new name"
    );
    assert_eq!(
        fs::read(scratch.local("old.bin")).unwrap(),
        b"the old content"
    );

    let mut options = strict_options();
    options.port = port;
    let _server = StrictServer::start(options).unwrap();
    let cleaned = eventually("temporary files deleted", Duration::from_secs(40), || {
        leftovers(&scratch.dir).is_empty()
    });
    // The same mount works.
    fs::write(dir.join("after.bin"), pattern(MIB, 3)).unwrap();
    assert_eq!(
        fs::read(scratch.local("after.bin")).unwrap(),
        pattern(MIB, 3)
    );
    assert_eq!(fs::read(dir.join("old.bin")).unwrap(), b"the old content");
    report(
        "server stopped mid-upload (new file and overwrite)",
        new_errno,
        &format!("error after {to_error:?}; temporary files deleted {cleaned:?} after the restart"),
    );
}

#[test]
fn link_cut_mid_upload_keeps_the_old_file_then_cleans_up() {
    let scratch = ServerScratch::new();
    scratch.write("old.bin", b"the old content");
    let ns = Netns::new();
    let mut options = strict_options();
    options.netns = Some(ns.path.clone());
    let _server = StrictServer::start(options).unwrap();
    let m = Mounted::with(fault_mount(_server.port()).wrapper(ns.nsenter()));
    let dir = m.join(&scratch.name);
    let mut new = Writer::create(&dir.join("new.bin"));
    let mut old = Writer::create(&dir.join("old.bin"));
    new.write(2, 1);
    old.write(2, 2);

    ns.exec(&["ip", "link", "set", "lo", "down"]);
    let started = Instant::now();
    new.write(16, 1);
    old.write(16, 2);
    let errno = assert_errno("the new file's close", new.close(), &[libc::EIO]);
    assert_errno("the overwrite's close", old.close(), &[libc::EIO]);
    let to_error = started.elapsed();
    // Every network step has a limit of TIMEOUT seconds; the writes and the closes of
    // two files each meet at most a few of them.
    assert!(
        to_error < Duration::from_secs(8 * TIMEOUT),
        "the cut took {to_error:?} to show"
    );
    assert!(
        !scratch.local("new.bin").exists(),
        "a short file under the new name"
    );
    assert_eq!(
        fs::read(scratch.local("old.bin")).unwrap(),
        b"the old content"
    );

    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let cleaned = eventually("temporary files deleted", Duration::from_secs(60), || {
        leftovers(&scratch.dir).is_empty()
    });
    fs::write(dir.join("after.bin"), b"after").unwrap();
    assert_eq!(fs::read(scratch.local("after.bin")).unwrap(), b"after");
    report(
        "network link down mid-upload (new file and overwrite)",
        errno,
        &format!("error after {to_error:?}; temporary files deleted {cleaned:?} after the link came back"),
    );
}

#[test]
fn killed_writer_keeps_the_old_file_and_leaves_nothing() {
    let scratch = ServerScratch::new();
    scratch.write("old.bin", b"the old content");
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13));
    let dir = m.join(&scratch.name);
    for target in ["new.bin", "old.bin"] {
        let mut writer = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", dir.join(target).display()))
            .args(["bs=64k", "count=100000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it write a few MiB, then kill it in the middle.
        eventually("dd writing", Duration::from_secs(10), || {
            fs::metadata(dir.join(target)).is_ok_and(|m| m.len() > 2 * MIB as u64)
        });
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(writer.id() as libc::pid_t, libc::SIGKILL) };
        let status = writer.wait().unwrap();
        assert!(!status.success());
    }
    eventually(
        "the killed writers' uploads abandoned",
        Duration::from_secs(10),
        || leftovers(&scratch.dir).is_empty() && !scratch.local("new.bin").exists(),
    );
    assert_eq!(
        fs::read(scratch.local("old.bin")).unwrap(),
        b"the old content"
    );
    eventually(
        "the mount forgets the new file",
        Duration::from_secs(5),
        || !dir.join("new.bin").exists(),
    );
    assert_eq!(fs::read(dir.join("old.bin")).unwrap(), b"the old content");
    fs::write(dir.join("after.bin"), b"after").unwrap();
    assert_eq!(fs::read(scratch.local("after.bin")).unwrap(), b"after");
    println!("WRITE FAULT writer killed with kill -9: nothing uploaded, old content kept");
}

/// A tmpfs of `size` mounted on a scratch directory in the served tree, unmounted on drop.
struct SmallDisk {
    scratch: ServerScratch,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let scratch = ServerScratch::new();
        let owner = fs::metadata(&env().data).unwrap();
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!(
                    "size={size},uid={},gid={},mode=0755",
                    owner.uid(),
                    owner.gid()
                ))
                .arg("ftpsfs-test-full")
                .arg(&scratch.dir),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { scratch }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.scratch.dir).status();
    }
}

/// A full disk on a real server: the errno its reply names, at the write or the close.
fn full_disk(server: Server, tls: Tls, expected: &[i32]) {
    let disk = SmallDisk::new("2m");
    fs::write(disk.scratch.dir.join("old.bin"), b"the old content").unwrap();
    let owner = fs::metadata(&env().data).unwrap();
    std::os::unix::fs::chown(
        disk.scratch.dir.join("old.bin"),
        Some(owner.uid()),
        Some(owner.gid()),
    )
    .unwrap();
    let m = Mounted::with(MountConfig::new(server, tls));
    let dir = m.join(&disk.scratch.name);
    let mut old = Writer::create(&dir.join("old.bin"));
    old.write(4, 2);
    let errno = assert_errno("overwriting on a full disk", old.close(), expected);
    assert_eq!(
        fs::read(disk.scratch.dir.join("old.bin")).unwrap(),
        b"the old content"
    );
    let mut new = Writer::create(&dir.join("new.bin"));
    new.write(4, 1);
    assert_errno("a new file on a full disk", new.close(), expected);
    assert!(!disk.scratch.dir.join("new.bin").exists());
    eventually("temporary files deleted", Duration::from_secs(10), || {
        leftovers(&disk.scratch.dir).is_empty()
    });
    // Room again: the same mount writes.
    fs::write(dir.join("small.txt"), b"fits").unwrap();
    assert_eq!(
        fs::read(disk.scratch.dir.join("small.txt")).unwrap(),
        b"fits"
    );
    report(
        &format!("disk full on {server:?} {tls:?}"),
        errno,
        "old content kept, nothing left behind",
    );
}

#[test]
fn full_disk_on_vsftpd() {
    // vsftpd says only "451 Failure writing to local file.": no cause, so EIO.
    full_disk(Server::Vsftpd, Tls::V13, &[libc::EIO])
}

#[test]
fn full_disk_on_proftpd() {
    // ProFTPD: "452 Transfer aborted. No space left on device", or, when the full disk
    // shows first as a failed write under TLS, "451 Transfer aborted. Input/output error".
    full_disk(Server::Proftpd, Tls::V13, &[libc::ENOSPC, libc::EIO])
}

#[test]
fn full_disk_on_pureftpd() {
    // Pure-FTPd: "451 Error during write to file": no cause either.
    full_disk(Server::PureFtpd, Tls::V12, &[libc::EIO])
}

/// A server that says why: 452 (disk full) is ENOSPC, 552 (quota) is EDQUOT.
#[test]
fn disk_full_and_quota_replies_are_enospc_and_edquot_at_close() {
    let scratch = ServerScratch::new();
    scratch.write("old.bin", b"the old content");
    let server = StrictServer::start(strict_options()).unwrap();
    let m = Mounted::with(fault_mount(server.port()));
    let dir = m.join(&scratch.name);
    for (reply, errno) in [(452, libc::ENOSPC), (552, libc::EDQUOT)] {
        server.set_space_left(Some(MIB as u64), reply);
        let mut old = Writer::create(&dir.join("old.bin"));
        old.write(4, 2);
        assert_errno(&format!("a {reply} reply"), old.close(), &[errno]);
        assert_eq!(
            fs::read(scratch.local("old.bin")).unwrap(),
            b"the old content"
        );
        server.set_space_left(None, 452);
        eventually("temporary files deleted", Duration::from_secs(10), || {
            leftovers(&scratch.dir).is_empty()
        });
        report(
            &format!("{reply} from the server"),
            errno,
            "old content kept, nothing left behind",
        );
    }
    fs::write(dir.join("after.bin"), b"after").unwrap();
    assert_eq!(fs::read(scratch.local("after.bin")).unwrap(), b"after");
}

/// A server that refuses an upload's data connection as not resumed has already created
/// the file it would have written, empty (vsftpd and ProFTPD do so; the strict server
/// imitates it). That file has ftpsfs's temporary name, and goes: nothing is left.
#[test]
fn refused_upload_data_connection_leaves_nothing() {
    let scratch = ServerScratch::new();
    scratch.write("old.bin", b"the old content");
    let server = StrictServer::start(strict_options()).unwrap();
    let m = Mounted::with(fault_mount(server.port()));
    let dir = m.join(&scratch.name);
    server.set_refuse_upload_data(true);
    let mut new = Writer::create(&dir.join("new.bin"));
    new.write(1, 1);
    let errno = assert_errno("a refused upload", new.close(), &[libc::EIO]);
    let mut old = Writer::create(&dir.join("old.bin"));
    old.write(1, 2);
    assert_errno("a refused overwrite", old.close(), &[libc::EIO]);
    assert!(server.data_connections_rejected() >= 2);
    eventually(
        "the empty temporary files deleted",
        Duration::from_secs(10),
        || leftovers(&scratch.dir).is_empty(),
    );
    assert!(!scratch.local("new.bin").exists());
    assert_eq!(
        fs::read(scratch.local("old.bin")).unwrap(),
        b"the old content"
    );
    server.set_refuse_upload_data(false);
    fs::write(dir.join("after.bin"), b"after").unwrap();
    assert_eq!(fs::read(scratch.local("after.bin")).unwrap(), b"after");
    report(
        "upload data connection refused (425, file already created)",
        errno,
        "nothing left on the server",
    );
}
