//! Uploading a big file under write-back while it is still being written.
//!
//! With `-o writeback` a file is staged whole and uploaded after its close, so a big
//! file's upload would only begin once it was written, synced and checksummed locally.
//! A file written in order (`cp`, `tar -x`, a download) instead gets a follower once it
//! is big enough: a task that sends the staging file's bytes to the item's temporary
//! name as they are written, never ahead of them. The staging file stays the durable
//! copy (the journal item is made at close as for any file); the follower's upload is
//! only the item's first try, landed (checked, compared, renamed) like any other. A
//! write anywhere but at the end, or a truncation, gives the follower up: the bytes it
//! sent are no longer the file's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ftp::{Pool, PooledConnection};

use crate::fs::error::FsError;
use crate::fs::write::janitor::Janitor;
use crate::fs::write::staging::Staging;
use crate::fs::write::upload::{self, UPLOAD_CHUNK};

/// Bytes a file written in order reaches before a follower starts: smaller files upload
/// in less time than the wait for their close saves, and are better folded (rsync's
/// rename, times and modes) before they go.
pub const FOLLOW_FROM: u64 = 8 * 1024 * 1024;

/// How much of the staging file the follower may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// This many bytes are written; more may come.
    Growing(u64),
    /// The file is closed at this size.
    Complete(u64),
}

/// An upload of a staging file that follows its writes (see the module's comment).
pub struct Follower {
    /// The write-back item it is the first try of.
    pub id: u64,
    /// Where it goes on the server: the item's temporary name.
    pub path: Vec<u8>,
    written: watch::Sender<Written>,
    task: Option<JoinHandle<Result<(PooledConnection, u64), FsError>>>,
    janitor: Arc<Janitor>,
}

impl Follower {
    /// Starts following `staging`, of which `written` bytes are written, to `path`, as
    /// item `id`'s first try. It takes an idle connection as the program's own upload
    /// would (the queue's uploads leave the last one): waiting for a login would hold the
    /// whole file back by that long.
    pub fn start(
        pool: &Pool,
        janitor: &Arc<Janitor>,
        staging: &Staging,
        id: u64,
        path: Vec<u8>,
        written: u64,
    ) -> std::io::Result<Self> {
        let file = staging.reader()?;
        let (sender, receiver) = watch::channel(Written::Growing(written));
        let task = tokio::spawn(follow(pool.clone(), path.clone(), file, receiver));
        Ok(Self {
            id,
            path,
            written: sender,
            task: Some(task),
            janitor: janitor.clone(),
        })
    }

    /// The file now has `len` bytes, all written in order.
    pub fn grown(&self, len: u64) {
        self.written.send_replace(Written::Growing(len));
    }

    /// The file is closed at `size` bytes: the follower sends the rest and ends the
    /// upload (the server's 226).
    pub fn complete(&self, size: u64) {
        self.written.send_replace(Written::Complete(size));
    }

    /// Whether the file it follows was closed (see [`Self::complete`]).
    pub fn is_complete(&self) -> bool {
        matches!(*self.written.borrow(), Written::Complete(_))
    }

    /// Waits for the end of the upload of a file closed (see [`Self::complete`]).
    /// Returns the connection, for the check and rename, and the bytes sent.
    pub async fn finish(mut self) -> Result<(PooledConnection, u64), FsError> {
        let task = self.task.take().expect("a follower finishes once");
        match task.await {
            Ok(result) => result,
            Err(e) => Err(FsError::from(crate::ftp::FtpError::Protocol {
                step: "following a file's writes".into(),
                detail: format!("the upload task failed: {e}"),
            })),
        }
    }
}

impl Drop for Follower {
    /// Given up (the file changed behind it, or was deleted): the upload is cut off, so
    /// the server cannot take it for whole, and what it sent is deleted.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            tracing::debug!(
                id = self.id,
                "write-back: the upload following the writes is given up"
            );
            self.janitor.delete(std::mem::take(&mut self.path));
        }
    }
}

/// The follower's task: sends what is written as it is written, until the file is
/// complete and sent.
async fn follow(
    pool: Pool,
    path: Vec<u8>,
    file: File,
    mut written: watch::Receiver<Written>,
) -> Result<(PooledConnection, u64), FsError> {
    let (mut conn, mut upload) = upload::start(&pool, &path, false).await?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    loop {
        let mark = *written.borrow_and_update();
        let (available, complete) = match mark {
            Written::Growing(len) => (len, false),
            Written::Complete(len) => (len, true),
        };
        while sent < available {
            let want = (available - sent).min(UPLOAD_CHUNK as u64) as usize;
            let chunk = match read_fully(&file, &mut buf[..want], sent) {
                Ok(chunk) => chunk,
                Err(e) => {
                    // The local copy failed: what went up must not land.
                    let _ = conn.abandon_upload(upload).await;
                    return Err(e.into());
                }
            };
            if let Err(e) = upload.write_all(chunk).await {
                return Err(conn.failed_upload(upload, e).await.into());
            }
            sent += chunk.len() as u64;
        }
        if complete {
            let sent = upload::finish(&mut conn, upload).await?;
            return Ok((conn, sent));
        }
        if written.changed().await.is_err() {
            // Given up: the task is being aborted.
            let _ = conn.abandon_upload(upload).await;
            return Err(FsError::Changed);
        }
    }
}

/// `buf.len()` bytes at `offset`; a hole at the staging file's end reads as zeros.
fn read_fully<'b>(file: &File, buf: &'b mut [u8], offset: u64) -> std::io::Result<&'b [u8]> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => {
                buf[filled..].fill(0);
                break;
            }
            n => filled += n,
        }
    }
    Ok(buf)
}
