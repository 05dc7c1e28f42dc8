//! Mounting: `-o` options (as `mount.fuse3` and `/etc/fstab` pass them), detaching from
//! the terminal once the mount is up, and unmounting on SIGINT/SIGTERM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::config::{ConfigError, ConnectionSettings};
use crate::fs::{FsConfig, FtpFs};
use crate::ftp::{ConnectOptions, Pool, PoolOptions, Timeouts, TlsVersions};
use crate::fuse::FuseAdapter;

/// Everything the mount options can set.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Stay in the foreground (`-f`).
    pub foreground: bool,
    /// TLS, timeouts and the like.
    pub connection: ConnectionSettings,
    /// `password_file=`.
    pub password_file: Option<PathBuf>,
    /// `dir_cache=`: seconds a listing is trusted.
    pub dir_ttl: Duration,
    /// `cache_size=`: block cache bytes.
    pub cache_size: u64,
    /// `block_size=`: block cache block size.
    pub block_size: u64,
    /// `readahead=`: largest read-ahead window in bytes.
    pub max_readahead: u64,
    /// `connections=`: control connections in the pool.
    pub connections: usize,
    /// `dir_prefetch=`: subdirectories listed ahead when a directory is opened.
    pub dir_prefetch: usize,
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
    /// `default_permissions`: let the kernel check permissions.
    pub default_permissions: bool,
    /// `log_file=`: where logs go (needed to see them after detaching).
    pub log_file: Option<PathBuf>,
    /// `debug`: debug-level logging.
    pub debug: bool,
}

impl Default for MountSettings {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            foreground: false,
            connection: ConnectionSettings::default(),
            password_file: None,
            // Listings are trusted for a minute: ls/find/rsync see one listing per
            // directory, and a change on the server shows within a minute.
            dir_ttl: Duration::from_secs(60),
            cache_size: 256 << 20,
            // 1 MiB blocks: large enough that a sequential stream fills a block per
            // handful of TCP round trips, small enough that a random read wastes little.
            block_size: 1 << 20,
            // 64 MiB ahead saturates a 1 Gbit/s link at 500 ms RTT and stays well under
            // the default cache size.
            max_readahead: 64 << 20,
            connections: PoolOptions::default().max_connections,
            // A walk opens the subdirectories next; 64 covers most directories without
            // ever listing thousands of directories nobody asked for.
            dir_prefetch: 64,
            uid,
            gid,
            umask: 0o022,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            log_file: None,
            debug: false,
        }
    }
}

/// Standard mount options that say nothing to ftpsfs (mount(8), fstab, mount.fuse3).
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
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "ro",
    "loud",
    "silent",
];

impl MountSettings {
    /// Applies one `-o` list (`key=value,flag,...`).
    pub fn apply_options(&mut self, list: &str) -> Result<(), ConfigError> {
        for option in list.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            self.apply(key, value)?;
        }
        Ok(())
    }

    fn apply<'a>(&mut self, key: &str, value: Option<&'a str>) -> Result<(), ConfigError> {
        let bad = |why: &str| ConfigError::Option(format!("mount option {key}: {why}"));
        let need = |value: Option<&'a str>| value.ok_or_else(|| bad("needs a value (key=value)"));
        match key {
            "ca_file" => self.connection.tls.ca_file = Some(PathBuf::from(need(value)?)),
            "insecure" => self.connection.tls.insecure = true,
            "fingerprint" => {
                let fingerprint =
                    crate::ftp::tls::parse_fingerprint(need(value)?).map_err(|e| bad(&e))?;
                self.connection.tls.fingerprint = Some(fingerprint);
            }
            "tls" => {
                self.connection.tls.versions = match need(value)? {
                    "1.2" => TlsVersions::Tls12Only,
                    "1.3" => TlsVersions::Tls13Only,
                    "auto" => TlsVersions::Any,
                    _ => return Err(bad("expected 1.2, 1.3 or auto")),
                }
            }
            "plain" => self.connection.plain = true,
            "trust_pasv_address" => self.connection.trust_pasv_address = true,
            "password_file" => self.password_file = Some(PathBuf::from(need(value)?)),
            "dir_cache" => {
                self.dir_ttl =
                    parse_seconds(need(value)?).ok_or_else(|| bad("expected seconds > 0"))?
            }
            "timeout" => {
                let timeout =
                    parse_seconds(need(value)?).ok_or_else(|| bad("expected seconds > 0"))?;
                self.connection.timeouts = Timeouts::uniform(timeout);
            }
            "cache_size" => {
                self.cache_size =
                    parse_size(need(value)?).ok_or_else(|| bad("expected a size such as 512M"))?
            }
            "block_size" => {
                let size =
                    parse_size(need(value)?).ok_or_else(|| bad("expected a size such as 1M"))?;
                if !(4096..=64 << 20).contains(&size) {
                    return Err(bad("must be between 4K and 64M"));
                }
                self.block_size = size;
            }
            "readahead" => {
                self.max_readahead =
                    parse_size(need(value)?).ok_or_else(|| bad("expected a size such as 64M"))?
            }
            "connections" => {
                self.connections = need(value)?
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| bad("expected 1 to 64"))?
            }
            "dir_prefetch" => {
                self.dir_prefetch = need(value)?
                    .parse()
                    .map_err(|_| bad("expected a number (0 turns listing ahead off)"))?
            }
            "uid" => self.uid = need(value)?.parse().map_err(|_| bad("expected a number"))?,
            "gid" => self.gid = need(value)?.parse().map_err(|_| bad("expected a number"))?,
            "umask" => {
                self.umask = u32::from_str_radix(need(value)?, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| bad("expected an octal mask such as 022"))?
            }
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "default_permissions" => self.default_permissions = true,
            "log_file" => self.log_file = Some(PathBuf::from(need(value)?)),
            "debug" => self.debug = true,
            "foreground" => self.foreground = true,
            // mount(8) adds rw when an fstab line does not say ro; the mount stays
            // read-only and every write fails with EROFS.
            "rw" => tracing::warn!("ftpsfs mounts are read-only for now; ignoring rw"), // mount.fuse3 may pass these through; the URL and mountpoint already say it.
            "fsname" | "subtype" | "comment" => {}
            _ if key.starts_with("x-") || IGNORED_OPTIONS.contains(&key) => {}
            _ => return Err(ConfigError::Option(format!("unknown mount option {key:?}"))),
        }
        Ok(())
    }

    fn fs_config(&self) -> FsConfig {
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
        }
    }
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

/// Detaches from the terminal, keeping a pipe to report "mounted" or the error.
///
/// Forks before any thread exists (the tokio runtime is built after), so the child is a
/// complete copy; the parent waits for the child's word and exits with it.
pub fn detach() -> Result<Option<ReadyPipe>, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the fds are fresh and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (see above).
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // SAFETY: setsid only changes this process's session.
            unsafe { libc::setsid() };
            Ok(Some(ReadyPipe(File::from(write_end))))
        }
        _child => {
            drop(write_end);
            let mut message = String::new();
            let _ = File::from(read_end).read_to_string(&mut message);
            match message.strip_prefix("ok") {
                Some(_) => std::process::exit(0),
                None if message.is_empty() => {
                    eprintln!("ftpsfs: the background process ended before the mount was ready");
                    std::process::exit(1)
                }
                None => {
                    eprint!("{message}");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// The child's end of the readiness pipe.
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// Tells the waiting parent that the mount is up, and leaves the terminal.
    pub fn ready(mut self) {
        let _ = self.0.write_all(b"ok\n");
        redirect_stdio_to_null();
    }

    /// Tells the waiting parent why mounting failed.
    pub fn failed(mut self, message: &str) {
        let _ = writeln!(self.0, "{message}");
    }
}

fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Connects, mounts, serves until unmounted; errors are one line each.
pub fn serve(
    connect: ConnectOptions,
    root_path: Vec<u8>,
    source: &str,
    mountpoint: &Path,
    settings: &MountSettings,
    mut ready: Option<ReadyPipe>,
) -> Result<(), String> {
    let fail = |ready: &mut Option<ReadyPipe>, message: String| {
        if let Some(pipe) = ready.take() {
            pipe.failed(&format!("ftpsfs: {message}"));
        }
        Err(message)
    };
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return fail(
                &mut ready,
                format!("mountpoint {} is not a directory", mountpoint.display()),
            )
        }
        Err(e) => {
            return fail(
                &mut ready,
                format!("mountpoint {}: {e}", mountpoint.display()),
            )
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&mut ready, format!("cannot start the async runtime: {e}")),
    };
    let pool = Pool::new(
        connect,
        PoolOptions {
            max_connections: settings.connections,
            ..PoolOptions::default()
        },
    );
    let fs = Arc::new(FtpFs::new(pool.clone(), root_path, settings.fs_config()));
    // Fail here, with the server's words, rather than mount something that cannot work.
    if let Err(e) = runtime.block_on(fs.probe()) {
        return fail(&mut ready, format!("connecting and listing {source}: {e}"));
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.to_string()),
        MountOption::Subtype("ftpsfs".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if settings.default_permissions {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.acl = if settings.allow_other {
        SessionACL::All
    } else if settings.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let mut session = match fuser::Session::new(adapter, mountpoint, &config) {
        Ok(session) => session,
        Err(e) => {
            return fail(
                &mut ready,
                format!("cannot mount on {}: {e}", mountpoint.display()),
            )
        }
    };
    let unmounter = session.unmount_callable();
    let unmount_requested = Arc::new(AtomicBool::new(false));
    runtime.spawn(unmount_on_signals(
        unmounter,
        mountpoint.to_path_buf(),
        unmount_requested.clone(),
    ));
    tracing::info!("mounted {source} on {}", mountpoint.display());
    if let Some(pipe) = ready.take() {
        pipe.ready();
    }
    let result = session.run();
    runtime.block_on(pool.close());
    let stats = fs.stats();
    tracing::info!(?stats, tls = %pool.stats(), "unmounted");
    match result {
        // fuser drops its mount handle when an unmount fails as busy, which may abort the
        // FUSE connection before the lazy detach takes over: after a signal asked for
        // the unmount, that is the end asked for, not an error.
        Err(e)
            if e.raw_os_error() == Some(libc::ECONNABORTED)
                && unmount_requested.load(Ordering::Relaxed) =>
        {
            Ok(())
        }
        result => result.map_err(|e| format!("FUSE session ended with an error: {e}")),
    }
}

/// Unmounts on SIGINT, SIGTERM or SIGHUP; a busy mount is detached lazily (as
/// `fusermount3 -u -z` does), and the process ends once its last user lets go.
async fn unmount_on_signals(
    mut unmounter: fuser::SessionUnmounter,
    mountpoint: PathBuf,
    requested: Arc<AtomicBool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; unmount with fusermount3 -u");
        return;
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        tracing::info!("signal received; unmounting {}", mountpoint.display());
        requested.store(true, Ordering::Relaxed);
        if let Err(e) = unmounter.unmount() {
            tracing::info!("unmount: {e}; detaching the busy mount lazily");
            if let Err(e) = lazy_unmount(&mountpoint) {
                tracing::warn!("lazy unmount of {} failed: {e}", mountpoint.display());
            }
        }
    }
}

fn lazy_unmount(mountpoint: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| "mountpoint contains a NUL byte".to_string())?;
        // SAFETY: path is a valid C string for the duration of the call.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        return Err(std::io::Error::last_os_error().to_string());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()
        .map_err(|e| format!("fusermount3: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("fusermount3 -u -z exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
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
        let mut settings = MountSettings::default();
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
        ] {
            let err = MountSettings::default()
                .apply_options(option)
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{option}: {err}");
        }
    }
}
