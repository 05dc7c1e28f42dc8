//! Open files: opening, reading and closing.

use std::sync::Arc;

use super::blockcache::FileVersion;
use super::error::FsError;
use super::handles::Handle;
use super::reader::{OpenFile, ReadData};
use super::{FtpFs, Opened};
use crate::ftp::listing::EntryKind;

impl FtpFs {
    /// Opens a file for reading; writing is refused (read-only mount).
    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        self.within(async {
            let (node, entry) = self.entry(ino).await?;
            let entry = entry.ok_or(FsError::IsADirectory)?;
            match entry.kind {
                EntryKind::Dir => return Err(FsError::IsADirectory),
                EntryKind::File | EntryKind::Other | EntryKind::Symlink => {}
            }
            let version = Arc::new(FileVersion {
                path: node.path.clone().into(),
                size: entry.size.unwrap_or(0),
                mtime: entry.modified.map_or((0, 0), |t| (t.unix_seconds, t.nanos)),
            });
            let keep_cache = {
                let mut versions = self
                    .opened_versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let unchanged = versions.get(&ino).is_some_and(|v| **v == *version);
                versions.insert(ino, version.clone());
                unchanged
            };
            let handle = self
                .handles
                .insert(Handle::Read(Arc::new(OpenFile::new(ino, version))));
            Ok(Opened { handle, keep_cache })
        })
        .await
    }

    /// Reads up to `size` bytes at `offset` from an open file.
    pub async fn read(&self, handle: u64, offset: u64, size: u32) -> Result<ReadData, FsError> {
        let file = self.handles.read(handle)?;
        let result = self.within(self.reader.read(&file, offset, size)).await;
        if matches!(result, Err(FsError::Changed)) {
            // The listing is out of date: the next open must see the new size and mtime.
            if let Ok(node) = self.node(file.ino) {
                if let Ok(parent) = self.node(node.parent) {
                    self.dirs.invalidate(&parent.path);
                }
            }
        }
        result
    }

    /// Closes an open file, stopping its read-ahead.
    pub async fn release(&self, handle: u64) {
        if let Some(Handle::Read(file)) = self.handles.remove(handle) {
            self.reader.release(&file).await;
        }
    }
}
