//! Paths too long for one command line: the connection changes into a parent directory
//! (CWD, in steps) and names the file relative to it.
//!
//! RFC 959 sets no limit on a command line, but servers do: vsftpd answers "500 Input
//! line too long" to a line of 4,095 bytes or more and then hangs up; Pure-FTPd takes
//! about 4 KiB and answers 421 above; ProFTPD stops answering at all to an 8 KB line; the
//! BSD ftpd of old read 512 bytes. A path deep enough (a local path near PATH_MAX, below
//! a mount of a deep remote directory) does not fit.
//!
//! ftpsfs sends paths relative to the login directory, so a connection that changed
//! directory goes back (`CWD` to the path PWD gave at login) before any other path is
//! sent. Nothing changes for the usual path, which fits.

use super::commands::{verb, Command};
use super::ControlConnection;
use crate::ftp::error::FtpError;

/// The longest command line (without CRLF) sent as is: what the most frugal servers in
/// use read (512 bytes with CRLF).
pub(super) const SHORT_LINE: usize = 510;

/// The longest command line sent at all: vsftpd's limit, the smallest of the servers
/// tested that take long lines. Longer ones are refused here, with ENAMETOOLONG, rather
/// than cutting the connection.
pub(super) const LONG_LINE: usize = 4094;

/// Room on a line for the verb and what goes before a path: `SITE UTIME
/// YYYYMMDDHHMMSS ` is the longest of ftpsfs's commands.
const ROOM: usize = 32;

/// How to send a path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// As it is, from the login directory.
    Direct,
    /// Relative to the directory `parent` (changed into first), as `name`.
    Via { parent: &'a [u8], name: &'a [u8] },
}

/// How `path` (relative to the login directory, or absolute) reaches the server.
fn route(path: &[u8]) -> Result<Route<'_>, FtpError> {
    if path.len() + ROOM <= SHORT_LINE {
        return Ok(Route::Direct);
    }
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) if slash > 0 && path.len() - slash - 1 + ROOM <= SHORT_LINE => Ok(Route::Via {
            parent: &path[..slash],
            name: &path[slash + 1..],
        }),
        _ if path.len() + ROOM <= LONG_LINE => Ok(Route::Direct),
        _ => Err(too_long(path)),
    }
}

/// The paths RNFR and RNTO name: relative to the deepest directory both lie in, when
/// they do not fit as they are.
fn rename_route<'a>(from: &'a [u8], to: &'a [u8]) -> Result<(Option<&'a [u8]>, usize), FtpError> {
    if from.len().max(to.len()) + ROOM <= SHORT_LINE {
        return Ok((None, 0));
    }
    // The common directory ends at a slash present in both at the same place.
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let slash = from[..common]
        .iter()
        .rposition(|&b| b == b'/')
        .filter(|&s| s > 0 && to.get(s) == Some(&b'/'));
    let skip = slash.map_or(0, |s| s + 1);
    let longest = from.len().max(to.len()) - skip;
    if longest + ROOM > LONG_LINE {
        return Err(too_long(if from.len() > to.len() { from } else { to }));
    }
    Ok((slash.map(|s| &from[..s]), skip))
}

/// The directories to change into, in turn, to reach `dir`: each step short enough to
/// send (a step is relative to the one before; the first to the login directory).
fn steps(dir: &[u8]) -> Vec<&[u8]> {
    let limit = SHORT_LINE - ROOM;
    let mut steps = Vec::new();
    let mut rest = dir;
    while rest.len() > limit {
        // The last slash that leaves a step short enough; a name alone is never longer
        // than 255 bytes, so there is one (the leading slash of an absolute path aside).
        let cut = rest[..=limit]
            .iter()
            .rposition(|&b| b == b'/')
            .filter(|&c| c > 0)
            .unwrap_or(limit);
        steps.push(&rest[..cut]);
        rest = &rest[cut..];
        rest = rest.strip_prefix(b"/").unwrap_or(rest);
    }
    if !rest.is_empty() {
        steps.push(rest);
    }
    steps
}

fn too_long(path: &[u8]) -> FtpError {
    FtpError::PathTooLong {
        path: String::from_utf8_lossy(path).into_owned(),
    }
}

impl ControlConnection {
    /// The form of `path` to send next: as it is (from the login directory, going back
    /// there first if need be), or relative to its parent directory, changed into.
    pub(super) async fn reach(&mut self, path: &[u8]) -> Result<Vec<u8>, FtpError> {
        match route(path)? {
            Route::Direct => {
                self.go_home().await?;
                Ok(path.to_vec())
            }
            Route::Via { parent, name } => {
                tracing::debug!(
                    conn = self.id,
                    bytes = path.len(),
                    "path too long for one command: changing into its directory"
                );
                self.change_into(parent).await?;
                Ok(name.to_vec())
            }
        }
    }

    /// [`Self::reach`] for the two paths of a rename, which must both be named from one
    /// working directory (a CWD between RNFR and RNTO cancels the rename).
    pub(super) async fn reach_both(
        &mut self,
        from: &[u8],
        to: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), FtpError> {
        match rename_route(from, to)? {
            (Some(dir), skip) => {
                self.change_into(dir).await?;
                Ok((from[skip..].to_vec(), to[skip..].to_vec()))
            }
            (None, _) => {
                self.go_home().await?;
                Ok((from.to_vec(), to.to_vec()))
            }
        }
    }

    /// Back in the login directory, where every path ftpsfs sends starts.
    pub(super) async fn go_home(&mut self) -> Result<(), FtpError> {
        if self.away.is_none() {
            return Ok(());
        }
        let home = self
            .home
            .clone()
            .expect("the login directory is known once away");
        let reply = self.command(Command::with_arg(&verb::CWD, &home)?).await?;
        if reply.code != 250 {
            // Every later path would name the wrong file.
            self.mark_broken();
            return Err(FtpError::Rejected {
                command: "CWD back to the login directory".into(),
                reply,
            });
        }
        self.away = None;
        Ok(())
    }

    /// In the directory `dir` (a path from the login directory), in as many steps as
    /// its length needs. A missing directory is a 550 [`FtpError::Rejected`].
    pub(super) async fn change_into(&mut self, dir: &[u8]) -> Result<(), FtpError> {
        if self.away.as_deref() == Some(dir) {
            return Ok(());
        }
        self.go_home().await?;
        if self.home.is_none() {
            self.home = Some(self.working_directory().await?);
        }
        for step in steps(dir) {
            let reply = self.command(Command::with_arg(&verb::CWD, step)?).await?;
            if reply.code != 250 {
                let rejected = FtpError::Rejected {
                    command: format!("CWD {}", String::from_utf8_lossy(step)),
                    reply,
                };
                self.go_home().await?;
                return Err(rejected);
            }
            // Moved: until the last step is done, only the way back is known.
            self.away = Some(Vec::new());
        }
        self.away = Some(dir.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(components: usize, len: usize) -> Vec<u8> {
        (0..components)
            .map(|i| vec![b'a' + (i % 26) as u8; len])
            .collect::<Vec<_>>()
            .join(&b'/')
    }

    #[test]
    fn short_paths_go_as_they_are() {
        assert_eq!(route(b"dir/file").unwrap(), Route::Direct);
        let just_fits = vec![b'x'; SHORT_LINE - ROOM];
        assert_eq!(route(&just_fits).unwrap(), Route::Direct);
    }

    #[test]
    fn long_paths_go_through_their_parent() {
        let path = long(20, 100);
        let Route::Via { parent, name } = route(&path).unwrap() else {
            panic!("a 2 KB path went as it is");
        };
        assert_eq!(name, vec![b'a' + 19; 100].as_slice());
        assert_eq!([parent, b"/", name].concat(), path);
    }

    #[test]
    fn a_long_name_without_a_parent_goes_as_it_is_until_no_server_takes_it() {
        let name = vec![b'n'; 1000];
        assert_eq!(route(&name).unwrap(), Route::Direct);
        let huge = vec![b'n'; LONG_LINE];
        assert!(matches!(route(&huge), Err(FtpError::PathTooLong { .. })));
    }

    #[test]
    fn every_step_fits_and_together_they_are_the_directory() {
        for dir in [
            long(40, 100),
            long(3, 255),
            [b"/".as_slice(), &long(30, 200)].concat(),
        ] {
            let steps = steps(&dir);
            assert!(steps.len() > 1);
            for step in &steps {
                assert!(step.len() + ROOM <= SHORT_LINE, "{} bytes", step.len());
                assert!(!step.is_empty() && !step.ends_with(b"/"));
            }
            assert_eq!(steps.join(&b'/'), dir);
        }
        assert_eq!(steps(b"a/b"), vec![b"a/b".as_slice()]);
    }

    #[test]
    fn a_rename_goes_from_the_deepest_directory_both_share() {
        let base = long(10, 100);
        let from = [base.as_slice(), b"/x/old"].concat();
        let to = [base.as_slice(), b"/y/new"].concat();
        let (dir, skip) = rename_route(&from, &to).unwrap();
        assert_eq!(dir, Some(base.as_slice()));
        assert_eq!(&from[skip..], b"x/old");
        assert_eq!(&to[skip..], b"y/new");
        // A shared prefix that is not a whole directory name is no directory.
        let from = [base.as_slice(), b"/same1/f"].concat();
        let to = [base.as_slice(), b"/same2/g"].concat();
        let (dir, skip) = rename_route(&from, &to).unwrap();
        assert_eq!(dir, Some(base.as_slice()));
        assert_eq!(&to[skip..], b"same2/g");
        assert_eq!(rename_route(b"a/b", b"a/c").unwrap(), (None, 0));
    }

    #[test]
    fn a_rename_between_two_long_unrelated_paths_is_refused_when_no_server_takes_it() {
        let from = [b"p/".as_slice(), &long(45, 100)].concat();
        let to = [b"q/".as_slice(), &long(45, 100)].concat();
        assert!(matches!(
            rename_route(&from, &to),
            Err(FtpError::PathTooLong { .. })
        ));
    }
}
