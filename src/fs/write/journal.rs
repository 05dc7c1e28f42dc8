//! The write-back journal: files closed under `-o writeback` whose upload has not landed.
//!
//! Each queued file is a pair in the journal directory: `ID.data`, its whole content
//! (the staging file, given a name), and `ID.item`, a record of where it goes and what
//! it replaces. A record is written to a temporary name, synced, and renamed into place
//! after its data was synced, so a record that exists names data that is complete; each
//! carries a CRC-32 of itself and of its data, so a record or data file torn by a crash
//! or damaged later is found and reported, never uploaded. A landed item loses its
//! record first, then its data: data without a record is a leftover, deleted at open.
//!
//! A close's record is durable when it returns (the directory is synced). A change to
//! a queued file's record (a rename, time or mode folded into it) is as durable as the
//! same change on a local file system: its record is synced, and the directory with the
//! next close, or within [`SYNC_WITHIN`]; a power cut in between lands the file as it
//! was at its last close.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The longest a record changed with [`Journal::record_soon`] waits for the directory's
/// sync (ext4 commits its journal every 5 s).
pub const SYNC_WITHIN: Duration = Duration::from_secs(1);

/// First line of every record: the format and its version.
const MAGIC: &str = "ftpsfs-writeback 1";

/// The server's version of a file an item replaces, to tell whether another client
/// changed it meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// Its size.
    pub size: u64,
    /// Its modification time to the second, seconds and nanoseconds, when the server
    /// told it so exactly (a LIST time in minutes is not compared).
    pub mtime: Option<(i64, u32)>,
}

/// One queued file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its number in the journal (names its files).
    pub id: u64,
    /// Where it goes on the server (full path).
    pub path: Vec<u8>,
    /// What it replaces: None for a new file.
    pub base: Option<Base>,
    /// Bytes of data.
    pub size: u64,
    /// CRC-32 of the data.
    pub data_crc: u32,
    /// Modification time to set, seconds and nanoseconds.
    pub mtime: Option<(i64, u32)>,
    /// Permission bits to set.
    pub mode: Option<u32>,
    /// When it was queued (seconds since 1970).
    pub queued_at: i64,
    /// The server's refusal that stopped it, when it failed for good.
    pub failed: Option<String>,
    /// The mounts that tried to upload it (their numbers, see `item_temp_name`): the
    /// temporary files they may have left.
    pub tries: Vec<u32>,
}

/// A record or data file that cannot be trusted, found when the journal is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The record's file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// The journal of one server and user.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Holds the journal's lock for as long as the mount lives: two mounts uploading
    /// the same items would take each other's landings for other clients' changes.
    _lock: File,
    /// A record was renamed into place without the directory's sync; a sync is due.
    unsynced: Arc<AtomicBool>,
}

impl Journal {
    /// Opens (creating it, private to the user) the journal in `dir`, and locks it;
    /// fails when another process holds it.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = fs::read_to_string(dir.join("lock")).unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another ftpsfs mount (pid {}) uses this write-back journal; give this one another cache_dir=",
                    holder.trim()
                ),
            ));
        }
        lock.set_len(0)?;
        write!(lock, "{}", std::process::id())?;
        Ok(Self {
            dir,
            _lock: lock,
            unsynced: Arc::default(),
        })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the data of item `id` is kept.
    pub fn data_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.data"))
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.item"))
    }

    /// Records `item`, whose data file (see [`Self::data_path`]) is complete and synced:
    /// once this returns, a crash cannot lose it.
    pub fn record(&self, item: &Item) -> io::Result<()> {
        self.write_record(item)?;
        // This sync carries the records renamed before it too.
        self.unsynced.store(false, Ordering::SeqCst);
        File::open(&self.dir)?.sync_all()
    }

    /// Records a change to a queued item (a time, mode or name folded into it): the
    /// record itself is synced now, the directory with the next [`Self::record`] or
    /// within [`SYNC_WITHIN`], as a local file system makes a rename durable. Saves
    /// rsync a directory sync per file for each of its utimensat and rename.
    pub fn record_soon(&self, item: &Item) -> io::Result<()> {
        self.write_record(item)?;
        if !self.unsynced.swap(true, Ordering::SeqCst) {
            let (dir, unsynced) = (self.dir.clone(), self.unsynced.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(SYNC_WITHIN).await;
                        let synced =
                            tokio::task::spawn_blocking(move || sync_dir(&dir, &unsynced)).await;
                        if let Ok(Err(e)) = synced {
                            tracing::warn!("cannot sync the write-back journal: {e}");
                        }
                    });
                }
                Err(_) => sync_dir(&self.dir, &self.unsynced)?,
            }
        }
        Ok(())
    }

    /// Whether a record waits for the directory's sync.
    pub fn sync_due(&self) -> bool {
        self.unsynced.load(Ordering::SeqCst)
    }

    /// Syncs the directory now if a record waits for it.
    pub fn sync(&self) -> io::Result<()> {
        sync_dir(&self.dir, &self.unsynced)
    }

    /// Writes `item`'s record to a temporary name, syncs it, and renames it into place.
    fn write_record(&self, item: &Item) -> io::Result<()> {
        let partial = self.dir.join(format!("{:016x}.item-partial", item.id));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(&encode(item))?;
        file.sync_all()?;
        fs::rename(&partial, self.record_path(item.id))
    }

    /// Removes item `id` (landed, superseded or discarded): its record, then its data.
    pub fn remove(&self, id: u64) -> io::Result<()> {
        match fs::remove_file(self.record_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        File::open(&self.dir)?.sync_all()?;
        match fs::remove_file(self.data_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every item recorded, oldest first, with the records and data that are damaged.
    /// Data files without a record (a crash before their record was written) and
    /// partial records are deleted; damaged ones are kept for the user to look at.
    pub fn load(&self) -> io::Result<(Vec<Item>, Vec<Damaged>)> {
        let mut items = Vec::new();
        let mut damaged = Vec::new();
        let mut data_files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".item-partial") {
                let _ = fs::remove_file(&path);
            } else if let Some(id) = name.strip_suffix(".data") {
                data_files.push((id.to_string(), path.clone()));
            } else if name.ends_with(".item") {
                match self.read_item(&path) {
                    Ok(item) => items.push(item),
                    Err(why) => damaged.push(Damaged { file: path, why }),
                }
            }
        }
        for (id, path) in data_files {
            let recorded = items.iter().any(|i| format!("{:016x}", i.id) == id)
                || damaged
                    .iter()
                    .any(|d| d.file.file_stem().and_then(|s| s.to_str()) == Some(&id));
            if !recorded {
                let _ = fs::remove_file(path);
            }
        }
        items.sort_by_key(|item| (item.queued_at, item.id));
        Ok((items, damaged))
    }

    /// Reads and checks the record at `path` and the data it names.
    fn read_item(&self, path: &Path) -> Result<Item, String> {
        let bytes = fs::read(path).map_err(|e| format!("unreadable record: {e}"))?;
        let item = decode(&bytes)?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(&format!("{:016x}", item.id)) {
            return Err("the record names another item".into());
        }
        let (size, crc) = data_checksum(&self.data_path(item.id))
            .map_err(|e| format!("its data file is unreadable: {e}"))?;
        if size != item.size {
            return Err(format!(
                "its data file holds {size} bytes, {} were recorded (torn or damaged)",
                item.size
            ));
        }
        if crc != item.data_crc {
            return Err("its data does not match its checksum (damaged)".into());
        }
        Ok(item)
    }
}

/// The size and CRC-32 of the file at `path`.
pub fn data_checksum(path: &Path) -> io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A record's bytes: one `key=value` line per field, then a line with the CRC-32 of all
/// that precedes it. Text, so that a person can read a stuck item.
fn encode(item: &Item) -> Vec<u8> {
    let time = |t: Option<(i64, u32)>| t.map_or("none".to_string(), |(s, n)| format!("{s} {n}"));
    let mut text = format!(
        "{MAGIC}\nid={:016x}\npath={}\nsize={}\ndata_crc={:08x}\nbase={}\nmtime={}\nmode={}\nqueued={}\n",
        item.id,
        hex(&item.path),
        item.size,
        item.data_crc,
        item.base
            .map_or("new".to_string(), |b| format!("{} {}", b.size, time(b.mtime))),
        time(item.mtime),
        item.mode.map_or("none".to_string(), |m| format!("{m:o}")),
        item.queued_at,
    );
    if let Some(failed) = &item.failed {
        text.push_str(&format!("failed={}\n", hex(failed.as_bytes())));
    }
    if !item.tries.is_empty() {
        let tries: Vec<String> = item.tries.iter().map(|t| format!("{t:08x}")).collect();
        text.push_str(&format!("tries={}\n", tries.join(",")));
    }
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc={crc:08x}\n"));
    text.into_bytes()
}

fn decode(bytes: &[u8]) -> Result<Item, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the record is not text (damaged)")?;
    let body_end = text
        .rfind("crc=")
        .ok_or("the record has no checksum (torn)")?;
    let (body, tail) = text.split_at(body_end);
    let crc = u32::from_str_radix(
        tail.trim_end()
            .strip_prefix("crc=")
            .ok_or("bad checksum line")?,
        16,
    )
    .map_err(|_| "bad checksum line (torn)")?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err("the record does not match its checksum (torn or damaged)".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a write-back record of this version".into());
    }
    let fields: std::collections::HashMap<&str, &str> =
        lines.filter_map(|line| line.split_once('=')).collect();
    let field = |key: &str| {
        fields
            .get(key)
            .copied()
            .ok_or_else(|| format!("the record lacks `{key}`"))
    };
    let bad = |key: &str| format!("the record's `{key}` is malformed");
    let number = |key: &str| field(key)?.parse::<u64>().map_err(|_| bad(key));
    let time = |key: &str| -> Result<Option<(i64, u32)>, String> {
        match field(key)? {
            "none" => Ok(None),
            value => {
                let (s, n) = value.split_once(' ').ok_or_else(|| bad(key))?;
                Ok(Some((
                    s.parse().map_err(|_| bad(key))?,
                    n.parse().map_err(|_| bad(key))?,
                )))
            }
        }
    };
    let base = match field("base")? {
        "new" => None,
        value => {
            let parts: Vec<&str> = value.split(' ').collect();
            let mtime = match parts[1..] {
                ["none"] => None,
                [secs, nanos] => Some((
                    secs.parse().map_err(|_| bad("base"))?,
                    nanos.parse().map_err(|_| bad("base"))?,
                )),
                _ => return Err(bad("base")),
            };
            Some(Base {
                size: parts[0].parse().map_err(|_| bad("base"))?,
                mtime,
            })
        }
    };
    Ok(Item {
        id: u64::from_str_radix(field("id")?, 16).map_err(|_| bad("id"))?,
        path: unhex(field("path")?).ok_or_else(|| bad("path"))?,
        base,
        size: number("size")?,
        data_crc: u32::from_str_radix(field("data_crc")?, 16).map_err(|_| bad("data_crc"))?,
        mtime: time("mtime")?,
        mode: match field("mode")? {
            "none" => None,
            value => Some(u32::from_str_radix(value, 8).map_err(|_| bad("mode"))?),
        },
        queued_at: field("queued")?.parse().map_err(|_| bad("queued"))?,
        failed: match fields.get("failed") {
            None => None,
            Some(value) => Some(
                String::from_utf8_lossy(&unhex(value).ok_or_else(|| bad("failed"))?).into_owned(),
            ),
        },
        tries: match fields.get("tries") {
            None => Vec::new(),
            Some(value) => value
                .split(',')
                .map(|t| u32::from_str_radix(t, 16).map_err(|_| bad("tries")))
                .collect::<Result<_, _>>()?,
        },
    })
}

/// Syncs `dir` if `unsynced` says a record waits for it (cleared first: a record
/// renamed during the sync sets it again, and is synced by the next).
fn sync_dir(dir: &Path, unsynced: &AtomicBool) -> io::Result<()> {
    if unsynced.swap(false, Ordering::SeqCst) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!("cannot sync the write-back journal: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folded_change_is_synced_with_the_next_record_or_soon() {
        let journal = journal("soon");
        let first = item(&journal, 1, b"one");
        journal.record(&first).unwrap();
        assert!(!journal.sync_due());
        // Outside a runtime there is no one to sync later: at once.
        journal.record_soon(&first).unwrap();
        assert!(!journal.sync_due());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            journal.record_soon(&first).unwrap();
            assert!(journal.sync_due());
            // The next close's record syncs it.
            let second = item(&journal, 2, b"two");
            journal.record(&second).unwrap();
            assert!(!journal.sync_due());
            // Or the timer, within SYNC_WITHIN.
            journal.record_soon(&second).unwrap();
            assert!(journal.sync_due());
            tokio::time::sleep(SYNC_WITHIN + Duration::from_millis(500)).await;
            assert!(!journal.sync_due());
        });
        let (items, damaged) = journal.load().unwrap();
        assert_eq!(items.len(), 2);
        assert!(damaged.is_empty());
    }

    fn journal(name: &str) -> Journal {
        let dir = std::env::temp_dir().join(format!(
            "ftpsfs-journal-{name}-{}-{}",
            std::process::id(),
            crate::fs::meta::names::unique()
        ));
        Journal::open(dir).unwrap()
    }

    fn item(journal: &Journal, id: u64, data: &[u8]) -> Item {
        fs::write(journal.data_path(id), data).unwrap();
        Item {
            id,
            path: b"/dir/na\xffme with spaces\n".to_vec(),
            base: Some(Base {
                size: 12,
                mtime: Some((1_700_000_000, 5)),
            }),
            size: data.len() as u64,
            data_crc: crc32fast::hash(data),
            mtime: Some((-3, 0)),
            mode: Some(0o640),
            queued_at: 1_800_000_000 + id as i64,
            failed: None,
            tries: vec![7, 0xdead_beef],
        }
    }

    #[test]
    fn records_come_back_as_written_oldest_first() {
        let journal = journal("roundtrip");
        let mut second = item(&journal, 2, b"second");
        second.base = Some(Base {
            size: 3,
            mtime: None,
        });
        second.mtime = None;
        second.mode = None;
        second.failed = Some("553 Could not create file.".into());
        journal.record(&second).unwrap();
        let mut first = item(&journal, 1, b"first");
        first.base = None;
        journal.record(&first).unwrap();
        let (items, damaged) = journal.load().unwrap();
        assert!(damaged.is_empty(), "{damaged:?}");
        assert_eq!(items, vec![first, second]);
        fs::remove_dir_all(journal.dir()).unwrap();
    }

    #[test]
    fn torn_records_and_data_are_reported_never_loaded() {
        let journal = journal("torn");
        let good = item(&journal, 1, b"whole content");
        journal.record(&good).unwrap();
        let cut_data = item(&journal, 2, b"content to be cut");
        journal.record(&cut_data).unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(journal.data_path(2))
            .unwrap();
        file.set_len(5).unwrap();
        let changed_data = item(&journal, 3, b"content");
        journal.record(&changed_data).unwrap();
        fs::write(journal.data_path(3), b"CONTENT").unwrap();
        let cut_record = item(&journal, 4, b"x");
        journal.record(&cut_record).unwrap();
        let record = journal.record_path(4);
        let bytes = fs::read(&record).unwrap();
        fs::write(&record, &bytes[..bytes.len() - 20]).unwrap();

        let (items, damaged) = journal.load().unwrap();
        assert_eq!(items, vec![good]);
        let mut why: Vec<String> = damaged.iter().map(|d| d.why.clone()).collect();
        why.sort();
        assert_eq!(damaged.len(), 3, "{why:?}");
        assert!(why.iter().any(|w| w.contains("holds 5 bytes")), "{why:?}");
        assert!(why
            .iter()
            .any(|w| w.contains("does not match its checksum (damaged)")));
        assert!(why.iter().any(|w| w.contains("torn")));
        // Damaged items keep their data for the user to look at.
        assert!(journal.data_path(2).exists());
        fs::remove_dir_all(journal.dir()).unwrap();
    }

    #[test]
    fn data_without_a_record_and_partial_records_are_deleted_removed_items_gone() {
        let journal = journal("leftovers");
        let kept = item(&journal, 1, b"kept");
        journal.record(&kept).unwrap();
        fs::write(journal.data_path(9), b"a crash before the record").unwrap();
        fs::write(journal.dir().join("0000000000000009.item-partial"), b"ftps").unwrap();
        let (items, damaged) = journal.load().unwrap();
        assert_eq!((items.len(), damaged.len()), (1, 0));
        assert!(!journal.data_path(9).exists());
        journal.remove(1).unwrap();
        journal.remove(1).unwrap();
        assert_eq!(
            fs::read_dir(journal.dir()).unwrap().count(),
            1,
            "the lock only"
        );
        fs::remove_dir_all(journal.dir()).unwrap();
    }

    #[test]
    fn one_process_at_a_time_holds_a_journal() {
        let first = journal("locked");
        // flock locks belong to open files: a second open, even in this process, waits.
        let second = Journal::open(first.dir().to_path_buf()).unwrap_err();
        assert!(
            second.to_string().contains("another ftpsfs mount"),
            "{second}"
        );
        let dir = first.dir().to_path_buf();
        drop(first);
        let again = Journal::open(dir.clone()).unwrap();
        drop(again);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_record_with_a_changed_field_fails_its_checksum() {
        let journal = journal("flip");
        let original = item(&journal, 1, b"data");
        let bytes = encode(&original);
        let text = String::from_utf8(bytes).unwrap();
        let changed = text.replace("size=4", "size=5");
        assert!(decode(changed.as_bytes()).unwrap_err().contains("checksum"));
        assert_eq!(decode(text.as_bytes()).unwrap(), original);
        fs::remove_dir_all(journal.dir()).unwrap();
    }
}
