//! Mounting: detaching from the terminal once the mount is up, serving, and unmounting on
//! SIGINT/SIGTERM. The options are in [`crate::settings`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::fs::FtpFs;
use crate::ftp::{ConnectOptions, Pool, PoolOptions};
use crate::fuse::FuseAdapter;
use crate::settings::Settings;

/// Longest the mount waits, after the unmount, for operations the kernel sent before it
/// (every network step in them has its own timeout; this bounds the sum).
const OPERATIONS_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(120);

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
    settings: &Settings,
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
            max_connections: settings.pool_connections(),
            ..PoolOptions::default()
        },
    );
    let fs = Arc::new(FtpFs::new(pool.clone(), root_path, settings.fs_config()));
    // Fail here, with the server's words, rather than mount something that cannot work.
    if let Err(e) = runtime.block_on(fs.start()) {
        return fail(&mut ready, format!("connecting and listing {source}: {e}"));
    }
    {
        let _runtime = runtime.enter();
        fs.run_writeback();
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.to_string()),
        MountOption::Subtype("ftpsfs".into()),
    ];
    let flags = settings.kernel_flags;
    let pick = |on: bool, yes: MountOption, no: MountOption| if on { yes } else { no };
    config.mount_options.extend([
        pick(flags.exec, MountOption::Exec, MountOption::NoExec),
        pick(flags.suid, MountOption::Suid, MountOption::NoSuid),
        pick(flags.dev, MountOption::Dev, MountOption::NoDev),
        pick(flags.sync, MountOption::Sync, MountOption::Async),
    ]);
    if flags.noatime {
        config.mount_options.push(MountOption::NoAtime);
    }
    if flags.dirsync {
        config.mount_options.push(MountOption::DirSync);
    }
    if settings.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if settings.kernel_checks_permissions() {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.acl = if settings.allow_other {
        SessionACL::All
    } else if settings.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone(), mountpoint);
    let in_flight = adapter.in_flight();
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
    // A release served while the kernel let the unmount through may still be uploading
    // the file it closed: its result is the user's data.
    let running = in_flight.running();
    if running > 0 {
        tracing::info!("unmounted; waiting for {running} operations still running");
        let left = runtime.block_on(in_flight.wait(OPERATIONS_AT_EXIT));
        if left > 0 {
            tracing::warn!(
                "{left} operations still running after {}s; leaving them",
                OPERATIONS_AT_EXIT.as_secs()
            );
        }
    }
    // Temporary files still to delete get one more try, bounded so that an unreachable
    // server delays the exit by at most that; what is left is recorded for the next mount.
    let cleanup_limit =
        (settings.connection.timeouts.reply).min(std::time::Duration::from_secs(10));
    if let Some(writeback) = &settings.fs_config().writeback {
        runtime.block_on(fs.drain_queue(writeback.drain));
    }
    runtime.block_on(fs.finish(cleanup_limit));
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
