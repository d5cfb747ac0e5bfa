//! VDI attributes (`struct sheepdog_vdi_attr`, 66,320 bytes).

use super::bytes::*;
use super::hash::{fnv1a_64, FNV1A_64_INIT};

/// Size of an attribute object (`struct sheepdog_vdi_attr`).
pub const SD_ATTR_OBJ_SIZE: usize = 66_320;
/// Offset of the value in an attribute object.
pub const ATTR_VALUE_OFFSET: usize = 784;

/// A VDI attribute (`struct sheepdog_vdi_attr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VdiAttr {
    /// Name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Creation time (sheep time: seconds << 32 | nanoseconds).
    pub ctime: u64,
    /// Snapshot id.
    pub snap_id: u32,
    /// Attribute key.
    pub key: String,
    /// Attribute value.
    pub value: Vec<u8>,
}

impl VdiAttr {
    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SD_ATTR_OBJ_SIZE];
        put_str(&mut b, 0, 256, &self.name);
        put_str(&mut b, 256, 256, &self.tag);
        put_u64(&mut b, 512, self.ctime);
        put_u32(&mut b, 520, self.snap_id);
        let n = self.value.len().min(super::SD_MAX_VDI_ATTR_VALUE_LEN);
        put_u32(&mut b, 524, n as u32);
        put_str(&mut b, 528, 256, &self.key);
        b[ATTR_VALUE_OFFSET..ATTR_VALUE_OFFSET + n].copy_from_slice(&self.value[..n]);
        b
    }
    /// Reads the wire bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < ATTR_VALUE_OFFSET {
            return None;
        }
        let len = (get_u32(b, 524) as usize)
            .min(super::SD_MAX_VDI_ATTR_VALUE_LEN)
            .min(b.len() - ATTR_VALUE_OFFSET);
        Some(VdiAttr {
            name: get_str(b, 0, 256),
            tag: get_str(b, 256, 256),
            ctime: get_u64(b, 512),
            snap_id: get_u32(b, 520),
            key: get_str(b, 528, 256),
            value: b[ATTR_VALUE_OFFSET..ATTR_VALUE_OFFSET + len].to_vec(),
        })
    }
}

/// First attribute id probed for an attribute payload: FNV-1a over the raw
/// `name[256]`, `tag[256]`, `snap_id` (4 bytes) and `key[256]` fields. A payload
/// shorter than the structure counts as zero-padded (as sheep pads it).
pub fn attr_id(payload: &[u8]) -> u32 {
    let mut head = [0u8; ATTR_VALUE_OFFSET];
    let n = payload.len().min(ATTR_VALUE_OFFSET);
    head[..n].copy_from_slice(&payload[..n]);
    let mut h = fnv1a_64(&head[0..256], FNV1A_64_INIT);
    h = fnv1a_64(&head[256..512], h);
    h = fnv1a_64(&head[520..524], h);
    h = fnv1a_64(&head[528..784], h);
    h as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = VdiAttr {
            name: "test".into(),
            key: "key".into(),
            value: b"value".to_vec(),
            ..Default::default()
        };
        let b = a.encode();
        assert_eq!(b.len(), SD_ATTR_OBJ_SIZE);
        assert_eq!(VdiAttr::decode(&b).unwrap(), a);
        assert_eq!(&b[784..789], b"value");
        let _ = attr_id(&b);
    }
}
