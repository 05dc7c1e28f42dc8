//! Open files: opening, reading and closing. Writing is in `writes.rs`.

use std::sync::Arc;

use crate::fs::cache::version::FileVersion;
use crate::fs::error::FsError;
use crate::fs::handles::Handle;
use crate::fs::meta::dircache::DirListing;
use crate::fs::meta::inode::ROOT_INODE;
use crate::fs::read::reader::{OpenFile, ReadData};
use crate::fs::write::file::{OpenMode, WriteHandle};
use crate::fs::{Attr, FtpFs, Opened, OpenedVersion};
use crate::ftp::listing::{Entry, EntryKind, TimePrecision};

impl FtpFs {
    /// Opens a file for reading, writing or both, for process `pid`.
    pub async fn open(&self, ino: u64, how: OpenMode, pid: u32) -> Result<Opened, FsError> {
        if how.write || how.truncate {
            return self.open_for_write(ino, how, pid).await;
        }
        if let Some(file) = self.writer.file(ino) {
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
            let node = self.node(ino)?;
            if ino == ROOT_INODE {
                return Err(FsError::IsADirectory);
            }
            let parent = self.node(node.parent)?;
            let listing = self.dirs.get(&self.pool, &parent.path).await?;
            let entry = listing.get(node.name()).cloned().ok_or(FsError::NotFound)?;
            match entry.kind {
                EntryKind::Dir => return Err(FsError::IsADirectory),
                EntryKind::File | EntryKind::Other | EntryKind::Symlink => {}
            }
            let size = entry.size.unwrap_or(0);
            let previous = self
                .opened_versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ino)
                .cloned();
            let (mtime, trusted) = self
                .version_time(&node.path, &entry, &listing, previous.as_ref())
                .await;
            let version = Arc::new(FileVersion {
                path: node.path.clone(),
                size,
                mtime,
            });
            // Data read within a second of the file's time may predate a same-size rewrite
            // in that second: under a newer listing it is fetched once more (by then its
            // time is old enough to be trusted if it has not moved).
            let racy = self.cache.racy_before(&version, listing.fetched);
            if racy {
                tracing::debug!(path = %node.path.escape_ascii(), ?mtime, "cached data was read within a second of the file's time: fetching it again");
            }
            let trusted = trusted && !racy;
            if !trusted {
                self.cache.forget_path(&node.path);
            }
            let keep_cache = trusted && previous.as_ref().is_some_and(|p| *p.version == *version);
            // The disk's blocks checked at the last open, under the same listing, need no
            // second MDTM: nothing newer says the file changed.
            let disk_time = match &previous {
                Some(p)
                    if p.disk_time.is_some()
                        && p.listing_fetched == listing.fetched
                        && *p.version == *version =>
                {
                    p.disk_time
                }
                _ => self.reader.disk_time(&version).await,
            };
            self.opened_versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    ino,
                    OpenedVersion {
                        version: version.clone(),
                        listed: entry.modified,
                        listing_fetched: listing.fetched,
                        disk_time,
                    },
                );
            self.siblings
                .opened(node.parent, &parent.path, node.name(), &version, &listing);
            if disk_time.is_none() {
                self.reader.prepare(&version);
            }
            let handle = self
                .handles
                .insert(Handle::Read(Arc::new(OpenFile::with_disk_time(
                    ino, version, disk_time,
                ))));
            Ok(Opened { handle, keep_cache })
        })
        .await
    }

    /// The time that tells this version of a file from others, and whether data cached
    /// for the file may be trusted with it.
    ///
    /// The listing's time, when it is exact. A coarse one (vsftpd's LIST gives the
    /// minute, or the day) cannot tell apart a file rewritten with the same size in the
    /// same minute; so once a listing fetched since the last open says the same, and
    /// data of the file is cached (blocks here, pages in the kernel), MDTM gives the exact
    /// time before that data is reused: one round trip, only then. Without MDTM the
    /// cached data cannot be checked and is not trusted.
    ///
    /// Blocks cached under the listed time, or under the last open's version, carry the
    /// exact time they were downloaded at: when MDTM gives that time, they are this
    /// version and are kept, so the first reopen after a cold read fetches nothing.
    async fn version_time(
        &self,
        path: &[u8],
        entry: &Entry,
        listing: &DirListing,
        previous: Option<&OpenedVersion>,
    ) -> ((i64, u32), bool) {
        let listed = entry.modified;
        let listed_time = listed.map_or((0, 0), |t| (t.unix_seconds, t.nanos));
        if listed.is_some_and(|t| t.precision == TimePrecision::Second) {
            return (listed_time, true);
        }
        let size = entry.size.unwrap_or(0);
        if let Some(previous) = previous {
            // The same listing as at the last open: nothing new to check against.
            if previous.listing_fetched == listing.fetched
                && previous.listed == listed
                && previous.version.size == size
            {
                return (previous.version.mtime, true);
            }
        }
        if previous.is_none() && !self.cache.holds_path(path) {
            // Nothing cached that could be stale.
            return (listed_time, true);
        }
        let as_listed = FileVersion {
            path: path.into(),
            size,
            mtime: listed_time,
        };
        if self.cache.downloaded_since(&as_listed, listing.fetched) {
            // Downloaded (read ahead, or by another open) after this listing arrived: as
            // new as the listing itself, so no older than what a download now would be
            // checked against.
            return (listed_time, true);
        }
        let pool = &self.pool;
        match crate::with_connection!(pool, |conn| conn.modified(path).await).await {
            Ok(exact) => {
                tracing::debug!(path = %path.escape_ascii(), ?listed, ?exact, "coarse listing time checked with MDTM");
                let exact = (exact.unix_seconds, exact.nanos);
                let downloaded_now = |version: &FileVersion| {
                    *version.path == *path
                        && version.size == size
                        && self.cache.server_time(version) == Some(exact)
                };
                let known = previous
                    .map(|p| &*p.version)
                    .into_iter()
                    .chain([&as_listed])
                    .find(|version| downloaded_now(version));
                match known {
                    Some(version) => (version.mtime, true),
                    None => {
                        // Whatever is cached is of another content, or unchecked: it
                        // must not be hit, even should the exact time fall on the listed
                        // minute and so give the same key.
                        self.cache.forget_path(path);
                        (exact, true)
                    }
                }
            }
            Err(e) => {
                tracing::debug!(path = %path.escape_ascii(), "cannot check a coarse listing time ({e}); cached data dropped");
                (listed_time, false)
            }
        }
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
            // The listing is out of date: the next open must see the new size and mtime,
            // and must not let the kernel keep pages of what was read before.
            self.opened_versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&file.ino);
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
