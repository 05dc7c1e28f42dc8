//! Active mode (`active`): the server connects to a port ftpsfs listens on (EPRT, or
//! PORT), ftpsfs is still the TLS client on that connection and resumes the control
//! connection's session. The test vsftpd has `port_enable=YES`; ProFTPD and Pure-FTPd
//! take active mode as shipped; the implicit-TLS vsftpd keeps `port_enable=NO`, as a
//! server whose firewall rules allow passive mode only.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Output};

use common::mount::{MountConfig, Mounted, ServerScratch};
use common::{env, Server, Tls};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .arg("check")
        .arg("--ca-file")
        .arg(&env().ca)
        .args(args)
        .arg(url)
        .env_remove("RUST_LOG")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("FTPSFS_PASSWORD", &env().password)
        .output()
        .expect("run ftpsfs check")
}

fn url(port_key: &str) -> String {
    format!("ftp://{}@127.0.0.1:{}/", env().user, env().port(port_key))
}

/// The EPRT commands in vsftpd's log (it logs every command).
fn vsftpd_eprts() -> usize {
    let log = env().path("FTPSFS_TEST_DIR").join("logs/vsftpd.log");
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("FTP command") && l.contains("\"EPRT |1|127.0.0.1|"))
        .count()
}

#[test]
fn every_active_data_connection_resumes_reading_and_writing() {
    for (port_key, tls_versions, resumes) in [
        ("VSFTPD_PORT", &["1.2", "1.3"][..], true),
        ("PROFTPD_PORT", &["1.2", "1.3"][..], true),
        // Pure-FTPd issues no TLS 1.3 tickets, so only TLS 1.2 can resume.
        ("PUREFTPD_PORT", &["1.2"][..], true),
        ("PUREFTPD_PORT", &["1.3"][..], false),
    ] {
        for tls in tls_versions {
            let scratch = ServerScratch::new();
            let eprts_before = vsftpd_eprts();
            let out = check(
                &url(port_key),
                &["--active", "--tls", tls, "--write-test", &scratch.name],
            );
            let stdout = text(&out.stdout);
            let what = format!("{port_key} TLS {tls}");
            assert!(
                out.status.success(),
                "{what}: {stdout}{}",
                text(&out.stderr)
            );
            assert!(
                stdout.contains("data connections: active (the server connects to 127.0.0.1"),
                "{what}: {stdout}"
            );
            if resumes {
                assert!(
                    stdout.contains("OK: 5 of 5 data connections resumed")
                        && stdout.contains("OK: 3 of 3 upload data connections resumed")
                        && !stdout.contains("NOT resumed"),
                    "{what}: {stdout}"
                );
            } else {
                assert!(
                    stdout.contains("OK: 0 of 5 data connections resumed"),
                    "{what}: {stdout}"
                );
            }
            if port_key == "VSFTPD_PORT" {
                // The first connection's 4 listings and reads (`--data-connections`'
                // default), the second connection's listing and 3 uploads. (Other tests'
                // mounts may add theirs meanwhile: at least these.)
                assert!(
                    vsftpd_eprts() >= eprts_before + 8,
                    "{what}: vsftpd's log shows {} EPRT commands, {} before",
                    vsftpd_eprts(),
                    eprts_before
                );
            }
        }
    }
}

#[test]
fn a_server_that_allows_passive_mode_only_refuses_in_one_line() {
    // vsftpd-implicit keeps port_enable=NO.
    let url = format!(
        "ftps://{}@127.0.0.1:{}/",
        env().user,
        env().port("VSFTPD_IMPLICIT_PORT")
    );
    let out = check(&url, &["--active"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}{}", text(&out.stdout));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("active mode: EPRT: server replied 550"),
        "{stderr}"
    );
    // Passive mode works there: the refusal was active mode's.
    let out = check(&url, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bad_active_options_are_one_line() {
    for (args, says) in [
        (
            &["--active", "--proxy", "socks5://127.0.0.1:1"][..],
            "active mode cannot go through proxy",
        ),
        (&["--active=10.0.0.300"][..], "is not an IP address"),
    ] {
        let out = check(&url("VSFTPD_PORT"), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // An explicit address of this side works as the default one does.
    let out = check(&url("VSFTPD_PORT"), &["--active=127.0.0.1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn mounts_in_active_mode_read_and_write() {
    for server in [Server::Vsftpd, Server::Proftpd] {
        let scratch = ServerScratch::new();
        let m = Mounted::with(MountConfig::new(server, Tls::V13).option("active"));
        let names: BTreeSet<String> = fs::read_dir(m.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains("large.bin"), "{server:?}: {names:?}");
        let expected = common::expected_sha256("large.bin");
        assert_eq!(
            common::sha256_of_file(&m.path().join("large.bin")),
            expected,
            "{server:?}"
        );
        for i in 0..5u64 {
            let body = common::content(200_000 + i * 7_919, i);
            fs::write(m.path().join(&scratch.name).join(format!("f{i}")), &body).unwrap();
            assert_eq!(
                fs::read(scratch.local(&format!("f{i}"))).unwrap(),
                body,
                "{server:?} f{i}"
            );
        }
        drop(m);
    }
}
