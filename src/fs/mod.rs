//! The filesystem logic: names, metadata, cached data, reading and writing files.
//!
//! Knows nothing of fuser: every operation takes plain numbers and bytes and returns a
//! `Result` with [`FsError`], which the FUSE adapter turns into a reply.
//!
//! [`FtpFs`] is defined here, with the [`handles`] of open files and directories, its
//! [`error`]s, the memory of recent [`failure`]s and the [`report`] of `ftpsfs stats`.
//! The rest lives in wings:
//! - [`ops`]: its operations, one file per concern: names and attributes
//!   ([`ops::namespace`]), directories (`ops::dirs`), opening and reading files
//!   (`ops::files`), writing them ([`ops::writes`]);
//! - [`meta`]: inode numbers, attributes, the cache of listings, names;
//! - [`cache`]: file data in memory over a disk cache;
//! - [`read`]: the reader, its read-ahead streams and parallel ranges;
//! - [`write`]: uploads, staging files, and the cleaning up after failed uploads.

pub mod cache;
pub mod error;
pub mod failure;
pub mod handles;
pub mod meta;
pub mod ops;
pub mod read;
pub mod write;

pub use read::transfer::ParallelReads;
pub mod report;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::ftp::listing::{Entry, Timestamp};
use crate::ftp::Pool;

use cache::memory::BlockCache;
use cache::version::FileVersion;
pub use error::FsError;
use handles::HandleTable;
use meta::attr::AttrPolicy;
pub use meta::attr::{Attr, NodeKind};
use meta::dircache::DirCache;
use meta::inode::{InodeTable, Node, ROOT_INODE};
pub use read::reader::ReadData;
use read::reader::Reader;
use read::transfer::ReadConfig;

/// Settings of the filesystem logic.
#[derive(Debug, Clone)]
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
    /// When a sequential reader's file is split into parallel ranges.
    pub parallel_reads: ParallelReads,
    /// Refuse every change (EROFS).
    pub read_only: bool,
    /// Where staging files go (see `staging.rs`).
    pub staging_dir: PathBuf,
    /// The persistent block cache: its directory (for all servers) and size; 0 is off.
    pub disk_cache_dir: PathBuf,
    /// Bytes the persistent block cache may hold; 0 turns it off.
    pub disk_cache_size: u64,
    /// Upload to a temporary name and rename it onto the final one when complete
    /// (otherwise: straight onto the final name, for servers that cannot rename).
    pub atomic_uploads: bool,
    /// Show absolute symlink targets inside the mount as relative ones.
    pub transform_symlinks: bool,
    /// Write-back (`-o writeback`): closes return once the content is durable locally.
    pub writeback: Option<write::queue::WritebackConfig>,
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

/// What an inode was opened as last time: for FOPEN_KEEP_CACHE, and to tell whether a
/// coarse listing time must be checked before cached data is reused (see `files.rs`).
#[derive(Debug, Clone)]
struct OpenedVersion {
    version: Arc<FileVersion>,
    /// The listing entry's time, as listed.
    listed: Option<Timestamp>,
    /// When the listing it came from was fetched.
    listing_fetched: std::time::Instant,
    /// The server's exact time under which the disk cache's blocks were found valid.
    disk_time: Option<cache::version::Mtime>,
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
    /// Small files downloaded whole ahead of their reader.
    pub files_read_ahead: u64,
    /// Ranges of large files fetched in parallel ahead of a sequential reader.
    pub parallel_ranges: u64,
    /// Blocks served from the disk cache.
    pub disk_hits: u64,
    /// Blocks written to the disk cache.
    pub disk_blocks_written: u64,
    /// Bytes held in the block cache.
    pub cached_bytes: u64,
    /// Temporary files of failed uploads not deleted yet (the server was unreachable).
    pub temporaries_waiting: u64,
}

/// An FTPS server seen as a tree of files.
pub struct FtpFs {
    pool: Pool,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    dirs: Arc<DirCache>,
    cache: Arc<BlockCache>,
    reader: Arc<Reader>,
    /// Reads ahead the small files of directories read file after file.
    siblings: read::readahead::SiblingReadAhead,
    handles: HandleTable,
    attrs: AttrPolicy,
    /// The login directory (PWD), once asked (see `namespace.rs`).
    login_dir: Mutex<Option<Vec<u8>>>,
    /// What each inode was opened as last time (see [`OpenedVersion`]).
    opened_versions: Mutex<HashMap<u64, OpenedVersion>>,
    /// Files open for writing or with changes not yet uploaded, and what the server
    /// refuses.
    writer: write::writer::Writer,
    /// Deletes the temporary files of uploads that did not land.
    janitor: Arc<write::janitor::Janitor>,
    /// When the filesystem was made, for the uptime in [`FtpFs::report`].
    started: std::time::Instant,
    /// The write-back queue, with `-o writeback`.
    queue: Option<Arc<write::queue::Queue>>,
    /// Why the write-back journal cannot be used: the mount refuses to start.
    queue_error: Option<String>,
    /// Items for the background uploaders (see `ops/writeback.rs`).
    upload_requests: tokio::sync::mpsc::UnboundedSender<u64>,
    upload_receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
}

impl FtpFs {
    /// A filesystem showing `root_path` on the server behind `pool`.
    pub fn new(pool: Pool, root_path: Vec<u8>, config: FsConfig) -> Self {
        let cache = Arc::new(BlockCache::new(config.cache_size));
        let disk = open_disk_cache(&pool, &config);
        if let Some(disk) = &disk {
            cache.persist_to(disk.clone(), config.block_size);
        }
        let max_window_blocks = (config.max_readahead / config.block_size).max(1);
        let reader = Reader::new(
            pool.clone(),
            cache.clone(),
            disk.clone(),
            ReadConfig {
                block_size: config.block_size,
                max_window_blocks,
                data_timeout: config.data_timeout,
                // Long enough for a reader that pauses between files (tar, rsync).
                stream_idle: Duration::from_secs(5),
                parallel: config.parallel_reads,
            },
        );
        let attrs = AttrPolicy {
            uid: config.uid,
            gid: config.gid,
            umask: config.umask,
            blksize: config.block_size as u32,
            unknown_time: SystemTime::now(),
        };
        let reader = Arc::new(reader);
        // Two connections stay free: one for the foreground reader, one for listings.
        let siblings =
            read::readahead::SiblingReadAhead::new(reader.clone(), pool.limit().saturating_sub(2));
        let server = pool.connect_options();
        let record = (!config.staging_dir.as_os_str().is_empty()).then(|| {
            write::janitor::Record::new(
                &config.staging_dir,
                &server.host,
                server.port,
                &server.user,
            )
        });
        let janitor = write::janitor::Janitor::new(pool.clone(), record);
        let (queue, queue_error) = match &config.writeback {
            None => (None, None),
            Some(writeback) => {
                // One journal per server and user, as the disk cache.
                let server_id = cache::disk::fnv(&[
                    server.host.as_bytes(),
                    &server.port.to_le_bytes(),
                    server.user.as_bytes(),
                ]);
                let dir = writeback.dir.join(format!("{server_id:016x}"));
                match write::journal::Journal::open(dir.clone()) {
                    Ok(journal) => (
                        Some(Arc::new(write::queue::Queue::new(
                            journal,
                            writeback.clone(),
                        ))),
                        None,
                    ),
                    Err(e) => (
                        None,
                        Some(format!(
                            "cannot use the write-back journal {}: {e}",
                            dir.display()
                        )),
                    ),
                }
            }
        };
        let (upload_requests, upload_receiver) = tokio::sync::mpsc::unbounded_channel();
        Self {
            pool,
            inodes: Mutex::new(InodeTable::new(root_path)),
            dirs: Arc::new(DirCache::new(
                config.dir_ttl,
                config.dir_prefetch,
                config.op_timeout,
                !config.read_only,
            )),
            cache,
            reader,
            siblings,
            handles: HandleTable::default(),
            attrs,
            opened_versions: Mutex::new(HashMap::new()),
            login_dir: Mutex::new(None),
            writer: write::writer::Writer::new(),
            janitor,
            config,
            started: std::time::Instant::now(),
            queue,
            queue_error,
            upload_requests,
            upload_receiver: Mutex::new(Some(upload_receiver)),
        }
    }

    /// The path of `ino`, or of `name` in it, as logs show it (a forgotten inode as
    /// `?ino`).
    pub fn shown_path(&self, ino: u64, name: Option<&[u8]>) -> String {
        let inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = inodes.get(ino) else {
            return format!("?ino{ino}");
        };
        match name {
            Some(name) => meta::inode::join_path(&node.path, name)
                .escape_ascii()
                .to_string(),
            None => node.path.escape_ascii().to_string(),
        }
    }

    /// What the mount is doing now, for `ftpsfs stats` (errors by errno are the
    /// adapter's to add: it is where they are returned).
    pub fn report(&self) -> report::Report {
        let read = self.reader.stats();
        let (hits, misses) = self.cache.hit_counts();
        report::Report {
            uptime: self.started.elapsed(),
            connection_limit: self.pool.limit(),
            commands: self.pool.connect_options().pipelining.describe(),
            connections: self.pool.connections(),
            unreachable: self.pool.unreachable(),
            tls: self.pool.stats(),
            cache: report::CacheReport {
                hits,
                misses,
                bytes_held: self.cache.bytes(),
                capacity: self.config.cache_size,
                bytes_fetched: read.bytes_fetched.load(Ordering::Relaxed),
                streams: read.streams.load(Ordering::Relaxed),
                range_fetches: read.range_fetches.load(Ordering::Relaxed),
                files_read_ahead: read.files_read_ahead.load(Ordering::Relaxed),
                parallel_ranges: read.parallel_ranges.load(Ordering::Relaxed),
                disk: self.reader.disk_stats().map(|disk| report::DiskReport {
                    hits: disk.hits.load(Ordering::Relaxed),
                    written: disk.written.load(Ordering::Relaxed),
                    corrupt: disk.corrupt.load(Ordering::Relaxed),
                }),
            },
            listings: self.dirs.listings_fetched(),
            inodes: self.inodes.lock().unwrap_or_else(|e| e.into_inner()).len(),
            open_handles: self.handles.len(),
            temporaries_waiting: self.janitor.waiting() as u64,
            writeback: self.queue.as_ref().map(|queue| queue.report()),
            errors: Default::default(),
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
            files_read_ahead: read.files_read_ahead.load(Ordering::Relaxed),
            parallel_ranges: read.parallel_ranges.load(Ordering::Relaxed),
            disk_hits: disk_counter(self.reader.disk_stats(), |d| &d.hits),
            disk_blocks_written: disk_counter(self.reader.disk_stats(), |d| &d.written),
            cached_bytes: self.cache.bytes(),
            temporaries_waiting: self.janitor.waiting() as u64,
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

    /// The kernel took a reference to `ino`: an entry reply (lookup, create, mkdir) or a
    /// `readdirplus` entry handed it over.
    pub fn remember(&self, ino: u64) {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(ino);
    }

    /// The kernel dropped `count` references to `ino` (FUSE forget): once none is left and
    /// nothing here needs it, a sweep takes its number and what was kept for it.
    pub fn forget(&self, ino: u64, count: u64) {
        let due = {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            inodes.forget(ino, count);
            inodes.sweep_due()
        };
        if due {
            self.sweep_inodes();
        }
    }

    /// Sweeps inode numbers nothing holds any more (see [`InodeTable::sweep_if_due`]).
    fn sweep_inodes(&self) {
        if !self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweep_due()
        {
            return;
        }
        // Files with an upload under way keep their numbers (the lock order is writes,
        // then inodes, never both at once).
        let busy = self.writer.inodes();
        let gone = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweep_if_due(|ino| busy.contains(&ino));
        if !gone.is_empty() {
            tracing::debug!(
                dropped = gone.len(),
                "inode numbers nothing holds any more swept"
            );
        }
        self.forget_versions(&gone);
    }

    fn forget_versions(&self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        let mut versions = self
            .opened_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for ino in gone {
            versions.remove(ino);
        }
    }

    /// Inode numbers held now, the root included.
    pub fn inodes_held(&self) -> usize {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Directories tracked by the listing cache, and names held in its listings.
    pub fn listings_held(&self) -> (usize, usize) {
        self.dirs.footprint()
    }

    fn child_inode(&self, parent: u64, name: &[u8]) -> Result<u64, FsError> {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .child(parent, name)
            .ok_or(FsError::BadHandle)
    }

    /// The attributes of `ino` with listing entry `entry` (None: the root), as changed by
    /// writes not yet uploaded.
    fn attr_of(&self, ino: u64, entry: Option<&Entry>) -> Attr {
        match self.writer.file(ino) {
            Some(file) if entry.is_some() => self.written_attr(ino, file.shown()),
            _ => self.attrs.attr(ino, entry),
        }
    }

    /// Files created in the directory `dir` that are not on the server yet: (inode, name).
    fn local_only_children(&self, dir: u64) -> Vec<(u64, Vec<u8>)> {
        let files: Vec<u64> = self
            .writer
            .files_where(|file| file.shown().local_only)
            .iter()
            .map(|file| file.ino)
            .collect();
        let inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        files
            .into_iter()
            .filter_map(|ino| {
                let node = inodes.get(ino)?;
                let current = inodes.existing_child(dir, node.name()) == Some(ino);
                (node.parent == dir && current).then(|| (ino, node.name().to_vec()))
            })
            .collect()
    }

    /// Whether the directory `dir` holds files created here and not uploaded yet.
    fn has_local_only_children(&self, dir: u64) -> bool {
        !self.local_only_children(dir).is_empty()
    }

    /// The listing entry behind `ino` (None for the root).
    async fn entry(&self, ino: u64) -> Result<(Node, Option<Entry>), FsError> {
        let node = self.node(ino)?;
        if ino == ROOT_INODE {
            return Ok((node, None));
        }
        let parent = self.node(node.parent)?;
        let listing = self.dirs.get(&self.pool, &parent.path).await?;
        let entry = listing.get(node.name()).cloned().ok_or(FsError::NotFound)?;
        Ok((node, Some(entry)))
    }

    /// At unmount: one more try, within `limit`, at deleting the temporary files of
    /// failed uploads; what is left is recorded for the next mount of this server.
    /// Returns how many are left.
    pub async fn finish(&self, limit: Duration) -> usize {
        self.janitor.finish(limit).await
    }

    /// Checks that the server can be reached and the mounted path listed (see below),
    /// and takes over the temporary files earlier mounts of this server recorded as
    /// left, to delete them.
    pub async fn start(&self) -> Result<(), FsError> {
        if let Some(why) = &self.queue_error {
            return Err(FsError::Staging(Arc::new(std::io::Error::other(
                why.clone(),
            ))));
        }
        self.probe().await?;
        self.janitor.take_over_recorded();
        self.recover_queue()?;
        Ok(())
    }

    /// Lists the root directory: proves the server, login and path work before mounting.
    pub async fn probe(&self) -> Result<(), FsError> {
        let root = self.node(ROOT_INODE)?;
        // vsftpd lists a missing directory as empty: the path itself is asked first.
        let path = root.path.to_vec();
        let pool = &self.pool;
        self.within(async {
            crate::with_connection!(pool, |conn| conn.check_directory(&path).await).await?;
            Ok(())
        })
        .await?;
        self.within(self.dirs.get(&self.pool, &root.path))
            .await
            .map(|_| ())
    }
}

/// The persistent block cache for this server, if `disk_cache=` asks for one. A cache
/// that cannot be opened is only a slower mount: the mount goes on without it.
fn open_disk_cache(pool: &Pool, config: &FsConfig) -> Option<Arc<cache::disk::DiskCache>> {
    if config.disk_cache_size == 0 {
        return None;
    }
    let server = pool.connect_options();
    let dir = cache::disk::server_dir(
        &config.disk_cache_dir,
        &server.host,
        server.port,
        &server.user,
    );
    match cache::disk::DiskCache::open(dir.clone(), config.disk_cache_size, config.block_size) {
        Ok(disk) => Some(Arc::new(disk)),
        Err(e) => {
            tracing::warn!("disk cache off: cannot use {}: {e}", dir.display());
            None
        }
    }
}

/// A disk cache counter, 0 with the disk cache off.
fn disk_counter(
    stats: Option<&cache::disk::DiskStats>,
    counter: impl Fn(&cache::disk::DiskStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    stats.map_or(0, |stats| counter(stats).load(Ordering::Relaxed))
}
