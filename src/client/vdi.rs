//! Naming VDIs: which member of a family ([`SnapSel`]), what a lookup
//! returns ([`VdiId`]), a row of a listing ([`VdiEntry`]), and the name and
//! size rules every operation checks before sending anything.

use super::{Error, Result};
use crate::proto::inode::InodeHeader;
use crate::proto::{validate_name, OLD_MAX_DATA_OBJS, SD_MAX_VDI_SIZE};

/// Which member of a VDI family to open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SnapSel {
    /// The writable head.
    #[default]
    Working,
    /// The snapshot with this tag.
    Tag(String),
    /// The snapshot with this snap_id.
    Id(u32),
}

impl SnapSel {
    /// `TAG` or `SNAPID` (all digits), as tgt's backing-store suffix and `name@X`.
    pub fn parse(s: &str) -> SnapSel {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = s.parse::<u32>() {
                return SnapSel::Id(n);
            }
        }
        SnapSel::Tag(s.to_string())
    }
    /// Whether this selects the writable head.
    pub fn is_working(&self) -> bool {
        matches!(self, SnapSel::Working)
    }
}

impl std::fmt::Display for SnapSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapSel::Working => Ok(()),
            SnapSel::Tag(t) => write!(f, "@{t}"),
            SnapSel::Id(i) => write!(f, "@{i}"),
        }
    }
}

/// A resolved VDI (GET_VDI_INFO / LOCK_VDI reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdiId {
    /// The VDI's id.
    pub vid: u32,
    /// Its copies (0 on sheep that do not say).
    pub copies: u8,
    /// Its object size shift (0 on sheep that do not say).
    pub block_size_shift: u8,
}

/// One row of `vdi list`: the inode header plus dog's used/shared counts.
#[derive(Debug, Clone)]
pub struct VdiEntry {
    /// The inode header.
    pub header: InodeHeader,
    /// Objects owned by this VDI (entries equal to its vid).
    pub used_objs: u64,
    /// Objects shared with an ancestor (non-zero entries of another vid).
    pub shared_objs: u64,
}

impl VdiEntry {
    /// Bytes of the objects this VDI owns.
    pub fn used_bytes(&self) -> u64 {
        self.used_objs.wrapping_mul(self.header.object_size())
    }
    /// Bytes of the objects shared with an ancestor.
    pub fn shared_bytes(&self) -> u64 {
        self.shared_objs.wrapping_mul(self.header.object_size())
    }
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|e| Error::Invalid(format!("'{}': {e}", name.escape_debug())))
}

/// The `vdi_size` a VDI of `shift` may have: dog's rules (a flat inode maps
/// at most 2^20 objects; nothing past 16 PiB), and more than 0 bytes (dog
/// would ask sheep for an empty VDI).
pub(crate) fn check_size(size: u64, shift: u8, hyper: bool) -> Result<()> {
    if !(crate::proto::MIN_BLOCK_SIZE_SHIFT..=crate::proto::MAX_BLOCK_SIZE_SHIFT).contains(&shift) {
        return Err(Error::Invalid(format!(
            "block_size_shift {shift} is out of range (20..31)"
        )));
    }
    if size == 0 {
        return Err(Error::Invalid("VDI size must be larger than 0".into()));
    }
    let max = if hyper {
        SD_MAX_VDI_SIZE
    } else {
        // dog keeps the object size in a uint32_t.
        (1u32 << (shift & 31)) as u64 * OLD_MAX_DATA_OBJS
    };
    if size > max {
        return Err(Error::TooLarge { size, max, hyper });
    }
    if size > SD_MAX_VDI_SIZE {
        return Err(Error::TooLarge {
            size,
            max: SD_MAX_VDI_SIZE,
            hyper: true,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapsel_parse() {
        assert_eq!(SnapSel::parse("12"), SnapSel::Id(12));
        assert_eq!(SnapSel::parse("snap1"), SnapSel::Tag("snap1".into()));
        assert_eq!(
            SnapSel::parse("99999999999"),
            SnapSel::Tag("99999999999".into())
        );
    }
}
