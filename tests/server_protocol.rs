//! sheep-lite protocol tests against the real binary over real sockets:
//! framing and pipelining, the version and format gates, every op with
//! byte-level reply checks, vid allocation, COW, snapshots, deletion rules,
//! locks, attributes, malformed input, restarts, crashes and clean stops.

mod common;

use bytes::Bytes;
use common::{name_payload, obj_hdr, pattern, send, sha, SheepLite};
use sheepfs::client::{Client, CreateOptions, ObjWrite, Options, Response, SheepAddr, SnapSel};
use sheepfs::proto::header::{ClusterArgs, NodeRsp, ObjArgs, VdiArgs, VdiRsp};
use sheepfs::proto::inode::{self, InodeHeader, SD_INODE_SIZE};
use sheepfs::proto::node::{lock_state, ClusterInfo, EpochLog, SdNode, VdiState};
use sheepfs::proto::{
    cluster_flags, flags, oid, op, ReqHeader, RspHeader, SdRes, LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED,
    VDI_BITMAP_SIZE,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const MB4: usize = 4 << 20;

/// Checks the fixed parts of a reply header.
#[track_caller]
fn check(r: &Response, opcode: u8, epoch: u32, res: SdRes) {
    assert_eq!(r.hdr.proto_ver, 0);
    assert_eq!(r.hdr.flags, 0);
    assert_eq!(r.hdr.opcode, opcode);
    assert_eq!(r.hdr.epoch, epoch, "epoch in reply");
    assert_eq!(r.result(), res, "result of opcode {opcode:#04x}");
    assert_eq!(r.hdr.data_length as usize, r.data.len());
}

fn client(s: &SheepLite) -> Client {
    Client::new(
        s.addr(),
        Options {
            request_timeout: Duration::from_secs(60),
            retry_timeout: Duration::from_secs(5),
            ..Options::default()
        },
    )
}

async fn formatted(flags: u16) -> (SheepLite, Client) {
    let s = SheepLite::start();
    let c = client(&s);
    c.make_fs(0, 0, cluster_flags::AUTO_VNODES | flags, 0, "plain")
        .await
        .expect("format");
    (s, c)
}

// ------------------------------------------------------------------ gates

#[tokio::test(flavor = "multi_thread")]
async fn version_gate_unknown_ops_and_unformatted_gate() {
    let s = SheepLite::start();
    let c = client(&s);
    // Internal ops need exactly 0x0a.
    for pv in [0u8, 1, 2, 0x0b] {
        let r = send(&c, ReqHeader::new(pv, op::GET_NODE_LIST), vec![]).await;
        check(&r, op::GET_NODE_LIST, 0, SdRes::VER_MISMATCH);
    }
    // Public ops accept 0, 1, 2 and refuse anything above 2.
    let r = send(&c, ReqHeader::new(3, op::GET_VDI_INFO), vec![]).await;
    check(&r, op::GET_VDI_INFO, 0, SdRes::VER_MISMATCH);
    for pv in [0u8, 1, 2] {
        let mut h = ReqHeader::new(pv, op::GET_VDI_INFO);
        h.flags = flags::CMD_WRITE;
        let r = send(&c, h, name_payload("x", "")).await;
        check(&r, op::GET_VDI_INFO, 0, SdRes::WAIT_FOR_FORMAT);
    }
    // Unknown opcodes (after the version check).
    for (pv, opc) in [(0u8, 0x70u8), (2, 0x06), (0x0a, 0xf0), (0x0a, 0x91)] {
        let r = send(&c, ReqHeader::new(pv, opc), vec![]).await;
        check(&r, opc, 0, SdRes::INVALID_PARMS);
    }
    // Non-force ops wait for the format; force ops work.
    for opc in [
        op::READ_OBJ,
        op::NEW_VDI,
        op::STAT_SHEEP,
        op::GET_VDI_ATTR,
        op::FLUSH_VDI,
    ] {
        let r = send(&c, ReqHeader::for_op(opc), vec![]).await;
        check(&r, opc, 0, SdRes::WAIT_FOR_FORMAT);
    }
    let mut h = ReqHeader::for_op(op::STAT_CLUSTER);
    h.data_length = 48;
    let r = send(&c, h, vec![]).await;
    check(&r, op::STAT_CLUSTER, 0, SdRes::WAIT_FOR_FORMAT);
    assert!(r.data.is_empty(), "no epoch records before format");
    let mut h = ReqHeader::for_op(op::READ_VDIS);
    h.data_length = VDI_BITMAP_SIZE as u32;
    let r = send(&c, h, vec![]).await;
    check(&r, op::READ_VDIS, 0, SdRes::SUCCESS);
    assert!(r.data.iter().all(|&b| b == 0));
    // CLUSTER_INFO before format: as the captured sheep (dog-02).
    let mut h = ReqHeader::for_op(op::CLUSTER_INFO);
    h.data_length = 491_568;
    let r = send(&c, h, vec![]).await;
    check(&r, op::CLUSTER_INFO, 0, SdRes::SUCCESS);
    assert_eq!(r.data.len(), 491_568);
    let mut want = [0u8; 21];
    want[0] = 0x0a;
    want[16] = 0x04;
    want[20] = 2;
    assert_eq!(&r.data[..21], &want[..]);
    assert!(r.data[21..].iter().all(|&b| b == 0));
    // GET_NODE_LIST: this node, even before format.
    let nodes = c.node_list().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].nid.to_addr_port(), format!("127.0.0.1:{}", s.port));
    assert_eq!(nodes[0].nr_vnodes, 128);
    assert_eq!(nodes[0].zone, 16_777_343);
    assert!(nodes[0].space > 0);
    let r = send(&c, ReqHeader::for_op(op::GET_CLUSTER_DEFAULT), vec![]).await;
    check(&r, op::GET_CLUSTER_DEFAULT, 0, SdRes::SUCCESS);
    assert_eq!(&r.hdr.encode()[20..23], &[0, 0, 0]);
}

// ------------------------------------------------------------------ framing

fn raw_conn(s: &SheepLite) -> TcpStream {
    let t = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    t
}

fn raw_reply(t: &mut TcpStream) -> (RspHeader, Vec<u8>) {
    let mut b = [0u8; 48];
    t.read_exact(&mut b).expect("reply header");
    let h = RspHeader::decode(&b);
    let mut d = vec![0u8; h.data_length as usize];
    t.read_exact(&mut d).expect("reply payload");
    (h, d)
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_on_one_connection_are_matched_by_id() {
    let (s, c) = formatted(0).await;
    let vid = c
        .create_vdi(
            "pipe",
            64 << 20,
            &CreateOptions {
                block_size_shift: Some(22),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut t = raw_conn(&s);
    // 8 creates, then 64 writes and 64 reads, all sent before any reply is read.
    let mut out = Vec::new();
    let mut expect = std::collections::HashMap::new();
    for i in 0..8u32 {
        let mut h = obj_hdr(op::CREATE_AND_WRITE_OBJ, oid::vid_to_data_oid(vid, i), 0, 0);
        h.flags = flags::CMD_WRITE;
        h.id = 1000 + i;
        out.extend_from_slice(&h.encode());
        expect.insert(h.id, (op::CREATE_AND_WRITE_OBJ, None));
    }
    t.write_all(&out).unwrap();
    for _ in 0..8 {
        let (h, _) = raw_reply(&mut t);
        assert_eq!(h.result(), SdRes::SUCCESS);
        assert!(expect.remove(&h.id).is_some());
    }
    out.clear();
    for i in 0..64u32 {
        let data = pattern(8192, i as u8);
        let mut h = obj_hdr(
            op::WRITE_OBJ,
            oid::vid_to_data_oid(vid, i % 8),
            (i / 8) * 8192,
            8192,
        );
        h.flags = flags::CMD_WRITE;
        h.id = 2000 + i;
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&data);
        expect.insert(h.id, (op::WRITE_OBJ, None));
    }
    t.write_all(&out).unwrap();
    for _ in 0..64 {
        let (h, d) = raw_reply(&mut t);
        let (opc, _) = expect.remove(&h.id).expect("unknown id");
        assert_eq!(h.opcode, opc);
        assert_eq!(h.result(), SdRes::SUCCESS);
        assert!(d.is_empty());
    }
    out.clear();
    for i in 0..64u32 {
        let mut h = obj_hdr(
            op::READ_OBJ,
            oid::vid_to_data_oid(vid, i % 8),
            (i / 8) * 8192,
            8192,
        );
        h.id = 3000 + i;
        out.extend_from_slice(&h.encode());
        expect.insert(h.id, (op::READ_OBJ, Some(pattern(8192, i as u8))));
    }
    t.write_all(&out).unwrap();
    for _ in 0..64 {
        let (h, d) = raw_reply(&mut t);
        let (opc, want) = expect.remove(&h.id).expect("unknown id");
        assert_eq!(h.opcode, opc);
        assert_eq!(h.epoch, 1);
        assert_eq!(h.result(), SdRes::SUCCESS);
        assert_eq!(Some(d), want, "read id {}", h.id);
    }
    assert!(expect.is_empty());
}

// ------------------------------------------------------------------ cluster ops

#[tokio::test(flavor = "multi_thread")]
async fn cluster_ops_after_format() {
    let s = SheepLite::start();
    let c = client(&s);
    // Unknown store driver.
    let mut h = ReqHeader::for_op(op::MAKE_FS);
    h.flags = flags::CMD_WRITE;
    let r = send(&c, h, b"nosuch\0".to_vec()).await;
    check(&r, op::MAKE_FS, 0, SdRes::NO_STORE);
    // Format as dog does (copies 0 -> 3, shift 0 -> 22).
    let ctime = 0x6b03_4a84_1e40_c810u64;
    let mut h = ReqHeader::for_op(op::MAKE_FS);
    h.flags = flags::CMD_WRITE;
    h.args = ClusterArgs {
        ctime,
        flags: cluster_flags::AUTO_VNODES,
        ..Default::default()
    }
    .encode();
    let r = send(&c, h, b"plain\0".to_vec()).await;
    check(&r, op::MAKE_FS, 1, SdRes::SUCCESS);
    // STAT_CLUSTER with 0 node slots: one bare record (dog's first probe).
    let mut h = ReqHeader::for_op(op::STAT_CLUSTER);
    h.data_length = 48;
    let r = send(&c, h, vec![]).await;
    check(&r, op::STAT_CLUSTER, 1, SdRes::SUCCESS);
    let mut want = vec![0u8; 48];
    want[..8].copy_from_slice(&ctime.to_le_bytes());
    want[16] = 1;
    want[25] = 3;
    want[30] = 4;
    want[32..37].copy_from_slice(b"plain");
    assert_eq!(r.data, want);
    // With one slot: nodes and the epoch start time.
    let (res, epoch, logs) = c.stat_cluster(1, 4).await.unwrap();
    assert_eq!((res, epoch, logs.len()), (SdRes::SUCCESS, 1, 1));
    let l: &EpochLog = &logs[0];
    assert_eq!(
        (l.epoch, l.nr_copies, l.flags, l.drv_name.as_str()),
        (1, 3, 4, "plain")
    );
    assert!(l.time > 0 && l.ctime == ctime);
    assert_eq!(
        l.nodes[0].nid.to_addr_port(),
        format!("127.0.0.1:{}", s.port)
    );
    // Too small for one record: empty payload.
    let mut h = ReqHeader::for_op(op::STAT_CLUSTER);
    h.data_length = 100;
    h.args = ClusterArgs {
        nodes_nr: 1,
        ..Default::default()
    }
    .encode();
    let r = send(&c, h, vec![]).await;
    check(&r, op::STAT_CLUSTER, 1, SdRes::SUCCESS);
    assert!(r.data.is_empty());
    // CLUSTER_INFO after format (compare with capture dog-06 seq 41).
    let ci: ClusterInfo = c.cluster_info().await.unwrap();
    assert_eq!(
        (ci.proto_ver, ci.epoch, ci.ctime, ci.flags),
        (0x0a, 1, ctime, 4)
    );
    assert_eq!((ci.nr_copies, ci.status, ci.block_size_shift), (3, 1, 22));
    assert_eq!(ci.default_store, "plain");
    assert_eq!(ci.nodes.len(), 1);
    let d = c.cluster_default().await.unwrap();
    assert_eq!((d.nr_copies, d.copy_policy, d.block_size_shift), (3, 0, 22));
    assert_eq!(c.store_list().await.unwrap(), vec!["tree", "plain"]);
    let (size, free) = c.stat_sheep().await.unwrap();
    assert!(size >= free && free > 0);
    // GET_EPOCH 1: our node + an 8-byte time; epoch 2 does not exist.
    let mut h = ReqHeader::for_op(op::GET_EPOCH);
    h.data_length = 1000;
    h.args = ObjArgs {
        tgt_epoch: 1,
        ..Default::default()
    }
    .encode();
    let r = send(&c, h, vec![]).await;
    check(&r, op::GET_EPOCH, 1, SdRes::SUCCESS);
    assert_eq!(r.data.len(), 88);
    assert_eq!(SdNode::decode(&r.data).unwrap().nid.port, s.port);
    h.args = ObjArgs {
        tgt_epoch: 2,
        ..Default::default()
    }
    .encode();
    check(&send(&c, h, vec![]).await, op::GET_EPOCH, 1, SdRes::NO_TAG);
    // Recovery and loglevel knobs.
    for opc in [op::DISABLE_RECOVER, op::ENABLE_RECOVER, op::FLUSH_DEL_CACHE] {
        check(
            &send(&c, ReqHeader::for_op(opc), vec![]).await,
            opc,
            1,
            SdRes::SUCCESS,
        );
    }
    let mut h = ReqHeader::for_op(op::STAT_RECOVERY);
    h.data_length = 24;
    let r = send(&c, h, vec![]).await;
    check(&r, op::STAT_RECOVERY, 1, SdRes::SUCCESS);
    assert_eq!(r.data, vec![0u8; 24]);
    let mut h = ReqHeader::for_op(op::MD_INFO);
    h.data_length = 263_688;
    let r = send(&c, h, vec![]).await;
    check(&r, op::MD_INFO, 1, SdRes::SUCCESS);
    assert_eq!(&r.data[263_680..263_684], &1i32.to_le_bytes());
    // Reformat wipes VDIs.
    c.create_vdi("gone", 1 << 20, &Default::default())
        .await
        .unwrap();
    c.make_fs(2, 0, 0, 0, "tree").await.unwrap();
    assert!(c
        .vdi_lookup("gone", &SnapSel::Working)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
    assert!(c
        .vdi_bitmap(false)
        .await
        .unwrap()
        .iter_set()
        .next()
        .is_none());
    assert_eq!(c.cluster_default().await.unwrap().nr_copies, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn object_ops_exist_list_discard_remove() {
    let (_s, c) = formatted(0).await;
    let vid = c
        .create_vdi("o", 16 << 20, &Default::default())
        .await
        .unwrap();
    let o0 = oid::vid_to_data_oid(vid, 0);
    let o1 = oid::vid_to_data_oid(vid, 1);
    let ioid = oid::vid_to_vdi_oid(vid);
    // WRITE to a missing object.
    let e = c
        .write_obj(ObjWrite::new(o0, 0, Bytes::from_static(b"x")))
        .await
        .unwrap_err();
    assert!(e.is(SdRes::NO_OBJ));
    let e = c.read_obj(o0, 0, 1, 0).await.unwrap_err();
    assert!(e.is(SdRes::NO_OBJ));
    // Create with data at an offset: the rest reads as zeros, full object size.
    c.write_obj(ObjWrite::new(o0, 4096, Bytes::from(pattern(100, 1))).creating(0))
        .await
        .unwrap();
    let b = c.read_obj(o0, 0, MB4 as u32, 0).await.unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0));
    assert_eq!(&b[4096..4196], &pattern(100, 1)[..]);
    assert!(b[4196..].iter().all(|&x| x == 0));
    // Reads and writes beyond the object size are refused, not crashes.
    let e = c.read_obj(o0, MB4 as u32 - 10, 20, 0).await.unwrap_err();
    assert!(e.is(SdRes::INVALID_PARMS));
    let e = c
        .write_obj(ObjWrite::new(o0, MB4 as u32 - 1, Bytes::from_static(b"ab")))
        .await
        .unwrap_err();
    assert!(e.is(SdRes::INVALID_PARMS));
    let e = c
        .write_obj(ObjWrite::new(o1, MB4 as u32, Bytes::from_static(b"a")).creating(0))
        .await
        .unwrap_err();
    assert!(e.is(SdRes::INVALID_PARMS));
    // A whole inode can be read in one request.
    let ino = c.read_obj(ioid, 0, SD_INODE_SIZE as u32, 0).await.unwrap();
    assert_eq!(ino.len(), SD_INODE_SIZE);
    // EXIST / OIDS_EXIST.
    let mut h = ReqHeader::for_op(op::EXIST);
    h.args = ObjArgs {
        oid: o0,
        ..Default::default()
    }
    .encode();
    check(&send(&c, h, vec![]).await, op::EXIST, 1, SdRes::SUCCESS);
    h.args = ObjArgs {
        oid: o1,
        ..Default::default()
    }
    .encode();
    check(&send(&c, h, vec![]).await, op::EXIST, 1, SdRes::NO_OBJ);
    let mut h = ReqHeader::for_op(op::OIDS_EXIST);
    h.flags = flags::CMD_PIGGYBACK;
    let mut p = o0.to_le_bytes().to_vec();
    p.extend_from_slice(&o1.to_le_bytes());
    let r = send(&c, h, p).await;
    check(&r, op::OIDS_EXIST, 1, SdRes::NO_OBJ);
    assert_eq!(r.data, o1.to_le_bytes());
    // GET_OBJ_LIST: inode and data object; BUFFER_SMALL when it does not fit.
    let mut h = ReqHeader::for_op(op::GET_OBJ_LIST);
    h.data_length = 8;
    check(
        &send(&c, h, vec![]).await,
        op::GET_OBJ_LIST,
        1,
        SdRes::BUFFER_SMALL,
    );
    h.data_length = 1024;
    let r = send(&c, h, vec![]).await;
    check(&r, op::GET_OBJ_LIST, 1, SdRes::SUCCESS);
    let mut got: Vec<u64> = r
        .data
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    got.sort();
    assert_eq!(got, {
        let mut v = vec![o0, ioid];
        v.sort();
        v
    });
    // DISCARD_OBJ: unmaps the index in the inode and drops the object.
    c.write_obj(ObjWrite::new(
        ioid,
        inode::data_vdi_id_offset(0) as u32,
        Bytes::copy_from_slice(&vid.to_le_bytes()),
    ))
    .await
    .unwrap();
    c.discard_obj(o0).await.unwrap();
    let m = c
        .read_obj(ioid, inode::data_vdi_id_offset(0) as u32, 4, 0)
        .await
        .unwrap();
    assert_eq!(m, vec![0; 4]);
    assert!(c.read_obj(o0, 0, 1, 0).await.unwrap_err().is(SdRes::NO_OBJ));
    // REMOVE_OBJ.
    c.write_obj(ObjWrite::new(o1, 0, Bytes::new()).creating(0))
        .await
        .unwrap();
    c.remove_obj(o1).await.unwrap();
    assert!(c.remove_obj(o1).await.unwrap_err().is(SdRes::NO_OBJ));
}

// ------------------------------------------------------------------ VDIs

/// Two names whose vids collide (same low 24 bits of FNV-1a).
fn colliding_names() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0u64.. {
        let n = format!("c{i}");
        if let Some(prev) = seen.insert(sheepfs::proto::vdi_name_hash(&n), n.clone()) {
            return (prev, n);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn vid_allocation_lookup_and_snapshots() {
    let (_s, c) = formatted(0).await;
    let vid = c
        .create_vdi("test", 1 << 30, &Default::default())
        .await
        .unwrap();
    assert_eq!(vid, 0x7c2b25);
    // NEW_VDI reply union: vid, copies, block_size_shift (capture dog-06).
    let mut h = ReqHeader::for_op(op::NEW_VDI);
    h.flags = flags::CMD_WRITE;
    h.args = VdiArgs {
        vdi_size: 1 << 30,
        ..Default::default()
    }
    .encode();
    let r = send(&c, h, name_payload("test", "")[..256].to_vec()).await;
    check(&r, op::NEW_VDI, 1, SdRes::VDI_EXIST);
    // data_length must be exactly 256.
    let r = send(&c, h, name_payload("x", "")).await;
    check(&r, op::NEW_VDI, 1, SdRes::INVALID_PARMS);
    let r = send(&c, h, name_payload("fresh", "")[..256].to_vec()).await;
    check(&r, op::NEW_VDI, 1, SdRes::SUCCESS);
    let v = VdiRsp::decode(&r.hdr.args);
    assert_eq!(
        (v.vdi_id, v.copies, v.block_size_shift),
        (sheepfs::proto::vdi_name_hash("fresh"), 3, 22)
    );
    // Snapshot: the snapshot keeps 0x7c2b25, the working VDI becomes 0x7c2b26.
    let (snap, work) = c.snapshot_vdi("test", "snap1").await.unwrap();
    assert_eq!((snap, work), (0x7c2b25, 0x7c2b26));
    assert_eq!(
        c.vdi_lookup("test", &SnapSel::Working).await.unwrap().vid,
        0x7c2b26
    );
    assert_eq!(
        c.vdi_lookup("test", &SnapSel::Tag("snap1".into()))
            .await
            .unwrap()
            .vid,
        0x7c2b25
    );
    assert_eq!(
        c.vdi_lookup("test", &SnapSel::Id(1)).await.unwrap().vid,
        0x7c2b25
    );
    assert!(c
        .vdi_lookup("test", &SnapSel::Tag("nope".into()))
        .await
        .unwrap_err()
        .is(SdRes::NO_TAG));
    assert!(c
        .vdi_lookup("test", &SnapSel::Id(7))
        .await
        .unwrap_err()
        .is(SdRes::NO_TAG));
    assert!(c
        .vdi_lookup("nosuch", &SnapSel::Working)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
    let w = c.read_inode_header(0x7c2b26).await.unwrap();
    assert_eq!(
        (w.snap_id, w.parent_vdi_id, w.snap_ctime, w.tag.as_str()),
        (2, 0x7c2b25, 0, "")
    );
    let sn = c.read_inode_header(0x7c2b25).await.unwrap();
    assert!(sn.is_snapshot());
    assert_eq!(sn.tag, "snap1");
    // GET_VDI_INFO payload must be 256 or 512 bytes.
    let mut h = ReqHeader::for_op(op::GET_VDI_INFO);
    h.flags = flags::CMD_WRITE;
    let r = send(&c, h, vec![0u8; 300]).await;
    check(&r, op::GET_VDI_INFO, 1, SdRes::INVALID_PARMS);
    // Colliding names probe linearly: the second takes the next free vid.
    let (a, b) = colliding_names();
    let h0 = sheepfs::proto::vdi_name_hash(&a);
    let va = c
        .create_vdi(&a, 1 << 20, &Default::default())
        .await
        .unwrap();
    let vb = c
        .create_vdi(&b, 1 << 20, &Default::default())
        .await
        .unwrap();
    assert_eq!((va, vb), (h0, h0 + 1), "{a} and {b}");
    assert_eq!(c.vdi_lookup(&a, &SnapSel::Working).await.unwrap().vid, h0);
    assert_eq!(
        c.vdi_lookup(&b, &SnapSel::Working).await.unwrap().vid,
        h0 + 1
    );
    // Clone of the snapshot: new name, parent = snapshot, map and grefs copied.
    c.write_obj(
        ObjWrite::new(
            oid::vid_to_data_oid(0x7c2b26, 0),
            0,
            Bytes::from(pattern(512, 3)),
        )
        .creating(0),
    )
    .await
    .unwrap();
    let cl = c
        .clone_vdi("test", &SnapSel::Tag("snap1".into()), "clone1")
        .await
        .unwrap();
    assert_eq!(cl, 0xc8f989);
    let ch = c.read_inode_header(cl).await.unwrap();
    assert_eq!((ch.parent_vdi_id, ch.snap_id), (0x7c2b25, 1));
    // GET_VDI_COPIES: per-vid state, ascending, with the snapshot flag.
    let states: Vec<VdiState> = c.vdi_copies().await.unwrap();
    let vids: Vec<u32> = states.iter().map(|s| s.vid).collect();
    let mut sorted = vids.clone();
    sorted.sort();
    assert_eq!(vids, sorted);
    let st25 = states.iter().find(|s| s.vid == 0x7c2b25).unwrap();
    assert_eq!(
        (
            st25.snapshot,
            st25.nr_copies,
            st25.block_size_shift,
            st25.lock_state
        ),
        (1, 3, 22, lock_state::UNLOCKED)
    );
    let st26 = states.iter().find(|s| s.vid == 0x7c2b26).unwrap();
    assert_eq!((st26.snapshot, st26.parent_vid), (0, 0x7c2b25));
    // GET_VDI_COPIES with a too small buffer.
    let mut h = ReqHeader::for_op(op::GET_VDI_COPIES);
    h.data_length = 1428;
    check(
        &send(&c, h, vec![]).await,
        op::GET_VDI_COPIES,
        1,
        SdRes::BUFFER_SMALL,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cow_create_and_readonly_snapshot_data() {
    let (_s, c) = formatted(0).await;
    let vid = c
        .create_vdi("cow", 64 << 20, &Default::default())
        .await
        .unwrap();
    let base = pattern(MB4, 7);
    c.write_obj(
        ObjWrite::new(oid::vid_to_data_oid(vid, 2), 0, Bytes::from(base.clone())).creating(0),
    )
    .await
    .unwrap();
    c.write_obj(ObjWrite::new(
        oid::vid_to_vdi_oid(vid),
        inode::data_vdi_id_offset(2) as u32,
        Bytes::copy_from_slice(&vid.to_le_bytes()),
    ))
    .await
    .unwrap();
    let (snap, work) = c.snapshot_vdi("cow", "").await.unwrap();
    assert_eq!(snap, vid);
    // Data objects of a snapshot are read-only; its inode is not.
    for create in [false, true] {
        let e = c
            .write_obj(ObjWrite {
                create,
                ..ObjWrite::new(oid::vid_to_data_oid(snap, 2), 0, Bytes::from_static(b"x"))
            })
            .await
            .unwrap_err();
        assert!(e.is(SdRes::READONLY), "{e}");
    }
    c.write_obj(ObjWrite::new(
        oid::vid_to_vdi_oid(snap),
        256,
        Bytes::from(vec![b't'; 4]),
    ))
    .await
    .unwrap();
    // Snapshot data stays readable.
    assert_eq!(
        sha(&c
            .read_obj(oid::vid_to_data_oid(snap, 2), 0, MB4 as u32, 0)
            .await
            .unwrap()),
        sha(&base)
    );
    // Partial COW create: source content with the payload on top.
    let patch = pattern(5000, 99);
    let mut h = obj_hdr(
        op::CREATE_AND_WRITE_OBJ,
        oid::vid_to_data_oid(work, 2),
        12345,
        0,
    );
    h.flags = flags::CMD_WRITE | flags::CMD_COW;
    let mut a = ObjArgs::decode(&h.args);
    a.cow_oid = oid::vid_to_data_oid(snap, 2);
    h.args = a.encode();
    let r = send(&c, h, patch.clone()).await;
    check(&r, op::CREATE_AND_WRITE_OBJ, 1, SdRes::SUCCESS);
    let mut want = base.clone();
    want[12345..12345 + 5000].copy_from_slice(&patch);
    let got = c
        .read_obj(oid::vid_to_data_oid(work, 2), 0, MB4 as u32, 0)
        .await
        .unwrap();
    assert_eq!(sha(&got), sha(&want));
    // Full-size COW payload: becomes the object as is (source not needed).
    let full = pattern(MB4, 50);
    let mut a2 = ObjArgs::decode(&h.args);
    a2.oid = oid::vid_to_data_oid(work, 3);
    a2.offset = 0;
    a2.cow_oid = oid::vid_to_data_oid(snap, 3); // does not exist
    h.args = a2.encode();
    let r = send(&c, h, full.clone()).await;
    check(&r, op::CREATE_AND_WRITE_OBJ, 1, SdRes::SUCCESS);
    assert_eq!(
        sha(&c.read_obj(a2.oid, 0, MB4 as u32, 0).await.unwrap()),
        sha(&full)
    );
    // Partial COW from a missing source: NO_OBJ.
    a2.oid = oid::vid_to_data_oid(work, 4);
    a2.cow_oid = oid::vid_to_data_oid(snap, 4);
    h.args = a2.encode();
    let r = send(&c, h, vec![1, 2, 3]).await;
    check(&r, op::CREATE_AND_WRITE_OBJ, 1, SdRes::NO_OBJ);
}

async fn zero_map(c: &Client, vid: u32, n: u32) {
    c.write_obj(ObjWrite::new(
        oid::vid_to_vdi_oid(vid),
        inode::data_vdi_id_offset(0) as u32,
        Bytes::from(vec![0u8; 4 * n as usize]),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn del_vdi_rules() {
    let (_s, c) = formatted(0).await;
    let vid = c
        .create_vdi("d", 16 << 20, &Default::default())
        .await
        .unwrap();
    c.write_obj(
        ObjWrite::new(
            oid::vid_to_data_oid(vid, 1),
            0,
            Bytes::from(pattern(4096, 1)),
        )
        .creating(0),
    )
    .await
    .unwrap();
    c.write_obj(ObjWrite::new(
        oid::vid_to_vdi_oid(vid),
        inode::data_vdi_id_offset(1) as u32,
        Bytes::copy_from_slice(&vid.to_le_bytes()),
    ))
    .await
    .unwrap();
    // DEL_VDI while data_vdi_id still maps an object: SUCCESS with the vid,
    // deleted bit set, but the inode is left alone (sheep abandons it).
    let mut h = ReqHeader::for_op(op::DEL_VDI);
    h.flags = flags::CMD_WRITE;
    let r = send(&c, h, name_payload("d", "")).await;
    check(&r, op::DEL_VDI, 1, SdRes::SUCCESS);
    assert_eq!(
        &r.hdr.encode()[20..48],
        &VdiRsp {
            vdi_id: vid,
            ..Default::default()
        }
        .encode()[..]
    );
    assert!(c.vdi_bitmap(true).await.unwrap().test(vid));
    let hd: InodeHeader = c.read_inode_header(vid).await.unwrap();
    assert_eq!((hd.name.as_str(), hd.vdi_size), ("d", 16 << 20));
    assert_eq!(c.vdi_lookup("d", &SnapSel::Working).await.unwrap().vid, vid);
    // Once the map is cleared, DEL_VDI really deletes: empty name, size 0,
    // everything from 4664 on zero; the object the map dropped is reclaimed.
    zero_map(&c, vid, 4).await;
    assert!(c
        .read_obj(oid::vid_to_data_oid(vid, 1), 0, 1, 0)
        .await
        .unwrap_err()
        .is(SdRes::NO_OBJ));
    let r = send(&c, h, name_payload("d", "")).await;
    check(&r, op::DEL_VDI, 1, SdRes::SUCCESS);
    let ino = c
        .read_obj(oid::vid_to_vdi_oid(vid), 0, SD_INODE_SIZE as u32, 0)
        .await
        .unwrap();
    assert!(ino[..256].iter().all(|&b| b == 0));
    assert_eq!(&ino[536..544], &[0; 8]);
    assert!(ino[4664..].iter().all(|&b| b == 0));
    assert!(c
        .vdi_lookup("d", &SnapSel::Working)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
    assert!(c
        .vdi_copies()
        .await
        .unwrap()
        .iter()
        .any(|s| s.vid == vid && s.deleted == 1));
    // A deleted name can be created again (next vid, snap_id 1).
    let again = c
        .create_vdi("d", 1 << 20, &Default::default())
        .await
        .unwrap();
    assert_eq!(again, vid + 1);
    // Deleting a snapshot keeps the working VDI; the name survives.
    let (snap, work) = c.snapshot_vdi("d", "s").await.unwrap();
    c.delete_vdi("d", &SnapSel::Tag("s".into())).await.unwrap();
    assert_eq!(
        c.vdi_lookup("d", &SnapSel::Working).await.unwrap().vid,
        work
    );
    assert!(c
        .vdi_lookup("d", &SnapSel::Tag("s".into()))
        .await
        .unwrap_err()
        .is(SdRes::NO_TAG));
    assert!(c.vdi_bitmap(true).await.unwrap().test(snap));
    // Deleting the working VDI while a snapshot remains: a new create continues
    // the snap_id sequence after the newest remaining member (snapshot s2 = 2).
    let (_s2, w2) = c.snapshot_vdi("d", "s2").await.unwrap();
    c.delete_vdi("d", &SnapSel::Working).await.unwrap();
    let w3 = c
        .create_vdi("d", 1 << 20, &Default::default())
        .await
        .unwrap();
    assert_eq!(w3, w2 + 1);
    assert_eq!(c.read_inode_header(w3).await.unwrap().snap_id, 3);
    // Hyper volume: DEL_VDI removes its own data objects directly.
    let hv = c
        .create_vdi(
            "h",
            5 << 40,
            &CreateOptions {
                hyper: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let hi = c.read_inode(hv, true).await.unwrap();
    assert!(matches!(hi.map, sheepfs::client::DataMap::Btree(_)));
    let doid = oid::vid_to_data_oid(hv, 1 << 20);
    c.write_obj(ObjWrite::new(doid, 0, Bytes::from_static(b"hyper")).creating(0))
        .await
        .unwrap();
    let mut t = inode::Btree::from_root(&[]).unwrap();
    t.set(1 << 20, hv, &mut || unreachable!()).unwrap();
    let mut b = hi.header.encode();
    b.extend_from_slice(&t.encode_root());
    c.write_obj(ObjWrite::new(oid::vid_to_vdi_oid(hv), 0, Bytes::from(b)))
        .await
        .unwrap();
    c.delete_vdi("h", &SnapSel::Working).await.unwrap();
    assert!(c
        .read_obj(doid, 0, 1, 0)
        .await
        .unwrap_err()
        .is(SdRes::NO_OBJ));
    assert!(c
        .vdi_lookup("h", &SnapSel::Working)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_without_and_with_use_lock() {
    // Default format: LOCK_VDI is a lookup.
    let (_s, c) = formatted(0).await;
    let vid = c
        .create_vdi("l", 1 << 20, &Default::default())
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.lock_vdi("l", &SnapSel::Working, LOCK_TYPE_NORMAL)
                .await
                .unwrap()
                .vid,
            vid
        );
    }
    assert!(c
        .lock_vdi("x", &SnapSel::Working, LOCK_TYPE_NORMAL)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
    assert!(c
        .vdi_copies()
        .await
        .unwrap()
        .iter()
        .all(|s| s.lock_state == lock_state::UNLOCKED));

    // USE_LOCK: locks are enforced, owned by the node.
    let (mut s, c) = formatted(cluster_flags::USE_LOCK).await;
    let vid = c
        .create_vdi("l", 1 << 20, &Default::default())
        .await
        .unwrap();
    c.lock_vdi("l", &SnapSel::Working, LOCK_TYPE_NORMAL)
        .await
        .unwrap();
    let mut h = ReqHeader::for_op(op::LOCK_VDI);
    h.flags = flags::CMD_WRITE;
    let r = send(&c, h, name_payload("l", "")).await;
    check(&r, op::LOCK_VDI, 1, SdRes::VDI_LOCKED);
    assert_eq!(
        VdiRsp::decode(&r.hdr.args).vdi_id,
        vid,
        "reply still names the vid"
    );
    let e = c
        .lock_vdi("l", &SnapSel::Working, LOCK_TYPE_SHARED)
        .await
        .unwrap_err();
    assert!(e.is(SdRes::VDI_LOCKED));
    let st = c.vdi_copies().await.unwrap();
    let e = st.iter().find(|x| x.vid == vid).unwrap();
    assert_eq!(e.lock_state, lock_state::LOCKED);
    assert_eq!(e.lock_owner.port, s.port);
    c.release_vdi(vid, LOCK_TYPE_NORMAL).await.unwrap();
    // Shared: the same node cannot join twice.
    c.lock_vdi("l", &SnapSel::Working, LOCK_TYPE_SHARED)
        .await
        .unwrap();
    assert!(c
        .lock_vdi("l", &SnapSel::Working, LOCK_TYPE_SHARED)
        .await
        .unwrap_err()
        .is(SdRes::VDI_LOCKED));
    assert!(c
        .lock_vdi("l", &SnapSel::Working, LOCK_TYPE_NORMAL)
        .await
        .unwrap_err()
        .is(SdRes::VDI_LOCKED));
    let st = c.vdi_copies().await.unwrap();
    let e = st.iter().find(|x| x.vid == vid).unwrap();
    assert_eq!(
        (e.lock_state, e.participants.len(), e.participants[0].0),
        (lock_state::SHARED, 1, 1)
    );
    c.release_vdi(vid, LOCK_TYPE_SHARED).await.unwrap();
    // RELEASE of an unlocked VDI is still SUCCESS.
    c.release_vdi(vid, LOCK_TYPE_NORMAL).await.unwrap();
    c.lock_vdi("l", &SnapSel::Working, LOCK_TYPE_NORMAL)
        .await
        .unwrap();
    // Locks are in memory only: gone after a restart.
    drop(c);
    s.restart();
    let c = client(&s);
    c.lock_vdi("l", &SnapSel::Working, LOCK_TYPE_NORMAL)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn vdi_attributes() {
    let (_s, c) = formatted(0).await;
    c.create_vdi("a", 1 << 20, &Default::default())
        .await
        .unwrap();
    c.set_attr("a", "key", b"value", false, false)
        .await
        .unwrap();
    assert_eq!(c.get_attr("a", "key").await.unwrap(), b"value");
    // The attribute object lives under the name hash and carries the VDI ctime.
    let attr = sheepfs::proto::attr::VdiAttr {
        name: "a".into(),
        key: "key".into(),
        ..Default::default()
    };
    let mut h = ReqHeader::for_op(op::GET_VDI_ATTR);
    h.flags = flags::CMD_WRITE;
    let r = send(&c, h, attr.encode()).await;
    check(&r, op::GET_VDI_ATTR, 1, SdRes::SUCCESS);
    let v = VdiRsp::decode(&r.hdr.args);
    assert_eq!(
        (v.vdi_id, v.copies),
        (sheepfs::proto::vdi_name_hash("a"), 3)
    );
    assert_eq!(v.attr_id, sheepfs::proto::attr::attr_id(&attr.encode()));
    let obj = c
        .read_obj(oid::vid_to_attr_oid(v.vdi_id, v.attr_id), 0, 66_320, 0)
        .await
        .unwrap();
    let hdr_a = c
        .read_inode_header(sheepfs::proto::vdi_name_hash("a"))
        .await
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(obj[512..520].try_into().unwrap()),
        hdr_a.create_time
    );
    // Overwrite, EXCL, missing key, delete.
    c.set_attr("a", "key", b"v2", false, false).await.unwrap();
    assert_eq!(c.get_attr("a", "key").await.unwrap(), b"v2");
    assert!(c
        .set_attr("a", "key", b"v3", true, false)
        .await
        .unwrap_err()
        .is(SdRes::VDI_EXIST));
    assert!(c
        .get_attr("a", "other")
        .await
        .unwrap_err()
        .is(SdRes::NO_OBJ));
    c.set_attr("a", "key", b"", false, true).await.unwrap();
    assert!(c.get_attr("a", "key").await.unwrap_err().is(SdRes::NO_OBJ));
    // Attributes survive a snapshot (same name hash).
    c.set_attr("a", "k2", b"kept", false, false).await.unwrap();
    c.snapshot_vdi("a", "").await.unwrap();
    assert_eq!(c.get_attr("a", "k2").await.unwrap(), b"kept");
    assert!(c
        .get_attr("nosuch", "k")
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
    // Short payload.
    let r = send(&c, h, vec![0u8; 100]).await;
    check(&r, op::GET_VDI_ATTR, 1, SdRes::INVALID_PARMS);
}

// ------------------------------------------------------------------ robustness

fn still_serves(s: &SheepLite) {
    let mut t = raw_conn(s);
    let mut h = ReqHeader::for_op(op::GET_NODE_LIST);
    h.data_length = 491_520;
    h.id = 77;
    t.write_all(&h.encode()).unwrap();
    let (r, d) = raw_reply(&mut t);
    assert_eq!((r.id, r.result(), d.len()), (77, SdRes::SUCCESS, 80));
    assert_eq!(NodeRsp::decode(&r.args).nr_nodes, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_never_crashes() {
    let (s, c) = formatted(0).await;
    let vid = c
        .create_vdi("m", 1 << 20, &Default::default())
        .await
        .unwrap();
    // Huge data_length on a read: refused without allocating.
    let mut t = raw_conn(&s);
    let h = obj_hdr(op::READ_OBJ, oid::vid_to_vdi_oid(vid), 0, u32::MAX);
    t.write_all(&h.encode()).unwrap();
    let (r, d) = raw_reply(&mut t);
    assert_eq!((r.result(), d.len()), (SdRes::INVALID_PARMS, 0));
    // Oversized payload: refused, skipped, and the connection stays usable.
    let mut h = obj_hdr(op::WRITE_OBJ, oid::vid_to_vdi_oid(vid), 0, 20 << 20);
    h.flags = flags::CMD_WRITE;
    h.id = 5;
    t.write_all(&h.encode()).unwrap();
    t.write_all(&vec![0xAB; 20 << 20]).unwrap();
    let (r, _) = raw_reply(&mut t);
    assert_eq!((r.id, r.result()), (5, SdRes::INVALID_PARMS));
    let mut h = ReqHeader::for_op(op::GET_NODE_LIST);
    h.data_length = 491_520;
    t.write_all(&h.encode()).unwrap();
    assert_eq!(raw_reply(&mut t).0.result(), SdRes::SUCCESS);
    // Garbage headers: every one gets a result code (possibly after its
    // payload); nothing crashes.
    let mut g = raw_conn(&s);
    let mut seed = 0x1234_5678u64;
    let mut junk = Vec::new();
    for _ in 0..200 {
        let mut b = [0u8; 48];
        for x in b.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *x = seed as u8;
        }
        b[2] &= !1; // no payload, so the stream stays framed
        b[12..16].copy_from_slice(&((seed as u32) % (1 << 16)).to_le_bytes());
        junk.extend_from_slice(&b);
    }
    g.write_all(&junk).unwrap();
    for _ in 0..200 {
        raw_reply(&mut g);
    }
    // Fully random bytes, a truncated payload, then a close.
    let mut z = raw_conn(&s);
    let rnd: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = z.write_all(&rnd);
    drop(z);
    let mut tr = raw_conn(&s);
    let mut h = obj_hdr(op::WRITE_OBJ, oid::vid_to_vdi_oid(vid), 0, 1 << 20);
    h.flags = flags::CMD_WRITE;
    tr.write_all(&h.encode()).unwrap();
    tr.write_all(&[1u8; 1000]).unwrap();
    drop(tr);
    // Header cut short.
    let mut short = raw_conn(&s);
    short.write_all(&[0x02, 0x02, 0, 0]).unwrap();
    drop(short);
    // Many connections that disconnect with requests in flight.
    for _ in 0..20 {
        let mut t = raw_conn(&s);
        let h = obj_hdr(
            op::READ_OBJ,
            oid::vid_to_vdi_oid(vid),
            0,
            SD_INODE_SIZE as u32,
        );
        t.write_all(&h.encode()).unwrap();
        drop(t);
    }
    still_serves(&s);
    // The truncated write was never applied.
    let b = c
        .read_obj(oid::vid_to_vdi_oid(vid), 0, 1000, 0)
        .await
        .unwrap();
    assert_eq!(&b[..1], b"m");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_disk_gives_no_space_and_keeps_data() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test mounts a small tmpfs and needs root"
    );
    let mnt = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Umount(mnt.path().to_path_buf());
    let port = common::free_port();
    let mut child = std::process::Command::new(common::bin("sheep-lite"))
        .arg("-p")
        .arg(port.to_string())
        .arg(mnt.path().join("store"))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = Client::new(SheepAddr::tcp("127.0.0.1", port), Options::default());
    c.make_fs(0, 0, 0, 0, "plain").await.unwrap();
    let vid = c
        .create_vdi("full", 1 << 30, &Default::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    let mut saw_full = false;
    for i in 0..20u32 {
        let data = pattern(MB4, i as u8);
        match c
            .write_obj(
                ObjWrite::new(oid::vid_to_data_oid(vid, i), 0, Bytes::from(data.clone()))
                    .creating(0),
            )
            .await
        {
            Ok(()) => acked.push((i, sha(&data))),
            Err(e) => {
                assert!(e.is(SdRes::NO_SPACE), "{e}");
                saw_full = true;
            }
        }
    }
    assert!(saw_full, "24 MiB filesystem never filled");
    for (i, h) in &acked {
        let b = c
            .read_obj(oid::vid_to_data_oid(vid, *i), 0, MB4 as u32, 0)
            .await
            .unwrap();
        assert_eq!(&sha(&b), h, "object {i}");
    }
    // Still serving metadata requests.
    c.node_list().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------------ persistence

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_everything() {
    let (mut s, c) = formatted(0).await;
    let vid = c
        .create_vdi("r", 64 << 20, &Default::default())
        .await
        .unwrap();
    let data = pattern(MB4, 9);
    c.write_obj(
        ObjWrite::new(oid::vid_to_data_oid(vid, 0), 0, Bytes::from(data.clone())).creating(0),
    )
    .await
    .unwrap();
    let (snap, work) = c.snapshot_vdi("r", "t").await.unwrap();
    c.set_attr("r", "k", b"v", false, false).await.unwrap();
    let x = c
        .create_vdi("x", 1 << 20, &Default::default())
        .await
        .unwrap();
    zero_map(&c, x, 1).await;
    c.delete_vdi("x", &SnapSel::Working).await.unwrap();
    let ci = c.cluster_info().await.unwrap();
    let copies = c.vdi_copies().await.unwrap();
    drop(c);
    assert_eq!(s.stop().and_then(|st| st.code()), Some(0));
    s.spawn();
    let c = client(&s);
    assert_eq!(c.cluster_info().await.unwrap(), ci);
    assert_eq!(c.vdi_copies().await.unwrap(), copies);
    assert_eq!(
        c.vdi_lookup("r", &SnapSel::Working).await.unwrap().vid,
        work
    );
    assert_eq!(
        c.vdi_lookup("r", &SnapSel::Tag("t".into()))
            .await
            .unwrap()
            .vid,
        snap
    );
    assert!(c
        .vdi_lookup("x", &SnapSel::Working)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
    assert!(c.vdi_bitmap(true).await.unwrap().test(x));
    assert_eq!(c.get_attr("r", "k").await.unwrap(), b"v");
    let b = c
        .read_obj(oid::vid_to_data_oid(snap, 0), 0, MB4 as u32, 0)
        .await
        .unwrap();
    assert_eq!(sha(&b), sha(&data));
    // Still read-only after restart.
    let e = c
        .write_obj(ObjWrite::new(
            oid::vid_to_data_oid(snap, 0),
            0,
            Bytes::from_static(b"z"),
        ))
        .await
        .unwrap_err();
    assert!(e.is(SdRes::READONLY));
    // A second server on the same directory is refused with a clear message.
    let o = std::process::Command::new(common::bin("sheep-lite"))
        .arg("-p")
        .arg(common::free_port().to_string())
        .arg(s.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in use") && err.contains(&s.path().display().to_string()),
        "{err}"
    );
}

/// Writers that record every acknowledged write (oid, offset, checksum).
async fn write_until_killed(
    c: Client,
    vid: u32,
    worker: u32,
    cache: bool,
) -> Vec<(u64, u32, [u8; 32], usize)> {
    let mut acked = Vec::new();
    for n in 0u32.. {
        let idx = worker * 1000 + n / 4;
        let o = oid::vid_to_data_oid(vid, idx);
        let data = pattern(64 * 1024 + (n as usize % 7) * 4096, (n + worker) as u8);
        let off = (n % 4) * (256 * 1024);
        let create = n % 4 == 0;
        let fl = if cache { flags::CMD_CACHE } else { 0 };
        match c
            .write_obj(
                ObjWrite {
                    create,
                    ..ObjWrite::new(o, off, Bytes::from(data.clone()))
                }
                .with_flags(fl),
            )
            .await
        {
            Ok(()) => acked.push((o, off, sha(&data), data.len())),
            Err(_) => break,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_loses_no_acknowledged_write() {
    let (mut s, c) = formatted(0).await;
    let vid = c
        .create_vdi(
            "k",
            1 << 40,
            &CreateOptions {
                hyper: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let opts = Options {
        retry_timeout: Duration::from_millis(1),
        ..Options::default()
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let cw = Client::new(s.addr(), opts.clone());
        tasks.push(tokio::spawn(write_until_killed(cw, vid, w, false)));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    s.spawn();
    let c = client(&s);
    for (o, off, h, len) in &acked {
        let b = c
            .read_obj(*o, *off, *len as u32, 0)
            .await
            .unwrap_or_else(|e| panic!("{o:016x}: {e}"));
        assert_eq!(&sha(&b), h, "acknowledged write to {o:016x} at {off} lost");
    }
    // No half-created object: every object is full size and readable.
    let mut h = ReqHeader::for_op(op::GET_OBJ_LIST);
    h.data_length = 1 << 20;
    let r = send(&c, h, vec![]).await;
    for ch in r.data.chunks(8) {
        let o = u64::from_le_bytes(ch.try_into().unwrap());
        if oid::is_data_obj(o) {
            c.read_obj(o, MB4 as u32 - 4096, 4096, 0)
                .await
                .expect("full-size object");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_writes_survive_kill9_after_flush_vdi() {
    let (mut s, c) = formatted(0).await;
    let vid = c
        .create_vdi("cache", 1 << 30, &Default::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..8u32 {
        let o = oid::vid_to_data_oid(vid, i);
        c.write_obj(
            ObjWrite::new(o, 0, Bytes::new())
                .creating(0)
                .with_flags(flags::CMD_CACHE),
        )
        .await
        .unwrap();
        for k in 0..4u32 {
            let d = pattern(100_000, (i * 4 + k) as u8);
            c.write_obj(
                ObjWrite::new(o, k * 1_000_000, Bytes::from(d.clone()))
                    .with_flags(flags::CMD_CACHE),
            )
            .await
            .unwrap();
            acked.push((o, k * 1_000_000, sha(&d)));
        }
    }
    // FLUSH_VDI answers SUCCESS here (sheep: INVALID_PARMS; intended).
    let mut h = ReqHeader::for_op(op::FLUSH_VDI);
    h.args = ObjArgs {
        oid: oid::vid_to_vdi_oid(vid),
        ..Default::default()
    }
    .encode();
    let r = send(&c, h, vec![]).await;
    check(&r, op::FLUSH_VDI, 1, SdRes::SUCCESS);
    s.kill9();
    s.spawn();
    let c = client(&s);
    for (o, off, h) in acked {
        let b = c.read_obj(o, off, 100_000, 0).await.unwrap();
        assert_eq!(sha(&b), h);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_shutdown_stop_cleanly() {
    let (mut s, c) = formatted(0).await;
    let vid = c
        .create_vdi("t", 1 << 30, &Default::default())
        .await
        .unwrap();
    let o = oid::vid_to_data_oid(vid, 0);
    c.write_obj(ObjWrite::new(o, 0, Bytes::new()).creating(0))
        .await
        .unwrap();
    let d = pattern(1 << 20, 4);
    c.write_obj(ObjWrite::new(o, 0, Bytes::from(d.clone())).with_flags(flags::CMD_CACHE))
        .await
        .unwrap();
    assert!(s.sock().exists());
    drop(c);
    assert_eq!(
        s.stop().and_then(|st| st.code()),
        Some(0),
        "SIGTERM exit status"
    );
    assert!(!s.sock().exists(), "socket removed");
    // A stale socket file is replaced on start; cached data was synced at stop.
    std::fs::write(s.sock(), b"stale").unwrap();
    s.spawn();
    let u = Client::new(SheepAddr::Unix(s.sock()), Options::default());
    assert_eq!(sha(&u.read_obj(o, 0, 1 << 20, 0).await.unwrap()), sha(&d));
    // SHUTDOWN: SUCCESS, then the server exits 0 and removes the socket.
    u.shutdown().await.unwrap();
    assert_eq!(
        s.wait_exit(Duration::from_secs(30))
            .and_then(|st| st.code()),
        Some(0)
    );
    assert!(!s.sock().exists());
}

#[test]
fn command_line_errors_name_the_problem() {
    // Port in use.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let d = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(common::bin("sheep-lite"))
        .args(["-p", &port.to_string()])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    // Directory that cannot be created.
    let f = d.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let o = std::process::Command::new(common::bin("sheep-lite"))
        .arg(f.join("sub"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("file/sub"));
    // --help and --version.
    let o = std::process::Command::new(common::bin("sheep-lite"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("0.0.0.0"));
    let o = std::process::Command::new(common::bin("sheep-lite"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
}
