//! The high-level cluster and VDI API. Request sequences, flags and proto
//! versions follow what `dog` sends (see the captures), so a real sheep sees
//! the same traffic from us as from dog.

use super::pool::{Client, Request};
use super::volume::SnapSel;
use super::{Error, Result};
use crate::proto::attr::{VdiAttr, SD_ATTR_OBJ_SIZE};
use crate::proto::bitmap::VidBitmap;
use crate::proto::bytes::padded;
use crate::proto::header::{ClusterArgs, ClusterDefaultRsp, NodeRsp, ObjArgs, VdiArgs, VdiRsp};
use crate::proto::inode::{self, Btree, InodeHeader};
use crate::proto::node::{
    ClusterInfo, EpochLog, SdNode, VdiState, CLUSTER_INFO_SIZE, SD_NODE_SIZE,
};
use crate::proto::{
    flags, oid, op, validate_name, ReqHeader, SdRes, SD_MAX_NODES, SD_MAX_VDI_LEN, VDI_BITMAP_SIZE,
};
use bytes::Bytes;

/// A resolved VDI (GET_VDI_INFO / LOCK_VDI reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdiId {
    pub vid: u32,
    pub copies: u8,
    pub block_size_shift: u8,
}

/// The `data_vdi_id` map of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMap {
    /// store_policy 0: the first `nr_objs` entries of the flat array.
    Flat(Vec<u32>),
    /// store_policy 1 (hyper volume).
    Btree(Btree),
}

impl DataMap {
    pub fn get(&self, idx: u64) -> u32 {
        match self {
            DataMap::Flat(v) => v.get(idx as usize).copied().unwrap_or(0),
            DataMap::Btree(t) => u32::try_from(idx).map(|i| t.get(i)).unwrap_or(0),
        }
    }
    /// `(idx, vid)` of every allocated entry, ascending.
    pub fn allocated(&self) -> Vec<(u64, u32)> {
        match self {
            DataMap::Flat(v) => v
                .iter()
                .enumerate()
                .filter(|(_, &vid)| vid != 0)
                .map(|(i, &vid)| (i as u64, vid))
                .collect(),
            DataMap::Btree(t) => t
                .entries()
                .into_iter()
                .map(|(i, v)| (i as u64, v))
                .collect(),
        }
    }
}

/// An inode: header and data map.
#[derive(Debug, Clone)]
pub struct Inode {
    pub header: InodeHeader,
    pub map: DataMap,
}

/// One row of `vdi list`: the inode header plus dog's used/shared counts.
#[derive(Debug, Clone)]
pub struct VdiEntry {
    pub header: InodeHeader,
    /// Objects owned by this VDI (entries equal to its vid).
    pub used_objs: u64,
    /// Objects shared with an ancestor (non-zero entries of another vid).
    pub shared_objs: u64,
}

impl VdiEntry {
    pub fn used_bytes(&self) -> u64 {
        self.used_objs.wrapping_mul(self.header.object_size())
    }
    pub fn shared_bytes(&self) -> u64 {
        self.shared_objs.wrapping_mul(self.header.object_size())
    }
}

/// Options of `vdi create` (dog's `-c`, `-z`, `-y`, `-P`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// 0: cluster default.
    pub copies: u8,
    pub copy_policy: u8,
    /// None: cluster default (dog asks CLUSTER_INFO for it).
    pub block_size_shift: Option<u8>,
    /// B-tree inode (store_policy 1), sizes past 4 TiB.
    pub hyper: bool,
    /// Allocate every object now.
    pub prealloc: bool,
}

/// name[256] + tag[256], the lookup payload.
fn name_tag_payload(name: &str, tag: &str) -> Vec<u8> {
    let mut v = padded(name, SD_MAX_VDI_LEN);
    v.extend_from_slice(&padded(tag, SD_MAX_VDI_LEN));
    v
}

fn sel_parts(sel: &SnapSel) -> (&str, u32) {
    match sel {
        SnapSel::Working => ("", 0),
        SnapSel::Tag(t) => (t.as_str(), 0),
        SnapSel::Id(id) => ("", *id),
    }
}

fn check_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|e| Error::Invalid(format!("'{}': {e}", name.escape_debug())))
}

impl Client {
    // ---------------------------------------------------------------- objects

    /// READ_OBJ `len` bytes at `offset` of `oid`.
    pub async fn read_obj(&self, oid: u64, offset: u32, len: u32, fl: u16) -> Result<Vec<u8>> {
        let mut h = ReqHeader::for_op(op::READ_OBJ);
        h.flags = fl;
        h.data_length = len;
        h.args = ObjArgs {
            oid,
            offset,
            ..Default::default()
        }
        .encode();
        let rsp = self.call(Request::new(h)).await?;
        if rsp.data.len() != len as usize {
            return Err(Error::Protocol {
                addr: self.addr().to_string(),
                what: format!(
                    "READ_OBJ of {oid:016x} returned {} bytes, expected {len}",
                    rsp.data.len()
                ),
            });
        }
        Ok(rsp.data)
    }

    /// WRITE_OBJ, or CREATE_AND_WRITE_OBJ when `create` (with COW from `cow_oid` if non-zero).
    #[allow(clippy::too_many_arguments)]
    pub async fn write_obj(
        &self,
        oid: u64,
        cow_oid: u64,
        offset: u32,
        data: Bytes,
        fl: u16,
        create: bool,
        copies: u8,
    ) -> Result<()> {
        let opcode = if create {
            op::CREATE_AND_WRITE_OBJ
        } else {
            op::WRITE_OBJ
        };
        let mut h = ReqHeader::for_op(opcode);
        h.flags = fl | flags::CMD_WRITE;
        if cow_oid != 0 {
            h.flags |= flags::CMD_COW;
        }
        h.data_length = data.len() as u32;
        h.args = ObjArgs {
            oid,
            cow_oid,
            copies,
            offset,
            ..Default::default()
        }
        .encode();
        self.call(Request {
            hdr: h,
            payload: data,
            idempotent: true,
        })
        .await?;
        Ok(())
    }

    pub async fn remove_obj(&self, oid: u64) -> Result<()> {
        let mut h = ReqHeader::for_op(op::REMOVE_OBJ);
        h.args = ObjArgs {
            oid,
            ..Default::default()
        }
        .encode();
        self.call(Request::new(h)).await.map(|_| ())
    }

    pub async fn discard_obj(&self, oid: u64) -> Result<()> {
        let mut h = ReqHeader::for_op(op::DISCARD_OBJ);
        h.args = ObjArgs {
            oid,
            ..Default::default()
        }
        .encode();
        self.call(Request::new(h)).await.map(|_| ())
    }

    /// FLUSH_VDI. INVALID_PARMS (a sheep without a write cache) counts as done.
    pub async fn flush_vdi(&self, vid: u32) -> Result<()> {
        let mut h = ReqHeader::for_op(op::FLUSH_VDI);
        h.args = ObjArgs {
            oid: oid::vid_to_vdi_oid(vid),
            ..Default::default()
        }
        .encode();
        let rsp = self.send(Request::new(h)).await?;
        match rsp.result() {
            SdRes::SUCCESS | SdRes::INVALID_PARMS => Ok(()),
            res => Err(Error::sheep(op::FLUSH_VDI, res)),
        }
    }

    // ---------------------------------------------------------------- cluster

    /// GET_NODE_LIST (dog's buffer size).
    pub async fn node_list(&self) -> Result<Vec<SdNode>> {
        let mut h = ReqHeader::for_op(op::GET_NODE_LIST);
        h.data_length = (SD_MAX_NODES * SD_NODE_SIZE) as u32;
        let rsp = self.call(Request::new(h)).await?;
        let nr = NodeRsp::decode(&rsp.hdr.args).nr_nodes as usize;
        let size = rsp.data.len().checked_div(nr).unwrap_or(SD_NODE_SIZE);
        if nr > 0 && size < SD_NODE_SIZE {
            return Err(Error::Protocol {
                addr: self.addr().to_string(),
                what: format!("node list of {nr} nodes in {} bytes", rsp.data.len()),
            });
        }
        (0..nr)
            .map(|i| SdNode::decode(&rsp.data[i * size..]))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Protocol {
                addr: self.addr().to_string(),
                what: format!("node list: {e}"),
            })
    }

    /// STAT_CLUSTER with `nodes_nr` slots per record and room for `records`.
    /// Returns the result (which reflects cluster status), the reply epoch and
    /// the records.
    pub async fn stat_cluster(
        &self,
        nodes_nr: u32,
        records: u32,
    ) -> Result<(SdRes, u32, Vec<EpochLog>)> {
        let stride = 48 + 80 * nodes_nr as usize;
        let mut h = ReqHeader::for_op(op::STAT_CLUSTER);
        h.data_length = stride
            .checked_mul(records as usize)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "STAT_CLUSTER reply of {records} records of {nodes_nr} nodes exceeds 4 GiB"
                ))
            })?;
        h.args = ClusterArgs {
            nodes_nr,
            ..Default::default()
        }
        .encode();
        let rsp = self.send(Request::new(h)).await?;
        let logs = rsp
            .data
            .chunks_exact(stride)
            .filter_map(|c| EpochLog::decode(c, nodes_nr as usize))
            .collect();
        Ok((rsp.result(), rsp.hdr.epoch, logs))
    }

    /// What `dog cluster info` gathers: status, epoch records with nodes.
    pub async fn cluster_status(&self) -> Result<(SdRes, Vec<EpochLog>)> {
        let nodes = self.node_list().await?;
        let (_, epoch, _) = self.stat_cluster(0, 1).await?;
        let mut n = nodes.len().max(1) as u32;
        loop {
            let (res, _, logs) = self.stat_cluster(n, epoch).await?;
            if res == SdRes::BUFFER_SMALL && n < SD_MAX_NODES as u32 {
                n *= 2;
                continue;
            }
            return Ok((res, logs));
        }
    }

    pub async fn cluster_info(&self) -> Result<ClusterInfo> {
        let mut h = ReqHeader::for_op(op::CLUSTER_INFO);
        h.data_length = CLUSTER_INFO_SIZE as u32;
        let rsp = self.call(Request::new(h)).await?;
        ClusterInfo::decode(&rsp.data).ok_or_else(|| Error::Protocol {
            addr: self.addr().to_string(),
            what: "short CLUSTER_INFO reply".into(),
        })
    }

    pub async fn cluster_default(&self) -> Result<ClusterDefaultRsp> {
        let rsp = self
            .call(Request::new(ReqHeader::for_op(op::GET_CLUSTER_DEFAULT)))
            .await?;
        Ok(ClusterDefaultRsp::decode(&rsp.hdr.args))
    }

    /// MAKE_FS with dog's defaults: ctime now, payload = store name + NUL.
    pub async fn make_fs(
        &self,
        copies: u8,
        copy_policy: u8,
        cluster_flags: u16,
        block_size_shift: u8,
        store: &str,
    ) -> Result<()> {
        let mut h = ReqHeader::for_op(op::MAKE_FS);
        h.args = ClusterArgs {
            ctime: crate::proto::sd_time_now(),
            copies,
            copy_policy,
            flags: cluster_flags,
            block_size_shift,
            ..Default::default()
        }
        .encode();
        let mut payload = store.as_bytes().to_vec();
        payload.push(0);
        self.call(Request::new(h).with_payload(payload).not_idempotent())
            .await
            .map(|_| ())
    }

    /// GET_STORE_LIST: the backend store names the server supports.
    pub async fn store_list(&self) -> Result<Vec<String>> {
        let mut h = ReqHeader::for_op(op::GET_STORE_LIST);
        h.data_length = 512;
        let rsp = self.call(Request::new(h)).await?;
        let end = rsp
            .data
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rsp.data.len());
        Ok(String::from_utf8_lossy(&rsp.data[..end])
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    pub async fn shutdown(&self) -> Result<()> {
        self.call(Request::new(ReqHeader::for_op(op::SHUTDOWN)).not_idempotent())
            .await
            .map(|_| ())
    }

    /// STAT_SHEEP: (store size, free bytes) of the node we talk to.
    pub async fn stat_sheep(&self) -> Result<(u64, u64)> {
        let rsp = self
            .call(Request::new(ReqHeader::for_op(op::STAT_SHEEP)))
            .await?;
        let n = NodeRsp::decode(&rsp.hdr.args);
        Ok((n.store_size, n.store_free))
    }

    /// READ_VDIS (in-use) or READ_DEL_VDIS (deleted) bitmap.
    pub async fn vdi_bitmap(&self, deleted: bool) -> Result<VidBitmap> {
        let mut h = ReqHeader::for_op(if deleted {
            op::READ_DEL_VDIS
        } else {
            op::READ_VDIS
        });
        h.data_length = VDI_BITMAP_SIZE as u32;
        let rsp = self.call(Request::new(h)).await?;
        Ok(VidBitmap::from_bytes(&rsp.data))
    }

    /// GET_VDI_COPIES: per-vid state (copies, locks), growing the buffer as dog does.
    pub async fn vdi_copies(&self) -> Result<Vec<VdiState>> {
        use crate::proto::node::VDI_STATE_SIZE;
        let mut count = 512usize;
        loop {
            let mut h = ReqHeader::for_op(op::GET_VDI_COPIES);
            h.data_length = (count * VDI_STATE_SIZE) as u32;
            let rsp = self.send(Request::new(h)).await?;
            match rsp.result() {
                SdRes::SUCCESS => {
                    return Ok(rsp
                        .data
                        .chunks_exact(VDI_STATE_SIZE)
                        .filter_map(VdiState::decode)
                        .collect())
                }
                SdRes::BUFFER_SMALL if count < (1 << 20) => count *= 2,
                res => return Err(Error::sheep(op::GET_VDI_COPIES, res)),
            }
        }
    }

    // ---------------------------------------------------------------- VDIs

    /// GET_VDI_INFO: resolve a name (and snapshot selector) to a vid.
    pub async fn vdi_lookup(&self, name: &str, sel: &SnapSel) -> Result<VdiId> {
        self.vdi_lookup_op(op::GET_VDI_INFO, name, sel, 0).await
    }

    /// LOCK_VDI (normal or shared); on a cluster without locking this is a lookup.
    pub async fn lock_vdi(&self, name: &str, sel: &SnapSel, lock_type: u32) -> Result<VdiId> {
        self.vdi_lookup_op(op::LOCK_VDI, name, sel, lock_type).await
    }

    async fn vdi_lookup_op(
        &self,
        opcode: u8,
        name: &str,
        sel: &SnapSel,
        lock_type: u32,
    ) -> Result<VdiId> {
        check_name(name)?;
        let (tag, snapid) = sel_parts(sel);
        let mut h = ReqHeader::for_op(opcode);
        h.args = VdiArgs {
            snapid,
            lock_type,
            ..Default::default()
        }
        .encode();
        let mut req = Request::new(h).with_payload(name_tag_payload(name, tag));
        if opcode == op::LOCK_VDI {
            req = req.not_idempotent();
        }
        let rsp = self.call(req).await?;
        let r = VdiRsp::decode(&rsp.hdr.args);
        Ok(VdiId {
            vid: r.vdi_id,
            copies: r.copies,
            block_size_shift: r.block_size_shift,
        })
    }

    /// RELEASE_VDI (the vid goes in base_vdi_id). VDI_NOT_LOCKED counts as done.
    pub async fn release_vdi(&self, vid: u32, lock_type: u32) -> Result<()> {
        let mut h = ReqHeader::for_op(op::RELEASE_VDI);
        h.args = VdiArgs {
            base_vdi_id: vid,
            lock_type,
            ..Default::default()
        }
        .encode();
        let rsp = self.send(Request::new(h)).await?;
        match rsp.result() {
            SdRes::SUCCESS | SdRes::VDI_NOT_LOCKED => Ok(()),
            res => Err(Error::sheep(op::RELEASE_VDI, res)),
        }
    }

    pub async fn read_inode_header(&self, vid: u32) -> Result<InodeHeader> {
        let b = self
            .read_obj(
                oid::vid_to_vdi_oid(vid),
                0,
                inode::SD_INODE_HEADER_SIZE as u32,
                flags::CMD_DIRECT,
            )
            .await?;
        self.decode_header(vid, &b)
    }

    fn decode_header(&self, vid: u32, b: &[u8]) -> Result<InodeHeader> {
        let h = InodeHeader::decode(b).ok_or_else(|| Error::Protocol {
            addr: self.addr().to_string(),
            what: format!("short inode of VDI {vid:x}"),
        })?;
        if !(crate::proto::MIN_BLOCK_SIZE_SHIFT..=crate::proto::MAX_BLOCK_SIZE_SHIFT)
            .contains(&h.block_size_shift)
            && !h.is_deleted()
        {
            return Err(Error::Protocol {
                addr: self.addr().to_string(),
                what: format!(
                    "inode of VDI {vid:x} has block_size_shift {}",
                    h.block_size_shift
                ),
            });
        }
        Ok(h)
    }

    /// Reads an inode. `whole`: one READ_OBJ of all 12,587,576 bytes as dog
    /// does for data commands; otherwise header + only the used part of the map.
    pub async fn read_inode(&self, vid: u32, whole: bool) -> Result<Inode> {
        let ioid = oid::vid_to_vdi_oid(vid);
        if !whole {
            let b = self
                .read_obj(ioid, 0, inode::INODE_LIST_READ as u32, flags::CMD_DIRECT)
                .await?;
            let header = self.decode_header(vid, &b)?;
            let map = self.read_map(ioid, &header, &b).await?;
            return Ok(Inode { header, map });
        }
        // read_obj returned exactly SD_INODE_SIZE bytes.
        let b = self
            .read_obj(ioid, 0, inode::SD_INODE_SIZE as u32, flags::CMD_DIRECT)
            .await?;
        let header = self.decode_header(vid, &b)?;
        let map = self
            .parse_map(&header, &b[inode::DATA_VDI_ID_OFFSET..inode::GREF_OFFSET])
            .await?;
        Ok(Inode { header, map })
    }

    /// The map of an inode whose first INODE_LIST_READ bytes are `head`: as
    /// dog does, reads just the part the header says is used, then parses it.
    async fn read_map(&self, ioid: u64, h: &InodeHeader, head: &[u8]) -> Result<DataMap> {
        let len = self.map_read_len(h, &head[inode::DATA_VDI_ID_OFFSET..])?;
        let area = self
            .read_obj(
                ioid,
                inode::DATA_VDI_ID_OFFSET as u32,
                len,
                flags::CMD_DIRECT,
            )
            .await?;
        self.parse_map(h, &area).await
    }

    /// dog's `sd_inode_get_meta_size`: the bytes of the map worth reading.
    fn map_read_len(&self, h: &InodeHeader, btree_hdr: &[u8]) -> Result<u32> {
        if h.is_hyper() {
            let t = inode::BtreeHeader::decode(btree_hdr).map_err(|source| Error::Btree {
                vid: h.vdi_id,
                source,
            })?;
            let n = t.entries as usize;
            let len = match t.depth {
                0 | 1 => 8 + 8 * n,
                2 => 8 + 16 * n,
                d => {
                    return Err(Error::Btree {
                        vid: h.vdi_id,
                        source: inode::BtreeError::BadDepth(d),
                    })
                }
            };
            Ok(len.min(inode::SD_INODE_DATA_INDEX_SIZE) as u32)
        } else {
            let max = inode::SD_INODE_SIZE - inode::SD_INODE_HEADER_SIZE - 4;
            Ok(((h.nr_objs() as usize) * 4).min(max) as u32)
        }
    }

    async fn parse_map(&self, h: &InodeHeader, area: &[u8]) -> Result<DataMap> {
        if !h.is_hyper() {
            let n = (h.nr_objs() as usize)
                .min(inode::SD_INODE_DATA_INDEX)
                .min(area.len() / 4);
            let v = (0..n)
                .map(|i| crate::proto::bytes::get_u32(area, 4 * i))
                .collect();
            return Ok(DataMap::Flat(v));
        }
        let bt = |e| Error::Btree {
            vid: h.vdi_id,
            source: e,
        };
        let mut t = Btree::from_root(area).map_err(bt)?;
        for (_, leaf) in t.root_indirect.clone() {
            // dog reads B-tree leaves with DIRECT (dog_bnode_reader).
            let node = self
                .read_obj(leaf, 0, inode::BTREE_NODE_SIZE as u32, flags::CMD_DIRECT)
                .await?;
            t.add_leaf(leaf, &node).map_err(bt)?;
        }
        Ok(DataMap::Btree(t))
    }

    /// Every live VDI (working, snapshots, clones), ascending by vid, as dog lists them.
    pub async fn list_vdis(&self) -> Result<Vec<VdiEntry>> {
        self.list_vdis_inner(true).await
    }

    /// Headers only (no map reads): dog's `node info` scan.
    pub async fn list_vdi_headers(&self) -> Result<Vec<InodeHeader>> {
        Ok(self
            .list_vdis_inner(false)
            .await?
            .into_iter()
            .map(|e| e.header)
            .collect())
    }

    async fn list_vdis_inner(&self, with_map: bool) -> Result<Vec<VdiEntry>> {
        let inuse = self.vdi_bitmap(false).await?;
        let deleted = self.vdi_bitmap(true).await?;
        let mut out = Vec::new();
        for vid in inuse.iter_set() {
            if deleted.test(vid) {
                continue;
            }
            let ioid = oid::vid_to_vdi_oid(vid);
            let b = match self
                .read_obj(ioid, 0, inode::INODE_LIST_READ as u32, flags::CMD_DIRECT)
                .await
            {
                Ok(b) => b,
                Err(e) if e.is(SdRes::NO_OBJ) => continue,
                Err(e) => return Err(e),
            };
            let Some(header) = InodeHeader::decode(&b) else {
                continue;
            };
            if header.is_deleted() {
                continue;
            }
            let (mut used, mut shared) = (0, 0);
            if with_map {
                let map = self.read_map(ioid, &header, &b).await?;
                for (_, v) in map.allocated() {
                    if v == header.vdi_id {
                        used += 1;
                    } else {
                        shared += 1;
                    }
                }
            }
            out.push(VdiEntry {
                header,
                used_objs: used,
                shared_objs: shared,
            });
        }
        Ok(out)
    }

    /// NEW_VDI as dog builds it.
    #[allow(clippy::too_many_arguments)]
    async fn new_vdi(
        &self,
        name: &str,
        size: u64,
        base: u32,
        snapshot: bool,
        copies: u8,
        copy_policy: u8,
        store_policy: u8,
        block_size_shift: u8,
    ) -> Result<VdiId> {
        check_name(name)?;
        let mut h = ReqHeader::for_op(op::NEW_VDI);
        h.args = VdiArgs {
            vdi_size: size,
            base_vdi_id: base,
            copies,
            copy_policy,
            store_policy,
            block_size_shift,
            snapid: snapshot as u32,
            ..Default::default()
        }
        .encode();
        let rsp = self
            .call(
                Request::new(h)
                    .with_payload(padded(name, SD_MAX_VDI_LEN))
                    .not_idempotent(),
            )
            .await?;
        let r = VdiRsp::decode(&rsp.hdr.args);
        Ok(VdiId {
            vid: r.vdi_id,
            copies: r.copies,
            block_size_shift: r.block_size_shift,
        })
    }

    /// Creates a VDI (thin unless `opts.prealloc`). Size limits as dog's.
    pub async fn create_vdi(&self, name: &str, size: u64, opts: &CreateOptions) -> Result<u32> {
        check_name(name)?;
        let shift = match (opts.block_size_shift, opts.hyper) {
            (Some(s), _) => s,
            (None, true) => crate::proto::SD_DEFAULT_BLOCK_SIZE_SHIFT,
            (None, false) => {
                let ci = self.cluster_info().await?;
                if ci.ctime == 0 {
                    return Err(Error::sheep(op::NEW_VDI, SdRes::WAIT_FOR_FORMAT));
                }
                ci.block_size_shift
            }
        };
        check_size(size, shift, opts.hyper)?;
        // dog sends 0 (cluster default) unless -z or -y was given.
        let wire_shift = if opts.block_size_shift.is_some() || opts.hyper {
            shift
        } else {
            0
        };
        let id = self
            .new_vdi(
                name,
                size,
                0,
                false,
                opts.copies,
                opts.copy_policy,
                opts.hyper as u8,
                wire_shift,
            )
            .await?;
        if opts.prealloc {
            self.preallocate(id.vid).await?;
        }
        Ok(id.vid)
    }

    /// dog's `-P`: create every object and record it in the inode, one by one.
    async fn preallocate(&self, vid: u32) -> Result<()> {
        let ino = self.read_inode(vid, true).await?;
        let h = &ino.header;
        let fl = flags::CMD_DIRECT;
        let ioid = oid::vid_to_vdi_oid(vid);
        let mut tree = match ino.map {
            DataMap::Btree(t) => Some(t),
            DataMap::Flat(_) => None,
        };
        let mut counter = h.btree_counter;
        for idx in 0..h.nr_objs() {
            let idx32 = u32::try_from(idx).map_err(|_| Error::Invalid("VDI too large".into()))?;
            self.write_obj(
                oid::vid_to_data_oid(vid, idx32),
                0,
                0,
                Bytes::new(),
                fl,
                true,
                h.nr_copies,
            )
            .await?;
            match tree.as_mut() {
                None => {
                    self.write_obj(
                        ioid,
                        0,
                        inode::data_vdi_id_offset(idx32) as u32,
                        Bytes::copy_from_slice(&vid.to_le_bytes()),
                        fl,
                        false,
                        h.nr_copies,
                    )
                    .await?
                }
                Some(t) => {
                    let mut next = || {
                        counter += 1;
                        oid::vid_to_btree_oid(vid, counter - 1)
                    };
                    let up = t
                        .set(idx32, vid, &mut next)
                        .map_err(|e| Error::Btree { vid, source: e })?;
                    let mut hh = h.clone();
                    hh.btree_counter = counter;
                    self.write_btree_update(&hh, t, &up, fl).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes back what a B-tree insert changed: new and modified leaves, then
    /// the root as dog does (header + root at offset 0) and `btree_counter`.
    pub(crate) async fn write_btree_update(
        &self,
        h: &InodeHeader,
        t: &Btree,
        up: &inode::BtreeUpdate,
        fl: u16,
    ) -> Result<()> {
        for (oids, create) in [(&up.created, true), (&up.modified, false)] {
            for &leaf in oids {
                if let Some(node) = t.encode_leaf_node(leaf) {
                    self.write_obj(leaf, 0, 0, node.into(), fl, create, h.nr_copies)
                        .await?;
                }
            }
        }
        if up.root_changed {
            let mut b = h.encode();
            b.extend_from_slice(&t.encode_root());
            let ioid = oid::vid_to_vdi_oid(h.vdi_id);
            self.write_obj(ioid, 0, 0, b.into(), fl, false, h.nr_copies)
                .await?;
            self.write_obj(
                ioid,
                0,
                inode::BTREE_COUNTER_OFFSET as u32,
                Bytes::copy_from_slice(&h.btree_counter.to_le_bytes()),
                fl,
                false,
                h.nr_copies,
            )
            .await?;
        }
        Ok(())
    }

    /// Snapshots the working VDI `name`, tagging the snapshot with `tag`
    /// (may be empty). Returns (snapshot vid, new working vid).
    pub async fn snapshot_vdi(&self, name: &str, tag: &str) -> Result<(u32, u32)> {
        if !tag.is_empty() {
            // The tag must not be taken yet (dog accepts NO_TAG here).
            match self.vdi_lookup(name, &SnapSel::Tag(tag.into())).await {
                Err(e) if e.is(SdRes::NO_TAG) => {}
                Err(e) => return Err(e),
                Ok(_) => return Err(Error::sheep(op::GET_VDI_INFO, SdRes::VDI_EXIST)),
            }
        }
        let id = self.vdi_lookup(name, &SnapSel::Working).await?;
        let h = self.read_inode_header(id.vid).await?;
        if h.is_hyper() {
            return Err(Error::Invalid(format!(
                "cannot snapshot hyper volume {name}"
            )));
        }
        self.write_obj(
            oid::vid_to_vdi_oid(id.vid),
            0,
            inode::TAG_OFFSET as u32,
            padded(tag, 256).into(),
            0,
            false,
            h.nr_copies,
        )
        .await?;
        let new = self
            .new_vdi(
                name,
                h.vdi_size,
                id.vid,
                true,
                h.nr_copies,
                h.copy_policy,
                h.store_policy,
                h.block_size_shift,
            )
            .await?;
        Ok((id.vid, new.vid))
    }

    /// Clones snapshot `sel` of `src` into a new working VDI `dst`.
    pub async fn clone_vdi(&self, src: &str, sel: &SnapSel, dst: &str) -> Result<u32> {
        check_name(dst)?;
        let id = self.vdi_lookup(src, sel).await?;
        let ino = self.read_inode(id.vid, true).await?;
        let h = &ino.header;
        if !h.is_snapshot() {
            return Err(Error::Invalid(format!(
                "only snapshot VDIs can be cloned; {src} is not a snapshot"
            )));
        }
        let new = self
            .new_vdi(
                dst,
                h.vdi_size,
                id.vid,
                false,
                h.nr_copies,
                h.copy_policy,
                h.store_policy,
                h.block_size_shift,
            )
            .await?;
        Ok(new.vid)
    }

    /// Deletes a VDI (or one snapshot): clears its data map in batches as dog
    /// does (sheep refuses to drop objects still mapped), then DEL_VDI.
    pub async fn delete_vdi(&self, name: &str, sel: &SnapSel) -> Result<u32> {
        let id = self.vdi_lookup(name, sel).await?;
        let mut h = ReqHeader::for_op(op::READ_OBJ);
        h.data_length = inode::SD_INODE_SIZE as u32;
        h.args = ObjArgs {
            oid: oid::vid_to_vdi_oid(id.vid),
            ..Default::default()
        }
        .encode();
        let b = self.call(Request::new(h)).await?.data;
        let header = self.decode_header(id.vid, &b)?;
        if !header.is_hyper() {
            // A short reply has fewer entries, not a panic (as in parse_map).
            let nr = (header.nr_objs() as usize)
                .min(inode::SD_INODE_DATA_INDEX)
                .min(b.len().saturating_sub(inode::DATA_VDI_ID_OFFSET) / 4);
            let map = &b[inode::DATA_VDI_ID_OFFSET.min(b.len())..][..4 * nr];
            let entry = |i: usize| crate::proto::bytes::get_u32(map, 4 * i);
            let mut i = 0;
            while i < nr {
                while i < nr && entry(i) == 0 {
                    i += 1;
                }
                let start = i;
                let mut filled = 0;
                while i < nr && filled < 128 {
                    if entry(i) != 0 {
                        filled += 1;
                    }
                    i += 1;
                }
                self.write_obj(
                    oid::vid_to_vdi_oid(id.vid),
                    0,
                    inode::data_vdi_id_offset(start as u32) as u32,
                    vec![0u8; 4 * (i - start)].into(),
                    flags::CMD_DIRECT,
                    false,
                    header.nr_copies,
                )
                .await?;
            }
        }
        let (tag, snapid) = sel_parts(sel);
        let mut h = ReqHeader::for_op(op::DEL_VDI);
        h.args = VdiArgs {
            snapid,
            ..Default::default()
        }
        .encode();
        self.call(
            Request::new(h)
                .with_payload(name_tag_payload(name, tag))
                .not_idempotent(),
        )
        .await?;
        Ok(id.vid)
    }

    /// Grows a working VDI (shrinking is refused, as dog does).
    pub async fn resize_vdi(&self, name: &str, new_size: u64) -> Result<()> {
        let id = self.vdi_lookup(name, &SnapSel::Working).await?;
        let mut h = self.read_inode_header(id.vid).await?;
        if new_size < h.vdi_size {
            return Err(Error::Invalid("Shrinking VDIs is not implemented".into()));
        }
        check_size(new_size, h.block_size_shift, h.is_hyper())?;
        h.vdi_size = new_size;
        self.write_obj(
            oid::vid_to_vdi_oid(id.vid),
            0,
            0,
            h.encode().into(),
            flags::CMD_DIRECT,
            false,
            h.nr_copies,
        )
        .await
    }

    /// GET_VDI_ATTR: create/overwrite (`excl` fails if present), or delete.
    pub async fn set_attr(
        &self,
        name: &str,
        key: &str,
        value: &[u8],
        excl: bool,
        delete: bool,
    ) -> Result<()> {
        check_name(name)?;
        let attr = VdiAttr {
            name: name.into(),
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        };
        let mut h = ReqHeader::for_op(op::GET_VDI_ATTR);
        h.flags = flags::CMD_CREAT;
        if excl {
            h.flags |= flags::CMD_EXCL;
        }
        if delete {
            h.flags = flags::CMD_DEL;
        }
        self.call(Request::new(h).with_payload(attr.encode()).not_idempotent())
            .await
            .map(|_| ())
    }

    /// Looks up an attribute and reads its value.
    pub async fn get_attr(&self, name: &str, key: &str) -> Result<Vec<u8>> {
        check_name(name)?;
        let attr = VdiAttr {
            name: name.into(),
            key: key.into(),
            ..Default::default()
        };
        let h = ReqHeader::for_op(op::GET_VDI_ATTR);
        let rsp = self
            .call(Request::new(h).with_payload(attr.encode()))
            .await?;
        let r = VdiRsp::decode(&rsp.hdr.args);
        let b = self
            .read_obj(
                oid::vid_to_attr_oid(r.vdi_id, r.attr_id),
                0,
                SD_ATTR_OBJ_SIZE as u32,
                flags::CMD_DIRECT,
            )
            .await?;
        Ok(VdiAttr::decode(&b).map(|a| a.value).unwrap_or_default())
    }
}

/// dog's size rules: a flat inode maps at most 2^20 objects; nothing past 16 PiB.
pub fn check_size(size: u64, shift: u8, hyper: bool) -> Result<()> {
    if !(crate::proto::MIN_BLOCK_SIZE_SHIFT..=crate::proto::MAX_BLOCK_SIZE_SHIFT).contains(&shift) {
        return Err(Error::Invalid(format!(
            "block_size_shift {shift} is out of range (20..31)"
        )));
    }
    if size == 0 {
        return Err(Error::Invalid("VDI size must be larger than 0".into()));
    }
    let flat_max = (1u64 << shift) * crate::proto::OLD_MAX_DATA_OBJS;
    if !hyper && size > flat_max {
        return Err(Error::Invalid(format!(
            "VDI size is larger than {flat_max} bytes; use a hyper volume or a larger object size"
        )));
    }
    if size > crate::proto::SD_MAX_VDI_SIZE {
        return Err(Error::Invalid("VDI size is too large".into()));
    }
    Ok(())
}
