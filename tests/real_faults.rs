//! sheepfs on a real 3-node sheep cluster (copies 3) while nodes fail:
//! - one node (not the one sheepfs talks to) SIGKILLed during verified I/O:
//!   the I/O goes on without an error, and every acknowledged write reads
//!   back, through sheepfs and through real dog;
//! - the whole cluster stopped and started again (same stores) while sheepfs
//!   stays mounted: a read issued while every node is down completes once
//!   the cluster is back, within the mount's documented `--timeout`, the old
//!   data is intact and new writes work.
//!
//! Each test has its own cluster, since both take nodes down.

mod common;
mod real_common;
mod sheepfs_common;

use common::pattern;
use real_common::Cluster;
use sheepfs_common::{assert_bytes, Mount};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MB: u64 = 1 << 20;

/// sheepfs's `--timeout` (its documented default, given explicitly).
const TIMEOUT_SECS: u64 = 30;

fn mount(c: &Cluster) -> Mount {
    let port = c.port().to_string();
    let t = TIMEOUT_SECS.to_string();
    Mount::start_args(&["-a", "127.0.0.1", "-p", &port, "-t", &t])
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
#[track_caller]
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Blocks of 192 KiB, so that some straddle the 4 MiB object boundaries.
const BLOCK: u64 = 192 * 1024;
const BLOCKS: u64 = 64;
const WRITERS: u64 = 4;

/// Version `v` of block `b` (version 0 is the block's first content).
fn block_data(b: u64, v: u64) -> Vec<u8> {
    let mut d = pattern(BLOCK as usize, (b * 7 + v) as u8);
    d[..16].copy_from_slice(&[b.to_le_bytes(), v.to_le_bytes()].concat());
    d
}

#[test]
fn node_killed_during_verified_io() {
    let Some(c) = Cluster::start(&[]) else { return };
    assert_eq!(c.dog(&["vdi", "create", "kill", "64M"]).code, 0);
    let m = mount(&c);
    m.attach("kill");
    let path = Arc::new(m.p("volume/kill"));
    // Blocks 0..BLOCKS are rewritten by the writers (block b by writer
    // b % WRITERS, so each block has one writer and its last acknowledged
    // version is known); a fixed region after them is only read.
    let fixed_off = BLOCKS * BLOCK;
    let fixed = pattern((8 * MB) as usize, 201);
    {
        let f = OpenOptions::new().write(true).open(&*path).expect("open");
        for b in 0..BLOCKS {
            f.write_all_at(&block_data(b, 0), b * BLOCK).expect("write");
        }
        f.write_all_at(&fixed, fixed_off).expect("write");
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (path, acked, writes, stop) =
            (path.clone(), acked.clone(), writes.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(&*path).expect("open");
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                for b in (w..BLOCKS).step_by(WRITERS as usize) {
                    if let Err(e) = f.write_all_at(&block_data(b, v), b * BLOCK) {
                        panic!("writer {w}: block {b} version {v}: {e}");
                    }
                    acked[b as usize].store(v, Ordering::Release);
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for r in 0..2u64 {
        let (path, fixed, reads, stop) = (path.clone(), fixed.clone(), reads.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let f = File::open(&*path).expect("open");
            let chunk = MB + 4096;
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let off = (i * 1_234_567) % (fixed.len() as u64 - chunk);
                let mut b = vec![0u8; chunk as usize];
                if let Err(e) = f.read_exact_at(&mut b, fixed_off + off) {
                    panic!("reader {r}: at {off}: {e}");
                }
                assert!(
                    b[..] == fixed[off as usize..(off + chunk) as usize],
                    "reader {r}: wrong data at {off}"
                );
                reads.fetch_add(1, Ordering::Relaxed);
                i += 2;
            }
        }));
    }
    let limit = Duration::from_secs(120);
    wait_for("writes before the kill", limit, || {
        writes.load(Ordering::Relaxed) >= 2 * BLOCKS
    });
    c.kill_node(2);
    let (w0, r0) = (
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    // The cluster notices the loss and goes on with two nodes; so does I/O.
    wait_for("dog seeing two nodes", limit, || {
        c.dog(&["node", "list", "-r"]).text().lines().count() == 2
    });
    wait_for("writes and reads after the kill", limit, || {
        writes.load(Ordering::Relaxed) >= w0 + 2 * BLOCKS && reads.load(Ordering::Relaxed) >= r0 + 8
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .expect("an I/O thread failed (see its panic above)");
    }

    // Every block holds its last acknowledged version: through sheepfs
    // (a new open) and through dog.
    let mut want = Vec::with_capacity((BLOCKS * BLOCK) as usize);
    for b in 0..BLOCKS {
        want.extend_from_slice(&block_data(b, acked[b as usize].load(Ordering::Acquire)));
    }
    want.extend_from_slice(&fixed);
    let f = File::open(&*path).expect("open");
    let mut back = vec![0u8; want.len()];
    f.read_exact_at(&mut back, 0).expect("read back");
    assert_bytes(&back, &want, "sheepfs after the kill");
    assert_bytes(
        &c.dog_read("kill", None, 0, want.len() as u64),
        &want,
        "dog after the kill",
    );
}

#[test]
fn whole_cluster_restart_while_mounted() {
    let Some(c) = Cluster::start(&[]) else { return };
    assert_eq!(c.dog(&["vdi", "create", "restart", "64M"]).code, 0);
    let m = mount(&c);
    m.attach("restart");
    let path = m.p("volume/restart");
    let old = pattern((9 * MB) as usize, 61);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(&old, 3 * MB).expect("write");
    f.sync_all().expect("fsync");

    c.stop();
    // A read issued while every node is down waits for the cluster.
    let reader = {
        let path = path.clone();
        let len = old.len();
        std::thread::spawn(move || {
            let f = File::open(&path)?;
            let mut b = vec![0u8; len];
            f.read_exact_at(&mut b, 3 * MB).map(|_| b)
        })
    };
    let t0 = Instant::now();
    c.restart();
    wait_for(
        "the read issued while down",
        Duration::from_secs(TIMEOUT_SECS + 10),
        || reader.is_finished(),
    );
    let back = reader
        .join()
        .expect("reader thread")
        .unwrap_or_else(|e| panic!("read across the restart failed: {e}\n{}", m.log_text()));
    assert!(
        t0.elapsed() < Duration::from_secs(TIMEOUT_SECS),
        "the mount took {:?} to recover, more than its timeout",
        t0.elapsed()
    );
    assert_bytes(&back, &old, "old data after the restart");

    // New I/O through the file opened before the restart, and a new one.
    let new = pattern((5 * MB) as usize, 62);
    f.write_all_at(&new, 40 * MB - 4096)
        .expect("write after restart");
    let g = File::open(&path).expect("open after restart");
    let mut back = vec![0u8; new.len()];
    g.read_exact_at(&mut back, 40 * MB - 4096).expect("read");
    assert_bytes(&back, &new, "new data through sheepfs");
    assert_bytes(
        &c.dog_read("restart", None, 3 * MB, old.len() as u64),
        &old,
        "old data through dog",
    );
    assert_bytes(
        &c.dog_read("restart", None, 40 * MB - 4096, new.len() as u64),
        &new,
        "new data through dog",
    );
    // The state files answer too.
    let dog = c.dog(&["vdi", "list"]);
    assert_eq!(dog.code, 0, "{dog:?}");
    assert_eq!(m.read_string("vdi/list"), dog.text());
}
