//! The `ftpsfs` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use ftpsfs::config::{self, ConnectionSettings, FtpUrl, PasswordSources};
use ftpsfs::ftp::{Timeouts, TlsOptions, TlsVersions};

/// Mount an FTPS server as a local folder.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// More logging: -v for debug (every FTP command), -vv for trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
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
    fn settings(&self) -> ConnectionSettings {
        ConnectionSettings {
            tls: TlsOptions {
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
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "ftpsfs=debug",
        _ => "ftpsfs=trace,rustls=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
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
    match cli.command {
        Command::Check {
            url,
            data_connections,
            connection,
        } => runtime.block_on(check(&url, data_connections, &connection)),
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
        let options = config::connect_options(&url, user, password, &args.settings())?;
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
