//! Every wire decoder, sheep and iSCSI, fed random and mutated bytes: it
//! returns a value or an error, never panics; a structure cut short is an
//! error, and a valid encoding decodes to what was encoded.
//! (`PROPTEST_CASES` raises the number of cases.)

use proptest::prelude::*;
use sheepfs::iscsi::backend::{Disk, MemBackend};
use sheepfs::iscsi::pdu::{read_pdu, take_pdu, Framing, Take};
use sheepfs::iscsi::scsi::lu::{LogicalUnit, Path};
use sheepfs::iscsi::scsi::{cdb_len, Command, Nexus};
use sheepfs::iscsi::text;
use sheepfs::proto::attr::{attr_id, VdiAttr, ATTR_VALUE_OFFSET};
use sheepfs::proto::bitmap::VidBitmap;
use sheepfs::proto::header::{ReqHeader, RspHeader};
use sheepfs::proto::inode::{
    encode_leaf, parse_indirect, parse_leaf, Btree, BtreeHeader, InodeHeader,
};
use sheepfs::proto::node::{
    ClusterInfo, EpochLog, NodeId, SdNode, VdiState, EPOCH_LOG_SIZE, NODE_ID_SIZE, SD_NODE_SIZE,
    VDI_STATE_SIZE,
};
use std::sync::Arc;

/// Bytes, and the same bytes with a few flipped, cut or extended.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (
        proptest::collection::vec((0..n.max(1), any::<u8>()), 0..8),
        0..=n + 16,
    )
        .prop_map(move |(flips, len)| {
            let mut b = valid.clone();
            for (i, x) in flips {
                if let Some(v) = b.get_mut(i) {
                    *v ^= x;
                }
            }
            b.resize(len, 0xa5);
            b
        })
}

fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn node(seed: u8) -> SdNode {
    SdNode {
        nid: NodeId::new(
            format!("127.0.0.{}", seed.max(1)).parse().unwrap(),
            7000 + seed as u16,
        ),
        nr_vnodes: 128,
        zone: seed as u32,
        space: 1 << 30,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sheep_node_records(b in prop_oneof![random_bytes(200), mutated(node(3).encode().to_vec())]) {
        match SdNode::decode(&b) {
            Ok(_) => prop_assert!(b.len() >= SD_NODE_SIZE),
            Err(e) => prop_assert!(b.len() < SD_NODE_SIZE, "{e}"),
        }
        prop_assert_eq!(NodeId::decode(&b).is_ok(), b.len() >= NODE_ID_SIZE);
    }

    #[test]
    fn sheep_epoch_logs(slots in 0usize..8, b in random_bytes(1000)) {
        let log = EpochLog::decode(&b, slots);
        prop_assert_eq!(log.is_some(), b.len() >= EPOCH_LOG_SIZE + slots * SD_NODE_SIZE);
        if let Some(l) = log {
            prop_assert!(l.nodes.len() <= slots);
        }
        // A peer-chosen slot count cannot overflow the stride.
        prop_assert!(EpochLog::decode(&b, usize::MAX / 2).is_none());
    }

    #[test]
    fn sheep_epoch_log_round_trip(n in 0usize..5, extra in 0usize..3, cut in 0usize..80) {
        let log = EpochLog {
            epoch: 7,
            nr_copies: 3,
            drv_name: "tree".into(),
            nodes: (0..n as u8).map(node).collect(),
            ..Default::default()
        };
        let slots = n + extra;
        let b = log.encode(slots);
        prop_assert_eq!(EpochLog::decode(&b, slots), Some(log));
        let short = &b[..b.len() - 1 - cut.min(b.len() - 1)];
        prop_assert!(EpochLog::decode(short, slots).is_none());
    }

    #[test]
    fn sheep_cluster_info(b in prop_oneof![
        random_bytes(600),
        mutated(ClusterInfo { nodes: vec![node(1), node(2)], ..Default::default() }.encode()[..300].to_vec()),
    ]) {
        let ci = ClusterInfo::decode(&b);
        prop_assert_eq!(ci.is_some(), b.len() >= 48);
        if let Some(ci) = ci {
            prop_assert!(48 + ci.nodes.len() * SD_NODE_SIZE <= b.len());
        }
    }

    #[test]
    fn sheep_vdi_state(b in prop_oneof![
        random_bytes(2000),
        mutated(VdiState { vid: 5, participants: vec![(1, node(1).nid); 3], ..Default::default() }.encode().to_vec()),
    ]) {
        prop_assert_eq!(VdiState::decode(&b).is_some(), b.len() >= VDI_STATE_SIZE);
    }

    #[test]
    fn sheep_inode_header(b in prop_oneof![random_bytes(5000), mutated(InodeHeader::default().encode())]) {
        prop_assert_eq!(InodeHeader::decode(&b).is_some(), b.len() >= 572);
    }

    #[test]
    fn sheep_attrs(b in prop_oneof![
        random_bytes(1200),
        mutated(VdiAttr { name: "v".into(), key: "k".into(), value: vec![7; 40], ..Default::default() }.encode()[..900].to_vec()),
    ]) {
        match VdiAttr::decode(&b) {
            Some(a) => prop_assert!(ATTR_VALUE_OFFSET + a.value.len() <= b.len()),
            None => prop_assert!(b.len() < ATTR_VALUE_OFFSET),
        }
        let _ = attr_id(&b);
    }

    #[test]
    fn sheep_btree_nodes(b in prop_oneof![
        random_bytes(600),
        mutated(encode_leaf(&[(1, 2), (3, 4), (9, 9)])),
    ]) {
        prop_assert_eq!(BtreeHeader::decode(&b).is_ok(), b.len() >= 8);
        if let Ok(v) = parse_leaf(&b) {
            prop_assert!(8 + 8 * v.len() <= b.len());
        }
        if let Ok(v) = parse_indirect(&b) {
            prop_assert!(8 + 16 * v.len() <= b.len());
        }
        if let Ok(mut t) = Btree::from_root(&b) {
            let _ = t.add_leaf(1, &b);
            let _ = (t.get(3), t.entries(), t.root_meta_size());
        }
    }

    #[test]
    fn sheep_headers_and_bitmaps(b in random_bytes(100)) {
        let mut h = [0u8; 48];
        let n = b.len().min(48);
        h[..n].copy_from_slice(&b[..n]);
        let r = ReqHeader::decode(&h);
        prop_assert_eq!(ReqHeader::decode(&r.encode()), r);
        let _ = RspHeader::decode(&h).result();
        let bm = VidBitmap::from_bytes(&b);
        prop_assert!(bm.iter_set().all(|v| bm.test(v)));
    }

    #[test]
    fn iscsi_text(b in prop_oneof![
        random_bytes(300),
        mutated(b"InitiatorName=iqn.x\0AuthMethod=CHAP,None\0MaxBurstLength=0x40000\0".to_vec()),
    ]) {
        if let Ok(kv) = text::parse(&b) {
            let _ = kv.encode();
        }
        let s = String::from_utf8_lossy(&b);
        let _ = (text::decode_binary(&s), text::parse_number(&s), text::parse_bool(&s));
    }

    #[test]
    fn iscsi_pdus(b in random_bytes(400), digests in any::<(bool, bool)>(), max in 0u32..512) {
        let fr = Framing { header_digest: digests.0, data_digest: digests.1, max_recv: max };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let read = rt.block_on(read_pdu(&mut &b[..], &fr));
        if let Ok(p) = &read {
            prop_assert!(p.data.len() as u32 <= max);
            prop_assert!(48 + p.ahs.len() + p.data.len() <= b.len());
        }
        // The connection's buffer parser agrees with the stream reader.
        let mut buf = bytes::BytesMut::from(&b[..]);
        match (take_pdu(&mut buf, &fr), read) {
            (Ok(Take::Pdu(p)), Ok(q)) => {
                prop_assert_eq!(p.bhs, q.bhs);
                prop_assert_eq!(p.data, q.data);
            }
            (Ok(Take::Need(n)), Err(_)) => prop_assert!(n > b.len()),
            (Err(_), Err(_)) => {}
            (t, r) => prop_assert!(false, "take_pdu {:?}, read_pdu {:?}", t, r.map(|p| p.bhs)),
        }
    }

    /// Random CDBs (cut to the length of their opcode's group, as the
    /// connection does) and parameter data against a logical unit.
    #[test]
    fn iscsi_cdbs(raw in any::<[u8; 16]>(), op in prop_oneof![any::<u8>(), Just(0x5f), Just(0x5e), Just(0x9e), Just(0x42), Just(0x55), Just(0x15), Just(0xa0), Just(0x12), Just(0x1a), Just(0x5a), Just(0x89), Just(0x93)], data in random_bytes(64)) {
        let mut cdb = raw.to_vec();
        cdb[0] = op;
        cdb.truncate(cdb_len(op));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let lu = LogicalUnit::new(Disk::new(Arc::new(MemBackend::new(1 << 20, 1 << 16)), 1));
        let path = Path { lun: 0, target_name: "iqn.2024-01.test:t".into(), rel_port: 1, read_only: false };
        let nexus = Nexus::new("a".into(), "a".into(), "iqn.2024-01.test:t,t,0x0001".into(), 1);
        let data = bytes::Bytes::from(data);
        let cmd = Command { cdb: &cdb, path: &path, data_out: &data, nexus: &nexus };
        let _ = lu.access(&cdb);
        let _ = rt.block_on(lu.execute(&cmd));
    }
}
