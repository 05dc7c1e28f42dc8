//! A snapshot of what a mount is doing, for `ftpsfs stats`: readable by a person, and
//! as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::ftp::{ConnectionReport, TlsStatsSnapshot};

/// Everything `ftpsfs stats` shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// Time since the mount started.
    pub uptime: Duration,
    /// The connection limit now (lower than configured after a 421).
    pub connection_limit: usize,
    /// How commands go out (pipelined or one at a time), and why.
    pub commands: String,
    /// Live control connections and what each is doing.
    pub connections: Vec<ConnectionReport>,
    /// Why the server cannot be reached and for how long, while that lasts.
    pub unreachable: Option<(String, Duration)>,
    /// TLS resumption and ticket counters.
    pub tls: TlsStatsSnapshot,
    /// Block cache and download counters.
    pub cache: CacheReport,
    /// Listings fetched from the server.
    pub listings: u64,
    /// Inodes the mount knows.
    pub inodes: usize,
    /// Open files and directories.
    pub open_handles: usize,
    /// Temporary files of failed uploads still to delete.
    pub temporaries_waiting: u64,
    /// The write-back queue, with `-o writeback`.
    pub writeback: Option<crate::fs::write::queue::QueueReport>,
    /// Errors returned to programs, by errno name.
    pub errors: BTreeMap<String, u64>,
}

/// The block cache and downloads.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheReport {
    /// Reads served from cached blocks.
    pub hits: u64,
    /// Reads that needed a download.
    pub misses: u64,
    /// Bytes held now.
    pub bytes_held: u64,
    /// Most bytes it may hold.
    pub capacity: u64,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
    /// Streaming downloads started (sequential readers).
    pub streams: u64,
    /// Ranged downloads (first bytes, random reads).
    pub range_fetches: u64,
    /// Small files downloaded whole ahead of their reader.
    pub files_read_ahead: u64,
    /// Ranges of large files fetched in parallel ahead of a sequential reader.
    pub parallel_ranges: u64,
    /// The disk cache's counts, when it is on.
    pub disk: Option<DiskReport>,
}

/// What the disk cache did.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskReport {
    /// Blocks served from disk.
    pub hits: u64,
    /// Blocks written to disk.
    pub written: u64,
    /// Blocks found damaged, and deleted.
    pub corrupt: u64,
}

impl Report {
    /// Connections busy with an upload (STOR or APPE).
    pub fn uploads(&self) -> impl Iterator<Item = &ConnectionReport> {
        self.connections
            .iter()
            .filter(|c| c.step.starts_with("STOR ") || c.step.starts_with("APPE "))
    }

    /// The report for a person, one fact a line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "uptime: {}", duration(self.uptime));
        match &self.unreachable {
            Some((cause, since)) => {
                let _ = writeln!(out, "server: UNREACHABLE for {}: {cause}", duration(*since));
            }
            None => {
                let _ = writeln!(out, "server: reachable");
            }
        }
        let _ = writeln!(out, "commands: {}", self.commands);
        let _ = writeln!(
            out,
            "connections: {} of {}",
            self.connections.len(),
            self.connection_limit
        );
        for c in &self.connections {
            let tls = c.tls.as_deref().unwrap_or("plain");
            let _ = write!(
                out,
                "  conn {:<5} {:<8} {} for {}",
                c.id,
                tls,
                c.step,
                duration(Duration::from_secs_f64(c.for_secs))
            );
            if c.bytes > 0 {
                let _ = write!(out, ", {}", bytes(c.bytes));
            }
            let _ = writeln!(out, "; {} data connections", c.data_connections);
        }
        let uploads: Vec<&ConnectionReport> = self.uploads().collect();
        let _ = writeln!(out, "uploads in flight: {}", uploads.len());
        for c in uploads {
            let rate = c.bytes as f64 / c.for_secs.max(0.001);
            let _ = writeln!(
                out,
                "  {}: {} sent in {} ({}/s)",
                &c.step[5..],
                bytes(c.bytes),
                duration(Duration::from_secs_f64(c.for_secs)),
                bytes(rate as u64)
            );
        }
        let t = &self.tls;
        let _ = writeln!(
            out,
            "data connections: {} resumed, {} full handshakes",
            t.data_resumed, t.data_full
        );
        let _ = writeln!(
            out,
            "TLS 1.3 tickets: {} received, {} used; connections replaced for lack of tickets: {}, opened on TLS 1.2 for that: {}",
            t.tickets_received, t.tickets_used, t.replaced_for_tickets, t.opened_on_tls12
        );
        let c = &self.cache;
        let lookups = c.hits + c.misses;
        let ratio = if lookups == 0 {
            0.0
        } else {
            100.0 * c.hits as f64 / lookups as f64
        };
        let _ = writeln!(
            out,
            "block cache: {} hits, {} misses ({ratio:.1}% hits), {} held of {}",
            c.hits,
            c.misses,
            bytes(c.bytes_held),
            bytes(c.capacity)
        );
        let _ = writeln!(
            out,
            "downloads: {} streams, {} ranged, {} small files read ahead, {} ranges in parallel, {} received",
            c.streams,
            c.range_fetches,
            c.files_read_ahead,
            c.parallel_ranges,
            bytes(c.bytes_fetched)
        );
        if let Some(d) = &c.disk {
            let _ = writeln!(
                out,
                "disk cache: {} blocks served, {} written, {} found damaged",
                d.hits, d.written, d.corrupt
            );
        }
        let _ = writeln!(
            out,
            "listings fetched: {}; inodes known: {}; open handles: {}",
            self.listings, self.inodes, self.open_handles
        );
        if self.temporaries_waiting > 0 {
            let _ = writeln!(
                out,
                "temporary files of failed uploads waiting to be deleted: {}",
                self.temporaries_waiting
            );
        }
        if let Some(w) = &self.writeback {
            let _ = writeln!(
                out,
                "write-back: {} files queued ({}), {} landed, {} landed beside another client's change",
                w.queued,
                bytes(w.queued_bytes),
                w.landed,
                w.conflicts
            );
            for (path, size, age, error, stopped) in &w.items {
                let state = match (error, stopped) {
                    (None, _) => "waiting".to_string(),
                    (Some(e), true) => {
                        format!("refused, waiting for `ftpsfs queue --retry`: {e}")
                    }
                    (Some(e), false) => format!("retrying after: {e}"),
                };
                let _ = writeln!(
                    out,
                    "  {path}: {}, queued {}s ago, {state}",
                    bytes(*size),
                    age.as_secs()
                );
            }
            for damaged in &w.damaged {
                let _ = writeln!(out, "  damaged, not uploaded: {damaged}");
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors returned: none");
        } else {
            let listed: Vec<String> = self
                .errors
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            let _ = writeln!(out, "errors returned: {}", listed.join(", "));
        }
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let _ = write!(out, "\"uptime_s\":{:.3}", self.uptime.as_secs_f64());
        match &self.unreachable {
            Some((cause, since)) => {
                let _ = write!(
                    out,
                    ",\"server\":{{\"reachable\":false,\"cause\":{},\"for_s\":{:.3}}}",
                    json_string(cause),
                    since.as_secs_f64()
                );
            }
            None => out.push_str(",\"server\":{\"reachable\":true}"),
        }
        let _ = write!(out, ",\"commands\":{}", json_string(&self.commands));
        let _ = write!(out, ",\"connection_limit\":{}", self.connection_limit);
        out.push_str(",\"connections\":[");
        for (i, c) in self.connections.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"id\":{},\"tls\":{},\"step\":{},\"for_s\":{:.3},\"bytes\":{},\"data_connections\":{}}}",
                c.id,
                c.tls.as_deref().map_or("null".into(), json_string),
                json_string(&c.step),
                c.for_secs,
                c.bytes,
                c.data_connections
            );
        }
        out.push_str("],\"uploads\":[");
        for (i, c) in self.uploads().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"path\":{},\"sent\":{},\"for_s\":{:.3}}}",
                json_string(&c.step[5..]),
                c.bytes,
                c.for_secs
            );
        }
        let t = &self.tls;
        let _ = write!(
            out,
            "],\"tls\":{{\"data_resumed\":{},\"data_full\":{},\"tickets_received\":{},\"tickets_used\":{},\"replaced_for_tickets\":{},\"opened_on_tls12\":{}}}",
            t.data_resumed, t.data_full, t.tickets_received, t.tickets_used, t.replaced_for_tickets, t.opened_on_tls12
        );
        let c = &self.cache;
        let _ = write!(
            out,
            ",\"cache\":{{\"hits\":{},\"misses\":{},\"bytes_held\":{},\"capacity\":{},\"bytes_fetched\":{},\"streams\":{},\"range_fetches\":{},\"files_read_ahead\":{},\"parallel_ranges\":{}}}",
            c.hits, c.misses, c.bytes_held, c.capacity, c.bytes_fetched, c.streams, c.range_fetches, c.files_read_ahead, c.parallel_ranges
        );
        if let Some(d) = &c.disk {
            let _ = write!(
                out,
                ",\"disk_cache\":{{\"hits\":{},\"written\":{},\"corrupt\":{}}}",
                d.hits, d.written, d.corrupt
            );
        }
        let _ = write!(
            out,
            ",\"listings\":{},\"inodes\":{},\"open_handles\":{},\"temporaries_waiting\":{}",
            self.listings, self.inodes, self.open_handles, self.temporaries_waiting
        );
        if let Some(w) = &self.writeback {
            let _ = write!(
                out,
                ",\"writeback\":{{\"queued\":{},\"queued_bytes\":{},\"landed\":{},\"conflicts\":{},\"items\":[",
                w.queued, w.queued_bytes, w.landed, w.conflicts
            );
            for (i, (path, size, age, error, stopped)) in w.items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"path\":{},\"size\":{},\"age_s\":{},\"error\":{},\"stopped\":{}}}",
                    json_string(path),
                    size,
                    age.as_secs(),
                    error.as_deref().map_or("null".into(), json_string),
                    stopped
                );
            }
            out.push_str("],\"damaged\":[");
            for (i, damaged) in w.damaged.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(damaged));
            }
            out.push_str("]}");
        }
        out.push_str(",\"errors\":{");
        for (i, (name, count)) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}:{count}", json_string(name));
        }
        out.push_str("}}\n");
        out
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A byte count for a person: 1.5 MiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration for a person: 3.2 s, 5 min 2 s, 2 h 5 min.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{} h {} min", secs / 3600, secs % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            uptime: Duration::from_secs(75),
            connection_limit: 5,
            commands: "pipelined (pipelining=auto)".into(),
            connections: vec![ConnectionReport {
                id: 3,
                tls: Some("TLSv1_3".into()),
                step: "STOR dir/.ftpsfs-\"quoted\"\n".into(),
                for_secs: 2.0,
                bytes: 3 << 20,
                data_connections: 7,
            }],
            unreachable: None,
            tls: TlsStatsSnapshot {
                data_resumed: 7,
                ..Default::default()
            },
            cache: CacheReport {
                hits: 3,
                misses: 1,
                ..Default::default()
            },
            listings: 2,
            inodes: 10,
            open_handles: 1,
            temporaries_waiting: 0,
            writeback: None,
            errors: BTreeMap::from([("ENOENT".to_string(), 4)]),
        }
    }

    #[test]
    fn json_escapes_what_a_path_can_hold() {
        let json = sample().to_json();
        assert!(
            json.contains(r#""step":"STOR dir/.ftpsfs-\"quoted\"\n""#),
            "{json}"
        );
        assert!(
            json.contains(r#""uploads":[{"path":"dir/.ftpsfs-\"quoted\"\n","sent":3145728"#),
            "{json}"
        );
        assert!(json.contains(r#""errors":{"ENOENT":4}"#), "{json}");
        assert!(json.ends_with("}\n"));
    }

    #[test]
    fn text_gives_rates_and_ratios() {
        let text = sample().to_text();
        assert!(text.contains("uptime: 1 min 15 s"), "{text}");
        assert!(text.contains("uploads in flight: 1"), "{text}");
        assert!(text.contains("3.0 MiB sent in 2.0 s (1.5 MiB/s)"), "{text}");
        assert!(text.contains("3 hits, 1 misses (75.0% hits)"), "{text}");
        assert!(
            text.contains("data connections: 7 resumed, 0 full handshakes"),
            "{text}"
        );
        assert!(text.contains("errors returned: ENOENT 4"), "{text}");
    }
}
