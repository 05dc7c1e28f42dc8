//! One logged-in control connection and the data connections it opens.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{FtpError, Redacted};
use super::features::Features;
use super::listing::{self, Entry, Listing, ListingFormat, Timestamp};
use super::options::{ConnectOptions, Security, Timeouts};
use super::passive;
use super::reply::{Reply, ReplyParser, MAX_LINE_BYTES};
use super::tls::{
    certificate_fingerprint, format_fingerprint, non_resuming_config, per_connection_config,
    SessionStore, TlsStats,
};
use super::transport::{connect_tcp, display_addr, tls_handshake, within, Transport};

/// Largest listing body accepted; bounds memory against a hostile or broken server.
pub const MAX_LISTING_BYTES: usize = 256 * 1024 * 1024;

/// How long to wait for a refused data connection's handshake to settle, to report it.
const REJECTED_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// Most replies skipped while resynchronising after ABOR (426, 226/225, stray 226).
const MAX_REPLIES_AFTER_ABORT: usize = 8;

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
    /// This connection's own TLS config and session store (None for plain FTP).
    session: Option<(Arc<ClientConfig>, Arc<SessionStore>)>,
    stats: Arc<TlsStats>,
    greeting: Reply,
    features: Features,
    epsv_refused: bool,
    data_connections: u64,
    transfer_open: bool,
    /// A final transfer reply that arrived before the data was read (226 without 150).
    early_final_reply: Option<Reply>,
    /// Replies still to be read before the next command (see [`Self::abort_data`] and
    /// [`Self::finish_complete_data`]).
    pending: PendingReplies,
    /// A command was sent (or owed replies are being read) and its replies are not all
    /// read yet: if the operation is cancelled now, the connection cannot be reused.
    exchange_open: bool,
    broken: bool,
    last_used: Instant,
}

impl ControlConnection {
    /// Connects, secures, logs in and prepares the connection for binary transfers.
    pub async fn connect(
        options: Arc<ConnectOptions>,
        stats: Arc<TlsStats>,
    ) -> Result<Self, FtpError> {
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let addr = display_addr(&options.host, options.port);
        tracing::debug!(conn = id, %addr, security = ?options.security, "connecting");
        let tcp = connect_tcp(&options.host, options.port, options.timeouts.connect).await?;
        let peer = tcp.peer_addr().map_err(|source| FtpError::Io {
            step: "reading the control connection's peer address".into(),
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
                .await?,
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
            session,
            stats,
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
            features: Features::default(),
            epsv_refused: false,
            data_connections: 0,
            transfer_open: false,
            early_final_reply: None,
            pending: PendingReplies::None,
            exchange_open: false,
            broken: false,
            last_used: Instant::now(),
        };
        conn.greeting = conn.read_greeting().await?;
        if conn.options.security == Security::ExplicitTls {
            conn.start_tls().await?;
        }
        conn.login().await?;
        if conn.session.is_some() {
            conn.expect_success("PBSZ 0").await?;
            conn.expect_success("PROT P").await?;
        }
        let feat = conn.command("FEAT").await?;
        conn.features = Features::from_reply(&feat);
        if conn.features.utf8 {
            // Servers that announce UTF8 may still want it switched on; a refusal is harmless.
            let reply = conn.command("OPTS UTF8 ON").await?;
            tracing::debug!(conn = id, %reply, "OPTS UTF8 ON");
        }
        conn.expect_success("TYPE I").await?;
        tracing::debug!(conn = id, tls = ?conn.tls_summary(), "control connection ready");
        Ok(conn)
    }

    async fn read_greeting(&mut self) -> Result<Reply, FtpError> {
        loop {
            let reply = self.read_reply("reading the server greeting").await?;
            match reply.code {
                // 120: "service ready in nnn minutes"; the real greeting follows.
                120 => continue,
                220 => return Ok(reply),
                _ => {
                    self.broken = true;
                    return Err(FtpError::Rejected {
                        command: "connect (greeting)".into(),
                        reply,
                    });
                }
            }
        }
    }

    async fn start_tls(&mut self) -> Result<(), FtpError> {
        let reply = self.command("AUTH TLS").await?;
        if reply.code != 234 {
            // Never fall back to plain text: that would send the password in the clear.
            self.broken = true;
            return Err(FtpError::Rejected {
                command:
                    "AUTH TLS (the server refused TLS; ftpsfs does not fall back to plain FTP)"
                        .into(),
                reply,
            });
        }
        if !self.read_buffer.is_empty() {
            self.broken = true;
            return Err(FtpError::Protocol {
                step: "AUTH TLS".into(),
                detail: "server sent data after 234, before the TLS handshake".into(),
            });
        }
        let (config, _) = self.session.clone().ok_or_else(|| {
            FtpError::TlsConfig("explicit TLS without a TLS configuration".into())
        })?;
        let Some(Transport::Plain(tcp)) = self.transport.take() else {
            self.broken = true;
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
                self.broken = true;
                Err(e)
            }
        }
    }

    async fn login(&mut self) -> Result<(), FtpError> {
        let user = format!("USER {}", self.options.user);
        check_command_text(&user)?;
        let reply = self.command(&user).await?;
        let reply = match reply.code {
            230 => return Ok(()),
            331 | 332 => {
                let pass = format!("PASS {}", self.options.password.expose());
                check_command_text(&pass).map_err(|_| FtpError::Protocol {
                    step: "login".into(),
                    detail: "the password contains a CR, LF or NUL byte".into(),
                })?;
                self.command(&pass).await?
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

    /// Data connections opened so far.
    pub fn data_connections(&self) -> u64 {
        self.data_connections
    }

    /// True when an error left the connection unusable; the pool then drops it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// True while a data transfer started here has not been finished or aborted.
    pub fn transfer_open(&self) -> bool {
        self.transfer_open
    }

    /// Time since the connection was last used.
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// The address of the server's end of the control connection.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn transport(&mut self) -> Result<&mut Transport, FtpError> {
        self.transport.as_mut().ok_or_else(|| FtpError::Closed {
            step: "using a closed connection".into(),
        })
    }

    async fn read_line(&mut self, step: &str) -> Result<Vec<u8>, FtpError> {
        loop {
            if let Some(end) = self.read_buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.read_buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.read_buffer.len() > MAX_LINE_BYTES {
                return Err(FtpError::Protocol {
                    step: step.to_string(),
                    detail: format!("reply line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .transport()?
                .read(&mut chunk)
                .await
                .map_err(|e| io_error(step, e))?;
            if n == 0 {
                return Err(FtpError::Closed {
                    step: step.to_string(),
                });
            }
            self.read_buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn read_reply(&mut self, step: &str) -> Result<Reply, FtpError> {
        let limit = self.options.timeouts.reply;
        let id = self.id;
        let result = within(limit, || format!("waiting for the reply ({step})"), async {
            let mut parser = ReplyParser::default();
            loop {
                let line = self.read_line(step).await?;
                match parser.push_line(&line) {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(detail) => {
                        return Err(FtpError::Protocol {
                            step: step.to_string(),
                            detail,
                        })
                    }
                }
            }
        })
        .await;
        match &result {
            Ok(reply) => {
                tracing::debug!(conn = id, "<- {reply}");
                if reply.code == 421 {
                    // 421: the server is closing this connection (too many users, idle, shutdown).
                    self.broken = true;
                }
            }
            Err(_) => self.broken = true,
        }
        self.last_used = Instant::now();
        result
    }

    async fn send(&mut self, command: &[u8]) -> Result<(), FtpError> {
        self.send_all(&[command]).await
    }

    /// Whether replies to an earlier transfer's end are still to be read.
    pub fn owes_replies(&self) -> bool {
        !matches!(self.pending, PendingReplies::None)
    }

    /// Whether the connection is in the middle of an exchange (a command sent, its
    /// replies not all read): an operation was cancelled there, and the replies still
    /// to come would be taken for the next command's.
    pub fn mid_exchange(&self) -> bool {
        self.exchange_open
    }

    /// Reads the replies owed (see [`Self::owes_replies`]); every command does this first.
    pub async fn settle(&mut self) -> Result<(), FtpError> {
        let pending = std::mem::replace(&mut self.pending, PendingReplies::None);
        if matches!(pending, PendingReplies::None) {
            return Ok(());
        }
        self.exchange_open = true;
        match pending {
            PendingReplies::None => {}
            PendingReplies::Abort => self.read_abort_replies().await?,
            PendingReplies::FinalReply { number, command } => {
                let reply = self.read_reply(&format!("end of {command}")).await?;
                self.check_final_reply_of_complete_data(number, reply);
            }
        }
        if self.broken {
            // A 421 as the owed reply: the server is closing the connection.
            return Err(FtpError::Closed {
                step: "reading the end of the previous transfer".into(),
            });
        }
        self.exchange_open = false;
        Ok(())
    }

    /// Sends `commands` in one write (pipelined): the server answers them in order.
    async fn send_all(&mut self, commands: &[&[u8]]) -> Result<(), FtpError> {
        self.settle().await?;
        self.exchange_open = true;
        let mut line = Vec::new();
        for command in commands {
            let text = String::from_utf8_lossy(command);
            tracing::debug!(conn = self.id, "-> {}", Redacted(&text));
            line.extend_from_slice(command);
            line.extend_from_slice(b"\r\n");
        }
        let first = commands.first().copied().unwrap_or_default();
        let limit = self.options.timeouts.reply;
        let result = within(
            limit,
            || format!("sending {}", command_verb(first)),
            async {
                let transport = self.transport()?;
                transport
                    .write_all(&line)
                    .await
                    .map_err(|e| io_error("sending a command", e))?;
                transport
                    .flush()
                    .await
                    .map_err(|e| io_error("sending a command", e))
            },
        )
        .await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Sends a command and returns the server's reply, whatever its code.
    pub async fn command(&mut self, command: &str) -> Result<Reply, FtpError> {
        self.command_bytes(command.as_bytes()).await
    }

    async fn command_bytes(&mut self, command: &[u8]) -> Result<Reply, FtpError> {
        let [reply] = self.pipeline([command]).await?;
        Ok(reply)
    }

    /// Sends a command and fails unless the reply is 2xx.
    pub async fn expect_success(&mut self, command: &str) -> Result<Reply, FtpError> {
        let reply = self.command(command).await?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(FtpError::Rejected {
                command: Redacted(command).to_string(),
                reply,
            })
        }
    }

    /// NOOP: proves the connection is alive and keeps idle-timeouts at bay.
    pub async fn noop(&mut self) -> Result<(), FtpError> {
        self.expect_success("NOOP").await.map(|_| ())
    }

    /// The size of a file in bytes (SIZE, RFC 3659).
    pub async fn size(&mut self, path: &[u8]) -> Result<u64, FtpError> {
        let reply = self.path_command("SIZE", path, 213).await?;
        reply
            .first_line()
            .parse::<u64>()
            .map_err(|_| FtpError::Protocol {
                step: "SIZE".into(),
                detail: format!("not a size: {reply}"),
            })
    }

    /// The modification time of a file (MDTM, RFC 3659), UTC.
    pub async fn modified(&mut self, path: &[u8]) -> Result<Timestamp, FtpError> {
        let reply = self.path_command("MDTM", path, 213).await?;
        let fact = format!("modify={};type=file; x", reply.first_line());
        listing::parse_mlsd_line(fact.as_bytes())
            .ok()
            .flatten()
            .and_then(|entry| entry.modified)
            .ok_or_else(|| FtpError::Protocol {
                step: "MDTM".into(),
                detail: format!("not a time: {reply}"),
            })
    }

    /// The facts of one file or directory (MLST, RFC 3659).
    pub async fn stat(&mut self, path: &[u8]) -> Result<Entry, FtpError> {
        let reply = self.path_command("MLST", path, 250).await?;
        // The entry is the line that starts with a space, between the 250- and 250 lines.
        reply
            .lines
            .iter()
            .skip(1)
            .filter_map(|line| line.strip_prefix(' '))
            .find_map(|facts| listing::parse_mlsd_line(facts.as_bytes()).ok().flatten())
            .ok_or_else(|| FtpError::Protocol {
                step: "MLST".into(),
                detail: format!("no entry in reply: {reply}"),
            })
    }

    async fn path_command(
        &mut self,
        verb: &str,
        path: &[u8],
        expected: u16,
    ) -> Result<Reply, FtpError> {
        let command = path_command(verb, path)?;
        let reply = self.command_bytes(&command).await?;
        if reply.code == expected {
            Ok(reply)
        } else {
            Err(FtpError::Rejected {
                command: String::from_utf8_lossy(&command).into_owned(),
                reply,
            })
        }
    }

    /// Lists a directory: MLSD when the server has it, else `LIST -a` (vsftpd has no MLSD).
    pub async fn list(&mut self, path: &[u8]) -> Result<Listing, FtpError> {
        let format = if self.features.mlsd {
            ListingFormat::Mlsd
        } else {
            ListingFormat::List
        };
        self.list_as(path, format).await
    }

    /// Lists a directory in the given format: `LIST -a` shows symlink targets, MLSD does not.
    pub async fn list_as(
        &mut self,
        path: &[u8],
        format: ListingFormat,
    ) -> Result<Listing, FtpError> {
        let verb = match format {
            ListingFormat::Mlsd => "MLSD",
            ListingFormat::List => "LIST -a",
        };
        let command = if path.is_empty() {
            verb.as_bytes().to_vec()
        } else {
            path_command(verb, path)?
        };
        let body = self.read_to_end(&command, MAX_LISTING_BYTES).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let listing = listing::parse_listing(&body, format, now);
        tracing::debug!(
            conn = self.id,
            entries = listing.entries.len(),
            skipped = listing.skipped.len(),
            bytes = body.len(),
            "listing parsed"
        );
        Ok(listing)
    }

    /// Runs a data command and returns everything the server sends (at most `max` bytes).
    pub async fn read_to_end(&mut self, command: &[u8], max: usize) -> Result<Vec<u8>, FtpError> {
        let mut data = self.open_data(command, 0).await?;
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match data.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            if body.len() + n > max {
                self.abort_data(data).await?;
                return Err(FtpError::Protocol {
                    step: String::from_utf8_lossy(command).into_owned(),
                    detail: format!("more than {max} bytes of data"),
                });
            }
            body.extend_from_slice(&chunk[..n]);
        }
        self.finish_data(data).await?;
        Ok(body)
    }

    /// Starts downloading `path` from byte `offset` (REST + RETR); read it from the returned stream.
    pub async fn retrieve(&mut self, path: &[u8], offset: u64) -> Result<DataConnection, FtpError> {
        let command = path_command("RETR", path)?;
        self.open_data(&command, offset).await
    }

    /// Opens a passive data connection for `command`, resuming this connection's TLS session.
    ///
    /// The command is sent while the TLS handshake runs: vsftpd sends 150 before its TLS
    /// accept, other servers accept first, and either order must work.
    pub async fn open_data(
        &mut self,
        command: &[u8],
        offset: u64,
    ) -> Result<DataConnection, FtpError> {
        if self.broken {
            return Err(FtpError::Closed {
                step: "opening a data connection on a broken connection".into(),
            });
        }
        let target = self.passive_address_and_offset(offset).await?;
        self.check_ticket_supply()?;
        let data_config = self.data_tls_config();
        let number = self.data_connections + 1;
        self.data_connections = number;
        let step = format!("data connection {number}");
        // The command goes out while the data connection is being made: servers wait for
        // the connection after the command, and the round trips overlap.
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let handshake = PendingData(tokio::spawn(connect_data(
            target,
            self.options.timeouts,
            data_config.map(|config| (config, self.server_name.clone())),
            step.clone(),
            connected_tx,
        )));
        if let Err(e) = self.send(command).await {
            handshake.abandon();
            return Err(e);
        }
        if connected.await != Ok(true) {
            let connect_error = handshake.connect_error(&step).await;
            // The server may have refused the command (550) and closed its passive port
            // before the connection came: then its reply is the answer, and the
            // connection stays usable. Otherwise the server waits for a connection that
            // will not come, and its state is unknown.
            let reply = tokio::time::timeout(
                REJECTED_HANDSHAKE_GRACE,
                self.read_reply(&command_verb(command)),
            )
            .await;
            return Err(match reply {
                Ok(Ok(reply))
                    if !(reply.is_preliminary()
                        || reply.is_success()
                        || is_data_connection_failure(&reply)
                        || self.broken) =>
                {
                    self.exchange_open = false;
                    FtpError::Rejected {
                        command: String::from_utf8_lossy(command).into_owned(),
                        reply,
                    }
                }
                _ => {
                    self.broken = true;
                    connect_error
                }
            });
        }
        let reply = match self.read_reply(&command_verb(command)).await {
            Ok(reply) => reply,
            Err(e) => {
                handshake.abandon();
                return Err(e);
            }
        };
        if !(reply.is_preliminary() || reply.is_success()) {
            let error = self.refused_data(command, number, reply, handshake).await;
            self.exchange_open = false;
            return Err(error);
        }
        let transport = match handshake.0.await {
            Ok(Ok(transport)) => transport,
            Ok(Err(handshake_error)) => {
                // A server that refuses the session aborts the handshake and says why
                // on the control connection; its words are the useful diagnosis.
                self.broken = true;
                return Err(
                    match self.read_reply("after a failed data handshake").await {
                        Ok(reply) if !reply.is_success() => FtpError::DataRejected {
                            number,
                            reply,
                            resumed: None,
                        },
                        _ => handshake_error,
                    },
                );
            }
            Err(join_error) => {
                self.broken = true;
                return Err(FtpError::Protocol {
                    step,
                    detail: format!("TLS handshake task failed: {join_error}"),
                });
            }
        };
        let resumed = transport
            .tls()
            .map(|tls| tls.handshake_kind() == Some(HandshakeKind::Resumed));
        match resumed {
            Some(true) => self.stats.data_resumed.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.stats.data_full.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        tracing::debug!(
            conn = self.id,
            data = number,
            resumed = ?resumed,
            tls = ?transport.tls().map(summarize),
            tickets_left = self.tickets_held(),
            command = %String::from_utf8_lossy(command),
            "data connection open"
        );
        if reply.is_success() {
            self.early_final_reply = Some(reply);
        }
        self.transfer_open = true;
        self.exchange_open = false;
        Ok(DataConnection {
            transport,
            number,
            resumed,
            command: command_verb(command),
            idle_limit: self.options.timeouts.data_idle,
            eof: false,
            close_notify: false,
            received: 0,
        })
    }

    /// The TLS config for this connection's data connections (None for plain FTP).
    fn data_tls_config(&self) -> Option<Arc<ClientConfig>> {
        let (config, _) = self.session.as_ref()?;
        if self.options.resume_data_sessions {
            Some(config.clone())
        } else {
            Some(non_resuming_config(&self.options.tls))
        }
    }

    /// The ticket policy: a connection whose server issued tickets but has none left is retired.
    ///
    /// rustls offers each TLS 1.3 ticket once. Servers send a fresh ticket on every resumed
    /// data connection the client reads (vsftpd, ProFTPD) or on the control connection at
    /// each PASV/EPSV (FileZilla Server), so downloads and listings keep the supply up.
    /// Uploads read nothing back and get no ticket; when the supply is gone, a full
    /// handshake would be refused (vsftpd then drops the control connection), so the
    /// connection is replaced by a fresh one with fresh tickets instead. A server that never
    /// issued anything (Pure-FTPd on TLS 1.3) cannot demand resumption: a full handshake it is.
    fn check_ticket_supply(&mut self) -> Result<(), FtpError> {
        let Some((_, store)) = &self.session else {
            return Ok(());
        };
        if !self.options.resume_data_sessions || store.can_resume() || !store.ever_issued() {
            return Ok(());
        }
        tracing::debug!(
            conn = self.id,
            "no TLS session ticket left; retiring this control connection"
        );
        self.stats
            .replaced_for_tickets
            .fetch_add(1, Ordering::Relaxed);
        self.broken = true;
        Err(FtpError::TicketsExhausted)
    }

    /// Builds the error for a data command the server answered with a failure code.
    async fn refused_data(
        &mut self,
        command: &[u8],
        number: u64,
        reply: Reply,
        handshake: PendingData,
    ) -> FtpError {
        if !is_data_connection_failure(&reply) {
            handshake.abandon();
            return FtpError::Rejected {
                command: String::from_utf8_lossy(command).into_owned(),
                reply,
            };
        }
        let resumed = match tokio::time::timeout(REJECTED_HANDSHAKE_GRACE, handshake.0).await {
            Ok(Ok(Ok(transport))) => transport
                .tls()
                .map(|tls| tls.handshake_kind() == Some(HandshakeKind::Resumed)),
            _ => None,
        };
        if resumed == Some(false) {
            self.stats.data_full.fetch_add(1, Ordering::Relaxed);
        }
        self.broken = true;
        FtpError::DataRejected {
            number,
            reply,
            resumed,
        }
    }

    /// The data connection's address, with the server told to start at `offset`.
    ///
    /// EPSV and REST go out together (one round trip instead of two) once EPSV is known to
    /// work; after a refused EPSV, REST follows PASV on its own so that it comes right
    /// before the transfer command, as RFC 959 asks.
    async fn passive_address_and_offset(&mut self, offset: u64) -> Result<SocketAddr, FtpError> {
        let rest = format!("REST {offset}");
        let check_rest = |reply: Reply| {
            if reply.code == 350 {
                Ok(())
            } else {
                Err(FtpError::Rejected {
                    command: rest.clone(),
                    reply,
                })
            }
        };
        if offset > 0 && !self.epsv_refused {
            let [epsv, rest_reply] = self.pipeline([b"EPSV".as_slice(), rest.as_bytes()]).await?;
            let rest_result = check_rest(rest_reply);
            // Once REST is accepted, the server starts the next transfer at `offset`
            // whatever it is: a connection left so must never serve another transfer.
            let rest_set = rest_result.is_ok();
            match self.epsv_target(epsv) {
                Ok(Some(target)) => {
                    rest_result?;
                    return Ok(target);
                }
                Ok(None) => {}
                Err(e) => {
                    self.broken |= rest_set;
                    return Err(e);
                }
            }
            if rest_set {
                let result = self.passive_address().await;
                self.broken |= result.is_err();
                return result;
            }
        }
        let target = self.passive_address().await?;
        if offset > 0 {
            let reply = self.command(&rest).await?;
            check_rest(reply)?;
        }
        Ok(target)
    }

    /// Sends `commands` together and reads their replies, failing on the first 421.
    async fn pipeline<const N: usize>(
        &mut self,
        commands: [&[u8]; N],
    ) -> Result<[Reply; N], FtpError> {
        if self.transfer_open {
            return Err(FtpError::Protocol {
                step: command_verb(commands[0]),
                detail: "a transfer is still open on this connection".into(),
            });
        }
        self.send_all(&commands).await?;
        let mut replies = Vec::with_capacity(N);
        for command in commands {
            let reply = self.read_reply(&command_verb(command)).await?;
            if reply.code == 421 {
                // The server is closing the connection (and replies to the rest of the
                // commands sent will never be read).
                self.broken = true;
                return Err(FtpError::Rejected {
                    command: Redacted(&String::from_utf8_lossy(command)).to_string(),
                    reply,
                });
            }
            replies.push(reply);
        }
        self.exchange_open = false;
        Ok(replies
            .try_into()
            .unwrap_or_else(|_| unreachable!("one reply per command")))
    }

    /// The address in a reply to EPSV, or None when the server does not do EPSV.
    fn epsv_target(&mut self, reply: Reply) -> Result<Option<SocketAddr>, FtpError> {
        if reply.code == 229 {
            let port = passive::parse_epsv(&reply.text()).map_err(|detail| {
                self.broken = true;
                FtpError::Protocol {
                    step: "EPSV".into(),
                    detail,
                }
            })?;
            return Ok(Some(SocketAddr::new(self.peer.ip(), port)));
        }
        if !(500..=504).contains(&reply.code) {
            return Err(FtpError::Rejected {
                command: "EPSV".into(),
                reply,
            });
        }
        tracing::debug!(conn = self.id, %reply, "EPSV refused; using PASV from now on");
        self.epsv_refused = true;
        Ok(None)
    }

    async fn passive_address(&mut self) -> Result<SocketAddr, FtpError> {
        if !self.epsv_refused {
            let reply = self.command("EPSV").await?;
            if let Some(target) = self.epsv_target(reply)? {
                return Ok(target);
            }
        }
        if self.peer.is_ipv6() {
            return Err(FtpError::Protocol {
                step: "PASV".into(),
                detail: "the server refused EPSV, and PASV cannot express an IPv6 address".into(),
            });
        }
        let reply = self.command("PASV").await?;
        if reply.code != 227 {
            return Err(FtpError::Rejected {
                command: "PASV".into(),
                reply,
            });
        }
        let (announced, port) = passive::parse_pasv(&reply.text()).map_err(|detail| {
            self.broken = true;
            FtpError::Protocol {
                step: "PASV".into(),
                detail,
            }
        })?;
        let ip = if self.options.trust_pasv_address {
            IpAddr::V4(announced)
        } else {
            // The 227 address is often private behind NAT, and obeying it lets a server
            // aim us at any host (FTP bounce); the control peer is the server we chose.
            if IpAddr::V4(announced) != self.peer.ip() {
                tracing::debug!(conn = self.id, %announced, peer = %self.peer.ip(), "ignoring the address in the 227 reply; connecting to the control peer");
            }
            self.peer.ip()
        };
        Ok(SocketAddr::new(ip, port))
    }

    /// Ends a transfer whose data was read to the end: close_notify, then the final reply.
    ///
    /// vsftpd holds the 226 until the client's close_notify arrives, so the shutdown must
    /// come first. A 426/451 after data that ended with close_notify keeps the data.
    pub async fn finish_data(&mut self, data: DataConnection) -> Result<(), FtpError> {
        let DataConnection {
            mut transport,
            number,
            resumed,
            command,
            eof,
            close_notify,
            received,
            ..
        } = data;
        let _ = tokio::time::timeout(self.options.timeouts.handshake, transport.shutdown()).await;
        drop(transport);
        self.transfer_open = false;
        self.exchange_open = true;
        let reply = match self.early_final_reply.take() {
            Some(reply) => reply,
            None => self.read_reply(&format!("end of {command}")).await?,
        };
        self.exchange_open = false;
        tracing::debug!(
            conn = self.id,
            data = number,
            received,
            close_notify,
            "transfer finished: {reply}"
        );
        if eof && !close_notify && self.session.is_some() {
            // Without close_notify, a cut in the TCP stream (a reset, or an attacker's FIN)
            // looks like the end; even a genuine 226 cannot vouch for bytes lost in transit.
            return Err(FtpError::Protocol {
                step: format!("data connection {number} ({command})"),
                detail: format!("ended without TLS close_notify after {received} bytes; the data may be cut off (server then said: {reply})"),
            });
        }
        if reply.is_success() {
            return Ok(());
        }
        if eof && close_notify && matches!(reply.code, 426 | 451) {
            self.check_final_reply_of_complete_data(number, reply);
            return Ok(());
        }
        if is_data_connection_failure(&reply) {
            self.broken = true;
            return Err(FtpError::DataRejected {
                number,
                reply,
                resumed,
            });
        }
        Err(FtpError::Rejected { command, reply })
    }

    /// Abandons a transfer: closes the data connection and sends ABOR.
    ///
    /// Servers answer ABOR with 426 then 226, or 226/225 alone, and some answer nothing
    /// until the failed write is noticed; a NOOP after ABOR marks the end of that noise.
    /// Those replies are read before the next command, not here: the caller has its data
    /// a round trip sooner, and by the next command they have usually arrived.
    pub async fn abort_data(&mut self, data: DataConnection) -> Result<(), FtpError> {
        let number = data.number;
        drop(data);
        self.transfer_open = false;
        self.early_final_reply = None;
        // Two writes, not one: Pure-FTPd, reading ABOR in the middle of a transfer,
        // sometimes loses a NOOP that arrived in the same segment.
        self.send(b"ABOR").await?;
        self.send(b"NOOP").await?;
        tracing::debug!(conn = self.id, data = number, "transfer aborted");
        self.pending = PendingReplies::Abort;
        self.exchange_open = false;
        Ok(())
    }

    /// Ends a transfer whose data is known complete: every byte expected arrived, then
    /// the end of the stream with TLS close_notify. The server's final reply is read
    /// before the next command rather than waited for, which saves the caller a round
    /// trip; whatever it says, the data stands (as in [`Self::finish_data`]).
    ///
    /// Without close_notify (or at plain FTP's bare end of stream) this is
    /// [`Self::finish_data`], whose checks need the reply.
    pub async fn finish_complete_data(&mut self, data: DataConnection) -> Result<(), FtpError> {
        if !(data.eof && data.close_notify) {
            return self.finish_data(data).await;
        }
        let DataConnection {
            mut transport,
            number,
            command,
            received,
            ..
        } = data;
        // vsftpd sends its 226 only after the client's close_notify.
        let _ = tokio::time::timeout(self.options.timeouts.handshake, transport.shutdown()).await;
        drop(transport);
        self.transfer_open = false;
        tracing::debug!(conn = self.id, data = number, received, "transfer complete");
        match self.early_final_reply.take() {
            Some(reply) => self.check_final_reply_of_complete_data(number, reply),
            None => self.pending = PendingReplies::FinalReply { number, command },
        }
        Ok(())
    }

    /// Logs the final reply of a transfer whose data arrived complete: a failure there
    /// (426/451 after close_notify) does not undo the data.
    fn check_final_reply_of_complete_data(&self, number: u64, reply: Reply) {
        if reply.is_success() {
            tracing::debug!(conn = self.id, data = number, "transfer finished: {reply}");
        } else {
            tracing::warn!(
                conn = self.id,
                data = number,
                "server reported {reply} after the data arrived complete; keeping the data"
            );
        }
    }

    /// Reads the replies to an earlier ABOR + NOOP, up to the NOOP's 200.
    async fn read_abort_replies(&mut self) -> Result<(), FtpError> {
        for _ in 0..MAX_REPLIES_AFTER_ABORT {
            let reply = match self.read_reply("ABOR").await {
                Ok(reply) => reply,
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            };
            if reply.code == 200 {
                tracing::debug!(conn = self.id, "connection in sync after ABOR");
                return Ok(());
            }
        }
        self.broken = true;
        Err(FtpError::Protocol {
            step: "ABOR".into(),
            detail: "no end to the replies after ABOR".into(),
        })
    }

    /// Says goodbye (QUIT) and closes; errors are ignored, the connection is going anyway.
    pub async fn quit(mut self) {
        if !self.broken && !self.transfer_open {
            let limit = Duration::from_secs(2).min(self.options.timeouts.reply);
            let _ = tokio::time::timeout(limit, async {
                let _ = self.send(b"QUIT").await;
                let _ = self.read_reply("QUIT").await;
            })
            .await;
        }
        if let Some(mut transport) = self.transport.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.shutdown()).await;
        }
    }
}

/// Replies a connection owes before its next command.
enum PendingReplies {
    None,
    /// Those to ABOR, then NOOP's 200.
    Abort,
    /// The final reply of a transfer whose data arrived complete.
    FinalReply {
        number: u64,
        command: String,
    },
}

/// The data connection being made (TCP connect, then the TLS handshake) while the
/// command goes out on the control connection.
struct PendingData(tokio::task::JoinHandle<Result<Transport, FtpError>>);

impl PendingData {
    fn abandon(self) {
        self.0.abort();
    }

    /// The error of a data connection whose TCP connect failed.
    async fn connect_error(self, step: &str) -> FtpError {
        match self.0.await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => FtpError::Protocol {
                step: step.to_string(),
                detail: "connected without saying so".into(),
            },
            Err(join_error) => FtpError::Protocol {
                step: step.to_string(),
                detail: format!("connect task failed: {join_error}"),
            },
        }
    }
}

/// Connects a data connection to `target` and, with `tls`, runs its TLS handshake.
/// `connected` says whether the TCP connect worked, before the handshake starts.
async fn connect_data(
    target: SocketAddr,
    timeouts: Timeouts,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    step: String,
    connected: tokio::sync::oneshot::Sender<bool>,
) -> Result<Transport, FtpError> {
    let tcp = connect_tcp(&target.ip().to_string(), target.port(), timeouts.connect).await;
    let _ = connected.send(tcp.is_ok());
    let tcp = tcp?;
    match tls {
        None => Ok(Transport::Plain(tcp)),
        Some((config, server_name)) => {
            let stream = tls_handshake(tcp, config, server_name, timeouts.handshake, &step).await?;
            Ok(Transport::Tls(Box::new(stream)))
        }
    }
}

/// Replies that mean "no data connection" rather than "no such file".
fn is_data_connection_failure(reply: &Reply) -> bool {
    match reply.code {
        425 | 522 | 534 | 535 => true,
        // FileZilla Server 0.9 uses 450 for a session that was not resumed; 450 is also
        // "file busy", so look at the words.
        450 | 426 => {
            let text = reply.text().to_ascii_lowercase();
            text.contains("tls") || text.contains("ssl") || text.contains("session")
        }
        _ => false,
    }
}

/// One open data connection; read it to the end, then hand it to `finish_data` (or `abort_data`).
pub struct DataConnection {
    transport: Transport,
    number: u64,
    resumed: Option<bool>,
    command: String,
    idle_limit: Duration,
    eof: bool,
    close_notify: bool,
    received: u64,
}

impl DataConnection {
    /// Reads the next bytes; `Ok(0)` at the end. Fails if the server stays silent too long.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, FtpError> {
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        match tokio::time::timeout(self.idle_limit, self.transport.read(buf)).await {
            Err(_) => Err(FtpError::Timeout {
                step: format!("data connection {} ({}) idle", self.number, self.command),
                after: self.idle_limit,
            }),
            Ok(Ok(0)) => {
                self.eof = true;
                self.close_notify = self.transport.tls().is_some();
                Ok(0)
            }
            Ok(Ok(n)) => {
                self.received += n as u64;
                Ok(n)
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // TCP closed without close_notify: the final reply decides whether it was complete.
                self.eof = true;
                Ok(0)
            }
            Ok(Err(e)) => Err(io_error(&format!("data connection {}", self.number), e)),
        }
    }

    /// Reads until `buf` is full or the data ends; returns the bytes read.
    pub async fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, FtpError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    /// The sequence number of this data connection on its control connection (from 1).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether the TLS handshake resumed the control connection's session (None: plain FTP).
    pub fn resumed(&self) -> Option<bool> {
        self.resumed
    }

    /// Bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// True once the server ended the data.
    pub fn at_end(&self) -> bool {
        self.eof
    }
}

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

/// The command's verb (and LIST options), for step names that must not carry paths or passwords.
fn command_verb(command: &[u8]) -> String {
    let text = String::from_utf8_lossy(command);
    let verb = text.split(' ').next().unwrap_or_default();
    if verb.eq_ignore_ascii_case("PASS") {
        "PASS".into()
    } else {
        verb.to_string()
    }
}

fn check_command_text(command: &str) -> Result<(), FtpError> {
    if command.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(FtpError::InvalidPath {
            path: command.to_string(),
        })
    } else {
        Ok(())
    }
}

/// `VERB path`, refusing paths that would smuggle in another command.
fn path_command(verb: &str, path: &[u8]) -> Result<Vec<u8>, FtpError> {
    if path.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(FtpError::InvalidPath {
            path: String::from_utf8_lossy(path).into_owned(),
        });
    }
    let mut command = Vec::with_capacity(verb.len() + 1 + path.len());
    command.extend_from_slice(verb.as_bytes());
    command.push(b' ');
    command.extend_from_slice(path);
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_line_breaks_are_refused() {
        assert!(path_command("RETR", b"a\r\nDELE b").is_err());
        assert!(path_command("RETR", b"a\0b").is_err());
        assert_eq!(path_command("RETR", b"dir/f g").unwrap(), b"RETR dir/f g");
    }

    #[test]
    fn command_verb_hides_arguments() {
        assert_eq!(command_verb(b"PASS hunter2"), "PASS");
        assert_eq!(command_verb(b"RETR secret/path"), "RETR");
    }

    #[test]
    fn data_failures_are_told_from_missing_files() {
        let reply = |code, text: &str| Reply {
            code,
            lines: vec![text.into()],
        };
        assert!(is_data_connection_failure(&reply(
            522,
            "SSL connection failed: session reuse required"
        )));
        assert!(is_data_connection_failure(&reply(
            425,
            "Unable to build data connection: Operation not permitted"
        )));
        assert!(is_data_connection_failure(&reply(450, "TLS session of data connection has not resumed or the session does not match the control connection")));
        assert!(!is_data_connection_failure(&reply(450, "File busy")));
        assert!(!is_data_connection_failure(&reply(
            550,
            "Failed to open file."
        )));
    }
}
