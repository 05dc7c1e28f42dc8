//! The FTP commands: queries, listings and transfers.

use std::time::{SystemTime, UNIX_EPOCH};

use super::data::DataConnection;
use super::ControlConnection;
use crate::ftp::error::FtpError;
use crate::ftp::listing::{self, Entry, Listing, ListingFormat, Timestamp};
use crate::ftp::reply::Reply;

/// Largest listing body accepted; bounds memory against a hostile or broken server.
pub const MAX_LISTING_BYTES: usize = 256 * 1024 * 1024;

impl ControlConnection {
    /// NOOP: proves the connection is alive and keeps idle-timeouts at bay.
    pub async fn noop(&mut self) -> Result<(), FtpError> {
        self.expect_success("NOOP").await.map(|_| ())
    }

    /// The size of a file in bytes (SIZE, RFC 3659).
    pub async fn size(&mut self, path: &[u8]) -> Result<u64, FtpError> {
        let reply = self.path_command("SIZE", path, 213).await?;
        reply
            .first_line()
            .parse::<u64>()
            .map_err(|_| FtpError::Protocol {
                step: "SIZE".into(),
                detail: format!("not a size: {reply}"),
            })
    }

    /// The modification time of a file (MDTM, RFC 3659), UTC.
    pub async fn modified(&mut self, path: &[u8]) -> Result<Timestamp, FtpError> {
        let reply = self.path_command("MDTM", path, 213).await?;
        let fact = format!("modify={};type=file; x", reply.first_line());
        listing::parse_mlsd_line(fact.as_bytes())
            .ok()
            .flatten()
            .and_then(|entry| entry.modified)
            .ok_or_else(|| FtpError::Protocol {
                step: "MDTM".into(),
                detail: format!("not a time: {reply}"),
            })
    }

    /// The facts of one file or directory (MLST, RFC 3659).
    pub async fn stat(&mut self, path: &[u8]) -> Result<Entry, FtpError> {
        let reply = self.path_command("MLST", path, 250).await?;
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
        verb: &str,
        path: &[u8],
        expected: u16,
    ) -> Result<Reply, FtpError> {
        let command = path_command(verb, path)?;
        let reply = self.command_bytes(&command).await?;
        if reply.code == expected {
            Ok(reply)
        } else {
            Err(FtpError::Rejected {
                command: String::from_utf8_lossy(&command).into_owned(),
                reply,
            })
        }
    }

    /// Lists a directory: MLSD when the server has it, else `LIST -a` (vsftpd has no MLSD).
    pub async fn list(&mut self, path: &[u8]) -> Result<Listing, FtpError> {
        let format = if self.features.mlsd {
            ListingFormat::Mlsd
        } else {
            ListingFormat::List
        };
        self.list_as(path, format).await
    }

    /// Lists a directory in the given format: `LIST -a` shows symlink targets, MLSD does not.
    pub async fn list_as(
        &mut self,
        path: &[u8],
        format: ListingFormat,
    ) -> Result<Listing, FtpError> {
        let verb = match format {
            ListingFormat::Mlsd => "MLSD",
            ListingFormat::List => "LIST -a",
        };
        let command = if path.is_empty() {
            verb.as_bytes().to_vec()
        } else {
            path_command(verb, path)?
        };
        let body = self.read_to_end(&command, MAX_LISTING_BYTES).await?;
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
    pub async fn read_to_end(&mut self, command: &[u8], max: usize) -> Result<Vec<u8>, FtpError> {
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
                    step: String::from_utf8_lossy(command).into_owned(),
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
        let command = path_command("RETR", path)?;
        self.open_data(&command, offset).await
    }
}

pub(super) fn check_command_text(command: &str) -> Result<(), FtpError> {
    if command.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(FtpError::InvalidPath {
            path: command.to_string(),
        })
    } else {
        Ok(())
    }
}

/// `VERB path`, refusing paths that would smuggle in another command.
pub(super) fn path_command(verb: &str, path: &[u8]) -> Result<Vec<u8>, FtpError> {
    if path.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(FtpError::InvalidPath {
            path: String::from_utf8_lossy(path).into_owned(),
        });
    }
    let mut command = Vec::with_capacity(verb.len() + 1 + path.len());
    command.extend_from_slice(verb.as_bytes());
    command.push(b' ');
    command.extend_from_slice(path);
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_line_breaks_are_refused() {
        assert!(path_command("RETR", b"a\r\nDELE b").is_err());
        assert!(path_command("RETR", b"a\0b").is_err());
        assert_eq!(path_command("RETR", b"dir/f g").unwrap(), b"RETR dir/f g");
    }
}
