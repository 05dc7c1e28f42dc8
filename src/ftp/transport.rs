//! A TCP stream that is either plain or wrapped in TLS, with time-limited steps.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::error::FtpError;
use super::proxy::Proxy;

/// A control or data socket, before or after TLS.
pub enum Transport {
    /// No TLS (before AUTH TLS, or plain FTP).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// The rustls connection state, when TLS is on.
    pub fn tls(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(stream) => Some(stream.get_ref().1),
        }
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(stream) => stream.get_ref().0,
        }
    }

    /// The kernel's smoothed round-trip estimate for the TCP socket (`TCP_INFO`), once
    /// anything has crossed it; `None` where the kernel does not say.
    pub fn round_trip(&self) -> Option<Duration> {
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it,
        // and the descriptor is this transport's open TCP socket.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                self.tcp().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        (rc == 0 && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
    }

    /// True when the peer has closed the connection (its FIN is waiting to be read), seen
    /// without blocking or taking any byte. Bytes waiting are no sign: a TLS 1.3 server
    /// may send session tickets at any time.
    pub fn peer_closed(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`; the descriptor is this
        // transport's open TCP socket; MSG_PEEK leaves the byte in the socket.
        let n = unsafe {
            libc::recv(
                self.tcp().as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0
    }
}

/// Runs `future`, failing with a [`FtpError::Timeout`] naming `step` after `limit`.
pub async fn within<T>(
    limit: Duration,
    step: impl FnOnce() -> String,
    future: impl Future<Output = Result<T, FtpError>>,
) -> Result<T, FtpError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(FtpError::Timeout {
            step: step(),
            after: limit,
        }),
    }
}

/// Opens a TCP connection with a time limit.
async fn connect_tcp(host: &str, port: u16, limit: Duration) -> Result<TcpStream, FtpError> {
    let addr = display_addr(host, port);
    within(limit, || format!("connecting to {addr}"), async {
        let stream =
            TcpStream::connect((host, port))
                .await
                .map_err(|source| FtpError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
        // Commands are small and latency-bound; Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    })
    .await
}

/// Opens a TCP connection to `host`:`port`, through `proxy` when there is one, with a
/// time limit.
pub async fn dial(
    proxy: Option<&Proxy>,
    host: &str,
    port: u16,
    limit: Duration,
) -> Result<TcpStream, FtpError> {
    match proxy {
        // Boxed: the handshakes' state would otherwise sit in every future that connects.
        Some(proxy) => Box::pin(proxy.connect(host, port, limit)).await,
        None => connect_tcp(host, port, limit).await,
    }
}

/// `host:port`, with brackets around IPv6 literals.
pub fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Runs a TLS client handshake over `tcp` with a time limit.
pub async fn tls_handshake(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    limit: Duration,
    step: &str,
) -> Result<TlsStream<TcpStream>, FtpError> {
    within(limit, || format!("TLS handshake of {step}"), async {
        TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|source| FtpError::Tls {
                step: step.to_string(),
                source: plain_words(source),
            })
    })
    .await
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Transport {
    /// Says that the data is complete: TLS close_notify, with the TCP stream left open in
    /// both directions so that the server's own close_notify (and a TLS 1.3 ticket) can
    /// still come back through any relay; plain FTP has only the end of the stream.
    pub async fn send_close_notify(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.shutdown().await,
            Transport::Tls(stream) => {
                stream.get_mut().1.send_close_notify();
                stream.flush().await
            }
        }
    }

    /// Ends the TCP stream's sending side (a FIN), after [`Self::send_close_notify`].
    pub async fn half_close(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.shutdown().await,
            Transport::Tls(stream) => stream.get_mut().0.shutdown().await,
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TLS error with words of ours (rustls's `General`, which it prefixes with
/// "unexpected error") as those words alone.
fn plain_words(source: io::Error) -> io::Error {
    match source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::General(words)) => io::Error::new(source.kind(), words.clone()),
        _ => source,
    }
}
