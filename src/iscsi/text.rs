//! Text keys (RFC 7143 §6.1): `key=value` pairs, each NUL-terminated.

/// Longest key name (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Largest text we accept across continued PDUs of one request.
pub const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text key without '=': {0:?}")]
    NoEquals(String),
    #[error("invalid text key name {0:?}")]
    BadKey(String),
    #[error("text value is not UTF-8 for key {0}")]
    NotUtf8(String),
    #[error("key {0} sent twice")]
    Duplicate(String),
}

/// Ordered key/value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvList(pub Vec<(String, String)>);

impl KvList {
    pub fn new() -> KvList {
        KvList(Vec::new())
    }
    pub fn push(&mut self, k: &str, v: impl Into<String>) {
        self.0.push((k.to_string(), v.into()));
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+@_#".contains(&b))
}

/// Parses a data segment. Trailing bytes without a NUL are tolerated (some
/// initiators omit the last NUL); empty strings between NULs are skipped.
/// A key appearing twice is an error (RFC 7143 §6.1).
pub fn parse(data: &[u8]) -> Result<KvList, TextError> {
    let mut out = KvList::new();
    // A set, not a scan of `out`: up to 64 KiB of keys from an unauthenticated peer.
    let mut seen = std::collections::HashSet::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(item)
            .map_err(|_| TextError::NotUtf8(String::from_utf8_lossy(item).into_owned()))?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(s.chars().take(64).collect()))?;
        if !valid_key(k) {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        if !seen.insert(k) {
            return Err(TextError::Duplicate(k.to_string()));
        }
        out.push(k, v);
    }
    Ok(out)
}

/// Decodes a binary value: `0x` hex (odd length allowed) or `0b` base64.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let padded = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        return (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
            .collect();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64_decode(b);
    }
    None
}

pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim_end_matches('=');
    if s.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A numeric value: decimal, or `0x` hex (RFC 7143 §6.1 allows both).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let d = b"InitiatorName=iqn.x\0SessionType=Normal\0\0";
        let kv = parse(d).unwrap();
        assert_eq!(kv.get("InitiatorName"), Some("iqn.x"));
        assert_eq!(kv.get("SessionType"), Some("Normal"));
        assert_eq!(
            kv.encode(),
            b"InitiatorName=iqn.x\0SessionType=Normal\0".to_vec()
        );
        assert_eq!(parse(b"A=1").unwrap().get("A"), Some("1"));
        assert!(matches!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate(_))));
        assert!(matches!(parse(b"novalue\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=x\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"a b=x\0"), Err(TextError::BadKey(_))));
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("0xABC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }
}
