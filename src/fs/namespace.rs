//! Names: looking them up, and the attributes and symlink targets behind them.

use super::error::FsError;
use super::{Attr, FtpFs, NAME_MAX};
use crate::ftp::listing::EntryKind;

impl FtpFs {
    /// Looks `name` up in the directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(FsError::NotFound);
        }
        self.within(async {
            let (parent_node, parent_entry) = self.entry(parent).await?;
            if parent_entry.is_some_and(|e| e.kind != EntryKind::Dir) {
                return Err(FsError::NotADirectory);
            }
            let listing = self.dirs.get(&self.pool, &parent_node.path).await?;
            let entry = listing.get(name).ok_or(FsError::NotFound)?;
            let ino = self.child_inode(parent, name)?;
            Ok(self.attrs.attr(ino, Some(entry)))
        })
        .await
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.within(async {
            let (_, entry) = self.entry(ino).await?;
            Ok(self.attrs.attr(ino, entry.as_ref()))
        })
        .await
    }

    /// Where the symlink `ino` points.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.within(async {
            let (node, entry) = self.entry(ino).await?;
            if entry.as_ref().map(|e| e.kind) != Some(EntryKind::Symlink) {
                return Err(FsError::NotFound);
            }
            let parent = self.node(node.parent)?;
            let listing = self.dirs.get(&self.pool, &parent.path).await?;
            self.dirs
                .link_target(&self.pool, &listing, &parent.path, &node.name)
                .await
        })
        .await
    }
}
