//! The `ftpsfs` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use ftpsfs::config::{self, ConnectionSettings, FtpUrl, PasswordSources};
use ftpsfs::ftp::{Timeouts, TlsOptions, TlsVersions};
use ftpsfs::mount::{self, MountSettings};

/// Mount an FTPS server as a local folder (read-only).
///
/// ftpsfs URL MOUNTPOINT [-f] [-o opt[,opt...]]   mount (unmount: fusermount3 -u MOUNTPOINT)
/// ftpsfs check URL                               diagnose a server
#[derive(Parser)]
#[command(
    version,
    about,
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
    /// Mount options, comma-separated: cache_size=256M, dir_cache=60, block_size=1M,
    /// readahead=64M, connections=5, dir_prefetch=64, timeout=20, uid=N, gid=N, umask=022, allow_other,
    /// allow_root, default_permissions, password_file=F, ca_file=PEM, insecure,
    /// tls=1.2|1.3|auto, log_file=F, debug; fstab options such as _netdev are ignored.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,
    /// Stay in the foreground (otherwise detach once mounted).
    #[arg(short = 'f', long)]
    foreground: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
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
        #[command(flatten)]
        connection: ConnectionArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TlsVersionArg {
    /// TLS 1.2 or 1.3, as the server prefers.
    Auto,
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    V12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    V13,
}

/// Options shared by every command that connects.
#[derive(Args)]
struct ConnectionArgs {
    /// Read the password from the first line of this file (must not be world-readable).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Do not verify the server's certificate (dangerous; logs a warning).
    #[arg(long)]
    insecure: bool,
    /// Accept only the server certificate with this SHA-256 fingerprint (sha256:AB:CD:...),
    /// whoever signed it; `ftpsfs check` prints it.
    #[arg(long, value_name = "SHA256")]
    fingerprint: Option<String>,
    /// TLS versions to offer.
    #[arg(long = "tls", value_enum, default_value = "auto")]
    tls_version: TlsVersionArg,
    /// Use plain, unencrypted FTP (only with ftp:// URLs).
    #[arg(long)]
    plain: bool,
    /// Seconds before any network step (connect, handshake, reply, data idle) gives up.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    timeout: u64,
    /// Connect data connections to the address in PASV replies, not the control peer.
    #[arg(long)]
    trust_pasv_address: bool,
    /// Do not resume TLS sessions on data connections (to test whether a server requires it).
    #[arg(long)]
    no_resume: bool,
}

impl ConnectionArgs {
    fn settings(&self) -> Result<ConnectionSettings, String> {
        let fingerprint = match &self.fingerprint {
            Some(text) => Some(ftpsfs::ftp::tls::parse_fingerprint(text)?),
            None => None,
        };
        Ok(ConnectionSettings {
            tls: TlsOptions {
                fingerprint,
                ca_file: self.ca_file.clone(),
                insecure: self.insecure,
                versions: match self.tls_version {
                    TlsVersionArg::Auto => TlsVersions::Any,
                    TlsVersionArg::V12 => TlsVersions::Tls12Only,
                    TlsVersionArg::V13 => TlsVersions::Tls13Only,
                },
            },
            plain: self.plain,
            timeouts: Timeouts::uniform(Duration::from_secs(self.timeout.max(1))),
            trust_pasv_address: self.trust_pasv_address,
            no_resume: self.no_resume,
        })
    }
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
            connection,
        }) => {
            if let Err(e) = init_logging(cli.verbose, None) {
                eprintln!("ftpsfs: {e}");
                return ExitCode::from(2);
            }
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
            runtime.block_on(check(&url, data_connections, &connection))
        }
        None => mount_command(cli.verbose, cli.mount),
    }
}

fn mount_command(verbose: u8, args: MountArgs) -> ExitCode {
    let (Some(url), Some(mountpoint)) = (args.url, args.mountpoint) else {
        eprintln!("ftpsfs: usage: ftpsfs URL MOUNTPOINT [-o options] (see --help)");
        return ExitCode::from(2);
    };
    let connection = match args.connection.settings() {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            return ExitCode::from(2);
        }
    };
    let mut settings = MountSettings {
        foreground: args.foreground,
        connection,
        password_file: args.connection.password_file.clone(),
        ..MountSettings::default()
    };
    for list in &args.options {
        if let Err(e) = settings.apply_options(list) {
            eprintln!("ftpsfs: {e}");
            return ExitCode::from(2);
        }
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
    let prepared = (|| {
        let url = FtpUrl::parse(&url)?;
        let sources = PasswordSources {
            password_file: settings.password_file.clone(),
            netrc: None,
            allow_prompt: true,
        };
        let (user, password) = config::resolve_credentials(&url, &sources)?;
        let options = config::connect_options(&url, user, password, &settings.connection)?;
        Ok::<_, config::ConfigError>((url, options))
    })();
    let (parsed, options) = match prepared {
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

async fn check(url: &str, data_connections: usize, args: &ConnectionArgs) -> ExitCode {
    let prepared = (|| {
        let url = FtpUrl::parse(url)?;
        let sources = PasswordSources {
            password_file: args.password_file.clone(),
            netrc: None,
            allow_prompt: true,
        };
        let (user, password) = config::resolve_credentials(&url, &sources)?;
        let settings = args.settings().map_err(config::ConfigError::Option)?;
        let options = config::connect_options(&url, user, password, &settings)?;
        Ok::<_, config::ConfigError>((url, options))
    })();
    let (url, options) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            return ExitCode::from(2);
        }
    };
    match ftpsfs::check::run(options, &url.path, data_connections, |line| {
        println!("{line}")
    })
    .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ftpsfs: {failure}");
            ExitCode::FAILURE
        }
    }
}
