//! Deleting the temporary files of uploads that did not land, also when the server is
//! unreachable at the moment: the deletion is retried in the background until it works.
//!
//! A failed upload leaves its temporary file (see `upload.rs`), and the failure that cut
//! the upload (a dead server, a cut link) often stops its deletion too. What this mount
//! could not delete is retried with growing pauses while the mount lives; what it never
//! could is deleted by a later mount's sweep once an hour old (see `sweep.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ftp::{FtpError, Pool};

use super::names::{shown, LEFTOVER_AGE};

/// The first pause before trying a failed deletion again; it doubles up to
/// [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// Temporary files to delete, and the task that deletes them.
pub struct Janitor {
    pool: Pool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Paths to delete, with when they were first given.
    queue: Vec<(Vec<u8>, Instant)>,
    working: bool,
}

impl Janitor {
    /// A janitor deleting through `pool`.
    pub fn new(pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes `path` in the background, now or as soon as the server lets it.
    pub fn delete(self: &Arc<Self>, path: Vec<u8>) {
        let start = {
            let mut state = self.lock();
            state.queue.push((path, Instant::now()));
            !std::mem::replace(&mut state.working, true)
        };
        if start {
            tokio::spawn(self.clone().work());
        }
    }

    /// Temporary files still waiting to be deleted.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    async fn work(self: Arc<Self>) {
        let mut pause = FIRST_PAUSE;
        loop {
            let batch = std::mem::take(&mut self.lock().queue);
            let mut failed = Vec::new();
            for (path, since) in batch {
                match self.delete_now(&path).await {
                    Ok(()) => tracing::debug!(path = %shown(&path), "temporary file deleted"),
                    // A later mount's sweep takes over from here.
                    Err(e) if since.elapsed() > LEFTOVER_AGE => {
                        tracing::info!(path = %shown(&path), "temporary file left for a later sweep: {e}")
                    }
                    Err(e) => {
                        tracing::debug!(path = %shown(&path), "temporary file not deleted yet: {e}");
                        failed.push((path, since));
                    }
                }
            }
            let done = failed.is_empty();
            {
                let mut state = self.lock();
                state.queue.extend(failed);
                if state.queue.is_empty() {
                    state.working = false;
                    return;
                }
            }
            if done {
                // New paths came meanwhile: at once.
                pause = FIRST_PAUSE;
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    async fn delete_now(&self, path: &[u8]) -> Result<(), FtpError> {
        let pool = &self.pool;
        crate::with_connection!(pool, |conn| match conn.delete(path).await {
            // Gone already: what was wanted.
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        })
        .await
    }
}
