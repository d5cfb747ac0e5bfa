//! The client library against a real sheep-lite: VDI operations, COW, thin
//! provisioning, object sizes, hyper volumes, concurrency, restarts.

mod common;

use common::{pattern, sha, SheepLite};
use rand::{Rng, SeedableRng};
use sheepfs::client::{
    Client, CreateOptions, Error, LockMode, ObjectCache, OpenOptions, Options, SheepAddr, SnapSel,
    Volume,
};
use sheepfs::proto::SdRes;
use std::sync::Arc;
use std::time::Duration;

const MB: u64 = 1 << 20;

async fn create(c: &Client, name: &str, size: u64) -> u32 {
    c.create_vdi(name, size, &CreateOptions::default())
        .await
        .expect("create")
}

async fn open(c: &Client, name: &str) -> Volume {
    Volume::open(c.clone(), name, OpenOptions::default())
        .await
        .expect("open")
}

async fn open_snap(c: &Client, name: &str, sel: SnapSel) -> Volume {
    Volume::open(
        c.clone(),
        name,
        OpenOptions {
            snapshot: sel,
            ..Default::default()
        },
    )
    .await
    .expect("open snapshot")
}

fn used(entries: &[sheepfs::client::VdiEntry], vid: u32) -> (u64, u64) {
    let e = entries
        .iter()
        .find(|e| e.header.vdi_id == vid)
        .expect("vid listed");
    (e.used_objs, e.shared_objs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_and_vids_match_a_real_cluster() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    assert_eq!(create(&c, "test", 1 << 30).await, 0x7c2b25);
    assert_eq!(create(&c, "tgt0", 8 * MB).await, 0x2a0b08);
    // Existing name.
    let e = c
        .create_vdi("test", MB, &CreateOptions::default())
        .await
        .unwrap_err();
    assert!(e.is(SdRes::VDI_EXIST), "{e}");
    // Snapshot: the snapshot keeps the hash vid, the working VDI moves on.
    let (snap, work) = c.snapshot_vdi("test", "snap1").await.expect("snapshot");
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
    let e = c
        .vdi_lookup("test", &SnapSel::Tag("nope".into()))
        .await
        .unwrap_err();
    assert!(e.is(SdRes::NO_TAG), "{e}");
    let e = c.vdi_lookup("nope", &SnapSel::Working).await.unwrap_err();
    assert!(e.is(SdRes::NO_VDI), "{e}");
    // Clone of the snapshot.
    let clone = c
        .clone_vdi("test", &SnapSel::Tag("snap1".into()), "clone1")
        .await
        .expect("clone");
    assert_eq!(clone, 0xc8f989);
    // List: snapshot, working, clone, tgt0.
    let l = c.list_vdis().await.unwrap();
    let names: Vec<(String, u32, bool)> = l
        .iter()
        .map(|e| {
            (
                e.header.name.clone(),
                e.header.vdi_id,
                e.header.is_snapshot(),
            )
        })
        .collect();
    assert!(names.contains(&("test".into(), 0x7c2b25, true)));
    assert!(names.contains(&("test".into(), 0x7c2b26, false)));
    assert!(names.contains(&("clone1".into(), 0xc8f989, false)));
    // Resize grows; shrinking is refused.
    c.resize_vdi("test", 2 << 30).await.expect("resize");
    assert_eq!(
        c.read_inode_header(0x7c2b26).await.unwrap().vdi_size,
        2 << 30
    );
    assert!(c.resize_vdi("test", MB).await.is_err());
    // Delete the clone and the snapshot; the working VDI stays.
    c.delete_vdi("clone1", &SnapSel::Working)
        .await
        .expect("delete clone");
    c.delete_vdi("test", &SnapSel::Tag("snap1".into()))
        .await
        .expect("delete snapshot");
    let l = c.list_vdis().await.unwrap();
    assert!(l.iter().all(|e| e.header.name != "clone1"));
    assert_eq!(
        l.iter().filter(|e| e.header.name == "test").count(),
        1,
        "only the working test remains"
    );
    assert!(c
        .vdi_lookup("clone1", &SnapSel::Working)
        .await
        .unwrap_err()
        .is(SdRes::NO_VDI));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cow_leaves_parent_and_snapshot_unchanged() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "base", 16 * MB).await;
    let v = open(&c, "base").await;
    let orig = pattern((8 * MB) as usize, 1);
    v.write_at(0, &orig).await.unwrap();
    let (snap, _) = c.snapshot_vdi("base", "s1").await.unwrap();
    c.clone_vdi("base", &SnapSel::Tag("s1".into()), "child")
        .await
        .unwrap();
    let child = open(&c, "child").await;
    // Child reads the parent's data before any write (shared objects).
    assert_eq!(
        sha(&child.read_at(0, orig.len()).await.unwrap()),
        sha(&orig)
    );
    // A small write in the middle of object 0 and one across objects 0/1.
    let w1 = pattern(4096, 77);
    child.write_at(123 * 4096, &w1).await.unwrap();
    let w2 = pattern(8192, 99);
    child.write_at(4 * MB - 4096, &w2).await.unwrap();
    let mut want = orig.clone();
    want[123 * 4096..124 * 4096].copy_from_slice(&w1);
    want[(4 * MB - 4096) as usize..(4 * MB + 4096) as usize].copy_from_slice(&w2);
    assert_eq!(
        sha(&child.read_at(0, want.len()).await.unwrap()),
        sha(&want)
    );
    // Fresh opens see the same (the inode map was persisted).
    let child2 = open(&c, "child").await;
    assert_eq!(
        sha(&child2.read_at(0, want.len()).await.unwrap()),
        sha(&want)
    );
    // Parent working VDI and the snapshot are untouched.
    let parent = open(&c, "base").await;
    assert_eq!(
        sha(&parent.read_at(0, orig.len()).await.unwrap()),
        sha(&orig)
    );
    let sv = open_snap(&c, "base", SnapSel::Tag("s1".into())).await;
    assert_eq!(sv.vid(), snap);
    assert!(sv.is_read_only());
    assert_eq!(sha(&sv.read_at(0, orig.len()).await.unwrap()), sha(&orig));
    assert!(matches!(
        sv.write_at(0, b"x").await.unwrap_err(),
        Error::ReadOnly(_)
    ));
    // Writing the parent's working VDI COWs away from the snapshot too.
    parent.write_at(0, &w1).await.unwrap();
    assert_eq!(sha(&sv.read_at(0, orig.len()).await.unwrap()), sha(&orig));
    let l = c.list_vdis().await.unwrap();
    assert_eq!(used(&l, child.vid()), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thin_provisioning_reads_zeros_and_allocates_nothing() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    let vid = create(&c, "thin", 1 << 30).await;
    let v = open(&c, "thin").await;
    let z = v.read_at(100 * MB, 2 * MB as usize).await.unwrap();
    assert_eq!(z.len(), 2 * MB as usize);
    assert!(z.iter().all(|&b| b == 0));
    assert_eq!(used(&c.list_vdis().await.unwrap(), vid), (0, 0));
    v.write_at(5 * MB, b"hello").await.unwrap();
    assert_eq!(used(&c.list_vdis().await.unwrap(), vid), (1, 0));
    // Unwritten bytes of an allocated object are zeros too.
    let r = v.read_at(5 * MB - 3, 11).await.unwrap();
    assert_eq!(&r, b"\0\0\0hello\0\0\0");
    // SEEK_DATA / SEEK_HOLE from the map.
    assert_eq!(v.seek_data(0), Some(4 * MB));
    assert_eq!(v.seek_hole(4 * MB + 7), 8 * MB);
    assert_eq!(v.seek_data(8 * MB), None);
    // Discarding the whole object unmaps it.
    v.discard(4 * MB, 4 * MB).await.unwrap();
    assert!(v.read_at(5 * MB, 5).await.unwrap().iter().all(|&b| b == 0));
    assert_eq!(used(&c.list_vdis().await.unwrap(), vid), (0, 0));
    // Reads clip at the end; writes past the end fail.
    assert_eq!(v.read_at((1 << 30) - 10, 100).await.unwrap().len(), 10);
    assert!(v.read_at(1 << 30, 100).await.unwrap().is_empty());
    assert!(matches!(
        v.write_at((1 << 30) - 1, b"ab").await.unwrap_err(),
        Error::OutOfRange { .. }
    ));
}

/// A read over several objects lands in one buffer, piece by piece: data,
/// holes and an object discarded behind this volume's back (its piece is
/// re-read after a reload, into a new buffer) all come back in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_across_objects_assembles_in_place() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "asm", 64 * MB).await;
    let w = open(&c, "asm").await;
    let data = pattern((12 * MB) as usize, 7);
    w.write_at(0, &data).await.unwrap();
    let r = open(&c, "asm").await;
    // Objects 0-2 written, 3 a hole: 4 pieces, the first and last partial.
    let (off, len) = (4 * MB - 4096, 10 * MB as usize);
    let mut want = data[off as usize..].to_vec();
    want.resize(len, 0);
    let got = r.read_bytes(off, len).await.unwrap();
    assert_eq!(got.len(), len);
    assert_eq!(sha(&got), sha(&want));
    // Object 1 discarded by the writer: the reader's map still shows it, its
    // READ_OBJ gets NO_OBJ, and the piece is redone as a hole.
    w.discard(4 * MB, 4 * MB).await.unwrap();
    want[4096..4096 + 4 * MB as usize].fill(0);
    let got = r.read_at(off, len).await.unwrap();
    assert_eq!(sha(&got), sha(&want));
    assert_eq!(r.stats().reloads, 1);
}

async fn shift_roundtrip(shift: u8) {
    let s = SheepLite::start_formatted();
    let c = s.client();
    let obj = 1u64 << shift;
    let size = 4 * obj;
    c.create_vdi(
        "z",
        size,
        &CreateOptions {
            block_size_shift: Some(shift),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let v = open(&c, "z").await;
    assert_eq!(v.object_size(), obj);
    // Cross every object boundary.
    let data = pattern((2 * obj) as usize, shift);
    v.write_at(obj / 2, &data).await.unwrap();
    let back = open(&c, "z")
        .await
        .read_at(obj / 2, data.len())
        .await
        .unwrap();
    assert_eq!(sha(&back), sha(&data));
    let l = c.list_vdis().await.unwrap();
    assert_eq!(l[0].header.block_size_shift, shift);
    assert_eq!(l[0].used_objs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_size_shift_20() {
    shift_roundtrip(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_size_shift_24() {
    shift_roundtrip(24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hyper_volume_past_4_tib() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    let size = 5u64 << 40;
    // Too big for a flat inode.
    assert!(c
        .create_vdi("flat", size, &CreateOptions::default())
        .await
        .is_err());
    let vid = c
        .create_vdi(
            "hyper",
            size,
            &CreateOptions {
                hyper: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(vid, 0x5b5b59);
    let v = open(&c, "hyper").await;
    let offs = [
        (4u64 << 40) + 4096,
        (4u64 << 40) + 4 * MB - 100,
        size - 4096,
        12345 * MB,
    ];
    for (i, off) in offs.iter().enumerate() {
        v.write_at(*off, &pattern(4096.min((size - off) as usize), i as u8))
            .await
            .unwrap();
    }
    let v2 = open(&c, "hyper").await;
    for (i, off) in offs.iter().enumerate() {
        let want = pattern(4096.min((size - off) as usize), i as u8);
        assert_eq!(
            v2.read_at(*off, want.len()).await.unwrap(),
            want,
            "at {off}"
        );
    }
    assert!(v2
        .read_at(3 << 40, 4096)
        .await
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // Objects 2^20 and 2^20+1 (the second write crosses into it), the last
    // object, and object 3086.
    let l = c.list_vdis().await.unwrap();
    assert_eq!(used(&l, vid).0, 4);
}

/// 64 tasks, random reads and writes, each in its own interleaved 64 KiB
/// stripes (so every object is shared by many writers), checked against an
/// in-memory model; then the whole volume is compared byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_against_a_model() {
    const TASKS: u64 = 64;
    const STRIPE: u64 = 64 << 10;
    const SIZE: u64 = 64 * MB;
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "conc", SIZE).await;
    let v = Arc::new(open(&c, "conc").await);
    let model = Arc::new(parking_lot::Mutex::new(vec![0u8; SIZE as usize]));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (v, model) = (v.clone(), model.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let stripes = SIZE / STRIPE / TASKS;
            for op in 0..40 {
                let stripe = t + TASKS * rng.gen_range(0..stripes);
                let base = stripe * STRIPE;
                let off = base + rng.gen_range(0..STRIPE);
                let len = rng.gen_range(1..=(base + STRIPE - off)) as usize;
                if rng.gen_bool(0.6) {
                    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    v.write_at(off, &data).await.expect("write");
                    model.lock()[off as usize..off as usize + len].copy_from_slice(&data);
                } else {
                    let got = v.read_at(off, len).await.expect("read");
                    let want = model.lock()[off as usize..off as usize + len].to_vec();
                    assert!(got == want, "task {t} op {op}: mismatch at {off}+{len}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let all = open(&c, "conc")
        .await
        .read_at(0, SIZE as usize)
        .await
        .unwrap();
    let want = model.lock().clone();
    let bad = all.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(bad, None, "first mismatch");
}

/// Many writers into the same unallocated object at once: it must be created
/// once (a second create would replace the object and lose the other writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_allocate_once() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "alloc", 8 * MB).await;
    let v = Arc::new(open(&c, "alloc").await);
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            v.write_at(i * 65536, &pattern(4096, i as u8))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v2 = open(&c, "alloc").await;
    for i in 0..32u64 {
        assert_eq!(
            v2.read_at(i * 65536, 4096).await.unwrap(),
            pattern(4096, i as u8),
            "writer {i} lost"
        );
    }
}

/// Overlapping writes spanning two objects never interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_writes_do_not_tear() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "tear", 16 * MB).await;
    let v = Arc::new(open(&c, "tear").await);
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let v = v.clone();
            tasks.push(tokio::spawn(async move {
                let fill = vec![i + 1 + round * 16; (2 * MB) as usize];
                v.write_at(3 * MB, &fill).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got = v.read_at(3 * MB, (2 * MB) as usize).await.unwrap();
        assert!(
            got.iter().all(|&b| b == got[0]),
            "round {round}: torn write (mixed fills)"
        );
    }
}

/// A snapshot taken by someone else while the volume is open: the next write
/// re-resolves the working VDI and COWs; the snapshot keeps the old bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_taken_underneath() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "live", 8 * MB).await;
    let v = open(&c, "live").await;
    v.write_at(0, &pattern(8192, 1)).await.unwrap();
    let other = s.client();
    let (snap, work) = other.snapshot_vdi("live", "under").await.unwrap();
    v.write_at(0, &pattern(4096, 2))
        .await
        .expect("write after snapshot");
    assert_eq!(v.vid(), work);
    let mut want = pattern(8192, 1);
    want[..4096].copy_from_slice(&pattern(4096, 2));
    assert_eq!(open(&c, "live").await.read_at(0, 8192).await.unwrap(), want);
    let sv = open_snap(&c, "live", SnapSel::Tag("under".into())).await;
    assert_eq!(sv.vid(), snap);
    assert_eq!(sv.read_at(0, 8192).await.unwrap(), pattern(8192, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_cache_stays_coherent() {
    let s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "cached", 16 * MB).await;
    let cache = Arc::new(ObjectCache::new(64 * MB));
    let v = Volume::open(
        c.clone(),
        "cached",
        OpenOptions {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a = pattern(MB as usize, 3);
    v.write_at(MB, &a).await.unwrap();
    assert_eq!(v.read_at(MB, a.len()).await.unwrap(), a);
    assert_eq!(v.read_at(MB, a.len()).await.unwrap(), a);
    let st = v.stats();
    assert!(st.cache_hits >= 1, "{st:?}");
    // Write-through: later reads see new bytes, never stale ones.
    v.write_at(MB + 10, b"fresh").await.unwrap();
    assert_eq!(&v.read_at(MB + 8, 9).await.unwrap()[2..7], b"fresh");
    // The server has it too.
    assert_eq!(
        &open(&c, "cached").await.read_at(MB + 10, 5).await.unwrap(),
        b"fresh"
    );
    v.discard(0, 4 * MB).await.unwrap();
    assert!(v.read_at(MB, 16).await.unwrap().iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_everything() {
    let mut s = SheepLite::start_formatted();
    let c = s.client();
    create(&c, "keep", 16 * MB).await;
    let data = pattern((6 * MB) as usize, 5);
    open(&c, "keep").await.write_at(1000, &data).await.unwrap();
    c.snapshot_vdi("keep", "t").await.unwrap();
    s.restart();
    let c = s.client();
    let v = open(&c, "keep").await;
    assert_eq!(sha(&v.read_at(1000, data.len()).await.unwrap()), sha(&data));
    assert_eq!(
        v.vid(),
        c.vdi_lookup("keep", &SnapSel::Working).await.unwrap().vid
    );
    assert!(c
        .vdi_lookup("keep", &SnapSel::Tag("t".into()))
        .await
        .is_ok());
    let (res, logs) = c.cluster_status().await.unwrap();
    assert_eq!(res, SdRes::SUCCESS);
    assert_eq!(logs.len(), 1);
}

/// SIGKILL while writes stream in: every acknowledged write survives. Each
/// task owns its own 8 KiB slots (slot % TASKS == task), so the writes to
/// one slot are ordered by their task alone and its last acknowledged write
/// is the newest; the one write per task that failed may have landed anyway
/// and is accepted in its slot as well. Anything else read back is a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_loses_no_acknowledged_write() {
    const TASKS: u64 = 8;
    const SLOT: u64 = 8192;
    const SIZE: u64 = 64 * MB;
    let mut s = SheepLite::start_formatted();
    let c = Client::new(
        s.addr(),
        Options {
            retry_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    );
    create(&c, "dur", SIZE).await;
    let v = Arc::new(open(&c, "dur").await);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            // slot -> last acknowledged data; the write in doubt, if any.
            let mut acked = std::collections::HashMap::new();
            for i in 0..10_000u64 {
                let slot = (i * TASKS + t) % (SIZE / SLOT);
                let data = pattern(SLOT as usize, (t * 7 + i) as u8);
                match v.write_at(slot * SLOT, &data).await {
                    Ok(()) => {
                        acked.insert(slot, data);
                    }
                    Err(_) => return (acked, Some((slot, data))),
                }
            }
            (acked, None)
        }));
    }
    // Kill once the writers are well under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while v.stats().writes < 200 {
        assert!(std::time::Instant::now() < deadline, "writers stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.kill9();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let total: usize = results.iter().map(|r| r.0.len()).sum();
    assert!(total > 20, "too few writes before the kill: {total}");
    s.spawn();
    let c = s.client();
    let v = open(&c, "dur").await;
    for (acked, doubt) in results {
        for (slot, data) in acked {
            let got = v.read_at(slot * SLOT, SLOT as usize).await.unwrap();
            let in_doubt = doubt.as_ref().is_some_and(|(s, d)| *s == slot && got == *d);
            assert!(got == data || in_doubt, "lost write at slot {slot}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gives_errors_not_panics() {
    // Unformatted cluster.
    let s = SheepLite::start();
    let c = s.client();
    let e = c
        .create_vdi("x", MB, &CreateOptions::default())
        .await
        .unwrap_err();
    assert!(e.is(SdRes::WAIT_FOR_FORMAT), "{e}");
    assert_eq!(e.to_string(), "Waiting for cluster to be formatted");
    drop(s);
    let s = SheepLite::start_formatted();
    let c = s.client();
    // Unknown VDI.
    let e = Volume::open(c.clone(), "missing", OpenOptions::default())
        .await
        .unwrap_err();
    assert!(e.is(SdRes::NO_VDI), "{e}");
    assert_eq!(e.to_string(), "No VDI found");
    // Bad names and sizes.
    assert!(matches!(
        c.create_vdi("", MB, &CreateOptions::default()).await,
        Err(Error::Invalid(_))
    ));
    let long = "x".repeat(256);
    assert!(matches!(
        c.create_vdi(&long, MB, &CreateOptions::default()).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.create_vdi("zero", 0, &CreateOptions::default()).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.create_vdi(
            "shift",
            MB,
            &CreateOptions {
                block_size_shift: Some(32),
                ..Default::default()
            }
        )
        .await,
        Err(Error::Invalid(_))
    ));
    // Wrong port: a clear connect error naming the address, within the retry budget.
    let dead = Client::new(
        SheepAddr::tcp("127.0.0.1", common::free_port()),
        Options {
            retry_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let t = std::time::Instant::now();
    let e = dead.node_list().await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Server gone mid-use.
    let mut s = s;
    let c = Client::new(
        s.addr(),
        Options {
            retry_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    );
    create(&c, "gone", MB).await;
    let v = open(&c, "gone").await;
    s.kill9();
    let e = v.read_at(0, 10).await;
    assert!(e.is_ok(), "unallocated reads need no server");
    let e = v.write_at(0, b"x").await.unwrap_err();
    assert!(e.is_transport(), "{e}");
    assert_eq!(sheepfs::fs::error::errno(&e), libc::EIO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_and_locks() {
    let s = SheepLite::start();
    let c = Client::new(SheepAddr::Unix(s.sock()), Options::default());
    // Format with locking on so LOCK_VDI is enforced.
    c.make_fs(0, 0, sheepfs::proto::cluster_flags::USE_LOCK, 0, "plain")
        .await
        .unwrap();
    create(&c, "locked", MB).await;
    let opts = OpenOptions {
        lock: LockMode::Normal,
        ..Default::default()
    };
    let v = Volume::open(c.clone(), "locked", opts.clone())
        .await
        .unwrap();
    let e = Volume::open(c.clone(), "locked", opts.clone())
        .await
        .unwrap_err();
    assert!(e.is(SdRes::VDI_LOCKED), "{e}");
    assert_eq!(sheepfs::fs::error::errno(&e), libc::EBUSY);
    v.close().await.unwrap();
    let v = Volume::open(c.clone(), "locked", opts).await.unwrap();
    v.write_at(0, b"via unix").await.unwrap();
    assert_eq!(v.read_at(0, 8).await.unwrap(), b"via unix");
    v.close().await.unwrap();
}
