//! Write-back (`-o writeback`): a close makes the file's content durable in the journal
//! and queues its upload; uploads run in the background, several at once, and land as
//! every upload does (temporary name, size check, rename), unless another client changed
//! the file meanwhile: then ours lands beside it (see [`conflict_name`]).
//!
//! A queued file keeps its write state until its upload lands, so `stat`, `ls` and
//! `read` show the local content. An upload that fails for a passing reason (server
//! down, connection lost, timeout) is retried with back-off for as long as the mount
//! lives, and after a remount; one the server refuses (permission, quota, a name it will
//! not take) stops, stays in the journal, and answers `fsync()` and later opens for
//! writing with its error, until a retry asked by hand or an fsync lands it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::ftp::listing::TimePrecision;
use crate::ftp::StoredVersion;

use crate::fs::cache::version::FileVersion;
use crate::fs::error::FsError;
use crate::fs::meta::inode::ROOT_INODE;
use crate::fs::meta::names::shown;
use crate::fs::write::file::{Content, WriteFile, WriteState};
use crate::fs::write::journal::{self, Base, Item};
use crate::fs::write::queue::{Queue, Queued};
use crate::fs::write::staging::Staging;
use crate::fs::FtpFs;

/// First wait before retrying an upload that failed for a passing reason; it doubles up
/// to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a queued item waits before its upload starts, for what follows its close.
const SETTLE: Duration = Duration::from_millis(200);
/// Longest wait between retries: a server back after an outage is used within a minute.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Whether the server, rather than the moment, refused: retrying will not help until
/// someone changes something (permissions, quota, the name).
fn refused_for_good(error: &FsError) -> bool {
    match error {
        FsError::PermissionDenied(_)
        | FsError::NotPermitted(_)
        | FsError::NameTooLong
        | FsError::InvalidName(_)
        | FsError::ReadOnly
        | FsError::Staging(_)
        | FsError::NotADirectory
        | FsError::IsADirectory => true,
        // 452 and 552: no room (quota, disk full) until someone makes some.
        FsError::Remote(e) => matches!(
            &**e,
            crate::ftp::FtpError::Rejected { reply, .. } if reply.code >= 500 || reply.code == 452
        ),
        _ => false,
    }
}

/// `NAME.conflict-HOST-YYYYMMDD-HHMMSS` (UTC): where a queued file lands when another
/// client changed the file meanwhile. The host tells whose it is; the time, when.
pub fn conflict_name(name: &[u8], host: &str, when: SystemTime) -> Vec<u8> {
    let seconds = crate::fs::write::upload::unix_seconds(when);
    let stamp = crate::ftp::listing::format_time_val(seconds).unwrap_or_default();
    let (date, time) = stamp.split_at(stamp.len().min(8));
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut out = name.to_vec();
    out.extend_from_slice(format!(".conflict-{host}-{date}-{time}").as_bytes());
    out
}

/// Whether the server's file at a queued item's path, `now` (None: there is none), is
/// another client's change: it is not the version the item replaces (its base: no file
/// at all for a new file) and not the item itself (landed before a crash kept its
/// record). Sizes and times are compared as far as the server tells them.
pub(in crate::fs) fn changed_by_another(item: &Item, now: Option<&StoredVersion>) -> bool {
    let Some(now) = now else {
        // Deleted meanwhile (or never there): ours lands as a new file, nothing is lost.
        return false;
    };
    let seconds = now.modified.map(|t| t.unix_seconds);
    let already_ours = now.size == Some(item.size)
        && matches!((item.mtime, seconds), (Some((ours, _)), Some(now)) if ours == now);
    if already_ours {
        return false;
    }
    let Some(base) = &item.base else {
        return true;
    };
    let same_size = now.size.is_none_or(|size| size == base.size);
    let same_time = match (base.mtime, seconds) {
        (Some((then, _)), Some(now)) => then == now,
        _ => true,
    };
    !(same_size && same_time)
}

/// This machine's name, for conflict names.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Seconds and nanoseconds since 1970, as journal records hold times.
fn split_time(time: SystemTime) -> (i64, u32) {
    let stamp = crate::fs::write::file::timestamp(time);
    (stamp.unix_seconds, stamp.nanos)
}

fn join_time((seconds, nanos): (i64, u32)) -> SystemTime {
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(seconds as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

impl FtpFs {
    /// The write-back queue, with `-o writeback`.
    pub(in crate::fs) fn queue(&self) -> Option<&Arc<Queue>> {
        self.queue.as_ref()
    }

    /// Makes the file's content durable in the journal and queues its upload: the
    /// close of a file under write-back. Replaces an item queued before for the file.
    pub(in crate::fs) async fn queue_write(
        &self,
        file: &WriteFile,
        state: &mut WriteState,
    ) -> Result<(), FsError> {
        let Some(queue) = self.queue() else {
            return Ok(());
        };
        if state.discarded {
            return Ok(());
        }
        let node = self.node(file.ino)?;
        let parent = self.node(node.parent)?;
        let size = state.size;
        queue.wait_for_room(size, state.queued).await;
        // An upload following the writes is this item's first try, under its number.
        if state.follower.as_ref().is_some_and(|f| f.is_complete()) {
            // It was an earlier item's.
            state.follower = None;
        }
        let id = state
            .follower
            .as_ref()
            .map_or_else(|| queue.next_id(), |f| f.id);
        let followed = state.follower.is_some();
        let staging = self.staged(file.ino, state).await?;
        let data = queue.journal.data_path(id);
        let persisted = staging
            .persist(&data)
            .and_then(|()| journal::data_checksum(&data));
        let (size, data_crc) = match persisted {
            Ok(checked) => checked,
            Err(e) => {
                let _ = std::fs::remove_file(&data);
                return Err(e.into());
            }
        };
        // The time is always sent: the server's then equals what `stat` showed, and is
        // exact for the next item's conflict check.
        let mtime = state.set_mtime.unwrap_or(state.changed_at);
        let base = match (&state.base, state.on_server) {
            (Some(base), true) => {
                // A time from a listing in minutes (LIST) cannot be compared to the second.
                let exact = self
                    .dirs
                    .cached_entry(&parent.path, node.name())
                    .and_then(|e| e.modified)
                    .is_some_and(|t| t.precision == TimePrecision::Second);
                Some(Base {
                    size: base.size,
                    mtime: (exact && base.mtime != (0, 0)).then_some(base.mtime),
                })
            }
            _ => None,
        };
        let item = Item {
            id,
            path: node.path.to_vec(),
            base,
            size,
            data_crc,
            mtime: Some(split_time(mtime)),
            mode: state.set_mode,
            queued_at: split_time(SystemTime::now()).0,
            failed: None,
            // A follower's upload is a try already: the next mount deletes what it left.
            tries: if followed {
                vec![queue.mount]
            } else {
                Vec::new()
            },
        };
        if let Err(e) = queue.journal.record(&item) {
            let _ = std::fs::remove_file(&data);
            return Err(e.into());
        }
        if let Some(old) = state.queued.replace(id) {
            self.drop_item(old);
        }
        if let Some(follower) = &state.follower {
            follower.complete(size);
        }
        state.set_mtime = Some(mtime);
        state.shares_queued = true;
        state.written = false;
        state.failure = None;
        file.publish(state);
        queue.add(
            id,
            Queued {
                ino: file.ino,
                path: item.path.clone(),
                size,
                since: SystemTime::now(),
                base: item.base,
                record: item.clone(),
                error: None,
                stopped: false,
            },
        );
        tracing::debug!(ino = file.ino, path = %shown(&node.path), size, id, "queued for upload");
        self.schedule_upload(id);
        Ok(())
    }

    /// Records a time or mode set on a queued file (folded into its upload) in its
    /// journal record, so that a crash does not lose them.
    pub(in crate::fs) fn record_queued_metadata(&self, state: &WriteState) {
        let (Some(queue), Some(id)) = (self.queue(), state.queued) else {
            return;
        };
        let mtime = state.set_mtime.map(split_time);
        let updated = queue.update_record(id, |item| {
            item.mtime = mtime.or(item.mtime);
            item.mode = state.set_mode.or(item.mode);
        });
        if let Some(item) = updated {
            if let Err(e) = queue.journal.record_soon(&item) {
                tracing::warn!(id, "cannot record a queued file's new time or mode: {e}");
            }
        }
    }

    /// Renames a file that exists only here (created, maybe queued, not landed) without
    /// the server: its upload goes to the new name instead, replacing `target` there
    /// (the server's entry, if any). rsync's `.name.XXXXXX` then `name` becomes one
    /// upload onto `name`. Returns false when the file is not such a file (the rename
    /// goes to the server).
    pub(in crate::fs) async fn fold_rename(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
        target: Option<&crate::ftp::listing::Entry>,
    ) -> Result<bool, FsError> {
        let Some(queue) = self.queue() else {
            return Ok(false);
        };
        let Some(file) = self.writer.file(ino) else {
            return Ok(false);
        };
        let mut state = file.state.lock().await;
        if state.on_server || state.discarded {
            return Ok(false);
        }
        let old = self.node(ino)?;
        let new_dir = self.node(new_parent)?.path.to_vec();
        let new_path = crate::fs::meta::inode::join_path(&new_dir, new_name);
        let replaced = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .existing_child(new_parent, new_name)
            .filter(|&r| r != ino);
        if let Some(replaced) = replaced {
            drop(state);
            self.discard_writes(replaced).await;
            state = file.state.lock().await;
            if state.on_server || state.discarded {
                return Ok(false);
            }
        }
        // What the upload replaces now: the server's file under the new name.
        let base = target.map(|entry| {
            let mtime = entry.modified.map_or((0, 0), |t| (t.unix_seconds, t.nanos));
            let exact = entry
                .modified
                .is_some_and(|t| t.precision == TimePrecision::Second);
            (
                Arc::new(FileVersion {
                    path: new_path.clone().into(),
                    size: entry.size.unwrap_or(0),
                    mtime,
                }),
                Base {
                    size: entry.size.unwrap_or(0),
                    mtime: (exact && mtime != (0, 0)).then_some(mtime),
                },
            )
        });
        if let Some(id) = state.queued {
            let journal_base = base.as_ref().map(|(_, b)| *b);
            let updated = queue.update_record(id, |item| {
                item.path = new_path.clone();
                item.base = journal_base;
            });
            if let Some(item) = updated {
                queue.journal.record_soon(&item)?;
            }
        }
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rename(ino, new_parent, new_name)
            .ok_or(FsError::NotFound)?;
        if let Some((version, _)) = base {
            state.base = Some(version);
            state.on_server = true;
        }
        state.base_reader = None;
        file.publish(&state);
        let now = crate::fs::write::file::timestamp(SystemTime::now());
        let old_dir = self
            .node(old.parent)
            .map(|n| n.path.to_vec())
            .unwrap_or_default();
        self.dirs.touch(&old_dir, now);
        self.dirs.touch(&new_dir, now);
        tracing::debug!(
            from = %shown(&old.path),
            to = %shown(&new_path),
            "renamed before its upload: the upload goes to the new name"
        );
        Ok(true)
    }

    /// Lands now the queued files below the directory `dir` (before it is renamed: their
    /// journal records name paths under the old name).
    pub(in crate::fs) async fn land_queued_under(&self, dir: &[u8]) -> Result<(), FsError> {
        let Some(queue) = self.queue() else {
            return Ok(());
        };
        let mut prefix = dir.to_vec();
        prefix.push(b'/');
        for (id, item) in queue.all() {
            if item.path.starts_with(&prefix) {
                self.land_queued(item.ino, id).await?;
            }
        }
        Ok(())
    }

    /// Hands the temporary names the tries of `item` for which `whose` holds (by mount
    /// number) may have left to the janitor.
    fn delete_temporaries_of(&self, item: &Item, whose: impl Fn(u32) -> bool) {
        let at = item.path.iter().rposition(|&b| b == b'/');
        let (dir, name) = match at {
            Some(at) => (&item.path[..at], &item.path[at + 1..]),
            None => (&b""[..], &item.path[..]),
        };
        for &mount in item.tries.iter().filter(|&&m| whose(m)) {
            let temporary = crate::fs::meta::names::item_temp_name(name, item.id, mount);
            self.janitor
                .delete(crate::fs::meta::inode::join_path(dir, &temporary));
        }
    }

    /// Removes item `id` from the journal and the queue, not landed (superseded or
    /// discarded).
    pub(in crate::fs) fn drop_item(&self, id: u64) {
        if let Some(queue) = self.queue() {
            if let Some(item) = queue.get(id) {
                // Its tries may have left temporary files; no try comes any more.
                self.delete_temporaries_of(&item.record, |_| true);
            }
            if let Err(e) = queue.journal.remove(id) {
                tracing::warn!(id, "cannot remove a write-back item from the journal: {e}");
            }
            queue.remove(id, false);
        }
    }

    /// Before a change to a queued file's staging file: gives it a copy of its own, so
    /// that the queued content stays as it was acknowledged.
    pub(in crate::fs) fn unshare_queued(&self, state: &mut WriteState) -> Result<(), FsError> {
        if !state.shares_queued {
            return Ok(());
        }
        // The queued item's upload, if one follows its writes, is of what stays queued;
        // the item is replaced at the next close.
        state.follower = None;
        if let Content::Staged(staging) = &state.content {
            state.content = Content::Staged(staging.duplicate(&self.config.staging_dir)?);
        }
        state.shares_queued = false;
        Ok(())
    }

    /// Makes queued item `id` the content of `file` again, and has it uploaded: the
    /// changes made since were never acknowledged (their writer was killed, or their
    /// close failed), and no close is left to queue them, while the item's upload may
    /// have been put off for them.
    pub(in crate::fs) fn restore_queued(
        &self,
        file: &WriteFile,
        state: &mut WriteState,
        id: u64,
    ) -> Result<(), FsError> {
        let Some(queue) = self.queue() else {
            return Ok(());
        };
        let staging = Staging::adopt(&queue.journal.data_path(id))?;
        state.size = staging.len();
        state.content = Content::Staged(staging);
        state.shares_queued = true;
        state.written = false;
        // An upload following the abandoned writes was of them.
        state.follower = None;
        file.publish(state);
        self.schedule_upload(id);
        Ok(())
    }

    /// Asks for item `id` to be uploaded by the background uploaders.
    fn schedule_upload(&self, id: u64) {
        let _ = self.upload_requests.send(id);
    }

    /// Starts the background uploaders of the write-back queue (with `-o writeback`).
    pub fn run_writeback(self: &Arc<Self>) {
        let Some(queue) = self.queue().cloned() else {
            return;
        };
        let Some(mut requests) = self
            .upload_receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let fs = Arc::downgrade(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(queue.config.uploads.max(1)));
        tokio::spawn(async move {
            while let Some(id) = requests.recv().await {
                let slots = slots.clone();
                let fs = fs.clone();
                tokio::spawn(async move {
                    let Some(since) = fs.upgrade().and_then(|fs| Some(fs.queue()?.get(id)?.since))
                    else {
                        return;
                    };
                    // A program's follow-up (rsync's utime, chmod and rename of its
                    // temporary file) comes within milliseconds: folded into the queued
                    // item, it costs no command at all.
                    let age = SystemTime::now().duration_since(since).unwrap_or_default();
                    tokio::time::sleep(SETTLE.saturating_sub(age)).await;
                    let Ok(slot) = slots.acquire_owned().await else {
                        return;
                    };
                    if let Some(fs) = fs.upgrade() {
                        fs.upload_in_background(id, slot).await;
                    }
                });
            }
        });
    }

    /// Uploads item `id` until it lands or the server refuses it for good; waits between
    /// tries without holding an upload slot.
    async fn upload_in_background(&self, id: u64, slot: tokio::sync::OwnedSemaphorePermit) {
        let Some(queue) = self.queue() else {
            return;
        };
        let mut slot = Some(slot);
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let Some(item) = queue.get(id) else {
                return;
            };
            if item.stopped {
                return;
            }
            if slot.is_none() {
                // Waited for a retry: take a slot again, fairly after the others.
                self.schedule_upload(id);
                return;
            }
            match self.land_queued(item.ino, id).await {
                Ok(()) => return,
                Err(e) if refused_for_good(&e) => {
                    tracing::warn!(
                        path = %shown(&item.path),
                        "the server refused the queued upload: {e}; it stays queued \
                         (`ftpsfs queue MOUNTPOINT --retry` once the cause is fixed)"
                    );
                    self.stop_item(id, &e);
                    return;
                }
                Err(e) => {
                    tracing::info!(
                        path = %shown(&item.path),
                        retry_in = ?delay,
                        "queued upload failed: {e}"
                    );
                    queue.note_failure(id, e.to_string(), false);
                    drop(slot.take());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Marks item `id` as refused for good: in the queue, in the journal (so a remount
    /// does not retry it blindly), and in its file's state (fsync and opens report it).
    fn stop_item(&self, id: u64, error: &FsError) {
        let Some(queue) = self.queue() else {
            return;
        };
        queue.note_failure(id, error.to_string(), true);
        if let Some(item) = queue.update_record(id, |item| item.failed = Some(error.to_string())) {
            if let Err(e) = queue.journal.record(&item) {
                tracing::warn!(id, "cannot mark a failed item in the journal: {e}");
            }
        }
    }

    /// Lands item `id` of file `ino` now, if it is still the file's queued content.
    pub(in crate::fs) async fn land_queued(&self, ino: u64, id: u64) -> Result<(), FsError> {
        if self.queue().is_none() {
            return Ok(());
        }
        let Some(file) = self.writer.file(ino) else {
            self.drop_item(id);
            return Ok(());
        };
        let mut state = file.state.lock().await;
        let landed = self.land_queued_locked(&file, &mut state, id).await?;
        drop(state);
        if landed {
            self.writer.forget(&file);
        }
        Ok(())
    }

    /// [`Self::land_queued`] with the file's state held by the caller (fsync, so that
    /// no change comes between queueing the content and landing it); returns whether
    /// the item landed.
    pub(in crate::fs) async fn land_queued_locked(
        &self,
        file: &WriteFile,
        state: &mut WriteState,
        id: u64,
    ) -> Result<bool, FsError> {
        let Some(queue) = self.queue() else {
            return Ok(false);
        };
        let ino = file.ino;
        if state.queued != Some(id) {
            // Whoever replaced or discarded it removed it.
            return Ok(false);
        }
        if state.differs_from_queued() {
            // Changed since: the coming close queues the new content in its place.
            return Ok(false);
        }
        if !matches!(state.content, Content::Staged(_)) {
            // The journal holds what was acknowledged.
            let staging = Staging::adopt(&queue.journal.data_path(id))?;
            state.size = staging.len();
            state.content = Content::Staged(staging);
            state.shares_queued = true;
        }
        let Some(item) = queue.get(id).map(|queued| queued.record) else {
            return Ok(false);
        };
        if !item.tries.contains(&queue.mount) {
            // Recorded before the first try, so that the next mount deletes what this
            // one may leave.
            let updated = queue.update_record(id, |item| item.tries.push(queue.mount));
            if let Some(updated) = updated {
                queue.journal.record(&updated)?;
            }
        }
        let result = Box::pin(self.upload_and_land(ino, state, Some(&item))).await;
        match result {
            Ok(conflict) => {
                if let Some(name) = conflict {
                    queue.note_conflict();
                    tracing::warn!(
                        path = %shown(&self.node(ino).map(|n| n.path.to_vec()).unwrap_or_default()),
                        landed_as = %shown(&name),
                        "another client changed the file while ours was queued: theirs is kept, ours landed beside it"
                    );
                }
                state.queued = None;
                state.shares_queued = false;
                state.failure = None;
                if let Err(e) = queue.journal.remove(id) {
                    tracing::warn!(id, "cannot remove a landed item from the journal: {e}");
                }
                queue.remove(id, true);
                file.publish(state);
                Ok(true)
            }
            Err(e) => {
                if refused_for_good(&e) {
                    state.failure = Some(e.clone());
                    state.failures += 1;
                    file.publish(state);
                }
                Err(e)
            }
        }
    }

    /// The conflict name for `name` now.
    pub(in crate::fs) fn conflict_name_now(&self, name: &[u8]) -> Vec<u8> {
        conflict_name(name, &host_name(), SystemTime::now())
    }

    /// At mount: takes back the items earlier mounts of this server left in the
    /// journal, as files with queued uploads (readable here until they land); damaged
    /// ones are reported and kept, never uploaded.
    pub(in crate::fs) fn recover_queue(&self) -> Result<(), FsError> {
        let Some(queue) = self.queue() else {
            return Ok(());
        };
        let (items, damaged) = queue.journal.load()?;
        for d in &damaged {
            tracing::error!(
                "write-back journal: {} cannot be trusted ({}); it is kept there and not uploaded",
                d.file.display(),
                d.why
            );
        }
        queue.note_damaged(damaged);
        let root = self.node(ROOT_INODE)?.path.to_vec();
        let mut taken = 0;
        for item in items {
            let Some(ino) = self.inode_of_path(&root, &item.path) else {
                tracing::warn!(
                    path = %shown(&item.path),
                    "a queued upload lies outside this mount's directory; it waits for a mount that holds it"
                );
                continue;
            };
            if self.writer.file(ino).is_some() {
                continue;
            }
            // What the tries of earlier mounts left (a server may even hold it locked
            // for an upload a dead mount began): this mount's tries use names of its own.
            self.delete_temporaries_of(&item, |_| true);
            let staging = match Staging::adopt(&queue.journal.data_path(item.id)) {
                Ok(staging) => staging,
                Err(e) => {
                    tracing::error!(path = %shown(&item.path), "queued data unreadable: {e}");
                    continue;
                }
            };
            let failure = item
                .failed
                .as_ref()
                .map(|why| FsError::PermissionDenied(why.clone()));
            let file = self.writer.open(ino, || WriteState {
                content: Content::Staged(staging),
                size: item.size,
                dirty: true,
                written: false,
                on_server: item.base.is_some(),
                base: item.base.map(|base| {
                    Arc::new(FileVersion {
                        path: item.path.clone().into(),
                        size: base.size,
                        mtime: base.mtime.unwrap_or((0, 0)),
                    })
                }),
                base_reader: None,
                set_mtime: item.mtime.map(join_time),
                set_mode: item.mode,
                mode: item.mode,
                discarded: false,
                failures: u64::from(failure.is_some()),
                failure,
                changed_at: item.mtime.map_or_else(SystemTime::now, join_time),
                queued: Some(item.id),
                shares_queued: true,
                in_order: false,
                follower: None,
            });
            self.writer.close(&file);
            let stopped = item.failed.is_some();
            queue.add(
                item.id,
                Queued {
                    ino,
                    path: item.path.clone(),
                    size: item.size,
                    since: join_time((item.queued_at, 0)),
                    base: item.base,
                    record: item.clone(),
                    error: item.failed.clone(),
                    stopped,
                },
            );
            if !stopped {
                self.schedule_upload(item.id);
            }
            taken += 1;
        }
        if taken > 0 {
            tracing::info!(
                files = taken,
                "write-back: uploads queued by an earlier mount taken back"
            );
        }
        Ok(())
    }

    /// The inode of the server path `path` below the mounted directory `root`.
    fn inode_of_path(&self, root: &[u8], path: &[u8]) -> Option<u64> {
        // The root is the login directory (empty: paths are relative to it), `/`, or a
        // directory's path.
        let rest = match root {
            b"" => path,
            b"/" => path.strip_prefix(b"/")?,
            _ => path.strip_prefix(root)?.strip_prefix(b"/")?,
        };
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut ino = ROOT_INODE;
        for name in rest.split(|&b| b == b'/') {
            if name.is_empty() || name == b"." || name == b".." {
                return None;
            }
            ino = inodes.child(ino, name)?;
        }
        (ino != ROOT_INODE).then_some(ino)
    }

    /// Waits, up to `limit`, for the queued uploads (at unmount); returns how many
    /// are left in the journal for the next mount.
    pub async fn drain_queue(&self, limit: Duration) -> usize {
        let Some(queue) = self.queue() else {
            return 0;
        };
        let left = queue.drain(limit).await;
        let stopped = queue.all().len() - left;
        if left > 0 || stopped > 0 {
            tracing::warn!(
                waiting = left,
                refused = stopped,
                journal = %queue.journal.dir().display(),
                "uploads left in the write-back journal; the next mount of this server takes them up"
            );
        }
        left
    }

    /// Runs a request of `ftpsfs queue`: `retry`, `retry PATH` or `discard PATH`, PATH
    /// relative to the mounted directory. Returns how many items it touched.
    pub async fn queue_request(&self, request: &[u8]) -> Result<usize, FsError> {
        if self.queue().is_none() {
            return Err(FsError::InvalidRequest(
                "no write-back queue (mount with -o writeback)",
            ));
        }
        let (verb, path) = match request.iter().position(|&b| b == b' ') {
            Some(at) => (&request[..at], Some(&request[at + 1..])),
            None => (request, None),
        };
        let root = self.node(ROOT_INODE)?.path.to_vec();
        let server_path = path.map(|p| {
            let p = p.strip_prefix(b"/").unwrap_or(p);
            crate::fs::meta::inode::join_path(&root, p)
        });
        match (verb, server_path) {
            (b"retry", path) => Ok(self.retry_queued(path.as_deref())),
            (b"discard", Some(path)) => Ok(usize::from(self.discard_queued(&path).await)),
            _ => Err(FsError::InvalidRequest(
                "expected `retry [PATH]` or `discard PATH`",
            )),
        }
    }

    /// Retries the queued items the server refused (all, or the one at `path`); returns
    /// how many.
    pub fn retry_queued(&self, path: Option<&[u8]>) -> usize {
        let Some(queue) = self.queue() else {
            return 0;
        };
        let mut retried = 0;
        for (id, item) in queue.all() {
            if item.stopped && path.is_none_or(|p| p == item.path.as_slice()) {
                queue.note_retry(id);
                self.schedule_upload(id);
                retried += 1;
            }
        }
        retried
    }

    /// Discards the queued item at `path` (the user gives it up): what the server has
    /// stays. Returns whether there was one.
    pub async fn discard_queued(&self, path: &[u8]) -> bool {
        let Some(queue) = self.queue() else {
            return false;
        };
        let Some((id, item)) = queue.all().into_iter().find(|(_, i)| i.path == path) else {
            return false;
        };
        if let Some(file) = self.writer.file(item.ino) {
            let mut state = file.state.lock().await;
            if state.queued == Some(id) {
                state.queued = None;
                state.shares_queued = false;
                state.dirty = false;
                state.written = false;
                state.failure = None;
                state.follower = None;
                if !state.on_server {
                    state.discarded = true;
                }
                state.content = Content::Server;
                state.size = state.base.as_ref().map_or(0, |b| b.size);
                file.publish(&state);
            }
            drop(state);
            self.writer.forget(&file);
        }
        self.drop_item(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(base: Option<Base>, size: u64, mtime: i64) -> Item {
        Item {
            id: 1,
            path: b"/a".to_vec(),
            base,
            size,
            data_crc: 0,
            mtime: Some((mtime, 5)),
            mode: None,
            queued_at: 0,
            failed: None,
            tries: Vec::new(),
        }
    }

    fn on_server(size: Option<u64>, seconds: Option<i64>) -> StoredVersion {
        StoredVersion {
            size,
            modified: seconds.map(|unix_seconds| crate::ftp::listing::Timestamp {
                unix_seconds,
                nanos: 0,
                precision: TimePrecision::Second,
            }),
        }
    }

    #[test]
    fn a_new_file_lands_over_nothing_but_itself() {
        let new = item(None, 10, 1000);
        assert!(!changed_by_another(&new, None));
        // Another client created the name meanwhile: whatever its size and time.
        assert!(changed_by_another(
            &new,
            Some(&on_server(Some(3), Some(900)))
        ));
        assert!(changed_by_another(
            &new,
            Some(&on_server(Some(10), Some(999)))
        ));
        assert!(changed_by_another(&new, Some(&on_server(None, None))));
        // Our own upload, landed before a crash kept the record.
        assert!(!changed_by_another(
            &new,
            Some(&on_server(Some(10), Some(1000)))
        ));
    }

    #[test]
    fn a_replacement_lands_over_its_base_only() {
        let base = Base {
            size: 7,
            mtime: Some((500, 0)),
        };
        let replacing = item(Some(base), 10, 1000);
        assert!(!changed_by_another(&replacing, None));
        assert!(!changed_by_another(
            &replacing,
            Some(&on_server(Some(7), Some(500)))
        ));
        assert!(changed_by_another(
            &replacing,
            Some(&on_server(Some(8), Some(500)))
        ));
        assert!(changed_by_another(
            &replacing,
            Some(&on_server(Some(7), Some(501)))
        ));
        // What the server does not tell is not held against it.
        assert!(!changed_by_another(
            &replacing,
            Some(&on_server(None, Some(500)))
        ));
        assert!(!changed_by_another(
            &replacing,
            Some(&on_server(Some(7), None))
        ));
        let inexact = item(
            Some(Base {
                size: 7,
                mtime: None,
            }),
            10,
            1000,
        );
        assert!(!changed_by_another(
            &inexact,
            Some(&on_server(Some(7), Some(777)))
        ));
        assert!(changed_by_another(
            &inexact,
            Some(&on_server(Some(6), Some(777)))
        ));
    }

    #[test]
    fn conflict_names_say_whose_and_when() {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        assert_eq!(
            conflict_name(b"report.txt", "my host.example", when),
            b"report.txt.conflict-my_host_example-20251206-054640".to_vec()
        );
    }

    #[test]
    fn refusals_for_good_are_told_from_passing_failures() {
        assert!(refused_for_good(&FsError::PermissionDenied("553".into())));
        assert!(!refused_for_good(&FsError::TimedOut(Duration::from_secs(
            1
        ))));
        assert!(!refused_for_good(&FsError::Changed));
    }
}
