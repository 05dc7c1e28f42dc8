//! Data connections: the passive address, the TLS handshake that resumes the control
//! connection's session, and the end or abort of a transfer.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ahead::TcpConnecting;
use super::commands::{transfer_end, verb, Command};
use super::replies::PendingReplies;
use super::{io_error, summarize, ControlConnection, State};
use crate::ftp::activity::Activity;
use crate::ftp::error::FtpError;
use crate::ftp::options::DataMode;
use crate::ftp::passive;
use crate::ftp::reply::Reply;
use crate::ftp::tls::non_resuming_config;
use crate::ftp::transport::{dial, display_addr, tls_handshake, Transport};

/// How long to wait for a refused data connection's handshake to settle, to report it.
const REJECTED_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// EPSVs asked when the server has no passive port free (425), and the pause between.
const PASSIVE_ATTEMPTS: u32 = 3;
const PASSIVE_RETRY_PAUSE: Duration = Duration::from_millis(50);

impl ControlConnection {
    /// Opens a passive data connection for `command`, resuming this connection's TLS session.
    ///
    /// The command is sent while the TLS handshake runs: vsftpd sends 150 before its TLS
    /// accept, other servers accept first, and either order must work.
    pub(super) async fn open_data(
        &mut self,
        command: Command,
        offset: u64,
    ) -> Result<DataConnection, FtpError> {
        Ok(self.open_data_after(None, command, offset).await?.0)
    }

    /// [`Self::open_data`], with `preface` sent first in the same round trip where the
    /// connection pipelines; returns its reply too.
    pub(super) async fn open_data_after(
        &mut self,
        preface: Option<&Command>,
        command: Command,
        offset: u64,
    ) -> Result<(DataConnection, Option<Reply>), FtpError> {
        let (channel, preface_reply) = self.open_channel(preface, command, offset).await?;
        let data = DataConnection {
            transport: channel.transport,
            number: channel.number,
            resumed: channel.resumed,
            command: channel.verb.to_string(),
            idle_limit: self.options.timeouts.data_idle,
            eof: false,
            close_notify: false,
            received: 0,
            activity: self.activity().clone(),
        };
        Ok((data, preface_reply))
    }

    /// Sends a transfer command and makes its data connection, for a download or an upload.
    ///
    /// `preface`, a command with no data of its own (MDTM), goes out before the passive
    /// command; its reply is returned with the channel.
    pub(super) async fn open_channel(
        &mut self,
        preface: Option<&Command>,
        command: Command,
        offset: u64,
    ) -> Result<(Channel, Option<Reply>), FtpError> {
        if self.is_broken() {
            return Err(FtpError::Closed {
                step: "opening a data connection on a broken connection".into(),
            });
        }
        if let DataMode::Active(address) = self.options.data_mode {
            // Boxed: passive transfers need not carry active mode's state.
            return Box::pin(self.open_active_channel(preface, command, offset, address)).await;
        }
        let (target, tcp, command_sent, preface_reply, via_ahead) =
            match self.take_ahead(offset).await {
                Some((target, tcp)) => {
                    // The port is open and connected: only the command goes out, with its
                    // preface in the same round trip (a connection opened ahead means the
                    // mount pipelines).
                    let preface_reply = match preface {
                        Some(preface) => {
                            self.send_all(&[preface, &command]).await?;
                            Some(self.read_reply_to(preface).await?)
                        }
                        None => None,
                    };
                    (target, tcp, preface.is_some(), preface_reply, true)
                }
                None => {
                    let (target, command_sent, preface_reply) =
                        self.passive_target(preface, offset, &command).await?;
                    let proxy = self.options.proxy.clone();
                    let (host, port, limit) = (
                        target.host.clone(),
                        target.port,
                        self.options.timeouts.connect,
                    );
                    let tcp: TcpConnecting =
                        Box::pin(async move { dial(proxy.as_ref(), &host, port, limit).await });
                    (target, tcp, command_sent, preface_reply, false)
                }
            };
        self.check_ticket_supply()?;
        let data_config = self.data_tls_config();
        let number = self.data_connections + 1;
        self.data_connections = number;
        self.activity.count_data_connection();
        let step = format!("data connection {number}");
        // The command goes out while the data connection is being made: servers wait for
        // the connection after the command, and the round trips overlap.
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        tracing::trace!(conn = self.id, data = number, %target, via_ahead, "connecting the data connection");
        let handshake = PendingData(tokio::spawn(connect_data(
            tcp,
            self.options.timeouts.handshake,
            data_config.map(|config| (config, self.server_name.clone())),
            step.clone(),
            connected_tx,
        )));
        let verb = command.verb().name;
        // One command at a time: the transfer command goes out once the data connection's
        // TCP connect is done (its TLS handshake starts then, and is not awaited), as
        // servers that take commands on their own tasks refuse it before that (425).
        let sent_early = command_sent || self.pipelines();
        let mut connected = Some(connected);
        if !sent_early {
            if let Some(connected) = connected.take() {
                if connected.await != Ok(true) {
                    // Nothing was asked of the server but a passive port, which the next
                    // EPSV replaces: the connection stays in step, unless a REST holds.
                    let connect_error = handshake.connect_error(&step).await;
                    self.enter(State::Ready);
                    self.retire_if_offset_kept(offset);
                    return Err(connect_error);
                }
            }
        }
        if !command_sent {
            if let Err(e) = self.send(&command).await {
                handshake.abandon();
                return Err(e);
            }
        }
        let connected_now = match connected {
            Some(connected) => connected.await == Ok(true),
            None => true,
        };
        if !connected_now {
            let connect_error = handshake.connect_error(&step).await;
            if via_ahead {
                self.options
                    .pipelining
                    .stop_opening_ahead(&connect_error.to_string());
            }
            // The server may have refused the command (550) and closed its passive port
            // before the connection came: then its reply is the answer, and the
            // connection stays usable. Otherwise the server waits for a connection that
            // will not come, and its state is unknown.
            let reply =
                tokio::time::timeout(REJECTED_HANDSHAKE_GRACE, self.read_reply_to(&command)).await;
            return Err(match reply {
                Ok(Ok(reply))
                    if !(reply.is_preliminary()
                        || reply.is_success()
                        || is_data_connection_failure(&reply)
                        || self.is_broken()) =>
                {
                    self.enter(State::Ready);
                    self.retire_if_offset_kept(offset);
                    FtpError::Rejected {
                        command: command.shown(),
                        reply,
                    }
                }
                _ => {
                    self.mark_broken();
                    connect_error
                }
            });
        }
        let reply = match self.read_reply_to(&command).await {
            Ok(reply) => reply,
            Err(e) => {
                handshake.abandon();
                return Err(e);
            }
        };
        if !(reply.is_preliminary() || reply.is_success()) {
            if via_ahead {
                if is_data_connection_failure(&reply) {
                    self.options
                        .pipelining
                        .stop_opening_ahead(&format!("{verb} answered {reply}"));
                }
            } else if sent_early && refuses_early_transfer(&reply) {
                // A server that takes each command on its own task looked for the data
                // connection before it was there: it cannot take the command early.
                self.options.pipelining.step_down(&format!(
                    "it refused {verb} sent before its data connection was up: {reply}"
                ));
            }
            let error = self.refused_data(&command, number, reply, handshake).await;
            self.enter(State::Ready);
            self.retire_if_offset_kept(offset);
            return Err(error);
        }
        let transport = match handshake.0.await {
            Ok(Ok(transport)) => transport,
            Ok(Err(handshake_error)) => {
                if via_ahead {
                    self.options
                        .pipelining
                        .stop_opening_ahead(&handshake_error.to_string());
                }
                return Err(self.handshake_failed(number, handshake_error).await);
            }
            Err(join_error) => {
                self.mark_broken();
                return Err(FtpError::Protocol {
                    step,
                    detail: format!("TLS handshake task failed: {join_error}"),
                });
            }
        };
        if via_ahead {
            self.stats.data_opened_ahead.fetch_add(1, Ordering::Relaxed);
        }
        let channel = self.channel_open(transport, number, &command, reply);
        Ok((channel, preface_reply))
    }

    /// The error for a data connection whose TLS handshake failed: a server that refuses
    /// the session aborts the handshake and says why on the control connection, and its
    /// words are the useful diagnosis. The connection is out of step either way.
    pub(super) async fn handshake_failed(&mut self, number: u64, error: FtpError) -> FtpError {
        self.mark_broken();
        let reply = tokio::time::timeout(
            REJECTED_HANDSHAKE_GRACE,
            self.read_reply_for("after a failed data handshake", transfer_end),
        )
        .await;
        match reply {
            Ok(Ok(reply)) if !reply.is_success() => FtpError::DataRejected {
                number,
                reply,
                resumed: None,
            },
            _ => error,
        }
    }

    /// A data connection made (passive or active): counts how its TLS session went,
    /// and enters the transfer; `reply` is the transfer command's first.
    pub(super) fn channel_open(
        &mut self,
        transport: Transport,
        number: u64,
        command: &Command,
        reply: Reply,
    ) -> Channel {
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
            command = %command.shown(),
            "data connection open"
        );
        self.enter(State::Transfer {
            early_reply: reply.is_success().then_some(reply),
        });
        Channel {
            transport,
            number,
            resumed,
            verb: command.verb().name,
        }
    }

    /// The TLS config for this connection's data connections (None for plain FTP).
    pub(super) fn data_tls_config(&self) -> Option<Arc<ClientConfig>> {
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
    /// Uploads get none from ProFTPD (vsftpd sends one once it has read the client's
    /// close_notify, see [`super::upload`]); when the supply is gone, a full
    /// handshake would be refused (vsftpd then drops the control connection), so the
    /// connection is replaced by a fresh one with fresh tickets instead. A server that never
    /// issued anything (Pure-FTPd on TLS 1.3) cannot demand resumption: a full handshake it is.
    fn check_ticket_supply(&mut self) -> Result<(), FtpError> {
        if !self.out_of_tickets() {
            return Ok(());
        }
        tracing::debug!(
            conn = self.id,
            "no TLS session ticket left; retiring this control connection"
        );
        self.stats
            .replaced_for_tickets
            .fetch_add(1, Ordering::Relaxed);
        self.mark_broken();
        Err(FtpError::TicketsExhausted)
    }

    /// Builds the error for a data command the server answered with a failure code.
    async fn refused_data(
        &mut self,
        command: &Command,
        number: u64,
        reply: Reply,
        handshake: PendingData,
    ) -> FtpError {
        if !is_data_connection_failure(&reply) {
            handshake.abandon();
            return FtpError::Rejected {
                command: command.shown(),
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
        self.mark_broken();
        FtpError::DataRejected {
            number,
            reply,
            resumed,
        }
    }

    /// The passive port for `command` by EPSV (or PASV), with REST for `offset`; the
    /// command goes with them where that is known to work. Returns where to connect,
    /// whether the command went out, and the preface's reply.
    async fn passive_target(
        &mut self,
        preface: Option<&Command>,
        offset: u64,
        command: &Command,
    ) -> Result<(DataTarget, bool, Option<Reply>), FtpError> {
        let tickets_before = self.tickets_received();
        // Where EPSV is known to work and a session is in hand, the command goes out with
        // EPSV (and REST): the server takes it once its passive port is open and waits
        // for the connection, one round trip sooner.
        let mut command_sent = self.can_send_command_with_epsv();
        let mut preface_reply = None;
        let target = match command_sent {
            true => {
                let (target, reply) = self.passive_with_command(preface, offset, command).await?;
                preface_reply = reply;
                target
            }
            false => None,
        };
        let target = match target {
            Some(target) => target,
            None => {
                command_sent = false;
                if let (Some(preface), None) = (preface, &preface_reply) {
                    preface_reply = Some(self.command(preface.clone()).await?);
                }
                self.passive_address_and_offset(offset).await?
            }
        };
        if self.tickets_received() > tickets_before {
            // FileZilla Server sends a ticket on the control connection at each EPSV.
            self.tickets_at_passive = true;
        }
        Ok((target, command_sent, preface_reply))
    }

    /// The data connection's address, with the server told to start at `offset`.
    ///
    /// EPSV and REST go out together (one round trip instead of two) once EPSV is known to
    /// work; after a refused EPSV, REST follows PASV on its own so that it comes right
    /// before the transfer command, as RFC 959 asks.
    async fn passive_address_and_offset(&mut self, offset: u64) -> Result<DataTarget, FtpError> {
        let rest = || Command::with_arg(&verb::REST, offset.to_string());
        let check_rest = |reply: Reply| {
            if reply.code == 350 {
                Ok(())
            } else {
                Err(FtpError::Rejected {
                    command: format!("REST {offset}"),
                    reply,
                })
            }
        };
        if offset > 0 && !self.epsv_refused {
            let [epsv, rest_reply] = self
                .pipeline([&Command::new(&verb::EPSV), &rest()?])
                .await?;
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
                    if rest_set {
                        self.mark_broken();
                    }
                    return Err(e);
                }
            }
            if rest_set {
                let result = self.passive_address().await;
                if result.is_err() {
                    self.mark_broken();
                }
                return result;
            }
        }
        let target = self.passive_address().await?;
        if offset > 0 {
            let reply = self.command(rest()?).await?;
            check_rest(reply)?;
        }
        Ok(target)
    }

    /// After a transfer command refused behind an accepted REST: servers differ on whether
    /// the offset still holds (RFC 3659 leaves it open), and one that keeps it would start
    /// the next transfer mid-file, so the connection serves no other.
    pub(super) fn retire_if_offset_kept(&mut self, offset: u64) {
        if offset > 0 {
            tracing::debug!(
                conn = self.id,
                offset,
                "transfer refused after REST: retiring the connection"
            );
            self.mark_broken();
        }
    }

    /// Whether a data command may go out together with its EPSV: EPSV worked on this
    /// connection, and the data connection will not need a ticket the 229 might bring
    /// (FileZilla Server sends one there): it holds a session to resume, or needs none.
    fn can_send_command_with_epsv(&self) -> bool {
        if !self.epsv_works || self.epsv_refused || !self.pipelines() {
            return false;
        }
        match &self.session {
            None => true,
            Some((_, store)) => {
                !self.options.resume_data_sessions || store.can_resume() || !store.ever_issued()
            }
        }
    }

    /// Sends `preface`, EPSV, REST when `offset` > 0, and `command` together, and reads
    /// the first replies; `command`'s is left to read. Returns where to connect, or None
    /// when the server could not open a passive port this time (425) and refused the
    /// command with it: then both are to be sent again, one after the other. The
    /// preface's reply comes back either way.
    async fn passive_with_command(
        &mut self,
        preface: Option<&Command>,
        offset: u64,
        command: &Command,
    ) -> Result<(Option<DataTarget>, Option<Reply>), FtpError> {
        let epsv = Command::new(&verb::EPSV);
        let rest = match offset {
            0 => None,
            _ => Some(Command::with_arg(&verb::REST, offset.to_string())?),
        };
        let commands: Vec<&Command> = [preface, Some(&epsv), rest.as_ref(), Some(command)]
            .into_iter()
            .flatten()
            .collect();
        self.send_all(&commands).await?;
        let preface_reply = match preface {
            Some(preface) => Some(self.read_reply_to(preface).await?),
            None => None,
        };
        let epsv_reply = self.read_reply_to(&epsv).await?;
        let rest_reply = match &rest {
            Some(rest) => Some(self.read_reply_to(rest).await?),
            None => None,
        };
        if epsv_reply.code == 425 && rest.is_none() {
            let reply =
                tokio::time::timeout(REJECTED_HANDSHAKE_GRACE, self.read_reply_to(command)).await;
            match reply {
                Ok(Ok(reply)) if !(reply.is_preliminary() || reply.is_success()) => {
                    tracing::debug!(conn = self.id, %epsv_reply, %reply, "no passive port this time; trying again");
                    return Ok((None, preface_reply));
                }
                // A reply that cannot answer the command: out of step.
                Ok(Err(e)) => return Err(e),
                _ => {}
            }
        }
        // EPSV worked before on this connection, so a refusal now, or a refused REST
        // (after which the command would start at 0), leaves the server waiting for a
        // connection that must not come: the connection is given up.
        let shown_reply = epsv_reply.to_string();
        let target = match self.epsv_target(epsv_reply) {
            Ok(Some(target)) => target,
            Ok(None) => {
                self.mark_broken();
                return Err(FtpError::Protocol {
                    step: "EPSV".into(),
                    detail: format!(
                        "the server refused EPSV after accepting it before: {shown_reply}"
                    ),
                });
            }
            Err(e) => {
                self.mark_broken();
                return Err(e);
            }
        };
        if let Some(reply) = rest_reply {
            if reply.code != 350 {
                self.mark_broken();
                return Err(FtpError::Rejected {
                    command: format!("REST {offset}"),
                    reply,
                });
            }
        }
        Ok((Some(target), preface_reply))
    }

    /// The address in a reply to EPSV, or None when the server does not do EPSV.
    fn epsv_target(&mut self, reply: Reply) -> Result<Option<DataTarget>, FtpError> {
        if reply.code == 229 {
            let port = passive::parse_epsv(&reply.text()).map_err(|detail| {
                self.mark_broken();
                FtpError::Protocol {
                    step: "EPSV".into(),
                    detail,
                }
            })?;
            self.epsv_works = true;
            return Ok(Some(DataTarget {
                host: self.data_host(),
                port,
            }));
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

    async fn passive_address(&mut self) -> Result<DataTarget, FtpError> {
        let mut attempts = 0;
        while !self.epsv_refused {
            attempts += 1;
            let reply = self.command(Command::new(&verb::EPSV)).await?;
            // 425: no passive port free this time (a busy server's range, ports still in
            // TIME_WAIT). EPSV opens nothing when it fails, so asking again is safe.
            if reply.code == 425 && attempts < PASSIVE_ATTEMPTS {
                tracing::debug!(conn = self.id, %reply, "no passive port this time; asking again");
                tokio::time::sleep(PASSIVE_RETRY_PAUSE * attempts).await;
                continue;
            }
            if let Some(target) = self.epsv_target(reply)? {
                return Ok(target);
            }
        }
        if self.peer.is_ipv6() && self.options.proxy.is_none() {
            return Err(FtpError::Protocol {
                step: "PASV".into(),
                detail: "the server refused EPSV, and PASV cannot express an IPv6 address".into(),
            });
        }
        let reply = self.command(Command::new(&verb::PASV)).await?;
        if reply.code != 227 {
            return Err(FtpError::Rejected {
                command: "PASV".into(),
                reply,
            });
        }
        let (announced, port) = passive::parse_pasv(&reply.text()).map_err(|detail| {
            self.mark_broken();
            FtpError::Protocol {
                step: "PASV".into(),
                detail,
            }
        })?;
        let host = if self.options.trust_pasv_address {
            IpAddr::V4(announced).to_string()
        } else {
            // The 227 address is often private behind NAT, and obeying it lets a server
            // aim us at any host (FTP bounce); the control peer is the server we chose.
            let host = self.data_host();
            if announced.to_string() != host {
                tracing::debug!(conn = self.id, %announced, %host, "ignoring the address in the 227 reply; connecting to the control peer");
            }
            host
        };
        Ok(DataTarget { host, port })
    }

    /// Ends a transfer whose data was read to the end: close_notify, then the final reply.
    ///
    /// vsftpd holds the 226 until the client's close_notify arrives, so the shutdown must
    /// come first. A 426/451 is an error even after close_notify: the server stopped
    /// early. Only [`Self::finish_complete_data`], for data counted whole, lets it pass.
    pub async fn finish_data(&mut self, data: DataConnection) -> Result<(), FtpError> {
        let DataConnection {
            transport,
            number,
            resumed,
            command,
            eof,
            close_notify,
            received,
            ..
        } = data;
        let reply = self.close_and_read_end(transport, &command).await?;
        self.enter(State::Ready);
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
        // A 426 or 451 even after a clean end (close_notify) means the server stopped
        // sending early (a failed read of the file or directory): the data is cut off.
        // Only a caller that counted every byte it expected may let that pass
        // (finish_complete_data).
        if reply.is_success() {
            return Ok(());
        }
        if is_data_connection_failure(&reply) {
            self.mark_broken();
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
        let early = self.end_transfer();
        self.send_abort(number, early.is_none()).await
    }

    /// Sends ABOR for the transfer on data connection `number`, which is closed already,
    /// and a NOOP whose reply marks the end of ABOR's; they are read before the next
    /// command. `transfer_end_owed`: the transfer's own final reply is still to come.
    ///
    /// On a server whose control connection breaks after ABOR (see
    /// [`crate::ftp::Pipelining::aborts`]), the connection is closed instead: the server
    /// stops the transfer when it goes, and the pool replaces it.
    pub(super) async fn send_abort(
        &mut self,
        number: u64,
        transfer_end_owed: bool,
    ) -> Result<(), FtpError> {
        if !self.options.pipelining.aborts() {
            tracing::debug!(
                conn = self.id,
                data = number,
                "transfer given up: closing the connection instead of ABOR"
            );
            self.mark_broken();
            return Ok(());
        }
        // Two writes, not one: Pure-FTPd, reading ABOR in the middle of a transfer,
        // sometimes loses a NOOP that arrived in the same segment.
        self.send(&Command::new(&verb::ABOR)).await?;
        self.send(&Command::new(&verb::NOOP)).await?;
        tracing::debug!(conn = self.id, data = number, "transfer aborted");
        self.enter(State::Owes(PendingReplies::Abort { transfer_end_owed }));
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
        if !(data.eof && data.close_notify && self.pipelines()) {
            // One command at a time: the final reply is read before the next command.
            if data.eof && data.close_notify {
                return self.finish_complete_now(data).await;
            }
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
        tracing::debug!(conn = self.id, data = number, received, "transfer complete");
        match self.end_transfer() {
            Some(reply) => {
                self.check_final_reply_of_complete_data(number, reply);
                self.enter(State::Ready);
            }
            None => self.enter(State::Owes(PendingReplies::FinalReply { number, command })),
        }
        Ok(())
    }

    /// [`Self::finish_complete_data`] where commands go one at a time: the final reply
    /// is read now, and the data stands whatever it says.
    async fn finish_complete_now(&mut self, data: DataConnection) -> Result<(), FtpError> {
        let DataConnection {
            transport,
            number,
            command,
            ..
        } = data;
        let reply = self.close_and_read_end(transport, &command).await?;
        self.check_final_reply_of_complete_data(number, reply);
        self.enter(State::Ready);
        Ok(())
    }

    /// Closes a transfer's data connection (close_notify first: vsftpd sends its 226 only
    /// after it) and returns the transfer's final reply, read now unless it came early.
    async fn close_and_read_end(
        &mut self,
        mut transport: Transport,
        command: &str,
    ) -> Result<Reply, FtpError> {
        let _ = tokio::time::timeout(self.options.timeouts.handshake, transport.shutdown()).await;
        drop(transport);
        match self.end_transfer() {
            Some(reply) => Ok(reply),
            None => {
                self.read_reply_for(&format!("end of {command}"), transfer_end)
                    .await
            }
        }
    }

    /// Closes the open transfer: the connection is back in the exchange of the transfer
    /// command, whose final reply comes next. Returns that reply if it came early.
    pub(super) fn end_transfer(&mut self) -> Option<Reply> {
        match std::mem::replace(&mut self.state, State::Exchange) {
            State::Transfer { early_reply } => early_reply,
            State::Broken => {
                self.state = State::Broken;
                None
            }
            _ => None,
        }
    }

    /// Logs the final reply of a transfer whose data arrived complete: a failure there
    /// (426/451 after close_notify) does not undo the data.
    pub(super) fn check_final_reply_of_complete_data(&self, number: u64, reply: Reply) {
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

/// Where a data connection goes: the server's address, or through a proxy its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DataTarget {
    pub(super) host: String,
    pub(super) port: u16,
}

impl std::fmt::Display for DataTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&display_addr(&self.host, self.port))
    }
}

/// Finishes a data connection's TCP connect (`tcp`: being made now, or opened ahead)
/// and, with `tls`, runs its TLS handshake. `connected` says whether the TCP connect
/// worked, before the handshake starts.
async fn connect_data(
    tcp: TcpConnecting,
    handshake_limit: Duration,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    step: String,
    connected: tokio::sync::oneshot::Sender<bool>,
) -> Result<Transport, FtpError> {
    let tcp = tcp.await;
    let _ = connected.send(tcp.is_ok());
    let tcp = tcp?;
    match tls {
        None => Ok(Transport::Plain(tcp)),
        Some((config, server_name)) => {
            let stream = tls_handshake(tcp, config, server_name, handshake_limit, &step).await?;
            Ok(Transport::Tls(Box::new(stream)))
        }
    }
}

/// A data connection just opened, before it is a download or an upload.
pub(super) struct Channel {
    pub(super) transport: Transport,
    pub(super) number: u64,
    pub(super) resumed: Option<bool>,
    pub(super) verb: &'static str,
}

/// A 425 that says the data connection was not there yet (not a refused TLS session):
/// the answer of a server that looks for it as soon as the transfer command arrives.
fn refuses_early_transfer(reply: &Reply) -> bool {
    let text = reply.text().to_ascii_lowercase();
    reply.code == 425 && !(text.contains("tls") || text.contains("ssl") || text.contains("session"))
}

/// Replies that mean "no data connection" rather than "no such file".
pub(super) fn is_data_connection_failure(reply: &Reply) -> bool {
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
    activity: Arc<Activity>,
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
                self.activity.add_bytes(n as u64);
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

    /// The kernel's smoothed round-trip estimate for this connection's TCP socket, once
    /// data has flowed; `None` where the kernel does not say.
    pub fn round_trip(&self) -> Option<Duration> {
        self.transport.round_trip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
