//! Sheep endpoints.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a sheep listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SheepAddr {
    /// A TCP address: host name or IP, and port.
    Tcp {
        /// Host name, IPv4 or IPv6 address (without brackets).
        host: String,
        /// TCP port (sheep listens on 7000 by default).
        port: u16,
    },
    /// A Unix socket (sheep's `sock` file).
    Unix(PathBuf),
}

impl SheepAddr {
    /// `host:port` over TCP.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        SheepAddr::Tcp {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for SheepAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SheepAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            SheepAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            SheepAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for SheepAddr {
    type Err = String;

    /// Accepts `tcp:HOST:PORT`, `unix:PATH`, `HOST:PORT`, `[V6]:PORT` and `HOST` (port 7000).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("'{s}': empty unix socket path"));
            }
            return Ok(SheepAddr::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("tcp:").unwrap_or(s);
        if rest.is_empty() {
            return Err("empty address".into());
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r
                .split_once(']')
                .ok_or_else(|| format!("'{s}': unterminated '['"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
                Some(_) => (rest.to_string(), None),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => crate::proto::SD_LISTEN_PORT,
            Some(p) => parse_port(p).ok_or_else(|| format!("'{s}': invalid port '{p}'"))?,
        };
        if host.is_empty() {
            return Err(format!("'{s}': empty host"));
        }
        Ok(SheepAddr::Tcp { host, port })
    }
}

/// A port in 1..=65535, digits only.
pub fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            "tcp:127.0.0.1:7001".parse::<SheepAddr>().unwrap(),
            SheepAddr::tcp("127.0.0.1", 7001)
        );
        assert_eq!(
            "localhost".parse::<SheepAddr>().unwrap(),
            SheepAddr::tcp("localhost", 7000)
        );
        assert_eq!(
            "[::1]:7002".parse::<SheepAddr>().unwrap(),
            SheepAddr::tcp("::1", 7002)
        );
        assert_eq!(
            "unix:/tmp/sock".parse::<SheepAddr>().unwrap(),
            SheepAddr::Unix("/tmp/sock".into())
        );
        assert!("h:0".parse::<SheepAddr>().is_err());
        assert!("h:70000".parse::<SheepAddr>().is_err());
        assert!("h:x1".parse::<SheepAddr>().is_err());
        assert_eq!(SheepAddr::tcp("::1", 7).to_string(), "[::1]:7");
    }
}
