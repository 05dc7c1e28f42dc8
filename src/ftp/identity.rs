//! Client certificates (mutual TLS): the certificate and key a server may demand, checked
//! before the first connection so that a wrong file is named in one line, not found out
//! as a TLS alert in the middle of a login.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::listing::{format_time_val, parse_time_val};

/// A client certificate chain and its private key, checked to belong together and to be
/// valid now.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The file the certificate came from, for messages.
    pub certificate_file: PathBuf,
    /// The end of the certificate's validity, seconds since 1970.
    pub not_after: i64,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificate_file", &self.certificate_file)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Checks and takes the certificate chain in `certificate_pem` (the text of
    /// `certificate_file`) and the private key in `key_pem` (of `key_file`, which may be
    /// the same file), at `now` (seconds since 1970). The error is one line naming the
    /// file and what is wrong with it.
    pub fn from_pem(
        certificate_file: &Path,
        certificate_pem: &[u8],
        key_file: &Path,
        key_pem: &[u8],
        now: i64,
    ) -> Result<Self, String> {
        let cert_name = certificate_file.display();
        let key_name = key_file.display();
        let chain = CertificateDer::pem_slice_iter(certificate_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{cert_name}: not a PEM certificate file ({e})"))?;
        let Some(end_entity) = chain.first() else {
            return Err(format!(
                "{cert_name}: holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)"
            ));
        };
        let key_text = String::from_utf8_lossy(key_pem);
        if key_text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || key_text.contains("Proc-Type: 4,ENCRYPTED")
        {
            return Err(format!(
                "{key_name}: the private key is encrypted, and a mount cannot ask for its \
                 passphrase; decrypt it into a file only you can read (openssl pkey -in \
                 {key_name} -out NEW.key; chmod 600 NEW.key) and give that"
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => format!(
                "{key_name}: holds no private key (a PEM block -----BEGIN PRIVATE KEY-----, \
                 RSA PRIVATE KEY or EC PRIVATE KEY)"
            ),
            e => format!("{key_name}: unreadable private key ({e})"),
        })?;
        let (not_before, not_after) = validity(end_entity).ok_or_else(|| {
            format!("{cert_name}: the first certificate is not a readable X.509 certificate")
        })?;
        if now > not_after {
            return Err(format!(
                "{cert_name}: the certificate expired on {}",
                shown_time(not_after)
            ));
        }
        if now < not_before {
            return Err(format!(
                "{cert_name}: the certificate is not valid before {}",
                shown_time(not_before)
            ));
        }
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{key_name}: this private key does not belong to the certificate in {cert_name}"
            ),
            e => format!("{key_name}: a key ftpsfs cannot sign with ({e})"),
        })?;
        Ok(Self {
            certificate_file: certificate_file.to_path_buf(),
            not_after,
            key: Arc::new(key),
        })
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn shown_time(unix_seconds: i64) -> String {
    match format_time_val(unix_seconds) {
        Some(t) => format!(
            "{}-{}-{} {}:{}:{} UTC",
            &t[0..4],
            &t[4..6],
            &t[6..8],
            &t[8..10],
            &t[10..12],
            &t[12..14]
        ),
        None => format!("{unix_seconds} (seconds since 1970)"),
    }
}

/// What a TLS client sends when a server asks for a certificate: the identity, if any,
/// and a note that the server asked (for `ftpsfs check` and for the error when it then
/// refuses the connection).
#[derive(Debug)]
pub struct CertificateAnswer {
    identity: Option<ClientIdentity>,
    asked: AtomicBool,
}

impl Default for CertificateAnswer {
    /// No certificate to send.
    fn default() -> Self {
        Self {
            identity: None,
            asked: AtomicBool::new(false),
        }
    }
}

impl CertificateAnswer {
    /// Answers with `identity`, or with no certificate.
    pub fn new(identity: Option<ClientIdentity>) -> Arc<Self> {
        Arc::new(Self {
            identity,
            asked: AtomicBool::new(false),
        })
    }

    /// Whether a server asked for a client certificate so far.
    pub fn was_asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// The file of the certificate there is to send, if any.
    pub fn identity_file(&self) -> Option<&Path> {
        self.identity
            .as_ref()
            .map(|identity| identity.certificate_file.as_path())
    }
}

impl ResolvesClientCert for CertificateAnswer {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        let key = &self.identity.as_ref()?.key;
        if key.key.choose_scheme(sigschemes).is_none() {
            tracing::warn!(
                "the server accepts none of the signature schemes this client key can make"
            );
            return None;
        }
        tracing::debug!("sending the client certificate the server asked for");
        Some(key.clone())
    }

    fn has_certs(&self) -> bool {
        self.identity.is_some()
    }
}

/// The validity of a DER X.509 certificate (RFC 5280 §4.1): notBefore and notAfter, in
/// seconds since 1970. None for anything that is not shaped like a certificate.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&EXPLICIT_VERSION) {
        rest = skip(rest)?;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = skip(rest)?;
    }
    let (validity, _) = element(rest, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

const SEQUENCE: u8 = 0x30;
const EXPLICIT_VERSION: u8 = 0xA0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The content of the DER element at the start of `input` if its tag is `tag`, and what
/// follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (len, header) = match *input.get(1)? {
        short @ 0..=0x7f => (usize::from(short), 2),
        long => {
            let bytes = usize::from(long & 0x7f);
            if bytes == 0 || bytes > 4 {
                return None;
            }
            let len = input
                .get(2..2 + bytes)?
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, 2 + bytes)
        }
    };
    let content = input.get(header..header.checked_add(len)?)?;
    Some((content, &input[header + len..]))
}

/// What follows the DER element at the start of `input`, whatever its tag.
fn skip(input: &[u8]) -> Option<&[u8]> {
    element(input, *input.first()?).map(|(_, rest)| rest)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`)
/// at the start of `input`, in seconds since 1970, and what follows it.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let tag = *input.first()?;
    let (text, rest) = element(input, tag)?;
    let digits = text.strip_suffix(b"Z")?;
    let full: Vec<u8> = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let century: &[u8] = if digits[0] < b'5' { b"20" } else { b"19" };
            [century, digits].concat()
        }
        (GENERALIZED_TIME, 14) => digits.to_vec(),
        _ => return None,
    };
    Some((parse_time_val(&full)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a short or long length.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn certificate(not_before: &[u8], not_after: &[u8]) -> Vec<u8> {
        let validity = der(SEQUENCE, &[not_before, not_after].concat());
        let tbs = [
            der(EXPLICIT_VERSION, &der(0x02, &[2])),
            der(0x02, &[0x01, 0x23]),
            der(SEQUENCE, &der(0x06, &[0x2a, 0x86, 0x48])),
            der(SEQUENCE, &[0u8; 200]),
            validity,
            der(SEQUENCE, b"subject"),
        ]
        .concat();
        der(
            SEQUENCE,
            &[
                der(SEQUENCE, &tbs),
                der(SEQUENCE, b"alg"),
                der(0x03, b"sig"),
            ]
            .concat(),
        )
    }

    #[test]
    fn validity_reads_both_forms_of_time() {
        let cert = certificate(
            &der(UTC_TIME, b"491231235959Z"),
            &der(GENERALIZED_TIME, b"20500101000000Z"),
        );
        assert_eq!(validity(&cert), Some((2_524_607_999, 2_524_608_000)));
        let old = certificate(
            &der(UTC_TIME, b"700101000000Z"),
            &der(UTC_TIME, b"991231235959Z"),
        );
        assert_eq!(validity(&old), Some((0, 946_684_799)));
    }

    #[test]
    fn validity_refuses_what_is_not_a_certificate() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&der(SEQUENCE, b"short")), None);
        let local_time = certificate(
            &der(UTC_TIME, b"700101000000+0100"),
            &der(UTC_TIME, b"991231235959Z"),
        );
        assert_eq!(validity(&local_time), None);
        let mut cut = certificate(
            &der(UTC_TIME, b"700101000000Z"),
            &der(UTC_TIME, b"991231235959Z"),
        );
        cut.truncate(cut.len() / 2);
        assert_eq!(validity(&cut), None);
    }

    #[test]
    fn unusable_files_are_named_with_the_cause() {
        let cert = Path::new("/c.pem");
        let key = Path::new("/k.pem");
        let err = ClientIdentity::from_pem(cert, b"nothing here", key, b"", 0).unwrap_err();
        assert!(err.starts_with("/c.pem: holds no certificate"), "{err}");
        let pem_cert = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = ClientIdentity::from_pem(cert, pem_cert, key, encrypted, 0).unwrap_err();
        assert!(
            err.starts_with("/k.pem: the private key is encrypted"),
            "{err}"
        );
        let err = ClientIdentity::from_pem(cert, pem_cert, key, b"no key", 0).unwrap_err();
        assert!(err.starts_with("/k.pem: holds no private key"), "{err}");
        let key_pem = b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
        let err = ClientIdentity::from_pem(cert, pem_cert, key, key_pem, 0).unwrap_err();
        assert!(err.contains("not a readable X.509 certificate"), "{err}");
    }
}
