//! Reading ahead the small files of a directory that a program reads one after another.
//!
//! `cp -r`, `rsync` and `tar` open the files of a directory one at a time, each after the
//! last one's data arrived: every small file costs its own round trips (EPSV, connect,
//! TLS, RETR, the 226), one after another. Once a file is opened right after the one
//! before it in listing order or in name order (rsync sorts), and that one was read to
//! its end, the next small files in that order are
//! downloaded whole into the block cache on spare connections, a bounded number of files
//! and bytes ahead. The pattern breaking stops it. A file browser sniffing the first
//! bytes of each file in turn never reads one to its end, so it never starts this.
//! Downloads go into the cache under
//! the file's listed version with the server's exact time, so a file that changed is
//! never served from them (see `reader.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::fs::cache::version::FileVersion;
use crate::fs::meta::dircache::DirListing;
use crate::fs::meta::inode::join_path;
use crate::fs::read::reader::Reader;
use crate::ftp::listing::{Entry, EntryKind};

/// Files read ahead at most, past the one being read.
const MAX_FILES_AHEAD: usize = 16;
/// Bytes read ahead at most, past the one being read.
const MAX_BYTES_AHEAD: u64 = 8 << 20;
/// Directories whose reading pattern is followed at once.
const MAX_DIRECTORIES: usize = 64;

/// The orders a program may read a directory's files in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// As the server listed them (`cp -r`, `tar`: readdir order).
    Listing,
    /// By name, bytewise (`rsync`).
    Name,
}

/// What one directory's reader has done so far.
struct Pattern {
    /// The last file opened.
    last: Vec<u8>,
    /// Its version, to see whether it was read to its end.
    last_version: Option<Arc<FileVersion>>,
    /// Files in a row opened in `order`.
    run: u32,
    order: Option<Order>,
    /// The files downloaded ahead so far in this run, by name.
    ahead: Vec<Vec<u8>>,
    /// Bumped when the pattern breaks: downloads queued before it are dropped.
    generation: u64,
    touched: Instant,
}

/// Follows the directories being read and reads their next small files ahead.
pub struct SiblingReadAhead {
    reader: Arc<Reader>,
    dirs: Arc<Mutex<HashMap<u64, Pattern>>>,
    /// Downloads ahead at once: the pool's size less two, so the foreground reader and
    /// listings always find a connection.
    slots: Arc<Semaphore>,
    enabled: bool,
    generations: AtomicU64,
}

impl SiblingReadAhead {
    /// Reads ahead through `reader`, with up to `parallel` downloads at once (0: never).
    pub fn new(reader: Arc<Reader>, parallel: usize) -> Self {
        Self {
            reader,
            dirs: Arc::new(Mutex::new(HashMap::new())),
            slots: Arc::new(Semaphore::new(parallel)),
            enabled: parallel > 0,
            generations: AtomicU64::new(0),
        }
    }

    /// `name` in the directory `dir` (at `dir_path`, listed as `listing`) was opened for
    /// reading: follow the pattern, and read ahead when it holds.
    pub fn opened(
        &self,
        dir: u64,
        dir_path: &[u8],
        name: &[u8],
        version: &Arc<FileVersion>,
        listing: &DirListing,
    ) {
        if !self.enabled {
            return;
        }
        let files: Vec<&Entry> = listing
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .collect();
        let Some(listing_pos) = files.iter().position(|e| e.name == name) else {
            return;
        };
        // Name order without sorting the whole directory at every open (a 5,000-file
        // directory is opened 5,000 times by `cp -r`): the file just before by name, and
        // the few just after.
        let before_by_name = files
            .iter()
            .filter(|e| e.name.as_slice() < name)
            .max_by(|a, b| a.name.cmp(&b.name))
            .map(|e| e.name.as_slice());
        let mut after_by_name: Vec<&Entry> = files
            .iter()
            .copied()
            .filter(|e| e.name.as_slice() > name)
            .collect();
        if after_by_name.len() > MAX_FILES_AHEAD {
            after_by_name.select_nth_unstable_by(MAX_FILES_AHEAD, |a, b| a.name.cmp(&b.name));
            after_by_name.truncate(MAX_FILES_AHEAD);
        }
        after_by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if dirs.len() >= MAX_DIRECTORIES && !dirs.contains_key(&dir) {
            // Forget the directory read longest ago.
            if let Some(oldest) = dirs.iter().min_by_key(|(_, p)| p.touched).map(|(&d, _)| d) {
                dirs.remove(&oldest);
            }
        }
        let pattern = dirs.entry(dir).or_insert_with(|| Pattern {
            last: Vec::new(),
            last_version: None,
            run: 0,
            order: None,
            ahead: Vec::new(),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            touched: Instant::now(),
        });
        pattern.touched = Instant::now();
        let follows = |order: Order| match order {
            Order::Listing => listing_pos > 0 && files[listing_pos - 1].name == pattern.last,
            Order::Name => before_by_name == Some(pattern.last.as_slice()),
        };
        let read_to_end = pattern
            .last_version
            .as_ref()
            .is_some_and(|last| self.reader.holds_end_of(last));
        let followed = match pattern.order {
            _ if !read_to_end => None,
            Some(order) if follows(order) => Some(order),
            _ => [Order::Listing, Order::Name]
                .into_iter()
                .find(|&o| follows(o)),
        };
        match followed {
            Some(order) if pattern.order == Some(order) => pattern.run += 1,
            Some(order) => {
                pattern.order = Some(order);
                pattern.run = 1;
            }
            None => {
                if pattern.run > 0 {
                    tracing::debug!(dir = %dir_path.escape_ascii(), "files no longer read in order; reading ahead stops");
                }
                pattern.order = None;
                pattern.run = 0;
                pattern.ahead.clear();
                pattern.generation = self.generations.fetch_add(1, Ordering::Relaxed);
            }
        }
        pattern.last = name.to_vec();
        pattern.last_version = Some(version.clone());
        let Some(order) = pattern.order else {
            return;
        };
        let next: &[&Entry] = match order {
            Order::Listing => &files[listing_pos + 1..],
            Order::Name => &after_by_name,
        };
        pattern.ahead.retain(|n| n.as_slice() != name);
        let limit = self.reader_block_size();
        let mut bytes = 0;
        let mut wanted = Vec::new();
        for entry in next.iter().take(MAX_FILES_AHEAD) {
            let size = entry.size.unwrap_or(0);
            bytes += size;
            if bytes > MAX_BYTES_AHEAD {
                break;
            }
            if size == 0 || size > limit || pattern.ahead.contains(&entry.name) {
                continue;
            }
            pattern.ahead.push(entry.name.clone());
            wanted.push(Arc::new(FileVersion {
                path: join_path(dir_path, &entry.name).into(),
                size,
                mtime: entry.modified.map_or((0, 0), |t| (t.unix_seconds, t.nanos)),
            }));
        }
        // Files read ahead that the program then skipped (rsync skips unchanged ones)
        // are forgotten, oldest first.
        let excess = pattern.ahead.len().saturating_sub(4 * MAX_FILES_AHEAD);
        pattern.ahead.drain(..excess);
        let generation = pattern.generation;
        drop(dirs);
        for version in wanted {
            self.spawn(dir, generation, version);
        }
    }

    fn reader_block_size(&self) -> u64 {
        self.reader.block_size()
    }

    /// Downloads `version` once a slot is free, unless the pattern broke meanwhile.
    fn spawn(&self, dir: u64, generation: u64, version: Arc<FileVersion>) {
        let (reader, slots) = (self.reader.clone(), self.slots.clone());
        let current = self.current_generation_of(dir);
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            if current() != Some(generation) {
                return;
            }
            match reader.read_ahead_whole(version.clone()).await {
                Ok(true) => tracing::debug!(path = %version.path.escape_ascii(), "read ahead"),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(path = %version.path.escape_ascii(), "reading ahead failed: {e}")
                }
            }
        });
    }

    /// A way for a queued download to ask whether its run still holds.
    fn current_generation_of(&self, dir: u64) -> impl Fn() -> Option<u64> + Send + 'static {
        let dirs = self.dirs.clone();
        move || {
            dirs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&dir)
                .map(|p| p.generation)
        }
    }
}
