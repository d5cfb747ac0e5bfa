//! Block storage under a LUN: the [`BlockBackend`] trait, its [`Volume`]
//! implementation, an in-memory one, the per-VDI [`Disk`] (backend plus the
//! ordering of overlapping commands) and the [`Registry`] that makes LUNs on
//! the same VDI share one `Volume`.

use super::config::Backing;
use crate::client::{self, Client, LockMode, OpenOptions, SheepAddr, SnapSel, Volume};
use crate::proto::hash::{fnv1a_64, FNV1A_64_INIT};
use crate::proto::SdRes;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What went wrong below the SCSI layer; each maps to one sense code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("I/O beyond the end of the volume")]
    OutOfRange,
    #[error("volume is read-only")]
    ReadOnly,
    #[error("no space left in the cluster")]
    NoSpace,
    /// The server stayed unreachable past the client's retry timeout.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Failed(String),
}

impl From<client::Error> for BackendError {
    fn from(e: client::Error) -> Self {
        match &e {
            client::Error::OutOfRange { .. } => BackendError::OutOfRange,
            client::Error::ReadOnly(_) => BackendError::ReadOnly,
            client::Error::Closed => BackendError::Unavailable(e.to_string()),
            _ if e.is_transport() => BackendError::Unavailable(e.to_string()),
            _ => match e.result() {
                Some(SdRes::READONLY) => BackendError::ReadOnly,
                Some(SdRes::NO_SPACE) | Some(SdRes::FULL_VDI) => BackendError::NoSpace,
                _ => BackendError::Failed(e.to_string()),
            },
        }
    }
}

pub type BResult<T> = Result<T, BackendError>;

/// A byte-addressed block device. Every method may run concurrently with
/// any other; ordering of overlapping commands is [`Disk`]'s job.
pub trait BlockBackend: Send + Sync + 'static {
    /// For logs: `tcp:HOST:PORT:VDI` and the like.
    fn describe(&self) -> String;
    fn size(&self) -> u64;
    /// Allocation unit (the object size): reported as optimal granularity.
    fn granularity(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read(&self, off: u64, len: usize) -> BoxFut<'_, BResult<Vec<u8>>>;
    /// Writes `data` at `off`; the buffer is handed on, not copied.
    fn write(&self, off: u64, data: Bytes) -> BoxFut<'_, BResult<()>>;
    /// Makes everything written so far durable.
    fn flush(&self) -> BoxFut<'_, BResult<()>>;
    /// Makes the range read as zeros, deallocating whole allocation units.
    fn discard(&self, off: u64, len: u64) -> BoxFut<'_, BResult<()>>;
    /// `(mapped, run length)` of the extent starting at `off`.
    fn block_status(&self, off: u64) -> (bool, u64);
    /// Releases locks; I/O afterwards fails.
    fn close(&self) -> BoxFut<'_, ()>;
}

// ---- Volume ------------------------------------------------------------------

/// A VDI through the shared client.
pub struct VolumeBackend {
    vol: Volume,
    desc: String,
}

impl VolumeBackend {
    pub fn new(vol: Volume, desc: String) -> VolumeBackend {
        VolumeBackend { vol, desc }
    }
    pub fn volume(&self) -> &Volume {
        &self.vol
    }
}

impl BlockBackend for VolumeBackend {
    fn describe(&self) -> String {
        self.desc.clone()
    }
    fn size(&self) -> u64 {
        self.vol.size()
    }
    fn granularity(&self) -> u64 {
        self.vol.object_size()
    }
    fn read_only(&self) -> bool {
        self.vol.is_read_only()
    }
    fn read(&self, off: u64, len: usize) -> BoxFut<'_, BResult<Vec<u8>>> {
        Box::pin(async move { Ok(self.vol.read_at(off, len).await?) })
    }
    fn write(&self, off: u64, data: Bytes) -> BoxFut<'_, BResult<()>> {
        Box::pin(async move { Ok(self.vol.write_bytes(off, data).await?) })
    }
    fn flush(&self) -> BoxFut<'_, BResult<()>> {
        Box::pin(async move { Ok(self.vol.flush().await?) })
    }
    fn discard(&self, off: u64, len: u64) -> BoxFut<'_, BResult<()>> {
        Box::pin(async move { Ok(self.vol.discard(off, len).await?) })
    }
    fn block_status(&self, off: u64) -> (bool, u64) {
        let size = self.vol.size();
        if off >= size {
            return (false, 0);
        }
        let hole = self.vol.seek_hole(off).min(size);
        if hole > off {
            return (true, hole - off);
        }
        let data = self.vol.seek_data(off).unwrap_or(size).min(size);
        (false, data.saturating_sub(off).max(1))
    }
    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.vol.close().await {
                tracing::warn!(volume = %self.desc, error = %e, "closing volume");
            }
        })
    }
}

// ---- memory ------------------------------------------------------------------

/// Blocks in memory, allocated in `chunk`-sized units (like objects); used
/// by `mem:` LUNs and the unit tests. Can inject delays and failures.
pub struct MemBackend {
    size: u64,
    chunk: u64,
    read_only: bool,
    chunks: Mutex<HashMap<u64, Box<[u8]>>>,
    delay_ms: AtomicU64,
    fail: Mutex<Option<BackendError>>,
    pub flushes: AtomicU64,
}

impl MemBackend {
    pub fn new(size: u64, chunk: u64) -> MemBackend {
        MemBackend {
            size,
            chunk: chunk.max(512),
            read_only: false,
            chunks: Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            fail: Mutex::new(None),
            flushes: AtomicU64::new(0),
        }
    }
    pub fn read_only(mut self) -> MemBackend {
        self.read_only = true;
        self
    }
    /// Every I/O sleeps this long first (for abort and ordering tests).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
    /// Every I/O fails with this error while set.
    pub fn set_fail(&self, e: Option<BackendError>) {
        *self.fail.lock() = e;
    }
    pub fn allocated_chunks(&self) -> usize {
        self.chunks.lock().len()
    }

    async fn pre(&self) -> BResult<()> {
        let d = self.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        match self.fail.lock().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check(&self, off: u64, len: u64) -> BResult<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BackendError::OutOfRange),
        }
    }

    fn read_sync(&self, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let map = self.chunks.lock();
        let mut pos = 0usize;
        while pos < len {
            let o = off + pos as u64;
            let idx = o / self.chunk;
            let within = (o % self.chunk) as usize;
            let n = (self.chunk as usize - within).min(len - pos);
            if let Some(c) = map.get(&idx) {
                out[pos..pos + n].copy_from_slice(&c[within..within + n]);
            }
            pos += n;
        }
        out
    }

    fn write_sync(&self, off: u64, data: &[u8]) {
        let mut map = self.chunks.lock();
        let mut pos = 0usize;
        while pos < data.len() {
            let o = off + pos as u64;
            let idx = o / self.chunk;
            let within = (o % self.chunk) as usize;
            let n = (self.chunk as usize - within).min(data.len() - pos);
            let c = map
                .entry(idx)
                .or_insert_with(|| vec![0u8; self.chunk as usize].into_boxed_slice());
            c[within..within + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
    }
}

impl BlockBackend for MemBackend {
    fn describe(&self) -> String {
        format!("mem:{}", self.size)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn granularity(&self) -> u64 {
        self.chunk
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, off: u64, len: usize) -> BoxFut<'_, BResult<Vec<u8>>> {
        Box::pin(async move {
            self.pre().await?;
            self.check(off, len as u64)?;
            Ok(self.read_sync(off, len))
        })
    }
    fn write(&self, off: u64, data: Bytes) -> BoxFut<'_, BResult<()>> {
        Box::pin(async move {
            self.pre().await?;
            if self.read_only {
                return Err(BackendError::ReadOnly);
            }
            self.check(off, data.len() as u64)?;
            self.write_sync(off, &data);
            Ok(())
        })
    }
    fn flush(&self) -> BoxFut<'_, BResult<()>> {
        Box::pin(async move {
            self.pre().await?;
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
    fn discard(&self, off: u64, len: u64) -> BoxFut<'_, BResult<()>> {
        Box::pin(async move {
            self.pre().await?;
            if self.read_only {
                return Err(BackendError::ReadOnly);
            }
            self.check(off, len)?;
            let end = off + len;
            let mut o = off;
            while o < end {
                let idx = o / self.chunk;
                let cstart = idx * self.chunk;
                let cend = (cstart + self.chunk).min(self.size);
                let n = cend.min(end) - o;
                if o == cstart && o + n == cend {
                    self.chunks.lock().remove(&idx);
                } else if self.chunks.lock().contains_key(&idx) {
                    self.write_sync(o, &vec![0u8; n as usize]);
                }
                o += n;
            }
            Ok(())
        })
    }
    fn block_status(&self, off: u64) -> (bool, u64) {
        if off >= self.size {
            return (false, 0);
        }
        let map = self.chunks.lock();
        let first = map.contains_key(&(off / self.chunk));
        let mut idx = off / self.chunk + 1;
        while idx * self.chunk < self.size && map.contains_key(&idx) == first {
            idx += 1;
        }
        let end = (idx * self.chunk).min(self.size);
        (first, end - off)
    }
    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async {})
    }
}

// ---- ordering ------------------------------------------------------------------

/// Orders commands on one disk: a command waits for every earlier command
/// whose byte range overlaps its own, unless both only read. Reservations
/// are taken in command order (synchronously), then awaited.
#[derive(Default)]
pub struct OrderLock {
    inner: Mutex<OrderInner>,
    /// Woken when a reservation is dropped while another waits.
    released: Notify,
}

#[derive(Default)]
struct OrderInner {
    next: u64,
    held: Vec<Held>,
    /// Reservations waiting in [`Reservation::ready`].
    waiting: usize,
}

struct Held {
    id: u64,
    start: u64,
    end: u64,
    write: bool,
}

/// A place in the order; dropping it lets later overlapping commands run.
pub struct Reservation {
    lock: Arc<OrderLock>,
    id: u64,
    /// The earlier conflicting reservations.
    waits: Vec<u64>,
}

impl OrderLock {
    /// Reserves `[start, end)`; `write` = the command modifies it.
    /// `u64::MAX` as end makes a barrier over the whole disk.
    pub fn reserve(self: &Arc<Self>, start: u64, end: u64, write: bool) -> Reservation {
        let mut g = self.inner.lock();
        let waits = g
            .held
            .iter()
            .filter(|h| (h.write || write) && h.start < end && start < h.end)
            .map(|h| h.id)
            .collect();
        g.next += 1;
        let id = g.next;
        g.held.push(Held {
            id,
            start,
            end,
            write,
        });
        Reservation {
            lock: self.clone(),
            id,
            waits,
        }
    }

    pub fn held(&self) -> usize {
        self.inner.lock().held.len()
    }
}

impl Reservation {
    /// Waits until every earlier conflicting command has finished.
    pub async fn ready(&mut self) {
        while !self.waits.is_empty() {
            let woken = self.lock.released.notified();
            tokio::pin!(woken);
            // Registered before the check: a release after it wakes us.
            woken.as_mut().enable();
            {
                let mut g = self.lock.inner.lock();
                self.waits.retain(|w| g.held.iter().any(|h| h.id == *w));
                if self.waits.is_empty() {
                    return;
                }
                // Counted in the same critical section as the check, so a
                // release after it notifies.
                g.waiting += 1;
            }
            let _counted = Waiting(&self.lock);
            woken.await;
        }
    }
}

/// One reservation counted as waiting; uncounted when dropped (also when
/// the waiting future is).
struct Waiting<'a>(&'a OrderLock);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.inner.lock().waiting -= 1;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let notify = {
            let mut g = self.lock.inner.lock();
            if let Some(i) = g.held.iter().position(|h| h.id == self.id) {
                g.held.swap_remove(i);
            }
            g.waiting > 0
        };
        if notify {
            self.lock.released.notify_waiters();
        }
    }
}

// ---- disks and the registry -----------------------------------------------------

/// One VDI (or memory disk) as LUNs see it; shared by every LUN on it.
pub struct Disk {
    pub backend: Arc<dyn BlockBackend>,
    pub order: Arc<OrderLock>,
    /// 60-bit identifier for the NAA designator and the serial number.
    pub id: u64,
}

impl Disk {
    pub fn new(backend: Arc<dyn BlockBackend>, id: u64) -> Arc<Disk> {
        Arc::new(Disk {
            backend,
            order: Arc::new(OrderLock::default()),
            id: id & ((1 << 60) - 1),
        })
    }
}

/// (server, VDI name, snapshot as `:TAG`/`#ID` or empty).
type DiskKey = (SheepAddr, String, String);

/// Opens each VDI once, whatever number of LUNs and targets use it, and
/// closes it (releasing its lock) when the last of them goes.
pub struct Registry {
    client_opts: client::Options,
    clients: HashMap<SheepAddr, (Client, u64)>,
    /// Each disk with the number of LUNs holding it.
    disks: HashMap<DiskKey, (Arc<Disk>, usize)>,
    mem_disks: Vec<Arc<Disk>>,
    mem_opened: u64,
}

impl Registry {
    pub fn new(client_opts: client::Options) -> Registry {
        Registry {
            client_opts,
            clients: HashMap::new(),
            disks: HashMap::new(),
            mem_disks: Vec::new(),
            mem_opened: 0,
        }
    }

    /// The cluster's client and creation time (for stable device ids).
    async fn client(&mut self, addr: &SheepAddr) -> Result<(Client, u64), String> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let c = Client::connect(addr.clone(), self.client_opts.clone())
            .await
            .map_err(|e| e.to_string())?;
        let ctime = c
            .cluster_info()
            .await
            .map_err(|e| format!("sheep at {addr}: {e}"))?
            .ctime;
        self.clients.insert(addr.clone(), (c.clone(), ctime));
        Ok((c, ctime))
    }

    /// The disk behind `backing`, opened on first use; every call must be
    /// paired with one [`Registry::release`].
    pub async fn open(&mut self, backing: &Backing) -> Result<Arc<Disk>, String> {
        match backing {
            Backing::Memory { size } => {
                let id = fnv(&[b"mem", &self.mem_opened.to_le_bytes()]);
                self.mem_opened += 1;
                let d = Disk::new(Arc::new(MemBackend::new(*size, 4 << 20)), id);
                self.mem_disks.push(d.clone());
                Ok(d)
            }
            Backing::Sheep { addr, vdi, snap } => {
                let snap_key = match snap {
                    SnapSel::Working => String::new(),
                    SnapSel::Tag(t) => format!(":{t}"),
                    SnapSel::Id(n) => format!("#{n}"),
                };
                let key = (addr.clone(), vdi.clone(), snap_key);
                if let Some((d, users)) = self.disks.get_mut(&key) {
                    *users += 1;
                    return Ok(d.clone());
                }
                let (client, ctime) = self.client(addr).await?;
                let opts = OpenOptions {
                    snapshot: snap.clone(),
                    // Snapshots are immutable: any number of readers may share them.
                    lock: if snap.is_working() {
                        LockMode::Normal
                    } else {
                        LockMode::None
                    },
                    object_cache: true,
                    read_only: !snap.is_working(),
                    cache: None,
                    dog_requests: false,
                };
                let vol = Volume::open(client, vdi, opts)
                    .await
                    .map_err(|e| open_error(vdi, snap, addr, &e))?;
                // Stable across restarts and snapshots taken underneath: the
                // working VDI by name, a snapshot by its (immutable) vid.
                let id = match snap {
                    SnapSel::Working => fnv(&[b"w", &ctime.to_le_bytes(), vdi.as_bytes()]),
                    _ => fnv(&[b"s", &ctime.to_le_bytes(), &vol.vid().to_le_bytes()]),
                };
                let d = Disk::new(Arc::new(VolumeBackend::new(vol, backing.to_string())), id);
                self.disks.insert(key, (d.clone(), 1));
                Ok(d)
            }
        }
    }

    /// One user of `disk` is gone; the last closes it (releasing the VDI lock).
    pub async fn release(&mut self, disk: &Arc<Disk>) {
        if let Some(i) = self.mem_disks.iter().position(|d| Arc::ptr_eq(d, disk)) {
            self.mem_disks.swap_remove(i);
            return;
        }
        let key = self
            .disks
            .iter()
            .find(|(_, (d, _))| Arc::ptr_eq(d, disk))
            .map(|(k, _)| k.clone());
        let Some(key) = key else { return };
        let last = match self.disks.get_mut(&key) {
            Some((_, users)) => {
                *users = users.saturating_sub(1);
                *users == 0
            }
            None => false,
        };
        if last {
            self.disks.remove(&key);
            tracing::info!(volume = %disk.backend.describe(), "closing volume (no LUN uses it)");
            disk.backend.close().await;
        }
    }

    /// Closes every volume (releasing VDI locks) and client.
    pub async fn close_all(&mut self) {
        self.mem_disks.clear();
        for (_, (d, _)) in self.disks.drain() {
            d.backend.close().await;
        }
        for (_, (c, _)) in self.clients.drain() {
            c.close().await;
        }
    }
}

fn open_error(vdi: &str, snap: &SnapSel, addr: &SheepAddr, e: &client::Error) -> String {
    let what = match snap {
        SnapSel::Working => format!("VDI '{vdi}'"),
        SnapSel::Tag(t) => format!("snapshot '{t}' of VDI '{vdi}'"),
        SnapSel::Id(n) => format!("snapshot {n} of VDI '{vdi}'"),
    };
    match e.result() {
        Some(SdRes::NO_VDI) | Some(SdRes::NO_TAG) => format!("{what} not found on {addr}"),
        Some(SdRes::VDI_LOCKED) => format!("{what} on {addr} is locked by another client"),
        _ => format!("cannot open {what} on {addr}: {e}"),
    }
}

/// FNV-1a over the parts, each followed by 0xff (so ("ab","c") != ("a","bc")).
fn fnv(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .fold(FNV1A_64_INIT, |h, p| fnv1a_64(&[0xff], fnv1a_64(p, h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mem_backend_allocation() {
        let m = MemBackend::new(10 << 20, 1 << 20);
        assert_eq!(m.block_status(0), (false, 10 << 20));
        m.write((1 << 20) + 5, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(m.read((1 << 20) + 4, 5).await.unwrap(), b"\0abc\0");
        assert_eq!(m.block_status(0), (false, 1 << 20));
        assert_eq!(m.block_status(1 << 20), (true, 1 << 20));
        // Partial discard zeros, whole discard deallocates.
        m.discard((1 << 20) + 5, 1).await.unwrap();
        assert_eq!(m.read((1 << 20) + 4, 5).await.unwrap(), b"\0\0bc\0");
        assert_eq!(m.allocated_chunks(), 1);
        m.discard(1 << 20, 1 << 20).await.unwrap();
        assert_eq!(m.allocated_chunks(), 0);
        assert_eq!(
            m.write(10 << 20, Bytes::from_static(b"x")).await,
            Err(BackendError::OutOfRange)
        );
    }

    #[tokio::test]
    async fn order_lock_orders_overlaps_only() {
        let l = Arc::new(OrderLock::default());
        let a = l.reserve(0, 100, true);
        let mut b = l.reserve(50, 150, false); // overlaps a write
        let mut c = l.reserve(200, 300, true); // disjoint
        let mut d = l.reserve(60, 70, false); // read after read b, but also after write a
        c.ready().await;
        let mut bf = Box::pin(b.ready());
        assert!(futures_poll_once(&mut bf).await.is_none());
        assert_eq!(l.inner.lock().waiting, 1);
        drop(bf);
        // A wait given up is no longer counted.
        assert_eq!(l.inner.lock().waiting, 0);
        drop(a);
        b.ready().await;
        d.ready().await;
        drop((b, c, d));
        assert_eq!(l.held(), 0);
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(20), f)
            .await
            .ok()
    }

    #[test]
    fn disk_ids_are_stable() {
        // The device id and serial derive from it: it must never change.
        assert_eq!(
            fnv(&[b"w", &7u64.to_le_bytes(), b"vol"]),
            0x0ba1_b8c5_0cfd_5393
        );
    }

    #[test]
    fn client_errors_map() {
        assert_eq!(
            BackendError::from(client::Error::sheep(0, SdRes::READONLY)),
            BackendError::ReadOnly
        );
        assert_eq!(
            BackendError::from(client::Error::sheep(0, SdRes::NO_SPACE)),
            BackendError::NoSpace
        );
        assert!(matches!(
            BackendError::from(client::Error::Timeout {
                addr: "a".into(),
                op: "READ_OBJ",
                secs: 3
            }),
            BackendError::Unavailable(_)
        ));
    }
}
