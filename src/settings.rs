//! Every option a user can set, defined once: each is both a `-o key=value` mount option
//! (as `mount.fuse3` and `/etc/fstab` pass them) and a `--key-name` command-line flag, with
//! its default, what it means, and why the default is what it is.
//!
//! [`SETTINGS`] is the table; the command line (`main.rs`) and [`Settings::apply_options`]
//! both read it, and a test keeps the README's option table equal to
//! [`markdown_table`].

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, ConnectionSettings};
use crate::fs::{FsConfig, ParallelReads};
use crate::ftp::tls::parse_fingerprint;
use crate::ftp::{PoolOptions, Timeouts, TlsVersions};

/// Everything the options can set: how to connect, and how the mount behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stay in the foreground (`-f`).
    pub foreground: bool,
    /// TLS, timeouts and the like.
    pub connection: ConnectionSettings,
    /// `password_file=`.
    pub password_file: Option<PathBuf>,
    /// `dir_cache=`: how long a listing is trusted.
    pub dir_ttl: Duration,
    /// `cache_size=`: block cache bytes.
    pub cache_size: u64,
    /// `block_size=`: block cache block size.
    pub block_size: u64,
    /// `readahead=`: largest read-ahead window in bytes.
    pub max_readahead: u64,
    /// `connections=`: control connections in the pool.
    pub connections: usize,
    /// Whether `connections=` was given (write-back raises the default otherwise).
    pub connections_given: bool,
    /// `dir_prefetch=`: subdirectories listed ahead when a directory is opened.
    pub dir_prefetch: usize,
    /// `parallel_reads=`: when a sequential reader's file is split into parallel ranges.
    pub parallel_reads: ParallelReads,
    /// `uid=`: owner of every file.
    pub uid: u32,
    /// `gid=`: group of every file.
    pub gid: u32,
    /// `umask=`: permission bits to clear.
    pub umask: u32,
    /// `allow_other`.
    pub allow_other: bool,
    /// `allow_root`.
    pub allow_root: bool,
    /// `default_permissions` (Some(true)) or `no_default_permissions` (Some(false)):
    /// whether the kernel checks permissions; see [`Settings::kernel_checks_permissions`].
    pub default_permissions: Option<bool>,
    /// `log_file=`: where logs go (needed to see them after detaching).
    pub log_file: Option<PathBuf>,
    /// `debug`: debug-level logging.
    pub debug: bool,
    /// `ro`: refuse every change.
    pub read_only: bool,
    /// `cache_dir=`: where staging files and the disk cache go.
    pub cache_dir: PathBuf,
    /// `disk_cache=`: bytes of the persistent block cache (0: off).
    pub disk_cache: u64,
    /// `atomic_upload=`: upload to a temporary name, then rename.
    pub atomic_uploads: bool,
    /// Standard flags the kernel applies to the mount (`noexec`, `nosuid`, ...).
    pub kernel_flags: KernelFlags,
    /// `transform_symlinks`: absolute symlink targets inside the mount made relative.
    pub transform_symlinks: bool,
    /// `writeback`: closes return once the content is durable locally; uploads follow.
    pub writeback: bool,
    /// `writeback_drain=`: longest wait for the write-back queue at unmount.
    pub writeback_drain: Duration,
    /// `writeback_size=`: most bytes queued before closes wait for uploads.
    pub writeback_size: u64,
    /// `writeback_uploads=`: uploads of the write-back queue at once.
    pub writeback_uploads: usize,
}

/// The standard mount flags that mean something to the kernel for any filesystem
/// (mount(8)); the last one given of a pair wins, as with mount(8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFlags {
    /// `exec`/`noexec`: programs on the mount may run.
    pub exec: bool,
    /// `suid`/`nosuid`: set-user-ID bits take effect (off by default, as for every FUSE
    /// mount: the server decides the bits).
    pub suid: bool,
    /// `dev`/`nodev`: device files work (off by default, as for every FUSE mount).
    pub dev: bool,
    /// `noatime`: the kernel does not update access times.
    pub noatime: bool,
    /// `sync`: writes are synchronous.
    pub sync: bool,
    /// `dirsync`: directory changes are synchronous.
    pub dirsync: bool,
}

impl Default for KernelFlags {
    fn default() -> Self {
        Self {
            exec: true,
            suid: false,
            dev: false,
            noatime: false,
            sync: false,
            dirsync: false,
        }
    }
}

impl KernelFlags {
    /// Applies `option` if it is one of these flags; false if it is not.
    fn apply(&mut self, option: &str) -> bool {
        match option {
            "exec" => self.exec = true,
            "noexec" => self.exec = false,
            "suid" => self.suid = true,
            "nosuid" => self.suid = false,
            "dev" => self.dev = true,
            "nodev" => self.dev = false,
            "atime" => self.noatime = false,
            "noatime" => self.noatime = true,
            "sync" => self.sync = true,
            "async" => self.sync = false,
            "dirsync" => self.dirsync = true,
            _ => return false,
        }
        true
    }
}

impl Default for Settings {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            foreground: false,
            connection: ConnectionSettings {
                timeouts: Timeouts::uniform(Duration::from_secs(20)),
                ..ConnectionSettings::default()
            },
            password_file: None,
            dir_ttl: Duration::from_secs(60),
            cache_size: 256 << 20,
            block_size: 1 << 20,
            max_readahead: 128 << 20,
            connections: PoolOptions::default().max_connections,
            connections_given: false,
            dir_prefetch: 64,
            parallel_reads: ParallelReads::Auto,
            uid,
            gid,
            umask: 0,
            allow_other: false,
            allow_root: false,
            default_permissions: None,
            log_file: None,
            debug: false,
            read_only: false,
            cache_dir: default_cache_dir(),
            disk_cache: 0,
            atomic_uploads: true,
            kernel_flags: KernelFlags::default(),
            transform_symlinks: false,
            writeback: false,
            writeback_drain: Duration::from_secs(60),
            writeback_size: 1 << 30,
            writeback_uploads: 6,
        }
    }
}

/// Which commands take an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// How to reach and trust the server: `ftpsfs check` and mounts.
    Connection,
    /// How the mount behaves: mounts only.
    Mount,
}

/// What applies when an option is not given.
#[derive(Debug, Clone, Copy)]
pub enum WhenUnset {
    /// This value, which the option also accepts.
    Value(&'static str),
    /// Something that is no value of the option; the words say what.
    Otherwise(&'static str),
}

impl WhenUnset {
    /// As the README shows it.
    pub fn shown(self) -> &'static str {
        match self {
            WhenUnset::Value(text) | WhenUnset::Otherwise(text) => text,
        }
    }
}

/// One option of the table.
pub struct Setting {
    /// The `-o` key; the flag is `--` and the key with `-` for `_`.
    pub key: &'static str,
    /// What the value looks like (`SECONDS`, `SIZE`); None for a flag without a value.
    pub value: Option<&'static str>,
    /// A one-letter flag as well, as for `-f`.
    pub short: Option<char>,
    /// What applies when the option is not given.
    pub default: WhenUnset,
    /// What the option does, in one line.
    pub meaning: &'static str,
    /// Why the default is what it is.
    pub reason: &'static str,
    /// Which commands take it.
    pub scope: Scope,
    /// Sets it, from the value the user gave (None for a flag).
    pub apply: fn(&mut Settings, Option<&str>) -> Result<(), String>,
}

impl Setting {
    /// The command-line flag's name, without the dashes.
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }
}

/// The value of an option that needs one.
fn value(value: Option<&str>) -> Result<&str, String> {
    value.ok_or_else(|| "needs a value (key=value)".to_string())
}

/// An option without a value must not be given one (`allow_other=1` is a typo).
fn flag(value: Option<&str>) -> Result<(), String> {
    match value {
        None => Ok(()),
        Some(_) => Err("takes no value".into()),
    }
}

fn seconds(text: Option<&str>) -> Result<Duration, String> {
    parse_seconds(value(text)?).ok_or_else(|| "expected seconds > 0".to_string())
}

fn size(text: Option<&str>, example: &str) -> Result<u64, String> {
    parse_size(value(text)?).ok_or_else(|| format!("expected a size such as {example}"))
}

fn number<T: std::str::FromStr>(text: Option<&str>, expected: &str) -> Result<T, String> {
    value(text)?.parse().map_err(|_| expected.to_string())
}

/// The table: every option, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "password_file",
        value: Some("FILE"),
        short: None,
        default: WhenUnset::Otherwise("`FTPSFS_PASSWORD`, then ~/.netrc, then a prompt"),
        meaning: "read the password from the first line of FILE, which must be yours (or root's) and closed to group and others (as .netrc)",
        reason: "without it FTPSFS_PASSWORD, ~/.netrc and then a prompt are tried, so a password never has to be on the command line",
        scope: Scope::Connection,
        apply: |s, v| {
            s.password_file = Some(PathBuf::from(value(v)?));
            Ok(())
        },
    },
    Setting {
        key: "ca_file",
        value: Some("PEM"),
        short: None,
        default: WhenUnset::Otherwise("system roots"),
        meaning: "trust the CA certificates in this PEM file instead of the system's",
        reason: "certificates are verified unless the user opts out explicitly",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.tls.ca_file = Some(PathBuf::from(value(v)?));
            Ok(())
        },
    },
    Setting {
        key: "client_cert",
        value: Some("PEM"),
        short: None,
        default: WhenUnset::Otherwise("none"),
        meaning: "send this client certificate (PEM; the chain may follow it) to servers that ask for one (mutual TLS), on the control and every data connection",
        reason: "only servers that demand one need it; ftpsfs says so when a server does",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.client_cert = Some(PathBuf::from(value(v)?));
            Ok(())
        },
    },
    Setting {
        key: "client_key",
        value: Some("PEM"),
        short: None,
        default: WhenUnset::Otherwise("the key in the `client_cert` file"),
        meaning: "the client certificate's private key (PEM, unencrypted), in a file that must be yours (or root's) and closed to group and others",
        reason: "a key is a secret like a password: a file others can read is refused, and a mount cannot ask for a passphrase",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.client_key = Some(PathBuf::from(value(v)?));
            Ok(())
        },
    },
    Setting {
        key: "proxy",
        value: Some("URL"),
        short: None,
        default: WhenUnset::Otherwise("`all_proxy`, then `ALL_PROXY`, unless the host is in `no_proxy`/`NO_PROXY`; else none"),
        meaning: "connect through this proxy, the control and every data connection: `socks5://[USER@]HOST[:PORT]` (the proxy resolves the server's name) or `http://[USER@]HOST[:PORT]` (CONNECT); port 1080 when left out; `none` ignores the environment",
        reason: "networks that only let connections out through a proxy; this option wins over the environment variables curl users already set",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.proxy = match value(v)? {
                "none" => crate::config::ProxySetting::Direct,
                url => crate::config::ProxySetting::Url(url.to_string()),
            };
            Ok(())
        },
    },
    Setting {
        key: "proxy_password_file",
        value: Some("FILE"),
        short: None,
        default: WhenUnset::Otherwise("none (or the password in `ALL_PROXY`'s URL)"),
        meaning: "the proxy user's password, from the first line of FILE, which must be yours (or root's) and closed to group and others",
        reason: "a password in `proxy=` would be visible in the process list, so it is refused there",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.proxy_password_file = Some(PathBuf::from(value(v)?));
            Ok(())
        },
    },
    Setting {
        key: "active",
        value: Some("[ADDRESS]"),
        short: None,
        default: WhenUnset::Otherwise("passive: ftpsfs connects to the server's data port"),
        meaning: "active mode: the server connects to a port ftpsfs listens on (EPRT, or PORT), on ADDRESS or the control connection's own address; only connections from the server are taken, and ftpsfs is still the TLS client that resumes the session. `--active=ADDRESS` on the command line",
        reason: "passive mode crosses firewalls and NAT that active mode cannot, so active is only for servers whose passive ports are closed; not with a proxy",
        scope: Scope::Connection,
        apply: |s, v| {
            let address = match v {
                None | Some("") => None,
                Some(text) => Some(text.trim_matches(['[', ']']).parse().map_err(|_| {
                    format!("{text:?} is not an IP address (this side's, for the server to connect to)")
                })?),
            };
            s.connection.data_mode = crate::ftp::DataMode::Active(address);
            Ok(())
        },
    },
    Setting {
        key: "fingerprint",
        value: Some("sha256:AB:CD:…"),
        short: None,
        default: WhenUnset::Otherwise("none: the CA decides"),
        meaning: "accept only the server certificate with this SHA-256 fingerprint, whoever signed it (self-signed servers); `ftpsfs check` prints it",
        reason: "pinning is opt-in: a CA-signed certificate changes at every renewal",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.tls.fingerprint = Some(parse_fingerprint(value(v)?)?);
            Ok(())
        },
    },
    Setting {
        key: "insecure",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "do not verify the server's certificate (logs a warning)",
        reason: "anyone on the path could impersonate the server",
        scope: Scope::Connection,
        apply: |s, v| {
            flag(v)?;
            s.connection.tls.insecure = true;
            Ok(())
        },
    },
    Setting {
        key: "tls",
        value: Some("1.2|1.3|auto"),
        short: None,
        default: WhenUnset::Value("auto"),
        meaning: "the TLS versions to offer",
        reason: "the server chooses, which is TLS 1.3 wherever it can; where it gives no TLS 1.3 ticket for uploads (ProFTPD before 1.3.9), connections opened after one ran dry use TLS 1.2, whose session resumes any number of times, instead of a new login every second upload",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.tls.versions = match value(v)? {
                "1.2" => TlsVersions::Tls12Only,
                "1.3" => TlsVersions::Tls13Only,
                "auto" => TlsVersions::Any,
                _ => return Err("expected 1.2, 1.3 or auto".into()),
            };
            Ok(())
        },
    },
    Setting {
        key: "plain",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "plain, unencrypted FTP (only with `ftp://` URLs)",
        reason: "without TLS the password and every file cross the network in the clear",
        scope: Scope::Connection,
        apply: |s, v| {
            flag(v)?;
            s.connection.plain = true;
            Ok(())
        },
    },
    Setting {
        key: "timeout",
        value: Some("SECONDS"),
        short: None,
        default: WhenUnset::Value("20"),
        meaning: "limit on each network step (connect, handshake, reply, silence on a transfer); one operation fails with EIO after about 1.5× this",
        reason: "generous for a loaded server across a continent, short enough that a file browser on a dead server gets EIO within half a minute",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.timeouts = Timeouts::uniform(seconds(v)?);
            Ok(())
        },
    },
    Setting {
        key: "trust_pasv_address",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "connect data connections to the address in PASV replies instead of the control connection's peer",
        reason: "the announced address is often private behind NAT, and obeying it lets a server aim us at any host (FTP bounce)",
        scope: Scope::Connection,
        apply: |s, v| {
            flag(v)?;
            s.connection.trust_pasv_address = true;
            Ok(())
        },
    },
    Setting {
        key: "no_resume",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "do not resume TLS sessions on data connections, to see whether a server demands it",
        reason: "vsftpd, ProFTPD and FileZilla Server refuse data connections that do not resume",
        scope: Scope::Connection,
        apply: |s, v| {
            flag(v)?;
            s.connection.no_resume = true;
            Ok(())
        },
    },
    Setting {
        key: "pipelining",
        value: Some("auto|on|off"),
        short: None,
        default: WhenUnset::Value("auto"),
        meaning: "send commands together to save round trips (`on`), one at a time with the data connection made before its transfer command (`off`), or together until the server answers out of order or refuses an early transfer command, then one at a time for the rest of the mount (`auto`, also found out by a harmless probe at the first login)",
        reason: "every server tested in order takes pipelined commands, which saves about 3 round trips per small file read; servers that run each command on its own task answer out of order, and `auto` steps back there without an error reaching a program",
        scope: Scope::Connection,
        apply: |s, v| {
            s.connection.pipelining = match value(v)? {
                "auto" => crate::ftp::PipeliningMode::Auto,
                "on" => crate::ftp::PipeliningMode::On,
                "off" => crate::ftp::PipeliningMode::Off,
                _ => return Err("expected auto, on or off".into()),
            };
            Ok(())
        },
    },
    Setting {
        key: "dir_cache",
        value: Some("SECONDS"),
        short: None,
        default: WhenUnset::Value("60"),
        meaning: "how long a directory listing, and the kernel's entries and attributes, are trusted",
        reason: "ls, find and rsync then cost one listing per directory, and a change made elsewhere shows within a minute",
        scope: Scope::Mount,
        apply: |s, v| {
            s.dir_ttl = seconds(v)?;
            Ok(())
        },
    },
    Setting {
        key: "cache_size",
        value: Some("SIZE"),
        short: None,
        default: WhenUnset::Value("256M"),
        meaning: "block cache size in bytes (`K`, `M` and `G` suffixes)",
        reason: "holds the read-ahead of four parallel readers with room to spare, and stays small beside a desktop's memory",
        scope: Scope::Mount,
        apply: |s, v| {
            s.cache_size = size(v, "512M")?;
            Ok(())
        },
    },
    Setting {
        key: "block_size",
        value: Some("SIZE"),
        short: None,
        default: WhenUnset::Value("1M"),
        meaning: "cache block size, between 4K and 64M",
        reason: "large enough that a stream fills a block per handful of TCP round trips, small enough that a random read wastes little",
        scope: Scope::Mount,
        apply: |s, v| {
            let block = size(v, "1M")?;
            if !(4096..=64 << 20).contains(&block) {
                return Err("must be between 4K and 64M".into());
            }
            s.block_size = block;
            Ok(())
        },
    },
    Setting {
        key: "readahead",
        value: Some("SIZE"),
        short: None,
        default: WhenUnset::Value("128M"),
        meaning: "largest read-ahead window of a sequential reader, its stream and parallel ranges together (at most half of `cache_size`)",
        reason: "parallel ranges share it: at 150 ms RTT four ranges of 32 MiB read a 256 MiB file at 23.5 MB/s, four of 16 MiB (64M) at 19.3, curl's one stream at 19",
        scope: Scope::Mount,
        apply: |s, v| {
            s.max_readahead = size(v, "128M")?;
            Ok(())
        },
    },
    Setting {
        key: "connections",
        value: Some("N"),
        short: None,
        default: WhenUnset::Otherwise("5; with `writeback`, `writeback_uploads` + 2 (8)"),
        meaning: "control connections to the server, 1 to 64: up to 4 read-ahead streams, and one always left for listings. A server that refuses more (421) gets fewer",
        reason: "four parallel readers each get a stream: four parallel copies at 20 ms RTT ran at 209 MB/s with four connections and 294 MB/s with five",
        scope: Scope::Mount,
        apply: |s, v| {
            s.connections = number::<usize>(v, "expected 1 to 64")
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or("expected 1 to 64")?;
            s.connections_given = true;
            Ok(())
        },
    },
    Setting {
        key: "dir_prefetch",
        value: Some("N"),
        short: None,
        default: WhenUnset::Value("64"),
        meaning: "when a directory is opened, list up to N of its subdirectories ahead, in parallel on connections that are free (never the last one); `0` turns it off",
        reason: "find, ls -R, du and file browsers open them next; 64 covers most directories without listing thousands nobody asked for",
        scope: Scope::Mount,
        apply: |s, v| {
            s.dir_prefetch = number(v, "expected a number (0 turns listing ahead off)")?;
            Ok(())
        },
    },
    Setting {
        key: "parallel_reads",
        value: Some("auto|always|off"),
        short: None,
        default: WhenUnset::Value("auto"),
        meaning: "fetch ranges of a file on several connections at once when its one stream is slower than its reader: `auto` only where the round trip is 2 ms or more (TCP's window then holds a stream back), `always` also nearby (a server that limits each connection's speed), `off` never",
        reason: "at 150 ms RTT one stream carries about 19 MB/s whatever the link; on loopback one stream already takes all the CPU",
        scope: Scope::Mount,
        apply: |s, v| {
            s.parallel_reads = match value(v)? {
                "auto" => ParallelReads::Auto,
                "always" => ParallelReads::Always,
                "off" => ParallelReads::Off,
                _ => return Err("expected auto, always or off".into()),
            };
            Ok(())
        },
    },
    Setting {
        key: "uid",
        value: Some("N"),
        short: None,
        default: WhenUnset::Otherwise("yours"),
        meaning: "owner shown for every file",
        reason: "the server's owners mean nothing on this machine",
        scope: Scope::Mount,
        apply: |s, v| {
            s.uid = number(v, "expected a number")?;
            Ok(())
        },
    },
    Setting {
        key: "gid",
        value: Some("N"),
        short: None,
        default: WhenUnset::Otherwise("yours"),
        meaning: "group shown for every file",
        reason: "the server's groups mean nothing on this machine",
        scope: Scope::Mount,
        apply: |s, v| {
            s.gid = number(v, "expected a number")?;
            Ok(())
        },
    },
    Setting {
        key: "umask",
        value: Some("OCTAL"),
        short: None,
        default: WhenUnset::Value("000"),
        meaning: "permission bits removed from the server's modes",
        reason: "modes are shown as the server keeps them, as sshfs shows them: with allow_other the kernel checks them, and a group-writable directory must show so",
        scope: Scope::Mount,
        apply: |s, v| {
            s.umask = u32::from_str_radix(value(v)?, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or("expected an octal mask such as 022")?;
            Ok(())
        },
    },
    Setting {
        key: "allow_other",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "let other users in. Non-root users need `user_allow_other` in `/etc/fuse.conf`",
        reason: "the mount carries the mounting user's login, so it is private to that user",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.allow_other = true;
            Ok(())
        },
    },
    Setting {
        key: "allow_root",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "let root in as well as the mounting user",
        reason: "private to the mounting user, as with allow_other",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.allow_root = true;
            Ok(())
        },
    },
    Setting {
        key: "default_permissions",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("on with `allow_other`, else off"),
        meaning: "let the kernel check permissions against the shown modes",
        reason: "the server checks every access as the mounting user, so with `allow_other` the shown modes are all that keeps other users out",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.default_permissions = Some(true);
            Ok(())
        },
    },
    Setting {
        key: "no_default_permissions",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "leave every access check to the server, even with `allow_other` (then every local user has the mounting user's access)",
        reason: "with `allow_other`, that would let any local user read and change all the mounting user can",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.default_permissions = Some(false);
            Ok(())
        },
    },
    Setting {
        key: "log_file",
        value: Some("FILE"),
        short: None,
        default: WhenUnset::Otherwise("the terminal, until the mount detaches"),
        meaning: "write logs to FILE (needed to see them once detached)",
        reason: "a detached mount has no terminal to log to",
        scope: Scope::Mount,
        apply: |s, v| {
            s.log_file = Some(PathBuf::from(value(v)?));
            Ok(())
        },
    },
    Setting {
        key: "debug",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "log every FTP command (the password hidden) and every data connection's resumption",
        reason: "a busy mount sends thousands of commands a minute",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.debug = true;
            Ok(())
        },
    },
    Setting {
        key: "foreground",
        value: None,
        short: Some('f'),
        default: WhenUnset::Otherwise("off"),
        meaning: "stay in the foreground, logging to the terminal, instead of detaching once mounted",
        reason: "`mount` and fstab expect the command to return once the mount is up",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.foreground = true;
            Ok(())
        },
    },
    Setting {
        key: "ro",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "mount read-only: every change fails with EROFS",
        reason: "a mount is for working on the files, as with sshfs and rclone mount",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.read_only = true;
            Ok(())
        },
    },
    Setting {
        key: "rw",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("on"),
        meaning: "mount read-write (what mount(8) adds to fstab lines without `ro`)",
        reason: "a mount is for working on the files, as with sshfs and rclone mount",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.read_only = false;
            Ok(())
        },
    },
    Setting {
        key: "cache_dir",
        value: Some("DIR"),
        short: None,
        default: WhenUnset::Otherwise("`$XDG_CACHE_HOME/ftpsfs`, or `~/.cache/ftpsfs`"),
        meaning: "where a file being changed other than in order is kept while it is written (in `DIR/staging`, in files that have no name), the disk cache (`DIR/blocks`), and the write-back journal (`DIR/writeback`)",
        reason: "a per-user cache directory, as the XDG base directories prescribe; files written in order never touch it",
        scope: Scope::Mount,
        apply: |s, v| {
            s.cache_dir = PathBuf::from(value(v)?);
            Ok(())
        },
    },
    Setting {
        key: "disk_cache",
        value: Some("SIZE"),
        short: None,
        default: WhenUnset::Value("off"),
        meaning: "keep downloaded blocks on disk too, in `cache_dir`, up to SIZE (`K`, `M`, `G`) and never leaving the disk under 1 GiB (or 5%) free; they outlive the mount, and serve a later mount without a download once the server's exact time for the file (MDTM, asked at open) matches theirs",
        reason: "after a remount everything was fetched again; a checksum on every block makes a damaged one a miss, never wrong data",
        scope: Scope::Mount,
        apply: |s, v| {
            s.disk_cache = match value(v)? {
                "off" | "0" => 0,
                other => size(Some(other), "2G")?,
            };
            Ok(())
        },
    },
    Setting {
        key: "atomic_upload",
        value: Some("yes|no"),
        short: None,
        default: WhenUnset::Value("yes"),
        meaning: "upload to a temporary name and rename it onto the file once the server has it whole; `no` writes straight onto the name, for servers that forbid renaming (a failed upload then leaves a short file)",
        reason: "a failed or cut-off upload must never leave a short file under the name, nor lose the old content",
        scope: Scope::Mount,
        apply: |s, v| {
            s.atomic_uploads = match value(v)? {
                "yes" => true,
                "no" => false,
                _ => return Err("expected yes or no".into()),
            };
            Ok(())
        },
    },
    Setting {
        key: "writeback",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "`close()` returns once the file is durable on local disk (synced, with a journal record in `cache_dir/writeback`); uploads follow in the background, several at once, and a crash or remount resumes them; `fsync()` waits for the file's upload and returns its error; a file another client changed meanwhile is kept, and ours lands beside it as `NAME.conflict-HOST-YYYYMMDD-HHMMSS` (see docs/SEMANTICS.md)",
        reason: "off, `close()` returns the upload's result, which is what programs that check it expect; on, writing many files to a distant server runs at the link's pace and the program does not wait",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.writeback = true;
            Ok(())
        },
    },
    Setting {
        key: "writeback_drain",
        value: Some("SECONDS"),
        short: None,
        default: WhenUnset::Value("60"),
        meaning: "at unmount, how long to wait for the write-back queue (logging progress); what is left stays in the journal for the next mount",
        reason: "within systemd's 90 s stop timeout, with room for the rest of the unmount",
        scope: Scope::Mount,
        apply: |s, v| {
            s.writeback_drain = seconds(v)?;
            Ok(())
        },
    },
    Setting {
        key: "writeback_size",
        value: Some("SIZE"),
        short: None,
        default: WhenUnset::Value("1G"),
        meaning: "most bytes the write-back queue holds; past it, closes wait for uploads (a single larger file still goes)",
        reason: "a copy faster than the link waits instead of filling the disk",
        scope: Scope::Mount,
        apply: |s, v| {
            s.writeback_size = size(v, "1G")?;
            Ok(())
        },
    },
    Setting {
        key: "writeback_uploads",
        value: Some("N"),
        short: None,
        default: WhenUnset::Value("6"),
        meaning: "uploads of the write-back queue at once; without `connections=`, the pool gets N + 2 connections (listings and reads keep two), with it at most `connections` - 1 uploads run",
        reason: "small files at a distance cost round trips, not bandwidth: at 150 ms, 100 small files reached ProFTPD in 34.3 s with 4 uploads at once and 22.9 s with 7",
        scope: Scope::Mount,
        apply: |s, v| {
            s.writeback_uploads = number(v, "a number of uploads")?;
            if s.writeback_uploads == 0 {
                return Err("at least 1".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "transform_symlinks",
        value: None,
        short: None,
        default: WhenUnset::Otherwise("off"),
        meaning: "show an absolute symlink target that lies inside the mounted directory as a relative one, so that it resolves inside the mount (as sshfs's option of that name)",
        reason: "links are shown as the server has them; an absolute target then points into the local machine's own tree",
        scope: Scope::Mount,
        apply: |s, v| {
            flag(v)?;
            s.transform_symlinks = true;
            Ok(())
        },
    },
];

/// Standard mount options that say nothing to ftpsfs (mount(8), fstab, mount.fuse3), and
/// options of mount.fuse3's own that the URL and mountpoint already say. The atime
/// variants other than `noatime` choose how the kernel updates access times, which no
/// FTP server keeps; FUSE mounts cannot pass them.
const IGNORED_OPTIONS: &[&str] = &[
    "defaults",
    "_netdev",
    "auto",
    "noauto",
    "nofail",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "loud",
    "silent",
    "fsname",
    "subtype",
    "comment",
];

/// The option called `key`.
pub fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

impl Settings {
    /// Whether the kernel checks permissions against the shown modes: as asked, else
    /// when other users are let in (as sshfs advises).
    pub fn kernel_checks_permissions(&self) -> bool {
        self.default_permissions.unwrap_or(self.allow_other)
    }

    /// Applies one `-o` list (`key=value,flag,...`).
    pub fn apply_options(&mut self, list: &str) -> Result<(), ConfigError> {
        for option in list.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            match find(key) {
                Some(setting) => (setting.apply)(self, value)
                    .map_err(|why| ConfigError::Option(format!("mount option {key}: {why}")))?,
                None if value.is_none() && self.kernel_flags.apply(key) => {}
                None if key.starts_with("x-") || IGNORED_OPTIONS.contains(&key) => {}
                None => return Err(ConfigError::Option(format!("unknown mount option {key:?}"))),
            }
        }
        Ok(())
    }

    /// Applies an option given as a command-line flag.
    pub fn apply_flag(
        &mut self,
        setting: &Setting,
        value: Option<&str>,
    ) -> Result<(), ConfigError> {
        (setting.apply)(self, value)
            .map_err(|why| ConfigError::Option(format!("--{}: {why}", setting.flag())))
    }

    /// Refuses options that cannot go together.
    pub fn check_combinations(&self) -> Result<(), ConfigError> {
        if self.writeback && !self.atomic_uploads {
            // Without a temporary name, an upload overwrites the file before it can be
            // checked for another client's change.
            return Err(ConfigError::Option(
                "writeback needs atomic_upload=yes: a queued upload must never overwrite another client's change".into(),
            ));
        }
        if self.writeback && self.read_only {
            return Err(ConfigError::Option(
                "writeback on a read-only mount (ro)".into(),
            ));
        }
        Ok(())
    }

    /// Control connections in the pool: `connections=`, or with write-back and no
    /// `connections=`, enough for its uploads and two more (listings, reads).
    pub fn pool_connections(&self) -> usize {
        if self.writeback && !self.connections_given {
            self.connections.max(self.writeback_uploads + 2).min(64)
        } else {
            self.connections
        }
    }

    /// What the filesystem layer needs of these settings.
    pub fn fs_config(&self) -> FsConfig {
        let timeouts = self.connection.timeouts;
        FsConfig {
            dir_ttl: self.dir_ttl,
            block_size: self.block_size,
            cache_size: self.cache_size,
            uid: self.uid,
            gid: self.gid,
            umask: self.umask,
            // Connect + login + listing or fetch, each step bounded by its own timeout;
            // the whole operation gets half as long again as one step, so a dead server
            // yields EIO in about `timeout` × 1.5 (30 s by default).
            op_timeout: timeouts.reply + timeouts.reply / 2,
            data_timeout: timeouts.data_idle,
            max_readahead: self
                .max_readahead
                .min(self.cache_size / 2)
                .max(self.block_size),
            dir_prefetch: self.dir_prefetch,
            parallel_reads: self.parallel_reads,
            read_only: self.read_only,
            staging_dir: self.cache_dir.join("staging"),
            disk_cache_dir: self.cache_dir.clone(),
            disk_cache_size: self.disk_cache,
            atomic_uploads: self.atomic_uploads,
            transform_symlinks: self.transform_symlinks,
            writeback: self
                .writeback
                .then(|| crate::fs::write::queue::WritebackConfig {
                    dir: self.cache_dir.join("writeback"),
                    drain: self.writeback_drain,
                    max_bytes: self.writeback_size,
                    // One connection at least stays for listings and reads.
                    uploads: self
                        .writeback_uploads
                        .min(self.pool_connections().saturating_sub(1))
                        .max(1),
                }),
        }
    }
}

/// The README's option table, rows in [`SETTINGS`] order.
pub fn markdown_table() -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut table =
        String::from("| option | default | `check` too | meaning |\n|---|---|---|---|\n");
    for setting in SETTINGS {
        let option = match setting.value {
            Some(value) => format!("`{}={}`", setting.key, cell(value)),
            None => format!("`{}`", setting.key),
        };
        let check = if setting.scope == Scope::Connection {
            "yes"
        } else {
            ""
        };
        table.push_str(&format!(
            "| {option} | {} | {check} | {} |\n",
            cell(setting.default.shown()),
            cell(setting.meaning)
        ));
    }
    table
}

/// The cache directory when none is given: `$XDG_CACHE_HOME/ftpsfs`, else
/// `~/.cache/ftpsfs`, else a directory of the user's own under /tmp.
pub fn default_cache_dir() -> PathBuf {
    let from_env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(cache) = from_env("XDG_CACHE_HOME") {
        return cache.join("ftpsfs");
    }
    if let Some(home) = from_env("HOME") {
        return home.join(".cache").join("ftpsfs");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("ftpsfs-{uid}"))
}

/// `512M`, `1G`, `65536`, `64K` → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return None,
    };
    number
        .parse::<u64>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|n| *n > 0)
}

fn parse_seconds(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().parse().ok()?;
    (seconds > 0.0 && seconds < 1e9).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("99999999999G"), None);
    }

    #[test]
    fn fstab_options() {
        let mut settings = Settings::default();
        settings
            .apply_options("ro,_netdev,noauto,password_file=/etc/ftpsfs.pass,cache_size=512M,dir_cache=30,uid=1000,gid=100,umask=077,allow_other,x-systemd.automount")
            .unwrap();
        assert_eq!(
            settings.password_file.as_deref(),
            Some(Path::new("/etc/ftpsfs.pass"))
        );
        assert_eq!(settings.cache_size, 512 << 20);
        assert_eq!(settings.dir_ttl, Duration::from_secs(30));
        assert_eq!(
            (settings.uid, settings.gid, settings.umask),
            (1000, 100, 0o077)
        );
        assert!(settings.allow_other);
        assert!(settings.read_only);
        settings.apply_options("rw,atomic_upload=no").unwrap();
        assert!(!settings.read_only && !settings.atomic_uploads);
    }

    #[test]
    fn bad_options_name_themselves() {
        for (option, words) in [
            ("frobnicate", "unknown mount option \"frobnicate\""),
            ("cache_size=lots", "cache_size"),
            ("umask=999", "umask"),
            ("tls=1.1", "tls"),
            ("ca_file", "needs a value"),
            ("connections=0", "connections"),
            ("allow_other=1", "takes no value"),
        ] {
            let err = Settings::default()
                .apply_options(option)
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{option}: {err}");
        }
    }

    #[test]
    fn keys_are_unique_and_not_ignored() {
        for (i, setting) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[..i].iter().all(|s| s.key != setting.key),
                "{} twice",
                setting.key
            );
            assert!(!IGNORED_OPTIONS.contains(&setting.key), "{}", setting.key);
            assert!(!setting.meaning.is_empty() && !setting.reason.is_empty());
        }
    }

    /// A default the table shows but the code does not use would mislead every reader.
    #[test]
    fn shown_defaults_are_the_real_ones() {
        let defaults = format!("{:?}", Settings::default());
        for setting in SETTINGS {
            let WhenUnset::Value(value) = setting.default else {
                continue;
            };
            let mut settings = Settings::default();
            (setting.apply)(&mut settings, Some(value))
                .unwrap_or_else(|e| panic!("{}: default {value:?}: {e}", setting.key));
            assert_eq!(
                format!("{settings:?}"),
                defaults,
                "{}: the table says {value}, the code uses something else",
                setting.key
            );
        }
    }

    #[test]
    fn writeback_widens_the_pool_unless_connections_are_given() {
        let uploads = |s: &Settings| s.fs_config().writeback.map(|w| w.uploads);
        let mut settings = Settings::default();
        assert_eq!((settings.pool_connections(), uploads(&settings)), (5, None));
        settings.apply_options("writeback").unwrap();
        assert_eq!(
            (settings.pool_connections(), uploads(&settings)),
            (8, Some(6))
        );
        settings.apply_options("connections=3").unwrap();
        assert_eq!(
            (settings.pool_connections(), uploads(&settings)),
            (3, Some(2))
        );
        let mut settings = Settings::default();
        settings
            .apply_options("writeback,atomic_upload=no")
            .unwrap();
        assert!(settings.check_combinations().is_err());
    }

    #[test]
    fn kernel_flags_are_kept_and_the_last_of_a_pair_wins() {
        let mut settings = Settings::default();
        assert_eq!(settings.kernel_flags, KernelFlags::default());
        settings
            .apply_options("noexec,suid,dev,nodev,noatime,sync,dirsync,relatime")
            .unwrap();
        let flags = settings.kernel_flags;
        assert!(!flags.exec && flags.suid && !flags.dev && flags.noatime);
        assert!(flags.sync && flags.dirsync);
        settings.apply_options("exec,async,atime").unwrap();
        let flags = settings.kernel_flags;
        assert!(flags.exec && !flags.sync && !flags.noatime);
        // A flag with a value is a typo, not a flag.
        assert!(settings.apply_options("noexec=1").is_err());
    }

    #[test]
    fn allow_other_turns_kernel_permission_checks_on_unless_refused() {
        let with = |options: &str| {
            let mut settings = Settings::default();
            settings.apply_options(options).unwrap();
            settings.kernel_checks_permissions()
        };
        assert!(!with(""));
        assert!(with("default_permissions"));
        assert!(with("allow_other"));
        assert!(!with("allow_other,no_default_permissions"));
        assert!(!with("allow_root"));
    }

    #[test]
    fn readme_lists_every_option() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let start = readme
            .find("<!-- options:begin")
            .and_then(|i| readme[i..].find('\n').map(|n| i + n + 1))
            .expect("README.md has no <!-- options:begin --> marker");
        let end = readme[start..]
            .find("<!-- options:end")
            .map(|n| start + n)
            .expect("README.md has no <!-- options:end --> marker");
        let expected = markdown_table();
        assert!(
            readme[start..end] == expected,
            "README.md's option table differs from src/settings.rs; it should read:\n{expected}"
        );
    }
}
