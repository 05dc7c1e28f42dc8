//! The FTP commands: every verb ftpsfs sends, with its retry policy, and the methods that
//! send them.

use std::time::{SystemTime, UNIX_EPOCH};

use super::data::DataConnection;
use super::ControlConnection;
use crate::ftp::error::{FtpError, Redacted};
use crate::ftp::listing::{self, Entry, Listing, ListingFormat, Timestamp};
use crate::ftp::reply::Reply;

/// Largest listing body accepted; bounds memory against a hostile or broken server.
pub const MAX_LISTING_BYTES: usize = 256 * 1024 * 1024;

/// Whether an operation may run again on a fresh connection after its connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Sending it twice does what sending it once does: an operation made only of such
    /// commands is retried once on a fresh connection.
    Idempotent,
    /// It changes the server. Once it has gone out, the operation is never repeated
    /// blindly: a repeated DELE would report "no such file" after the first had worked.
    /// When the connection is lost before its reply, the outcome is unknown
    /// ([`FtpError::Unconfirmed`]) and the caller finds out by looking.
    Never,
}

/// An FTP verb, its retry policy and the replies that can answer it.
#[derive(Debug)]
pub struct Verb {
    /// The verb as sent.
    pub name: &'static str,
    /// Whether an operation that sent it may be retried.
    pub retry: Retry,
    /// The reply codes that can answer it besides [`ANY_COMMAND`] (for a transfer
    /// command, its first reply; [`TRANSFER_END`] holds the last).
    pub replies: &'static [u16],
}

/// Replies any command may get (RFC 959 §5.4): the server is closing (421), the command
/// or its parameters are unknown or out of sequence (500-504), not logged in (530).
pub const ANY_COMMAND: &[u16] = &[421, 500, 501, 502, 503, 504, 530];

/// Replies that can end a transfer (RFC 959 §5.4, RFC 4217 §9 for 522/534/535): done
/// (226, 250), no data connection or a refused one (425, 522, 534, 535), cut off (426,
/// 451), or a refusal of the file (450, 452, 550-553).
pub const TRANSFER_END: &[u16] = &[
    226, 250, 421, 425, 426, 450, 451, 452, 522, 534, 535, 550, 551, 552, 553,
];

/// Replies to ABOR besides the end of the transfer it stops (RFC 959 §4.1.3): 226 once
/// aborted, 225 when no transfer was running.
pub const ABOR_REPLIES: &[u16] = &[225, 226];

impl Verb {
    /// Whether a reply with `code` can answer this command; any other reply belongs to
    /// some other command and means that the connection is out of step.
    pub fn answers(&self, code: u16) -> bool {
        self.replies.contains(&code) || ANY_COMMAND.contains(&code)
    }

    /// Whether `reply` can answer this command: its code (see [`Self::answers`]) and,
    /// for the 213 that several commands share, its text: SIZE's is a number, MDTM's a
    /// time (14 digits first), MFMT's and MDTM-with-a-time's are no bare number. So a
    /// SIZE and an MFMT sent together cannot take each other's 213.
    pub fn fits(&self, reply: &Reply) -> bool {
        if !self.answers(reply.code) {
            return false;
        }
        if reply.code != 213 {
            return true;
        }
        let text = reply.first_line().as_bytes();
        let bare_number = !text.is_empty() && text.iter().all(u8::is_ascii_digit);
        match (self.name, self.retry) {
            ("SIZE", _) => bare_number,
            ("MDTM", Retry::Idempotent) => {
                text.len() >= 14 && text[..14].iter().all(u8::is_ascii_digit)
            }
            ("MFMT", _) | ("MDTM", Retry::Never) => !bare_number,
            _ => true,
        }
    }
}

/// Whether `code` can end a transfer (see [`TRANSFER_END`]).
pub fn ends_transfer(code: u16) -> bool {
    TRANSFER_END.contains(&code) || ANY_COMMAND.contains(&code)
}

/// Whether `reply` can end a transfer (see [`TRANSFER_END`]).
pub fn transfer_end(reply: &Reply) -> bool {
    ends_transfer(reply.code)
}

/// Every verb ftpsfs sends: the one place that decides what may be retried, and which
/// replies can answer what (RFC 959 §5.4, RFC 2228, RFC 3659, RFC 4217 and the drafts
/// that add MFMT and SITE commands).
pub mod verb {
    use super::{Retry, Verb};

    macro_rules! verbs {
        ($($(#[$doc:meta])* $name:ident $retry:ident [$($code:literal),*];)*) => {
            $($(#[$doc])* pub const $name: Verb = Verb {
                name: stringify!($name),
                retry: Retry::$retry,
                replies: &[$($code),*],
            };)*
        };
    }

    verbs! {
        /// Asks for TLS on the control connection (RFC 4217).
        AUTH Idempotent [234, 334, 431, 534];
        /// Login name.
        USER Idempotent [230, 232, 331, 332, 336];
        /// Login password.
        PASS Idempotent [202, 230, 332];
        /// TLS buffer size, always 0 (RFC 4217).
        PBSZ Idempotent [200, 550];
        /// Data connection protection, always P (private).
        PROT Idempotent [200, 431, 534, 536];
        /// The server's extensions.
        FEAT Idempotent [211, 214, 550];
        /// Options, here `UTF8 ON`.
        OPTS Idempotent [200, 202, 451, 550];
        /// Transfer type, always I (binary).
        TYPE Idempotent [200];
        /// Keeps the connection alive and proves it in step.
        NOOP Idempotent [200];
        /// Ends the session.
        QUIT Idempotent [221];
        /// Extended passive mode: the data port.
        EPSV Idempotent [229, 425, 521, 522];
        /// Passive mode: the data address.
        PASV Idempotent [227, 425, 521];
        /// Extended active mode: where the server connects (RFC 2428).
        /// (550: vsftpd's answer where active mode is off.)
        EPRT Idempotent [200, 522, 550];
        /// Active mode: where the server connects, IPv4 only.
        PORT Idempotent [200, 550];
        /// The offset of the next transfer.
        REST Idempotent [350, 554];
        /// Stops a transfer (226 or 225; the transfer's own end comes besides).
        ABOR Idempotent [225, 226];
        /// A file's size.
        SIZE Idempotent [213, 450, 550];
        /// A file's modification time.
        MDTM Idempotent [213, 450, 550];
        /// The working directory (the login directory: ftpsfs never changes it).
        PWD Idempotent [257, 550];
        /// Changes the working directory (only to check that a path is a directory).
        CWD Idempotent [250, 450, 550];
        /// One entry's facts.
        MLST Idempotent [250, 450, 550];
        /// A machine-readable listing.
        MLSD Idempotent [125, 150, 226, 250, 425, 426, 450, 451, 534, 535, 522, 550];
        /// A human-readable listing (`LIST -a`).
        LIST Idempotent [125, 150, 226, 250, 425, 426, 450, 451, 534, 535, 522, 550];
        /// Downloads a file.
        RETR Idempotent [125, 150, 226, 250, 425, 426, 450, 451, 534, 535, 522, 550, 551, 554];
        /// Names the file the next RNTO renames. Alone it changes nothing, so it may be
        /// sent again; the pair's effect is RNTO's.
        RNFR Idempotent [350, 450, 550];
        /// Renames the file RNFR named.
        RNTO Never [250, 450, 532, 550, 553];
        /// Uploads a file, replacing any file of that name.
        STOR Never [125, 150, 226, 250, 425, 426, 450, 451, 452, 532, 534, 535, 522, 550, 551, 552, 553];
        /// Uploads onto the end of a file.
        APPE Never [125, 150, 226, 250, 425, 426, 450, 451, 452, 532, 534, 535, 522, 550, 551, 552, 553];
        /// Deletes a file.
        DELE Never [250, 450, 550];
        /// Creates a directory (257; 250 from some servers; 521 "exists" from others).
        MKD Never [250, 257, 521, 550];
        /// Removes an empty directory.
        RMD Never [250, 450, 550];
        /// Sets a file's modification time (draft-somers-ftp-mfxx: 213 when done).
        MFMT Never [213, 450, 550];
        /// Site commands: `CHMOD`, `UTIME` (200 or 250 when done, 202 when ignored).
        SITE Never [200, 202, 214, 250, 450, 550];
    }
}

/// Setting a modification time: with MDTM and a time as well as a path (vsftpd).
pub const MDTM_SET: Verb = Verb {
    name: "MDTM",
    retry: Retry::Never,
    replies: &[213, 253, 450, 550, 553],
};

/// How a server sets a file's modification time. MFMT is announced in FEAT; vsftpd's
/// `MDTM time path` and ProFTPD's `SITE UTIME time path` are not, so they are tried in
/// turn the first time, and the one that works is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeSetting {
    /// Not tried yet (and no MFMT in FEAT).
    Unknown,
    /// `MFMT time path`.
    Mfmt,
    /// `MDTM time path`.
    MdtmWithTime,
    /// `SITE UTIME time path`.
    SiteUtime,
    /// None works.
    Unsupported,
}

/// One command line to send, with its verb.
#[derive(Clone)]
pub(super) struct Command {
    verb: &'static Verb,
    line: Vec<u8>,
}

impl Command {
    /// The verb alone.
    pub(super) fn new(verb: &'static Verb) -> Self {
        Self {
            verb,
            line: verb.name.as_bytes().to_vec(),
        }
    }

    /// The verb and its argument (a path, a name, an option), refused if the argument
    /// holds CR, LF or NUL, which would smuggle in another command.
    pub(super) fn with_arg(verb: &'static Verb, arg: impl AsRef<[u8]>) -> Result<Self, FtpError> {
        let arg = arg.as_ref();
        if arg.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(FtpError::InvalidPath {
                path: String::from_utf8_lossy(arg).into_owned(),
            });
        }
        let mut line = Vec::with_capacity(verb.name.len() + 1 + arg.len());
        line.extend_from_slice(verb.name.as_bytes());
        line.push(b' ');
        line.extend_from_slice(arg);
        Ok(Self { verb, line })
    }

    /// The verb.
    pub(super) fn verb(&self) -> &'static Verb {
        self.verb
    }

    /// The bytes to send, without CRLF.
    pub(super) fn line(&self) -> &[u8] {
        &self.line
    }

    /// The command as logs and errors may show it: the password hidden.
    pub(super) fn shown(&self) -> String {
        Redacted(&String::from_utf8_lossy(&self.line)).to_string()
    }
}

impl ControlConnection {
    /// NOOP: proves the connection is alive and keeps idle-timeouts at bay.
    pub async fn noop(&mut self) -> Result<(), FtpError> {
        self.expect_success(Command::new(&verb::NOOP))
            .await
            .map(|_| ())
    }

    /// The size of a file in bytes (SIZE, RFC 3659).
    pub async fn size(&mut self, path: &[u8]) -> Result<u64, FtpError> {
        let path = &self.reach(path).await?;
        let reply = self.path_command(&verb::SIZE, path, 213).await?;
        size_of(&reply)
    }

    /// After an upload to `path`: the size the server stores (SIZE, or MLST's size fact),
    /// and the modification time and mode set, when asked for, all in one round trip
    /// where the server's way of setting times is known.
    ///
    /// With `compare`, the size and time of that file (the upload's final name) are
    /// asked for in the same round trip: what the upload is about to replace.
    pub async fn check_upload(
        &mut self,
        path: &[u8],
        unix_seconds: Option<i64>,
        mode: Option<u32>,
        compare: Option<&[u8]>,
    ) -> Result<UploadCheck, FtpError> {
        let (path, compare) = match compare {
            Some(other) => {
                let (path, other) = self.reach_both(path, other).await?;
                (path, Some(other))
            }
            None => (self.reach(path).await?, None),
        };
        let path = &path;
        let size = Command::with_arg(&verb::SIZE, path)?;
        // Two SIZE replies cannot be told apart, but a server that swapped them cannot
        // mislead: the upload's check passes only when its reply is the size sent, so a
        // swap that passes it carried equal sizes both ways.
        let compared = match &compare {
            Some(other) => Some([
                Command::with_arg(&verb::SIZE, other)?,
                Command::with_arg(&verb::MDTM, other)?,
            ]),
            None => None,
        };
        let time = match unix_seconds {
            Some(seconds) => self.time_command_for(path, seconds)?,
            None => None,
        };
        let chmod = match mode {
            Some(mode) => Some(Command::with_arg(
                &verb::SITE,
                [format!("CHMOD {:o} ", mode & 0o7777).as_bytes(), path].concat(),
            )?),
            None => None,
        };
        // Two SITE commands (UTIME and CHMOD) would answer alike (200): sent together to a
        // server that answers out of order, either could take the other's reply. The
        // second goes out on its own then.
        let same_verb =
            matches!((&time, &chmod), (Some(t), Some(c)) if t.verb().name == c.verb().name);
        // The next transfer's EPSV rides along (see `ahead.rs`); its reply never decides
        // the check.
        let tickets_before = self.tickets_received();
        let ahead = self.ahead_request();
        let together: Vec<&Command> = [Some(&size), time.as_ref()]
            .into_iter()
            .chain([chmod.as_ref().filter(|_| !same_verb)])
            .flatten()
            .chain(compared.iter().flatten())
            .chain(ahead.as_ref())
            .collect();
        let mut replies = self.mutate_all(&together).await?;
        if let (true, Some(chmod)) = (same_verb, &chmod) {
            replies.extend(self.mutate_all(&[chmod]).await?);
        }
        let mut replies = replies.into_iter();
        let mut outcome = |command: &Command| {
            success_or_rejected(command, replies.next().expect("one reply per command"))
        };
        let size_reply = outcome(&size);
        let time_set = time.as_ref().map(|c| outcome(c).map(drop));
        let mode_set = chmod
            .as_ref()
            .filter(|_| !same_verb)
            .map(|c| outcome(c).map(drop));
        let compared = compared.map(|[size, time]| stored_version(outcome(&size), outcome(&time)));
        if let Some(epsv) = &ahead {
            if let Ok(reply) = outcome(epsv) {
                self.open_ahead(reply, tickets_before);
            }
        }
        let mode_set = match (same_verb, &chmod) {
            (true, Some(c)) => Some(outcome(c).map(drop)),
            _ => mode_set,
        };
        let stored = match size_reply {
            Ok(reply) => Some(size_of(&reply)?),
            Err(e) if e.is_unsupported() => self.stored_size_without_size(path).await?,
            Err(e) => return Err(e),
        };
        // The way to set times is probed once per connection, on its own.
        let time_set = match (time_set, unix_seconds) {
            (None, Some(seconds)) => Some(self.set_modified_here(path, seconds).await),
            (set, _) => set,
        };
        Ok(UploadCheck {
            size: stored,
            time_set,
            mode_set,
            compared,
        })
    }

    /// The command that sets `path`'s time where the connection knows which one the
    /// server has; None while that is unknown (see [`Self::set_modified`]).
    fn time_command_for(
        &self,
        path: &[u8],
        unix_seconds: i64,
    ) -> Result<Option<Command>, FtpError> {
        let Some(time) = listing::format_time_val(unix_seconds) else {
            return Ok(None);
        };
        let with_time = [time.as_bytes(), b" ", path].concat();
        Ok(match self.time_setting {
            TimeSetting::Mfmt => Some(Command::with_arg(&verb::MFMT, &with_time)?),
            TimeSetting::MdtmWithTime => Some(Command::with_arg(&MDTM_SET, &with_time)?),
            TimeSetting::SiteUtime => Some(Command::with_arg(
                &verb::SITE,
                [b"UTIME ".as_slice(), &with_time].concat(),
            )?),
            TimeSetting::Unknown | TimeSetting::Unsupported => None,
        })
    }

    /// The size fact of MLST, for a server without SIZE; None without MLST either.
    async fn stored_size_without_size(&mut self, path: &[u8]) -> Result<Option<u64>, FtpError> {
        if !self.features.mlsd {
            return Ok(None);
        }
        match self.stat_here(path).await {
            Ok(entry) => Ok(entry.size),
            Err(e) if e.is_unsupported() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds out whether the server answers pipelined commands in order: NOOP, PWD and
    /// NOOP go out together, harmless and with replies told apart (200, 257, 200). A
    /// server that takes each command on its own task answers them out of order; then
    /// the reason is returned, and with `pipelining=auto` the mount sends one command at
    /// a time from its start. All three replies are read, so the connection stays usable.
    pub async fn probe_reply_order(&mut self) -> Result<Option<String>, FtpError> {
        let noop = Command::new(&verb::NOOP);
        let pwd = Command::new(&verb::PWD);
        self.send_all(&[&noop, &pwd, &noop]).await?;
        let mut codes = Vec::with_capacity(3);
        for _ in 0..3 {
            let reply = self.read_reply("probing the reply order").await?;
            if reply.code == 421 {
                self.mark_broken();
                return Err(FtpError::Rejected {
                    command: "NOOP".into(),
                    reply,
                });
            }
            codes.push(reply.code);
        }
        self.enter(super::State::Ready);
        let in_order = codes[0] == 200 && codes[1] != 200 && codes[2] == 200;
        let why = (!in_order).then(|| {
            format!(
                "it answered NOOP, PWD, NOOP sent together with {} {} {}",
                codes[0], codes[1], codes[2]
            )
        });
        tracing::debug!(conn = self.id, ?codes, in_order, "probed the reply order");
        if let Some(why) = &why {
            self.options.pipelining.step_down(why);
        }
        Ok(why)
    }

    /// Checks that `path` is a directory on the server: with MLST where the server has
    /// it, else by changing into it and back (CWD), since some servers (vsftpd) list a
    /// missing directory as an empty one. A missing path is a 550 [`FtpError::Rejected`];
    /// a file, a [`FtpError::Protocol`] error saying so.
    pub async fn check_directory(&mut self, path: &[u8]) -> Result<(), FtpError> {
        self.go_home().await?;
        if path.is_empty() {
            return Ok(());
        }
        let not_a_directory = || FtpError::Protocol {
            step: format!("checking {}", Redacted(&String::from_utf8_lossy(path))),
            detail: "it is not a directory".into(),
        };
        if self.features.mlsd {
            match self.stat(path).await {
                Ok(entry) if entry.kind == listing::EntryKind::File => {
                    return Err(not_a_directory())
                }
                // A directory, or a link the listing will follow.
                Ok(_) => return Ok(()),
                // A server with MLSD but no MLST: CWD below.
                Err(e) if e.is_unsupported() => {}
                Err(e) => return Err(e),
            }
        }
        // Into it and back: ftpsfs sends paths relative to the login directory.
        self.change_into(path).await?;
        self.go_home().await
    }

    /// The working directory, as an absolute path: the login directory, since ftpsfs
    /// never changes it (PWD, RFC 959).
    pub async fn working_directory(&mut self) -> Result<Vec<u8>, FtpError> {
        self.go_home().await?;
        let reply = self.command(Command::new(&verb::PWD)).await?;
        if reply.code != 257 {
            return Err(FtpError::Rejected {
                command: "PWD".into(),
                reply,
            });
        }
        quoted_path(reply.first_line()).ok_or_else(|| FtpError::Protocol {
            step: "PWD".into(),
            detail: format!("no quoted path in {reply}"),
        })
    }

    /// The modification time of a file (MDTM, RFC 3659), UTC.
    pub async fn modified(&mut self, path: &[u8]) -> Result<Timestamp, FtpError> {
        let path = &self.reach(path).await?;
        let reply = self.path_command(&verb::MDTM, path, 213).await?;
        time_of(&reply)
    }

    /// The facts of one file or directory (MLST, RFC 3659).
    pub async fn stat(&mut self, path: &[u8]) -> Result<Entry, FtpError> {
        let path = &self.reach(path).await?;
        self.stat_here(path).await
    }

    /// [`Self::stat`] of a path already in reach.
    async fn stat_here(&mut self, path: &[u8]) -> Result<Entry, FtpError> {
        let reply = self.path_command(&verb::MLST, path, 250).await?;
        // The entry is the line that starts with a space, between the 250- and 250 lines.
        reply
            .lines
            .iter()
            .skip(1)
            .filter_map(|line| line.strip_prefix(' '))
            .find_map(|facts| listing::parse_mlsd_line(facts.as_bytes()).ok().flatten())
            .ok_or_else(|| FtpError::Protocol {
                step: "MLST".into(),
                detail: format!("no entry in reply: {reply}"),
            })
    }

    async fn path_command(
        &mut self,
        verb: &'static Verb,
        path: &[u8],
        expected: u16,
    ) -> Result<Reply, FtpError> {
        let command = Command::with_arg(verb, path)?;
        let shown = command.shown();
        let reply = self.command(command).await?;
        if reply.code == expected {
            Ok(reply)
        } else {
            Err(FtpError::Rejected {
                command: shown,
                reply,
            })
        }
    }

    /// Sends commands that change the server ([`Retry::Never`]) and reads their replies.
    /// Once one has gone out, a connection lost before the replies leaves the outcome
    /// unknown: that is [`FtpError::Unconfirmed`].
    async fn mutate<const N: usize>(
        &mut self,
        commands: [&Command; N],
    ) -> Result<[Reply; N], FtpError> {
        let replies = self.mutate_all(&commands).await?;
        Ok(replies
            .try_into()
            .unwrap_or_else(|_| unreachable!("one reply per command")))
    }

    /// [`Self::mutate`] for a number of commands known only at run time.
    async fn mutate_all(&mut self, commands: &[&Command]) -> Result<Vec<Reply>, FtpError> {
        let written_before = self.commands_written;
        match self.pipeline_all(commands).await {
            Ok(replies) => Ok(replies),
            // A 421 is the server's refusal: it did nothing.
            Err(error)
                if self.commands_written > written_before
                    && error.breaks_connection()
                    && error.reply_code() != Some(421) =>
            {
                Err(FtpError::Unconfirmed {
                    command: commands.last().map_or_else(String::new, |c| c.shown()),
                    source: Box::new(error),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Sends one mutation and fails unless its reply is 2xx.
    async fn mutate_one(&mut self, command: Command) -> Result<Reply, FtpError> {
        let [reply] = self.mutate([&command]).await?;
        success_or_rejected(&command, reply)
    }

    /// Deletes the file `path` (DELE).
    pub async fn delete(&mut self, path: &[u8]) -> Result<(), FtpError> {
        let path = &self.reach(path).await?;
        self.mutate_one(Command::with_arg(&verb::DELE, path)?)
            .await
            .map(drop)
    }

    /// Creates the directory `path` (MKD).
    pub async fn make_dir(&mut self, path: &[u8]) -> Result<(), FtpError> {
        let path = &self.reach(path).await?;
        self.mutate_one(Command::with_arg(&verb::MKD, path)?)
            .await
            .map(drop)
    }

    /// Removes the empty directory `path` (RMD).
    pub async fn remove_dir(&mut self, path: &[u8]) -> Result<(), FtpError> {
        let path = &self.reach(path).await?;
        self.mutate_one(Command::with_arg(&verb::RMD, path)?)
            .await
            .map(drop)
    }

    /// Renames `from` to `to` (RNFR, then RNTO, sent together: a refused RNFR makes the
    /// server refuse the RNTO as out of sequence, so nothing happens then).
    pub async fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<(), FtpError> {
        let (from, to) = &self.reach_both(from, to).await?;
        let rnfr = Command::with_arg(&verb::RNFR, from)?;
        let rnto = Command::with_arg(&verb::RNTO, to)?;
        let [from_reply, to_reply] = self.mutate([&rnfr, &rnto]).await?;
        if from_reply.code != 350 {
            return Err(FtpError::Rejected {
                command: rnfr.shown(),
                reply: from_reply,
            });
        }
        if !to_reply.is_success() {
            return Err(FtpError::Rejected {
                command: rnto.shown(),
                reply: to_reply,
            });
        }
        Ok(())
    }

    /// Sets the modification time of `path`, with whichever command the server has (see
    /// [`TimeSetting`]). A server with none gives an error for which
    /// [`FtpError::is_unsupported`] holds.
    pub async fn set_modified(&mut self, path: &[u8], unix_seconds: i64) -> Result<(), FtpError> {
        let path = &self.reach(path).await?;
        self.set_modified_here(path, unix_seconds).await
    }

    /// [`Self::set_modified`] of a path already in reach.
    async fn set_modified_here(&mut self, path: &[u8], unix_seconds: i64) -> Result<(), FtpError> {
        let time = listing::format_time_val(unix_seconds).ok_or_else(|| FtpError::Protocol {
            step: "setting a modification time".into(),
            detail: format!("{unix_seconds} s since 1970 cannot be sent as an FTP time"),
        })?;
        let with_time = [time.as_bytes(), b" ", path].concat();
        let mfmt = || Command::with_arg(&verb::MFMT, &with_time);
        let mdtm = || Command::with_arg(&MDTM_SET, &with_time);
        let utime = || Command::with_arg(&verb::SITE, [b"UTIME ".as_slice(), &with_time].concat());
        match self.time_setting {
            TimeSetting::Mfmt => self.mutate_one(mfmt()?).await.map(drop),
            TimeSetting::MdtmWithTime => self.mutate_one(mdtm()?).await.map(drop),
            TimeSetting::SiteUtime => self.mutate_one(utime()?).await.map(drop),
            TimeSetting::Unsupported => Err(FtpError::Rejected {
                command: "setting a modification time".into(),
                reply: Reply {
                    code: 502,
                    lines: vec!["the server has none of MFMT, MDTM with a time, SITE UTIME".into()],
                },
            }),
            TimeSetting::Unknown => {
                let mdtm_error = match self.mutate_one(mdtm()?).await {
                    Ok(_) => {
                        self.time_setting = TimeSetting::MdtmWithTime;
                        return Ok(());
                    }
                    // A server without this form of MDTM refuses its parameters
                    // (500-504) or reads the time as part of the file name (550).
                    Err(e) if e.is_unsupported() || e.is_not_found() => e,
                    Err(e) => return Err(e),
                };
                match self.mutate_one(utime()?).await {
                    Ok(_) => {
                        self.time_setting = TimeSetting::SiteUtime;
                        tracing::debug!(conn = self.id, "this server sets times with SITE UTIME");
                        Ok(())
                    }
                    // Only when both forms are unknown commands is the server known to
                    // lack them; a 550 may just mean that the file is gone.
                    Err(e) if e.is_unsupported() && mdtm_error.is_unsupported() => {
                        self.time_setting = TimeSetting::Unsupported;
                        Err(e)
                    }
                    Err(_) => Err(mdtm_error),
                }
            }
        }
    }

    /// The command this connection sets modification times with, once known.
    pub fn time_command(&self) -> Option<&'static str> {
        match self.time_setting {
            TimeSetting::Mfmt => Some("MFMT"),
            TimeSetting::MdtmWithTime => Some("MDTM with a time"),
            TimeSetting::SiteUtime => Some("SITE UTIME"),
            TimeSetting::Unknown | TimeSetting::Unsupported => None,
        }
    }

    /// Sets the permission bits of `path` (SITE CHMOD). A server without it gives an error
    /// for which [`FtpError::is_unsupported`] holds.
    pub async fn set_mode(&mut self, path: &[u8], mode: u32) -> Result<(), FtpError> {
        let path = &self.reach(path).await?;
        let arg = [format!("CHMOD {:o} ", mode & 0o7777).as_bytes(), path].concat();
        self.mutate_one(Command::with_arg(&verb::SITE, arg)?)
            .await
            .map(drop)
    }

    /// Lists a directory: MLSD when the server has it, else `LIST -a` (vsftpd has no MLSD).
    ///
    /// Some servers (NAS firmware) refuse MLSD for certain directories (500-504): those
    /// are listed with `LIST -a` instead, rather than failing.
    pub async fn list(&mut self, path: &[u8]) -> Result<Listing, FtpError> {
        let path = &self.reach(path).await?;
        if !self.features.mlsd {
            return self.list_here(path, ListingFormat::List).await;
        }
        match self.list_here(path, ListingFormat::Mlsd).await {
            Err(e) if e.is_unsupported() => {
                tracing::debug!(
                    conn = self.id,
                    "MLSD refused here ({e}); listing with LIST -a"
                );
                self.list_here(path, ListingFormat::List).await
            }
            other => other,
        }
    }

    /// Lists a directory in the given format: `LIST -a` shows symlink targets, MLSD does not.
    pub async fn list_as(
        &mut self,
        path: &[u8],
        format: ListingFormat,
    ) -> Result<Listing, FtpError> {
        let path = &self.reach(path).await?;
        self.list_here(path, format).await
    }

    /// [`Self::list_as`] of a path already in reach.
    async fn list_here(&mut self, path: &[u8], format: ListingFormat) -> Result<Listing, FtpError> {
        let command = match (format, path.is_empty()) {
            (ListingFormat::Mlsd, true) => Command::new(&verb::MLSD),
            (ListingFormat::Mlsd, false) => Command::with_arg(&verb::MLSD, path)?,
            (ListingFormat::List, true) => Command::with_arg(&verb::LIST, "-a")?,
            (ListingFormat::List, false) => {
                Command::with_arg(&verb::LIST, [b"-a ", path].concat())?
            }
        };
        let body = self.read_to_end(command, MAX_LISTING_BYTES).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let listing = listing::parse_listing(&body, format, now);
        tracing::debug!(
            conn = self.id,
            entries = listing.entries.len(),
            skipped = listing.skipped.len(),
            bytes = body.len(),
            "listing parsed"
        );
        Ok(listing)
    }

    /// Runs a data command and returns everything the server sends (at most `max` bytes).
    async fn read_to_end(&mut self, command: Command, max: usize) -> Result<Vec<u8>, FtpError> {
        let step = command.verb().name;
        let mut data = self.open_data(command, 0).await?;
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match data.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) => {
                    self.mark_broken();
                    return Err(e);
                }
            };
            if n == 0 {
                break;
            }
            if body.len() + n > max {
                self.abort_data(data).await?;
                return Err(FtpError::Protocol {
                    step: step.into(),
                    detail: format!("more than {max} bytes of data"),
                });
            }
            body.extend_from_slice(&chunk[..n]);
        }
        self.finish_data(data).await?;
        Ok(body)
    }

    /// Starts downloading `path` from byte `offset` (REST + RETR); read it from the returned stream.
    pub async fn retrieve(&mut self, path: &[u8], offset: u64) -> Result<DataConnection, FtpError> {
        let path = &self.reach(path).await?;
        self.open_data(Command::with_arg(&verb::RETR, path)?, offset)
            .await
    }

    /// [`Self::retrieve`], with the file's modification time (MDTM) asked just before
    /// RETR, in the same round trip where the connection pipelines. The time is None when
    /// the server has no MDTM or gives no time for this file.
    ///
    /// The time is what the download is of, to the second: a file rewritten between two
    /// ranged downloads with the same size shows here, and nowhere else.
    pub async fn retrieve_with_time(
        &mut self,
        path: &[u8],
        offset: u64,
    ) -> Result<(DataConnection, Option<Timestamp>), FtpError> {
        let path = &self.reach(path).await?;
        let retr = Command::with_arg(&verb::RETR, path)?;
        let mdtm = match self.features().mdtm {
            true => Some(Command::with_arg(&verb::MDTM, path)?),
            false => None,
        };
        let (data, reply) = self.open_data_after(mdtm.as_ref(), retr, offset).await?;
        let time = match reply.as_ref().map(time_of) {
            Some(Ok(time)) => Some(time),
            Some(Err(e)) => {
                tracing::debug!(conn = self.id(), "no time with this download: {e}");
                None
            }
            None => None,
        };
        Ok((data, time))
    }
}

/// `reply` when it is 2xx, otherwise the error naming `command` and the reply.
pub(super) fn success_or_rejected(command: &Command, reply: Reply) -> Result<Reply, FtpError> {
    if reply.is_success() {
        Ok(reply)
    } else {
        Err(FtpError::Rejected {
            command: command.shown(),
            reply,
        })
    }
}

/// The time in a 213 reply to MDTM.
fn time_of(reply: &Reply) -> Result<Timestamp, FtpError> {
    let not_a_time = || FtpError::Protocol {
        step: "MDTM".into(),
        detail: format!("not a time: {reply}"),
    };
    if reply.code != 213 {
        return Err(FtpError::Rejected {
            command: "MDTM".into(),
            reply: reply.clone(),
        });
    }
    let fact = format!("modify={};type=file; x", reply.first_line());
    listing::parse_mlsd_line(fact.as_bytes())
        .ok()
        .flatten()
        .and_then(|entry| entry.modified)
        .ok_or_else(not_a_time)
}

/// What the server said after an upload (see [`ControlConnection::check_upload`]).
#[derive(Debug)]
pub struct UploadCheck {
    /// The size it stores; None when it reports no sizes at all.
    pub size: Option<u64>,
    /// Whether the modification time was set, when one was asked for.
    pub time_set: Option<Result<(), FtpError>>,
    /// Whether the mode was set, when one was asked for.
    pub mode_set: Option<Result<(), FtpError>>,
    /// The file compared, when one was asked for: None when there is no such file.
    pub compared: Option<Result<Option<StoredVersion>, FtpError>>,
}

/// A file's size and time on the server, as far as it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVersion {
    /// Its size (SIZE); None when the server does not say.
    pub size: Option<u64>,
    /// Its modification time (MDTM); None when the server does not say.
    pub modified: Option<Timestamp>,
}

/// The version told by the replies to SIZE and MDTM of one path: None when both say
/// there is no such file (550). Any other refusal of both is an error: a busy file
/// (450) or a closing server is no proof that the file is gone.
fn stored_version(
    size: Result<Reply, FtpError>,
    time: Result<Reply, FtpError>,
) -> Result<Option<StoredVersion>, FtpError> {
    let absent = |r: &Result<Reply, FtpError>| matches!(r, Err(e) if e.reply_code() == Some(550));
    if absent(&size) && absent(&time) {
        return Ok(None);
    }
    // One of the two says the file is there: the other's 550 only means it cannot tell.
    let unknown = |e: &FtpError| e.is_unsupported() || e.reply_code() == Some(550);
    let size = match size {
        Ok(reply) => Some(size_of(&reply)?),
        Err(e) if unknown(&e) => None,
        Err(e) => return Err(e),
    };
    let modified = match time {
        Ok(reply) => Some(time_of(&reply)?),
        Err(e) if unknown(&e) => None,
        Err(e) => return Err(e),
    };
    Ok(Some(StoredVersion { size, modified }))
}

/// The path in a 257 reply: between double quotes, where two quotes stand for one
/// (RFC 959, appendix II).
fn quoted_path(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|&b| b == b'"')? + 1;
    let mut path = Vec::new();
    let mut i = start;
    loop {
        match (bytes.get(i)?, bytes.get(i + 1)) {
            (b'"', Some(b'"')) => {
                path.push(b'"');
                i += 2;
            }
            (b'"', _) => return (!path.is_empty()).then_some(path),
            (&b, _) => {
                path.push(b);
                i += 1;
            }
        }
    }
}

/// The number in a 213 reply to SIZE.
fn size_of(reply: &Reply) -> Result<u64, FtpError> {
    reply
        .first_line()
        .parse::<u64>()
        .map_err(|_| FtpError::Protocol {
            step: "SIZE".into(),
            detail: format!("not a size: {reply}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pwd_replies_give_their_quoted_path() {
        let path = |text: &str| quoted_path(text).map(|p| String::from_utf8(p).unwrap());
        assert_eq!(
            path(r#""/" is the current directory"#).as_deref(),
            Some("/")
        );
        assert_eq!(
            path(r#""/home/a ""b"" c" is current directory."#).as_deref(),
            Some(r#"/home/a "b" c"#)
        );
        assert_eq!(path("no quotes here"), None);
        assert_eq!(path(r#""unterminated"#), None);
        assert_eq!(path(r#""" empty"#), None);
    }

    #[test]
    fn arguments_with_line_breaks_are_refused() {
        assert!(Command::with_arg(&verb::RETR, b"a\r\nDELE b").is_err());
        assert!(Command::with_arg(&verb::RETR, b"a\0b").is_err());
        let command = Command::with_arg(&verb::RETR, b"dir/f g").unwrap();
        assert_eq!(command.line(), b"RETR dir/f g");
    }

    #[test]
    fn every_command_knows_its_replies() {
        // Replies out of order, as seen from a server that runs each command on its own
        // task: none of them can answer the command they were read for.
        assert!(!verb::MKD.answers(226));
        assert!(verb::MKD.answers(257) && verb::MKD.answers(250));
        assert!(!verb::RNTO.answers(350));
        assert!(verb::RNFR.answers(350) && !verb::RNFR.answers(250));
        assert!(!verb::RETR.answers(213) && !ends_transfer(213));
        assert!(!ends_transfer(150) && !ends_transfer(200));
        assert!(!verb::EPSV.answers(225) && !verb::EPSV.answers(150));
        assert!(!verb::MDTM.answers(426) && !verb::MDTM.answers(229));
        assert!(!verb::NOOP.answers(257) && !verb::PWD.answers(200));
        // RNFR's 450 (the late answer to an RNTO) fits RNFR, but only as a refusal.
        assert!(verb::RNFR.answers(450));
        // Every command accepts the replies any command may get, none of them success.
        for code in ANY_COMMAND {
            assert!(verb::DELE.answers(*code) && !(200..300).contains(code));
        }
    }

    #[test]
    fn a_success_of_one_command_is_no_success_of_most_others() {
        // The success codes of the commands that change the server, and the verbs that
        // must refuse each as an answer.
        let mutations = [
            &verb::DELE,
            &verb::MKD,
            &verb::RMD,
            &verb::RNTO,
            &verb::STOR,
        ];
        for (code, wrong) in [
            (200, &mutations[..]),
            (213, &mutations[..]),
            (226, &mutations[..4]),
            (229, &mutations[..]),
            (
                257,
                &[&verb::DELE, &verb::RMD, &verb::RNTO, &verb::STOR][..],
            ),
            (350, &mutations[..]),
        ] {
            for verb in wrong {
                assert!(!verb.answers(code), "{} answers {code}", verb.name);
            }
        }
    }

    /// Realistic replies of each command ftpsfs sends in a pipeline, success first.
    fn replies_of(verb: &Verb) -> Vec<Reply> {
        let texts: &[(u16, &str)] = match (verb.name, verb.retry) {
            ("MDTM", Retry::Idempotent) => &[(213, "20200102030405"), (550, "No such file.")],
            ("MDTM", Retry::Never) => &[
                (213, "File modification time set."),
                (550, "Could not set file modification time."),
            ],
            ("EPSV", _) => &[
                (229, "Entering Extended Passive Mode (|||20001|)"),
                (425, "Can't open passive port."),
                (500, "EPSV not understood"),
            ],
            ("REST", _) => &[
                (350, "Restart position accepted (4096)."),
                (501, "Bad restart offset."),
            ],
            ("RETR" | "STOR" | "LIST" | "MLSD", _) => &[
                (150, "Opening BINARY mode data connection."),
                (425, "No data connection established"),
                (550, "Failed to open file."),
            ],
            ("RNFR", _) => &[(350, "Ready for RNTO."), (550, "RNFR command failed.")],
            ("RNTO", _) => &[
                (250, "Rename successful."),
                (503, "RNFR required first."),
                (553, "Rename failed."),
            ],
            ("SIZE", _) => &[(213, "1234"), (550, "Could not get file size.")],
            ("MFMT", _) => &[
                (213, "Modify=20200102030405; f"),
                (550, "Could not set time."),
            ],
            ("SITE", _) => &[
                (200, "SITE command successful."),
                (500, "Unknown SITE command."),
                (550, "Permission denied."),
            ],
            ("NOOP", _) => &[(200, "NOOP ok.")],
            ("PWD", _) => &[
                (257, "\"/\" is the current directory"),
                (550, "Permission denied."),
            ],
            (name, _) => panic!("no replies for {name}"),
        };
        texts
            .iter()
            .map(|(code, text)| Reply {
                code: *code,
                lines: vec![text.to_string()],
            })
            .collect()
    }

    /// What ftpsfs would take as a command's positive answer.
    fn positive(verb: &Verb, reply: &Reply) -> bool {
        match verb.name {
            "RNFR" | "REST" => reply.code == 350,
            "RETR" | "STOR" | "LIST" | "MLSD" => reply.code < 300,
            _ => reply.is_success(),
        }
    }

    /// Every order of `items`.
    fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut all = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first);
                all.push(tail);
            }
        }
        all
    }

    #[test]
    fn no_order_of_a_pipeline_s_replies_is_taken_for_a_success_that_was_not() {
        // Every batch of commands ftpsfs sends together.
        let batches: &[&[&Verb]] = &[
            &[&verb::MDTM, &verb::EPSV, &verb::REST, &verb::RETR],
            &[&verb::MDTM, &verb::EPSV, &verb::RETR],
            &[&verb::EPSV, &verb::REST, &verb::RETR],
            &[&verb::EPSV, &verb::STOR],
            &[&verb::EPSV, &verb::MLSD],
            &[&verb::EPSV, &verb::LIST],
            &[&verb::EPSV, &verb::REST],
            &[&verb::RNFR, &verb::RNTO],
            &[&verb::SIZE, &verb::MFMT, &verb::SITE],
            &[&verb::SIZE, &MDTM_SET, &verb::SITE],
            &[&verb::SIZE, &verb::SITE],
            &[&verb::NOOP, &verb::PWD, &verb::NOOP],
        ];
        let mut orders_checked = 0;
        for batch in batches {
            // Every combination of true outcomes.
            let choices: Vec<Vec<Reply>> = batch.iter().map(|v| replies_of(v)).collect();
            let mut pick = vec![0usize; batch.len()];
            loop {
                let truth: Vec<&Reply> = pick.iter().zip(&choices).map(|(&i, c)| &c[i]).collect();
                for order in permutations(&(0..batch.len()).collect::<Vec<_>>()) {
                    orders_checked += 1;
                    // Read in `order`: the reply read for command i is truth[order[i]].
                    let read: Vec<&Reply> = order.iter().map(|&j| truth[j]).collect();
                    if !batch.iter().zip(&read).all(|(v, r)| v.fits(r)) {
                        continue; // out of step: nothing is taken
                    }
                    for (i, verb) in batch.iter().enumerate() {
                        assert!(
                            !positive(verb, read[i]) || positive(verb, truth[i]),
                            "{}: {} taken for its answer, but it got {} (batch {:?}, order {order:?})",
                            verb.name,
                            read[i],
                            truth[i],
                            batch.iter().map(|v| v.name).collect::<Vec<_>>()
                        );
                    }
                }
                // The next combination.
                let mut k = 0;
                loop {
                    if k == pick.len() {
                        break;
                    }
                    pick[k] += 1;
                    if pick[k] < choices[k].len() {
                        break;
                    }
                    pick[k] = 0;
                    k += 1;
                }
                if k == pick.len() {
                    break;
                }
            }
        }
        assert!(orders_checked > 1000, "{orders_checked}");
    }

    #[test]
    fn passwords_are_never_shown() {
        let command = Command::with_arg(&verb::PASS, "hunter2").unwrap();
        assert_eq!(command.shown(), "PASS ****");
    }
}
