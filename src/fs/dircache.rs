//! The metadata cache: one listing per directory serves every lookup and getattr in it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ftp::listing::{Entry, EntryKind, ListingFormat};
use crate::ftp::Pool;

use super::error::FsError;
use super::failure::{Attempt, RecentFailure, RemembersFailure};
use super::inode::join_path;

/// One directory's entries as of one listing.
#[derive(Debug)]
pub struct DirListing {
    /// When the listing arrived.
    pub fetched: Instant,
    /// Entries in server order (files, directories and symlinks only).
    pub entries: Vec<Entry>,
    index: HashMap<Vec<u8>, usize>,
    /// Symlink targets learnt from `LIST -a` when the listing itself (MLSD) lacks them.
    link_targets: Mutex<Option<HashMap<Vec<u8>, Vec<u8>>>>,
    /// Whether the subdirectories' listings were already fetched ahead once.
    children_prefetched: AtomicBool,
}

impl DirListing {
    fn new(entries: Vec<Entry>) -> Self {
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| {
                // Devices, pipes and sockets cannot be downloaded; showing them would only
                // produce read errors.
                if e.kind == EntryKind::Other {
                    tracing::debug!(name = %e.name.escape_ascii(), "skipping special file");
                    return false;
                }
                // The listing parser allows longer names than Linux: such a name could be
                // listed but never looked up (ENAMETOOLONG), which confuses ls and rsync.
                if e.name.len() > super::NAME_MAX {
                    tracing::debug!(
                        name = %e.name[..64].escape_ascii(),
                        bytes = e.name.len(),
                        "skipping a name longer than {} bytes",
                        super::NAME_MAX
                    );
                    return false;
                }
                true
            })
            .collect();
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Self {
            fetched: Instant::now(),
            entries,
            index,
            link_targets: Mutex::new(None),
            children_prefetched: AtomicBool::new(false),
        }
    }

    /// The entry called `name`, if the listing has it.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

#[derive(Default)]
struct SlotState {
    listing: Option<Arc<DirListing>>,
    /// The last timeout; see [`FAILURE_MEMORY`](super::failure::FAILURE_MEMORY).
    failure: RecentFailure,
}

impl RemembersFailure for SlotState {
    fn recent_failure(&mut self) -> &mut RecentFailure {
        &mut self.failure
    }
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// Connections that listing ahead leaves free, so that what the user asks for now never
/// waits behind a guess.
const CONNECTIONS_RESERVED_FROM_PREFETCH: usize = 1;

/// Directory listings with a time to live; concurrent requests for one directory share
/// one listing command.
pub struct DirCache {
    ttl: Duration,
    slots: Mutex<HashMap<Vec<u8>, Slot>>,
    listings: AtomicU64,
    /// Subdirectories listed ahead per opened directory (0: none).
    prefetch_children: usize,
}

impl DirCache {
    /// A cache whose listings are trusted for `ttl`; opening a directory lists up to
    /// `prefetch_children` of its subdirectories ahead, on spare connections.
    pub fn new(ttl: Duration, prefetch_children: usize) -> Self {
        Self {
            ttl,
            slots: Mutex::new(HashMap::new()),
            listings: AtomicU64::new(0),
            prefetch_children,
        }
    }

    /// Listing commands sent so far.
    pub fn listings_fetched(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    fn slot(&self, path: &[u8]) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_vec())
            .or_default()
            .clone()
    }

    /// The listing of `path`, from the cache while fresh, else from the server.
    pub async fn get(&self, pool: &Pool, path: &[u8]) -> Result<Arc<DirListing>, FsError> {
        let slot = self.slot(path);
        // Holding the slot's lock while listing makes concurrent callers wait for this
        // one listing instead of sending their own.
        let cached = slot.lock().await;
        if let Some(listing) = cached.listing.as_ref() {
            if listing.fetched.elapsed() < self.ttl {
                return Ok(listing.clone());
            }
        }
        if let Some(error) = cached.failure.replay("listing") {
            return Err(error);
        }
        let mut attempt = Attempt::new(cached);
        let result = crate::with_connection!(pool, |conn| conn.list(path).await)
            .await
            .map(|listing| Arc::new(DirListing::new(listing.entries)))
            .map_err(FsError::from);
        attempt.finish(&result);
        let listing = result?;
        self.listings.fetch_add(1, Ordering::Relaxed);
        attempt.state.listing = Some(listing.clone());
        Ok(listing)
    }

    /// Lists the subdirectories of `path` ahead, in the background, on connections that
    /// are free now: a walk (`find`, `ls -R`, `du`, a file browser) opens them next, and
    /// listing them in parallel instead of one after another saves round trips.
    ///
    /// Once per listing, only for directories the user opened (never for those listed
    /// ahead, so nothing crawls the server on its own), at most `prefetch_children` of
    /// them, and never on the last free connection.
    pub fn prefetch_children(self: &Arc<Self>, pool: &Pool, path: &[u8], listing: &DirListing) {
        if self.prefetch_children == 0 || listing.children_prefetched.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let queue: VecDeque<Vec<u8>> = listing
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .take(self.prefetch_children)
            .map(|e| join_path(path, &e.name))
            .collect();
        if queue.is_empty() {
            return;
        }
        let workers = queue.len().min(
            pool.limit()
                .saturating_sub(CONNECTIONS_RESERVED_FROM_PREFETCH),
        );
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..workers {
            let cache = self.clone();
            let pool = pool.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some(path) = next else { break };
                    if !cache.prefetch(&pool, &path).await {
                        break;
                    }
                }
            });
        }
    }

    /// Lists `path` ahead unless it is fresh or being listed; false when no connection is
    /// spare (the worker stops).
    async fn prefetch(&self, pool: &Pool, path: &[u8]) -> bool {
        let slot = self.slot(path);
        // A busy slot is being listed by someone else: nothing to do.
        let Ok(mut cached) = slot.try_lock() else {
            return true;
        };
        if cached
            .listing
            .as_ref()
            .is_some_and(|l| l.fetched.elapsed() < self.ttl)
        {
            return true;
        }
        let mut conn = match pool.try_get_spare(CONNECTIONS_RESERVED_FROM_PREFETCH).await {
            Ok(Some(conn)) => conn,
            _ => return false,
        };
        match conn.list(path).await {
            Ok(listing) => {
                self.listings.fetch_add(1, Ordering::Relaxed);
                cached.listing = Some(Arc::new(DirListing::new(listing.entries)));
                true
            }
            Err(e) => {
                // Not the user's request: stay quiet and let a real one ask again.
                tracing::debug!(path = %path.escape_ascii(), "listing ahead failed: {e}");
                true
            }
        }
    }

    /// Forgets the listing of `path`, so the next request asks the server.
    pub fn invalidate(&self, path: &[u8]) {
        let slot = self.slot(path);
        if let Ok(mut cached) = slot.try_lock() {
            *cached = SlotState::default();
        };
    }

    /// The target of symlink `name` in the directory `path`.
    ///
    /// MLSD does not say where a symlink points (ProFTPD: `type=OS.unix=symlink`,
    /// Pure-FTPd: an empty `OS.unix=slink:`); `LIST -a` does, so ask once per listing.
    pub async fn link_target(
        &self,
        pool: &Pool,
        listing: &DirListing,
        path: &[u8],
        name: &[u8],
    ) -> Result<Vec<u8>, FsError> {
        if let Some(target) = listing.get(name).and_then(|e| e.link_target.clone()) {
            return Ok(target);
        }
        if let Some(targets) = listing
            .link_targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return targets.get(name).cloned().ok_or(FsError::NoLinkTarget);
        }
        let unix =
            crate::with_connection!(pool, |conn| conn.list_as(path, ListingFormat::List).await)
                .await?;
        self.listings.fetch_add(1, Ordering::Relaxed);
        let targets: HashMap<Vec<u8>, Vec<u8>> = unix
            .entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.link_target?)))
            .collect();
        let target = targets.get(name).cloned();
        *listing
            .link_targets
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(targets);
        target.ok_or(FsError::NoLinkTarget)
    }
}
