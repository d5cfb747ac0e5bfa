//! The 48-byte request and response headers and their opcode-specific unions.
//!
//! The union part is kept as raw bytes in the header (`args`); typed views
//! (`ObjArgs`, `VdiArgs`, ...) encode into and decode from it. Offsets in the
//! views are absolute header offsets, as in the reference tables.

use super::bytes::*;
use super::SdRes;

/// Bytes of per-opcode arguments in a request header.
pub const ARGS_LEN: usize = 32;
/// Bytes of per-opcode fields in a reply header.
pub const RSP_ARGS_LEN: usize = 28;

/// Request header (client -> server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReqHeader {
    /// Protocol version.
    pub proto_ver: u8,
    /// Opcode (`op`).
    pub opcode: u8,
    /// Flags.
    pub flags: u16,
    /// Cluster epoch.
    pub epoch: u32,
    /// Request id (echoed in the reply).
    pub id: u32,
    /// Payload bytes (request) or reply data bytes.
    pub data_length: u32,
    /// Bytes 16..48.
    pub args: [u8; ARGS_LEN],
}

impl ReqHeader {
    /// A header of `opcode`, everything else 0.
    pub fn new(proto_ver: u8, opcode: u8) -> Self {
        ReqHeader {
            proto_ver,
            opcode,
            ..Default::default()
        }
    }

    /// The header `sd_init_req` builds: proto_ver 0x02 for public opcodes,
    /// 0x0a for internal ones (0x80 and up), everything else 0.
    pub fn for_op(opcode: u8) -> Self {
        let ver = if opcode >= 0x80 {
            super::SD_SHEEP_PROTO_VER
        } else {
            super::SD_PROTO_VER
        };
        ReqHeader::new(ver, opcode)
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        put_u8(&mut b, 0, self.proto_ver);
        put_u8(&mut b, 1, self.opcode);
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        b[16..48].copy_from_slice(&self.args);
        b
    }

    /// Reads the wire bytes.
    pub fn decode(b: &[u8; 48]) -> Self {
        let mut args = [0u8; ARGS_LEN];
        args.copy_from_slice(&b[16..48]);
        ReqHeader {
            proto_ver: get_u8(b, 0),
            opcode: get_u8(b, 1),
            flags: get_u16(b, 2),
            epoch: get_u32(b, 4),
            id: get_u32(b, 8),
            data_length: get_u32(b, 12),
            args,
        }
    }

    /// Whether `data_length` payload bytes follow the header on the wire.
    pub fn has_payload(&self) -> bool {
        self.flags & super::flags::CMD_WRITE != 0 && self.data_length > 0
    }
}

/// Response header (server -> client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RspHeader {
    /// Protocol version.
    pub proto_ver: u8,
    /// Opcode (`op`).
    pub opcode: u8,
    /// Flags.
    pub flags: u16,
    /// Cluster epoch.
    pub epoch: u32,
    /// Request id (echoed in the reply).
    pub id: u32,
    /// Payload bytes (request) or reply data bytes.
    pub data_length: u32,
    /// The result code.
    pub result: u32,
    /// Bytes 20..48.
    pub args: [u8; RSP_ARGS_LEN],
}

impl RspHeader {
    /// A reply to `req` with `result` and no payload; echoes opcode and id.
    pub fn reply_to(req: &ReqHeader, result: SdRes, epoch: u32) -> Self {
        RspHeader {
            opcode: req.opcode,
            id: req.id,
            epoch,
            result: result.0,
            ..Default::default()
        }
    }

    /// The result code.
    pub fn result(&self) -> SdRes {
        SdRes(self.result)
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        put_u8(&mut b, 0, self.proto_ver);
        put_u8(&mut b, 1, self.opcode);
        put_u16(&mut b, 2, self.flags);
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        put_u32(&mut b, 16, self.result);
        b[20..48].copy_from_slice(&self.args);
        b
    }

    /// Reads the wire bytes.
    pub fn decode(b: &[u8; 48]) -> Self {
        let mut args = [0u8; RSP_ARGS_LEN];
        args.copy_from_slice(&b[20..48]);
        RspHeader {
            proto_ver: get_u8(b, 0),
            opcode: get_u8(b, 1),
            flags: get_u16(b, 2),
            epoch: get_u32(b, 4),
            id: get_u32(b, 8),
            data_length: get_u32(b, 12),
            result: get_u32(b, 16),
            args,
        }
    }
}

// Views take absolute header offsets; these convert to the args arrays.
fn req(off: usize) -> usize {
    off - 16
}
fn rsp(off: usize) -> usize {
    off - 20
}

/// `obj` request union: object I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ObjArgs {
    /// Object id.
    pub oid: u64,
    /// Object copied on write from (0: none).
    pub cow_oid: u64,
    /// Number of copies.
    pub copies: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Erasure-coded strip index.
    pub ec_index: u8,
    /// Epoch the request is for.
    pub tgt_epoch: u32,
    /// Byte offset in the object.
    pub offset: u32,
}

impl ObjArgs {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; ARGS_LEN] {
        let mut a = [0u8; ARGS_LEN];
        put_u64(&mut a, req(16), self.oid);
        put_u64(&mut a, req(24), self.cow_oid);
        put_u8(&mut a, req(32), self.copies);
        put_u8(&mut a, req(33), self.copy_policy);
        put_u8(&mut a, req(34), self.ec_index);
        put_u32(&mut a, req(36), self.tgt_epoch);
        put_u32(&mut a, req(40), self.offset);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; ARGS_LEN]) -> Self {
        ObjArgs {
            oid: get_u64(a, req(16)),
            cow_oid: get_u64(a, req(24)),
            copies: get_u8(a, req(32)),
            copy_policy: get_u8(a, req(33)),
            ec_index: get_u8(a, req(34)),
            tgt_epoch: get_u32(a, req(36)),
            offset: get_u32(a, req(40)),
        }
    }
}

/// `vdi` request union: NEW_VDI, LOCK_VDI, RELEASE_VDI, GET_VDI_INFO, DEL_VDI, GET_VDI_ATTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VdiArgs {
    /// VDI size in bytes.
    pub vdi_size: u64,
    /// NEW_VDI: parent vid; RELEASE_VDI: the vid to unlock.
    pub base_vdi_id: u32,
    /// Number of copies.
    pub copies: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Inode map layout: 0 flat, 1 B-tree (hyper volume).
    pub store_policy: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
    /// Snapshot id (0: none).
    pub snapid: u32,
    /// Lock type (`LOCK_TYPE_NORMAL` or `LOCK_TYPE_SHARED`).
    pub lock_type: u32,
}

impl VdiArgs {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; ARGS_LEN] {
        let mut a = [0u8; ARGS_LEN];
        put_u64(&mut a, req(16), self.vdi_size);
        put_u32(&mut a, req(24), self.base_vdi_id);
        put_u8(&mut a, req(28), self.copies);
        put_u8(&mut a, req(29), self.copy_policy);
        put_u8(&mut a, req(30), self.store_policy);
        put_u8(&mut a, req(31), self.block_size_shift);
        put_u32(&mut a, req(32), self.snapid);
        put_u32(&mut a, req(36), self.lock_type);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; ARGS_LEN]) -> Self {
        VdiArgs {
            vdi_size: get_u64(a, req(16)),
            base_vdi_id: get_u32(a, req(24)),
            copies: get_u8(a, req(28)),
            copy_policy: get_u8(a, req(29)),
            store_policy: get_u8(a, req(30)),
            block_size_shift: get_u8(a, req(31)),
            snapid: get_u32(a, req(32)),
            lock_type: get_u32(a, req(36)),
        }
    }
}

/// `cluster` request union: MAKE_FS, STAT_CLUSTER, ALTER_CLUSTER_COPY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClusterArgs {
    /// Object id.
    pub oid: u64,
    /// Creation time (sheep time: seconds << 32 | nanoseconds).
    pub ctime: u64,
    /// Number of copies.
    pub copies: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Flags.
    pub flags: u16,
    /// Tag.
    pub tag: u32,
    /// Node slots per epoch record in the reply.
    pub nodes_nr: u32,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
}

impl ClusterArgs {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; ARGS_LEN] {
        let mut a = [0u8; ARGS_LEN];
        put_u64(&mut a, req(16), self.oid);
        put_u64(&mut a, req(24), self.ctime);
        put_u8(&mut a, req(32), self.copies);
        put_u8(&mut a, req(33), self.copy_policy);
        put_u16(&mut a, req(34), self.flags);
        put_u32(&mut a, req(36), self.tag);
        put_u32(&mut a, req(40), self.nodes_nr);
        put_u8(&mut a, req(44), self.block_size_shift);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; ARGS_LEN]) -> Self {
        ClusterArgs {
            oid: get_u64(a, req(16)),
            ctime: get_u64(a, req(24)),
            copies: get_u8(a, req(32)),
            copy_policy: get_u8(a, req(33)),
            flags: get_u16(a, req(34)),
            tag: get_u32(a, req(36)),
            nodes_nr: get_u32(a, req(40)),
            block_size_shift: get_u8(a, req(44)),
        }
    }
}

/// `vdi_state` request union: NOTIFY_VDI_ADD, ALTER_VDI_COPY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VdiStateArgs {
    /// The previous vid.
    pub old_vid: u32,
    /// The new vid.
    pub new_vid: u32,
    /// Number of copies.
    pub copies: u8,
    /// Whether to set the vid in the in-use bitmap.
    pub set_bitmap: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
}

impl VdiStateArgs {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; ARGS_LEN] {
        let mut a = [0u8; ARGS_LEN];
        put_u32(&mut a, req(16), self.old_vid);
        put_u32(&mut a, req(20), self.new_vid);
        put_u8(&mut a, req(24), self.copies);
        put_u8(&mut a, req(25), self.set_bitmap);
        put_u8(&mut a, req(26), self.copy_policy);
        put_u8(&mut a, req(27), self.block_size_shift);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; ARGS_LEN]) -> Self {
        VdiStateArgs {
            old_vid: get_u32(a, req(16)),
            new_vid: get_u32(a, req(20)),
            copies: get_u8(a, req(24)),
            set_bitmap: get_u8(a, req(25)),
            copy_policy: get_u8(a, req(26)),
            block_size_shift: get_u8(a, req(27)),
        }
    }
}

/// `vdi` response union.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VdiRsp {
    /// The VDI id.
    pub vdi_id: u32,
    /// Attribute id (the attribute object is `vid_to_attr_oid(vdi_id, attr_id)`).
    pub attr_id: u32,
    /// Number of copies.
    pub copies: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
}

impl VdiRsp {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; RSP_ARGS_LEN] {
        let mut a = [0u8; RSP_ARGS_LEN];
        put_u32(&mut a, rsp(24), self.vdi_id);
        put_u32(&mut a, rsp(28), self.attr_id);
        put_u8(&mut a, rsp(32), self.copies);
        put_u8(&mut a, rsp(33), self.block_size_shift);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; RSP_ARGS_LEN]) -> Self {
        VdiRsp {
            vdi_id: get_u32(a, rsp(24)),
            attr_id: get_u32(a, rsp(28)),
            copies: get_u8(a, rsp(32)),
            block_size_shift: get_u8(a, rsp(33)),
        }
    }
}

/// `node` response union: GET_NODE_LIST, STAT_SHEEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeRsp {
    /// Number of nodes.
    pub nr_nodes: u32,
    /// Store size in bytes.
    pub store_size: u64,
    /// Free store bytes.
    pub store_free: u64,
}

impl NodeRsp {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; RSP_ARGS_LEN] {
        let mut a = [0u8; RSP_ARGS_LEN];
        put_u32(&mut a, rsp(20), self.nr_nodes);
        put_u64(&mut a, rsp(32), self.store_size);
        put_u64(&mut a, rsp(40), self.store_free);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; RSP_ARGS_LEN]) -> Self {
        NodeRsp {
            nr_nodes: get_u32(a, rsp(20)),
            store_size: get_u64(a, rsp(32)),
            store_free: get_u64(a, rsp(40)),
        }
    }
}

/// `obj` response union (only `offset` is meaningful, on peer reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ObjRsp {
    /// Number of copies.
    pub copies: u8,
    /// Byte offset in the object.
    pub offset: u64,
}

impl ObjRsp {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; RSP_ARGS_LEN] {
        let mut a = [0u8; RSP_ARGS_LEN];
        put_u8(&mut a, rsp(20), self.copies);
        put_u64(&mut a, rsp(24), self.offset);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; RSP_ARGS_LEN]) -> Self {
        ObjRsp {
            copies: get_u8(a, rsp(20)),
            offset: get_u64(a, rsp(24)),
        }
    }
}

/// `hash` response union: GET_HASH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HashRsp {
    /// SHA-1 digest.
    pub digest: [u8; 20],
}

impl HashRsp {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; RSP_ARGS_LEN] {
        let mut a = [0u8; RSP_ARGS_LEN];
        a[rsp(24)..rsp(44)].copy_from_slice(&self.digest);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; RSP_ARGS_LEN]) -> Self {
        let mut digest = [0u8; 20];
        digest.copy_from_slice(&a[rsp(24)..rsp(44)]);
        HashRsp { digest }
    }
}

/// `cluster_default` response union: GET_CLUSTER_DEFAULT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClusterDefaultRsp {
    /// Number of copies.
    pub nr_copies: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
}

impl ClusterDefaultRsp {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; RSP_ARGS_LEN] {
        let mut a = [0u8; RSP_ARGS_LEN];
        put_u8(&mut a, rsp(20), self.nr_copies);
        put_u8(&mut a, rsp(21), self.copy_policy);
        put_u8(&mut a, rsp(22), self.block_size_shift);
        a
    }
    /// Reads the wire bytes.
    pub fn decode(a: &[u8; RSP_ARGS_LEN]) -> Self {
        ClusterDefaultRsp {
            nr_copies: get_u8(a, rsp(20)),
            copy_policy: get_u8(a, rsp(21)),
            block_size_shift: get_u8(a, rsp(22)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{flags, oid, op};
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn get_vdi_info_worked_example() {
        // Reference §2.3: GET_VDI_INFO for the working VDI "test", dog style.
        let mut h = ReqHeader::new(0x02, op::GET_VDI_INFO);
        h.flags = flags::CMD_WRITE;
        h.data_length = 512;
        h.args = VdiArgs::default().encode();
        let want = hex("02140100 00000000 00000000 00020000");
        assert_eq!(&h.encode()[..16], &want[..]);
        assert!(h.encode()[16..].iter().all(|&b| b == 0));
        assert_eq!(ReqHeader::decode(&h.encode()), h);
    }

    #[test]
    fn read_obj_inode_worked_example() {
        let mut h = ReqHeader::new(0, op::READ_OBJ);
        h.data_length = 4664;
        h.args = ObjArgs {
            oid: oid::vid_to_vdi_oid(0x7c2b25),
            ..Default::default()
        }
        .encode();
        let b = h.encode();
        assert_eq!(&b[16..24], &hex("00000000 252b7c80")[..]);
        assert_eq!(oid::vid_to_data_oid(0x7c2b25, 3), 0x007c2b2500000003);
    }

    #[test]
    fn capture_headers_decode() {
        // dog's STAT_CLUSTER (captures/dog.jsonl seq 4): nodes_nr = 1 @40.
        let b: [u8; 48] = hex("0a8700000000000000000000000000000000000000000000000000000000000000000000000000000100000000000000")[..48]
            .try_into()
            .unwrap();
        let h = ReqHeader::decode(&b);
        assert_eq!(h.opcode, op::STAT_CLUSTER);
        assert_eq!(ClusterArgs::decode(&h.args).nodes_nr, 1);
        assert_eq!(h.encode(), b);
        // GET_NODE_LIST reply: nr_nodes = 1 @20, data_length 80.
        let r: [u8; 48] = hex("008200000000000000000000500000000000000001000000000000000000000000000000000000000000000000000000")[..48]
            .try_into()
            .unwrap();
        let rh = RspHeader::decode(&r);
        assert_eq!(rh.data_length, 80);
        assert_eq!(NodeRsp::decode(&rh.args).nr_nodes, 1);
        assert_eq!(rh.encode(), r);
    }

    #[test]
    fn union_round_trips() {
        let o = ObjArgs {
            oid: 0x8012345600000000,
            cow_oid: 0x0011223300000007,
            copies: 3,
            copy_policy: 0x22,
            ec_index: 1,
            tgt_epoch: 9,
            offset: 0xfff000,
        };
        assert_eq!(ObjArgs::decode(&o.encode()), o);
        let v = VdiArgs {
            vdi_size: 1 << 40,
            base_vdi_id: 0x7c2b25,
            copies: 2,
            copy_policy: 0,
            store_policy: 1,
            block_size_shift: 22,
            snapid: 1,
            lock_type: 1,
        };
        assert_eq!(VdiArgs::decode(&v.encode()), v);
        let enc = v.encode();
        assert_eq!(enc[req(24)..req(28)], 0x7c2b25u32.to_le_bytes());
        assert_eq!(enc[req(36)], 1);
        let c = ClusterArgs {
            oid: 0,
            ctime: 0x1234_5678_9abc_def0,
            copies: 3,
            copy_policy: 0,
            flags: 4,
            tag: 0,
            nodes_nr: 2,
            block_size_shift: 22,
        };
        assert_eq!(ClusterArgs::decode(&c.encode()), c);
        let r = VdiRsp {
            vdi_id: 0x7c2b26,
            attr_id: 5,
            copies: 3,
            block_size_shift: 22,
        };
        assert_eq!(VdiRsp::decode(&r.encode()), r);
        let rh = RspHeader {
            args: r.encode(),
            ..Default::default()
        };
        let b = rh.encode();
        assert_eq!(&b[24..28], &0x7c2b26u32.to_le_bytes());
        assert_eq!(b[32], 3);
        assert_eq!(b[33], 22);
        let n = NodeRsp {
            nr_nodes: 1,
            store_size: 100,
            store_free: 50,
        };
        assert_eq!(NodeRsp::decode(&n.encode()), n);
        let d = ClusterDefaultRsp {
            nr_copies: 3,
            copy_policy: 0,
            block_size_shift: 22,
        };
        assert_eq!(ClusterDefaultRsp::decode(&d.encode()), d);
        let s = VdiStateArgs {
            old_vid: 1,
            new_vid: 2,
            copies: 3,
            set_bitmap: 1,
            copy_policy: 0,
            block_size_shift: 22,
        };
        assert_eq!(VdiStateArgs::decode(&s.encode()), s);
    }

    proptest::proptest! {
        #[test]
        fn headers_round_trip(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 48)) {
            let arr: [u8; 48] = b.try_into().unwrap();
            proptest::prop_assert_eq!(ReqHeader::decode(&arr).encode(), arr);
            proptest::prop_assert_eq!(RspHeader::decode(&arr).encode(), arr);
        }
    }
}
