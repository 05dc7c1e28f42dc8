//! Faults a long-lived mount must survive, each injected into a real server started by the
//! test (the strict server of tests/support, with its fault knobs) and checked through a
//! real FUSE mount: the errno the application sees, how long it takes to see it, and that
//! the same mount works again once the fault is gone, without a remount.
//!
//! Network faults happen in a private network namespace that holds both the server and the
//! ftpsfs process (`unshare --net` + `nsenter`), so they touch nothing outside the test.
//! Every mount uses `timeout=3`: an operation fails within 1.5 × 3 s.
//!
//! Each test prints a `FAULT` line with the errno and the times measured.
//!
//! Needs root, /dev/fuse, fusermount3, unshare/nsenter (util-linux), ip (iproute2),
//! iptables, and the test certificates and data of `scripts/servers.sh start` (the
//! servers themselves need not run).

mod common;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::mount::{
    mounted_fstype, read_at_most, read_concurrently, run, scratch_dir, MountConfig, Mounted,
};
use common::netns::Netns;
use common::strict_server::{StrictServer, StrictServerOptions, TlsVersion};
use common::{env, Server, Tls};

/// The `timeout=` of these mounts.
const TIMEOUT: u64 = 3;
/// Longest an operation may take to fail: 1.5 × TIMEOUT (the operation limit) plus slack.
const ERROR_BOUND: Duration = Duration::from_millis(TIMEOUT * 1500 + 1500);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn strict_options() -> StrictServerOptions {
    let env = env();
    StrictServerOptions::new(
        &env.data,
        env.certs.join("server.pem"),
        env.certs.join("server.key"),
        TlsVersion::Tls13,
        env.user.clone(),
        env.password.clone(),
    )
}

/// A mount of the test's own server, with short timeouts and a one-second listing cache
/// (so that operations after a fault really go to the server).
fn fault_mount(port: u16) -> MountConfig {
    MountConfig::new(Server::External, Tls::V13)
        .port(port)
        .dir_cache(1)
        .option(&format!("timeout={TIMEOUT}"))
}

fn local(relative: &str) -> PathBuf {
    env().data.join(relative)
}

/// `len` bytes of the local copy of `relative` at `offset`.
fn local_bytes(relative: &str, offset: u64, len: usize) -> Vec<u8> {
    let file = File::open(local(relative)).unwrap();
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, offset).unwrap();
    buf.truncate(n);
    buf
}

fn errno_name(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// Asserts `result` failed with `errno` within [`ERROR_BOUND`] of `started`.
fn assert_fails<T: std::fmt::Debug>(
    what: &str,
    errno: i32,
    started: Instant,
    result: io::Result<T>,
) -> Duration {
    let elapsed = started.elapsed();
    match result {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        other => panic!(
            "{what}: expected {} after {elapsed:?}, got {other:?}",
            errno_name(errno)
        ),
    }
    assert!(
        elapsed <= ERROR_BOUND,
        "{what}: failed only after {elapsed:?} (bound {ERROR_BOUND:?})"
    );
    elapsed
}

/// `ls -l DIR` with a deadline: (success, stderr, time).
fn ls(dir: &Path) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = run(
        Command::new("ls").arg("-l").arg(dir).env("LC_ALL", "C"),
        COMMAND_TIMEOUT,
    );
    (out.status.success(), text(&out.stderr), started.elapsed())
}

fn assert_ls_fails_with_eio(dir: &Path) -> Duration {
    let (ok, stderr, elapsed) = ls(dir);
    assert!(
        !ok && stderr.contains("Input/output error"),
        "ls -l {} during the fault: ok={ok} after {elapsed:?}: {stderr}",
        dir.display()
    );
    assert!(
        elapsed <= ERROR_BOUND,
        "ls -l {} failed only after {elapsed:?}",
        dir.display()
    );
    elapsed
}

fn assert_ls_works(dir: &Path, expect: &str) -> Duration {
    let (ok, stderr, elapsed) = ls(dir);
    assert!(ok, "ls -l {}: {stderr}", dir.display());
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == expect),
        "{expect} not in {}: {names:?}",
        dir.display()
    );
    elapsed
}

fn report(fault: &str, errno: &str, to_error: &str, to_recover: Duration) {
    println!("FAULT {fault}: {errno}; error after {to_error}; recovered in {to_recover:?}");
}

#[test]
fn server_stopped_mid_read_is_eio_then_the_same_read_works() {
    let mut server = StrictServer::start(strict_options()).unwrap();
    let port = server.port();
    let m = Mounted::with(fault_mount(port));
    let name = "large.bin";
    let size = fs::metadata(local(name)).unwrap().len();
    let file = File::open(m.join(name)).unwrap();
    let mut offset = 0u64;
    while offset < 8 * MIB as u64 {
        assert_eq!(
            read_at_most(&file, offset, MIB).unwrap(),
            local_bytes(name, offset, MIB)
        );
        offset += MIB as u64;
    }

    server.stop();
    let started = Instant::now();
    // Whatever the read-ahead already holds is served; then the read must fail, never
    // end early or return wrong bytes.
    let result = loop {
        match read_at_most(&file, offset, MIB) {
            Ok(data) => {
                assert!(
                    !data.is_empty() && offset < size,
                    "EOF at {offset} of {size} after the server stopped: a short file"
                );
                assert!(
                    data == local_bytes(name, offset, MIB),
                    "wrong bytes at {offset}"
                );
                offset += data.len() as u64;
            }
            Err(e) => break Err::<(), _>(e),
        }
    };
    let to_error = assert_fails("read after the server stopped", libc::EIO, started, result);
    // Everything else fails the same way, quickly (connection refused).
    let started = Instant::now();
    let ls_result = fs::read_dir(m.join("dir1/dir2")).map(|d| d.count());
    assert_fails(
        "list after the server stopped",
        libc::EIO,
        started,
        ls_result,
    );
    // More failing calls, as a file browser makes: the outage is logged once, with its
    // cause, and `ftpsfs stats` says so.
    for dir in ["dir1", "dir1/dir2/dir3", "missing-a", "missing-b"] {
        let _ = fs::read_dir(m.join(dir));
    }
    let outage_lines = |log: &str| log.matches("cannot connect to the server").count();
    let log = m.log();
    assert_eq!(outage_lines(&log), 1, "the outage logged not once:\n{log}");
    assert!(
        log.contains("Connection refused"),
        "the cause is not in the log:\n{log}"
    );
    let stats = Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .arg("stats")
        .arg(m.path())
        .output()
        .unwrap();
    let stats = text(&stats.stdout);
    assert!(
        stats.contains("server: UNREACHABLE for ") && stats.contains("Connection refused"),
        "ftpsfs stats during the outage:\n{stats}"
    );

    let mut options = strict_options();
    options.port = port;
    let _server = StrictServer::start(options).unwrap();
    // The same read, retried as an application would: it works once the failure is more
    // than a second old (ftpsfs answers retries within a second of a failure from memory).
    let to_recover = time_to_recover("the same read after the restart", || {
        match read_at_most(&file, offset, MIB) {
            Ok(data) if data == local_bytes(name, offset, MIB) => Ok(()),
            Ok(_) => panic!("the same read after the restart returned wrong bytes"),
            Err(e) => Err(e.to_string()),
        }
    });
    // And the whole rest of the file, through the same descriptor.
    while offset < size {
        let data = read_at_most(&file, offset, 4 * MIB).unwrap();
        assert!(
            data == local_bytes(name, offset, 4 * MIB),
            "wrong bytes at {offset}"
        );
        offset += data.len() as u64;
    }
    assert_ls_works(&m.join("dir1/dir2"), "dir3");
    let log = m.log();
    assert_eq!(outage_lines(&log), 1, "the outage logged not once:\n{log}");
    assert!(
        log.contains("server reachable again after"),
        "the end of the outage is not logged:\n{log}"
    );
    report(
        "server stopped mid-read (same port restarted)",
        "EIO",
        &format!("{to_error:?}"),
        to_recover,
    );
}

fn idle_connections_dropped(reply_421: bool) {
    let mut options = strict_options();
    options.idle_timeout = Duration::from_secs(2);
    options.idle_reply_421 = reply_421;
    let server = StrictServer::start(options).unwrap();
    let m = Mounted::with(fault_mount(server.port()));
    // Several connections in the pool: concurrent reads need one each.
    let names = ["medium.bin", "dir1/dir2/dir3/deep.txt", "small.txt"];
    for (name, data) in read_concurrently(m.path(), &names) {
        assert!(data.unwrap() == fs::read(local(name)).unwrap(), "{name}");
    }
    let connections = server.control_connections();
    let idle = server.live_sessions();
    println!("idle sessions before the server's idle timeout: {idle}");
    // The server drops every idle session.
    let deadline = Instant::now() + Duration::from_secs(10);
    thread::sleep(Duration::from_millis(2500));
    while server.live_sessions() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.live_sessions(), 0, "the server kept idle sessions");

    let started = Instant::now();
    assert_ls_works(&m.join("dir1"), "dir2");
    assert_eq!(
        fs::read(m.join("with space.txt")).unwrap(),
        fs::read(local("with space.txt")).unwrap()
    );
    assert!(fs::read(m.join("medium.bin")).unwrap() == fs::read(local("medium.bin")).unwrap());
    let to_recover = started.elapsed();
    assert!(
        server.control_connections() > connections,
        "no new control connection after the server dropped the idle ones"
    );
    let how = if reply_421 {
        "server drops idle control connections with 421 Timeout. (vsftpd)"
    } else {
        "server drops idle control connections silently"
    };
    report(how, "none (transparent)", "no error", to_recover);
}

#[test]
fn idle_connections_closed_silently_reconnect_transparently() {
    idle_connections_dropped(false);
}

#[test]
fn idle_connections_closed_with_421_reconnect_transparently() {
    idle_connections_dropped(true);
}

/// Retries `op` every 100 ms until it succeeds; returns how long that took (panics after
/// 20 s).
fn time_to_recover(what: &str, mut op: impl FnMut() -> Result<(), String>) -> Duration {
    let started = Instant::now();
    loop {
        match op() {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() > Duration::from_secs(20) => {
                panic!(
                    "{what}: still failing {:?} after the fault ended: {e}",
                    started.elapsed()
                )
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Mounts the strict server inside a private namespace, breaks the network there with
/// `fault_on`, checks that `ls`, `stat` and reads of an open file fail with EIO in bounded
/// time, then heals it with `fault_off` and checks that the same mount works again.
fn network_fault(fault: &str, fault_on: &[&str], fault_off: &[&str]) {
    let ns = Netns::new();
    let mut options = strict_options();
    options.netns = Some(ns.path.clone());
    let server = StrictServer::start(options).unwrap();
    let m = Mounted::with(fault_mount(server.port()).wrapper(ns.nsenter()));
    assert_ls_works(m.path(), "dir1");
    assert_eq!(
        fs::read(m.join("small.txt")).unwrap(),
        fs::read(local("small.txt")).unwrap()
    );
    let open = File::open(m.join("medium.bin")).unwrap();
    // Let the kernel's and ftpsfs's one-second caches expire.
    thread::sleep(Duration::from_millis(1100));

    ns.exec(fault_on);
    // `ls` needs the root listing (revalidating dir1): its first failure takes one
    // network timeout; the listing's failure is then remembered for a second.
    let ls_time = assert_ls_fails_with_eio(&m.join("dir1"));
    let started = Instant::now();
    let stat = assert_fails(
        "stat during the network fault",
        libc::EIO,
        started,
        fs::metadata(m.join("many/f0001.txt")),
    );
    // Reading a file that is already open needs no listing, only a data connection.
    let started = Instant::now();
    let read = assert_fails(
        "read of an open file during the network fault",
        libc::EIO,
        started,
        read_at_most(&open, 0, 64 << 10),
    );
    let started = Instant::now();
    let cat = assert_fails(
        "cat during the network fault",
        libc::EIO,
        started,
        fs::read(m.join("large.bin")),
    );

    ns.exec(fault_off);
    let to_recover = time_to_recover("ls after the fault", || {
        fs::read_dir(m.join("dir1"))
            .map(|d| d.count())
            .map_err(|e| e.to_string())
            .and_then(|n| if n > 0 { Ok(()) } else { Err("empty".into()) })
    });
    assert_ls_works(&m.join("dir1"), "dir2");
    assert!(read_at_most(&open, 0, 64 << 10).unwrap() == local_bytes("medium.bin", 0, 64 << 10));
    assert!(fs::read(m.join("medium.bin")).unwrap() == fs::read(local("medium.bin")).unwrap());
    assert_eq!(
        fs::read(m.join("many/f0001.txt")).unwrap(),
        fs::read(local("many/f0001.txt")).unwrap()
    );
    drop(open);
    drop(m);
    drop(server);
    report(
        fault,
        "EIO",
        &format!("ls {ls_time:?}, stat {stat:?}, read of an open file {read:?}, cat {cat:?}"),
        to_recover,
    );
}

#[test]
fn network_link_down_is_eio_in_bounded_time_then_recovers() {
    network_fault(
        "network link down (ip link set lo down in the namespace)",
        &["ip", "link", "set", "lo", "down"],
        &["ip", "link", "set", "lo", "up"],
    );
}

#[test]
fn packets_dropped_is_eio_in_bounded_time_then_recovers() {
    network_fault(
        "packets dropped (iptables -j DROP in the namespace)",
        &["iptables", "-w", "-I", "INPUT", "-p", "tcp", "-j", "DROP"],
        &["iptables", "-w", "-D", "INPUT", "-p", "tcp", "-j", "DROP"],
    );
}

#[test]
fn too_many_connections_421_makes_the_pool_adapt() {
    let server = StrictServer::start(strict_options()).unwrap();
    // vsftpd's max_per_ip=2 against a mount that wants 4 connections.
    server.set_max_sessions(Some(2));
    let m = Mounted::with(fault_mount(server.port()).option("connections=4,debug"));
    let names = [
        "medium.bin",
        "large.bin",
        "small.txt",
        "with space.txt",
        "dir1/dir2/dir3/deep.txt",
        "many/f0002.txt",
        "many/f0003.txt",
        "empty.txt",
    ];
    let started = Instant::now();
    for (name, data) in read_concurrently(m.path(), &names) {
        let data = data.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            data == fs::read(local(name)).unwrap(),
            "{name}: wrong bytes"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        server.refused_421() > 0,
        "the mount never asked for a third connection"
    );
    assert!(
        m.log().contains("pool limit lowered"),
        "no log line about the lowered limit"
    );
    // Later operations keep working within the lowered limit.
    assert_ls_works(&m.join("dir1"), "dir2");
    println!(
        "FAULT 421 too many connections (max 2, connections=4): no errno, {} connections refused with 421; 8 concurrent reads done in {elapsed:?}",
        server.refused_421()
    );
}

#[test]
fn stalled_data_connection_is_eio_then_the_same_read_works() {
    let server = StrictServer::start(strict_options()).unwrap();
    let m = Mounted::with(fault_mount(server.port()));
    let name = "large.bin";

    // A ranged fetch (the first read of a file) that stalls after 100 KB.
    let file = File::open(m.join(name)).unwrap();
    server.set_stall_data_after(Some(100_000));
    let started = Instant::now();
    let range = assert_fails(
        "first read, stalled",
        libc::EIO,
        started,
        read_at_most(&file, 0, 64 << 10),
    );
    server.set_stall_data_after(None);
    let range_recover = time_to_recover("the same read after the stall", || {
        read_at_most(&file, 0, 64 << 10)
            .map(|data| assert_eq!(data, local_bytes(name, 0, 64 << 10)))
            .map_err(|e| e.to_string())
    });

    // A read-ahead stream that stalls after 3 MB.
    let left_before = server.transfers_left();
    let file = File::open(m.join(name)).unwrap();
    server.set_stall_data_after(Some(3_000_000));
    let mut offset = 0u64;
    let mut last_ok = Instant::now();
    let result = loop {
        match read_at_most(&file, offset, MIB) {
            Ok(data) => {
                assert!(
                    data == local_bytes(name, offset, MIB),
                    "wrong bytes at {offset}"
                );
                offset += data.len() as u64;
                last_ok = Instant::now();
                assert!(offset < 64 * MIB as u64, "the stall never hit");
            }
            Err(e) => break Err::<(), _>(e),
        }
    };
    let stream = assert_fails("sequential read, stalled", libc::EIO, last_ok, result);
    server.set_stall_data_after(None);
    let stream_recover = time_to_recover("the same sequential read after the stall", || {
        read_at_most(&file, offset, MIB)
            .map(|data| assert!(data == local_bytes(name, offset, MIB)))
            .map_err(|e| e.to_string())
    });
    // The stalled transfer's control connection was given up (closed), never returned to
    // the pool: its stream holds it until the data's idle timeout, then drops it. Whether
    // the recovery read above needed a new login depends on what the pool had idle, so
    // the server's count of transfers left by their client is what tells.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.transfers_left() <= left_before {
        assert!(
            Instant::now() < deadline,
            "the stalled transfer's control connection was never closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    report(
        "data connection stalls mid-transfer",
        "EIO",
        &format!("{range:?} (ranged read), {stream:?} (stream)"),
        range_recover.max(stream_recover),
    );
}

#[test]
fn kill_9_then_fusermount_u_then_a_new_mount_works() {
    let dir = scratch_dir("kill9");
    let mountpoint = dir.join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let config = || MountConfig::new(Server::Strict, Tls::V13).mountpoint(&mountpoint);
    let mut m = Mounted::with(config());
    assert_eq!(
        fs::read(m.join("small.txt")).unwrap(),
        fs::read(local("small.txt")).unwrap()
    );
    m.signal(libc::SIGKILL);
    let status = m
        .wait_exit(Duration::from_secs(10))
        .expect("ftpsfs still alive after SIGKILL");
    assert!(!status.success());

    // The dead mount: every access fails with ENOTCONN, nothing hangs.
    let started = Instant::now();
    let dead = fs::metadata(&mountpoint).map(|_| ());
    let to_error = assert_fails("stat of the dead mount", libc::ENOTCONN, started, dead);
    let (ok, stderr, _) = ls(&mountpoint);
    assert!(
        !ok && stderr.contains("Transport endpoint is not connected"),
        "{stderr}"
    );
    assert!(
        mounted_fstype(&mountpoint).is_some(),
        "the dead mount vanished by itself"
    );

    let started = Instant::now();
    let out = run(
        Command::new("fusermount3").arg("-u").arg(&mountpoint),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        text(&out.stderr)
    );
    assert_eq!(mounted_fstype(&mountpoint), None);
    let m2 = Mounted::with(config());
    assert_eq!(
        fs::read(m2.join("small.txt")).unwrap(),
        fs::read(local("small.txt")).unwrap()
    );
    let to_recover = started.elapsed();
    drop(m2);
    drop(m);
    let _ = fs::remove_dir_all(&dir);
    report(
        "kill -9 of ftpsfs (then fusermount3 -u and mount again)",
        "ENOTCONN",
        &format!("{to_error:?}"),
        to_recover,
    );
}

/// Waits (up to 10 s) until the server has accepted no new data connection for 300 ms:
/// whatever the mount fetches in the background is done.
fn wait_until_no_new_data_connections(server: &StrictServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = server.data_connections_accepted();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(300));
        let now = server.data_connections_accepted();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Opening a directory lists its subdirectories ahead: once that is done, a walk into a
/// subdirectory needs no server at all. With `dir_prefetch=0` the same walk goes to the
/// (stopped) server and fails, so the test sees the difference.
#[test]
fn opened_directory_has_its_subdirectories_listed_ahead() {
    for prefetch in [true, false] {
        let mut server = StrictServer::start(strict_options()).unwrap();
        let mut config = MountConfig::new(Server::External, Tls::V13)
            .port(server.port())
            .dir_cache(60)
            .option(&format!("timeout={TIMEOUT}"));
        if !prefetch {
            config = config.option("dir_prefetch=0");
        }
        let m = Mounted::with(config);
        let names: Vec<_> = fs::read_dir(m.join("dir1")).unwrap().collect();
        assert_eq!(names.len(), 1, "dir1 holds dir2 only");
        wait_until_no_new_data_connections(&server);
        let listings = server.data_connections_accepted();
        server.stop();
        if prefetch {
            assert_ls_works(&m.join("dir1/dir2"), "dir3");
        } else {
            assert_ls_fails_with_eio(&m.join("dir1/dir2"));
        }
        println!(
            "dir_prefetch {}: {listings} data connections before the server stopped",
            if prefetch { "on" } else { "off" }
        );
    }
}
