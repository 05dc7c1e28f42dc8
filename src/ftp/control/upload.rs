//! Uploads: STOR on a data connection that resumes the control connection's TLS session,
//! ended so that everything the server still sends is read.
//!
//! The end of an upload is where FTPS clients go wrong. Servers want the client's TLS
//! close_notify before they trust the data (vsftpd answers a bare end of stream with
//! `426 Failure reading network stream`), and on TLS 1.3 vsftpd sends its session ticket
//! only after it has read the client's close_notify. A client that closes the socket
//! without reading leaves that ticket unread, and the kernel answers unread data with a
//! reset. So an upload ends with close_notify, then reads the data connection to its end
//! while waiting for the final reply.
//!
//! The TCP stream stays open until the server has closed its side: a relay on the way
//! (tinyproxy) closes its connection to the server as soon as the client half-closes,
//! and the server's own close_notify then meets a reset (vsftpd: 426). A server that
//! waits for the TCP end rather than close_notify gets it [`HALF_CLOSE_GRACE`] later.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::commands::{transfer_end, verb, Command};
use super::data::is_data_connection_failure;
use super::{io_error, ControlConnection, State};
use crate::ftp::activity::Activity;
use crate::ftp::error::FtpError;
use crate::ftp::reply::Reply;
use crate::ftp::transport::Transport;

/// How long the data connection is still read once the final reply has come. By then
/// the server has sent everything (its close_notify and any ticket go out on the data
/// connection before the reply on the control connection), so this only covers the two
/// connections' packets arriving out of order.
const DRAIN_AFTER_REPLY: Duration = Duration::from_millis(200);

/// How long after close_notify the TCP stream is half-closed when the server has not
/// closed the data connection by then; added to four of the connection's round trips.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a failed upload waits for the server's reply, which says why (452 disk full,
/// 552 quota) when the server gave up first.
const FAILED_UPLOAD_GRACE: Duration = Duration::from_secs(2);

/// Largest piece written under one idle timeout: a slow link still moves this much in
/// `timeout` seconds, and a stalled one is noticed after one timeout.
const WRITE_PIECE: usize = 256 * 1024;

/// An upload in progress: write the file's bytes, then hand it to
/// [`ControlConnection::finish_upload`] (or, to give up,
/// [`ControlConnection::abandon_upload`]).
pub struct UploadConnection {
    transport: Transport,
    number: u64,
    resumed: Option<bool>,
    shown: String,
    idle_limit: Duration,
    sent: u64,
    activity: Arc<Activity>,
}

impl UploadConnection {
    /// Sends `data`; fails if the server takes nothing for the idle timeout.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), FtpError> {
        for piece in data.chunks(WRITE_PIECE) {
            match tokio::time::timeout(self.idle_limit, self.transport.write_all(piece)).await {
                Err(_) => {
                    return Err(FtpError::Timeout {
                        step: format!("data connection {} ({}) stalled", self.number, self.shown),
                        after: self.idle_limit,
                    })
                }
                Ok(Err(e)) => return Err(io_error(&format!("data connection {}", self.number), e)),
                Ok(Ok(())) => {
                    self.sent += piece.len() as u64;
                    self.activity.add_bytes(piece.len() as u64);
                }
            }
        }
        Ok(())
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The sequence number of this data connection on its control connection (from 1).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether the TLS handshake resumed the control connection's session (None: plain FTP).
    pub fn resumed(&self) -> Option<bool> {
        self.resumed
    }
}

impl ControlConnection {
    /// Starts uploading to `path` (STOR), replacing any file there.
    pub async fn store(&mut self, path: &[u8]) -> Result<UploadConnection, FtpError> {
        let path = &self.reach(path).await?;
        let command = Command::with_arg(&verb::STOR, path)?;
        let shown = command.shown();
        let (channel, _) = self.open_channel(None, command, 0).await?;
        Ok(UploadConnection {
            transport: channel.transport,
            number: channel.number,
            resumed: channel.resumed,
            shown,
            idle_limit: self.options.timeouts.data_idle,
            sent: 0,
            activity: self.activity().clone(),
        })
    }

    /// Ends an upload whose bytes are all written: close_notify, then the data connection
    /// read to its end while the final reply comes. Returns that reply when it says the
    /// file was stored (2xx).
    ///
    /// Nothing goes out on the control connection before that reply, not even the
    /// upload's check, which would save a round trip: ProFTPD and Pure-FTPd read and
    /// answer commands during a transfer (measured: `SIZE` of the file being uploaded
    /// answered `213 0` before the `226`).
    pub async fn finish_upload(&mut self, upload: UploadConnection) -> Result<Reply, FtpError> {
        let UploadConnection {
            mut transport,
            number,
            resumed,
            shown,
            idle_limit,
            sent,
            activity: _,
        } = upload;
        let closed = tokio::time::timeout(idle_limit, transport.send_close_notify()).await;
        let half_close_after = transport
            .tls()
            .map(|_| HALF_CLOSE_GRACE + transport.round_trip().unwrap_or_default() * 4);
        let early = self.end_transfer();
        let step = format!("end of {shown}");
        let (reply, drained) = match early {
            Some(reply) => {
                let drained = drain(&mut transport, DRAIN_AFTER_REPLY, None).await;
                (Ok(reply), drained)
            }
            None => {
                let reading = self.read_reply_for(&step, transfer_end);
                let draining = drain(&mut transport, idle_limit, half_close_after);
                tokio::pin!(reading, draining);
                let mut drained = None;
                let reply = loop {
                    tokio::select! {
                        reply = &mut reading => break reply,
                        bytes = &mut draining, if drained.is_none() => drained = Some(bytes),
                    }
                };
                let drained = match drained {
                    Some(bytes) => bytes,
                    None => drain_more(&mut draining).await,
                };
                (reply, drained)
            }
        };
        drop(transport);
        let reply = reply?;
        self.enter(State::Ready);
        tracing::debug!(
            conn = self.id,
            data = number,
            sent,
            close_notify_sent = matches!(closed, Ok(Ok(()))),
            drained = ?drained,
            tickets_left = self.tickets_held(),
            "upload finished: {reply}"
        );
        if reply.is_success() {
            return Ok(reply);
        }
        if is_data_connection_failure(&reply) {
            self.mark_broken();
            return Err(FtpError::DataRejected {
                number,
                reply,
                resumed,
            });
        }
        Err(FtpError::Rejected {
            command: shown,
            reply,
        })
    }

    /// Ends an upload whose write failed with `error`. The server often gave up first and
    /// says why on the control connection (452 disk full, 552 quota, 426): that reply,
    /// when it comes within a short grace, is the error; otherwise `error` is, and the
    /// connection is not used again.
    pub async fn failed_upload(&mut self, upload: UploadConnection, error: FtpError) -> FtpError {
        let shown = upload.shown.clone();
        drop(upload);
        let early = self.end_transfer();
        let reply = match early {
            Some(reply) => Ok(reply),
            None => {
                match tokio::time::timeout(
                    FAILED_UPLOAD_GRACE,
                    self.read_reply_for(&shown, transfer_end),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        self.mark_broken();
                        return error;
                    }
                }
            }
        };
        match reply {
            Ok(reply) if !reply.is_success() && !reply.is_preliminary() => {
                self.enter(State::Ready);
                tracing::debug!(
                    conn = self.id,
                    "upload failed ({error}); server said {reply}"
                );
                FtpError::Rejected {
                    command: shown,
                    reply,
                }
            }
            _ => {
                self.mark_broken();
                error
            }
        }
    }

    /// Gives up an upload: the data connection is dropped without close_notify, so the
    /// server cannot take what it got for a whole file, and ABOR tells it so. The replies
    /// are read before the next command, as after a download's abort.
    pub async fn abandon_upload(&mut self, upload: UploadConnection) -> Result<(), FtpError> {
        let number = upload.number;
        drop(upload);
        let early = self.end_transfer();
        self.send_abort(number, early.is_none()).await
    }
}

/// Reads `transport` until the server closes it, for at most `limit`; returns the bytes
/// read (application data is not expected; TLS records such as a session ticket are
/// consumed by rustls and count for nothing), or None when the limit passed first. With
/// `half_close_after` (this side still open), the TCP stream is half-closed once the
/// server has closed its side, or when it has not that long in.
async fn drain(
    transport: &mut Transport,
    limit: Duration,
    half_close_after: Option<Duration>,
) -> Option<u64> {
    let mut buf = [0u8; 4096];
    let mut bytes = 0u64;
    let mut half_close_at = half_close_after.map(|after| tokio::time::Instant::now() + after);
    tokio::time::timeout(limit, async {
        loop {
            let read = match half_close_at {
                Some(at) => match tokio::time::timeout_at(at, transport.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        tracing::debug!("the server keeps the data connection open after close_notify; half-closing it");
                        half_close_at = None;
                        let _ = transport.half_close().await;
                        continue;
                    }
                },
                None => transport.read(&mut buf).await,
            };
            match read {
                Ok(0) | Err(_) => {
                    // The server has said all it will: ProFTPD holds its 226 until the
                    // client's side ends too (its lingering close waits up to 10 s).
                    if half_close_at.is_some() {
                        let _ = transport.half_close().await;
                    }
                    return bytes;
                }
                Ok(n) => bytes += n as u64,
            }
        }
    })
    .await
    .ok()
}

/// Gives a drain that was still running when the reply came a moment more.
async fn drain_more(
    draining: &mut std::pin::Pin<&mut impl std::future::Future<Output = Option<u64>>>,
) -> Option<u64> {
    tokio::time::timeout(DRAIN_AFTER_REPLY, draining)
        .await
        .ok()
        .flatten()
}
