//! One logged-in control connection and the data connections it opens.
//!
//! - this file: connecting, securing and logging in, and what the connection knows;
//! - [`replies`]: sending commands and reading replies, pipelined, and the replies a
//!   connection still owes from an earlier transfer;
//! - [`data`]: data connections (passive address, TLS resumption, transfer end and abort);
//! - [`active`]: active-mode data connections (EPRT/PORT), which the server opens;
//! - [`upload`]: uploads, and how they end;
//! - [`commands`]: the FTP commands themselves, each verb with its retry policy;
//! - [`reach`]: paths too long for one command line, sent relative to their directory.

mod active;
mod ahead;
mod commands;
mod data;
mod reach;
mod replies;
mod upload;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::AsyncWriteExt;

pub use commands::{verb, Retry, StoredVersion, UploadCheck, Verb, MAX_LISTING_BYTES};
use commands::{Command, TimeSetting};
pub use data::DataConnection;
use replies::PendingReplies;
pub use upload::UploadConnection;

use super::activity::Activity;
use super::error::FtpError;
use super::features::Features;
use super::identity::CertificateAnswer;
use super::options::{ConnectOptions, Security};
use super::reply::Reply;
use super::tls::{
    certificate_fingerprint, format_fingerprint, per_connection_config, SessionStore, TlsStats,
};
use super::transport::{dial, display_addr, tls_handshake, Transport};

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// What the TLS layer of a connection negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSummary {
    /// Protocol version, e.g. `TLSv1_3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Whether this handshake resumed an earlier session.
    pub resumed: bool,
    /// SHA-256 fingerprint of the server's certificate, when one was sent.
    pub fingerprint: Option<String>,
}

fn summarize(conn: &rustls::ClientConnection) -> TlsSummary {
    TlsSummary {
        version: conn
            .protocol_version()
            .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
        cipher: conn
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite())),
        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        fingerprint: conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| format_fingerprint(&certificate_fingerprint(cert))),
    }
}

/// A logged-in control connection.
pub struct ControlConnection {
    id: u64,
    transport: Option<Transport>,
    read_buffer: Vec<u8>,
    options: Arc<ConnectOptions>,
    server_name: ServerName<'static>,
    peer: SocketAddr,
    /// This side's address on the control connection: where active mode listens.
    local: SocketAddr,
    /// This connection's own TLS config and session store (None for plain FTP).
    session: Option<(Arc<ClientConfig>, Arc<SessionStore>)>,
    stats: Arc<TlsStats>,
    greeting: Reply,
    features: Features,
    epsv_refused: bool,
    /// The server does not know EPRT: active mode sends PORT.
    eprt_refused: bool,
    /// EPSV has worked on this connection: data commands may go out with it.
    epsv_works: bool,
    data_connections: u64,
    state: State,
    /// A command that changes the server ([`Retry::Never`]) went out since the pool lent
    /// the connection: the operation must not be retried blindly.
    sent_mutation: bool,
    /// Writes of commands so far: a mutation whose write began may have been carried out.
    commands_written: u64,
    /// How this server sets modification times, once known.
    time_setting: TimeSetting,
    /// The server sent a TLS ticket on the control connection at EPSV/PASV (FileZilla
    /// Server's way): running out of tickets between transfers is no reason to go.
    tickets_at_passive: bool,
    last_used: Instant,
    /// What it is doing, for live statistics.
    activity: Arc<Activity>,
    /// When the last commands went out: the debug log gives each reply's delay.
    last_sent: Instant,
    /// Replies an earlier ABOR may still send (it was answered after its NOOP): skipped
    /// when they come.
    late_abort_replies: u8,
    /// The login directory (PWD), learned the first time a path is too long to send.
    home: Option<Vec<u8>>,
    /// The directory changed into for a long path (see `reach`); None in the login
    /// directory.
    away: Option<Vec<u8>>,
    /// The next transfer's data connection, opened after an upload (see `ahead.rs`).
    ahead: Option<ahead::OpenedAhead>,
}

/// Where a control connection stands in its dialogue with the server: one value rather
/// than several flags, so that no combination of them can be half-updated.
enum State {
    /// Every reply read and no transfer open: the next command may go out.
    Ready,
    /// Replies to the end of an earlier transfer are still to come (see
    /// [`ControlConnection::abort_data`] and [`ControlConnection::finish_complete_data`]);
    /// the next command reads them first.
    Owes(PendingReplies),
    /// A command is out (or owed replies are being read) and its replies are not all read.
    /// An operation cancelled here leaves the connection out of step.
    Exchange,
    /// A data transfer is open. `early_reply` is a final reply that arrived before the
    /// data was read (a 226 without a 150).
    Transfer { early_reply: Option<Reply> },
    /// Out of step, or being closed by the server (an error, a 421): never used again.
    Broken,
}

/// What the pool may do with a connection handed back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// In step and idle: it can serve the next operation.
    Ready,
    /// In step once the replies owed by the last transfer are read.
    OwesReplies,
    /// Broken, or left in the middle of an exchange or a transfer: it must be closed.
    Unusable,
}

impl ControlConnection {
    /// Connects, secures, logs in and prepares the connection for binary transfers.
    pub async fn connect(
        options: Arc<ConnectOptions>,
        stats: Arc<TlsStats>,
    ) -> Result<Self, FtpError> {
        let answer = options.client_certificate.clone();
        Self::connect_and_log_in(options, stats)
            .await
            .map_err(|error| certificate_hint(error, &answer))
    }

    async fn connect_and_log_in(
        options: Arc<ConnectOptions>,
        stats: Arc<TlsStats>,
    ) -> Result<Self, FtpError> {
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let addr = display_addr(&options.host, options.port);
        tracing::debug!(conn = id, %addr, security = ?options.security, proxy = ?options.proxy, "connecting");
        let tcp = dial(
            options.proxy.as_ref(),
            &options.host,
            options.port,
            options.timeouts.connect,
        )
        .await?;
        let peer = tcp.peer_addr().map_err(|source| FtpError::Io {
            step: "reading the control connection's peer address".into(),
            source,
        })?;
        let local = tcp.local_addr().map_err(|source| FtpError::Io {
            step: "reading the control connection's local address".into(),
            source,
        })?;
        let server_name = ServerName::try_from(options.host.clone()).map_err(|_| {
            FtpError::TlsConfig(format!("{:?} is not a valid TLS server name", options.host))
        })?;
        let session = options.security.uses_tls().then(|| {
            let store = Arc::new(SessionStore::new(stats.clone()));
            (per_connection_config(&options.tls, store.clone()), store)
        });
        let transport = match (&options.security, &session) {
            (Security::ImplicitTls, Some((config, _))) => Transport::Tls(Box::new(
                tls_handshake(
                    tcp,
                    config.clone(),
                    server_name.clone(),
                    options.timeouts.handshake,
                    "the control connection",
                )
                .await
                .map_err(plain_text_hint)?,
            )),
            _ => Transport::Plain(tcp),
        };
        let mut conn = Self {
            id,
            transport: Some(transport),
            read_buffer: Vec::new(),
            options,
            server_name,
            peer,
            local,
            session,
            stats,
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
            features: Features::default(),
            epsv_refused: false,
            eprt_refused: false,
            epsv_works: false,
            data_connections: 0,
            state: State::Ready,
            sent_mutation: false,
            commands_written: 0,
            time_setting: TimeSetting::Unknown,
            tickets_at_passive: false,
            last_used: Instant::now(),
            activity: Activity::new(id),
            last_sent: Instant::now(),
            late_abort_replies: 0,
            home: None,
            away: None,
            ahead: None,
        };
        conn.greeting = conn.read_greeting_or_spot_implicit_tls().await?;
        if conn.options.security == Security::ExplicitTls {
            conn.start_tls().await?;
        }
        conn.login().await?;
        if conn.session.is_some() {
            conn.expect_success(Command::with_arg(&verb::PBSZ, "0")?)
                .await?;
            conn.expect_success(Command::with_arg(&verb::PROT, "P")?)
                .await?;
        }
        let feat = conn.command(Command::new(&verb::FEAT)).await?;
        conn.features = Features::from_reply(&feat);
        if conn.features.mfmt {
            conn.time_setting = TimeSetting::Mfmt;
        }
        if conn.features.utf8 {
            // Servers that announce UTF8 may still want it switched on; a refusal is harmless.
            let reply = conn
                .command(Command::with_arg(&verb::OPTS, "UTF8 ON")?)
                .await?;
            tracing::debug!(conn = id, %reply, "OPTS UTF8 ON");
        }
        conn.expect_success(Command::with_arg(&verb::TYPE, "I")?)
            .await?;
        let tls = conn.tls_summary();
        tracing::debug!(conn = id, tls = ?tls, "control connection ready");
        if let Some(tls) = tls {
            conn.activity.set_tls(tls.version);
        }
        conn.activity.set_step("idle");
        Ok(conn)
    }

    /// Reads the greeting of a connection that starts in plain text (`ftp://`). A port
    /// that stays silent may be an implicit-TLS one waiting for the client's ClientHello:
    /// after [`QUIET_BEFORE_TLS_PROBE`] a second connection tries a TLS handshake there,
    /// and if the port answers it, the error says to use `ftps://` instead of waiting for
    /// the whole timeout.
    async fn read_greeting_or_spot_implicit_tls(&mut self) -> Result<Reply, FtpError> {
        let quiet = QUIET_BEFORE_TLS_PROBE.min(self.options.timeouts.reply);
        let silent = match &self.transport {
            Some(Transport::Plain(tcp)) => {
                tokio::time::timeout(quiet, tcp.readable()).await.is_err()
            }
            _ => false,
        };
        if silent && self.port_speaks_tls().await {
            self.mark_broken();
            return Err(FtpError::Protocol {
                step: "reading the server greeting".into(),
                detail: format!(
                    "no greeting after {} s, and the port answers a TLS handshake: this looks \
                     like an implicit TLS port; use an ftps:// URL",
                    quiet.as_secs_f32()
                ),
            });
        }
        self.read_greeting().await
    }

    /// Whether the control port answers a TLS ClientHello on a connection of its own.
    async fn port_speaks_tls(&self) -> bool {
        let Some((config, _)) = &self.session else {
            return false;
        };
        let limit = QUIET_BEFORE_TLS_PROBE.min(self.options.timeouts.handshake);
        let Ok(Ok(tcp)) = tokio::time::timeout(
            limit,
            dial(
                self.options.proxy.as_ref(),
                &self.options.host,
                self.options.port,
                limit,
            ),
        )
        .await
        else {
            return false;
        };
        match tls_handshake(
            tcp,
            config.clone(),
            self.server_name.clone(),
            limit,
            "a probe",
        )
        .await
        {
            Ok(_) => true,
            // A certificate or an alert came back: the port speaks TLS.
            Err(FtpError::Tls { source, .. }) => {
                source.kind() == io::ErrorKind::InvalidData
                    && !source.to_string().contains("corrupt message")
            }
            Err(_) => false,
        }
    }

    async fn read_greeting(&mut self) -> Result<Reply, FtpError> {
        loop {
            let reply = self.read_reply("reading the server greeting").await?;
            match reply.code {
                // 120: "service ready in nnn minutes"; the real greeting follows.
                120 => continue,
                220 => return Ok(reply),
                _ => {
                    self.mark_broken();
                    return Err(FtpError::Rejected {
                        command: "connect (greeting)".into(),
                        reply,
                    });
                }
            }
        }
    }

    async fn start_tls(&mut self) -> Result<(), FtpError> {
        let reply = self.command(Command::with_arg(&verb::AUTH, "TLS")?).await?;
        if reply.code != 234 {
            // Never fall back to plain text: that would send the password in the clear.
            self.mark_broken();
            return Err(FtpError::Rejected {
                command:
                    "AUTH TLS (the server refused TLS; ftpsfs does not fall back to plain FTP)"
                        .into(),
                reply,
            });
        }
        if !self.read_buffer.is_empty() {
            self.mark_broken();
            return Err(FtpError::Protocol {
                step: "AUTH TLS".into(),
                detail: "server sent data after 234, before the TLS handshake".into(),
            });
        }
        let (config, _) = self.session.clone().ok_or_else(|| {
            FtpError::TlsConfig("explicit TLS without a TLS configuration".into())
        })?;
        let Some(Transport::Plain(tcp)) = self.transport.take() else {
            self.mark_broken();
            return Err(FtpError::Protocol {
                step: "AUTH TLS".into(),
                detail: "control connection already secured".into(),
            });
        };
        let tls = tls_handshake(
            tcp,
            config,
            self.server_name.clone(),
            self.options.timeouts.handshake,
            "the control connection",
        )
        .await;
        match tls {
            Ok(stream) => {
                self.transport = Some(Transport::Tls(Box::new(stream)));
                Ok(())
            }
            Err(e) => {
                self.mark_broken();
                Err(e)
            }
        }
    }

    async fn login(&mut self) -> Result<(), FtpError> {
        let user = Command::with_arg(&verb::USER, &self.options.user)?;
        let reply = self.command(user).await?;
        let reply = match reply.code {
            230 => return Ok(()),
            331 | 332 => {
                let pass = Command::with_arg(&verb::PASS, self.options.password.expose()).map_err(
                    |_| FtpError::Protocol {
                        step: "login".into(),
                        detail: "the password contains a CR, LF or NUL byte".into(),
                    },
                )?;
                self.command(pass).await?
            }
            _ => reply,
        };
        match reply.code {
            230 | 202 => Ok(()),
            _ => Err(FtpError::Rejected {
                command: format!("login as {:?}", self.options.user),
                reply,
            }),
        }
    }

    /// A number identifying this connection in logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's 220 greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The server's FEAT capabilities.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// TLS version and cipher of the control connection (None for plain FTP).
    pub fn tls_summary(&self) -> Option<TlsSummary> {
        self.transport.as_ref()?.tls().map(summarize)
    }

    /// TLS 1.3 tickets this connection holds for its next data connections.
    pub fn tickets_held(&self) -> usize {
        self.session
            .as_ref()
            .map_or(0, |(_, store)| store.tickets_held())
    }

    /// True when the server issued TLS session tickets to this connection and none is
    /// left, so that a data connection opened now could not resume.
    pub fn out_of_tickets(&self) -> bool {
        let Some((_, store)) = &self.session else {
            return false;
        };
        self.options.resume_data_sessions && store.ever_issued() && !store.can_resume()
    }

    /// True when the next data connection will find no ticket: none is left, and this
    /// server does not send one at each EPSV/PASV (FileZilla Server does). The pool
    /// replaces such a connection before it is needed.
    pub fn will_run_dry(&self) -> bool {
        self.out_of_tickets() && !self.tickets_at_passive
    }

    /// TLS 1.3 tickets this connection has received so far.
    fn tickets_received(&self) -> u64 {
        self.session
            .as_ref()
            .map_or(0, |(_, store)| store.tickets_received())
    }

    /// Data connections opened so far.
    pub fn data_connections(&self) -> u64 {
        self.data_connections
    }

    /// True when an error left the connection unusable; the pool then drops it.
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken)
    }

    /// True when the server hung up while the connection sat idle (vsftpd does after
    /// some refusals, any server at its idle timeout): lending it would send the next
    /// command into a closed socket, and a change could not be confirmed.
    pub fn server_hung_up(&self) -> bool {
        self.transport.as_ref().is_none_or(Transport::peer_closed)
    }

    /// Whether the connection can serve again, after its owed replies, or must be closed.
    pub fn standing(&self) -> Standing {
        match self.state {
            State::Ready => Standing::Ready,
            State::Owes(_) => Standing::OwesReplies,
            State::Exchange | State::Transfer { .. } | State::Broken => Standing::Unusable,
        }
    }

    /// Whether a command that changes the server went out since [`Self::begin_operation`]:
    /// then the operation may not be retried on a fresh connection.
    pub fn sent_mutation(&self) -> bool {
        self.sent_mutation
    }

    /// Starts counting the commands of a new operation (see [`Self::sent_mutation`]).
    pub fn begin_operation(&mut self) {
        self.sent_mutation = false;
    }

    /// Marks the connection unusable for good.
    fn mark_broken(&mut self) {
        self.state = State::Broken;
    }

    /// Moves to `next`, unless the connection is already broken (which nothing undoes).
    fn enter(&mut self, next: State) {
        if !self.is_broken() {
            self.state = next;
        }
    }

    /// What the connection is doing, for live statistics.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Time since the connection was last used.
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// The kernel's round-trip estimate for the control connection's TCP socket.
    pub fn round_trip(&self) -> Option<Duration> {
        self.transport.as_ref()?.round_trip()
    }

    /// The address of the other end of the control connection: the server, or the
    /// proxy when there is one.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// This side's address on the control connection (where active mode listens unless
    /// told another).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The host data connections go to: the control connection's peer (what the user
    /// chose to reach, never an address a reply names), or through a proxy, the
    /// server's name for the proxy to resolve.
    fn data_host(&self) -> String {
        match &self.options.proxy {
            Some(_) => self.options.host.clone(),
            None => self.peer.ip().to_string(),
        }
    }

    pub(super) fn transport(&mut self) -> Result<&mut Transport, FtpError> {
        self.transport.as_mut().ok_or_else(|| FtpError::Closed {
            step: "using a closed connection".into(),
        })
    }

    /// Says goodbye (QUIT) and closes; errors are ignored, the connection is going anyway.
    pub async fn quit(mut self) {
        if !matches!(self.state, State::Broken | State::Transfer { .. }) {
            let limit = Duration::from_secs(2).min(self.options.timeouts.reply);
            let _ = tokio::time::timeout(limit, async {
                let _ = self.send(&Command::new(&verb::QUIT)).await;
                let _ = self.read_reply("QUIT").await;
            })
            .await;
        }
        if let Some(mut transport) = self.transport.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.shutdown()).await;
        }
    }
}

/// How long a plain-text control connection may stay silent before a probe checks whether
/// the port is an implicit-TLS one (a real greeting takes milliseconds).
const QUIET_BEFORE_TLS_PROBE: Duration = Duration::from_secs(2);

/// The error of a login that the server ended with an alert after it asked for a client
/// certificate and got none: said as such, with the options that give one.
fn certificate_hint(error: FtpError, answer: &CertificateAnswer) -> FtpError {
    let FtpError::Tls { step, source } = &error else {
        return error;
    };
    let alert = match super::error::received_alert(source) {
        Some(alert) if answer.was_asked() && answer.identity_file().is_none() => alert,
        _ => return error,
    };
    FtpError::Protocol {
        step: format!("the TLS session of {step}"),
        detail: format!(
            "the server asked for a client certificate, none was given, and it ended the \
             session ({alert:?}): give one with client_cert=FILE (and client_key=FILE unless \
             that file holds the key too)"
        ),
    }
}

/// The error of an implicit-TLS handshake with a port that answered in plain text (an
/// FTP greeting where a ServerHello belongs): says to use `ftp://`.
fn plain_text_hint(error: FtpError) -> FtpError {
    match &error {
        FtpError::Tls { source, .. } if source.to_string().contains("InvalidContentType") => {
            FtpError::Protocol {
                step: "the TLS handshake of the control connection".into(),
                detail: "the server sent plain text where TLS was expected: this port speaks \
                         plain FTP first; use an ftp:// URL (explicit TLS with AUTH TLS)"
                    .into(),
            }
        }
        _ => error,
    }
}

/// An I/O error as the FTP layer reports it: TLS record errors apart from socket errors.
fn io_error(step: &str, source: io::Error) -> FtpError {
    if source.kind() == io::ErrorKind::InvalidData {
        FtpError::Tls {
            step: step.to_string(),
            source,
        }
    } else {
        FtpError::Io {
            step: step.to_string(),
            source,
        }
    }
}
