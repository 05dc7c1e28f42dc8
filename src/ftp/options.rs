//! What a control connection needs to know: where, who, how securely, and how patiently.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use super::identity::CertificateAnswer;
use super::pipelining::Pipelining;
use super::proxy::Proxy;

/// How the control connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection, then `AUTH TLS` (RFC 4217); the default for `ftp://` and `ftpes://`.
    ExplicitTls,
    /// TLS from the first byte (`ftps://`, port 990 by default).
    ImplicitTls,
    /// No TLS at all; only with an explicit user option.
    Plain,
}

impl Security {
    /// True when control and data connections use TLS.
    pub fn uses_tls(self) -> bool {
        !matches!(self, Security::Plain)
    }
}

/// A password that never prints itself.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The password itself, for the PASS command only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Who opens data connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataMode {
    /// The client connects to the port the server names (EPSV, PASV).
    #[default]
    Passive,
    /// The server connects to a port the client listens on (EPRT, PORT), on this
    /// address or the control connection's local one.
    Active(Option<std::net::IpAddr>),
}

/// Upper bounds on every network wait, so nothing hangs.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect to the control or a data port.
    pub connect: Duration,
    /// A TLS handshake.
    pub handshake: Duration,
    /// A whole reply to a command.
    pub reply: Duration,
    /// Silence on a data connection while a transfer is running.
    pub data_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Generous enough for a loaded server across a continent, short enough that a
        // file browser blocked on a dead server gets EIO within half a minute.
        Self {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            reply: Duration::from_secs(20),
            data_idle: Duration::from_secs(20),
        }
    }
}

impl Timeouts {
    /// Every timeout set to the same value (the `timeout=` option).
    pub fn uniform(value: Duration) -> Self {
        Self {
            connect: value,
            handshake: value,
            reply: value,
            data_idle: value,
        }
    }
}

/// Everything needed to open and log in a control connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Host name or IP address as the user gave it; also the TLS server name.
    pub host: String,
    /// Control port.
    pub port: u16,
    /// Explicit, implicit or no TLS.
    pub security: Security,
    /// Login name.
    pub user: String,
    /// Login password.
    pub password: Secret,
    /// Base TLS configuration; each control connection clones it with its own session store.
    pub tls: Arc<ClientConfig>,
    /// The client certificate the configurations send when asked, and whether a server
    /// asked (what `ftpsfs check` reports).
    pub client_certificate: Arc<CertificateAnswer>,
    /// TLS 1.2 only, for the connections that replace those a server left without TLS 1.3
    /// tickets (see [`super::Pool`]); None when the user chose the TLS versions.
    pub tls12_fallback: Option<Arc<ClientConfig>>,
    /// Network timeouts.
    pub timeouts: Timeouts,
    /// The proxy the control and every data connection go through, if any.
    pub proxy: Option<Proxy>,
    /// Passive or active data connections.
    pub data_mode: DataMode,
    /// Connect data connections to the address in a 227 reply instead of the control peer.
    pub trust_pasv_address: bool,
    /// Resume the control connection's TLS session on data connections (off only to diagnose).
    pub resume_data_sessions: bool,
    /// Whether commands go out together: the user's choice and what the server showed,
    /// shared by every connection made with these options.
    pub pipelining: Arc<Pipelining>,
}
