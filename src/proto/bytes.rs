//! Little-endian field access at explicit offsets, and NUL-padded fixed strings.
//!
//! Every wire struct in this crate is encoded through these helpers so the byte
//! offsets in the code match the reference tables one for one.
//!
//! The getters index without checks: they are for fixed-size arrays and for
//! slices whose length a decoder has already checked (with [`need`]). A
//! decoder of peer-supplied bytes never hands them a slice it has not
//! measured, so short input is an error, never a panic.

/// A wire structure shorter than its layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("truncated {what}: {got} bytes, {need} needed")]
pub struct Short {
    /// What was decoded.
    pub what: &'static str,
    /// Bytes needed.
    pub need: usize,
    /// Bytes there were.
    pub got: usize,
}

/// `b`, if it holds at least `n` bytes of `what`.
pub fn need<'a>(b: &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], Short> {
    if b.len() < n {
        return Err(Short {
            what,
            need: n,
            got: b.len(),
        });
    }
    Ok(b)
}

/// Reads a u8 at `off`.
#[inline]
pub fn get_u8(b: &[u8], off: usize) -> u8 {
    b[off]
}
/// Reads a little-endian u16 at `off`.
#[inline]
pub fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
/// Reads a little-endian u32 at `off`.
#[inline]
pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
/// Reads a little-endian u64 at `off`.
#[inline]
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
/// Writes a u8 at `off`.
#[inline]
pub fn put_u8(b: &mut [u8], off: usize, v: u8) {
    b[off] = v;
}
/// Writes a little-endian u16 at `off`.
#[inline]
pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
/// Writes a little-endian u32 at `off`.
#[inline]
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
/// Writes a little-endian u64 at `off`.
#[inline]
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Reads a NUL-padded string field (stops at the first NUL).
pub fn get_str(b: &[u8], off: usize, len: usize) -> String {
    let field = &b[off..off + len];
    let end = field.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Writes `s` into a `len`-byte field, NUL-padded; `s` must be shorter than `len`
/// (callers validate names first, see [`super::validate_name`]).
pub fn put_str(b: &mut [u8], off: usize, len: usize, s: &str) {
    let field = &mut b[off..off + len];
    field.fill(0);
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A `len`-byte NUL-padded copy of `s`.
pub fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    put_str(&mut v, 0, len, s);
    v
}
