//! Hostile or broken servers, mounted for real: a scripted fake server
//! (tests/support/fake_server.rs) sends overlong and endless replies, malformed or
//! misdirected passive replies, listings with names that must never reach the kernel,
//! transfers cut off without TLS close_notify, a refused `AUTH TLS`, and bad certificates.
//! Each test asserts the errno (or the one-line refusal), that nothing hangs, and that the
//! mount works again once the server behaves.
//!
//! Needs root, /dev/fuse, fusermount3, the openssl CLI, and the test certificates and
//! credentials of `scripts/servers.sh start` (the servers themselves need not run).

mod common;
#[path = "support/fake_server.rs"]
mod fake_server;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::{run, scratch_dir, MountConfig, Mounted};
use common::{env, Server, Tls};
use fake_server::{arrival_ips, FakeOptions, FakeServer, Greeting, ListFormat, PassiveReply};

/// The `timeout=` of these mounts: every network step gives up after this long.
const TIMEOUT: u64 = 3;
/// Longest any operation may take to fail: the operation limit (1.5 × TIMEOUT) plus slack.
const ERROR_BOUND: Duration = Duration::from_millis(TIMEOUT * 1500 + 1500);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tls() -> Arc<rustls::ServerConfig> {
    fake_server::tls_config(
        &env().certs.join("server.pem"),
        &env().certs.join("server.key"),
    )
}

fn options() -> FakeOptions {
    FakeOptions::new(Some(tls()), &env().user, &env().password)
}

fn mount_config(server: &FakeServer) -> MountConfig {
    MountConfig::new(Server::External, Tls::V13)
        .port(server.port())
        .option(&format!("timeout={TIMEOUT}"))
}

fn errno_of<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    match result {
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Runs `f`, asserting it fails with `errno` within [`ERROR_BOUND`]; returns the time taken.
fn expect_errno<T: std::fmt::Debug>(
    what: &str,
    errno: i32,
    f: impl FnOnce() -> io::Result<T>,
) -> Duration {
    let started = Instant::now();
    let got = errno_of(f());
    let elapsed = started.elapsed();
    assert_eq!(
        got,
        errno,
        "{what}: expected {}, got {}",
        io::Error::from_raw_os_error(errno),
        io::Error::from_raw_os_error(got)
    );
    assert!(
        elapsed <= ERROR_BOUND,
        "{what}: failed only after {elapsed:?}"
    );
    elapsed
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn overlong_greeting_line_fails_the_mount_in_one_line() {
    let mut opts = options();
    opts.greeting = Greeting::OverlongLine;
    let server = FakeServer::start(opts);
    let failed = mount_config(&server).mount_failure(COMMAND_TIMEOUT);
    failed.assert_one_line(&[
        "reading the server greeting",
        "reply line longer than 8192 bytes",
    ]);
    assert!(failed.elapsed < ERROR_BOUND, "{failed:?}");
    println!("overlong greeting: refused in {:?}", failed.elapsed);
}

#[test]
fn endless_multiline_greeting_fails_the_mount_in_one_line() {
    let mut opts = options();
    opts.greeting = Greeting::EndlessMultiline;
    let server = FakeServer::start(opts);
    let failed = mount_config(&server).mount_failure(COMMAND_TIMEOUT);
    failed.assert_one_line(&["reading the server greeting", "longer than 1000 lines"]);
    assert!(failed.elapsed < ERROR_BOUND, "{failed:?}");
    println!("endless greeting: refused in {:?}", failed.elapsed);
}

#[test]
fn overlong_and_endless_replies_mid_session_are_eio_with_bounded_memory() {
    let mut opts = options();
    for i in 0..4 {
        opts.add_file(format!("f{i}.txt").as_bytes(), b"content\n");
    }
    let server = FakeServer::start(opts);
    let m = Mounted::with(mount_config(&server));
    assert_eq!(fs::read(m.join("f0.txt")).unwrap(), b"content\n");

    server.passive_reply(PassiveReply::OverlongLine);
    let overlong = expect_errno("read during overlong replies", libc::EIO, || {
        fs::read(m.join("f1.txt"))
    });
    server.passive_reply(PassiveReply::EndlessMultiline);
    let endless = expect_errno("read during endless replies", libc::EIO, || {
        fs::read(m.join("f2.txt"))
    });
    let peak = peak_rss_kib(m.pid());
    // The reply parser holds at most one 8 KiB line and 1000 lines; everything else is
    // the process's usual footprint.
    assert!(peak < 64 * 1024, "ftpsfs peaked at {peak} KiB");

    server.passive_reply(PassiveReply::Normal);
    let started = Instant::now();
    assert_eq!(fs::read(m.join("f3.txt")).unwrap(), b"content\n");
    assert_eq!(fs::read(m.join("f1.txt")).unwrap(), b"content\n");
    println!(
        "hostile replies mid-session: EIO after {overlong:?} (overlong line), {endless:?} (endless reply), peak RSS {peak} KiB; recovered in {:?}",
        started.elapsed()
    );
}

#[test]
fn malformed_passive_replies_fail_the_mount_in_one_line() {
    for (epsv, pasv, words) in [
        (
            "229 Entering Extended Passive Mode (|||99999|)",
            None,
            &["EPSV", "bad port"][..],
        ),
        (
            "229 Entering Extended Passive Mode (||1|2|)",
            None,
            &["EPSV", "malformed"][..],
        ),
        (
            "500 EPSV not understood",
            Some("227 Entering Passive Mode (127,0,0,1)."),
            &["PASV", "no address"][..],
        ),
        (
            "500 EPSV not understood",
            Some("227 Entering Passive Mode (127,0,0,1,999,1)."),
            &["PASV", "out of range"][..],
        ),
    ] {
        let mut opts = options();
        opts.epsv_reply = Some(epsv.into());
        opts.pasv_reply = pasv.map(str::to_string);
        let server = FakeServer::start(opts);
        let failed = mount_config(&server).mount_failure(COMMAND_TIMEOUT);
        failed.assert_one_line(words);
        assert!(failed.elapsed < ERROR_BOUND, "{failed:?}");
        assert!(
            server.data_arrivals().is_empty(),
            "{epsv} / {pasv:?}: a data connection was made"
        );
    }
}

#[test]
fn pasv_address_is_ignored_unless_trusted() {
    let elsewhere = Ipv4Addr::new(127, 0, 0, 2);
    let mut opts = options();
    opts.epsv_reply = Some("500 EPSV not understood".into());
    opts.pasv_address = elsewhere;
    opts.add_file(b"data.txt", b"the data\n");
    let server = FakeServer::start(opts);

    let m = Mounted::with(mount_config(&server));
    assert_eq!(fs::read(m.join("data.txt")).unwrap(), b"the data\n");
    let arrivals = arrival_ips(&server.data_arrivals());
    drop(m);
    assert!(!arrivals.is_empty());
    assert!(
        arrivals.iter().all(|ip| *ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "the 227 said {elsewhere}; data connections went to {arrivals:?} (must be the control peer 127.0.0.1)"
    );

    let before = arrivals.len();
    let m = Mounted::with(mount_config(&server).option("trust_pasv_address"));
    assert_eq!(fs::read(m.join("data.txt")).unwrap(), b"the data\n");
    let trusted = arrival_ips(&server.data_arrivals()[before..]);
    assert!(
        !trusted.is_empty() && trusted.iter().all(|ip| *ip == IpAddr::V4(elsewhere)),
        "with trust_pasv_address, data connections went to {trusted:?}, not {elsewhere}"
    );
}

/// The MLSD line of a file called `name`.
fn mlsd_file(name: &[u8], size: usize) -> Vec<u8> {
    let mut line =
        format!("type=file;size={size};modify=20200102030405;UNIX.mode=0644; ").into_bytes();
    line.extend_from_slice(name);
    line.extend_from_slice(b"\r\n");
    line
}

#[test]
fn hostile_listing_names_are_skipped_or_shown_safely() {
    let long_10k = vec![b'x'; 10_000];
    let long_300 = vec![b'y'; 300];
    let non_utf8 = b"caf\xe9.txt".to_vec();
    let mut body = Vec::new();
    body.extend(b"type=cdir;modify=20200102030405; .\r\n");
    body.extend(mlsd_file(b"ok.txt", 3));
    body.extend(mlsd_file(b".", 1));
    body.extend(mlsd_file(b"..", 1));
    body.extend(mlsd_file(b"a/b", 1));
    body.extend(mlsd_file(b"../../etc/passwd", 1));
    body.extend(b"type=file;size=1; \r\n");
    body.extend(mlsd_file(b"nul\0byte", 1));
    body.extend(mlsd_file(b"carriage\rreturn", 1));
    body.extend(mlsd_file(&non_utf8, 6));
    body.extend(mlsd_file(&long_10k, 1));
    body.extend(mlsd_file(&long_300, 1));
    body.extend(mlsd_file(b"dup", 6));
    body.extend(mlsd_file(b"dup", 999));
    body.extend(b"type=dir;modify=20200102030405;UNIX.mode=0755; sub\r\n");
    let mut opts = options();
    opts.list_format = ListFormat::Mlsd;
    opts.dirs.insert(Vec::new(), body);
    opts.dirs
        .insert(b"sub".to_vec(), mlsd_file(b"inner.txt", 6));
    opts.files.insert(b"ok.txt".to_vec(), b"ok\n".to_vec());
    opts.files
        .insert(non_utf8.clone(), "café\n".as_bytes().to_vec());
    opts.files.insert(b"dup".to_vec(), b"first\n".to_vec());
    opts.files
        .insert(b"sub/inner.txt".to_vec(), b"inner\n".to_vec());
    let server = FakeServer::start(opts);
    let m = Mounted::with(mount_config(&server).option("debug"));

    let names: BTreeSet<Vec<u8>> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    let expected: BTreeSet<Vec<u8>> = [
        b"ok.txt".to_vec(),
        non_utf8.clone(),
        b"dup".to_vec(),
        b"sub".to_vec(),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        names,
        expected,
        "names in the mount: {:?}",
        names
            .iter()
            .map(|n| n.escape_ascii().to_string())
            .collect::<Vec<_>>()
    );
    // ls -la lists every entry and stats each one without an error.
    let out = run(
        Command::new("ls")
            .arg("-la")
            .arg(m.path())
            .env("LC_ALL", "C"),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ls -la: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    // Nothing escapes: a path through `..` stays inside the mount (the kernel resolves it),
    // and the skipped names do not exist.
    assert_eq!(fs::read(m.join("sub/../ok.txt")).unwrap(), b"ok\n");
    assert_eq!(fs::read(m.join("sub/inner.txt")).unwrap(), b"inner\n");
    for missing in ["a", "etc", "nul", "carriage\rreturn"] {
        assert_eq!(
            errno_of(fs::symlink_metadata(m.join(missing))),
            libc::ENOENT,
            "{missing:?}"
        );
    }
    assert_eq!(
        errno_of(fs::symlink_metadata(
            m.join(std::ffi::OsStr::from_bytes(&long_300))
        )),
        libc::ENAMETOOLONG
    );
    // The names that are shown work: a non-UTF-8 name is read by its bytes, and of two
    // entries called dup the first one counts.
    assert_eq!(
        fs::read(m.join(std::ffi::OsStr::from_bytes(&non_utf8))).unwrap(),
        "café\n".as_bytes()
    );
    assert_eq!(fs::metadata(m.join("dup")).unwrap().len(), 6);
    assert_eq!(fs::read(m.join("dup")).unwrap(), b"first\n");
    // Each skipped name left a debug line saying why.
    let log = m.log();
    for reason in [
        "name is . or ..",
        "name contains /",
        "name contains NUL",
        "name contains CR",
        "name longer than 1024 bytes",
        "duplicate name",
        "skipping a name longer than 255 bytes",
    ] {
        assert!(log.contains(reason), "no log line says {reason:?}:\n{log}");
    }
    assert!(
        log.contains("skipping listing line")
            && (log.contains("missing name") || log.contains("empty name")),
        "no log line for the empty name:\n{log}"
    );
}

fn sequential_read(path: &Path, chunk: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = file.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn cut_off_listing_and_file_are_eio_never_short() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let small = b"small file content, 36 bytes long..\n".to_vec();
    let mut opts = options();
    opts.add_file(b"small.txt", &small);
    opts.add_file(b"big.bin", &big);
    let sub_body: Vec<u8> = (0..200)
        .flat_map(|i| mlsd_file(format!("entry-{i:03}.txt").as_bytes(), 1))
        .collect();
    opts.dirs.insert(b"sub".to_vec(), sub_body);
    opts.dirs
        .get_mut(&Vec::new())
        .unwrap()
        .extend(b"type=dir;modify=20200102030405; sub\r\n");
    let server = FakeServer::start(opts);
    // 16 KiB blocks: the second sequential read of big.bin starts a read-ahead stream.
    let m = Mounted::with(mount_config(&server).option("block_size=16K"));

    server.cut_data_after(Some(10));
    let listing = expect_errno("list a directory cut off mid-listing", libc::EIO, || {
        fs::read_dir(m.join("sub")).map(|d| d.count())
    });
    let range = expect_errno("read a file cut off mid-transfer", libc::EIO, || {
        fs::read(m.join("small.txt"))
    });
    // The stream path: the first 16 KiB come whole, then the stream is cut off.
    server.cut_data_after(None);
    let file = File::open(m.join("big.bin")).unwrap();
    // No kernel read-ahead on this descriptor: each read reaches ftpsfs as it is made.
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the advice only changes the kernel's read-ahead.
    assert_eq!(
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) },
        0
    );
    let mut buf = vec![0u8; 16 << 10];
    assert_eq!(file.read_at(&mut buf, 0).unwrap(), buf.len());
    assert_eq!(buf, big[..16 << 10]);
    server.cut_data_after(Some(10));
    let stream = expect_errno("read a file whose stream is cut off", libc::EIO, || {
        file.read_at(&mut buf, 16 << 10)
    });
    let size = fs::metadata(m.join("big.bin")).unwrap().len();
    assert_eq!(
        size,
        big.len() as u64,
        "the listing was changed by a cut transfer"
    );

    // Once the server behaves, everything is there, complete: nothing short was cached.
    server.cut_data_after(None);
    let started = Instant::now();
    assert_eq!(fs::read_dir(m.join("sub")).unwrap().count(), 200);
    assert_eq!(fs::read(m.join("small.txt")).unwrap(), small);
    assert_eq!(file.read_at(&mut buf, 16 << 10).unwrap(), buf.len());
    assert_eq!(buf, big[16 << 10..32 << 10]);
    assert_eq!(sequential_read(&m.join("big.bin"), 16 << 10).unwrap(), big);
    println!(
        "cut-off transfers: EIO after {listing:?} (listing), {range:?} (ranged read), {stream:?} (stream); complete again in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_server_refusing_auth_tls_never_sees_the_password() {
    let mut opts = options();
    opts.refuse_auth_tls = Some("500 AUTH not understood".into());
    let server = FakeServer::start(opts);
    let failed = mount_config(&server).mount_failure(COMMAND_TIMEOUT);
    failed.assert_one_line(&["AUTH TLS", "500", "does not fall back to plain FTP"]);
    assert!(!failed.stderr.contains(&env().password));

    let out = run(
        Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
            .arg("check")
            .arg("--ca-file")
            .arg(&env().ca)
            .arg(format!("ftp://{}@127.0.0.1:{}/", env().user, server.port()))
            .env("FTPSFS_PASSWORD", &env().password)
            .env_remove("RUST_LOG"),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AUTH TLS"),
        "{}",
        text(&out.stderr)
    );

    let commands = server.commands();
    assert!(
        !server.received("USER") && !server.received("PASS"),
        "credentials sent after AUTH TLS failed: {commands:?}"
    );
    assert!(
        commands.iter().all(|c| !c.contains(&env().password)),
        "the password crossed the network in the clear: {commands:?}"
    );
}

/// Runs the openssl CLI, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = run(
        Command::new("openssl").args(args).current_dir(dir),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

const SERVER_EXT: &str = "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n";

/// A key and a CSR for `cn`, ECDSA P-256 (quick to make).
fn key_and_csr(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

/// Certificates a client must refuse, made with the openssl CLI: (label, cert, key).
fn bad_certificates(dir: &Path) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let ca = env().certs.join("ca.pem");
    let ca_key = env().certs.join("ca.key");
    let (ca, ca_key) = (ca.to_str().unwrap(), ca_key.to_str().unwrap());

    // Signed by the trusted test CA, but for another host name.
    key_and_csr(dir, "wrong-host", "other.example");
    fs::write(
        dir.join("wrong-host.ext"),
        format!("{SERVER_EXT}subjectAltName = DNS:other.example\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "30",
            "-in",
            "wrong-host.csr",
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-set_serial",
            "4096",
            "-extfile",
            "wrong-host.ext",
            "-out",
            "wrong-host.pem",
        ],
    );

    // Signed by the trusted CA for the right name, but expired: `openssl ca` can set
    // both dates (OpenSSL 3.0's `x509 -req` cannot).
    key_and_csr(dir, "expired", "localhost");
    fs::create_dir(dir.join("newcerts")).unwrap();
    fs::write(dir.join("index.txt"), "").unwrap();
    fs::write(dir.join("serial"), "1001\n").unwrap();
    fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = newcerts\nserial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n[ext]\n{SERVER_EXT}subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            ca,
            "-keyfile",
            ca_key,
            "-in",
            "expired.csr",
            "-out",
            "expired.pem",
            "-startdate",
            "20190101000000Z",
            "-enddate",
            "20200101000000Z",
            "-extensions",
            "ext",
            "-notext",
        ],
    );

    // Right name, valid dates, but self-signed: no trusted CA vouches for it.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "self-signed.key",
            "-out",
            "self-signed.pem",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    ["wrong-host", "expired", "self-signed"]
        .into_iter()
        .map(|name| {
            (
                name,
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            )
        })
        .collect()
}

/// Removes a directory when dropped, even if the test panics.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bad_certificates_are_refused_with_one_line() {
    let dir = scratch_dir("certs");
    let _cleanup = RemoveOnDrop(dir.clone());
    let certs = bad_certificates(&dir);
    for (label, cert, key) in certs {
        let mut opts = FakeOptions::new(
            Some(fake_server::tls_config(&cert, &key)),
            &env().user,
            &env().password,
        );
        opts.add_file(b"x", b"x");
        let server = FakeServer::start(opts);
        let failed = mount_config(&server).mount_failure(COMMAND_TIMEOUT);
        let words: &[&str] = match label {
            "wrong-host" => &["TLS", "certificate not valid for name"],
            "expired" => &["TLS", "certificate expired"],
            // What to do, with the certificate's fingerprint.
            _ => &["TLS", "UnknownIssuer", "--ca-file", "--fingerprint sha256:"],
        };
        failed.assert_one_line(words);
        assert!(
            !server.received("USER") && !server.received("PASS"),
            "{label}: credentials sent to a server with a bad certificate: {:?}",
            server.commands()
        );
        println!("{label} certificate: {}", failed.lines()[0]);
    }

    // Pinning: the self-signed certificate is accepted by its fingerprint alone, and a
    // different fingerprint is refused.
    let cert = dir.join("self-signed.pem");
    let out = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&cert),
        COMMAND_TIMEOUT,
    );
    let fingerprint = text(&out.stdout)
        .trim()
        .split_once('=')
        .map(|(_, f)| format!("sha256:{f}"))
        .unwrap_or_else(|| panic!("openssl x509 -fingerprint: {}", text(&out.stdout)));
    let mut opts = FakeOptions::new(
        Some(fake_server::tls_config(&cert, &dir.join("self-signed.key"))),
        &env().user,
        &env().password,
    );
    opts.add_file(b"pinned.txt", b"pinned\n");
    let server = FakeServer::start(opts);
    let m = Mounted::with(mount_config(&server).option(&format!("fingerprint={fingerprint}")));
    assert_eq!(fs::read(m.join("pinned.txt")).unwrap(), b"pinned\n");
    drop(m);
    let mut wrong = fingerprint.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let failed = mount_config(&server)
        .option(&format!("fingerprint={wrong}"))
        .mount_failure(COMMAND_TIMEOUT);
    failed.assert_one_line(&["TLS", "does not match the pinned"]);
}

#[test]
fn plain_ftp_only_with_the_plain_option() {
    let mut opts = FakeOptions::new(None, &env().user, &env().password);
    opts.add_file(b"clear.txt", b"in the clear\n");
    let server = FakeServer::start(opts);
    // Without `plain`, a server without TLS is refused before any credential is sent.
    let failed = mount_config(&server).mount_failure(COMMAND_TIMEOUT);
    failed.assert_one_line(&["AUTH TLS", "does not fall back to plain FTP"]);
    assert!(
        !server.received("USER") && !server.received("PASS"),
        "{:?}",
        server.commands()
    );
    // With it, the mount works, and says what it costs.
    let before = server.commands().len();
    let m = Mounted::with(mount_config(&server).option("plain"));
    assert_eq!(fs::read(m.join("clear.txt")).unwrap(), b"in the clear\n");
    assert!(
        m.log().contains("unencrypted"),
        "no warning about plain FTP:\n{}",
        m.log()
    );
    let plain = &server.commands()[before..];
    assert!(
        plain.iter().all(|c| !c.starts_with("AUTH")) && plain.iter().any(|c| c.starts_with("PASS")),
        "{plain:?}"
    );
}

/// A REST the server accepted stays in force until the next transfer: when the passive
/// step fails after it (EPSV and REST go out together), the connection must not serve
/// another transfer, or that one would start at the stale offset and serve wrong bytes.
#[test]
fn a_failed_passive_step_after_an_accepted_rest_retires_the_connection() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (offset, retired) in [(4096u64, true), (0, false)] {
        let mut opts = options();
        opts.epsv_reply = Some("425 Cannot open a passive port now.".into());
        opts.add_file(b"f.bin", &[7u8; 8192]);
        let server = FakeServer::start(opts);
        runtime.block_on(async {
            let mut conn = connect_to(&server, ftpsfs::ftp::PipeliningMode::Auto).await;
            let error = conn
                .retrieve(b"f.bin", offset)
                .await
                .err()
                .expect("EPSV refused with 425");
            assert!(
                error.to_string().contains("425"),
                "offset {offset}: {error}"
            );
            assert_eq!(
                conn.is_broken(),
                retired,
                "offset {offset}: REST {} the connection",
                if retired {
                    "accepted must retire"
                } else {
                    "never sent must keep"
                }
            );
        });
    }
}

/// A reply that cannot answer its command (another command's, as a server answering out
/// of order sends) is never taken for success, nor for data: the connection is dropped.
#[test]
fn a_reply_that_belongs_to_another_command_is_never_success() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cases: [(&str, &str); 5] = [
        ("MKD", "226 Successfully sent"),
        ("RNTO", "350 Ready for destination name"),
        ("MDTM", "426 Connection closed; transfer aborted."),
        ("EPSV", "225 Data connection open; no transfer in progress"),
        ("SIZE", "150 Opening data connection"),
    ];
    for (verb, wrong) in cases {
        let mut opts = options();
        opts.add_file(b"f.bin", &[7u8; 8192]);
        opts.replies.insert(verb.into(), wrong.into());
        let server = FakeServer::start(opts);
        runtime.block_on(async {
            let mut conn = connect_to(&server, ftpsfs::ftp::PipeliningMode::On).await;
            let outcome = match verb {
                "MKD" => conn.make_dir(b"d").await.map(drop),
                "RNTO" => conn.rename(b"f.bin", b"g.bin").await,
                "MDTM" => conn.modified(b"f.bin").await.map(drop),
                "EPSV" => conn.retrieve(b"f.bin", 0).await.map(drop),
                _ => conn.size(b"f.bin").await.map(drop),
            };
            let error = outcome
                .err()
                .unwrap_or_else(|| panic!("{verb} answered {wrong:?} succeeded"));
            assert!(error.is_desync(), "{verb} answered {wrong:?}: {error}");
            assert!(error.to_string().contains(&wrong[..3]), "{error}");
            assert!(
                conn.is_broken(),
                "{verb}: the connection out of step was kept"
            );
        });
    }
}

/// A server that refuses MLSD for a directory (some NAS firmware answers 501) gets it
/// listed with `LIST -a` instead of an error.
#[test]
fn a_directory_refused_to_mlsd_is_listed_with_list() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut opts = options();
    opts.replies
        .insert("MLSD".into(), "501 Invalid argument for this path".into());
    let server = FakeServer::start(opts);
    runtime.block_on(async {
        let mut conn = connect_to(&server, ftpsfs::ftp::PipeliningMode::Auto).await;
        conn.list(b"").await.expect("listed with LIST -a");
        assert!(!conn.is_broken());
    });
    assert!(server.received("LIST"), "{:?}", server.commands());
}

/// A control connection to the fake server, logged in, commands sent as `pipelining`.
async fn connect_to(
    server: &FakeServer,
    pipelining: ftpsfs::ftp::PipeliningMode,
) -> ftpsfs::ftp::ControlConnection {
    let mut connect = common::options(server.port(), ftpsfs::ftp::Security::ExplicitTls, Tls::V13);
    connect.pipelining = ftpsfs::ftp::Pipelining::new(pipelining);
    let stats = Arc::new(ftpsfs::ftp::tls::TlsStats::default());
    ftpsfs::ftp::ControlConnection::connect(Arc::new(connect), stats)
        .await
        .expect("connect to the fake server")
}
