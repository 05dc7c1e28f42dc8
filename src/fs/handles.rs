//! Open file and directory handles: the numbers the kernel hands back on every read,
//! readdir and release.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::FsError;
use super::read::reader::OpenFile;
use super::write::file::WriteHandle;
use super::DirEntry;

/// What a handle stands for.
#[derive(Clone)]
pub enum Handle {
    /// An open directory: the snapshot of its entries taken at opendir.
    Dir(Arc<Vec<DirEntry>>),
    /// A file open for reading.
    Read(Arc<OpenFile>),
    /// A file open for writing (and maybe reading).
    Write(Arc<WriteHandle>),
}

/// The open handles of a mount.
pub struct HandleTable {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Handle>>,
}

impl Default for HandleTable {
    fn default() -> Self {
        Self {
            // 0 is left unused: a zero handle in a bug report is then never a real one.
            next: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl HandleTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `handle`; returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(number, handle);
        number
    }

    /// The directory behind `number`.
    pub fn dir(&self, number: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        match self.lock().get(&number) {
            Some(Handle::Dir(entries)) => Ok(entries.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// The file open for reading behind `number`.
    pub fn read(&self, number: u64) -> Result<Arc<OpenFile>, FsError> {
        match self.lock().get(&number) {
            Some(Handle::Read(file)) => Ok(file.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// The file open for writing behind `number`.
    pub fn write(&self, number: u64) -> Result<Arc<WriteHandle>, FsError> {
        match self.lock().get(&number) {
            Some(Handle::Write(file)) => Ok(file.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// What `number` stands for.
    pub fn get(&self, number: u64) -> Result<Handle, FsError> {
        self.lock().get(&number).cloned().ok_or(FsError::BadHandle)
    }

    /// Forgets `number`; returns what it stood for.
    pub fn remove(&self, number: u64) -> Option<Handle> {
        self.lock().remove(&number)
    }

    /// Handles open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
