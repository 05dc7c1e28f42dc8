//! Writing files: create, open for writing, write, truncate, set attributes, close,
//! fsync; each acts on the file's [`WriteFile`] and lands its upload (see `upload.rs`).

use std::sync::Arc;
use std::time::SystemTime;

use crate::ftp::listing::{Entry, EntryKind};
use crate::ftp::{FtpError, PooledConnection};

use crate::fs::cache::version::FileVersion;
use crate::fs::error::FsError;
use crate::fs::handles::Handle;
use crate::fs::meta::attr::Attr;
use crate::fs::meta::dircache::Change;
use crate::fs::meta::inode::join_path;
use crate::fs::meta::names::{item_temp_name, shown, temp_name};
use crate::fs::ops::writeback::changed_by_another;
use crate::fs::read::reader::{OpenFile, ReadData};
use crate::fs::write::file::{
    timestamp, Closer, Content, OpenMode, SetAttr, Shown, WriteFile, WriteHandle, WriteState,
};
use crate::fs::write::follower::{Follower, FOLLOW_FROM};
use crate::fs::write::journal::Item;
use crate::fs::write::staging::Staging;
use crate::fs::write::upload::{self, Metadata, StreamUpload};
use crate::fs::{FtpFs, Opened};

/// An upload landed: the size stored, what of its metadata was set, and the name it
/// landed under instead of its own when another client had changed the file.
struct Landed {
    size: u64,
    applied: Metadata,
    conflict: Option<Vec<u8>>,
}

impl FtpFs {
    /// Fails with EROFS on a read-only mount.
    pub(in crate::fs) fn writable(&self) -> Result<(), FsError> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The attributes of a file being written.
    pub(in crate::fs) fn written_attr(&self, ino: u64, shown: Shown) -> Attr {
        let mut attr = self.attrs.attr(
            ino,
            Some(&Entry {
                name: Vec::new(),
                kind: EntryKind::File,
                size: Some(shown.size),
                modified: Some(timestamp(shown.mtime)),
                mode: shown.mode,
                link_target: None,
            }),
        );
        attr.changing = true;
        attr
    }

    /// Creates `name` in `parent` and opens it for writing. The file exists only in this
    /// mount until its first upload lands (at close).
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        how: OpenMode,
        pid: u32,
    ) -> Result<(Attr, Opened), FsError> {
        self.writable()?;
        crate::fs::meta::names::check_new_name(name)?;
        self.within(async {
            let (_, parent_entry) = self.entry(parent).await?;
            if parent_entry.is_some_and(|e| e.kind != EntryKind::Dir) {
                return Err(FsError::NotADirectory);
            }
            Ok(())
        })
        .await?;
        // A name deleted or replaced before gets a new inode: handles on the old one stay
        // with the old one.
        let ino = {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            inodes.unlink(parent, name);
            inodes.child(parent, name).ok_or(FsError::BadHandle)?
        };
        let now = SystemTime::now();
        let requested = mode & 0o7777;
        let file = self.writer.open(ino, || WriteState {
            content: Content::Zeros,
            size: 0,
            dirty: true,
            written: false,
            on_server: false,
            base: None,
            base_reader: None,
            set_mtime: None,
            // Servers create files 0644 (umask 022); ask only for something else.
            set_mode: (requested != 0o644).then_some(requested),
            mode: Some(requested),
            discarded: false,
            failure: None,
            failures: 0,
            changed_at: now,
            queued: None,
            shares_queued: false,
            in_order: true,
            follower: None,
        });
        if let Ok(dir) = self.node(parent) {
            self.dirs.touch(&dir.path, timestamp(now));
        }
        let attr = self.written_attr(ino, file.shown());
        let failures = file.failures().await;
        let handle = self.handles.insert(Handle::Write(Arc::new(WriteHandle::new(
            file, failures, how.read, true, pid,
        ))));
        tracing::debug!(ino, name = %shown(name), "created");
        Ok((
            attr,
            Opened {
                handle,
                keep_cache: false,
            },
        ))
    }

    /// Opens `ino` for writing (and maybe reading).
    pub(in crate::fs) async fn open_for_write(
        &self,
        ino: u64,
        how: OpenMode,
        pid: u32,
    ) -> Result<Opened, FsError> {
        self.writable()?;
        let file = match self.writer.reopen(ino) {
            Some(file) => {
                let stopped = {
                    let state = file.state.lock().await;
                    state.queued.and(state.failure.clone())
                };
                if let Some(failure) = stopped {
                    // Its queued upload was refused for good: said until retried or
                    // discarded (`ftpsfs queue`).
                    self.writer.close(&file);
                    return Err(failure);
                }
                file
            }
            None => {
                let (node, entry) = self.within(self.entry(ino)).await?;
                let entry = entry.ok_or(FsError::IsADirectory)?;
                if entry.kind == EntryKind::Dir {
                    return Err(FsError::IsADirectory);
                }
                let base = Arc::new(FileVersion {
                    path: node.path.clone(),
                    size: entry.size.unwrap_or(0),
                    mtime: entry.modified.map_or((0, 0), |t| (t.unix_seconds, t.nanos)),
                });
                let shown_mtime = entry.modified.map_or(SystemTime::now(), |t| {
                    crate::fs::meta::attr::system_time(&t)
                });
                self.writer.open(ino, || WriteState {
                    content: Content::Server,
                    size: base.size,
                    dirty: false,
                    written: false,
                    on_server: true,
                    base: Some(base),
                    base_reader: None,
                    set_mtime: None,
                    set_mode: None,
                    mode: entry.mode,
                    discarded: false,
                    failure: None,
                    failures: 0,
                    changed_at: shown_mtime,
                    queued: None,
                    shares_queued: false,
                    in_order: false,
                    follower: None,
                })
            }
        };
        let failures = file.failures().await;
        if how.truncate {
            let mut state = file.state.lock().await;
            self.truncate_locked(ino, &mut state, 0).await?;
            // A shell's `>` and dd open with O_TRUNC, then close a duplicate descriptor
            // before writing anything: the open's truncation alone waits for the last
            // close, so that a writer killed meanwhile has not replaced the file with
            // an empty one. (The kernel passes O_TRUNC with the open, see fuse.rs.)
            state.written = false;
            file.publish(&state);
        }
        let handle = self.handles.insert(Handle::Write(Arc::new(WriteHandle::new(
            file, failures, how.read, true, pid,
        ))));
        Ok(Opened {
            handle,
            keep_cache: false,
        })
    }

    /// Writes `data` at `offset` of an open file, for process `pid`. It takes the buffer
    /// so that a streamed upload queues it without another copy.
    pub async fn write(
        &self,
        handle: u64,
        offset: u64,
        data: Vec<u8>,
        pid: u32,
    ) -> Result<u32, FsError> {
        let write = self.handles.write(handle)?;
        write.note_writer(pid);
        let file = write.file.clone();
        let mut state = file.state.lock().await;
        write.failure(&state)?;
        let len = data.len() as u32;
        let result = self.write_locked(file.ino, &mut state, offset, data).await;
        if let Err(e) = &result {
            // A failure recorded already (a lost stream's) has cleared `dirty`.
            if state.dirty {
                self.fail(&mut state, e.clone());
            }
        }
        file.publish(&state);
        result.map(|()| len)
    }

    async fn write_locked(
        &self,
        ino: u64,
        state: &mut WriteState,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), FsError> {
        state.dirty = true;
        state.written = true;
        state.changed_at = SystemTime::now();
        let end = offset + data.len() as u64;
        if offset < state.size {
            // Bytes a follower may have sent change.
            state.in_order = false;
            state.follower = None;
        }
        if state.discarded {
            // Deleted while open: the writes go nowhere, as on a local disk.
            state.size = state.size.max(end);
            return Ok(());
        }
        // Under write-back a file is staged whole: a close makes it durable locally.
        if matches!(state.content, Content::Zeros) && state.size <= offset && self.queue().is_none()
        {
            let path = self.upload_path(ino)?;
            tracing::debug!(ino, path = %shown(&path), "streaming the upload as it is written");
            state.content = Content::Streaming(StreamUpload::start(
                &self.pool,
                path,
                self.config.data_timeout,
            ));
        }
        if let Content::Streaming(stream) = &mut state.content {
            if offset >= stream.position {
                let gap = offset - stream.position;
                stream.send_zeros(gap).await?;
                stream.send(data).await?;
                state.size = state.size.max(end);
                return Ok(());
            }
            tracing::debug!(ino, offset, "a write out of order: staging the file");
        }
        self.unshare_queued(state)?;
        let staging = self.staged(ino, state).await?;
        staging.write_at(offset, &data)?;
        state.size = staging.len();
        self.follow_writes(ino, state)?;
        Ok(())
    }

    /// Under write-back, tells the upload following a file's writes that it grew, or
    /// starts one once a file written in order is big enough (see [`Follower`]).
    fn follow_writes(&self, ino: u64, state: &mut WriteState) -> Result<(), FsError> {
        if let Some(follower) = &state.follower {
            follower.grown(state.size);
            return Ok(());
        }
        let Some(queue) = self.queue() else {
            return Ok(());
        };
        if !state.in_order || state.size < FOLLOW_FROM || !self.config.atomic_uploads {
            return Ok(());
        }
        let Content::Staged(staging) = &state.content else {
            return Ok(());
        };
        let id = queue.next_id();
        let path = self.upload_path_of(ino, Some(id))?;
        tracing::debug!(ino, path = %shown(&path), id, "write-back: uploading while the file is written");
        state.follower = Some(Follower::start(
            &self.pool,
            &self.janitor,
            staging,
            id,
            path,
            state.size,
        )?);
        Ok(())
    }

    /// Where an upload of `ino` goes: a fresh temporary name beside it, or its own name
    /// without atomic uploads.
    fn upload_path(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.upload_path_of(ino, None)
    }

    /// [`Self::upload_path`] of the write-back item `item`, if it is one: its own
    /// temporary name (see [`item_temp_name`]).
    fn upload_path_of(&self, ino: u64, item: Option<u64>) -> Result<Vec<u8>, FsError> {
        let node = self.node(ino)?;
        let parent = self.node(node.parent)?;
        Ok(if self.config.atomic_uploads {
            let temporary = match item {
                Some(id) => item_temp_name(node.name(), id, self.queue().map_or(0, |q| q.mount)),
                None => temp_name(node.name()),
            };
            join_path(&parent.path, &temporary)
        } else {
            node.path.to_vec()
        })
    }

    /// The staging file of a file being written, made now if need be: filled from what
    /// the server has, or from what a stream uploaded so far.
    pub(in crate::fs) async fn staged<'s>(
        &self,
        ino: u64,
        state: &'s mut WriteState,
    ) -> Result<&'s mut Staging, FsError> {
        self.staged_prefix(ino, state, u64::MAX).await
    }

    /// [`Self::staged`] when only the first `keep` bytes of the content matter (a
    /// truncation to `keep`): no more is fetched, and the staging file is that long.
    async fn staged_prefix<'s>(
        &self,
        ino: u64,
        state: &'s mut WriteState,
        keep: u64,
    ) -> Result<&'s mut Staging, FsError> {
        if !matches!(state.content, Content::Staged(_)) {
            let previous = std::mem::replace(&mut state.content, Content::Zeros);
            // What the content stays if staging fails: the server's copy must never
            // become zeros that a later upload sends in its place.
            let unchanged = match previous {
                Content::Server => Some(Content::Server),
                Content::Zeros => Some(Content::Zeros),
                Content::Streaming(_) | Content::Staged(_) => None,
            };
            let len = state.size.min(keep);
            match self
                .fill_staging(previous, state.base.clone(), keep, len)
                .await
            {
                Ok(staging) => {
                    tracing::debug!(ino, size = len, "staging file ready");
                    state.content = Content::Staged(staging);
                }
                Err(e) => {
                    match unchanged {
                        Some(content) => state.content = content,
                        // What was written went with the stream: this is a failed
                        // upload, and the server's copy stays the content.
                        None => self.fail(state, e.clone()),
                    }
                    return Err(e);
                }
            }
        }
        match &mut state.content {
            Content::Staged(staging) => Ok(staging),
            _ => unreachable!("staged above"),
        }
    }

    /// A staging file of `len` bytes holding the first `keep` bytes of `content` (the
    /// server's copy `base`, or what a stream uploaded, whose temporary file goes).
    async fn fill_staging(
        &self,
        content: Content,
        base: Option<Arc<FileVersion>>,
        keep: u64,
        len: u64,
    ) -> Result<Staging, FsError> {
        let mut staging = Staging::create(&self.config.staging_dir)?;
        match content {
            Content::Server => {
                if let Some(base) = base {
                    self.fill(&mut staging, base, keep).await?;
                }
            }
            Content::Zeros | Content::Staged(_) => {}
            Content::Streaming(stream) => {
                // What was streamed is on the server whole; it comes back to the
                // staging file.
                let path = stream.path.clone();
                let filled = async {
                    let (mut conn, sent) = stream.finish().await?;
                    let uploaded = upload::verify(&mut conn, &path, sent).await?;
                    drop(conn);
                    let version = Arc::new(FileVersion {
                        path: path.clone().into(),
                        size: uploaded,
                        // A version no listing will ever show, so no stale block is hit.
                        mtime: (-1, crate::fs::meta::names::unique() as u32),
                    });
                    self.fill(&mut staging, version, keep).await
                }
                .await;
                self.discard_temporary(path);
                filled?;
            }
        }
        staging.set_len(len)?;
        Ok(staging)
    }

    /// Copies the first `keep` bytes of `version` from the server (through the block
    /// cache) into `staging`.
    async fn fill(
        &self,
        staging: &mut Staging,
        version: Arc<FileVersion>,
        keep: u64,
    ) -> Result<(), FsError> {
        let reader = OpenFile::new(0, version.clone());
        let chunk = self.config.block_size.min(u64::from(u32::MAX));
        let end = version.size.min(keep);
        let copied = async {
            let mut offset = 0;
            while offset < end {
                let wanted = chunk.min(end - offset) as u32;
                let data = self.reader.read(&reader, offset, wanted).await?;
                if data.is_empty() {
                    return Err(FsError::Changed);
                }
                staging.write_at(offset, &data)?;
                offset += data.len() as u64;
            }
            Ok(())
        }
        .await;
        // Its read-ahead stops either way.
        self.reader.release(&reader).await;
        copied
    }

    /// Sets the size of a file being written (ftruncate: uploaded at the next close).
    async fn truncate_locked(
        &self,
        ino: u64,
        state: &mut WriteState,
        size: u64,
    ) -> Result<(), FsError> {
        state.dirty = true;
        state.written = true;
        state.changed_at = SystemTime::now();
        // What a follower sent may be cut; a file emptied is written in order afresh.
        state.follower = None;
        state.in_order = size == 0;
        match &state.content {
            // Nothing of the old content is needed.
            _ if size == 0 => {
                state.shares_queued = false;
                if let Content::Streaming(stream) =
                    std::mem::replace(&mut state.content, Content::Zeros)
                {
                    self.abandon(stream);
                }
                state.content = Content::Zeros;
            }
            Content::Zeros => {}
            // Growing a stream: zeros follow at its end.
            Content::Streaming(stream) if size >= stream.position => {}
            Content::Server | Content::Streaming(_) | Content::Staged(_) => {
                self.unshare_queued(state)?;
                self.staged_prefix(ino, state, size).await?.set_len(size)?;
            }
        }
        state.size = size;
        Ok(())
    }

    /// Reads `size` bytes at `offset` of a file being written.
    pub(in crate::fs) async fn read_written(
        &self,
        file: &WriteFile,
        offset: u64,
        size: u32,
    ) -> Result<ReadData, FsError> {
        let mut state = file.state.lock().await;
        if offset >= state.size {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let len = (state.size - offset).min(u64::from(size)) as usize;
        if matches!(state.content, Content::Streaming(_)) {
            self.staged(file.ino, &mut state).await?;
        }
        match &mut state.content {
            Content::Zeros => Ok(ReadData::Owned(vec![0; len])),
            Content::Staged(staging) => Ok(ReadData::Owned(staging.read_at(offset, len)?)),
            Content::Server => {
                let reader = match (&state.base_reader, &state.base) {
                    (Some(reader), _) => reader.clone(),
                    (None, Some(base)) => {
                        let reader = Arc::new(OpenFile::new(file.ino, base.clone()));
                        state.base_reader = Some(reader.clone());
                        reader
                    }
                    (None, None) => return Ok(ReadData::Owned(Vec::new())),
                };
                drop(state);
                self.reader.read(&reader, offset, len as u32).await
            }
            Content::Streaming(_) => unreachable!("staged above"),
        }
    }

    /// Records a failed upload: the new content is gone (what the server has stays), and
    /// the error answers the next writes and the flush.
    fn fail(&self, state: &mut WriteState, error: FsError) {
        // The program learns it from close() or write(), which many ignore: say it here.
        tracing::warn!("upload failed, the server keeps its copy: {error}");
        if let Content::Streaming(stream) = std::mem::replace(&mut state.content, Content::Server) {
            self.abandon(stream);
        }
        if matches!(state.content, Content::Server) {
            // What the server has stays, and so does its size: a later write must not
            // pad the old content out to the failed upload's length.
            state.size = state.base.as_ref().map_or(0, |base| base.size);
        }
        state.dirty = false;
        state.written = false;
        state.failure = Some(error);
        state.failures += 1;
    }

    /// Whether process `pid` opened `handle` for writing or wrote through it: then its
    /// close may complete the file (see [`Closer`]).
    pub fn is_writer(&self, handle: u64, pid: u32) -> bool {
        self.handles
            .write(handle)
            .is_ok_and(|write| write.counted && write.is_writer(pid))
    }

    /// The other processes that opened `handle` or wrote through it, besides `pid`:
    /// while one of them lives, `pid` being killed does not end the file (see
    /// [`Closer::KilledProcess`]).
    pub fn other_writers(&self, handle: u64, pid: u32) -> Vec<u32> {
        self.handles
            .write(handle)
            .map(|write| write.writers_besides(pid))
            .unwrap_or_default()
    }

    /// The inode of `handle`'s file when it is new and nothing was written to it yet:
    /// its flush creates it on the server unless the closer still holds it open
    /// (see [`Closer::ProgramKeepsOpen`]).
    pub async fn unwritten_new_file(&self, handle: u64) -> Option<u64> {
        let write = self.handles.write(handle).ok()?;
        let state = write.file.state.lock().await;
        (!state.on_server && !state.written && !state.discarded).then_some(write.file.ino)
    }

    /// Ends a use of an open file (`close()`, or the kernel closing a killed process's
    /// files): uploads what was written, and returns the upload's result.
    pub async fn flush(&self, handle: u64, closer: Closer) -> Result<(), FsError> {
        let Ok(write) = self.handles.write(handle) else {
            return Ok(());
        };
        if !write.counted {
            return Ok(());
        }
        let file = write.file.clone();
        if closer == Closer::Bystander {
            return Ok(());
        }
        if closer == Closer::KilledProcess && self.writer.is_shared(&file) {
            // Another handle still writes the file: its close decides what lands, as
            // with one process of a pipeline killed while the others go on.
            tracing::debug!(
                ino = file.ino,
                "a writer was killed; the file's other writers go on"
            );
            return Ok(());
        }
        let mut state = file.state.lock().await;
        if closer == Closer::KilledProcess {
            if let (true, Some(id)) = (self.queue().is_some(), state.queued) {
                if state.differs_from_queued() && !state.discarded {
                    // What was closed before stays queued; the killed writer's changes go.
                    tracing::info!(
                        ino = file.ino,
                        "the writer was killed: the content closed before it stays queued"
                    );
                    self.restore_queued(&file, &mut state, id)?;
                }
                return Ok(());
            }
            if state.dirty && !state.discarded {
                tracing::info!(
                    ino = file.ino,
                    "the writer was killed: its changes are not uploaded"
                );
                self.discard(&mut state);
                file.publish(&state);
            }
            return Ok(());
        }
        write.failure(&state)?;
        // A file not yet on the server is uploaded even if nothing was written: `touch`
        // and `cp` of an empty file must find it there, or its error, when close()
        // returns (the release that follows is not waited for); unless the program
        // still holds it on another descriptor and is about to write. An existing file
        // whose only change is the open's O_TRUNC keeps its content until something is
        // written or the last close: a shell's `>` closes its copy before the program
        // writes.
        if state.written || (!state.on_server && closer != Closer::ProgramKeepsOpen) {
            if self.queue().is_some() {
                if state.written || state.queued.is_none() {
                    self.queue_write(&file, &mut state).await?;
                }
            } else {
                self.commit(&file, &mut state).await?;
            }
        }
        Ok(())
    }

    /// Completes the upload of an open file now (fsync).
    pub async fn fsync(&self, handle: u64) -> Result<(), FsError> {
        let Ok(write) = self.handles.write(handle) else {
            return Ok(());
        };
        let file = write.file.clone();
        let mut state = file.state.lock().await;
        write.failure(&state)?;
        if self.queue().is_none() {
            return self.commit(&file, &mut state).await;
        }
        // Under write-back: made durable, then landed now, its error returned; a failed
        // upload stays queued.
        if state.dirty
            && !state.discarded
            && (state.differs_from_queued() || state.queued.is_none())
        {
            self.queue_write(&file, &mut state).await?;
        }
        // A rename or time folded into the item since is durable too, landed or not.
        if let Some(queue) = self.queue() {
            queue.journal.sync()?;
        }
        // Landed with the state held: a change or another close meanwhile would hold
        // the item back, or replace it, and leave fsync's data off the server.
        if let Some(id) = state.queued {
            self.land_queued_locked(&file, &mut state, id).await?;
        }
        Ok(())
    }

    /// Drops the changes of a file: a new file disappears, and an existing one keeps what
    /// the server has.
    fn discard(&self, state: &mut WriteState) {
        if let Content::Streaming(stream) = std::mem::replace(&mut state.content, Content::Server) {
            self.abandon(stream);
        }
        state.discarded = true;
        state.dirty = false;
        state.written = false;
        state.shares_queued = false;
        state.follower = None;
        if let Some(id) = state.queued.take() {
            self.drop_item(id);
        }
    }

    /// Uploads a file's content if it changed, atomically (see `upload.rs`).
    async fn commit(&self, file: &WriteFile, state: &mut WriteState) -> Result<(), FsError> {
        if !state.dirty || state.discarded {
            return Ok(());
        }
        // Boxed: an upload's state is large, and would otherwise sit in every close's.
        let result = Box::pin(self.upload_and_land(file.ino, state, None))
            .await
            .map(|_| ());
        match &result {
            Ok(()) => {}
            Err(e) => self.fail(state, e.clone()),
        }
        file.publish(state);
        result
    }

    /// Uploads the file's content and lands it under its name; with `expect` (the
    /// version a queued upload replaces), beside it instead when another client changed
    /// it meanwhile: returns that name then.
    pub(in crate::fs) async fn upload_and_land(
        &self,
        ino: u64,
        state: &mut WriteState,
        expect: Option<&Item>,
    ) -> Result<Option<Vec<u8>>, FsError> {
        let node = self.node(ino)?;
        let parent = self.node(node.parent)?;
        let (dir, mut name) = (parent.path, node.name().to_vec());
        let mut final_path = join_path(&dir, &name);
        let metadata = Metadata {
            mtime: state.set_mtime,
            mode: state.set_mode,
        };
        let size = state.size;
        let (mut conn, sent, path) = match &mut state.content {
            Content::Streaming(_) => {
                let Content::Streaming(mut stream) =
                    std::mem::replace(&mut state.content, Content::Server)
                else {
                    unreachable!("matched above")
                };
                let path = stream.path.clone();
                let finished = async {
                    if stream.position < size {
                        stream.send_zeros(size - stream.position).await?;
                    }
                    stream.finish().await
                }
                .await;
                match finished {
                    Ok((conn, uploaded)) => (conn, uploaded, path),
                    Err(e) => {
                        self.discard_temporary(path);
                        return Err(e);
                    }
                }
            }
            Content::Staged(staging) => {
                let path = self.upload_path_of(ino, expect.map(|item| item.id))?;
                let follower = state
                    .follower
                    .take()
                    .filter(|f| expect.is_some_and(|item| item.id == f.id && f.is_complete()));
                let followed = match follower {
                    Some(follower) => {
                        let followed_path = follower.path.clone();
                        match follower.finish().await {
                            Ok((conn, sent)) if sent == size => Some((conn, sent, followed_path)),
                            outcome => {
                                tracing::debug!(
                                    path = %shown(&followed_path),
                                    "the upload that followed the writes did not complete ({}); uploading again",
                                    outcome.err().map_or_else(|| "short".to_string(), |e| e.to_string())
                                );
                                if followed_path != path {
                                    // Renamed since: the next try goes to another name.
                                    self.janitor.delete(followed_path);
                                }
                                None
                            }
                        }
                    }
                    None => None,
                };
                match followed {
                    Some(followed) => followed,
                    None => {
                        let item = expect.is_some();
                        self.upload_whole(ino, path, Some(staging), 0, item, item)
                            .await?
                    }
                }
            }
            Content::Zeros => {
                let path = self.upload_path(ino)?;
                self.upload_whole(ino, path, None, size, expect.is_some(), false)
                    .await?
            }
            Content::Server => {
                state.dirty = false;
                return Ok(None);
            }
        };
        let mut landed = self
            .land(
                &mut conn,
                &path,
                &dir,
                &name,
                sent,
                metadata,
                state.on_server,
                expect,
            )
            .await;
        if landed
            .as_ref()
            .is_err_and(|e| e.remote().is_some_and(FtpError::is_desync))
        {
            // A reply that could not answer its command (a server answering out of order):
            // the mount sends one command at a time now. While the temporary file is still
            // there whole, its rename did not happen, and landing it again is safe.
            drop(conn);
            conn = match self.pool.get().await {
                Ok(conn) => conn,
                Err(e) => return Err(self.discard_after_upload(e.into(), path, expect.is_some())),
            };
            if path != final_path && conn.size(&path).await.ok() == Some(sent) {
                tracing::debug!(path = %shown(&final_path), "landing the upload again, one command at a time");
                landed = self
                    .land(
                        &mut conn,
                        &path,
                        &dir,
                        &name,
                        sent,
                        metadata,
                        state.on_server,
                        expect,
                    )
                    .await;
            }
        }
        let Landed {
            size: uploaded,
            applied,
            conflict,
        } = match landed {
            Ok(landed) => landed,
            Err(e) => {
                drop(conn);
                return Err(self.discard_after_upload(e, path, expect.is_some()));
            }
        };
        if let Some(beside) = &conflict {
            final_path = join_path(&dir, beside);
            name = beside.clone();
        }
        tracing::debug!(ino, path = %shown(&final_path), bytes = uploaded, "upload landed");
        let mtime = applied.mtime.unwrap_or(state.changed_at);
        // A mode the server could not set is not shown: the file has the server's.
        let mode = match state.set_mode {
            Some(_) => applied.mode,
            None => state.mode,
        };
        self.dirs.record(
            &dir,
            Change::Upsert(Entry {
                name: name.clone(),
                kind: EntryKind::File,
                size: Some(uploaded),
                modified: Some(timestamp(mtime)),
                mode,
                link_target: None,
            }),
        );
        self.dirs.touch(&dir, timestamp(SystemTime::now()));
        self.forget_file_data(ino, &final_path);
        let stamp = timestamp(mtime);
        state.base = Some(Arc::new(FileVersion {
            path: final_path.into(),
            size: uploaded,
            mtime: (stamp.unix_seconds, stamp.nanos),
        }));
        state.base_reader = None;
        if !matches!(state.content, Content::Staged(_)) {
            state.content = Content::Server;
        }
        state.on_server = true;
        state.dirty = false;
        state.written = false;
        state.set_mtime = None;
        state.set_mode = None;
        state.mode = mode;
        Ok(conflict)
    }

    /// Checks an uploaded temporary file `path` (its size, with `metadata` set on it)
    /// and renames it onto `name` in `dir`. A queued item (`expect`) is compared with
    /// the file it replaces in the same round trip, and lands beside it when another
    /// client changed that file (see [`changed_by_another`]).
    #[allow(clippy::too_many_arguments)]
    async fn land(
        &self,
        conn: &mut PooledConnection,
        path: &[u8],
        dir: &[u8],
        name: &[u8],
        sent: u64,
        metadata: Metadata,
        on_server: bool,
        expect: Option<&Item>,
    ) -> Result<Landed, FsError> {
        let final_path = join_path(dir, name);
        let atomic = path != final_path.as_slice();
        let compare = expect.filter(|_| atomic).map(|_| final_path.as_slice());
        let checked = upload::check_and_apply(conn, path, sent, metadata, compare).await?;
        let mut conflict = None;
        let target_exists = match (expect, checked.compared) {
            (Some(item), Some(now)) => {
                if changed_by_another(item, now.as_ref()) {
                    tracing::debug!(
                        path = %shown(&final_path),
                        expected = ?item.base,
                        now = ?now,
                        "changed on the server since it was queued"
                    );
                    conflict = Some(self.conflict_name_now(name));
                    false
                } else {
                    now.is_some()
                }
            }
            _ => on_server || self.dirs.cached_entry(dir, name).is_some(),
        };
        if atomic {
            let target = conflict.as_deref().unwrap_or(name);
            let refused = upload::rename_replacing(
                conn,
                dir,
                path,
                target,
                target_exists,
                self.writer.refuses_overwrite(),
            )
            .await?;
            if refused {
                self.writer.note_refuses_overwrite();
            }
        }
        Ok(Landed {
            size: checked.size,
            applied: checked.applied,
            conflict,
        })
    }

    /// After a failed upload to `path`: deletes it when it is a temporary file, unless
    /// it is a write-back item's, whose next try overwrites it under the same name (a
    /// deletion still on its way could take that try's file; the item's removal hands
    /// its name to the janitor).
    /// Uploads `staging`, or `len` zeros, to `path` (`background`: see
    /// [`upload::start`]); returns the connection, the bytes sent and where they went. Outside the write-back queue (which retries on its own,
    /// to its item's own name), a connection that broke under the upload gets one more
    /// try to a new temporary name: the local copy is whole and nothing landed, and a
    /// server's hiccup must not fail the program's close().
    async fn upload_whole(
        &self,
        ino: u64,
        mut path: Vec<u8>,
        staging: Option<&Staging>,
        len: u64,
        item: bool,
        background: bool,
    ) -> Result<(PooledConnection, u64, Vec<u8>), FsError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Box::pin(upload::upload(&self.pool, &path, staging, len, background)).await {
                Ok((conn, sent)) => return Ok((conn, sent, path)),
                Err(e) => {
                    // 426: the server lost the data connection and stored nothing whole
                    // (vsftpd's "Failure reading network stream", as when a proxy
                    // resets the connection toward it).
                    let retry = !item
                        && tries == 1
                        && self.config.atomic_uploads
                        && e.remote().is_some_and(|e| {
                            crate::ftp::pool::worth_retrying(e) || e.reply_code() == Some(426)
                        });
                    let e = self.discard_after_upload(e, path, item);
                    if !retry {
                        return Err(e);
                    }
                    tracing::info!(ino, "upload failed ({e}); once more on another connection");
                    path = self.upload_path(ino)?;
                }
            }
        }
    }

    fn discard_after_upload(&self, error: FsError, path: Vec<u8>, item: bool) -> FsError {
        if item {
            return error;
        }
        self.discard_after(error, path)
    }

    /// After a failed upload to `path`: deletes it when it is a temporary file.
    fn discard_after(&self, error: FsError, path: Vec<u8>) -> FsError {
        self.discard_temporary(path);
        error
    }

    /// Deletes the upload at `path`, in the background, when it went to a temporary
    /// name. (Without atomic uploads it went to the file's own name: what the server
    /// got of it is all there is.)
    fn discard_temporary(&self, path: Vec<u8>) {
        if self.config.atomic_uploads {
            self.janitor.delete(path);
        }
    }

    /// Gives a streamed upload up, and deletes what it sent.
    fn abandon(&self, stream: StreamUpload) {
        self.discard_temporary(stream.abandon());
    }

    /// Closes a write handle; the last one uploads what no flush did (a file created or
    /// truncated and never written) and forgets the file's write state.
    pub(in crate::fs) async fn release_write(&self, write: Arc<WriteHandle>) {
        let file = write.file.clone();
        drop(write);
        if !self.writer.close(&file) {
            return;
        }
        if let Err(e) = self.after_last_close(&file).await {
            tracing::warn!(
                ino = file.ino,
                "changes not uploaded at the last close: {e}"
            );
        }
    }

    /// What the last writer of `file` leaves: its changes landed, its stream closed, and
    /// the write file forgotten (unless it was opened again meanwhile).
    async fn after_last_close(&self, file: &Arc<WriteFile>) -> Result<(), FsError> {
        let landed = {
            let mut state = file.state.lock().await;
            // Dirty after a failure means written since (a failure clears it).
            let landed = if !state.dirty || state.discarded {
                Ok(())
            } else if self.queue().is_none() {
                self.commit(file, &mut state).await
            } else if state.differs_from_queued() || state.queued.is_none() {
                let queued = self.queue_write(file, &mut state).await;
                if let (Err(e), Some(id)) = (&queued, state.queued) {
                    // No writer is left to queue these changes (their close failed and
                    // said so): the content acknowledged last lands instead.
                    tracing::warn!(
                        ino = file.ino,
                        "changes since the last close cannot be queued ({e}); the content closed before them stays queued"
                    );
                    if let Err(e) = self.restore_queued(file, &mut state, id) {
                        tracing::warn!(
                            ino = file.ino,
                            id,
                            "cannot take the queued content back: {e}"
                        );
                    }
                }
                queued
            } else {
                Ok(())
            };
            if matches!(state.content, Content::Streaming(_)) {
                if let Content::Streaming(stream) =
                    std::mem::replace(&mut state.content, Content::Server)
                {
                    self.abandon(stream);
                }
            }
            // A queued file stays known until its upload lands: it is what `stat` and
            // `read` show meanwhile.
            (landed, state.queued.is_some())
        };
        let (landed, queued) = landed;
        if !queued {
            self.writer.forget(file);
        }
        landed
    }

    /// Changes attributes: size (truncate), modification time, permission bits; owner
    /// and group only to what they already show.
    pub async fn setattr(&self, ino: u64, changes: SetAttr) -> Result<Attr, FsError> {
        self.writable()?;
        if changes.uid.is_some_and(|uid| uid != self.config.uid)
            || changes.gid.is_some_and(|gid| gid != self.config.gid)
        {
            return Err(FsError::NotPermitted("changing the owner or group"));
        }
        let file = self.writer.file(ino);
        if let Some(size) = changes.size {
            self.set_size(ino, size).await?;
        }
        if changes.mtime.is_some() || changes.mode.is_some() {
            let pending = match &file {
                Some(file) => {
                    let mut state = file.state.lock().await;
                    let pending = state.dirty || !state.on_server;
                    if pending {
                        if let Some(mtime) = changes.mtime {
                            state.set_mtime = Some(mtime);
                        }
                        if let Some(mode) = changes.mode {
                            state.set_mode = Some(mode & 0o7777);
                        }
                        if !state.differs_from_queued() {
                            self.record_queued_metadata(&state);
                        }
                        file.publish(&state);
                    }
                    pending
                }
                None => false,
            };
            if !pending {
                let applied = self.set_metadata_now(ino, changes).await?;
                if let Some(file) = &file {
                    // Open but unchanged: what it shows follows the server's file.
                    let mut state = file.state.lock().await;
                    if let Some(mtime) = applied.mtime {
                        state.changed_at = mtime;
                    }
                    if let Some(mode) = applied.mode {
                        state.mode = Some(mode);
                    }
                    file.publish(&state);
                }
            }
        }
        self.getattr(ino).await
    }

    /// Truncates a file: one open for writing changes at its next flush; one that is not
    /// is uploaded now, so that truncate(2) reports the result.
    async fn set_size(&self, ino: u64, size: u64) -> Result<(), FsError> {
        // Counted as one more writer while it truncates: a last close racing with this
        // then leaves the upload to it, where it used to land its own changes and forget
        // the file between this call's look-up and its truncation, losing the truncation.
        let (file, temporary) = match self.writer.reopen(ino) {
            Some(file) => (file, false),
            None => {
                let opened = self
                    .open_for_write(
                        ino,
                        OpenMode {
                            read: false,
                            write: true,
                            truncate: false,
                        },
                        0,
                    )
                    .await?;
                let Ok(write) = self.handles.write(opened.handle) else {
                    return Err(FsError::BadHandle);
                };
                let file = write.file.clone();
                self.handles.remove(opened.handle);
                (file, true)
            }
        };
        let result = async {
            // A truncation after a failed upload applies to what the server has.
            let mut state = file.state.lock().await;
            let cut = self.truncate_locked(ino, &mut state, size).await;
            file.publish(&state);
            cut?;
            if temporary {
                if self.queue().is_some() {
                    self.queue_write(&file, &mut state).await?;
                } else {
                    self.commit(&file, &mut state).await?;
                }
            }
            Ok(())
        }
        .await;
        if self.writer.close(&file) {
            // The last writer: nobody else will land the truncation.
            let landed = self.after_last_close(&file).await;
            result?;
            return landed;
        }
        result
    }

    /// Sets the modification time and mode of a file the server has, now; returns what
    /// the server could set.
    async fn set_metadata_now(&self, ino: u64, changes: SetAttr) -> Result<Metadata, FsError> {
        let (node, entry) = self.within(self.entry(ino)).await?;
        let Some(mut entry) = entry else {
            // The root: FTP cannot change its times or mode; as for a server that lacks
            // the commands, the request is a no-op.
            return Ok(Metadata::default());
        };
        let parent = self.node(node.parent)?;
        let metadata = Metadata {
            mtime: changes.mtime,
            mode: changes.mode.map(|m| m & 0o7777),
        };
        let target = if entry.kind == EntryKind::Dir {
            upload::Target::Directory
        } else {
            upload::Target::File
        };
        let pool = &self.pool;
        let applied = self
            .within(async {
                crate::with_connection!(pool, |conn| upload::apply_metadata(
                    conn, &node.path, target, metadata
                )
                .await)
                .await
                .map_err(FsError::from)
            })
            .await?;
        if let Some(mtime) = applied.mtime {
            entry.modified = Some(timestamp(mtime));
        }
        if let Some(mode) = applied.mode {
            entry.mode = Some(mode);
        }
        self.dirs.record(&parent.path, Change::Upsert(entry));
        Ok(applied)
    }

    /// Forgets cached data of `ino` at `path`: its blocks, and the version the kernel's
    /// page cache was kept for.
    pub(in crate::fs) fn forget_file_data(&self, ino: u64, path: &[u8]) {
        self.cache.forget_path(path);
        self.reader.forget_on_disk(path);
        self.opened_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// Stops the pending changes of `ino` (it is being deleted or replaced): nothing of
    /// it is uploaded any more. Returns whether the server has the file, when `ino` had
    /// changes (it waits for an upload under way, which decides that).
    pub(in crate::fs) async fn discard_writes(&self, ino: u64) -> Option<bool> {
        let file = self.writer.file(ino)?;
        let mut state = file.state.lock().await;
        self.discard_held(&file, &mut state);
        Some(state.on_server)
    }

    /// Drops the pending changes of `file`, whose state the caller holds (unlink and
    /// rename hold it while the server deletes or replaces the file, and call this only
    /// then, so that a refusal leaves the changes queued).
    pub(in crate::fs) fn discard_held(&self, file: &WriteFile, state: &mut WriteState) {
        self.discard(state);
        file.publish(state);
    }

    /// Uploads the pending changes of `ino` now (before it is renamed).
    pub(in crate::fs) async fn commit_writes(&self, ino: u64) -> Result<(), FsError> {
        if let Some(file) = self.writer.file(ino) {
            let mut state = file.state.lock().await;
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            if self.queue().is_some() {
                if state.written || (state.dirty && !state.on_server && state.queued.is_none()) {
                    self.queue_write(&file, &mut state).await?;
                }
                let queued = state.queued;
                drop(state);
                if let Some(id) = queued {
                    self.land_queued(ino, id).await?;
                }
                return Ok(());
            }
            if state.written || (state.dirty && !state.on_server) {
                self.commit(&file, &mut state).await?;
            }
        }
        Ok(())
    }
}
