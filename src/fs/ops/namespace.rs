//! Names: looking them up, the attributes and symlink targets behind them, and changing
//! them (mkdir, rmdir, unlink, rename).
//!
//! A change is made on the server first and then patched into the cached listings, so
//! the next lookup sees it without a listing. Commands that change the server are never
//! repeated blindly (see `ftp::Retry`): when the connection is lost before the reply,
//! a fresh listing tells whether the change happened.

use std::time::SystemTime;

use crate::fs::error::FsError;
use crate::fs::meta::dircache::Change;
use crate::fs::meta::inode::{join_path, ROOT_INODE};
use crate::fs::meta::names::{check_new_name, NAME_MAX};
use crate::fs::write::file::{WriteFile, WriteState};
use crate::fs::write::upload;
use crate::fs::{Attr, FtpFs};
use crate::ftp::listing::{Entry, EntryKind};
use crate::ftp::FtpError;

/// How `rename` may replace its target (renameat2's flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct RenameFlags {
    /// RENAME_NOREPLACE: fail if the target exists.
    pub no_replace: bool,
    /// RENAME_EXCHANGE: swap source and target (not possible over FTP).
    pub exchange: bool,
}

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
            match listing.get(name) {
                Some(entry) => {
                    let ino = self.child_inode(parent, name)?;
                    Ok(self.attr_of(ino, Some(entry)))
                }
                None => self.local_only_attr(parent, name).ok_or(FsError::NotFound),
            }
        })
        .await
    }

    /// The attributes of a file created here and not yet uploaded, if `name` is one.
    fn local_only_attr(&self, parent: u64, name: &[u8]) -> Option<Attr> {
        let ino = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .existing_child(parent, name)?;
        let shown = self.writer.file(ino)?.shown();
        shown.local_only.then(|| self.written_attr(ino, shown))
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.within(async {
            match self.entry(ino).await {
                Ok((_, entry)) => Ok(self.attr_of(ino, entry.as_ref())),
                Err(FsError::NotFound) => {
                    let node = self.node(ino)?;
                    self.local_only_attr(node.parent, node.name())
                        .filter(|attr| attr.ino == ino)
                        .ok_or(FsError::NotFound)
                }
                Err(e) => Err(e),
            }
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
            let target = self
                .dirs
                .link_target(&self.pool, &listing, &parent.path, node.name())
                .await?;
            if !(self.config.transform_symlinks && target.starts_with(b"/")) {
                return Ok(target);
            }
            let root = self.node(ROOT_INODE)?.path;
            let Some(absolute_root) = self.absolute_root(&root).await else {
                return Ok(target);
            };
            let link_dir = parent.path.strip_prefix(&*root).unwrap_or(&parent.path);
            let link_dir = link_dir.strip_prefix(b"/").unwrap_or(link_dir);
            Ok(
                crate::fs::meta::names::relative_target(&absolute_root, link_dir, &target)
                    .unwrap_or(target),
            )
        })
        .await
    }

    /// The mounted directory's absolute path on the server: the URL's path when it is
    /// absolute, else below the login directory (PWD, asked once). None when the server
    /// will not say; absolute symlink targets are then shown as they are.
    async fn absolute_root(&self, root: &[u8]) -> Option<Vec<u8>> {
        if root.starts_with(b"/") {
            return Some(root.to_vec());
        }
        if let Some(known) = self
            .login_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(join_path(&known, root));
        }
        let pool = &self.pool;
        match crate::with_connection!(pool, |conn| conn.working_directory().await).await {
            Ok(login) => {
                tracing::debug!(login = %login.escape_ascii(), "login directory");
                *self.login_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(login.clone());
                Some(join_path(&login, root))
            }
            Err(e) => {
                tracing::debug!("cannot learn the login directory ({e}); absolute symlink targets stay as they are");
                None
            }
        }
    }

    /// The directory `parent`'s path, checking that it is a directory.
    async fn dir_path(&self, parent: u64) -> Result<Vec<u8>, FsError> {
        let (node, entry) = self.entry(parent).await?;
        if entry.is_some_and(|e| e.kind != EntryKind::Dir) {
            return Err(FsError::NotADirectory);
        }
        Ok(node.path.to_vec())
    }

    /// The outcome of removing `name` from `dir` (DELE, RMD). A reply lost on the way is
    /// settled by a fresh listing, never by sending the command again: a repeated removal
    /// would fail after the first one succeeded.
    async fn removal_outcome(
        &self,
        removed: Result<(), FtpError>,
        dir: &[u8],
        name: &[u8],
    ) -> Result<(), FsError> {
        match removed {
            Ok(()) => Ok(()),
            Err(e @ FtpError::Unconfirmed { .. }) => match self.exists_now(dir, name).await? {
                Some(_) => Err(e.into()),
                None => Ok(()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `name` exists in `dir` according to a listing fetched now: the way to
    /// learn the outcome of a change whose reply was lost.
    async fn exists_now(&self, dir: &[u8], name: &[u8]) -> Result<Option<Entry>, FsError> {
        self.dirs.invalidate(dir);
        let listing = self.dirs.get(&self.pool, dir).await?;
        Ok(listing.get(name).cloned())
    }

    /// Creates the directory `name` in `parent` (MKD).
    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> Result<Attr, FsError> {
        self.writable()?;
        check_new_name(name)?;
        let pool = &self.pool;
        self.within(async {
            let dir = self.dir_path(parent).await?;
            let listing = self.dirs.get(pool, &dir).await?;
            if listing.get(name).is_some() || self.local_only_attr(parent, name).is_some() {
                return Err(FsError::AlreadyExists);
            }
            let path = join_path(&dir, name);
            let mut made = crate::with_connection!(pool, |conn| conn.make_dir(&path).await).await;
            if made.as_ref().is_err_and(FtpError::is_desync)
                && self.exists_now(&dir, name).await?.is_none()
            {
                // Out of step before its reply, and the directory is not there: the
                // mount sends one command at a time now, so ask again.
                made = crate::with_connection!(pool, |conn| conn.make_dir(&path).await).await;
            }
            // Made by this MKD, the directory is empty: opening it (rsync, cp -r and tar
            // -x open every directory they make) needs no listing.
            let made_empty = made.is_ok();
            match made {
                Ok(()) => {}
                Err(e @ FtpError::Unconfirmed { .. }) => {
                    if self.exists_now(&dir, name).await?.map(|e| e.kind) != Some(EntryKind::Dir) {
                        return Err(e.into());
                    }
                }
                // Someone else may have made the name since this mount listed the
                // directory: vsftpd then says only "550 Create directory operation
                // failed". The fresh listing tells, and keeps it.
                Err(e @ FtpError::Rejected { .. }) => {
                    return Err(match self.exists_now(&dir, name).await? {
                        Some(_) => FsError::AlreadyExists,
                        None => e.into(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
            // Servers make directories 0755 (umask 022); ask only for something else.
            let mode = mode & 0o7777;
            let mut shown_mode = None;
            if mode != 0o755 {
                let metadata = upload::Metadata {
                    mtime: None,
                    mode: Some(mode),
                };
                let applied = crate::with_connection!(pool, |conn| upload::apply_metadata(
                    conn,
                    &path,
                    upload::Target::Directory,
                    metadata
                )
                .await)
                .await;
                shown_mode = applied.ok().and_then(|applied| applied.mode);
            }
            let entry = Entry {
                name: name.to_vec(),
                kind: EntryKind::Dir,
                size: None,
                modified: Some(crate::fs::write::file::timestamp(SystemTime::now())),
                mode: shown_mode,
                link_target: None,
            };
            self.dirs.record(&dir, Change::Upsert(entry.clone()));
            self.dirs.touch(&dir, now());
            if made_empty {
                self.dirs.created_empty(&path);
            }
            let ino = self.child_inode(parent, name)?;
            Ok(self.attr_of(ino, Some(&entry)))
        })
        .await
    }

    /// Removes the empty directory `name` from `parent` (RMD).
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        let pool = &self.pool;
        self.within(async {
            let dir = self.dir_path(parent).await?;
            let listing = self.dirs.get(pool, &dir).await?;
            let entry = listing.get(name).ok_or(FsError::NotFound)?;
            if entry.kind != EntryKind::Dir {
                return Err(FsError::NotADirectory);
            }
            let path = join_path(&dir, name);
            let ino = self.child_inode(parent, name)?;
            // vsftpd says only "Remove directory operation failed." for a full directory:
            // the listing says why. Only RMD can tell for a directory the server cannot
            // read (no owner read bit): vsftpd lists such a directory as one entry, the
            // directory itself, which is no sign of content.
            let unreadable = entry.mode.is_some_and(|mode| mode & 0o400 == 0);
            if !unreadable && !self.dirs.get(pool, &path).await?.entries.is_empty() {
                return Err(FsError::NotEmpty);
            }
            if self.has_local_only_children(ino) {
                return Err(FsError::NotEmpty);
            }
            let mut removed =
                crate::with_connection!(pool, |conn| conn.remove_dir(&path).await).await;
            if removed.as_ref().is_err_and(FtpError::is_desync)
                && self.exists_now(&dir, name).await?.is_some()
            {
                removed = crate::with_connection!(pool, |conn| conn.remove_dir(&path).await).await;
            }
            let removed = match removed {
                // A directory that is there, refused with no reason in words (vsftpd's
                // "Remove directory operation failed." maps to ENOENT): not empty.
                Err(e @ FtpError::Rejected { .. }) if unreadable => {
                    let error = FsError::from(e);
                    return Err(match error.errno() {
                        libc::ENOENT => FsError::NotEmpty,
                        _ => error,
                    });
                }
                other => other,
            };
            self.removal_outcome(removed, &dir, name).await?;
            self.dirs.record(&dir, Change::Remove(name.to_vec()));
            self.dirs.touch(&dir, now());
            self.dirs.forget_tree(&path);
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unlink(parent, name);
            Ok(())
        })
        .await
    }

    /// Deletes the file `name` from `parent` (DELE).
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        let pool = &self.pool;
        self.within(async {
            let dir = self.dir_path(parent).await?;
            let ino = self
                .inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .existing_child(parent, name);
            // Open for writing or queued: its changes go nowhere once it is deleted, as on
            // a local disk. Its state is held from here: this waits for an upload under
            // way (the last close of a new file), which decides whether the server has
            // the file, and no upload of it starts until the server has deleted it; a
            // refused deletion leaves its changes as they were.
            let file = ino.and_then(|ino| self.writer.file(ino));
            let mut held = match &file {
                Some(file) => Some(file.state.lock().await),
                None => None,
            };
            if let (Some(file), Some(state)) = (&file, held.as_mut()) {
                if !state.on_server {
                    self.discard_held(file, state);
                    drop(held);
                    self.forget_name(parent, name, ino);
                    return Ok(());
                }
            }
            let listing = self.dirs.get(pool, &dir).await?;
            let Some(entry) = listing.get(name) else {
                // Gone from the server already (another client): so are the changes.
                if let (Some(file), Some(state)) = (&file, held.as_mut()) {
                    self.discard_held(file, state);
                }
                return Err(FsError::NotFound);
            };
            if entry.kind == EntryKind::Dir {
                return Err(FsError::IsADirectory);
            }
            let path = join_path(&dir, name);
            let mut deleted = crate::with_connection!(pool, |conn| conn.delete(&path).await).await;
            if deleted.as_ref().is_err_and(FtpError::is_desync)
                && self.exists_now(&dir, name).await?.is_some()
            {
                deleted = crate::with_connection!(pool, |conn| conn.delete(&path).await).await;
            }
            self.removal_outcome(deleted, &dir, name).await?;
            if let (Some(file), Some(state)) = (&file, held.as_mut()) {
                self.discard_held(file, state);
            }
            drop(held);
            self.dirs.record(&dir, Change::Remove(name.to_vec()));
            self.dirs.touch(&dir, now());
            self.forget_name(parent, name, ino);
            Ok(())
        })
        .await
    }

    /// Forgets the inode and cached data of a deleted name.
    fn forget_name(&self, parent: u64, name: &[u8], ino: Option<u64>) {
        if let (Some(ino), Ok(node)) = (ino, self.node(parent)) {
            self.forget_file_data(ino, &join_path(&node.path, name));
        }
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unlink(parent, name);
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent` (RNFR, RNTO), replacing
    /// a file there. Servers that refuse to rename onto a file get it moved aside first.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<(), FsError> {
        self.writable()?;
        if flags.exchange {
            return Err(FsError::InvalidRequest("RENAME_EXCHANGE"));
        }
        check_new_name(new_name)?;
        let pool = &self.pool;
        let (dir, new_dir, source, target) = self
            .within(async {
                let dir = self.dir_path(parent).await?;
                let new_dir = self.dir_path(new_parent).await?;
                let source = self.dirs.get(pool, &dir).await?.get(name).cloned();
                let target = self.dirs.get(pool, &new_dir).await?.get(new_name).cloned();
                Ok((dir, new_dir, source, target))
            })
            .await?;
        let ino = self.child_inode(parent, name)?;
        let local_only = self.local_only_attr(parent, name).is_some();
        if source.is_none() && !local_only {
            return Err(FsError::NotFound);
        }
        let target_local = self.local_only_attr(new_parent, new_name);
        if flags.no_replace && (target.is_some() || target_local.is_some()) {
            return Err(FsError::AlreadyExists);
        }
        let source_is_dir = source.as_ref().is_some_and(|e| e.kind == EntryKind::Dir);
        if let Some(target) = &target {
            match (source_is_dir, target.kind == EntryKind::Dir) {
                (true, false) => return Err(FsError::NotADirectory),
                (false, true) => return Err(FsError::IsADirectory),
                (true, true) => {
                    let inside = self.dirs.get(pool, &join_path(&new_dir, new_name)).await?;
                    // Files created there and not uploaded yet count too.
                    let local = self
                        .inodes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .existing_child(new_parent, new_name);
                    if !inside.entries.is_empty()
                        || local.is_some_and(|dir| self.has_local_only_children(dir))
                    {
                        return Err(FsError::NotEmpty);
                    }
                }
                (false, false) => {}
            }
        }
        if dir == new_dir && name == new_name {
            return Ok(());
        }
        if !source_is_dir
            && target.as_ref().is_none_or(|t| t.kind != EntryKind::Dir)
            && self
                .fold_rename(ino, new_parent, new_name, target.as_ref())
                .await?
        {
            return Ok(());
        }
        // Changes not uploaded yet go up first, under the old name, so that the server
        // renames what the program wrote (a file created here gets to the server so).
        self.commit_writes(ino).await?;
        if source_is_dir {
            self.land_queued_under(&join_path(&dir, name)).await?;
        }
        let source = match source {
            Some(source) => source,
            None => self
                .dirs
                .cached_entry(&dir, name)
                .ok_or(FsError::NotFound)?,
        };
        let replaced = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .existing_child(new_parent, new_name);
        // The write states of both files are held until the names have changed here
        // too: an upload of the source landing meanwhile would go to its old name, and
        // one of the replaced file over the renamed one. The replaced file's changes go
        // once the server has replaced it; a refused rename leaves them as they were.
        let source_file = self.writer.file(ino);
        let replaced_file = replaced
            .filter(|&r| r != ino)
            .and_then(|r| self.writer.file(r));
        let (source_held, mut replaced_held) =
            lock_in_order(source_file.as_deref(), replaced_file.as_deref()).await;
        let from = join_path(&dir, name);
        let to = join_path(&new_dir, new_name);
        let refuses = self.writer.refuses_overwrite();
        let target_exists = target.is_some() || target_local.is_some();
        let rename = || {
            self.within(async {
                let mut conn = pool.get().await?;
                upload::rename_replacing(
                    &mut conn,
                    &new_dir,
                    &from,
                    new_name,
                    target_exists,
                    refuses,
                )
                .await
            })
        };
        let mut renamed = rename().await;
        let out_of_step = |e: &FsError| e.remote().is_some_and(FtpError::is_desync);
        if renamed.as_ref().is_err_and(out_of_step)
            && !target_exists
            && self.exists_now(&dir, name).await?.is_some()
        {
            // Out of step before RNTO's reply, and the file is still where it was: the
            // mount sends one command at a time now, so rename again.
            renamed = rename().await;
        }
        match renamed {
            Ok(refused) => {
                if refused {
                    self.writer.note_refuses_overwrite();
                }
            }
            Err(e)
                if e.remote()
                    .is_some_and(|e| matches!(e, FtpError::Unconfirmed { .. })) =>
            {
                let gone = self.exists_now(&dir, name).await?.is_none();
                let there = self.exists_now(&new_dir, new_name).await?.is_some();
                if !(gone && there) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        if let (Some(file), Some(state)) = (&replaced_file, replaced_held.as_mut()) {
            self.discard_held(file, state);
        }
        drop(replaced_held);
        self.forget_file_data(ino, &from);
        if let Some(replaced) = replaced.filter(|&r| r != ino) {
            self.forget_file_data(replaced, &to);
        }
        self.dirs.record(&dir, Change::Remove(name.to_vec()));
        let mut entry = source;
        entry.name = new_name.to_vec();
        self.dirs.record(&new_dir, Change::Upsert(entry));
        self.dirs.touch(&dir, now());
        self.dirs.touch(&new_dir, now());
        if source_is_dir {
            self.dirs.forget_tree(&from);
            self.dirs.forget_tree(&to);
        }
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rename(ino, new_parent, new_name)
            .ok_or(FsError::BadHandle)?;
        drop(source_held);
        Ok(())
    }

    /// Symbolic links cannot be made over FTP.
    pub fn symlink(&self) -> Result<Attr, FsError> {
        self.writable()?;
        Err(FsError::NotPermitted(
            "symbolic links cannot be created over FTP",
        ))
    }

    /// Hard links cannot be made over FTP.
    pub fn link(&self) -> Result<Attr, FsError> {
        self.writable()?;
        Err(FsError::NotPermitted(
            "hard links cannot be created over FTP",
        ))
    }
}

/// The time a change made now shows on its directory.
fn now() -> crate::ftp::listing::Timestamp {
    crate::fs::write::file::timestamp(SystemTime::now())
}

/// Locks the write states of two files in inode order, so that two renames of the same
/// pair the other way round at the same time cannot each hold one and wait for the other.
async fn lock_in_order<'a>(
    first: Option<&'a WriteFile>,
    second: Option<&'a WriteFile>,
) -> (
    Option<tokio::sync::MutexGuard<'a, WriteState>>,
    Option<tokio::sync::MutexGuard<'a, WriteState>>,
) {
    async fn lock(file: Option<&WriteFile>) -> Option<tokio::sync::MutexGuard<'_, WriteState>> {
        match file {
            Some(file) => Some(file.state.lock().await),
            None => None,
        }
    }
    if matches!((first, second), (Some(a), Some(b)) if b.ino < a.ino) {
        let second = lock(second).await;
        (lock(first).await, second)
    } else {
        let first = lock(first).await;
        (first, lock(second).await)
    }
}
