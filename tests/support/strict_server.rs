//! A strict, read-only FTPS server for integration tests that imitates the
//! TLS session rules of FileZilla Server 1.x.
//!
//! FileZilla Server refuses a data connection whose TLS session is not a
//! resumption of the session of the control connection that asked for it
//! ("425 Unable to build data connection: TLS session of data connection not
//! resumed."). Many clients get this wrong in ways that lenient servers (or
//! servers that resume from a process-wide cache) never reveal, so the tests
//! run against this imitation instead, since FileZilla Server itself cannot run
//! on the test machines.
//!
//! The rules imitated:
//! - explicit TLS only (`AUTH TLS`), and `PBSZ 0` + `PROT P` before any data
//!   command;
//! - every control connection gets its own `SslContext`, so its own session
//!   cache, its own random ticket keys and a session id context: a session or
//!   ticket obtained on another control connection cannot resume here;
//! - TLS 1.3: no session ticket after the login handshake; one new ticket is
//!   sent on the control connection at each PASV/EPSV, just before the reply,
//!   so a client must pick up the latest ticket from the control connection
//!   for every data connection (tickets are single-use in most clients);
//! - TLS 1.2: stateful session-ID resumption from the control connection's
//!   own session cache (no tickets);
//! - passive mode only; each data connection is TLS-accepted with the control
//!   connection's context and closed with a 425 if it did not resume.
//!
//! Writes (STOR, APPE, DELE, MKD, RMD, RNFR/RNTO, MFMT) are served when `writable` is
//! set. Like FileZilla Server, the server then refuses to rename onto an existing file
//! (`rename_over_existing` turns that off), and it has no SITE commands (no SITE CHMOD).
//! An upload that ends without TLS close_notify is answered with 426, as vsftpd does.
//!
//! Fault knobs for the fault-injection tests (tests/faults.rs): a network
//! namespace to live in (`netns`), vsftpd's `421 Timeout.` on idle sessions
//! (`idle_reply_421`), a per-server session limit answered with vsftpd's
//! `max_per_ip` 421 ([`StrictServer::set_max_sessions`]), and data
//! connections that stall after a number of bytes
//! ([`StrictServer::set_stall_data_after`]), uploads that run out of space
//! ([`StrictServer::set_space_left`]), and a control connection that drops
//! at a given command, before or after carrying it out
//! ([`StrictServer::set_drop_at`]). The server can be stopped and started
//! again on the same port (`port`).
//!
//! Blocking std threads: one accept thread, one thread per control
//! connection and one per transfer (so that `ABOR` can be read on the control
//! connection while data is being written). Every socket has timeouts and
//! [`StrictServer::stop`] (also run on drop) wakes and ends all threads, so a
//! test process never hangs on the server.

// Each integration test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::raw::c_int;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::rand::rand_bytes;
use openssl::ssl::{
    ShutdownState, SslAcceptor, SslMethod, SslOptions, SslRef, SslStream, SslVersion,
};
use openssl::x509::X509;

extern "C" {
    // OpenSSL >= 1.1.1; openssl-sys 0.9 does not declare it.
    fn SSL_new_session_ticket(s: *mut openssl_sys::SSL) -> c_int;
}

/// Reply when a data connection did not resume the control connection's
/// TLS session, word for word as FileZilla Server sends it.
pub const NOT_RESUMED_REPLY: &str =
    "425 Unable to build data connection: TLS session of data connection not resumed.";

/// The one TLS version the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Configuration for [`StrictServer::start`].
#[derive(Clone, Debug)]
pub struct StrictServerOptions {
    /// Directory served read-only as `/`.
    pub root: PathBuf,
    /// PEM file: the server certificate, optionally followed by its chain.
    pub cert_pem: PathBuf,
    /// PEM file: the private key of the certificate.
    pub key_pem: PathBuf,
    pub tls_version: TlsVersion,
    pub user: String,
    pub password: String,
    /// Control port on 127.0.0.1; 0 picks an ephemeral port (see
    /// [`StrictServer::port`]).
    pub port: u16,
    /// Bounds every blocking network step other than waiting for the next
    /// control command: TLS handshakes, data accept, reads and writes.
    pub io_timeout: Duration,
    /// How long a control connection may sit idle before the server closes
    /// it.
    pub idle_timeout: Duration,
    /// TLS 1.3 tickets each control connection gets before the server stops issuing
    /// them (None: one at every PASV/EPSV). Models a server whose supply runs dry, as
    /// ProFTPD's does on uploads.
    pub tickets_per_connection: Option<u64>,
    /// Like vsftpd: on the idle timeout, send `421 Timeout.` before closing
    /// (otherwise the connection is closed without a word).
    pub idle_reply_421: bool,
    /// The network namespace (e.g. `/proc/PID/ns/net`) whose 127.0.0.1 the
    /// server listens on; None: this process's own.
    pub netns: Option<PathBuf>,
    /// Serve uploads and the commands that change files (otherwise: 550).
    pub writable: bool,
    /// Let RNTO replace an existing file (FileZilla Server refuses: 553).
    pub rename_over_existing: bool,
    /// Let STOR replace an existing file (ProFTPD's `AllowOverwrite off` refuses).
    pub store_over_existing: bool,
    /// Like vsftpd: no MLST or MLSD, so listings (LIST) give times to the minute.
    pub list_only: bool,
}

impl StrictServerOptions {
    /// Options with an ephemeral port, a 30 s I/O timeout and a 300 s idle
    /// timeout.
    pub fn new(
        root: impl Into<PathBuf>,
        cert_pem: impl Into<PathBuf>,
        key_pem: impl Into<PathBuf>,
        tls_version: TlsVersion,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        StrictServerOptions {
            root: root.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            tls_version,
            user: user.into(),
            password: password.into(),
            port: 0,
            io_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            tickets_per_connection: None,
            idle_reply_421: false,
            netns: None,
            writable: false,
            rename_over_existing: false,
            store_over_existing: true,
            list_only: false,
        }
    }
}

/// A running server; stopped by [`StrictServer::stop`] or on drop.
pub struct StrictServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// A duplicate of the listening socket, for stop() to wake accept().
    listener: Option<TcpListener>,
    accept_thread: Option<JoinHandle<()>>,
}

/// Faults switched on and off while the server runs.
struct Faults {
    /// Bytes a file transfer sends before it stalls (u64::MAX: never).
    stall_data_after: AtomicU64,
    /// Bytes per second each download may send (0: no limit).
    data_rate: AtomicU64,
    /// Control connections served at once; more get vsftpd's 421 (0: no limit).
    max_sessions: AtomicUsize,
    /// Bytes uploads may still store before they fail (u64::MAX: no limit).
    space_left: AtomicU64,
    /// The reply code of an upload that ran out of space (452 disk full, 552 quota).
    space_reply: AtomicU64,
    /// The next command with this verb drops the control connection.
    drop_at: Mutex<Option<DropAt>>,
    /// The next command with this verb is answered, then its control connection closed.
    hang_up_after: Mutex<Option<String>>,
    /// Uploads create their file, then refuse their data connection as not resumed.
    refuse_upload_data: AtomicBool,
    /// The next upload takes all its data, then its control connection is closed
    /// without the final reply.
    hang_up_before_upload_reply: AtomicBool,
    /// Milliseconds a listing waits between reading the directory and sending it.
    listing_delay_ms: AtomicU64,
    /// The next this many PASV/EPSV find no passive port free.
    passive_ports_busy: AtomicU64,
    /// A passive port left waiting over [`PASSIVE_PATIENCE`] before its transfer command
    /// is closed (with any connection made to it) and the command refused (425).
    impatient_passive: AtomicBool,
    /// Listings send half their bytes, end the data connection properly (close_notify),
    /// then answer 426, as a server whose directory read failed midway.
    cut_listings: AtomicBool,
    /// A refused RETR leaves the REST offset for the next transfer (RFC 3659 leaves
    /// when it is reset to the server).
    keep_rest_after_refusal: AtomicBool,
    /// The next listing of this path (relative to the root) waits this long first.
    slow_next_listing: Mutex<Option<(String, Duration)>>,
    /// Listings show symlinks as ProFTPD does (MLSD: `type=OS.unix=symlink` without the
    /// target; LIST: `name -> target`) instead of what they point to.
    show_symlinks: AtomicBool,
    /// Listings below `synthetic/` are made up (see `StrictServer::set_synthetic_tree`).
    synthetic_tree: Mutex<Option<[usize; 3]>>,
    /// Behaves as a server that runs each command on its own task (see
    /// `StrictServer::set_async_replies`).
    async_replies: AtomicBool,
    /// After an aborted transfer, the control connection gets plain text inside TLS.
    break_after_abort: AtomicBool,
}

/// A control connection that drops at a command, without replying to it.
#[derive(Clone, Debug)]
pub struct DropAt {
    /// The verb (`DELE`, `RNTO` ...).
    pub verb: String,
    /// Carry the command out before dropping (otherwise drop without doing it).
    pub perform: bool,
}

#[derive(Default)]
struct Counters {
    control_connections: AtomicU64,
    /// Transfers whose control connection the client closed before they ended.
    transfers_left: AtomicU64,
    data_accepted: AtomicU64,
    data_rejected: AtomicU64,
    data_tls_failures: AtomicU64,
    tickets_sent: AtomicU64,
    refused_421: AtomicU64,
}

struct Shared {
    opts: StrictServerOptions,
    root: PathBuf,
    cert: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
    counters: Counters,
    stopping: AtomicBool,
    // Clones of the live control sockets, so stop() can unblock their threads.
    controls: Mutex<HashMap<u64, TcpStream>>,
    live_sessions: AtomicUsize,
    faults: Faults,
    /// Every command received after login, as `VERB argument` (PASS never: it comes
    /// before).
    commands: Mutex<Vec<String>>,
}

impl StrictServer {
    /// Loads the certificate and key, binds 127.0.0.1:`opts.port` and starts
    /// accepting control connections.
    pub fn start(opts: StrictServerOptions) -> io::Result<StrictServer> {
        let cert_pem = fs::read(&opts.cert_pem)?;
        let key_pem = fs::read(&opts.key_pem)?;
        let mut certs = X509::stack_from_pem(&cert_pem).map_err(ssl_setup_error)?;
        if certs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no certificate in cert PEM",
            ));
        }
        let cert = certs.remove(0);
        let key = PKey::private_key_from_pem(&key_pem).map_err(ssl_setup_error)?;
        let root = fs::canonicalize(&opts.root)?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "root is not a directory",
            ));
        }

        let shared = Arc::new(Shared {
            opts,
            root,
            cert,
            chain: certs,
            key,
            counters: Counters::default(),
            stopping: AtomicBool::new(false),
            controls: Mutex::new(HashMap::new()),
            live_sessions: AtomicUsize::new(0),
            commands: Mutex::new(Vec::new()),
            faults: Faults {
                stall_data_after: AtomicU64::new(u64::MAX),
                data_rate: AtomicU64::new(0),
                max_sessions: AtomicUsize::new(0),
                space_left: AtomicU64::new(u64::MAX),
                space_reply: AtomicU64::new(452),
                drop_at: Mutex::new(None),
                hang_up_after: Mutex::new(None),
                refuse_upload_data: AtomicBool::new(false),
                hang_up_before_upload_reply: AtomicBool::new(false),
                listing_delay_ms: AtomicU64::new(0),
                passive_ports_busy: AtomicU64::new(0),
                impatient_passive: AtomicBool::new(false),
                cut_listings: AtomicBool::new(false),
                keep_rest_after_refusal: AtomicBool::new(false),
                slow_next_listing: Mutex::new(None),
                show_symlinks: AtomicBool::new(false),
                synthetic_tree: Mutex::new(None),
                async_replies: AtomicBool::new(false),
                break_after_abort: AtomicBool::new(false),
            },
        });
        // Fail now rather than on the first connection if cert and key
        // do not fit together.
        new_acceptor(&shared).map_err(ssl_setup_error)?;

        // The accept thread enters the namespace before binding; every
        // thread it starts (control connections, their passive listeners and
        // transfers) inherits it.
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("strict-ftps-accept".into())
            .spawn(move || {
                let bound = enter_netns(accept_shared.opts.netns.as_deref())
                    .and_then(|()| {
                        TcpListener::bind((Ipv4Addr::LOCALHOST, accept_shared.opts.port))
                    })
                    .and_then(|listener| {
                        Ok((listener.local_addr()?, listener.try_clone()?, listener))
                    });
                match bound {
                    Ok((addr, handle, listener)) => {
                        let _ = bound_tx.send(Ok((addr, handle)));
                        accept_loop(listener, accept_shared);
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            })?;
        let (addr, listener) = match bound_rx.recv() {
            Ok(Ok(bound)) => bound,
            Ok(Err(e)) => {
                let _ = accept_thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = accept_thread.join();
                return Err(io::Error::other("the accept thread died"));
            }
        };
        Ok(StrictServer {
            shared,
            addr,
            listener: Some(listener),
            accept_thread: Some(accept_thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Data connections whose TLS session resumed and that were used.
    pub fn data_connections_accepted(&self) -> u64 {
        self.shared.counters.data_accepted.load(Ordering::SeqCst)
    }

    /// Data connections refused with 425 because their TLS session was not
    /// resumed.
    pub fn data_connections_rejected(&self) -> u64 {
        self.shared.counters.data_rejected.load(Ordering::SeqCst)
    }

    /// Data connections whose TLS handshake failed outright (counted in
    /// neither of the above).
    pub fn data_tls_failures(&self) -> u64 {
        self.shared
            .counters
            .data_tls_failures
            .load(Ordering::SeqCst)
    }

    /// Control connections accepted (TCP), whether or not they logged in.
    pub fn control_connections(&self) -> u64 {
        self.shared
            .counters
            .control_connections
            .load(Ordering::SeqCst)
    }

    /// Transfers whose control connection the client closed before they ended (how a
    /// client gives up a stalled transfer).
    pub fn transfers_left(&self) -> u64 {
        self.shared.counters.transfers_left.load(Ordering::SeqCst)
    }

    /// TLS 1.3 session tickets issued at PASV/EPSV (always 0 with TLS 1.2).
    pub fn tickets_sent(&self) -> u64 {
        self.shared.counters.tickets_sent.load(Ordering::SeqCst)
    }

    /// Every command received after login so far, as `VERB argument`.
    pub fn commands(&self) -> Vec<String> {
        self.shared.commands.lock().unwrap().clone()
    }

    /// Control connections turned away with 421 (see [`Self::set_max_sessions`]).
    pub fn refused_421(&self) -> u64 {
        self.shared.counters.refused_421.load(Ordering::SeqCst)
    }

    /// Control connections open now.
    pub fn live_sessions(&self) -> usize {
        self.shared.live_sessions.load(Ordering::SeqCst)
    }

    /// Serve at most `limit` control connections at once, like vsftpd's
    /// `max_per_ip`: one more gets `421 There are too many connections from
    /// your internet address.` and is closed. None: no limit.
    pub fn set_max_sessions(&self, limit: Option<usize>) {
        self.shared
            .faults
            .max_sessions
            .store(limit.unwrap_or(0), Ordering::SeqCst);
    }

    /// File transfers started from now on send `bytes` bytes and then stall
    /// (the connection stays open, silent) until the client gives up or
    /// aborts. None: transfers run normally.
    pub fn set_stall_data_after(&self, bytes: Option<u64>) {
        self.shared
            .faults
            .stall_data_after
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Each download started from now on sends at most `bytes_per_second`, as servers
    /// that limit each connection's speed do (vsftpd's `local_max_rate`). None: no limit.
    pub fn set_data_rate(&self, bytes_per_second: Option<u64>) {
        self.shared
            .faults
            .data_rate
            .store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
    }

    /// Uploads from now on may store `bytes` more bytes in all; the one that
    /// goes past stops reading and is answered with `reply` (452 "disk full",
    /// 552 "quota exceeded"), its file cut at the limit. None: no limit.
    pub fn set_space_left(&self, bytes: Option<u64>, reply: u16) {
        self.shared
            .faults
            .space_reply
            .store(u64::from(reply), Ordering::SeqCst);
        self.shared
            .faults
            .space_left
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The next command with `drop.verb` (on any control connection) closes its
    /// control connection without a reply, after carrying the command out if
    /// `drop.perform`. None: no such fault.
    pub fn set_drop_at(&self, drop: Option<DropAt>) {
        *self
            .shared
            .faults
            .drop_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = drop;
    }

    /// The next command with `verb` (on any control connection) is carried out and
    /// answered, and then its control connection closed, as vsftpd hangs up after some
    /// refusals and any server at its idle timeout.
    pub fn set_hang_up_after(&self, verb: Option<&str>) {
        *self
            .shared
            .faults
            .hang_up_after
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = verb.map(str::to_string);
    }

    /// Uploads from now on create their file and then refuse its data connection with
    /// FileZilla Server's 425 for a session not resumed, as a server does whose session
    /// check fails: the empty file is left, as vsftpd and ProFTPD leave it.
    pub fn set_refuse_upload_data(&self, refuse: bool) {
        self.shared
            .faults
            .refuse_upload_data
            .store(refuse, Ordering::SeqCst);
    }

    /// The next upload (on any control connection) receives all its data, and then its
    /// control connection is closed without the final reply: a session process that
    /// died, or a server restarted, at the end of a transfer.
    pub fn set_hang_up_before_upload_reply(&self) {
        self.shared
            .faults
            .hang_up_before_upload_reply
            .store(true, Ordering::SeqCst);
    }

    /// Listings from now on read the directory, then wait `delay` before sending it: a
    /// slow server whose listing can predate a change made meanwhile. None: no wait.
    pub fn set_listing_delay(&self, delay: Option<Duration>) {
        self.shared
            .faults
            .listing_delay_ms
            .store(delay.map_or(0, |d| d.as_millis() as u64), Ordering::SeqCst);
    }

    /// Listings from now on are cut in half and end with 426 after a clean end of the
    /// data connection (see `Faults::cut_listings`).
    pub fn set_cut_listings(&self, cut: bool) {
        self.shared.faults.cut_listings.store(cut, Ordering::SeqCst);
    }

    /// The next listing of `path` (relative to the root, no leading slash) waits `delay`
    /// before it is sent; later ones do not.
    pub fn set_slow_next_listing(&self, path: &str, delay: Duration) {
        *self.shared.faults.slow_next_listing.lock().unwrap() = Some((path.into(), delay));
    }

    /// Listings show symlinks as symlinks, as ProFTPD does (see `Faults::show_symlinks`).
    pub fn set_show_symlinks(&self, show: bool) {
        self.shared
            .faults
            .show_symlinks
            .store(show, Ordering::SeqCst);
    }

    /// Listings of the directory `synthetic` (which must exist in the root) and below are
    /// made up as they are asked for, nothing on disk: `synthetic` holds `fanout[0]`
    /// directories `dNNNN`, each holds `fanout[1]` directories `eNNNN`, and each of those
    /// holds `fanout[2]` files `fNNNN` of 1234 bytes. A tree of a million entries costs
    /// no disk and no time to make.
    pub fn set_synthetic_tree(&self, fanout: Option<[usize; 3]>) {
        *self.shared.faults.synthetic_tree.lock().unwrap() = fanout;
    }

    /// A refused RETR keeps the REST offset given before it, for the next transfer.
    pub fn set_keep_rest_after_refusal(&self, keep: bool) {
        self.shared
            .faults
            .keep_rest_after_refusal
            .store(keep, Ordering::SeqCst);
    }

    /// The next `count` PASV or EPSV commands fail with 425 as if every passive port
    /// were taken (a busy server's range, or ports still in TIME_WAIT).
    pub fn set_passive_ports_busy(&self, count: u64) {
        self.shared
            .faults
            .passive_ports_busy
            .store(count, Ordering::SeqCst);
    }

    /// Gives up a passive port that waits over [`PASSIVE_PATIENCE`] for its transfer
    /// command: the port and any connection made to it are closed and the command is
    /// refused (425), as by a server with a short passive timeout. A client that opens
    /// data connections ahead of their transfer meets it; EPSV sent with its command
    /// does not.
    pub fn set_impatient_passive(&self, on: bool) {
        self.shared
            .faults
            .impatient_passive
            .store(on, Ordering::SeqCst);
    }

    /// Answers as a server that runs each command on its own task (a cloud gateway
    /// built on an async runtime, a Node.js server):
    /// - of two commands that arrive together, the second is carried out and answered
    ///   first, so pipelined commands get their replies out of order;
    /// - a transfer command that arrives before its data connection is refused with 425;
    /// - a transfer's final reply, and the replies to ABOR, come after the reply to the
    ///   next command (or after 30 ms when none comes).
    pub fn set_async_replies(&self, on: bool) {
        self.shared.faults.async_replies.store(on, Ordering::SeqCst);
    }

    /// After an aborted transfer, writes its replies as plain text into the TLS control
    /// stream (as a Node.js server does), which breaks the connection.
    pub fn set_break_after_abort(&self, on: bool) {
        self.shared
            .faults
            .break_after_abort
            .store(on, Ordering::SeqCst);
    }

    /// Stops accepting, closes every control connection (which aborts any
    /// transfer) and waits up to 5 s for the connection threads to end.
    /// Idempotent.
    pub fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // accept() has no timeout; shutting the listening socket down wakes it
        // (EINVAL), whatever namespace or firewall rule the socket is behind.
        if let Some(listener) = self.listener.take() {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown on a listening socket we own a duplicate of.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let _ = accept_thread.join();
        if let Ok(controls) = self.shared.controls.lock() {
            for sock in controls.values() {
                let _ = sock.shutdown(Shutdown::Both);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.live_sessions.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for StrictServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Moves the calling thread into the network namespace at `path` (none: stays).
fn enter_netns(path: Option<&Path>) -> io::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    use std::os::fd::AsRawFd;
    let ns = fs::File::open(path)?;
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ssl_setup_error(e: ErrorStack) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A fresh context per control connection is the heart of the imitation:
/// its session cache and ticket keys are seen by that connection's data
/// connections and nobody else.
fn new_acceptor(shared: &Shared) -> Result<SslAcceptor, ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_certificate(&shared.cert)?;
    for c in &shared.chain {
        b.add_extra_chain_cert(c.clone())?;
    }
    b.set_private_key(&shared.key)?;
    b.check_private_key()?;
    let version = match shared.opts.tls_version {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    };
    b.set_min_proto_version(Some(version))?;
    b.set_max_proto_version(Some(version))?;
    // Random per context: even two contexts of this process can never
    // accept each other's sessions.
    let mut sid_ctx = [0u8; 16];
    rand_bytes(&mut sid_ctx)?;
    b.set_session_id_context(&sid_ctx)?;
    match shared.opts.tls_version {
        // Session IDs only, looked up in this context's own cache.
        TlsVersion::Tls12 => {
            b.set_options(SslOptions::NO_TICKET);
        }
        // Stateless tickets under this context's random ticket keys, but
        // none at handshake time: only the ones sent at PASV/EPSV.
        TlsVersion::Tls13 => b.set_num_tickets(0)?,
    }
    Ok(b.build())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id: u64 = 0;
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(sock) = conn else {
            // EMFILE and the like: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        next_id += 1;
        let id = next_id;
        let Ok(registered) = sock.try_clone() else {
            continue;
        };
        if let Ok(mut controls) = shared.controls.lock() {
            controls.insert(id, registered);
        }
        shared
            .counters
            .control_connections
            .fetch_add(1, Ordering::SeqCst);
        shared.live_sessions.fetch_add(1, Ordering::SeqCst);
        let guard = SessionGuard {
            shared: Arc::clone(&shared),
            id,
        };
        let spawned = thread::Builder::new()
            .name(format!("strict-ftps-ctrl-{id}"))
            .spawn(move || {
                let guard = guard;
                run_control(sock, &guard.shared);
            });
        // A failed spawn drops the closure, and with it the guard.
        drop(spawned);
    }
}

/// Unregisters a control connection even if its thread panics.
struct SessionGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Ok(mut controls) = self.shared.controls.lock() {
            controls.remove(&self.id);
        }
        self.shared.live_sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

const MAX_LINE: usize = 8192;

/// Line-oriented reader that keeps partial input across timeouts, so the
/// control connection can be polled with a short read timeout during a
/// transfer without losing bytes.
#[derive(Default)]
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// `Ok(None)` on end of stream; timeouts come back as errors of kind
    /// `WouldBlock`/`TimedOut` with the partial line kept.
    fn read_line<R: Read>(&mut self, r: &mut R) -> io::Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(clean_command_line(&line)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "command line too long",
                ));
            }
            let mut chunk = [0u8; 1024];
            let n = r.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Drops Telnet IAC sequences (IP/Synch sent by some clients before ABOR)
/// and anything else non-alphabetic in front of the command.
fn clean_command_line(line: &[u8]) -> String {
    let start = line
        .iter()
        .position(|b| b.is_ascii_alphabetic())
        .unwrap_or(line.len());
    String::from_utf8_lossy(&line[start..]).into_owned()
}

fn split_command(line: &str) -> (String, &str) {
    match line.split_once(' ') {
        Some((cmd, arg)) => (cmd.to_ascii_uppercase(), arg),
        None => (line.to_ascii_uppercase(), ""),
    }
}

fn write_reply<W: Write>(w: &mut W, code: u16, text: &str) -> io::Result<()> {
    w.write_all(format!("{code} {text}\r\n").as_bytes())?;
    w.flush()
}

fn run_control(mut sock: TcpStream, shared: &Arc<Shared>) {
    let opts = &shared.opts;
    let _ = sock.set_nodelay(true);
    let _ = sock.set_write_timeout(Some(opts.io_timeout));
    let _ = sock.set_read_timeout(Some(opts.idle_timeout));
    let Ok(peer) = sock.peer_addr() else {
        return;
    };
    let max_sessions = shared.faults.max_sessions.load(Ordering::SeqCst);
    if max_sessions > 0 && shared.live_sessions.load(Ordering::SeqCst) > max_sessions {
        // vsftpd's words for max_per_ip (max_clients says "too many users").
        shared.counters.refused_421.fetch_add(1, Ordering::SeqCst);
        let _ = write_reply(
            &mut sock,
            421,
            "There are too many connections from your internet address.",
        );
        return;
    }
    if write_reply(
        &mut sock,
        220,
        "Strict FTPS test server (FileZilla Server 1.x TLS rules)",
    )
    .is_err()
    {
        return;
    }

    // Plain-text phase: nothing but AUTH TLS leads anywhere.
    let mut reader = LineReader::default();
    loop {
        let line = match reader.read_line(&mut sock) {
            Ok(Some(line)) => line,
            _ => return,
        };
        let (cmd, arg) = split_command(&line);
        let result = match cmd.as_str() {
            "AUTH" => {
                let mech = arg.trim().to_ascii_uppercase();
                if mech == "TLS" || mech == "SSL" || mech == "TLS-C" {
                    break;
                }
                write_reply(&mut sock, 504, "Auth type not supported")
            }
            "FEAT" => sock
                .write_all(feat_reply(shared.opts.list_only).as_bytes())
                .and_then(|_| sock.flush()),
            "NOOP" => write_reply(&mut sock, 200, "OK"),
            "SYST" => write_reply(&mut sock, 215, "UNIX Type: L8"),
            "QUIT" => {
                let _ = write_reply(&mut sock, 221, "Goodbye");
                return;
            }
            _ => write_reply(
                &mut sock,
                530,
                "This server does not allow plain FTP. You have to use FTP over TLS.",
            ),
        };
        if result.is_err() {
            return;
        }
    }
    // Bytes pipelined behind AUTH would be plaintext smuggled into the TLS
    // session; a real server drops such a client.
    if !reader.buf.is_empty() {
        return;
    }

    let acceptor = match new_acceptor(shared) {
        Ok(a) => a,
        Err(_) => {
            let _ = write_reply(&mut sock, 431, "Unable to set up TLS");
            return;
        }
    };
    if write_reply(&mut sock, 234, "Using authentication type TLS.").is_err() {
        return;
    }
    let _ = sock.set_read_timeout(Some(opts.io_timeout));
    let ctrl = match acceptor.accept(sock) {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = ctrl.get_ref().set_read_timeout(Some(opts.idle_timeout));

    let mut session = Session {
        shared: Arc::clone(shared),
        acceptor,
        ctrl,
        reader: LineReader::default(),
        peer_ip: peer.ip(),
        pending_user: None,
        logged_in: false,
        pbsz: false,
        prot_p: false,
        cwd: Vec::new(),
        rest: 0,
        passive: None,
        passive_opened: None,
        queued: VecDeque::new(),
        tickets_issued: 0,
        rename_from: None,
        muted: false,
        cut_transfer: false,
        late: Vec::new(),
        late_until: None,
    };
    session.run();
}

/// One TLS control connection after AUTH TLS.
struct Session {
    shared: Arc<Shared>,
    acceptor: SslAcceptor,
    ctrl: SslStream<TcpStream>,
    reader: LineReader,
    peer_ip: IpAddr,
    pending_user: Option<String>,
    logged_in: bool,
    pbsz: bool,
    prot_p: bool,
    /// Current directory as components below the root.
    cwd: Vec<String>,
    rest: u64,
    passive: Option<TcpListener>,
    /// When `passive` was opened.
    passive_opened: Option<Instant>,
    /// Commands that arrived during a transfer, run after it.
    queued: VecDeque<String>,
    /// TLS 1.3 tickets sent on this control connection.
    tickets_issued: u64,
    /// The file named by the last RNFR, for the RNTO that must follow it.
    rename_from: Option<PathBuf>,
    /// Replies are swallowed (a command carried out before the connection drops).
    muted: bool,
    /// The transfer under way sends less than it should: its final reply is 426.
    cut_transfer: bool,
    /// Replies held back in async mode: they go out after the next reply, or when
    /// `late_until` passes.
    late: Vec<String>,
    late_until: Option<Instant>,
}

/// How long async mode holds a reply back when no other command comes.
const LATE_REPLY_DELAY: Duration = Duration::from_millis(30);

enum Flow {
    Continue,
    Quit,
}

/// What a transfer command sends on the data connection, or receives.
enum Payload {
    File(fs::File),
    Bytes(Vec<u8>),
    /// An upload, written to this file.
    Upload(fs::File),
}

enum Outcome {
    Done,
    NoConnection,
    TlsFailed,
    NotResumed,
    /// ABOR, or the control connection went away.
    Aborted,
    /// The data connection failed under the transfer (client closed it).
    Broken,
    /// An upload ended without TLS close_notify: maybe cut off.
    Truncated,
    /// An upload went past the space left (see `StrictServer::set_space_left`).
    NoSpace,
}

const COMMANDS_BEFORE_LOGIN: &[&str] = &[
    "USER", "PASS", "AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "SYST", "NOOP", "QUIT", "ABOR", "CLNT",
    "TYPE",
];

impl Session {
    fn run(&mut self) {
        while let Some(line) = self.next_line() {
            // Async mode: a command with another one right behind it is carried out after
            // that one, as if it took longer on its own task.
            let behind = if self.async_replies() {
                self.buffered_line()
            } else {
                None
            };
            let lines = match behind {
                Some(behind) => vec![behind, line],
                None => vec![line],
            };
            for line in lines {
                match self.handle(&line) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => {
                        let _ = self.flush_late();
                        let _ = self.ctrl.shutdown();
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    }

    fn async_replies(&self) -> bool {
        self.shared.faults.async_replies.load(Ordering::SeqCst)
    }

    /// The next command line; None when the connection ends. Replies held back go out
    /// when their time comes even if no command does.
    fn next_line(&mut self) -> Option<String> {
        if let Some(line) = self.queued.pop_front() {
            return Some(line);
        }
        loop {
            let wait = self
                .late_until
                .map(|until| until.saturating_duration_since(Instant::now()));
            if let Some(wait) = wait {
                let _ = self
                    .ctrl
                    .get_ref()
                    .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
            }
            let read = self.reader.read_line(&mut self.ctrl);
            if wait.is_some() {
                let _ = self
                    .ctrl
                    .get_ref()
                    .set_read_timeout(Some(self.shared.opts.idle_timeout));
            }
            match read {
                Ok(Some(line)) => return Some(line),
                Err(e)
                    if wait.is_some()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    if self.flush_late().is_err() {
                        return None;
                    }
                }
                Err(e)
                    if self.shared.opts.idle_reply_421
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    // vsftpd's idle_session_timeout.
                    let _ = self.reply(421, "Timeout.");
                    let _ = self.ctrl.shutdown();
                    return None;
                }
                // EOF, idle timeout, stop() or a TLS error.
                _ => return None,
            }
        }
    }

    /// A command line that arrived with the one just read (pipelined), if any.
    fn buffered_line(&mut self) -> Option<String> {
        if let Some(line) = self.queued.pop_front() {
            return Some(line);
        }
        if !self.reader.buf.contains(&b'\n') {
            return None;
        }
        self.reader.read_line(&mut self.ctrl).ok().flatten()
    }

    /// Holds a reply back (async mode) or sends it now.
    fn reply_late(&mut self, code: u16, text: &str) -> io::Result<()> {
        if !self.async_replies() || self.muted {
            return self.reply(code, text);
        }
        self.late.push(format!("{code} {text}\r\n"));
        self.late_until
            .get_or_insert_with(|| Instant::now() + LATE_REPLY_DELAY);
        Ok(())
    }

    /// Sends the replies held back.
    fn flush_late(&mut self) -> io::Result<()> {
        self.late_until = None;
        for line in std::mem::take(&mut self.late) {
            self.ctrl.write_all(line.as_bytes())?;
        }
        self.ctrl.flush()
    }

    fn reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        if self.muted {
            return Ok(());
        }
        write_reply(&mut self.ctrl, code, text)?;
        if !self.late.is_empty() {
            self.flush_late()?;
        }
        Ok(())
    }

    fn handle(&mut self, line: &str) -> io::Result<Flow> {
        let (cmd, arg) = split_command(line);
        if !self.logged_in && !COMMANDS_BEFORE_LOGIN.contains(&cmd.as_str()) {
            self.reply(530, "Please log in with USER and PASS first.")?;
            return Ok(Flow::Continue);
        }
        if self.logged_in {
            self.shared
                .commands
                .lock()
                .unwrap()
                .push(format!("{cmd} {}", arg.trim()).trim_end().to_string());
        }
        let drop_here = {
            let mut drop_at = self
                .shared
                .faults
                .drop_at
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match drop_at.as_ref() {
                Some(at) if at.verb == cmd => drop_at.take(),
                _ => None,
            }
        };
        if let Some(at) = drop_here {
            if at.perform {
                self.muted = true;
                let _ = self.dispatch(&cmd, arg);
            }
            let _ = self.ctrl.get_ref().shutdown(Shutdown::Both);
            return Ok(Flow::Quit);
        }
        if cmd != "RNTO" {
            self.rename_from = None;
        }
        let hang_up = {
            let mut after = self
                .shared
                .faults
                .hang_up_after
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            after.take_if(|verb| *verb == cmd).is_some()
        };
        let flow = self.dispatch(&cmd, arg)?;
        if hang_up {
            let _ = self.ctrl.flush();
            let _ = self.ctrl.get_ref().shutdown(Shutdown::Both);
            return Ok(Flow::Quit);
        }
        Ok(flow)
    }

    fn dispatch(&mut self, cmd: &str, arg: &str) -> io::Result<Flow> {
        match cmd {
            "USER" => {
                self.logged_in = false;
                self.pending_user = Some(arg.to_string());
                self.reply(331, "Please, specify the password.")?;
            }
            "PASS" => match self.pending_user.take() {
                None => self.reply(503, "Login with USER first.")?,
                Some(user) => {
                    if user == self.shared.opts.user && arg == self.shared.opts.password {
                        self.logged_in = true;
                        self.reply(230, "Login successful.")?;
                    } else {
                        self.reply(530, "Login incorrect.")?;
                    }
                }
            },
            "AUTH" => self.reply(534, "Authentication type already set to TLS")?,
            "PBSZ" => {
                if arg.trim() == "0" {
                    self.pbsz = true;
                    self.reply(200, "PBSZ=0")?;
                } else {
                    self.reply(501, "PBSZ must be 0")?;
                }
            }
            "PROT" => {
                if !self.pbsz {
                    self.reply(503, "PBSZ required before PROT")?;
                } else {
                    match arg.trim().to_ascii_uppercase().as_str() {
                        "P" => {
                            self.prot_p = true;
                            self.reply(200, "Protection level set to P")?;
                        }
                        "C" => {
                            self.prot_p = false;
                            self.reply(
                                534,
                                "Protection level C not allowed: data must be protected",
                            )?;
                        }
                        "S" | "E" => self.reply(536, "Protection level not supported")?,
                        _ => self.reply(504, "Protection level not recognized")?,
                    }
                }
            }
            "FEAT" => {
                let feat = feat_reply(self.shared.opts.list_only);
                self.ctrl.write_all(feat.as_bytes())?;
                self.ctrl.flush()?;
            }
            "OPTS" => {
                let opt = arg.trim().to_ascii_uppercase();
                if opt == "UTF8 ON" || opt == "UTF8" || opt.starts_with("MLST") {
                    self.reply(200, "OK")?;
                } else {
                    self.reply(501, "Option not understood")?;
                }
            }
            "SYST" => self.reply(215, "UNIX Type: L8")?,
            "NOOP" => self.reply(200, "OK")?,
            "CLNT" => self.reply(200, "Don't care")?,
            "QUIT" => {
                self.reply(221, "Goodbye")?;
                return Ok(Flow::Quit);
            }
            "ABOR" => self.reply(225, "No transfer to abort")?,
            "TYPE" => match arg.trim().to_ascii_uppercase().as_str() {
                "I" | "A" | "L 8" | "A N" => self.reply(200, "Type set")?,
                _ => self.reply(504, "Type not supported")?,
            },
            "MODE" => match arg.trim().to_ascii_uppercase().as_str() {
                "S" => self.reply(200, "Mode set to S")?,
                _ => self.reply(504, "Only stream mode is supported")?,
            },
            "STRU" => match arg.trim().to_ascii_uppercase().as_str() {
                "F" => self.reply(200, "Structure set to F")?,
                _ => self.reply(504, "Only file structure is supported")?,
            },
            "ALLO" => self.reply(202, "No storage allocation necessary")?,
            "PWD" | "XPWD" => {
                let path = virtual_path(&self.cwd).replace('"', "\"\"");
                self.reply(257, &format!("\"{path}\" is current directory."))?;
            }
            "CWD" | "XCWD" => self.cwd_to(arg)?,
            "CDUP" | "XCUP" => self.cwd_to("..")?,
            "PASV" => self.passive_mode(false)?,
            "EPSV" => {
                let a = arg.trim().to_ascii_uppercase();
                if a.is_empty() || a == "1" {
                    self.passive_mode(true)?;
                } else if a == "ALL" {
                    self.reply(200, "EPSV ALL command successful")?;
                } else {
                    self.reply(522, "Network protocol not supported, use (1)")?;
                }
            }
            "PORT" | "EPRT" => self.reply(502, "Active mode not supported, use PASV or EPSV")?,
            "REST" => match arg.trim().parse::<u64>() {
                Ok(n) => {
                    self.rest = n;
                    self.reply(350, &format!("Restarting at {n}"))?;
                }
                Err(_) => self.reply(501, "Bad restart offset")?,
            },
            "SIZE" => self.size(arg)?,
            "MDTM" => self.mdtm(arg)?,
            "MLST" | "MLSD" if self.shared.opts.list_only => self.reply(500, "Unknown command.")?,
            "MLST" => self.mlst(arg)?,
            "RETR" => self.retr(arg)?,
            "LIST" => self.listing(Listing::List, arg)?,
            "NLST" => self.listing(Listing::Nlst, arg)?,
            "MLSD" => self.listing(Listing::Mlsd, arg)?,
            "STOR" | "APPE" | "DELE" | "MKD" | "XMKD" | "RMD" | "XRMD" | "RNFR" | "RNTO"
            | "MFMT"
                if !self.shared.opts.writable =>
            {
                self.reply(550, "Permission denied: read-only server")?
            }
            "STOR" => self.store(arg, false)?,
            "APPE" => self.store(arg, true)?,
            "DELE" => self.delete(arg)?,
            "MKD" | "XMKD" => self.make_dir(arg)?,
            "RMD" | "XRMD" => self.remove_dir(arg)?,
            "RNFR" => self.rename_from(arg)?,
            "RNTO" => self.rename_to(arg)?,
            "MFMT" => self.set_modified(arg)?,
            // FileZilla Server has no SITE commands, so no SITE CHMOD either.
            "SITE" => self.reply(500, "Command not understood")?,
            _ => self.reply(502, "Command not implemented")?,
        }
        Ok(Flow::Continue)
    }

    /// The real path of a file to change: inside the root, and not the root itself.
    fn target_path(&mut self, arg: &str) -> io::Result<Option<PathBuf>> {
        match self.real_path(arg) {
            Some((parts, real)) if !parts.is_empty() => Ok(Some(real)),
            Some(_) => {
                self.reply(550, "Permission denied: the root cannot be changed.")?;
                Ok(None)
            }
            None => {
                self.reply(550, "Permission denied: path outside the root.")?;
                Ok(None)
            }
        }
    }

    fn store(&mut self, arg: &str, append: bool) -> io::Result<()> {
        let offset = std::mem::take(&mut self.rest);
        if !self.data_ready()? {
            return Ok(());
        }
        let Some(real) = self.target_path(arg)? else {
            return Ok(());
        };
        if real.is_dir() {
            return self.reply(550, "Is a directory.");
        }
        if !append && offset == 0 && !self.shared.opts.store_over_existing && real.exists() {
            return self.reply(550, "Overwrite permission denied");
        }
        let opened = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .append(append)
            .truncate(!append && offset == 0)
            .open(&real);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) => return self.reply(553, &format!("Could not create file: {e}")),
        };
        if offset > 0 && file.seek(SeekFrom::Start(offset)).is_err() {
            return self.reply(554, "Invalid restart offset.");
        }
        if self.shared.faults.refuse_upload_data.load(Ordering::SeqCst) {
            self.passive = None;
            self.shared
                .counters
                .data_rejected
                .fetch_add(1, Ordering::SeqCst);
            self.ctrl
                .write_all(format!("{NOT_RESUMED_REPLY}\r\n").as_bytes())?;
            return self.ctrl.flush();
        }
        self.transfer(Payload::Upload(file))
    }

    fn delete(&mut self, arg: &str) -> io::Result<()> {
        let Some(real) = self.target_path(arg)? else {
            return Ok(());
        };
        match fs::symlink_metadata(&real) {
            Ok(meta) if meta.is_dir() => self.reply(550, "Is a directory; use RMD."),
            Ok(_) => match fs::remove_file(&real) {
                Ok(()) => self.reply(250, "File deleted successfully."),
                Err(e) => self.reply(550, &format!("Could not delete file: {e}")),
            },
            Err(_) => self.reply(550, "File not found."),
        }
    }

    fn make_dir(&mut self, arg: &str) -> io::Result<()> {
        let Some(real) = self.target_path(arg)? else {
            return Ok(());
        };
        match fs::create_dir(&real) {
            Ok(()) => self.reply(257, "Directory created successfully."),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.reply(550, "Directory already exists.")
            }
            Err(e) => self.reply(550, &format!("Could not create directory: {e}")),
        }
    }

    fn remove_dir(&mut self, arg: &str) -> io::Result<()> {
        let Some(real) = self.target_path(arg)? else {
            return Ok(());
        };
        match fs::remove_dir(&real) {
            Ok(()) => self.reply(250, "Directory deleted successfully."),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.reply(550, "Directory not found.")
            }
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                self.reply(550, "Directory not empty.")
            }
            Err(e) => self.reply(550, &format!("Could not remove directory: {e}")),
        }
    }

    fn rename_from(&mut self, arg: &str) -> io::Result<()> {
        let Some(real) = self.target_path(arg)? else {
            return Ok(());
        };
        if fs::symlink_metadata(&real).is_err() {
            return self.reply(550, "File not found.");
        }
        self.rename_from = Some(real);
        self.reply(350, "File exists, ready for destination name.")
    }

    fn rename_to(&mut self, arg: &str) -> io::Result<()> {
        let Some(from) = self.rename_from.take() else {
            return self.reply(503, "Bad sequence of commands: RNFR first.");
        };
        let Some(to) = self.target_path(arg)? else {
            return Ok(());
        };
        if !self.shared.opts.rename_over_existing && fs::symlink_metadata(&to).is_ok() {
            return self.reply(553, "File exists.");
        }
        match fs::rename(&from, &to) {
            Ok(()) => self.reply(250, "File or directory renamed successfully."),
            Err(e) => self.reply(550, &format!("Could not rename: {e}")),
        }
    }

    fn set_modified(&mut self, arg: &str) -> io::Result<()> {
        let Some((time, path)) = arg.split_once(' ') else {
            return self.reply(501, "Syntax: MFMT YYYYMMDDHHMMSS path");
        };
        let Some(seconds) = parse_fact_time(time) else {
            return self.reply(501, "Invalid time.");
        };
        let Some(real) = self.target_path(path)? else {
            return Ok(());
        };
        let Ok(c_path) = std::ffi::CString::new(real.as_os_str().as_encoded_bytes()) else {
            return self.reply(550, "Invalid path.");
        };
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: seconds,
                tv_nsec: 0,
            },
        ];
        // SAFETY: a valid C path and two timespecs, as utimensat(2) wants.
        if unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) } != 0 {
            return self.reply(550, "File not found.");
        }
        self.reply(213, &format!("modify={time}; {path}"))
    }

    /// Maps a client path to its components below the root; `None` when
    /// it would climb above the root.
    fn resolve(&self, arg: &str) -> Option<Vec<String>> {
        let mut parts = if arg.starts_with('/') {
            Vec::new()
        } else {
            self.cwd.clone()
        };
        for comp in arg.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                c => parts.push(c.to_string()),
            }
        }
        Some(parts)
    }

    /// The real path for a client path; `None` when outside the root,
    /// including through symlinks.
    fn real_path(&self, arg: &str) -> Option<(Vec<String>, PathBuf)> {
        let parts = self.resolve(arg)?;
        let mut real = self.shared.root.clone();
        real.extend(&parts);
        if let Ok(canon) = fs::canonicalize(&real) {
            if !canon.starts_with(&self.shared.root) {
                return None;
            }
        }
        Some((parts, real))
    }

    fn cwd_to(&mut self, arg: &str) -> io::Result<()> {
        match self.real_path(arg) {
            Some((parts, real)) if real.is_dir() => {
                self.cwd = parts;
                let shown = virtual_path(&self.cwd);
                self.reply(
                    250,
                    &format!("CWD command successful. \"{shown}\" is current directory."),
                )
            }
            Some(_) => self.reply(550, "No such directory."),
            None => self.reply(550, "Permission denied: path outside the root."),
        }
    }

    fn size(&mut self, arg: &str) -> io::Result<()> {
        match self.real_path(arg).map(|(_, real)| fs::metadata(real)) {
            Some(Ok(meta)) if meta.is_file() => self.reply(213, &meta.len().to_string()),
            Some(Ok(_)) => self.reply(550, "Not a regular file."),
            Some(Err(_)) => self.reply(550, "File not found."),
            None => self.reply(550, "Permission denied: path outside the root."),
        }
    }

    fn mdtm(&mut self, arg: &str) -> io::Result<()> {
        match self.real_path(arg).map(|(_, real)| fs::metadata(real)) {
            Some(Ok(meta)) => self.reply(213, &fact_time(mtime_secs(&meta))),
            Some(Err(_)) => self.reply(550, "File not found."),
            None => self.reply(550, "Permission denied: path outside the root."),
        }
    }

    fn mlst(&mut self, arg: &str) -> io::Result<()> {
        let target = if arg.trim().is_empty() { "." } else { arg };
        match self.real_path(target) {
            Some((parts, real)) => match fs::metadata(&real) {
                Ok(meta) => {
                    let path = virtual_path(&parts);
                    let text = format!(
                        "250-Listing {path}\r\n {facts} {path}\r\n250 End\r\n",
                        facts = mlsx_facts(&meta)
                    );
                    self.ctrl.write_all(text.as_bytes())?;
                    self.ctrl.flush()
                }
                Err(_) => self.reply(550, "File not found."),
            },
            None => self.reply(550, "Permission denied: path outside the root."),
        }
    }

    fn passive_mode(&mut self, extended: bool) -> io::Result<()> {
        if !self.prot_p {
            return self.reply(521, "PROT P required");
        }
        // Replaces (and so closes) any listener a previous PASV left open.
        self.passive = None;
        let busy = self.shared.faults.passive_ports_busy.fetch_update(
            Ordering::SeqCst,
            Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if busy.is_ok() {
            return self.reply(425, "Unable to open passive port: Address already in use.");
        }
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(l) => l,
            Err(_) => return self.reply(425, "Can't open passive listener."),
        };
        let port = listener.local_addr()?.port();
        self.passive = Some(listener);
        self.passive_opened = Some(Instant::now());
        let supply_left = self
            .shared
            .opts
            .tickets_per_connection
            .is_none_or(|limit| self.tickets_issued < limit);
        if self.ctrl.ssl().version2() == Some(SslVersion::TLS1_3)
            && supply_left
            && self.issue_ticket()
        {
            self.tickets_issued += 1;
            self.shared
                .counters
                .tickets_sent
                .fetch_add(1, Ordering::SeqCst);
        }
        // The ticket queued above goes out in front of this reply.
        if extended {
            self.reply(229, &format!("Entering Extended Passive Mode (|||{port}|)"))
        } else {
            self.reply(
                227,
                &format!(
                    "Entering Passive Mode (127,0,0,1,{},{})",
                    port >> 8,
                    port & 0xff
                ),
            )
        }
    }

    fn issue_ticket(&mut self) -> bool {
        let ssl: &SslRef = self.ctrl.ssl();
        // Same cast as foreign_types::ForeignTypeRef::as_ptr (that trait is
        // not re-exported by the openssl crate): an SslRef is the SSL object.
        let ptr = ssl as *const SslRef as *mut openssl_sys::SSL;
        // SAFETY: ptr is the live SSL of the control stream, which is owned
        // by this thread and not in the middle of another call.
        unsafe { SSL_new_session_ticket(ptr) == 1 }
    }

    fn retr(&mut self, arg: &str) -> io::Result<()> {
        let offset = std::mem::take(&mut self.rest);
        if !self.data_ready()? {
            return Ok(());
        }
        let (_, real) = match self.real_path(arg) {
            Some(p) => p,
            None => return self.reply(550, "Permission denied: path outside the root."),
        };
        if !real.is_file() {
            if self
                .shared
                .faults
                .keep_rest_after_refusal
                .load(Ordering::SeqCst)
            {
                self.rest = offset;
            }
            return self.reply(550, "File not found.");
        }
        let mut file = match fs::File::open(&real) {
            Ok(f) => f,
            Err(_) => return self.reply(550, "Permission denied."),
        };
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return self.reply(554, "Invalid restart offset.");
        }
        self.transfer(Payload::File(file))
    }

    fn listing(&mut self, kind: Listing, arg: &str) -> io::Result<()> {
        self.rest = 0;
        if !self.data_ready()? {
            return Ok(());
        }
        // "LIST -la dir": ls options, then an optional path.
        let mut show_hidden = kind == Listing::Mlsd;
        let mut path = arg.trim();
        if kind != Listing::Mlsd {
            while let Some(rest) = path.strip_prefix('-') {
                let (opts, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                show_hidden |= opts.contains('a');
                path = tail.trim_start();
            }
        }
        let target = if path.is_empty() { "." } else { path };
        let (parts, real) = match self.real_path(target) {
            Some(p) => p,
            None => return self.reply(550, "Permission denied: path outside the root."),
        };
        let fanout = *self.shared.faults.synthetic_tree.lock().unwrap();
        if let Some(fanout) =
            fanout.filter(|_| parts.first().map(String::as_str) == Some("synthetic"))
        {
            return match synthetic_listing(kind, &parts[1..], fanout) {
                Some(out) => self.transfer(Payload::Bytes(out.into_bytes())),
                None => self.reply(550, "Directory not found."),
            };
        }
        let meta = match fs::metadata(&real) {
            Ok(m) => m,
            Err(_) => return self.reply(550, "Directory not found."),
        };
        let now = now_secs();
        let mut out = String::new();
        if meta.is_dir() {
            let Ok(entries) = list_dir(&real, show_hidden) else {
                return self.reply(550, "Cannot read directory.");
            };
            let show_symlinks = self.shared.faults.show_symlinks.load(Ordering::SeqCst);
            for (name, meta) in entries {
                let link = show_symlinks
                    .then(|| fs::read_link(real.join(&name)).ok())
                    .flatten();
                match link {
                    Some(target) => {
                        kind.format_symlink(&mut out, &name, &target.to_string_lossy(), &meta, now)
                    }
                    None => kind.format_entry(&mut out, &name, &meta, now),
                }
            }
        } else if kind == Listing::Mlsd {
            return self.reply(501, "Not a directory.");
        } else {
            let name = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            kind.format_entry(&mut out, &name, &meta, now);
        }
        let delay = self.shared.faults.listing_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let slow = {
            let mut slow = self.shared.faults.slow_next_listing.lock().unwrap();
            match slow.as_ref() {
                Some((slow_path, _)) if slow_path.as_str() == path.trim_matches('/') => slow.take(),
                _ => None,
            }
        };
        if let Some((_, delay)) = slow {
            std::thread::sleep(delay);
        }
        let mut out = out.into_bytes();
        if self.shared.faults.cut_listings.load(Ordering::SeqCst) {
            out.truncate(out.len() / 2);
            self.cut_transfer = true;
        }
        self.transfer(Payload::Bytes(out))
    }

    /// Checks common to all transfer commands; replies itself when not
    /// ready.
    fn data_ready(&mut self) -> io::Result<bool> {
        if !self.prot_p {
            self.reply(521, "PROT P required")?;
            return Ok(false);
        }
        if self.passive.is_none() {
            self.reply(425, "Use PASV or EPSV first.")?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Runs one transfer: 150, then the data connection on its own thread
    /// while this thread watches the control connection for ABOR, then the
    /// final reply(ies).
    fn transfer(&mut self, payload: Payload) -> io::Result<()> {
        let Some(listener) = self.passive.take() else {
            return self.reply(425, "Use PASV or EPSV first.");
        };
        let waited = self.passive_opened.map(|opened| opened.elapsed());
        if self.shared.faults.impatient_passive.load(Ordering::SeqCst)
            && waited.is_some_and(|waited| waited > PASSIVE_PATIENCE)
        {
            drop(listener);
            return self.reply(425, "Passive port timed out waiting for a command.");
        }
        // Async mode: the data connection must be there when the command is taken.
        let preaccepted = if self.async_replies() {
            match accept_waiting(&listener, self.peer_ip) {
                Some(sock) => Some(sock),
                None => return self.reply(425, "No data connection established"),
            }
        } else {
            None
        };
        self.reply(150, "Starting data transfer.")?;
        let upload = matches!(payload, Payload::Upload(_));

        let abort = Arc::new(AtomicBool::new(false));
        let data_sock: Arc<Mutex<Option<TcpStream>>> = Arc::new(Mutex::new(None));
        let job = DataJob {
            listener,
            preaccepted,
            acceptor: self.acceptor.clone(),
            payload,
            abort: Arc::clone(&abort),
            data_sock: Arc::clone(&data_sock),
            shared: Arc::clone(&self.shared),
            peer_ip: self.peer_ip,
        };
        let worker = thread::Builder::new()
            .name("strict-ftps-data".into())
            .spawn(move || job.run())?;

        let stop_transfer = |abort: &AtomicBool| {
            abort.store(true, Ordering::SeqCst);
            if let Ok(sock) = data_sock.lock() {
                if let Some(sock) = sock.as_ref() {
                    let _ = sock.shutdown(Shutdown::Both);
                }
            }
        };

        // Short read timeouts let this thread notice the end of the
        // transfer quickly; LineReader keeps partial lines across them.
        let _ = self
            .ctrl
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(5)));
        let mut abor_received = false;
        let mut control_lost = false;
        while !worker.is_finished() {
            match self.reader.read_line(&mut self.ctrl) {
                Ok(Some(line)) => {
                    if split_command(&line).0 == "ABOR" && !abor_received {
                        abor_received = true;
                        stop_transfer(&abort);
                    } else {
                        self.queued.push_back(line);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Ok(None) | Err(_) => {
                    control_lost = true;
                    self.shared
                        .counters
                        .transfers_left
                        .fetch_add(1, Ordering::SeqCst);
                    stop_transfer(&abort);
                    break;
                }
            }
        }
        let outcome = worker.join().unwrap_or(Outcome::Broken);
        if upload
            && self
                .shared
                .faults
                .hang_up_before_upload_reply
                .swap(false, Ordering::SeqCst)
        {
            let _ = self.ctrl.get_ref().shutdown(Shutdown::Both);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fault: hung up before the upload's final reply",
            ));
        }
        if control_lost {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "control connection lost during transfer",
            ));
        }
        let _ = self
            .ctrl
            .get_ref()
            .set_read_timeout(Some(self.shared.opts.idle_timeout));

        let cut = std::mem::take(&mut self.cut_transfer);
        let (code, text): (u16, String) = match outcome {
            Outcome::Done if cut => (426, "Failure reading directory.".into()),
            Outcome::Done => (226, "Operation successful".into()),
            Outcome::NotResumed => {
                let (code, text) = NOT_RESUMED_REPLY.split_once(' ').unwrap_or(("425", ""));
                (code.parse().unwrap_or(425), text.to_string())
            }
            Outcome::NoConnection => (425, "Can't open data connection.".into()),
            Outcome::TlsFailed => (
                425,
                "Unable to build data connection: TLS handshake failed.".into(),
            ),
            Outcome::Aborted | Outcome::Broken if abor_received => {
                (426, "Data connection closed; transfer aborted.".into())
            }
            Outcome::Aborted | Outcome::Broken => {
                (426, "Connection closed; transfer aborted.".into())
            }
            Outcome::Truncated => (426, "Failure reading network stream.".into()),
            Outcome::NoSpace => {
                let code = self.shared.faults.space_reply.load(Ordering::SeqCst) as u16;
                let text = if code == 552 {
                    "Exceeded storage allocation (quota)."
                } else {
                    "Insufficient storage space: no space left on device."
                };
                (code, text.into())
            }
        };
        if abor_received && self.shared.faults.break_after_abort.load(Ordering::SeqCst) {
            // Plain text where TLS records belong: the client's TLS layer fails.
            let raw = format!("{code} {text}\r\n226 ABOR command successful\r\n");
            let _ = self.ctrl.get_mut().write_all(raw.as_bytes());
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control stream broken after ABOR",
            ));
        }
        self.reply_late(code, &text)?;
        if abor_received {
            self.reply_late(226, "ABOR command successful")?;
        }
        Ok(())
    }
}

/// How long a passive port waits for its transfer command with
/// [`StrictServer::set_impatient_passive`].
pub const PASSIVE_PATIENCE: Duration = Duration::from_millis(50);

/// Async mode's check that a data connection is there when the transfer command is
/// taken: accepted within a few milliseconds, from the control connection's address.
fn accept_waiting(listener: &TcpListener, peer_ip: IpAddr) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + Duration::from_millis(5);
    loop {
        match listener.accept() {
            Ok((sock, addr)) if addr.ip() == peer_ip => {
                sock.set_nonblocking(false).ok()?;
                return Some(sock);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
}

/// OpenSSL removes a session from its cache when an SSL that used it is
/// freed without having sent close_notify (ssl_clear_bad_session). Data
/// connections share the control connection's session, so one aborted
/// transfer would make every later TLS 1.2 data connection of that control
/// connection fail to resume; FileZilla Server does not behave like that.
struct KeepSession(SslStream<TcpStream>);

impl Drop for KeepSession {
    fn drop(&mut self) {
        let state = self.0.get_shutdown();
        self.0.set_shutdown(state | ShutdownState::SENT);
    }
}

/// Everything the transfer thread owns.
struct DataJob {
    listener: TcpListener,
    /// The data connection, when it was accepted before the transfer began (async mode).
    preaccepted: Option<TcpStream>,
    acceptor: SslAcceptor,
    payload: Payload,
    abort: Arc<AtomicBool>,
    data_sock: Arc<Mutex<Option<TcpStream>>>,
    shared: Arc<Shared>,
    peer_ip: IpAddr,
}

impl DataJob {
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    fn run(mut self) -> Outcome {
        let timeout = self.shared.opts.io_timeout;
        let accepted = match self.preaccepted.take() {
            Some(sock) => Some(sock),
            None => self.accept_tcp(timeout),
        };
        let Some(sock) = accepted else {
            return if self.aborted() {
                Outcome::Aborted
            } else {
                Outcome::NoConnection
            };
        };
        let _ = sock.set_nodelay(true);
        let _ = sock.set_read_timeout(Some(timeout));
        let _ = sock.set_write_timeout(Some(timeout));
        if let (Ok(clone), Ok(mut slot)) = (sock.try_clone(), self.data_sock.lock()) {
            *slot = Some(clone);
        }
        // An ABOR that came before the socket was published above found
        // nothing to shut down.
        if self.aborted() {
            return Outcome::Aborted;
        }

        let mut guard = match self.acceptor.accept(sock) {
            Ok(s) => KeepSession(s),
            Err(_) => {
                if self.aborted() {
                    return Outcome::Aborted;
                }
                self.shared
                    .counters
                    .data_tls_failures
                    .fetch_add(1, Ordering::SeqCst);
                return Outcome::TlsFailed;
            }
        };
        let tls = &mut guard.0;
        if !tls.ssl().session_reused() {
            self.shared
                .counters
                .data_rejected
                .fetch_add(1, Ordering::SeqCst);
            let _ = tls.shutdown();
            return Outcome::NotResumed;
        }
        self.shared
            .counters
            .data_accepted
            .fetch_add(1, Ordering::SeqCst);

        let sent = match &mut self.payload {
            Payload::Bytes(bytes) => tls.write_all(bytes),
            Payload::File(file) => {
                let stall_after = self.shared.faults.stall_data_after.load(Ordering::SeqCst);
                copy_chunks(file, tls, &self.abort, stall_after, &self.shared)
            }
            Payload::Upload(file) => {
                return match receive(tls, file, &self.abort, &self.shared) {
                    _ if self.aborted() => Outcome::Aborted,
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Broken,
                };
            }
        };
        if sent.is_err() || self.aborted() {
            return if self.aborted() {
                Outcome::Aborted
            } else {
                Outcome::Broken
            };
        }
        // close_notify, then FIN, before the 226 goes out on the control
        // connection: clients may treat a bare FIN as truncation.
        let _ = tls.shutdown();
        let _ = tls.get_ref().shutdown(Shutdown::Write);
        Outcome::Done
    }

    fn accept_tcp(&self, timeout: Duration) -> Option<TcpStream> {
        // Non-blocking so that ABOR and the timeout are noticed.
        self.listener.set_nonblocking(true).ok()?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((sock, addr)) => {
                    // Like FileZilla's default: the data connection must come
                    // from the control connection's address.
                    if addr.ip() == self.peer_ip && sock.set_nonblocking(false).is_ok() {
                        return Some(sock);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.aborted() || Instant::now() >= deadline {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return None,
            }
        }
    }
}

/// Reads an upload into `file` until the client's close_notify. The server
/// answers with its own close_notify, as vsftpd does, and then closes.
fn receive(
    tls: &mut SslStream<TcpStream>,
    file: &mut fs::File,
    abort: &AtomicBool,
    shared: &Shared,
) -> io::Result<Outcome> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if abort.load(Ordering::SeqCst) {
            return Ok(Outcome::Aborted);
        }
        let n = match tls.ssl_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => break,
            // A bare end of stream, without close_notify: maybe cut off.
            Err(e) if e.code() == openssl::ssl::ErrorCode::SYSCALL => {
                return Ok(Outcome::Truncated)
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let allowed = shared
            .faults
            .space_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                Some(left.saturating_sub(n as u64))
            })
            .unwrap_or(0);
        if (n as u64) > allowed {
            file.write_all(&buf[..allowed as usize])?;
            return Ok(Outcome::NoSpace);
        }
        file.write_all(&buf[..n])?;
    }
    file.flush()?;
    let _ = tls.shutdown();
    let _ = tls.get_ref().shutdown(Shutdown::Write);
    Ok(Outcome::Done)
}

fn copy_chunks<W: Write>(
    file: &mut fs::File,
    out: &mut W,
    abort: &AtomicBool,
    stall_after: u64,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let rate = shared.faults.data_rate.load(Ordering::SeqCst);
    let started = Instant::now();
    loop {
        if rate > 0 {
            // Never ahead of `rate` bytes per second since the start.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                out.flush()?;
                thread::sleep(wait);
            }
        }
        if abort.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "aborted"));
        }
        if sent >= stall_after {
            // A stalled transfer: the connection stays open and silent until
            // the client gives up (ABOR or closing the control connection),
            // the server stops, or io_timeout passes.
            out.flush()?;
            let deadline = Instant::now() + shared.opts.io_timeout;
            while !abort.load(Ordering::SeqCst)
                && !shared.stopping.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(10));
            }
            return Err(io::Error::new(io::ErrorKind::TimedOut, "stalled"));
        }
        let want = buf
            .len()
            .min(usize::try_from(stall_after - sent).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return out.flush();
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listing {
    List,
    Nlst,
    Mlsd,
}

impl Listing {
    fn format_symlink(
        self,
        out: &mut String,
        name: &str,
        target: &str,
        meta: &fs::Metadata,
        now: i64,
    ) {
        let _ = match self {
            Listing::List => write!(
                out,
                "lrwxrwxrwx   1 ftp ftp {:>12} {} {name} -> {target}\r\n",
                target.len(),
                ls_time(mtime_secs(meta), now),
            ),
            Listing::Nlst => write!(out, "{name}\r\n"),
            Listing::Mlsd => write!(
                out,
                "type=OS.unix=symlink;modify={};UNIX.mode=0777; {name}\r\n",
                fact_time(mtime_secs(meta))
            ),
        };
    }

    fn format_entry(self, out: &mut String, name: &str, meta: &fs::Metadata, now: i64) {
        match self {
            Listing::List => {
                let _ = write!(
                    out,
                    "{} {:>3} ftp ftp {:>12} {} {}\r\n",
                    ls_mode(meta),
                    meta.nlink(),
                    meta.len(),
                    ls_time(mtime_secs(meta), now),
                    name
                );
            }
            Listing::Nlst => {
                let _ = write!(out, "{name}\r\n");
            }
            Listing::Mlsd => {
                let _ = write!(out, "{} {name}\r\n", mlsx_facts(meta));
            }
        }
    }
}

/// The listing of `synthetic/<below>` in a made-up tree (see
/// `StrictServer::set_synthetic_tree`); None for a path not in it.
fn synthetic_listing(kind: Listing, below: &[String], fanout: [usize; 3]) -> Option<String> {
    let within = |name: &str, prefix: char, count: usize| {
        name.strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < count)
    };
    let (prefix, count, dirs) = match below {
        [] => ('d', fanout[0], true),
        [d] if within(d, 'd', fanout[0]) => ('e', fanout[1], true),
        [d, e] if within(d, 'd', fanout[0]) && within(e, 'e', fanout[1]) => ('f', fanout[2], false),
        _ => return None,
    };
    let mut out = String::new();
    for i in 0..count {
        let name = format!("{prefix}{i:04}");
        let _ = match (kind, dirs) {
            (Listing::Mlsd, true) => write!(
                out,
                "type=dir;modify=20260101000000;perm=el;UNIX.mode=0755; {name}\r\n"
            ),
            (Listing::Mlsd, false) => write!(
                out,
                "type=file;size=1234;modify=20260101000000;perm=r;UNIX.mode=0644; {name}\r\n"
            ),
            (Listing::List, true) => write!(
                out,
                "drwxr-xr-x   2 ftp ftp         4096 Jan  1  2026 {name}\r\n"
            ),
            (Listing::List, false) => write!(
                out,
                "-rw-r--r--   1 ftp ftp         1234 Jan  1  2026 {name}\r\n"
            ),
            (Listing::Nlst, _) => write!(out, "{name}\r\n"),
        };
    }
    Some(out)
}

/// Entries sorted by name, following symlinks (broken ones are left out,
/// as are names a line-based listing cannot carry).
fn list_dir(dir: &Path, show_hidden: bool) -> io::Result<Vec<(String, fs::Metadata)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(['\r', '\n']) || (!show_hidden && name.starts_with('.')) {
            continue;
        }
        if let Ok(meta) = fs::metadata(entry.path()) {
            entries.push((name, meta));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn feat_reply(list_only: bool) -> String {
    let mlsx = [" MLST type*;size*;modify*;perm*;UNIX.mode*;", " MLSD"];
    [
        "211-Features:",
        " AUTH TLS",
        " PBSZ",
        " PROT",
        " EPSV",
        " PASV",
    ]
    .into_iter()
    .chain(mlsx.into_iter().filter(|_| !list_only))
    .chain([
        " MFMT",
        " SIZE",
        " MDTM",
        " REST STREAM",
        " UTF8",
        "211 End",
        "",
    ])
    .collect::<Vec<_>>()
    .join("\r\n")
}

fn virtual_path(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

fn mlsx_facts(meta: &fs::Metadata) -> String {
    let modify = fact_time(mtime_secs(meta));
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() {
        format!("type=dir;modify={modify};perm=el;UNIX.mode={mode:04o};")
    } else {
        format!(
            "type=file;size={};modify={modify};perm=r;UNIX.mode={mode:04o};",
            meta.len()
        )
    }
}

fn ls_mode(meta: &fs::Metadata) -> String {
    let mode = meta.mode();
    let mut s = String::with_capacity(10);
    s.push(if meta.is_dir() { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn mtime_secs(meta: &fs::Metadata) -> i64 {
    meta.mtime()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `ls -l` style: time of day for the last six months, year otherwise (UTC).
fn ls_time(secs: i64, now: i64) -> String {
    let t = Utc::from_secs(secs);
    let month = MONTHS[(t.month - 1) as usize];
    const HALF_YEAR: i64 = 183 * 86_400;
    if secs <= now + 3600 && now - secs < HALF_YEAR {
        format!("{month} {:>2} {:02}:{:02}", t.day, t.hour, t.minute)
    } else {
        format!("{month} {:>2} {:>5}", t.day, t.year)
    }
}

/// Seconds since 1970 of an RFC 3659 time-val (`YYYYMMDDHHMMSS`, UTC).
fn parse_fact_time(text: &str) -> Option<i64> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| text[range].parse::<i64>().ok();
    let (year, month, day) = (field(0..4)?, field(4..6)?, field(6..8)?);
    let (hour, minute, second) = (field(8..10)?, field(10..12)?, field(12..14)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// RFC 3659 time-val, UTC.
fn fact_time(secs: i64) -> String {
    let t = Utc::from_secs(secs);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Utc {
    /// Howard Hinnant's civil_from_days.
    fn from_secs(secs: i64) -> Utc {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }
}
