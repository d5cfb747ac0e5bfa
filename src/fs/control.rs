//! Parsing of what users write into the control files (`vdi/mount`,
//! `vdi/unmount`, `config/*`). Pure functions, no I/O.

use super::error::{FsError, FsResult};
use crate::client::{SheepAddr, SnapSel};
use crate::proto::SD_MAX_VDI_LEN;

/// A VDI (and which member of its family) named in `vdi/mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub vdi: String,
    pub sel: SnapSel,
}

impl VolumeSpec {
    /// The name of the file under `volume/`: `NAME`, `NAME@TAG` or `NAME@SNAPID`.
    pub fn file_name(&self) -> String {
        match &self.sel {
            SnapSel::Working => self.vdi.clone(),
            SnapSel::Tag(t) => format!("{}@{}", self.vdi, t),
            SnapSel::Id(id) => format!("{}@{}", self.vdi, id),
        }
    }

    /// Snapshots are immutable: they are always attached read-only.
    pub fn is_snapshot(&self) -> bool {
        !self.sel.is_working()
    }

    /// Parses one line: `NAME`, `NAME@TAG` or `NAME@SNAPID` (all digits).
    /// The first `@` separates the name from the snapshot; surrounding
    /// whitespace is ignored.
    pub fn parse(line: &str) -> FsResult<VolumeSpec> {
        let t = line.trim();
        if t.is_empty() {
            return Err(FsError::new(libc::EINVAL, "empty VDI name"));
        }
        let (vdi, sel) = match t.split_once('@') {
            None => (t, SnapSel::Working),
            Some((v, s)) => {
                if s.is_empty() {
                    return Err(FsError::new(
                        libc::EINVAL,
                        format!("'{}': empty snapshot tag or id after '@'", t.escape_debug()),
                    ));
                }
                check_component(t, s, "snapshot tag")?;
                (v, SnapSel::parse(s))
            }
        };
        if vdi.is_empty() {
            return Err(FsError::new(
                libc::EINVAL,
                format!("'{}': empty VDI name before '@'", t.escape_debug()),
            ));
        }
        check_component(t, vdi, "VDI name")?;
        if let SnapSel::Id(0) = sel {
            // snapid 0 means "the working VDI" on the wire; accepting it would
            // silently attach the writable head under a snapshot's name.
            return Err(FsError::new(
                libc::EINVAL,
                format!("'{}': snapshot id 0 does not exist", t.escape_debug()),
            ));
        }
        Ok(VolumeSpec {
            vdi: vdi.to_string(),
            sel,
        })
    }
}

/// Checks a name or tag: fits sheep's 256-byte field and can be part of a
/// file name.
fn check_component(whole: &str, part: &str, what: &str) -> FsResult<()> {
    if part.len() >= SD_MAX_VDI_LEN {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!(
                "{what} of '{}…' is {} bytes long (at most {})",
                whole.chars().take(32).collect::<String>().escape_debug(),
                part.len(),
                SD_MAX_VDI_LEN - 1
            ),
        ));
    }
    if part.contains('\0') {
        return Err(FsError::new(
            libc::EINVAL,
            format!("{what} in '{}' contains a NUL byte", whole.escape_debug()),
        ));
    }
    if part.contains('/') {
        return Err(FsError::new(
            libc::EINVAL,
            format!(
                "{what} '{}' contains '/', which cannot appear in a file name under volume/",
                part.escape_debug()
            ),
        ));
    }
    if part == "." || part == ".." {
        return Err(FsError::new(
            libc::EINVAL,
            format!("{what} '{part}' cannot be a file name"),
        ));
    }
    Ok(())
}

/// One line of a control-file write, with the offset just past it (including
/// its newline) so a partial failure can report how much was consumed.
#[derive(Debug)]
pub struct Line<'a> {
    pub text: &'a str,
    pub end: usize,
}

/// Splits a write into non-blank lines. The whole buffer must be UTF-8.
pub fn lines(buf: &[u8]) -> FsResult<Vec<Line<'_>>> {
    let s = std::str::from_utf8(buf).map_err(|e| {
        FsError::new(
            libc::EINVAL,
            format!("input is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let end = s[start..].find('\n').map_or(s.len(), |i| start + i + 1);
        let text = s[start..end].trim();
        if !text.is_empty() {
            out.push(Line { text, end });
        }
        start = end;
    }
    if out.is_empty() {
        return Err(FsError::new(libc::EINVAL, "no VDI name given"));
    }
    Ok(out)
}

/// `config/page_cache`, `config/object_cache`: an integer, non-zero = on.
pub(crate) fn parse_flag(buf: &[u8], file: &str) -> FsResult<bool> {
    let s = std::str::from_utf8(buf).unwrap_or("").trim();
    s.parse::<i64>().map(|n| n != 0).map_err(|_| {
        FsError::new(
            libc::EINVAL,
            format!(
                "{file}: expected 0 or 1, got '{}'",
                String::from_utf8_lossy(buf).trim().escape_debug()
            ),
        )
    })
}

/// `config/sheep_info`: `HOST:PORT`, `HOST` (port 7000), `[V6]:PORT` or `unix:PATH`.
pub(crate) fn parse_addr(buf: &[u8]) -> FsResult<SheepAddr> {
    let s = std::str::from_utf8(buf)
        .map_err(|_| FsError::new(libc::EINVAL, "config/sheep_info: input is not valid UTF-8"))?
        .trim();
    if s.is_empty() {
        return Err(FsError::new(
            libc::EINVAL,
            "config/sheep_info: expected HOST:PORT, got nothing",
        ));
    }
    let addr = s
        .parse::<SheepAddr>()
        .map_err(|e| FsError::new(libc::EINVAL, format!("config/sheep_info: {e}")))?;
    if let SheepAddr::Tcp { host, .. } = &addr {
        crate::util::check_host(host)
            .map_err(|e| FsError::new(libc::EINVAL, format!("config/sheep_info: {e}")))?;
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = VolumeSpec::parse("test\n").unwrap();
        assert_eq!(s.vdi, "test");
        assert!(s.sel.is_working());
        assert_eq!(s.file_name(), "test");
        let s = VolumeSpec::parse(" test@snap1 ").unwrap();
        assert_eq!(s.sel, SnapSel::Tag("snap1".into()));
        assert_eq!(s.file_name(), "test@snap1");
        assert!(s.is_snapshot());
        let s = VolumeSpec::parse("test@2").unwrap();
        assert_eq!(s.sel, SnapSel::Id(2));
        assert_eq!(s.file_name(), "test@2");
        let s = VolumeSpec::parse("a@b@c").unwrap();
        assert_eq!((s.vdi.as_str(), s.sel), ("a", SnapSel::Tag("b@c".into())));
    }

    #[test]
    fn bad_specs() {
        for (input, errno) in [
            ("", libc::EINVAL),
            ("   ", libc::EINVAL),
            ("test@", libc::EINVAL),
            ("@tag", libc::EINVAL),
            ("a/b", libc::EINVAL),
            ("a@x/y", libc::EINVAL),
            ("..", libc::EINVAL),
            ("a\0b", libc::EINVAL),
            ("test@0", libc::EINVAL),
        ] {
            let e = VolumeSpec::parse(input).unwrap_err();
            assert_eq!(e.errno(), errno, "{input:?}: {e}");
        }
        let long = "x".repeat(256);
        assert_eq!(
            VolumeSpec::parse(&long).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
        assert!(VolumeSpec::parse(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn line_splitting() {
        let l = lines(b"a\n\nb\r\nc").unwrap();
        let v: Vec<_> = l.iter().map(|l| (l.text, l.end)).collect();
        assert_eq!(v, vec![("a", 2), ("b", 6), ("c", 7)]);
        assert_eq!(lines(b"\n\n").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(lines(b"\xff\n").unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn flags_and_addrs() {
        assert!(parse_flag(b"1\n", "f").unwrap());
        assert!(!parse_flag(b"0", "f").unwrap());
        assert!(parse_flag(b"7", "f").unwrap());
        assert_eq!(parse_flag(b"yes", "f").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_flag(b"", "f").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            parse_addr(b"127.0.0.1:7001\n").unwrap(),
            SheepAddr::tcp("127.0.0.1", 7001)
        );
        assert_eq!(parse_addr(b"h:0").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_addr(b"\n").unwrap_err().errno(), libc::EINVAL);
        // A bare number is not host 0.0.0.2.
        assert_eq!(parse_addr(b"2\n").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_addr(b"2:7000").unwrap_err().errno(), libc::EINVAL);
    }
}
