//! The filesystem logic: inodes, metadata cache, block cache and read-ahead.
//!
//! Knows nothing of fuser: every operation takes plain numbers and bytes and returns a
//! `Result` with [`FsError`], which the FUSE adapter turns into a reply.
//!
//! [`FtpFs`] is defined here; its operations are spread by concern:
//! - [`namespace`]: lookup, attributes and symlinks;
//! - [`dirs`]: open directories and readdir;
//! - [`files`]: opening, reading and closing files;
//! - [`handles`]: the table of open handles.
//!
//! Beneath them: [`inode`] numbers, the [`dircache`] of listings, the [`blockcache`] of
//! file data, the [`reader`] with its read-ahead, and [`attr`], what `stat` shows.

pub mod attr;
pub mod blockcache;
pub mod dircache;
mod dirs;
pub mod error;
pub mod failure;
mod files;
pub mod handles;
pub mod inode;
mod namespace;
pub mod reader;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::ftp::listing::Entry;
use crate::ftp::Pool;

use attr::AttrPolicy;
pub use attr::{Attr, NodeKind};
use blockcache::{BlockCache, FileVersion};
use dircache::DirCache;
pub use error::FsError;
use handles::HandleTable;
use inode::{InodeTable, Node, ROOT_INODE};
pub use reader::ReadData;
use reader::{ReadConfig, Reader};

/// Longest name a listing entry may have and still be shown (Linux NAME_MAX).
const NAME_MAX: usize = 255;

/// Settings of the filesystem logic.
#[derive(Debug, Clone, Copy)]
pub struct FsConfig {
    /// How long a directory listing (and the kernel's attributes) are trusted.
    pub dir_ttl: Duration,
    /// Block cache block size in bytes.
    pub block_size: u64,
    /// Block cache capacity in bytes.
    pub cache_size: u64,
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// Permission bits cleared from every mode.
    pub umask: u32,
    /// Longest a single filesystem operation may take before it fails with EIO.
    pub op_timeout: Duration,
    /// Longest wait for data from a running transfer.
    pub data_timeout: Duration,
    /// Largest read-ahead window in bytes.
    pub max_readahead: u64,
    /// Subdirectories listed ahead when a directory is opened (0: none).
    pub dir_prefetch: usize,
}

/// One entry of a directory handle.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Position cookie for the next readdir.
    pub offset: u64,
    /// Name in the directory.
    pub name: Vec<u8>,
    /// Attributes (for readdirplus).
    pub attr: Attr,
}

/// Result of opening a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Handle for later reads.
    pub handle: u64,
    /// The file is unchanged since it was last opened: the kernel may keep its page cache.
    pub keep_cache: bool,
}

/// Operation counters, for diagnostics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Listing commands sent (MLSD / LIST).
    pub listings: u64,
    /// Streaming RETRs started for sequential reads.
    pub streams: u64,
    /// Ranged RETRs (head, random, fallback blocks).
    pub range_fetches: u64,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
    /// Bytes held in the block cache.
    pub cached_bytes: u64,
}

/// An FTPS server seen as a tree of files.
pub struct FtpFs {
    pool: Pool,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    dirs: Arc<DirCache>,
    cache: Arc<BlockCache>,
    reader: Reader,
    handles: HandleTable,
    attrs: AttrPolicy,
    /// The version each inode had when it was last opened, for FOPEN_KEEP_CACHE.
    opened_versions: Mutex<HashMap<u64, Arc<FileVersion>>>,
}

impl FtpFs {
    /// A filesystem showing `root_path` on the server behind `pool`.
    pub fn new(pool: Pool, root_path: Vec<u8>, config: FsConfig) -> Self {
        let cache = Arc::new(BlockCache::new(config.cache_size));
        let max_window_blocks = (config.max_readahead / config.block_size).max(1);
        let reader = Reader::new(
            pool.clone(),
            cache.clone(),
            ReadConfig {
                block_size: config.block_size,
                max_window_blocks,
                data_timeout: config.data_timeout,
                // Long enough for a reader that pauses between files (tar, rsync).
                stream_idle: Duration::from_secs(5),
            },
        );
        Self {
            pool,
            config,
            inodes: Mutex::new(InodeTable::new(root_path)),
            dirs: Arc::new(DirCache::new(config.dir_ttl, config.dir_prefetch)),
            cache,
            reader,
            handles: HandleTable::default(),
            attrs: AttrPolicy {
                uid: config.uid,
                gid: config.gid,
                umask: config.umask,
                blksize: config.block_size as u32,
                unknown_time: SystemTime::now(),
            },
            opened_versions: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Counters so far.
    pub fn stats(&self) -> FsStats {
        let read = self.reader.stats();
        FsStats {
            listings: self.dirs.listings_fetched(),
            streams: read.streams.load(Ordering::Relaxed),
            range_fetches: read.range_fetches.load(Ordering::Relaxed),
            bytes_fetched: read.bytes_fetched.load(Ordering::Relaxed),
            cached_bytes: self.cache.bytes(),
        }
    }

    async fn within<T>(
        &self,
        operation: impl Future<Output = Result<T, FsError>>,
    ) -> Result<T, FsError> {
        match tokio::time::timeout(self.config.op_timeout, operation).await {
            Ok(result) => result,
            Err(_) => Err(FsError::TimedOut(self.config.op_timeout)),
        }
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ino)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn child_inode(&self, parent: u64, name: &[u8]) -> Result<u64, FsError> {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .child(parent, name)
            .ok_or(FsError::BadHandle)
    }

    /// The listing entry behind `ino` (None for the root).
    async fn entry(&self, ino: u64) -> Result<(Node, Option<Entry>), FsError> {
        let node = self.node(ino)?;
        if ino == ROOT_INODE {
            return Ok((node, None));
        }
        let parent = self.node(node.parent)?;
        let listing = self.dirs.get(&self.pool, &parent.path).await?;
        let entry = listing.get(&node.name).cloned().ok_or(FsError::NotFound)?;
        Ok((node, Some(entry)))
    }

    /// Lists the root directory: proves the server, login and path work before mounting.
    pub async fn probe(&self) -> Result<(), FsError> {
        let root = self.node(ROOT_INODE)?;
        self.within(self.dirs.get(&self.pool, &root.path))
            .await
            .map(|_| ())
    }
}
