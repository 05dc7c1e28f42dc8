//! The TLS 1.3 ticket policy, against a strict server whose ticket supply runs dry.
//!
//! Real servers replenish tickets on downloads, so only a server that stops issuing them
//! (as ProFTPD does on uploads) exercises the policy: retire the control connection before
//! a data connection would be refused, and let the pool carry on with a fresh one.

mod common;

use std::sync::Arc;

use common::strict_server::{StrictServer, StrictServerOptions, TlsVersion};
use common::{env, options, Tls};
use ftpsfs::ftp::tls::TlsStats;
use ftpsfs::ftp::{ControlConnection, FtpError, Pool, PoolOptions, Security};

const TICKETS_PER_CONNECTION: u64 = 3;

fn dry_server() -> StrictServer {
    let env = env();
    let mut opts = StrictServerOptions::new(
        &env.data,
        env.certs.join("server.pem"),
        env.certs.join("server.key"),
        TlsVersion::Tls13,
        env.user.clone(),
        env.password.clone(),
    );
    opts.tickets_per_connection = Some(TICKETS_PER_CONNECTION);
    StrictServer::start(opts).expect("strict server")
}

async fn fetch_small(conn: &mut ControlConnection) -> Result<Vec<u8>, FtpError> {
    let mut data = conn.retrieve(b"small.txt", 0).await?;
    let mut buf = vec![0u8; 64];
    let n = data.read_full(&mut buf).await?;
    conn.finish_data(data).await?;
    buf.truncate(n);
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_tickets_is_retired_before_the_server_refuses() {
    let server = dry_server();
    let stats = Arc::new(TlsStats::default());
    let opts = Arc::new(options(server.port(), Security::ExplicitTls, Tls::V13));
    let mut conn = ControlConnection::connect(opts, stats.clone())
        .await
        .expect("connect");
    for i in 0..TICKETS_PER_CONNECTION {
        fetch_small(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("transfer {}: {e}", i + 1));
    }
    match fetch_small(&mut conn).await {
        Err(FtpError::TicketsExhausted) => {}
        other => panic!("expected TicketsExhausted, got {other:?}"),
    }
    assert!(conn.is_broken());
    assert_eq!(
        server.data_connections_rejected(),
        0,
        "a data connection was attempted without a ticket"
    );
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.data_resumed, TICKETS_PER_CONNECTION);
    assert_eq!(snapshot.replaced_for_tickets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_replaces_a_dry_connection_and_carries_on() {
    let server = dry_server();
    let pool = Pool::new(
        options(server.port(), Security::ExplicitTls, Tls::V13),
        PoolOptions {
            max_connections: 1,
            ..PoolOptions::default()
        },
    );
    let expected = std::fs::read(env().data.join("small.txt")).unwrap();
    for i in 0..10 {
        let body = ftpsfs::with_connection!(pool, |conn| fetch_small(conn).await)
            .await
            .unwrap_or_else(|e| panic!("transfer {}: {e}", i + 1));
        assert_eq!(body, expected);
    }
    let stats = pool.stats();
    assert_eq!(stats.data_resumed, 10, "{stats}");
    assert_eq!(stats.data_full, 0, "{stats}");
    // Connections hold 3 tickets each: transfers 4, 7 and 10 needed a fresh one.
    assert_eq!(stats.replaced_for_tickets, 3, "{stats}");
    assert_eq!(server.data_connections_rejected(), 0);
    assert_eq!(server.control_connections(), 4);
}
