//! A pool of logged-in control connections: a transfer holds one, broken ones are replaced.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::activity::{Activities, ConnectionReport};
use super::control::{ControlConnection, Standing};
use super::error::FtpError;
use super::options::ConnectOptions;
use super::tls::{TlsStats, TlsStatsSnapshot};

/// How the pool sizes and checks its connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Most control connections open at once.
    pub max_connections: usize,
    /// An idle connection older than this is checked with NOOP before use.
    pub check_idle_after: Duration,
    /// Longest wait for a free connection when all are busy.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            // Five: four readers each get a read-ahead stream and one connection stays
            // free for listings. With four, four parallel copies at 20 ms RTT got 209 MB/s
            // against 294 MB/s with five. Servers that allow fewer (a 421 at login) get
            // fewer: the pool shrinks to what the server accepts.
            max_connections: 5,
            // Servers drop idle sessions after 60-300 s (vsftpd idle_session_timeout=300);
            // a NOOP after 15 s of silence finds a dead connection before a transfer does.
            check_idle_after: Duration::from_secs(15),
            acquire_timeout: Duration::from_secs(60),
        }
    }
}

/// A shared pool of control connections to one server.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

/// Which TLS versions new connections offer, as learnt from the server.
///
/// rustls offers each TLS 1.3 ticket once, and ProFTPD before 1.3.9 sends none on an
/// upload's data connection, so on TLS 1.3 every second upload there needs a new login
/// (measured: 2,000 small files in 73 s, against 10 s on TLS 1.2). A TLS 1.2 session
/// resumes any number of times. So with `tls=auto`, once a TLS 1.3 connection has run
/// out of tickets, the connections that replace it offer TLS 1.2 only, unless the server
/// refuses TLS 1.2. The choice rests on what the server did inside authenticated TLS, so
/// no one on the path can force it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum VersionPolicy {
    /// As configured: the server picks, TLS 1.3 wherever it can.
    AsConfigured = 0,
    /// TLS 1.2 only: a TLS 1.3 connection ran out of tickets.
    Tls12 = 1,
    /// The server refused TLS 1.2: TLS 1.3, replacing connections that run dry.
    Tls12Refused = 2,
}

impl VersionPolicy {
    fn load(cell: &AtomicU8) -> Self {
        match cell.load(Ordering::Relaxed) {
            1 => VersionPolicy::Tls12,
            2 => VersionPolicy::Tls12Refused,
            _ => VersionPolicy::AsConfigured,
        }
    }
}

struct PoolInner {
    connect: Arc<ConnectOptions>,
    /// `connect` with TLS 1.2 only, where the user left the versions to us.
    connect_tls12: Option<Arc<ConnectOptions>>,
    version_policy: AtomicU8,
    options: PoolOptions,
    permits: Arc<Semaphore>,
    /// The current limit: starts at `max_connections`, shrinks when the server says 421.
    limit: AtomicUsize,
    idle: Mutex<Vec<ControlConnection>>,
    /// A connection went idle (or a login started ahead ended).
    idle_returned: tokio::sync::Notify,
    /// Logins started ahead by `warm_up`, not ended yet.
    warming: AtomicUsize,
    live: AtomicUsize,
    stats: Arc<TlsStats>,
    /// Every live connection's current step.
    activities: Activities,
    /// The cause of the last failure to connect, while the server stays unreachable: it
    /// is logged once when it starts and once when it ends, not at every retried call.
    unreachable: Mutex<Option<(String, std::time::Instant)>>,
    /// A connection was opened once: before that, a failure is the mount's own error,
    /// which the mount command reports in its one line.
    ever_connected: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// A pool that connects lazily, on first use.
    pub fn new(connect: ConnectOptions, options: PoolOptions) -> Self {
        let max = options.max_connections.max(1);
        let connect_tls12 = connect.tls12_fallback.clone().map(|tls| {
            Arc::new(ConnectOptions {
                tls,
                ..connect.clone()
            })
        });
        Self {
            inner: Arc::new(PoolInner {
                connect: Arc::new(connect),
                connect_tls12,
                version_policy: AtomicU8::new(VersionPolicy::AsConfigured as u8),
                options,
                permits: Arc::new(Semaphore::new(max)),
                limit: AtomicUsize::new(max),
                idle: Mutex::new(Vec::new()),
                idle_returned: tokio::sync::Notify::new(),
                warming: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
                stats: Arc::new(TlsStats::default()),
                activities: Activities::default(),
                unreachable: Mutex::new(None),
                ever_connected: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The connection settings shared by every connection.
    pub fn connect_options(&self) -> &Arc<ConnectOptions> {
        &self.inner.connect
    }

    /// Handshake and ticket counters of all connections so far.
    pub fn stats(&self) -> TlsStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The current connection limit (lower than configured after a 421).
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Control connections open now, busy or idle.
    pub fn live_connections(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// What each live connection is doing now.
    pub fn connections(&self) -> Vec<ConnectionReport> {
        self.inner.activities.snapshot()
    }

    /// Why the server cannot be reached, and since when, while that lasts.
    pub fn unreachable(&self) -> Option<(String, std::time::Duration)> {
        self.inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(cause, since)| (cause.clone(), since.elapsed()))
    }

    /// Takes a logged-in connection, opening one if none is idle.
    pub async fn get(&self) -> Result<PooledConnection, FtpError> {
        let inner = &self.inner;
        loop {
            let permit = match tokio::time::timeout(
                inner.options.acquire_timeout,
                inner.permits.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(FtpError::Pool("the pool is closed".into())),
                Err(_) => {
                    return Err(FtpError::Pool(format!(
                        "all {} connections stayed busy for {}s",
                        self.limit(),
                        inner.options.acquire_timeout.as_secs()
                    )))
                }
            };
            if let Some(conn) = self.take_idle().await {
                return Ok(PooledConnection::new(conn, inner.clone(), permit));
            }
            // A login started ahead (warm_up) is further along than a new one would be.
            let deadline = tokio::time::Instant::now() + inner.options.acquire_timeout;
            while inner.warming.load(Ordering::Acquire) > 0 {
                let returned = inner.idle_returned.notified();
                if let Some(conn) = self.take_idle().await {
                    return Ok(PooledConnection::new(conn, inner.clone(), permit));
                }
                if tokio::time::timeout_at(deadline, returned).await.is_err() {
                    break;
                }
            }
            if let Some(conn) = self.take_idle().await {
                return Ok(PooledConnection::new(conn, inner.clone(), permit));
            }
            inner.live.fetch_add(1, Ordering::Relaxed);
            match inner.open().await {
                Ok(conn) => return Ok(PooledConnection::new(conn, inner.clone(), permit)),
                Err(e) => {
                    let others = inner.live.fetch_sub(1, Ordering::Relaxed) - 1;
                    if e.reply_code() == Some(421) && others > 0 && self.lower_limit(&e) {
                        // Too many connections: make do with the ones we have.
                        permit.forget();
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Takes a connection for background work (write-back uploads): as [`Self::get`],
    /// but while at most one connection is idle and the pool may open one more besides
    /// a free slot, it opens a new one and leaves the idle one to whoever comes next.
    /// (rsync's last `utimensat` of a directory waited for a login when the uploads
    /// had taken every logged-in connection: 300-450 ms at 20 ms RTT.)
    pub async fn get_leaving_one_idle(&self) -> Result<PooledConnection, FtpError> {
        let idle = self.idle_count();
        if idle == 1 {
            if let Some(permit) = self.spare_permit(1) {
                let inner = &self.inner;
                inner.live.fetch_add(1, Ordering::Relaxed);
                match inner.open().await {
                    Ok(conn) => return Ok(PooledConnection::new(conn, inner.clone(), permit)),
                    Err(e) => {
                        inner.live.fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!("opening a connection beside the idle one: {e}");
                        drop(permit);
                    }
                }
            }
        }
        self.get().await
    }

    /// After a 421 at login: one connection fewer from now on, never below one.
    fn lower_limit(&self, error: &FtpError) -> bool {
        let lowered =
            self.inner
                .limit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |limit| {
                    (limit > 1).then(|| limit - 1)
                });
        match lowered {
            Ok(old) => {
                tracing::info!(
                    limit = old - 1,
                    "server refused another connection ({error}); pool limit lowered"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Drops every idle connection: after one connection was lost (server restart,
    /// network cut, idle timeout), the idle ones most likely were too, and reusing them
    /// one by one would fail one operation each.
    pub fn discard_idle(&self) {
        let idle = self.take_all_idle();
        if !idle.is_empty() {
            tracing::debug!(count = idle.len(), "discarding idle connections");
        }
    }

    /// Removes every idle connection from the pool, for the caller to close or drop.
    fn take_all_idle(&self) -> Vec<ControlConnection> {
        let idle: Vec<ControlConnection> =
            std::mem::take(&mut *self.inner.idle.lock().unwrap_or_else(|e| e.into_inner()));
        self.inner.live.fetch_sub(idle.len(), Ordering::Relaxed);
        idle
    }

    /// Takes a connection only if one is free now and `reserve` more stay free for others.
    ///
    /// Long-running streams use this so that they never starve listings and small reads.
    pub async fn try_get_spare(
        &self,
        reserve: usize,
    ) -> Result<Option<PooledConnection>, FtpError> {
        let inner = &self.inner;
        let Some(permit) = self.spare_permit(reserve) else {
            return Ok(None);
        };
        if let Some(conn) = self.take_idle().await {
            return Ok(Some(PooledConnection::new(conn, inner.clone(), permit)));
        }
        inner.live.fetch_add(1, Ordering::Relaxed);
        match inner.open().await {
            Ok(conn) => Ok(Some(PooledConnection::new(conn, inner.clone(), permit))),
            Err(e) => {
                let others = inner.live.fetch_sub(1, Ordering::Relaxed) - 1;
                if e.reply_code() == Some(421) {
                    // Do not ask again for every stream: one connection fewer from now on.
                    if others > 0 && self.lower_limit(&e) {
                        permit.forget();
                    }
                    return Ok(None);
                }
                Err(e)
            }
        }
    }

    /// The round trip to the server, as the kernel measured it on an idle connection.
    pub fn round_trip(&self) -> Option<std::time::Duration> {
        let idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.iter().find_map(|conn| conn.round_trip())
    }

    /// Opens connections in the background until `count` are idle or being opened,
    /// leaving `reserve` free, so work about to fan out finds them logged in (a login
    /// costs seven round trips). Each goes back to the pool as soon as it is in, for
    /// whoever waits for one. Failures are left to the work itself.
    pub fn warm_up(&self, count: usize, reserve: usize) {
        let idle = self.idle_count();
        let ready_soon = idle + self.inner.warming.load(Ordering::Acquire);
        for _ in ready_soon..count {
            let Some(permit) = self.spare_permit(reserve) else {
                break;
            };
            let inner = self.inner.clone();
            inner.live.fetch_add(1, Ordering::Relaxed);
            inner.warming.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                match inner.open().await {
                    Ok(conn) => drop(PooledConnection::new(conn, inner.clone(), permit)),
                    Err(e) => {
                        inner.live.fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!("warming up the pool: {e}");
                    }
                }
                inner.warming.fetch_sub(1, Ordering::AcqRel);
                // Whoever waited for this login tries again (an idle one, or its own).
                inner.idle_returned.notify_waiters();
            });
        }
    }

    /// Connections logged in and idle now.
    fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A permit for one more connection, if `reserve` more stay free for others.
    fn spare_permit(&self, reserve: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if self.inner.permits.available_permits() <= reserve {
            return None;
        }
        self.inner.permits.clone().try_acquire_owned().ok()
    }

    async fn take_idle(&self) -> Option<ControlConnection> {
        loop {
            let conn = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()?;
            let mut conn = conn;
            if conn.is_broken() {
                self.inner.live.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if conn.server_hung_up() {
                tracing::debug!(
                    conn = conn.id(),
                    "the server closed this idle connection; replacing it"
                );
                self.inner.live.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if conn.idle_for() < self.inner.options.check_idle_after {
                return Some(conn);
            }
            match conn.noop().await {
                Ok(()) => return Some(conn),
                Err(e) => {
                    tracing::debug!(
                        conn = conn.id(),
                        "idle connection is gone ({e}); replacing it"
                    );
                    self.inner.live.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Closes every idle connection politely (QUIT), all at once, so an unreachable
    /// server delays the exit by one QUIT timeout, not one per connection.
    pub async fn close(&self) {
        let mut quits = tokio::task::JoinSet::new();
        for conn in self.take_all_idle() {
            quits.spawn(conn.quit());
        }
        while quits.join_next().await.is_some() {}
    }
}

/// Whether an operation that failed with `error` deserves one more try on a fresh connection.
///
/// A connection can break without our doing: the server's idle timeout, a 421, a ticket
/// supply that ran out. One retry hides that; timeouts and refused connections are not
/// retried, so a dead server is reported within one timeout.
pub fn worth_retrying(error: &FtpError) -> bool {
    error.breaks_connection()
        && !matches!(
            error,
            FtpError::Timeout { .. }
                | FtpError::Connect { .. }
                | FtpError::Proxy { .. }
                | FtpError::Unconfirmed { .. }
        )
}

/// Runs `body` with `conn` bound to a pooled connection, and once more on a fresh
/// connection if the first one broke (see [`worth_retrying`]) before any command that
/// changes the server went out (see [`crate::ftp::Retry`]): an operation that sent DELE,
/// RNTO, STOR or MKD is never repeated blindly. Evaluates to a future of the body's
/// `Result<T, FtpError>`.
///
/// A macro rather than a method taking a closure: async closures borrowing the caller's
/// data are not yet `Send` in a way `tokio::spawn` accepts.
#[macro_export]
macro_rules! with_connection {
    ($pool:expr, |$conn:ident| $body:expr) => {
        async {
            let pool: &$crate::ftp::Pool = &$pool;
            let mut pooled = pool.get().await?;
            let first = async {
                let $conn: &mut $crate::ftp::ControlConnection = &mut pooled;
                $body
            }
            .await;
            match first {
                Err(error)
                    if $crate::ftp::pool::worth_retrying(&error) && !pooled.sent_mutation() =>
                {
                    tracing::debug!(
                        conn = pooled.id(),
                        "connection broke ({error}); retrying on a fresh one"
                    );
                    drop(pooled);
                    if error.connection_lost() {
                        // The idle ones are most likely gone too: the retry must not
                        // pick up another dead connection.
                        pool.discard_idle();
                    }
                    let mut pooled = pool.get().await?;
                    let $conn: &mut $crate::ftp::ControlConnection = &mut pooled;
                    $body
                }
                other => other,
            }
        }
    };
}

/// A connection on loan from the pool; returned on drop unless broken.
pub struct PooledConnection {
    conn: Option<ControlConnection>,
    pool: Arc<PoolInner>,
    permit: Option<OwnedSemaphorePermit>,
}

impl PooledConnection {
    fn new(
        mut conn: ControlConnection,
        pool: Arc<PoolInner>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        conn.begin_operation();
        Self {
            conn: Some(conn),
            pool,
            permit: Some(permit),
        }
    }
}

impl Deref for PooledConnection {
    type Target = ControlConnection;

    fn deref(&self) -> &ControlConnection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut ControlConnection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match conn.standing() {
            Standing::Unusable => {
                tracing::debug!(conn = conn.id(), "dropping a broken connection");
                self.pool.live.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Standing::Ready if !conn.will_run_dry() => {
                self.pool.return_idle(conn);
                return;
            }
            Standing::Ready | Standing::OwesReplies => {}
        }
        // The replies to the last transfer's end (226, or ABOR's) are a round trip away,
        // or the connection has no TLS ticket left for another data connection: tidy it
        // up in the background, still counting against the limit, so the next operation
        // takes another connection instead of waiting.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let pool = self.pool.clone();
                let permit = self.permit.take();
                runtime.spawn(async move {
                    pool.tidy(conn).await;
                    drop(permit);
                });
            }
            // Without a runtime (shutting down), the next user settles it, or retires it
            // for want of tickets.
            Err(_) => self.pool.return_idle(conn),
        }
    }
}

impl PoolInner {
    /// Reads the replies `conn` owes, replaces it if it ran out of TLS tickets, and
    /// returns it (or its replacement) to the idle list.
    async fn tidy(&self, mut conn: ControlConnection) {
        if let Err(e) = conn.settle().await {
            tracing::debug!(conn = conn.id(), "dropping a connection: {e}");
            self.live.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if conn.is_broken() {
            tracing::debug!(conn = conn.id(), "dropping a broken connection");
            self.live.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if !conn.will_run_dry() {
            self.return_idle(conn);
            return;
        }
        // ProFTPD sends no ticket on an upload's data connection, so a connection that
        // uploads runs dry after the two it got at login. Replacing it now, before an
        // operation needs it, keeps the new login off that operation's path. The old
        // one says goodbye first, so that a server's per-address limit is not exceeded.
        tracing::debug!(
            conn = conn.id(),
            "no TLS session ticket left; replacing the connection ahead of use"
        );
        self.stats
            .replaced_for_tickets
            .fetch_add(1, Ordering::Relaxed);
        let on_tls13 = conn
            .tls_summary()
            .is_some_and(|tls| tls.version == "TLSv1_3");
        if on_tls13
            && self.connect_tls12.is_some()
            && self
                .version_policy
                .compare_exchange(
                    VersionPolicy::AsConfigured as u8,
                    VersionPolicy::Tls12 as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::info!(
                "the server sends no TLS 1.3 session ticket for uploads (ProFTPD before 1.3.9 \
                 does not), so each would need a new login: new connections use TLS 1.2, whose \
                 session every data connection can resume (-o tls=1.3 keeps TLS 1.3)"
            );
        }
        conn.quit().await;
        match self.open().await {
            Ok(fresh) => self.return_idle(fresh),
            Err(e) => {
                tracing::debug!("replacing a connection without tickets failed: {e}");
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Opens and logs in a connection with the TLS versions the policy says, and notes
    /// whether the server is reachable.
    async fn open(&self) -> Result<ControlConnection, FtpError> {
        let mut opened = self.open_with_policy().await;
        if let Ok(conn) = &mut opened {
            // The first login finds out whether the server answers pipelined commands in
            // order, before any operation depends on it.
            if self.connect.pipelining.take_probe() {
                if let Err(e) = conn.probe_reply_order().await {
                    tracing::debug!(conn = conn.id(), "probing the reply order failed: {e}");
                    opened = Err(e);
                }
            }
        }
        match &opened {
            Ok(conn) => {
                self.activities.register(conn.activity());
                self.note_reachable();
                self.ever_connected.store(true, Ordering::Relaxed);
            }
            // 421 at login: busy, not gone (the limit is lowered instead).
            Err(e) if e.reply_code() != Some(421) => {
                let mut unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
                if unreachable.is_none() && self.ever_connected.load(Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot connect to the server: {e}; operations that need it fail \
                         until it is back"
                    );
                }
                if unreachable.is_none() {
                    *unreachable = Some((e.to_string(), std::time::Instant::now()));
                }
            }
            Err(_) => {}
        }
        opened
    }

    async fn open_with_policy(&self) -> Result<ControlConnection, FtpError> {
        if let (VersionPolicy::Tls12, Some(tls12)) = (
            VersionPolicy::load(&self.version_policy),
            &self.connect_tls12,
        ) {
            // Boxed (here and below): a login's state is large, and would otherwise sit
            // in every operation's future that may open a connection.
            match Box::pin(ControlConnection::connect(
                tls12.clone(),
                self.stats.clone(),
            ))
            .await
            {
                Ok(conn) => {
                    self.stats.opened_on_tls12.fetch_add(1, Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(e @ FtpError::Tls { .. }) => {
                    self.version_policy
                        .store(VersionPolicy::Tls12Refused as u8, Ordering::Relaxed);
                    tracing::info!(
                        "the server refused TLS 1.2 ({e}): staying on TLS 1.3, with a new \
                         login whenever a connection runs out of session tickets"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Box::pin(ControlConnection::connect(
            self.connect.clone(),
            self.stats.clone(),
        ))
        .await
    }

    /// The server answered: an outage noted before is over (a failed connect while the
    /// open connections kept working ends here too).
    fn note_reachable(&self) {
        let outage = self
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some((_, since)), true) = (outage, self.ever_connected.load(Ordering::Relaxed)) {
            tracing::warn!(
                "server reachable again after {:.1} s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    fn return_idle(&self, conn: ControlConnection) {
        conn.activity().set_step("idle");
        self.note_reachable();
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        self.idle_returned.notify_one();
    }
}
