//! The filesystem logic: inodes, metadata cache, block cache and read-ahead.
//!
//! Knows nothing of fuser: every operation takes plain numbers and bytes and returns a
//! `Result` with [`FsError`], which the FUSE adapter turns into a reply.

pub mod blockcache;
pub mod dircache;
pub mod error;
pub mod failure;
pub mod inode;
pub mod reader;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ftp::listing::{Entry, EntryKind};
use crate::ftp::Pool;

use blockcache::{BlockCache, FileVersion};
use dircache::DirCache;
pub use error::FsError;
use inode::{InodeTable, Node, ROOT_INODE};
pub use reader::ReadData;
use reader::{OpenFile, ReadConfig, Reader};

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

/// What kind of node an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File type.
    pub kind: NodeKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size (the block size).
    pub blksize: u32,
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

/// An FTPS server seen as a read-only tree.
pub struct FtpFs {
    pool: Pool,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    dirs: Arc<DirCache>,
    cache: Arc<BlockCache>,
    reader: Reader,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dir_handles: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    /// The version each inode had when it was last opened, for FOPEN_KEEP_CACHE.
    opened_versions: Mutex<HashMap<u64, Arc<FileVersion>>>,
    next_handle: AtomicU64,
    mounted_at: SystemTime,
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
            files: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            opened_versions: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
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

    fn attr(&self, ino: u64, entry: Option<&Entry>) -> Attr {
        let Some(entry) = entry else {
            return Attr {
                ino,
                kind: NodeKind::Dir,
                size: 0,
                mtime: self.mounted_at,
                perm: (0o755 & !self.config.umask) as u16,
                nlink: 2,
                uid: self.config.uid,
                gid: self.config.gid,
                blksize: self.config.block_size as u32,
            };
        };
        let (kind, default_mode, nlink) = match entry.kind {
            EntryKind::Dir => (NodeKind::Dir, 0o755, 2),
            EntryKind::Symlink => (NodeKind::Symlink, 0o777, 1),
            EntryKind::File | EntryKind::Other => (NodeKind::File, 0o644, 1),
        };
        let mode = entry.mode.unwrap_or(default_mode);
        let mtime = entry.modified.map_or(self.mounted_at, |t| {
            if t.unix_seconds >= 0 {
                UNIX_EPOCH + Duration::new(t.unix_seconds as u64, t.nanos)
            } else {
                UNIX_EPOCH - Duration::from_secs(t.unix_seconds.unsigned_abs())
            }
        });
        let size = match (kind, entry.size, &entry.link_target) {
            (NodeKind::Symlink, _, Some(target)) => target.len() as u64,
            (_, Some(size), _) => size,
            (_, None, _) => 0,
        };
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm: (mode & 0o7777 & !self.config.umask) as u16,
            nlink,
            uid: self.config.uid,
            gid: self.config.gid,
            blksize: self.config.block_size as u32,
        }
    }

    /// Lists the root directory: proves the server, login and path work before mounting.
    pub async fn probe(&self) -> Result<(), FsError> {
        let root = self.node(ROOT_INODE)?;
        self.within(self.dirs.get(&self.pool, &root.path))
            .await
            .map(|_| ())
    }

    /// Looks `name` up in the directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(FsError::NotFound);
        }
        self.within(async {
            let (parent_node, parent_entry) = self.entry(parent).await?;
            if parent_entry.is_some_and(|e| e.kind != EntryKind::Dir) {
                return Err(FsError::NotADirectory);
            }
            let listing = self.dirs.get(&self.pool, &parent_node.path).await?;
            let entry = listing.get(name).ok_or(FsError::NotFound)?;
            let ino = self.child_inode(parent, name)?;
            Ok(self.attr(ino, Some(entry)))
        })
        .await
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.within(async {
            let (_, entry) = self.entry(ino).await?;
            Ok(self.attr(ino, entry.as_ref()))
        })
        .await
    }

    /// Where the symlink `ino` points.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.within(async {
            let (node, entry) = self.entry(ino).await?;
            if entry.as_ref().map(|e| e.kind) != Some(EntryKind::Symlink) {
                return Err(FsError::NotFound);
            }
            let parent = self.node(node.parent)?;
            let listing = self.dirs.get(&self.pool, &parent.path).await?;
            self.dirs
                .link_target(&self.pool, &listing, &parent.path, &node.name)
                .await
        })
        .await
    }

    /// Opens a file for reading; writing is refused (read-only mount).
    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        self.within(async {
            let (node, entry) = self.entry(ino).await?;
            let entry = entry.ok_or(FsError::IsADirectory)?;
            match entry.kind {
                EntryKind::Dir => return Err(FsError::IsADirectory),
                EntryKind::File | EntryKind::Other | EntryKind::Symlink => {}
            }
            let version = Arc::new(FileVersion {
                path: node.path.clone().into(),
                size: entry.size.unwrap_or(0),
                mtime: entry.modified.map_or((0, 0), |t| (t.unix_seconds, t.nanos)),
            });
            let keep_cache = {
                let mut versions = self
                    .opened_versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let unchanged = versions.get(&ino).is_some_and(|v| **v == *version);
                versions.insert(ino, version.clone());
                unchanged
            };
            let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
            self.files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(handle, Arc::new(OpenFile::new(ino, version)));
            Ok(Opened { handle, keep_cache })
        })
        .await
    }

    /// Reads up to `size` bytes at `offset` from an open file.
    pub async fn read(&self, handle: u64, offset: u64, size: u32) -> Result<ReadData, FsError> {
        let file = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let result = self.within(self.reader.read(&file, offset, size)).await;
        if matches!(result, Err(FsError::Changed)) {
            // The listing is out of date: the next open must see the new size and mtime.
            if let Ok(node) = self.node(file.ino) {
                if let Ok(parent) = self.node(node.parent) {
                    self.dirs.invalidate(&parent.path);
                }
            }
        }
        result
    }

    /// Closes an open file, stopping its read-ahead.
    pub async fn release(&self, handle: u64) {
        let file = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&handle);
        if let Some(file) = file {
            self.reader.release(&file).await;
        }
    }

    /// Opens a directory: takes a snapshot of its entries for the readdir calls.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        self.within(async {
            let (node, entry) = self.entry(ino).await?;
            if entry.as_ref().is_some_and(|e| e.kind != EntryKind::Dir) {
                return Err(FsError::NotADirectory);
            }
            let listing = self.dirs.get(&self.pool, &node.path).await?;
            self.dirs
                .prefetch_children(&self.pool, &node.path, &listing);
            let self_attr = self.attr(ino, entry.as_ref());
            let parent_attr = Attr {
                ino: node.parent,
                ..self_attr
            };
            let mut entries = vec![
                DirEntry {
                    ino,
                    offset: 1,
                    name: b".".to_vec(),
                    attr: self_attr,
                },
                DirEntry {
                    ino: node.parent,
                    offset: 2,
                    name: b"..".to_vec(),
                    attr: parent_attr,
                },
            ];
            for entry in &listing.entries {
                let child = self.child_inode(ino, &entry.name)?;
                entries.push(DirEntry {
                    ino: child,
                    offset: entries.len() as u64 + 1,
                    name: entry.name.clone(),
                    attr: self.attr(child, Some(entry)),
                });
            }
            let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
            self.dir_handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(handle, Arc::new(entries));
            Ok(handle)
        })
        .await
    }

    /// The entries of an open directory after position `offset`.
    pub fn readdir(&self, handle: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let entries = self
            .dir_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        Ok(entries.iter().skip(offset as usize).cloned().collect())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, handle: u64) {
        self.dir_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&handle);
    }
}
