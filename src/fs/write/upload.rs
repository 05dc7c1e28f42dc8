//! Getting a file's new content onto the server without ever losing the old one.
//!
//! Every upload goes to a temporary name in the file's directory (see `names.rs`). Only
//! when the server has said 226 and reports the size that was sent is the temporary file
//! renamed onto the final name, so a failed or cut-off upload never leaves a short file
//! under it, and an overwritten file keeps its old content until the new one is whole.
//! Servers that refuse to rename onto an existing file (FileZilla Server, ProFTPD with
//! `AllowOverwrite off`, IIS) get the old file moved aside first, and back if the new one
//! cannot be renamed in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ftp::pool::worth_retrying;
use crate::ftp::{
    ControlConnection, FtpError, Pool, PooledConnection, StoredVersion, UploadConnection,
};

use crate::fs::error::FsError;
use crate::fs::meta::inode::join_path;
use crate::fs::meta::names::{aside_name, shown};
use crate::fs::write::staging::Staging;

/// Bytes sent per write to the data connection, from staging files and runs of zeros.
pub(in crate::fs) const UPLOAD_CHUNK: usize = 1024 * 1024;

/// Writes a streamed upload may have queued before the writer waits: with the kernel's
/// writes of up to 1 MiB, at most this many MiB of a file are in memory at once.
const STREAM_QUEUE: usize = 8;

/// Starts an upload to `path` (STOR) on a pooled connection. A connection that breaks
/// before STOR goes out (no TLS ticket left, a stale connection) is replaced: nothing has
/// happened on the server yet. A `background` upload leaves the last idle connection
/// to the program (see [`Pool::get_leaving_one_idle`]).
pub async fn start(
    pool: &Pool,
    path: &[u8],
    background: bool,
) -> Result<(PooledConnection, UploadConnection), FtpError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut conn = if background {
            pool.get_leaving_one_idle().await?
        } else {
            pool.get().await?
        };
        match conn.store(path).await {
            Ok(upload) => return Ok((conn, upload)),
            // STOR goes to a name of this upload's own, so sending it again after a
            // reply that could not answer it (a server answering out of order) or a
            // data connection refused for coming late replaces nothing of anyone's.
            Err(e)
                if attempts < 3
                    && worth_retrying(&e)
                    && (!conn.sent_mutation()
                        || e.is_desync()
                        || matches!(e, FtpError::DataRejected { .. })) =>
            {
                tracing::debug!(
                    conn = conn.id(),
                    "upload could not start ({e}); on another connection"
                );
                if e.connection_lost() {
                    pool.discard_idle();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Ends an upload with the server's final reply; returns the bytes sent. What the server
/// stores is checked next, by [`check_and_apply`] or [`verify`].
pub async fn finish(conn: &mut PooledConnection, upload: UploadConnection) -> Result<u64, FsError> {
    let sent = upload.sent();
    conn.finish_upload(upload).await?;
    Ok(sent)
}

/// What [`check_and_apply`] found: the size stored, what of the metadata was set, and
/// the version of the file compared (None: there is none), when one was.
pub struct Checked {
    /// The size the server stores.
    pub size: u64,
    /// What of the metadata asked for was set.
    pub applied: Metadata,
    /// The compared file's version, when one was asked for; None inside: no such file.
    pub compared: Option<Option<StoredVersion>>,
}

/// Checks that the server stores all `sent` bytes of the just uploaded `path`, and sets
/// `metadata` on it in the same round trip (on the temporary name, so a failed check
/// leaves nothing behind); with `compare`, that file's version is asked for in the same
/// round trip too.
pub async fn check_and_apply(
    conn: &mut ControlConnection,
    path: &[u8],
    sent: u64,
    metadata: Metadata,
    compare: Option<&[u8]>,
) -> Result<Checked, FsError> {
    let check = conn
        .check_upload(
            path,
            metadata.mtime.map(unix_seconds),
            metadata.mode,
            compare,
        )
        .await?;
    let compared = check.compared.transpose()?;
    let size = match check.size {
        Some(size) if size == sent => size,
        Some(size) => {
            return Err(FtpError::Protocol {
                step: format!("checking the upload of {}", shown(path)),
                detail: format!("the server stores {size} bytes of the {sent} sent"),
            }
            .into())
        }
        None => {
            tracing::debug!(path = %shown(path), "the server reports no sizes; trusting its 226");
            sent
        }
    };
    let applied = what_was_set(path, Target::File, metadata, check.time_set, check.mode_set)?;
    Ok(Checked {
        size,
        applied,
        compared,
    })
}

/// Checks that the server stores all `sent` bytes of `path` (see [`check_and_apply`]).
pub async fn verify(conn: &mut ControlConnection, path: &[u8], sent: u64) -> Result<u64, FsError> {
    check_and_apply(conn, path, sent, Metadata::default(), None)
        .await
        .map(|checked| checked.size)
}

/// Sends `len` zeros.
async fn send_zeros(upload: &mut UploadConnection, mut len: u64) -> Result<(), FtpError> {
    let zeros = vec![0u8; UPLOAD_CHUNK.min(len as usize)];
    while len > 0 {
        let n = zeros.len().min(len as usize);
        upload.write_all(&zeros[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

/// Uploads `len` zeros, or the staging file when there is one, to `path`; returns the
/// connection (for the check and rename that follow) and the bytes sent. `background`:
/// see [`start`].
pub async fn upload(
    pool: &Pool,
    path: &[u8],
    staging: Option<&Staging>,
    len: u64,
    background: bool,
) -> Result<(PooledConnection, u64), FsError> {
    /// Why sending stopped.
    enum Stopped {
        Network(FtpError),
        Staging(std::io::Error),
    }
    let (mut conn, mut upload) = start(pool, path, background).await?;
    let sent = async {
        match staging {
            None => send_zeros(&mut upload, len).await.map_err(Stopped::Network),
            Some(staging) => {
                let mut offset = 0;
                while offset < staging.len() {
                    let chunk = staging
                        .read_at(offset, UPLOAD_CHUNK)
                        .map_err(Stopped::Staging)?;
                    if chunk.is_empty() {
                        break;
                    }
                    upload.write_all(&chunk).await.map_err(Stopped::Network)?;
                    offset += chunk.len() as u64;
                }
                Ok(())
            }
        }
    }
    .await;
    match sent {
        Ok(()) => {
            let sent = finish(&mut conn, upload).await?;
            Ok((conn, sent))
        }
        Err(Stopped::Network(e)) => Err(conn.failed_upload(upload, e).await.into()),
        Err(Stopped::Staging(e)) => {
            // The local copy failed: what went up must not land.
            let _ = conn.abandon_upload(upload).await;
            Err(e.into())
        }
    }
}

/// An upload running while its file is written, in order: each write is queued for a
/// task that sends it on the data connection.
pub struct StreamUpload {
    /// Where it goes: a temporary name, or the final one without atomic uploads.
    pub path: Vec<u8>,
    /// Bytes queued so far: the next write in order starts here.
    pub position: u64,
    queue: Option<mpsc::Sender<Vec<u8>>>,
    task: JoinHandle<Result<(PooledConnection, u64), FsError>>,
    /// Longest wait for the task to take a write.
    data_timeout: Duration,
}

impl StreamUpload {
    /// Starts the upload task for `path`; its STOR goes out with the first write.
    pub fn start(pool: &Pool, path: Vec<u8>, data_timeout: Duration) -> Self {
        let (queue, mut writes) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        let task_pool = pool.clone();
        let task_path = path.clone();
        let task = tokio::spawn(async move {
            let (mut conn, mut upload) = start(&task_pool, &task_path, false).await?;
            while let Some(data) = writes.recv().await {
                if let Err(e) = upload.write_all(&data).await {
                    return Err(conn.failed_upload(upload, e).await.into());
                }
            }
            let sent = finish(&mut conn, upload).await?;
            Ok((conn, sent))
        });
        Self {
            path,
            position: 0,
            queue: Some(queue),
            task,
            data_timeout,
        }
    }

    /// Queues `data`, the next bytes in order. When the upload has failed, its error.
    pub async fn send(&mut self, data: Vec<u8>) -> Result<(), FsError> {
        let len = data.len() as u64;
        let queue = self.queue.as_ref().ok_or(FsError::BadHandle)?;
        match tokio::time::timeout(self.data_timeout, queue.send(data)).await {
            Ok(Ok(())) => {
                self.position += len;
                Ok(())
            }
            // The task ended: it failed, and says why.
            Ok(Err(_)) => Err(self.failure().await),
            Err(_) => Err(FsError::TimedOut(self.data_timeout)),
        }
    }

    /// Queues `len` zeros (a hole the writer skipped, or a file extended by truncate).
    pub async fn send_zeros(&mut self, mut len: u64) -> Result<(), FsError> {
        while len > 0 {
            let n = len.min(UPLOAD_CHUNK as u64);
            self.send(vec![0u8; n as usize]).await?;
            len -= n;
        }
        Ok(())
    }

    /// The error of a task that ended early.
    async fn failure(&mut self) -> FsError {
        self.queue = None;
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => FsError::from(FtpError::Protocol {
                step: "streaming an upload".into(),
                detail: "the upload ended before its data did".into(),
            }),
            Err(e) => FsError::from(FtpError::Protocol {
                step: "streaming an upload".into(),
                detail: format!("the upload task failed: {e}"),
            }),
        }
    }

    /// Ends the data: the server confirms it. Returns the connection, for what follows,
    /// and the bytes sent.
    pub async fn finish(mut self) -> Result<(PooledConnection, u64), FsError> {
        self.queue = None;
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(FsError::from(FtpError::Protocol {
                step: "streaming an upload".into(),
                detail: format!("the upload task failed: {e}"),
            })),
        }
    }

    /// Gives the upload up: its connection is dropped mid-transfer, so the server cannot
    /// take the file for whole. Returns where it went, for the caller to delete.
    pub fn abandon(self) -> Vec<u8> {
        self.task.abort();
        self.path
    }
}

/// What to set on an uploaded file before it takes its final name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metadata {
    /// Modification time the program set.
    pub mtime: Option<SystemTime>,
    /// Permission bits the program asked for.
    pub mode: Option<u32>,
}

/// Whether the refusal to set a directory's time was logged at warning level already.
static DIRECTORY_TIMES_REFUSED: AtomicBool = AtomicBool::new(false);

/// What [`apply_metadata`] changes: a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    File,
    Directory,
}

/// Sets `metadata` on `path`: best effort, since the data is what matters; a server that
/// cannot set times or modes leaves the file as it is (logged). Returns what was set.
pub async fn apply_metadata(
    conn: &mut ControlConnection,
    path: &[u8],
    target: Target,
    metadata: Metadata,
) -> Result<Metadata, FtpError> {
    let time_set = match metadata.mtime {
        Some(mtime) => Some(conn.set_modified(path, unix_seconds(mtime)).await),
        None => None,
    };
    let mode_set = match metadata.mode {
        Some(mode) => Some(conn.set_mode(path, mode).await),
        None => None,
    };
    what_was_set(path, target, metadata, time_set, mode_set)
}

/// What of `metadata` the server set on `path`, from its answers; a refusal is logged
/// and leaves that part as the server has it, an error that broke the connection is
/// returned.
fn what_was_set(
    path: &[u8],
    target: Target,
    metadata: Metadata,
    time_set: Option<Result<(), FtpError>>,
    mode_set: Option<Result<(), FtpError>>,
) -> Result<Metadata, FtpError> {
    let mut applied = Metadata::default();
    match time_set {
        None => {}
        Some(Ok(())) => applied.mtime = metadata.mtime,
        Some(Err(e)) if e.breaks_connection() => return Err(e),
        // vsftpd's MDTM sets the times of files only: `rsync -a` would log this for
        // every directory it copies. Said once, then at debug level.
        Some(Err(e))
            if target == Target::Directory
                && !DIRECTORY_TIMES_REFUSED.swap(true, Ordering::Relaxed) =>
        {
            tracing::warn!(
                path = %shown(path),
                "the server does not set directories' modification times ({e}); \
                 they keep the server's (further refusals are logged at debug level)"
            )
        }
        Some(Err(e)) if target == Target::Directory => {
            tracing::debug!(path = %shown(path), "directory time not set: {e}")
        }
        Some(Err(e)) => tracing::warn!(path = %shown(path), "modification time not set: {e}"),
    }
    match mode_set {
        None => {}
        Some(Ok(())) => applied.mode = metadata.mode,
        Some(Err(e)) if e.breaks_connection() => return Err(e),
        Some(Err(e)) if e.is_unsupported() => {
            tracing::debug!(path = %shown(path), "the server has no SITE CHMOD: {e}")
        }
        Some(Err(e)) => tracing::warn!(path = %shown(path), "permissions not set: {e}"),
    }
    Ok(applied)
}

/// Seconds since 1970 of `time` (negative before).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// Whether a failed rename onto an existing file may be the server's refusal to replace
/// it (FileZilla Server: 553 "File exists"; ProFTPD with `AllowOverwrite off`: 550
/// "Rename permission denied"): RNTO was refused, after RNFR had found the source.
fn refuses_replacing(error: &FtpError) -> bool {
    matches!(error, FtpError::Rejected { command, .. } if command.starts_with("RNTO"))
}

/// Renames `from` onto `to` in `dir`, replacing any file there. Where the server refuses
/// to replace (`target_exists` and a refusal, or `refuses_overwrite` learnt earlier), the
/// target is moved aside, `from` renamed in, and the old file deleted; if the rename in
/// fails, the old file is put back. Returns whether the server refused to replace.
pub async fn rename_replacing(
    conn: &mut ControlConnection,
    dir: &[u8],
    from: &[u8],
    to_name: &[u8],
    target_exists: bool,
    refuses_overwrite: bool,
) -> Result<bool, FsError> {
    let to = join_path(dir, to_name);
    if !(target_exists && refuses_overwrite) {
        match conn.rename(from, &to).await {
            Ok(()) => return Ok(false),
            Err(e) if target_exists && refuses_replacing(&e) => {
                tracing::debug!(to = %shown(&to), "the server refuses to rename onto a file ({e}); moving it aside");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let aside = join_path(dir, &aside_name(to_name));
    match conn.rename(&to, &aside).await {
        Ok(()) => {}
        // The target went away meanwhile: nothing to move aside.
        Err(e) if e.is_not_found() => {
            conn.rename(from, &to).await?;
            return Ok(true);
        }
        Err(e) => return Err(e.into()),
    }
    match conn.rename(from, &to).await {
        Ok(()) => {
            if let Err(e) = conn.delete(&aside).await {
                tracing::info!(path = %shown(&aside), "old version left for a later sweep: {e}");
            }
            Ok(true)
        }
        Err(e) => {
            if let Err(back) = conn.rename(&aside, &to).await {
                tracing::error!(
                    "{} is missing: its old version is {} (a later mount puts it back): {back}",
                    shown(&to),
                    shown(&aside)
                );
            }
            Err(e.into())
        }
    }
}
