//! The thin adapter between fuser and the filesystem logic: the only code that knows
//! fuser's types. Every callback hands its work to a tokio task and returns at once, so a
//! slow server never blocks the kernel's request loop (one slow read does not stall `ls`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;

use crate::fs::{Attr, FsError, FtpFs, NodeKind};

/// Bridges fuser's callbacks to [`FtpFs`].
pub struct FuseAdapter {
    fs: Arc<FtpFs>,
    runtime: Handle,
    ttl: Duration,
}

impl FuseAdapter {
    /// An adapter running `fs`'s operations on `runtime`.
    pub fn new(fs: Arc<FtpFs>, runtime: Handle) -> Self {
        // The kernel caches entries and attributes for as long as our listings are
        // trusted; never zero, since Linux behaves badly with a zero TTL.
        let ttl = fs.config().dir_ttl.max(Duration::from_secs(1));
        Self { fs, runtime, ttl }
    }
}

fn errno(operation: &str, error: &FsError) -> Errno {
    let code = error.errno();
    if code == libc::ENOENT {
        tracing::trace!("{operation}: {error}");
    } else {
        tracing::debug!("{operation}: {error}");
    }
    Errno::from_i32(code)
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

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // readdirplus fills attributes during `ls -l`, saving a getattr per entry.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
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
        let (fs, ttl, name) = (self.fs.clone(), self.ttl, name.as_bytes().to_vec());
        self.runtime.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("lookup", &e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.runtime.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        self.runtime.spawn(async move {
            match fs.open(ino.0, write).await {
                Ok(opened) => {
                    let flags = if opened.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(opened.handle), flags)
                }
                Err(e) => reply.error(errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.runtime.spawn(async move {
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
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for entry in entries {
                    let kind = file_type(entry.attr.kind);
                    if reply.add(
                        INodeNo(entry.ino),
                        entry.offset,
                        kind,
                        OsStr::from_bytes(&entry.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
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
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for entry in entries {
                    let attr = file_attr(&entry.attr);
                    let name = OsStr::from_bytes(&entry.name);
                    if reply.add(
                        INodeNo(entry.ino),
                        entry.offset,
                        name,
                        &self.ttl,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
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

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // FTP cannot tell free space; report an empty, read-only volume rather than invent one.
        let block = self.fs.config().block_size as u32;
        reply.statfs(0, 0, 0, 0, 0, block, 255, block);
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }
}
