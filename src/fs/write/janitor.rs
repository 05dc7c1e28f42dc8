//! Deleting the temporary files of uploads that did not land, also when the server is
//! unreachable at the moment: the deletion is retried in the background until it works.
//!
//! A failed upload leaves its temporary file (see `upload.rs`), and the failure that cut
//! the upload (a dead server, a cut link) often stops its deletion too. What this mount
//! could not delete is retried with growing pauses while the mount lives, once more at
//! unmount (for a bounded time), and what is left then is recorded in `cache_dir`: the
//! next mount of the same server deletes those at once. What no mount recorded (a
//! `kill -9` between the failure and the record) a later mount's sweep deletes once an
//! hour old (see `sweep.rs`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ftp::{FtpError, Pool};

use crate::fs::meta::names::{shown, LEFTOVER_AGE};

/// The first pause before trying a failed deletion again; it doubles up to
/// [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// Temporary files to delete, and the task that deletes them.
pub struct Janitor {
    pool: Pool,
    state: Mutex<State>,
    /// Where what is left is recorded for the next mount; None keeps nothing.
    record: Option<Record>,
}

#[derive(Default)]
struct State {
    /// Paths to delete, with when they were first given.
    queue: Vec<(Vec<u8>, Instant)>,
    working: bool,
    /// The mount is going: what is left stays recorded, nothing is tried again.
    finished: bool,
}

impl Janitor {
    /// A janitor deleting through `pool`.
    pub fn new(pool: Pool, record: Option<Record>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::new(State::default()),
            record,
        })
    }

    /// Queues the temporary files that earlier mounts of this server recorded as left
    /// (see [`Record`]): they are ftpsfs's own, so they go at once.
    pub fn take_over_recorded(self: &Arc<Self>) {
        let Some(record) = &self.record else {
            return;
        };
        let paths = record.take_over();
        if !paths.is_empty() {
            tracing::info!(
                count = paths.len(),
                "deleting the temporary files an earlier mount of this server left"
            );
        }
        for path in paths {
            self.delete(path);
        }
    }

    /// At unmount: one more try at every deletion still waiting, within `limit`; what is
    /// left is recorded for the next mount. Returns how many are left.
    pub async fn finish(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        let waiting: Vec<Vec<u8>> = {
            let mut state = self.lock();
            state.finished = true;
            std::mem::take(&mut state.queue)
                .into_iter()
                .map(|(path, _)| path)
                .collect()
        };
        let mut left = Vec::new();
        for path in waiting {
            let tried = tokio::time::timeout_at(deadline, self.delete_now(&path)).await;
            if !matches!(tried, Ok(Ok(()))) {
                left.push(path);
            }
        }
        if let Some(record) = &self.record {
            record.save(&left);
        }
        if !left.is_empty() {
            tracing::warn!(
                count = left.len(),
                "temporary files of failed uploads could not be deleted before the unmount; \
                 the next mount of this server deletes them"
            );
        }
        left.len()
    }

    /// Records the queue as it is now, so that a mount that dies leaves its list behind.
    fn save_queue(&self) {
        if let Some(record) = &self.record {
            let paths: Vec<Vec<u8>> = {
                let state = self.lock();
                if state.finished {
                    return;
                }
                state.queue.iter().map(|(p, _)| p.clone()).collect()
            };
            record.save(&paths);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes `path` in the background, now or as soon as the server lets it.
    pub fn delete(self: &Arc<Self>, path: Vec<u8>) {
        let start = {
            let mut state = self.lock();
            if state.finished {
                return;
            }
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
            // The queue keeps each path until it is deleted, so that what is under way
            // is in it too when the unmount takes it over.
            let batch = {
                let mut state = self.lock();
                if state.finished {
                    state.working = false;
                    return;
                }
                state.queue.clone()
            };
            let mut all_done = true;
            for (path, since) in batch {
                let outcome = self.delete_now(&path).await;
                let done = match outcome {
                    Ok(()) => {
                        tracing::debug!(path = %shown(&path), "temporary file deleted");
                        true
                    }
                    // A later mount's sweep takes over from here.
                    Err(e) if since.elapsed() > LEFTOVER_AGE => {
                        tracing::info!(path = %shown(&path), "temporary file left for a later sweep: {e}");
                        true
                    }
                    Err(e) => {
                        tracing::debug!(path = %shown(&path), "temporary file not deleted yet: {e}");
                        false
                    }
                };
                if done {
                    self.lock().queue.retain(|(queued, _)| *queued != path);
                }
                all_done &= done;
            }
            let finished = {
                let mut state = self.lock();
                if state.finished {
                    // The unmount took the queue over, and records what is left.
                    state.working = false;
                    return;
                }
                if state.queue.is_empty() {
                    state.working = false;
                }
                !state.working
            };
            // What is still to delete is on disk: a mount that dies leaves its list.
            self.save_queue();
            if finished {
                return;
            }
            if all_done {
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

/// Where a mount records the temporary files it could not delete, so that the next mount
/// of the same server (with the same `cache_dir`) deletes them at once instead of waiting
/// for them to be an hour old. One file per mount, named by its process and start, in a
/// directory per server and user; a mount takes over the files of mounts that are gone.
pub struct Record {
    dir: PathBuf,
    own: PathBuf,
}

impl Record {
    /// The record of this mount of `host:port` as `user`, under `cache_dir`.
    pub fn new(cache_dir: &Path, host: &str, port: u16, user: &str) -> Self {
        let hash =
            crate::fs::cache::disk::fnv(&[host.as_bytes(), &port.to_le_bytes(), user.as_bytes()]);
        let dir = cache_dir.join("leftovers").join(format!("{hash:016x}"));
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let own = dir.join(format!("{}-{started}", std::process::id()));
        Self { dir, own }
    }

    /// The paths recorded by mounts of this server whose process is gone; their records
    /// are removed (the paths go into this mount's queue, and record, instead).
    fn take_over(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            });
            if alive || entry.path() == self.own {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                paths.extend(text.lines().filter_map(unhex));
            }
            let _ = std::fs::remove_file(entry.path());
        }
        paths
    }

    /// Writes `paths` as this mount's record (or removes it when there are none).
    fn save(&self, paths: &[Vec<u8>]) {
        if paths.is_empty() {
            let _ = std::fs::remove_file(&self.own);
            return;
        }
        let text: String = paths.iter().map(|p| hex(p) + "\n").collect();
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|()| {
                let temporary = self.own.with_extension("new");
                std::fs::write(&temporary, text)?;
                std::fs::rename(&temporary, &self.own)
            });
        if let Err(e) = written {
            tracing::debug!("cannot record the temporary files left ({e}): a later mount's sweep deletes them once an hour old");
        }
    }
}

/// A path as hex, so that any bytes survive a line of text.
fn hex(path: &[u8]) -> String {
    path.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(line: &str) -> Option<Vec<u8>> {
    let line = line.trim();
    if line.len() % 2 != 0 || line.is_empty() {
        return None;
    }
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(line.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_paths_keep_every_byte() {
        let path = b"dir/.ftpsfs-tmp.1.\xff\n name".to_vec();
        assert_eq!(unhex(&hex(&path)), Some(path));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
