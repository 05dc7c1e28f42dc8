//! What the two cache tiers share: which file version a block belongs to, and how
//! blocking disk work runs.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A modification time: seconds since 1970 and nanoseconds.
pub type Mtime = (i64, u32);

/// Which file, in which version; two versions never share blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileVersion {
    /// Path on the server.
    pub path: Arc<[u8]>,
    /// Size in bytes from the listing.
    pub size: u64,
    /// Modification time from the listing (seconds, nanoseconds).
    pub mtime: Mtime,
}

/// One block of one file version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKey {
    /// The file version.
    pub version: Arc<FileVersion>,
    /// Block number (offset / block size).
    pub index: u64,
}

impl Hash for BlockKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.version.hash(state);
        self.index.hash(state);
    }
}

/// Runs blocking disk work off the async workers when there are any, else here.
pub fn in_background(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => work(),
    }
}
