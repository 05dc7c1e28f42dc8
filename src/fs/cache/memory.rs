//! The block cache: file data in fixed-size blocks, LRU, bounded by bytes.
//!
//! Blocks are keyed by path *and version* (size + modification time), so a file that
//! changed on the server is never served from the old file's blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;

use crate::fs::cache::disk::DiskCache;
use crate::fs::cache::version::{in_background, BlockKey, FileVersion, Mtime};

/// Cached bytes of a block: all of it, or a part starting at `start` (a small head or
/// random read does not fetch the whole block).
#[derive(Debug, Clone)]
pub struct Segment {
    /// Offset of `data` within the block.
    pub start: u64,
    /// The bytes.
    pub data: Arc<Vec<u8>>,
}

impl Segment {
    /// True when the segment holds the block-relative range `from..to`.
    pub fn covers(&self, from: u64, to: u64) -> bool {
        from >= self.start && to <= self.end()
    }

    /// The block-relative offset just past the segment.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// One segment holding both, when they overlap or touch; None when a gap lies between.
    fn joined(&self, other: &Segment) -> Option<Segment> {
        if other.start > self.end() || self.start > other.end() {
            return None;
        }
        let start = self.start.min(other.start);
        let mut data = vec![0; (self.end().max(other.end()) - start) as usize];
        // The newer bytes win where the two overlap.
        for segment in [self, other] {
            let at = (segment.start - start) as usize;
            data[at..at + segment.data.len()].copy_from_slice(&segment.data);
        }
        Some(Segment {
            start,
            data: Arc::new(data),
        })
    }
}

/// Evicted buffers kept for reuse, at most.
const SPARE_BUFFERS: usize = 4;

/// Buffers smaller than this are not worth keeping: the allocator serves them from its
/// heap without new pages.
const MIN_REUSED_BUFFER: usize = 256 * 1024;

/// A byte-bounded LRU of blocks.
pub struct BlockCache {
    capacity: u64,
    /// Where whole downloaded blocks are also written, with their block size.
    disk: std::sync::OnceLock<(Arc<DiskCache>, u64)>,
    inner: Mutex<Inner>,
    /// Buffers of evicted blocks. A fresh block-sized buffer is a new mapping whose every
    /// page faults and is zeroed by the kernel on first write: a quarter of the CPU time
    /// of a sequential read went there before buffers were reused.
    spare: Mutex<Vec<Vec<u8>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner {
    lru: LruCache<BlockKey, Segment>,
    bytes: u64,
    /// Blocks held per path, so that an open can ask whether a file has cached data
    /// without scanning the cache.
    blocks_by_path: HashMap<Arc<[u8]>, usize>,
    /// Per version with blocks held: how many, and what the server's exact time was
    /// when they were downloaded.
    versions: HashMap<Arc<FileVersion>, VersionBlocks>,
}

/// What the cache knows of one version's blocks.
#[derive(Default)]
struct VersionBlocks {
    blocks: usize,
    /// The server's modification time (MDTM) when the blocks were downloaded, if it
    /// said. A listing's time can be too coarse to tell two contents apart; this is not.
    server_time: Option<Mtime>,
    /// When the earliest download of these blocks was asked for (its RETR sent).
    requested: Option<Instant>,
    /// Some block was downloaded within a second of the server's time for the file: a
    /// rewrite with the same size later in that second would have the same time, and
    /// could not be told from it (git's "racily clean" entries). See [`is_racy`].
    racy: bool,
}

/// Whether data read at `read_at` (the RETR's wall-clock time) of a file whose server
/// time is `server_time` is racy: the file's time is not older than the read by the
/// time's granularity (a second for MDTM and MLSD), so a same-size rewrite after the
/// read could carry the very same time. A server clock ahead of ours makes more reads
/// racy (they are fetched once more); one behind by more than a second hides races.
pub fn is_racy(server_time: Mtime, read_at: std::time::SystemTime) -> bool {
    let read_secs = read_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    server_time.0 + 1 > read_secs
}

impl Inner {
    fn count_added(&mut self, key: &BlockKey) {
        *self
            .blocks_by_path
            .entry(key.version.path.clone())
            .or_default() += 1;
        self.versions.entry(key.version.clone()).or_default().blocks += 1;
    }

    fn count_removed(&mut self, key: &BlockKey) {
        if let Some(count) = self.blocks_by_path.get_mut(&key.version.path) {
            *count -= 1;
            if *count == 0 {
                self.blocks_by_path.remove(&key.version.path);
            }
        }
        if let Some(version) = self.versions.get_mut(&key.version) {
            version.blocks -= 1;
            if version.blocks == 0 {
                self.versions.remove(&key.version);
            }
        }
    }

    /// Takes out every block that `keep` refuses; returns them for recycling.
    fn remove_where(&mut self, keep: impl Fn(&BlockKey) -> bool) -> Vec<Segment> {
        let keys: Vec<BlockKey> = self
            .lru
            .iter()
            .filter(|(key, _)| !keep(key))
            .map(|(key, _)| key.clone())
            .collect();
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(old) = self.lru.pop(&key) {
                self.count_removed(&key);
                self.bytes -= old.data.len() as u64;
                removed.push(old);
            }
        }
        removed
    }
}

/// The server's time for a download differs from the one its cached blocks were
/// downloaded at: the file changed without its listing showing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentChanged;

impl BlockCache {
    /// A cache holding at most `capacity` bytes of data.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            disk: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                blocks_by_path: HashMap::new(),
                versions: HashMap::new(),
            }),
            spare: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached bytes for the block-relative range `from..to`, if held.
    pub fn get(&self, key: &BlockKey, from: u64, to: u64) -> Option<Segment> {
        let mut inner = self.lock();
        match inner.lru.get(key) {
            Some(segment) if segment.covers(from, to) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(segment.clone())
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// True when the whole range is cached (without counting a hit or miss).
    pub fn contains(&self, key: &BlockKey, from: u64, to: u64) -> bool {
        self.lock()
            .lru
            .peek(key)
            .is_some_and(|s| s.covers(from, to))
    }

    /// A buffer of `len` bytes to fetch a block into: an evicted block's when one is
    /// spare. Its contents are whatever it held before.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        if len >= MIN_REUSED_BUFFER {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = spare
                .iter()
                .position(|b| b.capacity() >= len && b.capacity() <= 2 * len)
            {
                let mut buffer = spare.swap_remove(i);
                drop(spare);
                // Old bytes are initialized; only a longer length needs filling.
                buffer.resize(len, 0);
                return buffer;
            }
        }
        vec![0; len]
    }

    /// Keeps an evicted segment's buffer for [`Self::buffer`] if nobody else holds it.
    fn recycle(&self, evicted: Segment) {
        let Ok(buffer) = Arc::try_unwrap(evicted.data) else {
            return;
        };
        if buffer.capacity() < MIN_REUSED_BUFFER {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    }

    /// Stores a segment, keeping whichever of old and new holds more, then evicts to fit.
    pub fn insert(&self, key: BlockKey, segment: Segment) {
        // No server time, so no mismatch is possible.
        let _ = self.insert_downloaded(key, segment, None, None);
    }

    /// Writes whole blocks downloaded with the server's exact time to `disk` too, from now
    /// on; blocks are `block_size` bytes.
    pub fn persist_to(&self, disk: Arc<DiskCache>, block_size: u64) {
        let _ = self.disk.set((disk, block_size));
    }

    /// Stores a block read back from the disk cache, downloaded when the server's exact
    /// time was `server_time`.
    pub fn insert_from_disk(
        &self,
        key: BlockKey,
        segment: Segment,
        server_time: Mtime,
    ) -> Result<(), ContentChanged> {
        self.insert_inner(key, segment, Some(server_time), None, false)
    }

    /// [`Self::insert`] of a segment downloaded by a RETR sent at `requested`, when the
    /// server gave `server_time` for the file. When blocks of the same version were
    /// downloaded at another time, the file changed with its size and listed time
    /// unchanged: they are all dropped, the segment is not stored, and the caller must not
    /// mix the two.
    pub fn insert_downloaded(
        &self,
        key: BlockKey,
        segment: Segment,
        server_time: Option<Mtime>,
        requested: Option<Instant>,
    ) -> Result<(), ContentChanged> {
        let persist_key = key.clone();
        let racy = match (server_time, requested) {
            (Some(time), Some(requested)) => {
                let sent = std::time::SystemTime::now()
                    .checked_sub(requested.elapsed())
                    .unwrap_or(std::time::UNIX_EPOCH);
                is_racy(time, sent)
            }
            _ => false,
        };
        let outcome = self.insert_inner(key, segment, server_time, requested, racy);
        // A racy block never goes to disk: a later mount would trust it.
        if let (Ok(()), Some(time), Some((disk, block_size)), false) =
            (&outcome, server_time, self.disk.get(), racy)
        {
            // The block as now held: a range joined to earlier ones may have made it whole.
            let version = &persist_key.version;
            let block_len =
                (*block_size).min(version.size.saturating_sub(persist_key.index * block_size));
            let whole = self
                .lock()
                .lru
                .peek(&persist_key)
                .filter(|held| held.start == 0 && held.data.len() as u64 == block_len)
                .map(|held| held.data.clone());
            if let Some(data) = whole {
                let disk = disk.clone();
                let write = move || {
                    let version = &persist_key.version;
                    disk.store(&version.path, version.size, time, persist_key.index, &data);
                };
                in_background(write);
            }
        }
        outcome
    }

    fn insert_inner(
        &self,
        key: BlockKey,
        mut segment: Segment,
        server_time: Option<Mtime>,
        requested: Option<Instant>,
        racy: bool,
    ) -> Result<(), ContentChanged> {
        let mut evicted = Vec::new();
        let outcome = 'insert: {
            let mut inner = self.lock();
            if let Some(time) = server_time {
                let known = inner.versions.get(&key.version).and_then(|v| v.server_time);
                if known.is_some_and(|known| known != time) {
                    evicted = inner.remove_where(|k| k.version != key.version);
                    break 'insert Err(ContentChanged);
                }
            }
            // A block holds one segment: the new range is joined to the cached one when
            // they meet, so random reads within a block build it up instead of pushing
            // each other out; a range already held changes nothing.
            if let Some(old) = inner.lru.peek(&key) {
                if old.covers(segment.start, segment.end()) {
                    break 'insert Ok(());
                }
                if let Some(joined) = old.joined(&segment) {
                    segment = joined;
                }
            }
            let size = segment.data.len() as u64;
            if size > self.capacity {
                break 'insert Ok(());
            }
            match inner.lru.put(key.clone(), segment) {
                Some(old) => {
                    inner.bytes -= old.data.len() as u64;
                    evicted.push(old);
                }
                None => inner.count_added(&key),
            }
            if let (Some(time), Some(version)) = (server_time, inner.versions.get_mut(&key.version))
            {
                version.server_time = Some(time);
                version.racy |= racy;
                version.requested = match (version.requested, requested) {
                    (Some(old), Some(new)) => Some(old.min(new)),
                    (old, new) => old.or(new),
                };
            }
            inner.bytes += size;
            while inner.bytes > self.capacity {
                match inner.lru.pop_lru() {
                    Some((old_key, old)) => {
                        inner.count_removed(&old_key);
                        inner.bytes -= old.data.len() as u64;
                        evicted.push(old);
                    }
                    None => break,
                }
            }
            Ok(())
        };
        for old in evicted {
            self.recycle(old);
        }
        outcome
    }

    /// The server's exact time when the cached blocks of `version` were downloaded, if
    /// any are held and the server said.
    pub fn server_time(&self, version: &FileVersion) -> Option<Mtime> {
        self.lock()
            .versions
            .get(version)
            .and_then(|v| v.server_time)
    }

    /// Whether blocks of `version` are held that were all downloaded, with a server time,
    /// by RETRs sent at or after `since` (a listing's arrival): they are as new as it.
    pub fn downloaded_since(&self, version: &FileVersion, since: Instant) -> bool {
        self.lock().versions.get(version).is_some_and(|v| {
            v.server_time.is_some() && v.requested.is_some_and(|requested| requested >= since)
        })
    }

    /// Whether blocks of `version` are held of which some were downloaded racily (see
    /// [`is_racy`]) before `since` (a listing's arrival): at the first open under a
    /// newer listing they are not trusted, but fetched again once.
    pub fn racy_before(&self, version: &FileVersion, since: Instant) -> bool {
        self.lock()
            .versions
            .get(version)
            .is_some_and(|v| v.racy && v.requested.is_some_and(|requested| requested < since))
    }

    /// Drops every block of `version` (it turned out to hold two contents).
    pub fn forget_version(&self, version: &FileVersion) {
        let evicted = {
            let mut inner = self.lock();
            if !inner.versions.contains_key(version) {
                return;
            }
            inner.remove_where(|key| *key.version != *version)
        };
        for old in evicted {
            self.recycle(old);
        }
    }

    /// Whether any block of any version of `path` is held.
    pub fn holds_path(&self, path: &[u8]) -> bool {
        self.lock().blocks_by_path.contains_key(path)
    }

    /// Drops every block of every version of `path` (the file was replaced or deleted).
    pub fn forget_path(&self, path: &[u8]) {
        let evicted = {
            let mut inner = self.lock();
            if !inner.blocks_by_path.contains_key(path) {
                return;
            }
            inner.remove_where(|key| &*key.version.path != path)
        };
        for old in evicted {
            self.recycle(old);
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// (hits, misses) so far.
    pub fn hit_counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, size: u64, index: u64) -> BlockKey {
        BlockKey {
            version: Arc::new(FileVersion {
                path: path.as_bytes().into(),
                size,
                mtime: (1, 0),
            }),
            index,
        }
    }

    fn segment(start: u64, len: usize) -> Segment {
        Segment {
            start,
            data: Arc::new(vec![7; len]),
        }
    }

    #[test]
    fn ranges_within_a_block_are_joined_not_dropped() {
        let cache = BlockCache::new(1 << 20);
        let block = key("a", 1 << 20, 0);
        cache.insert(block.clone(), segment(0, 64 << 10));
        // Elsewhere in the block: the new range is kept (the old one, with a gap between,
        // gives way).
        cache.insert(block.clone(), segment(512 << 10, 64 << 10));
        assert!(cache.get(&block, 512 << 10, 576 << 10).is_some());
        // Touching and overlapping ranges join.
        cache.insert(block.clone(), segment(576 << 10, 64 << 10));
        let mut newer = segment(600 << 10, 100 << 10);
        newer.data = Arc::new(vec![9; 100 << 10]);
        cache.insert(block.clone(), newer);
        let joined = cache.get(&block, 512 << 10, 700 << 10).expect("joined");
        assert_eq!(joined.start, 512 << 10);
        assert_eq!(joined.data[(600 - 512) << 10], 9);
        assert_eq!(joined.data[((600 - 512) << 10) - 1], 7);
        assert_eq!(cache.bytes(), 188 << 10);
        // A range inside changes nothing.
        cache.insert(block.clone(), segment(520 << 10, 4 << 10));
        assert_eq!(cache.bytes(), 188 << 10);
    }

    #[test]
    fn knows_which_paths_have_blocks() {
        let cache = BlockCache::new(2000);
        cache.insert(key("a", 10, 0), segment(0, 1000));
        cache.insert(key("a", 10, 0), segment(0, 1000));
        cache.insert(key("b", 10, 0), segment(0, 1000));
        assert!(cache.holds_path(b"a") && cache.holds_path(b"b"));
        // Evicted: "a" is the least recently used.
        cache.insert(key("c", 10, 0), segment(0, 1000));
        assert!(!cache.holds_path(b"a"));
        assert!(cache.holds_path(b"c"));
        cache.forget_path(b"b");
        assert!(!cache.holds_path(b"b"));
        assert!(cache.holds_path(b"c"));
    }

    #[test]
    fn data_read_within_the_second_of_the_file_s_time_is_racy() {
        let at = |secs: u64, millis: u64| {
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + millis)
        };
        assert!(is_racy((100, 0), at(100, 0)));
        assert!(is_racy((100, 0), at(100, 999)));
        assert!(!is_racy((100, 0), at(101, 0)));
        // A server clock ahead of ours: racy, fetched once more.
        assert!(is_racy((105, 0), at(101, 0)));
    }

    #[test]
    fn blocks_downloaded_at_another_server_time_are_never_mixed() {
        let cache = BlockCache::new(3000);
        let first = key("a", 10, 0);
        let second = key("a", 10, 1);
        cache
            .insert_downloaded(first.clone(), segment(0, 1000), Some((100, 0)), None)
            .unwrap();
        assert_eq!(cache.server_time(&first.version), Some((100, 0)));
        // Same size and listed time, another server time: the old block goes too.
        assert_eq!(
            cache.insert_downloaded(second.clone(), segment(0, 1000), Some((160, 0)), None),
            Err(ContentChanged)
        );
        assert!(cache.get(&first, 0, 10).is_none());
        assert!(cache.get(&second, 0, 10).is_none());
        assert_eq!(cache.server_time(&first.version), None);
        // Starting afresh, the new time is recorded; a download without a time (no
        // MDTM) is never a mismatch; eviction of the last block forgets the time.
        cache
            .insert_downloaded(second.clone(), segment(0, 1000), Some((160, 0)), None)
            .unwrap();
        cache
            .insert_downloaded(first.clone(), segment(0, 1000), None, None)
            .unwrap();
        assert_eq!(cache.server_time(&first.version), Some((160, 0)));
        cache.insert(key("b", 10, 0), segment(0, 1000));
        cache.insert(key("b", 10, 1), segment(0, 1000));
        cache.insert(key("b", 10, 2), segment(0, 1000));
        assert_eq!(cache.server_time(&first.version), None);
        cache.forget_version(&key("b", 10, 0).version);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn knows_whether_blocks_are_newer_than_a_listing() {
        let cache = BlockCache::new(3000);
        let block = key("c", 10, 0);
        let listed = Instant::now();
        cache
            .insert_downloaded(
                block.clone(),
                segment(0, 10),
                Some((1, 0)),
                Some(Instant::now()),
            )
            .unwrap();
        assert!(cache.downloaded_since(&block.version, listed));
        assert!(!cache.downloaded_since(&block.version, Instant::now()));
        // Without a server time nothing vouches for the content.
        let untimed = key("d", 10, 0);
        cache.insert(untimed.clone(), segment(0, 10));
        assert!(!cache.downloaded_since(&untimed.version, listed));
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let cache = BlockCache::new(3000);
        cache.insert(key("a", 10, 0), segment(0, 1000));
        cache.insert(key("a", 10, 1), segment(0, 1000));
        cache.insert(key("a", 10, 2), segment(0, 1000));
        assert!(cache.get(&key("a", 10, 0), 0, 10).is_some());
        cache.insert(key("a", 10, 3), segment(0, 1000));
        assert_eq!(cache.bytes(), 3000);
        assert!(
            cache.get(&key("a", 10, 1), 0, 10).is_none(),
            "LRU block kept"
        );
        assert!(
            cache.get(&key("a", 10, 0), 0, 10).is_some(),
            "recently used block evicted"
        );
    }

    #[test]
    fn evicted_buffers_are_reused_only_when_nobody_holds_them() {
        let block = MIN_REUSED_BUFFER;
        let cache = BlockCache::new(block as u64);
        let first = Segment {
            start: 0,
            data: Arc::new(cache.buffer(block)),
        };
        let first_ptr = first.data.as_ptr();
        let held = first.clone();
        cache.insert(key("a", 10, 0), first);
        cache.insert(key("a", 10, 1), segment(0, block));
        // A reader still holds the first block: its buffer must not be handed out.
        let fresh = cache.buffer(block);
        assert_ne!(fresh.as_ptr(), first_ptr);
        drop(held);
        let second_ptr = cache.get(&key("a", 10, 1), 0, 1).unwrap().data.as_ptr();
        cache.insert(key("a", 10, 2), segment(0, block));
        let reused = cache.buffer(block);
        assert_eq!(reused.as_ptr(), second_ptr, "the evicted buffer is reused");
        assert_eq!(reused.len(), block);
        // Small fetches never take a block-sized buffer.
        cache.insert(key("a", 10, 3), segment(0, block));
        assert_eq!(cache.buffer(16 * 1024).capacity(), 16 * 1024);
    }

    #[test]
    fn forgetting_a_path_drops_all_its_versions() {
        let cache = BlockCache::new(1 << 20);
        cache.insert(key("a", 10, 0), segment(0, 10));
        cache.insert(key("a", 11, 0), segment(0, 11));
        cache.insert(key("b", 10, 0), segment(0, 10));
        cache.forget_path(b"a");
        assert!(cache.get(&key("a", 10, 0), 0, 5).is_none());
        assert!(cache.get(&key("a", 11, 0), 0, 5).is_none());
        assert!(cache.get(&key("b", 10, 0), 0, 5).is_some());
        assert_eq!(cache.bytes(), 10);
    }

    #[test]
    fn another_version_never_hits() {
        let cache = BlockCache::new(1 << 20);
        cache.insert(key("a", 10, 0), segment(0, 10));
        assert!(cache.get(&key("a", 11, 0), 0, 5).is_none());
    }

    #[test]
    fn partial_segments_cover_only_their_range() {
        let cache = BlockCache::new(1 << 20);
        cache.insert(key("a", 10, 0), segment(4096, 4096));
        assert!(cache.get(&key("a", 10, 0), 4096, 8192).is_some());
        assert!(cache.get(&key("a", 10, 0), 0, 10).is_none());
        assert!(cache.get(&key("a", 10, 0), 8000, 9000).is_none());
        // A whole block replaces the part.
        cache.insert(key("a", 10, 0), segment(0, 65536));
        assert!(cache.get(&key("a", 10, 0), 0, 10).is_some());
        assert_eq!(cache.bytes(), 65536);
    }
}
