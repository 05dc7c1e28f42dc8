//! Shared setup for the integration tests: the servers started by `scripts/servers.sh`,
//! and the strict FileZilla-like server from `tests/support`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use ftpsfs::ftp::{self, ConnectOptions, Secret, Security, Timeouts, TlsOptions, TlsVersions};

pub mod local;
pub mod mount;
pub mod netns;
#[path = "../support/strict_server.rs"]
pub mod strict_server;

use strict_server::{StrictServer, StrictServerOptions};

/// A strict server serving `root` with TLS 1.3, the test certificates and the test
/// user, for tests that mount it.
pub fn strict_server_for(root: &std::path::Path) -> StrictServer {
    let env = env();
    StrictServer::start(StrictServerOptions::new(
        root,
        env.certs.join("server.pem"),
        env.certs.join("server.key"),
        strict_server::TlsVersion::Tls13,
        env.user.clone(),
        &env.password,
    ))
    .expect("start the strict server")
}

/// What `scripts/servers.sh start` wrote to its env file.
pub struct TestEnv {
    pub ca: PathBuf,
    pub certs: PathBuf,
    pub user: String,
    pub password: String,
    pub data: PathBuf,
    values: HashMap<String, String>,
}

impl TestEnv {
    /// A path the servers' env file gives under `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.values
            .get(key)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{key} missing from the servers' env file"))
    }

    pub fn value(&self, key: &str) -> &str {
        self.values
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} missing from the servers' env file"))
    }

    pub fn port(&self, key: &str) -> u16 {
        self.values
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing from the servers' env file"))
    }
}

/// The test servers' settings; panics with a pointer to scripts/test.sh when they are not up.
pub fn env() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("FTPSFS_TEST_ENV")
            .unwrap_or_else(|_| "/var/tmp/ftpsfs-test/servers.env".into());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read {path} ({e}): start the test servers with scripts/test.sh or scripts/servers.sh start")
        });
        let values: HashMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |key: &str| {
            values
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("{key} missing from {path}"))
        };
        let password_file = values
            .get("FTPSFS_TEST_PASSWORD_FILE")
            .cloned()
            .unwrap_or_else(|| format!("{}/password", get("FTPSFS_TEST_DIR")));
        let password = fs::read_to_string(&password_file)
            .unwrap_or_else(|e| panic!("cannot read {password_file}: {e}"))
            .trim()
            .to_string();
        let ca = PathBuf::from(get("FTPSFS_TEST_CA"));
        TestEnv {
            certs: ca.parent().expect("CA in a folder").to_path_buf(),
            ca,
            user: get("FTPSFS_TEST_USER"),
            password,
            data: PathBuf::from(get("FTPSFS_TEST_DATA")),
            values,
        }
    })
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Vsftpd,
    VsftpdImplicit,
    Proftpd,
    /// ProFTPD with its stock `AllowOverwrite off` and TLS 1.3 only: it refuses to
    /// replace a file by STOR or RNTO.
    ProftpdNoOverwrite,
    PureFtpd,
    /// The FileZilla Server 1.x imitation in tests/support.
    Strict,
    /// A server the test starts itself and mounts with `MountConfig::port` (a strict
    /// server with fault knobs, or the hostile fake server).
    External,
}

/// The TLS version a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    V12,
    V13,
}

impl Server {
    /// Whether this server resumes sessions on data connections at this TLS version.
    ///
    /// Debian's Pure-FTPd 1.0.50 never resumes on TLS 1.3 (and does not demand it).
    pub fn resumes(self, tls: Tls) -> bool {
        !(self == Server::PureFtpd && tls == Tls::V13)
    }

    /// Whether this server refuses a data connection that does not resume.
    pub fn enforces_reuse(self) -> bool {
        self != Server::PureFtpd
    }

    /// Whether RNTO may replace an existing file (FileZilla Server, which the strict
    /// server imitates, refuses, and so does ProFTPD with `AllowOverwrite off`).
    pub fn renames_over_files(self) -> bool {
        !matches!(self, Server::Strict | Server::ProftpdNoOverwrite)
    }

    /// Whether the server has SITE CHMOD (FileZilla Server has no SITE commands).
    pub fn has_chmod(self) -> bool {
        self != Server::Strict
    }
}

/// A server ready for a test, with the options to reach it.
pub struct Target {
    pub server: Server,
    pub tls: Tls,
    pub options: ConnectOptions,
    /// Keeps the in-process strict server alive for the test.
    pub strict: Option<StrictServer>,
}

pub fn target(server: Server, tls: Tls) -> Target {
    let env = env();
    let (port, security, strict) = match server {
        Server::Vsftpd => (env.port("VSFTPD_PORT"), Security::ExplicitTls, None),
        Server::VsftpdImplicit => (
            env.port("VSFTPD_IMPLICIT_PORT"),
            Security::ImplicitTls,
            None,
        ),
        Server::Proftpd => (env.port("PROFTPD_PORT"), Security::ExplicitTls, None),
        Server::ProftpdNoOverwrite => {
            (env.port("PROFTPD_NOOVER_PORT"), Security::ExplicitTls, None)
        }
        Server::PureFtpd => (env.port("PUREFTPD_PORT"), Security::ExplicitTls, None),
        Server::Strict => {
            let version = match tls {
                Tls::V12 => strict_server::TlsVersion::Tls12,
                Tls::V13 => strict_server::TlsVersion::Tls13,
            };
            let strict = StrictServer::start(StrictServerOptions {
                writable: true,
                ..StrictServerOptions::new(
                    &env.data,
                    env.certs.join("server.pem"),
                    env.certs.join("server.key"),
                    version,
                    env.user.clone(),
                    env.password.clone(),
                )
            })
            .expect("start the strict test server");
            (strict.port(), Security::ExplicitTls, Some(strict))
        }
        Server::External => panic!("Server::External: give the port with MountConfig::port"),
    };
    Target {
        server,
        tls,
        options: options(port, security, tls),
        strict,
    }
}

/// Makes `options` offer what `-o tls=auto` (the default) offers: TLS 1.2 and 1.3, and
/// TLS 1.2 alone for connections that replace ones TLS 1.3 left without tickets.
pub fn auto_versions(options: &mut ConnectOptions) {
    let tls_options = |versions| TlsOptions {
        ca_file: Some(env().ca.clone()),
        insecure: false,
        fingerprint: None,
        versions,
        client: Default::default(),
    };
    options.tls = ftp::tls::base_config(&tls_options(TlsVersions::Any)).expect("TLS config");
    options.tls12_fallback =
        Some(ftp::tls::base_config(&tls_options(TlsVersions::Tls12Only)).expect("TLS config"));
}

pub fn options(port: u16, security: Security, tls: Tls) -> ConnectOptions {
    let env = env();
    let tls_options = TlsOptions {
        ca_file: Some(env.ca.clone()),
        insecure: false,
        fingerprint: None,
        versions: match tls {
            Tls::V12 => TlsVersions::Tls12Only,
            Tls::V13 => TlsVersions::Tls13Only,
        },
        client: Default::default(),
    };
    ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        security,
        user: env.user.clone(),
        password: Secret::new(env.password.clone()),
        tls: ftp::tls::base_config(&tls_options).expect("TLS config"),
        tls12_fallback: None,
        client_certificate: Default::default(),
        timeouts: Timeouts::default(),
        proxy: None,
        data_mode: Default::default(),
        trust_pasv_address: false,
        resume_data_sessions: true,
        pipelining: ftpsfs::ftp::Pipelining::new(ftpsfs::ftp::PipeliningMode::Auto),
    }
}

/// SHA-256 of a local file in the test data, from the SHA256SUMS the scripts wrote.
pub fn expected_sha256(relative: &str) -> String {
    let sums = fs::read_to_string(env().data.join("SHA256SUMS")).expect("SHA256SUMS");
    sums.lines()
        .find_map(|line| {
            let (hash, name) = line.split_once("  ")?;
            (name == relative).then(|| hash.to_string())
        })
        .unwrap_or_else(|| panic!("{relative} not in SHA256SUMS"))
}

/// SHA-256 of a file (read through a mount, say), in hex.
pub fn sha256_of_file(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finish())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that differ at every offset and between `seed`s, so that a block from the wrong
/// place or the wrong version shows.
pub fn content(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
