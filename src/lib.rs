//! ftpsfs: mount an FTPS server as a local folder.
//!
//! Many FTPS servers (vsftpd, ProFTPD, FileZilla Server) accept a TLS data connection only
//! if it resumes the TLS session of the control connection that opened it. ftpsfs gives
//! every control connection its own session store so that each data connection resumes
//! exactly its own control connection's session, on TLS 1.2 and TLS 1.3.
//!
//! # Layout
//! - [`ftp`]: the FTPS client. Replies, control and data connections, TLS session
//!   handling, listing parsers, the connection pool. Knows nothing of FUSE.
//! - [`fs`]: the filesystem logic, in wings: operations, metadata, caches, reading,
//!   writing. Knows nothing of fuser's types.
//! - [`fuse`]: the thin adapter from fuser's callbacks to [`fs`].
//! - [`mount`]: mounting, detaching and unmounting.
//! - [`settings`]: every option, defined once for `-o` and the command line.
//! - [`config`]: turns a URL, password sources and flags into connection options.
//! - [`check`]: the `ftpsfs check` diagnostic.

pub mod check;
pub mod config;
pub mod fs;
pub mod ftp;
pub mod fuse;
pub mod mount;
pub mod settings;
