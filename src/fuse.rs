//! The thin adapter between fuser and the filesystem logic: the only code that knows
//! fuser's types. Every callback hands its work to a tokio task and returns at once, so a
//! slow server never blocks the kernel's request loop (one slow read does not stall `ls`).
//! Every operation, changes included, goes to [`FtpFs`]; whether the mount is read-only
//! is the filesystem's setting.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::Instrument;

use crate::fs::ops::namespace::RenameFlags as FsRenameFlags;
use crate::fs::write::file::{Closer, OpenMode, SetAttr};
use crate::fs::{Attr, FsError, FtpFs, NodeKind, Opened};

/// How long the kernel may trust the attributes of a file being written: a moment,
/// because its size and time change with every write and upload (never zero: Linux
/// filesystems behave badly with a zero TTL).
const CHANGING_TTL: Duration = Duration::from_secs(1);

/// Bytes reported free on a writable mount. FTP cannot tell free space; a volume that
/// looks full would make file browsers refuse to copy, so it looks ample, as mountpoint-s3
/// and rclone mount report theirs, and a full disk shows as ENOSPC or EDQUOT at close.
const UNKNOWN_FREE_BYTES: u64 = 1 << 50;

/// Bridges fuser's callbacks to [`FtpFs`].
pub struct FuseAdapter {
    fs: Arc<FtpFs>,
    runtime: Handle,
    ttl: Duration,
    /// Where the filesystem is mounted, and its mount id once known (see [`closer_of`]).
    mount: Arc<MountIdentity>,
    in_flight: Arc<InFlight>,
}

/// The operations the kernel sent that are still running. The kernel lets an unmount
/// complete while the release of a file closed just before is still being served (its
/// upload on its way): the mount waits for them before it lets go of its connections.
#[derive(Debug, Default)]
pub struct InFlight {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// One running operation, counted until dropped.
struct Running(Arc<InFlight>);

impl Drop for Running {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl InFlight {
    fn start(self: &Arc<Self>) -> Running {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Running(self.clone())
    }

    /// Operations running now.
    pub fn running(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no operation runs, for at most `limit`; returns how many still do.
    pub async fn wait(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let running = self.running();
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return self.running();
            }
        }
    }
}

/// The mount as the kernel numbers it in `/proc/PID/fdinfo`.
struct MountIdentity {
    mountpoint: PathBuf,
    id: OnceLock<u64>,
}

impl MountIdentity {
    /// The mount's id, read from `/proc/self/mountinfo` the first time (the mount exists
    /// by the time a file on it is closed).
    fn id(&self) -> Option<u64> {
        if let Some(id) = self.id.get() {
            return Some(*id);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let id = fuse_mount_id(&mountinfo, self.mountpoint.as_os_str().as_bytes())?;
        Some(*self.id.get_or_init(|| id))
    }
}

impl FuseAdapter {
    /// An adapter running `fs`'s operations on `runtime`.
    pub fn new(fs: Arc<FtpFs>, runtime: Handle, mountpoint: &Path) -> Self {
        // The kernel caches entries and attributes for as long as our listings are
        // trusted; never zero, since Linux behaves badly with a zero TTL.
        let ttl = fs.config().dir_ttl.max(Duration::from_secs(1));
        let mountpoint =
            std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
        let mount = Arc::new(MountIdentity {
            mountpoint,
            id: OnceLock::new(),
        });
        Self {
            fs,
            runtime,
            ttl,
            mount,
            in_flight: Arc::default(),
        }
    }

    /// The count of operations still running, to wait for after the unmount.
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }

    fn ttl_of(&self, attr: &Attr) -> Duration {
        if attr.changing {
            CHANGING_TTL.min(self.ttl)
        } else {
            self.ttl
        }
    }

    /// The span of one operation: what it is and the path it is about. At debug level it
    /// is the context of every line the operation logs, its FTP commands included.
    fn span(&self, operation: &'static str, ino: u64, name: Option<&[u8]>) -> tracing::Span {
        tracing::debug_span!("op", op = %operation, path = %self.fs.shown_path(ino, name))
    }

    /// Runs an operation's `work` on the runtime inside `span`, and logs its duration.
    fn spawn(
        &self,
        span: tracing::Span,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let running = self.in_flight.start();
        self.runtime.spawn(async move {
            let _running = running;
            let started = std::time::Instant::now();
            work.instrument(span.clone()).await;
            tracing::debug!(
                parent: &span,
                ms = %format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
                "done"
            );
        });
    }

    /// Runs an operation that answers with an entry (lookup, mkdir, mknod).
    fn entry_reply(
        &self,
        operation: &'static str,
        span: tracing::Span,
        reply: ReplyEntry,
        work: impl std::future::Future<Output = Result<Attr, FsError>> + Send + 'static,
    ) {
        let (adapter, fs) = (self.timing(), self.fs.clone());
        self.spawn(span, async move {
            match work.await {
                Ok(attr) => {
                    // Counted before the kernel can forget it.
                    fs.remember(attr.ino);
                    reply.entry(&adapter.ttl_of(&attr), &file_attr(&attr), Generation(0))
                }
                Err(e) => reply.error(errno(operation, &e)),
            }
        });
    }

    /// Runs an operation that answers with nothing but success or an error.
    fn empty_reply(
        &self,
        operation: &'static str,
        span: tracing::Span,
        reply: ReplyEmpty,
        work: impl std::future::Future<Output = Result<(), FsError>> + Send + 'static,
    ) {
        self.spawn(span, async move {
            match work.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(operation, &e)),
            }
        });
    }

    fn timing(&self) -> Timing {
        Timing { ttl: self.ttl }
    }
}

/// The TTLs of an adapter, for tasks that outlive the callback.
#[derive(Clone, Copy)]
struct Timing {
    ttl: Duration,
}

impl Timing {
    fn ttl_of(&self, attr: &Attr) -> Duration {
        if attr.changing {
            CHANGING_TTL.min(self.ttl)
        } else {
            self.ttl
        }
    }
}

/// The extended attributes of the mount's root that give its live statistics (see
/// `ftpsfs stats`): as text, and as JSON. They are not listed, so `cp -a` and `rsync -X`
/// never copy them.
pub const STATS_XATTR: &str = "user.ftpsfs.stats";
/// See [`STATS_XATTR`].
pub const STATS_JSON_XATTR: &str = "user.ftpsfs.stats.json";
/// Setting this extended attribute of the mount's root asks the write-back queue to
/// `retry [PATH]` or `discard PATH` (what `ftpsfs queue` does).
pub const QUEUE_XATTR: &str = "user.ftpsfs.queue";

/// Errors returned to programs so far, by errno. One process serves one mount.
static ERRORS_RETURNED: Mutex<BTreeMap<i32, u64>> = Mutex::new(BTreeMap::new());

fn errno(operation: &str, error: &FsError) -> Errno {
    let code = error.errno();
    if code == libc::ENOENT {
        tracing::trace!("{operation}: {error}");
    } else {
        tracing::debug!("{operation}: {error}");
    }
    *ERRORS_RETURNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(code)
        .or_default() += 1;
    Errno::from_i32(code)
}

/// The errors returned so far, by errno name.
fn errors_returned() -> BTreeMap<String, u64> {
    ERRORS_RETURNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(&code, &count)| (errno_name(code), count))
        .collect()
}

/// The symbolic name of an errno the filesystem returns.
fn errno_name(code: i32) -> String {
    let name = match code {
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EROFS => "EROFS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ESTALE => "ESTALE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EBADF => "EBADF",
        libc::EXDEV => "EXDEV",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOSYS => "ENOSYS",
        libc::EBUSY => "EBUSY",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        other => return format!("errno {other}"),
    };
    name.to_string()
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: attr.blksize,
        flags: 0,
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
    }
}

fn open_mode(flags: OpenFlags) -> OpenMode {
    let access = flags.acc_mode();
    OpenMode {
        read: access != OpenAccMode::O_WRONLY,
        write: access != OpenAccMode::O_RDONLY,
        truncate: flags.0 & libc::O_TRUNC != 0,
    }
}

fn fopen_flags(opened: &Opened) -> FopenFlags {
    if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// Longest wait for `/proc/PID/` of a process closing a file it wrote.
const CLOSER_CHECK_LIMIT: Duration = Duration::from_secs(1);

/// Who closes a file, from the closing writer's exit code and, for a new file nothing
/// was written to yet (`unwritten`, its inode), whether the process still holds it on
/// another descriptor. A killed writer is a bystander while another process that wrote
/// the same descriptor (`others`) lives on: a shell whose command was killed in the
/// middle of `{ ...; } > file` goes on writing. The reads of `/proc` run apart, with a
/// time limit: a process in the middle of execve holds locks that the read waits for,
/// and the request loop must never wait on the process it serves. A process that cannot
/// be read in time is taken for one that closes its file normally.
async fn closer_of(
    pid: u32,
    unwritten: Option<u64>,
    others: Vec<u32>,
    mount: Arc<MountIdentity>,
) -> Closer {
    let check = tokio::task::spawn_blocking(move || {
        if killed_by_signal(pid) {
            let survivor = thread_group(pid)
                .is_some_and(|group| others.iter().any(|&other| lives_apart(other, group)));
            return if survivor {
                Closer::Bystander
            } else {
                Closer::KilledProcess
            };
        }
        let keeps_open = unwritten.is_some_and(|ino| {
            mount
                .id()
                .is_some_and(|mount_id| holds_open(pid, mount_id, ino))
        });
        if keeps_open {
            Closer::ProgramKeepsOpen
        } else {
            Closer::Program
        }
    });
    match tokio::time::timeout(CLOSER_CHECK_LIMIT, check).await {
        Ok(Ok(closer)) => {
            if closer != Closer::Program {
                tracing::debug!(pid, ?closer, "who closes the file");
            }
            closer
        }
        Ok(Err(_)) => Closer::Program,
        Err(_) => {
            tracing::debug!(pid, "could not read the closing process's state in time");
            Closer::Program
        }
    }
}

/// Whether process `pid` has a descriptor open on inode `ino` of mount `mount_id`. The
/// descriptor being closed is already gone from its table when the flush arrives.
fn holds_open(pid: u32, mount_id: u64, ino: u64) -> bool {
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    descriptors.flatten().any(|fd| {
        std::fs::read_to_string(fd.path())
            .ok()
            .and_then(|info| fdinfo_file(&info))
            == Some((mount_id, ino))
    })
}

/// The mount id and inode of a `/proc/PID/fdinfo/FD`.
fn fdinfo_file(fdinfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        fdinfo.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().parse::<u64>().ok()
        })
    };
    Some((field("mnt_id")?, field("ino")?))
}

/// The id of the newest FUSE mount on `mountpoint` in a `/proc/self/mountinfo`.
fn fuse_mount_id(mountinfo: &str, mountpoint: &[u8]) -> Option<u64> {
    mountinfo.lines().rev().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let is_fuse = filesystem.starts_with("fuse");
        (is_fuse && unescape_mountinfo(fields.get(4)?) == mountpoint)
            .then(|| fields[0].parse().ok())?
    })
}

/// A mountinfo path: space, tab, newline and backslash come as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut path = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                path.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            None => {
                path.push(bytes[i]);
                i += 1;
            }
        }
    }
    path
}

/// Whether the process `pid` is exiting because a signal killed it, read from the exit
/// code field of its `/proc/PID/stat` (set before the kernel closes its files).
fn killed_by_signal(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| exit_signal(&stat))
            .is_some_and(|signal| signal != 0)
}

/// The process (thread group) that thread `pid` belongs to, from `/proc/PID/status`.
fn thread_group(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "Tgid")?.parse().ok()
}

/// Whether `pid` is alive and not a thread of process `group` (which is exiting).
fn lives_apart(pid: u32, group: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let dead = status_field(&status, "State")
        .is_none_or(|state| state.starts_with('Z') || state.starts_with('X'));
    let tgid = status_field(&status, "Tgid").and_then(|t| t.parse::<u32>().ok());
    !dead && tgid.is_some_and(|tgid| tgid != group)
}

/// The value of field `name` in a `/proc/PID/status`.
fn status_field<'s>(status: &'s str, name: &str) -> Option<&'s str> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        Some(value.trim())
    })
}

/// The signal in the exit code (field 52) of a `/proc/PID/stat` line: what `waitpid`
/// would report, whose low 7 bits are the killing signal, 0 for a normal exit.
fn exit_signal(stat: &str) -> Option<i32> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let exit_code: i32 = after_name.split_whitespace().nth(49)?.parse().ok()?;
    Some(exit_code & 0x7f)
}

fn system_time(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // readdirplus fills attributes during `ls -l`, saving a getattr per entry.
        // Atomic O_TRUNC: the truncation comes with the open instead of as a setattr
        // after it, so a shell's `>` (open, dup, close) is known for one and does not
        // upload an empty file before the program has written anything.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ATOMIC_O_TRUNC;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::debug!("kernel lacks {missing:?}");
        }
        // Let the kernel read ahead up to one cache block, so a sequential reader keeps
        // several requests in flight instead of one 128 KiB read at a time.
        let readahead = self.fs.config().block_size.min(u64::from(u32::MAX)) as u32;
        if let Err(nearest) = config.set_max_readahead(readahead) {
            let _ = config.set_max_readahead(nearest);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.entry_reply(
            "lookup",
            self.span("lookup", parent.0, Some(&name)),
            reply,
            async move { fs.lookup(parent.0, &name).await },
        );
    }

    // batch_forget's default calls this for each node.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, timing) = (self.fs.clone(), self.timing());
        self.spawn(self.span("getattr", ino.0, None), async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&timing.ttl_of(&attr), &file_attr(&attr)),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // FTP keeps no access time: a change of atime alone changes nothing.
        let changes = SetAttr {
            size,
            mtime: mtime.map(system_time),
            mode,
            uid,
            gid,
        };
        let (fs, timing) = (self.fs.clone(), self.timing());
        self.spawn(self.span("setattr", ino.0, None), async move {
            match fs.setattr(ino.0, changes).await {
                Ok(attr) => reply.attr(&timing.ttl_of(&attr), &file_attr(&attr)),
                Err(e) => reply.error(errno("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn(self.span("readlink", ino.0, None), async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let regular = mode & libc::S_IFMT == libc::S_IFREG;
        let span = self.span("mknod", parent.0, Some(&name));
        self.entry_reply("mknod", span, reply, async move {
            fs.mknod(parent.0, &name, mode & !umask, regular).await
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let span = self.span("mkdir", parent.0, Some(&name));
        self.entry_reply("mkdir", span, reply, async move {
            fs.mkdir(parent.0, &name, mode & !umask).await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.empty_reply(
            "unlink",
            self.span("unlink", parent.0, Some(&name)),
            reply,
            async move { fs.unlink(parent.0, &name).await },
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.empty_reply(
            "rmdir",
            self.span("rmdir", parent.0, Some(&name)),
            reply,
            async move { fs.rmdir(parent.0, &name).await },
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        match self.fs.symlink() {
            Ok(attr) => reply.entry(&self.ttl_of(&attr), &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno("symlink", &e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let (name, new_name) = (name.as_bytes().to_vec(), new_name.as_bytes().to_vec());
        let flags = FsRenameFlags {
            no_replace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        let span = self.span("rename", parent.0, Some(&name));
        self.empty_reply("rename", span, reply, async move {
            fs.rename(parent.0, &name, new_parent.0, &new_name, flags)
                .await
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _new_parent: INodeNo,
        _new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link() {
            Ok(attr) => reply.entry(&self.ttl_of(&attr), &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno("link", &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, pid) = (self.fs.clone(), req.pid());
        let how = open_mode(flags);
        self.spawn(self.span("open", ino.0, None), async move {
            match fs.open(ino.0, how, pid).await {
                Ok(opened) => reply.opened(FileHandle(opened.handle), fopen_flags(&opened)),
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, timing, name) = (self.fs.clone(), self.timing(), name.as_bytes().to_vec());
        let (how, pid) = (open_mode(OpenFlags(flags)), req.pid());
        self.spawn(self.span("create", parent.0, Some(&name)), async move {
            match fs.create(parent.0, &name, mode & !umask, how, pid).await {
                Ok((attr, opened)) => {
                    fs.remember(attr.ino);
                    reply.created(
                        &timing.ttl_of(&attr),
                        &file_attr(&attr),
                        Generation(0),
                        FileHandle(opened.handle),
                        fopen_flags(&opened),
                    )
                }
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let span = tracing::debug_span!(
            "op",
            op = %"read",
            path = %self.fs.shown_path(ino.0, None),
            offset,
            size
        );
        self.spawn(span, async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (fs, data, pid) = (self.fs.clone(), data.to_vec(), req.pid());
        let span = tracing::debug_span!(
            "op",
            op = %"write",
            path = %self.fs.shown_path(ino.0, None),
            offset,
            size = data.len()
        );
        self.spawn(span, async move {
            match fs.write(fh.0, offset, data, pid).await {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (fs, mount) = (self.fs.clone(), self.mount.clone());
        let pid = req.pid();
        let span = self.span("flush", ino.0, None);
        self.empty_reply("flush", span, reply, async move {
            let closer = if fs.is_writer(fh.0, pid) {
                let unwritten = fs.unwritten_new_file(fh.0).await;
                let others = fs.other_writers(fh.0, pid);
                closer_of(pid, unwritten, others, mount).await
            } else {
                Closer::Bystander
            };
            fs.flush(fh.0, closer).await
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let span = self.span("fsync", ino.0, None);
        self.empty_reply("fsync", span, reply, async move { fs.fsync(fh.0).await });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn(self.span("release", ino.0, None), async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.spawn(self.span("opendir", ino.0, None), async move {
            match fs.opendir(ino.0).await {
                Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let filled = self.fs.fill_dir(fh.0, offset, false, |entry| {
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                file_type(entry.attr.kind),
                OsStr::from_bytes(&entry.name),
            )
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // The kernel takes a reference to every entry but `.` and `..`: fill_dir counts
        // those the reply holds.
        let filled = self.fs.fill_dir(fh.0, offset, true, |entry| {
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                OsStr::from_bytes(&entry.name),
                &self.ttl_of(&entry.attr),
                &file_attr(&entry.attr),
                Generation(0),
            )
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    // Answering getxattr at all has a price: the kernel no longer learns (from ENOSYS)
    // that this filesystem has no attributes, so it asks for security.capability before
    // each write(2). That is one round trip to this process, answered at once without the
    // network.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes();
        let json = name == STATS_JSON_XATTR.as_bytes();
        if ino.0 != crate::fs::meta::inode::ROOT_INODE || !(json || name == STATS_XATTR.as_bytes())
        {
            // FTP keeps no extended attributes.
            reply.error(Errno::from_i32(libc::ENODATA));
            return;
        }
        let mut report = self.fs.report();
        report.errors = errors_returned();
        let text = if json {
            report.to_json()
        } else {
            report.to_text()
        };
        let len = text.len() as u32;
        if size == 0 {
            reply.size(len);
        } else if len > size {
            reply.error(Errno::from_i32(libc::ERANGE));
        } else {
            reply.data(text.as_bytes());
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if ino.0 != crate::fs::meta::inode::ROOT_INODE || name.as_bytes() != QUEUE_XATTR.as_bytes()
        {
            reply.error(Errno::from_i32(libc::ENOTSUP));
            return;
        }
        let fs = self.fs.clone();
        let request = value.to_vec();
        let span = self.span("queue", ino.0, None);
        self.empty_reply("setxattr", span, reply, async move {
            let touched = fs.queue_request(&request).await?;
            tracing::info!(
                request = %request.escape_ascii(),
                items = touched,
                "write-back queue request"
            );
            if touched == 0 {
                return Err(crate::fs::FsError::NotFound);
            }
            Ok(())
        });
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let block = self.fs.config().block_size as u32;
        let free = if self.fs.config().read_only {
            0
        } else {
            UNKNOWN_FREE_BYTES / u64::from(block)
        };
        reply.statfs(free, free, free, 0, 0, block, 255, block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_a_killed_process() {
        let stat = |name: &str, exit_code: i32| {
            let mut fields = vec!["0"; 49];
            fields.push("0");
            let mut line = format!("1234 ({name}) R");
            for field in &fields[..48] {
                line.push(' ');
                line.push_str(field);
            }
            line.push_str(&format!(" {exit_code}"));
            line
        };
        assert_eq!(exit_signal(&stat("cp", libc::SIGKILL)), Some(libc::SIGKILL));
        assert_eq!(
            exit_signal(&stat("a (b) c", libc::SIGTERM)),
            Some(libc::SIGTERM)
        );
        // exit(3): the status is in the second byte, no signal.
        assert_eq!(exit_signal(&stat("cp", 3 << 8)), Some(0));
        assert_eq!(exit_signal(&stat("cp", 0)), Some(0));
        assert_eq!(exit_signal("garbage"), None);
        // This test process is alive and well.
        assert!(!killed_by_signal(std::process::id()));
    }

    #[test]
    fn a_survivor_is_a_live_process_apart_from_the_killed_one() {
        let own = std::process::id();
        assert_eq!(thread_group(own), Some(own));
        assert!(!lives_apart(own, own), "its own process");
        assert!(lives_apart(own, 1));
        // A child that exited and was not waited for is a zombie: no writer any more.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{zombie}/status"))
            .is_ok_and(|s| status_field(&s, "State").is_some_and(|st| !st.starts_with('Z')))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!lives_apart(zombie, own));
        child.wait().unwrap();
        assert!(!lives_apart(zombie, own), "reaped");
    }

    #[test]
    fn descriptors_are_matched_to_the_mount_and_inode() {
        let fdinfo = "pos:\t0\nflags:\t0100001\nmnt_id:\t412\nino:\t7\n";
        assert_eq!(fdinfo_file(fdinfo), Some((412, 7)));
        assert_eq!(fdinfo_file("pos:\t0\nflags:\t02\n"), None);
        let mountinfo = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
411 27 0:60 / /mnt/my\\040ftp rw,nosuid,nodev - fuse.sshfs host: rw
412 27 0:61 / /mnt/my\\040ftp rw,nosuid,nodev,relatime - fuse.ftpsfs ftps://h/ rw
413 27 0:62 / /mnt/other rw - fuse.ftpsfs ftps://h/ rw
414 27 0:63 / /mnt/plain rw - ext4 /dev/sda1 rw
";
        // Mounted over another FUSE mount: the newest one.
        assert_eq!(fuse_mount_id(mountinfo, b"/mnt/my ftp"), Some(412));
        assert_eq!(fuse_mount_id(mountinfo, b"/mnt/other"), Some(413));
        assert_eq!(fuse_mount_id(mountinfo, b"/mnt/plain"), None);
        assert_eq!(fuse_mount_id(mountinfo, b"/mnt/my"), None);
        assert_eq!(unescape_mountinfo(r"a\134b\011c\12"), b"a\\b\tc\\12");
        // This process's own descriptor 0 is on some mount, and not on inode 0 of it.
        let own = std::fs::read_to_string("/proc/self/fdinfo/0").unwrap();
        let (mount_id, ino) = fdinfo_file(&own).unwrap();
        assert!(holds_open(std::process::id(), mount_id, ino));
        assert!(!holds_open(std::process::id(), mount_id, u64::MAX));
    }
}
