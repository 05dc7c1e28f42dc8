//! The FTPS client against real servers (vsftpd explicit and implicit, ProFTPD, Pure-FTPd)
//! and the strict FileZilla-like server, on TLS 1.2 and TLS 1.3.
//!
//! The servers come from `scripts/servers.sh start` (run by `scripts/test.sh`); each one
//! except Pure-FTPd refuses a data connection that does not resume its control
//! connection's session, and the `rejects_*` tests prove that they do.

mod common;

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{expected_sha256, hex, target, Server, Target, Tls};
use ftpsfs::ftp::listing::EntryKind;
use ftpsfs::ftp::{ControlConnection, FtpError, Pool, PoolOptions};
use openssl::sha::Sha256;

/// At least 500 consecutive data connections on one client (the bar).
const CONSECUTIVE_DATA_CONNECTIONS: u64 = 500;

async fn connect(target: &Target) -> (ControlConnection, Arc<ftpsfs::ftp::tls::TlsStats>) {
    let stats = Arc::new(ftpsfs::ftp::tls::TlsStats::default());
    let conn = ControlConnection::connect(Arc::new(target.options.clone()), stats.clone())
        .await
        .unwrap_or_else(|e| panic!("{:?} {:?}: connect: {e}", target.server, target.tls));
    (conn, stats)
}

fn assert_tls_version(conn: &ControlConnection, tls: Tls) {
    let summary = conn.tls_summary().expect("control connection is TLS");
    let expected = match tls {
        Tls::V12 => "TLSv1_2",
        Tls::V13 => "TLSv1_3",
    };
    assert_eq!(summary.version, expected);
}

async fn retrieve_all(
    conn: &mut ControlConnection,
    path: &str,
    offset: u64,
) -> (Vec<u8>, Option<bool>) {
    let mut data = conn
        .retrieve(path.as_bytes(), offset)
        .await
        .unwrap_or_else(|e| panic!("RETR {path}: {e}"));
    let resumed = data.resumed();
    let mut body = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = data.read(&mut chunk).await.expect("read data");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    conn.finish_data(data).await.expect("finish transfer");
    (body, resumed)
}

async fn listing(server: Server, tls: Tls) {
    let target = target(server, tls);
    let (mut conn, stats) = connect(&target).await;
    assert_tls_version(&conn, tls);
    let root = conn.list(b"").await.expect("list root");
    let find = |name: &str| {
        root.entries
            .iter()
            .find(|e| e.name == name.as_bytes())
            .unwrap_or_else(|| {
                panic!(
                    "{name} missing from listing: {:?}",
                    root.entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                        .collect::<Vec<_>>()
                )
            })
    };
    let small = find("small.txt");
    assert_eq!(small.kind, EntryKind::File);
    assert_eq!(
        small.size,
        Some(
            fs::metadata(common::env().data.join("small.txt"))
                .unwrap()
                .len()
        )
    );
    assert!(small.modified.is_some());
    assert_eq!(find("empty.txt").size, Some(0));
    assert_eq!(find("dir1").kind, EntryKind::Dir);
    assert_eq!(find("large.bin").size, Some(64 * 1024 * 1024));
    find("with space.txt");
    find("ünïcödé-名前.txt");
    find("link-to-small");
    assert!(root
        .entries
        .iter()
        .all(|e| e.name != b"." && e.name != b".."));

    let nested = conn.list(b"dir1/dir2/dir3").await.expect("list nested");
    assert_eq!(nested.entries.len(), 1, "{:?}", nested.entries);
    assert_eq!(nested.entries[0].name, b"deep.txt");

    // MLSD of a missing directory is a 550 before any data connection; vsftpd's LIST of a
    // missing path is an empty listing over a data connection.
    let data_connections = match conn.list(b"no-such-dir").await {
        Ok(listing) => {
            assert!(listing.entries.is_empty());
            3
        }
        Err(e) => {
            assert!(e.is_not_found(), "{e}");
            2
        }
    };
    conn.noop().await.expect("connection usable after listings");
    assert_resumption(server, tls, &stats.snapshot(), data_connections);
}

fn assert_resumption(
    server: Server,
    tls: Tls,
    stats: &ftpsfs::ftp::TlsStatsSnapshot,
    data_connections: u64,
) {
    if server.resumes(tls) {
        assert_eq!(
            stats.data_resumed, data_connections,
            "{server:?} {tls:?}: {stats}"
        );
        assert_eq!(stats.data_full, 0, "{server:?} {tls:?}: {stats}");
    } else {
        assert_eq!(
            stats.data_resumed + stats.data_full,
            data_connections,
            "{stats}"
        );
    }
}

async fn large_download(server: Server, tls: Tls) {
    let target = target(server, tls);
    let (mut conn, stats) = connect(&target).await;
    let mut data = conn
        .retrieve(b"large.bin", 0)
        .await
        .expect("RETR large.bin");
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = data.read(&mut chunk).await.expect("read large.bin");
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&chunk[..n]);
    }
    conn.finish_data(data).await.expect("226 after large.bin");
    assert_eq!(total, 64 * 1024 * 1024);
    assert_eq!(hex(&hasher.finish()), expected_sha256("large.bin"));
    assert_resumption(server, tls, &stats.snapshot(), 1);
}

async fn download_from_offset(server: Server, tls: Tls) {
    let target = target(server, tls);
    let (mut conn, _) = connect(&target).await;
    let local = fs::read(common::env().data.join("medium.bin")).unwrap();
    for offset in [1u64, 1_000_003, local.len() as u64 - 10] {
        let (body, _) = retrieve_all(&mut conn, "medium.bin", offset).await;
        assert_eq!(body.len(), local.len() - offset as usize, "offset {offset}");
        assert!(
            body == local[offset as usize..],
            "content differs from offset {offset}"
        );
    }
}

async fn abort_then_continue(server: Server, tls: Tls) {
    let target = target(server, tls);
    let (mut conn, _) = connect(&target).await;
    for round in 0..3 {
        let mut data = conn
            .retrieve(b"large.bin", 0)
            .await
            .expect("RETR large.bin");
        let mut buf = vec![0u8; 1024 * 1024];
        let n = data.read_full(&mut buf).await.expect("first MiB");
        assert_eq!(n, buf.len());
        conn.abort_data(data)
            .await
            .unwrap_or_else(|e| panic!("round {round}: ABOR: {e}"));
        assert!(
            !conn.is_broken(),
            "round {round}: connection broken by ABOR"
        );
        // The connection must be in sync: the next replies belong to the next commands.
        let size = conn.size(b"small.txt").await.expect("SIZE after ABOR");
        assert_eq!(size, 13);
        let (body, _) = retrieve_all(&mut conn, "small.txt", 0).await;
        assert_eq!(
            body,
            fs::read(common::env().data.join("small.txt")).unwrap()
        );
        // A transfer known complete leaves its 226 for the next command to read: the
        // reply to SIZE must still be SIZE's, not the 226.
        let mut data = conn.retrieve(b"small.txt", 0).await.expect("RETR");
        let mut whole = vec![0u8; 13];
        assert_eq!(data.read_full(&mut whole).await.expect("read"), 13);
        assert_eq!(data.read(&mut [0u8; 1]).await.expect("read the end"), 0);
        conn.finish_complete_data(data)
            .await
            .expect("finish without waiting");
        assert_eq!(whole, body);
        let size = conn
            .size(b"small.txt")
            .await
            .expect("SIZE after a deferred 226");
        assert_eq!(size, 13, "round {round}");
    }
}

async fn many_data_connections(server: Server, tls: Tls) {
    let target = target(server, tls);
    let (mut conn, stats) = connect(&target).await;
    let small = fs::read(common::env().data.join("small.txt")).unwrap();
    for i in 0..CONSECUTIVE_DATA_CONNECTIONS {
        if i % 10 == 0 {
            let listing = conn
                .list(b"dir1")
                .await
                .unwrap_or_else(|e| panic!("data connection {}: {e}", i + 1));
            assert_eq!(listing.entries.len(), 1);
        } else {
            let (body, resumed) = retrieve_all(&mut conn, "small.txt", 0).await;
            assert_eq!(body, small);
            assert_eq!(
                resumed,
                Some(server.resumes(tls)),
                "data connection {}",
                i + 1
            );
        }
    }
    let snapshot = stats.snapshot();
    assert_resumption(server, tls, &snapshot, CONSECUTIVE_DATA_CONNECTIONS);
    if let Some(strict) = &target.strict {
        assert_eq!(
            strict.data_connections_accepted(),
            CONSECUTIVE_DATA_CONNECTIONS
        );
        assert_eq!(strict.data_connections_rejected(), 0);
    }
    println!("{server:?} {tls:?}: {CONSECUTIVE_DATA_CONNECTIONS} data connections on one control connection: {snapshot}");
}

async fn parallel_control_connections(server: Server, tls: Tls) {
    let target = target(server, tls);
    let pool = Pool::new(
        target.options.clone(),
        PoolOptions {
            max_connections: 4,
            ..PoolOptions::default()
        },
    );
    let small = fs::read(common::env().data.join("small.txt")).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let pool = pool.clone();
        let small = small.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let body = ftpsfs::with_connection!(pool, |conn| {
                    let mut data = conn.retrieve(b"small.txt", 0).await?;
                    let mut buf = vec![0u8; 64];
                    let n = data.read_full(&mut buf).await?;
                    conn.finish_data(data).await?;
                    buf.truncate(n);
                    Ok::<_, FtpError>(buf)
                })
                .await
                .unwrap_or_else(|e| panic!("worker {worker} transfer {i}: {e}"));
                assert_eq!(body, small);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    assert_eq!(done.load(Ordering::Relaxed), 90);
    assert!(
        pool.live_connections() <= 4,
        "{} connections",
        pool.live_connections()
    );
    assert!(
        pool.live_connections() >= 2,
        "transfers did not run in parallel"
    );
    assert_resumption(server, tls, &pool.stats(), 90);
    pool.close().await;
}

async fn rejects_data_without_resumption(server: Server, tls: Tls) {
    let mut target = target(server, tls);
    target.options.resume_data_sessions = false;
    let (mut conn, stats) = connect(&target).await;
    let result = conn.list(b"").await;
    if server.enforces_reuse() {
        match result {
            Err(FtpError::DataRejected { number, reply, .. }) => {
                assert_eq!(number, 1);
                let expected = match server {
                    Server::Vsftpd | Server::VsftpdImplicit => 522,
                    _ => 425,
                };
                assert_eq!(reply.code, expected, "{reply}");
                let message = FtpError::DataRejected {
                    number,
                    reply,
                    resumed: Some(false),
                }
                .to_string();
                assert!(
                    message.starts_with("data connection 1 rejected by server: "),
                    "{message}"
                );
            }
            other => panic!(
                "{server:?} {tls:?} accepted a data connection that did not resume: {:?}",
                other.map(|l| l.entries.len())
            ),
        }
        assert_eq!(stats.snapshot().data_resumed, 0);
        if let Some(strict) = &target.strict {
            assert_eq!(strict.data_connections_rejected(), 1);
        }
    } else {
        // Pure-FTPd 1.0.50 dropped its reuse check: it serves the full handshake.
        let listing = result.expect("Pure-FTPd accepts a full handshake");
        assert!(!listing.entries.is_empty());
        assert_eq!(stats.snapshot().data_full, 1);
    }
}

macro_rules! server_suite {
    ($module:ident, $server:expr, $tls:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn listing() {
                super::listing($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn large_download_matches_checksum() {
                super::large_download($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn download_from_offset() {
                super::download_from_offset($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abort_then_continue() {
                super::abort_then_continue($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn many_consecutive_data_connections_resume() {
                super::many_data_connections($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn parallel_control_connections_each_resume_their_own() {
                super::parallel_control_connections($server, $tls).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn data_connection_without_resumption() {
                super::rejects_data_without_resumption($server, $tls).await
            }
        }
    };
}

server_suite!(vsftpd_tls12, Server::Vsftpd, Tls::V12);
server_suite!(vsftpd_tls13, Server::Vsftpd, Tls::V13);
server_suite!(vsftpd_implicit_tls12, Server::VsftpdImplicit, Tls::V12);
server_suite!(vsftpd_implicit_tls13, Server::VsftpdImplicit, Tls::V13);
server_suite!(proftpd_tls12, Server::Proftpd, Tls::V12);
server_suite!(proftpd_tls13, Server::Proftpd, Tls::V13);
server_suite!(pureftpd_tls12, Server::PureFtpd, Tls::V12);
server_suite!(pureftpd_tls13, Server::PureFtpd, Tls::V13);
server_suite!(strict_tls12, Server::Strict, Tls::V12);
server_suite!(strict_tls13, Server::Strict, Tls::V13);
