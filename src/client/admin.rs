//! VDI administration, request for request as dog does it: create (with
//! preallocation), snapshot, clone, delete, resize. sheepctl is a thin
//! front end over these; errors say which step failed and on which object
//! ([`Error::At`]), so a front end can print dog's message for each.

use super::dogmap::InodeMap;
use super::error::Step;
use super::ops::ObjWrite;
use super::pool::Client;
use super::request::Request;
use super::vdi::{check_name, check_size, SnapSel};
use super::{Error, Result};
use crate::proto::header::VdiArgs;
use crate::proto::inode::{self, InodeHeader, SD_INODE_HEADER_SIZE, SD_INODE_SIZE};
use crate::proto::node::{ClusterInfo, CLUSTER_INFO_SIZE};
use crate::proto::{flags, oid, op, ReqHeader, SdRes, SD_DEFAULT_BLOCK_SIZE_SHIFT};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Called with (bytes done, bytes in all) as preallocation or cloning goes.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Options of `vdi create` (dog's `-c`, `-z`, `-y`, `-P`).
#[derive(Clone, Default)]
pub struct CreateOptions {
    /// 0: cluster default.
    pub copies: u8,
    /// Erasure coding (dog's `-c DATA:PARITY`); 0: replication.
    pub copy_policy: u8,
    /// None: cluster default (dog asks CLUSTER_INFO for it).
    pub block_size_shift: Option<u8>,
    /// B-tree inode (store_policy 1), sizes past 4 TiB.
    pub hyper: bool,
    /// Allocate every object now.
    pub prealloc: bool,
    /// Preallocation progress.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for CreateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateOptions")
            .field("copies", &self.copies)
            .field("copy_policy", &self.copy_policy)
            .field("block_size_shift", &self.block_size_shift)
            .field("hyper", &self.hyper)
            .field("prealloc", &self.prealloc)
            .finish()
    }
}

/// Options of `vdi delete` (dog's `-B`, `-I`, `-m`).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Map entries cleared per inode write (0: dog's 128).
    pub batch: u32,
    /// Pause between batches.
    pub interval: Duration,
    /// Clear at most this many entries and keep the VDI (0: all, then DEL_VDI).
    pub max_reclaim: u64,
    /// Walk a hyper volume's map as a flat array too, as dog does (it then
    /// zeroes the B-tree root). Off: a hyper volume's map is left to sheep.
    pub dog_hyper_walk: bool,
}

/// A VDI's `(copies, copy_policy)`, which its objects are written with.
fn redundancy(h: &InodeHeader) -> (u8, u8) {
    (h.nr_copies, h.copy_policy)
}

fn at(step: Step, oid: u64) -> impl FnOnce(Error) -> Error {
    move |e| Error::At {
        step,
        oid,
        source: Box::new(e),
    }
}

impl Client {
    /// One object write as dog's `dog_write_object` sends it: no COW,
    /// `(copies, copy_policy)`, DIRECT when `direct`.
    async fn write_object_dog(&self, w: ObjWrite, copies: (u8, u8), direct: bool) -> Result<()> {
        let fl = if direct { flags::CMD_DIRECT } else { 0 };
        self.write_obj(w.with_flags(fl).with_copies(copies.0, copies.1))
            .await
    }

    /// GET_VDI_INFO as a step of an admin operation.
    async fn lookup_step(&self, name: &str, sel: &SnapSel) -> Result<u32> {
        self.vdi_lookup(name, sel)
            .await
            .map(|id| id.vid)
            .map_err(at(Step::Lookup, 0))
    }

    /// A READ_OBJ (DIRECT) of `len` bytes of the inode of `vid`.
    async fn read_inode_step(&self, vid: u32, len: usize, direct: bool) -> Result<Vec<u8>> {
        let ioid = oid::vid_to_vdi_oid(vid);
        let fl = if direct { flags::CMD_DIRECT } else { 0 };
        self.read_obj(ioid, 0, len as u32, fl)
            .await
            .map_err(at(Step::ReadInode, ioid))
    }

    fn header_of(&self, vid: u32, b: &[u8]) -> Result<InodeHeader> {
        InodeHeader::decode(b).ok_or_else(|| {
            at(Step::ReadInode, oid::vid_to_vdi_oid(vid))(Error::Protocol {
                addr: self.addr().to_string(),
                what: format!("short inode of VDI {vid:x}"),
            })
        })
    }

    /// The cluster's object size shift, as dog's `vdi create` asks for it:
    /// a cluster that was never formatted (ctime 0) is WAIT_FOR_FORMAT,
    /// checked before the result as dog does.
    async fn cluster_shift(&self) -> Result<u8> {
        let mut h = ReqHeader::for_op(op::CLUSTER_INFO);
        h.data_length = CLUSTER_INFO_SIZE as u32;
        let step = at(Step::ClusterInfo, 0);
        let rsp = match self.send(Request::new(h).not_idempotent()).await {
            Ok(r) => r,
            Err(e) => return Err(step(e)),
        };
        let mut data = rsp.data.clone();
        // A short reply reads as zeros (dog's buffer is zeroed).
        data.resize(CLUSTER_INFO_SIZE, 0);
        let ci = ClusterInfo::decode(&data).unwrap_or_default();
        if ci.ctime == 0 {
            return Err(step(Error::sheep(op::CLUSTER_INFO, SdRes::WAIT_FOR_FORMAT)));
        }
        if rsp.result() != SdRes::SUCCESS {
            return Err(step(Error::sheep(op::CLUSTER_INFO, rsp.result())));
        }
        Ok(ci.block_size_shift)
    }

    /// Creates a VDI (thin unless `opts.prealloc`) and returns its vid. Size
    /// limits as dog's ([`Error::TooLarge`]).
    pub async fn create_vdi(&self, name: &str, size: u64, opts: &CreateOptions) -> Result<u32> {
        check_name(name)?;
        let shift = match (opts.block_size_shift, opts.hyper) {
            (Some(s), _) => s,
            // Hyper volumes always use the default object size.
            (None, true) => SD_DEFAULT_BLOCK_SIZE_SHIFT,
            (None, false) => self.cluster_shift().await?,
        };
        check_size(size, shift, opts.hyper)?;
        // dog sends 0 (cluster default) unless -z or -y was given.
        let wire_shift = if opts.block_size_shift.is_some() || opts.hyper {
            shift
        } else {
            0
        };
        let args = VdiArgs {
            vdi_size: size,
            copies: opts.copies,
            copy_policy: opts.copy_policy,
            store_policy: opts.hyper as u8,
            block_size_shift: wire_shift,
            ..Default::default()
        };
        let vid = self
            .new_vdi(name, args)
            .await
            .map_err(at(Step::NewVdi, 0))?
            .vid;
        if opts.prealloc {
            self.preallocate(vid, size, opts.progress.as_ref()).await?;
        }
        Ok(vid)
    }

    /// dog's `-P`: every data object up to `size`, created and recorded in
    /// the inode one by one.
    async fn preallocate(&self, vid: u32, size: u64, progress: Option<&ProgressFn>) -> Result<()> {
        let b = self.read_inode_step(vid, SD_INODE_SIZE, true).await?;
        let mut m = InodeMap::new(b).ok_or_else(|| self.header_of(vid, &[]).unwrap_err())?;
        let obj = 1u64 << (m.header.block_size_shift & 31);
        let max_idx = size.div_ceil(obj) as u32;
        let total = m.header.vdi_size;
        let copies = (m.header.nr_copies, m.header.copy_policy);
        for idx in 0..max_idx {
            if let Some(p) = progress {
                p(idx as u64 * obj, total);
            }
            self.alloc_data_obj(&mut m, vid, idx, Bytes::new(), copies)
                .await?;
        }
        if let Some(p) = progress {
            p(max_idx as u64 * obj, total);
        }
        Ok(())
    }

    /// dog's allocation of data object `idx` of `vid` (create -P, clone): the
    /// object (CREATE_AND_WRITE, DIRECT) with `data`, then its map entry.
    async fn alloc_data_obj(
        &self,
        m: &mut InodeMap,
        vid: u32,
        idx: u32,
        data: Bytes,
        (copies, policy): (u8, u8),
    ) -> Result<()> {
        let doid = oid::vid_to_data_oid(vid, idx);
        let w = ObjWrite::new(doid, 0, data).creating(0);
        self.write_object_dog(w, (copies, policy), true)
            .await
            .map_err(at(Step::WriteData, doid))?;
        self.load_leaf(m, idx).await?;
        let writes = m.set(idx, vid);
        let copies = redundancy(&m.header);
        for n in writes {
            let mut w = ObjWrite::new(n.oid, n.offset as u32, n.data);
            if n.create {
                w = w.creating(0);
            }
            self.write_object_dog(w, copies, false)
                .await
                .map_err(at(Step::WriteInode, n.oid))?;
        }
        self.write_vid(m, idx, vid).await
    }

    /// Loads the depth-2 leaf a lookup of `idx` needs (dog reads it DIRECT).
    async fn load_leaf(&self, m: &mut InodeMap, idx: u32) -> Result<()> {
        if let Some(loid) = m.missing_leaf(idx) {
            let b = self
                .read_obj(loid, 0, inode::BTREE_NODE_SIZE as u32, flags::CMD_DIRECT)
                .await
                .map_err(at(Step::ReadInode, loid))?;
            m.add_leaf(loid, &b);
        }
        Ok(())
    }

    /// `sd_inode_write_vid`: persists data_vdi_id[idx] (flat, DIRECT) or the
    /// B-tree root and btree_counter (hyper).
    async fn write_vid(&self, m: &InodeMap, idx: u32, vid: u32) -> Result<()> {
        let h = &m.header;
        let ioid = oid::vid_to_vdi_oid(vid);
        let w = |off: u64, data: Vec<u8>, direct: bool| {
            let w = ObjWrite::new(ioid, off as u32, data);
            self.write_object_dog(w, redundancy(h), direct)
        };
        let r = if !m.is_hyper() {
            w(
                inode::data_vdi_id_offset(idx),
                vid.to_le_bytes().to_vec(),
                true,
            )
            .await
        } else {
            let c = inode::BTREE_COUNTER_OFFSET;
            match w(0, m.root_bytes(), false).await {
                Ok(()) => w(c as u64, m.buf[c..c + 4].to_vec(), false).await,
                Err(e) => Err(e),
            }
        };
        r.map_err(at(Step::WriteInode, ioid))
    }

    /// Snapshots the working VDI `name`, tagging the snapshot with `tag`
    /// (may be empty). Returns (snapshot vid, new working vid).
    pub async fn snapshot_vdi(&self, name: &str, tag: &str) -> Result<(u32, u32)> {
        self.snapshot_vdi_with(name, tag, false)
            .await
            .map(|s| s.unwrap_or_default())
    }

    /// [`Client::snapshot_vdi`] as dog's `vdi snapshot`; with
    /// `reduce_identical` (dog's `-R`) a VDI without objects of its own is
    /// not snapshotted (Ok(None)). A tag in use is [`SdRes::VDI_EXIST`] at
    /// [`Step::Lookup`].
    pub async fn snapshot_vdi_with(
        &self,
        name: &str,
        tag: &str,
        reduce_identical: bool,
    ) -> Result<Option<(u32, u32)>> {
        let (vid, b) = match self.vdi_lookup(name, &SnapSel::Tag(tag.into())).await {
            Err(e) if e.is(SdRes::NO_TAG) => {
                let vid = self.lookup_step(name, &SnapSel::Working).await?;
                (
                    vid,
                    self.read_inode_step(vid, SD_INODE_HEADER_SIZE, true)
                        .await?,
                )
            }
            Err(e) => return Err(at(Step::LookupTag, 0)(e)),
            Ok(id) => {
                let ioid = oid::vid_to_vdi_oid(id.vid);
                let b = self
                    .read_obj(ioid, 0, SD_INODE_HEADER_SIZE as u32, flags::CMD_DIRECT)
                    .await
                    .map_err(at(Step::LookupTag, ioid))?;
                if self.header_of(id.vid, &b)?.is_snapshot() {
                    let e = Error::sheep(op::GET_VDI_INFO, SdRes::VDI_EXIST);
                    return Err(at(Step::LookupTag, 0)(e));
                }
                (id.vid, b)
            }
        };
        let h = self.header_of(vid, &b)?;
        if h.is_hyper() {
            return Err(Error::Invalid(
                "creating a snapshot of hypervolume is not supported".into(),
            ));
        }
        if reduce_identical {
            let ioid = oid::vid_to_vdi_oid(vid);
            let b = self
                .read_obj(ioid, 0, SD_INODE_SIZE as u32, flags::CMD_DIRECT)
                .await
                .map_err(at(Step::ReadMap, ioid))?;
            let own = b[SD_INODE_HEADER_SIZE..]
                .chunks_exact(4)
                .take(inode::SD_INODE_DATA_INDEX)
                .any(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) == vid);
            if !own {
                return Ok(None);
            }
        }
        let ioid = oid::vid_to_vdi_oid(vid);
        let tag_field = crate::proto::bytes::padded(tag, 256);
        let w = ObjWrite::new(ioid, inode::TAG_OFFSET as u32, tag_field);
        self.write_object_dog(w, redundancy(&h), false)
            .await
            .map_err(at(Step::WriteInode, ioid))?;
        let args = VdiArgs {
            vdi_size: h.vdi_size,
            base_vdi_id: vid,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            store_policy: h.store_policy,
            block_size_shift: h.block_size_shift,
            snapid: 1,
            ..Default::default()
        };
        let new = self
            .new_vdi(name, args)
            .await
            .map_err(at(Step::NewVdi, 0))?;
        Ok(Some((vid, new.vid)))
    }

    /// Clones snapshot `sel` of `src` into a new working VDI `dst`.
    pub async fn clone_vdi(&self, src: &str, sel: &SnapSel, dst: &str) -> Result<u32> {
        self.clone_vdi_with(src, sel, dst, false, false, None).await
    }

    /// [`Client::clone_vdi`] as dog's `vdi clone`: `prealloc` (`-P`)
    /// allocates every object of the clone, `no_share` (`-n`) copies the
    /// data instead of sharing it with the snapshot.
    pub async fn clone_vdi_with(
        &self,
        src: &str,
        sel: &SnapSel,
        dst: &str,
        prealloc: bool,
        no_share: bool,
        progress: Option<&ProgressFn>,
    ) -> Result<u32> {
        check_name(dst)?;
        let base = self.lookup_step(src, sel).await?;
        let b = self.read_inode_step(base, SD_INODE_SIZE, true).await?;
        let mut src_map = InodeMap::new(b).ok_or_else(|| self.header_of(base, &[]).unwrap_err())?;
        let h = src_map.header.clone();
        if !h.is_snapshot() {
            return Err(Error::Invalid(format!(
                "only snapshot VDIs can be cloned; {src}{sel} is not a snapshot"
            )));
        }
        let args = VdiArgs {
            vdi_size: h.vdi_size,
            base_vdi_id: if no_share { 0 } else { base },
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            store_policy: h.store_policy,
            block_size_shift: h.block_size_shift,
            ..Default::default()
        };
        let new_vid = self
            .new_vdi(dst, args)
            .await
            .map_err(at(Step::NewVdi, 0))?
            .vid;
        if !(prealloc || no_share) {
            return Ok(new_vid);
        }
        // dog reads the new inode back by name.
        let vid = self
            .vdi_lookup(dst, &SnapSel::Working)
            .await
            .map_err(at(Step::Reopen, 0))?
            .vid;
        let ioid = oid::vid_to_vdi_oid(vid);
        let nb = self
            .read_obj(ioid, 0, SD_INODE_HEADER_SIZE as u32, flags::CMD_DIRECT)
            .await
            .map_err(at(Step::Reopen, ioid))?;
        let mut new_map = InodeMap::new(nb).ok_or_else(|| self.header_of(vid, &[]).unwrap_err())?;
        let obj = 1u64 << (h.block_size_shift & 31);
        let max_idx = h.nr_objs() as u32;
        // The data is written with the source's redundancy, as dog does.
        let copies = (h.nr_copies, h.copy_policy);
        for idx in 0..max_idx {
            if let Some(p) = progress {
                p(idx as u64 * obj, h.vdi_size);
            }
            self.load_leaf(&mut src_map, idx).await?;
            let from = src_map.get(idx);
            let data = if from != 0 {
                let doid = oid::vid_to_data_oid(from, idx);
                self.read_obj(doid, 0, obj as u32, flags::CMD_DIRECT)
                    .await
                    .map_err(at(Step::ReadData, doid))?
                    .into()
            } else if no_share && !prealloc {
                continue;
            } else {
                Bytes::new()
            };
            self.alloc_data_obj(&mut new_map, new_vid, idx, data, copies)
                .await?;
        }
        if let Some(p) = progress {
            p(max_idx as u64 * obj, h.vdi_size);
        }
        Ok(new_vid)
    }

    /// Deletes a VDI (or one snapshot): clears its data map in batches as dog
    /// does (sheep refuses to drop objects still mapped), then DEL_VDI.
    pub async fn delete_vdi(&self, name: &str, sel: &SnapSel) -> Result<u32> {
        self.delete_vdi_with(name, sel, &DeleteOptions::default())
            .await
    }

    /// [`Client::delete_vdi`] with dog's batching options.
    pub async fn delete_vdi_with(
        &self,
        name: &str,
        sel: &SnapSel,
        opts: &DeleteOptions,
    ) -> Result<u32> {
        let vid = self.lookup_step(name, sel).await?;
        let ioid = oid::vid_to_vdi_oid(vid);
        let mut b = self.read_inode_step(vid, SD_INODE_SIZE, false).await?;
        let h = self.header_of(vid, &b)?;
        let batch = if opts.batch == 0 { 128 } else { opts.batch };
        let nr_objs = if h.is_hyper() && !opts.dog_hyper_walk {
            0
        } else {
            h.nr_objs() as i32 as i64
        };
        let cap = ((SD_INODE_SIZE - SD_INODE_HEADER_SIZE) / 4) as i64;
        let map_off = |i: i64| SD_INODE_HEADER_SIZE + 4 * i.min(cap) as usize;
        let entry = |b: &[u8], i: i64| i < cap && b[map_off(i)..map_off(i) + 4] != [0; 4];
        let max = opts.max_reclaim as i64;
        let (mut i, mut reclaimed) = (0i64, 0i64);
        while i < nr_objs {
            if max != 0 && max <= reclaimed {
                break;
            }
            while i < nr_objs && !entry(&b, i) {
                i += 1;
            }
            let start = i;
            let mut filled = 0;
            while i < nr_objs && filled < batch {
                if entry(&b, i) {
                    b[map_off(i)..map_off(i) + 4].fill(0);
                    filled += 1;
                    reclaimed += 1;
                }
                i += 1;
                if max != 0 && max <= reclaimed {
                    break;
                }
            }
            let (from, to) = (map_off(start), map_off(i));
            let w = ObjWrite::new(ioid, from as u32, b[from..to].to_vec());
            self.write_object_dog(w, redundancy(&h), true)
                .await
                .map_err(at(Step::WriteInode, ioid))?;
            if i < nr_objs && !opts.interval.is_zero() {
                tokio::time::sleep(opts.interval).await;
            }
        }
        if max != 0 {
            return Ok(vid);
        }
        self.del_vdi(name, sel).await.map_err(at(Step::DelVdi, 0))?;
        Ok(vid)
    }

    /// Grows a working VDI (shrinking is refused, as dog does).
    pub async fn resize_vdi(&self, name: &str, new_size: u64) -> Result<()> {
        let vid = self.lookup_step(name, &SnapSel::Working).await?;
        self.resize_inode(vid, new_size, false).await.map(|_| ())
    }

    /// Sets the size of VDI `vid`: reads the inode header, refuses a shrink
    /// or a size the inode cannot map, writes the new size (both DIRECT).
    ///
    /// Without `unless_snapshot` (`vdi resize`), the whole header is written
    /// back, as dog does. With it (a volume in use), only the 8 bytes of
    /// `vdi_size` are, and a VDI that is a snapshot is left as it is, and so
    /// is one that became a snapshot meanwhile (its old size is put back):
    /// Ok(false), so the caller can follow the working VDI and retry. A
    /// snapshot may be taken underneath by another client at any time, and a
    /// write of ours that timed out may still land after it; writing the
    /// whole header back would then clear the snapshot's tag and snap_ctime
    /// (the snapshot lost, its VDI a second working VDI of that name).
    pub(crate) async fn resize_inode(
        &self,
        vid: u32,
        new_size: u64,
        unless_snapshot: bool,
    ) -> Result<bool> {
        let b = self
            .read_inode_step(vid, SD_INODE_HEADER_SIZE, true)
            .await?;
        let mut h = self.header_of(vid, &b)?;
        if unless_snapshot && h.snap_ctime != 0 {
            return Ok(false);
        }
        // Before the size rules, so that 0 is a shrink as with dog.
        if new_size < h.vdi_size {
            return Err(Error::Invalid("Shrinking VDIs is not implemented".into()));
        }
        check_size(new_size, h.block_size_shift, h.is_hyper())?;
        let ioid = oid::vid_to_vdi_oid(vid);
        let copies = redundancy(&h);
        if !unless_snapshot {
            h.vdi_size = new_size;
            let w = ObjWrite::new(ioid, 0, h.encode());
            self.write_object_dog(w, copies, true)
                .await
                .map_err(at(Step::WriteInode, ioid))?;
            return Ok(true);
        }
        let put_size = |size: u64| {
            let w = ObjWrite::new(
                ioid,
                inode::VDI_SIZE_OFFSET as u32,
                size.to_le_bytes().to_vec(),
            );
            self.write_object_dog(w, copies, true)
        };
        put_size(new_size)
            .await
            .map_err(at(Step::WriteInode, ioid))?;
        let b = self
            .read_inode_step(vid, SD_INODE_HEADER_SIZE, true)
            .await?;
        if self.header_of(vid, &b)?.snap_ctime == 0 {
            return Ok(true);
        }
        // Snapshotted under us: the snapshot keeps the size it had.
        put_size(h.vdi_size)
            .await
            .map_err(at(Step::WriteInode, ioid))?;
        Ok(false)
    }
}
