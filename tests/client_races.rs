//! Races between a Volume and the outside world: snapshots taken by another
//! client while writes and discards are in flight, resizes racing B-tree
//! updates, and a connection whose request was abandoned half-sent.

mod common;

use common::SheepLite;
use sheepfs::client::{
    Client, CreateOptions, LockMode, OpenOptions, Options, Request, SheepAddr, SnapSel, Volume,
};
use sheepfs::proto::{header::ObjArgs, op, ReqHeader, SD_PROTO_VER};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn locked() -> OpenOptions {
    OpenOptions {
        lock: LockMode::Normal,
        ..Default::default()
    }
}

/// Allocating writes racing with snapshots taken by another client: every
/// acknowledged write is readable from the working VDI afterwards, and every
/// write succeeds (the volume follows the working VDI, never EIO).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocations_survive_concurrent_snapshots() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    let nobj: u64 = 1024;
    c.create_vdi(
        "v",
        nobj << 20,
        &CreateOptions {
            block_size_shift: Some(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let vol = Arc::new(Volume::open(c.clone(), "v", locked()).await.unwrap());
    let tasks = 16u64;
    let mut hs = Vec::new();
    for t in 0..tasks {
        let vol = vol.clone();
        hs.push(tokio::spawn(async move {
            let mut idx = t;
            while idx < nobj {
                let pat = vec![(idx % 251) as u8 + 1; 4096];
                vol.write_at(idx << 20, &pat)
                    .await
                    .unwrap_or_else(|e| panic!("write of object {idx} failed: {e}"));
                idx += tasks;
            }
        }));
    }
    let other = s.client();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        other.snapshot_vdi("v", &format!("s{i}")).await.unwrap();
    }
    for h in hs {
        h.await.unwrap();
    }
    let fresh = Volume::open(other.clone(), "v", OpenOptions::default())
        .await
        .unwrap();
    let mut lost = Vec::new();
    for idx in 0..nobj {
        let d = fresh.read_at(idx << 20, 4096).await.unwrap();
        if !d.iter().all(|&b| b == (idx % 251) as u8 + 1) {
            lost.push(idx);
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes missing from the working VDI, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // The volume follows the working VDI lazily: the next write finds the
    // old one read-only and moves on.
    vol.write_at(0, &[1u8; 4096]).await.unwrap();
    assert_eq!(vol.vid(), fresh.vid(), "the volume follows the working VDI");
}

/// A whole-object discard through a volume opened before someone else took
/// a snapshot goes to the working VDI; the snapshot keeps its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discard_after_external_snapshot_spares_the_snapshot() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    c.create_vdi("v", 16 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let vol = Volume::open(c.clone(), "v", locked()).await.unwrap();
    let obj = vol.object_size();
    vol.write_at(0, &vec![0xAB; 2 * obj as usize])
        .await
        .unwrap();
    let other = s.client();
    other.snapshot_vdi("v", "s1").await.unwrap();
    // Object 0 is ours (now the snapshot's); object 1 the same: one through
    // DISCARD_OBJ after READONLY, one after the volume has already followed.
    vol.discard(0, obj).await.unwrap();
    vol.discard(obj, obj).await.unwrap();
    let snap = Volume::open(
        other.clone(),
        "v",
        OpenOptions {
            snapshot: SnapSel::Tag("s1".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let d = snap.read_at(0, 2 * obj as usize).await.unwrap();
    assert!(
        d.iter().all(|&b| b == 0xAB),
        "the snapshot lost data to a discard"
    );
    let w = Volume::open(other.clone(), "v", OpenOptions::default())
        .await
        .unwrap();
    let d = w.read_at(0, 2 * obj as usize).await.unwrap();
    assert!(
        d.iter().all(|&b| b == 0),
        "the working VDI was not discarded"
    );
}

/// Growing a hyper volume while it allocates objects: the size on the server
/// is the last size resize() acknowledged (B-tree root rewrites carry the
/// header and must not write back an old size).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hyper_resize_is_not_reverted_by_allocations() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    let base: u64 = 1 << 30;
    c.create_vdi(
        "h",
        base,
        &CreateOptions {
            hyper: true,
            block_size_shift: Some(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let vol = Arc::new(Volume::open(c.clone(), "h", locked()).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for t in 0..8u64 {
        let (vol, stop) = (vol.clone(), stop.clone());
        hs.push(tokio::spawn(async move {
            let mut idx = t;
            while !stop.load(Ordering::Relaxed) && idx < 1000 {
                vol.write_at(idx << 20, &[7u8; 512]).await.unwrap();
                idx += 8;
            }
        }));
    }
    let mut size = base;
    for i in 0..40 {
        size += 1 << 20;
        vol.resize(size).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let on_disk = c.read_inode_header(vol.vid()).await.unwrap().vdi_size;
        assert_eq!(on_disk, size, "resize {i} reverted on the server");
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.await.unwrap();
    }
}

fn write_req(oid: u64, fill: u8, len: usize) -> Request {
    let mut h = ReqHeader::new(SD_PROTO_VER, op::WRITE_OBJ);
    h.args = ObjArgs {
        oid,
        ..Default::default()
    }
    .encode();
    Request::new(h)
        .with_payload(vec![fill; len])
        .not_idempotent()
}

/// A server that stops reading for longer than the request timeout: the
/// first request is cut off half-sent; a second one queued behind it must
/// not be written into the middle of the first one's payload (the server
/// would execute a write whose payload contains another request).
///
/// No timing is assumed. The server reads the first request's header (so it
/// is being sent, and holds the socket) and then nothing until both requests
/// have failed; then it reads to the end of the stream, which the client
/// closes after killing the connection. The client runs on one thread, so
/// the second request is queued behind the first before the first one's
/// timeout can be handled. The writer task picks between its kill signal
/// and the socket in random order, so a writer that ignores the kill only
/// splices some of the time: the scenario runs several rounds.
#[tokio::test(flavor = "current_thread")]
async fn abandoned_request_is_never_spliced() {
    for round in 0..4 {
        let got = abandon_one_request().await;
        let h = ReqHeader::decode(got[..48].try_into().unwrap());
        assert_eq!(
            (h.opcode, ObjArgs::decode(&h.args).oid),
            (op::WRITE_OBJ, 0x1111),
            "round {round}: the stream starts with the first request"
        );
        let cut = got.len() < 48 + BIG;
        assert!(cut, "round {round}: the first request was sent whole");
        // Cut off, so nothing may follow it: every byte after its header is
        // its own payload.
        if let Some(p) = got[48..].iter().position(|&b| b != 0xAA) {
            panic!(
                "round {round}: bytes of another request spliced into the first one's payload at byte {}",
                48 + p
            );
        }
    }
}

const BIG: usize = 64 << 20;

/// One round: returns every byte the server received on the connection.
async fn abandon_one_request() -> Vec<u8> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let srv = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // A bound against a hang only; nothing waits for it to pass.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = vec![0u8; 48];
        s.read_exact(&mut got).unwrap();
        started_tx.send(()).unwrap();
        // Read nothing more until the client has given up on both requests
        // (or the test failed and dropped `go`).
        let _ = go_rx.recv();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let c = Client::connect(
        SheepAddr::tcp("127.0.0.1", port),
        Options {
            connections: 1,
            request_timeout: Duration::from_secs(1),
            retry_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = write_req(0x1111, 0xAA, BIG);
    let c1 = c.clone();
    let a = tokio::spawn(async move { c1.send(first).await });
    // Poll (with a deadline) until the server has the first header.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while started.try_recv().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = write_req(0xDEAD_BEEF_0000_0001, 0x5A, 4096);
    let c2 = c.clone();
    let b = tokio::spawn(async move { c2.send(second).await });
    assert!(
        a.await.unwrap().is_err(),
        "the stalled request must time out"
    );
    assert!(
        b.await.unwrap().is_err(),
        "the request queued behind it cannot have been answered"
    );
    go.send(()).unwrap();
    // The client shuts its dead connection down, which ends the server's read.
    tokio::task::spawn_blocking(move || srv.join().unwrap())
        .await
        .unwrap()
}
