//! [`Volume`]: byte-addressed reads and writes on one VDI.
//!
//! What lives here, once, for every front end (sheepfs, sheep-iscsi, sheepctl):
//! - splitting requests at object boundaries (object size from the inode);
//! - thin provisioning: unallocated objects read as zeros without a request;
//! - copy-on-write for clones and snapshots, with each object allocated once
//!   even under concurrent writers (a per-object allocation lock);
//! - write ordering: overlapping writes are serialised in arrival order (a
//!   FIFO range lock), so they never tear;
//! - snapshots taken underneath (READONLY / INODE_INVALIDATED): re-resolve the
//!   working VDI and redo the write as COW;
//! - the VDI lock, the optional object cache and per-volume statistics.

use super::lock::{KeyedLocks, RangeLock};
use super::map::{DataMap, Inode};
use super::ops::ObjWrite;
use super::vdi::SnapSel;
use super::{Client, Error, ObjectCache, Result};
use crate::proto::inode::{self, InodeHeader};
use crate::proto::{flags, oid, SdRes, LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED};
use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Whether opening takes the VDI lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// No lock (several clients may write; only safe if they coordinate).
    #[default]
    None,
    /// An exclusive lock (LOCK_VDI): other clients' opens with a lock fail
    /// with VDI_LOCKED.
    Normal,
    /// A shared lock, as for live migration.
    Shared,
}

impl LockMode {
    fn wire(self) -> u32 {
        match self {
            LockMode::Shared => LOCK_TYPE_SHARED,
            _ => LOCK_TYPE_NORMAL,
        }
    }
}

/// How to open a [`Volume`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The working VDI or a snapshot (opened read-only).
    pub snapshot: SnapSel,
    /// Whether to take the VDI lock while open.
    pub lock: LockMode,
    /// Set SD_FLAG_CMD_CACHE on object requests (sheep's object cache; FLUSH_VDI makes durable).
    pub object_cache: bool,
    /// Refuse writes even on the working VDI.
    pub read_only: bool,
    /// Cache whole objects in this client-side LRU (sheepfs `-k`).
    pub cache: Option<Arc<ObjectCache>>,
    /// Send exactly dog's requests: no `snap_ctime` read after a map update.
    /// Without that read, an allocating write that races with a snapshot
    /// taken elsewhere can end up only in the snapshot, as with dog. Only
    /// for tools that must mirror dog's traffic (sheepctl).
    pub dog_requests: bool,
}

/// Counters of one volume.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VolumeStats {
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Object reads answered by the client-side cache.
    pub cache_hits: u64,
    /// Object reads the client-side cache had to fetch.
    pub cache_misses: u64,
    /// Reads and writes that failed.
    pub errors: u64,
    /// Inode re-reads (snapshots taken underneath, objects gone).
    pub reloads: u64,
    /// Reconnections of the client.
    pub reconnects: u64,
    /// Latency percentiles in microseconds: p50, p90, p99, max.
    pub read_lat_us: [u64; 4],
    /// Write latency percentiles, as `read_lat_us`.
    pub write_lat_us: [u64; 4],
}

struct State {
    header: InodeHeader,
    map: DataMap,
    /// Bumped whenever the inode is re-read, so concurrent writers that all
    /// hit READONLY reload once.
    generation: u64,
}

/// One open VDI. Cheap to share (`Arc<Volume>`); every method takes `&self`
/// and may run concurrently with any other.
pub struct Volume {
    client: Client,
    name: String,
    sel: SnapSel,
    lock: LockMode,
    read_only: bool,
    state: RwLock<State>,
    /// The vid whose lock we hold (changes when a snapshot is taken under us).
    locked_vid: Mutex<Option<u32>>,
    alloc: KeyedLocks,
    ranges: RangeLock,
    reload_lock: tokio::sync::Mutex<()>,
    /// Serialises B-tree map updates of hyper volumes (they rewrite the root).
    btree_lock: tokio::sync::Mutex<()>,
    object_cache: AtomicBool,
    /// See [`OpenOptions::dog_requests`].
    dog_requests: bool,
    /// vids written with CMD_CACHE since the last flush.
    dirty_vids: Mutex<HashSet<u32>>,
    /// The client-side object cache, if any (can be switched while open).
    cache: RwLock<Option<Arc<ObjectCache>>>,
    closed: AtomicBool,
    stats: Stats,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Volume({}{}, vid {:#x})",
            self.name,
            self.sel,
            self.vid()
        )
    }
}

/// One piece of a request: object `idx`, byte range inside it.
#[derive(Debug, Clone, Copy)]
struct Piece {
    idx: u64,
    off: u64,
    len: usize,
    /// Offset of this piece in the caller's buffer.
    buf_off: usize,
}

fn pieces(off: u64, len: u64, shift: u8) -> Vec<Piece> {
    let obj = 1u64 << shift;
    let mut v = Vec::new();
    let mut done = 0u64;
    while done < len {
        let pos = off + done;
        let in_obj = pos & (obj - 1);
        // At most one object (2 GiB), so it fits a usize.
        let n = (obj - in_obj).min(len - done);
        v.push(Piece {
            idx: pos >> shift,
            off: in_obj,
            len: n as usize,
            buf_off: done as usize,
        });
        done += n;
    }
    v
}

fn idx32(vid: u32, idx: u64) -> Result<u32> {
    u32::try_from(idx)
        .map_err(|_| Error::Invalid(format!("object index {idx} of VDI {vid:x} out of range")))
}

impl Volume {
    /// Resolves `name` (working VDI or snapshot), takes the lock if asked, and
    /// reads the inode.
    pub async fn open(client: Client, name: &str, opts: OpenOptions) -> Result<Volume> {
        let id = match opts.lock {
            LockMode::None => client.vdi_lookup(name, &opts.snapshot).await?,
            mode => client.lock_vdi(name, &opts.snapshot, mode.wire()).await?,
        };
        let locked = (opts.lock != LockMode::None).then_some(id.vid);
        match client.read_inode(id.vid, false).await {
            Ok(inode) => Ok(Self::from_parts(client, name, inode, opts, locked)),
            Err(e) => {
                if let Some(vid) = locked {
                    let _ = client.release_vdi(vid, opts.lock.wire()).await;
                }
                Err(e)
            }
        }
    }

    /// A volume over an inode the caller already read (e.g. sheepctl reading
    /// the whole inode as dog does). Takes no lock.
    pub fn open_resolved(client: Client, name: &str, inode: Inode, opts: OpenOptions) -> Volume {
        let opts = OpenOptions {
            lock: LockMode::None,
            ..opts
        };
        Self::from_parts(client, name, inode, opts, None)
    }

    fn from_parts(
        client: Client,
        name: &str,
        inode: Inode,
        opts: OpenOptions,
        locked: Option<u32>,
    ) -> Volume {
        let read_only = opts.read_only || !opts.snapshot.is_working() || inode.header.is_snapshot();
        let cache = opts.cache.filter(|c| c.admits(inode.header.object_size()));
        Volume {
            client,
            name: name.to_string(),
            sel: opts.snapshot,
            lock: opts.lock,
            read_only,
            state: RwLock::new(State {
                header: inode.header,
                map: inode.map,
                generation: 0,
            }),
            locked_vid: Mutex::new(locked),
            alloc: KeyedLocks::default(),
            ranges: RangeLock::default(),
            reload_lock: tokio::sync::Mutex::new(()),
            btree_lock: tokio::sync::Mutex::new(()),
            object_cache: AtomicBool::new(opts.object_cache),
            dog_requests: opts.dog_requests,
            dirty_vids: Mutex::new(HashSet::new()),
            cache: RwLock::new(cache),
            closed: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }

    /// The VDI's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Which member of the VDI's family this is.
    pub fn snapshot(&self) -> &SnapSel {
        &self.sel
    }
    /// The vid I/O currently goes to (changes if a snapshot is taken underneath).
    pub fn vid(&self) -> u32 {
        self.state.read().header.vdi_id
    }
    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.state.read().header.vdi_size
    }
    /// The object size in bytes.
    pub fn object_size(&self) -> u64 {
        self.state.read().header.object_size()
    }
    /// The object size shift.
    pub fn block_size_shift(&self) -> u8 {
        self.state.read().header.block_size_shift
    }
    /// The VDI's copies.
    pub fn nr_copies(&self) -> u8 {
        self.state.read().header.nr_copies
    }
    /// The inode header as last read (sizes updated by [`Volume::resize`]).
    pub fn header(&self) -> InodeHeader {
        self.state.read().header.clone()
    }
    /// Whether writes are refused (a snapshot, or opened read-only).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    /// The client the volume talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }
    /// Sets or clears SD_FLAG_CMD_CACHE on later requests (see [`OpenOptions::object_cache`]).
    pub fn set_object_cache(&self, on: bool) {
        self.object_cache.store(on, Ordering::Relaxed);
    }
    /// Whether requests carry SD_FLAG_CMD_CACHE.
    pub fn object_cache(&self) -> bool {
        self.object_cache.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn io_flags(&self) -> u16 {
        if self.object_cache() {
            flags::CMD_CACHE
        } else {
            0
        }
    }

    // ------------------------------------------------------------------ reads

    /// Reads `len` bytes at `off` (clipped at the end of the volume).
    pub async fn read_at(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        // One buffer filled in place: the Vec takes it over without a copy.
        self.read(off, len).await.map(Vec::from)
    }

    /// [`Volume::read_at`] as [`Bytes`] (what the FUSE and iSCSI adapters
    /// hand to the kernel or the wire).
    pub async fn read_bytes(&self, off: u64, len: usize) -> Result<Bytes> {
        self.read(off, len).await.map(BytesMut::freeze)
    }

    async fn read(&self, off: u64, len: usize) -> Result<BytesMut> {
        let t = Instant::now();
        let res = self.read_inner(off, len).await;
        self.stats
            .record_read(t, res.as_ref().map(|v| v.len()).ok());
        res
    }

    async fn read_inner(&self, off: u64, len: usize) -> Result<BytesMut> {
        self.check_open()?;
        let (size, shift) = {
            let s = self.state.read();
            (s.header.vdi_size, s.header.block_size_shift)
        };
        if off >= size || len == 0 {
            return Ok(BytesMut::new());
        }
        let len = (len as u64).min(size - off) as usize;
        let ps = pieces(off, len as u64, shift);
        if let [p] = ps[..] {
            // Within one object (the usual case): no joining to do.
            return self.read_piece(p, BytesMut::with_capacity(len)).await;
        }
        // One allocation for the whole read, no zero-fill: each piece is
        // read from the socket straight into its own stretch of it, and the
        // stretches join back without a copy.
        let mut rest = BytesMut::with_capacity(len);
        let mut bufs = Vec::with_capacity(ps.len());
        for p in &ps[..ps.len() - 1] {
            let tail = rest.split_off(p.len);
            bufs.push(std::mem::replace(&mut rest, tail));
        }
        bufs.push(rest);
        let parts = try_join_all(ps.iter().zip(bufs).map(|(p, b)| self.read_piece(*p, b))).await?;
        let mut out = BytesMut::new();
        for part in parts {
            // O(1) for adjacent stretches; a piece that had to be re-read
            // into a new buffer is copied.
            out.unsplit(part);
        }
        Ok(out)
    }

    /// Reads one piece into `buf` (empty, with room for the piece).
    async fn read_piece(&self, p: Piece, buf: BytesMut) -> Result<BytesMut> {
        let mut buf = Some(buf);
        let mut retried = false;
        loop {
            let (vid, gen) = {
                let s = self.state.read();
                (s.map.get(p.idx), s.generation)
            };
            // Consumed by a failed attempt: a retry reads into a new one.
            let mut b = buf.take().unwrap_or_else(|| BytesMut::with_capacity(p.len));
            if vid == 0 {
                b.resize(p.len, 0);
                return Ok(b);
            }
            let doid = oid::vid_to_data_oid(vid, idx32(vid, p.idx)?);
            let cache = self.cache.read().clone();
            let res = match &cache {
                Some(cache) => {
                    let objsize = self.object_size() as u32;
                    let fl = self.io_flags();
                    cache
                        .get_or_fill(doid, || self.client.read_obj(doid, 0, objsize, fl))
                        .await
                        .and_then(|(obj, hit)| {
                            self.stats.count_cache(hit);
                            let start = p.off as usize;
                            let piece = obj.get(start..start + p.len).ok_or_else(|| {
                                Error::Invalid("cached object shorter than object size".into())
                            })?;
                            b.extend_from_slice(piece);
                            Ok(b)
                        })
                }
                None => {
                    let (off, len) = (p.off as u32, p.len as u32);
                    self.client
                        .read_obj_into(doid, off, len, self.io_flags(), b)
                        .await
                }
            };
            match res {
                // The map said allocated but the object is gone (discarded
                // or a snapshot/delete elsewhere): re-read the inode once.
                Err(e) if !retried && (e.is(SdRes::NO_OBJ) || e.is(SdRes::INODE_INVALIDATED)) => {
                    retried = true;
                    self.reload_if(gen).await?;
                }
                other => return other,
            }
        }
    }

    // ----------------------------------------------------------------- writes

    /// Writes `data` at `off`; fails with [`Error::OutOfRange`] past the end.
    pub async fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        self.write_bytes(off, Bytes::copy_from_slice(data)).await
    }

    /// [`Volume::write_at`] without copying the caller's buffer.
    pub async fn write_bytes(&self, off: u64, data: Bytes) -> Result<()> {
        let t = Instant::now();
        let n = data.len();
        let res = self.write_inner(off, data).await;
        self.stats.record_write(t, res.as_ref().ok().map(|_| n));
        res
    }

    /// Checks a write of `[off, off+len)`; the object size shift.
    fn check_writable(&self, off: u64, len: u64) -> Result<u8> {
        self.check_open()?;
        if self.read_only {
            return Err(Error::ReadOnly(format!("{}{}", self.name, self.sel)));
        }
        let s = self.state.read();
        let size = s.header.vdi_size;
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                name: self.name.clone(),
                size,
            });
        }
        Ok(s.header.block_size_shift)
    }

    async fn write_inner(&self, off: u64, data: Bytes) -> Result<()> {
        let shift = self.check_writable(off, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let _range = self.ranges.lock(off, off + data.len() as u64).await;
        let ps = pieces(off, data.len() as u64, shift);
        if let [p] = ps[..] {
            return self.write_piece(p.idx, p.off, data).await;
        }
        try_join_all(ps.iter().map(|p| {
            let chunk = data.slice(p.buf_off..p.buf_off + p.len);
            self.write_piece(p.idx, p.off, chunk)
        }))
        .await?;
        Ok(())
    }

    /// Writes one piece inside object `idx`, allocating (and copying on
    /// write) the object first if this VDI does not own it yet.
    async fn write_piece(&self, idx: u64, off: u64, data: Bytes) -> Result<()> {
        loop {
            let (own, cur, gen, copies) = self.lookup(idx);
            if cur == own {
                let doid = oid::vid_to_data_oid(own, idx32(own, idx)?);
                match self
                    .send_write(doid, 0, off, data.clone(), false, copies)
                    .await
                {
                    Ok(()) => {
                        if let Some(c) = self.cache.read().as_ref() {
                            c.apply_write(doid, off as usize, &data);
                        }
                        return Ok(());
                    }
                    Err(e) if self.snapshot_taken(&e) => self.reload_if(gen).await?,
                    Err(e) => {
                        // sheep may have applied it anyway (e.g. a timeout):
                        // the cached copy can no longer be trusted.
                        if let Some(c) = self.cache.read().as_ref() {
                            c.invalidate(doid);
                        }
                        return Err(e);
                    }
                }
                continue;
            }
            // Allocation: one writer per object; later ones find it owned.
            let _a = self.alloc.lock(idx).await;
            let (own, cur, gen, copies) = self.lookup(idx);
            if cur == own {
                continue;
            }
            let i = idx32(own, idx)?;
            let doid = oid::vid_to_data_oid(own, i);
            let cow = if cur != 0 {
                oid::vid_to_data_oid(cur, i)
            } else {
                0
            };
            match self
                .send_write(doid, cow, off, data.clone(), true, copies)
                .await
            {
                Ok(()) => {}
                Err(e) if self.snapshot_taken(&e) => {
                    self.reload_if(gen).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Some(c) = self.cache.read().as_ref() {
                c.invalidate(doid);
            }
            if let Err(e) = self.set_map(idx, own, cur, gen).await {
                // The entry may have reached the inode on the server: without
                // a reload this volume would go on treating the object as
                // unallocated (e.g. a discard would skip it).
                if let Err(r) = self.reload().await {
                    tracing::warn!(vdi = %self.name, error = %r, "reload after a failed map update failed");
                }
                return Err(e);
            }
            return Ok(());
        }
    }

    /// Sets a flat map entry in memory unless the inode was reloaded since
    /// generation `gen`; false if it was.
    fn set_entry_if(&self, gen: u64, idx: u64, value: u32) -> bool {
        let mut s = self.state.write();
        if s.generation != gen {
            return false;
        }
        if let DataMap::Flat(v) = &mut s.map {
            v.set(idx, value);
        }
        true
    }

    fn lookup(&self, idx: u64) -> (u32, u32, u64, u8) {
        let s = self.state.read();
        (
            s.header.vdi_id,
            s.map.get(idx),
            s.generation,
            s.header.nr_copies,
        )
    }

    fn snapshot_taken(&self, e: &Error) -> bool {
        e.is(SdRes::READONLY) || e.is(SdRes::INODE_INVALIDATED)
    }

    async fn send_write(
        &self,
        doid: u64,
        cow: u64,
        off: u64,
        data: Bytes,
        create: bool,
        copies: u8,
    ) -> Result<()> {
        let fl = self.io_flags();
        if fl & flags::CMD_CACHE != 0 {
            self.dirty_vids.lock().insert(oid::oid_to_vid(doid));
        }
        let mut w = ObjWrite::new(doid, off as u32, data).with_flags(fl);
        if create {
            w = w.creating(cow);
        }
        let policy = self.state.read().header.copy_policy;
        self.client.write_obj(w.with_copies(copies, policy)).await
    }

    /// Records `data_vdi_id[idx] = vid` (the owner of the object we just
    /// created, or 0 to unmap) in the working VDI's inode on the server, then
    /// in memory. `prev` is the entry before the change.
    async fn set_map(&self, idx: u64, vid: u32, prev: u32, gen: u64) -> Result<()> {
        let hyper = self.state.read().header.is_hyper();
        if !hyper {
            return self.set_flat_entry(idx, vid, prev).await;
        }
        {
            let _b = self.btree_lock.lock().await;
            let (own, mut header, mut tree) = {
                let s = self.state.read();
                match &s.map {
                    DataMap::Btree(t) => (s.header.vdi_id, s.header.clone(), t.clone()),
                    DataMap::Flat(_) => {
                        return Err(Error::Invalid("flat map on a hyper volume".into()))
                    }
                }
            };
            let i = idx32(own, idx)?;
            let mut counter = header.btree_counter;
            let mut next = || {
                counter += 1;
                oid::vid_to_btree_oid(own, counter - 1)
            };
            let up = tree.set(i, vid, &mut next).map_err(|e| Error::Btree {
                vid: own,
                source: e,
            })?;
            header.btree_counter = counter;
            self.client
                .write_btree_update(&header, &tree, &up, 0)
                .await?;
            let mut s = self.state.write();
            if s.generation == gen {
                s.header.btree_counter = header.btree_counter;
                s.map = DataMap::Btree(tree);
                return Ok(());
            }
        }
        // The inode was reloaded while we allocated: take the server's view.
        self.reload().await
    }

    /// Writes `data_vdi_id[idx] = value` into the working VDI's inode and
    /// makes sure it landed there. Someone may snapshot the VDI at any moment:
    /// sheep copies the map into the new working VDI, and a map write that
    /// arrives after the copy lands in what is now the snapshot (inodes of
    /// snapshots stay writable). So after each write we read `snap_ctime`;
    /// non-zero means the VDI became a snapshot: an unmap puts the snapshot's
    /// entry back (a snapshot never loses data to a discard that was still in
    /// flight), then we follow the working VDI and write the entry there.
    async fn set_flat_entry(&self, idx: u64, value: u32, mut prev: u32) -> Result<()> {
        loop {
            let (own, gen, copies) = {
                let s = self.state.read();
                let h = &s.header;
                (h.vdi_id, s.generation, (h.nr_copies, h.copy_policy))
            };
            let i = idx32(own, idx)?;
            let ioid = oid::vid_to_vdi_oid(own);
            let off = inode::data_vdi_id_offset(i) as u32;
            let put = |v: u32| {
                let w = ObjWrite::new(ioid, off, v.to_le_bytes().to_vec());
                self.client.write_obj(w.with_copies(copies.0, copies.1))
            };
            put(value).await?;
            let snap_ctime = if self.dog_requests {
                0
            } else {
                let b = self
                    .client
                    .read_obj(ioid, inode::SNAP_CTIME_OFFSET as u32, 8, 0)
                    .await?;
                crate::proto::bytes::get_u64(&b, 0)
            };
            if snap_ctime == 0 {
                if self.set_entry_if(gen, idx, value) {
                    return Ok(());
                }
                // Reloaded meanwhile (by another writer): take the server's view.
                return self.reload().await;
            }
            if value == 0 && prev != 0 {
                put(prev).await?;
            }
            self.reload_if(gen).await?;
            let now = self.lookup(idx).1;
            if now == value {
                return Ok(());
            }
            prev = now;
        }
    }

    // ---------------------------------------------------------------- discard

    /// Makes `[off, off+len)` read as zeros: whole objects are unmapped
    /// (DISCARD_OBJ for our own objects), partial ones written with zeros.
    pub async fn discard(&self, off: u64, len: u64) -> Result<()> {
        let shift = self.check_writable(off, len)?;
        if len == 0 {
            return Ok(());
        }
        let _range = self.ranges.lock(off, off + len).await;
        let obj = 1u64 << shift;
        try_join_all(pieces(off, len, shift).into_iter().map(|p| async move {
            if p.len as u64 == obj {
                self.unmap(p.idx).await
            } else if self.lookup(p.idx).1 != 0 {
                self.write_piece(p.idx, p.off, Bytes::from(vec![0u8; p.len]))
                    .await
            } else {
                Ok(())
            }
        }))
        .await?;
        Ok(())
    }

    /// Same effect as discard (unallocated reads are zeros).
    pub async fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.discard(off, len).await
    }

    async fn unmap(&self, idx: u64) -> Result<()> {
        let _a = self.alloc.lock(idx).await;
        loop {
            let (own, cur, gen, _) = self.lookup(idx);
            if cur == 0 {
                return Ok(());
            }
            let doid = oid::vid_to_data_oid(own, idx32(own, idx)?);
            let hyper = self.state.read().header.is_hyper();
            if hyper {
                self.set_map(idx, 0, cur, gen).await?;
                if cur == own {
                    match self.client.remove_obj(doid).await {
                        Err(e) if !e.is(SdRes::NO_OBJ) => return Err(e),
                        _ => {}
                    }
                }
            } else if cur == own {
                // sheep clears data_vdi_id[idx] and removes the object; a
                // snapshot taken underneath answers READONLY.
                match self.client.discard_obj(doid).await {
                    Ok(()) => {}
                    Err(e) if self.snapshot_taken(&e) => {
                        self.reload_if(gen).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if !self.set_entry_if(gen, idx, 0) {
                    self.reload().await?;
                }
            } else {
                // Shared with an ancestor: only our map entry goes.
                self.set_map(idx, 0, cur, gen).await?;
            }
            if let Some(c) = self.cache.read().as_ref() {
                c.invalidate(doid);
            }
            return Ok(());
        }
    }

    // ------------------------------------------------------------ flush, seek

    /// FLUSH_VDI for every vid written with CMD_CACHE since the last flush
    /// (and the current one when the object cache flag is on).
    pub async fn flush(&self) -> Result<()> {
        self.check_open()?;
        let mut vids: Vec<u32> = self.dirty_vids.lock().drain().collect();
        if self.object_cache() && !vids.contains(&self.vid()) {
            vids.push(self.vid());
        }
        for (i, vid) in vids.iter().enumerate() {
            if let Err(e) = self.client.flush_vdi(*vid).await {
                self.dirty_vids.lock().extend(&vids[i..]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Objects this VDI owns (map entries naming its own vid), as dog's
    /// `vdi list` counts Used; shared objects of a clone are not included.
    pub fn own_objects(&self) -> u64 {
        let s = self.state.read();
        let vid = s.header.vdi_id;
        let n = match &s.map {
            DataMap::Flat(v) => v.count(vid),
            DataMap::Btree(t) => t.entries().iter().filter(|e| e.1 == vid).count(),
        };
        n as u64
    }

    /// SEEK_DATA: first allocated byte at or after `off`, if any.
    pub fn seek_data(&self, off: u64) -> Option<u64> {
        let s = self.state.read();
        let size = s.header.vdi_size;
        if off >= size {
            return None;
        }
        let shift = s.header.block_size_shift;
        let first = off >> shift;
        let idx = match &s.map {
            DataMap::Flat(v) => v.next_allocated(first),
            DataMap::Btree(t) => t
                .entries()
                .into_iter()
                .map(|(i, _)| i as u64)
                .find(|&i| i >= first),
        }?;
        let pos = (idx << shift).max(off);
        (pos < size).then_some(pos)
    }

    /// SEEK_HOLE: first unallocated byte at or after `off` (the size if none).
    pub fn seek_hole(&self, off: u64) -> u64 {
        let s = self.state.read();
        let size = s.header.vdi_size;
        if off >= size {
            return size;
        }
        let shift = s.header.block_size_shift;
        let mut idx = off >> shift;
        while (idx << shift) < size && s.map.get(idx) != 0 {
            idx += 1;
        }
        (idx << shift).max(off).min(size)
    }

    // ------------------------------------------------------- resize, reload

    /// Grows the VDI. Only the inode's `vdi_size` is written (dog's `vdi
    /// resize` rewrites the whole header, which, landing late after a retry,
    /// could erase a snapshot taken meanwhile). A snapshot taken underneath
    /// moves the working VDI: the header is read back after the write, and if
    /// this vid has become a snapshot meanwhile, its size is put back and the
    /// resize redone on the new working VDI.
    pub async fn resize(&self, new_size: u64) -> Result<()> {
        self.check_open()?;
        if self.read_only {
            return Err(Error::ReadOnly(format!("{}{}", self.name, self.sel)));
        }
        loop {
            if self.try_resize(new_size).await? {
                return Ok(());
            }
            self.reload().await?;
        }
    }

    /// One attempt of [`Volume::resize`]; false if the inode must be reloaded first.
    async fn try_resize(&self, new_size: u64) -> Result<bool> {
        let _r = self.reload_lock.lock().await;
        // B-tree root rewrites carry the whole header: none may run with the old size.
        let _b = self.btree_lock.lock().await;
        let mut h = self.header();
        if new_size < h.vdi_size {
            return Err(Error::Invalid(format!(
                "cannot shrink {} from {} to {} bytes",
                self.name, h.vdi_size, new_size
            )));
        }
        if !self.client.resize_inode(h.vdi_id, new_size, true).await? {
            return Ok(false);
        }
        h.vdi_size = new_size;
        let mut s = self.state.write();
        let n = h.nr_objs() as usize;
        if let DataMap::Flat(v) = &mut s.map {
            if v.len() < n {
                v.resize(n);
            }
        }
        s.header.vdi_size = new_size;
        Ok(true)
    }

    /// Re-reads the inode: for the working VDI, re-resolves the name first (a
    /// snapshot may have moved it to a new vid).
    pub async fn reload(&self) -> Result<()> {
        let gen = self.state.read().generation;
        self.reload_if(gen).await
    }

    /// Reloads unless someone else already did since generation `gen`.
    async fn reload_if(&self, gen: u64) -> Result<()> {
        let _r = self.reload_lock.lock().await;
        if self.state.read().generation != gen {
            return Ok(());
        }
        let old = self.vid();
        let id = self.client.vdi_lookup(&self.name, &self.sel).await?;
        if id.vid != old && self.lock != LockMode::None {
            // Follow the lock to the new working VDI.
            self.client
                .lock_vdi(&self.name, &self.sel, self.lock.wire())
                .await?;
            let prev = self.locked_vid.lock().replace(id.vid);
            if let Some(prev) = prev {
                let _ = self.client.release_vdi(prev, self.lock.wire()).await;
            }
        }
        let inode = self.client.read_inode(id.vid, false).await?;
        if id.vid != old {
            tracing::info!(vdi = %self.name, old = format_args!("{old:#x}"), new = format_args!("{:#x}", id.vid), "working VDI moved (snapshot taken); following it");
        } else {
            tracing::debug!(vdi = %self.name, "reloaded inode");
        }
        let mut s = self.state.write();
        s.header = inode.header;
        s.map = inode.map;
        s.generation += 1;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The volume's counters.
    pub fn stats(&self) -> VolumeStats {
        let mut st = self.stats.snapshot();
        st.reconnects = self.client.reconnects();
        st
    }

    /// Switches the client-side object cache on (`Some`) or off (`None`) for
    /// later reads. Objects too large for the cache's budget are not cached.
    pub fn set_cache(&self, cache: Option<Arc<ObjectCache>>) {
        let size = self.object_size();
        *self.cache.write() = cache.filter(|c| c.admits(size));
    }

    /// The client-side object cache in use, if any.
    pub fn cache(&self) -> Option<Arc<ObjectCache>> {
        self.cache.read().clone()
    }

    /// Flushes cached writes, releases the lock (if taken). I/O after close fails.
    pub async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Make CMD_CACHE writes durable before letting go.
        let vids: Vec<u32> = self.dirty_vids.lock().drain().collect();
        let mut first_err = None;
        for vid in vids {
            if let Err(e) = self.client.flush_vdi(vid).await {
                first_err.get_or_insert(e);
            }
        }
        let locked = self.locked_vid.lock().take();
        if let Some(vid) = locked {
            if let Err(e) = self.client.release_vdi(vid, self.lock.wire()).await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics.

const BUCKETS: usize = 32;

#[derive(Default)]
struct Hist {
    buckets: [AtomicU64; BUCKETS],
    max: AtomicU64,
}

impl Hist {
    fn record(&self, us: u64) {
        let b = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }
    /// p50, p90, p99 (bucket upper bounds, µs) and the max.
    fn percentiles(&self) -> [u64; 4] {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let pct = |p: f64| {
            if total == 0 {
                return 0;
            }
            let want = ((total as f64) * p).ceil() as u64;
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= want {
                    return (1u64 << i).min(max.max(1));
                }
            }
            max
        };
        [pct(0.5), pct(0.9), pct(0.99), max]
    }
}

#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    reloads: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    read_lat: Hist,
    write_lat: Hist,
}

impl Stats {
    fn record_read(&self, t: Instant, n: Option<usize>) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        match n {
            Some(n) => {
                self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                self.read_lat.record(t.elapsed().as_micros() as u64);
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn record_write(&self, t: Instant, n: Option<usize>) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        match n {
            Some(n) => {
                self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                self.write_lat.record(t.elapsed().as_micros() as u64);
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn count_cache(&self, hit: bool) {
        let c = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> VolumeStats {
        VolumeStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            read_lat_us: self.read_lat.percentiles(),
            write_lat_us: self.write_lat.percentiles(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_object_boundaries() {
        let p = pieces(4190208, 8192, 22);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].idx, p[0].off, p[0].len, p[0].buf_off),
            (0, 4190208, 4096, 0)
        );
        assert_eq!(
            (p[1].idx, p[1].off, p[1].len, p[1].buf_off),
            (1, 0, 4096, 4096)
        );
        let p = pieces(0, 3 << 20, 20);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|x| x.len == 1 << 20 && x.off == 0));
        assert_eq!(pieces((1u64 << 42) + 4096, 4096, 22)[0].idx, 1 << 20);
    }

    #[test]
    fn histogram_percentiles() {
        let h = Hist::default();
        for us in 1..=100 {
            h.record(us);
        }
        let p = h.percentiles();
        assert_eq!(p[3], 100);
        assert!(p[0] >= 32 && p[0] <= 64, "{p:?}");
        assert!(p[2] <= 100);
    }
}
