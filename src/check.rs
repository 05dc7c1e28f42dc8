//! `ftpsfs check`: the diagnosis a user runs when a mount fails.
//!
//! It walks the same steps a mount takes, printing each, and stops at the first failure
//! with one line naming the step and the server's reply.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::ftp::listing::EntryKind;
use crate::ftp::tls::{TlsStats, TlsStatsSnapshot};
use crate::ftp::{ConnectOptions, ControlConnection, FtpError};

/// Bytes read from a file to prove downloads work.
const PROBE_BYTES: usize = 4096;

/// A failed check: the step and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub struct CheckFailure {
    /// What was being done.
    pub step: String,
    /// Why it failed.
    #[source]
    pub error: FtpError,
}

/// What a successful check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Data connections opened in all.
    pub data_connections: u64,
    /// Of those, how many resumed their control connection's TLS session.
    pub resumed: u64,
}

fn step<T>(name: impl Into<String>, result: Result<T, FtpError>) -> Result<T, CheckFailure> {
    result.map_err(|error| match error {
        // The data-connection error already names its step.
        FtpError::DataRejected { .. } => CheckFailure {
            step: "data connection".into(),
            error,
        },
        _ => CheckFailure {
            step: name.into(),
            error,
        },
    })
}

fn millis(since: Instant) -> String {
    format!("{} ms", since.elapsed().as_millis())
}

fn resumption_word(resumed: Option<bool>) -> &'static str {
    match resumed {
        Some(true) => "resumed",
        Some(false) => "NOT resumed (full handshake)",
        None => "plain (no TLS)",
    }
}

/// Runs the check against `path`, printing progress through `out`.
pub async fn run(
    options: ConnectOptions,
    path: &[u8],
    data_connections: usize,
    mut out: impl FnMut(&str),
) -> Result<CheckReport, CheckFailure> {
    let options = Arc::new(options);
    let stats = Arc::new(TlsStats::default());
    let started = Instant::now();
    let mut conn = step(
        "connecting and logging in",
        ControlConnection::connect(options.clone(), stats.clone()).await,
    )?;
    let reached = match &options.proxy {
        Some(proxy) => format!(
            "{} through proxy {proxy} (it carries the control and every data connection)",
            crate::ftp::transport::display_addr(&options.host, options.port)
        ),
        None => conn.peer().to_string(),
    };
    out(&format!(
        "connected to {reached} and logged in as {:?} in {}",
        options.user,
        millis(started)
    ));
    out(&format!("greeting: {}", conn.greeting()));
    match conn.tls_summary() {
        Some(tls) => {
            out(&format!(
                "control connection TLS: {} {}",
                tls.version, tls.cipher
            ));
            if let Some(fingerprint) = &tls.fingerprint {
                out(&format!(
                    "server certificate: {fingerprint} (pin it with --fingerprint)"
                ));
            }
        }
        None => out("control connection: plain FTP, NOT encrypted"),
    }
    let client = &options.client_certificate;
    match (client.was_asked(), client.identity_file()) {
        (true, Some(file)) => out(&format!(
            "client certificate: the server asked for one; {} sent and accepted",
            file.display()
        )),
        (true, None) => out("client certificate: asked for, none given; the server did not insist"),
        (false, Some(file)) => out(&format!(
            "client certificate: {} given, but the server did not ask for one",
            file.display()
        )),
        (false, None) => {}
    }
    let features = conn.features();
    out(&format!(
        "features: {}",
        if features.lines.is_empty() {
            "(none announced)".to_string()
        } else {
            features.lines.join(", ")
        }
    ));
    out(&format!(
        "listings use {}",
        if features.mlsd {
            "MLSD"
        } else {
            "LIST -a (no MLSD)"
        }
    ));

    if options.pipelining.mode() == crate::ftp::PipeliningMode::Auto {
        step("probing the reply order", conn.probe_reply_order().await)?;
    }
    out(&format!("commands: {}", options.pipelining.describe()));
    out(&match options.data_mode {
        crate::ftp::DataMode::Passive => {
            "data connections: passive (ftpsfs connects to the port the server names)".to_string()
        }
        crate::ftp::DataMode::Active(address) => format!(
            "data connections: active (the server connects to {}, announced with EPRT or PORT)",
            address.unwrap_or(conn.local().ip())
        ),
    });

    let mut report = CheckReport::default();
    let display_path = if path.is_empty() {
        "(login directory)".to_string()
    } else {
        format!("{:?}", String::from_utf8_lossy(path))
    };
    // vsftpd lists a missing directory as empty: the path itself is asked first.
    step(
        format!("checking {display_path}"),
        conn.check_directory(path).await,
    )?;
    let mut probe_file: Option<Vec<u8>> = None;
    for round in 0..data_connections.max(1) {
        let started = Instant::now();
        let before = stats.snapshot();
        if round % 2 == 0 || probe_file.is_none() {
            let listing = step(format!("listing {display_path}"), conn.list(path).await)?;
            let resumed = resumption_since(before, &stats, &mut report);
            out(&format!(
                "data connection {}: listing of {}: {} entries, {} in {}",
                conn.data_connections(),
                display_path,
                listing.entries.len(),
                resumption_word(resumed),
                millis(started)
            ));
            if probe_file.is_none() {
                probe_file = listing
                    .entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::File && e.size != Some(0))
                    // A visible file is more telling to the user than a dotfile.
                    .min_by_key(|e| e.name.starts_with(b"."))
                    .map(|e| join_path(path, &e.name));
            }
        } else if let Some(file) = &probe_file {
            let name = String::from_utf8_lossy(file).into_owned();
            let bytes = step(
                format!("reading {name:?}"),
                read_head(&mut conn, file).await,
            )?;
            let resumed = resumption_since(before, &stats, &mut report);
            out(&format!(
                "data connection {}: first {} bytes of {:?}, {} in {}",
                conn.data_connections(),
                bytes,
                name,
                resumption_word(resumed),
                millis(started)
            ));
            // The replies that end the aborted download are read now. A server that
            // closes the control connection after ABOR (ProFTPD, rarely, through a
            // proxy) costs this connection, as it would cost a mount's: a new one goes on.
            if let Err(e) = conn.noop().await {
                if !conn.is_broken() {
                    return Err(step_error("after the aborted download", e));
                }
                out(&format!(
                    "the server closed the control connection after ABOR ({e}); connecting \
                     again (a mount then closes a connection instead of sending ABOR)"
                ));
                conn = step(
                    "connecting again",
                    ControlConnection::connect(options.clone(), stats.clone()).await,
                )?;
            }
        }
    }
    out(&format!(
        "TLS 1.3 tickets held by the control connection: {}",
        conn.tickets_held()
    ));

    // A second control connection at the same time must resume its own session, not the first's.
    let started = Instant::now();
    let before = stats.snapshot();
    let mut second = step(
        "opening a second control connection",
        ControlConnection::connect(options.clone(), stats.clone()).await,
    )?;
    let listing = step(
        "listing on the second control connection",
        second.list(path).await,
    )?;
    let resumed = resumption_since(before, &stats, &mut report);
    out(&format!(
        "second control connection, data connection 1: listing of {} entries, {} in {}",
        listing.entries.len(),
        resumption_word(resumed),
        millis(started)
    ));
    second.quit().await;
    conn.quit().await;

    let snapshot = stats.snapshot();
    let mut summary = String::new();
    let _ = write!(
        summary,
        "OK: {} of {} data connections resumed their control connection's TLS session",
        report.resumed, report.data_connections
    );
    if snapshot.tickets_received > 0 {
        let _ = write!(
            summary,
            " ({} TLS 1.3 tickets received, {} used)",
            snapshot.tickets_received, snapshot.tickets_used
        );
    }
    if report.resumed == 0 && report.data_connections > 0 && snapshot.data_full > 0 {
        summary.push_str("; the server did not offer resumption, and accepted full handshakes");
    }
    out(&summary);
    Ok(report)
}

/// Which way the data connection opened since `before` went, from the shared counters.
fn resumption_since(
    before: TlsStatsSnapshot,
    stats: &TlsStats,
    report: &mut CheckReport,
) -> Option<bool> {
    let after = stats.snapshot();
    report.data_connections += 1;
    if after.data_resumed > before.data_resumed {
        report.resumed += 1;
        Some(true)
    } else if after.data_full > before.data_full {
        Some(false)
    } else {
        None
    }
}

async fn read_head(conn: &mut ControlConnection, file: &[u8]) -> Result<usize, FtpError> {
    let mut data = conn.retrieve(file, 0).await?;
    let mut buf = vec![0u8; PROBE_BYTES];
    let n = data.read_full(&mut buf).await?;
    if data.at_end() {
        conn.finish_data(data).await?;
    } else {
        conn.abort_data(data).await?;
    }
    Ok(n)
}

fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() && !path.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Bytes of each file `ftpsfs check --write-test` uploads.
const WRITE_TEST_BYTES: usize = 64 * 1024;

/// Uploads in a row in the write test: enough to see whether the server's TLS 1.3
/// tickets run out on uploads (ProFTPD gives two at login and none on uploads).
const WRITE_TEST_UPLOADS: usize = 3;

/// `ftpsfs check --write-test DIR`: what a mount's writes need of the server, in `dir`,
/// with ftpsfs's own temporary names, which it deletes again. Uploads (each data
/// connection resumed or not, and the size the server stores), renaming onto an existing
/// file, setting a modification time, SITE CHMOD, and deleting.
pub async fn write_test(
    options: ConnectOptions,
    dir: &[u8],
    mut out: impl FnMut(&str),
) -> Result<CheckReport, CheckFailure> {
    let options = Arc::new(options);
    let stats = Arc::new(TlsStats::default());
    let mut conn = step(
        "connecting for the write test",
        ControlConnection::connect(options.clone(), stats.clone()).await,
    )?;
    let shown_dir = if dir.is_empty() {
        "(login directory)".to_string()
    } else {
        format!("{:?}", String::from_utf8_lossy(dir))
    };
    out(&format!("write test in {shown_dir}"));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = |i: usize| {
        join_path(
            dir,
            format!(
                ".ftpsfs-tmp.{stamp:x}.{:016x}.check-{i}",
                std::process::id()
            )
            .as_bytes(),
        )
    };
    let mut report = CheckReport::default();
    let body: Vec<u8> = (0..WRITE_TEST_BYTES).map(|i| (i % 251) as u8).collect();
    let mut uploaded = Vec::new();
    for i in 0..WRITE_TEST_UPLOADS {
        if conn.will_run_dry() {
            out("  no TLS session ticket left for another data connection: a mount replaces such a connection before its next transfer; so does this test");
            conn.quit().await;
            conn = step(
                "connecting again for more uploads",
                ControlConnection::connect(options.clone(), stats.clone()).await,
            )?;
        }
        let path = name(i);
        let started = Instant::now();
        let before = stats.snapshot();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let size = step(
            format!("uploading {shown:?}"),
            upload(&mut conn, &path, &body).await,
        )?;
        uploaded.push(path);
        let resumed = resumption_since(before, &stats, &mut report);
        out(&format!(
            "upload {}: {} bytes to {shown:?}, data connection {}, the server stores {size} bytes, in {}; TLS 1.3 tickets left: {}",
            i + 1,
            body.len(),
            resumption_word(resumed),
            millis(started),
            conn.tickets_held()
        ));
        if size != body.len() as u64 {
            return Err(CheckFailure {
                step: format!("checking the upload of {shown:?}"),
                error: FtpError::Protocol {
                    step: "SIZE".into(),
                    detail: format!("the server stores {size} bytes of the {} sent", body.len()),
                },
            });
        }
    }
    let (first, second) = (uploaded[0].clone(), uploaded[1].clone());
    match conn.rename(&first, &second).await {
        Ok(()) => {
            uploaded.remove(0);
            out("renaming onto an existing file: allowed (uploads land with one RNFR/RNTO)");
        }
        Err(e) if e.breaks_connection() => return Err(step_error("renaming", e)),
        Err(e) => out(&format!(
            "renaming onto an existing file: refused ({e}); a mount moves the old file aside first"
        )),
    }
    let when = 1_577_934_245;
    match conn.set_modified(&second, when).await {
        Ok(()) => out(&format!(
            "setting a modification time: {}",
            conn.time_command().unwrap_or("yes")
        )),
        Err(e) if e.breaks_connection() => return Err(step_error("setting a time", e)),
        Err(e) => out(&format!(
            "setting a modification time: not possible ({e}); times are the server's"
        )),
    }
    match conn.set_mode(&second, 0o640).await {
        Ok(()) => out("SITE CHMOD: yes"),
        Err(e) if e.breaks_connection() => return Err(step_error("SITE CHMOD", e)),
        Err(e) => out(&format!("SITE CHMOD: not possible ({e}); chmod is a no-op")),
    }
    for path in &uploaded {
        step(
            format!("deleting {:?}", String::from_utf8_lossy(path)),
            conn.delete(path).await,
        )?;
    }
    out(&format!("deleted the {} test files", uploaded.len()));
    conn.quit().await;
    out(&format!(
        "OK: {} of {} upload data connections resumed their control connection's TLS session",
        report.resumed, report.data_connections
    ));
    Ok(report)
}

fn step_error(name: &str, error: FtpError) -> CheckFailure {
    CheckFailure {
        step: name.into(),
        error,
    }
}

/// Uploads `body` to `path` and returns the size the server stores.
async fn upload(conn: &mut ControlConnection, path: &[u8], body: &[u8]) -> Result<u64, FtpError> {
    let mut upload = conn.store(path).await?;
    if let Err(e) = upload.write_all(body).await {
        return Err(conn.failed_upload(upload, e).await);
    }
    conn.finish_upload(upload).await?;
    conn.size(path).await
}
