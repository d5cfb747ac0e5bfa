//! The data map of an inode as the volumes and listings hold it:
//! [`DataMap`] (flat or B-tree), the sparse [`FlatMap`], and [`Inode`].

use crate::proto::bytes::{get_u16, get_u32};
use crate::proto::inode::{self, Btree, InodeHeader};

/// The `data_vdi_id` map of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMap {
    /// store_policy 0: the first `nr_objs` entries of the flat array.
    Flat(FlatMap),
    /// store_policy 1 (hyper volume).
    Btree(Btree),
}

impl DataMap {
    /// The vid owning object `idx` (0: unallocated).
    pub fn get(&self, idx: u64) -> u32 {
        match self {
            DataMap::Flat(v) => v.get(idx),
            DataMap::Btree(t) => u32::try_from(idx).map(|i| t.get(i)).unwrap_or(0),
        }
    }
    /// `(idx, vid)` of every allocated entry, ascending.
    pub fn allocated(&self) -> Vec<(u64, u32)> {
        match self {
            DataMap::Flat(v) => {
                let mut out = Vec::new();
                let mut i = 0;
                while let Some(j) = v.next_allocated(i) {
                    out.push((j, v.get(j)));
                    i = j + 1;
                }
                out
            }
            DataMap::Btree(t) => t
                .entries()
                .into_iter()
                .map(|(i, v)| (i as u64, v))
                .collect(),
        }
    }
}

/// Entries per page of a [`FlatMap`] (4 KiB).
const PAGE: usize = 1024;

/// A flat map held sparsely: pages of 1,024 entries, a page only where some
/// entry is set. A thin 4 TiB volume's map costs 8 KiB plus 4 KiB per 4 GiB
/// written (with 4 MiB objects), not 4 MiB, so a thousand attached volumes
/// cost memory for what they use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatMap {
    pages: Vec<Option<Box<[u32; PAGE]>>>,
    len: usize,
}

static UNSET: u32 = 0;

impl FlatMap {
    /// A map of `len` unset entries.
    pub fn new(len: usize) -> FlatMap {
        let mut m = FlatMap::default();
        m.resize(len);
        m
    }

    /// The map whose entries are `v`.
    pub fn from_entries(v: impl ExactSizeIterator<Item = u32>) -> FlatMap {
        let mut m = FlatMap::new(v.len());
        for (i, e) in v.enumerate() {
            if e != 0 {
                m.set(i as u64, e);
            }
        }
        m
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `idx` (0 past the end).
    pub fn get(&self, idx: u64) -> u32 {
        self[idx as usize]
    }

    /// Sets entry `idx`; ignored past the end.
    pub fn set(&mut self, idx: u64, vid: u32) {
        let Ok(i) = usize::try_from(idx) else { return };
        if i >= self.len {
            return;
        }
        match &mut self.pages[i / PAGE] {
            Some(p) => p[i % PAGE] = vid,
            None if vid == 0 => {}
            slot => slot.get_or_insert_with(|| Box::new([0; PAGE]))[i % PAGE] = vid,
        }
    }

    /// Grows (or shrinks) to `len` entries; new entries are unset.
    pub fn resize(&mut self, len: usize) {
        if len < self.len {
            for i in len..(len.div_ceil(PAGE) * PAGE).min(self.len) {
                self.set(i as u64, 0);
            }
        }
        self.pages.resize(len.div_ceil(PAGE), None);
        self.len = len;
    }

    /// How many entries equal `vid` (not 0); unset pages cost nothing.
    pub fn count(&self, vid: u32) -> usize {
        self.pages
            .iter()
            .flatten()
            .map(|p| p.iter().filter(|&&x| x == vid).count())
            .sum()
    }

    /// The first set entry at or after `from`.
    pub fn next_allocated(&self, from: u64) -> Option<u64> {
        let mut i = usize::try_from(from).ok()?;
        while i < self.len {
            match &self.pages[i / PAGE] {
                None => i = (i / PAGE + 1) * PAGE,
                Some(p) => {
                    if p[i % PAGE] != 0 {
                        return Some(i as u64);
                    }
                    i += 1;
                }
            }
        }
        None
    }
}

impl std::ops::Index<usize> for FlatMap {
    type Output = u32;
    fn index(&self, i: usize) -> &u32 {
        if i >= self.len {
            return &UNSET;
        }
        match &self.pages[i / PAGE] {
            Some(p) => &p[i % PAGE],
            None => &UNSET,
        }
    }
}

/// An inode: header and data map.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The header (name, size, object size, snapshot state...).
    pub header: InodeHeader,
    /// Which VDI owns each data object.
    pub map: DataMap,
}

/// dog's `sd_inode_get_meta_size` for a listing: the map bytes worth reading
/// (`btree_hdr`: the 8 bytes after the header). Bounded by the map area
/// (`data_vdi_id[]`), so a corrupt B-tree header cannot ask for gigabytes.
pub(crate) fn map_read_len(h: &InodeHeader, btree_hdr: &[u8]) -> u32 {
    let len = if h.is_hyper() {
        let depth = if btree_hdr.len() >= 4 {
            get_u16(btree_hdr, 2)
        } else {
            0
        };
        let entries = if btree_hdr.len() >= 8 {
            get_u32(btree_hdr, 4) as usize
        } else {
            0
        };
        8 + entries.saturating_mul(if depth == 2 { 16 } else { 8 })
    } else {
        (h.nr_objs() as usize).saturating_mul(4)
    };
    len.min(inode::SD_INODE_DATA_INDEX_SIZE) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_map_is_sparse_and_exact() {
        // A 4 TiB VDI of 4 MiB objects.
        let mut m = FlatMap::new(1 << 20);
        assert_eq!(m.pages.iter().filter(|p| p.is_some()).count(), 0);
        assert_eq!((m.get(0), m[5000], m.get(1 << 40)), (0, 0, 0));
        m.set(5000, 7);
        m.set(1 << 20, 9); // past the end: ignored
        m.set(9000, 0); // unset stays without a page
        assert_eq!(m.pages.iter().filter(|p| p.is_some()).count(), 1);
        assert_eq!((m.get(5000), m[5000]), (7, 7));
        assert_eq!(m.next_allocated(0), Some(5000));
        assert_eq!(m.next_allocated(5001), None);
        let d = DataMap::Flat(m.clone());
        assert_eq!(d.allocated(), vec![(5000, 7)]);
        m.resize(5000);
        assert_eq!((m.len(), m.get(5000), m.next_allocated(0)), (5000, 0, None));
        m.resize(6000);
        assert_eq!(m.get(5000), 0, "growing shows no stale entry");
        let f = FlatMap::from_entries([0, 3, 0, 4].into_iter());
        assert_eq!((f.len(), f[1], f[3], f[2]), (4, 3, 4, 0));
    }
}
