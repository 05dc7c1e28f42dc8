//! Sending commands and reading replies: one at a time or pipelined, and the replies a
//! connection still owes from an earlier transfer.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::commands::{ends_transfer, transfer_end, Command, Retry, ABOR_REPLIES};
use super::{io_error, ControlConnection, State};
use crate::ftp::error::FtpError;
use crate::ftp::reply::{Reply, ReplyParser, MAX_LINE_BYTES};
use crate::ftp::transport::within;

/// Most replies read after ABOR + NOOP: the transfer's end, ABOR's, NOOP's, and a few
/// strays from a server that answers more than it should.
const MAX_REPLIES_AFTER_ABORT: usize = 8;

/// Replies that may come late from an ABOR (or the transfer it stopped), after the NOOP
/// sent behind it: skipped where they cannot answer the command being read for.
const LATE_ABORT_CODES: &[u16] = &[225, 226, 426, 451];

impl ControlConnection {
    pub(super) async fn read_line(&mut self, step: &str) -> Result<Vec<u8>, FtpError> {
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

    pub(super) async fn read_reply(&mut self, step: &str) -> Result<Reply, FtpError> {
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
                tracing::debug!(
                    conn = id,
                    ms = %format_args!("{:.1}", self.last_sent.elapsed().as_secs_f64() * 1e3),
                    "<- {reply}"
                );
                if reply.code == 421 {
                    // 421: the server is closing this connection (too many users, idle, shutdown).
                    self.mark_broken();
                }
            }
            Err(_) => self.mark_broken(),
        }
        self.last_used = Instant::now();
        result
    }

    pub(super) async fn send(&mut self, command: &Command) -> Result<(), FtpError> {
        self.send_all(&[command]).await
    }

    /// Reads the replies owed by the last transfer (see [`super::Standing::OwesReplies`]); every
    /// command does this first.
    pub async fn settle(&mut self) -> Result<(), FtpError> {
        let pending = match std::mem::replace(&mut self.state, State::Exchange) {
            State::Owes(pending) => pending,
            other => {
                self.state = other;
                return Ok(());
            }
        };
        match pending {
            PendingReplies::Abort { transfer_end_owed } => {
                self.read_abort_replies(transfer_end_owed).await?
            }
            PendingReplies::FinalReply { number, command } => {
                let reply = self
                    .read_reply_for(&format!("end of {command}"), transfer_end)
                    .await?;
                self.check_final_reply_of_complete_data(number, reply);
            }
        }
        if self.is_broken() {
            // A 421 as the owed reply: the server is closing the connection.
            return Err(FtpError::Closed {
                step: "reading the end of the previous transfer".into(),
            });
        }
        self.state = State::Ready;
        Ok(())
    }

    /// Sends `commands` in one write (pipelined): the server answers them in order.
    pub(super) async fn send_all(&mut self, commands: &[&Command]) -> Result<(), FtpError> {
        self.settle().await?;
        let first = commands.first().map_or("", |c| c.verb().name);
        match self.state {
            State::Ready | State::Exchange => {}
            State::Transfer { .. } => {
                return Err(FtpError::Protocol {
                    step: first.into(),
                    detail: "a transfer is still open on this connection".into(),
                })
            }
            State::Owes(_) | State::Broken => {
                return Err(FtpError::Closed {
                    step: format!("sending {first} on a connection out of step"),
                })
            }
        }
        self.state = State::Exchange;
        self.last_sent = Instant::now();
        if let Some(last) = commands.last() {
            // In a pipeline the transfer command comes last: that is what the connection
            // is busy with.
            self.activity.set_step(last.shown());
        }
        let mut line = Vec::new();
        for command in commands {
            tracing::debug!(conn = self.id, "-> {}", command.shown());
            line.extend_from_slice(command.line());
            line.extend_from_slice(b"\r\n");
            if command.verb().retry == Retry::Never {
                // From the first byte on, the server may act on it.
                self.sent_mutation = true;
            }
        }
        self.commands_written += 1;
        let limit = self.options.timeouts.reply;
        let result = within(limit, || format!("sending {first}"), async {
            let transport = self.transport()?;
            transport
                .write_all(&line)
                .await
                .map_err(|e| io_error("sending a command", e))?;
            transport
                .flush()
                .await
                .map_err(|e| io_error("sending a command", e))
        })
        .await;
        if result.is_err() {
            self.mark_broken();
        }
        result
    }

    /// Sends a command and returns the server's reply, whatever its code (but one that
    /// can answer it: see [`Self::read_reply_for`]).
    pub(super) async fn command(&mut self, command: Command) -> Result<Reply, FtpError> {
        let [reply] = self.pipeline([&command]).await?;
        Ok(reply)
    }

    /// Sends a command and fails unless the reply is 2xx.
    pub(super) async fn expect_success(&mut self, command: Command) -> Result<Reply, FtpError> {
        let [reply] = self.pipeline([&command]).await?;
        super::commands::success_or_rejected(&command, reply)
    }

    /// Sends `commands` together and reads their replies, failing on the first 421.
    pub(super) async fn pipeline<const N: usize>(
        &mut self,
        commands: [&Command; N],
    ) -> Result<[Reply; N], FtpError> {
        let replies = self.pipeline_all(&commands).await?;
        Ok(replies
            .try_into()
            .unwrap_or_else(|_| unreachable!("one reply per command")))
    }

    /// [`Self::pipeline`] for a number of commands known only at run time. Where the
    /// mount sends one command at a time, each goes out once the last is answered.
    pub(super) async fn pipeline_all(
        &mut self,
        commands: &[&Command],
    ) -> Result<Vec<Reply>, FtpError> {
        let together = self.pipelines();
        if together {
            self.send_all(commands).await?;
        }
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands {
            if !together {
                self.send(command).await?;
            }
            let reply = self.read_reply_to(command).await?;
            if reply.code == 421 {
                // The server is closing the connection (and replies to the rest of the
                // commands sent will never be read).
                self.mark_broken();
                return Err(FtpError::Rejected {
                    command: command.shown(),
                    reply,
                });
            }
            replies.push(reply);
        }
        self.enter(State::Ready);
        Ok(replies)
    }

    /// Whether commands may go out together now (see [`crate::ftp::Pipelining`]).
    pub(super) fn pipelines(&self) -> bool {
        self.options.pipelining.pipelines()
    }

    /// Reads the reply to `command`: one of the codes that can answer it.
    pub(super) async fn read_reply_to(&mut self, command: &Command) -> Result<Reply, FtpError> {
        let verb = command.verb();
        self.read_reply_for(&command.shown(), |reply| verb.fits(reply))
            .await
    }

    /// Reads the reply to the command shown as `shown`, which `fits` says can answer it.
    ///
    /// Any other reply belongs to another command: the server answers out of order, or
    /// a reply came late. It is never taken for an answer (an MKD "answered" by a stray
    /// 226 would report a directory made that was not). The connection is out of step
    /// from there on: it is marked broken, and the mount stops pipelining (`auto`).
    /// Only a late reply to an earlier ABOR, which servers may send after the NOOP behind
    /// it, is skipped.
    pub(super) async fn read_reply_for(
        &mut self,
        shown: &str,
        fits: impl Fn(&Reply) -> bool,
    ) -> Result<Reply, FtpError> {
        loop {
            let reply = self.read_reply(shown).await?;
            if fits(&reply) {
                return Ok(reply);
            }
            if self.late_abort_replies > 0 && LATE_ABORT_CODES.contains(&reply.code) {
                self.late_abort_replies -= 1;
                tracing::debug!(conn = self.id, %reply, "a late reply to an earlier ABOR; skipped");
                continue;
            }
            return Err(self.out_of_step(shown, reply));
        }
    }

    /// The error for `reply`, which cannot answer `shown`: the connection is dropped, the
    /// mount steps back from pipelining, and the log says so once per connection.
    pub(super) fn out_of_step(&mut self, shown: &str, reply: Reply) -> FtpError {
        self.mark_broken();
        let verb = shown.split(' ').next().unwrap_or(shown);
        tracing::info!(
            conn = self.id,
            "{shown}: the server replied {reply}, which cannot answer it; this connection is \
             out of step and is dropped"
        );
        self.options
            .pipelining
            .step_down(&format!("it answered {verb} with {}", reply.code));
        FtpError::Desync {
            command: shown.to_string(),
            reply,
        }
    }

    /// Reads the replies to an earlier ABOR + NOOP, in whatever order they come: the
    /// end of the transfer when `transfer_end_owed`, ABOR's own, and NOOP's 200. A server
    /// that answers ABOR after the NOOP, or not at all when the transfer had ended, may
    /// leave some to come later: those are skipped when they come (see
    /// [`Self::read_reply_for`]).
    pub(super) async fn read_abort_replies(
        &mut self,
        transfer_end_owed: bool,
    ) -> Result<(), FtpError> {
        let mut owed = 1 + usize::from(transfer_end_owed);
        let mut noop_answered = false;
        for _ in 0..MAX_REPLIES_AFTER_ABORT {
            // Whatever comes here is skipped up to the marker (Pure-FTPd, for one, sends a
            // 150 with its transfer statistics after ABOR); nothing is taken for success.
            let reply = match self.read_reply_for("ABOR", |_: &Reply| true).await {
                Ok(reply) => reply,
                Err(e) => {
                    self.mark_broken();
                    if matches!(e, FtpError::Tls { .. } | FtpError::Protocol { .. }) {
                        // Plain text inside TLS after an abort (a Node.js server does this):
                        // ABOR breaks this server's connections.
                        self.options
                            .pipelining
                            .stop_aborting(&format!("after ABOR: {e}"));
                    }
                    return Err(e);
                }
            };
            if reply.code == 200 && !noop_answered {
                noop_answered = true;
            } else if ABOR_REPLIES.contains(&reply.code) || ends_transfer(reply.code) {
                owed = owed.saturating_sub(1);
            } else {
                tracing::debug!(conn = self.id, %reply, "an extra reply after ABOR; skipped");
            }
            if noop_answered && owed == 0 {
                tracing::debug!(conn = self.id, "connection in sync after ABOR");
                return Ok(());
            }
            if noop_answered {
                // NOOP came before the rest: what ABOR still owes may come later, or never.
                self.late_abort_replies = owed.min(2) as u8;
                tracing::debug!(
                    conn = self.id,
                    owed,
                    "NOOP answered before ABOR's replies; skipping them when they come"
                );
                return Ok(());
            }
        }
        self.mark_broken();
        Err(FtpError::Protocol {
            step: "ABOR".into(),
            detail: "no end to the replies after ABOR".into(),
        })
    }
}

/// Replies a connection owes before its next command.
pub(super) enum PendingReplies {
    /// Those to ABOR (and the end of the transfer it stopped, when that was not read
    /// yet), and NOOP's 200.
    Abort { transfer_end_owed: bool },
    /// The final reply of a transfer whose data arrived complete.
    FinalReply { number: u64, command: String },
}
