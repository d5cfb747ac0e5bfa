//! Concurrency checks of the client's locking pieces with Shuttle: the FIFO
//! byte-range lock and the per-object allocation locks of `Volume`
//! (src/client/lock.rs) and the fills of `ObjectCache` (src/client/cache.rs).
//!
//! Both files are compiled here against a `sync` of this test
//! (tests/shuttle_common/sync.rs) whose mutex is parking_lot's with a
//! Shuttle scheduling point before each lock and after each unlock.
//! Shuttle runs every task on one thread and decides, at each such point
//! and at each await that has to wait, which task runs next, at random,
//! over many schedules. A check fails on a broken
//! invariant, and on a deadlock (every task waiting: a lost wake-up).
//!
//! Why Shuttle rather than loom: the code is async and waits on tokio's
//! `Notify` and `Mutex`, which loom can only drive with tokio itself rebuilt
//! under `--cfg loom`; Shuttle runs any future, needs only the std-like lock
//! swapped (no cfg, no feature: the library builds as ever), and its
//! randomised search finds the bugs below in a few hundred schedules, well
//! within CI's time.
//!
//! `SHUTTLE_ITERATIONS` (default 2000) sets the schedules tried per check.

/// What lock.rs and cache.rs import as `super::sync`.
#[allow(dead_code)]
#[path = "shuttle_common/sync.rs"]
mod sync;

#[allow(dead_code)]
#[path = "../src/client/lock.rs"]
mod lock;

#[allow(dead_code)]
#[path = "../src/client/cache.rs"]
mod cache;

mod shuttle_common;

use cache::ObjectCache;
use lock::{KeyedLocks, RangeLock};
use shuttle::future::{block_on, spawn, yield_now};
use shuttle_common::check;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Overlapping ranges are never held at once, each waiter is woken (no
/// deadlock), disjoint ranges do not wait for each other, and the lock ends
/// empty. Three writers over [0,100), [50,150), [100,200) and one reader of
/// [0,200): every pair but the outer two overlaps.
#[test]
fn range_lock_excludes_overlaps_and_loses_no_wakeup() {
    check(|| {
        block_on(async {
            let lock = Arc::new(RangeLock::default());
            let held: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
            let ranges = [(0, 100), (50, 150), (100, 200), (0, 200)];
            let tasks: Vec<_> = ranges
                .into_iter()
                .map(|(s, e)| {
                    let (lock, held) = (lock.clone(), held.clone());
                    spawn(async move {
                        for _ in 0..2 {
                            let _g = lock.lock(s, e).await;
                            {
                                let mut h = held.lock().unwrap();
                                if let Some(o) = h.iter().find(|&&(hs, he)| hs < e && s < he) {
                                    panic!("[{s},{e}) granted while {o:?} is held");
                                }
                                h.push((s, e));
                            }
                            yield_now().await;
                            held.lock().unwrap().retain(|&r| r != (s, e));
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task failed");
            }
            // Every guard released: a later lock of anything is granted at once.
            let g = lock.lock(0, u64::MAX).await;
            drop(g);
        });
    });
}

/// Holders of one key's lock exclude each other (a read-modify-write with a
/// scheduling point inside loses no update), the lock of another key does
/// not wait, and the key's entry is gone once nobody holds or waits for it.
#[test]
fn keyed_locks_exclude_per_key_and_forget_idle_keys() {
    check(|| {
        block_on(async {
            let locks = Arc::new(KeyedLocks::default());
            let counter = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..3)
                .map(|i| {
                    let (locks, counter) = (locks.clone(), counter.clone());
                    spawn(async move {
                        // Task 2 takes a second key in between.
                        if i == 2 {
                            let _other = locks.lock(8).await;
                            yield_now().await;
                        }
                        for _ in 0..2 {
                            let _g = locks.lock(7).await;
                            let v = counter.load(Ordering::SeqCst);
                            yield_now().await;
                            counter.store(v + 1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task failed");
            }
            assert_eq!(counter.load(Ordering::SeqCst), 6, "an update was lost");
            assert!(locks.is_idle(), "an idle key's lock was kept");
        });
    });
}

const OID: u64 = 0x00ab_cdef_0000_0001;

/// Write-through coherence: readers fill the cache from the "server" while
/// writers change the server and then apply their acknowledged bytes; once
/// all are done, the cached copy (if any) is the server's bytes, and so is
/// what the next reader gets.
#[test]
fn object_cache_never_keeps_a_stale_fill() {
    check(|| {
        block_on(async {
            let (cache, server, fills) = cache_and_server(0);
            let mut tasks = Vec::new();
            for _ in 0..2 {
                let r = reader(&cache, &server, &fills);
                tasks.push(spawn(async move {
                    assert_eq!(r.await.expect("reader failed").len(), 8);
                }));
            }
            for w in 1..=2u8 {
                let (cache, server) = (cache.clone(), server.clone());
                tasks.push(spawn(async move {
                    let off = usize::from(w) * 2;
                    server.lock().unwrap()[off..off + 2].copy_from_slice(&[w, w]);
                    yield_now().await;
                    // Acknowledged: write through.
                    cache.apply_write(OID, off, &[w, w]);
                }));
            }
            for t in tasks {
                t.await.expect("task failed");
            }
            let now = server.lock().unwrap().clone();
            let (got, _) = cache
                .get_or_fill(OID, || read_server(&server, &fills))
                .await
                .unwrap();
            assert_eq!(
                *got, now,
                "the cache serves bytes older than an acknowledged write"
            );
        });
    });
}

/// Concurrent readers of an object nobody writes share a single fill.
#[test]
fn object_cache_fills_once() {
    check(|| {
        block_on(async {
            let (cache, server, fills) = cache_and_server(9);
            let tasks: Vec<_> = (0..3).map(|_| reader(&cache, &server, &fills)).collect();
            for t in tasks {
                assert_eq!(*t.await.expect("reader failed"), vec![9u8; 8]);
            }
            assert_eq!(fills.load(Ordering::SeqCst), 1, "one object filled twice");
            assert_eq!((cache.hits() + cache.misses(), cache.misses()), (3, 1));
        });
    });
}

/// An empty cache, the object's 8 bytes of `fill` on the "server", and a
/// count of fills.
fn cache_and_server(fill: u8) -> (Arc<ObjectCache>, Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>) {
    (
        Arc::new(ObjectCache::new(1 << 20)),
        Arc::new(Mutex::new(vec![fill; 8])),
        Arc::new(AtomicUsize::new(0)),
    )
}

/// A task reading the object through the cache.
fn reader(
    cache: &Arc<ObjectCache>,
    server: &Arc<Mutex<Vec<u8>>>,
    fills: &Arc<AtomicUsize>,
) -> shuttle::future::JoinHandle<Arc<Vec<u8>>> {
    let (cache, server, fills) = (cache.clone(), server.clone(), fills.clone());
    spawn(async move {
        let (got, _) = cache
            .get_or_fill(OID, || read_server(&server, &fills))
            .await
            .unwrap();
        got
    })
}

/// A fill: copies the server's bytes, and takes a while (a scheduling point)
/// before answering, as a real read does.
async fn read_server(server: &Mutex<Vec<u8>>, fills: &AtomicUsize) -> Result<Vec<u8>, ()> {
    fills.fetch_add(1, Ordering::SeqCst);
    let bytes = server.lock().unwrap().clone();
    yield_now().await;
    Ok(bytes)
}
