//! Directory listings: MLSD (RFC 3659 §7) and the unstandardised LIST (Unix `ls -l` and
//! DOS/IIS styles), turned into entries.
//!
//! The listing comes from the server, which we do not trust: nothing here may panic on any
//! input, and a line we cannot understand is skipped with a reason rather than failing the
//! whole directory. There is no I/O here, so all of it is testable with plain bytes.
//!
//! Choices that callers may notice:
//! - LIST times carry no time zone. They are read as UTC because the server's local zone is
//!   unknown; an MLSD `modify` fact is UTC by definition.
//! - A LIST `HH:MM` date has no year. `ls` prints a time only for recent files, so the year
//!   chosen is the latest one that puts the date no more than 183 days after `now_unix`.
//! - A LIST symlink `a -> b` is split at the first ` -> `, as lftp and most clients do: a
//!   target is a whole path that may hold anything, so it keeps any later arrows.
//! - In a Unix LIST line the name starts after exactly one space past the time or year, so
//!   a name may start with spaces; in a DOS line the whole run of spaces before it is
//!   padding, so there it cannot.
//! - Names are raw bytes as sent. The line parsers reject only a missing name;
//!   [`parse_listing`] rejects names unusable as a path component.

use std::collections::HashSet;
use std::fmt;

/// Longest name accepted; a longer one is no real file name (Linux allows 255 bytes).
pub const MAX_NAME_BYTES: usize = 1024;

/// What a listing entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, whose target the listing may or may not tell.
    Symlink,
    /// A device, fifo, socket or a type the server names that we do not know.
    Other,
}

/// When a timestamp from a listing is only known to a minute or a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePrecision {
    /// MLSD `modify`, possibly with a fraction kept in `nanos`.
    Second,
    /// LIST `HH:MM` (Unix, without year) and DOS times.
    Minute,
    /// LIST with a year instead of a time.
    Day,
}

/// A modification time from a listing, with how much of it the server told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z; a leap second 60 counts as the next minute's 0.
    pub unix_seconds: i64,
    /// Fraction of the second, below 1_000_000_000.
    pub nanos: u32,
    /// The smallest unit the listing gave; finer units are zero.
    pub precision: TimePrecision,
}

/// One file, directory or other object named in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as the server sent it, possibly not UTF-8.
    pub name: Vec<u8>,
    /// What the entry is.
    pub kind: EntryKind,
    /// Size in bytes, when the listing gives one.
    pub size: Option<u64>,
    /// Modification time, when the listing gives one.
    pub modified: Option<Timestamp>,
    /// Permission bits (within 0o7777), from MLSD `UNIX.mode` or a LIST `rwxr-xr-x`.
    pub mode: Option<u32>,
    /// The symlink's target, from LIST `a -> b` or MLSD `type=OS.unix=slink:/path`.
    pub link_target: Option<Vec<u8>>,
}

/// The format a listing is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingFormat {
    /// Machine-readable MLSD (RFC 3659 §7).
    Mlsd,
    /// Human-readable LIST, Unix or DOS style.
    List,
}

/// Why a listing line was not turned into an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// The line without its line ending.
    pub line: Vec<u8>,
    /// Why it was skipped.
    pub reason: &'static str,
}

/// The entries of a listing and the lines that gave none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Entries with vetted, unique names, in listing order.
    pub entries: Vec<Entry>,
    /// Lines that were malformed, had an unusable name, or repeated a name.
    pub skipped: Vec<SkippedLine>,
}

/// Parses a whole listing body (lines separated by CRLF or LF).
///
/// Never fails: bad lines land in `skipped`. Names that could not be a single path component
/// (empty, `.`, `..`, with `/`, NUL or CR, over [`MAX_NAME_BYTES`]) are skipped so that the
/// filesystem above never sees them, and a repeated name keeps only its first entry, since
/// one directory cannot hold two objects of the same name.
pub fn parse_listing(body: &[u8], format: ListingFormat, now_unix: i64) -> Listing {
    let mut listing = Listing::default();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for raw in body.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let parsed = match format {
            ListingFormat::Mlsd => parse_mlsd_line(line),
            ListingFormat::List => parse_list_line(line, now_unix),
        };
        let entry = match parsed {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(reason) => {
                skip(&mut listing, line, reason);
                continue;
            }
        };
        if let Err(reason) = check_name(&entry.name) {
            skip(&mut listing, line, reason);
            continue;
        }
        if seen.contains(&entry.name) {
            skip(
                &mut listing,
                line,
                "duplicate name, the first entry is kept",
            );
            continue;
        }
        seen.insert(entry.name.clone());
        listing.entries.push(entry);
    }
    listing
}

/// Parses one MLSD line, `fact=value;fact=value; name`; `Ok(None)` for `type=cdir`/`pdir`
/// (the directory itself and its parent) and for blank lines.
///
/// The name is everything after the first space. Only when that space is not preceded by
/// `;` (facts end with `;` per RFC 3659) and a later `"; "` exists are the facts taken to
/// hold a space, as a ProFTPD `slink:` target can; the name then follows that `"; "`.
/// A malformed value of a fact we use rejects the line rather than guessing.
pub fn parse_mlsd_line(line: &[u8]) -> Result<Option<Entry>, &'static str> {
    let line = strip_eol(line);
    if line.iter().all(|&b| is_blank(b)) {
        return Ok(None);
    }
    let (facts, name) = split_mlsd(line)?;

    let mut type_value = None;
    let mut size = None;
    let mut sizd = None;
    let mut modified = None;
    let mut mode = None;
    for fact in facts.split(|&b| b == b';') {
        if fact.is_empty() {
            continue;
        }
        let eq = fact
            .iter()
            .position(|&b| b == b'=')
            .ok_or("MLSD fact without '='")?;
        let (key, value) = (&fact[..eq], &fact[eq + 1..]);
        if key.eq_ignore_ascii_case(b"type") {
            type_value = Some(value);
        } else if key.eq_ignore_ascii_case(b"size") {
            size = Some(parse_size(value)?);
        } else if key.eq_ignore_ascii_case(b"sizd") {
            sizd = Some(parse_size(value)?);
        } else if key.eq_ignore_ascii_case(b"modify") {
            modified = Some(parse_mlsd_time(value)?);
        } else if key.eq_ignore_ascii_case(b"unix.mode") {
            mode = Some(parse_octal_mode(value)?);
        }
    }

    let type_value = type_value.ok_or("MLSD line has no type fact")?;
    let Some((kind, link_target)) = mlsd_type(type_value)? else {
        return Ok(None);
    };
    if name.is_empty() {
        return Err("missing name");
    }
    Ok(Some(Entry {
        name: name.to_vec(),
        kind,
        // sizd is the size of a directory's own listing: better than nothing for a dir.
        size: size.or(sizd),
        modified,
        mode,
        link_target,
    }))
}

/// Parses one LIST line, Unix `ls -l` or DOS/IIS style; `Ok(None)` for `total N` lines and
/// blank lines. `now_unix` picks the year of a Unix date shown with a time instead of one.
pub fn parse_list_line(line: &[u8], now_unix: i64) -> Result<Option<Entry>, &'static str> {
    let line = strip_eol(line);
    let toks = tokens(line, MAX_TOKENS);
    let Some(&(start, end)) = toks.first() else {
        return Ok(None);
    };
    let first = &line[start..end];
    if first.eq_ignore_ascii_case(b"total")
        && toks.len() == 2
        && is_digits(&line[toks[1].0..toks[1].1])
    {
        return Ok(None);
    }
    // A Unix line starts with the type letter, a DOS one with the month's digits.
    if first[0].is_ascii_digit() {
        parse_dos(line, &toks).map(Some)
    } else {
        parse_unix(line, &toks, now_unix).map(Some)
    }
}

/// The fields of a LIST line are within its first few words; the name may hold many more.
const MAX_TOKENS: usize = 16;

/// How far after `now` a date without year may lie: `ls` shows times for the last ~6 months.
const SIX_MONTHS_SECONDS: i64 = 183 * 86_400;

/// Longest part of a skipped line put in a log message, so a hostile line cannot flood logs.
const LOG_LINE_BYTES: usize = 256;

fn skip(listing: &mut Listing, line: &[u8], reason: &'static str) {
    tracing::debug!(reason, line = %Escaped(line), "skipping listing line");
    listing.skipped.push(SkippedLine {
        line: line.to_vec(),
        reason,
    });
}

/// Shows a raw line in a log as ASCII with escapes, cut to [`LOG_LINE_BYTES`].
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(LOG_LINE_BYTES)];
        write!(f, "{}", shown.escape_ascii())?;
        if shown.len() < self.0.len() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("name is . or ..")
    } else if name.len() > MAX_NAME_BYTES {
        Err("name longer than 1024 bytes")
    } else if name.contains(&b'/') {
        Err("name contains /")
    } else if name.contains(&0) {
        Err("name contains NUL")
    } else if name.contains(&b'\r') {
        // A command cannot carry a CR, so such a file could be listed but never read.
        Err("name contains CR")
    } else {
        Ok(())
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// Start and end of each run of non-blank bytes, at most `max` of them.
fn tokens(line: &[u8], max: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() && out.len() < max {
        while i < line.len() && is_blank(line[i]) {
            i += 1;
        }
        let start = i;
        while i < line.len() && !is_blank(line[i]) {
            i += 1;
        }
        if i > start {
            out.push((start, i));
        }
    }
    out
}

/// An empty target or one with NUL cannot be a path, so it is dropped rather than passed on.
fn link_target(target: &[u8]) -> Option<Vec<u8>> {
    if target.is_empty() || target.contains(&0) {
        None
    } else {
        Some(target.to_vec())
    }
}

fn parse_size(b: &[u8]) -> Result<u64, &'static str> {
    if !is_digits(b) {
        return Err("size is not a number");
    }
    b.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or("size does not fit in 64 bits")
}

/// A small decimal field of a date, or None if it is not all digits.
fn small_number(b: &[u8]) -> Option<u32> {
    if !is_digits(b) || b.len() > 9 {
        return None;
    }
    Some(b.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
}

// ---------------------------------------------------------------------------------------
// MLSD

fn split_mlsd(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or("MLSD line has no space before the name")?;
    if space > 0 && line[space - 1] != b';' {
        if let Some(p) = line.windows(2).position(|w| w == b"; ") {
            return Ok((&line[..=p], &line[p + 2..]));
        }
    }
    Ok((&line[..space], &line[space + 1..]))
}

/// What a `type` fact tells: the kind, and a symlink's target when given.
type KindAndTarget = (EntryKind, Option<Vec<u8>>);

/// The kind and symlink target a `type` fact tells; None for the listed directory and its
/// parent, which are not entries of it.
fn mlsd_type(value: &[u8]) -> Result<Option<KindAndTarget>, &'static str> {
    const SLINK: &[u8] = b"os.unix=slink:";
    if value.is_empty() {
        return Err("empty type fact");
    }
    let lower = value.to_ascii_lowercase();
    let kind = match lower.as_slice() {
        b"file" => EntryKind::File,
        b"dir" => EntryKind::Dir,
        b"cdir" | b"pdir" => return Ok(None),
        b"os.unix=symlink" | b"os.unix=slink" => EntryKind::Symlink,
        // Keep the target's case: only the prefix is case-insensitive.
        l if l.starts_with(SLINK) => {
            return Ok(Some((
                EntryKind::Symlink,
                link_target(&value[SLINK.len()..]),
            )))
        }
        _ => EntryKind::Other,
    };
    Ok(Some((kind, None)))
}

/// Seconds since 1970 of an RFC 3659 time-val (`YYYYMMDDHHMMSS`, UTC).
pub fn parse_time_val(value: &[u8]) -> Option<i64> {
    parse_mlsd_time(value).ok().map(|t| t.unix_seconds)
}

/// `YYYYMMDDHHMMSS[.sss]` in UTC (RFC 3659 §2.3); fraction digits past nanoseconds dropped.
fn parse_mlsd_time(value: &[u8]) -> Result<Timestamp, &'static str> {
    const BAD: &str = "modify fact is not YYYYMMDDHHMMSS[.fff]";
    if value.len() < 14 || !is_digits(&value[..14]) {
        return Err(BAD);
    }
    let field = |a: usize, b: usize| small_number(&value[a..b]).ok_or(BAD);
    let year = field(0, 4)?;
    let month = field(4, 6)?;
    let day = field(6, 8)?;
    let hour = field(8, 10)?;
    let minute = field(10, 12)?;
    let second = field(12, 14)?;
    let mut nanos = 0u32;
    let rest = &value[14..];
    if !rest.is_empty() {
        let fraction = rest.strip_prefix(b".").ok_or(BAD)?;
        if !is_digits(fraction) {
            return Err(BAD);
        }
        let mut scale = 100_000_000;
        for &d in fraction.iter().take(9) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
    }
    let unix_seconds = civil_to_unix(i64::from(year), month, day, hour, minute, second)?;
    Ok(Timestamp {
        unix_seconds,
        nanos,
        precision: TimePrecision::Second,
    })
}

/// Octal `UNIX.mode` (`0644` or `644`); bits above 0o7777 (a file type some send) dropped.
fn parse_octal_mode(value: &[u8]) -> Result<u32, &'static str> {
    const BAD: &str = "UNIX.mode is not octal";
    if value.is_empty() || !value.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(BAD);
    }
    let mode = value
        .iter()
        .try_fold(0u32, |n, &d| {
            n.checked_mul(8)?.checked_add(u32::from(d - b'0'))
        })
        .ok_or(BAD)?;
    Ok(mode & 0o7777)
}

// ---------------------------------------------------------------------------------------
// LIST, Unix style

fn parse_unix(line: &[u8], toks: &[(usize, usize)], now: i64) -> Result<Entry, &'static str> {
    let tok = |i: usize| &line[toks[i].0..toks[i].1];
    let (type_char, mode) = parse_permissions(tok(0))?;
    let kind = match type_char {
        b'-' => EntryKind::File,
        b'd' => EntryKind::Dir,
        b'l' => EntryKind::Symlink,
        _ => EntryKind::Other,
    };

    // Owner and group are optional and free-form, so find the date by its shape instead of
    // counting columns: `Mon D[D] HH:MM|YYYY`, with at least the size before it.
    let date_at = (2..toks.len().saturating_sub(2))
        .find(|&i| {
            month_number(tok(i)).is_some()
                && tok(i + 1).len() <= 2
                && is_digits(tok(i + 1))
                && (is_time_shape(tok(i + 2)) || (tok(i + 2).len() == 4 && is_digits(tok(i + 2))))
        })
        .ok_or("no date in LIST line")?;

    // A device shows `major, minor` where the size would be.
    let size = if matches!(type_char, b'c' | b'b') {
        None
    } else {
        Some(parse_size(tok(date_at - 1))?)
    };

    let month = month_number(tok(date_at)).ok_or("no date in LIST line")?;
    let day = small_number(tok(date_at + 1)).ok_or("no date in LIST line")?;
    let time_or_year = tok(date_at + 2);
    let modified = if let Some((hour, minute)) = split_hh_mm(time_or_year) {
        Timestamp {
            unix_seconds: recent_date_to_unix(month, day, hour, minute, now)?,
            nanos: 0,
            precision: TimePrecision::Minute,
        }
    } else {
        let year = small_number(time_or_year).ok_or("no date in LIST line")?;
        Timestamp {
            unix_seconds: civil_to_unix(i64::from(year), month, day, 0, 0, 0)?,
            nanos: 0,
            precision: TimePrecision::Day,
        }
    };

    let name_start = toks[date_at + 2].1 + 1;
    let rest = line.get(name_start..).unwrap_or_default();
    let (name, link) = match kind {
        EntryKind::Symlink => match rest.windows(4).position(|w| w == b" -> ") {
            Some(p) => (&rest[..p], link_target(&rest[p + 4..])),
            None => (rest, None),
        },
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err("missing name");
    }
    Ok(Entry {
        name: name.to_vec(),
        kind,
        size,
        modified: Some(modified),
        mode: Some(mode),
        link_target: link,
    })
}

/// `drwxr-xr-x`, optionally followed by an ACL/xattr/SELinux marker (`+`, `@`, `.`), into
/// the type letter and the permission bits.
fn parse_permissions(tok: &[u8]) -> Result<(u8, u32), &'static str> {
    const BAD: &str = "unrecognised permission string";
    let perms = match tok.len() {
        10 => tok,
        11 if matches!(tok[10], b'+' | b'@' | b'.') => &tok[..10],
        _ => return Err(BAD),
    };
    let type_char = perms[0];
    if !b"-dlcbpsD".contains(&type_char) {
        return Err(BAD);
    }
    let mut mode = 0u32;
    for (k, &c) in perms[1..].iter().enumerate() {
        let (who, slot) = (k / 3, k % 3);
        let shift = 6 - 3 * who as u32;
        // setuid, setgid, sticky: the bit that shares the execute slot of owner, group, other.
        let special = [0o4000, 0o2000, 0o1000][who];
        mode |= match (slot, c) {
            (_, b'-') => 0,
            (0, b'r') => 4 << shift,
            (1, b'w') => 2 << shift,
            (2, b'x') => 1 << shift,
            (2, b's') if who < 2 => (1 << shift) | special,
            (2, b'S') if who < 2 => special,
            (2, b't') if who == 2 => 1 | special,
            (2, b'T') if who == 2 => special,
            _ => return Err(BAD),
        };
    }
    Ok((type_char, mode))
}

fn month_number(b: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    MONTHS
        .iter()
        .position(|m| b.eq_ignore_ascii_case(*m))
        .map(|i| i as u32 + 1)
}

fn is_time_shape(b: &[u8]) -> bool {
    split_hh_mm(b).is_some()
}

/// `H:MM` or `HH:MM`, not range-checked.
fn split_hh_mm(b: &[u8]) -> Option<(u32, u32)> {
    let colon = b.iter().position(|&c| c == b':')?;
    let (h, m) = (&b[..colon], &b[colon + 1..]);
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    Some((small_number(h)?, small_number(m)?))
}

/// A date shown with a time but no year: the latest year that puts it no more than
/// [`SIX_MONTHS_SECONDS`] after `now`.
fn recent_date_to_unix(
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    now: i64,
) -> Result<i64, &'static str> {
    // Keep the years tried within 0..=9999 whatever `now` the caller passes.
    let now = now.clamp(MIN_NOW, MAX_NOW);
    let (year, _, _) = civil_from_days(now.div_euclid(86_400));
    let latest = now + SIX_MONTHS_SECONDS;
    let mut error = "no year puts the date within six months of now";
    for y in [year + 1, year, year - 1] {
        match civil_to_unix(y, month, day, hour, minute, 0) {
            Ok(t) if t <= latest => return Ok(t),
            Ok(_) => {}
            // Feb 29 is valid in some of the years tried only.
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// 0001-01-01T00:00:00Z.
const MIN_NOW: i64 = days_from_civil(1, 1, 1) * 86_400;
/// 9998-12-31T23:59:59Z, so that the year after it is still a four-digit year.
const MAX_NOW: i64 = days_from_civil(9999, 1, 1) * 86_400 - 1;

// ---------------------------------------------------------------------------------------
// LIST, DOS/IIS style

fn parse_dos(line: &[u8], toks: &[(usize, usize)]) -> Result<Entry, &'static str> {
    if toks.len() < 3 {
        return Err("DOS line is missing fields");
    }
    let tok = |i: usize| &line[toks[i].0..toks[i].1];
    let (month, day, year) = parse_dos_date(tok(0))?;
    let (hour, minute) = parse_dos_time(tok(1))?;
    let unix_seconds = civil_to_unix(year, month, day, hour, minute, 0)?;

    let (kind, size) = if tok(2).eq_ignore_ascii_case(b"<DIR>") {
        (EntryKind::Dir, None)
    } else {
        (EntryKind::File, Some(parse_size(tok(2))?))
    };

    let mut name_start = toks[2].1;
    while name_start < line.len() && is_blank(line[name_start]) {
        name_start += 1;
    }
    let name = &line[name_start..];
    if name.is_empty() {
        return Err("missing name");
    }
    Ok(Entry {
        name: name.to_vec(),
        kind,
        size,
        modified: Some(Timestamp {
            unix_seconds,
            nanos: 0,
            precision: TimePrecision::Minute,
        }),
        mode: None,
        link_target: None,
    })
}

/// `MM-DD-YY` or `MM-DD-YYYY`; a two-digit year 70-99 is 19xx, others 20xx.
fn parse_dos_date(b: &[u8]) -> Result<(u32, u32, i64), &'static str> {
    const BAD: &str = "DOS date is not MM-DD-YY";
    let mut parts = b.split(|&c| c == b'-' || c == b'/');
    let (Some(m), Some(d), Some(y), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    if m.len() > 2 || d.len() > 2 || !(y.len() == 2 || y.len() == 4) {
        return Err(BAD);
    }
    let month = small_number(m).ok_or(BAD)?;
    let day = small_number(d).ok_or(BAD)?;
    let year = i64::from(small_number(y).ok_or(BAD)?);
    let year = match (y.len(), year) {
        (2, 70..=99) => 1900 + year,
        (2, _) => 2000 + year,
        _ => year,
    };
    Ok((month, day, year))
}

/// `HH:MMAM`/`HH:MMPM`, or 24-hour `HH:MM` as some servers send.
fn parse_dos_time(b: &[u8]) -> Result<(u32, u32), &'static str> {
    const BAD: &str = "DOS time is not HH:MM[AM|PM]";
    let upper_suffix = b.len().checked_sub(2).map(|i| b[i..].to_ascii_uppercase());
    let (clock, pm) = match upper_suffix.as_deref() {
        Some(b"AM") => (&b[..b.len() - 2], Some(false)),
        Some(b"PM") => (&b[..b.len() - 2], Some(true)),
        _ => (b, None),
    };
    let (hour, minute) = split_hh_mm(clock).ok_or(BAD)?;
    let hour = match pm {
        None => hour,
        Some(_) if hour == 0 || hour > 12 => return Err("hour out of range"),
        // 12:xxAM is just after midnight, 12:xxPM just after noon.
        Some(pm) => hour % 12 + if pm { 12 } else { 0 },
    };
    Ok((hour, minute))
}

// ---------------------------------------------------------------------------------------
// Civil dates (proleptic Gregorian, UTC)

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of a UTC civil time, after checking every field's range.
fn civil_to_unix(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Result<i64, &'static str> {
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour >= 24 {
        return Err("hour out of range");
    }
    if minute >= 60 {
        return Err("minute out of range");
    }
    if second > 60 {
        return Err("second out of range");
    }
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

/// Days since 1970-01-01 (Howard Hinnant's days_from_civil); month 1-12, day 1-31.
const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3659 time-val (`YYYYMMDDHHMMSS`, UTC), as MFMT and MDTM take it; None for a
/// time outside the years 1 to 9999, which the form cannot hold.
pub fn format_time_val(unix_seconds: i64) -> Option<String> {
    if !(MIN_NOW..=MAX_NOW).contains(&unix_seconds) {
        return None;
    }
    let (year, month, day) = civil_from_days(unix_seconds.div_euclid(86_400));
    let second_of_day = unix_seconds.rem_euclid(86_400);
    Some(format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    ))
}

/// The (year, month, day) of a day count since 1970-01-01 (Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_vals_round_trip() {
        for seconds in [0, 1_577_934_245, NOW, -86_400 * 365, MAX_NOW] {
            let text = format_time_val(seconds).unwrap();
            assert_eq!(text.len(), 14, "{text}");
            let parsed = parse_mlsd_time(text.as_bytes()).unwrap();
            assert_eq!(parsed.unix_seconds, seconds, "{text}");
        }
        assert_eq!(format_time_val(1_577_934_245).unwrap(), "20200102030405");
        assert_eq!(format_time_val(MAX_NOW + 1), None);
        assert_eq!(format_time_val(MIN_NOW - 1), None);
    }

    /// 2025-11-27T08:00:00Z, shortly after vsftpd's `Nov 27 07:40` sample.
    const NOW: i64 = 1_764_230_400;

    fn mlsd(line: &str) -> Entry {
        parse_mlsd_line(line.as_bytes())
            .expect("parses")
            .expect("is an entry")
    }

    fn list(line: &str) -> Entry {
        list_at(line, NOW)
    }

    fn list_at(line: &str, now: i64) -> Entry {
        parse_list_line(line.as_bytes(), now)
            .expect("parses")
            .expect("is an entry")
    }

    fn list_err(line: &[u8]) -> &'static str {
        parse_list_line(line, NOW).expect_err("is rejected")
    }

    fn mlsd_err(line: &[u8]) -> &'static str {
        parse_mlsd_line(line).expect_err("is rejected")
    }

    fn ts(unix_seconds: i64, precision: TimePrecision) -> Option<Timestamp> {
        Some(Timestamp {
            unix_seconds,
            nanos: 0,
            precision,
        })
    }

    // ----- civil dates

    #[test]
    fn civil_dates_match_known_instants() {
        assert_eq!(civil_to_unix(1970, 1, 1, 0, 0, 0), Ok(0));
        assert_eq!(civil_to_unix(2000, 3, 1, 0, 0, 0), Ok(951_868_800));
        assert_eq!(civil_to_unix(2024, 2, 29, 12, 0, 0), Ok(1_709_208_000));
        assert_eq!(civil_to_unix(2016, 12, 31, 23, 59, 59), Ok(1_483_228_799));
        // A leap second is the next minute's first second.
        assert_eq!(civil_to_unix(2016, 12, 31, 23, 59, 60), Ok(1_483_228_800));
        assert_eq!(civil_to_unix(1969, 12, 31, 23, 59, 59), Ok(-1));
    }

    #[test]
    fn civil_dates_reject_out_of_range_fields() {
        assert_eq!(
            civil_to_unix(2024, 13, 1, 0, 0, 0),
            Err("month out of range")
        );
        assert_eq!(
            civil_to_unix(2024, 0, 1, 0, 0, 0),
            Err("month out of range")
        );
        assert_eq!(civil_to_unix(2024, 1, 32, 0, 0, 0), Err("day out of range"));
        assert_eq!(civil_to_unix(2024, 1, 0, 0, 0, 0), Err("day out of range"));
        assert_eq!(civil_to_unix(2023, 2, 29, 0, 0, 0), Err("day out of range"));
        assert_eq!(civil_to_unix(2100, 2, 29, 0, 0, 0), Err("day out of range"));
        assert_eq!(civil_to_unix(2024, 4, 31, 0, 0, 0), Err("day out of range"));
        assert_eq!(
            civil_to_unix(2024, 1, 1, 24, 0, 0),
            Err("hour out of range")
        );
        assert_eq!(
            civil_to_unix(2024, 1, 1, 0, 60, 0),
            Err("minute out of range")
        );
        assert_eq!(
            civil_to_unix(2024, 1, 1, 0, 0, 61),
            Err("second out of range")
        );
    }

    #[test]
    fn civil_from_days_inverts_days_from_civil() {
        let mut day = days_from_civil(0, 1, 1);
        let last = days_from_civil(9999, 12, 31);
        while day <= last {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            day += 7;
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    // ----- MLSD

    #[test]
    fn mlsd_proftpd_file() {
        let e = mlsd("modify=20240101120000;perm=adfr;size=5;type=file;unique=FD00U1A2B;UNIX.group=0;UNIX.mode=0644;UNIX.owner=0; small.txt");
        assert_eq!(
            e,
            Entry {
                name: b"small.txt".to_vec(),
                kind: EntryKind::File,
                size: Some(5),
                modified: ts(1_704_110_400, TimePrecision::Second),
                mode: Some(0o644),
                link_target: None,
            }
        );
    }

    #[test]
    fn mlsd_pure_ftpd_file() {
        let e = mlsd("type=file;size=5;modify=20240101120000;UNIX.mode=0644;UNIX.uid=1000;UNIX.gid=1000;unique=803g1a2b; small.txt");
        assert_eq!(e.name, b"small.txt");
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, Some(5));
        assert_eq!(e.modified, ts(1_704_110_400, TimePrecision::Second));
        assert_eq!(e.mode, Some(0o644));
    }

    #[test]
    fn mlsd_proftpd_dir_with_spaces_in_name() {
        let e = mlsd("modify=20240101120000;perm=flcdmpe;type=dir;unique=FD00U1A2C;UNIX.group=0;UNIX.mode=0755;UNIX.owner=0; sub dir");
        assert_eq!(e.name, b"sub dir");
        assert_eq!(e.kind, EntryKind::Dir);
        assert_eq!(e.mode, Some(0o755));
        assert_eq!(e.size, None);
    }

    #[test]
    fn mlsd_dir_size_falls_back_to_sizd() {
        let e = mlsd("type=dir;sizd=4096;modify=20240101120000; d");
        assert_eq!(e.size, Some(4096));
        let e = mlsd("type=dir;sizd=4096;size=10;modify=20240101120000; d");
        assert_eq!(e.size, Some(10));
    }

    #[test]
    fn mlsd_cdir_and_pdir_are_not_entries() {
        for line in [
            "type=cdir;sizd=4096;modify=20240101120000;perm=flcdmpe;unique=FD00U1; .",
            "type=pdir;sizd=4096;modify=20240101120000;perm=flcdmpe;unique=FD00U2; ..",
            "Type=CDir;modify=20240101120000; /home/user",
        ] {
            assert_eq!(parse_mlsd_line(line.as_bytes()), Ok(None), "{line}");
        }
    }

    #[test]
    fn mlsd_symlink_without_target() {
        let e = mlsd("modify=20240101120000;perm=adfr;size=5;type=OS.unix=symlink;unique=FD00U3;UNIX.group=0;UNIX.mode=0644;UNIX.owner=0; link");
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.link_target, None);
        assert_eq!(e.size, Some(5));
    }

    #[test]
    fn mlsd_slink_with_target_keeps_its_case() {
        let e = mlsd("modify=20240101120000;perm=adfr;size=11;type=OS.unix=slink:/etc/Passwd;unique=FD00U4;UNIX.mode=0777; link");
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.link_target.as_deref(), Some(&b"/etc/Passwd"[..]));
        assert_eq!(e.name, b"link");
        let e = mlsd("type=os.unix=SLINK:rel/target;size=1; l");
        assert_eq!(e.link_target.as_deref(), Some(&b"rel/target"[..]));
        let e = mlsd("type=OS.unix=slink:;size=1; l");
        assert_eq!((e.kind, e.link_target), (EntryKind::Symlink, None));
    }

    #[test]
    fn mlsd_slink_target_with_space() {
        let e = mlsd("type=OS.unix=slink:/srv/my files/a;size=3;UNIX.mode=0777; the link");
        assert_eq!(e.link_target.as_deref(), Some(&b"/srv/my files/a"[..]));
        assert_eq!(e.name, b"the link");
        assert_eq!(e.mode, Some(0o777));
    }

    #[test]
    fn mlsd_other_types() {
        for t in [
            "OS.unix=blkdev",
            "OS.unix=chr-13/29",
            "OS.unix=fifo",
            "unknown-type",
        ] {
            let e = mlsd(&format!("type={t};modify=20240101120000; dev"));
            assert_eq!(e.kind, EntryKind::Other, "{t}");
        }
    }

    #[test]
    fn mlsd_name_with_semicolons_and_spaces() {
        let e = mlsd("type=file;size=1; a; b=c d;");
        assert_eq!(e.name, b"a; b=c d;");
        // A name that starts with a space keeps it.
        let e = mlsd("type=file;size=1;  lead");
        assert_eq!(e.name, b" lead");
    }

    #[test]
    fn mlsd_facts_are_case_insensitive() {
        let e = mlsd("Type=File;Size=3;MODIFY=20240101120000;unix.MODE=600; X");
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, Some(3));
        assert_eq!(e.mode, Some(0o600));
        assert!(e.modified.is_some());
    }

    #[test]
    fn mlsd_fractional_seconds_are_kept() {
        let nanos = |v: &str| {
            mlsd(&format!("type=file;modify={v}; f"))
                .modified
                .map(|t| (t.unix_seconds, t.nanos, t.precision))
        };
        let base = 1_704_110_400;
        assert_eq!(
            nanos("20240101120000.123"),
            Some((base, 123_000_000, TimePrecision::Second))
        );
        assert_eq!(
            nanos("20240101120000.5"),
            Some((base, 500_000_000, TimePrecision::Second))
        );
        assert_eq!(
            nanos("20240101120000.123456789123"),
            Some((base, 123_456_789, TimePrecision::Second))
        );
    }

    #[test]
    fn mlsd_mode_forms() {
        assert_eq!(mlsd("type=file;UNIX.mode=644; f").mode, Some(0o644));
        assert_eq!(mlsd("type=file;UNIX.mode=04755; f").mode, Some(0o4755));
        assert_eq!(mlsd("type=file;UNIX.mode=100644; f").mode, Some(0o644));
        assert_eq!(mlsd("type=file; f").mode, None);
        assert_eq!(
            mlsd_err(b"type=file;UNIX.mode=0899; f"),
            "UNIX.mode is not octal"
        );
        assert_eq!(
            mlsd_err(b"type=file;UNIX.mode=; f"),
            "UNIX.mode is not octal"
        );
        assert_eq!(
            mlsd_err(b"type=file;UNIX.mode=77777777777777777777777; f"),
            "UNIX.mode is not octal"
        );
    }

    #[test]
    fn mlsd_tolerates_missing_trailing_semicolon_and_line_ending() {
        let e = mlsd("type=file;size=5 name");
        assert_eq!((e.name.as_slice(), e.size), (&b"name"[..], Some(5)));
        let e = mlsd("type=file;size=5; name\r\n");
        assert_eq!(e.name, b"name");
    }

    #[test]
    fn mlsd_keeps_non_utf8_names() {
        let e = parse_mlsd_line(b"type=file;size=1; caf\xe9\xff.txt")
            .unwrap()
            .unwrap();
        assert_eq!(e.name, b"caf\xe9\xff.txt");
    }

    #[test]
    fn mlsd_rejects_malformed_lines() {
        assert_eq!(
            mlsd_err(b"small.txt"),
            "MLSD line has no space before the name"
        );
        assert_eq!(mlsd_err(b"size=5; small.txt"), "MLSD line has no type fact");
        assert_eq!(mlsd_err(b" small.txt"), "MLSD line has no type fact");
        assert_eq!(mlsd_err(b"type=;size=1; f"), "empty type fact");
        assert_eq!(mlsd_err(b"type=file;bogus; f"), "MLSD fact without '='");
        assert_eq!(mlsd_err(b"type=file;size=abc; f"), "size is not a number");
        assert_eq!(mlsd_err(b"type=file;size=-1; f"), "size is not a number");
        assert_eq!(
            mlsd_err(b"type=file;size=18446744073709551616; f"),
            "size does not fit in 64 bits"
        );
        assert_eq!(
            mlsd("type=file;size=18446744073709551615; f").size,
            Some(u64::MAX)
        );
        assert_eq!(
            mlsd_err(b"type=file;modify=20241301120000; f"),
            "month out of range"
        );
        assert_eq!(
            mlsd_err(b"type=file;modify=20240132120000; f"),
            "day out of range"
        );
        assert_eq!(
            mlsd_err(b"type=file;modify=20240101250000; f"),
            "hour out of range"
        );
        assert_eq!(
            mlsd_err(b"type=file;modify=20240101126000; f"),
            "minute out of range"
        );
        assert_eq!(
            mlsd_err(b"type=file;modify=20240101120061; f"),
            "second out of range"
        );
        let bad_time = "modify fact is not YYYYMMDDHHMMSS[.fff]";
        assert_eq!(mlsd_err(b"type=file;modify=2024010112; f"), bad_time);
        assert_eq!(mlsd_err(b"type=file;modify=20240101120000.; f"), bad_time);
        assert_eq!(mlsd_err(b"type=file;modify=20240101120000Z; f"), bad_time);
        assert_eq!(mlsd_err(b"type=file;modify=2024-1-1 12:00:00; f"), bad_time);
        assert_eq!(mlsd_err(b"type=file;size=1; "), "missing name");
    }

    #[test]
    fn mlsd_blank_lines_are_not_entries() {
        assert_eq!(parse_mlsd_line(b""), Ok(None));
        assert_eq!(parse_mlsd_line(b"   \t "), Ok(None));
        assert_eq!(parse_mlsd_line(b"\r\n"), Ok(None));
    }

    // ----- LIST, Unix

    #[test]
    fn list_vsftpd_recent_file() {
        let e = list("-rw-r--r--    1 1001     1001            5 Nov 27 07:40 small.txt");
        assert_eq!(
            e,
            Entry {
                name: b"small.txt".to_vec(),
                kind: EntryKind::File,
                size: Some(5),
                modified: ts(1_764_229_200, TimePrecision::Minute),
                mode: Some(0o644),
                link_target: None,
            }
        );
    }

    #[test]
    fn list_vsftpd_old_file_has_day_precision() {
        let e = list("-rw-r--r--    1 1001     1001         1234 Nov 27  2023 old.txt");
        assert_eq!(e.name, b"old.txt");
        assert_eq!(e.size, Some(1234));
        assert_eq!(e.modified, ts(1_701_043_200, TimePrecision::Day));
    }

    #[test]
    fn list_directory_with_spaces_in_name() {
        let e = list("drwxr-xr-x    2 0        0            4096 Jan 05 12:34 name with spaces");
        assert_eq!(e.kind, EntryKind::Dir);
        assert_eq!(e.name, b"name with spaces");
        assert_eq!(e.size, Some(4096));
        assert_eq!(e.mode, Some(0o755));
        // Jan 5 2026 is within six months after Nov 27 2025, so that year is taken.
        assert_eq!(e.modified, ts(1_767_616_440, TimePrecision::Minute));
    }

    #[test]
    fn list_name_keeps_extra_leading_and_trailing_spaces() {
        let e = list("-rw-r--r-- 1 0 0 5 Jan 05 12:34   spaced  ");
        assert_eq!(e.name, b"  spaced  ");
    }

    #[test]
    fn list_without_group_column() {
        let e = list("-rw-r--r-- 1 owner 1234 Jan 5 2023 x");
        assert_eq!(e.name, b"x");
        assert_eq!(e.size, Some(1234));
        assert_eq!(e.modified, ts(1_672_876_800, TimePrecision::Day));
    }

    #[test]
    fn list_named_owner_and_group() {
        let e = list("-rw-r-----   1 alice    staff        42 Jan  5 12:34 notes.md");
        assert_eq!(e.name, b"notes.md");
        assert_eq!(e.size, Some(42));
        assert_eq!(e.mode, Some(0o640));
    }

    #[test]
    fn list_owner_named_like_a_month() {
        let e = list("-rw-r--r-- 1 Jan 5 Nov 27 07:40 x");
        assert_eq!(e.size, Some(5));
        assert_eq!(e.name, b"x");
        let e = list("-rw-r--r-- 1 jan dec 77 Nov 27 07:40 y");
        assert_eq!(e.size, Some(77));
    }

    #[test]
    fn list_month_names_are_case_insensitive() {
        for m in ["JAN", "jan", "Jan", "jAn"] {
            let e = list(&format!("-rw-r--r-- 1 0 0 5 {m} 05 2024 f"));
            assert_eq!(
                e.modified.map(|t| t.unix_seconds),
                Some(1_704_412_800),
                "{m}"
            );
        }
    }

    #[test]
    fn list_year_inference() {
        // 2025-01-10T00:00Z: December is last year's.
        let jan_10_2025 = 1_736_467_200;
        let e = list_at("-rw-r--r-- 1 0 0 5 Dec 30 10:00 f", jan_10_2025);
        assert_eq!(e.modified, ts(1_735_552_800, TimePrecision::Minute));
        // 2025-06-30T00:00Z: Dec 25 is 178 days ahead, within six months, so this year.
        let jun_30_2025 = 1_751_241_600;
        let e = list_at("-rw-r--r-- 1 0 0 5 Dec 25 10:00 f", jun_30_2025);
        assert_eq!(e.modified, ts(1_766_656_800, TimePrecision::Minute));
        // 2025-06-01T00:00Z: Dec 25 is 207 days ahead, so last year.
        let jun_1_2025 = 1_748_736_000;
        let e = list_at("-rw-r--r-- 1 0 0 5 Dec 25 10:00 f", jun_1_2025);
        assert_eq!(e.modified, ts(1_735_120_800, TimePrecision::Minute));
        // 2024-12-31T23:00Z: a server ahead of UTC already shows next year's Jan 1.
        let dec_31_2024 = 1_735_686_000;
        let e = list_at("-rw-r--r-- 1 0 0 5 Jan 01 00:30 f", dec_31_2024);
        assert_eq!(e.modified, ts(1_735_691_400, TimePrecision::Minute));
    }

    #[test]
    fn list_year_inference_for_feb_29() {
        // 2025-01-10: only 2024 of 2024..=2026 has Feb 29.
        let e = list_at("-rw-r--r-- 1 0 0 5 Feb 29 12:00 f", 1_736_467_200);
        assert_eq!(e.modified, ts(1_709_208_000, TimePrecision::Minute));
        // 2022-06-01: none of 2021..=2023 has one.
        assert_eq!(
            parse_list_line(b"-rw-r--r-- 1 0 0 5 Feb 29 12:00 f", 1_654_041_600),
            Err("day out of range")
        );
    }

    #[test]
    fn list_extreme_now_does_not_overflow() {
        for now in [i64::MIN, i64::MAX, 0, -1] {
            let e = list_at("-rw-r--r-- 1 0 0 5 Dec 31 23:59 f", now);
            assert_eq!(e.modified.unwrap().precision, TimePrecision::Minute);
        }
    }

    #[test]
    fn list_symlink_splits_at_first_arrow() {
        let e = list("lrwxrwxrwx    1 0        0               9 Jan 05 12:34 link -> target");
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.name, b"link");
        assert_eq!(e.link_target.as_deref(), Some(&b"target"[..]));
        assert_eq!(e.mode, Some(0o777));
        assert_eq!(e.size, Some(9));

        let e = list("lrwxrwxrwx 1 0 0 9 Jan 05 12:34 a b -> c -> d");
        assert_eq!(e.name, b"a b");
        assert_eq!(e.link_target.as_deref(), Some(&b"c -> d"[..]));

        let e = list("lrwxrwxrwx 1 0 0 9 Jan 05 12:34 plain");
        assert_eq!((e.name.as_slice(), e.link_target), (&b"plain"[..], None));

        let e = list("lrwxrwxrwx 1 0 0 9 Jan 05 12:34 dangling -> ");
        assert_eq!((e.name.as_slice(), e.link_target), (&b"dangling"[..], None));

        assert_eq!(
            list_err(b"lrwxrwxrwx 1 0 0 9 Jan 05 12:34  -> x"),
            "missing name"
        );
    }

    #[test]
    fn list_arrow_in_a_regular_file_name_is_kept() {
        let e = list("-rw-r--r-- 1 0 0 9 Jan 05 12:34 a -> b");
        assert_eq!(e.name, b"a -> b");
        assert_eq!(e.link_target, None);
    }

    #[test]
    fn list_devices_have_no_size() {
        let e = list("crw-rw-rw-    1 0        0          1,   3 Jan 05 12:34 null");
        assert_eq!(e.kind, EntryKind::Other);
        assert_eq!(e.size, None);
        assert_eq!(e.name, b"null");
        assert_eq!(e.mode, Some(0o666));
        let e = list("brw-rw----    1 0        6          8,0 Jan 05 12:34 sda");
        assert_eq!((e.kind, e.size), (EntryKind::Other, None));
        assert_eq!(e.name, b"sda");
    }

    #[test]
    fn list_fifo_and_socket_are_other() {
        let e = list("prw-r--r-- 1 0 0 0 Jan 05 12:34 fifo");
        assert_eq!((e.kind, e.size), (EntryKind::Other, Some(0)));
        let e = list("srwxrwxrwx 1 0 0 0 Jan 05 12:34 sock");
        assert_eq!(e.kind, EntryKind::Other);
    }

    #[test]
    fn list_acl_markers_after_mode() {
        for marker in ["+", "@", "."] {
            let e = list(&format!("-rw-r--r--{marker} 1 0 0 5 Jan 05 12:34 f"));
            assert_eq!(e.mode, Some(0o644), "{marker}");
        }
        assert_eq!(
            list_err(b"-rw-r--r--# 1 0 0 5 Jan 05 12:34 f"),
            "unrecognised permission string"
        );
    }

    #[test]
    fn list_special_mode_bits() {
        let mode = |perms: &str| list(&format!("{perms} 1 0 0 5 Jan 05 12:34 f")).mode;
        assert_eq!(mode("-rwsr-xr-x"), Some(0o4755));
        assert_eq!(mode("-rwSr--r--"), Some(0o4644));
        assert_eq!(mode("-rwxr-sr-x"), Some(0o2755));
        assert_eq!(mode("-rw-r-Sr--"), Some(0o2644));
        assert_eq!(mode("drwxrwxrwt"), Some(0o1777));
        assert_eq!(mode("drwxrwxrwT"), Some(0o1776));
        assert_eq!(mode("----------"), Some(0));
        assert_eq!(mode("-rwsrwsrwt"), Some(0o7777));
    }

    #[test]
    fn list_rejects_bad_permission_strings() {
        for perms in [
            "-rw-r--r-",
            "xrw-r--r--",
            "-rw-r--r-s",
            "-wr-r--r--",
            "-rwtr--r--",
            "-rw-r--r--x",
        ] {
            let line = format!("{perms} 1 0 0 5 Jan 05 12:34 f");
            assert_eq!(
                list_err(line.as_bytes()),
                "unrecognised permission string",
                "{perms}"
            );
        }
    }

    #[test]
    fn list_total_and_blank_lines_are_not_entries() {
        for line in ["total 123", "total 0", "TOTAL 5", "", "   ", "\t", "\r\n"] {
            assert_eq!(parse_list_line(line.as_bytes(), NOW), Ok(None), "{line:?}");
        }
        assert_eq!(list_err(b"total"), "unrecognised permission string");
        assert_eq!(list_err(b"total 5 more"), "unrecognised permission string");
    }

    #[test]
    fn list_keeps_non_utf8_names() {
        let e = parse_list_line(b"-rw-r--r-- 1 0 0 5 Jan 05 12:34 \xff\xfe name", NOW)
            .unwrap()
            .unwrap();
        assert_eq!(e.name, b"\xff\xfe name");
    }

    #[test]
    fn list_crlf_is_stripped() {
        let e = list("-rw-r--r-- 1 0 0 5 Jan 05 12:34 f\r\n");
        assert_eq!(e.name, b"f");
    }

    #[test]
    fn list_rejects_malformed_unix_lines() {
        assert_eq!(list_err(b"-rw-r--r-- 1 0 0 5"), "no date in LIST line");
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Jan 05"),
            "no date in LIST line"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- Jan 05 12:34 f"),
            "no date in LIST line"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Foo 05 12:34 f"),
            "no date in LIST line"
        );
        assert_eq!(list_err(b"-rw-r--r-- 1 0 0 5 Jan 05 12:34"), "missing name");
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Jan 05 12:34 "),
            "missing name"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Jan 32 12:34 f"),
            "day out of range"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Feb 30 2024 f"),
            "day out of range"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Jan 05 25:34 f"),
            "hour out of range"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 5 Jan 05 12:60 f"),
            "minute out of range"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 x5 Jan 05 12:34 f"),
            "size is not a number"
        );
        assert_eq!(
            list_err(b"-rw-r--r-- 1 0 0 99999999999999999999 Jan 05 12:34 f"),
            "size does not fit in 64 bits"
        );
        assert_eq!(list_err(b"hello world"), "unrecognised permission string");
    }

    // ----- LIST, DOS/IIS

    #[test]
    fn dos_directory() {
        let e = list("01-05-24  12:34PM       <DIR>          Folder Name");
        assert_eq!(
            e,
            Entry {
                name: b"Folder Name".to_vec(),
                kind: EntryKind::Dir,
                size: None,
                modified: ts(1_704_458_040, TimePrecision::Minute),
                mode: None,
                link_target: None,
            }
        );
    }

    #[test]
    fn dos_file_with_four_digit_year() {
        let e = list("01-05-2024  09:00AM              1234 file.txt");
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, Some(1234));
        assert_eq!(e.name, b"file.txt");
        assert_eq!(e.modified, ts(1_704_445_200, TimePrecision::Minute));
    }

    #[test]
    fn dos_twelve_oclock_and_24_hour_times() {
        let secs = |line: &str| list(line).modified.unwrap().unix_seconds;
        let midnight = 1_704_412_800; // 2024-01-05T00:00Z
        assert_eq!(secs("01-05-24  12:15AM  1 f"), midnight + 15 * 60);
        assert_eq!(
            secs("01-05-24  12:15pm  1 f"),
            midnight + 12 * 3600 + 15 * 60
        );
        assert_eq!(secs("01-05-24  01:00PM  1 f"), midnight + 13 * 3600);
        assert_eq!(secs("01-05-24  18:34  <dir>  f"), 1_704_479_640);
    }

    #[test]
    fn dos_two_digit_years() {
        let secs = |line: &str| list(line).modified.unwrap().unix_seconds;
        assert_eq!(secs("07-04-98  12:15AM  1 f"), 899_511_300);
        assert_eq!(secs("07-04-69  12:15PM  1 f"), 3_140_165_700);
    }

    #[test]
    fn dos_rejects_malformed_lines() {
        assert_eq!(
            list_err(b"13-05-24  12:34PM  <DIR>  x"),
            "month out of range"
        );
        assert_eq!(list_err(b"02-30-24  12:34PM  <DIR>  x"), "day out of range");
        assert_eq!(
            list_err(b"01-05-24  13:34PM  <DIR>  x"),
            "hour out of range"
        );
        assert_eq!(
            list_err(b"01-05-24  00:34AM  <DIR>  x"),
            "hour out of range"
        );
        assert_eq!(list_err(b"01-05-24  24:00  <DIR>  x"), "hour out of range");
        assert_eq!(list_err(b"01-05-24  12:34PM  <DIR>"), "missing name");
        assert_eq!(list_err(b"01-05-24  12:34PM  <DIR>   "), "missing name");
        assert_eq!(list_err(b"01-05-24  12:34PM"), "DOS line is missing fields");
        assert_eq!(
            list_err(b"01-05  12:34PM  <DIR>  x"),
            "DOS date is not MM-DD-YY"
        );
        assert_eq!(
            list_err(b"01-05-2  12:34PM  <DIR>  x"),
            "DOS date is not MM-DD-YY"
        );
        assert_eq!(
            list_err(b"1-5-24-1  12:34PM  <DIR>  x"),
            "DOS date is not MM-DD-YY"
        );
        assert_eq!(
            list_err(b"01-05-24  1234PM  <DIR>  x"),
            "DOS time is not HH:MM[AM|PM]"
        );
        assert_eq!(
            list_err(b"01-05-24  12:34XM  <DIR>  x"),
            "DOS time is not HH:MM[AM|PM]"
        );
        assert_eq!(
            list_err(b"01-05-24  12:34PM  <LINK>  x"),
            "size is not a number"
        );
        assert_eq!(
            list_err(b"01-05-24  12:34PM  123456789012345678901234567890  x"),
            "size does not fit in 64 bits"
        );
    }

    // ----- parse_listing

    fn reasons(listing: &Listing) -> Vec<&'static str> {
        listing.skipped.iter().map(|s| s.reason).collect()
    }

    fn names(listing: &Listing) -> Vec<&[u8]> {
        listing.entries.iter().map(|e| e.name.as_slice()).collect()
    }

    #[test]
    fn listing_unix_with_mixed_line_endings_and_partial_last_line() {
        let body = b"total 12\r\n\
drwxr-xr-x    2 0        0            4096 Jan 05 12:34 .\r\n\
drwxr-xr-x    3 0        0            4096 Jan 05 12:34 ..\n\
-rw-r--r--    1 1001     1001            5 Nov 27 07:40 small.txt\r\n\
\r\n\
garbage line\n\
lrwxrwxrwx    1 0        0               9 Jan 05 12:34 link -> small.txt\n\
-rw-r--r--    1 1001     1001            7 Nov 27  2023 last one";
        let listing = parse_listing(body, ListingFormat::List, NOW);
        assert_eq!(
            names(&listing),
            vec![&b"small.txt"[..], b"link", b"last one"]
        );
        assert_eq!(
            reasons(&listing),
            vec![
                "name is . or ..",
                "name is . or ..",
                "unrecognised permission string"
            ]
        );
        assert_eq!(listing.skipped[2].line, b"garbage line");
        assert_eq!(
            listing.skipped[1].line,
            b"drwxr-xr-x    3 0        0            4096 Jan 05 12:34 .."
        );
    }

    #[test]
    fn listing_mlsd_drops_cdir_and_pdir_silently() {
        let body = b"type=cdir;sizd=4096;modify=20240101120000;perm=flcdmpe; .\r\n\
type=pdir;sizd=4096;modify=20240101120000;perm=flcdmpe; ..\r\n\
modify=20240101120000;perm=adfr;size=5;type=file;unique=FD00U1;UNIX.mode=0644; small.txt\r\n\
modify=20240101120000;perm=flcdmpe;type=dir;unique=FD00U2;UNIX.mode=0755; sub\r\n";
        let listing = parse_listing(body, ListingFormat::Mlsd, NOW);
        assert_eq!(names(&listing), vec![&b"small.txt"[..], b"sub"]);
        assert!(listing.skipped.is_empty());
    }

    #[test]
    fn listing_rejects_unusable_names() {
        let long = "n".repeat(10_000);
        let max = "m".repeat(MAX_NAME_BYTES);
        let mut body = Vec::new();
        for name in [".", "..", "a/b", "/abs", &long, &max, "ok"] {
            body.extend_from_slice(format!("type=file;size=1; {name}\r\n").as_bytes());
        }
        body.extend_from_slice(b"type=file;size=1; nul\0inside\r\n");
        body.extend_from_slice(b"type=file;size=1; \r\n");
        let listing = parse_listing(&body, ListingFormat::Mlsd, NOW);
        assert_eq!(names(&listing), vec![max.as_bytes(), b"ok"]);
        assert_eq!(
            reasons(&listing),
            vec![
                "name is . or ..",
                "name is . or ..",
                "name contains /",
                "name contains /",
                "name longer than 1024 bytes",
                "name contains NUL",
                "missing name",
            ]
        );
    }

    #[test]
    fn listing_list_rejects_hostile_lines() {
        let mut body = Vec::new();
        let long = format!("-rw-r--r-- 1 0 0 5 Jan 05 12:34 {}\n", "n".repeat(10_000));
        body.extend_from_slice(long.as_bytes());
        body.extend_from_slice(b"-rw-r--r-- 1 0 0 5 Jan 05 12:34 nul\0name\n");
        body.extend_from_slice(b"-rw-r--r-- 1 0 0 5 Jan 05 12:34 a/b\n");
        body.extend_from_slice(b"-rw-r--r-- 1 0 0 5 Jan 05 12:34 \xc3\x28bad utf8\n");
        body.extend_from_slice(b"-rw-r--r-- 1 0 0 5\n");
        body.extend_from_slice(b"\0\0\0\n");
        let listing = parse_listing(&body, ListingFormat::List, NOW);
        assert_eq!(names(&listing), vec![&b"\xc3\x28bad utf8"[..]]);
        assert_eq!(
            reasons(&listing),
            vec![
                "name longer than 1024 bytes",
                "name contains NUL",
                "name contains /",
                "no date in LIST line",
                "unrecognised permission string",
            ]
        );
    }

    #[test]
    fn listing_keeps_the_first_of_duplicate_names() {
        let body = b"-rw-r--r-- 1 0 0 1 Jan 05 12:34 dup\n\
-rw-r--r-- 1 0 0 2 Jan 05 12:34 other\n\
drwxr-xr-x 1 0 0 3 Jan 05 12:34 dup\n";
        let listing = parse_listing(body, ListingFormat::List, NOW);
        assert_eq!(names(&listing), vec![&b"dup"[..], b"other"]);
        assert_eq!(listing.entries[0].size, Some(1));
        assert_eq!(
            reasons(&listing),
            vec!["duplicate name, the first entry is kept"]
        );
    }

    #[test]
    fn listing_dos_body() {
        let body = b"01-05-24  12:34PM       <DIR>          Folder Name\r\n\
01-05-2024  09:00AM              1234 file.txt\r\n\
13-05-24  12:34PM       <DIR>          bad month\r\n";
        let listing = parse_listing(body, ListingFormat::List, NOW);
        assert_eq!(names(&listing), vec![&b"Folder Name"[..], b"file.txt"]);
        assert_eq!(reasons(&listing), vec!["month out of range"]);
    }

    #[test]
    fn listing_of_nothing() {
        for body in [&b""[..], b"\n", b"\r\n\r\n", b"   \n\t\r\n"] {
            for format in [ListingFormat::List, ListingFormat::Mlsd] {
                assert_eq!(parse_listing(body, format, NOW), Listing::default());
            }
        }
        let total = parse_listing(b"total 0\r\n", ListingFormat::List, NOW);
        assert_eq!(total, Listing::default());
    }

    #[test]
    fn escaped_log_line_is_cut() {
        assert_eq!(Escaped(b"a\0\xff").to_string(), "a\\x00\\xff");
        let long = vec![b'x'; 1000];
        let shown = Escaped(&long).to_string();
        assert!(shown.starts_with(&"x".repeat(LOG_LINE_BYTES)));
        assert!(shown.ends_with("... (1000 bytes)"));
    }

    // ----- no panics on any input

    /// xorshift64: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const SEEDS: &[&[u8]] = &[
        b"-rw-r--r--    1 1001     1001            5 Nov 27 07:40 small.txt",
        b"-rw-r--r--    1 1001     1001         1234 Nov 27  2023 old.txt",
        b"drwxr-xr-x    2 0        0            4096 Jan 05 12:34 name with spaces",
        b"lrwxrwxrwx    1 0        0               9 Jan 05 12:34 link -> target",
        b"crw-rw-rw-    1 0        0          1,   3 Jan 05 12:34 null",
        b"-rwsr-xr-t+ 1 owner 1234 Feb 29 2024 x",
        b"total 123",
        b"01-05-24  12:34PM       <DIR>          Folder Name",
        b"01-05-2024  09:00AM              1234 file.txt",
        b"modify=20240101120000;perm=adfr;size=5;type=file;unique=FD00U1;UNIX.mode=0644; small.txt",
        b"type=file;size=5;modify=20240101120000.123;UNIX.mode=0644;UNIX.uid=1000; small.txt",
        b"type=OS.unix=slink:/a b;size=3; l",
        b"type=cdir;sizd=4096;modify=20240101120000; .",
    ];

    /// Bytes that steer the parsers into their interesting branches.
    const ALPHABET: &[u8] =
        b"0123456789 ;=:-,./<>+@\t\r\n\0\xff\xe9abcdefjlmnoprstuvwxyzADFJMNOPRSTYZ";

    fn random_line(rng: &mut Rng) -> Vec<u8> {
        let len = rng.below(120);
        (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    rng.next() as u8
                } else {
                    *rng.pick(ALPHABET)
                }
            })
            .collect()
    }

    fn mutated_line(rng: &mut Rng) -> Vec<u8> {
        let mut line = rng.pick(SEEDS).to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(line.len() + 1);
            match rng.below(6) {
                0 if at < line.len() => {
                    line.remove(at);
                }
                1 => line.insert(at, *rng.pick(ALPHABET)),
                2 if at < line.len() => line[at] = rng.next() as u8,
                3 => line.truncate(at),
                4 => {
                    let digits = vec![b'9'; 1 + rng.below(30)];
                    line.splice(at..at, digits);
                }
                _ => {
                    line.splice(at..at, b" -> ".iter().copied());
                }
            }
        }
        line
    }

    fn check_entry(e: &Entry) {
        if let Some(mode) = e.mode {
            assert!(mode <= 0o7777);
        }
        if let Some(t) = e.modified {
            assert!(t.nanos < 1_000_000_000);
        }
        if let Some(target) = &e.link_target {
            assert!(!target.is_empty() && !target.contains(&0));
        }
    }

    #[test]
    fn no_panics_on_random_and_mutated_lines() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let nows = [
            NOW,
            0,
            -1,
            i64::MIN,
            i64::MAX,
            253_402_300_799,
            -62_135_596_800,
        ];
        let mut body = Vec::new();
        for i in 0..20_000 {
            let line = if i % 2 == 0 {
                random_line(&mut rng)
            } else {
                mutated_line(&mut rng)
            };
            let now = if rng.below(4) == 0 {
                rng.next() as i64
            } else {
                *rng.pick(&nows)
            };
            if let Ok(Some(e)) = parse_mlsd_line(&line) {
                check_entry(&e);
            }
            if let Ok(Some(e)) = parse_list_line(&line, now) {
                check_entry(&e);
            }
            body.extend_from_slice(&line);
            body.extend_from_slice(if rng.below(2) == 0 { b"\r\n" } else { b"\n" });
            if i % 100 == 99 {
                for format in [ListingFormat::Mlsd, ListingFormat::List] {
                    let listing = parse_listing(&body, format, now);
                    let mut seen = HashSet::new();
                    for e in &listing.entries {
                        check_entry(e);
                        assert_eq!(check_name(&e.name), Ok(()));
                        assert!(seen.insert(e.name.clone()), "duplicate kept");
                    }
                }
                body.clear();
            }
        }
    }

    #[test]
    fn mutations_still_parse_some_lines() {
        // Guards the generator: if mutations never produced entries, the test above would
        // exercise only the rejection paths.
        let mut rng = Rng(42);
        let parsed = (0..2_000)
            .filter(|_| {
                let line = mutated_line(&mut rng);
                matches!(parse_list_line(&line, NOW), Ok(Some(_)))
                    || matches!(parse_mlsd_line(&line), Ok(Some(_)))
            })
            .count();
        assert!(parsed > 200, "only {parsed} mutated lines parsed");
    }
}
