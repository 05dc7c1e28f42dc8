//! A data connection opened ahead of its transfer.
//!
//! A transfer costs three round trips before its first byte: EPSV (with the command), the
//! TCP connect to the passive port, and the TLS handshake, which the server starts only
//! once it has the command. After an upload, EPSV rides with the upload's check (SIZE and
//! SITE CHMOD, one round trip anyway) and the TCP connect runs while the rename goes on,
//! so the next transfer on this connection sends its command alone and its handshake at
//! once: two round trips fewer for each file of a copy at a distance.
//!
//! Servers listen on the passive port from EPSV until the transfer command and accept
//! the connection only then; meanwhile the kernel completes it in the listen backlog
//! (vsftpd, ProFTPD, Pure-FTPd). Any other EPSV or PASV replaces the server's port, so a
//! connection opened ahead that is not used is simply dropped. One is used within
//! [`AHEAD_LIFETIME`] or not at all, and a transfer on one that fails stops the mount
//! from opening them (see [`crate::ftp::Pipelining::stop_opening_ahead`]): they only
//! ever save round trips.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::commands::{verb, Command};
use super::data::DataTarget;
use super::ControlConnection;
use crate::ftp::error::FtpError;
use crate::ftp::options::DataMode;
use crate::ftp::passive;
use crate::ftp::reply::Reply;
use crate::ftp::transport::dial;

/// How long a data connection opened ahead waits for its transfer. Servers wait a minute
/// or more for a passive connection (vsftpd's accept_timeout is 60 s); a program
/// writing file after file comes back within a few round trips.
const AHEAD_LIFETIME: Duration = Duration::from_secs(10);

/// The TCP connection of the next transfer's data connection, made or being made.
pub(super) type TcpConnecting = Pin<Box<dyn Future<Output = Result<TcpStream, FtpError>> + Send>>;

/// A passive port the server opened at an EPSV sent ahead, and the connect to it.
pub(super) struct OpenedAhead {
    target: DataTarget,
    connecting: Option<JoinHandle<Result<TcpStream, FtpError>>>,
    made: Instant,
}

impl Drop for OpenedAhead {
    fn drop(&mut self) {
        if let Some(connecting) = self.connecting.take() {
            connecting.abort();
        }
    }
}

impl ControlConnection {
    /// The EPSV to send with an upload's check so that the next transfer finds its data
    /// connection open; None where that is not done (active mode, no EPSV, one command
    /// at a time). Any connection opened ahead before is dropped: the EPSV replaces it.
    pub(super) fn ahead_request(&mut self) -> Option<Command> {
        self.ahead = None;
        let wanted = matches!(self.options.data_mode, DataMode::Passive)
            && self.epsv_works
            && !self.epsv_refused
            && self.options.pipelining.opens_ahead();
        wanted.then(|| Command::new(&verb::EPSV))
    }

    /// Takes the reply to the EPSV sent ahead: a 229 starts the connect to its port.
    /// Anything else leaves the next transfer to send its own EPSV, as it always could.
    pub(super) fn open_ahead(&mut self, reply: Reply, tickets_before: u64) {
        if self.tickets_received() > tickets_before {
            // FileZilla Server sends a ticket on the control connection at each EPSV.
            self.tickets_at_passive = true;
        }
        if reply.code != 229 {
            tracing::debug!(conn = self.id, %reply, "no data connection opened ahead");
            return;
        }
        let port = match passive::parse_epsv(&reply.text()) {
            Ok(port) => port,
            Err(detail) => {
                tracing::debug!(conn = self.id, %reply, detail, "no data connection opened ahead");
                return;
            }
        };
        let target = DataTarget {
            host: self.data_host(),
            port,
        };
        let proxy = self.options.proxy.clone();
        let limit = self.options.timeouts.connect;
        let host = target.host.clone();
        let connecting =
            tokio::spawn(async move { dial(proxy.as_ref(), &host, port, limit).await });
        tracing::debug!(conn = self.id, %target, "opening the next transfer's data connection ahead");
        self.ahead = Some(OpenedAhead {
            target,
            connecting: Some(connecting),
            made: Instant::now(),
        });
    }

    /// The data connection opened ahead, when it can serve a transfer from `offset` now:
    /// where it goes, and its TCP connection. A transfer from an offset needs REST before
    /// it, a connection kept too long may be gone, and one whose connect failed is no
    /// use; each of those sends its own EPSV, which replaces the server's port.
    pub(super) async fn take_ahead(&mut self, offset: u64) -> Option<(DataTarget, TcpConnecting)> {
        let mut ahead = self.ahead.take()?;
        let age = ahead.made.elapsed();
        let usable = offset == 0 && age < AHEAD_LIFETIME && self.options.pipelining.opens_ahead();
        let connecting = ahead.connecting.take()?;
        if !usable {
            connecting.abort();
            tracing::debug!(
                conn = self.id,
                offset,
                ?age,
                "data connection opened ahead not used"
            );
            return None;
        }
        let target = ahead.target.clone();
        if !connecting.is_finished() {
            return Some((target, Box::pin(joined(connecting))));
        }
        match joined(connecting).await {
            Ok(tcp) => Some((target, Box::pin(async move { Ok(tcp) }))),
            Err(e) => {
                tracing::debug!(conn = self.id, %target, "data connection opened ahead failed to connect: {e}");
                None
            }
        }
    }

    /// Whether a data connection opened ahead is waiting for the next transfer.
    pub fn has_data_connection_ahead(&self) -> bool {
        self.ahead.is_some()
    }
}

/// The result of a connect task.
async fn joined(
    connecting: JoinHandle<Result<TcpStream, FtpError>>,
) -> Result<TcpStream, FtpError> {
    connecting.await.unwrap_or_else(|join_error| {
        Err(FtpError::Protocol {
            step: "data connection opened ahead".into(),
            detail: format!("connect task failed: {join_error}"),
        })
    })
}
