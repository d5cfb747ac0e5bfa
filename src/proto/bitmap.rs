//! The 2^24-bit vid bitmaps (in-use and deleted) of READ_VDIS / READ_DEL_VDIS.

use super::{SD_NR_VDIS, VDI_BITMAP_SIZE};

/// Bit n is bit (n mod 8) of byte n / 8.
#[derive(Clone, PartialEq, Eq)]
pub struct VidBitmap {
    bytes: Vec<u8>,
}

impl Default for VidBitmap {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VidBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter_set()).finish()
    }
}

impl VidBitmap {
    /// An empty bitmap.
    pub fn new() -> Self {
        VidBitmap {
            bytes: vec![0u8; VDI_BITMAP_SIZE],
        }
    }
    /// From a READ_VDIS payload; a short payload is zero-extended.
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut bytes = vec![0u8; VDI_BITMAP_SIZE];
        let n = b.len().min(VDI_BITMAP_SIZE);
        bytes[..n].copy_from_slice(&b[..n]);
        VidBitmap { bytes }
    }
    /// The bytes of the bitmap.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Whether `vid` is set.
    pub fn test(&self, vid: u32) -> bool {
        vid < SD_NR_VDIS && self.bytes[(vid / 8) as usize] & (1 << (vid % 8)) != 0
    }
    /// Sets `vid`.
    pub fn set(&mut self, vid: u32) {
        if vid < SD_NR_VDIS {
            self.bytes[(vid / 8) as usize] |= 1 << (vid % 8);
        }
    }
    /// Clears `vid`.
    pub fn clear(&mut self, vid: u32) {
        if vid < SD_NR_VDIS {
            self.bytes[(vid / 8) as usize] &= !(1 << (vid % 8));
        }
    }
    /// First clear bit at or after `from` (below 2^24).
    pub fn next_clear(&self, from: u32) -> Option<u32> {
        (from..SD_NR_VDIS).find(|&v| !self.test(v))
    }
    /// Set bits in ascending order.
    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != 0)
            .flat_map(|(i, &b)| {
                (0..8)
                    .filter(move |bit| b & (1 << bit) != 0)
                    .map(move |bit| i as u32 * 8 + bit)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut b = VidBitmap::new();
        b.set(0x7c2b25);
        b.set(0x7c2b26);
        assert!(b.test(0x7c2b25));
        assert_eq!(b.as_bytes()[0x7c2b25 / 8], 0b0110_0000);
        assert_eq!(b.next_clear(0x7c2b25), Some(0x7c2b27));
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0x7c2b25, 0x7c2b26]);
        b.clear(0x7c2b25);
        assert!(!b.test(0x7c2b25));
        assert_eq!(VidBitmap::from_bytes(b.as_bytes()), b);
    }
}
