//! Cleaning up after uploads that never finished: temporary files left by a crash, a
//! `kill -9` or a dead server, found when a later mount lists their directory.
//!
//! Only ftpsfs's own names are touched (see `names.rs`), and only once they are older
//! than [`LEFTOVER_AGE`] both by the time in their name and by their modification time,
//! so that another mount's upload in progress is never taken for a leftover.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::ftp::listing::Entry;
use crate::ftp::Pool;

use crate::fs::meta::inode::join_path;
use crate::fs::meta::names::{parse_leftover, shown, LEFTOVER_AGE};

/// Connections a sweep leaves free: it is housekeeping, never in a user's way.
const CONNECTIONS_RESERVED_FROM_SWEEP: usize = 1;

/// What to do with one leftover.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Too young, or not a name ftpsfs makes: leave it.
    Keep,
    /// Delete it.
    Delete,
    /// An old version moved aside whose replacement never arrived: put it back.
    Restore(Vec<u8>),
}

/// Decides what to do with the leftover `entry`, given the names the directory shows
/// (`present`) and the other leftovers in it.
pub fn decide(entry: &Entry, present: &[Vec<u8>], leftovers: &[Entry], now: u64) -> Cleanup {
    let Some(leftover) = parse_leftover(&entry.name) else {
        return Cleanup::Keep;
    };
    let age = LEFTOVER_AGE.as_secs();
    let written = entry
        .modified
        .map_or(0, |t| u64::try_from(t.unix_seconds).unwrap_or(0));
    if now.saturating_sub(leftover.made) < age || now.saturating_sub(written) < age {
        return Cleanup::Keep;
    }
    if !leftover.aside {
        return Cleanup::Delete;
    }
    let Some(original) = leftover.original else {
        // The name was cut to fit: where it belongs cannot be told, so it stays.
        return Cleanup::Keep;
    };
    // The old version was moved aside and the new one renamed in, unless the process
    // died in between: then the name is missing and the new version is still a
    // temporary file. Only then does the old version go back.
    let replacement_missing = !present.contains(&original)
        && leftovers.iter().any(|other| {
            parse_leftover(&other.name)
                .is_some_and(|l| !l.aside && l.original.as_deref() == Some(original.as_slice()))
        });
    if replacement_missing {
        Cleanup::Restore(original)
    } else {
        Cleanup::Delete
    }
}

/// Deletes (or restores) the leftovers of `dir` that are old enough, on a spare
/// connection; does nothing when none is spare (the next listing tries again).
pub async fn clean(
    pool: Pool,
    dir: Vec<u8>,
    leftovers: Vec<(Vec<u8>, Entry)>,
    present: Vec<Vec<u8>>,
) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let entries: Vec<Entry> = leftovers.iter().map(|(_, e)| e.clone()).collect();
    let plan: Vec<(Vec<u8>, Cleanup)> = leftovers
        .into_iter()
        .map(|(name, entry)| (name, decide(&entry, &present, &entries, now)))
        .filter(|(_, cleanup)| *cleanup != Cleanup::Keep)
        .collect();
    if plan.is_empty() {
        return;
    }
    let mut conn = match pool.try_get_spare(CONNECTIONS_RESERVED_FROM_SWEEP).await {
        Ok(Some(conn)) => conn,
        _ => return,
    };
    // Restores first: a restored name must not look like a missing replacement.
    let (restores, deletes): (Vec<_>, Vec<_>) = plan
        .into_iter()
        .partition(|(_, cleanup)| matches!(cleanup, Cleanup::Restore(_)));
    for (name, cleanup) in restores.into_iter().chain(deletes) {
        let path = join_path(&dir, &name);
        let result = match &cleanup {
            Cleanup::Restore(original) => conn.rename(&path, &join_path(&dir, original)).await,
            _ => conn.delete(&path).await,
        };
        match result {
            Ok(()) => tracing::info!(
                dir = %shown(&dir),
                "{} {} left by an upload that did not finish",
                if matches!(cleanup, Cleanup::Restore(_)) { "restored" } else { "deleted" },
                shown(&name)
            ),
            Err(e) => {
                tracing::debug!(dir = %shown(&dir), "leftover {}: {e}", shown(&name));
                if e.breaks_connection() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::meta::names::{aside_name, temp_name};
    use crate::ftp::listing::{EntryKind, TimePrecision, Timestamp};

    fn entry(name: &[u8], modified: i64) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: EntryKind::File,
            size: Some(1),
            modified: Some(Timestamp {
                unix_seconds: modified,
                nanos: 0,
                precision: TimePrecision::Second,
            }),
            mode: None,
            link_target: None,
        }
    }

    #[test]
    fn only_old_leftovers_go() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let later = now + 2 * LEFTOVER_AGE.as_secs();
        let fresh = entry(&temp_name(b"a"), now as i64);
        // Named now, but seen later: old by both measures.
        assert_eq!(decide(&fresh, &[], &[], later), Cleanup::Delete);
        // Still being written to (a recent modification time): kept.
        let busy = entry(&temp_name(b"a"), later as i64 - 10);
        assert_eq!(decide(&busy, &[], &[], later), Cleanup::Keep);
        assert_eq!(decide(&fresh, &[], &[], now + 60), Cleanup::Keep);
        // Not one of ours, whatever its age.
        let other = entry(b".ftpsfs-tmp.not-ours", 0);
        assert_eq!(decide(&other, &[], &[], later), Cleanup::Keep);
    }

    #[test]
    fn an_old_version_goes_back_only_if_its_replacement_never_arrived() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let later = now + 2 * LEFTOVER_AGE.as_secs();
        let aside = entry(&aside_name(b"report"), now as i64);
        let temp = entry(&temp_name(b"report"), now as i64);
        let both = [aside.clone(), temp.clone()];
        // Died between moving the old version aside and renaming the new one in.
        assert_eq!(
            decide(&aside, &[], &both, later),
            Cleanup::Restore(b"report".to_vec())
        );
        // The new version is in place: the old one goes.
        assert_eq!(
            decide(&aside, &[b"report".to_vec()], &both, later),
            Cleanup::Delete
        );
        // Deleted by a user since: the old version must not come back.
        assert_eq!(
            decide(&aside, &[], std::slice::from_ref(&aside), later),
            Cleanup::Delete
        );
    }
}
