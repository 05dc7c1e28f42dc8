//! The block cache: file data in fixed-size blocks, LRU, bounded by bytes.
//!
//! Blocks are keyed by path *and version* (size + modification time), so a file that
//! changed on the server is never served from the old file's blocks.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// Which file, in which version; two versions never share blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileVersion {
    /// Path on the server.
    pub path: Arc<[u8]>,
    /// Size in bytes from the listing.
    pub size: u64,
    /// Modification time from the listing (seconds, nanoseconds).
    pub mtime: (i64, u32),
}

/// One block of one file version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKey {
    /// The file version.
    pub version: Arc<FileVersion>,
    /// Block number (offset / block size).
    pub index: u64,
}

impl Hash for BlockKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.version.hash(state);
        self.index.hash(state);
    }
}

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
        from >= self.start && to <= self.start + self.data.len() as u64
    }
}

/// A byte-bounded LRU of blocks.
pub struct BlockCache {
    capacity: u64,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner {
    lru: LruCache<BlockKey, Segment>,
    bytes: u64,
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes of data.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
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

    /// Stores a segment, keeping whichever of old and new holds more, then evicts to fit.
    pub fn insert(&self, key: BlockKey, segment: Segment) {
        let size = segment.data.len() as u64;
        if size > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.lru.peek(&key) {
            if old.data.len() as u64 >= size && old.start <= segment.start {
                return;
            }
        }
        if let Some(old) = inner.lru.put(key, segment) {
            inner.bytes -= old.data.len() as u64;
        }
        inner.bytes += size;
        while inner.bytes > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.data.len() as u64,
                None => break,
            }
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
