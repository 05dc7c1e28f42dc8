//! Staging files: the local copy of a file changed anywhere but at its end.
//!
//! A file written in order goes to the server as it is written (see `writes.rs`). Random
//! writes, `O_RDWR`, appends to an existing file and truncation to any size need the whole
//! file at hand, so it is copied into a staging file under the cache directory, changed
//! there, and uploaded from it at close. Staging files have no name (`O_TMPFILE`, or
//! unlinked at once where the filesystem lacks it), so a crash leaves none behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

/// A file's whole content, on local disk.
#[derive(Debug)]
pub struct Staging {
    file: File,
    len: u64,
}

impl Staging {
    /// An empty staging file in `dir` (created, with its parents, if missing; private to
    /// the user, since it holds their data).
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) => file,
            // Filesystems without O_TMPFILE: a fresh name, unlinked at once.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let path = dir.join(format!("staging-{:016x}", crate::fs::meta::names::unique()));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                file
            }
            Err(e) => return Err(e),
        };
        Ok(Self { file, len: 0 })
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `data` at `offset`, growing the file (with zeros in any gap) as needed.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    /// A second handle on the content, for reading while this one writes.
    pub fn reader(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Up to `size` bytes at `offset` (fewer at the end).
    pub fn read_at(&self, offset: u64, size: usize) -> io::Result<Vec<u8>> {
        let end = self.len.min(offset.saturating_add(size as u64));
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)?
            {
                // Shorter than we wrote: a hole at the end reads as zeros.
                0 => break,
                n => filled += n,
            }
        }
        Ok(buf)
    }

    /// A staging file over the existing file at `path` (a queued item's data, taken back
    /// after a restart).
    pub fn adopt(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }

    /// Gives the content the name `path` too (in the same filesystem: a hard link, no
    /// copy; elsewhere, or for a file that lost its name, a copy), synced to disk.
    pub fn persist(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        self.file.sync_all()?;
        let source = std::ffi::CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))?;
        let target = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: both are valid NUL-terminated strings; linkat touches nothing else.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                source.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if linked == 0 {
            return Ok(());
        }
        let copy = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        self.copy_to(&copy)?;
        copy.sync_all()
    }

    /// Writes the content into `file`, of the same length.
    fn copy_to(&self, file: &File) -> io::Result<()> {
        let mut offset = 0;
        while offset < self.len {
            let chunk = self.read_at(offset, 1 << 20)?;
            if chunk.is_empty() {
                break;
            }
            file.write_all_at(&chunk, offset)?;
            offset += chunk.len() as u64;
        }
        file.set_len(self.len)
    }

    /// A private copy of the content, in a new staging file in `dir`: what a write to a
    /// queued file changes, so that the queued content stays as it was acknowledged.
    pub fn duplicate(&self, dir: &Path) -> io::Result<Self> {
        let mut copy = Self::create(dir)?;
        self.copy_to(&copy.file)?;
        copy.len = self.len;
        Ok(copy)
    }

    /// Cuts or extends (with zeros) the file to `len` bytes.
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_grow_shrink_and_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("ftpsfs-staging-test-{}", std::process::id()));
        let mut staging = Staging::create(&dir).unwrap();
        staging.write_at(0, b"hello").unwrap();
        staging.write_at(10, b"world").unwrap();
        assert_eq!(staging.len(), 15);
        assert_eq!(staging.read_at(0, 100).unwrap(), b"hello\0\0\0\0\0world");
        staging.set_len(3).unwrap();
        assert_eq!(staging.read_at(0, 100).unwrap(), b"hel");
        staging.set_len(6).unwrap();
        assert_eq!(staging.read_at(2, 100).unwrap(), b"l\0\0\0");
        assert_eq!(staging.read_at(6, 10).unwrap(), b"");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no names");
        let named = dir.join("named");
        staging.persist(&named).unwrap();
        assert_eq!(std::fs::read(&named).unwrap(), b"hel\0\0\0");
        let mut copy = staging.duplicate(&dir).unwrap();
        copy.write_at(0, b"H").unwrap();
        assert_eq!(
            std::fs::read(&named).unwrap(),
            b"hel\0\0\0",
            "the copy is apart"
        );
        let adopted = Staging::adopt(&named).unwrap();
        assert_eq!(adopted.read_at(0, 100).unwrap(), b"hel\0\0\0");
        std::fs::remove_file(&named).unwrap();
        drop(staging);
        std::fs::remove_dir(&dir).unwrap();
    }
}
