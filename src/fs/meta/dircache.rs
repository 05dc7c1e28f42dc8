//! The metadata cache: one listing per directory serves every lookup and getattr in it.
//!
//! What this mount changes (a file uploaded, renamed, deleted) is patched into the cached
//! listing at once, so a read after a write sees it without asking the server. A listing
//! that was on its way while such a change was made may not show it, so it is fetched
//! again rather than kept (each directory counts its changes, as sshfs's write counter
//! does).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ftp::listing::{Entry, EntryKind, ListingFormat, TimePrecision, Timestamp};
use crate::ftp::Pool;

use crate::fs::error::FsError;
use crate::fs::failure::{Attempt, RecentFailure, RemembersFailure};
use crate::fs::meta::inode::join_path;
use crate::fs::meta::names::{is_ftpsfs_name, NAME_MAX};
use crate::fs::write::sweep;

/// One directory's entries as of one listing, with this mount's changes since.
#[derive(Debug)]
pub struct DirListing {
    /// When the listing arrived.
    pub fetched: Instant,
    /// Entries in server order (files, directories and symlinks only).
    pub entries: Vec<Entry>,
    index: HashMap<Vec<u8>, usize>,
    /// ftpsfs's own temporary files, which are not shown (see `names.rs`).
    pub leftovers: Vec<Entry>,
    /// Symlink targets learnt from `LIST -a` when the listing itself (MLSD) lacks them;
    /// locked while they are fetched, so concurrent readlinks share one `LIST`.
    link_targets: tokio::sync::Mutex<Option<HashMap<Vec<u8>, Vec<u8>>>>,
    /// Whether the subdirectories' listings were already fetched ahead once.
    children_prefetched: AtomicBool,
}

impl Clone for DirListing {
    fn clone(&self) -> Self {
        Self {
            fetched: self.fetched,
            entries: self.entries.clone(),
            index: self.index.clone(),
            leftovers: self.leftovers.clone(),
            // Being fetched: the copy fetches them again if asked.
            link_targets: tokio::sync::Mutex::new(
                self.link_targets
                    .try_lock()
                    .ok()
                    .and_then(|targets| targets.clone()),
            ),
            children_prefetched: AtomicBool::new(self.children_prefetched.load(Ordering::Relaxed)),
        }
    }
}

impl DirListing {
    fn new(entries: Vec<Entry>) -> Self {
        let mut leftovers = Vec::new();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| {
                if is_ftpsfs_name(&e.name) {
                    leftovers.push(e.clone());
                    return false;
                }
                // Devices, pipes and sockets cannot be downloaded; showing them would only
                // produce read errors.
                if e.kind == EntryKind::Other {
                    tracing::debug!(name = %e.name.escape_ascii(), "skipping special file");
                    return false;
                }
                // The listing parser allows longer names than Linux: such a name could be
                // listed but never looked up (ENAMETOOLONG), which confuses ls and rsync.
                if e.name.len() > NAME_MAX {
                    tracing::debug!(
                        name = %e.name[..64].escape_ascii(),
                        bytes = e.name.len(),
                        "skipping a name longer than {NAME_MAX} bytes"
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
            leftovers,
            link_targets: tokio::sync::Mutex::new(None),
            children_prefetched: AtomicBool::new(false),
        }
    }

    /// The entry called `name`, if the listing has it.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Shows `entry`, replacing any entry of its name.
    /// Applies a change this mount made.
    fn apply(&mut self, change: Change) {
        match change {
            Change::Upsert(entry) => self.upsert(entry),
            Change::Remove(name) => self.remove(&name),
        }
    }

    fn upsert(&mut self, entry: Entry) {
        match self.index.get(&entry.name) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.index.insert(entry.name.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
        self.forget_link_target(None);
    }

    /// Stops showing `name`.
    fn remove(&mut self, name: &[u8]) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        self.forget_link_target(Some(name));
    }

    fn forget_link_target(&mut self, name: Option<&[u8]>) {
        let targets = self.link_targets.get_mut();
        match (targets.as_mut(), name) {
            (Some(targets), Some(name)) => {
                targets.remove(name);
            }
            // A new entry may be a symlink whose target the cached map lacks.
            (Some(_), None) => *targets = None,
            (None, _) => {}
        }
    }
}

/// A change this mount made to a directory.
#[derive(Debug, Clone)]
pub enum Change {
    /// A file or directory now has this entry (created, written, renamed here).
    Upsert(Entry),
    /// This name is gone (deleted, or renamed away).
    Remove(Vec<u8>),
}

#[derive(Default)]
struct SlotState {
    listing: Option<Arc<DirListing>>,
    /// The slot's change count that `listing` reflects: a change recorded while someone
    /// else held the lock could not be patched in, and makes the listing stale.
    generation: u64,
    /// The last timeout; see [`FAILURE_MEMORY`](crate::fs::failure::FAILURE_MEMORY).
    failure: RecentFailure,
}

impl RemembersFailure for SlotState {
    fn recent_failure(&mut self) -> &mut RecentFailure {
        &mut self.failure
    }
}

/// One directory's cache entry.
#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
    /// Changes this mount made to the directory: a listing fetched while it moved may
    /// predate one of them.
    changes: AtomicU64,
    /// The changes recorded while a listing was on its way, with their numbers: applied
    /// to it when it arrives, so that it is never older than what this mount did.
    /// (Background uploads land while directories are listed.)
    during_listing: std::sync::Mutex<Vec<(u64, Change)>>,
}

/// Applies to `listing` the kept changes numbered after `since` up to `now`, if every
/// one of them was kept; returns whether it did.
fn apply_kept(listing: &mut Arc<DirListing>, kept: &[(u64, Change)], since: u64, now: u64) -> bool {
    let missing: Vec<&Change> = kept
        .iter()
        .filter(|(n, _)| *n > since && *n <= now)
        .map(|(_, change)| change)
        .collect();
    if missing.len() as u64 != now - since {
        return false;
    }
    let listing = Arc::make_mut(listing);
    for change in missing {
        listing.apply(change.clone());
    }
    true
}

/// Changes kept for a listing on its way; past this, it is fetched again instead.
const MAX_CHANGES_DURING_LISTING: usize = 4096;

/// Connections that listing ahead leaves free, so that what the user asks for now never
/// waits behind a guess.
const CONNECTIONS_RESERVED_FROM_PREFETCH: usize = 1;

/// Listed names kept at most, over all directories: about 200 bytes each, so some 50 MB.
/// A walk of a larger tree (`find`, `du`) keeps the most recent listings; the older ones
/// are fetched again if asked for after their turn.
pub const MAX_CACHED_ENTRIES: usize = 250_000;

/// Directories tracked before expired and unused ones are dropped, at least.
const MIN_PRUNE_AT: usize = 1024;

/// How often a listing is fetched again because this mount changed the directory while
/// it was on its way; after that, the last one is returned without being kept.
const LISTING_ATTEMPTS: usize = 2;

/// Files whose exact modification time this mount knows (it set or uploaded them), at
/// most: about 6 MiB. Enough for the files a long rsync or tar run wrote.
const KNOWN_TIMES: usize = 65_536;

/// The exact times of files this mount set, for listings that give less.
///
/// vsftpd has no MLSD, and its LIST gives times to the minute, or to the day for files
/// older than six months. A file whose time this mount set (`rsync -a`, `cp -p`,
/// `touch -d`) would show a rounded time once its listing is fetched again, and rsync
/// would copy it again on its next run. A LIST time that is the known time rounded, for
/// a file of the known size, is taken for that time.
struct KnownTimes(Mutex<lru::LruCache<Vec<u8>, KnownTime>>);

/// A file's size and exact modification time, as this mount last set them.
type KnownTime = (Option<u64>, Timestamp);

impl KnownTimes {
    fn new() -> Self {
        let capacity = std::num::NonZeroUsize::new(KNOWN_TIMES).expect("non-zero");
        Self(Mutex::new(lru::LruCache::new(capacity)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Vec<u8>, KnownTime>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `entry`'s time if it is exact, and forgets a stale one otherwise.
    fn learn(&self, dir: &[u8], entry: &Entry) {
        let path = join_path(dir, &entry.name);
        match entry.modified {
            Some(time) if time.precision == TimePrecision::Second => {
                self.lock().put(path, (entry.size, time));
            }
            _ => {
                self.lock().pop(&path);
            }
        }
    }

    fn forget(&self, dir: &[u8], name: &[u8]) {
        self.lock().pop(&join_path(dir, name));
    }

    /// Gives the entries of a coarse listing of `dir` the exact times they match.
    fn refine(&self, dir: &[u8], entries: &mut [Entry]) {
        let mut known = self.lock();
        if known.is_empty() {
            return;
        }
        for entry in entries {
            let Some(listed) = entry.modified else {
                continue;
            };
            let unit = match listed.precision {
                TimePrecision::Second => continue,
                TimePrecision::Minute => 60,
                TimePrecision::Day => 86_400,
            };
            let Some(&(size, exact)) = known.get(&join_path(dir, &entry.name)) else {
                continue;
            };
            let rounded = exact.unix_seconds - exact.unix_seconds.rem_euclid(unit);
            if size == entry.size && rounded == listed.unix_seconds {
                entry.modified = Some(exact);
            }
        }
    }
}

/// Directory listings with a time to live; concurrent requests for one directory share
/// one listing command.
pub struct DirCache {
    ttl: Duration,
    slots: Mutex<HashMap<Vec<u8>, Arc<Slot>>>,
    /// Entries in the listings stored since the last prune (an upper bound of those held).
    stored_entries: AtomicUsize,
    /// Slot count at which the next prune runs.
    prune_at: AtomicUsize,
    listings: AtomicU64,
    /// Subdirectories listed ahead per opened directory (0: none).
    prefetch_children: usize,
    /// Whether old temporary files of earlier mounts are deleted (not on a read-only mount).
    sweep_leftovers: bool,
    /// Longest a listing ahead may take.
    prefetch_limit: Duration,
    known_times: KnownTimes,
}

impl DirCache {
    /// A cache whose listings are trusted for `ttl`; opening a directory lists up to
    /// `prefetch_children` of its subdirectories ahead, on spare connections, each within
    /// `prefetch_limit`. With `sweep_leftovers`, ftpsfs's own old temporary files are
    /// deleted as they are seen.
    pub fn new(
        ttl: Duration,
        prefetch_children: usize,
        prefetch_limit: Duration,
        sweep_leftovers: bool,
    ) -> Self {
        Self {
            ttl,
            slots: Mutex::new(HashMap::new()),
            stored_entries: AtomicUsize::new(0),
            prune_at: AtomicUsize::new(MIN_PRUNE_AT),
            listings: AtomicU64::new(0),
            prefetch_children,
            prefetch_limit,
            sweep_leftovers,
            known_times: KnownTimes::new(),
        }
    }

    /// A listing of `path` as fetched: exact times put back where this mount knows them.
    fn listing(&self, path: &[u8], mut entries: Vec<Entry>) -> Arc<DirListing> {
        self.known_times.refine(path, &mut entries);
        Arc::new(DirListing::new(entries))
    }

    /// Listing commands sent so far.
    pub fn listings_fetched(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    fn slot(&self, path: &[u8]) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_vec())
            .or_default()
            .clone()
    }

    /// Applies to the cached listing the changes recorded while someone read it (the
    /// lock was held, so they were only kept), when every one of them was kept: it then
    /// holds every change again, without a listing. (Background uploads land while
    /// `ls` and `rsync` look names up.)
    fn catch_up(slot: &Slot, state: &mut SlotState) {
        let now = slot.changes.load(Ordering::SeqCst);
        if state.generation == now || state.listing.is_none() {
            return;
        }
        let mut during = slot
            .during_listing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let since = state.generation;
        if let Some(listing) = state.listing.as_mut() {
            if apply_kept(listing, &during, since, now) {
                state.generation = now;
                during.retain(|(n, _)| *n > now);
            }
        }
    }

    /// The cached listing if it is young enough and holds every change this mount made.
    fn fresh(&self, slot: &Slot, state: &SlotState) -> Option<Arc<DirListing>> {
        let listing = state.listing.as_ref()?;
        let complete = state.generation == slot.changes.load(Ordering::SeqCst);
        (complete && listing.fetched.elapsed() < self.ttl).then(|| listing.clone())
    }

    /// The listing of `path`, from the cache while fresh, else from the server.
    pub async fn get(&self, pool: &Pool, path: &[u8]) -> Result<Arc<DirListing>, FsError> {
        let slot = self.slot(path);
        // Holding the slot's lock while listing makes concurrent callers wait for this
        // one listing instead of sending their own.
        let mut cached = slot.state.lock().await;
        Self::catch_up(&slot, &mut cached);
        if let Some(listing) = self.fresh(&slot, &cached) {
            return Ok(listing);
        }
        if let Some(error) = cached.failure.replay("listing") {
            return Err(error);
        }
        let mut attempt = Attempt::new(cached);
        let mut result;
        let mut attempts = 0;
        loop {
            attempts += 1;
            // What was kept before belongs to no listing now on its way.
            slot.during_listing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let changes_before = slot.changes.load(Ordering::SeqCst);
            result = crate::with_connection!(pool, |conn| conn.list(path).await)
                .await
                .map(|listing| self.listing(path, listing.entries))
                .map_err(FsError::from);
            if result.is_ok() {
                self.listings.fetch_add(1, Ordering::Relaxed);
            }
            let changes_after = slot.changes.load(Ordering::SeqCst);
            let mut changed = changes_after != changes_before;
            if changed {
                if let Ok(listing) = &mut result {
                    // Every change made meanwhile was kept (the lock is held): the
                    // listing with them applied is as new as this mount's own view.
                    let during = std::mem::take(
                        &mut *slot
                            .during_listing
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                    changed = !apply_kept(listing, &during, changes_before, changes_after);
                }
            }
            if !changed {
                attempt.state.listing = result.as_ref().ok().cloned();
                attempt.state.generation = changes_after;
                if let Ok(listing) = &result {
                    self.stored(listing);
                }
                break;
            }
            // This mount changed the directory while the listing was on its way: it
            // may predate the change, so it is not kept.
            attempt.state.listing = None;
            if attempts >= LISTING_ATTEMPTS || result.is_err() {
                break;
            }
        }
        attempt.finish(&result);
        drop(attempt);
        drop(slot);
        let listing = result?;
        self.sweep(pool, path, &listing);
        self.prune_if_due();
        Ok(listing)
    }

    /// Counts a listing stored in the cache.
    fn stored(&self, listing: &DirListing) {
        self.stored_entries
            .fetch_add(listing.entries.len(), Ordering::Relaxed);
    }

    /// Prunes when the listings stored may exceed [`MAX_CACHED_ENTRIES`] or the tracked
    /// directories have doubled since the last prune.
    fn prune_if_due(&self) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).len();
        if self.stored_entries.load(Ordering::Relaxed) > MAX_CACHED_ENTRIES
            || slots >= self.prune_at.load(Ordering::Relaxed)
        {
            self.prune();
        }
    }

    /// Drops the directories nobody is using whose listing expired (or that have none),
    /// then the oldest listings until at most [`MAX_CACHED_ENTRIES`] names are held. A
    /// slot in use (locked, or held by a caller) stays.
    fn prune(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: Vec<(Instant, usize, Vec<u8>)> = Vec::new();
        slots.retain(|path, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            let Ok(state) = slot.state.try_lock() else {
                return true;
            };
            match &state.listing {
                Some(listing) if listing.fetched.elapsed() < self.ttl => {
                    kept.push((listing.fetched, listing.entries.len(), path.clone()));
                    true
                }
                // Expired, or never listed (a failure remembered, or a change recorded
                // for a directory not cached): nothing worth keeping.
                _ => !state.failure.is_recent(),
            }
        });
        let mut total: usize = kept.iter().map(|(_, entries, _)| entries).sum();
        if total > MAX_CACHED_ENTRIES {
            // Down to three quarters, so that a walk does not prune at every listing.
            let target = MAX_CACHED_ENTRIES / 4 * 3;
            kept.sort_unstable_by_key(|(fetched, _, _)| *fetched);
            for (_, entries, path) in kept {
                if total <= target {
                    break;
                }
                if let Some(slot) = slots.remove(&path) {
                    // Counted as a change: a listing on its way for it is not kept.
                    slot.changes.fetch_add(1, Ordering::SeqCst);
                }
                total -= entries;
            }
        }
        self.stored_entries.store(total, Ordering::Relaxed);
        self.prune_at
            .store(MIN_PRUNE_AT.max(2 * slots.len()), Ordering::Relaxed);
    }

    /// Directories tracked and names held in their listings (for tests and statistics).
    pub fn footprint(&self) -> (usize, usize) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let names = slots
            .values()
            .filter_map(|slot| {
                let state = slot.state.try_lock().ok()?;
                Some(state.listing.as_ref()?.entries.len())
            })
            .sum();
        (slots.len(), names)
    }

    /// Patches `change`, made by this mount, into the cached listing of `dir`; a listing
    /// on its way meanwhile is fetched again (see [`Self::get`]).
    pub fn record(&self, dir: &[u8], change: Change) {
        match &change {
            Change::Upsert(entry) => self.known_times.learn(dir, entry),
            Change::Remove(name) => self.known_times.forget(dir, name),
        }
        let slot = self.slot(dir);
        let generation = slot.changes.fetch_add(1, Ordering::SeqCst) + 1;
        // When the lock is held (a listing on its way, or a reader), the change is
        // counted, and kept for the listing on its way: a cached listing no longer
        // matches the count and is fetched again.
        let locked = slot.state.try_lock();
        match locked {
            Ok(mut state) => {
                if let Some(listing) = state.listing.as_mut() {
                    Arc::make_mut(listing).apply(change);
                }
                if state.generation + 1 == generation {
                    state.generation = generation;
                }
            }
            Err(_) => {
                let mut during = slot
                    .during_listing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if during.len() < MAX_CHANGES_DURING_LISTING {
                    during.push((generation, change));
                }
            }
        };
    }

    /// Takes the directory at `path`, which this mount just created, as listed now and
    /// empty (as fresh as any listing: for the cache's time to live).
    pub fn created_empty(&self, path: &[u8]) {
        let slot = self.slot(path);
        let Ok(mut state) = slot.state.try_lock() else {
            // Someone is listing it already.
            return;
        };
        state.listing = Some(self.listing(path, Vec::new()));
        state.generation = slot.changes.load(Ordering::SeqCst);
    }

    /// Shows the directory `dir` as modified at `when`: an entry was created, removed or
    /// renamed in it, which changes a directory's time on the server as on a local disk.
    /// Only its entry in a cached listing of its parent changes; a listing being fetched
    /// brings the server's own time anyway. The root has no entry.
    pub fn touch(&self, dir: &[u8], when: Timestamp) {
        if dir.is_empty() {
            return;
        }
        let (parent, name) = match dir.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&dir[..slash], &dir[slash + 1..]),
            None => (&b""[..], dir),
        };
        let slot = self.slot(parent);
        let Ok(mut state) = slot.state.try_lock() else {
            return;
        };
        if let Some(listing) = state.listing.as_mut() {
            let listing = Arc::make_mut(listing);
            if let Some(&i) = listing.index.get(name) {
                listing.entries[i].modified = Some(when);
            }
        }
    }

    /// Forgets `path` and every directory below it (a directory renamed or removed).
    pub fn forget_tree(&self, path: &[u8]) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|dir, slot| {
            let inside = dir == path
                || (dir.starts_with(path)
                    && (path.is_empty() || dir.get(path.len()) == Some(&b'/')));
            if inside {
                slot.changes.fetch_add(1, Ordering::SeqCst);
            }
            !inside
        });
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
        {
            // A busy slot is being listed by someone else: nothing to do.
            let Ok(cached) = slot.state.try_lock() else {
                return true;
            };
            if self.fresh(&slot, &cached).is_some() {
                return true;
            }
        }
        let mut conn = match pool.try_get_spare(CONNECTIONS_RESERVED_FROM_PREFETCH).await {
            Ok(Some(conn)) => conn,
            _ => return false,
        };
        // Listed without the slot's lock, and within a limit: a user's request for this
        // directory meanwhile sends its own listing rather than wait for a guess on a
        // slow server (a listing cut off by the limit retires its connection).
        let changes_before = slot.changes.load(Ordering::SeqCst);
        let listed = tokio::time::timeout(self.prefetch_limit, conn.list(path)).await;
        match listed {
            Ok(Ok(listing)) => {
                self.listings.fetch_add(1, Ordering::Relaxed);
                // Kept only if nothing newer came meanwhile: no change by this mount,
                // and no listing of a user's (one on its way holds the lock).
                if let Ok(mut cached) = slot.state.try_lock() {
                    if slot.changes.load(Ordering::SeqCst) == changes_before
                        && self.fresh(&slot, &cached).is_none()
                    {
                        let listing = self.listing(path, listing.entries);
                        self.sweep(pool, path, &listing);
                        self.stored(&listing);
                        cached.listing = Some(listing);
                        cached.generation = changes_before;
                    }
                }
                true
            }
            Ok(Err(e)) => {
                // Not the user's request: stay quiet and let a real one ask again.
                tracing::debug!(path = %path.escape_ascii(), "listing ahead failed: {e}");
                true
            }
            Err(_) => {
                tracing::debug!(path = %path.escape_ascii(), limit = ?self.prefetch_limit, "listing ahead took too long; given up");
                true
            }
        }
    }

    /// Deletes, in the background, the old temporary files a listing found.
    fn sweep(&self, pool: &Pool, path: &[u8], listing: &DirListing) {
        if !self.sweep_leftovers || listing.leftovers.is_empty() {
            return;
        }
        let names: Vec<(Vec<u8>, Entry)> = listing
            .leftovers
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect();
        let present: Vec<Vec<u8>> = listing.entries.iter().map(|e| e.name.clone()).collect();
        tokio::spawn(sweep::clean(pool.clone(), path.to_vec(), names, present));
    }

    /// The entry `name` of the cached listing of `dir`, without asking the server.
    pub fn cached_entry(&self, dir: &[u8], name: &[u8]) -> Option<Entry> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dir)?
            .clone();
        let state = slot.state.try_lock().ok()?;
        state.listing.as_ref()?.get(name).cloned()
    }

    /// Forgets the listing of `path`, so the next request asks the server.
    pub fn invalidate(&self, path: &[u8]) {
        let slot = self.slot(path);
        slot.changes.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cached) = slot.state.try_lock() {
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
        let mut known = listing.link_targets.lock().await;
        if let Some(targets) = known.as_ref() {
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
        *known = Some(targets);
        target.ok_or(FsError::NoLinkTarget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::listing::{TimePrecision, Timestamp};

    fn file(name: &str, size: u64) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::File,
            size: Some(size),
            modified: Some(Timestamp {
                unix_seconds: 0,
                nanos: 0,
                precision: TimePrecision::Second,
            }),
            mode: None,
            link_target: None,
        }
    }

    #[test]
    fn temporary_files_are_hidden_and_kept_apart() {
        let temp = String::from_utf8(crate::fs::meta::names::temp_name(b"a")).unwrap();
        let listing = DirListing::new(vec![file("a", 1), file(&temp, 2)]);
        assert_eq!(listing.entries.len(), 1);
        assert!(listing.get(temp.as_bytes()).is_none());
        assert_eq!(listing.leftovers.len(), 1);
    }

    #[test]
    fn exact_times_this_mount_set_survive_a_coarse_listing() {
        let cache = DirCache::new(Duration::from_secs(60), 0, Duration::from_secs(10), false);
        let exact = |seconds| Timestamp {
            unix_seconds: seconds,
            nanos: 0,
            precision: TimePrecision::Second,
        };
        let mut set = file("a", 5);
        set.modified = Some(exact(1_557_126_489)); // 2019-05-06 07:08:09
        cache.record(b"dir", Change::Upsert(set));
        let listed = |name: &str, size, seconds, precision| Entry {
            modified: Some(Timestamp {
                unix_seconds: seconds,
                nanos: 0,
                precision,
            }),
            ..file(name, size)
        };
        let mut entries = vec![
            // vsftpd's "May  6  2019": the day.
            listed("a", 5, 1_557_100_800, TimePrecision::Day),
        ];
        cache.known_times.refine(b"dir", &mut entries);
        assert_eq!(entries[0].modified, Some(exact(1_557_126_489)));
        // Another size, another day, or another directory: the listing stands.
        for (dir, size, seconds) in [
            (&b"dir"[..], 6, 1_557_100_800),
            (b"dir", 5, 1_557_187_200),
            (b"other", 5, 1_557_100_800),
        ] {
            let mut entries = vec![listed("a", size, seconds, TimePrecision::Day)];
            cache.known_times.refine(dir, &mut entries);
            assert_eq!(entries[0].modified.unwrap().precision, TimePrecision::Day);
        }
        cache.record(b"dir", Change::Remove(b"a".to_vec()));
        let mut entries = vec![listed("a", 5, 1_557_100_800, TimePrecision::Day)];
        cache.known_times.refine(b"dir", &mut entries);
        assert_eq!(entries[0].modified.unwrap().precision, TimePrecision::Day);
    }

    #[test]
    fn changes_patch_the_listing() {
        let mut listing = DirListing::new(vec![file("a", 1), file("b", 2), file("c", 3)]);
        listing.upsert(file("b", 20));
        listing.upsert(file("d", 4));
        listing.remove(b"a");
        listing.remove(b"missing");
        let names: Vec<&[u8]> = listing.entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(listing.get(b"b").and_then(|e| e.size), Some(20));
        assert_eq!(listing.get(b"d").and_then(|e| e.size), Some(4));
        assert!(listing.get(b"a").is_none());
        for (i, entry) in listing.entries.iter().enumerate() {
            assert_eq!(listing.index[&entry.name], i);
        }
    }

    #[test]
    fn a_change_recorded_while_a_reader_holds_the_lock_makes_the_listing_stale() {
        let cache = DirCache::new(Duration::from_secs(60), 0, Duration::from_secs(10), false);
        let slot = cache.slot(b"dir");
        slot.state.try_lock().unwrap().listing =
            Some(Arc::new(DirListing::new(vec![file("a", 1)])));
        let fresh = |cache: &DirCache| cache.fresh(&slot, &slot.state.try_lock().unwrap());
        assert!(fresh(&cache).is_some());
        // Patched in when the lock is free: still fresh, and it has the change.
        cache.record(b"dir", Change::Upsert(file("b", 2)));
        assert!(fresh(&cache).unwrap().get(b"b").is_some());
        // A reader holds the lock: the change cannot be patched in, so the listing that
        // lacks it must not be served any more.
        let reader = slot.state.try_lock().unwrap();
        cache.record(b"dir", Change::Upsert(file("c", 3)));
        drop(reader);
        assert!(fresh(&cache).is_none());
        cache.invalidate(b"dir");
        assert!(fresh(&cache).is_none());
    }
}
