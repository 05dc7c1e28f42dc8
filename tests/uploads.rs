//! Uploads and the commands that change the server, through the FTPS client, against
//! every test server on TLS 1.2 and TLS 1.3.
//!
//! Every upload's data connection must resume its own control connection's session, on
//! every server, for as many uploads in a row as a user makes: ProFTPD sends no TLS 1.3
//! ticket on an upload's data connection, and vsftpd sends one only once it has read the
//! client's close_notify, so a client that plans its tickets badly is refused after a
//! few uploads and leaves empty files behind (curl does; see shared/TLS13-UPLOADS.md).
//!
//! Each test works in its own `.ftpsfs-scratch-*` directory at the top of the served
//! tree, which the whole-tree comparisons of the mount tests leave out.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{target, Server, Target, Tls};
use ftpsfs::ftp::listing::EntryKind;
use ftpsfs::ftp::tls::TlsStats;
use ftpsfs::ftp::{ControlConnection, FtpError, Pool, PoolOptions};

/// Uploads in a row, the bar.
const CONSECUTIVE_UPLOADS: u64 = 200;

async fn connect(target: &Target) -> ControlConnection {
    ControlConnection::connect(
        Arc::new(target.options.clone()),
        Arc::new(TlsStats::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("{:?} {:?}: connect: {e}", target.server, target.tls))
}

/// A fresh scratch directory on the server, named after the test.
async fn scratch(conn: &mut ControlConnection, label: &str, target: &Target) -> String {
    let dir = format!(
        ".ftpsfs-scratch-{label}-{:?}-{:?}-{}",
        target.server,
        target.tls,
        std::process::id()
    );
    conn.make_dir(dir.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("MKD {dir}: {e}"));
    dir
}

/// Name → (kind, size) of a directory's listing.
async fn sizes(conn: &mut ControlConnection, dir: &str) -> BTreeMap<String, (EntryKind, u64)> {
    conn.list(dir.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .entries
        .into_iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.name).into_owned(),
                (e.kind, e.size.unwrap_or(0)),
            )
        })
        .collect()
}

/// A connection for the next data command: `conn`, or a fresh one when the server gave
/// `conn` no ticket to resume with (ProFTPD on TLS 1.3 after two uploads), as the pool
/// does.
async fn with_tickets<'a>(
    conn: &'a mut ControlConnection,
    target: &Target,
) -> &'a mut ControlConnection {
    if conn.will_run_dry() {
        *conn = connect(target).await;
    }
    conn
}

async fn upload(conn: &mut ControlConnection, path: &str, body: &[u8]) -> Result<(), FtpError> {
    let mut upload = conn.store(path.as_bytes()).await?;
    if let Err(e) = upload.write_all(body).await {
        return Err(conn.failed_upload(upload, e).await);
    }
    conn.finish_upload(upload).await.map(drop)
}

/// Removes a scratch directory and the files in it.
async fn remove_tree(conn: &mut ControlConnection, dir: &str) {
    for (name, (kind, _)) in sizes(conn, dir).await {
        let path = format!("{dir}/{name}");
        match kind {
            EntryKind::Dir => conn.remove_dir(path.as_bytes()).await,
            _ => conn.delete(path.as_bytes()).await,
        }
        .unwrap_or_else(|e| panic!("remove {path}: {e}"));
    }
    conn.remove_dir(dir.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("RMD {dir}: {e}"));
}

/// Uploads one after another through a pool, as a mount does for a user copying many
/// small files: each must resume, none may be refused, and every file must arrive whole.
/// Where the server runs out of tickets for a connection (ProFTPD on TLS 1.3), the pool
/// replaces it in the background before it is needed again, never after a refusal.
async fn consecutive_uploads(server: Server, tls: Tls) {
    let target = target(server, tls);
    let mut admin = connect(&target).await;
    let dir = scratch(&mut admin, "uploads", &target).await;
    let pool = Pool::new(target.options.clone(), PoolOptions::default());
    for i in 0..CONSECUTIVE_UPLOADS {
        let path = format!("{dir}/f{i:03}");
        let body = format!("upload {i}\n").repeat(i as usize % 7 + 1);
        ftpsfs::with_connection!(pool, |conn| upload(conn, &path, body.as_bytes()).await)
            .await
            .unwrap_or_else(|e| panic!("{server:?} {tls:?}: upload {}: {e}", i + 1));
    }
    let stats = pool.stats();
    println!("{server:?} {tls:?}: {CONSECUTIVE_UPLOADS} uploads in a row: {stats}");
    if server.resumes(tls) {
        assert_eq!(stats.data_resumed, CONSECUTIVE_UPLOADS, "{stats}");
        assert_eq!(stats.data_full, 0, "{stats}");
    } else {
        assert_eq!(stats.data_resumed + stats.data_full, CONSECUTIVE_UPLOADS);
    }
    if let Some(strict) = &target.strict {
        assert_eq!(strict.data_connections_rejected(), 0);
    }
    if let Some((complete, failed)) = server_records(server, &dir) {
        println!(
            "{server:?} {tls:?}: the server logged {complete} complete uploads, {failed} failed"
        );
        assert_eq!(
            (complete, failed),
            (CONSECUTIVE_UPLOADS, 0),
            "the server's own log"
        );
    }
    let listed = sizes(with_tickets(&mut admin, &target).await, &dir).await;
    assert_eq!(listed.len() as u64, CONSECUTIVE_UPLOADS, "{listed:?}");
    for i in 0..CONSECUTIVE_UPLOADS {
        let expected = format!("upload {i}\n").len() * (i as usize % 7 + 1);
        assert_eq!(
            listed.get(&format!("f{i:03}")),
            Some(&(EntryKind::File, expected as u64)),
            "f{i:03}"
        );
    }
    pool.close().await;
    remove_tree(with_tickets(&mut admin, &target).await, &dir).await;
}

/// What the server's own transfer log says of the uploads of `f*` files into `dir`:
/// (complete, failed). None for the strict server, which has counters instead.
fn server_records(server: Server, dir: &str) -> Option<(u64, u64)> {
    let logs = std::path::Path::new(&common::env().data)
        .parent()
        .unwrap()
        .join("logs");
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    let ours = format!("/{dir}/f");
    let count = |text: &str, keep: &dyn Fn(&str) -> bool| {
        text.lines()
            .filter(|l| l.contains(&ours) && keep(l))
            .count() as u64
    };
    match server {
        // vsftpd: `OK UPLOAD: Client "127.0.0.1", "/dir/f000", 16 bytes, ...`.
        Server::Vsftpd | Server::VsftpdImplicit => {
            let log = read(if server == Server::Vsftpd {
                "vsftpd.log"
            } else {
                "vsftpd-implicit.log"
            });
            Some((
                count(&log, &|l| l.contains("OK UPLOAD")),
                count(&log, &|l| l.contains("FAIL UPLOAD")),
            ))
        }
        // ProFTPD's xferlog: direction `i` (in), then `c` complete or `i` incomplete.
        Server::Proftpd | Server::ProftpdNoOverwrite => {
            let log = read(if server == Server::Proftpd {
                "proftpd-xfer.log"
            } else {
                "proftpd-noover-xfer.log"
            });
            let incoming = |l: &str| l.contains(" b _ i r ");
            Some((
                count(&log, &|l| incoming(l) && l.ends_with(" c")),
                count(&log, &|l| incoming(l) && l.ends_with(" i")),
            ))
        }
        // Pure-FTPd's common log format: `"PUT /path" 200 bytes`.
        Server::PureFtpd => {
            let log = read("pure-ftpd-xfer.log");
            Some((
                count(&log, &|l| l.contains("\"PUT ") && l.contains("\" 200 ")),
                count(&log, &|l| l.contains("\"PUT ") && !l.contains("\" 200 ")),
            ))
        }
        Server::Strict | Server::External => None,
    }
}

/// The namespace commands and their failures, on one connection that stays in step.
async fn namespace_commands(server: Server, tls: Tls) {
    let target = target(server, tls);
    let mut conn = connect(&target).await;
    let dir = scratch(&mut conn, "names", &target).await;
    let err = conn.make_dir(dir.as_bytes()).await.unwrap_err();
    assert_eq!(
        err.reply_code(),
        Some(550),
        "MKD of an existing directory: {err}"
    );

    let a = format!("{dir}/a.txt");
    let b = format!("{dir}/b.txt");
    upload(with_tickets(&mut conn, &target).await, &a, b"first")
        .await
        .expect("upload a");
    conn.rename(a.as_bytes(), b.as_bytes())
        .await
        .expect("rename a to b");
    let err = conn.rename(a.as_bytes(), b.as_bytes()).await.unwrap_err();
    assert!(err.is_not_found(), "renaming a missing file: {err}");
    upload(with_tickets(&mut conn, &target).await, &a, b"second!")
        .await
        .expect("upload a again");
    if server.renames_over_files() {
        conn.rename(a.as_bytes(), b.as_bytes())
            .await
            .expect("rename a over b");
        assert_eq!(conn.size(b.as_bytes()).await.expect("SIZE b"), 7);
    } else {
        // FileZilla Server: 553 "File exists."; ProFTPD: 550 "Rename permission denied".
        let err = conn.rename(a.as_bytes(), b.as_bytes()).await.unwrap_err();
        assert!(
            matches!(err.reply_code(), Some(550 | 553)),
            "renaming onto a file: {err}"
        );
        assert_eq!(conn.size(b.as_bytes()).await.expect("SIZE b"), 5);
        conn.delete(a.as_bytes()).await.expect("DELE a");
    }

    conn.set_modified(b.as_bytes(), 1_577_934_245)
        .await
        .expect("set the modification time");
    let modified = conn.modified(b.as_bytes()).await.expect("MDTM b");
    assert_eq!(modified.unix_seconds, 1_577_934_245);
    if server.has_chmod() {
        conn.set_mode(b.as_bytes(), 0o600)
            .await
            .expect("SITE CHMOD");
        let listing = with_tickets(&mut conn, &target)
            .await
            .list(dir.as_bytes())
            .await
            .expect("list");
        let entry = listing
            .entries
            .iter()
            .find(|e| e.name == b"b.txt")
            .expect("b.txt listed");
        assert_eq!(entry.mode, Some(0o600));
    } else {
        let err = conn.set_mode(b.as_bytes(), 0o600).await.unwrap_err();
        assert!(err.is_unsupported(), "SITE CHMOD: {err}");
    }

    let sub = format!("{dir}/sub");
    conn.make_dir(sub.as_bytes()).await.expect("MKD sub");
    upload(
        with_tickets(&mut conn, &target).await,
        &format!("{sub}/c"),
        b"c",
    )
    .await
    .expect("upload c");
    let err = conn.remove_dir(sub.as_bytes()).await.unwrap_err();
    assert_eq!(
        err.reply_code(),
        Some(550),
        "RMD of a full directory: {err}"
    );
    conn.delete(format!("{sub}/c").as_bytes())
        .await
        .expect("DELE c");
    conn.remove_dir(sub.as_bytes()).await.expect("RMD sub");
    conn.delete(b.as_bytes()).await.expect("DELE b");
    let err = conn.delete(b.as_bytes()).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(550), "DELE of a missing file: {err}");
    conn.noop().await.expect("still in step");
    assert!(!conn.is_broken());
    remove_tree(with_tickets(&mut conn, &target).await, &dir).await;
}

/// The size an upload's check finds for `path` (and the EPSV it sends ahead).
async fn check(conn: &mut ControlConnection, path: String) -> Option<u64> {
    conn.check_upload(path.as_bytes(), None, None, None)
        .await
        .unwrap_or_else(|e| panic!("check {path}: {e}"))
        .size
}

/// Downloads `path` from `offset` on `conn`.
async fn download(conn: &mut ControlConnection, path: &str, offset: u64) -> Vec<u8> {
    let mut data = conn
        .retrieve(path.as_bytes(), offset)
        .await
        .unwrap_or_else(|e| panic!("RETR {path} from {offset}: {e}"));
    let mut body = vec![0u8; 1 << 16];
    let n = data.read_full(&mut body).await.expect("read");
    body.truncate(n);
    conn.finish_data(data).await.expect("end of RETR");
    body
}

/// An upload's check sends the next transfer's EPSV with it and connects to the port
/// while the connection goes on: the next download and the next upload on that
/// connection each find their data connection open, resume the session, and carry the
/// right bytes. A transfer from an offset (REST first) makes its own, and what it left
/// on the server is replaced by its EPSV.
async fn data_connections_opened_ahead(server: Server, tls: Tls) {
    let target = target(server, tls);
    let stats = Arc::new(TlsStats::default());
    let mut conn = ControlConnection::connect(Arc::new(target.options.clone()), stats.clone())
        .await
        .expect("connect");
    let dir = scratch(&mut conn, "ahead", &target).await;
    let ahead = || stats.snapshot().data_opened_ahead;
    let (first, second) = (format!("{dir}/first"), format!("{dir}/second"));
    let first_body = b"the first file, uploaded as usual".to_vec();
    let second_body: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();

    upload(&mut conn, &first, &first_body)
        .await
        .expect("upload");
    assert!(!conn.has_data_connection_ahead());
    assert_eq!(
        check(&mut conn, first.clone()).await,
        Some(first_body.len() as u64)
    );
    assert!(
        conn.has_data_connection_ahead(),
        "{server:?} {tls:?}: EPSV went with the check"
    );

    // From an offset: REST must come before the command, so the open one is left.
    assert_eq!(download(&mut conn, &first, 4).await, first_body[4..]);
    assert_eq!(ahead(), 0, "a transfer from an offset opens its own");
    assert!(!conn.has_data_connection_ahead());

    check(&mut conn, first.clone()).await;
    assert_eq!(download(&mut conn, &first, 0).await, first_body);
    assert_eq!(
        ahead(),
        1,
        "{server:?} {tls:?}: the download used the connection opened ahead"
    );

    check(&mut conn, first.clone()).await;
    upload(&mut conn, &second, &second_body)
        .await
        .expect("upload on the connection opened ahead");
    assert_eq!(
        ahead(),
        2,
        "{server:?} {tls:?}: the upload used the connection opened ahead"
    );
    assert_eq!(
        check(&mut conn, second.clone()).await,
        Some(second_body.len() as u64)
    );
    let snapshot = stats.snapshot();
    println!("{server:?} {tls:?}: {snapshot}");
    if server.resumes(tls) {
        assert_eq!(snapshot.data_full, 0, "{snapshot}");
        assert_eq!(snapshot.data_resumed, 4, "{snapshot}");
    }
    assert_eq!(snapshot.data_resumed + snapshot.data_full, 4, "{snapshot}");
    conn.noop().await.expect("still in step");
    let mut admin = connect(&target).await;
    assert_eq!(
        download(&mut admin, &second, 0).await,
        second_body,
        "what the server stores"
    );
    drop(conn);
    remove_tree(with_tickets(&mut admin, &target).await, &dir).await;
}

/// An upload whose data connection does not resume is refused by every server that
/// enforces resumption, and the connection is not used again.
async fn refused_upload(server: Server, tls: Tls) {
    if !server.enforces_reuse() {
        return;
    }
    let target = target(server, tls);
    let mut admin = connect(&target).await;
    let dir = scratch(&mut admin, "refused", &target).await;
    let mut no_resume = target.options.clone();
    no_resume.resume_data_sessions = false;
    let mut conn = ControlConnection::connect(Arc::new(no_resume), Arc::new(TlsStats::default()))
        .await
        .expect("connect");
    let path = format!("{dir}/refused.bin");
    match upload(&mut conn, &path, &[7u8; 4096]).await {
        Err(FtpError::DataRejected { reply, .. }) => {
            assert!(matches!(reply.code, 425 | 522), "{reply}")
        }
        other => panic!("{server:?} {tls:?}: upload without resumption: {other:?}"),
    }
    assert!(conn.is_broken());
    // What the server left is the caller's to clean up: vsftpd creates the file before
    // it accepts the data connection, which is why ftpsfs uploads under a temporary name.
    let left = sizes(with_tickets(&mut admin, &target).await, &dir).await;
    println!("{server:?} {tls:?}: a refused upload left {left:?}");
    assert!(left.values().all(|(_, size)| *size == 0), "{left:?}");
    remove_tree(with_tickets(&mut admin, &target).await, &dir).await;
}

/// `uploads` small files in a row through a pool with the default TLS versions (auto);
/// returns the pool's counters.
async fn uploads_with_auto_versions(
    server: Server,
    uploads: u64,
) -> ftpsfs::ftp::tls::TlsStatsSnapshot {
    let mut target = target(server, Tls::V13);
    let mut admin = connect(&target).await;
    let dir = scratch(&mut admin, "auto", &target).await;
    common::auto_versions(&mut target.options);
    let pool = Pool::new(target.options.clone(), PoolOptions::default());
    for i in 0..uploads {
        let path = format!("{dir}/f{i:03}");
        ftpsfs::with_connection!(pool, |conn| upload(conn, &path, b"small\n").await)
            .await
            .unwrap_or_else(|e| panic!("{server:?} auto: upload {}: {e}", i + 1));
    }
    let stats = pool.stats();
    println!("{server:?}, TLS versions auto: {uploads} uploads in a row: {stats}");
    assert_eq!(stats.data_resumed, uploads, "{stats}");
    assert_eq!(stats.data_full, 0, "{stats}");
    assert_eq!(
        server_records(server, &dir),
        Some((uploads, 0)),
        "the server's own log: (complete, failed)"
    );
    pool.close().await;
    remove_tree(with_tickets(&mut admin, &target).await, &dir).await;
    stats
}

/// ProFTPD 1.3.8 sends no TLS 1.3 ticket for uploads: on TLS 1.3 alone a pool logs in
/// again every second upload. With the versions left to ftpsfs, the connections that
/// replace the first ones that run dry use TLS 1.2, whose session resumes for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proftpd_uploads_move_to_tls12_when_tls13_runs_dry() {
    let uploads = 40;
    let stats = uploads_with_auto_versions(Server::Proftpd, uploads).await;
    assert!(stats.opened_on_tls12 >= 1, "{stats}");
    // Each TLS 1.3 connection runs dry once at most (five at most are open); without the
    // move to TLS 1.2 it would be one new login every two uploads, about 20 here.
    assert!(stats.replaced_for_tickets <= 5, "{stats}");
}

/// A server with TLS 1.3 only refuses the TLS 1.2 replacement: the pool goes back to
/// TLS 1.3 and replaces connections that run dry, and no upload fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_only_server_refuses_tls12_and_uploads_go_on() {
    let uploads = 12;
    let stats = uploads_with_auto_versions(Server::ProftpdNoOverwrite, uploads).await;
    assert_eq!(stats.opened_on_tls12, 0, "{stats}");
    assert!(stats.replaced_for_tickets >= 4, "{stats}");
}

macro_rules! upload_suite {
    ($module:ident, $server:expr, $tls:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consecutive_uploads_all_resume() {
                super::consecutive_uploads($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn namespace_commands() {
                super::namespace_commands($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn upload_without_resumption_is_refused() {
                super::refused_upload($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transfers_find_their_data_connection_opened_ahead() {
                super::data_connections_opened_ahead($server, $tls).await
            }
        }
    };
}

upload_suite!(vsftpd_tls12, Server::Vsftpd, Tls::V12);
upload_suite!(vsftpd_tls13, Server::Vsftpd, Tls::V13);
upload_suite!(vsftpd_implicit_tls12, Server::VsftpdImplicit, Tls::V12);
upload_suite!(vsftpd_implicit_tls13, Server::VsftpdImplicit, Tls::V13);
upload_suite!(proftpd_tls12, Server::Proftpd, Tls::V12);
upload_suite!(proftpd_tls13, Server::Proftpd, Tls::V13);
upload_suite!(pureftpd_tls12, Server::PureFtpd, Tls::V12);
upload_suite!(pureftpd_tls13, Server::PureFtpd, Tls::V13);
upload_suite!(strict_tls12, Server::Strict, Tls::V12);
upload_suite!(strict_tls13, Server::Strict, Tls::V13);
upload_suite!(
    proftpd_no_overwrite_tls13,
    Server::ProftpdNoOverwrite,
    Tls::V13
);

/// A server that gives up a passive port left waiting (FileZilla Server and IIS have
/// short passive timeouts; the strict server imitates one) refuses the transfer that
/// comes to a data connection opened ahead. That transfer fails as a refused data
/// connection, which the mount sends again on another connection; the mount stops
/// opening data connections ahead (pipelining goes on), and the transfers after work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_waiting_passive_ports_ends_opening_ahead() {
    let target = target(Server::Strict, Tls::V13);
    let strict = target.strict.as_ref().expect("the strict server");
    strict.set_impatient_passive(true);
    let mut conn = connect(&target).await;
    let dir = scratch(&mut conn, "impatient", &target).await;
    let path = |name: &str| format!("{dir}/{name}");
    upload(&mut conn, &path("first"), b"first")
        .await
        .expect("EPSV with its command: the port waits no time");
    conn.check_upload(path("first").as_bytes(), None, None, None)
        .await
        .expect("check");
    assert!(conn.has_data_connection_ahead());
    tokio::time::sleep(common::strict_server::PASSIVE_PATIENCE * 4).await;
    match upload(&mut conn, &path("second"), b"second").await {
        Err(FtpError::DataRejected { reply, .. }) => assert_eq!(reply.code, 425, "{reply}"),
        other => panic!("a transfer on a port the server gave up: {other:?}"),
    }
    let pipelining = &target.options.pipelining;
    assert!(!pipelining.opens_ahead());
    assert!(pipelining.pipelines(), "{}", pipelining.describe());
    assert!(
        pipelining
            .describe()
            .contains("no data connection opened ahead (STOR answered 425"),
        "{}",
        pipelining.describe()
    );
    let mut conn = connect(&target).await;
    for name in ["second", "third"] {
        upload(&mut conn, &path(name), name.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("upload {name} after opening ahead ended: {e}"));
        let check = conn
            .check_upload(path(name).as_bytes(), None, None, None)
            .await
            .expect("check");
        assert_eq!(check.size, Some(name.len() as u64));
        assert!(!conn.has_data_connection_ahead());
        tokio::time::sleep(common::strict_server::PASSIVE_PATIENCE * 2).await;
    }
    remove_tree(&mut conn, &dir).await;
}
