//! The FTP layer's error type: every failure names the step and keeps the server's words.

use std::fmt;
use std::io;
use std::time::Duration;

use super::reply::Reply;

/// Everything that can go wrong talking to an FTP(S) server.
#[derive(Debug, thiserror::Error)]
pub enum FtpError {
    /// The TCP connection to the server could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },

    /// The proxy could not be reached, or refused to open the connection.
    #[error("proxy {proxy}: {message}")]
    Proxy { proxy: String, message: String },

    /// A network step did not finish in time.
    #[error("{step} timed out after {}s", .after.as_secs_f32())]
    Timeout { step: String, after: Duration },

    /// The TLS handshake or TLS record layer failed.
    #[error("TLS error during {step}: {source}{}", alert_hint(source))]
    Tls { step: String, source: io::Error },

    /// Reading or writing a socket failed.
    #[error("network error during {step}: {source}")]
    Io { step: String, source: io::Error },

    /// The server closed the control connection.
    #[error("server closed the control connection during {step}")]
    Closed { step: String },

    /// The server answered a command with a reply that means failure.
    #[error("{command}: server replied {reply}")]
    Rejected { command: String, reply: Reply },

    /// The server refused a data connection (often because it did not resume the TLS session).
    #[error("data connection {number} rejected by server: {reply}{}", refusal_hint(reply, *.resumed))]
    DataRejected {
        number: u64,
        reply: Reply,
        resumed: Option<bool>,
    },

    /// A reply that cannot answer the command it was read for: it belongs to another
    /// command (a server answering out of order, a late reply to an earlier one). It is
    /// never taken for an answer; the connection is out of step and is dropped.
    #[error("{command}: the server's reply {reply} cannot answer it, so the connection is out of step (dropped)")]
    Desync { command: String, reply: Reply },

    /// The server's bytes do not follow the protocol.
    #[error("protocol error during {step}: {detail}")]
    Protocol { step: String, detail: String },

    /// This control connection has no TLS 1.3 ticket left, so a data connection could not resume.
    #[error("no TLS session ticket left on this control connection; it must be replaced")]
    TicketsExhausted,

    /// A path cannot be sent on the control connection (CR, LF or NUL would inject commands).
    #[error("path {path:?} contains a CR, LF or NUL byte and cannot be sent to the server")]
    InvalidPath { path: String },

    /// A path too long for any server's command line, even relative to its directory.
    #[error("path {path:?} is too long to send to the server")]
    PathTooLong { path: String },

    /// The TLS configuration could not be built (bad CA file, no roots).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),

    /// No connection could be had from the pool.
    #[error("connection pool: {0}")]
    Pool(String),

    /// A command that changes the server went out, and the connection was lost before
    /// its reply: whether it took effect is unknown. It is never sent again blindly; the
    /// caller looks at the server to find out.
    #[error("{command}: no reply, so whether it took effect is unknown ({source})")]
    Unconfirmed {
        command: String,
        source: Box<FtpError>,
    },
}

/// What an alert the server sent means, for those about the client's certificate: what
/// to do, after rustls's words.
fn alert_hint(source: &io::Error) -> &'static str {
    use rustls::AlertDescription as Alert;
    let Some(alert) = received_alert(source) else {
        return "";
    };
    match alert {
        Alert::CertificateRequired => {
            " (the server requires a client certificate: give one with client_cert=FILE, and client_key=FILE unless that file holds the key too)"
        }
        Alert::BadCertificate
        | Alert::UnsupportedCertificate
        | Alert::CertificateRevoked
        | Alert::CertificateExpired
        | Alert::CertificateUnknown
        | Alert::UnknownCA
        | Alert::AccessDenied => {
            " (the server refused the client certificate, or its absence: check client_cert= and client_key=, and that the server trusts the CA that signed it)"
        }
        Alert::HandshakeFailure => {
            " (the server ended the handshake; if it requires a client certificate, give one with client_cert=FILE)"
        }
        _ => "",
    }
}

/// The alert the server sent, when that is what ended the TLS session.
pub fn received_alert(source: &io::Error) -> Option<rustls::AlertDescription> {
    match source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => Some(*alert),
        _ => None,
    }
}

/// What a refused data connection means, for the refusals servers are known to word so:
/// the cause and what to do, after the server's own words.
fn refusal_hint(reply: &Reply, resumed: Option<bool>) -> &'static str {
    let text = reply.text().to_ascii_lowercase();
    let demands_resumption = (text.contains("reuse") && text.contains("session"))
        || text.contains("not resumed")
        || text.contains("has not resumed")
        || text.contains("cached tls session")
        || (reply.code == 425 && text.contains("operation not permitted"));
    if demands_resumption {
        return match resumed {
            Some(false) => " (the server demands that each data connection resume the control connection's TLS session, and this one did not: drop --no-resume, or see `ftpsfs check` for the handshakes)",
            _ => " (the server demands that each data connection resume the control connection's TLS session and did not accept this one as such: `ftpsfs check` shows every handshake)",
        };
    }
    if reply.code == 534 && text.contains("policy requires ssl") {
        return " (the server demands TLS on data connections: use an ftp:// or ftps:// URL without --plain)";
    }
    match resumed {
        Some(false) => " (the TLS session was not resumed: full handshake)",
        Some(true) | None => "",
    }
}

impl FtpError {
    /// The FTP reply code behind this error, if the server sent one.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            FtpError::Rejected { reply, .. } | FtpError::DataRejected { reply, .. } => {
                Some(reply.code)
            }
            _ => None,
        }
    }

    /// True when the control connection can no longer be trusted to be in sync.
    pub fn breaks_connection(&self) -> bool {
        match self {
            FtpError::Rejected { reply, .. } => reply.code == 421,
            FtpError::InvalidPath { .. }
            | FtpError::PathTooLong { .. }
            | FtpError::TlsConfig(_)
            | FtpError::Pool(_) => false,
            FtpError::Connect { .. }
            | FtpError::Proxy { .. }
            | FtpError::Timeout { .. }
            | FtpError::Tls { .. }
            | FtpError::Io { .. }
            | FtpError::Closed { .. }
            | FtpError::Protocol { .. }
            | FtpError::Desync { .. }
            // A refused data connection means this control connection's session can no
            // longer be resumed (or the server already hung up, as vsftpd does after 522).
            | FtpError::DataRejected { .. }
            | FtpError::TicketsExhausted
            | FtpError::Unconfirmed { .. } => true,
        }
    }

    /// True when the control connection itself was lost (closed, reset, or 421), which
    /// usually means every idle connection to the server was lost with it (server restart,
    /// network cut, idle timeout).
    pub fn connection_lost(&self) -> bool {
        match self {
            FtpError::Closed { .. } | FtpError::Io { .. } => true,
            FtpError::Rejected { reply, .. } => reply.code == 421,
            FtpError::Unconfirmed { source, .. } => source.connection_lost(),
            _ => false,
        }
    }

    /// True when a reply that could not answer its command broke the connection (see
    /// [`FtpError::Desync`]), also under an unconfirmed change: the server answers out of
    /// order, and the operation may be tried again once the mount sends one command at a
    /// time, where looking at the server shows that nothing changed.
    pub fn is_desync(&self) -> bool {
        match self {
            FtpError::Desync { .. } => true,
            FtpError::Unconfirmed { source, .. } => source.is_desync(),
            _ => false,
        }
    }

    /// True when the server does not know the command or its parameters (500-504):
    /// an optional command such as SITE CHMOD or MFMT it lacks.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, FtpError::Rejected { reply, .. } if (500..=504).contains(&reply.code))
    }

    /// True when the server said the file or directory does not exist (550 and kin).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FtpError::Rejected { reply, .. } if reply.code == 550 || reply.code == 450)
    }
}

/// A command as it may appear in logs and errors: the password replaced.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let upper = self.0.get(..5).map(|p| p.to_ascii_uppercase());
        if upper.as_deref() == Some("PASS ") || self.0.eq_ignore_ascii_case("PASS") {
            f.write_str("PASS ****")
        } else {
            f.write_str(self.0)
        }
    }
}
