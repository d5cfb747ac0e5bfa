//! The VDI inode (`struct sd_inode`): header, flat data map, B-tree map.

use super::bytes::*;
use std::collections::BTreeMap;

/// Size of an inode object.
pub const SD_INODE_SIZE: usize = 12_587_576;
/// Size of the inode header (before `data_vdi_id[]`).
pub const SD_INODE_HEADER_SIZE: usize = 4664;
/// Offset of `data_vdi_id[]`.
pub const DATA_VDI_ID_OFFSET: usize = SD_INODE_HEADER_SIZE;
/// Entries in the flat `data_vdi_id[]` array.
pub const SD_INODE_DATA_INDEX: usize = 1 << 20;
/// Bytes of `data_vdi_id[]`.
pub const SD_INODE_DATA_INDEX_SIZE: usize = 4 * SD_INODE_DATA_INDEX;
/// Offset of `gref[]`; also the "inode without gref" prefix QEMU/tgt read.
pub const GREF_OFFSET: usize = DATA_VDI_ID_OFFSET + SD_INODE_DATA_INDEX_SIZE;
/// Bytes of an inode without `gref[]`.
pub const INODE_WITHOUT_GREF: usize = GREF_OFFSET;
/// Bytes dog reads for listings: header + B-tree header.
pub const INODE_LIST_READ: usize = SD_INODE_HEADER_SIZE + 8;
/// Offset of `btree_counter` in the inode.
pub const BTREE_COUNTER_OFFSET: usize = 568;
/// Offset of `snap_ctime` in the inode.
pub const SNAP_CTIME_OFFSET: usize = 520;
/// Offset of `tag` in the inode.
pub const TAG_OFFSET: usize = 256;
/// Offset of `vdi_size` in the inode.
pub const VDI_SIZE_OFFSET: usize = 536;
/// Bytes sheep compares during lookup (name .. vdi_id).
pub const LOOKUP_READ: usize = 568;

/// Byte offset of `data_vdi_id[idx]` in the inode object.
pub fn data_vdi_id_offset(idx: u32) -> u64 {
    DATA_VDI_ID_OFFSET as u64 + 4 * idx as u64
}

/// Object size for a block_size_shift. A corrupt shift (64 and up) is
/// masked as dog's `1ULL << shift` is on x86, instead of panicking.
pub fn object_size(block_size_shift: u8) -> u64 {
    1u64 << (block_size_shift & 63)
}

/// Number of data objects a VDI of `vdi_size` bytes spans.
pub fn count_data_objs(vdi_size: u64, block_size_shift: u8) -> u64 {
    vdi_size.div_ceil(object_size(block_size_shift))
}

/// The inode header (bytes 0..4664); the unused area 572..4664 is kept so a
/// read-modify-write of the header preserves whatever is there.
#[derive(Clone, PartialEq, Eq)]
pub struct InodeHeader {
    /// Name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Creation time (sheep time).
    pub create_time: u64,
    /// When it became a snapshot (0: working VDI).
    pub snap_ctime: u64,
    /// VM clock at snapshot (QEMU).
    pub vm_clock_nsec: u64,
    /// VDI size in bytes.
    pub vdi_size: u64,
    /// VM state size (QEMU).
    pub vm_state_size: u64,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Inode map layout: 0 flat, 1 B-tree (hyper volume).
    pub store_policy: u8,
    /// Number of copies.
    pub nr_copies: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
    /// Snapshot id.
    pub snap_id: u32,
    /// The VDI id.
    pub vdi_id: u32,
    /// Parent VDI (0: none).
    pub parent_vdi_id: u32,
    /// Next B-tree node id (hyper volumes).
    pub btree_counter: u32,
    /// Raw bytes 0..256 and 256..512 as read (names may not be UTF-8).
    pub raw_name: [u8; 256],
    /// The tag field as stored (256 bytes).
    pub raw_tag: [u8; 256],
    /// The rest of the header as stored, kept so rewrites preserve it.
    pub unused: Box<[u8]>,
}

impl std::fmt::Debug for InodeHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InodeHeader")
            .field("name", &self.name)
            .field("tag", &self.tag)
            .field("vdi_id", &format_args!("{:#x}", self.vdi_id))
            .field("parent_vdi_id", &format_args!("{:#x}", self.parent_vdi_id))
            .field("snap_id", &self.snap_id)
            .field("snap_ctime", &self.snap_ctime)
            .field("vdi_size", &self.vdi_size)
            .field("store_policy", &self.store_policy)
            .field("block_size_shift", &self.block_size_shift)
            .finish()
    }
}

impl Default for InodeHeader {
    fn default() -> Self {
        InodeHeader {
            name: String::new(),
            tag: String::new(),
            create_time: 0,
            snap_ctime: 0,
            vm_clock_nsec: 0,
            vdi_size: 0,
            vm_state_size: 0,
            copy_policy: 0,
            store_policy: 0,
            nr_copies: 0,
            block_size_shift: 0,
            snap_id: 0,
            vdi_id: 0,
            parent_vdi_id: 0,
            btree_counter: 0,
            raw_name: [0; 256],
            raw_tag: [0; 256],
            unused: vec![0u8; SD_INODE_HEADER_SIZE - 572].into_boxed_slice(),
        }
    }
}

impl InodeHeader {
    /// Decodes from at least the first 572 bytes (missing unused bytes read as 0).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 572 {
            return None;
        }
        let mut raw_name = [0u8; 256];
        raw_name.copy_from_slice(&b[0..256]);
        let mut raw_tag = [0u8; 256];
        raw_tag.copy_from_slice(&b[256..512]);
        let mut unused = vec![0u8; SD_INODE_HEADER_SIZE - 572];
        let avail = b.len().min(SD_INODE_HEADER_SIZE);
        if avail > 572 {
            unused[..avail - 572].copy_from_slice(&b[572..avail]);
        }
        Some(InodeHeader {
            name: get_str(b, 0, 256),
            tag: get_str(b, 256, 256),
            create_time: get_u64(b, 512),
            snap_ctime: get_u64(b, 520),
            vm_clock_nsec: get_u64(b, 528),
            vdi_size: get_u64(b, VDI_SIZE_OFFSET),
            vm_state_size: get_u64(b, 544),
            copy_policy: get_u8(b, 552),
            store_policy: get_u8(b, 553),
            nr_copies: get_u8(b, 554),
            block_size_shift: get_u8(b, 555),
            snap_id: get_u32(b, 556),
            vdi_id: get_u32(b, 560),
            parent_vdi_id: get_u32(b, 564),
            btree_counter: get_u32(b, 568),
            raw_name,
            raw_tag,
            unused: unused.into_boxed_slice(),
        })
    }

    /// Encodes the 4664-byte header. `name`/`tag` win over the raw copies when
    /// they were changed.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SD_INODE_HEADER_SIZE];
        self.encode_into(&mut b);
        b
    }

    /// Writes the wire bytes into `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        if get_str(&self.raw_name, 0, 256) == self.name {
            b[0..256].copy_from_slice(&self.raw_name);
        } else {
            put_str(b, 0, 256, &self.name);
        }
        if get_str(&self.raw_tag, 0, 256) == self.tag {
            b[256..512].copy_from_slice(&self.raw_tag);
        } else {
            put_str(b, 256, 256, &self.tag);
        }
        put_u64(b, 512, self.create_time);
        put_u64(b, 520, self.snap_ctime);
        put_u64(b, 528, self.vm_clock_nsec);
        put_u64(b, VDI_SIZE_OFFSET, self.vdi_size);
        put_u64(b, 544, self.vm_state_size);
        put_u8(b, 552, self.copy_policy);
        put_u8(b, 553, self.store_policy);
        put_u8(b, 554, self.nr_copies);
        put_u8(b, 555, self.block_size_shift);
        put_u32(b, 556, self.snap_id);
        put_u32(b, 560, self.vdi_id);
        put_u32(b, 564, self.parent_vdi_id);
        put_u32(b, 568, self.btree_counter);
        b[572..SD_INODE_HEADER_SIZE].copy_from_slice(&self.unused);
    }

    /// Whether the VDI is a snapshot.
    pub fn is_snapshot(&self) -> bool {
        self.snap_ctime != 0
    }
    /// Deleted inodes have an empty name.
    pub fn is_deleted(&self) -> bool {
        self.raw_name[0] == 0
    }
    /// Whether the VDI is a clone (has a parent and is not a snapshot).
    pub fn is_clone(&self) -> bool {
        !self.is_snapshot() && self.snap_id == 1 && self.parent_vdi_id != 0
    }
    /// The object size in bytes.
    pub fn object_size(&self) -> u64 {
        object_size(self.block_size_shift)
    }
    /// Data objects the size covers.
    pub fn nr_objs(&self) -> u64 {
        count_data_objs(self.vdi_size, self.block_size_shift)
    }
    /// Whether the map is a B-tree.
    pub fn is_hyper(&self) -> bool {
        self.store_policy == 1
    }
}

// ---------------------------------------------------------------------------
// B-tree map (store_policy = 1)

/// Magic of a B-tree node header.
pub const INODE_BTREE_MAGIC: u16 = 0x6274;
/// Size of a B-tree node header.
pub const BTREE_HEADER_SIZE: usize = 8;
/// Size of a B-tree node object.
pub const BTREE_NODE_SIZE: usize = SD_INODE_DATA_INDEX_SIZE;
/// Max leaf entries (`sd_index`, 8 bytes) in one node.
pub const BTREE_MAX_INDEX: usize = (BTREE_NODE_SIZE - BTREE_HEADER_SIZE) / 8;
/// Max indirect entries (`sd_indirect_idx`, 16 bytes) in one node.
pub const BTREE_MAX_INDIRECT: usize = (BTREE_NODE_SIZE - BTREE_HEADER_SIZE) / 16;

/// The header of a B-tree node (`struct sd_index_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtreeHeader {
    /// `INODE_BTREE_MAGIC`.
    pub magic: u16,
    /// Tree depth (1 or 2).
    pub depth: u16,
    /// Number of entries.
    pub entries: u32,
}

impl BtreeHeader {
    /// Reads the wire bytes.
    pub fn decode(b: &[u8]) -> Result<Self, BtreeError> {
        if b.len() < BTREE_HEADER_SIZE {
            return Err(BtreeError::Truncated);
        }
        Ok(BtreeHeader {
            magic: get_u16(b, 0),
            depth: get_u16(b, 2),
            entries: get_u32(b, 4),
        })
    }
    /// Writes the wire bytes into `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        put_u16(b, 0, self.magic);
        put_u16(b, 2, self.depth);
        put_u32(b, 4, self.entries);
    }
}

/// Why a B-tree node could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtreeError {
    /// A node whose magic is not `INODE_BTREE_MAGIC`.
    #[error("B-tree node has bad magic {0:#x}")]
    BadMagic(u16),
    /// A depth other than 1 or 2.
    #[error("B-tree node has unsupported depth {0}")]
    BadDepth(u16),
    /// More entries than a node holds.
    #[error("B-tree node claims {0} entries, more than fit")]
    TooManyEntries(u32),
    /// Fewer bytes than a node header.
    #[error("B-tree node is truncated")]
    Truncated,
    /// An insert into a full tree.
    #[error("B-tree is full")]
    Full,
}

/// Parses a leaf node's `(idx, vdi_id)` entries.
pub fn parse_leaf(b: &[u8]) -> Result<Vec<(u32, u32)>, BtreeError> {
    let h = check_node(b, 1)?;
    let n = h.entries as usize;
    if n > BTREE_MAX_INDEX {
        return Err(BtreeError::TooManyEntries(h.entries));
    }
    if b.len() < BTREE_HEADER_SIZE + 8 * n {
        return Err(BtreeError::Truncated);
    }
    Ok((0..n)
        .map(|i| {
            let o = BTREE_HEADER_SIZE + 8 * i;
            (get_u32(b, o), get_u32(b, o + 4))
        })
        .collect())
}

/// Parses a depth-2 root's `(max idx, leaf oid)` entries.
pub fn parse_indirect(b: &[u8]) -> Result<Vec<(u32, u64)>, BtreeError> {
    let h = check_node(b, 2)?;
    let n = h.entries as usize;
    if n > BTREE_MAX_INDIRECT {
        return Err(BtreeError::TooManyEntries(h.entries));
    }
    if b.len() < BTREE_HEADER_SIZE + 16 * n {
        return Err(BtreeError::Truncated);
    }
    Ok((0..n)
        .map(|i| {
            let o = BTREE_HEADER_SIZE + 16 * i;
            (get_u32(b, o), get_u64(b, o + 8))
        })
        .collect())
}

fn check_node(b: &[u8], depth: u16) -> Result<BtreeHeader, BtreeError> {
    let h = BtreeHeader::decode(b)?;
    if h.magic != INODE_BTREE_MAGIC {
        return Err(BtreeError::BadMagic(h.magic));
    }
    if h.depth != depth {
        return Err(BtreeError::BadDepth(h.depth));
    }
    Ok(h)
}

/// Encodes a leaf node (header + entries, no trailing padding).
pub fn encode_leaf(entries: &[(u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; BTREE_HEADER_SIZE + 8 * entries.len()];
    BtreeHeader {
        magic: INODE_BTREE_MAGIC,
        depth: 1,
        entries: entries.len() as u32,
    }
    .encode_into(&mut b);
    for (i, (idx, vid)) in entries.iter().enumerate() {
        put_u32(&mut b, BTREE_HEADER_SIZE + 8 * i, *idx);
        put_u32(&mut b, BTREE_HEADER_SIZE + 8 * i + 4, *vid);
    }
    b
}

/// Encodes a depth-2 root node.
pub fn encode_indirect(entries: &[(u32, u64)]) -> Vec<u8> {
    let mut b = vec![0u8; BTREE_HEADER_SIZE + 16 * entries.len()];
    BtreeHeader {
        magic: INODE_BTREE_MAGIC,
        depth: 2,
        entries: entries.len() as u32,
    }
    .encode_into(&mut b);
    for (i, (idx, oid)) in entries.iter().enumerate() {
        put_u32(&mut b, BTREE_HEADER_SIZE + 16 * i, *idx);
        put_u64(&mut b, BTREE_HEADER_SIZE + 16 * i + 8, *oid);
    }
    b
}

/// An in-memory copy of a hyper volume's two-level B-tree, laid out exactly as
/// upstream lays it out so trees written here read back in `dog`, and back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Btree {
    /// Depth 1: the root holds leaf entries.
    pub root_leaf: Vec<(u32, u32)>,
    /// Depth 2: the root holds `(max idx, leaf oid)`; leaves are loaded separately.
    pub root_indirect: Vec<(u32, u64)>,
    /// Depth 2: the loaded leaves by oid.
    pub leaves: BTreeMap<u64, Vec<(u32, u32)>>,
    /// Tree depth (1 or 2).
    pub depth: u16,
}

/// What an insert changed, for the caller to write back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BtreeUpdate {
    /// Leaf objects created (write with CREATE_AND_WRITE_OBJ).
    pub created: Vec<u64>,
    /// Leaf objects modified (WRITE_OBJ).
    pub modified: Vec<u64>,
    /// The root (inode data_vdi_id area) and btree_counter changed.
    pub root_changed: bool,
}

impl Btree {
    /// A tree from the inode's `data_vdi_id` area (at least the root's used bytes).
    /// Leaves of a depth-2 root must be added with [`Btree::add_leaf`].
    pub fn from_root(area: &[u8]) -> Result<Self, BtreeError> {
        if area.len() < BTREE_HEADER_SIZE || get_u32(area, 0) == 0 && get_u32(area, 4) == 0 {
            // data_vdi_id[0] == 0: never initialised, an empty leaf.
            return Ok(Btree {
                depth: 1,
                ..Default::default()
            });
        }
        let h = BtreeHeader::decode(area)?;
        match h.depth {
            1 => Ok(Btree {
                depth: 1,
                root_leaf: parse_leaf(area)?,
                ..Default::default()
            }),
            2 => Ok(Btree {
                depth: 2,
                root_indirect: parse_indirect(area)?,
                ..Default::default()
            }),
            d => Err(BtreeError::BadDepth(d)),
        }
    }

    /// Bytes of the root that are meaningful (dog's `sd_inode_get_meta_size`).
    pub fn root_meta_size(&self) -> usize {
        match self.depth {
            2 => BTREE_HEADER_SIZE + 16 * self.root_indirect.len(),
            _ => BTREE_HEADER_SIZE + 8 * self.root_leaf.len(),
        }
    }

    /// Adds a leaf node read from `oid`.
    pub fn add_leaf(&mut self, oid: u64, node: &[u8]) -> Result<(), BtreeError> {
        self.leaves.insert(oid, parse_leaf(node)?);
        Ok(())
    }

    /// The root node as stored after the header.
    pub fn encode_root(&self) -> Vec<u8> {
        match self.depth {
            2 => encode_indirect(&self.root_indirect),
            _ => encode_leaf(&self.root_leaf),
        }
    }

    /// The leaf node `oid` as stored.
    pub fn encode_leaf_node(&self, oid: u64) -> Option<Vec<u8>> {
        self.leaves.get(&oid).map(|e| encode_leaf(e))
    }

    /// The vid owning object `idx` (0: none).
    pub fn get(&self, idx: u32) -> u32 {
        let find = |v: &Vec<(u32, u32)>| {
            v.binary_search_by_key(&idx, |e| e.0)
                .map(|i| v[i].1)
                .unwrap_or(0)
        };
        match self.depth {
            2 => {
                let pos = self.root_indirect.partition_point(|e| e.0 < idx);
                match self.root_indirect.get(pos) {
                    Some((_, oid)) => self.leaves.get(oid).map(find).unwrap_or(0),
                    None => 0,
                }
            }
            _ => find(&self.root_leaf),
        }
    }

    /// Every `(idx, vid)` with a non-zero vid, ascending.
    pub fn entries(&self) -> Vec<(u32, u32)> {
        match self.depth {
            2 => self
                .root_indirect
                .iter()
                .filter_map(|(_, oid)| self.leaves.get(oid))
                .flat_map(|v| v.iter().copied())
                .filter(|e| e.1 != 0)
                .collect(),
            _ => self
                .root_leaf
                .iter()
                .copied()
                .filter(|e| e.1 != 0)
                .collect(),
        }
    }

    /// Sets `idx -> vid`, splitting nodes as upstream does. `next_oid` hands out
    /// new leaf oids (it bumps the inode's btree_counter).
    pub fn set(
        &mut self,
        idx: u32,
        vid: u32,
        next_oid: &mut dyn FnMut() -> u64,
    ) -> Result<BtreeUpdate, BtreeError> {
        let mut up = BtreeUpdate::default();
        if self.depth != 2 {
            self.depth = 1;
            match self.root_leaf.binary_search_by_key(&idx, |e| e.0) {
                Ok(i) => self.root_leaf[i].1 = vid,
                Err(i) => {
                    if self.root_leaf.len() < BTREE_MAX_INDEX {
                        self.root_leaf.insert(i, (idx, vid));
                    } else {
                        // Root leaf full: move its halves into two leaf objects.
                        let right = self.root_leaf.split_off(self.root_leaf.len() / 2);
                        let left = std::mem::take(&mut self.root_leaf);
                        let (lo, ro) = (next_oid(), next_oid());
                        self.root_indirect = vec![(last_idx(&left), lo), (last_idx(&right), ro)];
                        self.leaves.insert(lo, left);
                        self.leaves.insert(ro, right);
                        self.depth = 2;
                        up.created.extend([lo, ro]);
                        let more = self.set(idx, vid, next_oid)?;
                        merge(&mut up, more);
                    }
                }
            }
            up.root_changed = true;
            return Ok(up);
        }
        let pos = self.root_indirect.partition_point(|e| e.0 < idx);
        if pos < self.root_indirect.len() {
            let oid = self.root_indirect[pos].1;
            let leaf = self.leaves.entry(oid).or_default();
            match leaf.binary_search_by_key(&idx, |e| e.0) {
                Ok(i) => {
                    leaf[i].1 = vid;
                    up.modified.push(oid);
                }
                Err(i) if leaf.len() < BTREE_MAX_INDEX => {
                    leaf.insert(i, (idx, vid));
                    up.modified.push(oid);
                }
                Err(_) => {
                    // Full before the split, so a refused set leaves the tree whole.
                    if self.root_indirect.len() >= BTREE_MAX_INDIRECT {
                        return Err(BtreeError::Full);
                    }
                    // Split: the lower half moves to a new leaf.
                    let right = leaf.split_off(leaf.len() / 2);
                    let left = std::mem::replace(leaf, right);
                    let new = next_oid();
                    self.root_indirect.insert(pos, (last_idx(&left), new));
                    self.leaves.insert(new, left);
                    up.created.push(new);
                    up.modified.push(oid);
                    up.root_changed = true;
                    let more = self.set(idx, vid, next_oid)?;
                    merge(&mut up, more);
                }
            }
        } else if let Some(last) = self.root_indirect.last().map(|e| e.1) {
            let leaf = self.leaves.entry(last).or_default();
            if leaf.len() < BTREE_MAX_INDEX {
                leaf.push((idx, vid));
                let n = self.root_indirect.len();
                self.root_indirect[n - 1].0 = idx;
                up.modified.push(last);
            } else {
                if self.root_indirect.len() >= BTREE_MAX_INDIRECT {
                    return Err(BtreeError::Full);
                }
                let new = next_oid();
                self.leaves.insert(new, vec![(idx, vid)]);
                self.root_indirect.push((idx, new));
                up.created.push(new);
            }
            up.root_changed = true;
        } else {
            let new = next_oid();
            self.leaves.insert(new, vec![(idx, vid)]);
            self.root_indirect.push((idx, new));
            up.created.push(new);
            up.root_changed = true;
        }
        Ok(up)
    }
}

fn last_idx(v: &[(u32, u32)]) -> u32 {
    v.last().map(|e| e.0).unwrap_or(0)
}

fn merge(a: &mut BtreeUpdate, b: BtreeUpdate) {
    for o in b.created {
        if !a.created.contains(&o) {
            a.created.push(o);
        }
    }
    for o in b.modified {
        if !a.modified.contains(&o) && !a.created.contains(&o) {
            a.modified.push(o);
        }
    }
    a.root_changed |= b.root_changed;
    a.modified.retain(|o| !a.created.contains(o));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(SD_INODE_SIZE, 0xC01238);
        assert_eq!(SD_INODE_HEADER_SIZE, 0x1238);
        assert_eq!(GREF_OFFSET, 0x401238);
        assert_eq!(SD_INODE_SIZE, GREF_OFFSET + 8 * SD_INODE_DATA_INDEX);
        assert_eq!(data_vdi_id_offset(0), 4664);
        assert_eq!(data_vdi_id_offset(3), 4676);
        assert_eq!(data_vdi_id_offset((1 << 20) - 1), 4_198_964);
        assert_eq!(BTREE_MAX_INDEX, 524_287);
        assert_eq!(BTREE_MAX_INDIRECT, 262_143);
        assert_eq!(count_data_objs(1 << 30, 22), 256);
        assert_eq!(count_data_objs((1 << 30) + 1, 22), 257);
        assert_eq!(count_data_objs(8 << 20, 20), 8);
        // A corrupt shift is masked like dog's C shift, not a panic.
        assert_eq!(object_size(22), 4 << 20);
        assert_eq!(object_size(64 + 22), 4 << 20);
    }

    #[test]
    fn header_round_trip() {
        let mut h = InodeHeader {
            name: "test".into(),
            tag: "snap1".into(),
            create_time: 0x6740_0000_0001_0000,
            snap_ctime: 5,
            vdi_size: 1 << 30,
            nr_copies: 3,
            block_size_shift: 22,
            snap_id: 2,
            vdi_id: 0x7c2b26,
            parent_vdi_id: 0x7c2b25,
            btree_counter: 0,
            ..Default::default()
        };
        let b = h.encode();
        assert_eq!(b.len(), 4664);
        assert_eq!(&b[0..5], b"test\0");
        assert_eq!(&b[256..262], b"snap1\0");
        assert_eq!(get_u64(&b, 536), 1 << 30);
        assert_eq!(b[555], 22);
        assert_eq!(get_u32(&b, 560), 0x7c2b26);
        let d = InodeHeader::decode(&b).unwrap();
        assert_eq!(d.encode(), b);
        assert!(d.is_snapshot());
        h.snap_ctime = 0;
        h.snap_id = 1;
        assert!(h.is_clone());
    }

    #[test]
    fn btree_root_from_capture_layout() {
        // dog-17: hyper volume, one entry idx 2^20 -> 0x5b5b59.
        let mut t = Btree::from_root(&[0u8; 8]).unwrap();
        let up = t.set(1 << 20, 0x5b5b59, &mut || unreachable!()).unwrap();
        assert!(up.root_changed && up.created.is_empty());
        let root = t.encode_root();
        assert_eq!(root.len(), 16);
        assert_eq!(&root[0..8], &[0x74, 0x62, 1, 0, 1, 0, 0, 0]);
        assert_eq!(get_u32(&root, 8), 1 << 20);
        assert_eq!(get_u32(&root, 12), 0x5b5b59);
        let back = Btree::from_root(&root).unwrap();
        assert_eq!(back.get(1 << 20), 0x5b5b59);
        assert_eq!(back.get(5), 0);
        assert_eq!(back.root_meta_size(), 16);
    }

    #[test]
    fn btree_split_keeps_every_entry() {
        let mut t = Btree::from_root(&[]).unwrap();
        let mut counter = 0u32;
        let mut next = || {
            counter += 1;
            crate::proto::oid::vid_to_btree_oid(7, counter - 1)
        };
        let n = BTREE_MAX_INDEX as u32 + 10;
        for i in 0..n {
            t.set(i * 3, 7 + (i % 5), &mut next).unwrap();
        }
        assert_eq!(t.depth, 2);
        assert_eq!(t.root_indirect.len(), 2);
        for i in (0..n).step_by(997) {
            assert_eq!(t.get(i * 3), 7 + (i % 5));
            assert_eq!(t.get(i * 3 + 1), 0);
        }
        assert_eq!(t.entries().len(), n as usize);
        // The depth-2 root round-trips with its leaves.
        let root = t.encode_root();
        let mut back = Btree::from_root(&root).unwrap();
        for (_, oid) in back.root_indirect.clone() {
            back.add_leaf(oid, &t.encode_leaf_node(oid).unwrap())
                .unwrap();
        }
        assert_eq!(back.entries(), t.entries());
    }

    #[test]
    fn btree_rejects_garbage() {
        let mut b = encode_leaf(&[(1, 2)]);
        b[0] = 0;
        assert!(matches!(Btree::from_root(&b), Err(BtreeError::BadMagic(_))));
        let mut b = encode_leaf(&[(1, 2)]);
        put_u32(&mut b, 4, u32::MAX);
        assert!(Btree::from_root(&b).is_err());
    }
}
