//! Write fencing (see `sheepfs::client` pool docs): sheep-lite delays one
//! WRITE_OBJ past the client's request timeout, the client retries it on a
//! new connection and goes on with newer overlapping writes while the stale
//! original still sleeps in the server. The final data must be what the
//! newest acknowledged writes say, every time, over many seeds
//! (`SHEEPFS_FENCE_SEEDS`, default 12). And a resize whose inode write was
//! retried must not undo a snapshot that another client took meanwhile.
//!
//! Needs sheep-lite built with `--features fault-injection`.
#![cfg(feature = "fault-injection")]

mod common;

use common::SheepLite;
use rand::{Rng, SeedableRng};
use sheepfs::client::{Client, CreateOptions, OpenOptions, Options, SnapSel, Volume};
use std::time::{Duration, Instant};

const OBJ: u64 = 4 << 20;
/// Writes land in [OBJ - SPAN, OBJ + SPAN): both objects, often across.
const SPAN: u64 = 12 << 10;

fn seeds() -> u64 {
    std::env::var("SHEEPFS_FENCE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// A formatted sheep-lite with the fault `rule`, and a client that gives up
/// on a request after 150 ms (and retries it).
fn faulty_server(rule: &str) -> (SheepLite, Client) {
    let s = SheepLite::start_with_env(&[("SHEEP_LITE_REQ_FAULTS", rule)]);
    s.ctl(&["cluster", "format"]).assert_ok();
    let c = Client::new(
        s.addr(),
        Options {
            request_timeout: Duration::from_millis(150),
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    );
    (s, c)
}

/// Polls until the client has no write in doubt (the stale copy has run).
async fn settle(c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.writes_in_doubt() > 0 {
        assert!(Instant::now() < deadline, "a write stayed in doubt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_seed(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Setup sends 2 WRITE_OBJs (one map entry per allocated object); then
    // one of the first writes of the sequence is delayed.
    let nth = 2 + rng.gen_range(1..=6);
    let delay = rng.gen_range(300..800);
    let rule = format!("WRITE_OBJ:{nth}:delay={delay}");
    let (_server, c) = faulty_server(&rule); // kept running to the end
    c.create_vdi("f", 2 * OBJ, &CreateOptions::default())
        .await
        .expect("create");
    let v = Volume::open(c.clone(), "f", OpenOptions::default())
        .await
        .expect("open");
    let base = OBJ - SPAN;
    let mut model = vec![1u8; (2 * SPAN) as usize];
    // Allocate both objects before the faulty part.
    v.write_at(base, &model[..SPAN as usize]).await.unwrap();
    v.write_at(OBJ, &model[SPAN as usize..]).await.unwrap();
    for i in 0..10 {
        let off = rng.gen_range(0..2 * SPAN - 1);
        let len = rng.gen_range(1..=(2 * SPAN - off).min(SPAN));
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        v.write_at(base + off, &data)
            .await
            .unwrap_or_else(|e| panic!("seed {seed} ({rule}) write {i}: {e}"));
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    assert!(
        c.reconnects() > 0,
        "seed {seed} ({rule}): no write timed out, the test did not test"
    );
    settle(&c).await;
    let got = v.read_at(base, model.len()).await.unwrap();
    let bad = got.iter().zip(&model).position(|(a, b)| a != b);
    assert_eq!(
        bad, None,
        "seed {seed} ({rule}): an older write overwrote a newer one (first bad byte)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_write_never_overwrites_a_newer_one() {
    for seed in 0..seeds() {
        run_seed(seed).await;
    }
}

/// A volume's resize writes the inode; that write times out and is retried,
/// and while the stale first copy still sleeps in the server, another client
/// snapshots the VDI (as `dog vdi snapshot` would). When the stale copy runs
/// it must not touch the snapshot: it once carried the whole header, whose
/// tag and snap_ctime (empty, 0) then erased the snapshot, leaving two
/// working VDIs of that name (found by tests/volume_model.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_resize_never_undoes_a_snapshot_taken_meanwhile() {
    // The resize's inode write is the first WRITE_OBJ of the run.
    let (s, c) = faulty_server("WRITE_OBJ:1:delay=3000");
    let admin = Client::new(s.addr(), Options::default());
    admin
        .create_vdi("m", OBJ, &CreateOptions::default())
        .await
        .expect("create");
    let v = Volume::open(c.clone(), "m", OpenOptions::default())
        .await
        .expect("open");
    v.resize(2 * OBJ).await.expect("resize");
    assert!(
        c.writes_in_doubt() > 0,
        "the resize's write was not left in doubt: the test did not test"
    );
    let old = admin
        .vdi_lookup("m", &SnapSel::Working)
        .await
        .expect("lookup")
        .vid;
    admin.snapshot_vdi("m", "s0").await.expect("snapshot");
    settle(&c).await;

    let snap = admin
        .vdi_lookup("m", &SnapSel::Tag("s0".into()))
        .await
        .expect("the snapshot s0, after the stale write ran");
    assert_eq!(snap.vid, old, "the snapshot is the VDI that was resized");
    let h = admin.read_inode_header(old).await.expect("snapshot header");
    assert!(h.is_snapshot(), "snap_ctime of the snapshot was cleared");
    assert_eq!((h.tag.as_str(), h.vdi_size), ("s0", 2 * OBJ));
    let work = admin
        .vdi_lookup("m", &SnapSel::Working)
        .await
        .expect("working VDI")
        .vid;
    assert_ne!(work, old);
    let h = admin.read_inode_header(work).await.expect("working header");
    assert!(!h.is_snapshot());
    assert_eq!(h.vdi_size, 2 * OBJ);
}
