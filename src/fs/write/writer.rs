//! The owner of the write path's shared state: the files being written (by inode, with
//! their count of open handles), and what the server was found to refuse.
//!
//! A write file lives from its first open for writing until the last handle is closed
//! and its changes have landed (or were dropped). Whoever closes last lands them: a
//! handle's release, or a truncate(2) that counted itself as a writer while it ran.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::fs::write::file::{WriteFile, WriteState};

/// Files open for writing or with changes not on the server yet, and what the write
/// path learned of the server.
#[derive(Default)]
pub struct Writer {
    files: Mutex<HashMap<u64, Arc<WriteFile>>>,
    /// The server refused to rename onto an existing file once: from then on the old
    /// file is moved aside first, without trying.
    refuses_overwrite: AtomicBool,
}

impl Writer {
    /// A writer with no file open.
    pub fn new() -> Self {
        Self::default()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<WriteFile>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The write file of `ino`, if it is open for writing or has changes.
    pub fn file(&self, ino: u64) -> Option<Arc<WriteFile>> {
        self.files().get(&ino).cloned()
    }

    /// The write file of `ino` for a new writer, made from `make` if there is none;
    /// counts the writer.
    pub fn open(&self, ino: u64, make: impl FnOnce() -> WriteState) -> Arc<WriteFile> {
        let mut files = self.files();
        let file = files
            .entry(ino)
            .or_insert_with(|| Arc::new(WriteFile::new(ino, make())))
            .clone();
        *opens(&file) += 1;
        file
    }

    /// The write file of `ino` for one more writer, if it has one.
    pub fn reopen(&self, ino: u64) -> Option<Arc<WriteFile>> {
        let files = self.files();
        let file = files.get(&ino)?.clone();
        *opens(&file) += 1;
        Some(file)
    }

    /// Counts a writer gone; true when it was the last, which then lands the changes
    /// and calls [`Self::forget`].
    pub fn close(&self, file: &WriteFile) -> bool {
        let _files = self.files();
        let mut opens = opens(file);
        *opens = opens.saturating_sub(1);
        *opens == 0
    }

    /// Whether `file` has more than one writer (open handle, or a truncate(2) under way).
    pub fn is_shared(&self, file: &WriteFile) -> bool {
        *opens(file) > 1
    }

    /// Forgets `file` unless a writer opened it again meanwhile. Only `file` itself: a
    /// release that lands late may find the inode's next write file in its place (two
    /// last closes of one file, each forgetting it, the second after a new open).
    pub fn forget(&self, file: &WriteFile) {
        let mut files = self.files();
        let current = files
            .get(&file.ino)
            .is_some_and(|known| std::ptr::eq(Arc::as_ptr(known), file));
        if current && *opens(file) == 0 {
            files.remove(&file.ino);
        }
    }

    /// The inodes with a write file: their numbers must not be reused while it lives.
    pub fn inodes(&self) -> std::collections::HashSet<u64> {
        self.files().keys().copied().collect()
    }

    /// The write files for which `keep` holds.
    pub fn files_where(&self, keep: impl Fn(&WriteFile) -> bool) -> Vec<Arc<WriteFile>> {
        self.files().values().filter(|f| keep(f)).cloned().collect()
    }

    /// Whether the server was found to refuse renaming onto an existing file.
    pub fn refuses_overwrite(&self) -> bool {
        self.refuses_overwrite.load(Ordering::Relaxed)
    }

    /// Notes that the server refuses renaming onto an existing file.
    pub fn note_refuses_overwrite(&self) {
        self.refuses_overwrite.store(true, Ordering::Relaxed);
    }
}

fn opens(file: &WriteFile) -> std::sync::MutexGuard<'_, usize> {
    file.opens.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::write::file::Content;
    use std::time::SystemTime;

    fn new_file() -> WriteState {
        WriteState {
            content: Content::Zeros,
            size: 0,
            dirty: true,
            written: false,
            on_server: false,
            base: None,
            base_reader: None,
            set_mtime: None,
            set_mode: None,
            mode: None,
            discarded: false,
            failure: None,
            failures: 0,
            changed_at: SystemTime::now(),
            queued: None,
            shares_queued: false,
            in_order: true,
            follower: None,
        }
    }

    #[test]
    fn the_last_close_is_told_and_only_then_is_the_file_forgotten() {
        let writer = Writer::new();
        let first = writer.open(7, new_file);
        let second = writer.open(7, || panic!("a second writer shares the file"));
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!writer.close(&first), "one writer is left");
        writer.forget(&first);
        assert!(writer.file(7).is_some(), "forgotten while open");
        assert!(writer.close(&second));
        writer.forget(&second);
        assert!(writer.file(7).is_none());
        assert!(writer.reopen(7).is_none());
    }

    #[test]
    fn a_file_reopened_between_its_last_close_and_forgetting_is_kept() {
        // The race a truncate(2) meets with a release: it counts itself in before the
        // release forgets the file, and becomes the last writer itself.
        let writer = Writer::new();
        let file = writer.open(3, new_file);
        assert!(writer.close(&file));
        let again = writer.reopen(3).expect("still known until forgotten");
        writer.forget(&file);
        assert!(writer.file(3).is_some(), "forgotten under a writer");
        assert!(writer.close(&again));
        writer.forget(&again);
        assert!(writer.file(3).is_none());
    }

    #[test]
    fn a_late_forget_leaves_the_next_write_file_alone() {
        // Two releases each saw the last writer go (the second after a reopen); the
        // first forgets the file, a new open makes the next one, and then the second
        // release's forget comes: the new file must stay known, or `stat` and the next
        // truncate(2) miss what it holds.
        let writer = Writer::new();
        let old = writer.open(5, new_file);
        assert!(writer.close(&old));
        let again = writer.reopen(5).expect("not forgotten yet");
        assert!(writer.close(&again));
        writer.forget(&old);
        let next = writer.open(5, new_file);
        assert!(!Arc::ptr_eq(&old, &next));
        writer.forget(&again);
        let known = writer.file(5).expect("the new write file was forgotten");
        assert!(Arc::ptr_eq(&known, &next));
    }

    #[test]
    fn a_refused_overwrite_is_remembered() {
        let writer = Writer::new();
        assert!(!writer.refuses_overwrite());
        writer.note_refuses_overwrite();
        assert!(writer.refuses_overwrite());
    }
}
