//! What every download into the block cache shares, whoever runs it (the reader's
//! streams and ranged fetches, parallel ranges, read-ahead of small files): the read
//! settings and counters, where blocks go, how a block is received and a download
//! given up, and the limit on streams running at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fs::cache::memory::{BlockCache, Segment};
use crate::fs::cache::version::{BlockKey, FileVersion, Mtime};
use crate::fs::error::FsError;
use crate::ftp::control::{ControlConnection, DataConnection};
use crate::ftp::FtpError;

/// When a sequential reader's file is split into parallel ranges (`parallel_reads=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParallelReads {
    /// Where the round trip is at least [`MIN_ROUND_TRIP`].
    Auto,
    /// Wherever the stream is slower than its reader (a server that limits each
    /// connection's speed).
    Always,
    /// Never.
    Off,
}

impl ParallelReads {
    /// The shortest round trip at which a file may be split; `None`: never.
    pub fn min_round_trip(self) -> Option<Duration> {
        match self {
            ParallelReads::Auto => Some(MIN_ROUND_TRIP),
            ParallelReads::Always => Some(Duration::ZERO),
            ParallelReads::Off => None,
        }
    }
}

/// A stream whose round trip is shorter than this is limited by the CPUs, not by TCP's
/// window: on loopback one stream carries 385 MB/s, all that two cores decrypt, and more
/// streams would only compete for them.
pub const MIN_ROUND_TRIP: Duration = Duration::from_millis(2);

/// How reads behave.
#[derive(Debug, Clone, Copy)]
pub struct ReadConfig {
    /// Cache block size in bytes.
    pub block_size: u64,
    /// Largest read-ahead window, in blocks.
    pub max_window_blocks: u64,
    /// Longest wait for a stream to deliver the next block.
    pub data_timeout: Duration,
    /// A stream whose reader asked for nothing this long gives its connection back.
    pub stream_idle: Duration,
    /// When a file is split into parallel ranges.
    pub parallel: ParallelReads,
}

/// Counters for diagnostics and benchmarks.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Streaming RETRs started.
    pub streams: AtomicU64,
    /// Ranged RETRs (head, random or fallback blocks).
    pub range_fetches: AtomicU64,
    /// Bytes received from the server.
    pub bytes_fetched: AtomicU64,
    /// Small files downloaded whole ahead of their reader (see `readahead.rs`).
    pub files_read_ahead: AtomicU64,
    /// Ranges fetched in parallel ahead of a sequential reader (see `parallel.rs`).
    pub parallel_ranges: AtomicU64,
}

/// Where a download's blocks go.
pub(in crate::fs) struct Destination<'a> {
    pub cache: &'a BlockCache,
    pub stats: &'a ReadStats,
    pub version: &'a Arc<FileVersion>,
    /// The server's time for the file when the download was asked for.
    pub server_time: Option<Mtime>,
    /// When its RETR was sent.
    pub requested: Instant,
}

/// What became of one block of a download.
pub(in crate::fs) enum Received {
    /// In the cache.
    Stored,
    /// The data ended before the block did: shorter than listed, or cut off.
    Short,
    /// The cache holds blocks of this version downloaded at another server time.
    OtherContent,
}

/// Ends a download whose block could not be stored (`received` is not `Stored`), and
/// the error for its reader.
pub(in crate::fs) async fn give_up_download(
    conn: &mut ControlConnection,
    data: DataConnection,
    received: Received,
) -> FsError {
    let ended = match received {
        // The final reply tells a file that changed on the server (a complete transfer:
        // 226 after close_notify) from a transfer that was cut off (no close_notify, or a
        // 426), which is an error, never a short file.
        Received::Short => conn.finish_data(data).await,
        Received::Stored | Received::OtherContent => conn.abort_data(data).await,
    };
    match ended {
        Ok(()) => FsError::Changed,
        Err(e) => e.into(),
    }
}

/// Reads block `index` from the download `data`, which is at its start, into the cache.
pub(in crate::fs) async fn receive_block(
    data: &mut DataConnection,
    into: &Destination<'_>,
    index: u64,
    block_size: u64,
) -> Result<Received, FtpError> {
    let len = block_size.min(into.version.size - index * block_size) as usize;
    let mut buf = into.cache.buffer(len);
    if data.read_full(&mut buf).await? < len {
        return Ok(Received::Short);
    }
    into.stats
        .bytes_fetched
        .fetch_add(len as u64, Ordering::Relaxed);
    let key = BlockKey {
        version: into.version.clone(),
        index,
    };
    let segment = Segment {
        start: 0,
        data: Arc::new(buf),
    };
    Ok(
        match into
            .cache
            .insert_downloaded(key, segment, into.server_time, Some(into.requested))
        {
            Ok(()) => Received::Stored,
            Err(_) => Received::OtherContent,
        },
    )
}

/// True when the data connection is at its end (the file is not longer than listed).
pub(in crate::fs) async fn expect_end(data: &mut DataConnection) -> Result<bool, FtpError> {
    let mut probe = [0u8; 1];
    Ok(data.read(&mut probe).await? == 0)
}

/// One of the limited number of streams that may run at once; freed on drop.
pub(in crate::fs) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// A slot, if fewer than `max` are taken.
    pub(in crate::fs) fn take(running: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(running.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
