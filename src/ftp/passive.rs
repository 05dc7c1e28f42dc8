//! Parsing the 229 (EPSV, RFC 2428) and 227 (PASV, RFC 959) replies.

use std::net::Ipv4Addr;

/// The port from a 229 reply such as `229 Entering Extended Passive Mode (|||21015|)`.
pub fn parse_epsv(text: &str) -> Result<u16, String> {
    let open = text
        .find('(')
        .ok_or_else(|| format!("no '(' in EPSV reply {text:?}"))?;
    let inner = &text[open + 1..];
    let close = inner
        .find(')')
        .ok_or_else(|| format!("no ')' in EPSV reply {text:?}"))?;
    let inner = &inner[..close];
    // RFC 2428: <d><d><d><port><d>, the delimiter any printable character (usually '|').
    let delimiter = inner
        .chars()
        .next()
        .ok_or_else(|| format!("empty EPSV reply {text:?}"))?;
    let fields: Vec<&str> = inner.split(delimiter).collect();
    match fields.as_slice() {
        ["", "", "", port, ""] => parse_port(port, text),
        _ => Err(format!("malformed EPSV reply {text:?}")),
    }
}

fn parse_port(port: &str, text: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("bad port in passive reply {text:?}")),
        Ok(p) => Ok(p),
    }
}

/// The address and port from a 227 reply such as `227 Entering Passive Mode (127,0,0,1,82,8).`
pub fn parse_pasv(text: &str) -> Result<(Ipv4Addr, u16), String> {
    // Servers differ on parentheses and surrounding words; take the first run of six
    // comma-separated numbers.
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if bytes[start].is_ascii_digit() {
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b',' || *b == b' '))
                .map_or(bytes.len(), |p| start + p);
            let numbers: Vec<&str> = text[start..end].split(',').map(str::trim).collect();
            if numbers.len() == 6 {
                let mut octets = [0u8; 6];
                for (slot, n) in octets.iter_mut().zip(&numbers) {
                    *slot = n
                        .parse::<u8>()
                        .map_err(|_| format!("number out of range in PASV reply {text:?}"))?;
                }
                let ip = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
                let port = u16::from(octets[4]) << 8 | u16::from(octets[5]);
                if port == 0 {
                    return Err(format!("port 0 in PASV reply {text:?}"));
                }
                return Ok((ip, port));
            }
            start = end.max(start + 1);
        } else {
            start += 1;
        }
    }
    Err(format!("no address in PASV reply {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsv_forms() {
        assert_eq!(
            parse_epsv("Entering Extended Passive Mode (|||21015|)"),
            Ok(21015)
        );
        assert_eq!(
            parse_epsv("Entering Extended Passive Mode (!!!6446!)."),
            Ok(6446)
        );
        assert!(parse_epsv("Entering Extended Passive Mode (|||0|)").is_err());
        assert!(parse_epsv("Entering Extended Passive Mode (|||70000|)").is_err());
        assert!(parse_epsv("Entering Extended Passive Mode (||1|21|)").is_err());
        assert!(parse_epsv("Entering Extended Passive Mode").is_err());
        assert!(parse_epsv("(|||21015|").is_err());
        assert!(parse_epsv("()").is_err());
    }

    #[test]
    fn pasv_forms() {
        assert_eq!(
            parse_pasv("Entering Passive Mode (127,0,0,1,82,8)."),
            Ok((Ipv4Addr::new(127, 0, 0, 1), 82 * 256 + 8))
        );
        // Some servers omit the parentheses (RFC 1123 allows it).
        assert_eq!(
            parse_pasv("Entering Passive Mode 10,1,2,3,4,5"),
            Ok((Ipv4Addr::new(10, 1, 2, 3), 4 * 256 + 5))
        );
        assert_eq!(
            parse_pasv("=127,0,0,1,1,1"),
            Ok((Ipv4Addr::new(127, 0, 0, 1), 257))
        );
        assert!(parse_pasv("Entering Passive Mode (127,0,0,1,300,8)").is_err());
        assert!(parse_pasv("Entering Passive Mode (127,0,0,1,82)").is_err());
        assert!(parse_pasv("Entering Passive Mode (127,0,0,1,0,0)").is_err());
        assert!(parse_pasv("").is_err());
    }

    #[test]
    fn random_text_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet: Vec<char> = "0123456789,|()! .aé".chars().collect();
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 30) as usize;
            let mut s = String::new();
            let mut x = state;
            for _ in 0..len {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            let _ = parse_epsv(&s);
            let _ = parse_pasv(&s);
        }
    }
}
