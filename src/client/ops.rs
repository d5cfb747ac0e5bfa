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
use bytes::{Bytes, BytesMut};

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
    Flat(FlatMap),
    /// store_policy 1 (hyper volume).
    Btree(Btree),
}

impl DataMap {
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

pub(crate) fn check_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|e| Error::Invalid(format!("'{}': {e}", name.escape_debug())))
}

impl Client {
    // ---------------------------------------------------------------- objects

    /// READ_OBJ `len` bytes at `offset` of `oid`.
    pub async fn read_obj(&self, oid: u64, offset: u32, len: u32, fl: u16) -> Result<Vec<u8>> {
        let buf = BytesMut::with_capacity(len as usize);
        Ok(self.read_obj_into(oid, offset, len, fl, buf).await?.into())
    }

    /// [`Client::read_obj`] into `buf` (empty; give it `len` bytes of
    /// capacity): the data is read from the socket straight into it.
    pub async fn read_obj_into(
        &self,
        oid: u64,
        offset: u32,
        len: u32,
        fl: u16,
        buf: BytesMut,
    ) -> Result<BytesMut> {
        let mut h = ReqHeader::for_op(op::READ_OBJ);
        h.flags = fl;
        h.data_length = len;
        h.args = ObjArgs {
            oid,
            offset,
            ..Default::default()
        }
        .encode();
        let data = self.call_into(Request::new(h), buf).await?;
        if data.len() != len as usize {
            return Err(Error::Protocol {
                addr: self.addr().to_string(),
                what: format!(
                    "READ_OBJ of {oid:016x} returned {} bytes, expected {len}",
                    data.len()
                ),
            });
        }
        Ok(data)
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
        self.write_obj_with(oid, cow_oid, offset, data, fl, create, (copies, 0))
            .await
    }

    /// [`Client::write_obj`] with an erasure-coding `copy_policy` beside the copies.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_obj_with(
        &self,
        oid: u64,
        cow_oid: u64,
        offset: u32,
        data: Bytes,
        fl: u16,
        create: bool,
        (copies, copy_policy): (u8, u8),
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
            copy_policy,
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
        if tag.len() >= SD_MAX_VDI_LEN {
            return Err(Error::Invalid(format!(
                "snapshot tag of {} bytes is too long (at most {})",
                tag.len(),
                SD_MAX_VDI_LEN - 1
            )));
        }
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
        let len = super::list::map_read_len(h, &head[inode::DATA_VDI_ID_OFFSET..]);
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

    async fn parse_map(&self, h: &InodeHeader, area: &[u8]) -> Result<DataMap> {
        if !h.is_hyper() {
            let n = (h.nr_objs() as usize)
                .min(inode::SD_INODE_DATA_INDEX)
                .min(area.len() / 4);
            let v =
                FlatMap::from_entries((0..n).map(|i| crate::proto::bytes::get_u32(area, 4 * i)));
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

    /// NEW_VDI as dog builds it (`args` without the opcode's defaults).
    pub(crate) async fn new_vdi(&self, name: &str, args: VdiArgs) -> Result<VdiId> {
        check_name(name)?;
        let mut h = ReqHeader::for_op(op::NEW_VDI);
        h.args = args.encode();
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

    /// DEL_VDI of `name` (and snapshot `sel`).
    pub(crate) async fn del_vdi(&self, name: &str, sel: &SnapSel) -> Result<()> {
        check_name(name)?;
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
        .await
        .map(|_| ())
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
