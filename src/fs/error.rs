//! The filesystem layer's errors, and the one place they become errno values.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::ftp::FtpError;

/// Why a filesystem operation failed.
///
/// Clone, because one failure may answer several callers (a listing shared by a burst of
/// lookups, an upload's failure reported at each later write and at close); the FTP and
/// I/O errors inside are shared, not rewritten, so their details survive.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// No such file or directory (in a fresh listing, or the server said so).
    #[error("no such file or directory")]
    NotFound,
    /// A path component is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// A directory was opened or read as a file.
    #[error("is a directory")]
    IsADirectory,
    /// The name is taken.
    #[error("file exists")]
    AlreadyExists,
    /// A directory to remove still has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// The mount is read-only.
    #[error("read-only file system")]
    ReadOnly,
    /// The server refused access.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// FTP has no way to do this (hard links, symlinks, device files, another owner).
    #[error("not possible over FTP: {0}")]
    NotPermitted(&'static str),
    /// A name longer than the kernel's NAME_MAX (255 bytes).
    #[error("file name too long")]
    NameTooLong,
    /// A name that cannot be sent to the server, or is ftpsfs's own.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A request ftpsfs does not carry out (RENAME_EXCHANGE).
    #[error("not supported: {0}")]
    InvalidRequest(&'static str),
    /// The inode or handle is unknown (forgotten, or never handed out).
    #[error("unknown inode or file handle")]
    BadHandle,
    /// The symlink's target is not known.
    #[error("symlink target unknown")]
    NoLinkTarget,
    /// The file changed on the server while it was being read.
    #[error("the file changed on the server while it was read")]
    Changed,
    /// The whole operation ran past its deadline.
    #[error("operation timed out after {}s", .0.as_secs())]
    TimedOut(Duration),
    /// The local staging file of a write failed (a full cache disk, say).
    #[error("staging file: {0}")]
    Staging(Arc<io::Error>),
    /// The FTP layer failed.
    #[error(transparent)]
    Remote(Arc<FtpError>),
}

impl From<FtpError> for FsError {
    fn from(error: FtpError) -> Self {
        FsError::Remote(Arc::new(error))
    }
}

impl From<io::Error> for FsError {
    fn from(error: io::Error) -> Self {
        FsError::Staging(Arc::new(error))
    }
}

impl FsError {
    /// The errno a system call should fail with. The only place errors become errno.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::AlreadyExists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::ReadOnly => libc::EROFS,
            FsError::PermissionDenied(_) => libc::EACCES,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::InvalidName(_) | FsError::InvalidRequest(_) => libc::EINVAL,
            FsError::BadHandle => libc::EBADF,
            FsError::NoLinkTarget => libc::EIO,
            // mountpoint-s3 and NFS use ESTALE for "it changed under you".
            FsError::Changed => libc::ESTALE,
            FsError::TimedOut(_) => libc::EIO,
            FsError::Staging(e) => match e.raw_os_error() {
                Some(code @ (libc::ENOSPC | libc::EDQUOT)) => code,
                _ => libc::EIO,
            },
            FsError::Remote(e) => remote_errno(e),
        }
    }

    /// True when the operation failed by running out of time (no reply, no connection, no
    /// data): the failures worth remembering for a moment, since trying again right away
    /// would most likely wait just as long. Fast failures are cheap to retry.
    pub fn is_timeout(&self) -> bool {
        match self {
            FsError::TimedOut(_) => true,
            FsError::Remote(e) => matches!(**e, FtpError::Timeout { .. }),
            _ => false,
        }
    }

    /// The FTP error behind this one, if the server or the network failed.
    pub fn remote(&self) -> Option<&FtpError> {
        match self {
            FsError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

fn remote_errno(error: &FtpError) -> i32 {
    match error {
        FtpError::Rejected { reply, .. } => {
            let text = reply.text().to_ascii_lowercase();
            let says = |words: &[&str]| words.iter().any(|w| text.contains(w));
            match reply.code {
                // 452: insufficient storage; 552: storage allocation (quota) exceeded.
                452 => libc::ENOSPC,
                552 => libc::EDQUOT,
                // Other codes, and servers that say it in words with a generic code.
                _ if says(&["no space", "disk full", "not enough space"]) => libc::ENOSPC,
                _ if says(&["quota"]) => libc::EDQUOT,
                // 550 covers "no such file", "permission denied" and more; the words decide.
                550 | 450 | 553 if says(&["permission", "denied", "access", "not allowed"]) => {
                    libc::EACCES
                }
                550 | 553 if says(&["exists"]) => libc::EEXIST,
                550 | 553 if says(&["too long"]) => libc::ENAMETOOLONG,
                550 | 450 if says(&["not empty"]) => libc::ENOTEMPTY,
                550 | 450 => libc::ENOENT,
                // 553: "file name not allowed" (vsftpd: "Could not create file.").
                553 => libc::EACCES,
                530 | 532 => libc::EACCES,
                _ => libc::EIO,
            }
        }
        FtpError::InvalidPath { .. } => libc::EINVAL,
        FtpError::PathTooLong { .. } => libc::ENAMETOOLONG,
        FtpError::Connect { .. }
        | FtpError::Proxy { .. }
        | FtpError::Timeout { .. }
        | FtpError::Tls { .. }
        | FtpError::Io { .. }
        | FtpError::Closed { .. }
        | FtpError::DataRejected { .. }
        | FtpError::Protocol { .. }
        | FtpError::Desync { .. }
        | FtpError::TicketsExhausted
        | FtpError::TlsConfig(_)
        | FtpError::Pool(_)
        | FtpError::Unconfirmed { .. } => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::Reply;

    fn rejected(code: u16, text: &str) -> FsError {
        FsError::from(FtpError::Rejected {
            command: "RETR x".into(),
            reply: Reply {
                code,
                lines: vec![text.into()],
            },
        })
    }

    #[test]
    fn server_replies_map_to_errno() {
        assert_eq!(rejected(550, "Failed to open file.").errno(), libc::ENOENT);
        assert_eq!(
            rejected(550, "x: No such file or directory").errno(),
            libc::ENOENT
        );
        assert_eq!(rejected(550, "Permission denied.").errno(), libc::EACCES);
        assert_eq!(rejected(530, "Login incorrect.").errno(), libc::EACCES);
        assert_eq!(rejected(421, "Timeout.").errno(), libc::EIO);
        assert_eq!(
            FsError::from(FtpError::Timeout {
                step: "x".into(),
                after: Duration::from_secs(1)
            })
            .errno(),
            libc::EIO
        );
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
    }

    #[test]
    fn upload_failures_map_to_errno() {
        assert_eq!(
            rejected(452, "Insufficient storage space.").errno(),
            libc::ENOSPC
        );
        assert_eq!(
            rejected(552, "Exceeded storage allocation.").errno(),
            libc::EDQUOT
        );
        assert_eq!(
            rejected(451, "Transfer aborted. No space left on device").errno(),
            libc::ENOSPC
        );
        assert_eq!(
            rejected(451, "Local error in processing.").errno(),
            libc::EIO
        );
        assert_eq!(
            rejected(426, "Failure reading network stream.").errno(),
            libc::EIO
        );
        assert_eq!(
            rejected(553, "Could not create file.").errno(),
            libc::EACCES
        );
        assert_eq!(
            rejected(550, "x: Overwrite permission denied").errno(),
            libc::EACCES
        );
        assert_eq!(rejected(550, "d: File exists").errno(), libc::EEXIST);
        assert_eq!(
            rejected(550, "Can't remove directory: Directory not empty").errno(),
            libc::ENOTEMPTY
        );
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::from(full).errno(), libc::ENOSPC);
    }

    #[test]
    fn clones_keep_the_ftp_error() {
        let lost = FsError::from(FtpError::Closed { step: "x".into() });
        let copy = lost.clone();
        assert!(copy.remote().is_some_and(FtpError::connection_lost));
        for error in [
            rejected(550, "Permission denied."),
            rejected(550, "no such file"),
            rejected(425, "x"),
            FsError::Changed,
        ] {
            assert_eq!(error.clone().errno(), error.errno(), "{error}");
        }
    }
}
