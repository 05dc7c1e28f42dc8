//! The server's FEAT reply (RFC 2389), reduced to what ftpsfs uses.

use super::reply::Reply;

/// Optional server capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// MLST/MLSD machine-readable listings (RFC 3659).
    pub mlsd: bool,
    /// The MLST facts the server offers, as announced (e.g. `type*;size*;modify*;`).
    pub mlst_facts: String,
    /// Extended passive mode (RFC 2428).
    pub epsv: bool,
    /// UTF-8 path names (RFC 2640).
    pub utf8: bool,
    /// Restart of STREAM-mode transfers with REST.
    pub rest_stream: bool,
    /// The SIZE command.
    pub size: bool,
    /// The MDTM command.
    pub mdtm: bool,
    /// Trivial virtual file store: `/`-separated absolute paths.
    pub tvfs: bool,
    /// MFMT: set a file's modification time (draft-somers-ftp-mfxx).
    pub mfmt: bool,
    /// Each announced line, trimmed, for diagnostics.
    pub lines: Vec<String>,
}

impl Features {
    /// Reads a 211 FEAT reply; anything else (500, 502) means no extensions.
    pub fn from_reply(reply: &Reply) -> Self {
        let mut features = Features::default();
        if reply.code != 211 || reply.lines.len() < 2 {
            return features;
        }
        for line in &reply.lines[1..reply.lines.len() - 1] {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (name, params) = line.split_once(' ').unwrap_or((line, ""));
            match name.to_ascii_uppercase().as_str() {
                "MLST" => {
                    features.mlsd = true;
                    features.mlst_facts = params.trim().to_string();
                }
                "MLSD" => features.mlsd = true,
                "EPSV" => features.epsv = true,
                "UTF8" => features.utf8 = true,
                "REST" if params.trim().eq_ignore_ascii_case("STREAM") => {
                    features.rest_stream = true
                }
                "SIZE" => features.size = true,
                "MDTM" => features.mdtm = true,
                "TVFS" => features.tvfs = true,
                "MFMT" => features.mfmt = true,
                _ => {}
            }
            features.lines.push(line.to_string());
        }
        features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        Reply {
            code: 211,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn proftpd_style_feat() {
        let f = Features::from_reply(&reply(&[
            "Features:",
            " AUTH TLS",
            " EPSV",
            " MDTM",
            " MFMT",
            " MLST modify*;perm*;size*;type*;unique*;UNIX.group*;UNIX.mode*;UNIX.owner*;",
            " REST STREAM",
            " SIZE",
            " TVFS",
            " UTF8",
            "End",
        ]));
        assert!(f.mlsd && f.epsv && f.mdtm && f.rest_stream && f.size && f.tvfs && f.utf8);
        assert!(f.mfmt);
        assert!(f.mlst_facts.contains("UNIX.mode*"));
        assert_eq!(f.lines.len(), 9);
    }

    #[test]
    fn vsftpd_has_no_mlsd() {
        let f = Features::from_reply(&reply(&[
            "Features:",
            " AUTH TLS",
            " EPRT",
            " EPSV",
            " MDTM",
            " PASV",
            " PBSZ",
            " PROT",
            " REST STREAM",
            " SIZE",
            " TVFS",
            "End",
        ]));
        assert!(!f.mlsd && !f.mfmt);
        assert!(f.epsv && f.rest_stream);
    }

    #[test]
    fn no_feat_support() {
        let f = Features::from_reply(&Reply {
            code: 502,
            lines: vec!["Command not implemented.".into()],
        });
        assert_eq!(f, Features::default());
    }
}
