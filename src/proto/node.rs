//! Node, epoch-log, cluster-info and vdi-state records.

use super::bytes::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of `struct sd_node`.
pub const SD_NODE_SIZE: usize = 80;
/// Size of an epoch record without its nodes.
pub const EPOCH_LOG_SIZE: usize = 48;
/// Size of `struct cluster_info`.
pub const CLUSTER_INFO_SIZE: usize = 48 + super::SD_MAX_NODES * SD_NODE_SIZE;
/// Size of `struct vdi_state`.
pub const VDI_STATE_SIZE: usize = 1428;
/// Size of `struct node_id`.
pub const NODE_ID_SIZE: usize = 40;
/// Most holders of a shared lock.
pub const SD_MAX_PARTICIPANTS: usize = 31;

/// `struct node_id`: address and port (plus optional I/O address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NodeId {
    /// IPv6 or IPv4-mapped address.
    pub addr: [u8; 16],
    /// Port.
    pub port: u16,
    /// Address of the I/O network (unused: zeros).
    pub io_addr: [u8; 16],
    /// Port of the I/O network.
    pub io_port: u16,
}

impl NodeId {
    /// The node id of `ip:port`.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        NodeId {
            addr: addr_to_bytes(ip),
            port,
            ..Default::default()
        }
    }
    /// Reads the wire bytes.
    pub fn decode(b: &[u8]) -> Result<Self, Short> {
        let b = need(b, NODE_ID_SIZE, "node_id")?;
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&b[0..16]);
        let mut io_addr = [0u8; 16];
        io_addr.copy_from_slice(&b[18..34]);
        Ok(NodeId {
            addr,
            port: get_u16(b, 16),
            io_addr,
            io_port: get_u16(b, 34),
        })
    }
    /// Writes the wire bytes into `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        b[0..16].copy_from_slice(&self.addr);
        put_u16(b, 16, self.port);
        b[18..34].copy_from_slice(&self.io_addr);
        put_u16(b, 34, self.io_port);
        b[34 + 2..40].fill(0);
    }
    /// The IP address.
    pub fn ip(&self) -> IpAddr {
        bytes_to_addr(&self.addr)
    }
    /// dog's `addr:port` text.
    pub fn to_addr_port(&self) -> String {
        format!("{}:{}", addr_text(&self.addr), self.port)
    }
}

/// IPv4 goes in the last 4 bytes after 12 zero bytes (not ::ffff:-mapped).
pub fn addr_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[12..].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address field as an IP address.
pub fn bytes_to_addr(a: &[u8; 16]) -> IpAddr {
    if a[..12].iter().all(|&b| b == 0) && a[12] != 0 {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// dog's address printing: dotted IPv4 when bytes 0..12 are zero and byte 12 is not.
pub fn addr_text(a: &[u8; 16]) -> String {
    bytes_to_addr(a).to_string()
}

/// `struct sd_node` (80 bytes, default build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SdNode {
    /// Address.
    pub nid: NodeId,
    /// Virtual nodes.
    pub nr_vnodes: u16,
    /// Failure zone.
    pub zone: u32,
    /// Store size in bytes.
    pub space: u64,
}

impl SdNode {
    /// Reads the wire bytes.
    pub fn decode(b: &[u8]) -> Result<Self, Short> {
        let b = need(b, SD_NODE_SIZE, "sd_node")?;
        Ok(SdNode {
            nid: NodeId::decode(&b[24..64])?,
            nr_vnodes: get_u16(b, 64),
            zone: get_u32(b, 68),
            space: get_u64(b, 72),
        })
    }
    /// Writes the wire bytes into `b`.
    pub fn encode_into(&self, b: &mut [u8]) {
        b[..SD_NODE_SIZE].fill(0);
        self.nid.encode_into(&mut b[24..64]);
        put_u16(b, 64, self.nr_vnodes);
        put_u32(b, 68, self.zone);
        put_u64(b, 72, self.space);
    }
    /// The wire bytes.
    pub fn encode(&self) -> [u8; SD_NODE_SIZE] {
        let mut b = [0u8; SD_NODE_SIZE];
        self.encode_into(&mut b);
        b
    }
    /// Default zone: the last 4 address bytes read as a little-endian u32.
    pub fn default_zone(addr: &[u8; 16]) -> u32 {
        get_u32(addr, 12)
    }
}

/// `struct epoch_log` header (48 bytes) plus its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EpochLog {
    /// Creation time (sheep time: seconds << 32 | nanoseconds).
    pub ctime: u64,
    /// Time of the epoch change.
    pub time: u64,
    /// Cluster epoch.
    pub epoch: u32,
    /// Recovery disabled.
    pub disable_recovery: u8,
    /// Number of copies.
    pub nr_copies: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Flags.
    pub flags: u16,
    /// Cluster driver name.
    pub drv_name: String,
    /// Nodes.
    pub nodes: Vec<SdNode>,
}

impl EpochLog {
    /// Encodes one record with `slots` node slots (unused slots zeroed).
    pub fn encode(&self, slots: usize) -> Vec<u8> {
        let mut b = vec![0u8; EPOCH_LOG_SIZE + slots * SD_NODE_SIZE];
        put_u64(&mut b, 0, self.ctime);
        put_u64(&mut b, 8, self.time);
        put_u32(&mut b, 16, self.epoch);
        let n = self.nodes.len().min(slots);
        put_u32(&mut b, 20, n as u32);
        put_u8(&mut b, 24, self.disable_recovery);
        put_u8(&mut b, 25, self.nr_copies);
        put_u8(&mut b, 26, self.copy_policy);
        put_u16(&mut b, 30, self.flags);
        put_str(&mut b, 32, 16, &self.drv_name);
        for (i, node) in self.nodes.iter().take(n).enumerate() {
            let o = EPOCH_LOG_SIZE + i * SD_NODE_SIZE;
            node.encode_into(&mut b[o..o + SD_NODE_SIZE]);
        }
        b
    }

    /// Decodes one record of stride `48 + 80 * slots`.
    pub fn decode(b: &[u8], slots: usize) -> Option<Self> {
        let stride = slots
            .checked_mul(SD_NODE_SIZE)?
            .checked_add(EPOCH_LOG_SIZE)?;
        if b.len() < stride {
            return None;
        }
        let nr = (get_u32(b, 20) as usize).min(slots);
        let nodes = (0..nr)
            .map(|i| SdNode::decode(&b[EPOCH_LOG_SIZE + i * SD_NODE_SIZE..]).ok())
            .collect::<Option<_>>()?;
        Some(EpochLog {
            ctime: get_u64(b, 0),
            time: get_u64(b, 8),
            epoch: get_u32(b, 16),
            disable_recovery: get_u8(b, 24),
            nr_copies: get_u8(b, 25),
            copy_policy: get_u8(b, 26),
            flags: get_u16(b, 30),
            drv_name: get_str(b, 32, 16),
            nodes,
        })
    }
}

/// `struct cluster_info` (491,568 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterInfo {
    /// Protocol version.
    pub proto_ver: u8,
    /// Recovery disabled.
    pub disable_recovery: u8,
    /// Cluster epoch.
    pub epoch: u32,
    /// Creation time (sheep time: seconds << 32 | nanoseconds).
    pub ctime: u64,
    /// Flags.
    pub flags: u16,
    /// Number of copies.
    pub nr_copies: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Cluster status (`cluster_status`).
    pub status: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
    /// Backend store name.
    pub default_store: String,
    /// Nodes.
    pub nodes: Vec<SdNode>,
}

impl ClusterInfo {
    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CLUSTER_INFO_SIZE];
        put_u8(&mut b, 0, self.proto_ver);
        put_u8(&mut b, 1, self.disable_recovery);
        put_u16(&mut b, 2, self.nodes.len() as u16);
        put_u32(&mut b, 4, self.epoch);
        put_u64(&mut b, 8, self.ctime);
        put_u16(&mut b, 16, self.flags);
        put_u8(&mut b, 18, self.nr_copies);
        put_u8(&mut b, 19, self.copy_policy);
        put_u8(&mut b, 20, self.status);
        put_u8(&mut b, 21, self.block_size_shift);
        put_str(&mut b, 25, 16, &self.default_store);
        for (i, n) in self.nodes.iter().take(super::SD_MAX_NODES).enumerate() {
            let o = 48 + i * SD_NODE_SIZE;
            n.encode_into(&mut b[o..o + SD_NODE_SIZE]);
        }
        b
    }
    /// Reads the wire bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 48 {
            return None;
        }
        let nr = (get_u16(b, 2) as usize).min((b.len() - 48) / SD_NODE_SIZE);
        Some(ClusterInfo {
            proto_ver: get_u8(b, 0),
            disable_recovery: get_u8(b, 1),
            epoch: get_u32(b, 4),
            ctime: get_u64(b, 8),
            flags: get_u16(b, 16),
            nr_copies: get_u8(b, 18),
            copy_policy: get_u8(b, 19),
            status: get_u8(b, 20),
            block_size_shift: get_u8(b, 21),
            default_store: get_str(b, 25, 16),
            nodes: (0..nr)
                .map(|i| SdNode::decode(&b[48 + i * SD_NODE_SIZE..]).ok())
                .collect::<Option<_>>()?,
        })
    }
}

/// `struct vdi_state` (GET_VDI_COPIES element, 1,428 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VdiState {
    /// VDI id.
    pub vid: u32,
    /// Number of copies.
    pub nr_copies: u8,
    /// Whether it is a snapshot.
    pub snapshot: u8,
    /// Whether it is deleted.
    pub deleted: u8,
    /// Erasure-coding policy (0: replication).
    pub copy_policy: u8,
    /// Object size shift (object size = 1 << shift).
    pub block_size_shift: u8,
    /// Parent VDI (0: none).
    pub parent_vid: u32,
    /// Lock states of `VdiState::lock_state`.
    pub lock_state: u32,
    /// Node holding the lock.
    pub lock_owner: NodeId,
    /// Shared lock holders: (state, node).
    pub participants: Vec<(u32, NodeId)>,
}

/// Lock states of `VdiState::lock_state`.
pub mod lock_state {
    /// Not locked.
    pub const UNLOCKED: u32 = 1;
    /// Locked by one client.
    pub const LOCKED: u32 = 2;
    /// Locked shared.
    pub const SHARED: u32 = 3;
}

impl VdiState {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; VDI_STATE_SIZE] {
        let mut b = [0u8; VDI_STATE_SIZE];
        put_u32(&mut b, 0, self.vid);
        put_u8(&mut b, 4, self.nr_copies);
        put_u8(&mut b, 5, self.snapshot);
        put_u8(&mut b, 6, self.deleted);
        put_u8(&mut b, 7, self.copy_policy);
        put_u8(&mut b, 8, self.block_size_shift);
        put_u32(&mut b, 12, self.parent_vid);
        put_u32(&mut b, 16, self.lock_state);
        self.lock_owner.encode_into(&mut b[20..60]);
        let n = self.participants.len().min(SD_MAX_PARTICIPANTS);
        put_u32(&mut b, 60, n as u32);
        for (i, (state, nid)) in self.participants.iter().take(n).enumerate() {
            put_u32(&mut b, 64 + 4 * i, *state);
            let o = 188 + NODE_ID_SIZE * i;
            nid.encode_into(&mut b[o..o + NODE_ID_SIZE]);
        }
        b
    }
    /// Reads the wire bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < VDI_STATE_SIZE {
            return None;
        }
        let n = (get_u32(b, 60) as usize).min(SD_MAX_PARTICIPANTS);
        Some(VdiState {
            vid: get_u32(b, 0),
            nr_copies: get_u8(b, 4),
            snapshot: get_u8(b, 5),
            deleted: get_u8(b, 6),
            copy_policy: get_u8(b, 7),
            block_size_shift: get_u8(b, 8),
            parent_vid: get_u32(b, 12),
            lock_state: get_u32(b, 16),
            lock_owner: NodeId::decode(&b[20..60]).ok()?,
            participants: (0..n)
                .map(|i| {
                    let o = 188 + NODE_ID_SIZE * i;
                    let nid = NodeId::decode(&b[o..o + NODE_ID_SIZE]).ok()?;
                    Some((get_u32(b, 64 + 4 * i), nid))
                })
                .collect::<Option<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_layout() {
        let n = SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), 7101),
            nr_vnodes: 128,
            zone: SdNode::default_zone(&addr_to_bytes("127.0.0.1".parse().unwrap())),
            space: 1 << 36,
        };
        assert_eq!(n.zone, 16777343);
        let b = n.encode();
        assert_eq!(&b[36..40], &[127, 0, 0, 1]);
        assert_eq!(get_u16(&b, 40), 7101);
        assert_eq!(get_u16(&b, 64), 128);
        assert_eq!(SdNode::decode(&b), Ok(n));
        assert!(SdNode::decode(&b[..79]).is_err());
        assert_eq!(n.nid.to_addr_port(), "127.0.0.1:7101");
        let v6 = NodeId::new("::1".parse().unwrap(), 7000);
        assert_eq!(v6.to_addr_port(), "::1:7000");
    }

    #[test]
    fn sizes() {
        assert_eq!(CLUSTER_INFO_SIZE, 491_568);
        let ci = ClusterInfo {
            proto_ver: 0x0a,
            epoch: 1,
            ctime: 42,
            status: 1,
            block_size_shift: 22,
            default_store: "plain".into(),
            nodes: vec![SdNode::default()],
            ..Default::default()
        };
        let b = ci.encode();
        assert_eq!(b.len(), CLUSTER_INFO_SIZE);
        assert_eq!(&b[25..31], b"plain\0");
        assert_eq!(ClusterInfo::decode(&b).unwrap().epoch, 1);
        let vs = VdiState {
            vid: 0x7c2b25,
            nr_copies: 3,
            lock_state: lock_state::UNLOCKED,
            participants: vec![(1, NodeId::default())],
            ..Default::default()
        };
        assert_eq!(VdiState::decode(&vs.encode()).unwrap(), vs);
        let e = EpochLog {
            ctime: 1,
            time: 2,
            epoch: 1,
            nr_copies: 3,
            flags: 4,
            drv_name: "plain".into(),
            nodes: vec![SdNode::default()],
            ..Default::default()
        };
        let b = e.encode(1);
        assert_eq!(b.len(), 128);
        assert_eq!(EpochLog::decode(&b, 1).unwrap(), e);
        // nodes_nr = 0 (dog's first STAT_CLUSTER): a bare 48-byte record.
        assert_eq!(e.encode(0).len(), 48);
    }
}
