//! From what the user typed to [`ConnectOptions`]: the URL, the password source, TLS settings.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ftp::identity::{CertificateAnswer, ClientIdentity};
use crate::ftp::{self, ConnectOptions, Secret, Security, Timeouts, TlsOptions};

/// Why the user's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is malformed or unsupported.
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// No password could be found, or a password source is unsafe or unreadable.
    #[error("password: {0}")]
    Password(String),
    /// The TLS settings are unusable.
    #[error("{0}")]
    Tls(#[from] ftp::FtpError),
    /// The client certificate or its key is unusable or unsafe.
    #[error("client certificate: {0}")]
    ClientCertificate(String),
    /// The proxy setting is unusable.
    #[error("{0}")]
    Proxy(String),
    /// An option is inconsistent.
    #[error("{0}")]
    Option(String),
}

/// A parsed `ftp://`, `ftpes://` or `ftps://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpUrl {
    /// Explicit or implicit TLS (from the scheme).
    pub security: Security,
    /// Login name, if the URL has one (percent-decoded).
    pub user: Option<String>,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port: given, or 21 / 990 by scheme.
    pub port: u16,
    /// Remote path, percent-decoded; empty means the login directory.
    pub path: Vec<u8>,
}

impl FtpUrl {
    /// Parses a URL; a password in it is refused, since argv is visible to every user.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::BadUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected ftp://, ftpes:// or ftps://"))?;
        let security = match scheme.to_ascii_lowercase().as_str() {
            "ftp" | "ftpes" => Security::ExplicitTls,
            "ftps" => Security::ImplicitTls,
            _ => {
                return Err(bad(
                    "the scheme must be ftp, ftpes (explicit TLS) or ftps (implicit TLS)",
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let user = match userinfo {
            None => None,
            Some(info) => {
                if info.contains(':') {
                    return Err(bad("do not put the password in the URL (other users can read it in the process list); use FTPSFS_PASSWORD, --password-file, ~/.netrc or the prompt"));
                }
                let decoded =
                    percent_decode(info).ok_or_else(|| bad("bad %-escape in the user name"))?;
                let user =
                    String::from_utf8(decoded).map_err(|_| bad("the user name is not UTF-8"))?;
                if user.is_empty() {
                    return Err(bad("empty user name before '@'"));
                }
                Some(user)
            }
        };
        let (host, port) = split_host_port(hostport).map_err(|r| bad(&r))?;
        let port = port.unwrap_or(match security {
            Security::ImplicitTls => 990,
            _ => 21,
        });
        let path = percent_decode(path).ok_or_else(|| bad("bad %-escape in the path"))?;
        if path.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(bad("the path contains a CR, LF or NUL byte"));
        }
        Ok(Self {
            security,
            user,
            host,
            port,
            path,
        })
    }
}

/// The URL with any password replaced, fit for error messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:****{}{tail}", &authority[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let end = rest.find(']').ok_or("missing ']' after an IPv6 address")?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after ']'")?),
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("no host name".into());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(format!("{host:?} is not a host name"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port number"))?,
        ),
    };
    Ok((host, port))
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Where the password comes from, in the order tried.
#[derive(Debug, Clone, Default)]
pub struct PasswordSources {
    /// `--password-file` / `password_file=`.
    pub password_file: Option<PathBuf>,
    /// The `~/.netrc` to consult (None: `$HOME/.netrc`).
    pub netrc: Option<PathBuf>,
    /// Whether an interactive prompt is allowed (stdin is a terminal and not daemonised).
    pub allow_prompt: bool,
}

/// User and password for a URL, from FTPSFS_PASSWORD, a password file, ~/.netrc or a prompt.
pub fn resolve_credentials(
    url: &FtpUrl,
    sources: &PasswordSources,
) -> Result<(String, Secret), ConfigError> {
    let netrc_path = sources
        .netrc
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".netrc")));
    let netrc = match &netrc_path {
        Some(path) if path.exists() => read_netrc(path, &url.host)?,
        _ => None,
    };
    let user = url
        .user
        .clone()
        .or_else(|| netrc.as_ref().and_then(|n| n.login.clone()))
        .unwrap_or_else(|| "anonymous".to_string());
    if let Some(password) = take_password_env() {
        return Ok((user, Secret::new(password)));
    }
    if let Some(path) = &sources.password_file {
        return Ok((user, Secret::new(read_password_file(path)?)));
    }
    if let Some(entry) = netrc {
        let login_matches = entry.login.as_deref().is_none_or(|l| l == user);
        if let (true, Some(password)) = (login_matches, entry.password) {
            return Ok((user, Secret::new(password)));
        }
    }
    if user == "anonymous" || user == "ftp" {
        return Ok((user, Secret::new("anonymous@".into())));
    }
    if sources.allow_prompt && io::stdin().is_terminal() {
        return Ok((
            user.clone(),
            Secret::new(prompt_password(&user, &url.host)?),
        ));
    }
    Err(ConfigError::Password(format!(
        "no password for {user}@{}: set FTPSFS_PASSWORD, use --password-file, add it to ~/.netrc, or run in a terminal to be asked",
        url.host
    )))
}

/// The password in FTPSFS_PASSWORD, taken out of the environment: fusermount3 and any
/// other program this process starts would inherit it, and `/proc/PID/environ` shows the
/// environment the process started with, so that copy is blanked too. Called before any
/// thread starts (the environment is not thread-safe).
fn take_password_env() -> Option<String> {
    let password = std::env::var("FTPSFS_PASSWORD").ok()?;
    // SAFETY: single-threaded here (see above). getenv returns the value's bytes in
    // place, in the block the kernel gave the process (unless something set it since),
    // which is writable; its length is that of the value just read.
    unsafe {
        let value = libc::getenv(c"FTPSFS_PASSWORD".as_ptr());
        if !value.is_null() && libc::strlen(value) == password.len() {
            std::ptr::write_bytes(value, 0, password.len());
        }
    }
    std::env::remove_var("FTPSFS_PASSWORD");
    Some(password)
}

/// Refuses a file of secrets that other users could read or change (.netrc's rule): it
/// must belong to the user or root and have no group or other bits.
fn check_private_file(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {mode:04o}); chmod 600 it first",
            path.display()
        ));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to another user (uid {}); it must be yours or root's",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// The client certificate of `client_cert=` and its key (`client_key=`, or the same
/// file), checked; the key's file must be as private as a password file.
pub fn client_identity(
    settings: &ConnectionSettings,
) -> Result<Option<ClientIdentity>, ConfigError> {
    let Some(certificate) = &settings.client_cert else {
        return match &settings.client_key {
            Some(key) => Err(ConfigError::ClientCertificate(format!(
                "client_key={} needs client_cert=FILE, the certificate it belongs to",
                key.display()
            ))),
            None => Ok(None),
        };
    };
    let key = settings.client_key.as_ref().unwrap_or(certificate);
    check_private_file(key).map_err(ConfigError::ClientCertificate)?;
    let read = |path: &Path| {
        fs::read(path).map_err(|e| {
            ConfigError::ClientCertificate(format!("cannot read {}: {e}", path.display()))
        })
    };
    let certificate_pem = read(certificate)?;
    let key_pem = if key == certificate {
        certificate_pem.clone()
    } else {
        read(key)?
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    ClientIdentity::from_pem(certificate, &certificate_pem, key, &key_pem, now)
        .map(Some)
        .map_err(ConfigError::ClientCertificate)
}

/// Reads a password file (first line), refusing one that other users could read or change
/// (see [`check_private_file`]).
pub fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    check_private_file(path).map_err(ConfigError::Password)?;
    let text = fs::read_to_string(path)
        .map_err(|e| ConfigError::Password(format!("cannot read {}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(ConfigError::Password(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(password)
}

/// One `machine` (or `default`) entry of a .netrc file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetrcEntry {
    /// `login` token.
    pub login: Option<String>,
    /// `password` token.
    pub password: Option<String>,
}

fn read_netrc(path: &Path, host: &str) -> Result<Option<NetrcEntry>, ConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!("ignoring {}: {e}", path.display());
            return Ok(None);
        }
    };
    let entry = parse_netrc(&text, host);
    if entry.as_ref().is_some_and(|e| e.password.is_some()) {
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        // ftp(1)'s rule: a .netrc holding passwords must not be readable by others.
        if mode & 0o077 != 0 {
            return Err(ConfigError::Password(format!(
                "{} holds a password but is readable by other users; chmod 600 it",
                path.display()
            )));
        }
    }
    Ok(entry)
}

/// Finds the entry for `host` (or the `default` entry) in .netrc text.
pub fn parse_netrc(text: &str, host: &str) -> Option<NetrcEntry> {
    let mut tokens = text.split_whitespace();
    let mut found: Option<NetrcEntry> = None;
    let mut default: Option<NetrcEntry> = None;
    let mut current: Option<(bool, NetrcEntry)> = None;
    let finish = |current: &mut Option<(bool, NetrcEntry)>,
                  found: &mut Option<NetrcEntry>,
                  default: &mut Option<NetrcEntry>| {
        if let Some((is_default, entry)) = current.take() {
            if is_default {
                default.get_or_insert(entry);
            } else {
                found.get_or_insert(entry);
            }
        }
    };
    while let Some(token) = tokens.next() {
        match token {
            "machine" => {
                finish(&mut current, &mut found, &mut default);
                let name = tokens.next().unwrap_or("");
                if name == host && found.is_none() {
                    current = Some((
                        false,
                        NetrcEntry {
                            login: None,
                            password: None,
                        },
                    ));
                }
            }
            "default" => {
                finish(&mut current, &mut found, &mut default);
                current = Some((
                    true,
                    NetrcEntry {
                        login: None,
                        password: None,
                    },
                ));
            }
            "login" | "password" | "account" => {
                let value = tokens.next().map(str::to_string);
                if let Some((_, entry)) = current.as_mut() {
                    match token {
                        "login" => entry.login = value,
                        "password" => entry.password = value,
                        _ => {}
                    }
                }
            }
            "macdef" => {
                // A macro runs to the next blank line; tokens cannot see that, and
                // ftpsfs has no use for macros, so stop here.
                finish(&mut current, &mut found, &mut default);
                break;
            }
            _ => {}
        }
    }
    finish(&mut current, &mut found, &mut default);
    found.or(default)
}

fn prompt_password(user: &str, host: &str) -> Result<String, ConfigError> {
    let mut stderr = io::stderr();
    let _ = write!(stderr, "Password for {user}@{host}: ");
    let _ = stderr.flush();
    let echo_guard = EchoOff::new();
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    drop(echo_guard);
    let _ = writeln!(stderr);
    read.map_err(|e| ConfigError::Password(format!("cannot read the password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Turns terminal echo off while a password is typed, and back on when dropped.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr only read and write the termios struct we own.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut term) != 0 {
                return Self { saved: None };
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term);
            Self { saved: Some(saved) }
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}

/// Settings that, with the URL and credentials, make a [`ConnectOptions`].
#[derive(Debug, Clone, Default)]
pub struct ConnectionSettings {
    /// Certificate checks and TLS versions.
    pub tls: TlsOptions,
    /// Allow plain FTP (only with `ftp://`).
    pub plain: bool,
    /// Network timeouts.
    pub timeouts: Timeouts,
    /// Obey the address in 227 replies.
    pub trust_pasv_address: bool,
    /// Resume sessions on data connections (off only to diagnose a server).
    pub no_resume: bool,
    /// `pipelining=`: whether commands may go out together.
    pub pipelining: ftp::PipeliningMode,
    /// `client_cert=`: the client certificate (PEM) for servers that demand one.
    pub client_cert: Option<PathBuf>,
    /// `client_key=`: its private key (PEM), when not in the certificate's file.
    pub client_key: Option<PathBuf>,
    /// `proxy=`: a proxy URL, `none`, or unset (the environment decides).
    pub proxy: ProxySetting,
    /// `proxy_password_file=`: the proxy user's password.
    pub proxy_password_file: Option<PathBuf>,
    /// `active[=ADDRESS]`: the server opens data connections.
    pub data_mode: ftp::DataMode,
}

/// What `proxy=` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// Not given: `all_proxy` or `ALL_PROXY` name one, unless `no_proxy` excludes the host.
    #[default]
    FromEnvironment,
    /// `proxy=none`: connect directly whatever the environment says.
    Direct,
    /// `proxy=URL`.
    Url(String),
}

/// The proxy to use for `host`: `proxy=`, else the environment as `getenv` reads it;
/// with its password from `proxy_password_file=` (or the environment's URL).
pub fn resolve_proxy(
    settings: &ConnectionSettings,
    host: &str,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ftp::Proxy>, ConfigError> {
    let bad = |message: String| ConfigError::Proxy(message);
    let from_environment = |name: &str| getenv(name).filter(|v| !v.trim().is_empty());
    let parsed = match &settings.proxy {
        ProxySetting::Direct => None,
        ProxySetting::Url(url) => {
            let parsed = ftp::Proxy::parse(url)
                .map_err(|e| bad(format!("proxy={}: {e}", ftp::proxy::redact_userinfo(url))))?;
            if parsed.password.is_some() {
                return Err(bad(format!(
                    "proxy={}: do not put the password in the URL (other users can read it in the process list); use proxy_password_file=FILE",
                    ftp::proxy::redact_userinfo(url)
                )));
            }
            Some(parsed)
        }
        ProxySetting::FromEnvironment => {
            let named = ["all_proxy", "ALL_PROXY"]
                .into_iter()
                .find_map(|name| from_environment(name).map(|url| (name, url)));
            let excluded = ["no_proxy", "NO_PROXY"]
                .into_iter()
                .find_map(from_environment)
                .is_some_and(|list| ftp::proxy::excluded_by_no_proxy(host, &list));
            match named {
                Some((name, url)) if !excluded => {
                    let parsed = ftp::Proxy::parse(url.trim()).map_err(|e| {
                        bad(format!(
                            "{name}={}: {e} (proxy=none ignores it)",
                            ftp::proxy::redact_userinfo(&url)
                        ))
                    })?;
                    tracing::debug!(proxy = %parsed.proxy, "proxy from {name}");
                    Some(parsed)
                }
                _ => None,
            }
        }
    };
    let Some(ftp::proxy::ParsedProxy {
        mut proxy,
        password,
    }) = parsed
    else {
        if let Some(file) = &settings.proxy_password_file {
            return Err(bad(format!(
                "proxy_password_file={} is given, but no proxy is",
                file.display()
            )));
        }
        return Ok(None);
    };
    let password = match &settings.proxy_password_file {
        Some(file) => {
            if proxy.user.is_none() {
                return Err(bad(format!(
                    "proxy_password_file={} needs a user in the proxy URL ({}://USER@HOST:PORT)",
                    file.display(),
                    proxy.scheme()
                )));
            }
            check_private_file(file).map_err(bad)?;
            let text = fs::read_to_string(file)
                .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
            let password = text.lines().next().unwrap_or("");
            if password.is_empty() {
                return Err(bad(format!("{} is empty", file.display())));
            }
            Some(Secret::new(password.to_string()))
        }
        None => password,
    };
    if let Some(password) = password {
        if proxy.kind == ftp::proxy::ProxyKind::Socks5 && password.expose().len() > 255 {
            return Err(bad("SOCKS5 passwords are at most 255 bytes".into()));
        }
        proxy.password = password;
    }
    Ok(Some(proxy))
}

/// Puts URL, credentials and settings together.
pub fn connect_options(
    url: &FtpUrl,
    user: String,
    password: Secret,
    settings: &ConnectionSettings,
) -> Result<ConnectOptions, ConfigError> {
    let security = if settings.plain {
        if url.security != Security::ExplicitTls {
            return Err(ConfigError::Option(
                "--plain works only with ftp:// URLs".into(),
            ));
        }
        tracing::warn!(
            "plain FTP (--plain): the password and all data cross the network unencrypted"
        );
        Security::Plain
    } else {
        url.security
    };
    let proxy = resolve_proxy(settings, &url.host, &|name| std::env::var(name).ok())?;
    if let (ftp::DataMode::Active(_), Some(proxy)) = (settings.data_mode, &proxy) {
        return Err(ConfigError::Option(format!(
            "active mode cannot go through proxy {proxy}: the server would have to connect back through it; drop `active`, or use proxy=none"
        )));
    }
    let tls = TlsOptions {
        client: CertificateAnswer::new(client_identity(settings)?),
        ..settings.tls.clone()
    };
    Ok(ConnectOptions {
        host: url.host.clone(),
        port: url.port,
        security,
        user,
        password,
        tls: ftp::tls::base_config(&tls)?,
        client_certificate: tls.client.clone(),
        tls12_fallback: if tls.versions == ftp::tls::TlsVersions::Any && security != Security::Plain
        {
            Some(ftp::tls::base_config(&ftp::tls::TlsOptions {
                versions: ftp::tls::TlsVersions::Tls12Only,
                ..tls.clone()
            })?)
        } else {
            None
        },
        timeouts: settings.timeouts,
        proxy: proxy.clone(),
        data_mode: settings.data_mode,
        trust_pasv_address: settings.trust_pasv_address,
        resume_data_sessions: !settings.no_resume,
        pipelining: ftp::Pipelining::new(settings.pipelining),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = FtpUrl::parse("ftp://alice@example.com/pub/x").unwrap();
        assert_eq!(u.security, Security::ExplicitTls);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, 21);
        assert_eq!(u.path, b"pub/x");

        let u = FtpUrl::parse("ftps://bob%40corp@127.0.0.1:2990/").unwrap();
        assert_eq!(u.security, Security::ImplicitTls);
        assert_eq!(u.user.as_deref(), Some("bob@corp"));
        assert_eq!(u.port, 2990);
        assert_eq!(u.path, b"");

        let u = FtpUrl::parse("ftpes://[::1]:2121/a%20b").unwrap();
        assert_eq!(u.security, Security::ExplicitTls);
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 2121);
        assert_eq!(u.path, b"a b");

        assert_eq!(FtpUrl::parse("ftps://h").unwrap().port, 990);
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, words) in [
            ("http://h/", "scheme"),
            ("h/x", "expected"),
            ("ftp://u:secret@h/", "password"),
            ("ftp://h:99999/", "port"),
            ("ftp://h:0/", "port"),
            ("ftp:///x", "host"),
            ("ftp://[::1/", "]"),
            ("ftp://h/%zz", "escape"),
            ("ftp://h/a%0d%0aDELE%20x", "CR"),
        ] {
            let err = FtpUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(words), "{url}: {err}");
            assert!(!err.contains("secret"), "password leaked: {err}");
        }
    }

    #[test]
    fn netrc_lookup() {
        let text = "machine other login x password y\nmachine host.example login alice password s3cret\ndefault login anonymous password guest\n";
        assert_eq!(
            parse_netrc(text, "host.example"),
            Some(NetrcEntry {
                login: Some("alice".into()),
                password: Some("s3cret".into())
            })
        );
        assert_eq!(
            parse_netrc(text, "unknown"),
            Some(NetrcEntry {
                login: Some("anonymous".into()),
                password: Some("guest".into())
            })
        );
        assert_eq!(parse_netrc("machine a login b", "c"), None);
    }

    #[test]
    fn world_readable_password_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("ftpsfs-pw-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        fs::write(&file, "s3cret\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        for mode in [0o644, 0o640, 0o620, 0o604] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_password_file(&file).unwrap_err().to_string();
            assert!(err.contains("open to other users"), "{mode:o}: {err}");
            assert!(!err.contains("s3cret"));
        }
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&file).unwrap(), "s3cret");
        // Someone else's file, private or not, is not the user's password (only root
        // can give a file away).
        if unsafe { libc::getuid() } == 0 {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            let err = read_password_file(&file).unwrap_err().to_string();
            assert!(err.contains("belongs to another user (uid 65534)"), "{err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    fn proxy_of(
        setting: ProxySetting,
        file: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Option<ftp::Proxy>, ConfigError> {
        let settings = ConnectionSettings {
            proxy: setting,
            proxy_password_file: file.map(Path::to_path_buf),
            ..ConnectionSettings::default()
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve_proxy(&settings, "ftp.example.com", &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_proxy_option_wins_over_the_environment() {
        let env = [
            ("all_proxy", "socks5://env-lower:1"),
            ("ALL_PROXY", "http://env-upper:2"),
        ];
        let shown = |r: Result<Option<ftp::Proxy>, ConfigError>| {
            r.unwrap()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "direct".into())
        };
        assert_eq!(
            shown(proxy_of(
                ProxySetting::Url("http://opt:3".into()),
                None,
                &env
            )),
            "http://opt:3"
        );
        assert_eq!(shown(proxy_of(ProxySetting::Direct, None, &env)), "direct");
        assert_eq!(
            shown(proxy_of(ProxySetting::FromEnvironment, None, &env)),
            "socks5://env-lower:1"
        );
        assert_eq!(
            shown(proxy_of(ProxySetting::FromEnvironment, None, &env[1..])),
            "http://env-upper:2"
        );
        assert_eq!(
            shown(proxy_of(ProxySetting::FromEnvironment, None, &[])),
            "direct"
        );
        let excluded = [
            ("ALL_PROXY", "socks5://p:1"),
            ("NO_PROXY", "localhost,.example.com"),
        ];
        assert_eq!(
            shown(proxy_of(ProxySetting::FromEnvironment, None, &excluded)),
            "direct"
        );
    }

    #[test]
    fn proxy_passwords_come_from_a_private_file_only() {
        let error = proxy_of(ProxySetting::Url("socks5://u:secret@p:1".into()), None, &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("proxy_password_file") && !error.contains("secret"),
            "{error}"
        );

        let dir = std::env::temp_dir().join(format!("ftpsfs-proxy-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy-password");
        fs::write(&file, "s3cret\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let error = proxy_of(ProxySetting::Url("socks5://u@p:1".into()), Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("open to other users"), "{error}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let proxy = proxy_of(ProxySetting::Url("socks5://u@p:1".into()), Some(&file), &[])
            .unwrap()
            .unwrap();
        assert_eq!(proxy.password.expose(), "s3cret");
        let error = proxy_of(ProxySetting::Url("socks5://p:1".into()), Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs a user"), "{error}");
        let error = proxy_of(ProxySetting::Direct, Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("no proxy is"), "{error}");
        // From the environment, the URL's own password is taken (it is not in argv).
        let proxy = proxy_of(
            ProxySetting::FromEnvironment,
            None,
            &[("ALL_PROXY", "http://u:envpass@p:1")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(proxy.password.expose(), "envpass");
        let _ = fs::remove_dir_all(&dir);
    }
}
