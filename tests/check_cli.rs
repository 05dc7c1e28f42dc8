//! `ftpsfs check` as a user runs it: exit codes, the one-line diagnosis, no password leaks.

mod common;

use std::process::{Command, Output};

use common::env;

fn check(args: &[&str], password: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ftpsfs"));
    command.arg("check").args(args).env_remove("RUST_LOG");
    match password {
        Some(p) => command.env("FTPSFS_PASSWORD", p),
        None => command.env_remove("FTPSFS_PASSWORD"),
    };
    command.output().expect("run ftpsfs")
}

fn vsftpd_url() -> String {
    format!(
        "ftp://{}@127.0.0.1:{}/",
        env().user,
        env().port("VSFTPD_PORT")
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_reports_every_data_connection_resumed() {
    let ca = env().ca.to_str().unwrap().to_string();
    for tls in ["1.2", "1.3"] {
        let out = check(
            &["--ca-file", &ca, "--tls", tls, &vsftpd_url()],
            Some(&env().password),
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "tls {tls}: {stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("greeting: 220 (vsFTPd"), "{stdout}");
        assert!(
            stdout.contains(&format!("control connection TLS: TLSv1_{}", &tls[2..])),
            "{stdout}"
        );
        assert!(
            stdout.contains("OK: 5 of 5 data connections resumed"),
            "{stdout}"
        );
        assert!(!stdout.contains("NOT resumed"), "{stdout}");
    }
}

#[test]
fn refused_data_connection_is_one_clear_line() {
    let ca = env().ca.to_str().unwrap().to_string();
    let out = check(
        &["--ca-file", &ca, "--no-resume", &vsftpd_url()],
        Some(&env().password),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("data connection 1 rejected by server: 522 SSL connection failed: session reuse required"),
        "{stderr}"
    );
}

#[test]
fn unknown_certificate_is_refused() {
    // The test CA is not in the system roots, so the default verification must fail.
    let out = check(&[&vsftpd_url()], Some(&env().password));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn wrong_password_names_the_login() {
    let ca = env().ca.to_str().unwrap().to_string();
    let out = check(&["--ca-file", &ca, &vsftpd_url()], Some("not-the-password"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("login as") && stderr.contains("530"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[test]
fn password_never_appears_in_trace_logs() {
    let ca = env().ca.to_str().unwrap().to_string();
    let password = &env().password;
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .args(["check", "-vv", "--ca-file", &ca, &vsftpd_url()])
        .env("FTPSFS_PASSWORD", password)
        .env("RUST_LOG", "trace")
        .output()
        .expect("run ftpsfs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("PASS ****"),
        "the login is not logged at all: {all}"
    );
    assert!(
        !all.contains(password.as_str()),
        "password leaked into the output"
    );
}

#[test]
fn bad_url_and_password_in_url_are_refused() {
    let out = check(&["http://example.invalid/"], Some("x"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("scheme"));
    let out = check(&["ftp://user:hunter2@127.0.0.1/"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("password in the URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn pinned_fingerprint_replaces_the_ca() {
    // The fingerprint that check prints is the one --fingerprint accepts.
    let ca = env().ca.to_str().unwrap().to_string();
    let out = check(&["--ca-file", &ca, &vsftpd_url()], Some(&env().password));
    let stdout = text(&out.stdout);
    let fingerprint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("server certificate: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint printed: {stdout}"))
        .to_string();
    let out = check(
        &["--fingerprint", &fingerprint, &vsftpd_url()],
        Some(&env().password),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut wrong = fingerprint.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let out = check(
        &["--fingerprint", &wrong, &vsftpd_url()],
        Some(&env().password),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not match the pinned"), "{stderr}");
}

#[test]
fn write_test_reports_uploads_renames_and_leaves_nothing() {
    let ca = env().ca.to_str().unwrap().to_string();
    for (port, words) in [
        ("VSFTPD_PORT", "renaming onto an existing file: allowed"),
        (
            "PROFTPD_NOOVER_PORT",
            "a mount moves the old file aside first",
        ),
    ] {
        let scratch = common::mount::ServerScratch::new();
        let url = format!("ftp://{}@127.0.0.1:{}/", env().user, env().port(port));
        let out = check(
            &[
                "--ca-file",
                &ca,
                "--tls",
                "1.3",
                "--write-test",
                &scratch.name,
                &url,
            ],
            Some(&env().password),
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{port}: {stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains(words), "{port}: {stdout}");
        assert!(
            stdout.contains("OK: 3 of 3 upload data connections resumed"),
            "{port}: {stdout}"
        );
        let left: Vec<_> = std::fs::read_dir(&scratch.dir).unwrap().collect();
        assert!(left.is_empty(), "{port}: the write test left {left:?}");
    }
}

/// First contact as a new user makes it: the wrong scheme for a port, a path that does
/// not exist, and a server that answers out of order. Each is one line, in seconds.
mod first_contact {
    use std::time::{Duration, Instant};

    use super::{check, env, text};

    fn ca() -> String {
        env().ca.to_str().unwrap().to_string()
    }

    #[test]
    fn ftp_to_an_implicit_tls_port_says_use_ftps_well_before_the_timeout() {
        let url = format!(
            "ftp://{}@127.0.0.1:{}/",
            env().user,
            env().port("VSFTPD_IMPLICIT_PORT")
        );
        let started = Instant::now();
        let out = check(&["--ca-file", &ca(), &url], Some(&env().password));
        let took = started.elapsed();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("implicit TLS port; use an ftps:// URL"),
            "{stderr}"
        );
        assert!(
            took < Duration::from_secs(8),
            "took {took:?} (timeout 20 s)"
        );
    }

    #[test]
    fn ftps_to_an_explicit_port_says_use_ftp() {
        let url = format!(
            "ftps://{}@127.0.0.1:{}/",
            env().user,
            env().port("VSFTPD_PORT")
        );
        let started = Instant::now();
        let out = check(&["--ca-file", &ca(), &url], Some(&env().password));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("this port speaks plain FTP first; use an ftp:// URL"),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_path_that_does_not_exist_fails_on_every_server() {
        for port in ["VSFTPD_PORT", "PROFTPD_PORT", "PUREFTPD_PORT"] {
            let url = format!(
                "ftp://{}@127.0.0.1:{}/no-such-directory",
                env().user,
                env().port(port)
            );
            let out = check(&["--ca-file", &ca(), &url], Some(&env().password));
            let stderr = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{port}: {stderr}{}",
                text(&out.stdout)
            );
            assert_eq!(stderr.lines().count(), 1, "{port}: {stderr}");
            assert!(stderr.contains("no-such-directory"), "{port}: {stderr}");
        }
    }
}

/// The sample output in README.md is what `check` prints against the test vsftpd on TLS
/// 1.3, line for line, up to times, counts and the certificate's fingerprint.
#[test]
fn readme_check_sample_is_the_real_output() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("Output against the project's test vsftpd on TLS 1.3:")
        .expect("README's check sample");
    let body = &readme[start..];
    let fence = body.find("```\n").expect("code fence") + 4;
    let end = body[fence..].find("```").expect("closing fence") + fence;
    let sample: Vec<String> = body[fence..end].lines().map(shape).collect();
    let ca = env().ca.to_str().unwrap().to_string();
    let out = check(
        &["--ca-file", &ca, "--tls", "1.3", &vsftpd_url()],
        Some(&env().password),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let real: Vec<String> = text(&out.stdout).lines().map(shape).collect();
    assert_eq!(
        sample, real,
        "README's sample has drifted from `ftpsfs check`"
    );
}

/// A line with its numbers and fingerprint replaced, as they change from run to run.
fn shape(line: &str) -> String {
    let mut line = line.to_string();
    if let Some(at) = line.find("sha256:") {
        let start = at + "sha256:".len();
        let len = line[start..]
            .find(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
            .unwrap_or(line.len() - start);
        line.replace_range(start..start + len, "FINGERPRINT");
    }
    let mut out = String::new();
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A server whose control connection breaks after ABOR (the strict server's knob, as a
/// Node.js server; ProFTPD through a proxy did it once in CI): the check reads the
/// aborted download's replies at once, says the connection was closed, connects again
/// and goes on to its end, rather than failing its next listing.
#[test]
fn a_control_connection_closed_after_abor_is_replaced_and_the_check_goes_on() {
    let root = common::mount::scratch_dir("check-abor");
    std::fs::write(root.join("big.bin"), common::content(200_000, 3)).unwrap();
    let env = env();
    let server = common::strict_server_for(&root);
    server.set_break_after_abort(true);
    let url = format!("ftp://{}@127.0.0.1:{}/", env.user, server.port());
    let ca = env.ca.to_str().unwrap();
    let out = check(&["--ca-file", ca, &url], Some(&env.password));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("the server closed the control connection after ABOR"),
        "{stdout}"
    );
    assert!(
        stdout.contains("first 4096 bytes of \"big.bin\""),
        "{stdout}"
    );
    assert!(stdout.contains("OK: "), "{stdout}");
    let _ = std::fs::remove_dir_all(&root);
}
