//! What each control connection is doing now, for live statistics (`ftpsfs stats`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

/// One connection's current step, shared between the connection and the pool's registry.
#[derive(Debug)]
pub struct Activity {
    id: u64,
    /// The TLS version of the control connection, once the handshake is done.
    tls: OnceLock<String>,
    /// The last command sent, as logs show it (or "idle"), and since when.
    step: Mutex<(String, Instant)>,
    /// Bytes moved on the data connection since that command.
    bytes: AtomicU64,
    data_connections: AtomicU64,
}

/// Longest command kept for the statistics (a path can be long).
const MAX_SHOWN: usize = 300;

impl Activity {
    /// A connection being opened.
    pub fn new(id: u64) -> Arc<Self> {
        Arc::new(Self {
            id,
            tls: OnceLock::new(),
            // Registered once logged in; the login's own commands pass unseen.
            step: Mutex::new((String::new(), Instant::now())),
            bytes: AtomicU64::new(0),
            data_connections: AtomicU64::new(0),
        })
    }

    /// The connection sent `command` (as logs show it), or went "idle".
    pub fn set_step(&self, command: impl Into<String>) {
        let mut shown = command.into();
        if shown.len() > MAX_SHOWN {
            let mut end = MAX_SHOWN;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push('…');
        }
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = (shown, Instant::now());
        self.bytes.store(0, Ordering::Relaxed);
    }

    /// `n` more bytes moved on the data connection.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The control connection's TLS version is known.
    pub fn set_tls(&self, version: String) {
        let _ = self.tls.set(version);
    }

    /// One more data connection was opened.
    pub fn count_data_connection(&self) {
        self.data_connections.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self) -> ConnectionReport {
        let (step, since) = self.step.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ConnectionReport {
            id: self.id,
            tls: self.tls.get().cloned(),
            step,
            for_secs: since.elapsed().as_secs_f64(),
            bytes: self.bytes.load(Ordering::Relaxed),
            data_connections: self.data_connections.load(Ordering::Relaxed),
        }
    }
}

/// A connection as the statistics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionReport {
    /// The connection's number in logs (`conn=N`).
    pub id: u64,
    /// TLS version of the control connection (None: plain FTP, or not yet).
    pub tls: Option<String>,
    /// "idle", or the command in progress or last sent (`RETR dir/file`).
    pub step: String,
    /// Seconds since that step began.
    pub for_secs: f64,
    /// Bytes moved on the data connection since that command.
    pub bytes: u64,
    /// Data connections it opened.
    pub data_connections: u64,
}

/// Every live connection's activity; connections that are gone drop out by themselves.
#[derive(Debug, Default)]
pub struct Activities(Mutex<Vec<Weak<Activity>>>);

impl Activities {
    /// Adds a connection.
    pub fn register(&self, activity: &Arc<Activity>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|a| a.strong_count() > 0);
        all.push(Arc::downgrade(activity));
    }

    /// The connections alive now, by id.
    pub fn snapshot(&self) -> Vec<ConnectionReport> {
        let mut reports: Vec<ConnectionReport> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .map(|a| a.report())
            .collect();
        reports.sort_by_key(|r| r.id);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_connections_leave_the_registry() {
        let registry = Activities::default();
        let first = Activity::new(1);
        let second = Activity::new(2);
        registry.register(&first);
        registry.register(&second);
        second.set_step("RETR a/file");
        second.add_bytes(100);
        second.set_tls("TLSv1_3".into());
        second.count_data_connection();
        first.set_step("x".repeat(1000));
        assert_eq!(first.report().step.chars().count(), MAX_SHOWN + 1);
        drop(first);
        let reports = registry.snapshot();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].id, 2);
        assert_eq!(reports[0].step, "RETR a/file");
        assert_eq!(reports[0].bytes, 100);
        assert_eq!(reports[0].tls.as_deref(), Some("TLSv1_3"));
        assert_eq!(reports[0].data_connections, 1);
    }
}
