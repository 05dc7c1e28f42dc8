//! FTP replies (RFC 959 §4.2): a three-digit code and one or more lines of text.

use std::fmt;

/// Longest reply line accepted; a hostile server cannot make us buffer more per line.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// Most lines accepted in one multi-line reply; FEAT from real servers has ~30.
pub const MAX_REPLY_LINES: usize = 1_000;

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The text of each line, code and separator removed from the first and last line.
    pub lines: Vec<String>,
}

impl Reply {
    /// 1yz: the command started, another reply follows.
    pub fn is_preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }

    /// 2yz: the command succeeded.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3yz: the server wants more (after USER, REST, RNFR).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// The text of the reply on one line.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The text of the first line.
    pub fn first_line(&self) -> &str {
        self.lines.first().map(|s| s.trim()).unwrap_or("")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        if text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, text)
        }
    }
}

/// Assembles replies from lines, as they arrive.
#[derive(Debug, Default)]
pub struct ReplyParser {
    pending: Option<Reply>,
}

impl ReplyParser {
    /// Feeds one line (without CRLF); returns the reply once its last line has arrived.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, String> {
        let text = String::from_utf8_lossy(line);
        match self.pending.as_mut() {
            None => {
                let (code, separator, rest) = split_code(line).ok_or_else(|| {
                    format!(
                        "reply line does not start with a 3-digit code: {:?}",
                        clip(&text)
                    )
                })?;
                let reply = Reply {
                    code,
                    lines: vec![String::from_utf8_lossy(rest).into_owned()],
                };
                if separator == Some(b'-') {
                    self.pending = Some(reply);
                    Ok(None)
                } else {
                    Ok(Some(reply))
                }
            }
            Some(pending) => {
                // RFC 959: the reply ends at a line with the same code followed by a space
                // (or nothing); any other line, even one starting with digits, is text.
                if let Some((code, separator, rest)) = split_code(line) {
                    if code == pending.code && separator != Some(b'-') {
                        pending
                            .lines
                            .push(String::from_utf8_lossy(rest).into_owned());
                        return Ok(self.pending.take());
                    }
                }
                if pending.lines.len() >= MAX_REPLY_LINES {
                    return Err(format!(
                        "multi-line {} reply longer than {MAX_REPLY_LINES} lines",
                        pending.code
                    ));
                }
                pending.lines.push(text.into_owned());
                Ok(None)
            }
        }
    }

    /// True while a multi-line reply is incomplete.
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }
}

/// Splits `ddd` + separator (space, `-` or end of line) + rest.
fn split_code(line: &[u8]) -> Option<(u16, Option<u8>, &[u8])> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || line[0] == b'0' {
        return None;
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None => Some((code, None, &[])),
        Some(b' ') => Some((code, Some(b' '), &line[4..])),
        Some(b'-') => Some((code, Some(b'-'), &line[4..])),
        Some(_) => None,
    }
}

fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(lines: &[&[u8]]) -> Result<Vec<Reply>, String> {
        let mut parser = ReplyParser::default();
        let mut replies = Vec::new();
        for line in lines {
            if let Some(r) = parser.push_line(line)? {
                replies.push(r);
            }
        }
        Ok(replies)
    }

    #[test]
    fn single_line() {
        let r = parse_all(&[b"220 (vsFTPd 3.0.3)"]).unwrap();
        assert_eq!(r[0].code, 220);
        assert_eq!(r[0].to_string(), "220 (vsFTPd 3.0.3)");
        assert!(r[0].is_success());
    }

    #[test]
    fn code_without_text() {
        let r = parse_all(&[b"200"]).unwrap();
        assert_eq!(r[0].code, 200);
        assert_eq!(r[0].to_string(), "200");
    }

    #[test]
    fn multi_line_feat_from_vsftpd() {
        let r = parse_all(&[
            b"211-Features:",
            b" AUTH TLS",
            b" EPSV",
            b" MDTM",
            b"211 End",
        ])
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].lines,
            vec!["Features:", " AUTH TLS", " EPSV", " MDTM", "End"]
        );
    }

    #[test]
    fn multi_line_with_inner_codes_is_one_reply() {
        // RFC 959's own example: inner lines may begin with other digits or the same code plus '-'.
        let r = parse_all(&[
            b"123-First line",
            b"234 A line beginning with numbers",
            b"123-not the end",
            b"123 The last line",
        ])
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 123);
        assert_eq!(r[0].lines.len(), 4);
    }

    #[test]
    fn garbage_first_line_is_an_error() {
        assert!(parse_all(&[b"hello"]).is_err());
        assert!(parse_all(&[b"22"]).is_err());
        assert!(parse_all(&[b"2200 x"]).is_err());
        assert!(parse_all(&[b"099 x"]).is_err());
    }

    #[test]
    fn endless_multi_line_is_bounded() {
        let mut parser = ReplyParser::default();
        parser.push_line(b"211-start").unwrap();
        let mut failed = false;
        for _ in 0..MAX_REPLY_LINES + 5 {
            if parser.push_line(b" more").is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn non_utf8_text_is_kept_lossily() {
        let r = parse_all(&[b"550 caf\xe9 not found"]).unwrap();
        assert_eq!(r[0].code, 550);
        assert!(r[0].text().starts_with("caf"));
    }

    #[test]
    fn random_lines_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let alphabet = b"0123456789- \r\nA\xff";
            let line: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut parser = ReplyParser::default();
            let _ = parser.push_line(b"211-x");
            let _ = parser.push_line(&line);
            let mut fresh = ReplyParser::default();
            let _ = fresh.push_line(&line);
        }
    }
}
