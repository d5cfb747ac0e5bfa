//! Contents of the generated files: per-volume statistics and the
//! negotiated FUSE parameters. (Cluster state text comes from `dogfmt`,
//! shared with sheepctl.)

use crate::client::{SnapSel, VolumeStats};
use std::fmt::Write;

/// What `stats/<name>` shows besides the counters.
#[derive(Debug, Clone)]
pub struct VolumeInfo<'a> {
    pub file: &'a str,
    pub vdi: &'a str,
    pub sel: &'a SnapSel,
    pub vid: u32,
    pub size: u64,
    pub object_size: u64,
    pub read_only: bool,
    pub client_cache: bool,
    pub object_cache: bool,
    pub open_files: usize,
    pub fsyncs: u64,
    pub discards: u64,
    /// `on`, `off` (cluster formatted without `-l`) or `none (read-only)`.
    pub locking: &'a str,
}

/// `key: value` lines, stable names, so scripts can `grep`/`awk` them.
pub(crate) fn volume_stats(i: &VolumeInfo<'_>, s: &VolumeStats) -> String {
    let mut o = String::new();
    let snap = match i.sel {
        SnapSel::Working => "-".to_string(),
        SnapSel::Tag(t) => format!("tag {t}"),
        SnapSel::Id(n) => format!("id {n}"),
    };
    let b = |v: bool| if v { 1 } else { 0 };
    let _ = writeln!(o, "volume: {}", i.file);
    let _ = writeln!(o, "vdi: {}", i.vdi);
    let _ = writeln!(o, "snapshot: {snap}");
    let _ = writeln!(o, "vid: {:x}", i.vid);
    let _ = writeln!(o, "size: {}", i.size);
    let _ = writeln!(o, "object_size: {}", i.object_size);
    let _ = writeln!(o, "read_only: {}", b(i.read_only));
    let _ = writeln!(o, "locking: {}", i.locking);
    let _ = writeln!(o, "page_cache: {}", b(i.client_cache));
    let _ = writeln!(o, "object_cache: {}", b(i.object_cache));
    let _ = writeln!(o, "open_files: {}", i.open_files);
    let _ = writeln!(o, "reads: {}", s.reads);
    let _ = writeln!(o, "writes: {}", s.writes);
    let _ = writeln!(o, "bytes_read: {}", s.bytes_read);
    let _ = writeln!(o, "bytes_written: {}", s.bytes_written);
    let _ = writeln!(o, "fsyncs: {}", i.fsyncs);
    let _ = writeln!(o, "discards: {}", i.discards);
    let _ = writeln!(o, "cache_hits: {}", s.cache_hits);
    let _ = writeln!(o, "cache_misses: {}", s.cache_misses);
    let _ = writeln!(o, "errors: {}", s.errors);
    let _ = writeln!(o, "reloads: {}", s.reloads);
    let _ = writeln!(o, "reconnects: {}", s.reconnects);
    for (what, l) in [("read", &s.read_lat_us), ("write", &s.write_lat_us)] {
        for (p, v) in ["p50", "p90", "p99", "max"].iter().zip(l.iter()) {
            let _ = writeln!(o, "{what}_latency_us_{p}: {v}");
        }
    }
    o
}

/// What the kernel and we agreed on at FUSE INIT (`config/fuse`).
#[derive(Debug, Clone, Default)]
pub struct FuseParams {
    pub kernel_abi: String,
    pub max_write: u32,
    pub max_readahead: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub threads: usize,
    pub clone_fd: bool,
    /// Capabilities both sides enabled.
    pub enabled: Vec<String>,
    /// Capabilities we wanted that the kernel lacks.
    pub unsupported: Vec<String>,
    pub parallel_direct_writes: bool,
}

impl FuseParams {
    /// `page_cache`: the current config/page_cache, which decides how volume
    /// files are opened from now on.
    pub fn render(&self, page_cache: bool) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "kernel_abi: {}", self.kernel_abi);
        let _ = writeln!(o, "max_write: {}", self.max_write);
        let _ = writeln!(o, "max_readahead: {}", self.max_readahead);
        let _ = writeln!(o, "max_background: {}", self.max_background);
        let _ = writeln!(o, "congestion_threshold: {}", self.congestion_threshold);
        let _ = writeln!(o, "threads: {}", self.threads);
        let _ = writeln!(o, "clone_fd: {}", self.clone_fd as u8);
        let _ = writeln!(o, "capabilities: {}", self.enabled.join(" "));
        let _ = writeln!(o, "unsupported: {}", self.unsupported.join(" "));
        let _ = writeln!(o, "volume_direct_io: {}", !page_cache as u8);
        let _ = writeln!(o, "volume_keep_cache: {}", page_cache as u8);
        let _ = writeln!(
            o,
            "volume_parallel_direct_writes: {}",
            self.parallel_direct_writes as u8
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines() {
        let sel = SnapSel::Tag("s1".into());
        let i = VolumeInfo {
            file: "a@s1",
            vdi: "a",
            sel: &sel,
            vid: 0x7c2b25,
            size: 1 << 30,
            object_size: 1 << 22,
            read_only: true,
            client_cache: false,
            object_cache: true,
            open_files: 2,
            fsyncs: 0,
            discards: 0,
            locking: "off",
        };
        let s = VolumeStats {
            reads: 3,
            read_lat_us: [1, 2, 3, 4],
            ..Default::default()
        };
        let t = volume_stats(&i, &s);
        assert!(t.contains("vid: 7c2b25\n"));
        assert!(t.contains("snapshot: tag s1\n"));
        assert!(t.contains("read_only: 1\n"));
        assert!(t.contains("locking: off\n"));
        assert!(t.contains("reads: 3\n"));
        assert!(t.contains("read_latency_us_p99: 3\n"));
        assert!(t.contains("write_latency_us_max: 0\n"));
        assert!(t.lines().all(|l| l.contains(": ")));
    }
}
