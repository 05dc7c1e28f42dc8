//! The filesystem layer's errors, and the one place they become errno values.

use std::time::Duration;

use crate::ftp::FtpError;

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
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
    /// The mount is read-only.
    #[error("read-only file system")]
    ReadOnly,
    /// The server refused access.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A name longer than the kernel's NAME_MAX (255 bytes).
    #[error("file name too long")]
    NameTooLong,
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
    /// The FTP layer failed.
    #[error(transparent)]
    Remote(#[from] FtpError),
}

impl Clone for FsError {
    fn clone(&self) -> Self {
        match self {
            FsError::NotFound => FsError::NotFound,
            FsError::NotADirectory => FsError::NotADirectory,
            FsError::IsADirectory => FsError::IsADirectory,
            FsError::ReadOnly => FsError::ReadOnly,
            FsError::PermissionDenied(text) => FsError::PermissionDenied(text.clone()),
            FsError::NameTooLong => FsError::NameTooLong,
            FsError::BadHandle => FsError::BadHandle,
            FsError::NoLinkTarget => FsError::NoLinkTarget,
            FsError::Changed => FsError::Changed,
            FsError::TimedOut(after) => FsError::TimedOut(*after),
            // FtpError holds io::Error, which is not Clone: keep the errno-relevant shape.
            FsError::Remote(e) => match remote_errno(e) {
                libc::ENOENT => FsError::NotFound,
                libc::EACCES => FsError::PermissionDenied(e.to_string()),
                _ => match e {
                    FtpError::Pool(text) => FsError::Remote(FtpError::Pool(text.clone())),
                    FtpError::Timeout { step, after } => FsError::Remote(FtpError::Timeout {
                        step: step.clone(),
                        after: *after,
                    }),
                    _ => FsError::Remote(FtpError::Pool(e.to_string())),
                },
            },
        }
    }
}

impl FsError {
    /// The errno a system call should fail with. The only place errors become errno.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::PermissionDenied(_) => libc::EACCES,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::BadHandle => libc::EBADF,
            FsError::NoLinkTarget => libc::EIO,
            // mountpoint-s3 and NFS use ESTALE for "it changed under you".
            FsError::Changed => libc::ESTALE,
            FsError::TimedOut(_) => libc::EIO,
            FsError::Remote(e) => remote_errno(e),
        }
    }

    /// True when the operation failed by running out of time (no reply, no connection, no
    /// data): the failures worth remembering for a moment, since trying again right away
    /// would most likely wait just as long. Fast failures are cheap to retry.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            FsError::TimedOut(_) | FsError::Remote(FtpError::Timeout { .. })
        )
    }
}

fn remote_errno(error: &FtpError) -> i32 {
    match error {
        FtpError::Rejected { reply, .. } => match reply.code {
            // 550 covers both "no such file" and "permission denied"; the words decide.
            550 | 450 | 553 => {
                let text = reply.text().to_ascii_lowercase();
                if text.contains("permission") || text.contains("denied") || text.contains("access")
                {
                    libc::EACCES
                } else {
                    libc::ENOENT
                }
            }
            530 | 532 => libc::EACCES,
            _ => libc::EIO,
        },
        FtpError::InvalidPath { .. } => libc::EINVAL,
        FtpError::Connect { .. }
        | FtpError::Timeout { .. }
        | FtpError::Tls { .. }
        | FtpError::Io { .. }
        | FtpError::Closed { .. }
        | FtpError::DataRejected { .. }
        | FtpError::Protocol { .. }
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
        FsError::Remote(FtpError::Rejected {
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
            FsError::Remote(FtpError::Timeout {
                step: "x".into(),
                after: Duration::from_secs(1)
            })
            .errno(),
            libc::EIO
        );
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
    }

    #[test]
    fn clones_keep_their_errno() {
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
