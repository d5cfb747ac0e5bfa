//! The request helpers of dog (`dog_exec_req`, `dog_read_object`,
//! `find_vdi_name`, `read_vdi_obj`, `parse_vdi`, ...), with dog's stderr
//! messages and the same request bytes.

use super::{errln, Exit, EXIT_FAILURE, EXIT_SYSFAIL, R};
use crate::client::{Client, Error, Options, Request, Response, SheepAddr, VdiEntry};
use crate::proto::bitmap::VidBitmap;
use crate::proto::bytes::{get_u16, get_u32, put_u32};
use crate::proto::header::{ObjArgs, VdiArgs, VdiRsp};
use crate::proto::inode::{self, Btree, InodeHeader, SD_INODE_HEADER_SIZE, SD_INODE_SIZE};
use crate::proto::node::{SdNode, SD_NODE_SIZE};
use crate::proto::{
    flags, oid, op, ReqHeader, SdRes, SD_MAX_NODES, SD_MAX_VDI_LEN, VDI_BITMAP_SIZE,
};
use std::collections::HashMap;

/// dog's message when the inode of a VDI or snapshot cannot be read.
pub fn report_vdi_read_failure(name: &str, snapid: u32, tag: &str) {
    if snapid != 0 {
        errln(&format!(
            "Failed to read a snapshot {name}:{}",
            snapid as i32
        ));
    } else if !tag.is_empty() {
        errln(&format!("Failed to read a snapshot {name}:{tag}"));
    } else {
        errln(&format!("Failed to read a vdi {name}"));
    }
}

/// C's `strerror`.
pub fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated static
            // (or thread-local) string, valid until the next call.
            let p = unsafe { libc::strerror(n) };
            if p.is_null() {
                return e.to_string();
            }
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
        None => match e.kind() {
            // What a blocking connect() with SO_SNDTIMEO (as dog sets) reports.
            std::io::ErrorKind::TimedOut => "Operation now in progress".into(),
            _ => e.to_string(),
        },
    }
}

/// One sheepctl invocation: where to talk to, global options, and what
/// dog's node-list preamble learned.
pub struct Ctx {
    pub client: Client,
    pub raw: bool,
    pub verbose: bool,
    /// After `update_node_list`: nodes in dog's order, the epoch, zones.
    pub nodes: Vec<SdNode>,
    pub epoch: u32,
    pub zones: usize,
    node_clients: HashMap<SheepAddr, Client>,
}

impl Ctx {
    pub fn new(addr: SheepAddr, opts: Options) -> Ctx {
        Ctx {
            client: Client::new(addr, opts),
            raw: false,
            verbose: false,
            nodes: Vec::new(),
            epoch: 0,
            zones: 0,
            node_clients: HashMap::new(),
        }
    }

    /// The client for per-node requests (STAT_SHEEP, CLUSTER_INFO in
    /// format): the main connection when the node is the one we talk to
    /// (dog caches connections by address the same way).
    pub fn node_client(&mut self, n: &SdNode) -> Client {
        let c = crate::dogfmt::node_client(&self.client, &n.nid, self.nodes.len());
        if c.addr() == self.client.addr() {
            return c;
        }
        self.node_clients.entry(c.addr()).or_insert(c).clone()
    }

    /// `dog_exec_req`: sends one request; on a transport failure prints what
    /// dog prints and returns None (dog's -1).
    pub async fn exec_on(
        &self,
        client: &Client,
        mut h: ReqHeader,
        payload: Option<Vec<u8>>,
    ) -> Option<Response> {
        let mut r = match payload {
            Some(p) => {
                // dog sets data_length itself; keep CMD_WRITE semantics.
                h.flags |= flags::CMD_WRITE;
                let mut r = Request::new(h);
                r.hdr.data_length = p.len() as u32;
                r.payload = p.into();
                r
            }
            None => Request::new(h),
        };
        r.idempotent = false;
        match client.send(r).await {
            Ok(rsp) => Some(rsp),
            Err(e) => {
                report_transport(&e);
                None
            }
        }
    }

    pub async fn exec(&self, h: ReqHeader, payload: Option<Vec<u8>>) -> Option<Response> {
        self.exec_on(&self.client, h, payload).await
    }

    /// `update_node_list`: GET_NODE_LIST, then STAT_CLUSTER(48) for the epoch.
    pub async fn update_node_list(&mut self) -> R<()> {
        let fail = || {
            errln("Failed to get node list");
            Exit(EXIT_SYSFAIL)
        };
        let mut h = ReqHeader::for_op(op::GET_NODE_LIST);
        h.data_length = (SD_MAX_NODES * SD_NODE_SIZE) as u32;
        let rsp = self.exec(h, None).await.ok_or_else(fail)?;
        if rsp.result() != SdRes::SUCCESS {
            errln(&format!(
                "Failed to update node list: {}",
                rsp.result().message()
            ));
            return Err(fail());
        }
        let nr = rsp.hdr.data_length as usize / SD_NODE_SIZE;
        if nr == 0 {
            errln("There are no active sheep daemons");
            return Err(Exit(EXIT_FAILURE));
        }
        let nodes: Vec<SdNode> = (0..nr)
            .filter_map(|i| SdNode::decode(rsp.data.get(i * SD_NODE_SIZE..)?).ok())
            .collect();
        self.nodes = crate::dogfmt::sort_nodes(&nodes);
        let mut zones: Vec<u32> = Vec::new();
        for n in &self.nodes {
            if !zones.contains(&n.zone) {
                zones.push(n.zone);
            }
        }
        self.zones = zones.len();
        let mut h = ReqHeader::for_op(op::STAT_CLUSTER);
        h.data_length = crate::proto::node::EPOCH_LOG_SIZE as u32;
        let rsp = self.exec(h, None).await.ok_or_else(fail)?;
        self.epoch = rsp.hdr.epoch;
        Ok(())
    }

    /// `dog_read_object`: Err(result) after printing dog's message; a
    /// transport failure is EIO.
    pub async fn read_object(
        &self,
        oid: u64,
        len: u32,
        offset: u64,
        direct: bool,
    ) -> Result<Vec<u8>, SdRes> {
        let mut h = ReqHeader::for_op(op::READ_OBJ);
        h.data_length = len;
        if direct {
            h.flags |= flags::CMD_DIRECT;
        }
        h.args = ObjArgs {
            oid,
            offset: offset as u32,
            ..Default::default()
        }
        .encode();
        let Some(rsp) = self.exec(h, None).await else {
            errln(&format!("Failed to read object {oid:016x}"));
            return Err(SdRes::EIO);
        };
        if rsp.result() != SdRes::SUCCESS {
            errln(&format!(
                "Failed to read object {oid:016x} {}",
                rsp.result().message()
            ));
            return Err(rsp.result());
        }
        let mut d = rsp.data;
        d.resize(len as usize, 0);
        Ok(d)
    }

    /// `dog_write_object`.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_object(
        &self,
        oid: u64,
        cow_oid: u64,
        data: &[u8],
        offset: u64,
        fl: u16,
        copies: u8,
        copy_policy: u8,
        create: bool,
        direct: bool,
    ) -> Result<(), SdRes> {
        let mut h = ReqHeader::for_op(if create {
            op::CREATE_AND_WRITE_OBJ
        } else {
            op::WRITE_OBJ
        });
        h.flags = fl | flags::CMD_WRITE;
        if cow_oid != 0 {
            h.flags |= flags::CMD_COW;
        }
        if direct {
            h.flags |= flags::CMD_DIRECT;
        }
        h.args = ObjArgs {
            oid,
            cow_oid,
            copies,
            copy_policy,
            offset: offset as u32,
            ..Default::default()
        }
        .encode();
        let Some(rsp) = self.exec(h, Some(data.to_vec())).await else {
            errln(&format!("Failed to write object {oid:016x}"));
            return Err(SdRes::EIO);
        };
        if rsp.result() != SdRes::SUCCESS {
            errln(&format!(
                "Failed to write object {oid:016x}: {}",
                rsp.result().message()
            ));
            return Err(rsp.result());
        }
        Ok(())
    }

    /// `find_vdi_name`: GET_VDI_INFO with name + tag (512 bytes).
    pub async fn find_vdi_name(&self, name: &str, snapid: u32, tag: &str) -> Result<u32, SdRes> {
        let mut h = ReqHeader::for_op(op::GET_VDI_INFO);
        h.args = VdiArgs {
            snapid,
            ..Default::default()
        }
        .encode();
        let Some(rsp) = self.exec(h, Some(name_tag(name, tag))).await else {
            return Err(SdRes::EIO);
        };
        match rsp.result() {
            SdRes::SUCCESS => Ok(VdiRsp::decode(&rsp.hdr.args).vdi_id),
            r => Err(r),
        }
    }

    /// [`Ctx::find_vdi_name`] that prints dog's "Failed to open VDI" on failure.
    pub async fn open_vdi(&self, name: &str, snapid: u32, tag: &str) -> Result<u32, SdRes> {
        self.find_vdi_name(name, snapid, tag)
            .await
            .inspect_err(|r| {
                errln(&format!(
                    "Failed to open VDI {name} (snapshot id: {} snapshot tag: {tag}): {}",
                    snapid as i32,
                    r.message()
                ))
            })
    }

    /// `read_vdi_obj`: lookup plus one inode read of `size` bytes (DIRECT).
    pub async fn read_vdi_obj(
        &self,
        name: &str,
        snapid: u32,
        tag: &str,
        size: usize,
    ) -> Result<(u32, Vec<u8>), i32> {
        let vid = self
            .open_vdi(name, snapid, tag)
            .await
            .map_err(|_| EXIT_FAILURE)?;
        match self
            .read_object(oid::vid_to_vdi_oid(vid), size as u32, 0, true)
            .await
        {
            Ok(b) => Ok((vid, b)),
            Err(_) => {
                report_vdi_read_failure(name, snapid, tag);
                Err(EXIT_FAILURE)
            }
        }
    }

    /// `do_vdi_create`: NEW_VDI. Ok(vid) or the exit code.
    #[allow(clippy::too_many_arguments)]
    pub async fn do_vdi_create(
        &self,
        name: &str,
        size: u64,
        base: u32,
        snapshot: bool,
        copies: u8,
        copy_policy: u8,
        store_policy: u8,
        block_size_shift: u8,
    ) -> Result<u32, i32> {
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
        let Some(rsp) = self.exec(h, Some(cname(name, SD_MAX_VDI_LEN))).await else {
            return Err(EXIT_SYSFAIL);
        };
        if rsp.result() != SdRes::SUCCESS {
            errln(&format!(
                "Failed to create VDI {name}: {}",
                rsp.result().message()
            ));
            return Err(EXIT_FAILURE);
        }
        Ok(VdiRsp::decode(&rsp.hdr.args).vdi_id)
    }

    /// `parse_vdi`: READ_VDIS, READ_DEL_VDIS, then per live vid the inode
    /// header (4672 bytes, DIRECT) and, when `with_map`, the used part of the
    /// data map (and B-tree leaves, for the used/shared counts). Calls `f`
    /// for each VDI with a name, with the map area read. Returns dog's `ret`:
    /// -1 when a bitmap could not be fetched, else the result of the last
    /// inode read (0 = success).
    pub async fn parse_vdi<F>(&self, with_map: bool, mut f: F) -> i64
    where
        F: FnMut(&VdiEntry, &[u8]),
    {
        let mut bitmaps = Vec::new();
        for opcode in [op::READ_VDIS, op::READ_DEL_VDIS] {
            let mut h = ReqHeader::for_op(opcode);
            h.data_length = VDI_BITMAP_SIZE as u32;
            let Some(rsp) = self.exec(h, None).await else {
                return -1;
            };
            if rsp.result() != SdRes::SUCCESS {
                errln(&rsp.result().message());
                return 0;
            }
            bitmaps.push(VidBitmap::from_bytes(&rsp.data));
        }
        let (inuse, deleted) = (&bitmaps[0], &bitmaps[1]);
        let mut ret: i64 = 0;
        for vid in inuse.iter_set() {
            if deleted.test(vid) {
                continue;
            }
            let ioid = oid::vid_to_vdi_oid(vid);
            let b = match self
                .read_object(ioid, inode::INODE_LIST_READ as u32, 0, true)
                .await
            {
                Ok(b) => b,
                Err(r) => {
                    errln("Failed to read inode header");
                    ret = r.0 as i64;
                    continue;
                }
            };
            ret = 0;
            let Some(h) = InodeHeader::decode(&b) else {
                continue;
            };
            if h.raw_name[0] == 0 {
                continue;
            }
            let mut area = b[SD_INODE_HEADER_SIZE..].to_vec();
            let (mut used, mut shared) = (0, 0);
            if with_map {
                let len = meta_size(&h, &area);
                match self
                    .read_object(ioid, len, SD_INODE_HEADER_SIZE as u64, true)
                    .await
                {
                    Ok(m) => area = m,
                    Err(r) => {
                        errln("Failed to read inode");
                        ret = r.0 as i64;
                        continue;
                    }
                }
                (used, shared) = self.inode_stat(&h, &area).await;
            }
            let e = VdiEntry {
                header: h,
                used_objs: used,
                shared_objs: shared,
            };
            f(&e, &area);
        }
        ret
    }

    /// `sd_inode_stat`: objects owned by the VDI and objects shared with others.
    pub async fn inode_stat(&self, h: &InodeHeader, area: &[u8]) -> (u64, u64) {
        let (mut my, mut cow) = (0u64, 0u64);
        let mut count = |v: u32| {
            if v == h.vdi_id {
                my += 1;
            } else if v != 0 {
                cow += 1;
            }
        };
        if h.store_policy == 0 {
            let nr = h.nr_objs();
            let n = (nr as usize).min(area.len() / 4);
            for i in 0..n {
                count(get_u32(area, 4 * i));
            }
            return (my, cow);
        }
        if area.len() < 8 {
            return (0, 0);
        }
        let depth = get_u16(area, 2);
        let entries = get_u32(area, 4) as usize;
        match depth {
            1 => {
                for i in 0..entries.min((area.len() - 8) / 8) {
                    count(get_u32(area, 8 + 8 * i + 4));
                }
            }
            2 => {
                for i in 0..entries.min((area.len() - 8) / 16) {
                    let loid = crate::proto::bytes::get_u64(area, 8 + 16 * i + 8);
                    let leaf = match self
                        .read_object(loid, inode::BTREE_NODE_SIZE as u32, 0, true)
                        .await
                    {
                        Ok(l) => l,
                        Err(_) => {
                            errln(&format!("failed to read {loid:016x}"));
                            continue;
                        }
                    };
                    let n = get_u32(&leaf, 4) as usize;
                    for k in 0..n.min((leaf.len() - 8) / 8) {
                        count(get_u32(&leaf, 8 + 8 * k + 4));
                    }
                }
            }
            d => errln(&format!("This B-tree not support depth {d}")),
        }
        (my, cow)
    }
}

/// Prints what dog prints when a request cannot be exchanged.
pub fn report_transport(e: &Error) {
    match e {
        Error::Connect { addr, source } => {
            // dog tries twice (cache revalidation, then a fresh socket).
            let msg = format!(
                "failed to connect to {}: {}",
                dog_addr(addr),
                strerror(source)
            );
            errln(&msg);
            errln(&msg);
        }
        Error::Timeout { .. } | Error::Protocol { .. } => {
            errln(&e.to_string());
            errln("failed to read a response");
        }
        // The connection broke after the request went out (EOF, reset).
        _ => errln("failed to read a response"),
    }
}

/// `[::1]:7000` -> `::1:7000`, `unix:/p` -> `/p`, as dog prints addresses.
fn dog_addr(a: &str) -> String {
    if let Some(p) = a.strip_prefix("unix:") {
        return p.to_string();
    }
    if let Some(r) = a.strip_prefix('[') {
        if let Some((h, p)) = r.split_once(']') {
            return format!("{h}{p}");
        }
    }
    a.to_string()
}

/// A NUL-padded fixed field, cut like `pstrcpy` (at most len-1 bytes).
pub fn cname(s: &str, len: usize) -> Vec<u8> {
    let b = s.as_bytes();
    let n = b.len().min(len - 1);
    let mut v = vec![0u8; len];
    v[..n].copy_from_slice(&b[..n]);
    v
}

/// name[256] + tag[256].
pub fn name_tag(name: &str, tag: &str) -> Vec<u8> {
    let mut v = cname(name, SD_MAX_VDI_LEN);
    v.extend_from_slice(&cname(tag, 256));
    v
}

/// dog's `sd_inode_get_meta_size` for a listing read (`size` = whole inode).
pub fn meta_size(h: &InodeHeader, area: &[u8]) -> u32 {
    if h.store_policy == 0 {
        let max = (SD_INODE_SIZE - SD_INODE_HEADER_SIZE - 4) as u64;
        let n = h.nr_objs();
        (n.wrapping_mul(4)).min(max) as u32
    } else {
        let depth = if area.len() >= 4 { get_u16(area, 2) } else { 0 };
        let entries = if area.len() >= 8 { get_u32(area, 4) } else { 0 };
        let e = match depth {
            2 => 16,
            _ => 8,
        };
        8u32.wrapping_add(entries.wrapping_mul(e))
    }
}

/// The data map of a whole inode read, as dog's `sd_inode_get_vid` /
/// `sd_inode_set_vid` see it.
pub struct InodeMap {
    /// The inode bytes as read (header + map + gref for whole reads).
    pub buf: Vec<u8>,
    pub header: InodeHeader,
    tree: Option<Btree>,
}

/// A B-tree node write an update needs (dog's writer calls).
pub struct NodeWrite {
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
