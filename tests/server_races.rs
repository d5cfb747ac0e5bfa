//! sheep-lite under races, crashes and large objects, against the real binary
//! over real sockets: snapshots racing with allocating writers and lookups,
//! the read-only rules for snapshot data (writes, discards, removals), whole
//! map entries and safe reclaiming, copy-on-write and reads of objects up to
//! 2 GiB within the memory budget, and crash recovery (SIGKILL) and undo of
//! VDI operations at every step.

// The fault-point tests need sheep-lite built with `--features fault-injection`.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unused_imports))]

mod common;

use common::{name_payload, obj_hdr, pattern, send, sha, SheepLite};
use sheepfs::client::{Client, CreateOptions, Options, Request, SheepAddr, SnapSel};
use sheepfs::proto::header::{ObjArgs, VdiArgs, VdiRsp};
use sheepfs::proto::inode;
use sheepfs::proto::{cluster_flags, flags, oid, op, ReqHeader, SdRes};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MB4: usize = 4 << 20;
const CRASH_ENV: &str = "SHEEP_LITE_CRASH_AT";
const FAIL_ENV: &str = "SHEEP_LITE_FAIL_AT";

// ------------------------------------------------------------------ helpers

fn opts(timeout: Duration, retry: Duration) -> Options {
    Options {
        request_timeout: timeout,
        retry_timeout: retry,
        ..Options::default()
    }
}

fn client_at(port: u16, o: Options) -> Client {
    Client::new(SheepAddr::tcp("127.0.0.1", port), o)
}

fn client(s: &SheepLite) -> Client {
    client_at(
        s.port,
        opts(Duration::from_secs(60), Duration::from_secs(5)),
    )
}

async fn format(c: &Client) {
    c.make_fs(0, 0, cluster_flags::AUTO_VNODES, 0, "plain")
        .await
        .expect("format");
}

async fn formatted() -> (SheepLite, Client) {
    let s = SheepLite::start();
    let c = client(&s);
    format(&c).await;
    (s, c)
}

/// CREATE_AND_WRITE_OBJ (COW from `cow` when non-zero); the result code.
async fn create(c: &Client, oid: u64, off: u32, data: Vec<u8>, cow: u64) -> SdRes {
    let mut h = obj_hdr(op::CREATE_AND_WRITE_OBJ, oid, off, 0);
    h.flags = flags::CMD_WRITE;
    if cow != 0 {
        h.flags |= flags::CMD_COW;
        let mut a = ObjArgs::decode(&h.args);
        a.cow_oid = cow;
        h.args = a.encode();
    }
    send(c, h, data).await.result()
}

async fn write(c: &Client, oid: u64, off: u32, data: Vec<u8>) -> SdRes {
    let mut h = obj_hdr(op::WRITE_OBJ, oid, off, 0);
    h.flags = flags::CMD_WRITE;
    send(c, h, data).await.result()
}

async fn read(c: &Client, oid: u64, off: u32, len: u32) -> (SdRes, Vec<u8>) {
    let r = send(c, obj_hdr(op::READ_OBJ, oid, off, len), vec![]).await;
    (r.result(), r.data)
}

async fn discard(c: &Client, oid: u64) -> SdRes {
    send(c, obj_hdr(op::DISCARD_OBJ, oid, 0, 0), vec![])
        .await
        .result()
}

async fn remove(c: &Client, oid: u64) -> SdRes {
    send(c, obj_hdr(op::REMOVE_OBJ, oid, 0, 0), vec![])
        .await
        .result()
}

/// Writes data_vdi_id[idx] = val in the inode of `vid`.
async fn set_map(c: &Client, vid: u32, idx: u32, val: u32) -> SdRes {
    write(
        c,
        oid::vid_to_vdi_oid(vid),
        inode::data_vdi_id_offset(idx) as u32,
        val.to_le_bytes().to_vec(),
    )
    .await
}

async fn map_entries(c: &Client, vid: u32, n: u32) -> Vec<u32> {
    let (r, b) = read(
        c,
        oid::vid_to_vdi_oid(vid),
        inode::data_vdi_id_offset(0) as u32,
        4 * n,
    )
    .await;
    assert_eq!(r, SdRes::SUCCESS, "map of {vid:x}");
    b.chunks(4)
        .map(|x| u32::from_le_bytes(x.try_into().unwrap()))
        .collect()
}

async fn snap_ctime(c: &Client, vid: u32) -> u64 {
    let (r, b) = read(
        c,
        oid::vid_to_vdi_oid(vid),
        inode::SNAP_CTIME_OFFSET as u32,
        8,
    )
    .await;
    assert_eq!(r, SdRes::SUCCESS, "snap_ctime of {vid:x}");
    u64::from_le_bytes(b.try_into().unwrap())
}

/// GET_VDI_INFO (or LOCK_VDI) of the working VDI `name`: its vid or the result.
async fn lookup_op(c: &Client, opcode: u8, name: &str) -> Result<u32, SdRes> {
    let r = send(c, ReqHeader::for_op(opcode), name_payload(name, "")).await;
    match r.result() {
        SdRes::SUCCESS => Ok(VdiRsp::decode(&r.hdr.args).vdi_id),
        e => Err(e),
    }
}

async fn working(c: &Client, name: &str) -> Result<u32, SdRes> {
    lookup_op(c, op::GET_VDI_INFO, name).await
}

/// Writes 4 KiB `pattern(_, idx)` into a new object `idx` of `vid` and maps it.
async fn alloc(c: &Client, vid: u32, idx: u32) {
    let r = create(c, oid::vid_to_data_oid(vid, idx), 0, pat(idx), 0).await;
    assert_eq!(r, SdRes::SUCCESS, "create {vid:x}/{idx}");
    assert_eq!(set_map(c, vid, idx, vid).await, SdRes::SUCCESS);
}

fn pat(idx: u32) -> Vec<u8> {
    pattern(4096, (idx % 251) as u8 + 1)
}

/// Asserts that `name` resolves to a working VDI (snap_ctime 0) through
/// whose map every object in `acked` reads back its pattern. Returns its vid.
async fn assert_consistent(c: &Client, name: &str, acked: &[u32]) -> u32 {
    let w = working(c, name)
        .await
        .unwrap_or_else(|e| panic!("VDI {name} has no working VDI: {e:?}"));
    assert_eq!(snap_ctime(c, w).await, 0, "working VDI {w:x} is a snapshot");
    let n = acked.iter().copied().max().map(|m| m + 1).unwrap_or(0);
    if n == 0 {
        return w;
    }
    let map = map_entries(c, w, n).await;
    for &idx in acked {
        let owner = map[idx as usize];
        assert_ne!(owner, 0, "acknowledged object {idx} unmapped in {w:x}");
        let (r, b) = read(c, oid::vid_to_data_oid(owner, idx), 0, 4096).await;
        assert_eq!(r, SdRes::SUCCESS, "object {idx} (owner {owner:x})");
        assert_eq!(b, pat(idx), "object {idx} (owner {owner:x})");
    }
    w
}

/// A sheep-lite spawned with extra environment (fault points); killed on drop.
struct Faulty {
    child: Child,
}

impl Faulty {
    fn spawn(dir: &std::path::Path, port: u16, env: (&str, &str)) -> Faulty {
        let child = Command::new(common::bin("sheep-lite"))
            .arg("-p")
            .arg(port.to_string())
            .arg(dir)
            .env(env.0, env.1)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sheep-lite");
        let f = Faulty { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sheep-lite did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    }

    /// Waits (bounded) for the process to end by itself; its exit status.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "sheep-lite did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident memory of a process (VmHWM), bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

// ------------------------------------------------------------------ snapshots vs I/O

/// Name lookups (GET_VDI_INFO, LOCK_VDI) never fall between the steps of a
/// snapshot, clone or delete: the name always has a working VDI.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_always_find_the_working_vdi_during_vdi_operations() {
    let (_s, c) = formatted().await;
    let vid = c
        .create_vdi("v", 1 << 30, &Default::default())
        .await
        .unwrap();
    for i in 0..32 {
        alloc(&c, vid, i).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut lookers = Vec::new();
    for t in 0..4 {
        let (c, stop, done) = (c.clone(), stop.clone(), done.clone());
        lookers.push(tokio::spawn(async move {
            let opcode = if t % 2 == 0 {
                op::GET_VDI_INFO
            } else {
                op::LOCK_VDI
            };
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = lookup_op(&c, opcode, "v").await {
                    bad.push(e);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            bad
        }));
    }
    for i in 0..16 {
        let (snap, _) = c.snapshot_vdi("v", &format!("s{i}")).await.unwrap();
        if i % 4 == 0 {
            let name = format!("c{i}");
            c.clone_vdi("v", &SnapSel::Tag(format!("s{i}")), &name)
                .await
                .unwrap();
            c.delete_vdi(&name, &SnapSel::Working).await.unwrap();
        }
        let _ = snap;
    }
    stop.store(true, Ordering::Relaxed);
    let mut bad = Vec::new();
    for l in lookers {
        bad.extend(l.await.unwrap());
    }
    assert!(done.load(Ordering::Relaxed) > 50, "too few lookups ran");
    assert!(
        bad.is_empty(),
        "{} lookups failed during VDI operations, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(4)]
    );
}

/// From the moment the working VDI's map is copied (its snap_ctime is set in
/// the same step), its data objects refuse CREATE, WRITE and DISCARD.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_is_readonly_from_the_moment_the_map_is_copied() {
    let (_s, c) = formatted().await;
    let vid = c
        .create_vdi("v", 1 << 30, &Default::default())
        .await
        .unwrap();
    for i in 0..32 {
        alloc(&c, vid, i).await;
    }
    for round in 0..6u32 {
        let w = working(&c, "v").await.unwrap();
        let c2 = c.clone();
        let poller = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while snap_ctime(&c2, w).await == 0 {
                assert!(Instant::now() < deadline, "snapshot never started");
            }
            // Sent at once, as a client with writes in flight would.
            let (a, b, d) = tokio::join!(
                create(&c2, oid::vid_to_data_oid(w, 100 + round), 0, pat(7), 0),
                write(&c2, oid::vid_to_data_oid(w, round), 0, pat(8)),
                discard(&c2, oid::vid_to_data_oid(w, 31 - round)),
            );
            [a, b, d]
        });
        let (snap, work) = c.snapshot_vdi("v", "").await.unwrap();
        assert_eq!(snap, w);
        let res = poller.await.unwrap();
        assert_eq!(
            res,
            [SdRes::READONLY; 3],
            "round {round}: create, write, discard on {w:x} after its map was copied"
        );
        // Nothing of it reached the snapshot or the new working VDI.
        let all: Vec<u32> = (0..32).collect();
        assert_eq!(assert_consistent(&c, "v", &all).await, work);
        assert_eq!(map_entries(&c, snap, 32).await[31 - round as usize], vid);
    }
}

/// Allocating writers that follow the protocol (CREATE, map entry, then
/// check the inode's snap_ctime; on READONLY or a set snap_ctime redo it in
/// the new working VDI) lose no acknowledged write to concurrent snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocating_writers_racing_with_snapshots_lose_nothing() {
    let (_s, c) = formatted().await;
    c.create_vdi("v", 1 << 32, &Default::default())
        .await
        .unwrap();
    let tasks = 8u32;
    let nobj = 512u32;
    let mut writers = Vec::new();
    for t in 0..tasks {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut w = working(&c, "v").await.unwrap();
            let mut idx = t;
            while idx < nobj {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < 100, "object {idx}: no progress");
                    let r = create(&c, oid::vid_to_data_oid(w, idx), 0, pat(idx), 0).await;
                    if r == SdRes::READONLY {
                        w = working(&c, "v").await.unwrap();
                        continue;
                    }
                    assert_eq!(r, SdRes::SUCCESS);
                    assert_eq!(set_map(&c, w, idx, w).await, SdRes::SUCCESS);
                    if snap_ctime(&c, w).await != 0 {
                        // Our entry may have missed the copy: redo it.
                        w = working(&c, "v").await.unwrap();
                        continue;
                    }
                    acked.push(idx);
                    break;
                }
                idx += tasks;
            }
            acked
        }));
    }
    let mut snaps = 0;
    let t0 = Instant::now();
    while snaps < 25 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.snapshot_vdi("v", &format!("s{snaps}")).await.unwrap();
        snaps += 1;
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert_eq!(acked.len(), nobj as usize);
    assert_consistent(&c, "v", &acked).await;
}

// ------------------------------------------------------------------ snapshot data rules

/// DISCARD_OBJ and REMOVE_OBJ of a snapshot's data object are READONLY and
/// leave the snapshot whole; the working VDI's own objects still go.
#[tokio::test(flavor = "multi_thread")]
async fn discard_and_remove_of_snapshot_data_are_readonly() {
    let (_s, c) = formatted().await;
    let vid = c
        .create_vdi("v", 1 << 30, &Default::default())
        .await
        .unwrap();
    let data = pattern(MB4, 5);
    assert_eq!(
        create(&c, oid::vid_to_data_oid(vid, 0), 0, data.clone(), 0).await,
        SdRes::SUCCESS
    );
    assert_eq!(set_map(&c, vid, 0, vid).await, SdRes::SUCCESS);
    let (snap, work) = c.snapshot_vdi("v", "s").await.unwrap();
    assert_eq!(snap, vid);
    let d0 = oid::vid_to_data_oid(snap, 0);
    assert_eq!(discard(&c, d0).await, SdRes::READONLY);
    assert_eq!(remove(&c, d0).await, SdRes::READONLY);
    assert_eq!(map_entries(&c, snap, 1).await, vec![snap]);
    assert_eq!(map_entries(&c, work, 1).await, vec![snap]);
    let (r, b) = read(&c, d0, 0, MB4 as u32).await;
    assert_eq!(r, SdRes::SUCCESS);
    assert_eq!(sha(&b), sha(&data));
    // The working VDI's own object: unmapped and removed.
    alloc(&c, work, 1).await;
    assert_eq!(
        discard(&c, oid::vid_to_data_oid(work, 1)).await,
        SdRes::SUCCESS
    );
    assert_eq!(map_entries(&c, work, 2).await, vec![snap, 0]);
    assert_eq!(
        read(&c, oid::vid_to_data_oid(work, 1), 0, 1).await.0,
        SdRes::NO_OBJ
    );
    // DISCARD_OBJ names a data object.
    assert_eq!(
        discard(&c, oid::vid_to_vdi_oid(work)).await,
        SdRes::INVALID_PARMS
    );
}

/// data_vdi_id updates are whole u32 entries (anything else is
/// INVALID_PARMS and changes nothing), and reclaiming never removes an object
/// another inode still maps, even when the generational references were
/// cleared by a later map update.
#[tokio::test(flavor = "multi_thread")]
async fn map_updates_are_whole_entries_and_reclaim_keeps_mapped_objects() {
    let (_s, c) = formatted().await;
    let vid = c
        .create_vdi("v", 1 << 30, &Default::default())
        .await
        .unwrap();
    alloc(&c, vid, 0).await;
    alloc(&c, vid, 1).await;
    let ioid = oid::vid_to_vdi_oid(vid);
    let base = inode::data_vdi_id_offset(0) as u32;
    for (delta, len) in [(1u32, 4usize), (2, 4), (3, 1), (0, 3), (0, 5), (4, 2)] {
        assert_eq!(
            write(&c, ioid, base + delta, vec![0; len]).await,
            SdRes::INVALID_PARMS,
            "offset +{delta} length {len}"
        );
    }
    assert_eq!(map_entries(&c, vid, 2).await, vec![vid, vid]);
    for idx in 0..2 {
        let (r, b) = read(&c, oid::vid_to_data_oid(vid, idx), 0, 4096).await;
        assert_eq!((r, b), (SdRes::SUCCESS, pat(idx)), "object {idx}");
    }
    // A rebase of another VDI onto this live one (NEW_VDI snapid 1 with a
    // base that is not a snapshot: dog never does it, the protocol allows
    // it) makes the new working VDI of "o" share objects 0 and 1.
    c.create_vdi("o", 1 << 30, &Default::default())
        .await
        .unwrap();
    let mut h = ReqHeader::for_op(op::NEW_VDI);
    h.args = VdiArgs {
        vdi_size: 1 << 30,
        base_vdi_id: vid,
        snapid: 1,
        ..Default::default()
    }
    .encode();
    let r = send(&c, h, name_payload("o", "")[..256].to_vec()).await;
    assert_eq!(r.result(), SdRes::SUCCESS);
    let o = VdiRsp::decode(&r.hdr.args).vdi_id;
    assert_eq!(map_entries(&c, o, 2).await, vec![vid, vid]);
    // "v" rewrites entry 0 with its own value, which clears its references,
    // then unmaps it. "o" still maps the object: it must stay.
    assert_eq!(set_map(&c, vid, 0, vid).await, SdRes::SUCCESS);
    assert_eq!(set_map(&c, vid, 0, 0).await, SdRes::SUCCESS);
    assert_eq!(assert_consistent(&c, "o", &[0, 1]).await, o);
    // An object nobody else maps is still reclaimed when unmapped.
    alloc(&c, vid, 2).await;
    assert_eq!(set_map(&c, vid, 2, 0).await, SdRes::SUCCESS);
    assert_eq!(
        read(&c, oid::vid_to_data_oid(vid, 2), 0, 1).await.0,
        SdRes::NO_OBJ
    );
}

// ------------------------------------------------------------------ large objects

/// Copy-on-write with 512 MiB objects completes under the default memory
/// budget; with 2 GiB objects a partial COW and a 1 GiB read never hold the
/// object in memory (the server's peak RSS stays small) and keep holes.
#[tokio::test(flavor = "multi_thread")]
async fn large_objects_copy_on_write_and_read_within_the_memory_budget() {
    let (s, c) = formatted().await;
    let z29 = CreateOptions {
        block_size_shift: Some(29),
        ..Default::default()
    };
    let v = c.create_vdi("big", 1 << 32, &z29).await.unwrap();
    alloc(&c, v, 0).await;
    let (snap, work) = c.snapshot_vdi("big", "").await.unwrap();
    let cow = tokio::time::timeout(
        Duration::from_secs(60),
        create(
            &c,
            oid::vid_to_data_oid(work, 0),
            4096,
            pat(9),
            oid::vid_to_data_oid(snap, 0),
        ),
    )
    .await
    .expect("COW of a 512 MiB object did not complete");
    assert_eq!(cow, SdRes::SUCCESS);
    let (r, b) = read(&c, oid::vid_to_data_oid(work, 0), 0, 8192).await;
    assert_eq!(r, SdRes::SUCCESS);
    assert_eq!(&b[..4096], &pat(0)[..]);
    assert_eq!(&b[4096..], &pat(9)[..]);

    // 2 GiB objects.
    let z31 = CreateOptions {
        block_size_shift: Some(31),
        ..Default::default()
    };
    let h = c.create_vdi("huge", 1 << 34, &z31).await.unwrap();
    let gib = 1u32 << 30;
    let src = pattern(4096, 3);
    assert_eq!(
        create(&c, oid::vid_to_data_oid(h, 0), gib, src.clone(), 0).await,
        SdRes::SUCCESS
    );
    assert_eq!(set_map(&c, h, 0, h).await, SdRes::SUCCESS);
    let (hsnap, hwork) = c.snapshot_vdi("huge", "").await.unwrap();
    let patch = pattern(65536, 4);
    let new = oid::vid_to_data_oid(hwork, 0);
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        create(&c, new, 4096, patch.clone(), oid::vid_to_data_oid(hsnap, 0)),
    )
    .await
    .expect("COW of a 2 GiB object did not complete");
    assert_eq!(r, SdRes::SUCCESS);
    // The copy kept the holes of its source.
    let f = s.path().join("obj").join(format!("{new:016x}"));
    let md = std::fs::metadata(&f).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.len(), 1 << 31);
    assert!(
        md.blocks() * 512 < 64 << 20,
        "COW wrote {} bytes of a sparse object",
        md.blocks() * 512
    );
    // One read of 1 GiB + 4 KiB: streamed.
    let (r, b) = read(&c, new, 0, gib + 4096).await;
    assert_eq!(r, SdRes::SUCCESS);
    assert_eq!(b.len(), (gib + 4096) as usize);
    assert!(b[..4096].iter().all(|&x| x == 0));
    assert_eq!(&b[4096..4096 + 65536], &patch[..]);
    assert!(b[4096 + 65536..gib as usize].iter().all(|&x| x == 0));
    assert_eq!(&b[gib as usize..], &src[..]);
    drop(b);
    let peak = peak_rss(s.pid().unwrap());
    assert!(
        peak < 256 << 20,
        "sheep-lite peaked at {} MiB handling 2 GiB objects",
        peak >> 20
    );
}

/// With a budget far smaller than the objects, requests larger than the
/// whole budget (COW of 64 MiB objects, big payloads and reads) all run
/// concurrently to completion instead of waiting forever.
#[test]
fn requests_larger_than_the_budget_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut cfg = sheepfs::server::Config::new(dir.path());
    cfg.port = port;
    cfg.memory_budget = 1 << 20;
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(sheepfs::server::run(cfg))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "in-process sheep-lite did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client_at(port, opts(Duration::from_secs(60), Duration::from_secs(5)));
        format(&c).await;
        let z26 = CreateOptions {
            block_size_shift: Some(26),
            ..Default::default()
        };
        let v = c.create_vdi("v", 1 << 30, &z26).await.unwrap();
        for i in 0..4 {
            alloc(&c, v, i).await;
        }
        let (snap, work) = c.snapshot_vdi("v", "").await.unwrap();
        let mut jobs = Vec::new();
        for i in 0..4u32 {
            let c = c.clone();
            jobs.push(tokio::spawn(async move {
                // 20 MiB payload on top of a 64 MiB source.
                let big = pattern(20 << 20, i as u8);
                let r = create(
                    &c,
                    oid::vid_to_data_oid(work, i),
                    8192,
                    big.clone(),
                    oid::vid_to_data_oid(snap, i),
                )
                .await;
                assert_eq!(r, SdRes::SUCCESS, "COW {i}");
                let (r, b) = read(&c, oid::vid_to_data_oid(work, i), 0, 64 << 20).await;
                assert_eq!(r, SdRes::SUCCESS, "read {i}");
                assert_eq!(&b[..4096], &pat(i)[..]);
                assert!(b[4096..8192].iter().all(|&x| x == 0));
                assert_eq!(sha(&b[8192..8192 + big.len()]), sha(&big));
                assert!(b[8192 + big.len()..].iter().all(|&x| x == 0));
            }));
        }
        for j in jobs {
            tokio::time::timeout(Duration::from_secs(120), j)
                .await
                .expect("requests larger than the budget hung")
                .unwrap();
        }
        c.shutdown().await.unwrap();
    });
    server.join().unwrap().unwrap();
}

// ------------------------------------------------------------------ crashes and failures

/// A formatted server with VDI `v` holding objects 0..4; returns its vid.
async fn prepared(s: &SheepLite) -> (u32, Vec<u32>) {
    let c = client(s);
    format(&c).await;
    let vid = c
        .create_vdi("v", 1 << 30, &Default::default())
        .await
        .unwrap();
    let acked: Vec<u32> = (0..4).collect();
    for &i in &acked {
        alloc(&c, vid, i).await;
    }
    (vid, acked)
}

/// Which VDI operation a fault test runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum VdiOp {
    Snapshot,
    Rebase,
    Clone,
    Delete,
}

/// Runs `op` on the prepared server (VDI `v` = `vid` with one snapshot
/// `s0` for rebase and clone). Returns the result.
async fn run_op(c: &Client, op_: VdiOp, vid: u32) -> Result<(), String> {
    match op_ {
        VdiOp::Snapshot => c
            .snapshot_vdi("v", "s")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        VdiOp::Clone => c
            .clone_vdi("v", &SnapSel::Tag("s0".into()), "c")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        VdiOp::Delete => c
            .delete_vdi("c0", &SnapSel::Working)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        VdiOp::Rebase => {
            // NEW_VDI snapid 1 with a base other than the working VDI.
            let s0 = c
                .vdi_lookup("v", &SnapSel::Tag("s0".into()))
                .await
                .map_err(|e| e.to_string())?
                .vid;
            assert_ne!(s0, vid);
            let mut h = ReqHeader::for_op(op::NEW_VDI);
            h.args = VdiArgs {
                vdi_size: 1 << 30,
                base_vdi_id: s0,
                snapid: 1,
                ..Default::default()
            }
            .encode();
            let r = c
                .send(
                    Request::new(h)
                        .with_payload(name_payload("v", "")[..256].to_vec())
                        .not_idempotent(),
                )
                .await
                .map_err(|e| e.to_string())?;
            match r.result() {
                SdRes::SUCCESS => Ok(()),
                e => Err(format!("{e:?}")),
            }
        }
    }
}

/// Before a fault test: a snapshot `s0`, a clone `c0` of it, and object
/// [`OWN`] written into the new working VDI, whose vid is returned.
async fn with_extras(c: &Client, acked: &mut Vec<u32>) -> u32 {
    c.snapshot_vdi("v", "s0").await.unwrap();
    c.clone_vdi("v", &SnapSel::Tag("s0".into()), "c0")
        .await
        .unwrap();
    let w = working(c, "v").await.unwrap();
    alloc(c, w, OWN).await;
    acked.push(OWN);
    w
}

/// An object the working VDI owns in fault tests (the others are shared
/// with snapshot `s0`).
const OWN: u32 = 4;

/// Checks the state after `op_` was interrupted or failed: everything is as
/// before (`done` false) or as after (`done` true) the operation, the name
/// `v` always has a working VDI with every acknowledged object, and a new
/// snapshot works.
async fn check_after(c: &Client, op_: VdiOp, w0: u32, acked: &[u32], done: bool) {
    // Objects of snapshot s0 (a rebase to s0 or a clone of it has only those).
    let shared: Vec<u32> = acked.iter().copied().filter(|&i| i != OWN).collect();
    let expect = if op_ == VdiOp::Rebase && done {
        &shared[..]
    } else {
        acked
    };
    let w = assert_consistent(c, "v", expect).await;
    match op_ {
        VdiOp::Snapshot | VdiOp::Rebase => {
            if done {
                assert_ne!(w, w0, "{op_:?} finished: a new working VDI");
                assert_eq!(
                    write(c, oid::vid_to_data_oid(w0, OWN), 0, pat(OWN)).await,
                    SdRes::READONLY
                );
            } else {
                assert_eq!(w, w0, "{op_:?} undone: the same working VDI");
                // Writable again, and not a snapshot in the vdi state.
                assert_eq!(
                    write(c, oid::vid_to_data_oid(w0, OWN), 0, pat(OWN)).await,
                    SdRes::SUCCESS
                );
                let st = c.vdi_copies().await.unwrap();
                assert!(st.iter().any(|e| e.vid == w0 && e.snapshot == 0));
            }
            if op_ == VdiOp::Snapshot {
                let t = c.vdi_lookup("v", &SnapSel::Tag("s".into())).await;
                assert_eq!(t.is_ok(), done, "tag s: {t:?}");
            }
        }
        VdiOp::Clone => {
            let r = working(c, "c").await;
            if done {
                let cl = r.unwrap();
                assert_consistent(c, "c", &shared).await;
                assert_eq!(snap_ctime(c, cl).await, 0);
            } else {
                assert_eq!(r, Err(SdRes::NO_VDI));
            }
        }
        VdiOp::Delete => {
            // Deletions are always finished.
            assert_eq!(working(c, "c0").await, Err(SdRes::NO_VDI));
        }
    }
    // Business as usual afterwards.
    c.snapshot_vdi("v", "after").await.unwrap();
    assert_consistent(c, "v", expect).await;
    if op_ == VdiOp::Clone && !done {
        c.clone_vdi("v", &SnapSel::Tag("s0".into()), "c")
            .await
            .unwrap();
        assert_consistent(c, "c", &shared).await;
    }
}

/// The steps of each VDI operation, and whether a crash there leaves the
/// operation done (its new inode complete) or undone.
fn steps() -> Vec<(VdiOp, &'static str, bool)> {
    vec![
        (VdiOp::Snapshot, "snapshot-intent", false),
        (VdiOp::Snapshot, "snapshot-base", false),
        (VdiOp::Snapshot, "snapshot-inode", true),
        (VdiOp::Rebase, "rebase-intent", false),
        (VdiOp::Rebase, "rebase-base", false),
        (VdiOp::Rebase, "rebase-inode", true),
        (VdiOp::Clone, "clone-intent", false),
        (VdiOp::Clone, "clone-base", false),
        (VdiOp::Clone, "clone-inode", true),
        (VdiOp::Delete, "delete-intent", true),
        (VdiOp::Delete, "delete-inode", true),
    ]
}

/// SIGKILL at each step of snapshot, rebase, clone and delete: after a
/// restart the operation is rolled back or forward, never half done.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn kill9_at_every_step_of_vdi_operations_recovers() {
    for (op_, point, done) in steps() {
        let mut s = SheepLite::start();
        let (_, mut acked) = prepared(&s).await;
        let w0 = with_extras(&client(&s), &mut acked).await;
        s.kill9();
        let mut f = Faulty::spawn(s.path(), s.port, (CRASH_ENV, point));
        let c = client_at(
            s.port,
            opts(Duration::from_secs(30), Duration::from_millis(200)),
        );
        let r = run_op(&c, op_, w0).await;
        assert!(r.is_err(), "{point}: the server should have died: {r:?}");
        let st = f.wait(Duration::from_secs(30));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{point}: {st:?}");
        drop(f);
        s.spawn();
        let c = client(&s);
        eprintln!("checking recovery after a crash at {point}");
        check_after(&c, op_, w0, &acked, done).await;
        // And it survives another restart unchanged.
        let w = working(&c, "v").await.unwrap();
        s.kill9();
        s.spawn();
        assert_eq!(working(&client(&s), "v").await, Ok(w), "{point}");
    }
}

/// A step that fails (I/O error) undoes the whole operation at once; the
/// client gets the error, the name keeps its working VDI.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn failed_vdi_operations_are_undone() {
    for (op_, point, _) in steps() {
        if op_ == VdiOp::Delete && point == "delete-inode" {
            // Past its first change a deletion is only ever finished.
            continue;
        }
        let mut s = SheepLite::start();
        let (_, mut acked) = prepared(&s).await;
        let w0 = with_extras(&client(&s), &mut acked).await;
        s.kill9();
        let f = Faulty::spawn(s.path(), s.port, (FAIL_ENV, point));
        let c = client_at(
            s.port,
            opts(Duration::from_secs(30), Duration::from_secs(5)),
        );
        let r = run_op(&c, op_, w0).await;
        assert!(r.is_err(), "{point}: should have failed");
        eprintln!("checking the undo of a failure at {point}");
        if op_ == VdiOp::Delete {
            assert_eq!(working(&c, "c0").await.map(|_| ()), Ok(()));
            drop(f);
            s.spawn();
            assert!(working(&client(&s), "c0").await.is_ok());
            continue;
        }
        // Undone in the running server ...
        assert_consistent(&c, "v", &acked).await;
        assert_eq!(working(&c, "v").await, Ok(w0), "{point}");
        assert_eq!(
            write(&c, oid::vid_to_data_oid(w0, OWN), 0, pat(OWN)).await,
            SdRes::SUCCESS,
            "{point}: working VDI writable"
        );
        assert_eq!(snap_ctime(&c, w0).await, 0);
        // ... and on disk.
        drop(f);
        s.spawn();
        check_after(&client(&s), op_, w0, &acked, false).await;
    }
}

/// SIGKILL at arbitrary moments during snapshots, with an acknowledged
/// allocating write before each: after every restart the name resolves to a
/// working VDI that holds every acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_snapshots_keeps_the_name_and_the_data() {
    let (mut s, c) = formatted().await;
    c.create_vdi("v", 1 << 30, &Default::default())
        .await
        .unwrap();
    for i in 0..64 {
        let w = working(&c, "v").await.unwrap();
        alloc(&c, w, 1000 + i).await;
    }
    // How long one snapshot takes here, to spread the kills over it.
    let t = Instant::now();
    c.snapshot_vdi("v", "warmup").await.unwrap();
    let span = t.elapsed().max(Duration::from_millis(2));
    drop(c);
    let mut acked = Vec::new();
    let rounds = 16u32;
    for round in 0..rounds {
        let c = client(&s);
        let w = working(&c, "v").await.unwrap();
        alloc(&c, w, round).await;
        acked.push(round);
        let c2 = client_at(
            s.port,
            opts(Duration::from_secs(30), Duration::from_millis(100)),
        );
        let snap = tokio::spawn(async move { c2.snapshot_vdi("v", &format!("r{round}")).await });
        tokio::time::sleep(span * round / rounds).await;
        s.kill9();
        let _ = snap.await;
        s.spawn();
        let c = client(&s);
        assert_consistent(&c, "v", &acked).await;
    }
}
