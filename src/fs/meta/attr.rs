//! What `stat` shows for a listing entry: type, size, time, mode and owner.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ftp::listing::{Entry, EntryKind, Timestamp};

/// What kind of node an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File type.
    pub kind: NodeKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size (the block size).
    pub blksize: u32,
    /// The file is being written, or has changes not yet on the server: what the kernel
    /// caches of it must be checked again soon.
    pub changing: bool,
}

/// How listing entries become attributes: the owner, mask and block size of the mount.
#[derive(Debug, Clone, Copy)]
pub struct AttrPolicy {
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// Permission bits cleared from every mode.
    pub umask: u32,
    /// Preferred I/O size.
    pub blksize: u32,
    /// The time shown when the server gives none (the root, entries without a time).
    pub unknown_time: SystemTime,
}

impl AttrPolicy {
    /// The attributes of `entry`, or of the root directory when there is no entry.
    pub fn attr(&self, ino: u64, entry: Option<&Entry>) -> Attr {
        let Some(entry) = entry else {
            return self.make(ino, NodeKind::Dir, 0, self.unknown_time, 0o755, 2);
        };
        let (kind, default_mode, nlink) = match entry.kind {
            EntryKind::Dir => (NodeKind::Dir, 0o755, 2),
            EntryKind::Symlink => (NodeKind::Symlink, 0o777, 1),
            EntryKind::File | EntryKind::Other => (NodeKind::File, 0o644, 1),
        };
        let mtime = entry
            .modified
            .map_or(self.unknown_time, |t| system_time(&t));
        let size = match (kind, entry.size, &entry.link_target) {
            (NodeKind::Symlink, _, Some(target)) => target.len() as u64,
            (_, Some(size), _) => size,
            (_, None, _) => 0,
        };
        let mode = entry.mode.unwrap_or(default_mode);
        self.make(ino, kind, size, mtime, mode, nlink)
    }

    fn make(
        &self,
        ino: u64,
        kind: NodeKind,
        size: u64,
        mtime: SystemTime,
        mode: u32,
        nlink: u32,
    ) -> Attr {
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm: (mode & 0o7777 & !self.umask) as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            blksize: self.blksize,
            changing: false,
        }
    }
}

/// A listing time as a `SystemTime`.
pub fn system_time(t: &Timestamp) -> SystemTime {
    if t.unix_seconds >= 0 {
        UNIX_EPOCH + Duration::new(t.unix_seconds as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.unix_seconds.unsigned_abs())
    }
}
