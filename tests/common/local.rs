//! A filesystem under test without FUSE, root or the test servers: [`FtpFs`] over a pool
//! that talks to an in-process strict server serving a fresh temporary directory, with a
//! certificate authority generated here. For fast tests of the filesystem's semantics.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Name, X509};

use ftpsfs::fs::{FsConfig, FtpFs, ParallelReads};
use ftpsfs::ftp::{self, ConnectOptions, Pool, PoolOptions, Secret, Security, Timeouts};
use ftpsfs::ftp::{TlsOptions, TlsVersions};

use super::mount::scratch_dir;
use super::strict_server::{StrictServer, StrictServerOptions, TlsVersion};
use super::Tls;

/// PEM files of a CA and a certificate for 127.0.0.1 it signed, made once per process.
pub struct LocalCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

fn name(common: &str) -> X509Name {
    let mut name = X509Name::builder().expect("name");
    name.append_entry_by_text("O", "ftpsfs tests").expect("O");
    name.append_entry_by_text("CN", common).expect("CN");
    name.build()
}

/// The generated certificates.
pub fn certs() -> &'static LocalCerts {
    static CERTS: OnceLock<LocalCerts> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = scratch_dir("certs");
        let ca_key = ec_key();
        let mut ca = X509::builder().expect("builder");
        ca.set_version(2).unwrap();
        ca.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        ca.set_subject_name(&name("ftpsfs local test CA")).unwrap();
        ca.set_issuer_name(&name("ftpsfs local test CA")).unwrap();
        ca.set_pubkey(&ca_key).unwrap();
        ca.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        ca.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        ca.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let ca = ca.build();

        let key = ec_key();
        let mut cert = X509::builder().expect("builder");
        cert.set_version(2).unwrap();
        cert.set_serial_number(&BigNum::from_u32(2).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        cert.set_subject_name(&name("localhost")).unwrap();
        cert.set_issuer_name(ca.subject_name()).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&cert.x509v3_context(Some(&ca), None))
            .unwrap();
        cert.append_extension(san).unwrap();
        cert.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let cert = cert.build();

        let write = |file: &str, pem: Vec<u8>| {
            let path = dir.join(file);
            fs::write(&path, pem).unwrap();
            path
        };
        LocalCerts {
            ca: write("ca.pem", ca.to_pem().unwrap()),
            cert: write("server.pem", cert.to_pem().unwrap()),
            key: write("server.key", key.private_key_to_pem_pkcs8().unwrap()),
        }
    })
}

/// The user and password of local servers.
pub const USER: &str = "local";
pub const PASSWORD: &str = "local-secret";

/// Connection options for a local server on `port`.
pub fn options(port: u16, tls: Tls) -> ConnectOptions {
    let tls_options = TlsOptions {
        ca_file: Some(certs().ca.clone()),
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
        security: Security::ExplicitTls,
        user: USER.into(),
        password: Secret::new(PASSWORD.into()),
        tls: ftp::tls::base_config(&tls_options).expect("TLS config"),
        tls12_fallback: None,
        client_certificate: Default::default(),
        // Short, so that a test of a failure does not wait long.
        timeouts: Timeouts::uniform(Duration::from_secs(5)),
        proxy: None,
        data_mode: Default::default(),
        trust_pasv_address: false,
        resume_data_sessions: true,
        pipelining: ftpsfs::ftp::Pipelining::new(ftpsfs::ftp::PipeliningMode::Auto),
    }
}

/// A filesystem over a writable strict server that serves a directory of its own.
pub struct LocalFs {
    pub fs: Arc<FtpFs>,
    pub server: StrictServer,
    /// What the server serves: the "server's disk".
    pub root: PathBuf,
    /// Where staging files go.
    pub staging: PathBuf,
    dir: PathBuf,
}

/// How to set a local filesystem up.
pub struct LocalConfig {
    pub tls: Tls,
    pub read_only: bool,
    pub atomic_uploads: bool,
    /// Let the server rename onto existing files (the strict server refuses, like
    /// FileZilla Server).
    pub rename_over_existing: bool,
    pub dir_ttl: Duration,
    /// Subdirectories listed ahead when a directory is opened.
    pub dir_prefetch: usize,
    /// The server lists with LIST only, to the minute, as vsftpd does.
    pub list_only: bool,
    /// Largest read-ahead of a sequential reader, its parallel ranges included.
    pub max_readahead: u64,
    /// When files are split into parallel ranges.
    pub parallel_reads: ParallelReads,
    /// Whether commands go out together.
    pub pipelining: ftpsfs::ftp::PipeliningMode,
    /// The server answers as one that runs each command on its own task, from the start.
    pub async_replies: bool,
    /// Control connections in the pool.
    pub connections: usize,
    /// Block cache bytes.
    pub cache_size: u64,
    /// The persistent block cache's directory and size (0: off).
    pub disk_cache_dir: Option<PathBuf>,
    pub disk_cache_size: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            tls: Tls::V13,
            read_only: false,
            atomic_uploads: true,
            rename_over_existing: false,
            dir_ttl: Duration::from_secs(60),
            dir_prefetch: 0,
            list_only: false,
            max_readahead: 8 << 20,
            parallel_reads: ParallelReads::Off,
            pipelining: ftpsfs::ftp::PipeliningMode::Auto,
            async_replies: false,
            connections: PoolOptions::default().max_connections,
            cache_size: 64 << 20,
            disk_cache_dir: None,
            disk_cache_size: 0,
        }
    }
}

impl LocalFs {
    pub fn new() -> Self {
        Self::with(LocalConfig::default())
    }

    pub fn with(config: LocalConfig) -> Self {
        let dir = scratch_dir("fs-layer");
        let root = dir.join("server");
        let staging = dir.join("staging");
        fs::create_dir_all(&root).unwrap();
        let certs = certs();
        let server = StrictServer::start(StrictServerOptions {
            writable: true,
            rename_over_existing: config.rename_over_existing,
            list_only: config.list_only,
            io_timeout: Duration::from_secs(5),
            ..StrictServerOptions::new(
                &root,
                &certs.cert,
                &certs.key,
                match config.tls {
                    Tls::V12 => TlsVersion::Tls12,
                    Tls::V13 => TlsVersion::Tls13,
                },
                USER,
                PASSWORD,
            )
        })
        .expect("start the strict server");
        server.set_async_replies(config.async_replies);
        let fs = build_fs(server.port(), &staging, &config);
        Self {
            fs: Arc::new(fs),
            server,
            root,
            staging,
            dir,
        }
    }

    /// Another filesystem over the same server, as a second mount would be.
    pub fn remount(&self, config: &LocalConfig) -> FtpFs {
        build_fs(self.server.port(), &self.staging, config)
    }

    /// A path on the server's disk.
    pub fn on_server(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.root.join(relative)
    }

    /// The names in a directory of the server's disk, sorted, hidden ones included.
    pub fn server_names(&self, relative: impl AsRef<Path>) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join(relative))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for LocalFs {
    fn drop(&mut self) {
        self.server.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A filesystem over the strict server on `port`, as `config` says.
fn build_fs(port: u16, staging: &Path, config: &LocalConfig) -> FtpFs {
    let mut connect = options(port, config.tls);
    connect.pipelining = ftpsfs::ftp::Pipelining::new(config.pipelining);
    let pool = Pool::new(
        connect,
        PoolOptions {
            max_connections: config.connections,
            ..PoolOptions::default()
        },
    );
    FtpFs::new(
        pool,
        Vec::new(),
        FsConfig {
            dir_ttl: config.dir_ttl,
            block_size: 1 << 20,
            cache_size: config.cache_size,
            uid: 1000,
            gid: 1000,
            umask: 0o022,
            op_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(5),
            max_readahead: config.max_readahead,
            dir_prefetch: config.dir_prefetch,
            parallel_reads: config.parallel_reads,
            read_only: config.read_only,
            staging_dir: staging.to_path_buf(),
            disk_cache_dir: config.disk_cache_dir.clone().unwrap_or_default(),
            disk_cache_size: config.disk_cache_size,
            atomic_uploads: config.atomic_uploads,
            transform_symlinks: false,
            writeback: None,
        },
    )
}
