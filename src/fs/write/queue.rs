//! The write-back queue (`-o writeback`): what is queued, what failed, and the room left.
//!
//! The queue knows items by their journal number; the file each belongs to keeps the
//! number in its write state. Uploading is the filesystem's (`ops/writeback.rs`): this
//! holds the bookkeeping that `ftpsfs stats`, back-pressure and the drain at unmount read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::fs::write::journal::{Damaged, Journal};

/// Queued items `ftpsfs stats` lists besides the failed ones.
pub const ITEMS_SHOWN: usize = 20;

/// Settings of the write-back mode.
#[derive(Debug, Clone)]
pub struct WritebackConfig {
    /// Where journals go (one directory per server and user below it).
    pub dir: PathBuf,
    /// Longest wait for the queue at unmount.
    pub drain: Duration,
    /// Most bytes queued before closes wait for uploads.
    pub max_bytes: u64,
    /// Uploads at once.
    pub uploads: usize,
}

/// One queued file, as the queue sees it.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The file's inode.
    pub ino: u64,
    /// Where it goes on the server.
    pub path: Vec<u8>,
    /// Bytes.
    pub size: u64,
    /// When it was queued.
    pub since: SystemTime,
    /// The server's version it replaces (None: a new file).
    pub base: Option<crate::fs::write::journal::Base>,
    /// Its journal record, as written.
    pub record: crate::fs::write::journal::Item,
    /// The last failure: transient ones are retried; with `stopped`, it failed for good.
    pub error: Option<String>,
    /// Failed for good (the server refused): waits for a retry asked by hand.
    pub stopped: bool,
}

/// What `ftpsfs stats` shows of the queue.
#[derive(Debug, Clone, Default)]
pub struct QueueReport {
    /// Items waiting or uploading.
    pub queued: u64,
    /// Their bytes.
    pub queued_bytes: u64,
    /// Items landed since the mount.
    pub landed: u64,
    /// Items landed beside a file another client changed.
    pub conflicts: u64,
    /// The oldest items (at most [`ITEMS_SHOWN`]), then every failed one: path, size,
    /// age, last error, and whether it is stopped (refused by the server).
    pub items: Vec<(String, u64, Duration, Option<String>, bool)>,
    /// Journal entries found damaged at mount (kept, never uploaded).
    pub damaged: Vec<String>,
}

/// The queue of one mount.
pub struct Queue {
    /// The journal that makes queued items survive a crash.
    pub journal: Journal,
    /// The settings.
    pub config: WritebackConfig,
    /// This mount's number, in the temporary names of its uploads (see
    /// `item_temp_name`).
    pub mount: u32,
    items: Mutex<BTreeMap<u64, Queued>>,
    damaged: Mutex<Vec<Damaged>>,
    landed: AtomicU64,
    conflicts: AtomicU64,
    /// Told whenever an item leaves or fails for good.
    changed: Notify,
    /// How long a close waits for a full queue that does not shrink (see
    /// [`Self::wait_for_room`]).
    stall: Duration,
}

/// How long a close waits for a full queue that does not shrink before it goes over the
/// cap: the server has taken nothing for that long (down, or refusing everything), and a
/// close that waited on would freeze the program. Its data is safe on local disk either
/// way; the cap bounds what is queued while the server takes uploads.
const STALL: Duration = Duration::from_secs(30);

impl Queue {
    /// A queue journaling in `journal`.
    pub fn new(journal: Journal, config: WritebackConfig) -> Self {
        Self {
            journal,
            config,
            mount: crate::fs::meta::names::unique() as u32,
            items: Mutex::new(BTreeMap::new()),
            damaged: Mutex::new(Vec::new()),
            landed: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            changed: Notify::new(),
            stall: STALL,
        }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Queued>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A number no item of this journal had: time-ordered, so that the journal's files
    /// sort as they were queued.
    pub fn next_id(&self) -> u64 {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = LAST.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Counts `item` in.
    pub fn add(&self, id: u64, item: Queued) {
        self.items().insert(id, item);
    }

    /// Counts item `id` out: `landed` when it reached the server.
    pub fn remove(&self, id: u64, landed: bool) {
        if self.items().remove(&id).is_some() && landed {
            self.landed.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Notes an item that landed beside another client's change.
    pub fn note_conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a failure of item `id`; `stopped` when it is not retried by itself.
    pub fn note_failure(&self, id: u64, error: String, stopped: bool) {
        if let Some(item) = self.items().get_mut(&id) {
            item.error = Some(error);
            item.stopped = stopped;
        }
        self.changed.notify_waiters();
    }

    /// Changes the record of item `id` (kept by the caller in the journal too).
    pub fn update_record(
        &self,
        id: u64,
        change: impl FnOnce(&mut crate::fs::write::journal::Item),
    ) -> Option<crate::fs::write::journal::Item> {
        let mut items = self.items();
        let item = items.get_mut(&id)?;
        change(&mut item.record);
        item.path = item.record.path.clone();
        item.base = item.record.base;
        Some(item.record.clone())
    }

    /// Clears a stop, before a retry asked by hand.
    pub fn note_retry(&self, id: u64) {
        if let Some(item) = self.items().get_mut(&id) {
            item.stopped = false;
        }
    }

    /// The item `id`, if queued.
    pub fn get(&self, id: u64) -> Option<Queued> {
        self.items().get(&id).cloned()
    }

    /// Every queued item, oldest first.
    pub fn all(&self) -> Vec<(u64, Queued)> {
        self.items()
            .iter()
            .map(|(id, item)| (*id, item.clone()))
            .collect()
    }

    /// Remembers journal entries found damaged.
    pub fn note_damaged(&self, damaged: Vec<Damaged>) {
        self.damaged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(damaged);
    }

    /// Items still to land (not stopped) and their bytes.
    pub fn pending(&self) -> (usize, u64) {
        self.pending_besides(None)
    }

    /// [`Self::pending`] without item `except`.
    fn pending_besides(&self, except: Option<u64>) -> (usize, u64) {
        let items = self.items();
        let pending = items
            .iter()
            .filter(|(id, item)| !item.stopped && Some(**id) != except)
            .map(|(_, item)| item);
        pending.fold((0, 0), |(n, bytes), item| (n + 1, bytes + item.size))
    }

    /// Waits until `size` more bytes fit under the cap and the journal's disk keeps the
    /// disk cache's free space (or nothing else is queued: one file larger than the cap
    /// still goes). While the queue shrinks the wait goes on;
    /// once nothing has left it for [`STALL`], the file goes over the cap (logged), so
    /// that a server that is down never freezes a close. The item the new one replaces
    /// (`replacing`, the file's own, which leaves as it comes) does not count: its
    /// upload cannot free the room while the file's close holds the file.
    pub async fn wait_for_room(&self, size: u64, replacing: Option<u64>) {
        let mut smallest = u64::MAX;
        let mut deadline = tokio::time::Instant::now() + self.stall;
        loop {
            let changed = self.changed.notified();
            let (count, bytes) = self.pending_besides(replacing);
            let low_disk = crate::fs::cache::disk::too_little_free_space(self.journal.dir());
            if has_room(count, bytes, size, self.config.max_bytes, low_disk) {
                return;
            }
            let now = tokio::time::Instant::now();
            if bytes < smallest {
                smallest = bytes;
                deadline = now + self.stall;
            }
            if now >= deadline {
                tracing::warn!(
                    queued = bytes,
                    cap = self.config.max_bytes,
                    "write-back queue over writeback_size: nothing reached the server for {}s, so this close does not wait (its data is on local disk)",
                    self.stall.as_secs()
                );
                return;
            }
            tracing::debug!(
                bytes,
                size,
                low_disk,
                "write-back queue full: waiting for uploads"
            );
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }

    /// Waits until every item not stopped has left, or `limit`; returns how many are left.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        let mut next_log = tokio::time::Instant::now();
        loop {
            let changed = self.changed.notified();
            let (count, bytes) = self.pending();
            if count == 0 {
                return 0;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return count;
            }
            if now >= next_log {
                tracing::info!(
                    files = count,
                    bytes,
                    "waiting for the write-back queue to reach the server"
                );
                next_log = now + Duration::from_secs(5);
            }
            let _ = tokio::time::timeout_at(deadline.min(next_log), changed).await;
        }
    }

    /// What `ftpsfs stats` shows.
    pub fn report(&self) -> QueueReport {
        let items = self.items();
        let now = SystemTime::now();
        QueueReport {
            queued: items.len() as u64,
            queued_bytes: items.values().map(|item| item.size).sum(),
            landed: self.landed.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            items: items
                .values()
                .enumerate()
                .filter(|(n, item)| *n < ITEMS_SHOWN || item.error.is_some())
                .map(|(_, item)| {
                    (
                        crate::fs::meta::names::shown(&item.path).to_string(),
                        item.size,
                        now.duration_since(item.since).unwrap_or_default(),
                        item.error.clone(),
                        item.stopped,
                    )
                })
                .collect(),
            damaged: self
                .damaged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|d| format!("{}: {}", d.file.display(), d.why))
                .collect(),
        }
    }
}

/// Whether a close of `size` bytes may queue now: `count` items of `bytes` are queued,
/// the cap is `max`, and `low_disk` says the journal's disk is below its free space.
fn has_room(count: usize, bytes: u64, size: u64, max: u64, low_disk: bool) -> bool {
    count == 0 || (bytes + size <= max && !low_disk)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_cap_or_a_low_disk_holds_closes_unless_nothing_is_queued() {
        assert!(
            super::has_room(0, 0, 5 << 30, 1 << 30, true),
            "nothing queued: it goes"
        );
        assert!(super::has_room(3, 100, 100, 1_000, false));
        assert!(!super::has_room(3, 900, 200, 1_000, false), "over the cap");
        assert!(
            !super::has_room(3, 100, 100, 1_000, true),
            "the disk is low"
        );
    }

    use super::*;

    fn queue(max_bytes: u64) -> Queue {
        let dir = std::env::temp_dir().join(format!(
            "ftpsfs-queue-{}-{}",
            std::process::id(),
            crate::fs::meta::names::unique()
        ));
        Queue::new(
            Journal::open(dir.clone()).unwrap(),
            WritebackConfig {
                dir,
                drain: Duration::from_secs(1),
                max_bytes,
                uploads: 2,
            },
        )
    }

    fn item(size: u64) -> Queued {
        Queued {
            ino: 5,
            path: b"/f".to_vec(),
            size,
            since: SystemTime::now(),
            base: None,
            record: crate::fs::write::journal::Item {
                id: 1,
                path: b"/f".to_vec(),
                base: None,
                size,
                data_crc: 0,
                mtime: None,
                mode: None,
                queued_at: 0,
                failed: None,
                tries: Vec::new(),
            },
            error: None,
            stopped: false,
        }
    }

    #[tokio::test]
    async fn a_full_queue_waits_until_an_upload_leaves() {
        let small = queue(10);
        let queue = std::sync::Arc::new(queue(100));
        queue.add(1, item(80));
        // One file larger than the cap goes when nothing else is queued.
        tokio::time::timeout(Duration::from_secs(1), small.wait_for_room(1000, None))
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.wait_for_room(30, None).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "80 + 30 bytes do not fit in 100");
        queue.remove(1, true);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(queue.report().landed, 1);
    }

    #[tokio::test]
    async fn the_item_a_close_replaces_leaves_room_for_it() {
        let queue = queue(100);
        queue.add(1, item(80));
        // The file's own queued item is replaced by its new content: no wait for it.
        tokio::time::timeout(Duration::from_millis(200), queue.wait_for_room(80, Some(1)))
            .await
            .expect("a close waited for the item it replaces");
        queue.add(2, item(15));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), queue.wait_for_room(90, Some(1)))
                .await
                .is_err(),
            "another file's item still counts"
        );
    }

    #[tokio::test]
    async fn a_full_queue_that_does_not_shrink_stops_holding_closes() {
        let mut stalled = queue(100);
        stalled.stall = Duration::from_millis(300);
        let queue = std::sync::Arc::new(stalled);
        queue.add(1, item(80));
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), queue.wait_for_room(30, None))
            .await
            .expect("a close waited on a queue the server takes nothing from");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "went over the cap before the stall: {:?}",
            started.elapsed()
        );
        // Progress keeps the wait going: an item that leaves resets the stall.
        queue.add(2, item(15));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.wait_for_room(30, None).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        queue.remove(2, true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "the stall was not reset by progress"
        );
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_drain_ends_when_the_rest_is_stopped_or_time_is_up() {
        let queue = queue(100);
        queue.add(1, item(10));
        queue.add(2, item(10));
        assert_eq!(queue.drain(Duration::from_millis(50)).await, 2);
        queue.note_failure(1, "553 Could not create file.".into(), true);
        queue.remove(2, true);
        assert_eq!(queue.drain(Duration::from_secs(5)).await, 0);
        let report = queue.report();
        assert_eq!((report.queued, report.landed), (1, 1));
        assert_eq!(report.items.len(), 1);
        assert!(report.items[0].4, "stopped");
    }

    #[test]
    fn item_numbers_only_grow() {
        let queue = queue(1);
        let first = queue.next_id();
        assert!(queue.next_id() > first);
    }
}
