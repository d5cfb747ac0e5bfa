//! The data map of an inode as dog's `sd_inode_get_vid` /
//! `sd_inode_set_vid` see it, with the node writes dog's writer issues for
//! an update (used by the admin operations, which must send dog's bytes).

use crate::proto::bytes::{get_u32, put_u32};
use crate::proto::inode::{self, Btree, InodeHeader, SD_INODE_HEADER_SIZE};
use crate::proto::oid;

/// The data map of a whole inode read, as dog's `sd_inode_get_vid` /
/// `sd_inode_set_vid` see it.
pub(crate) struct InodeMap {
    /// The inode bytes as read (header + map + gref for whole reads).
    pub buf: Vec<u8>,
    pub header: InodeHeader,
    tree: Option<Btree>,
}

/// A B-tree node write an update needs (dog's writer calls).
pub(crate) struct NodeWrite {
    pub oid: u64,
    pub data: Vec<u8>,
    pub offset: u64,
    pub create: bool,
}

impl InodeMap {
    pub fn new(buf: Vec<u8>) -> Option<InodeMap> {
        let header = InodeHeader::decode(&buf)?;
        let mut m = InodeMap {
            buf,
            header,
            tree: None,
        };
        if m.header.store_policy != 0 {
            let area = &m.buf[SD_INODE_HEADER_SIZE.min(m.buf.len())..];
            m.tree = Some(Btree::from_root(area).unwrap_or(Btree {
                depth: 1,
                ..Default::default()
            }));
        }
        Some(m)
    }

    pub fn is_hyper(&self) -> bool {
        self.tree.is_some()
    }

    /// Leaf oids a depth-2 lookup of `idx` needs that are not loaded yet.
    pub fn missing_leaf(&self, idx: u32) -> Option<u64> {
        let t = self.tree.as_ref()?;
        if t.depth != 2 {
            return None;
        }
        let pos = t.root_indirect.partition_point(|e| e.0 < idx);
        let pos = if pos < t.root_indirect.len() {
            pos
        } else {
            t.root_indirect.len().checked_sub(1)?
        };
        let oid = t.root_indirect[pos].1;
        (!t.leaves.contains_key(&oid)).then_some(oid)
    }

    pub fn add_leaf(&mut self, oid: u64, data: &[u8]) {
        if let Some(t) = self.tree.as_mut() {
            if t.add_leaf(oid, data).is_err() {
                t.leaves.insert(oid, Vec::new());
            }
        }
    }

    /// `sd_inode_get_vid`.
    pub fn get(&self, idx: u32) -> u32 {
        match &self.tree {
            None => {
                let o = inode::data_vdi_id_offset(idx) as usize;
                if o + 4 <= self.buf.len() {
                    get_u32(&self.buf, o)
                } else {
                    0
                }
            }
            Some(t) => t.get(idx),
        }
    }

    /// `sd_inode_set_vid`: updates memory; returns the B-tree node writes
    /// dog's writer would issue.
    pub fn set(&mut self, idx: u32, vid: u32) -> Vec<NodeWrite> {
        let Some(t) = self.tree.as_mut() else {
            let o = inode::data_vdi_id_offset(idx) as usize;
            if o + 4 <= self.buf.len() {
                put_u32(&mut self.buf, o, vid);
            }
            return Vec::new();
        };
        let mut writes = Vec::new();
        // An existing entry in a leaf object: dog writes just its vdi_id.
        if t.depth == 2 {
            let pos = t.root_indirect.partition_point(|e| e.0 < idx);
            if let Some(&(_, loid)) = t.root_indirect.get(pos) {
                if let Some(leaf) = t.leaves.get_mut(&loid) {
                    if let Ok(i) = leaf.binary_search_by_key(&idx, |e| e.0) {
                        leaf[i].1 = vid;
                        writes.push(NodeWrite {
                            oid: loid,
                            data: vid.to_le_bytes().to_vec(),
                            offset: (8 + 8 * i + 4) as u64,
                            create: false,
                        });
                        return writes;
                    }
                }
            }
        }
        let own = self.header.vdi_id;
        let mut counter = self.header.btree_counter;
        let mut next = || {
            counter += 1;
            oid::vid_to_btree_oid(own, counter - 1)
        };
        let up = match t.set(idx, vid, &mut next) {
            Ok(u) => u,
            Err(_) => return writes,
        };
        self.header.btree_counter = counter;
        put_u32(&mut self.buf, inode::BTREE_COUNTER_OFFSET, counter);
        for (oids, create) in [(&up.created, true), (&up.modified, false)] {
            for &l in oids {
                if let Some(node) = t.encode_leaf_node(l) {
                    let mut data = node;
                    data.resize(inode::BTREE_NODE_SIZE, 0);
                    writes.push(NodeWrite {
                        oid: l,
                        data,
                        offset: 0,
                        create,
                    });
                }
            }
        }
        let root = t.encode_root();
        let end = (SD_INODE_HEADER_SIZE + root.len()).min(self.buf.len());
        self.buf[SD_INODE_HEADER_SIZE..end].copy_from_slice(&root[..end - SD_INODE_HEADER_SIZE]);
        writes
    }

    /// The bytes `sd_inode_write` sends for a B-tree inode: header + root.
    pub fn root_bytes(&self) -> Vec<u8> {
        let meta = self.tree.as_ref().map(|t| t.root_meta_size()).unwrap_or(0);
        let end = (SD_INODE_HEADER_SIZE + meta).min(self.buf.len());
        self.buf[..end].to_vec()
    }
}
