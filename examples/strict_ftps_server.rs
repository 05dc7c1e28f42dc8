//! Runs the strict FileZilla-like FTPS test server in the foreground, for
//! checking clients by hand (curl, lftp, ftpsfs itself).
//!
//! ```text
//! cargo run --example strict_ftps_server -- --port 2121 --root DIR \
//!     --cert server.pem --key server.key --tls 1.3 --user test --password-file pw.txt
//! ```

#[path = "../tests/support/strict_server.rs"]
mod strict_server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use strict_server::{StrictServer, StrictServerOptions, TlsVersion};

const USAGE: &str = "usage: strict_ftps_server [--port N] --root DIR --cert PEM --key PEM \
                     --tls 1.2|1.3 --user U --password-file F";

struct Args {
    port: u16,
    root: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tls: TlsVersion,
    user: String,
    password_file: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut port = 0u16;
    let mut root = None;
    let mut cert = None;
    let mut key = None;
    let mut tls = None;
    let mut user = None;
    let mut password_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--port" => port = value.parse().map_err(|_| format!("bad port: {value}"))?,
            "--root" => root = Some(PathBuf::from(value)),
            "--cert" => cert = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            "--tls" => {
                tls = Some(match value.as_str() {
                    "1.2" => TlsVersion::Tls12,
                    "1.3" => TlsVersion::Tls13,
                    _ => return Err(format!("--tls must be 1.2 or 1.3, not {value}")),
                })
            }
            "--user" => user = Some(value),
            "--password-file" => password_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    let missing = |name: &str| format!("missing {name}\n{USAGE}");
    Ok(Args {
        port,
        root: root.ok_or_else(|| missing("--root"))?,
        cert: cert.ok_or_else(|| missing("--cert"))?,
        key: key.ok_or_else(|| missing("--key"))?,
        tls: tls.ok_or_else(|| missing("--tls"))?,
        user: user.ok_or_else(|| missing("--user"))?,
        password_file: password_file.ok_or_else(|| missing("--password-file"))?,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let password = match std::fs::read_to_string(&args.password_file) {
        // Files written by `echo` end in a newline that is not part of it.
        Ok(p) => p.trim_end_matches(['\r', '\n']).to_string(),
        Err(e) => {
            eprintln!("cannot read {}: {e}", args.password_file.display());
            return ExitCode::FAILURE;
        }
    };
    let mut opts = StrictServerOptions::new(
        args.root, args.cert, args.key, args.tls, args.user, password,
    );
    opts.port = args.port;
    let server = match StrictServer::start(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "strict FTPS server listening on 127.0.0.1:{}",
        server.port()
    );
    let mut last = (0, 0, 0, 0);
    loop {
        thread::sleep(Duration::from_secs(1));
        let now = (
            server.control_connections(),
            server.data_connections_accepted(),
            server.data_connections_rejected(),
            server.tickets_sent(),
        );
        if now != last {
            println!(
                "control connections: {}, data accepted: {}, data rejected (not resumed): {}, \
                 tickets sent: {}",
                now.0, now.1, now.2, now.3
            );
            last = now;
        }
    }
}
