//! Listing VDIs through the pipeline.
//!
//! dog lists VDIs one request at a time: the two vid bitmaps, then for each
//! live vid its inode header and (for `vdi list`) the used part of its data
//! map. With thousands of VDIs the round trips dominate, so [`Client::scan_vdis`]
//! sends the very same requests (same bytes, so a real sheep sees dog's
//! traffic) with up to [`ScanOptions::window`] VDIs in flight over the pool,
//! and yields the rows in vid order as they complete. Nothing is kept once a
//! row is handed out: memory is bounded by the window (and by
//! [`MAP_BUDGET`] for the maps of large VDIs), not by the number of VDIs.

use super::map::map_read_len;
use super::pool::Client;
use super::vdi::VdiEntry;
use super::{Error, Result};
use crate::proto::bitmap::VidBitmap;
use crate::proto::bytes::{get_u16, get_u32, get_u64};
use crate::proto::inode::{self, InodeHeader, SD_INODE_HEADER_SIZE};
use crate::proto::{flags, oid, SdRes};
use futures::stream::{self, Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// VDIs in flight by default: enough to hide the round trip, few enough that
/// a sheep serving others is not flooded.
pub const DEFAULT_WINDOW: usize = 128;

/// Map bytes (flat maps, B-tree leaves) a scan holds at most at once: a
/// 4 TiB VDI's map is 4 MiB, a B-tree leaf 4 MiB, so a window full of them
/// would otherwise cost hundreds of MiB.
pub const MAP_BUDGET: usize = 32 << 20;

/// Permits are counted in KiB so that the budget fits a semaphore's u32.
const PERMIT: usize = 1024;

/// How to scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Read the used part of each data map (and B-tree leaves) to count used
    /// and shared objects, as `vdi list` does; otherwise headers only, as
    /// `node info` does.
    pub with_map: bool,
    /// VDIs in flight at once (at least 1).
    pub window: usize,
    /// dog's `vdi list -o OID`: also report the 32-bit word at this index of
    /// the map bytes as read.
    pub probe_word: Option<usize>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            with_map: true,
            window: DEFAULT_WINDOW,
            probe_word: None,
        }
    }
}

/// One VDI as a scan read it.
#[derive(Debug)]
pub struct ScannedVdi {
    /// The header and the used and shared counts.
    pub entry: VdiEntry,
    /// The word at [`ScanOptions::probe_word`] of the map bytes (0 if none).
    pub probe: u32,
    /// B-tree leaves that could not be read; their entries are not counted
    /// (dog prints a message and goes on).
    pub leaf_errors: Vec<(u64, Error)>,
}

/// Which read of a VDI failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStage {
    /// The inode header.
    Header,
    /// The used part of the data map.
    Map,
}

/// A VDI whose inode could not be read.
#[derive(Debug)]
pub struct ScanError {
    /// The VDI.
    pub vid: u32,
    /// The object whose read failed.
    pub oid: u64,
    /// Which read failed.
    pub stage: ScanStage,
    /// Why.
    pub error: Error,
}

/// What the scan of one vid found.
pub type ScanItem = std::result::Result<ScannedVdi, ScanError>;

/// The live vids: in use and not deleted, ascending.
pub fn live_vids(inuse: &VidBitmap, deleted: &VidBitmap) -> Vec<u32> {
    inuse.iter_set().filter(|&v| !deleted.test(v)).collect()
}

/// Permits for `bytes` of map, at least one and never more than the budget.
fn permits(bytes: usize) -> u32 {
    bytes.div_ceil(PERMIT).clamp(1, MAP_BUDGET / PERMIT) as u32
}

/// Counts of a map: (entries equal to `vid`, other non-zero entries).
#[derive(Default)]
struct Counts {
    own: u64,
    shared: u64,
}

impl Counts {
    fn add(&mut self, vid: u32, v: u32) {
        if v == vid {
            self.own += 1;
        } else if v != 0 {
            self.shared += 1;
        }
    }
}

impl Client {
    /// READ_VDIS and READ_DEL_VDIS once: the live vids, ascending.
    pub async fn live_vids(&self) -> Result<Vec<u32>> {
        let inuse = self.vdi_bitmap(false).await?;
        let deleted = self.vdi_bitmap(true).await?;
        Ok(live_vids(&inuse, &deleted))
    }

    /// Reads the inode of every vid of `vids` with up to `opts.window` in
    /// flight, yielding in the order of `vids`. VDIs without a name (deleted
    /// inodes) are left out; a failed read is an `Err` item and the scan goes
    /// on, so the caller decides (dog prints and continues).
    pub fn scan_vdis(
        &self,
        vids: Vec<u32>,
        opts: ScanOptions,
    ) -> impl Stream<Item = ScanItem> + Send + 'static {
        let budget = Arc::new(Semaphore::new(MAP_BUDGET / PERMIT));
        let client = self.clone();
        stream::iter(vids)
            .map(move |vid| {
                let (c, b) = (client.clone(), budget.clone());
                async move { c.scan_one(vid, opts, &b).await }
            })
            .buffered(opts.window.max(1))
            .filter_map(|r| async move { r.transpose() })
    }

    /// Every live VDI in vid order, handed to `f` as it arrives: the
    /// library's listing (sheepfs, dogfmt). A VDI whose inode vanished
    /// meanwhile (NO_OBJ, deleted under us) is skipped; any other failure
    /// ends the listing with that error.
    pub async fn for_each_vdi(&self, with_map: bool, mut f: impl FnMut(&VdiEntry)) -> Result<()> {
        let vids = self.live_vids().await?;
        let opts = ScanOptions {
            with_map,
            ..Default::default()
        };
        let mut s = std::pin::pin!(self.scan_vdis(vids, opts));
        while let Some(item) = s.next().await {
            match item {
                Ok(mut v) => match v.leaf_errors.pop() {
                    Some((_, e)) => return Err(e),
                    None => f(&v.entry),
                },
                Err(e) if e.stage == ScanStage::Header && e.error.is(SdRes::NO_OBJ) => {}
                Err(e) => return Err(e.error),
            }
        }
        Ok(())
    }

    /// Every live VDI (working, snapshots, clones), ascending by vid, as dog
    /// lists them, collected. For large clusters prefer
    /// [`Client::for_each_vdi`], which holds one window of VDIs, not all.
    pub async fn list_vdis(&self) -> Result<Vec<VdiEntry>> {
        let mut out = Vec::new();
        self.for_each_vdi(true, |e| out.push(e.clone())).await?;
        Ok(out)
    }

    /// One vid: the header (plus the B-tree header), then if asked the used
    /// part of the map and the leaves it points to. `Ok(None)`: no VDI there.
    async fn scan_one(
        &self,
        vid: u32,
        opts: ScanOptions,
        budget: &Semaphore,
    ) -> std::result::Result<Option<ScannedVdi>, ScanError> {
        let ioid = oid::vid_to_vdi_oid(vid);
        let fail = |stage, error| ScanError {
            vid,
            oid: ioid,
            stage,
            error,
        };
        let head = self
            .read_obj(ioid, 0, inode::INODE_LIST_READ as u32, flags::CMD_DIRECT)
            .await
            .map_err(|e| fail(ScanStage::Header, e))?;
        let Some(header) = InodeHeader::decode(&head) else {
            return Ok(None);
        };
        if header.is_deleted() {
            return Ok(None);
        }
        let mut row = ScannedVdi {
            entry: VdiEntry {
                header,
                used_objs: 0,
                shared_objs: 0,
            },
            probe: 0,
            leaf_errors: Vec::new(),
        };
        if !opts.with_map {
            return Ok(Some(row));
        }
        let h = &row.entry.header;
        let len = map_read_len(h, &head[SD_INODE_HEADER_SIZE..]);
        // Closed only by dropping the semaphore, which outlives the scan.
        let _held = budget.acquire_many(permits(len as usize)).await;
        let area = self
            .read_obj(ioid, SD_INODE_HEADER_SIZE as u32, len, flags::CMD_DIRECT)
            .await
            .map_err(|e| fail(ScanStage::Map, e))?;
        if let Some(i) = opts.probe_word {
            if 4 * i + 4 <= area.len() {
                row.probe = get_u32(&area, 4 * i);
            }
        }
        let counts = if h.is_hyper() {
            drop(_held);
            self.count_btree(h, &area, budget, &mut row.leaf_errors)
                .await
        } else {
            let mut c = Counts::default();
            let n = (h.nr_objs() as usize).min(area.len() / 4);
            for i in 0..n {
                c.add(vid, get_u32(&area, 4 * i));
            }
            c
        };
        row.entry.used_objs = counts.own;
        row.entry.shared_objs = counts.shared;
        Ok(Some(row))
    }

    /// dog's `sd_inode_stat` of a B-tree map: the root's entries (depth 1)
    /// or those of every leaf it points to (depth 2, one read per leaf).
    async fn count_btree(
        &self,
        h: &InodeHeader,
        root: &[u8],
        budget: &Semaphore,
        errors: &mut Vec<(u64, Error)>,
    ) -> Counts {
        let mut c = Counts::default();
        // A root never initialised (all zero) is an empty tree, as in `Btree::from_root`.
        if root.len() < 8 || root[..8].iter().all(|&b| b == 0) {
            return c;
        }
        let entries = get_u32(root, 4) as usize;
        let count_leaf = |c: &mut Counts, node: &[u8], n: usize| {
            for k in 0..n.min((node.len().saturating_sub(8)) / 8) {
                c.add(h.vdi_id, get_u32(node, 8 + 8 * k + 4));
            }
        };
        match get_u16(root, 2) {
            1 => count_leaf(&mut c, root, entries),
            2 => {
                for i in 0..entries.min((root.len() - 8) / 16) {
                    let leaf = get_u64(root, 8 + 16 * i + 8);
                    let _held = budget.acquire_many(permits(inode::BTREE_NODE_SIZE)).await;
                    match self
                        .read_obj(leaf, 0, inode::BTREE_NODE_SIZE as u32, flags::CMD_DIRECT)
                        .await
                    {
                        Ok(node) => {
                            let n = if node.len() >= 8 {
                                get_u32(&node, 4) as usize
                            } else {
                                0
                            };
                            count_leaf(&mut c, &node, n);
                        }
                        Err(e) => errors.push((leaf, e)),
                    }
                }
            }
            // dog prints "This B-tree not support depth N" and counts nothing.
            d => errors.push((
                oid::vid_to_vdi_oid(h.vdi_id),
                Error::Btree {
                    vid: h.vdi_id,
                    source: inode::BtreeError::BadDepth(d),
                },
            )),
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64, hyper: bool) -> InodeHeader {
        InodeHeader {
            vdi_size: size,
            block_size_shift: 22,
            store_policy: hyper as u8,
            ..Default::default()
        }
    }

    #[test]
    fn map_read_len_like_dog() {
        assert_eq!(map_read_len(&header(1 << 30, false), &[]), 256 * 4);
        // A flat map never reads past its area.
        assert_eq!(
            map_read_len(&header(u64::MAX, false), &[]) as usize,
            inode::SD_INODE_DATA_INDEX_SIZE
        );
        let bt = |depth: u16, entries: u32| {
            let mut b = vec![0u8; 8];
            b[2..4].copy_from_slice(&depth.to_le_bytes());
            b[4..8].copy_from_slice(&entries.to_le_bytes());
            b
        };
        let hy = header(5 << 40, true);
        assert_eq!(map_read_len(&hy, &bt(1, 3)), 8 + 24);
        assert_eq!(map_read_len(&hy, &bt(2, 3)), 8 + 48);
        assert!(map_read_len(&hy, &bt(2, u32::MAX)) as usize <= inode::SD_INODE_DATA_INDEX_SIZE);
    }

    #[test]
    fn permits_are_bounded() {
        assert_eq!(permits(0), 1);
        assert_eq!(permits(4096), 4);
        assert_eq!(permits(usize::MAX) as usize, MAP_BUDGET / PERMIT);
    }

    #[test]
    fn live_vids_skip_deleted() {
        let (mut u, mut d) = (VidBitmap::new(), VidBitmap::new());
        for v in [3, 9, 0x7c2b25] {
            u.set(v);
        }
        d.set(9);
        assert_eq!(live_vids(&u, &d), vec![3, 0x7c2b25]);
    }
}
