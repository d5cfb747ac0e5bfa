//! Object ids: `vid << 32 | idx` plus type bits.

/// Bits of the index part of an oid.
pub const VDI_SPACE_SHIFT: u32 = 32;
/// Type bit of inodes.
pub const VDI_BIT: u64 = 1 << 63;
/// Type bit of VM state objects.
pub const VMSTATE_BIT: u64 = 1 << 62;
/// Type bit of attribute objects.
pub const VDI_ATTR_BIT: u64 = 1 << 61;
/// Type bit of B-tree nodes.
pub const VDI_BTREE_BIT: u64 = 1 << 60;
/// Type bit of ledger objects.
pub const LEDGER_BIT: u64 = 1 << 59;
const TYPE_BITS: u64 = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT;
const VID_MASK: u64 = 0xFF_FFFF;

/// Data object `idx` of `vid`.
pub fn vid_to_data_oid(vid: u32, idx: u32) -> u64 {
    ((vid as u64 & VID_MASK) << VDI_SPACE_SHIFT) | idx as u64
}
/// The inode object of `vid`.
pub fn vid_to_vdi_oid(vid: u32) -> u64 {
    VDI_BIT | ((vid as u64 & VID_MASK) << VDI_SPACE_SHIFT)
}
/// VM state object `idx` of `vid`.
pub fn vid_to_vmstate_oid(vid: u32, idx: u32) -> u64 {
    VMSTATE_BIT | vid_to_data_oid(vid, idx)
}
/// Attribute object `attr_id` of `vid`.
pub fn vid_to_attr_oid(vid: u32, attr_id: u32) -> u64 {
    VDI_ATTR_BIT | vid_to_data_oid(vid, attr_id)
}
/// B-tree node object `btree_id` of `vid`.
pub fn vid_to_btree_oid(vid: u32, btree_id: u32) -> u64 {
    VDI_BTREE_BIT | vid_to_data_oid(vid, btree_id)
}
/// The ledger object of a data object.
pub fn oid_to_ledger_oid(data_oid: u64) -> u64 {
    LEDGER_BIT | data_oid
}
/// The VDI of an object.
pub fn oid_to_vid(oid: u64) -> u32 {
    ((oid >> VDI_SPACE_SHIFT) & VID_MASK) as u32
}
/// The index of an object in its VDI.
pub fn oid_to_idx(oid: u64) -> u32 {
    oid as u32
}
/// Whether `oid` is a data object.
pub fn is_data_obj(oid: u64) -> bool {
    oid & TYPE_BITS == 0
}
/// Whether `oid` is an inode.
pub fn is_vdi_obj(oid: u64) -> bool {
    oid & VDI_BIT != 0
}
/// Whether `oid` is a VM state object.
pub fn is_vmstate_obj(oid: u64) -> bool {
    oid & VMSTATE_BIT != 0
}
/// Whether `oid` is an attribute object.
pub fn is_attr_obj(oid: u64) -> bool {
    oid & VDI_ATTR_BIT != 0
}
/// Whether `oid` is a B-tree node.
pub fn is_btree_obj(oid: u64) -> bool {
    oid & VDI_BTREE_BIT != 0
}
/// Whether `oid` is a ledger object.
pub fn is_ledger_obj(oid: u64) -> bool {
    oid & LEDGER_BIT != 0
}

/// Which kind of object an oid names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjKind {
    /// A data object of a VDI.
    Data,
    /// A VDI's inode.
    Inode,
    /// A VM state object (QEMU snapshots).
    Vmstate,
    /// A VDI attribute.
    Attr,
    /// A B-tree node of a hyper volume's map.
    Btree,
    /// A ledger object (reference counts).
    Ledger,
}

/// Which kind of object `oid` names.
pub fn kind(oid: u64) -> ObjKind {
    if is_vdi_obj(oid) {
        ObjKind::Inode
    } else if is_vmstate_obj(oid) {
        ObjKind::Vmstate
    } else if is_attr_obj(oid) {
        ObjKind::Attr
    } else if is_btree_obj(oid) {
        ObjKind::Btree
    } else if is_ledger_obj(oid) {
        ObjKind::Ledger
    } else {
        ObjKind::Data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids() {
        assert_eq!(vid_to_vdi_oid(0x7c2b25), 0x807c2b2500000000);
        assert_eq!(vid_to_data_oid(0x7c2b25, 3), 0x007c2b2500000003);
        assert_eq!(vid_to_data_oid(0x5b5b59, 1 << 20), 0x005b5b5900100000);
        assert_eq!(vid_to_attr_oid(0x7c2b25, 7), 0x207c2b2500000007);
        assert_eq!(vid_to_btree_oid(0x5b5b59, 1), 0x105b5b5900000001);
        assert_eq!(vid_to_vmstate_oid(1, 2), 0x4000000100000002);
        assert_eq!(oid_to_ledger_oid(0x007c2b2500000003), 0x087c2b2500000003);
        assert_eq!(oid_to_vid(0x807c2b2500000000), 0x7c2b25);
        assert_eq!(oid_to_idx(0x007c2b2500000003), 3);
        assert!(is_data_obj(0x007c2b2500000003));
        assert!(!is_data_obj(0x807c2b2500000000));
        assert_eq!(kind(0x087c2b2500000003), ObjKind::Ledger);
        assert_eq!(kind(0x807c2b2500000000), ObjKind::Inode);
        assert_eq!(kind(0x207c2b2500000000), ObjKind::Attr);
    }
}
