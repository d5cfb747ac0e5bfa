//! [`Volume`]: byte-addressed reads and writes on one VDI.
//! (Implementation in progress; the public API below is stable.)

use super::{Client, Error, ObjectCache, Result};
use std::sync::Arc;

/// Which member of a VDI family to open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SnapSel {
    /// The writable head.
    #[default]
    Working,
    /// The snapshot with this tag.
    Tag(String),
    /// The snapshot with this snap_id.
    Id(u32),
}

impl SnapSel {
    /// `TAG` or `SNAPID` (all digits), as tgt's backing-store suffix and `name@X`.
    pub fn parse(s: &str) -> SnapSel {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = s.parse::<u32>() {
                return SnapSel::Id(n);
            }
        }
        SnapSel::Tag(s.to_string())
    }
    pub fn is_working(&self) -> bool {
        matches!(self, SnapSel::Working)
    }
}

/// Whether opening takes the VDI lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    #[default]
    None,
    Normal,
    Shared,
}

/// How to open a [`Volume`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub snapshot: SnapSel,
    pub lock: LockMode,
    /// Set SD_FLAG_CMD_CACHE on object requests (sheep's object cache; FLUSH_VDI makes durable).
    pub object_cache: bool,
    /// Refuse writes even on the working VDI.
    pub read_only: bool,
    /// Cache whole objects in this client-side LRU (sheepfs `-k`).
    pub cache: Option<Arc<ObjectCache>>,
}

/// Counters of one volume.
#[derive(Debug, Clone, Default)]
pub struct VolumeStats {
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub errors: u64,
    pub reloads: u64,
    pub reconnects: u64,
    /// Latency percentiles in microseconds: p50, p90, p99, max.
    pub read_lat_us: [u64; 4],
    pub write_lat_us: [u64; 4],
}

/// One open VDI. Cheap to share (`Arc<Volume>`); every method takes `&self`
/// and may run concurrently with any other.
pub struct Volume {
    _client: Client,
}

impl Volume {
    pub async fn open(client: Client, name: &str, opts: OpenOptions) -> Result<Volume> {
        let _ = (client, name, opts);
        Err(Error::Invalid("not implemented".into()))
    }
    pub fn name(&self) -> &str {
        todo!()
    }
    /// The vid I/O currently goes to (changes if a snapshot is taken underneath).
    pub fn vid(&self) -> u32 {
        todo!()
    }
    pub fn size(&self) -> u64 {
        todo!()
    }
    pub fn object_size(&self) -> u64 {
        todo!()
    }
    pub fn block_size_shift(&self) -> u8 {
        todo!()
    }
    pub fn is_read_only(&self) -> bool {
        todo!()
    }
    pub fn client(&self) -> &Client {
        &self._client
    }
    /// Reads `len` bytes at `off` (clipped at the end of the volume).
    pub async fn read_at(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let _ = (off, len);
        todo!()
    }
    /// Writes `data` at `off`; fails with [`Error::OutOfRange`] past the end.
    pub async fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        let _ = (off, data);
        todo!()
    }
    /// Makes `[off, off+len)` read as zeros: whole objects are discarded
    /// (DISCARD_OBJ), partial ones written with zeros.
    pub async fn discard(&self, off: u64, len: u64) -> Result<()> {
        let _ = (off, len);
        todo!()
    }
    /// Same effect as discard (unallocated reads are zeros).
    pub async fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.discard(off, len).await
    }
    /// FLUSH_VDI when the object cache flag is on; a no-op otherwise.
    pub async fn flush(&self) -> Result<()> {
        todo!()
    }
    /// SEEK_DATA: first allocated byte at or after `off`, if any.
    pub fn seek_data(&self, off: u64) -> Option<u64> {
        let _ = off;
        todo!()
    }
    /// SEEK_HOLE: first unallocated byte at or after `off` (size if none).
    pub fn seek_hole(&self, off: u64) -> u64 {
        let _ = off;
        todo!()
    }
    /// Grows the VDI.
    pub async fn resize(&self, new_size: u64) -> Result<()> {
        let _ = new_size;
        todo!()
    }
    /// Re-reads the inode (after a snapshot taken elsewhere).
    pub async fn reload(&self) -> Result<()> {
        todo!()
    }
    pub fn set_object_cache(&self, on: bool) {
        let _ = on;
        todo!()
    }
    pub fn stats(&self) -> VolumeStats {
        todo!()
    }
    /// Releases the lock (if taken). I/O after close fails.
    pub async fn close(&self) -> Result<()> {
        todo!()
    }
}
