//! A scripted FTP(S) server that misbehaves on purpose, for the hostile-server tests
//! (tests/hostile.rs): overlong and endless replies, malformed or misdirected passive
//! replies, hostile listings, transfers cut off without TLS close_notify, a refused
//! `AUTH TLS`, and whatever certificate the test hands it.
//!
//! tokio and tokio-rustls, in-process, on 127.0.0.1 and an ephemeral port. It serves a
//! fixed tree given as raw bytes: listing bodies per directory (sent verbatim, so a test
//! controls every byte) and file contents per path, both keyed by the exact argument the
//! client sends (the login directory is the empty path). It records every command line and
//! where each data connection arrived, for the tests to check.
//!
//! Every wait has a time limit, and dropping the server shuts its runtime down, so a test
//! never hangs on it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

/// Limit on every network wait of the fake server.
const STEP: Duration = Duration::from_secs(10);

/// How the server greets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// `220 fake FTP server`.
    Normal,
    /// `220 ` followed by a megabyte without a line break.
    OverlongLine,
    /// `220-` followed by lines that never end the reply.
    EndlessMultiline,
}

/// What a reply to EPSV/PASV looks like (switchable while running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PassiveReply {
    /// A correct reply.
    Normal = 0,
    /// A megabyte without a line break.
    OverlongLine = 1,
    /// A multi-line reply that never ends.
    EndlessMultiline = 2,
}

/// The listing format the server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    /// FEAT announces MLSD; listings are answered to `MLSD`.
    Mlsd,
    /// No MLSD: listings are answered to `LIST`.
    List,
}

/// Everything the server does, fixed at start.
#[derive(Clone)]
pub struct FakeOptions {
    /// TLS for `AUTH TLS` and the data connections; None: plain FTP only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub user: String,
    pub password: String,
    pub greeting: Greeting,
    /// Reply to `AUTH TLS` instead of 234, e.g. `500 AUTH not understood`.
    pub refuse_auth_tls: Option<String>,
    /// Reply to EPSV instead of 229 (e.g. `500 EPSV not understood`, or a malformed 229).
    pub epsv_reply: Option<String>,
    /// Reply to PASV instead of a correct 227 (a malformed one).
    pub pasv_reply: Option<String>,
    /// The address written in the 227 reply. When it is not 127.0.0.1, the server also
    /// listens on it, at the same port, and records which one the client chose.
    pub pasv_address: Ipv4Addr,
    pub list_format: ListFormat,
    /// Listing bodies by directory argument ("" is the login directory).
    pub dirs: HashMap<Vec<u8>, Vec<u8>>,
    /// File contents by path argument.
    pub files: HashMap<Vec<u8>, Vec<u8>>,
    /// Replies sent instead of the right one, by verb (the reply of another command,
    /// as a server answering out of order gives).
    pub replies: HashMap<String, String>,
}

impl FakeOptions {
    /// A well-behaved server (TLS with `tls`, or plain) with an empty root.
    pub fn new(tls: Option<Arc<rustls::ServerConfig>>, user: &str, password: &str) -> Self {
        let mut dirs = HashMap::new();
        dirs.insert(Vec::new(), Vec::new());
        Self {
            tls,
            user: user.into(),
            password: password.into(),
            greeting: Greeting::Normal,
            refuse_auth_tls: None,
            epsv_reply: None,
            pasv_reply: None,
            pasv_address: Ipv4Addr::LOCALHOST,
            list_format: ListFormat::Mlsd,
            dirs,
            files: HashMap::new(),
            replies: HashMap::new(),
        }
    }

    /// Adds a file to the login directory's MLSD listing and serves its content.
    pub fn add_file(&mut self, name: &[u8], content: &[u8]) {
        let mut line = format!(
            "type=file;size={};modify=20200102030405;UNIX.mode=0644; ",
            content.len()
        )
        .into_bytes();
        line.extend_from_slice(name);
        line.extend_from_slice(b"\r\n");
        self.dirs.entry(Vec::new()).or_default().extend(line);
        self.files.insert(name.to_vec(), content.to_vec());
    }
}

/// A TLS server config for the certificate and key in these PEM files (TLS 1.2 and 1.3,
/// stateful session resumption, as the client's data connections need).
pub fn tls_config(cert_pem: &Path, key_pem: &Path) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .and_then(|iter| iter.collect())
        .unwrap_or_else(|e| panic!("{}: {e}", cert_pem.display()));
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .unwrap_or_else(|e| panic!("{}: {e}", key_pem.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Arc::new(config)
}

/// What the server saw.
#[derive(Default)]
struct Record {
    /// Every command line received, in order (all connections).
    commands: Mutex<Vec<Vec<u8>>>,
    /// The local address each data connection arrived at.
    data_arrivals: Mutex<Vec<SocketAddr>>,
    control_connections: AtomicU64,
}

struct State {
    opts: FakeOptions,
    record: Record,
    /// Data transfers send at most this many bytes, then close the TCP connection
    /// without close_notify, and still reply 226 (u64::MAX: off).
    cut_data_after: AtomicU64,
    passive_reply: AtomicU8,
}

/// A running fake server; dropping it stops it.
pub struct FakeServer {
    state: Arc<State>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeServer {
    pub fn start(opts: FakeOptions) -> FakeServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fake server runtime");
        let listener = runtime
            .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind the fake server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            opts,
            record: Record::default(),
            cut_data_after: AtomicU64::new(u64::MAX),
            passive_reply: AtomicU8::new(PassiveReply::Normal as u8),
        });
        let accept_state = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                accept_state
                    .record
                    .control_connections
                    .fetch_add(1, Ordering::SeqCst);
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, state).await;
                });
            }
        });
        FakeServer {
            state,
            addr,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Transfers from now on are cut off after `bytes` (no close_notify, then a lying
    /// 226); None: transfers are complete again.
    pub fn cut_data_after(&self, bytes: Option<u64>) {
        self.state
            .cut_data_after
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// How EPSV/PASV are answered from now on.
    pub fn passive_reply(&self, reply: PassiveReply) {
        self.state
            .passive_reply
            .store(reply as u8, Ordering::SeqCst);
    }

    /// Every command line received so far, lossily as text.
    pub fn commands(&self) -> Vec<String> {
        self.state
            .record
            .commands
            .lock()
            .unwrap()
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// Whether any command with this verb arrived (case-insensitive).
    pub fn received(&self, verb: &str) -> bool {
        self.commands().iter().any(|c| {
            c.split(' ')
                .next()
                .is_some_and(|v| v.eq_ignore_ascii_case(verb))
        })
    }

    /// The local addresses data connections arrived at.
    pub fn data_arrivals(&self) -> Vec<SocketAddr> {
        self.state.record.data_arrivals.lock().unwrap().clone()
    }

    pub fn control_connections(&self) -> u64 {
        self.state.record.control_connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads one line (without CRLF) into a fresh Vec; None at EOF.
async fn read_line(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("command line too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(Duration::from_secs(60), io.read(&mut chunk))
            .await
            .map_err(|_| io::Error::other("idle"))??;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn reply(io: &mut (impl AsyncWrite + Unpin), text: &str) -> io::Result<()> {
    timeout(STEP, async {
        io.write_all(text.as_bytes()).await?;
        io.write_all(b"\r\n").await?;
        io.flush().await
    })
    .await
    .map_err(|_| io::Error::other("write timed out"))?
}

/// A reply line longer than any client should buffer: 1 MiB without a line break.
async fn overlong(io: &mut (impl AsyncWrite + Unpin), code: &str) -> io::Result<()> {
    let mut text = format!("{code} ").into_bytes();
    text.resize(1 << 20, b'A');
    timeout(STEP, io.write_all(&text))
        .await
        .map_err(|_| io::Error::other("write timed out"))??;
    Ok(())
}

/// A multi-line reply that does not end (until the client hangs up, or 10 s pass).
async fn endless(io: &mut (impl AsyncWrite + Unpin), code: &str) -> io::Result<()> {
    let started = tokio::time::Instant::now();
    let line = format!("{code}-still going\r\n");
    io.write_all(line.as_bytes()).await?;
    let filler = " and on and on\r\n".repeat(64);
    while started.elapsed() < STEP {
        timeout(STEP, io.write_all(filler.as_bytes()))
            .await
            .map_err(|_| io::Error::other("write timed out"))??;
    }
    Ok(())
}

fn split(line: &[u8]) -> (String, Vec<u8>) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (
            String::from_utf8_lossy(&line[..i]).to_ascii_uppercase(),
            line[i + 1..].to_vec(),
        ),
        None => (
            String::from_utf8_lossy(line).to_ascii_uppercase(),
            Vec::new(),
        ),
    }
}

async fn serve(mut sock: TcpStream, state: Arc<State>) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let opts = &state.opts;
    match opts.greeting {
        Greeting::Normal => reply(&mut sock, "220 fake FTP server").await?,
        Greeting::OverlongLine => return overlong(&mut sock, "220").await,
        Greeting::EndlessMultiline => return endless(&mut sock, "220").await,
    }
    let mut buf = Vec::new();
    // Before AUTH TLS (or for good, on a plain server).
    let secured: Box<dyn Io> = loop {
        let Some(line) = read_line(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        state.record.commands.lock().unwrap().push(line.clone());
        let (verb, arg) = split(&line);
        match (verb.as_str(), &opts.tls) {
            ("AUTH", Some(tls)) => {
                if let Some(refusal) = &opts.refuse_auth_tls {
                    reply(&mut sock, refusal).await?;
                    continue;
                }
                if !arg.eq_ignore_ascii_case(b"TLS") {
                    reply(&mut sock, "504 AUTH TLS only").await?;
                    continue;
                }
                reply(&mut sock, "234 Proceed with negotiation.").await?;
                let stream = timeout(STEP, TlsAcceptor::from(tls.clone()).accept(sock))
                    .await
                    .map_err(|_| io::Error::other("handshake timed out"))??;
                break Box::new(stream);
            }
            ("AUTH", None) => reply(&mut sock, "500 AUTH not understood").await?,
            ("QUIT", _) => {
                reply(&mut sock, "221 Goodbye.").await?;
                return Ok(());
            }
            (_, Some(_)) if opts.refuse_auth_tls.is_none() => {
                reply(&mut sock, "530 Please use AUTH TLS first.").await?;
            }
            _ => {
                // A plain server, or one that refused TLS: the rest happens in the clear.
                let mut session = Session::new(state.clone(), Box::new(sock));
                session.buf = std::mem::take(&mut buf);
                session.handle(&line).await?;
                return session.run().await;
            }
        }
    };
    let mut session = Session::new(state.clone(), secured);
    session.run().await
}

struct Session {
    state: Arc<State>,
    ctrl: Box<dyn Io>,
    buf: Vec<u8>,
    user: Option<Vec<u8>>,
    logged_in: bool,
    rest: u64,
    passive: Vec<TcpListener>,
}

enum Flow {
    Continue,
    Quit,
}

impl Session {
    fn new(state: Arc<State>, ctrl: Box<dyn Io>) -> Self {
        Self {
            state,
            ctrl,
            buf: Vec::new(),
            user: None,
            logged_in: false,
            rest: 0,
            passive: Vec::new(),
        }
    }

    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(line) = read_line(&mut self.ctrl, &mut self.buf).await? else {
                return Ok(());
            };
            self.state
                .record
                .commands
                .lock()
                .unwrap()
                .push(line.clone());
            if let Flow::Quit = self.handle(&line).await? {
                let _ = self.ctrl.shutdown().await;
                return Ok(());
            }
        }
    }

    async fn say(&mut self, text: &str) -> io::Result<()> {
        reply(&mut self.ctrl, text).await
    }

    async fn handle(&mut self, line: &[u8]) -> io::Result<Flow> {
        let (verb, arg) = split(line);
        let state = self.state.clone();
        let opts = &state.opts;
        if !self.logged_in && !matches!(verb.as_str(), "USER" | "PASS" | "QUIT" | "FEAT") {
            self.say("530 Please login with USER and PASS.").await?;
            return Ok(Flow::Continue);
        }
        if let Some(text) = opts.replies.get(verb.as_str()) {
            self.say(text).await?;
            return Ok(Flow::Continue);
        }
        match verb.as_str() {
            "USER" => {
                self.user = Some(arg);
                self.say("331 Please specify the password.").await?;
            }
            "PASS" => {
                let ok = self.user.as_deref() == Some(opts.user.as_bytes())
                    && arg == opts.password.as_bytes();
                self.logged_in = ok;
                if ok {
                    self.say("230 Login successful.").await?;
                } else {
                    self.say("530 Login incorrect.").await?;
                }
            }
            "FEAT" => {
                let mut feat = String::from(
                    "211-Features:\r\n EPSV\r\n PASV\r\n REST STREAM\r\n SIZE\r\n UTF8\r\n",
                );
                if opts.tls.is_some() {
                    feat.push_str(" AUTH TLS\r\n PBSZ\r\n PROT\r\n");
                }
                if opts.list_format == ListFormat::Mlsd {
                    feat.push_str(" MLST type*;size*;modify*;UNIX.mode*;\r\n");
                }
                feat.push_str("211 End");
                self.say(&feat).await?;
            }
            "PBSZ" => self.say("200 PBSZ=0").await?,
            "PROT" => self.say("200 Protection level set.").await?,
            "OPTS" | "TYPE" | "NOOP" | "MODE" | "STRU" => self.say("200 OK").await?,
            "PWD" => self.say("257 \"/\" is the current directory").await?,
            "CWD" => self.say("250 OK").await?,
            "SYST" => self.say("215 UNIX Type: L8").await?,
            "QUIT" => {
                self.say("221 Goodbye.").await?;
                return Ok(Flow::Quit);
            }
            "ABOR" => self.say("225 No transfer to abort.").await?,
            "REST" => {
                self.rest = String::from_utf8_lossy(&arg).trim().parse().unwrap_or(0);
                self.say(&format!("350 Restart position accepted ({}).", self.rest))
                    .await?;
            }
            "SIZE" => match opts.files.get(&arg) {
                Some(content) => self.say(&format!("213 {}", content.len())).await?,
                None => self.say("550 Could not get file size.").await?,
            },
            "EPSV" => {
                if let Some(text) = &opts.epsv_reply {
                    self.say(text).await?;
                } else if self.hostile_passive().await? {
                    return Ok(Flow::Quit);
                } else {
                    let port = self.open_passive(Ipv4Addr::LOCALHOST).await?;
                    self.say(&format!("229 Entering Extended Passive Mode (|||{port}|)"))
                        .await?;
                }
            }
            "PASV" => {
                if let Some(text) = &opts.pasv_reply {
                    self.say(text).await?;
                } else if self.hostile_passive().await? {
                    return Ok(Flow::Quit);
                } else {
                    let announced = opts.pasv_address;
                    let port = self.open_passive(announced).await?;
                    let [a, b, c, d] = announced.octets();
                    self.say(&format!(
                        "227 Entering Passive Mode ({a},{b},{c},{d},{},{}).",
                        port >> 8,
                        port & 0xff
                    ))
                    .await?;
                }
            }
            "MLSD" | "LIST" => {
                let mut path = arg.as_slice();
                // "LIST -a dir": options, then the path.
                while path.first() == Some(&b'-') {
                    let end = path.iter().position(|&b| b == b' ').unwrap_or(path.len());
                    path = path.get(end + 1..).unwrap_or_default();
                }
                match opts.dirs.get(path) {
                    Some(body) => self.transfer(body.clone()).await?,
                    None => self.say("550 Failed to open directory.").await?,
                }
            }
            "RETR" => {
                let offset = std::mem::take(&mut self.rest) as usize;
                match opts.files.get(&arg) {
                    Some(content) => {
                        let body = content.get(offset..).unwrap_or_default().to_vec();
                        self.transfer(body).await?
                    }
                    None => self.say("550 Failed to open file.").await?,
                }
            }
            _ => self.say("502 Command not implemented.").await?,
        }
        Ok(Flow::Continue)
    }

    /// Sends the hostile EPSV/PASV reply if one is switched on; true if it was sent
    /// (the session then ends: the client is not expected to carry on).
    async fn hostile_passive(&mut self) -> io::Result<bool> {
        match self.state.passive_reply.load(Ordering::SeqCst) {
            1 => overlong(&mut self.ctrl, "229").await.map(|_| true),
            2 => endless(&mut self.ctrl, "229").await.map(|_| true),
            _ => Ok(false),
        }
    }

    /// Listens for a data connection on 127.0.0.1 and, when `announced` is another
    /// address, on that address at the same port too.
    async fn open_passive(&mut self, announced: Ipv4Addr) -> io::Result<u16> {
        self.passive.clear();
        for _ in 0..20 {
            let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let port = local.local_addr()?.port();
            if announced == Ipv4Addr::LOCALHOST {
                self.passive.push(local);
                return Ok(port);
            }
            if let Ok(decoy) = TcpListener::bind((announced, port)).await {
                self.passive.push(local);
                self.passive.push(decoy);
                return Ok(port);
            }
        }
        Err(io::Error::other("no port free on both addresses"))
    }

    async fn accept_data(&mut self) -> io::Result<TcpStream> {
        let listeners = std::mem::take(&mut self.passive);
        if listeners.is_empty() {
            return Err(io::Error::other("no PASV/EPSV before the transfer"));
        }
        let accept = async {
            match listeners.as_slice() {
                [one] => one.accept().await,
                [a, b, ..] => tokio::select! {
                    r = a.accept() => r,
                    r = b.accept() => r,
                },
                [] => unreachable!(),
            }
        };
        let (sock, _) = timeout(STEP, accept)
            .await
            .map_err(|_| io::Error::other("no data connection"))??;
        let local = sock.local_addr()?;
        self.state.record.data_arrivals.lock().unwrap().push(local);
        Ok(sock)
    }

    async fn transfer(&mut self, body: Vec<u8>) -> io::Result<()> {
        if self.passive.is_empty() {
            return self.say("425 Use PASV or EPSV first.").await;
        }
        self.say("150 Here comes the data.").await?;
        let sock = match self.accept_data().await {
            Ok(sock) => sock,
            Err(_) => return self.say("425 Failed to establish connection.").await,
        };
        let cut = self.state.cut_data_after.load(Ordering::SeqCst);
        let tls = self.state.opts.tls.clone();
        let sent = match tls {
            Some(tls) => {
                let tls = TlsAcceptor::from(tls);
                match timeout(STEP, tls.accept(sock)).await {
                    Ok(Ok(stream)) => send_body(stream, &body, cut).await,
                    _ => return self.say("522 TLS handshake failed.").await,
                }
            }
            None => send_body(sock, &body, cut).await,
        };
        match sent {
            // A cut transfer still claims success: the client must not believe it.
            Ok(()) => self.say("226 Transfer complete.").await,
            Err(_) => self.say("426 Failure writing network stream.").await,
        }
    }
}

/// Sends `body`, or only its first `cut` bytes followed by a bare TCP close (no TLS
/// close_notify). A complete body ends with close_notify (TLS) and FIN.
async fn send_body<S: AsyncWrite + Unpin>(mut stream: S, body: &[u8], cut: u64) -> io::Result<()> {
    let limit = usize::try_from(cut).unwrap_or(usize::MAX).min(body.len());
    let truncated = limit < body.len();
    timeout(STEP, async {
        stream.write_all(&body[..limit]).await?;
        stream.flush().await?;
        if truncated {
            // Dropping the stream closes the socket without close_notify.
            drop(stream);
            return Ok(());
        }
        // TLS: close_notify, then the TCP write side (tokio-rustls shuts both down).
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::other("data write timed out"))?
}

/// The local address a data connection arrived at, as an IP.
pub fn arrival_ips(arrivals: &[SocketAddr]) -> Vec<IpAddr> {
    arrivals.iter().map(|a| a.ip()).collect()
}
