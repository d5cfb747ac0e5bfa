//! The high-level cluster and VDI API. Request sequences, flags and proto
//! versions follow what `dog` sends (see the captures), so a real sheep sees
//! the same traffic from us as from dog.

use super::map::{DataMap, FlatMap, Inode};
use super::pool::Client;
use super::request::Request;
use super::vdi::{check_name, SnapSel, VdiId};
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
    flags, oid, op, ReqHeader, SdRes, SD_MAX_NODES, SD_MAX_VDI_LEN, VDI_BITMAP_SIZE,
};
use bytes::{Bytes, BytesMut};

/// One object write ([`Client::write_obj`]): WRITE_OBJ, or
/// CREATE_AND_WRITE_OBJ with [`ObjWrite::creating`].
#[derive(Debug, Clone, Default)]
pub struct ObjWrite {
    /// The object written.
    pub oid: u64,
    /// Byte offset in the object.
    pub offset: u32,
    /// The bytes written.
    pub data: Bytes,
    /// Create the object (CREATE_AND_WRITE_OBJ) instead of writing into it.
    pub create: bool,
    /// With `create`: the object the new one starts as a copy of (copy on
    /// write, CMD_COW); 0: it starts as zeros.
    pub cow_oid: u64,
    /// Request flags (CMD_DIRECT, CMD_CACHE); CMD_WRITE, and CMD_COW with
    /// a `cow_oid`, are added.
    pub flags: u16,
    /// Copies of the object (its VDI's; 0: the cluster default).
    pub copies: u8,
    /// Erasure-coding policy of the object (its VDI's; 0: replication).
    pub copy_policy: u8,
}

impl ObjWrite {
    /// A WRITE_OBJ of `data` at `offset` in `oid`.
    pub fn new(oid: u64, offset: u32, data: impl Into<Bytes>) -> ObjWrite {
        ObjWrite {
            oid,
            offset,
            data: data.into(),
            ..Default::default()
        }
    }

    /// Makes it a CREATE_AND_WRITE_OBJ, copying on write from `cow_oid`
    /// if it is not 0.
    pub fn creating(mut self, cow_oid: u64) -> ObjWrite {
        self.create = true;
        self.cow_oid = cow_oid;
        self
    }

    /// Adds request flags (CMD_DIRECT, CMD_CACHE).
    pub fn with_flags(mut self, flags: u16) -> ObjWrite {
        self.flags |= flags;
        self
    }

    /// The redundancy of the object's VDI.
    pub fn with_copies(mut self, copies: u8, copy_policy: u8) -> ObjWrite {
        self.copies = copies;
        self.copy_policy = copy_policy;
        self
    }
}

/// A GET_VDI_ATTR request ([`Client::vdi_attr`]), field for field as
/// dog's `vdi setattr` and `vdi getattr` send it.
#[derive(Debug, Clone, Default)]
pub struct AttrRequest {
    /// The VDI's name.
    pub vdi: String,
    /// Snapshot tag (dog's `-s TAG`); empty for none.
    pub tag: String,
    /// Snapshot id (dog's `-s ID`); 0 for none.
    pub snapid: u32,
    /// The attribute's key.
    pub key: String,
    /// The value stored by a create (at most
    /// [`SD_MAX_VDI_ATTR_VALUE_LEN`](crate::proto::SD_MAX_VDI_ATTR_VALUE_LEN)
    /// bytes are sent).
    pub value: Vec<u8>,
    /// Create the attribute, or overwrite it (CMD_CREAT).
    pub create: bool,
    /// Fail with VDI_EXIST if the attribute exists (CMD_EXCL).
    pub excl: bool,
    /// Delete the attribute (CMD_DEL).
    pub delete: bool,
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

    /// WRITE_OBJ, or CREATE_AND_WRITE_OBJ (see [`ObjWrite`]).
    pub async fn write_obj(&self, w: ObjWrite) -> Result<()> {
        let opcode = if w.create {
            op::CREATE_AND_WRITE_OBJ
        } else {
            op::WRITE_OBJ
        };
        let mut h = ReqHeader::for_op(opcode);
        h.flags = w.flags | flags::CMD_WRITE;
        if w.cow_oid != 0 {
            h.flags |= flags::CMD_COW;
        }
        h.data_length = w.data.len() as u32;
        h.args = ObjArgs {
            oid: w.oid,
            cow_oid: w.cow_oid,
            copies: w.copies,
            copy_policy: w.copy_policy,
            offset: w.offset,
            ..Default::default()
        }
        .encode();
        self.call(Request {
            hdr: h,
            payload: w.data,
            idempotent: true,
        })
        .await?;
        Ok(())
    }

    /// REMOVE_OBJ: deletes object `oid`.
    pub async fn remove_obj(&self, oid: u64) -> Result<()> {
        let mut h = ReqHeader::for_op(op::REMOVE_OBJ);
        h.args = ObjArgs {
            oid,
            ..Default::default()
        }
        .encode();
        self.call(Request::new(h)).await.map(|_| ())
    }

    /// DISCARD_OBJ: removes data object `oid` and clears its entry in its
    /// VDI's map.
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

    /// CLUSTER_INFO: the cluster's format (ctime, copies, flags, object
    /// size, store) and nodes.
    pub async fn cluster_info(&self) -> Result<ClusterInfo> {
        let mut h = ReqHeader::for_op(op::CLUSTER_INFO);
        h.data_length = CLUSTER_INFO_SIZE as u32;
        let rsp = self.call(Request::new(h)).await?;
        ClusterInfo::decode(&rsp.data).ok_or_else(|| Error::Protocol {
            addr: self.addr().to_string(),
            what: "short CLUSTER_INFO reply".into(),
        })
    }

    /// GET_CLUSTER_DEFAULT: the copies, policy and object size new VDIs get.
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
        let list = self.store_list_text().await?;
        Ok(list.split_whitespace().map(str::to_string).collect())
    }

    /// GET_STORE_LIST as sheep words it (names each followed by a space).
    pub async fn store_list_text(&self) -> Result<String> {
        let mut h = ReqHeader::for_op(op::GET_STORE_LIST);
        h.data_length = 512;
        let rsp = self.call(Request::new(h)).await?;
        let end = rsp
            .data
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rsp.data.len());
        Ok(String::from_utf8_lossy(&rsp.data[..end]).into_owned())
    }

    /// SHUTDOWN: stops the cluster (dog's `cluster shutdown`).
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

    /// Reads the header of the inode of `vid` (DIRECT).
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
        let len = super::map::map_read_len(h, &head[inode::DATA_VDI_ID_OFFSET..]);
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
                    let mut w = ObjWrite::new(leaf, 0, node).with_flags(fl);
                    if create {
                        w = w.creating(0);
                    }
                    self.write_obj(w.with_copies(h.nr_copies, h.copy_policy))
                        .await?;
                }
            }
        }
        if up.root_changed {
            let mut b = h.encode();
            b.extend_from_slice(&t.encode_root());
            let ioid = oid::vid_to_vdi_oid(h.vdi_id);
            let counter = h.btree_counter.to_le_bytes().to_vec();
            let off = inode::BTREE_COUNTER_OFFSET as u32;
            for (off, data) in [(0, b), (off, counter)] {
                let w = ObjWrite::new(ioid, off, data).with_flags(fl);
                self.write_obj(w.with_copies(h.nr_copies, h.copy_policy))
                    .await?;
            }
        }
        Ok(())
    }

    /// GET_VDI_ATTR as dog sends it: looks up the attribute (and, as
    /// `req` says, creates, overwrites or deletes it); returns the oid of
    /// the object holding it. A missing attribute is [`SdRes::NO_OBJ`], a
    /// missing VDI [`SdRes::NO_VDI`], an existing one with `excl`
    /// [`SdRes::VDI_EXIST`].
    pub async fn vdi_attr(&self, req: &AttrRequest) -> Result<u64> {
        for (what, s) in [("VDI name", &req.vdi), ("tag", &req.tag), ("key", &req.key)] {
            if s.len() >= SD_MAX_VDI_LEN {
                return Err(Error::Invalid(format!(
                    "attribute {what} of {} bytes is too long (at most {})",
                    s.len(),
                    SD_MAX_VDI_LEN - 1
                )));
            }
        }
        let attr = VdiAttr {
            name: req.vdi.clone(),
            tag: req.tag.clone(),
            snap_id: req.snapid,
            key: req.key.clone(),
            value: req.value.clone(),
            ..Default::default()
        };
        let mut h = ReqHeader::for_op(op::GET_VDI_ATTR);
        h.args = VdiArgs {
            snapid: req.snapid,
            ..Default::default()
        }
        .encode();
        for (on, f) in [
            (req.create, flags::CMD_CREAT),
            (req.excl, flags::CMD_EXCL),
            (req.delete, flags::CMD_DEL),
        ] {
            if on {
                h.flags |= f;
            }
        }
        let mut r = Request::new(h).with_payload(attr.encode());
        if req.create || req.delete {
            r = r.not_idempotent();
        }
        let rsp = self.call(r).await?;
        let r = VdiRsp::decode(&rsp.hdr.args);
        Ok(oid::vid_to_attr_oid(r.vdi_id, r.attr_id))
    }

    /// Sets attribute `key` of the working VDI `name` (`excl`: fail if it
    /// exists), or deletes it.
    pub async fn set_attr(
        &self,
        name: &str,
        key: &str,
        value: &[u8],
        excl: bool,
        delete: bool,
    ) -> Result<()> {
        check_name(name)?;
        let req = AttrRequest {
            vdi: name.into(),
            key: key.into(),
            value: value.to_vec(),
            create: !delete,
            excl: excl && !delete,
            delete,
            ..Default::default()
        };
        self.vdi_attr(&req).await.map(|_| ())
    }

    /// Reads the value of attribute `key` of the working VDI `name`.
    pub async fn get_attr(&self, name: &str, key: &str) -> Result<Vec<u8>> {
        check_name(name)?;
        let req = AttrRequest {
            vdi: name.into(),
            key: key.into(),
            ..Default::default()
        };
        let aoid = self.vdi_attr(&req).await?;
        let b = self
            .read_obj(aoid, 0, SD_ATTR_OBJ_SIZE as u32, flags::CMD_DIRECT)
            .await?;
        Ok(VdiAttr::decode(&b).map(|a| a.value).unwrap_or_default())
    }
}
