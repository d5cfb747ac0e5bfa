//! Per-LUN counters: commands, bytes, errors, and a latency histogram from
//! which percentiles are read. Lock-free: every command updates a few
//! atomics.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: 0..4 µs exactly, then four per power of two up to 2^42 µs.
const SUB: u32 = 4;
const BUCKETS: usize = 4 + 41 * SUB as usize;

/// Counters of one LUN.
pub struct LunStats {
    commands: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    errors: AtomicU64,
    hist: Box<[AtomicU64]>,
}

/// A snapshot of [`LunStats`], latencies in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub commands: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
}

fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // >= 2
    let sub = ((us >> (e - 2)) & (SUB as u64 - 1)) as usize;
    (4 + (e as usize - 2) * SUB as usize + sub).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let e = (i - 4) / SUB as usize + 2;
    let sub = ((i - 4) % SUB as usize) as u64;
    ((SUB as u64 + sub + 1) << (e - 2)) - 1
}

impl Default for LunStats {
    fn default() -> Self {
        LunStats {
            commands: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LunStats {
    /// One finished command: bytes read (Data-In) and written (Data-Out
    /// accepted), whether it failed, how long it took.
    pub fn record(&self, read: u64, written: u64, failed: bool, took: Duration) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(read, Ordering::Relaxed);
        self.write_bytes.fetch_add(written, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.hist[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let counts: Vec<u64> = self
            .hist
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let pct = |p: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let want = ((total as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return upper(i);
                }
            }
            upper(BUCKETS - 1)
        };
        StatsSnapshot {
            commands: self.commands.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_p50_us: pct(0.5),
            latency_p99_us: pct(0.99),
            latency_p999_us: pct(0.999),
            latency_max_us: counts.iter().rposition(|c| *c > 0).map_or(0, upper),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 123_456, 1 << 40] {
            let b = bucket(us);
            assert!(upper(b) >= us, "{us}");
            if b > 0 {
                assert!(upper(b - 1) < us, "{us}");
            }
        }
        // Resolution: within 25 % above 4 µs.
        assert!(upper(bucket(1000)) < 1250);
    }

    #[test]
    fn percentiles() {
        let s = LunStats::default();
        for i in 0..1000u64 {
            let took = if i < 990 { 100 } else { 10_000 };
            s.record(512, 0, i == 0, Duration::from_micros(took));
        }
        let v = s.snapshot();
        assert_eq!((v.commands, v.read_bytes, v.errors), (1000, 512_000, 1));
        assert!((100..125).contains(&v.latency_p50_us), "{v:?}");
        assert!((100..125).contains(&v.latency_p99_us), "{v:?}");
        assert!((10_000..12_500).contains(&v.latency_p999_us), "{v:?}");
        assert_eq!(v.latency_max_us, v.latency_p999_us);
    }
}
