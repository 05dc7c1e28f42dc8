//! The persistent block cache (`disk_cache=SIZE`): whole blocks downloaded with the
//! server's exact time (MDTM) are also written to disk, under
//! `cache_dir/blocks/<server>/`, and outlive the mount. A later mount serves them without
//! a download once, at open, the file's size in the listing and its exact time from the
//! server match theirs.
//!
//! Each block is one file: a header (format, the key: path, size, exact time and block
//! index; the data's length and CRC-32) protected by its own CRC-32, then the data. It is
//! written under a temporary name and renamed, so a crash leaves a whole block or none.
//! A block whose header or data does not check out, or that is cut short, is a miss, and
//! is deleted. Eviction is least recently used, bounded by SIZE and by a minimum of free
//! space on the disk.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use lru::LruCache;

use crate::fs::cache::version::{in_background, Mtime};

/// The format of a block file; another value is a miss.
const MAGIC: &[u8; 8] = b"FTPSFSB2";
/// Bytes of the header before the path: magic, path length, size, seconds, nanoseconds,
/// block size, index, data length, data CRC.
const FIXED_HEADER: usize = 8 + 4 + 8 + 8 + 4 + 8 + 8 + 8 + 4;
/// The disk keeps at least this much free space...
const MIN_FREE_BYTES: u64 = 1 << 30;
/// ...or this share of its size, whichever is less.
const MIN_FREE_PERCENT: u64 = 5;

/// What the disk cache did, for `ftpsfs stats` and benchmarks.
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Blocks served from disk.
    pub hits: AtomicU64,
    /// Blocks written to disk.
    pub written: AtomicU64,
    /// Block files found corrupt or cut short, and deleted.
    pub corrupt: AtomicU64,
}

/// The block files of one server's cache directory.
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    /// The mount's block size: part of every key, so that blocks cut at another size
    /// are never taken for these.
    block_size: u64,
    state: Mutex<State>,
    stats: DiskStats,
    /// Numbers the temporary files of writes in flight.
    next_temporary: AtomicU64,
}

struct State {
    /// Every block file by name, least recently used first, with its length.
    lru: LruCache<String, u64>,
    bytes: u64,
    /// For each file (path, size and block size), the exact times it has blocks under,
    /// and how many.
    times: HashMap<u64, HashMap<u64, usize>>,
    /// Blocks held per path, at any size and time.
    paths: HashMap<u64, usize>,
}

/// What a block file's name says: which path; which file (path, size and block size);
/// at which time; which block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockName {
    path: u64,
    file: u64,
    time: u64,
    index: u64,
}

impl BlockName {
    fn of(path: &[u8], size: u64, block_size: u64, time: Mtime, index: u64) -> Self {
        Self {
            path: path_key(path),
            file: file_key(path, size, block_size),
            time: time_key(time),
            index,
        }
    }

    fn to_name(self) -> String {
        format!(
            "{:016x}-{:016x}-{:016x}-{}.blk",
            self.path, self.file, self.time, self.index
        )
    }

    fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".blk")?;
        let mut parts = stem.splitn(4, '-');
        let path = u64::from_str_radix(parts.next()?, 16).ok()?;
        let file = u64::from_str_radix(parts.next()?, 16).ok()?;
        let time = u64::from_str_radix(parts.next()?, 16).ok()?;
        let index = parts.next()?.parse().ok()?;
        Some(Self {
            path,
            file,
            time,
            index,
        })
    }
}

/// FNV-1a: names need spreading, not secrecy; the header holds the key itself.
pub(in crate::fs) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn path_key(path: &[u8]) -> u64 {
    fnv(&[path])
}

fn file_key(path: &[u8], size: u64, block_size: u64) -> u64 {
    fnv(&[path, &size.to_le_bytes(), &block_size.to_le_bytes()])
}

fn time_key((seconds, nanos): Mtime) -> u64 {
    fnv(&[&seconds.to_le_bytes(), &nanos.to_le_bytes()])
}

/// The directory for one server's blocks: the server and user decide whose files these
/// are.
pub fn server_dir(cache_dir: &Path, host: &str, port: u16, user: &str) -> PathBuf {
    let server = fnv(&[host.as_bytes(), &port.to_le_bytes(), user.as_bytes()]);
    cache_dir.join("blocks").join(format!("{server:016x}"))
}

impl DiskCache {
    /// Opens (or creates) the block cache in `dir`, holding at most `capacity` bytes.
    /// Temporary files of writes a crash interrupted are deleted.
    pub fn open(dir: PathBuf, capacity: u64, block_size: u64) -> io::Result<Self> {
        // The server's files are the user's own: nobody else may read them here.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(parsed) = BlockName::parse(&name) else {
                continue;
            };
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((used, name, parsed, meta.len()));
        }
        // Least recently used first, as the LRU list wants them.
        found.sort_by_key(|(used, ..)| *used);
        let mut state = State {
            lru: LruCache::unbounded(),
            bytes: 0,
            times: HashMap::new(),
            paths: HashMap::new(),
        };
        for (_, name, parsed, len) in found {
            state.add(name, parsed, len);
        }
        let cache = Self {
            dir,
            capacity,
            block_size,
            state: Mutex::new(state),
            stats: DiskStats::default(),
            next_temporary: AtomicU64::new(0),
        };
        cache.evict();
        tracing::debug!(
            dir = %cache.dir.display(),
            blocks = cache.lock().lru.len(),
            bytes = cache.bytes(),
            "disk cache opened"
        );
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of block files held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// What the cache did so far.
    pub fn stats(&self) -> &DiskStats {
        &self.stats
    }

    /// Whether blocks of the file `path` of `size` bytes are held, at any time.
    pub fn holds(&self, path: &[u8], size: u64) -> bool {
        self.lock()
            .times
            .contains_key(&file_key(path, size, self.block_size))
    }

    /// Keeps the blocks of `path` (`size` bytes) stored under `time` and deletes those
    /// under any other time; returns whether any are left. `None`: delete them all.
    pub fn keep_only(&self, path: &[u8], size: u64, time: Option<Mtime>) -> bool {
        let file = file_key(path, size, self.block_size);
        let keep = time.map(time_key);
        let doomed: Vec<String> = {
            let state = self.lock();
            state
                .lru
                .iter()
                .filter_map(|(name, _)| {
                    let parsed = BlockName::parse(name)?;
                    (parsed.file == file && Some(parsed.time) != keep).then(|| name.clone())
                })
                .collect()
        };
        for name in &doomed {
            self.remove(name);
        }
        keep.is_some_and(|keep| {
            self.lock()
                .times
                .get(&file)
                .is_some_and(|times| times.contains_key(&keep))
        })
    }

    /// Deletes every block of `path`, at any size and time: this mount changed the file.
    /// They leave the index at once, so no open finds them from now on; the files go in
    /// the background.
    pub fn forget_path(&self, path: &[u8]) {
        let key = path_key(path);
        let doomed: Vec<String> = {
            let state = self.lock();
            if !state.paths.contains_key(&key) {
                return;
            }
            state
                .lru
                .iter()
                .filter(|(name, _)| BlockName::parse(name).is_some_and(|n| n.path == key))
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in &doomed {
            self.forget(name);
        }
        let files: Vec<PathBuf> = doomed.iter().map(|name| self.dir.join(name)).collect();
        in_background(move || {
            for file in files {
                let _ = fs::remove_file(file);
            }
        });
    }

    /// Writes a whole block, downloaded when the server gave `time` for the file. Blocking:
    /// run it off the async workers.
    pub fn store(&self, path: &[u8], size: u64, time: Mtime, index: u64, data: &[u8]) {
        let parsed = BlockName::of(path, size, self.block_size, time, index);
        let name = parsed.to_name();
        if self.lock().lru.contains(&name) {
            return;
        }
        let header = header(path, size, self.block_size, time, index, data);
        let len = (header.len() + data.len()) as u64;
        if len > self.capacity {
            return;
        }
        let temporary = self.dir.join(format!(
            "{}.{}.{}.tmp",
            name,
            std::process::id(),
            self.next_temporary.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(&header)?;
            file.write_all(data)?;
            // No fsync: a block lost in a crash is a miss, and a torn one fails its CRC.
            drop(file);
            fs::rename(&temporary, self.dir.join(&name))
        })();
        if let Err(e) = written {
            tracing::debug!(dir = %self.dir.display(), "cannot write a block to the disk cache: {e}");
            let _ = fs::remove_file(&temporary);
            return;
        }
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        self.lock().add(name, parsed, len);
        self.evict();
    }

    /// The data of block `index` of `path` (`size` bytes, exact `time`), `len` bytes long,
    /// if held and whole. Blocking: run it off the async workers, or where a page-cache
    /// read is as cheap as the hand-off.
    pub fn load(
        &self,
        path: &[u8],
        size: u64,
        time: Mtime,
        index: u64,
        len: usize,
    ) -> Option<Vec<u8>> {
        let name = BlockName::of(path, size, self.block_size, time, index).to_name();
        // Known, and now the most recently used.
        self.lock().lru.get(&name)?;
        let file_path = self.dir.join(&name);
        let header_len = FIXED_HEADER + path.len() + 4;
        let read = (|| {
            let mut file = fs::File::open(&file_path)?;
            let whole = file.metadata()?.len() == (header_len + len) as u64;
            let mut header = vec![0; header_len];
            // The data goes straight into its own buffer, never zeroed first or moved.
            let mut data = Vec::with_capacity(len);
            if whole {
                file.read_exact(&mut header)?;
                (&mut file).take(len as u64).read_to_end(&mut data)?;
            }
            Ok::<_, io::Error>((whole && data.len() == len, header, data))
        })();
        let (whole, header, data) = match read {
            Ok(read) => read,
            Err(_) => {
                self.forget(&name);
                return None;
            }
        };
        let expected = self::header(path, size, self.block_size, time, index, &data);
        // Computing the expected header computes the data's CRC: equal headers (the
        // header's CRC included) mean the same key, length and data.
        if whole && header == expected {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Some(data);
        }
        tracing::debug!(file = %file_path.display(), "damaged block in the disk cache; deleted");
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        self.remove(&name);
        None
    }

    /// Deletes a block file and forgets it.
    fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(name));
        self.forget(name);
    }

    fn forget(&self, name: &str) {
        let mut state = self.lock();
        if let Some(len) = state.lru.pop(name) {
            state.bytes -= len;
            if let Some(parsed) = BlockName::parse(name) {
                state.drop_time_if_unused(parsed);
            }
        }
    }

    /// Deletes least recently used blocks while the cache is over its size or the disk
    /// has too little free space.
    fn evict(&self) {
        loop {
            let victim = {
                let mut state = self.lock();
                let over = state.bytes > self.capacity || too_little_free_space(&self.dir);
                if !over {
                    return;
                }
                match state.lru.pop_lru() {
                    Some((name, len)) => {
                        state.bytes -= len;
                        if let Some(parsed) = BlockName::parse(&name) {
                            state.drop_time_if_unused(parsed);
                        }
                        name
                    }
                    None => return,
                }
            };
            let _ = fs::remove_file(self.dir.join(victim));
        }
    }
}

impl State {
    fn add(&mut self, name: String, parsed: BlockName, len: u64) {
        match self.lru.put(name, len) {
            Some(old) => self.bytes -= old,
            None => {
                *self.paths.entry(parsed.path).or_default() += 1;
                *self
                    .times
                    .entry(parsed.file)
                    .or_default()
                    .entry(parsed.time)
                    .or_default() += 1
            }
        }
        self.bytes += len;
    }

    /// One block fewer of `parsed`'s file under its time.
    fn drop_time_if_unused(&mut self, parsed: BlockName) {
        if let Some(count) = self.paths.get_mut(&parsed.path) {
            *count -= 1;
            if *count == 0 {
                self.paths.remove(&parsed.path);
            }
        }
        let Some(times) = self.times.get_mut(&parsed.file) else {
            return;
        };
        if let Some(count) = times.get_mut(&parsed.time) {
            *count -= 1;
            if *count == 0 {
                times.remove(&parsed.time);
            }
        }
        if times.is_empty() {
            self.times.remove(&parsed.file);
        }
    }
}

/// The header of a block file: the key it holds and its data's length and CRC, then the
/// header's own CRC.
fn header(
    path: &[u8],
    size: u64,
    block_size: u64,
    (seconds, nanos): Mtime,
    index: u64,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_HEADER + path.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&seconds.to_le_bytes());
    out.extend_from_slice(&nanos.to_le_bytes());
    out.extend_from_slice(&block_size.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(path);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Whether the disk holding `dir` has less free space than it must keep (also the
/// write-back queue's rule: its closes wait for uploads then).
pub(in crate::fs) fn too_little_free_space(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs fills the struct it is given; `path` is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    let unit = stat.f_frsize as u64;
    let free = stat.f_bavail as u64 * unit;
    let total = stat.f_blocks as u64 * unit;
    free < MIN_FREE_BYTES.min(total / 100 * MIN_FREE_PERCENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ftpsfs-diskcache-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    const T: Mtime = (1_700_000_000, 0);

    #[test]
    fn blocks_survive_reopening_and_need_the_exact_key() {
        let dir = scratch("reopen");
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        cache.store(b"/a/f", 10, T, 0, b"0123456789");
        drop(cache);
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        assert!(cache.holds(b"/a/f", 10));
        assert_eq!(cache.load(b"/a/f", 10, T, 0, 10).unwrap(), b"0123456789");
        // Another size, time, block or path: not this block.
        assert_eq!(cache.load(b"/a/f", 11, T, 0, 10), None);
        assert_eq!(cache.load(b"/a/f", 10, (T.0 + 1, 0), 0, 10), None);
        assert_eq!(cache.load(b"/a/f", 10, (T.0, 1), 0, 10), None);
        assert_eq!(cache.load(b"/a/f", 10, T, 1, 10), None);
        assert_eq!(cache.load(b"/a/g", 10, T, 0, 10), None);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_or_cut_block_is_a_miss_and_is_deleted() {
        let dir = scratch("corrupt");
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        let name = BlockName::of(b"/f", 4, 1 << 20, T, 0).to_name();
        for damage in 0..3 {
            cache.store(b"/f", 4, T, 0, b"data");
            let file = dir.join(&name);
            let mut bytes = fs::read(&file).unwrap();
            match damage {
                // A flipped bit in the data, in the header, or a block cut short.
                0 => *bytes.last_mut().unwrap() ^= 1,
                1 => bytes[9] ^= 1,
                _ => bytes.truncate(bytes.len() - 1),
            }
            fs::write(&file, &bytes).unwrap();
            assert_eq!(cache.load(b"/f", 4, T, 0, 4), None, "damage {damage}");
            assert!(!file.exists(), "damage {damage}: the corrupt block stayed");
            assert!(!cache.holds(b"/f", 4));
        }
        assert_eq!(cache.stats().corrupt.load(Ordering::Relaxed), 3);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn the_least_recently_used_blocks_go_first() {
        let dir = scratch("lru");
        let block = vec![7u8; 1000];
        let one = (header(b"/f", 1 << 20, 1 << 20, T, 0, &block).len() + block.len()) as u64;
        let cache = DiskCache::open(dir.clone(), 3 * one, 1 << 20).unwrap();
        for index in 0..3 {
            cache.store(b"/f", 1 << 20, T, index, &block);
        }
        // Block 0 is used again, so block 1 is the oldest when block 3 arrives.
        assert!(cache.load(b"/f", 1 << 20, T, 0, 1000).is_some());
        cache.store(b"/f", 1 << 20, T, 3, &block);
        assert!(cache.bytes() <= 3 * one);
        assert!(cache.load(b"/f", 1 << 20, T, 1, 1000).is_none());
        for index in [0, 2, 3] {
            assert!(
                cache.load(b"/f", 1 << 20, T, index, 1000).is_some(),
                "block {index}"
            );
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn keeping_one_time_deletes_the_others() {
        let dir = scratch("keep");
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        cache.store(b"/f", 4, T, 0, b"old!");
        cache.store(b"/f", 4, (T.0 + 60, 0), 0, b"new!");
        assert!(cache.keep_only(b"/f", 4, Some((T.0 + 60, 0))));
        assert_eq!(cache.load(b"/f", 4, T, 0, 4), None);
        assert!(!cache.keep_only(b"/f", 4, Some(T)));
        assert!(!cache.holds(b"/f", 4));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn blocks_cut_at_another_block_size_never_hit() {
        let dir = scratch("block-size");
        let cache = DiskCache::open(dir.clone(), 1 << 30, 1 << 20).unwrap();
        cache.store(b"/f", 5 << 20, T, 2, &[1u8; 1 << 20]);
        drop(cache);
        // At 2 MiB blocks, block 2 is also 1 MiB long (the last one), but other bytes.
        let cache = DiskCache::open(dir.clone(), 1 << 30, 2 << 20).unwrap();
        assert!(!cache.holds(b"/f", 5 << 20));
        assert_eq!(cache.load(b"/f", 5 << 20, T, 2, 1 << 20), None);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn forgetting_a_path_deletes_its_blocks_at_every_size_and_time() {
        let dir = scratch("forget");
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        cache.store(b"/f", 4, T, 0, b"old!");
        cache.store(b"/f", 5, (T.0 + 1, 0), 0, b"newer");
        cache.store(b"/g", 4, T, 0, b"kept");
        cache.forget_path(b"/f");
        assert!(!cache.holds(b"/f", 4) && !cache.holds(b"/f", 5));
        assert_eq!(cache.load(b"/g", 4, T, 0, 4).unwrap(), b"kept");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn only_the_user_can_read_the_cache() {
        let dir = scratch("mode");
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        cache.store(b"/secret", 4, T, 0, b"data");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let block = dir.join(BlockName::of(b"/secret", 4, 1 << 20, T, 0).to_name());
        assert_eq!(mode(&block), 0o600);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn leftover_temporary_files_are_deleted_at_open() {
        let dir = scratch("tmp");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.blk.1.2.tmp"), b"half").unwrap();
        let cache = DiskCache::open(dir.clone(), 1 << 20, 1 << 20).unwrap();
        assert!(!dir.join("x.blk.1.2.tmp").exists());
        assert_eq!(cache.bytes(), 0);
        let _ = fs::remove_dir_all(dir);
    }
}
