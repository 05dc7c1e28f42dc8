//! Reading file data: block cache first, then one streaming RETR per sequential reader,
//! or a small ranged fetch for random and first reads.
//!
//! A sequential reader gets a stream (`REST` to its block, then `RETR`) that runs ahead of
//! it by a window of blocks. The window starts at one block and doubles each time the
//! reader has to wait for the stream, up to a cap. A read outside the window drops the
//! stream (ABOR) and the next sequential read starts another. A first read at offset 0
//! (file browsers, thumbnailers, `file`) or a random read fetches only a small range.
//!
//! Every download asks the server for the file's exact time (MDTM) in the same round
//! trip. An open file whose downloads disagree, or whose download disagrees with the
//! time its cached blocks were downloaded at, has changed on the server without its
//! size or listed time showing it: the read gives ESTALE rather than mixing the two.

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::ftp::pool::worth_retrying;
use crate::ftp::{ControlConnection, DataConnection, FtpError, Pool, PooledConnection};

use crate::fs::cache::disk::{DiskCache, DiskStats};
use crate::fs::cache::memory::{BlockCache, Segment};
use crate::fs::cache::version::{BlockKey, FileVersion, Mtime};
use crate::fs::error::FsError;
use crate::fs::failure::{Attempt, RecentFailure, RemembersFailure};
use crate::fs::read::parallel::{
    Measured, ParallelRanges, PartsGone, PartsJob, Plan, MIN_RANGE_BYTES,
};
use crate::fs::read::transfer::{
    expect_end, give_up_download, receive_block, Destination, ReadConfig, ReadStats, Received,
    StreamSlot,
};

/// Alignment and minimum size of a ranged (non-streaming) fetch.
///
/// Small, because every ranged fetch opens a new data connection whose TCP congestion
/// window starts at about 14 KiB: at 20 ms RTT a 128 KiB fetch costs three more round
/// trips than a 16 KiB one. Larger kernel reads still fetch what they ask for.
const RANGE_ALIGN: u64 = 16 * 1024;
const MIN_RANGE_FETCH: u64 = 16 * 1024;

/// Blocks read ahead from the disk cache past the one a reader asked for.
const DISK_AHEAD_BLOCKS: u64 = 4;

/// Connections a stream must leave free, so listings and small reads never starve.
const CONNECTIONS_RESERVED_FOR_OTHERS: usize = 1;

/// A reader that still waits for its stream once the stream may run this many blocks
/// ahead is faster than the stream: the connection holds it back. Reached within about a
/// second of streaming at 150 ms; a reader slower than its stream (a player) never waits
/// that far ahead.
const SPLIT_AFTER_WAITS_AT_WINDOW: u64 = 8;

/// One open file: its version at open time and its reader state.
pub struct OpenFile {
    /// Inode of the file.
    pub ino: u64,
    /// Path, size and mtime when opened.
    pub version: Arc<FileVersion>,
    /// The server's exact time for the file at open, when the disk cache holds blocks
    /// stored under that time: those blocks are this version.
    disk_time: Option<Mtime>,
    state: tokio::sync::Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    /// Where the previous read ended: a read starting here is sequential.
    last_end: Option<u64>,
    stream: Option<Stream>,
    /// Ranges fetched in parallel past the stream, once the stream proved too slow.
    parallel: Option<ParallelRanges>,
    /// Whether splitting the file into parallel ranges was considered (once per open).
    split_considered: bool,
    /// The last read of this open file that timed out; see
    /// [`FAILURE_MEMORY`](crate::fs::failure::FAILURE_MEMORY).
    failure: RecentFailure,
    /// The server's exact time for the data this open file has read: from its first
    /// download, or from the cached blocks it was first served.
    seen_time: Option<Mtime>,
    /// Whether the cache was asked for its time yet (once per open file).
    asked_cache_time: bool,
}

impl RemembersFailure for ReadState {
    fn recent_failure(&mut self) -> &mut RecentFailure {
        &mut self.failure
    }
}

impl OpenFile {
    /// A freshly opened file.
    pub fn new(ino: u64, version: Arc<FileVersion>) -> Self {
        Self::with_disk_time(ino, version, None)
    }

    /// A freshly opened file whose blocks the disk cache holds under the server's exact
    /// time `disk_time`, checked at open.
    pub fn with_disk_time(ino: u64, version: Arc<FileVersion>, disk_time: Option<Mtime>) -> Self {
        Self {
            ino,
            version,
            disk_time,
            state: tokio::sync::Mutex::new(ReadState::default()),
        }
    }
}

/// Serves reads for every open file.
pub struct Reader {
    pool: Pool,
    cache: Arc<BlockCache>,
    /// The persistent block cache, if on.
    disk: Option<Arc<DiskCache>>,
    /// Blocks being read ahead from the disk cache.
    disk_loading: Arc<Mutex<std::collections::HashSet<BlockKey>>>,
    /// A block read ahead from the disk cache arrived (or failed to).
    disk_loaded: Arc<Notify>,
    config: ReadConfig,
    stats: Arc<ReadStats>,
    /// One lock per block being fetched by a ranged fetch, so concurrent readers of a
    /// block share one fetch.
    fetching: Mutex<HashMap<BlockKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Streams running now.
    streams_running: Arc<AtomicUsize>,
}

impl Reader {
    /// A reader fetching through `pool` into `cache`.
    pub fn new(
        pool: Pool,
        cache: Arc<BlockCache>,
        disk: Option<Arc<DiskCache>>,
        config: ReadConfig,
    ) -> Self {
        Self {
            pool,
            cache,
            disk,
            disk_loading: Arc::default(),
            disk_loaded: Arc::default(),
            config,
            stats: Arc::new(ReadStats::default()),
            fetching: Mutex::new(HashMap::new()),
            streams_running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether the last bytes of `version` are cached: it was read to its end (or read
    /// ahead whole).
    pub fn holds_end_of(&self, version: &Arc<FileVersion>) -> bool {
        if version.size == 0 {
            return true;
        }
        let block_size = self.config.block_size;
        let last = (version.size - 1) / block_size;
        let len = version.size - last * block_size;
        self.cache
            .contains(&Self::key(version, last), len.saturating_sub(1), len)
    }

    /// Prepares for reading `version`: when the server is distant and the file large
    /// enough to be split into parallel ranges, the connections a stream and its ranges
    /// would use log in now, in the background. A login costs seven round trips (1.7 s
    /// at 150 ms); the first read and the stream's start then hide most of it.
    pub fn prepare(&self, version: &FileVersion) {
        let Some(min_round_trip) = self.config.parallel.min_round_trip() else {
            return;
        };
        if version.size < 2 * MIN_RANGE_BYTES {
            return;
        }
        if self
            .pool
            .round_trip()
            .is_some_and(|rtt| rtt >= min_round_trip)
        {
            let max_streams = self
                .pool
                .limit()
                .saturating_sub(CONNECTIONS_RESERVED_FOR_OTHERS);
            self.pool
                .warm_up(max_streams, CONNECTIONS_RESERVED_FOR_OTHERS);
        }
    }

    /// The cache block size: the largest file read ahead whole.
    pub fn block_size(&self) -> u64 {
        self.config.block_size
    }

    /// The read counters.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    fn key(version: &Arc<FileVersion>, index: u64) -> BlockKey {
        BlockKey {
            version: version.clone(),
            index,
        }
    }

    /// Reads up to `size` bytes at `offset` (fewer only at the end of the file).
    pub async fn read(&self, file: &OpenFile, offset: u64, size: u32) -> Result<ReadData, FsError> {
        let file_size = file.version.size;
        if offset >= file_size || size == 0 {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let end = file_size.min(offset + u64::from(size));
        let state = file.state.lock().await;
        // The kernel queues read-ahead requests behind this lock and retries a failed
        // page synchronously: after a failure, they all get the same answer at once.
        if let Some(error) = state.failure.replay("read") {
            return Err(error);
        }
        let mut attempt = Attempt::new(state);
        let result = self
            .read_locked(file, &mut attempt.state, offset, end)
            .await;
        attempt.finish(&result);
        result
    }

    /// [`Self::read`] of `offset..end` (within the file), with the file's state locked.
    async fn read_locked(
        &self,
        file: &OpenFile,
        state: &mut ReadState,
        offset: u64,
        end: u64,
    ) -> Result<ReadData, FsError> {
        let file_size = file.version.size;
        let block_size = self.config.block_size;
        let sequential = offset > 0 && state.last_end == Some(offset);
        // A read that skips more than a block past the previous one means the kernel
        // served the gap from its page cache (a warm re-read with a few pages reclaimed):
        // what the stream reads ahead there is wasted, so it starts again from a small
        // window. A smaller skip is the kernel's own read-ahead arriving out of order.
        let skipped_ahead = state
            .last_end
            .is_some_and(|last| offset > last + block_size);
        if skipped_ahead {
            if let Some(stream) = &state.stream {
                stream.shrink_window();
            }
        }
        // A stream that ended during this read is not replaced within it: the rest is
        // fetched by range, which retries on a fresh connection.
        let mut stream_ended = false;
        let mut out = ReadParts::default();
        let mut pos = offset;
        while pos < end {
            let index = pos / block_size;
            let block_start = index * block_size;
            let block_len = block_size.min(file_size - block_start);
            let from = pos - block_start;
            let to = (end - block_start).min(block_len);
            let key = Self::key(&file.version, index);
            if let Some(stream) = &state.stream {
                stream.note_reader_at(index);
            }
            if let Some(parallel) = &state.parallel {
                parallel.note_reader_at(index);
            }
            if let Some(segment) = self.cache.get(&key, from, to) {
                if !state.asked_cache_time {
                    state.asked_cache_time = true;
                    state.seen_time = state
                        .seen_time
                        .or_else(|| self.cache.server_time(&file.version));
                }
                out.push(&segment, from, to);
                pos = block_start + to;
                continue;
            }
            // The disk's blocks are of the time checked at open: never after this open file
            // has read another content.
            let disk_agrees = state.seen_time.is_none() || state.seen_time == file.disk_time;
            let from_disk = match disk_agrees {
                true => self.load_from_disk(file, &key, block_len).await,
                false => None,
            };
            if let Some(segment) = from_disk {
                if state.seen_time.is_none() {
                    state.seen_time = file.disk_time;
                }
                out.push(&segment, from, to);
                pos = block_start + to;
                continue;
            }
            // Past the stream's end, the parallel ranges have the block, or nobody does.
            let mut parts_own_block = false;
            if let Some(parallel) = &state.parallel {
                if index >= parallel.start_block() {
                    parts_own_block = true;
                    if parallel.can_serve(index) {
                        match parallel.wait_for(index, self.config.data_timeout).await {
                            Ok(()) => {
                                if let Some(segment) = self.cache.get(&key, from, to) {
                                    out.push(&segment, from, to);
                                    pos = block_start + to;
                                    continue;
                                }
                            }
                            Err(PartsGone::Failed(e)) => {
                                state.parallel = None;
                                return Err(e);
                            }
                            Err(PartsGone::Ended) => state.parallel = None,
                        }
                    } else {
                        tracing::debug!(
                            ino = file.ino,
                            block = index,
                            "read outside the parallel ranges; stopping them"
                        );
                        state.parallel = None;
                    }
                }
            }
            if let (Some(stream), false) = (&state.stream, parts_own_block) {
                if stream.can_serve(index) {
                    match stream.wait_for(index, self.config).await {
                        Ok(()) => {
                            if let Some(segment) = self.cache.get(&key, from, to) {
                                self.consider_split(file, state, index);
                                out.push(&segment, from, to);
                                pos = block_start + to;
                                continue;
                            }
                        }
                        Err(StreamGone::Failed(e)) => {
                            state.stream = None;
                            return Err(e);
                        }
                        Err(StreamGone::Ended) => {
                            state.stream = None;
                            stream_ended = true;
                        }
                    }
                } else {
                    tracing::debug!(
                        ino = file.ino,
                        block = index,
                        "read outside the stream's window; dropping the stream"
                    );
                    state.stream = None;
                }
            }
            if state.stream.is_none()
                && !stream_ended
                && !parts_own_block
                && (sequential || pos > offset)
            {
                if let Some(stream) = self.start_stream(file, state, index).await? {
                    state.stream = Some(stream);
                    continue;
                }
            }
            // Random, first, or no spare connection for a stream: fetch only a range.
            let (fetch_from, fetch_to) = if sequential || pos > offset {
                (0, block_len)
            } else {
                let aligned_from = from - from % RANGE_ALIGN;
                let aligned_to = to.div_ceil(RANGE_ALIGN) * RANGE_ALIGN;
                (
                    aligned_from,
                    block_len.min(aligned_to.max(aligned_from + MIN_RANGE_FETCH)),
                )
            };
            let segment = self
                .fetch_range(
                    &key,
                    &mut state.seen_time,
                    block_start,
                    fetch_from,
                    fetch_to,
                )
                .await?;
            out.push(&segment, from, to);
            pos = block_start + to;
        }
        state.last_end = Some(end);
        Ok(out.into_data())
    }

    /// Block `key` (`len` bytes) from the disk cache into the memory cache, when the disk
    /// holds it for this open file's version.
    async fn load_from_disk(&self, file: &OpenFile, key: &BlockKey, len: u64) -> Option<Segment> {
        let (disk, time) = (self.disk.clone()?, file.disk_time?);
        // Being read ahead already: wait for that rather than read it twice.
        loop {
            let mut loaded = pin!(self.disk_loaded.notified());
            loaded.as_mut().enable();
            if !self.lock_disk_loading().contains(key) {
                break;
            }
            if tokio::time::timeout(self.config.data_timeout, loaded)
                .await
                .is_err()
            {
                break;
            }
        }
        if let Some(segment) = self.cache.get(key, 0, len) {
            self.load_ahead_from_disk(key, time);
            return Some(segment);
        }
        let version = key.version.clone();
        let index = key.index;
        let data = tokio::task::spawn_blocking(move || {
            disk.load(&version.path, version.size, time, index, len as usize)
        })
        .await
        .ok()??;
        let segment = Segment {
            start: 0,
            data: Arc::new(data),
        };
        self.cache
            .insert_from_disk(key.clone(), segment.clone(), time)
            .ok()?;
        self.load_ahead_from_disk(key, time);
        Some(segment)
    }

    /// Reads the blocks after `key` from the disk cache into memory in the background, so
    /// that a sequential reader finds them there: the disk and the reader's copies then
    /// overlap instead of taking turns.
    fn load_ahead_from_disk(&self, key: &BlockKey, time: Mtime) {
        let Some(disk) = &self.disk else {
            return;
        };
        let version = &key.version;
        let block_size = self.config.block_size;
        let blocks = version.size.div_ceil(block_size);
        for index in key.index + 1..blocks.min(key.index + 1 + DISK_AHEAD_BLOCKS) {
            let next = Self::key(version, index);
            let len = block_size.min(version.size - index * block_size);
            if self.cache.contains(&next, 0, len) {
                continue;
            }
            if !self.lock_disk_loading().insert(next.clone()) {
                continue;
            }
            let (disk, cache, loading, loaded) = (
                disk.clone(),
                self.cache.clone(),
                self.disk_loading.clone(),
                self.disk_loaded.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let version = &next.version;
                if let Some(data) =
                    disk.load(&version.path, version.size, time, next.index, len as usize)
                {
                    let segment = Segment {
                        start: 0,
                        data: Arc::new(data),
                    };
                    let _ = cache.insert_from_disk(next.clone(), segment, time);
                }
                loading
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&next);
                loaded.notify_waiters();
            });
        }
    }

    fn lock_disk_loading(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<BlockKey>> {
        self.disk_loading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server's exact time for `version` if the disk cache holds blocks of it under
    /// that time, asked of the server (MDTM, one round trip) only when the disk holds
    /// blocks of this path and size at all. Blocks under any other time are deleted.
    pub async fn disk_time(&self, version: &FileVersion) -> Option<Mtime> {
        let disk = self.disk.as_ref()?;
        if !disk.holds(&version.path, version.size) {
            return None;
        }
        let pool = &self.pool;
        let path = &version.path;
        match crate::with_connection!(pool, |conn| conn.modified(path).await).await {
            Ok(exact) => {
                let exact = (exact.unix_seconds, exact.nanos);
                let kept = disk.keep_only(path, version.size, Some(exact));
                tracing::debug!(path = %path.escape_ascii(), ?exact, kept, "disk cache checked against the server's time");
                kept.then_some(exact)
            }
            Err(e) => {
                // Unchecked blocks are not used, but kept: the next open may check them.
                tracing::debug!(path = %path.escape_ascii(), "cannot check the disk cache's blocks ({e})");
                None
            }
        }
    }

    /// Deletes the disk cache's blocks of `path`: this mount changed the file.
    pub fn forget_on_disk(&self, path: &[u8]) {
        if let Some(disk) = &self.disk {
            disk.forget_path(path);
        }
    }

    /// What the disk cache did, if it is on.
    pub fn disk_stats(&self) -> Option<&DiskStats> {
        self.disk.as_deref().map(DiskCache::stats)
    }

    /// Stops the file's stream and parallel ranges, if any (the file was closed).
    pub async fn release(&self, file: &OpenFile) {
        let mut state = file.state.lock().await;
        state.stream = None;
        state.parallel = None;
    }

    /// Splits the rest of the file into ranges fetched in parallel, once its stream has
    /// shown it is slower than its reader because of its connection (the reader kept
    /// waiting at the largest window), if the measurements say it would pay.
    fn consider_split(&self, file: &OpenFile, state: &mut ReadState, reader_block: u64) {
        let Some(min_round_trip) = self.config.parallel.min_round_trip() else {
            return;
        };
        if state.split_considered || state.parallel.is_some() {
            return;
        }
        let Some(stream) = &state.stream else {
            return;
        };
        let Some(measured) = stream.measured_if_connection_limited(self.config.block_size) else {
            return;
        };
        state.split_considered = true;
        let max_streams = self
            .pool
            .limit()
            .saturating_sub(CONNECTIONS_RESERVED_FOR_OTHERS);
        // The stream's own slot counts: it ends where the ranges begin.
        let spare = max_streams.saturating_sub(self.streams_running.load(Ordering::Acquire)) + 1;
        let block_size = self.config.block_size;
        let budget = self.config.max_window_blocks * block_size;
        let stream_at = stream.next_block();
        let remaining = file.version.size.saturating_sub(stream_at * block_size);
        let Some(plan) = Plan::for_stream(
            measured,
            min_round_trip,
            spare,
            budget,
            remaining,
            block_size,
        ) else {
            tracing::debug!(
                ino = file.ino,
                ?measured,
                spare,
                "not splitting: it would not pay"
            );
            return;
        };
        // The stream goes on as the first range; the parts take the ranges after it.
        let split_at = stream.stop_at(stream_at + plan.range_blocks);
        tracing::debug!(
            ino = file.ino,
            ?measured,
            parts = plan.parts,
            split_at,
            "stream limited by its connection; splitting the rest of the file"
        );
        state.parallel = Some(ParallelRanges::start(
            PartsJob {
                pool: self.pool.clone(),
                cache: self.cache.clone(),
                stats: self.stats.clone(),
                version: file.version.clone(),
                server_time: state.seen_time,
                config: self.config,
                budget_blocks: self.config.max_window_blocks,
                reserve: CONNECTIONS_RESERVED_FOR_OTHERS,
                streams_running: self.streams_running.clone(),
            },
            plan,
            split_at,
            reader_block,
        ));
    }

    /// Starts a stream at block `index`, unless as many streams run as the pool can give
    /// while keeping a connection for others.
    ///
    /// Below that limit the stream waits for a connection rather than falling back to
    /// block-by-block fetches: several readers starting at once keep every connection
    /// busy with those fetches, and a stream that only takes a connection nobody uses
    /// would never start.
    async fn start_stream(
        &self,
        file: &OpenFile,
        state: &mut ReadState,
        index: u64,
    ) -> Result<Option<Stream>, FsError> {
        let max_streams = self
            .pool
            .limit()
            .saturating_sub(CONNECTIONS_RESERVED_FOR_OTHERS);
        let slot = StreamSlot::take(&self.streams_running, max_streams);
        let Some(slot) = slot else {
            tracing::debug!(
                ino = file.ino,
                max_streams,
                "as many streams as connections allow; fetching block by block"
            );
            return Ok(None);
        };
        let mut conn = self.pool.get().await?;
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            ino = file.ino,
            block = index,
            "starting a read-ahead stream"
        );
        let offset = index * self.config.block_size;
        let requested = Instant::now();
        let (data, time) = match conn.retrieve_with_time(&file.version.path, offset).await {
            Ok((data, time)) => (data, time.map(|t| (t.unix_seconds, t.nanos))),
            Err(e) if worth_retrying(&e) => {
                // The connection broke (a stale idle connection, a server restart): the
                // reader fetches by range instead, which retries once on a fresh
                // connection. A dead server still fails there, within the operation's
                // timeout.
                tracing::debug!(ino = file.ino, "stream could not start: {e}");
                if e.connection_lost() {
                    self.pool.discard_idle();
                }
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(changed) = self.check_time(&file.version, state.seen_time, time) {
            let _ = conn.abort_data(data).await;
            return Err(changed);
        }
        state.seen_time = time.or(state.seen_time);
        let stream = Stream::start(
            conn,
            data,
            StreamJob {
                pool: self.pool.clone(),
                cache: self.cache.clone(),
                stats: self.stats.clone(),
                version: file.version.clone(),
                server_time: time,
                requested,
                config: self.config,
                _slot: slot,
            },
            index,
        );
        // A stream started again before the parallel ranges stops where they begin.
        if let Some(parallel) = &state.parallel {
            stream.stop_at(parallel.start_block());
        }
        Ok(Some(stream))
    }

    /// Whether a download the server gave `time` for may join what the open file has
    /// read (`seen`) and what the cache holds of `version`. When not, the cached blocks
    /// go too: they are of the other content.
    fn check_time(
        &self,
        version: &FileVersion,
        seen: Option<Mtime>,
        time: Option<Mtime>,
    ) -> Result<(), FsError> {
        let Some(time) = time else {
            return Ok(());
        };
        let cached = self.cache.server_time(version);
        if seen.is_none_or(|seen| seen == time) && cached.is_none_or(|cached| cached == time) {
            return Ok(());
        }
        tracing::debug!(
            path = %version.path.escape_ascii(),
            ?seen,
            ?cached,
            now = ?time,
            "file changed on the server with the same size and listed time"
        );
        self.cache.forget_version(version);
        Err(FsError::Changed)
    }

    /// Fetches the block-relative range `from..to` of a block with its own RETR.
    ///
    /// `seen` is the server's time for what the open file read before, and becomes this
    /// download's.
    async fn fetch_range(
        &self,
        key: &BlockKey,
        seen: &mut Option<Mtime>,
        block_start: u64,
        from: u64,
        to: u64,
    ) -> Result<Segment, FsError> {
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        // Whatever happens below, the lock entry goes (even on an error or a timeout
        // that drops this future), so failed fetches leave nothing behind.
        let _forget = ForgetFetch {
            fetching: &self.fetching,
            key,
            lock: &lock,
        };
        // Another reader may have fetched it while we waited.
        if let Some(segment) = self.cache.get(key, from, to) {
            return Ok(segment);
        }
        let version = &key.version;
        let offset = block_start + from;
        let len = (to - from) as usize;
        let reaches_end = block_start + to == version.size;
        self.stats.range_fetches.fetch_add(1, Ordering::Relaxed);
        let pool = &self.pool;
        let seen_before = *seen;
        let requested = Instant::now();
        let fetched = crate::with_connection!(pool, |conn| {
            let (mut data, time) = conn.retrieve_with_time(&version.path, offset).await?;
            let time = time.map(|t| (t.unix_seconds, t.nanos));
            if let Err(changed) = self.check_time(version, seen_before, time) {
                conn.abort_data(data).await?;
                return Ok(Err(changed));
            }
            let mut buf = self.cache.buffer(len);
            let n = data.read_full(&mut buf).await?;
            let complete = n == len && (!reaches_end || expect_end(&mut data).await?);
            end_download(conn, data, complete).await?;
            Ok::<_, FtpError>(Ok((buf, complete, time)))
        })
        .await?;
        let (data, complete, time) = fetched?;
        if !complete {
            return Err(FsError::Changed);
        }
        self.stats
            .bytes_fetched
            .fetch_add(len as u64, Ordering::Relaxed);
        let segment = Segment {
            start: from,
            data: Arc::new(data),
        };
        if self
            .cache
            .insert_downloaded(key.clone(), segment.clone(), time, Some(requested))
            .is_err()
        {
            // Another download of this version, meanwhile, was of other content.
            return Err(FsError::Changed);
        }
        *seen = time.or(*seen);
        // Only now may the readers waiting for this block look at the cache.
        drop(guard);
        Ok(segment)
    }
}

impl Reader {
    /// Downloads all of a small file (one block at most) into the cache ahead of its
    /// reader, unless it is cached or being fetched already. A reader that asks for it
    /// meanwhile waits for this download instead of starting its own. Returns whether it
    /// downloaded anything.
    pub async fn read_ahead_whole(&self, version: Arc<FileVersion>) -> Result<bool, FsError> {
        let len = version.size;
        if len == 0 || len > self.config.block_size {
            return Ok(false);
        }
        if self
            .disk
            .as_ref()
            .is_some_and(|disk| disk.holds(&version.path, version.size))
        {
            // Its open checks the disk's copy (one round trip, no download).
            return Ok(false);
        }
        let key = Self::key(&version, 0);
        if self.cache.contains(&key, 0, len) {
            return Ok(false);
        }
        // Locked before it is in the map, so a reader finding it there always waits.
        let lock: Arc<tokio::sync::Mutex<()>> = Arc::default();
        let _guard = lock.clone().try_lock_owned().expect("a new lock is free");
        {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            if fetching.contains_key(&key) {
                return Ok(false);
            }
            fetching.insert(key.clone(), lock.clone());
        }
        let _forget = ForgetFetch {
            fetching: &self.fetching,
            key: &key,
            lock: &lock,
        };
        // A reader's fetch may have ended between the first look and the map.
        if self.cache.contains(&key, 0, len) {
            return Ok(false);
        }
        let pool = &self.pool;
        let requested = Instant::now();
        let fetched = crate::with_connection!(pool, |conn| {
            let (mut data, time) = conn.retrieve_with_time(&version.path, 0).await?;
            let time = time.map(|t| (t.unix_seconds, t.nanos));
            if self.check_time(&version, None, time).is_err() {
                conn.abort_data(data).await?;
                return Ok(None);
            }
            let mut buf = self.cache.buffer(len as usize);
            let n = data.read_full(&mut buf).await?;
            let complete = n as u64 == len && expect_end(&mut data).await?;
            end_download(conn, data, complete).await?;
            Ok::<_, FtpError>(complete.then_some((buf, time)))
        })
        .await?;
        // Changed since the listing: its reader finds out for itself.
        let Some((buf, time)) = fetched else {
            return Ok(false);
        };
        self.stats.bytes_fetched.fetch_add(len, Ordering::Relaxed);
        self.stats.files_read_ahead.fetch_add(1, Ordering::Relaxed);
        let segment = Segment {
            start: 0,
            data: Arc::new(buf),
        };
        Ok(self
            .cache
            .insert_downloaded(key.clone(), segment, time, Some(requested))
            .is_ok())
    }
}

/// Removes a block's fetch lock from the map when the fetch ends, however it ends, unless
/// a later fetch of the block has put its own there meanwhile.
struct ForgetFetch<'a> {
    fetching: &'a Mutex<HashMap<BlockKey, Arc<tokio::sync::Mutex<()>>>>,
    key: &'a BlockKey,
    lock: &'a Arc<tokio::sync::Mutex<()>>,
}

impl Drop for ForgetFetch<'_> {
    fn drop(&mut self) {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if fetching
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.lock))
        {
            fetching.remove(self.key);
        }
    }
}

/// Ends a ranged download: a transfer read to its end is finished (without waiting for
/// the 226 when it was `complete` and closed cleanly), one stopped short is aborted.
async fn end_download(
    conn: &mut ControlConnection,
    data: DataConnection,
    complete: bool,
) -> Result<(), FtpError> {
    if complete && data.at_end() {
        conn.finish_complete_data(data).await
    } else if data.at_end() {
        conn.finish_data(data).await
    } else {
        conn.abort_data(data).await
    }
}

/// The bytes answering one read.
///
/// A read within one block (almost all of them) is a view of the cached block, not a
/// copy: a fresh buffer per read costs page faults and a copy of every byte.
pub enum ReadData {
    /// Part of one cached segment.
    Shared(Arc<Vec<u8>>, Range<usize>),
    /// Bytes gathered from several blocks.
    Owned(Vec<u8>),
}

impl Deref for ReadData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Shared(data, range) => &data[range.clone()],
            ReadData::Owned(data) => data,
        }
    }
}

/// The pieces of cached segments that make up one read, in order.
#[derive(Default)]
struct ReadParts(Vec<(Arc<Vec<u8>>, Range<usize>)>);

impl ReadParts {
    /// Adds the block-relative range `from..to` of `segment`.
    fn push(&mut self, segment: &Segment, from: u64, to: u64) {
        let start = (from - segment.start) as usize;
        let end = (to - segment.start) as usize;
        self.0.push((segment.data.clone(), start..end));
    }

    fn into_data(mut self) -> ReadData {
        if self.0.len() == 1 {
            let (data, range) = self.0.pop().expect("one part");
            return ReadData::Shared(data, range);
        }
        let len = self.0.iter().map(|(_, range)| range.len()).sum();
        let mut out = Vec::with_capacity(len);
        for (data, range) in &self.0 {
            out.extend_from_slice(&data[range.clone()]);
        }
        ReadData::Owned(out)
    }
}

/// Why a stream cannot deliver a block.
enum StreamGone {
    /// It failed; the reader gets this error.
    Failed(FsError),
    /// It stopped (idle, cancelled or finished) before this block; fetch another way.
    Ended,
}

struct StreamJob {
    /// Held until the stream's task ends.
    _slot: StreamSlot,
    pool: Pool,
    cache: Arc<BlockCache>,
    stats: Arc<ReadStats>,
    version: Arc<FileVersion>,
    /// The server's time for the file when the stream's RETR was sent.
    server_time: Option<Mtime>,
    /// When that RETR was sent.
    requested: Instant,
    config: ReadConfig,
}

/// A streaming RETR running ahead of a reader, filling the block cache.
struct Stream {
    start_block: u64,
    shared: Arc<StreamShared>,
}

struct StreamShared {
    state: Mutex<StreamState>,
    /// Stream → readers: a block arrived or the stream ended.
    progress: Notify,
    /// Reader → stream: the reader moved on, or the stream should stop.
    demand: Notify,
}

struct StreamState {
    /// The next block the stream will deliver.
    next_block: u64,
    /// The furthest block a reader has asked for.
    wanted: u64,
    /// How many blocks past `wanted` the stream may run ahead.
    window: u64,
    /// The first block the stream must not fetch: parallel ranges have it.
    limit: u64,
    cancelled: bool,
    outcome: Option<Result<(), FsError>>,
    /// When the first block arrived, and when the latest did: the stream's speed.
    first_block_at: Option<Instant>,
    latest_block_at: Option<Instant>,
    blocks_after_first: u64,
    /// The data connection's TCP round trip, as the kernel measured it.
    round_trip: Option<Duration>,
    /// How often the reader had to wait with the window already wide (see
    /// [`SPLIT_AFTER_WAITS_AT_WINDOW`]).
    waits_at_full_window: u32,
}

impl Stream {
    fn start(
        conn: PooledConnection,
        data: DataConnection,
        job: StreamJob,
        start_block: u64,
    ) -> Self {
        let shared = Arc::new(StreamShared {
            state: Mutex::new(StreamState {
                next_block: start_block,
                wanted: start_block,
                window: 1,
                limit: u64::MAX,
                cancelled: false,
                outcome: None,
                first_block_at: None,
                latest_block_at: None,
                blocks_after_first: 0,
                round_trip: None,
                waits_at_full_window: 0,
            }),
            progress: Notify::new(),
            demand: Notify::new(),
        });
        let task_shared = shared.clone();
        tokio::spawn(async move {
            let mut outcome = run_stream(conn, data, &job, &task_shared, start_block).await;
            if let Err(e) = &outcome {
                tracing::debug!(path = %String::from_utf8_lossy(&job.version.path), "stream ended: {e}");
                if matches!(e, FsError::Remote(e) if worth_retrying(e)) {
                    // The connection broke (a stale idle connection, a server restart, a
                    // stream cut off): the reader fetches the block by range instead,
                    // which retries once on a fresh connection. A dead server still
                    // fails there, within the operation's timeout.
                    if matches!(e, FsError::Remote(e) if e.connection_lost()) {
                        job.pool.discard_idle();
                    }
                    outcome = Ok(());
                }
            }
            task_shared.lock().outcome = Some(outcome);
            task_shared.progress.notify_waiters();
        });
        Self {
            start_block,
            shared,
        }
    }

    /// Whether `block` is within reach: delivered recently or inside the window ahead.
    fn can_serve(&self, block: u64) -> bool {
        let state = self.shared.lock();
        !state.cancelled
            && state.outcome.is_none()
            && block < state.limit
            && block >= self.start_block
            && block >= state.next_block
            && block <= state.next_block + state.window
    }

    /// Lets the stream run up to `window` blocks past `block`, if it can reach `block`.
    /// A block beyond reach moves nothing: the reader drops the stream or was served by
    /// the cache, and either way the blocks in between are not wanted.
    fn note_reader_at(&self, block: u64) {
        let mut state = self.shared.lock();
        if block > state.wanted && block <= state.next_block + state.window {
            state.wanted = block;
            drop(state);
            self.shared.demand.notify_one();
        }
    }

    /// Back to the smallest read-ahead window: the reader stopped needing every block.
    fn shrink_window(&self) {
        self.shared.lock().window = 1;
    }

    /// The next block the stream will deliver.
    fn next_block(&self) -> u64 {
        self.shared.lock().next_block
    }

    /// Stops the stream before block `limit` (or before the block it is fetching, if
    /// that is further); returns where it stops.
    fn stop_at(&self, limit: u64) -> u64 {
        let mut state = self.shared.lock();
        state.limit = limit.max(state.next_block);
        let limit = state.limit;
        drop(state);
        self.shared.demand.notify_one();
        limit
    }

    /// What the stream measured, once its reader has waited for it with a wide window:
    /// the stream is then slower than its reader, held back by its connection.
    fn measured_if_connection_limited(&self, block_size: u64) -> Option<Measured> {
        let state = self.shared.lock();
        if state.waits_at_full_window < 1 || state.blocks_after_first < 4 {
            return None;
        }
        let elapsed = state.latest_block_at?.duration_since(state.first_block_at?);
        Some(Measured {
            bytes_per_second: (state.blocks_after_first * block_size) as f64
                / elapsed.as_secs_f64().max(1e-6),
            round_trip: state.round_trip?,
        })
    }

    async fn wait_for(&self, block: u64, config: ReadConfig) -> Result<(), StreamGone> {
        let mut grew = false;
        loop {
            let mut notified = pin!(self.shared.progress.notified());
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if block < state.next_block {
                    return Ok(());
                }
                match &state.outcome {
                    Some(Err(e)) => return Err(StreamGone::Failed(e.clone())),
                    Some(Ok(())) => return Err(StreamGone::Ended),
                    None => {}
                }
                state.wanted = state.wanted.max(block);
                if !grew
                    && state.window >= SPLIT_AFTER_WAITS_AT_WINDOW.min(config.max_window_blocks)
                {
                    state.waits_at_full_window += 1;
                }
                if !grew {
                    // The reader caught up with the stream: let it run further ahead.
                    state.window = (state.window * 2).min(config.max_window_blocks.max(1));
                    grew = true;
                }
            }
            self.shared.demand.notify_one();
            if tokio::time::timeout(config.data_timeout, notified)
                .await
                .is_err()
            {
                return Err(StreamGone::Failed(FsError::TimedOut(config.data_timeout)));
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.lock().cancelled = true;
        self.shared.demand.notify_one();
    }
}

impl StreamShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn run_stream(
    mut conn: PooledConnection,
    mut data: DataConnection,
    job: &StreamJob,
    shared: &StreamShared,
    start_block: u64,
) -> Result<(), FsError> {
    let block_size = job.config.block_size;
    let size = job.version.size;
    let last_block = (size - 1) / block_size;
    let mut block = start_block;
    loop {
        // Wait until the reader is close enough, or give up when it is gone.
        loop {
            let demand = shared.demand.notified();
            let (cancelled, wanted_soon) = {
                let state = shared.lock();
                (
                    state.cancelled || block >= state.limit,
                    block <= state.wanted + state.window,
                )
            };
            if cancelled {
                conn.abort_data(data).await?;
                return Ok(());
            }
            if wanted_soon {
                break;
            }
            if tokio::time::timeout(job.config.stream_idle, demand)
                .await
                .is_err()
            {
                tracing::debug!("stream idle; giving its connection back");
                conn.abort_data(data).await?;
                return Ok(());
            }
        }
        let into = Destination {
            cache: &job.cache,
            stats: &job.stats,
            version: &job.version,
            server_time: job.server_time,
            requested: job.requested,
        };
        match receive_block(&mut data, &into, block, block_size).await? {
            Received::Stored => {}
            failed => return Err(give_up_download(&mut conn, data, failed).await),
        }
        {
            let mut state = shared.lock();
            state.next_block = block + 1;
            let now = Instant::now();
            match state.first_block_at {
                None => {
                    state.first_block_at = Some(now);
                    state.round_trip = data.round_trip();
                }
                Some(_) => state.blocks_after_first += 1,
            }
            state.latest_block_at = Some(now);
        }
        shared.progress.notify_waiters();
        if block == last_block {
            if !expect_end(&mut data).await? {
                return Err(FsError::Changed);
            }
            conn.finish_complete_data(data).await?;
            return Ok(());
        }
        block += 1;
    }
}
