//! TLS configuration: certificate verification, and one session store per control connection.
//!
//! Servers such as ProFTPD and FileZilla Server accept a TLS data connection only if it
//! resumes the session of *the control connection that opened it*. So every control
//! connection gets its own [`SessionStore`] inside its own `ClientConfig`, and its data
//! connections use that config with the control connection's server name. A store shared
//! by several control connections would hand one connection's ticket to another's data
//! connection, which those servers reject.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore, SignatureScheme};

use super::error::FtpError;
use super::identity::CertificateAnswer;

/// rustls keeps at most this many TLS 1.3 tickets per server name, and uses each once.
pub const MAX_TLS13_TICKETS: usize = 8;

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// TLS 1.2 or 1.3, whichever the server prefers.
    #[default]
    Any,
    /// TLS 1.2 only (its session IDs can be resumed any number of times).
    Tls12Only,
    /// TLS 1.3 only.
    Tls13Only,
}

/// How server certificates are checked.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (explicit user opt-out; logged as a warning).
    pub insecure: bool,
    /// The TLS versions to offer.
    pub versions: TlsVersions,
    /// SHA-256 of the server certificate to accept, whoever signed it (like lftp's
    /// `ssl:verify-certificate/<fingerprint>`): for self-signed servers.
    pub fingerprint: Option<[u8; 32]>,
    /// What to send a server that asks for a client certificate (mutual TLS).
    pub client: Arc<CertificateAnswer>,
}

/// SHA-256 of a DER certificate.
pub fn certificate_fingerprint(certificate: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest.as_ref());
    fingerprint
}

/// `sha256:AB:CD:…`, the form `ftpsfs check` prints and `--fingerprint` takes.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    let hex: Vec<String> = fingerprint.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", hex.join(":"))
}

/// Parses `sha256:AB:CD:…` (colons optional, any case).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))
        .unwrap_or(text);
    let digits: String = hex.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "fingerprint {text:?} is not sha256: followed by 32 hex bytes"
        ));
    }
    let mut fingerprint = [0u8; 32];
    for (i, byte) in fingerprint.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(fingerprint)
}

/// Builds the shared base configuration; each control connection then clones it.
pub fn base_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, FtpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match options.versions {
        TlsVersions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls12Only => &[&rustls::version::TLS12],
        TlsVersions::Tls13Only => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| FtpError::TlsConfig(e.to_string()))?;
    if options.fingerprint.is_none() && !options.insecure {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(options)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| FtpError::TlsConfig(e.to_string()))?;
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnknownIssuerHint { inner }))
            .with_client_cert_resolver(options.client.clone());
        return Ok(Arc::new(config));
    }
    if options.fingerprint.is_none() {
        tracing::warn!("certificate verification is DISABLED (--insecure): anyone on the path can impersonate the server");
    }
    let verifier = WithoutCaVerifier {
        pinned: options.fingerprint,
        provider,
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(options.client.clone());
    Ok(Arc::new(config))
}

fn root_store(options: &TlsOptions) -> Result<RootCertStore, FtpError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &options.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| {
                FtpError::TlsConfig(format!("cannot read CA file {}: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(FtpError::TlsConfig(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                FtpError::TlsConfig(format!("bad certificate in {}: {e}", path.display()))
            })?;
        }
        return Ok(roots);
    }
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!("system certificate store: {error}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(FtpError::TlsConfig(
            "no system CA certificates found (install ca-certificates, or pass --ca-file)".into(),
        ));
    }
    Ok(roots)
}

/// Gives a control connection its own session store, so its data connections resume only it.
pub fn per_connection_config(
    base: &Arc<ClientConfig>,
    store: Arc<SessionStore>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::clone(base);
    config.resumption = Resumption::store(store);
    Arc::new(config)
}

/// A config that never resumes: for diagnostics proving a server enforces reuse.
pub fn non_resuming_config(base: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::clone(base);
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Handshake and ticket counters shared by every connection of a pool.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Data connections whose handshake resumed the control connection's session.
    pub data_resumed: AtomicU64,
    /// Data connections that needed a full handshake.
    pub data_full: AtomicU64,
    /// TLS 1.3 tickets received (on control and data connections).
    pub tickets_received: AtomicU64,
    /// TLS 1.3 tickets offered to a server.
    pub tickets_used: AtomicU64,
    /// Control connections replaced because they had no ticket left.
    pub replaced_for_tickets: AtomicU64,
    /// Control connections opened on TLS 1.2 because TLS 1.3 ran out of tickets.
    pub opened_on_tls12: AtomicU64,
    /// Data connections whose TCP connection was opened ahead of their transfer.
    pub data_opened_ahead: AtomicU64,
}

impl TlsStats {
    /// A point-in-time copy of the counters.
    pub fn snapshot(&self) -> TlsStatsSnapshot {
        TlsStatsSnapshot {
            data_resumed: self.data_resumed.load(Ordering::Relaxed),
            data_full: self.data_full.load(Ordering::Relaxed),
            tickets_received: self.tickets_received.load(Ordering::Relaxed),
            tickets_used: self.tickets_used.load(Ordering::Relaxed),
            replaced_for_tickets: self.replaced_for_tickets.load(Ordering::Relaxed),
            opened_on_tls12: self.opened_on_tls12.load(Ordering::Relaxed),
            data_opened_ahead: self.data_opened_ahead.load(Ordering::Relaxed),
        }
    }
}

/// Plain copy of [`TlsStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsStatsSnapshot {
    /// Data connections that resumed.
    pub data_resumed: u64,
    /// Data connections with a full handshake.
    pub data_full: u64,
    /// TLS 1.3 tickets received.
    pub tickets_received: u64,
    /// TLS 1.3 tickets offered.
    pub tickets_used: u64,
    /// Control connections replaced for lack of tickets.
    pub replaced_for_tickets: u64,
    /// Control connections opened on TLS 1.2 because TLS 1.3 ran out of tickets.
    pub opened_on_tls12: u64,
    /// Data connections opened ahead of their transfer.
    pub data_opened_ahead: u64,
}

impl fmt::Display for TlsStatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data connections resumed {}, full handshakes {}; TLS 1.3 tickets received {}, used {}; control connections replaced for lack of tickets {}, opened on TLS 1.2 for that {}; data connections opened ahead {}",
            self.data_resumed,
            self.data_full,
            self.tickets_received,
            self.tickets_used,
            self.replaced_for_tickets,
            self.opened_on_tls12,
            self.data_opened_ahead
        )
    }
}

/// The session store of one control connection: its TLS 1.2 session and TLS 1.3 tickets.
///
/// Unlike rustls's shared memory cache it counts what it holds, so the connection can tell
/// *before* opening a data connection whether it can still resume (see [`SessionStore::can_resume`]).
pub struct SessionStore {
    inner: Mutex<StoreInner>,
    stats: Arc<TlsStats>,
}

#[derive(Default)]
struct StoreInner {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
    /// Whether the server ever gave this connection a TLS 1.2 session or a TLS 1.3 ticket.
    ever_issued: bool,
    /// TLS 1.3 tickets received so far.
    tickets_received: u64,
    /// The one server name this store serves; a different name is a bug, and gets nothing.
    server_name: Option<ServerName<'static>>,
}

impl SessionStore {
    /// An empty store reporting into `stats`.
    pub fn new(stats: Arc<TlsStats>) -> Self {
        Self {
            inner: Mutex::new(StoreInner::default()),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// TLS 1.3 tickets held now.
    pub fn tickets_held(&self) -> usize {
        self.lock().tls13.len()
    }

    /// True when a TLS 1.2 session is held (it can be resumed any number of times).
    pub fn has_tls12_session(&self) -> bool {
        self.lock().tls12.is_some()
    }

    /// Whether the next data connection can offer something to resume.
    pub fn can_resume(&self) -> bool {
        let inner = self.lock();
        inner.tls12.is_some() || !inner.tls13.is_empty()
    }

    /// Whether the server has ever issued something resumable on this connection.
    ///
    /// A server that never does (Pure-FTPd on TLS 1.3) cannot require resumption, so a full
    /// handshake is the right thing there; one that did and stopped has run dry.
    pub fn ever_issued(&self) -> bool {
        self.lock().ever_issued
    }

    /// TLS 1.3 tickets received so far, on the control connection and its data connections.
    pub fn tickets_received(&self) -> u64 {
        self.lock().tickets_received
    }

    fn matches(inner: &mut StoreInner, name: &ServerName<'_>) -> bool {
        match &inner.server_name {
            Some(known) => known == name,
            None => {
                inner.server_name = Some(name.to_owned());
                true
            }
        }
    }
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("SessionStore")
            .field("tls12_session", &inner.tls12.is_some())
            .field("tls13_tickets", &inner.tls13.len())
            .finish()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        let mut inner = self.lock();
        if Self::matches(&mut inner, &server_name) {
            inner.kx_hint = Some(group);
        }
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let mut inner = self.lock();
        Self::matches(&mut inner, server_name)
            .then_some(inner.kx_hint)
            .flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        let mut inner = self.lock();
        if Self::matches(&mut inner, &server_name) {
            inner.tls12 = Some(value);
            inner.ever_issued = true;
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let mut inner = self.lock();
        if Self::matches(&mut inner, server_name) {
            inner.tls12.clone()
        } else {
            None
        }
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        let mut inner = self.lock();
        if Self::matches(&mut inner, server_name) {
            inner.tls12 = None;
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut inner = self.lock();
        if !Self::matches(&mut inner, &server_name) {
            return;
        }
        if inner.tls13.len() >= MAX_TLS13_TICKETS {
            inner.tls13.pop_front();
        }
        inner.tls13.push_back(value);
        inner.ever_issued = true;
        inner.tickets_received += 1;
        self.stats.tickets_received.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(held = inner.tls13.len(), "TLS 1.3 session ticket received");
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut inner = self.lock();
        if !Self::matches(&mut inner, server_name) {
            return None;
        }
        let ticket = inner.tls13.pop_back();
        if ticket.is_some() {
            self.stats.tickets_used.fetch_add(1, Ordering::Relaxed);
        }
        ticket
    }
}

/// The CA check of rustls, unchanged, whose refusal of a certificate from an unknown
/// authority also says what to do: the certificate's fingerprint, and the options that
/// trust it (`--ca-file`, `--fingerprint`).
#[derive(Debug)]
struct UnknownIssuerHint {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for UnknownIssuerHint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
                let fingerprint = format_fingerprint(&certificate_fingerprint(end_entity));
                Err(rustls::Error::General(format!(
                    "invalid peer certificate: UnknownIssuer (no trusted authority signed \
                     it): trust its CA with --ca-file PEM, or pin this very certificate with \
                     --fingerprint {fingerprint}"
                )))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verifier for `--fingerprint` (exactly one certificate, whoever signed it) and for
/// `--insecure` (any certificate). Either way the handshake signatures are still checked,
/// so the server must hold the certificate's private key.
#[derive(Debug)]
struct WithoutCaVerifier {
    /// The only certificate accepted; None accepts any (`--insecure`).
    pinned: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for WithoutCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pinned) = &self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        let actual = certificate_fingerprint(end_entity);
        if actual == *pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate {} does not match the pinned {}",
                format_fingerprint(&actual),
                format_fingerprint(pinned)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip() {
        let fingerprint = certificate_fingerprint(b"not really a certificate");
        let text = format_fingerprint(&fingerprint);
        assert!(text.starts_with("sha256:"));
        assert_eq!(parse_fingerprint(&text), Ok(fingerprint));
        assert_eq!(
            parse_fingerprint(
                &text
                    .replace(':', "")
                    .replace("sha256", "sha256:")
                    .to_lowercase()
            ),
            Ok(fingerprint)
        );
        assert!(parse_fingerprint("sha256:AB:CD").is_err());
        assert!(parse_fingerprint(&"G".repeat(64)).is_err());
    }
}
