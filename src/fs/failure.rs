//! Remembering a timed-out listing or read for a moment, so the retries behind it fail at
//! once instead of each waiting for its own timeout.

use std::time::{Duration, Instant};

use super::error::FsError;

/// How long a listing or a read that timed out (server or network unreachable, a stalled
/// transfer) is answered from memory, with the same EIO, instead of being tried again. The
/// kernel follows a failed revalidation with a fresh lookup and a failed read-ahead with a
/// synchronous read of the same pages, and file browsers stat many names at once: without
/// this, each of those would wait for its own timeout against a dead server. Fast failures
/// (refused connections, protocol errors) are not remembered: trying again costs nothing.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(1);

/// The last timeout of one directory's listings or one open file's reads.
#[derive(Debug, Default)]
pub struct RecentFailure(Option<(Instant, FsError)>);

impl RecentFailure {
    /// The remembered error, while it is recent.
    pub fn replay(&self, what: &str) -> Option<FsError> {
        let (when, error) = self.0.as_ref()?;
        let ago = when.elapsed();
        if ago >= FAILURE_MEMORY {
            return None;
        }
        tracing::trace!("{what} failed {ago:?} ago: {error}");
        Some(error.clone())
    }

    /// Whether a failure is remembered now.
    pub fn is_recent(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|(when, _)| when.elapsed() < FAILURE_MEMORY)
    }

    /// Learns from an outcome: a success forgets, a timeout is remembered, and other
    /// errors leave the memory as it was.
    pub fn record<T>(&mut self, result: &Result<T, FsError>) {
        match result {
            Ok(_) => self.0 = None,
            Err(error) if error.is_timeout() => self.0 = Some((Instant::now(), error.clone())),
            Err(_) => {}
        }
    }
}

/// State guarded by a lock that remembers its last failure.
pub trait RemembersFailure {
    /// The state's failure memory.
    fn recent_failure(&mut self) -> &mut RecentFailure;
}

/// One attempt holding a state's lock. An attempt dropped unfinished (the operation's
/// deadline passed) is remembered as a timeout, so the callers queued behind the lock
/// fail at once.
pub struct Attempt<'a, S: RemembersFailure> {
    /// The locked state.
    pub state: tokio::sync::MutexGuard<'a, S>,
    started: Instant,
    finished: bool,
}

impl<'a, S: RemembersFailure> Attempt<'a, S> {
    /// Starts an attempt on the locked state.
    pub fn new(state: tokio::sync::MutexGuard<'a, S>) -> Self {
        Self {
            state,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Ends the attempt with its outcome.
    pub fn finish<T>(&mut self, result: &Result<T, FsError>) {
        self.finished = true;
        self.state.recent_failure().record(result);
    }
}

impl<S: RemembersFailure> Drop for Attempt<'_, S> {
    fn drop(&mut self) {
        if !self.finished {
            let abandoned: Result<(), FsError> = Err(FsError::TimedOut(self.started.elapsed()));
            self.state.recent_failure().record(&abandoned);
        }
    }
}
