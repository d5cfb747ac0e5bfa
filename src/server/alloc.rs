//! Large buffers: a global allocator for sheep-lite that maps blocks of
//! [`LARGE`] bytes and more straight from the system and recycles them
//! through a small cache of idle blocks.
//!
//! Why: glibc serves such blocks (4 MiB payloads and replies) from its
//! per-thread arenas and keeps what is freed there resident, tens of MiB per
//! arena after a burst, which `malloc_trim` returns only partly and late.
//! Mapping every block afresh (`MALLOC_MMAP_THRESHOLD_`) returns memory at
//! once but costs a page fault per 4 KiB of every request (40% of 4 MiB read
//! throughput). Recycling gives both: a steady stream of requests reuses warm
//! blocks, a freed block the cache does not keep goes back to the system at
//! once, and the cache itself is emptied of blocks idle for a while
//! ([`release_idle`], from the server's housekeeping).
//!
//! Blocks come in power-of-two classes up to [`MAX_CACHED`] (a request for
//! 3 MiB maps 4 MiB; pages never touched cost nothing). Larger blocks are
//! mapped at their page-rounded size and unmapped when freed. Smaller
//! allocations, and alignments beyond a page, go to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allocations of at least this many bytes are blocks of this allocator.
pub const LARGE: usize = 256 << 10;
/// Largest block class that is cached when freed.
pub const MAX_CACHED: usize = 16 << 20;
/// Bytes of idle blocks the cache keeps at most.
pub const CACHE_BYTES: usize = 32 << 20;
const SLOTS: usize = 64;
const PAGE: usize = 4096;

/// The allocator: install with `#[global_allocator]` (the sheep-lite
/// program does).
pub struct Recycler;

#[derive(Clone, Copy)]
struct Slot {
    addr: usize,
    class: usize,
    idle_since: Option<Instant>,
}

const EMPTY: Slot = Slot {
    addr: 0,
    class: 0,
    idle_since: None,
};

/// Idle blocks, most recently freed last.
struct Cache {
    slots: [Slot; SLOTS],
    n: usize,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    slots: [EMPTY; SLOTS],
    n: 0,
    bytes: 0,
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    // Nothing panics while holding it; a poisoned lock still holds a
    // consistent cache.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_block(size: usize, align: usize) -> bool {
    size >= LARGE && align <= PAGE
}

/// The mapped size of a block of `size` bytes.
fn class(size: usize) -> usize {
    if size <= MAX_CACHED {
        size.next_power_of_two()
    } else {
        size.div_ceil(PAGE) * PAGE
    }
}

/// A cached block of `class` bytes, the warmest first.
fn take(class: usize) -> Option<*mut u8> {
    let mut c = cache();
    let n = c.n;
    let i = c.slots[..n].iter().rposition(|s| s.class == class)?;
    let s = c.slots[i];
    c.slots.copy_within(i + 1..n, i);
    c.n -= 1;
    c.bytes -= class;
    Some(s.addr as *mut u8)
}

/// Keeps a freed block for reuse, or unmaps it.
fn give_back(p: *mut u8, class: usize) {
    if class <= MAX_CACHED {
        let mut c = cache();
        if c.n < SLOTS && c.bytes + class <= CACHE_BYTES {
            let n = c.n;
            c.slots[n] = Slot {
                addr: p as usize,
                class,
                idle_since: Some(Instant::now()),
            };
            c.n += 1;
            c.bytes += class;
            return;
        }
    }
    unmap(p, class);
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: `p` is a block of `len` bytes this allocator mapped, and its
    // owner has freed it.
    unsafe {
        libc::munmap(p.cast(), len);
    }
}

/// Unmaps the cached blocks that have been idle for `idle` or longer, so
/// memory returns to the system after a burst; returns the bytes released.
pub fn release_idle(idle: Duration) -> usize {
    let mut gone = [EMPTY; SLOTS];
    let mut k = 0;
    {
        let mut c = cache();
        let now = Instant::now();
        let n = c.n;
        let mut kept = 0;
        for i in 0..n {
            let s = c.slots[i];
            if s.idle_since.is_some_and(|t| now.duration_since(t) >= idle) {
                gone[k] = s;
                k += 1;
            } else {
                c.slots[kept] = s;
                kept += 1;
            }
        }
        c.n = kept;
        c.bytes -= gone[..k].iter().map(|s| s.class).sum::<usize>();
    }
    // Unmapped outside the lock: munmap may take a while.
    for s in &gone[..k] {
        unmap(s.addr as *mut u8, s.class);
    }
    gone[..k].iter().map(|s| s.class).sum()
}

/// Bytes of idle blocks cached right now.
pub fn cached_bytes() -> usize {
    cache().bytes
}

// SAFETY: blocks are page-aligned mappings of at least their layout's size,
// owned by one allocation until freed; everything else is the system's.
unsafe impl GlobalAlloc for Recycler {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_block(layout.size(), layout.align()) {
            return System.alloc(layout);
        }
        let c = class(layout.size());
        take(c).unwrap_or_else(|| map(c))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_block(layout.size(), layout.align()) {
            return System.alloc_zeroed(layout);
        }
        let c = class(layout.size());
        match take(c) {
            Some(p) => {
                std::ptr::write_bytes(p, 0, layout.size());
                p
            }
            // Fresh mappings are zero.
            None => map(c),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_block(layout.size(), layout.align()) {
            return System.dealloc(ptr, layout);
        }
        give_back(ptr, class(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let (old, new) = (is_block(layout.size(), align), is_block(new_size, align));
        if !old && !new {
            return System.realloc(ptr, layout, new_size);
        }
        if old && new {
            let (oc, nc) = (class(layout.size()), class(new_size));
            if oc == nc {
                return ptr;
            }
            if let Some(p) = take(nc) {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                give_back(ptr, oc);
                return p;
            }
            // Moves the pages, copies nothing.
            let p = libc::mremap(ptr.cast(), oc, nc, libc::MREMAP_MAYMOVE);
            return if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p.cast()
            };
        }
        // Crossing LARGE: a new allocation of the other kind.
        let nl = Layout::from_size_align_unchecked(new_size, align);
        let p = self.alloc(nl);
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: the cache is global, and other tests do not use this
    /// allocator, so nothing else touches it.
    #[test]
    fn blocks_are_recycled_zeroed_grown_and_released() {
        let a = Recycler;
        release_idle(Duration::ZERO);
        let l4 = Layout::from_size_align(4 << 20, 1).unwrap();
        unsafe {
            let p = a.alloc(l4);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0x5a, l4.size());
            a.dealloc(p, l4);
            assert_eq!(cached_bytes(), 4 << 20);
            // Reused, and zeroed when asked.
            let q = a.alloc_zeroed(l4);
            assert_eq!(q, p, "a freed block is reused");
            assert!(std::slice::from_raw_parts(q, l4.size())
                .iter()
                .all(|&b| b == 0));
            assert_eq!(cached_bytes(), 0);
            // Growth keeps the bytes, through the cache or mremap.
            std::ptr::write_bytes(q, 7, l4.size());
            let r = a.realloc(q, l4, 6 << 20);
            let l8 = Layout::from_size_align(6 << 20, 1).unwrap();
            assert!(std::slice::from_raw_parts(r, l4.size())
                .iter()
                .all(|&b| b == 7));
            // Shrinking below LARGE moves it to the system allocator.
            let s = a.realloc(r, l8, 1000);
            let ls = Layout::from_size_align(1000, 1).unwrap();
            assert!(std::slice::from_raw_parts(s, 1000).iter().all(|&b| b == 7));
            a.dealloc(s, ls);
            assert_eq!(cached_bytes(), 8 << 20, "the 8 MiB block is cached");
            // Beyond the cache's bytes: unmapped at once.
            let big: Vec<*mut u8> = (0..12).map(|_| a.alloc(l4)).collect();
            for p in big {
                a.dealloc(p, l4);
            }
            assert!(cached_bytes() <= CACHE_BYTES);
            // Huge blocks are never cached.
            let lh = Layout::from_size_align(MAX_CACHED + 1, 1).unwrap();
            let h = a.alloc(lh);
            let before = cached_bytes();
            a.dealloc(h, lh);
            assert_eq!(cached_bytes(), before);
        }
        assert!(
            release_idle(Duration::from_secs(3600)) == 0,
            "all are fresh"
        );
        assert!(release_idle(Duration::ZERO) > 0);
        assert_eq!(cached_bytes(), 0);
    }
}
