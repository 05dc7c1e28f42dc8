//! Real FUSE mounts of the test servers: the `ftpsfs URL MOUNTPOINT -f` process as a guard
//! that unmounts, reaps the process and removes its mountpoint when dropped.
//!
//! Every mount gets a fresh directory under /tmp holding the mountpoint (`mnt`) and the
//! process's stderr (`ftpsfs.log`). The password goes through `FTPSFS_PASSWORD`, never argv.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{env, target, Server, Target, Tls};
use ftpsfs::ftp::Security;

/// How long a mount may take to appear.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the process may take to exit once unmounted.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL `ftpsfs` mounts for a target: explicit TLS is `ftp://`, implicit `ftps://`.
/// Reads up to `len` bytes at `offset`, looping over short reads, stopping at EOF.
pub fn read_at_most(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Reads every file of `names` under `dir` at once, one thread each, in that order.
pub fn read_concurrently(
    dir: &Path,
    names: &[&'static str],
) -> Vec<(&'static str, std::io::Result<Vec<u8>>)> {
    let readers: Vec<_> = names
        .iter()
        .map(|&name| {
            let path = dir.join(name);
            thread::spawn(move || (name, fs::read(path)))
        })
        .collect();
    readers.into_iter().map(|r| r.join().unwrap()).collect()
}

pub fn url(target: &Target) -> String {
    let scheme = match target.options.security {
        Security::ImplicitTls => "ftps",
        _ => "ftp",
    };
    format!(
        "{scheme}://{}@127.0.0.1:{}/",
        env().user,
        target.options.port
    )
}

pub fn tls_option(tls: Tls) -> &'static str {
    match tls {
        Tls::V12 => "tls=1.2",
        Tls::V13 => "tls=1.3",
    }
}

/// A fresh, empty directory under /tmp, unique to this process and call.
pub fn scratch_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "ftpsfs-{label}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Decodes the octal escapes (`\040` for a space) of a path in /proc/self/mountinfo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type mounted at `path` (the last mount there wins), from
/// /proc/self/mountinfo; None when nothing is mounted there.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let wanted = path.to_str().expect("UTF-8 mountpoint");
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() > sep + 1 && fields.len() > 4 && unescape_mountinfo(fields[4]) == wanted {
            found = Some(fields[sep + 1].to_string());
        }
    }
    found
}

/// Whether an ftpsfs FUSE mount is at `path`: fstype `fuse.ftpsfs`, or any `fuse*` type
/// in case the subtype is not set.
pub fn is_fuse_mounted(path: &Path) -> bool {
    mounted_fstype(path).is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
}

/// Whether a process is alive (a zombie counts as gone: it has exited).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z')))
        }
        Err(_) => false,
    }
}

/// PIDs of the processes (other than this one) whose argv has `arg` as one argument.
pub fn pids_with_arg(arg: &Path) -> Vec<u32> {
    let wanted = arg.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == wanted) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits for `child` to exit; None after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with a deadline, so a hung filesystem fails the test with
/// a message instead of stalling it. Panics on timeout (after killing the command).
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{description} did not finish within {timeout:?} (hung filesystem?)");
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// [`run`], panicking with the command's output unless it succeeds; `what` names it.
pub fn run_ok(what: &str, command: &mut Command, timeout: Duration) -> Output {
    let out = run(command, timeout);
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `fusermount3 -u PATH`, falling back to a lazy `umount -l` when the mount is busy or the
/// process is gone. Returns whether the first, clean unmount worked.
pub fn force_unmount(path: &Path) -> bool {
    let clean = Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !clean && mounted_fstype(path).is_some() {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    clean
}

/// What to mount and how.
pub struct MountConfig {
    pub server: Server,
    pub tls: Tls,
    /// `dir_cache=SECONDS`; None leaves the mount's default.
    pub dir_cache: Option<u64>,
    /// More `-o` options.
    pub options: Vec<String>,
    /// The password to give in `FTPSFS_PASSWORD` (default: the real one).
    pub password: Option<String>,
    /// Leave `FTPSFS_PASSWORD` unset (the password then comes from elsewhere).
    pub no_password_env: bool,
    /// Mount a server the test runs itself on 127.0.0.1:PORT (explicit TLS) instead of
    /// starting `server`.
    pub port: Option<u16>,
    /// Mount here instead of on a fresh directory (which is then left in place).
    pub mountpoint: Option<PathBuf>,
    /// A command (and its arguments) that runs ftpsfs, e.g. `nsenter --net=...`.
    pub wrapper: Vec<OsString>,
    /// More environment variables for ftpsfs (`RUST_LOG`, `HOME` ...).
    pub env: Vec<(OsString, OsString)>,
    /// The directory on the server to mount (relative to the login directory), instead
    /// of the login directory.
    pub remote_dir: Option<String>,
}

impl MountConfig {
    pub fn new(server: Server, tls: Tls) -> Self {
        Self {
            server,
            tls,
            dir_cache: None,
            options: Vec::new(),
            password: None,
            no_password_env: false,
            port: None,
            mountpoint: None,
            wrapper: Vec::new(),
            env: Vec::new(),
            remote_dir: None,
        }
    }

    /// Mounts `dir` of the server (relative to the login directory).
    pub fn remote_dir(mut self, dir: &str) -> Self {
        self.remote_dir = Some(dir.to_string());
        self
    }

    /// Mounts the server the test started on 127.0.0.1:`port` (explicit TLS).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Runs ftpsfs through `wrapper` (`nsenter`, `setpriv` ...).
    pub fn wrapper<S: Into<OsString>>(mut self, wrapper: impl IntoIterator<Item = S>) -> Self {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn mountpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.mountpoint = Some(path.into());
        self
    }

    /// The target this config mounts: the test's own server when `port` is set.
    pub fn target(&self) -> Target {
        match self.port {
            Some(port) => Target {
                server: self.server,
                tls: self.tls,
                options: super::options(port, Security::ExplicitTls, self.tls),
                strict: None,
            },
            None => target(self.server, self.tls),
        }
    }

    pub fn dir_cache(mut self, seconds: u64) -> Self {
        self.dir_cache = Some(seconds);
        self
    }

    pub fn option(mut self, option: &str) -> Self {
        self.options.push(option.to_string());
        self
    }

    /// The `-o` list: CA, TLS version, dir cache, extras.
    pub fn option_list(&self) -> String {
        self.options_with(std::env::var_os("FTPSFS_MOUNT_TEST_DEBUG").is_some())
    }

    fn options_with(&self, debug: bool) -> String {
        let mut options = vec![
            format!("ca_file={}", env().ca.display()),
            tls_option(self.tls).to_string(),
        ];
        if let Some(seconds) = self.dir_cache {
            options.push(format!("dir_cache={seconds}"));
        }
        options.extend(self.options.iter().cloned());
        // FTPSFS_MOUNT_TEST_DEBUG=1 logs every FTP command into the mount's log, which a
        // failing test prints.
        if debug && !self.options.iter().any(|o| o == "debug") {
            options.push("debug".into());
        }
        options.join(",")
    }

    /// `ftpsfs URL MOUNTPOINT [-f] -o ...` with the password in the environment, nothing
    /// else from the test's environment that changes ftpsfs's behaviour.
    pub fn command(&self, target: &Target, mountpoint: &Path, foreground: bool) -> Command {
        self.command_with(target, mountpoint, foreground, self.option_list())
    }

    fn command_with(
        &self,
        target: &Target,
        mountpoint: &Path,
        foreground: bool,
        options: String,
    ) -> Command {
        let binary = env!("CARGO_BIN_EXE_ftpsfs");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let url = url(target) + self.remote_dir.as_deref().unwrap_or("");
        command.arg(url).arg(mountpoint);
        if foreground {
            command.arg("-f");
        }
        command.arg("-o").arg(options);
        command.env_remove("RUST_LOG").env_remove("FTPSFS_PASSWORD");
        if !self.no_password_env {
            command.env(
                "FTPSFS_PASSWORD",
                self.password.as_deref().unwrap_or(&env().password),
            );
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.stdin(Stdio::null());
        command
    }

    /// Runs `ftpsfs -f` expecting it to fail: waits for its exit (at most `timeout`), and
    /// checks that nothing stayed mounted.
    pub fn mount_failure(&self, timeout: Duration) -> FailedMount {
        let target = self.target();
        let dir = scratch_dir("fail");
        let mountpoint = dir.join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let started = Instant::now();
        // Never FTPSFS_MOUNT_TEST_DEBUG's `debug` here: the test asserts stderr line by line.
        let mut command = self.command_with(&target, &mountpoint, true, self.options_with(false));
        let out = run(&mut command, timeout);
        let elapsed = started.elapsed();
        let mounted = mounted_fstype(&mountpoint);
        if mounted.is_some() {
            force_unmount(&mountpoint);
        }
        let _ = fs::remove_dir_all(&dir);
        assert!(
            mounted.is_none(),
            "ftpsfs mounted ({mounted:?}) although it should have failed; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        FailedMount {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        }
    }
}

/// What a mount that failed left behind.
#[derive(Debug)]
pub struct FailedMount {
    pub status: ExitStatus,
    pub stderr: String,
    pub elapsed: Duration,
}

impl FailedMount {
    /// The non-empty lines ftpsfs wrote to stderr.
    pub fn lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Asserts exit status 1 and exactly one line on stderr containing every one of `words`.
    pub fn assert_one_line(&self, words: &[&str]) {
        let lines = self.lines();
        assert_eq!(
            self.status.code(),
            Some(1),
            "exit status {}; stderr:\n{}",
            self.status,
            self.stderr
        );
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        for word in words {
            assert!(
                lines[0].contains(word),
                "{word:?} missing from the error line: {}",
                lines[0]
            );
        }
    }
}

/// A running `ftpsfs ... -f` mount. Dropping it unmounts, reaps the process and removes the
/// mountpoint; if the test is panicking, the process's log is printed first.
pub struct Mounted {
    child: Option<Child>,
    status: Option<ExitStatus>,
    dir: PathBuf,
    /// Whether `dir` is ours to remove (not when the test chose the mountpoint).
    owns_dir: bool,
    mountpoint: PathBuf,
    log: PathBuf,
    /// Keeps the in-process strict server alive while mounted.
    target: Target,
}

impl Mounted {
    /// Mounts `server` at `tls` with the default options.
    pub fn new(server: Server, tls: Tls) -> Self {
        Self::with(MountConfig::new(server, tls))
    }

    /// Mounts and waits until the mount is in /proc/self/mountinfo; panics with the log
    /// if the process exits first or the mount does not appear within 15 s.
    pub fn with(config: MountConfig) -> Self {
        let target = config.target();
        let dir = scratch_dir("mount");
        let (mountpoint, owns_dir) = match &config.mountpoint {
            Some(path) => (path.clone(), false),
            None => {
                let mountpoint = dir.join("mnt");
                fs::create_dir(&mountpoint).unwrap();
                (mountpoint, true)
            }
        };
        let log = dir.join("ftpsfs.log");
        let log_file = File::create(&log).unwrap();
        let child = config
            .command(&target, &mountpoint, true)
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn ftpsfs");
        let mut mounted = Mounted {
            child: Some(child),
            status: None,
            dir,
            owns_dir,
            mountpoint,
            log,
            target,
        };
        let started = Instant::now();
        loop {
            if let Some(fstype) = mounted_fstype(&mounted.mountpoint) {
                assert!(
                    fstype == "fuse.ftpsfs" || fstype.starts_with("fuse"),
                    "{}: mounted as {fstype}, not a FUSE filesystem",
                    mounted.mountpoint.display()
                );
                break;
            }
            if let Some(status) = mounted.child.as_mut().unwrap().try_wait().unwrap() {
                mounted.status = Some(status);
                mounted.child = None;
                panic!(
                    "ftpsfs exited with {status} before mounting {:?} {:?}; its output:\n{}",
                    config.server,
                    config.tls,
                    mounted.log()
                );
            }
            if started.elapsed() > MOUNT_TIMEOUT {
                panic!(
                    "{:?} {:?}: not mounted after {MOUNT_TIMEOUT:?}; ftpsfs output:\n{}",
                    config.server,
                    config.tls,
                    mounted.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        mounted
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path()` joined with a relative path.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("ftpsfs process already reaped")
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends a signal to the ftpsfs process.
    pub fn signal(&self, signal: libc::c_int) {
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit (it is reaped); None after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        let status = wait_timeout(self.child.as_mut()?, timeout)?;
        self.status = Some(status);
        self.child = None;
        Some(status)
    }

    /// `fusermount3 -u`, then the process's exit status. Panics when fusermount3 fails or
    /// the process does not exit within 10 s (it is killed then).
    pub fn unmount(&mut self) -> ExitStatus {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .output()
            .expect("run fusermount3");
        assert!(
            out.status.success(),
            "fusermount3 -u {}: {}",
            self.mountpoint.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                let pid = self.pid();
                let child = self.child.as_mut().unwrap();
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "ftpsfs (pid {pid}) still running {EXIT_TIMEOUT:?} after fusermount3 -u; log:\n{}",
                    self.log()
                );
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            // With `debug`, the errors the kernel got (and the retries before them) may be
            // far from the end of a busy log: show them first.
            let failures: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| {
                    l.contains("ftpsfs::fuse:")
                        || l.contains("retrying")
                        || l.contains("stream ended")
                        || l.contains(" WARN ")
                        || l.contains(" ERROR ")
                })
                .collect();
            if !failures.is_empty() {
                eprintln!(
                    "---- ftpsfs log ({}): errors and retries ({} lines, at most 60 shown) ----\n{}",
                    self.mountpoint.display(),
                    failures.len(),
                    failures[..failures.len().min(60)].join("\n")
                );
            }
            // FTPSFS_MOUNT_TEST_KEEP_LOGS=DIR keeps the whole log of a failed test there.
            if let Some(keep) = std::env::var_os("FTPSFS_MOUNT_TEST_KEEP_LOGS") {
                let name = self.dir.file_name().unwrap_or_default();
                let kept = Path::new(&keep).join(name).with_extension("log");
                if fs::create_dir_all(&keep)
                    .and_then(|()| fs::copy(&self.log, &kept))
                    .is_ok()
                {
                    eprintln!("---- whole ftpsfs log kept in {} ----", kept.display());
                }
            }
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- ftpsfs log ({}), last {} lines ----\n{}\n---- end of ftpsfs log ----",
                self.mountpoint.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        if mounted_fstype(&self.mountpoint).is_some() {
            force_unmount(&self.mountpoint);
        }
        if let Some(child) = self.child.as_mut() {
            if wait_timeout(child, EXIT_TIMEOUT).is_none() {
                eprintln!(
                    "ftpsfs (pid {}) did not exit after unmounting; killing it",
                    child.id()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !self.owns_dir {
            // Only the log lives in `dir`; the test owns the mountpoint.
            let _ = fs::remove_dir_all(&self.dir);
        } else if mounted_fstype(&self.mountpoint).is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A `.ftpsfs-scratch-*` directory at the top of the served tree, removed on drop.
pub struct ServerScratch {
    /// The directory on the server's disk.
    pub dir: PathBuf,
    /// Its name, relative to the served root.
    pub name: String,
}

impl ServerScratch {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            ".ftpsfs-scratch-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = env().data.join(&name);
        fs::create_dir(&dir).unwrap();
        // The servers read and write as the test user; root made this.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let owner = fs::metadata(&env().data).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).unwrap();
        ServerScratch { dir, name }
    }

    /// Writes a world-readable file; returns its path relative to the served root.
    pub fn write(&self, file: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.join(file);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Path::new(&self.name).join(file)
    }

    pub fn local(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for ServerScratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
