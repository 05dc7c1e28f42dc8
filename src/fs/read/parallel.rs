//! Parallel ranged reads: when a sequential reader's one stream is held back by its
//! connection (TCP's window at a distance) rather than by the reader, disjoint ranges of
//! the file ahead are fetched on several pooled connections at once. Each range is a
//! `REST` + `RETR` stopped at the range's end; its blocks go into the block cache, where
//! the reader finds them in order.
//!
//! How many ranges run at once and how long they are follows from what the stream
//! measured: a range must last long enough that opening its data connection (about four
//! round trips, plus TCP's slow start) costs little against its transfer, and all the
//! ranges in flight together stay within the read-ahead budget, so memory stays bounded
//! by `readahead=`.

use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::ftp::pool::worth_retrying;
use crate::ftp::{Pool, PooledConnection};

use crate::fs::cache::memory::BlockCache;
use crate::fs::cache::version::{FileVersion, Mtime};
use crate::fs::error::FsError;
use crate::fs::read::transfer::{
    expect_end, give_up_download, receive_block, Destination, ReadConfig, ReadStats, Received,
    StreamSlot,
};

/// Shortest range worth its own data connection.
pub const MIN_RANGE_BYTES: u64 = 8 << 20;

/// How often a part waiting for a stream slot or a connection looks again.
const SLOT_RETRY: Duration = Duration::from_millis(50);

/// Round trips a new range costs before its data flows at full speed: EPSV + REST + RETR
/// in one, TCP connect, TLS resumption, the first bytes, and a few more while TCP's
/// window grows. A range should last at least twice that.
const RANGE_SETUP_ROUND_TRIPS: u32 = 8;

/// What one measured stream tells about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Bytes per second one stream carried.
    pub bytes_per_second: f64,
    /// The stream's TCP round trip.
    pub round_trip: Duration,
}

/// How a file is split: range length and the number of ranges in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Blocks per range.
    pub range_blocks: u64,
    /// Ranges fetched at once.
    pub parts: usize,
}

impl Plan {
    /// The split for a stream that measured `measured`, with `spare` streams free, a
    /// read-ahead `budget` in bytes and `remaining` bytes of file left past the stream.
    /// `None` when splitting would not help.
    pub fn for_stream(
        measured: Measured,
        min_round_trip: Duration,
        spare: usize,
        budget: u64,
        remaining: u64,
        block_size: u64,
    ) -> Option<Plan> {
        if measured.round_trip < min_round_trip || spare == 0 {
            return None;
        }
        let block_size = block_size.max(1);
        let min_range = MIN_RANGE_BYTES.max(block_size);
        // What makes the setup of a range small against its transfer.
        let setup = measured.round_trip * RANGE_SETUP_ROUND_TRIPS;
        let worthwhile = (measured.bytes_per_second * setup.as_secs_f64() * 2.0) as u64;
        // As many parts as are free and the budget holds at the shortest range...
        // One part alone would only take over the stream's own connection.
        let parts = spare.min((budget / min_range) as usize);
        if parts < 2 {
            return None;
        }
        // ...each as long as is worthwhile, within its share of the budget.
        let range = worthwhile.clamp(min_range, (budget / parts as u64).max(min_range));
        let range_blocks = range.div_ceil(block_size);
        if remaining < 2 * range_blocks * block_size {
            return None;
        }
        Some(Plan {
            range_blocks,
            parts,
        })
    }
}

/// Everything a part needs to fetch ranges of one file.
pub struct PartsJob {
    /// Where connections come from.
    pub pool: Pool,
    /// Where blocks go.
    pub cache: Arc<BlockCache>,
    /// Counters.
    pub stats: Arc<ReadStats>,
    /// The file.
    pub version: Arc<FileVersion>,
    /// The server's time for the file as the reader has seen it so far.
    pub server_time: Option<Mtime>,
    /// Block size, timeouts.
    pub config: ReadConfig,
    /// Read-ahead budget past the reader, in blocks.
    pub budget_blocks: u64,
    /// Connections to leave free for others.
    pub reserve: usize,
    /// Streams (and parts) running now, across all files.
    pub streams_running: Arc<AtomicUsize>,
}

/// Ranges of one file fetched in parallel ahead of its reader, from `start_block` on.
pub struct ParallelRanges {
    start_block: u64,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Parts → reader: a block arrived, or a part ended.
    progress: Notify,
    /// Reader → parts: the reader moved on, or everything should stop.
    demand: Notify,
}

struct State {
    /// The furthest block the reader has asked for.
    reader_block: u64,
    /// The first block no part has taken yet.
    next_unassigned: u64,
    /// Blocks in the file.
    blocks: u64,
    range_blocks: u64,
    /// The shortest range worth its connection, in blocks.
    min_range_blocks: u64,
    /// Whether the last round's ranges were sized.
    tail_shared: bool,
    /// Ranges being fetched: the next block each will deliver, and its end.
    running: Vec<Range<u64>>,
    /// Rest of ranges whose part stopped early (a broken connection): taken first.
    returned: Vec<Range<u64>>,
    /// Parts running or starting.
    parts: usize,
    cancelled: bool,
    failed: Option<FsError>,
}

/// Why the parts cannot deliver a block.
pub enum PartsGone {
    /// They failed; the reader gets this error.
    Failed(FsError),
    /// They stopped, or the block is not theirs to fetch: fetch it another way.
    Ended,
}

impl ParallelRanges {
    /// Starts `plan.parts` parts fetching ranges of `job.version` from `start_block`,
    /// for a reader now at `reader_block`.
    pub fn start(job: PartsJob, plan: Plan, start_block: u64, reader_block: u64) -> Self {
        let block_size = job.config.block_size;
        let blocks = job.version.size.div_ceil(block_size);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                reader_block,
                next_unassigned: start_block,
                blocks,
                range_blocks: plan.range_blocks,
                min_range_blocks: MIN_RANGE_BYTES.div_ceil(block_size),
                tail_shared: false,
                running: Vec::new(),
                returned: Vec::new(),
                parts: plan.parts,
                cancelled: false,
                failed: None,
            }),
            progress: Notify::new(),
            demand: Notify::new(),
        });
        tracing::debug!(
            path = %job.version.path.escape_ascii(),
            start_block,
            parts = plan.parts,
            range_mib = (plan.range_blocks * block_size) >> 20,
            "fetching ranges in parallel"
        );
        let job = Arc::new(job);
        for _ in 0..plan.parts {
            let job = job.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                run_part(&job, &shared).await;
                let mut state = shared.lock();
                state.parts -= 1;
                drop(state);
                shared.progress.notify_waiters();
            });
        }
        Self {
            start_block,
            shared,
        }
    }

    /// The first block the parts fetch: the reader's stream stops before it.
    pub fn start_block(&self) -> u64 {
        self.start_block
    }

    /// The reader asks for `block` now.
    pub fn note_reader_at(&self, block: u64) {
        let mut state = self.shared.lock();
        if block > state.reader_block {
            state.reader_block = block;
            drop(state);
            self.shared.demand.notify_waiters();
        }
    }

    /// Whether the parts will deliver `block` soon: it is in a range being fetched and
    /// not yet arrived, or it is next in line and a part is left to take it.
    pub fn can_serve(&self, block: u64) -> bool {
        let state = self.shared.lock();
        state.will_deliver(block)
    }

    /// Waits until `block` has arrived (or arrived and gone again from the cache).
    pub async fn wait_for(&self, block: u64, limit: Duration) -> Result<(), PartsGone> {
        loop {
            let mut notified = pin!(self.shared.progress.notified());
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if let Some(e) = &state.failed {
                    return Err(PartsGone::Failed(e.clone()));
                }
                if !state.will_deliver(block) {
                    return match state.delivered(block) {
                        true => Ok(()),
                        false => Err(PartsGone::Ended),
                    };
                }
            }
            if tokio::time::timeout(limit, notified).await.is_err() {
                return Err(PartsGone::Failed(FsError::TimedOut(limit)));
            }
        }
    }
}

impl Drop for ParallelRanges {
    fn drop(&mut self) {
        self.shared.lock().cancelled = true;
        self.shared.demand.notify_waiters();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn will_deliver(&self, block: u64) -> bool {
        if self.cancelled || self.failed.is_some() || self.parts == 0 {
            return false;
        }
        self.running.iter().any(|r| r.contains(&block))
            || self.returned.iter().any(|r| r.contains(&block))
            || (block >= self.next_unassigned
                && block < self.blocks
                && block < self.next_unassigned + self.range_blocks)
    }

    /// The length of the next range: the planned one, except near the end of the file,
    /// where what is left is shared among the parts so that they finish together rather
    /// than one part fetching the last long range alone.
    fn next_range_blocks(&mut self) -> u64 {
        let left = self.blocks.saturating_sub(self.next_unassigned);
        let parts = self.parts.max(1) as u64;
        if !self.tail_shared && left < parts * self.range_blocks {
            // Once: the ranges of this last round are all the same length.
            self.tail_shared = true;
            let min_blocks = self.min_range_blocks.min(self.range_blocks);
            self.range_blocks = left.div_ceil(parts).max(min_blocks);
        }
        self.range_blocks
    }

    /// Whether every range is taken.
    fn nothing_left(&self) -> bool {
        self.next_unassigned >= self.blocks && self.returned.is_empty()
    }

    /// Whether `block` was fetched by a part (it may have been evicted since).
    fn delivered(&self, block: u64) -> bool {
        block < self.next_unassigned
            && !self.running.iter().any(|r| r.contains(&block))
            && !self.returned.iter().any(|r| r.contains(&block))
    }
}

/// One part: takes the next range once the reader is within the budget of its end,
/// fetches it, and so on until the file is done, the reader goes idle or away, or the
/// connection breaks.
async fn run_part(job: &PartsJob, shared: &Shared) {
    let Some((_slot, mut conn)) = connection_for_part(job, shared).await else {
        return;
    };
    while let Some(range) = next_range(job, shared).await {
        let outcome = fetch_range(&mut conn, job, shared, range.clone()).await;
        let mut state = shared.lock();
        let left = state
            .running
            .iter()
            .position(|r| r.end == range.end)
            .map(|i| state.running.swap_remove(i));
        if let Err(e) = outcome {
            tracing::debug!(
                path = %job.version.path.escape_ascii(),
                "parallel range stopped: {e}"
            );
            // A broken connection leaves the rest of its range to another part (or to
            // the reader); anything else is the reader's error.
            let transient = matches!(&e, FsError::Remote(e) if worth_retrying(e));
            if let Some(left) = left.filter(|r| !r.is_empty()) {
                state.returned.push(left);
            }
            if !transient {
                state.failed.get_or_insert(e);
            }
            drop(state);
            shared.progress.notify_waiters();
            // Idle parts take the rest of the range now, not when the reader next moves.
            shared.demand.notify_waiters();
            return;
        }
        drop(state);
        shared.progress.notify_waiters();
    }
}

/// A stream slot and a spare connection for a part. The reader's stream holds one of
/// each until it reaches the first range, so a part without them waits for the reader to
/// move on and tries again; `None` once the parts stop or nothing frees up.
async fn connection_for_part(
    job: &PartsJob,
    shared: &Shared,
) -> Option<(StreamSlot, PooledConnection)> {
    let max_streams = job.pool.limit().saturating_sub(job.reserve);
    let deadline = tokio::time::Instant::now() + job.config.stream_idle;
    loop {
        let mut demand = pin!(shared.demand.notified());
        demand.as_mut().enable();
        {
            let state = shared.lock();
            if state.cancelled || state.failed.is_some() || state.nothing_left() {
                return None;
            }
        }
        if let Some(slot) = StreamSlot::take(&job.streams_running, max_streams) {
            match job.pool.try_get_spare(job.reserve).await {
                Ok(Some(conn)) => return Some((slot, conn)),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("no connection for a parallel range: {e}");
                    return None;
                }
            }
        }
        // The stream frees its slot and connection without a word to the parts: look
        // again shortly, up to the idle limit.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        let _ = tokio::time::timeout(SLOT_RETRY, demand).await;
    }
}

/// The next range for a part, once the reader is close enough to it; `None` when there
/// is none left, the parts were cancelled, or the reader stayed away too long.
async fn next_range(job: &PartsJob, shared: &Shared) -> Option<Range<u64>> {
    loop {
        let mut demand = pin!(shared.demand.notified());
        demand.as_mut().enable();
        {
            let mut state = shared.lock();
            if state.cancelled || state.failed.is_some() {
                return None;
            }
            let earliest_returned =
                (0..state.returned.len()).min_by_key(|&i| state.returned[i].start);
            let candidate = match earliest_returned {
                Some(i) => state.returned[i].clone(),
                None if state.next_unassigned < state.blocks => {
                    let len = state.next_range_blocks();
                    state.next_unassigned..state.blocks.min(state.next_unassigned + len)
                }
                None => return None,
            };
            let wanted_now = candidate.start <= state.reader_block;
            if wanted_now || candidate.end <= state.reader_block + job.budget_blocks {
                match earliest_returned {
                    Some(i) => {
                        state.returned.swap_remove(i);
                    }
                    None => state.next_unassigned = candidate.end,
                }
                state.running.push(candidate.clone());
                return Some(candidate);
            }
        }
        if tokio::time::timeout(job.config.stream_idle, demand)
            .await
            .is_err()
        {
            tracing::debug!("reader idle; parallel range part gives its connection back");
            return None;
        }
    }
}

/// Fetches the blocks of `range` on `conn` into the cache, in order, then stops the
/// transfer (or finishes it at the end of the file).
async fn fetch_range(
    conn: &mut PooledConnection,
    job: &PartsJob,
    shared: &Shared,
    range: Range<u64>,
) -> Result<(), FsError> {
    let block_size = job.config.block_size;
    let size = job.version.size;
    let requested = Instant::now();
    let (mut data, time) = conn
        .retrieve_with_time(&job.version.path, range.start * block_size)
        .await?;
    let time = time.map(|t| (t.unix_seconds, t.nanos));
    if let (Some(now), Some(seen)) = (time, job.server_time) {
        if now != seen {
            // Another content under the same size and listed time: never mixed.
            conn.abort_data(data).await?;
            job.cache.forget_version(&job.version);
            return Err(FsError::Changed);
        }
    }
    for block in range.clone() {
        if shared.lock().cancelled {
            conn.abort_data(data).await?;
            return Ok(());
        }
        let into = Destination {
            cache: &job.cache,
            stats: &job.stats,
            version: &job.version,
            // Only this download's own time: a time it was not given is not checked.
            server_time: time,
            requested,
        };
        match receive_block(&mut data, &into, block, block_size).await? {
            Received::Stored => {}
            failed => return Err(give_up_download(conn, data, failed).await),
        }
        if let Some(running) = shared
            .lock()
            .running
            .iter_mut()
            .find(|r| r.end == range.end)
        {
            running.start = block + 1;
        }
        shared.progress.notify_waiters();
    }
    if range.end == size.div_ceil(block_size) {
        if !expect_end(&mut data).await? {
            return Err(FsError::Changed);
        }
        conn.finish_complete_data(data).await?;
    } else {
        conn.abort_data(data).await?;
    }
    job.stats.parallel_ranges.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::read::transfer::MIN_ROUND_TRIP;

    const MIB: u64 = 1 << 20;

    fn measured(mb_per_s: f64, rtt_ms: u64) -> Measured {
        Measured {
            bytes_per_second: mb_per_s * 1e6,
            round_trip: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn loopback_streams_are_not_split() {
        let plan = Plan::for_stream(
            measured(385.0, 0),
            MIN_ROUND_TRIP,
            4,
            64 * MIB,
            1024 * MIB,
            MIB,
        );
        assert_eq!(plan, None);
    }

    #[test]
    fn distant_streams_split_within_the_budget() {
        // 15 MB/s at 150 ms: a range should last 2 × 8 round trips, 36 MB; four parts
        // share a 64 MiB budget, so each gets 16 MiB.
        let plan = Plan::for_stream(
            measured(15.0, 150),
            MIN_ROUND_TRIP,
            4,
            64 * MIB,
            256 * MIB,
            MIB,
        )
        .unwrap();
        assert_eq!(
            plan,
            Plan {
                range_blocks: 16,
                parts: 4
            }
        );
        // A larger budget lets each range be as long as is worthwhile.
        let plan = Plan::for_stream(
            measured(15.0, 150),
            MIN_ROUND_TRIP,
            4,
            512 * MIB,
            1024 * MIB,
            MIB,
        )
        .unwrap();
        assert_eq!(plan.parts, 4);
        assert_eq!(plan.range_blocks, 35);
    }

    #[test]
    fn ranges_are_never_shorter_than_the_minimum() {
        let plan = Plan::for_stream(
            measured(1.0, 5),
            MIN_ROUND_TRIP,
            4,
            64 * MIB,
            256 * MIB,
            MIB,
        )
        .unwrap();
        assert_eq!(plan.range_blocks * MIB, MIN_RANGE_BYTES);
        // A budget for only two minimum ranges gets two parts, however many are free.
        let plan = Plan::for_stream(
            measured(1.0, 5),
            MIN_ROUND_TRIP,
            4,
            16 * MIB,
            256 * MIB,
            MIB,
        )
        .unwrap();
        assert_eq!(plan.parts, 2);
    }

    #[test]
    fn no_split_without_spare_connections_or_file_left() {
        assert_eq!(
            Plan::for_stream(
                measured(15.0, 150),
                MIN_ROUND_TRIP,
                0,
                64 * MIB,
                256 * MIB,
                MIB
            ),
            None
        );
        assert_eq!(
            Plan::for_stream(
                measured(15.0, 150),
                MIN_ROUND_TRIP,
                4,
                64 * MIB,
                20 * MIB,
                MIB
            ),
            None
        );
    }
}
