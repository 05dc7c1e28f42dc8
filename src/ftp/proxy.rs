//! Connections through a proxy: SOCKS5 (RFC 1928, user name and password by RFC 1929)
//! or an HTTP proxy's CONNECT tunnel (RFC 9110, section 9.3.6; Basic authentication).
//!
//! The control connection and every data connection go through it. The server's host
//! name is sent to the proxy as given, never resolved here: the proxy's network is the
//! one that can see the server (what curl calls `socks5h`).

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::FtpError;
use super::options::Secret;
use super::transport::display_addr;

/// The port a proxy URL without one means (curl's default for every proxy kind).
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// The longest answer to CONNECT read before giving up on the proxy: status line and
/// headers only, the tunnel's bytes stay unread.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// How the proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// SOCKS version 5.
    Socks5,
    /// An HTTP proxy's CONNECT method.
    HttpConnect,
}

/// A proxy every connection to the server goes through.
#[derive(Clone)]
pub struct Proxy {
    /// SOCKS5 or HTTP CONNECT.
    pub kind: ProxyKind,
    /// The proxy's host name or address.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// The user name to authenticate with, if any.
    pub user: Option<String>,
    /// Its password (empty when none was given).
    pub password: Secret,
}

/// A proxy URL with its password, if it held one (kept out of [`Proxy::parse`]'s result
/// so that the caller decides whether a password may come from where the URL came from).
pub struct ParsedProxy {
    /// The proxy, without a password.
    pub proxy: Proxy,
    /// The password written in the URL (`user:password@`).
    pub password: Option<Secret>,
}

impl Proxy {
    /// Parses `socks5://[user[:password]@]host[:port]`, `socks5h://…` or
    /// `http://[user[:password]@]host[:port]`.
    pub fn parse(url: &str) -> Result<ParsedProxy, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("{url:?} is not a proxy URL (socks5://HOST:PORT or http://HOST:PORT)")
        })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" => ProxyKind::Socks5,
            "http" => ProxyKind::HttpConnect,
            "https" => {
                return Err(
                    "https:// proxies (TLS to the proxy itself) are not supported: use http:// or socks5://"
                        .into(),
                )
            }
            "socks4" | "socks4a" => {
                return Err("SOCKS4 proxies are not supported: use socks5://".into())
            }
            other => {
                return Err(format!(
                    "unknown proxy scheme {other:?}: use socks5:// or http://"
                ))
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "a proxy URL has no path: {:?}",
                redact_userinfo(url)
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (info, None),
                };
                let user = percent_decode(user).ok_or("the proxy user name is not valid UTF-8")?;
                if user.is_empty() {
                    return Err("the proxy URL has an empty user name".into());
                }
                let password = password
                    .map(|p| percent_decode(p).ok_or("the proxy password is not valid UTF-8"))
                    .transpose()?;
                (Some(user), password.map(Secret::new))
            }
        };
        let (host, port) = split_host_port(hostport)?;
        let too_long = user.as_ref().is_some_and(|u| u.len() > 255)
            || password.as_ref().is_some_and(|p| p.expose().len() > 255);
        if kind == ProxyKind::Socks5 && too_long {
            return Err("SOCKS5 user names and passwords are at most 255 bytes".into());
        }
        Ok(ParsedProxy {
            proxy: Proxy {
                kind,
                host,
                port: port.unwrap_or(DEFAULT_PROXY_PORT),
                user,
                password: Secret::default(),
            },
            password,
        })
    }

    /// The URL scheme of this kind of proxy.
    pub fn scheme(&self) -> &'static str {
        match self.kind {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http",
        }
    }

    /// Opens a TCP connection to `host`:`port` through the proxy, every step within
    /// `limit`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        limit: Duration,
    ) -> Result<TcpStream, FtpError> {
        let target = display_addr(host, port);
        let tunnel = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.error(format!("cannot connect to the proxy: {e}")))?;
            let _ = stream.set_nodelay(true);
            match self.kind {
                ProxyKind::Socks5 => self.socks5(&mut stream, host, port).await?,
                ProxyKind::HttpConnect => self.http_connect(&mut stream, host, port).await?,
            }
            Ok(stream)
        };
        match tokio::time::timeout(limit, tunnel).await {
            Ok(result) => result,
            Err(_) => Err(FtpError::Timeout {
                step: format!("connecting to {target} through proxy {self}"),
                after: limit,
            }),
        }
    }

    fn error(&self, message: String) -> FtpError {
        FtpError::Proxy {
            proxy: self.to_string(),
            message,
        }
    }

    fn io_error(&self, step: &str) -> impl Fn(std::io::Error) -> FtpError + '_ {
        let step = step.to_string();
        move |e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.error(format!("the proxy closed the connection during {step}"))
            } else {
                self.error(format!("{step}: {e}"))
            }
        }
    }

    async fn socks5(&self, stream: &mut TcpStream, host: &str, port: u16) -> Result<(), FtpError> {
        const NO_AUTHENTICATION: u8 = 0x00;
        const USER_PASSWORD: u8 = 0x02;
        const NO_ACCEPTABLE_METHOD: u8 = 0xff;
        let methods: &[u8] = if self.user.is_some() {
            &[NO_AUTHENTICATION, USER_PASSWORD]
        } else {
            &[NO_AUTHENTICATION]
        };
        let mut greeting = vec![5, methods.len() as u8];
        greeting.extend_from_slice(methods);
        let write_failed = self.io_error("the SOCKS5 greeting");
        stream.write_all(&greeting).await.map_err(&write_failed)?;
        let mut choice = [0u8; 2];
        stream
            .read_exact(&mut choice)
            .await
            .map_err(&write_failed)?;
        if choice[0] != 5 {
            return Err(self.error(format!(
                "not a SOCKS5 proxy (it answered the greeting with version {})",
                choice[0]
            )));
        }
        match choice[1] {
            NO_AUTHENTICATION => {}
            USER_PASSWORD => self.socks5_login(stream).await?,
            NO_ACCEPTABLE_METHOD if self.user.is_none() => {
                return Err(self.error(
                    "the proxy requires authentication: give the user in the proxy URL (socks5://USER@HOST:PORT) and the password in proxy_password_file=FILE".into(),
                ))
            }
            NO_ACCEPTABLE_METHOD => {
                return Err(self.error(
                    "the proxy accepts neither no authentication nor a user name and password".into(),
                ))
            }
            other => {
                return Err(self.error(format!(
                    "the proxy chose authentication method {other:#04x}, which was not offered"
                )))
            }
        }
        let mut request = vec![5, 1, 0];
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                request.push(1);
                request.extend_from_slice(&ip.octets());
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                request.push(4);
                request.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                let name = host.as_bytes();
                let len = u8::try_from(name.len()).map_err(|_| {
                    self.error(format!("host name {host:?} is too long for SOCKS5"))
                })?;
                request.push(3);
                request.push(len);
                request.extend_from_slice(name);
            }
        }
        request.extend_from_slice(&port.to_be_bytes());
        let failed = self.io_error("the SOCKS5 CONNECT request");
        stream.write_all(&request).await.map_err(&failed)?;
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await.map_err(&failed)?;
        if head[0] != 5 {
            return Err(self.error(format!(
                "not a SOCKS5 proxy (it answered CONNECT with version {})",
                head[0]
            )));
        }
        if head[1] != 0 {
            return Err(self.error(format!(
                "refused the connection to {}: {} (SOCKS5 reply {})",
                display_addr(host, port),
                socks5_reply_meaning(head[1]),
                head[1]
            )));
        }
        // The address the proxy bound for us: read past it, the tunnel follows.
        let rest = match head[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut len = [0u8; 1];
                stream.read_exact(&mut len).await.map_err(&failed)?;
                usize::from(len[0]) + 2
            }
            other => {
                return Err(self.error(format!(
                    "answered CONNECT with an unknown address type {other}"
                )))
            }
        };
        let mut bound = vec![0u8; rest];
        stream.read_exact(&mut bound).await.map_err(&failed)?;
        Ok(())
    }

    async fn socks5_login(&self, stream: &mut TcpStream) -> Result<(), FtpError> {
        let Some(user) = &self.user else {
            return Err(self
                .error("the proxy asked for a user name and password, and none was given".into()));
        };
        let password = self.password.expose().as_bytes();
        let mut login = vec![1, user.len() as u8];
        login.extend_from_slice(user.as_bytes());
        login.push(password.len() as u8);
        login.extend_from_slice(password);
        let failed = self.io_error("the SOCKS5 login");
        stream.write_all(&login).await.map_err(&failed)?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await.map_err(&failed)?;
        if status[1] != 0 {
            return Err(self.error(format!(
                "refused the user name and password of {user:?} (check proxy_password_file=)"
            )));
        }
        Ok(())
    }

    async fn http_connect(
        &self,
        stream: &mut TcpStream,
        host: &str,
        port: u16,
    ) -> Result<(), FtpError> {
        let target = display_addr(host, port);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(user) = &self.user {
            let credentials = format!("{user}:{}", self.password.expose());
            request.push_str("Proxy-Authorization: Basic ");
            request.push_str(&base64(credentials.as_bytes()));
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let failed = self.io_error("the HTTP CONNECT request");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(&failed)?;
        // Byte by byte up to the blank line: what follows it is the server's, and an
        // FTP server speaks first.
        let mut answer = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") && !answer.ends_with(b"\n\n") {
            if answer.len() >= MAX_CONNECT_ANSWER {
                return Err(self.error(format!(
                    "its answer to CONNECT is longer than {MAX_CONNECT_ANSWER} bytes"
                )));
            }
            stream.read_exact(&mut byte).await.map_err(&failed)?;
            answer.push(byte[0]);
        }
        let status_line =
            String::from_utf8_lossy(answer.split(|&b| b == b'\n').next().unwrap_or_default())
                .trim()
                .to_string();
        let code = parse_status_line(&status_line).ok_or_else(|| {
            self.error(format!(
                "not an HTTP proxy (it answered CONNECT with {status_line:?})"
            ))
        })?;
        match code {
            200..=299 => Ok(()),
            // 407 is the standard answer; tinyproxy's Basic authentication sends 401.
            401 | 407 if self.user.is_none() => Err(self.error(format!(
                "the proxy requires authentication ({status_line}): give the user in the proxy URL (http://USER@HOST:PORT) and the password in proxy_password_file=FILE"
            ))),
            401 | 407 => Err(self.error(format!(
                "refused the user name and password of {:?} ({status_line}; check proxy_password_file=)",
                self.user.as_deref().unwrap_or_default()
            ))),
            _ => Err(self.error(format!(
                "refused CONNECT to {target}: {status_line}"
            ))),
        }
    }
}

impl fmt::Display for Proxy {
    /// The proxy as a URL, without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme())?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&display_addr(&self.host, self.port))
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// What a SOCKS5 reply code means (RFC 1928, section 6).
fn socks5_reply_meaning(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by the proxy's rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused by the destination",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply code",
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) =
        if let Some(rest) = hostport.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("unclosed [ in the proxy address {hostport:?}"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or_else(|| {
                        format!("unexpected {after:?} after the proxy's address")
                    })?),
                ),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                Some(_) => {
                    return Err(format!(
                        "put an IPv6 proxy address in brackets: [{hostport}]"
                    ))
                }
                None => (hostport, None),
            }
        };
    if host.is_empty() {
        return Err("the proxy URL has no host".into());
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("bad proxy port {p:?}")),
        })
        .transpose()?;
    Ok((host.to_string(), port))
}

/// Decodes %XX escapes; None when the result is not UTF-8 or an escape is broken.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with a password in it replaced by `****`, for messages.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, after)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:****@{after}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Standard base64 with padding (RFC 4648), for Basic authentication.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bits = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((bits >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `host` is excluded from proxying by a `no_proxy` list (curl's rules: names
/// separated by commas, each matching the host or a domain ending; `*` matches all).
pub fn excluded_by_no_proxy(host: &str, no_proxy: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_start_matches('.');
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|prefix| prefix.ends_with('.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("socks5://127.0.0.1:1080").unwrap();
        assert_eq!(p.proxy.kind, ProxyKind::Socks5);
        assert_eq!((p.proxy.host.as_str(), p.proxy.port), ("127.0.0.1", 1080));
        assert!(p.proxy.user.is_none() && p.password.is_none());

        let p = Proxy::parse("socks5h://alice@proxy.corp/").unwrap();
        assert_eq!(p.proxy.port, DEFAULT_PROXY_PORT);
        assert_eq!(p.proxy.user.as_deref(), Some("alice"));
        assert_eq!(p.proxy.to_string(), "socks5://alice@proxy.corp:1080");

        let p = Proxy::parse("HTTP://bob%40corp:s%3Acret@[::1]:3128").unwrap();
        assert_eq!(p.proxy.kind, ProxyKind::HttpConnect);
        assert_eq!(p.proxy.host, "::1");
        assert_eq!(p.proxy.user.as_deref(), Some("bob@corp"));
        assert_eq!(p.password.unwrap().expose(), "s:cret");
        assert_eq!(p.proxy.to_string(), "http://bob@corp@[::1]:3128");
    }

    #[test]
    fn bad_proxy_urls_say_why() {
        for (url, says) in [
            ("127.0.0.1:1080", "not a proxy URL"),
            ("https://p:3128", "https:// proxies"),
            ("socks4://p:1080", "SOCKS4"),
            ("ftp://p:21", "unknown proxy scheme"),
            ("socks5://p:0", "bad proxy port"),
            ("socks5://p:99999", "bad proxy port"),
            ("socks5://p:1080/x", "no path"),
            ("socks5://:1080", "no host"),
            ("socks5://::1:1080", "brackets"),
            ("socks5://[::1", "unclosed"),
            ("http://@p:1", "empty user"),
        ] {
            let error = Proxy::parse(url).err().unwrap_or_default();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn passwords_are_never_shown() {
        let p = Proxy::parse("socks5://u:hunter2@h:1").unwrap();
        assert!(!format!("{:?} {}", p.proxy, p.proxy).contains("hunter2"));
        assert_eq!(
            redact_userinfo("socks5://u:hunter2@h:1"),
            "socks5://u:****@h:1"
        );
        let error = Proxy::parse("socks5://u:hunter2@h:1/x").err().unwrap();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn base64_of_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(
            parse_status_line("HTTP/1.1 200 Connection established"),
            Some(200)
        );
        assert_eq!(
            parse_status_line("HTTP/1.0 407 Proxy Authentication Required"),
            Some(407)
        );
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20"), None);
    }

    #[test]
    fn no_proxy_lists() {
        assert!(excluded_by_no_proxy(
            "ftp.corp.example",
            "localhost,.corp.example"
        ));
        assert!(excluded_by_no_proxy("corp.example", "corp.example"));
        assert!(!excluded_by_no_proxy("notcorp.example", "corp.example"));
        assert!(excluded_by_no_proxy("127.0.0.1", " 127.0.0.1 "));
        assert!(excluded_by_no_proxy("anything", "*"));
        assert!(excluded_by_no_proxy("::1", "[::1]"));
        assert!(!excluded_by_no_proxy("ftp.example", ""));
    }
}
