//! Open directories: a snapshot of the entries at opendir, served to readdir.

use std::sync::Arc;

use super::error::FsError;
use super::handles::Handle;
use super::{Attr, DirEntry, FtpFs};
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
                    let Some(file) = self.write_file(child) else {
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
        self.entries_from(handle, offset, false)
    }

    /// The entries of an open directory after position `offset`, each (but `.` and `..`)
    /// counted as a reference the kernel takes: `readdirplus` hands them over as lookups
    /// do. An entry the caller cannot pass on must be forgotten again.
    pub fn readdirplus(&self, handle: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        self.entries_from(handle, offset, true)
    }

    fn entries_from(&self, handle: u64, offset: u64, plus: bool) -> Result<Vec<DirEntry>, FsError> {
        let entries = self.handles.dir(handle)?;
        let dir = entries.first().ok_or(FsError::BadHandle)?.ino;
        // Numbers are looked up again, and counted, under one lock: a number handed out at
        // opendir that the kernel never took may have been swept since.
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for entry in entries.iter().skip(offset as usize) {
            let mut entry = entry.clone();
            if !matches!(entry.name.as_slice(), b"." | b"..") {
                let ino = inodes.child(dir, &entry.name).ok_or(FsError::BadHandle)?;
                entry.ino = ino;
                entry.attr.ino = ino;
                if plus {
                    inodes.remember(ino);
                }
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, handle: u64) {
        self.handles.remove(handle);
    }
}
