//! Active mode (RFC 959 PORT, RFC 2428 EPRT): the server connects to a port this side
//! listens on, for servers whose passive ports a firewall closes. This side is still the
//! TLS client on that connection (RFC 4217, section 7), and resumes the control
//! connection's session as a passive connection does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};

use super::commands::{verb, Command};
use super::data::{is_data_connection_failure, Channel};
use super::{ControlConnection, State};
use crate::ftp::error::FtpError;
use crate::ftp::reply::Reply;
use crate::ftp::transport::{tls_handshake, within, Transport};

impl ControlConnection {
    /// Sends `preface` (if any), announces a listening port, sends `command`, and takes
    /// the server's connection to that port: only from the server's address.
    pub(super) async fn open_active_channel(
        &mut self,
        preface: Option<&Command>,
        command: Command,
        offset: u64,
        address: Option<IpAddr>,
    ) -> Result<(Channel, Option<Reply>), FtpError> {
        let preface_reply = match preface {
            Some(preface) => Some(self.command(preface.clone()).await?),
            None => None,
        };
        let ip = address.unwrap_or(self.local.ip());
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|source| FtpError::Io {
                step: format!("listening on {ip} for an active data connection"),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| FtpError::Io {
                step: "reading the active data port".into(),
                source,
            })?
            .port();
        self.announce_port(ip, port).await?;
        if offset > 0 {
            let reply = self
                .command(Command::with_arg(&verb::REST, offset.to_string())?)
                .await?;
            if reply.code != 350 {
                return Err(FtpError::Rejected {
                    command: format!("REST {offset}"),
                    reply,
                });
            }
        }
        let number = self.data_connections + 1;
        self.data_connections = number;
        self.activity.count_data_connection();
        let step = format!("active data connection {number}");
        self.send(&command).await?;
        let reply = self.read_reply_to(&command).await?;
        if !(reply.is_preliminary() || reply.is_success()) {
            self.enter(State::Ready);
            self.retire_if_offset_kept(offset);
            return Err(if is_data_connection_failure(&reply) {
                FtpError::DataRejected {
                    number,
                    reply,
                    resumed: None,
                }
            } else {
                FtpError::Rejected {
                    command: command.shown(),
                    reply,
                }
            });
        }
        let server = self.peer.ip();
        let accepted = within(
            self.options.timeouts.connect,
            || format!("waiting for the server to open {step} to {ip}:{port}"),
            accept_from(&listener, server),
        )
        .await;
        drop(listener);
        let tcp = match accepted {
            Ok(tcp) => tcp,
            Err(e) => {
                // The server still waits to connect, or has given up: out of step.
                self.mark_broken();
                return Err(e);
            }
        };
        let transport = match self.data_tls_config() {
            None => Transport::Plain(tcp),
            Some(config) => {
                let handshake = tls_handshake(
                    tcp,
                    config,
                    self.server_name.clone(),
                    self.options.timeouts.handshake,
                    &step,
                )
                .await;
                match handshake {
                    Ok(stream) => Transport::Tls(Box::new(stream)),
                    Err(error) => return Err(self.handshake_failed(number, error).await),
                }
            }
        };
        let channel = self.channel_open(transport, number, &command, reply);
        Ok((channel, preface_reply))
    }

    /// Tells the server where to connect: EPRT (RFC 2428), or PORT where the server
    /// does not know EPRT.
    async fn announce_port(&mut self, ip: IpAddr, port: u16) -> Result<(), FtpError> {
        if !self.eprt_refused {
            let reply = self
                .command(Command::with_arg(&verb::EPRT, eprt_argument(ip, port))?)
                .await?;
            if reply.is_success() {
                return Ok(());
            }
            if !(500..=504).contains(&reply.code) {
                return Err(FtpError::Rejected {
                    command: "active mode: EPRT".into(),
                    reply,
                });
            }
            tracing::debug!(conn = self.id, %reply, "EPRT refused; using PORT from now on");
            self.eprt_refused = true;
        }
        let IpAddr::V4(v4) = ip else {
            return Err(FtpError::Protocol {
                step: "PORT".into(),
                detail: "the server refused EPRT, and PORT cannot express an IPv6 address".into(),
            });
        };
        let reply = self
            .command(Command::with_arg(&verb::PORT, port_argument(v4, port))?)
            .await?;
        if reply.is_success() {
            Ok(())
        } else {
            Err(FtpError::Rejected {
                command: "active mode: PORT".into(),
                reply,
            })
        }
    }
}

/// Accepts the first connection that comes from `server`; others are closed (anyone
/// could connect to the port between the announcement and the server).
async fn accept_from(listener: &TcpListener, server: IpAddr) -> Result<TcpStream, FtpError> {
    loop {
        let (stream, from) = listener.accept().await.map_err(|source| FtpError::Io {
            step: "accepting the active data connection".into(),
            source,
        })?;
        if from.ip().to_canonical() == server.to_canonical() {
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
        tracing::warn!(%from, %server, "closed a connection to the active data port that did not come from the server");
    }
}

/// `|1|127.0.0.1|5282|` or `|2|::1|5282|` (RFC 2428, section 2).
fn eprt_argument(ip: IpAddr, port: u16) -> String {
    let family = match ip {
        IpAddr::V4(_) => 1,
        IpAddr::V6(_) => 2,
    };
    format!("|{family}|{ip}|{port}|")
}

/// `h1,h2,h3,h4,p1,p2` (RFC 959, section 4.1.2).
fn port_argument(ip: Ipv4Addr, port: u16) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection from another address (127.0.0.2 is loopback too) that reaches the
    /// port first is closed, and the server's is taken.
    #[test]
    fn only_the_servers_connection_is_taken() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let target: SocketAddr = ([127, 0, 0, 1], port).into();
            let intruder = tokio::net::TcpSocket::new_v4().unwrap();
            intruder.bind(([127, 0, 0, 2], 0).into()).unwrap();
            let mut intruder = intruder.connect(target).await.unwrap();
            let server = TcpStream::connect(target).await.unwrap();
            let taken = within(
                Duration::from_secs(5),
                || "accepting".into(),
                accept_from(&listener, "127.0.0.1".parse().unwrap()),
            )
            .await
            .unwrap();
            assert_eq!(taken.peer_addr().unwrap(), server.local_addr().unwrap());
            // The intruder's connection was closed: it reads the end.
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncReadExt::read(&mut intruder, &mut byte),
            )
            .await
            .unwrap();
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        });
    }

    #[test]
    fn port_and_eprt_arguments() {
        assert_eq!(
            port_argument(Ipv4Addr::new(192, 168, 1, 2), 5282),
            "192,168,1,2,20,162"
        );
        assert_eq!(
            eprt_argument("127.0.0.1".parse().unwrap(), 5282),
            "|1|127.0.0.1|5282|"
        );
        assert_eq!(
            eprt_argument("::1".parse().unwrap(), 65535),
            "|2|::1|65535|"
        );
    }
}
