//! Connections through proxies: Dante (SOCKS5) and tinyproxy (HTTP CONNECT), each with
//! and without authentication, started by scripts/servers.sh on 127.0.0.1. The control
//! connection and every data connection go through the proxy (its own log shows them),
//! every data connection still resumes its control connection's TLS session, and a
//! proxy that refuses, asks for credentials, or says nothing is one line in bounded time.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::mount::{MountConfig, Mounted, ServerScratch};
use common::{env, Server, Tls};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ftpsfs check ARGS ftp://USER@127.0.0.1:PORT/` with the test CA, nothing from the
/// test's environment but `extra_env`.
fn check(port: u16, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ftpsfs"));
    command
        .arg("check")
        .arg("--ca-file")
        .arg(&env().ca)
        .args(args)
        .arg(format!("ftp://{}@127.0.0.1:{port}/", env().user))
        .env_remove("RUST_LOG")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("FTPSFS_PASSWORD", &env().password);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command.output().expect("run ftpsfs check")
}

fn proxy_url(scheme: &str, port_key: &str, user: bool) -> String {
    let user = if user {
        format!("{}@", env().user)
    } else {
        String::new()
    };
    format!("{scheme}://{user}127.0.0.1:{}", env().port(port_key))
}

/// The password file of the test user, whose password the authenticating proxies take.
fn password_file() -> String {
    env()
        .path("FTPSFS_TEST_PASSWORD_FILE")
        .to_str()
        .unwrap()
        .to_string()
}

/// The ports a proxy's log shows connections to, from `skip` bytes on.
fn ports_in_log(log: &str, skip: usize) -> BTreeSet<u16> {
    let path = env().path("FTPSFS_TEST_PROXY_LOGS").join(log);
    let text = fs::read_to_string(&path).unwrap_or_default();
    let text = text.get(skip..).unwrap_or_default();
    let mut ports = BTreeSet::new();
    for line in text.lines() {
        if log.starts_with("socks") {
            // Dante: "... tcp/connect [: 127.0.0.1.CLIENT 127.0.0.1.PROXY -> 127.0.0.1.OURS 127.0.0.1.TARGET"
            if line.contains("tcp/connect [:") {
                if let Some(port) = line
                    .rsplit(' ')
                    .next()
                    .and_then(|target| target.rsplit('.').next())
                    .and_then(|p| p.trim().parse().ok())
                {
                    ports.insert(port);
                }
            }
        } else if let Some(at) = line.find("CONNECT 127.0.0.1:") {
            // tinyproxy: "... Request (file descriptor N): CONNECT 127.0.0.1:PORT HTTP/1.1"
            let rest = &line[at + "CONNECT 127.0.0.1:".len()..];
            if let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse().ok()) {
                ports.insert(port);
            }
        }
    }
    ports
}

fn log_len(log: &str) -> usize {
    fs::metadata(env().path("FTPSFS_TEST_PROXY_LOGS").join(log)).map_or(0, |m| m.len() as usize)
}

fn in_range(ports: &BTreeSet<u16>, range_key: &str) -> usize {
    let range = env().value(range_key);
    let (low, high) = range.split_once(':').unwrap();
    let (low, high): (u16, u16) = (low.parse().unwrap(), high.parse().unwrap());
    ports.iter().filter(|p| (low..=high).contains(*p)).count()
}

/// `ftpsfs check --write-test` through `proxy` to vsftpd and ProFTPD, TLS 1.2 and 1.3:
/// every data connection resumed, and the proxy's log shows the control port and
/// passive ports of each server.
fn check_through(proxy: &str, log: &str, extra: &[&str]) {
    for (port_key, range_key) in [
        ("VSFTPD_PORT", "VSFTPD_PASV_RANGE"),
        ("PROFTPD_PORT", "PROFTPD_PASV_RANGE"),
    ] {
        for tls in ["1.2", "1.3"] {
            let scratch = ServerScratch::new();
            let before = log_len(log);
            let mut args = vec![
                "--proxy",
                proxy,
                "--tls",
                tls,
                "--write-test",
                &scratch.name,
            ];
            args.extend_from_slice(extra);
            let out = check(env().port(port_key), &args, &[]);
            let stdout = text(&out.stdout);
            let what = format!("{port_key} TLS {tls} through {proxy}");
            assert!(
                out.status.success(),
                "{what}: {stdout}\n{}",
                text(&out.stderr)
            );
            assert!(
                stdout.contains(&format!("through proxy {proxy}")),
                "{what}: {stdout}"
            );
            assert!(
                stdout.contains("OK: 5 of 5 data connections resumed")
                    && stdout.contains("OK: 3 of 3 upload data connections resumed")
                    && !stdout.contains("NOT resumed"),
                "{what}: {stdout}"
            );
            let ports = ports_in_log(log, before);
            assert!(
                ports.contains(&env().port(port_key)),
                "{what}: the proxy's log has no connection to the control port: {ports:?}"
            );
            // Listings, reads and uploads: each on its own passive port (a port may be
            // used twice, so at least a few distinct ones).
            assert!(
                in_range(&ports, range_key) >= 3,
                "{what}: the proxy's log shows too few data connections: {ports:?}"
            );
        }
    }
}

#[test]
fn socks5_carries_control_and_every_data_connection() {
    check_through(
        &proxy_url("socks5", "SOCKS_PROXY_PORT", false),
        "socks.log",
        &[],
    );
}

#[test]
fn http_connect_carries_control_and_every_data_connection() {
    check_through(
        &proxy_url("http", "HTTP_PROXY_PORT", false),
        "http-proxy.log",
        &[],
    );
}

#[test]
fn authenticating_proxies_take_the_user_and_the_password_file() {
    let file = password_file();
    check_through(
        &proxy_url("socks5", "SOCKS_AUTH_PROXY_PORT", true),
        "socks-auth.log",
        &["--proxy-password-file", &file],
    );
    check_through(
        &proxy_url("http", "HTTP_AUTH_PROXY_PORT", true),
        "http-proxy-auth.log",
        &["--proxy-password-file", &file],
    );
}

/// The one line of a failed check, after checking its exit code, that it is one line,
/// and that it came within `limit`.
fn one_line_failure(out: &Output, started: Instant, limit: Duration, what: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: {stderr}{}",
        text(&out.stdout)
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
    assert!(
        started.elapsed() < limit,
        "{what}: took {:?}: {stderr}",
        started.elapsed()
    );
    stderr
}

#[test]
fn wrong_or_missing_proxy_credentials_are_one_clear_line() {
    let dir = common::mount::scratch_dir("proxy-credentials");
    let wrong = dir.join("wrong-password");
    fs::write(&wrong, "not-the-password\n").unwrap();
    fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let wrong = wrong.to_str().unwrap().to_string();
    let vsftpd = env().port("VSFTPD_PORT");
    for (scheme, port_key) in [
        ("socks5", "SOCKS_AUTH_PROXY_PORT"),
        ("http", "HTTP_AUTH_PROXY_PORT"),
    ] {
        let started = Instant::now();
        let proxy = proxy_url(scheme, port_key, true);
        let out = check(
            vsftpd,
            &["--proxy", &proxy, "--proxy-password-file", &wrong],
            &[],
        );
        let line = one_line_failure(&out, started, Duration::from_secs(30), &proxy);
        assert!(
            line.contains(&format!("proxy {proxy}"))
                && line.contains("refused the user name and password"),
            "{proxy}: {line}"
        );
        assert!(!line.contains("not-the-password"), "{line}");

        let started = Instant::now();
        let anonymous = proxy_url(scheme, port_key, false);
        let out = check(vsftpd, &["--proxy", &anonymous], &[]);
        let line = one_line_failure(&out, started, Duration::from_secs(30), &anonymous);
        assert!(
            line.contains("requires authentication") && line.contains("proxy_password_file"),
            "{anonymous}: {line}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_proxy_that_refuses_the_server_is_one_line_naming_it() {
    // Both proxies refuse Pure-FTPd's port by rule (scripts/lib/proxy-conf.sh).
    let pure = env().port("PUREFTPD_PORT");
    for (scheme, port_key, says) in [
        (
            "socks5",
            "SOCKS_PROXY_PORT",
            "connection not allowed by the proxy's rules",
        ),
        ("http", "HTTP_PROXY_PORT", "refused CONNECT to 127.0.0.1:"),
    ] {
        let proxy = proxy_url(scheme, port_key, false);
        let started = Instant::now();
        let out = check(pure, &["--proxy", &proxy], &[]);
        let line = one_line_failure(&out, started, Duration::from_secs(30), &proxy);
        assert!(
            line.contains(&format!("proxy {proxy}")) && line.contains(says),
            "{proxy}: {line}"
        );
    }
    // And without the proxy the server is there: the refusal was the proxy's.
    let out = check(pure, &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_proxy_that_is_down_or_silent_fails_in_bounded_time() {
    // Nothing listens on a port just freed.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let proxy = format!("socks5://127.0.0.1:{port}");
    let started = Instant::now();
    let out = check(env().port("VSFTPD_PORT"), &["--proxy", &proxy], &[]);
    let line = one_line_failure(&out, started, Duration::from_secs(30), "no proxy listening");
    assert!(line.contains("cannot connect to the proxy"), "{line}");

    // One that accepts and never answers: the connect timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(20));
        let mut buf = [0u8; 64];
        for mut stream in held {
            let _ = stream.read(&mut buf);
        }
    });
    for scheme in ["socks5", "http"] {
        let proxy = format!("{scheme}://127.0.0.1:{port}");
        let started = Instant::now();
        let out = check(
            env().port("VSFTPD_PORT"),
            &["--proxy", &proxy, "--timeout", "2"],
            &[],
        );
        let line = one_line_failure(&out, started, Duration::from_secs(15), &proxy);
        assert!(
            line.contains("timed out") && line.contains(&format!("through proxy {proxy}")),
            "{proxy}: {line}"
        );
    }
    drop(holder);
}

#[test]
fn all_proxy_is_honoured_unless_proxy_none_or_no_proxy() {
    let socks = proxy_url("socks5", "SOCKS_PROXY_PORT", false);
    let vsftpd = env().port("VSFTPD_PORT");
    for name in ["ALL_PROXY", "all_proxy"] {
        let out = check(vsftpd, &[], &[(name, &socks)]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(
            stdout.contains(&format!("through proxy {socks}")),
            "{name}: {stdout}"
        );
    }
    let out = check(vsftpd, &["--proxy", "none"], &[("ALL_PROXY", &socks)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("through proxy"),
        "{}",
        text(&out.stdout)
    );
    let out = check(
        vsftpd,
        &[],
        &[("ALL_PROXY", &socks), ("NO_PROXY", "127.0.0.1")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("through proxy"),
        "{}",
        text(&out.stdout)
    );
    // The environment's proxy is really used: one that refuses the server fails.
    let out = check(env().port("PUREFTPD_PORT"), &[], &[("ALL_PROXY", &socks)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

/// A mount through `proxy` on `server`: the sample tree is listed, a 64 MiB file reads
/// back with its SHA-256, and files written land on the server's disk.
fn mount_through(server: Server, proxy: &str, extra: Option<&str>) {
    let scratch = ServerScratch::new();
    let mut config = MountConfig::new(server, Tls::V13).option(&format!("proxy={proxy}"));
    if let Some(option) = extra {
        config = config.option(option);
    }
    let m = Mounted::with(config);
    let names: BTreeSet<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains("large.bin") && names.contains("dir1"),
        "{names:?}"
    );
    let expected = common::expected_sha256("large.bin");
    assert_eq!(
        common::sha256_of_file(&m.path().join("large.bin")),
        expected
    );
    for i in 0..5 {
        let body = common::content(100_000 + i * 7_919, i);
        fs::write(m.path().join(&scratch.name).join(format!("f{i}")), &body).unwrap();
        assert_eq!(
            fs::read(scratch.local(&format!("f{i}"))).unwrap(),
            body,
            "f{i}"
        );
    }
    drop(m);
}

#[test]
fn mounts_through_socks5_read_and_write() {
    let socks = proxy_url("socks5", "SOCKS_PROXY_PORT", false);
    mount_through(Server::Vsftpd, &socks, None);
    mount_through(Server::Proftpd, &socks, None);
}

#[test]
fn mounts_through_http_connect_read_and_write() {
    let http = proxy_url("http", "HTTP_AUTH_PROXY_PORT", true);
    let file = format!("proxy_password_file={}", password_file());
    mount_through(Server::Vsftpd, &http, Some(&file));
    mount_through(Server::Proftpd, &http, Some(&file));
}

/// An HTTP CONNECT proxy on 127.0.0.1 that ends a tunnel the moment the client
/// half-closes it: its connection to the server is reset. tinyproxy closes that
/// connection (a reset for whatever the server sends next, about 1 upload in 700 here);
/// this one does it every time. Returns its port.
fn start_abrupt_proxy() -> u16 {
    use std::io::Write;
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsRawFd;

    fn reset_on_close(socket: &TcpStream) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a plain struct of the size given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    fn tunnel(mut client: TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let request = String::from_utf8_lossy(&head).into_owned();
        let target = request.split_whitespace().nth(1).unwrap_or_default();
        let Ok(mut server) = TcpStream::connect(target) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
            return;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
        let (mut from_server, mut to_client) =
            (server.try_clone().unwrap(), client.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_server, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Write);
        });
        let _ = std::io::copy(&mut client, &mut server);
        // The client's end of stream: the tunnel is over, and the server's side reset.
        reset_on_close(&server);
        let _ = server.shutdown(Shutdown::Read);
        let _ = back.join();
        drop(server);
    }

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || tunnel(client));
        }
    });
    port
}

/// Uploads through a proxy that resets the server's side of a tunnel as soon as the
/// client half-closes it (tinyproxy does much the same: the flake of stop 26). An upload
/// that sent its TCP FIN right behind its close_notify lost the server's own
/// close_notify (and TLS 1.3 ticket) to that reset, and vsftpd answered `426 Failure
/// reading network stream`; the FIN now waits until the server has closed its side.
/// Every upload lands, checked by size, on vsftpd and ProFTPD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_a_proxy_that_resets_at_half_close_all_land() {
    use ftpsfs::ftp::proxy::Proxy;
    use ftpsfs::ftp::tls::TlsStats;
    use ftpsfs::ftp::ControlConnection;
    use std::sync::Arc;

    const UPLOADS: usize = 12;
    let proxy_port = start_abrupt_proxy();
    for server in [Server::Vsftpd, Server::Proftpd] {
        let scratch = ServerScratch::new();
        let mut target = common::target(server, Tls::V13);
        let proxy = Proxy::parse(&format!("http://127.0.0.1:{proxy_port}")).expect("proxy URL");
        target.options.proxy = Some(proxy.proxy);
        let options = Arc::new(target.options.clone());
        let stats = Arc::new(TlsStats::default());
        let connect = || async {
            ControlConnection::connect(options.clone(), stats.clone())
                .await
                .expect("connect through the proxy")
        };
        let mut conn = connect().await;
        let mut failed = Vec::new();
        for i in 0..UPLOADS {
            if conn.is_broken() || conn.will_run_dry() {
                conn = connect().await;
            }
            let path = format!("{}/u{i:03}", scratch.name);
            let body = common::content(50_000 + i as u64, i as u64);
            let result = async {
                let mut upload = conn.store(path.as_bytes()).await?;
                if let Err(e) = upload.write_all(&body).await {
                    return Err(conn.failed_upload(upload, e).await);
                }
                conn.finish_upload(upload).await?;
                conn.check_upload(path.as_bytes(), None, None, None).await
            }
            .await;
            match result {
                Ok(check) => assert_eq!(check.size, Some(body.len() as u64)),
                Err(e) => failed.push(format!("upload {i}: {e}")),
            }
        }
        println!(
            "{server:?}: {UPLOADS} uploads through the proxy: {}",
            stats.snapshot()
        );
        assert!(
            failed.is_empty(),
            "{server:?}: {} of {UPLOADS} failed: {failed:#?}",
            failed.len()
        );
    }
}
