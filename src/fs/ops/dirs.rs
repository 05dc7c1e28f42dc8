//! Open directories: a snapshot of the entries at opendir, served to readdir.

use std::sync::Arc;

use crate::fs::error::FsError;
use crate::fs::handles::Handle;
use crate::fs::{Attr, DirEntry, FtpFs};
use crate::ftp::listing::EntryKind;

impl FtpFs {
    /// Opens a directory: takes a snapshot of its entries for the readdir calls.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let opened = self
            .within(async {
                let (node, entry) = self.entry(ino).await?;
                if entry.as_ref().is_some_and(|e| e.kind != EntryKind::Dir) {
                    return Err(FsError::NotADirectory);
                }
                let listing = self.dirs.get(&self.pool, &node.path).await?;
                self.dirs
                    .prefetch_children(&self.pool, &node.path, &listing);
                let self_attr = self.attrs.attr(ino, entry.as_ref());
                let parent_attr = Attr {
                    ino: node.parent,
                    ..self_attr
                };
                let mut entries = vec![
                    DirEntry {
                        ino,
                        offset: 1,
                        name: b".".to_vec(),
                        attr: self_attr,
                    },
                    DirEntry {
                        ino: node.parent,
                        offset: 2,
                        name: b"..".to_vec(),
                        attr: parent_attr,
                    },
                ];
                for entry in &listing.entries {
                    let child = self.child_inode(ino, &entry.name)?;
                    entries.push(DirEntry {
                        ino: child,
                        offset: entries.len() as u64 + 1,
                        name: entry.name.clone(),
                        attr: self.attr_of(child, Some(entry)),
                    });
                }
                // Files created here that are not on the server yet.
                for (child, name) in self.local_only_children(ino) {
                    if listing.get(&name).is_some() {
                        continue;
                    }
                    let Some(file) = self.writer.file(child) else {
                        continue;
                    };
                    entries.push(DirEntry {
                        ino: child,
                        offset: entries.len() as u64 + 1,
                        name,
                        attr: self.written_attr(child, file.shown()),
                    });
                }
                Ok(self.handles.insert(Handle::Dir(Arc::new(entries))))
            })
            .await;
        self.sweep_inodes();
        opened
    }

    /// The entries of an open directory after position `offset`.
    pub fn readdir(&self, handle: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut entries = Vec::new();
        self.fill_dir(handle, offset, false, |entry| {
            entries.push(entry.clone());
            false
        })?;
        Ok(entries)
    }

    /// Like [`Self::readdir`], each entry (but `.` and `..`) counted as a reference the
    /// kernel takes, as `readdirplus` hands them over.
    pub fn readdirplus(&self, handle: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut entries = Vec::new();
        self.fill_dir(handle, offset, true, |entry| {
            entries.push(entry.clone());
            false
        })?;
        Ok(entries)
    }

    /// Passes the entries of an open directory after position `offset` to `add` until it
    /// says the reply is full (returns true; that entry was not taken). With `plus`,
    /// every entry taken but `.` and `..` counts as a reference the kernel holds.
    pub fn fill_dir(
        &self,
        handle: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<(), FsError> {
        let entries = self.handles.dir(handle)?;
        let dir = entries.first().ok_or(FsError::BadHandle)?.ino;
        // Numbers are looked up again, and counted, under one lock: a number handed out at
        // opendir that the kernel never took may have been swept since.
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries.iter().skip(offset as usize) {
            let mut entry = entry.clone();
            let counted = !matches!(entry.name.as_slice(), b"." | b"..");
            if counted {
                let ino = inodes.child(dir, &entry.name).ok_or(FsError::BadHandle)?;
                entry.ino = ino;
                entry.attr.ino = ino;
                if plus {
                    inodes.remember(ino);
                }
            }
            if add(&entry) {
                if plus && counted {
                    inodes.forget(entry.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, handle: u64) {
        self.handles.remove(handle);
    }
}
