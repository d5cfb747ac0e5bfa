//! The VDI-name hash (64-bit FNV-1a) that places a name in the vid space.

/// FNV-1a 64 offset basis.
pub const FNV1A_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a over `data`, continuing from `hval` (chainable, as attribute ids need).
pub fn fnv1a_64(data: &[u8], mut hval: u64) -> u64 {
    for &b in data {
        hval ^= b as u64;
        hval = hval.wrapping_mul(FNV_64_PRIME);
    }
    hval
}

/// The first candidate vid for `name`: low 24 bits of the hash, 0 mapped to 1.
pub fn vdi_name_hash(name: impl AsRef<[u8]>) -> u32 {
    let vid = (fnv1a_64(name.as_ref(), FNV1A_64_INIT) & 0xFF_FFFF) as u32;
    if vid == 0 {
        1
    } else {
        vid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        let cases = [
            ("test", 0xf9e6e6ef197c2b25u64, 0x7c2b25u32),
            ("sd", 0x08d93207b57927f2, 0x7927f2),
            ("sd/sheep", 0xc98f852a038ad11e, 0x8ad11e),
            ("sd/sheep/allocator", 0x0bcc67b020fd57fc, 0xfd57fc),
            ("tgt0", 0xeb82daef122a0b08, 0x2a0b08),
            ("a", 0xaf63dc4c8601ec8c, 0x01ec8c),
        ];
        for (name, h, vid) in cases {
            assert_eq!(fnv1a_64(name.as_bytes(), FNV1A_64_INIT), h, "{name}");
            assert_eq!(vdi_name_hash(name), vid, "{name}");
        }
    }

    #[test]
    fn capture_vids() {
        // VDI ids seen in shared/reference/captures.
        assert_eq!(vdi_name_hash("hyper"), 0x5b5b59);
        assert_eq!(vdi_name_hash("small"), 0x98998c);
        assert_eq!(vdi_name_hash("pre"), 0xa1edc6);
        assert_eq!(vdi_name_hash("clone1"), 0xc8f989);
    }
}
