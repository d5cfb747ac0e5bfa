//! A byte-budgeted LRU of whole data objects (sheepfs `-k`), shared by volumes.
//!
//! Write-through coherence: a writer applies its bytes to a cached copy only
//! after sheep acknowledged them; a fill that raced with a write is discarded
//! (the write marks it dirty), so the cache never holds bytes older than the
//! last acknowledged write. Concurrent fills of one object are done once.

use super::sync::{Mutex, Notify};
use lru::LruCache;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Filling {
    dirty: bool,
    done: Arc<Notify>,
}

struct Inner {
    lru: LruCache<u64, Arc<Vec<u8>>>,
    bytes: u64,
    filling: HashMap<u64, Filling>,
}

/// Object cache keyed by data oid.
pub struct ObjectCache {
    inner: Mutex<Inner>,
    budget: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache")
            .field("budget", &self.budget())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl ObjectCache {
    /// An empty cache holding at most `budget_bytes` of objects.
    pub fn new(budget_bytes: u64) -> Self {
        ObjectCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                filling: HashMap::new(),
            }),
            budget: AtomicU64::new(budget_bytes),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The most bytes the cache holds.
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Bytes currently cached.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Reads answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Reads that had to fetch the object.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Whether an object of this size is worth caching at all.
    pub fn admits(&self, object_size: u64) -> bool {
        object_size <= self.budget() / 4
    }

    /// Drops everything; fills in flight will not be inserted.
    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.lru.clear();
        g.bytes = 0;
        for f in g.filling.values_mut() {
            f.dirty = true;
        }
    }

    /// Forgets object `oid` (and any fill of it in flight).
    pub fn invalidate(&self, oid: u64) {
        let mut g = self.inner.lock();
        if let Some(v) = g.lru.pop(&oid) {
            g.bytes -= v.len() as u64;
        }
        if let Some(f) = g.filling.get_mut(&oid) {
            f.dirty = true;
        }
    }

    /// Write-through: applies acknowledged bytes at `offset` to a cached copy.
    pub fn apply_write(&self, oid: u64, offset: usize, data: &[u8]) {
        let mut g = self.inner.lock();
        if let Some(f) = g.filling.get_mut(&oid) {
            f.dirty = true;
        }
        if let Some(obj) = g.lru.get_mut(&oid) {
            let end = offset + data.len();
            if end <= obj.len() {
                Arc::make_mut(obj)[offset..end].copy_from_slice(data);
            } else {
                let n = obj.len() as u64;
                g.lru.pop(&oid);
                g.bytes -= n;
            }
        }
    }

    /// The cached object, or `fill()`'s result (inserted unless a write raced
    /// with it), and whether it was a hit. Concurrent callers for one oid
    /// share a single fill.
    pub async fn get_or_fill<F, Fut, E>(&self, oid: u64, fill: F) -> Result<(Arc<Vec<u8>>, bool), E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        loop {
            let wait = {
                let mut g = self.inner.lock();
                if let Some(v) = g.lru.get(&oid) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((v.clone(), true));
                }
                match g.filling.get(&oid) {
                    Some(f) => {
                        let done = f.done.clone();
                        let notified = done.clone().notified_owned();
                        Some(notified)
                    }
                    None => {
                        g.filling.insert(
                            oid,
                            Filling {
                                dirty: false,
                                done: Arc::new(Notify::new()),
                            },
                        );
                        None
                    }
                }
            };
            if let Some(notified) = wait {
                notified.await;
                continue;
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            // We own the fill; the guard ends it even if this future is dropped.
            let guard = FillGuard { cache: self, oid };
            let res = fill().await;
            let data = res.map(Arc::new);
            guard.finish(data.as_ref().ok());
            return data.map(|d| (d, false));
        }
    }

    fn end_fill(&self, oid: u64, data: Option<&Arc<Vec<u8>>>) {
        let mut g = self.inner.lock();
        let Some(f) = g.filling.remove(&oid) else {
            return;
        };
        if let (false, Some(d)) = (f.dirty, data) {
            g.bytes += d.len() as u64;
            if let Some(old) = g.lru.put(oid, d.clone()) {
                g.bytes -= old.len() as u64;
            }
            let budget = self.budget();
            while g.bytes > budget {
                match g.lru.pop_lru() {
                    Some((_, v)) => g.bytes -= v.len() as u64,
                    None => break,
                }
            }
        }
        f.done.notify_waiters();
    }
}

struct FillGuard<'a> {
    cache: &'a ObjectCache,
    oid: u64,
}

impl FillGuard<'_> {
    fn finish(self, data: Option<&Arc<Vec<u8>>>) {
        self.cache.end_fill(self.oid, data);
        std::mem::forget(self);
    }
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        self.cache.end_fill(self.oid, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn fills_once_and_evicts_by_bytes() {
        let c = Arc::new(ObjectCache::new(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_fill(1, || {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok::<_, ()>(vec![7u8; 4])
                    }
                })
                .await
                .unwrap()
                .0
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap(), vec![7u8; 4]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        c.get_or_fill(2, || async { Ok::<_, ()>(vec![1u8; 4]) })
            .await
            .unwrap();
        c.get_or_fill(3, || async { Ok::<_, ()>(vec![2u8; 4]) })
            .await
            .unwrap();
        // 12 bytes > budget 10: the least recently used (oid 1) went.
        assert_eq!(c.bytes(), 8);
        let v = c
            .get_or_fill(1, || async { Ok::<_, ()>(vec![9u8; 4]) })
            .await
            .unwrap();
        assert_eq!(*v.0, vec![9u8; 4]);
        assert!(!v.1, "refilled after eviction: a miss");
    }

    #[tokio::test]
    async fn write_during_fill_discards_the_fill() {
        let c = Arc::new(ObjectCache::new(1 << 20));
        let c2 = c.clone();
        let v = c
            .get_or_fill(5, || {
                let c2 = c2.clone();
                async move {
                    // A write acknowledged while we were reading: our bytes may be stale.
                    c2.apply_write(5, 0, &[1, 2]);
                    Ok::<_, ()>(vec![0u8; 4])
                }
            })
            .await
            .unwrap();
        assert_eq!(*v.0, vec![0u8; 4]);
        assert_eq!(c.bytes(), 0, "racing fill must not be cached");
        let v = c
            .get_or_fill(5, || async { Ok::<_, ()>(vec![1, 2, 0, 0]) })
            .await
            .unwrap()
            .0;
        assert_eq!(*v, vec![1, 2, 0, 0]);
        c.apply_write(5, 2, &[3, 4]);
        let v = c
            .get_or_fill(5, || async { Err::<Vec<u8>, ()>(()) })
            .await
            .unwrap();
        assert_eq!(*v.0, vec![1, 2, 3, 4]);
        assert!(v.1, "served from the cache: a hit");
        c.invalidate(5);
        assert!(c
            .get_or_fill(5, || async { Err::<Vec<u8>, ()>(()) })
            .await
            .is_err());
    }
}
