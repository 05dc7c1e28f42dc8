//! Names: which ones the mount accepts, and the names of ftpsfs's own temporary files.
//!
//! An upload goes to a temporary name in the file's directory and is renamed onto the
//! final name only once the server has it whole (see `upload.rs`). Those names, and the
//! names of files moved aside while a server that refuses to rename over a file gets a
//! new version, start with [`TEMP_PREFIX`] or [`ASIDE_PREFIX`]: listings never show them,
//! and a later mount deletes them once they are old (see `sweep`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fs::error::FsError;

/// Longest name a listing entry may have and still be shown (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;

/// The start of an upload's temporary name: `.ftpsfs-tmp.<time>.<unique>.<name>`, or
/// `~<name>` at the end when the name had to be cut to fit.
pub const TEMP_PREFIX: &[u8] = b".ftpsfs-tmp.";

/// The start of the name of a file moved aside while its new version is renamed in:
/// `.ftpsfs-old.<time>.<unique>.<name>` (`~<name>` when cut).
pub const ASIDE_PREFIX: &[u8] = b".ftpsfs-old.";

/// How old a leftover must be, by the time in its name and by its modification time,
/// before a mount deletes it. An upload in progress writes its temporary file all the
/// time and gives up after a minute of silence at most, so an hour without a write is
/// no upload of anyone's.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Checks a name that is about to be created: one path component the server can take.
pub fn check_new_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::InvalidName(shown(name)));
    }
    // CR and LF would end the FTP command and start another; NUL ends it in C servers.
    if name.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(FsError::InvalidName(shown(name)));
    }
    if is_ftpsfs_name(name) {
        return Err(FsError::InvalidName(shown(name)));
    }
    Ok(())
}

/// A name as logs and errors show it.
pub fn shown(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

/// Whether `name` is one of ftpsfs's own temporary names, which listings never show.
pub fn is_ftpsfs_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX) || name.starts_with(ASIDE_PREFIX)
}

/// A fresh temporary name for an upload of `name`.
pub fn temp_name(name: &[u8]) -> Vec<u8> {
    leftover_name(TEMP_PREFIX, name)
}

/// A fresh name to move `name` aside to.
pub fn aside_name(name: &[u8]) -> Vec<u8> {
    leftover_name(ASIDE_PREFIX, name)
}

/// The temporary name of the uploads of write-back item `id` (its number is the
/// microsecond it was queued) by the mount `mount` (a number of its own): the same on
/// every try of that mount, and known to the next mount from the item's record, which
/// deletes it. (Not the same for every mount: a server may still hold the name locked
/// for an upload the dead mount began, as vsftpd does until its data connection times
/// out.)
pub fn item_temp_name(name: &[u8], id: u64, mount: u32) -> Vec<u8> {
    let number = id.rotate_left(32) ^ u64::from(mount);
    named_leftover(TEMP_PREFIX, name, id / 1_000_000, number)
}

fn leftover_name(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    named_leftover(prefix, name, seconds, unique())
}

fn named_leftover(prefix: &[u8], name: &[u8], seconds: u64, number: u64) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(format!("{seconds:x}.{number:016x}").as_bytes());
    // The original name ends it, cut to fit (at a character boundary when it is UTF-8),
    // so that a person looking at the server can tell what it was; `~` instead of `.`
    // says it was cut.
    let room = NAME_MAX.saturating_sub(out.len() + 1);
    let mut keep = name.len().min(room);
    if let Ok(text) = std::str::from_utf8(name) {
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
    }
    out.push(if keep < name.len() { b'~' } else { b'.' });
    out.extend_from_slice(&name[..keep]);
    out
}

/// An absolute symlink `target` that lies inside the mounted directory `root` (an
/// absolute path on the server), rewritten relative to the link's directory `link_dir`
/// (below the root; empty for the root), so that it resolves inside the mount (sshfs's
/// `transform_symlinks`). None for a target that is relative or lies outside.
pub fn relative_target(root: &[u8], link_dir: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    fn components(path: &[u8]) -> Vec<&[u8]> {
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in path.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        parts
    }
    if !target.starts_with(b"/") {
        return None;
    }
    let root = components(root);
    let target = components(target);
    let inside = target.strip_prefix(root.as_slice())?;
    let dir = components(link_dir);
    let common = dir.iter().zip(inside).take_while(|(a, b)| a == b).count();
    let mut relative: Vec<&[u8]> = vec![b".."; dir.len() - common];
    relative.extend_from_slice(&inside[common..]);
    if relative.is_empty() {
        return Some(b".".to_vec());
    }
    Some(relative.join(&b'/'))
}

/// A number no other temporary name of any ftpsfs process will have: a per-process
/// random seed (std's hasher keys are random) mixed with a counter.
pub fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// What a leftover name says: whether it is a temporary upload or a file moved aside,
/// when it was made, and the original name when it was not cut.
#[derive(Debug, PartialEq, Eq)]
pub struct Leftover {
    /// A file moved aside (its new version may or may not have been renamed in).
    pub aside: bool,
    /// When the name was made, in seconds since 1970.
    pub made: u64,
    /// The name it stands for, when the temporary name holds it whole.
    pub original: Option<Vec<u8>>,
}

/// Reads a leftover name; None for names that are not ftpsfs's.
pub fn parse_leftover(name: &[u8]) -> Option<Leftover> {
    let (aside, rest) = if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
        (false, rest)
    } else {
        (true, name.strip_prefix(ASIDE_PREFIX)?)
    };
    let dot = rest.iter().position(|&b| b == b'.')?;
    let made = u64::from_str_radix(std::str::from_utf8(&rest[..dot]).ok()?, 16).ok()?;
    let rest = &rest[dot + 1..];
    let unique = rest.get(..16)?;
    if !unique.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let (whole, original) = match rest.get(16..)?.split_first()? {
        (b'.', original) => (true, original),
        (b'~', original) => (false, original),
        _ => return None,
    };
    Some(Leftover {
        aside,
        made,
        original: (whole && !original.is_empty()).then(|| original.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_inside_the_mount_become_relative() {
        let rel = |root: &str, dir: &str, target: &str| {
            relative_target(root.as_bytes(), dir.as_bytes(), target.as_bytes())
                .map(|t| String::from_utf8(t).unwrap())
        };
        assert_eq!(rel("/", "", "/a/b").as_deref(), Some("a/b"));
        assert_eq!(
            rel("/srv/ftp", "x/y", "/srv/ftp/a/b").as_deref(),
            Some("../../a/b")
        );
        assert_eq!(rel("/srv/ftp", "a", "/srv/ftp/a/b").as_deref(), Some("b"));
        assert_eq!(rel("/srv/ftp", "a/b", "/srv/ftp/a").as_deref(), Some(".."));
        assert_eq!(rel("/srv/ftp", "a", "/srv/ftp/a").as_deref(), Some("."));
        assert_eq!(
            rel("/srv/ftp/", "", "//srv/./ftp/c/../d").as_deref(),
            Some("d")
        );
        // Outside the mount, or relative already: left as it is.
        assert_eq!(rel("/srv/ftp", "", "/srv/ftp2/a"), None);
        assert_eq!(rel("/srv/ftp", "", "/etc/passwd"), None);
        assert_eq!(rel("/srv/ftp", "", "/srv/ftp/../x"), None);
        assert_eq!(rel("/srv/ftp", "", "a/b"), None);
    }

    #[test]
    fn new_names_are_checked() {
        assert!(check_new_name(b"report.pdf").is_ok());
        assert!(check_new_name("名前 with space".as_bytes()).is_ok());
        assert!(matches!(
            check_new_name(b"a\r\nDELE b"),
            Err(FsError::InvalidName(_))
        ));
        assert!(matches!(
            check_new_name(b"a\0b"),
            Err(FsError::InvalidName(_))
        ));
        assert!(matches!(
            check_new_name(b".."),
            Err(FsError::InvalidName(_))
        ));
        assert!(matches!(
            check_new_name(b"a/b"),
            Err(FsError::InvalidName(_))
        ));
        assert!(matches!(
            check_new_name(&[b'x'; 256]),
            Err(FsError::NameTooLong)
        ));
        assert!(matches!(
            check_new_name(&temp_name(b"x")),
            Err(FsError::InvalidName(_))
        ));
    }

    #[test]
    fn temporary_names_are_unique_hidden_and_readable() {
        let a = temp_name(b"report.pdf");
        let b = temp_name(b"report.pdf");
        assert_ne!(a, b);
        assert!(is_ftpsfs_name(&a) && is_ftpsfs_name(&aside_name(b"x")));
        assert!(!is_ftpsfs_name(b".ftpsfs-scratch-1"));
        let parsed = parse_leftover(&a).unwrap();
        assert!(!parsed.aside);
        assert_eq!(parsed.original.as_deref(), Some(b"report.pdf".as_slice()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now - parsed.made < 5);
        assert!(parse_leftover(&aside_name(b"x")).unwrap().aside);
        assert_eq!(parse_leftover(b".ftpsfs-tmp.zz.0123.x"), None);
        assert_eq!(parse_leftover(b"report.pdf"), None);
    }

    #[test]
    fn long_names_are_cut_to_fit_and_marked_cut() {
        let long = "é".repeat(127);
        let temp = temp_name(long.as_bytes());
        assert!(
            temp.len() <= NAME_MAX && temp.len() >= NAME_MAX - 1,
            "{}",
            temp.len()
        );
        assert!(std::str::from_utf8(&temp).is_ok());
        assert_eq!(parse_leftover(&temp).unwrap().original, None);
    }
}
