//! Read-ahead of one request for sequential readers of a volume.
//!
//! A reader streaming a volume with O_DIRECT (`dd iflag=direct`, a VM's
//! disk, fio) waits for each read before it sends the next, so sheep would
//! idle while we copy a reply to the kernel and the reader asks for more.
//! When a read starts where the previous one ended, the next range of the
//! same size is read at once in the background; the read that asks for it
//! takes it.
//!
//! Read-ahead data never outlives a change made through this mount: every
//! write, discard or resize counts a change when it ends (whatever its
//! outcome), and data read ahead before the last change is dropped. A read
//! that takes data read ahead while a write to the same range is still
//! running is concurrent with that write, so either content is right.
//! Volumes others may write (read-only attachments of a working VDI) are not
//! read ahead. Nor is anything older than [`MAX_AGE`] served: on a cluster
//! that does not enforce VDI locks (formatted without `-l`), a client
//! ignoring ours could write underneath, and a stream that pauses must not
//! resume with data read long before. Memory is bounded by [`Budget`] across
//! all volumes.

use crate::client::{self, Volume};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Bytes read ahead that all volumes of a mount may hold at once: 32
/// streams of 1 MiB reads (a volume holds its read-ahead until its last
/// open file closes).
pub const BUDGET: usize = 32 << 20;

/// Data read ahead longer ago than this is dropped (a stream takes it
/// within milliseconds).
pub const MAX_AGE: Duration = Duration::from_millis(100);

/// Bytes that read-ahead may still take across a mount's volumes, one
/// permit a byte (the same bounded-memory tool as sheep-lite's budgets).
pub type Budget = Semaphore;

/// Holds `n` bytes of `budget` until dropped, if it has them to spare.
fn reserve(budget: &Arc<Budget>, n: u32) -> Option<OwnedSemaphorePermit> {
    budget.clone().try_acquire_many_owned(n).ok()
}

/// A read started ahead of its request.
struct Ahead {
    off: u64,
    size: u32,
    /// [`ReadAhead::changes`] when it was started.
    changes: u64,
    started: Instant,
    data: JoinHandle<client::Result<Bytes>>,
    _held: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Slot {
    /// Where the last read ended: a read starting there is sequential.
    last_end: Option<u64>,
    next: Option<Ahead>,
}

/// The read-ahead state of one attached volume.
#[derive(Default)]
pub struct ReadAhead {
    slot: parking_lot::Mutex<Slot>,
    /// Changes (writes, discards, resizes) ended so far.
    changes: AtomicU64,
}

/// Counts a change when dropped: hold one across a write, discard or resize.
pub struct Change<'a>(&'a ReadAhead);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.changes.fetch_add(1, Ordering::AcqRel);
    }
}

impl ReadAhead {
    /// Marks a change of the volume's data that ends when the result drops.
    pub fn change(&self) -> Change<'_> {
        Change(self)
    }

    /// Forgets the stream and drops what was read ahead (the last open of
    /// the volume closed).
    pub fn clear(&self) {
        *self.slot.lock() = Slot::default();
    }

    /// Called by each read of `size` bytes at `off`: returns the data read
    /// ahead for exactly this read, if any (`None` when that read failed:
    /// the caller reads again and reports its own error), and, when the read
    /// continues a sequential stream, starts reading the next range.
    pub async fn read(
        &self,
        vol: &Arc<Volume>,
        budget: &Arc<Budget>,
        off: u64,
        size: u32,
    ) -> Option<Bytes> {
        let taken = {
            let mut s = self.slot.lock();
            let now = self.changes.load(Ordering::Acquire);
            let taken = s.next.take().filter(|a| {
                (a.off, a.size, a.changes) == (off, size, now) && a.started.elapsed() < MAX_AGE
            });
            let end = off.saturating_add(size.into());
            if s.last_end == Some(off) && size > 0 && end < vol.size() {
                s.next = reserve(budget, size).map(|held| Ahead {
                    off: end,
                    size,
                    changes: now,
                    started: Instant::now(),
                    data: tokio::spawn(read_span(vol.clone(), end, size)),
                    _held: held,
                });
            }
            s.last_end = Some(end);
            taken
        }?;
        match taken.data.await {
            Ok(Ok(d)) => Some(d),
            _ => None,
        }
    }
}

fn read_span(
    vol: Arc<Volume>,
    off: u64,
    size: u32,
) -> impl std::future::Future<Output = client::Result<Bytes>> {
    let span = tracing::debug_span!("read-ahead", vdi = vol.name(), offset = off, size);
    async move { vol.read_bytes(off, size as usize).await }.instrument(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_and_returns() {
        let b = Arc::new(Budget::new(10));
        let r1 = reserve(&b, 6).unwrap();
        assert!(reserve(&b, 5).is_none());
        let r2 = reserve(&b, 4).unwrap();
        assert_eq!(b.available_permits(), 0);
        drop(r1);
        assert_eq!(b.available_permits(), 6);
        drop(r2);
        assert_eq!(b.available_permits(), 10);
    }
}
