//! Files open for writing: what each will upload at close, and how.
//!
//! A file has one [`WriteFile`] while it is open for writing (by any number of handles)
//! or has changes not yet on the server. Its content is one of:
//! - what the server has ([`Content::Server`]): opened for writing, nothing changed yet;
//! - zeros ([`Content::Zeros`]): new, truncated, or extended by truncate, nothing written;
//! - an upload streaming as it is written ([`Content::Streaming`]): every write so far
//!   came in order, so `cp` of a large file runs at network speed;
//! - a local staging file ([`Content::Staged`]): anything else (random writes, appends
//!   to an existing file, truncation, reads of a file being written).
//!
//! A stream that meets a write out of order becomes a staging file (filled from what it
//! uploaded so far), so the program never sees an error for writing out of order.
//! At close (flush) the content lands atomically (see `upload.rs`) and its result is
//! the result of `close()`.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ftp::listing::{TimePrecision, Timestamp};

use crate::fs::cache::version::FileVersion;
use crate::fs::error::FsError;
use crate::fs::read::reader::OpenFile;
use crate::fs::write::follower::Follower;
use crate::fs::write::staging::Staging;
use crate::fs::write::upload::StreamUpload;

/// What a file being written holds now; see the module documentation.
pub enum Content {
    /// What the server has (the state's `base`).
    Server,
    /// `size` zeros.
    Zeros,
    /// An upload receiving the writes as they come.
    Streaming(StreamUpload),
    /// The whole content, locally.
    Staged(Staging),
}

/// What `stat` shows of a file being written, readable while an upload holds its state.
#[derive(Debug, Clone, Copy)]
pub struct Shown {
    /// Bytes in the file now.
    pub size: u64,
    /// Modification time: the last write, or the time the program set.
    pub mtime: SystemTime,
    /// Permission bits, when known.
    pub mode: Option<u32>,
    /// Whether the file exists only here so far (created, not yet uploaded).
    pub local_only: bool,
}

/// The write state of one file.
pub struct WriteState {
    pub(in crate::fs) content: Content,
    /// Bytes in the file now.
    pub(in crate::fs) size: u64,
    /// The content differs from the server's: the next flush uploads it.
    pub(in crate::fs) dirty: bool,
    /// A write or truncate came since the last upload (not only the open's O_TRUNC,
    /// which a shell's `>` closes once before the program writes anything).
    pub(in crate::fs) written: bool,
    /// The file exists on the server (it did when opened, or an upload of it landed).
    pub(in crate::fs) on_server: bool,
    /// The server's version, for reading and staging [`Content::Server`].
    pub(in crate::fs) base: Option<Arc<FileVersion>>,
    /// A reader of `base`, made on first use.
    pub(in crate::fs) base_reader: Option<Arc<OpenFile>>,
    /// Modification time the program set, to send with the next upload.
    pub(in crate::fs) set_mtime: Option<SystemTime>,
    /// Permission bits the program asked for, to send with the next upload.
    pub(in crate::fs) set_mode: Option<u32>,
    /// Mode of the server's file (from its listing).
    pub(in crate::fs) mode: Option<u32>,
    /// Nothing is uploaded any more: the file was deleted, or its writer was killed.
    pub(in crate::fs) discarded: bool,
    /// The last failed upload: the next writes and flushes of the handles open when it
    /// failed report it (handles opened later start afresh, as with a local file's
    /// write-back errors).
    pub(in crate::fs) failure: Option<FsError>,
    /// Uploads of this file that failed so far.
    pub(in crate::fs) failures: u64,
    /// Last change, shown as the modification time.
    pub(in crate::fs) changed_at: SystemTime,
    /// The journal number of the queued upload of the content last closed
    /// (`-o writeback`), until it lands.
    pub(in crate::fs) queued: Option<u64>,
    /// The staging file is the queued item's data (a link to it): the next change
    /// copies it first, so that what was acknowledged stays as it was.
    pub(in crate::fs) shares_queued: bool,
    /// Every write since the content was emptied came at its end (`-o writeback`: such
    /// a file may be uploaded while it is written, see [`Follower`]).
    pub(in crate::fs) in_order: bool,
    /// The upload following the writes of a big file written in order (`-o writeback`).
    pub(in crate::fs) follower: Option<Follower>,
}

impl WriteState {
    /// Whether the content is no longer what the queued item holds (`-o writeback`):
    /// written since it was queued, or emptied by an open's O_TRUNC, which waits for the
    /// last close. Then the item must not land (it would undo the change, and a later
    /// write would land beside its bytes); the next close queues the content instead.
    pub(in crate::fs) fn differs_from_queued(&self) -> bool {
        self.written
            || (self.queued.is_some()
                && !self.shares_queued
                && !matches!(self.content, Content::Server))
    }
}

/// One file open for writing, or with changes not yet on the server.
pub struct WriteFile {
    /// The file's inode.
    pub ino: u64,
    pub(in crate::fs) state: tokio::sync::Mutex<WriteState>,
    pub(in crate::fs) shown: Mutex<Shown>,
    /// Handles open for writing (counted under the mount's map of write files).
    pub(in crate::fs) opens: Mutex<usize>,
}

/// A handle on a file being written: the file, and how it was opened.
pub struct WriteHandle {
    /// The file.
    pub file: Arc<WriteFile>,
    /// Opened for reading (O_RDWR, or read-only while another handle writes).
    pub readable: bool,
    /// Opened for writing, and counted among the file's writers.
    pub counted: bool,
    /// The processes that opened the handle or wrote through it (see [`Closer`]).
    pub(in crate::fs) writers: Mutex<Vec<u32>>,
    /// The file's failed uploads when the handle was opened: later ones are its own.
    pub(in crate::fs) failures_at_open: u64,
}

/// Processes remembered per handle: a program's threads, and the children it runs.
const WRITERS_KEPT: usize = 64;

impl WriteHandle {
    /// A handle on `file` opened by process `pid`.
    pub fn new(
        file: Arc<WriteFile>,
        failures_at_open: u64,
        readable: bool,
        counted: bool,
        pid: u32,
    ) -> Self {
        Self {
            file,
            readable,
            counted,
            writers: Mutex::new(vec![pid]),
            failures_at_open,
        }
    }

    /// The failed upload this handle has to report, if one failed since it was opened.
    pub(in crate::fs) fn failure(&self, state: &WriteState) -> Result<(), FsError> {
        match &state.failure {
            Some(failure) if state.failures > self.failures_at_open => Err(failure.clone()),
            _ => Ok(()),
        }
    }

    pub(in crate::fs) fn note_writer(&self, pid: u32) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if !writers.contains(&pid) && writers.len() < WRITERS_KEPT {
            writers.push(pid);
        }
    }

    pub(in crate::fs) fn is_writer(&self, pid: u32) -> bool {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pid)
    }

    /// The processes other than `pid` that opened the handle or wrote through it.
    pub(in crate::fs) fn writers_besides(&self, pid: u32) -> Vec<u32> {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .filter(|&writer| writer != pid)
            .collect()
    }
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// For reading.
    pub read: bool,
    /// For writing.
    pub write: bool,
    /// O_TRUNC.
    pub truncate: bool,
}

/// Who closes a file. The kernel reports every close of every copy of a descriptor, and
/// only the writer's own close means that the file is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The program that opened or wrote the file, closing it.
    Program,
    /// The program closing one descriptor while another of its own still holds the file:
    /// a shell's `>` or dd opens the file, dup2()s it onto stdout and closes the first
    /// descriptor before writing anything.
    ProgramKeepsOpen,
    /// The kernel closing the files of a writer killed by a signal, whose half-written
    /// file must not be taken for whole: its only writer (a killed process whose shell
    /// or sibling still writes the file closes it as a bystander does).
    KilledProcess,
    /// Another process closing its copy of the descriptor: a child that inherited it,
    /// closing it as it runs another program (execve) or exits. The writer still has
    /// the file open.
    Bystander,
}

/// Attribute changes asked by `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New size (truncate).
    pub size: Option<u64>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
}

impl WriteFile {
    pub(in crate::fs) fn new(ino: u64, state: WriteState) -> Self {
        let shown = Shown {
            size: state.size,
            mtime: state.set_mtime.unwrap_or(state.changed_at),
            mode: state.set_mode.or(state.mode),
            local_only: !state.on_server,
        };
        Self {
            ino,
            state: tokio::sync::Mutex::new(state),
            shown: Mutex::new(shown),
            opens: Mutex::new(0),
        }
    }

    /// Uploads of the file that failed so far.
    pub(in crate::fs) async fn failures(&self) -> u64 {
        self.state.lock().await.failures
    }

    /// What `stat` shows now.
    pub fn shown(&self) -> Shown {
        *self.shown.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(in crate::fs) fn publish(&self, state: &WriteState) {
        let local_only = !state.on_server && !state.discarded;
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) = Shown {
            size: state.size,
            mtime: state.set_mtime.unwrap_or(state.changed_at),
            mode: state.set_mode.or(state.mode),
            local_only,
        };
    }
}

/// A time as a listing entry holds it.
pub(in crate::fs) fn timestamp(time: SystemTime) -> Timestamp {
    let (unix_seconds, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => (-(e.duration().as_secs() as i64), 0),
    };
    Timestamp {
        unix_seconds,
        nanos,
        precision: TimePrecision::Second,
    }
}
