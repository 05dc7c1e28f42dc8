//! The `ftpsfs` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ftpsfs::config::{self, FtpUrl, PasswordSources};
use ftpsfs::ftp::ConnectOptions;
use ftpsfs::mount;
use ftpsfs::settings::{Scope, Setting, Settings, SETTINGS};

/// Mount an FTPS server as a local folder.
///
/// ftpsfs URL MOUNTPOINT [-f] [-o opt[,opt...]]   mount (unmount: fusermount3 -u MOUNTPOINT)
/// ftpsfs check URL                               diagnose a server
/// ftpsfs stats MOUNTPOINT [--json]               what a mount is doing now
/// ftpsfs queue MOUNTPOINT --retry [PATH] | --discard PATH   retry or drop write-back uploads
#[derive(Parser)]
#[command(
    version,
    about,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// More logging: -v for debug (every FTP command), -vv for trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    mount: MountArgs,
}

/// Arguments of the mount form.
#[derive(Args)]
struct MountArgs {
    /// ftp://user@host[:port]/path (explicit TLS), ftps:// (implicit TLS), ftpes:// (= ftp://).
    #[arg(required = true)]
    url: Option<String>,
    /// Where to mount (an existing directory).
    #[arg(required = true)]
    mountpoint: Option<PathBuf>,
    /// Mount options, comma-separated (key=value,flag,...); every --flag below is also an
    /// -o key, with `_` for `-`. Standard fstab options such as _netdev are ignored.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,
    #[command(flatten)]
    flags: OptionFlags<true>,
}

#[derive(Subcommand)]
enum Command {
    /// Diagnose a server: greeting, TLS, features, and whether data connections resume.
    Check {
        /// ftp://user@host[:port]/path (explicit TLS), ftps:// (implicit TLS), ftpes:// (= ftp://).
        url: String,
        /// Data connections to open on the first control connection.
        #[arg(long, default_value_t = 4)]
        data_connections: usize,
        /// Also test writing in DIR (relative to the URL's path; "" for the path itself):
        /// upload, SIZE, rename onto a file, set a time, SITE CHMOD, delete, with
        /// ftpsfs's own temporary names, which it deletes again.
        #[arg(long, value_name = "DIR")]
        write_test: Option<String>,
        #[command(flatten)]
        flags: OptionFlags<false>,
    },
    /// Show what a mount is doing now: connections and their commands, uploads in flight,
    /// TLS resumptions and tickets, cache hits, errors returned by errno.
    Stats {
        /// Where ftpsfs is mounted.
        mountpoint: PathBuf,
        /// Print JSON (one object) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Act on a mount's write-back queue (`-o writeback`): retry the uploads the server
    /// refused (all, or PATH's), or give up PATH's queued upload (the server's file
    /// stays as it is). `ftpsfs stats` lists the queue.
    Queue {
        /// Where ftpsfs is mounted.
        mountpoint: PathBuf,
        /// Retry refused uploads: all, or only PATH's (relative to the mountpoint).
        #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "", conflicts_with = "discard")]
        retry: Option<String>,
        /// Give up the queued upload of PATH (relative to the mountpoint).
        #[arg(long, value_name = "PATH")]
        discard: Option<String>,
    },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as the package installs it.
    #[command(hide = true)]
    Manpage,
}

/// The options of the table (src/settings.rs) given as flags: all of them for a mount
/// (`MOUNT`), those about the connection for `check`.
struct OptionFlags<const MOUNT: bool> {
    given: Vec<(&'static Setting, Option<String>)>,
}

impl<const MOUNT: bool> OptionFlags<MOUNT> {
    fn table() -> impl Iterator<Item = &'static Setting> {
        SETTINGS
            .iter()
            .filter(|setting| MOUNT || setting.scope == Scope::Connection)
    }

    /// Applies the flags given, in table order, after the defaults.
    fn apply(&self, settings: &mut Settings) -> Result<(), config::ConfigError> {
        for (setting, value) in &self.given {
            settings.apply_flag(setting, value.as_deref())?;
        }
        Ok(())
    }
}

impl<const MOUNT: bool> clap::FromArgMatches for OptionFlags<MOUNT> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = Self::table()
            .filter_map(|setting| match setting.value {
                Some(_) => matches
                    .get_one::<String>(setting.key)
                    .map(|value| (setting, Some(value.clone()))),
                None => matches.get_flag(setting.key).then_some((setting, None)),
            })
            .collect();
        Ok(Self { given })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<const MOUNT: bool> clap::Args for OptionFlags<MOUNT> {
    fn augment_args(command: clap::Command) -> clap::Command {
        Self::table().fold(command, |command, setting| {
            let meaning = capitalized(setting.meaning);
            let arg = clap::Arg::new(setting.key)
                .long(setting.flag())
                .short(setting.short)
                .help(meaning.clone())
                .long_help(format!(
                    "{meaning}.\n\nDefault: {}; {}.",
                    setting.default.shown(),
                    setting.reason
                ));
            command.arg(match setting.value {
                // `[VALUE]`: the value may be left out (`--active`, `--active=ADDRESS`).
                Some(value) if value.starts_with('[') => arg
                    .value_name(value.trim_matches(['[', ']']))
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("")
                    .action(clap::ArgAction::Set),
                Some(value) => arg.value_name(value).action(clap::ArgAction::Set),
                None => arg.action(clap::ArgAction::SetTrue),
            })
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// `text` with its first letter in upper case, as clap's help lines are.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn init_logging(verbose: u8, log_file: Option<&PathBuf>) -> Result<(), String> {
    let default = match (verbose, log_file) {
        // A log file is read later, when something went wrong: keep mount/unmount lines.
        (0, Some(_)) => "warn,ftpsfs=info",
        (0, None) => "warn",
        (1, _) => "ftpsfs=debug",
        _ => "ftpsfs=trace,rustls=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init()
        }
    }
    Ok(())
}

/// Makes glibc serve cache-block-sized allocations with mmap, always.
///
/// Otherwise glibc raises its mmap threshold after the first freed 1 MiB block and then
/// keeps freed blocks in per-thread heaps: measured, a 256 MiB cache peaked at 366 MiB
/// of RSS while reading a 1 GiB file. With a fixed threshold a freed block goes back to
/// the kernel at once.
fn return_freed_blocks_to_the_kernel() {
    // SAFETY: mallopt only changes allocator tuning; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() -> ExitCode {
    return_freed_blocks_to_the_kernel();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check {
            url,
            data_connections,
            write_test,
            flags,
        }) => {
            if let Err(e) = init_logging(cli.verbose, None) {
                eprintln!("ftpsfs: {e}");
                return ExitCode::from(2);
            }
            // Before the runtime's threads start: reading the password takes it out of
            // the environment.
            let prepared = (|| {
                let mut settings = Settings::default();
                flags.apply(&mut settings)?;
                prepare(&url, &settings)
            })();
            let (url, options) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    eprintln!("ftpsfs: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("ftpsfs: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(check(url, options, data_connections, write_test.as_deref()))
        }
        Some(Command::Stats { mountpoint, json }) => stats(&mountpoint, json),
        Some(Command::Queue {
            mountpoint,
            retry,
            discard,
        }) => queue(&mountpoint, retry, discard),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "ftpsfs", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Manpage) => {
            let man = clap_mangen::Man::new(Cli::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ftpsfs: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => mount_command(cli.verbose, cli.mount),
    }
}

fn mount_command(verbose: u8, args: MountArgs) -> ExitCode {
    let (Some(url), Some(mountpoint)) = (args.url, args.mountpoint) else {
        eprintln!("ftpsfs: usage: ftpsfs URL MOUNTPOINT [-o options] (see --help)");
        return ExitCode::from(2);
    };
    let mut settings = Settings::default();
    let applied = args
        .flags
        .apply(&mut settings)
        .and_then(|()| {
            args.options
                .iter()
                .try_for_each(|list| settings.apply_options(list))
        })
        .and_then(|()| settings.check_combinations());
    if let Err(e) = applied {
        eprintln!("ftpsfs: {e}");
        return ExitCode::from(2);
    }
    let verbosity = if settings.debug {
        verbose.max(1)
    } else {
        verbose
    };
    if let Err(e) = init_logging(verbosity, settings.log_file.as_ref()) {
        eprintln!("ftpsfs: {e}");
        return ExitCode::from(2);
    }
    let (parsed, options) = match prepare(&url, &settings) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            return ExitCode::from(2);
        }
    };
    let ready = if settings.foreground {
        None
    } else {
        match mount::detach() {
            Ok(ready) => ready,
            Err(e) => {
                eprintln!("ftpsfs: cannot detach: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let detached = ready.is_some();
    match mount::serve(
        options,
        parsed.path.clone(),
        &url,
        &mountpoint,
        &settings,
        ready,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // A detached child already sent its message through the pipe to the parent;
            // the log file, if any, keeps it for later.
            if !detached {
                eprintln!("ftpsfs: {message}");
            }
            if settings.log_file.is_some() {
                tracing::error!("{message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The parsed URL and how to connect: the password is read (and taken out of the
/// environment) here, before any thread starts.
fn prepare(
    url: &str,
    settings: &Settings,
) -> Result<(FtpUrl, ConnectOptions), config::ConfigError> {
    let url = FtpUrl::parse(url)?;
    let sources = PasswordSources {
        password_file: settings.password_file.clone(),
        netrc: None,
        allow_prompt: true,
    };
    let (user, password) = config::resolve_credentials(&url, &sources)?;
    let options = config::connect_options(&url, user, password, &settings.connection)?;
    Ok((url, options))
}

/// `ftpsfs stats`: reads the statistics the mount gives as an extended attribute of its
/// root.
fn stats(mountpoint: &std::path::Path, json: bool) -> ExitCode {
    let name = if json {
        ftpsfs::fuse::STATS_JSON_XATTR
    } else {
        ftpsfs::fuse::STATS_XATTR
    };
    match read_xattr(mountpoint, name) {
        Ok(text) => {
            print_out(&String::from_utf8_lossy(&text));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let cause = match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => {
                    "not an ftpsfs mount, or not its root (or a mount of an older ftpsfs)"
                        .to_string()
                }
                _ => e.to_string(),
            };
            eprintln!("ftpsfs: stats of {}: {cause}", mountpoint.display());
            ExitCode::FAILURE
        }
    }
}

/// `ftpsfs queue`: sends a request to the mount's write-back queue as an extended
/// attribute of its root.
fn queue(mountpoint: &std::path::Path, retry: Option<String>, discard: Option<String>) -> ExitCode {
    use std::os::unix::ffi::OsStrExt;
    let request = match (retry, discard) {
        (Some(path), None) if path.is_empty() => "retry".to_string(),
        (Some(path), None) => format!("retry {path}"),
        (None, Some(path)) => format!("discard {path}"),
        _ => {
            eprintln!("ftpsfs: queue: say --retry [PATH] or --discard PATH");
            return ExitCode::FAILURE;
        }
    };
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        eprintln!("ftpsfs: queue: bad mountpoint");
        return ExitCode::FAILURE;
    };
    let name = std::ffi::CString::new(ftpsfs::fuse::QUEUE_XATTR).expect("no NUL");
    // SAFETY: the strings are NUL-terminated and the value is valid for its length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if rc == 0 {
        println!(
            "ftpsfs: {request}: done (see `ftpsfs stats {}`)",
            mountpoint.display()
        );
        return ExitCode::SUCCESS;
    }
    let e = std::io::Error::last_os_error();
    let cause = match e.raw_os_error() {
        Some(libc::ENOENT) => "nothing queued matches".to_string(),
        Some(libc::EINVAL) => "the mount has no write-back queue (-o writeback)".to_string(),
        Some(libc::ENOTSUP) | Some(libc::ENODATA) => {
            "not an ftpsfs mount, or not its root".to_string()
        }
        _ => e.to_string(),
    };
    eprintln!("ftpsfs: queue {}: {cause}", mountpoint.display());
    ExitCode::FAILURE
}

/// The value of the extended attribute `name` of `path`.
fn read_xattr(path: &std::path::Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let name = std::ffi::CString::new(name).expect("no NUL in the attribute name");
    // The statistics change between the call that sizes them and the one that reads
    // them: grow and ask again while they do not fit.
    for _ in 0..5 {
        // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks the size.
        let size = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 4096];
        // SAFETY: `buf` is writable for its whole length.
        let read = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if read >= 0 {
            buf.truncate(read as usize);
            return Ok(buf);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) {
            return Err(error);
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

async fn check(
    url: FtpUrl,
    options: ConnectOptions,
    data_connections: usize,
    write_test: Option<&str>,
) -> ExitCode {
    let checked = ftpsfs::check::run(options.clone(), &url.path, data_connections, |line| {
        print_out(&format!("{line}\n"))
    })
    .await;
    let checked = match (checked, write_test) {
        (Ok(_), Some(dir)) => {
            let dir =
                ftpsfs::fs::meta::inode::join_path(&url.path, dir.trim_matches('/').as_bytes());
            ftpsfs::check::write_test(options, &dir, |line| print_out(&format!("{line}\n"))).await
        }
        (checked, _) => checked,
    };
    match checked {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ftpsfs: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`ftpsfs check | head`) ends the
/// program quietly, as it would a C tool, instead of a panic.
fn print_out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
