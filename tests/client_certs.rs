//! Client certificates (mutual TLS) against servers that demand one: vsftpd-mtls
//! (`require_cert`, `validate_cert`) and proftpd-mtls (`TLSVerifyClient on`), both
//! trusting only the test CA, started by scripts/servers.sh. Every data connection still
//! resumes its control connection's session; a missing, foreign or unusable certificate
//! is one line that names the cause.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::mount::{scratch_dir, MountConfig, Mounted, ServerScratch};
use common::{env, Server, Tls};

fn ftpsfs_check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .arg("check")
        .args(args)
        .env_remove("RUST_LOG")
        .env("FTPSFS_PASSWORD", &env().password)
        .output()
        .expect("run ftpsfs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn url(port_key: &str) -> String {
    format!("ftp://{}@127.0.0.1:{}/", env().user, env().port(port_key))
}

const SERVERS: [&str; 2] = ["VSFTPD_MTLS_PORT", "PROFTPD_MTLS_PORT"];

fn cert(key: &str) -> String {
    env().path(key).to_str().unwrap().to_string()
}

/// `ftpsfs check` with the given client certificate options, at TLS `tls`, with its
/// write test in `write_test` (a directory on the server) if given.
fn check_with(port_key: &str, tls: &str, client: &[&str], write_test: Option<&str>) -> Output {
    let ca = env().ca.to_str().unwrap().to_string();
    let mut args = vec!["--ca-file", &ca, "--tls", tls];
    args.extend_from_slice(client);
    if let Some(dir) = write_test {
        args.extend(["--write-test", dir]);
    }
    let url = url(port_key);
    args.push(&url);
    ftpsfs_check(&args)
}

/// The one line of a failed check, after checking that it is one line and exit code 1.
fn one_failure_line(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit {:?}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    stderr
}

#[test]
fn the_servers_refuse_a_client_without_a_certificate() {
    for port in SERVERS {
        for tls in ["1.2", "1.3"] {
            let out = check_with(port, tls, &[], None);
            let line = one_failure_line(&out, &format!("{port} TLS {tls} without a certificate"));
            assert!(
                line.contains("the server asked for a client certificate, none was given")
                    && line.contains("client_cert="),
                "{port} TLS {tls}: {line}"
            );
        }
    }
}

#[test]
fn a_certificate_from_a_ca_the_server_does_not_trust_is_refused() {
    let (other, other_key) = (
        cert("FTPSFS_TEST_OTHER_CLIENT_CERT"),
        cert("FTPSFS_TEST_OTHER_CLIENT_KEY"),
    );
    for port in SERVERS {
        for tls in ["1.2", "1.3"] {
            let out = check_with(
                port,
                tls,
                &["--client-cert", &other, "--client-key", &other_key],
                None,
            );
            let line = one_failure_line(&out, &format!("{port} TLS {tls}, untrusted CA"));
            assert!(
                line.contains("refused the client certificate"),
                "{port} TLS {tls}: {line}"
            );
        }
    }
}

#[test]
fn with_the_certificate_every_data_connection_resumes_reading_and_writing() {
    let (client, key) = (
        cert("FTPSFS_TEST_CLIENT_CERT"),
        cert("FTPSFS_TEST_CLIENT_KEY"),
    );
    for port in SERVERS {
        for tls in ["1.2", "1.3"] {
            let scratch = ServerScratch::new();
            let out = check_with(
                port,
                tls,
                &["--client-cert", &client, "--client-key", &key],
                Some(&scratch.name),
            );
            let stdout = text(&out.stdout);
            assert!(
                out.status.success(),
                "{port} TLS {tls}: {stdout}\n{}",
                text(&out.stderr)
            );
            assert!(
                stdout.contains(&format!("control connection TLS: TLSv1_{}", &tls[2..])),
                "{port} TLS {tls}: {stdout}"
            );
            assert!(
                stdout.contains("client certificate: the server asked for one;")
                    && stdout.contains("sent and accepted"),
                "{port} TLS {tls}: {stdout}"
            );
            assert!(
                stdout.contains("OK: 5 of 5 data connections resumed"),
                "{port} TLS {tls}: {stdout}"
            );
            assert!(
                stdout.contains("OK: 3 of 3 upload data connections resumed"),
                "{port} TLS {tls}: {stdout}"
            );
            assert!(
                !stdout.contains("NOT resumed"),
                "{port} TLS {tls}: {stdout}"
            );
        }
    }
}

/// A private copy of a file (mode 0600) under `dir`.
fn private_copy(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::copy(from, &to).unwrap();
    fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
    to
}

#[test]
fn unusable_certificate_files_are_named_in_one_line() {
    let dir = scratch_dir("client-certs");
    let client = env().path("FTPSFS_TEST_CLIENT_CERT");
    let key = private_copy(&env().path("FTPSFS_TEST_CLIENT_KEY"), &dir, "client.key");
    let other_key = private_copy(
        &env().path("FTPSFS_TEST_OTHER_CLIENT_KEY"),
        &dir,
        "other.key",
    );
    let open_key = private_copy(&key, &dir, "open.key");
    fs::set_permissions(&open_key, fs::Permissions::from_mode(0o644)).unwrap();
    let encrypted = dir.join("encrypted.key");
    let made = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&encrypted)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "{}", text(&made.stderr));
    fs::set_permissions(&encrypted, fs::Permissions::from_mode(0o600)).unwrap();

    let client = client.to_str().unwrap();
    let cases: [(&Path, &str); 3] = [
        (&open_key, "is open to other users"),
        (&other_key, "does not belong to the certificate"),
        (&encrypted, "the private key is encrypted"),
    ];
    for (bad_key, cause) in cases {
        let out = check_with(
            "VSFTPD_MTLS_PORT",
            "1.3",
            &[
                "--client-cert",
                client,
                "--client-key",
                bad_key.to_str().unwrap(),
            ],
            None,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cause}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{cause}: {stderr}");
        assert!(
            stderr.contains(cause) && stderr.contains(bad_key.to_str().unwrap()),
            "{cause}: {stderr}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_mount_with_one_pem_holding_certificate_and_key_reads_and_writes() {
    for (server, port_key) in [
        (Server::Vsftpd, "VSFTPD_MTLS_PORT"),
        (Server::Proftpd, "PROFTPD_MTLS_PORT"),
    ] {
        let scratch = ServerScratch::new();
        let combined = env().certs.join("client-combined.pem");
        let m = Mounted::with(
            MountConfig::new(server, Tls::V13)
                .port(env().port(port_key))
                .remote_dir(&scratch.name)
                .option(&format!("client_cert={}", combined.display())),
        );
        let body = common::content(3 * 1024 * 1024 + 17, 5);
        fs::write(m.path().join("written.bin"), &body).unwrap();
        assert_eq!(
            fs::read(scratch.local("written.bin")).unwrap(),
            body,
            "{server:?}: the server's copy"
        );
        assert_eq!(fs::read(m.path().join("written.bin")).unwrap(), body);
        drop(m);
    }
}
