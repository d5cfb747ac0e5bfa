//! The locks of [`super::Volume`]: per-object allocation locks and the FIFO
//! byte-range lock that orders overlapping writes.
//!
//! This file depends on nothing of the crate but `super::sync`, so
//! tests/shuttle_locks.rs can compile it against a `sync` that adds Shuttle's
//! scheduling points and explore the interleavings of its callers.

use super::sync::{Mutex, Notify};
use std::collections::HashMap;
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Per-object allocation locks.

#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct KeyedGuard<'a> {
    owner: &'a KeyedLocks,
    key: u64,
    /// Taken (dropped) under the map's lock, see `drop`.
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    _g: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// No key is held or waited for (its entries are all dropped).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.map.lock().is_empty()
    }

    pub(crate) async fn lock(&self, key: u64) -> KeyedGuard<'_> {
        let m = self.map.lock().entry(key).or_default().clone();
        let g = m.clone().lock_owned().await;
        KeyedGuard {
            owner: self,
            key,
            lock: Some(m),
            _g: Some(g),
        }
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        self._g.take();
        let mut map = self.owner.map.lock();
        // Only the map and this guard hold it: nobody waits, drop the entry.
        // Our reference goes while the map is locked: a guard of the same
        // key dropped just after must not count it, or neither removes the
        // entry (found by tests/shuttle_locks.rs).
        if let Some(lock) = self.lock.take() {
            if Arc::strong_count(&lock) == 2 {
                map.remove(&self.key);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// FIFO byte-range lock: a range is granted once no earlier (granted or
// waiting) range overlaps it, so overlapping writes run in arrival order and
// disjoint ones run in parallel.

/// (ticket, start, end) in ticket order.
type RangeEntry = (u64, u64, u64);

#[derive(Default)]
pub(crate) struct RangeLock {
    /// Last ticket handed out, and the held or waiting ranges.
    entries: Mutex<(u64, Vec<RangeEntry>)>,
    notify: Notify,
}

pub(crate) struct RangeGuard<'a> {
    owner: &'a RangeLock,
    ticket: u64,
}

impl RangeLock {
    pub(crate) async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let ticket = {
            let mut g = self.entries.lock();
            g.0 += 1;
            let t = g.0;
            g.1.push((t, start, end));
            t
        };
        let guard = RangeGuard {
            owner: self,
            ticket,
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let blocked = self
                .entries
                .lock()
                .1
                .iter()
                .take_while(|e| e.0 < ticket)
                .any(|e| e.1 < end && start < e.2);
            if !blocked {
                return guard;
            }
            notified.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.owner.entries.lock().1.retain(|e| e.0 != self.ticket);
        self.owner.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialise_one_key_and_forget_it() {
        let l = KeyedLocks::default();
        let g = l.lock(1).await;
        // Another key: granted at once.
        drop(l.lock(2).await);
        let mut waiter = std::pin::pin!(l.lock(1));
        assert!(
            futures::poll!(waiter.as_mut()).is_pending(),
            "key 1 is held"
        );
        drop(g);
        drop(waiter.await);
        assert!(l.is_idle());
    }

    #[tokio::test]
    async fn range_lock_orders_overlaps_and_frees_disjoint() {
        let l = Arc::new(RangeLock::default());
        let g1 = l.lock(0, 100).await;
        // Disjoint: granted at once.
        let g2 = tokio::time::timeout(std::time::Duration::from_millis(100), l.lock(100, 200))
            .await
            .expect("disjoint range must not wait");
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(50, 150).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "overlapping range must wait");
        drop(g1);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "still overlaps g2");
        drop(g2);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("granted after release")
            .unwrap();
        assert!(l.entries.lock().1.is_empty());
    }
}
