//! Open files: opening, reading and closing. Writing is in `writes.rs`.

use std::sync::Arc;

use super::blockcache::FileVersion;
use super::error::FsError;
use super::handles::Handle;
use super::reader::{OpenFile, ReadData};
use super::writes::{OpenMode, WriteHandle};
use super::{Attr, FtpFs, Opened};
use crate::ftp::listing::EntryKind;

impl FtpFs {
    /// Opens a file for reading, writing or both, for process `pid`.
    pub async fn open(&self, ino: u64, how: OpenMode, pid: u32) -> Result<Opened, FsError> {
        if how.write || how.truncate {
            return self.open_for_write(ino, how, pid).await;
        }
        if let Some(file) = self.write_file(ino) {
            // Being written here: reads see what was written, not what the server has.
            let failures = file.failures().await;
            let handle = self.handles.insert(Handle::Write(Arc::new(WriteHandle::new(
                file, failures, true, false, pid,
            ))));
            return Ok(Opened {
                handle,
                keep_cache: false,
            });
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
        let file = match self.handles.get(handle)? {
            Handle::Read(file) => file,
            Handle::Write(write) if write.readable => {
                return self.read_written(&write.file, offset, size).await
            }
            Handle::Write(_) | Handle::Dir(_) => return Err(FsError::BadHandle),
        };
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

    /// Closes an open file: stops its read-ahead, or, for the last handle of a file
    /// written, uploads what no flush did.
    pub async fn release(&self, handle: u64) {
        match self.handles.remove(handle) {
            Some(Handle::Read(file)) => self.reader.release(&file).await,
            Some(Handle::Write(write)) if write.counted => self.release_write(write).await,
            Some(Handle::Write(_) | Handle::Dir(_)) | None => {}
        }
    }

    /// Creates a file with mknod: regular files only (FTP has no devices or fifos); it
    /// is uploaded, empty, at once.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        regular: bool,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        if !regular {
            return Err(FsError::NotPermitted(
                "only regular files can be created over FTP",
            ));
        }
        let (_, opened) = self
            .create(parent, name, mode, OpenMode::default(), 0)
            .await?;
        let write = self.handles.write(opened.handle)?;
        let uploaded = self.fsync(opened.handle).await;
        self.release(opened.handle).await;
        drop(write);
        uploaded?;
        self.lookup(parent, name).await
    }
}
