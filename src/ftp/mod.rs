//! The FTPS client: knows FTP and TLS, nothing of FUSE.

pub mod activity;
pub mod control;
pub mod error;
pub mod features;
pub mod identity;
pub mod listing;
pub mod options;
pub mod passive;
pub mod pipelining;
pub mod pool;
pub mod proxy;
pub mod reply;
pub mod tls;
pub mod transport;

pub use activity::ConnectionReport;
pub use control::{
    verb, ControlConnection, DataConnection, Retry, Standing, StoredVersion, TlsSummary,
    UploadCheck, UploadConnection, Verb,
};
pub use error::FtpError;
pub use options::{ConnectOptions, DataMode, Secret, Security, Timeouts};
pub use pipelining::{Pipelining, PipeliningMode};
pub use pool::{Pool, PoolOptions, PooledConnection};
pub use proxy::Proxy;
pub use reply::Reply;
pub use tls::{TlsOptions, TlsStatsSnapshot, TlsVersions};
