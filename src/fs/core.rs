//! The filesystem core: the tree, open handles, control and state files,
//! attached volumes. Async and independent of FUSE, so tests drive it
//! directly; `fuse.rs` only translates kernel requests into these calls.

use super::control::{self, Line, VolumeSpec};
use super::error::{FsError, FsResult};
use super::readahead::{self, Budget, ReadAhead};
use super::text::{self, FuseParams, VolumeInfo};
use super::tree::{self, Attr, Control, Kind, StateFile, Static};
use crate::client::{self, Client, LockMode, ObjectCache, OpenOptions, Options, Volume};
use crate::dogfmt;
use crate::proto::{cluster_flags, SdRes};
use crate::util::logging::LogRing;
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// Default budget of the `-k` object cache.
pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;

const DIR_TTL: Duration = Duration::from_secs(1);
const VOLUME_TTL: Duration = Duration::from_secs(1);

/// How the filesystem was mounted (the command line, minus transport).
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// `-k`: object LRU in sheepfs plus the kernel page cache.
    pub page_cache: bool,
    /// `-o`: sheep's object cache (CMD_CACHE + FLUSH_VDI on fsync).
    pub object_cache: bool,
    /// Budget of the `-k` object cache in bytes.
    pub cache_size: u64,
    /// Attach every volume read-only (no VDI lock taken).
    pub read_only: bool,
    /// Owner shown for every file.
    pub uid: u32,
    pub gid: u32,
    /// Recent warnings and errors, shown in the `log` file.
    pub log: LogRing,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            page_cache: false,
            object_cache: false,
            cache_size: DEFAULT_CACHE_SIZE,
            read_only: false,
            uid: 0,
            gid: 0,
            log: LogRing::default(),
        }
    }
}

/// How the kernel should treat an opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub direct_io: bool,
    pub keep_cache: bool,
    pub parallel_direct_writes: bool,
}

/// Cache invalidation in the kernel (the FUSE notifier); absent in tests
/// that drive the core without a mount.
pub trait Invalidator: Send + Sync {
    /// Drops cached pages of `ino`.
    fn inval_inode(&self, ino: u64);
}

/// One attached VDI: `volume/<file>` and `stats/<file>`.
pub struct Attached {
    pub file: String,
    pub spec: VolumeSpec,
    pub ino: u64,
    pub vol: Arc<Volume>,
    pub read_only: bool,
    /// Opened with the `-k` object cache.
    pub client_cache: bool,
    pub attached_at: SystemTime,
    /// Whether sheep enforces the VDI lock we hold (clusters formatted
    /// with `-l`); read-only attachments take none.
    pub locking: Locking,
    /// Last write, discard or resize through this mount (ns since the epoch).
    modified: AtomicU64,
    open: AtomicUsize,
    fsyncs: AtomicU64,
    discards: AtomicU64,
    /// Read-only attachments of a working VDI take no lock, so others may
    /// write it: when was the inode map last read.
    refreshed: Option<parking_lot::Mutex<Instant>>,
    ahead: ReadAhead,
}

/// How stale the map of a read-only working attachment may get before a
/// read of an unallocated range re-reads it.
const RO_REFRESH: Duration = Duration::from_secs(1);

impl Attached {
    /// EROFS for a volume attached read-only (a snapshot, or --read-only).
    fn check_writable(&self) -> FsResult<()> {
        if self.read_only {
            return Err(FsError::new(
                libc::EROFS,
                format!("volume {} is read-only", self.file),
            ));
        }
        Ok(())
    }

    pub fn open_files(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Marks the content changed now (mtime/ctime of the volume file).
    fn touch(&self) {
        self.modified
            .store(unix_nanos(SystemTime::now()), Ordering::Relaxed);
    }

    fn modified(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.modified.load(Ordering::Relaxed))
    }

    fn stats_text(&self, object_cache: bool) -> Vec<u8> {
        let info = VolumeInfo {
            file: &self.file,
            vdi: &self.spec.vdi,
            sel: &self.spec.sel,
            vid: self.vol.vid(),
            size: self.vol.size(),
            object_size: self.vol.object_size(),
            read_only: self.read_only,
            client_cache: self.client_cache,
            object_cache,
            open_files: self.open_files(),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            discards: self.discards.load(Ordering::Relaxed),
            locking: self.locking.as_str(),
        };
        text::volume_stats(&info, &self.vol.stats()).into_bytes()
    }
}

/// Whether the lock of an attachment means anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// sheep enforces it: no other client can attach the VDI read-write.
    On,
    /// The cluster was formatted without `-l`: the lock is not enforced.
    Off,
    /// Read-only attachment: no lock taken.
    None,
}

impl Locking {
    pub fn as_str(self) -> &'static str {
        match self {
            Locking::On => "on",
            Locking::Off => "off",
            Locking::None => "none (read-only)",
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Options of a one-shot probe client: one connection, no retrying, at
/// most 10 s for the answer.
pub fn probe_options(o: &Options) -> Options {
    Options {
        connections: 1,
        retry_timeout: Duration::ZERO,
        request_timeout: o.request_timeout.min(Duration::from_secs(10)),
        ..o.clone()
    }
}

/// What a sheep said when probed (see [`probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// false: "Waiting for cluster to be formatted".
    pub formatted: bool,
}

/// Checks that `client`'s address is a sheep: it must answer STAT_CLUSTER
/// (any result; an unformatted cluster is a sheep too). A port that merely
/// accepts TCP (an iSCSI portal, a web server) is refused. The errno says
/// why: the connect errno, ETIMEDOUT (no answer) or EPROTO (not a sheep).
pub async fn probe(client: &Client) -> FsResult<Probe> {
    let addr = client.addr();
    match client.stat_cluster(0, 1).await {
        Ok((res, _, _)) => Ok(Probe {
            formatted: res != SdRes::WAIT_FOR_FORMAT,
        }),
        Err(client::Error::Connect { source, .. }) => Err(FsError::new(
            source.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot connect to sheep at {addr}: {source}; is sheep running there?"),
        )),
        Err(client::Error::Timeout { secs, .. }) => Err(FsError::new(
            libc::ETIMEDOUT,
            format!(
                "{addr} accepted a connection but did not answer a sheep request within                  {secs} s; is it a sheep's port (default 7000)?"
            ),
        )),
        Err(e) => Err(FsError::new(
            libc::EPROTO,
            format!(
                "{addr} does not answer as a sheep ({}); is it a sheep's port (default 7000)?",
                short_cause(&e)
            ),
        )),
    }
}

/// The cause of a transport error without the address it already names.
fn short_cause(e: &client::Error) -> String {
    match e {
        client::Error::Io { source, .. } => source.to_string(),
        client::Error::Protocol { what, .. } => what.clone(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct Volumes {
    by_name: BTreeMap<String, Arc<Attached>>,
    by_ino: HashMap<u64, Arc<Attached>>,
    next_ino: u64,
}

enum Handle {
    /// A snapshot of generated text, taken at open, so that every read of
    /// this open sees the same bytes whatever its offset (shared by the
    /// opens that shared its render).
    Text(Bytes),
    Volume(Arc<Attached>),
}

/// A render of a state file, shared by the opens that wait for it. An error
/// is kept as errno and message (the client error inside is not `Clone`).
type Render = tokio::sync::OnceCell<Result<Bytes, (i32, String)>>;

/// One state file's renders: the length of the last one, which is what
/// `stat` shows (rendering costs a cluster scan, so getattr never does),
/// and the one in flight, which concurrent opens share.
#[derive(Default)]
struct RenderSlot {
    last_len: u64,
    inflight: Option<Arc<Render>>,
}

pub struct FsCore {
    client: Client,
    opts: FsOptions,
    page_cache: AtomicBool,
    object_cache: AtomicBool,
    cache: Arc<ObjectCache>,
    volumes: RwLock<Volumes>,
    /// Serialises attach/detach (each does network I/O; they are rare).
    attach_lock: tokio::sync::Mutex<()>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    /// State files by inode.
    renders: parking_lot::Mutex<HashMap<u64, RenderSlot>>,
    next_fh: AtomicU64,
    mounted_at: SystemTime,
    fuse: RwLock<FuseParams>,
    invalidator: RwLock<Option<Arc<dyn Invalidator>>>,
    /// Whether the cluster enforces VDI locks (asked once, at the first
    /// read-write attach).
    cluster_locking: tokio::sync::OnceCell<bool>,
    warned_no_locking: AtomicBool,
    /// Memory that read-ahead may hold across all volumes.
    ahead_budget: Arc<Budget>,
}

/// `size` bytes at `off` of a text (shared, not copied).
fn slice_at(t: &Bytes, off: u64, size: u32) -> Bytes {
    let start = usize::try_from(off).unwrap_or(usize::MAX).min(t.len());
    let end = start.saturating_add(size as usize).min(t.len());
    t.slice(start..end)
}

fn flag_text(on: bool) -> Vec<u8> {
    if on {
        b"1\n".to_vec()
    } else {
        b"0\n".to_vec()
    }
}

impl FsCore {
    pub fn new(client: Client, opts: FsOptions) -> FsCore {
        FsCore {
            page_cache: AtomicBool::new(opts.page_cache),
            object_cache: AtomicBool::new(opts.object_cache),
            cache: Arc::new(ObjectCache::new(opts.cache_size)),
            client,
            opts,
            volumes: RwLock::new(Volumes {
                next_ino: tree::FIRST_DYNAMIC,
                ..Default::default()
            }),
            attach_lock: tokio::sync::Mutex::new(()),
            handles: RwLock::new(HashMap::new()),
            renders: parking_lot::Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
            fuse: RwLock::new(FuseParams::default()),
            invalidator: RwLock::new(None),
            cluster_locking: tokio::sync::OnceCell::new(),
            warned_no_locking: AtomicBool::new(false),
            ahead_budget: Arc::new(Budget::new(readahead::BUDGET)),
        }
    }

    pub fn set_fuse_params(&self, p: FuseParams) {
        *self.fuse.write() = p;
    }

    pub fn set_invalidator(&self, inv: Arc<dyn Invalidator>) {
        *self.invalidator.write() = Some(inv);
    }

    pub fn page_cache(&self) -> bool {
        self.page_cache.load(Ordering::Acquire)
    }

    pub fn object_cache(&self) -> bool {
        self.object_cache.load(Ordering::Acquire)
    }

    /// Names of the attached volumes (as under `volume/`), sorted.
    pub fn attached(&self) -> Vec<String> {
        self.volumes.read().by_name.keys().cloned().collect()
    }

    pub fn volume(&self, file: &str) -> Option<Arc<Attached>> {
        self.volumes.read().by_name.get(file).cloned()
    }

    fn volume_by_ino(&self, ino: u64) -> Option<Arc<Attached>> {
        self.volumes.read().by_ino.get(&(ino & !1)).cloned()
    }

    // ------------------------------------------------------------ attributes

    fn attr(&self, ino: u64, kind: Kind, size: u64, perm: u16, ttl: Duration) -> Attr {
        Attr {
            ino,
            kind,
            size,
            perm,
            blksize: 4096,
            uid: self.opts.uid,
            gid: self.opts.gid,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            stored: None,
            ttl,
        }
    }

    fn volume_attr(&self, a: &Attached) -> Attr {
        let mut at = self.attr(
            a.ino,
            Kind::File,
            a.vol.size(),
            if a.read_only { 0o444 } else { 0o644 },
            VOLUME_TTL,
        );
        at.blksize = u32::try_from(a.vol.object_size()).unwrap_or(u32::MAX);
        // What `du` shows matches the Used column of `vdi list`.
        at.stored = Some(a.vol.own_objects().saturating_mul(a.vol.object_size()));
        at.mtime = a.modified();
        at.ctime = at.mtime;
        at
    }

    /// Generates the current content of a static file.
    async fn static_text(&self, ino: u64, kind: Static) -> FsResult<Vec<u8>> {
        match kind {
            Static::Dir => Err(FsError::new(libc::EISDIR, "is a directory")),
            Static::State(f, json) => self.state_text(f, json).await,
            Static::Control(c) => Ok(self.control_text(c)),
        }
        .map_err(|e| {
            if e.errno() == libc::EISDIR {
                e
            } else {
                FsError::new(e.errno(), format!("{}: {e}", self.path_of(ino)))
            }
        })
    }

    /// Renders a state file for an open: joins the render in flight if there
    /// is one, else starts one (so each open sees the cluster as it was at
    /// or after the open), and records its length for `stat`.
    async fn render_state(&self, ino: u64, kind: Static) -> FsResult<Bytes> {
        let cell = self
            .renders
            .lock()
            .entry(ino)
            .or_default()
            .inflight
            .get_or_insert_with(Default::default)
            .clone();
        let res = cell
            .get_or_init(|| async {
                self.static_text(ino, kind)
                    .await
                    .map(Bytes::from)
                    .map_err(|e| (e.errno(), e.to_string()))
            })
            .await
            .clone();
        if let Some(slot) = self.renders.lock().get_mut(&ino) {
            // The first waiter to finish retires the render, so that a later
            // open starts a new one.
            if slot
                .inflight
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                slot.inflight = None;
                if let Ok(t) = &res {
                    slot.last_len = t.len() as u64;
                }
            }
        }
        res.map_err(|(errno, msg)| FsError::new(errno, msg))
    }

    /// Length of the last render of a state file (0 before the first).
    fn last_render_len(&self, ino: u64) -> u64 {
        self.renders.lock().get(&ino).map_or(0, |s| s.last_len)
    }

    async fn state_text(&self, f: StateFile, json: bool) -> FsResult<Vec<u8>> {
        let c = &self.client;
        let r = match (f, json) {
            (StateFile::ClusterInfo, false) => dogfmt::cluster_info(c, false, false).await,
            (StateFile::ClusterInfo, true) => dogfmt::cluster_info_json(c).await,
            (StateFile::VdiList, false) => dogfmt::vdi_list(c, false, None).await,
            (StateFile::VdiList, true) => dogfmt::vdi_list_json(c).await,
            (StateFile::NodeList, false) => dogfmt::node_list(c, false).await,
            (StateFile::NodeList, true) => dogfmt::node_list_json(c).await,
            (StateFile::NodeInfo, false) => dogfmt::node_info(c, false).await,
            (StateFile::NodeInfo, true) => dogfmt::node_info_json(c).await,
            (StateFile::Fuse, _) => Ok(self.fuse.read().render(self.page_cache())),
            (StateFile::Log, _) => Ok(self.opts.log.text()),
        };
        match r {
            Ok(t) => Ok(t.into_bytes()),
            // What dog prints on a cluster that is not formatted yet.
            Err(e) if e.is(SdRes::WAIT_FOR_FORMAT) || self.unformatted().await => {
                Ok(format!("{}\n", client::Error::sheep(0, SdRes::WAIT_FOR_FORMAT)).into_bytes())
            }
            Err(e) => Err(FsError::client("cannot produce it", e)),
        }
    }

    /// Is the cluster waiting to be formatted? (Asked only after a state
    /// file failed, to explain why.)
    async fn unformatted(&self) -> bool {
        matches!(self.client.stat_cluster(0, 1).await, Ok((r, _, _)) if r == SdRes::WAIT_FOR_FORMAT)
    }

    fn control_text(&self, c: Control) -> Vec<u8> {
        match c {
            Control::VdiMount => {
                let mut s = String::new();
                for name in self.volumes.read().by_name.keys() {
                    s.push_str(name);
                    s.push('\n');
                }
                s.into_bytes()
            }
            Control::VdiUnmount => Vec::new(),
            Control::PageCache => flag_text(self.page_cache()),
            Control::ObjectCache => flag_text(self.object_cache()),
            Control::SheepInfo => format!("{}\n", self.client.addr()).into_bytes(),
        }
    }

    /// EACCES for writing a file that only reads.
    fn read_only_file(&self, ino: u64) -> FsError {
        FsError::new(libc::EACCES, format!("{} is read-only", self.path_of(ino)))
    }

    /// `dir/name` of a fixed inode, for messages.
    fn path_of(&self, ino: u64) -> String {
        match tree::entry(ino) {
            Some(e) if e.ino != tree::ROOT => match tree::entry(e.parent) {
                Some(p) if p.ino != tree::ROOT => format!("{}/{}", p.name, e.name),
                _ => e.name.to_string(),
            },
            Some(_) => "/".into(),
            None => match self.volume_by_ino(ino) {
                Some(a) if tree::is_stats_ino(ino) => format!("stats/{}", a.file),
                Some(a) => format!("volume/{}", a.file),
                None => format!("inode {ino}"),
            },
        }
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(e) = tree::entry(ino) {
            return match e.kind {
                Static::Dir => Ok(self.attr(ino, Kind::Dir, 0, 0o755, DIR_TTL)),
                Static::State(..) => {
                    let len = self.last_render_len(ino);
                    Ok(self.attr(ino, Kind::File, len, 0o444, Duration::ZERO))
                }
                Static::Control(c) => {
                    let perm = if c == Control::VdiUnmount {
                        0o200
                    } else {
                        0o644
                    };
                    let len = self.control_text(c).len() as u64;
                    Ok(self.attr(ino, Kind::File, len, perm, Duration::ZERO))
                }
            };
        }
        let a = self
            .volume_by_ino(ino)
            .ok_or_else(|| FsError::quiet(libc::ENOENT, format!("no inode {ino} (detached?)")))?;
        if tree::is_stats_ino(ino) {
            let len = a.stats_text(self.object_cache()).len() as u64;
            let mut at = self.attr(ino, Kind::File, len, 0o444, Duration::ZERO);
            at.mtime = a.attached_at;
            Ok(at)
        } else {
            Ok(self.volume_attr(&a))
        }
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        if parent == tree::DIR_VOLUME || parent == tree::DIR_STATS {
            let a = self.volume(name).ok_or_else(|| {
                FsError::quiet(libc::ENOENT, format!("no volume '{name}' is attached"))
            })?;
            let ino = if parent == tree::DIR_STATS {
                a.ino + 1
            } else {
                a.ino
            };
            return self.getattr(ino).await;
        }
        match tree::entry(parent) {
            Some(e) if e.kind == Static::Dir => {}
            Some(_) => return Err(FsError::quiet(libc::ENOTDIR, "not a directory")),
            None if self.volume_by_ino(parent).is_some() => {
                return Err(FsError::quiet(libc::ENOTDIR, "not a directory"))
            }
            None => return Err(FsError::quiet(libc::ENOENT, format!("no inode {parent}"))),
        }
        let e = tree::child(parent, name)
            .ok_or_else(|| FsError::quiet(libc::ENOENT, format!("no file '{name}'")))?;
        self.getattr(e.ino).await
    }

    /// Entries of a directory, including `.` and `..`.
    pub fn readdir(&self, ino: u64) -> FsResult<Vec<(u64, Kind, String)>> {
        let e = match tree::entry(ino) {
            Some(e) if e.kind == Static::Dir => e,
            Some(_) => return Err(FsError::quiet(libc::ENOTDIR, "not a directory")),
            None => return Err(FsError::quiet(libc::ENOENT, format!("no inode {ino}"))),
        };
        let mut v = vec![
            (ino, Kind::Dir, ".".to_string()),
            (e.parent, Kind::Dir, "..".to_string()),
        ];
        if ino == tree::DIR_VOLUME || ino == tree::DIR_STATS {
            let off = u64::from(ino == tree::DIR_STATS);
            for (name, a) in &self.volumes.read().by_name {
                v.push((a.ino + off, Kind::File, name.clone()));
            }
        } else {
            for c in tree::children(ino) {
                let k = if c.kind == Static::Dir {
                    Kind::Dir
                } else {
                    Kind::File
                };
                v.push((c.ino, k, c.name.to_string()));
            }
        }
        Ok(v)
    }

    // ------------------------------------------------------------ open files

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, format!("no open file handle {fh}")))
    }

    /// `flags`: the open(2) flags.
    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let text = |fh| Opened {
            fh,
            direct_io: true,
            keep_cache: false,
            parallel_direct_writes: false,
        };
        if let Some(e) = tree::entry(ino) {
            return match e.kind {
                Static::Dir => Err(FsError::new(libc::EISDIR, "is a directory")),
                Static::State(..) if write => Err(self.read_only_file(ino)),
                Static::State(..) => {
                    let t = self.render_state(ino, e.kind).await?;
                    Ok(text(self.add_handle(Handle::Text(t))))
                }
                // Control files are opened direct_io so that every write
                // reaches us as written and its result (errno, or a short
                // count) reaches the writer.
                _ => {
                    let t = self.static_text(ino, e.kind).await?;
                    Ok(text(self.add_handle(Handle::Text(t.into()))))
                }
            };
        }
        let a = self
            .volume_by_ino(ino)
            .ok_or_else(|| FsError::new(libc::ENOENT, format!("no inode {ino} (detached?)")))?;
        if tree::is_stats_ino(ino) {
            if write {
                return Err(FsError::new(
                    libc::EACCES,
                    format!("stats/{} is read-only", a.file),
                ));
            }
            let t = a.stats_text(self.object_cache());
            return Ok(text(self.add_handle(Handle::Text(t.into()))));
        }
        if write {
            a.check_writable()?;
        }
        if flags & libc::O_TRUNC != 0 {
            tracing::debug!(volume = %a.file, "O_TRUNC ignored: a volume keeps its size");
        }
        {
            // Counted under the volumes lock so detach sees every open.
            let _g = self.volumes.read();
            if self.volume_by_ino_locked(&_g, ino).is_none() {
                return Err(FsError::new(
                    libc::ENOENT,
                    format!("volume {} was detached", a.file),
                ));
            }
            a.open.fetch_add(1, Ordering::AcqRel);
        }
        let page_cache = self.page_cache();
        let fh = self.add_handle(Handle::Volume(a));
        Ok(Opened {
            fh,
            direct_io: !page_cache,
            keep_cache: page_cache,
            parallel_direct_writes: true,
        })
    }

    fn volume_by_ino_locked(&self, v: &Volumes, ino: u64) -> Option<Arc<Attached>> {
        v.by_ino.get(&(ino & !1)).cloned()
    }

    pub fn release(&self, fh: u64) {
        if let Some(h) = self.handles.write().remove(&fh) {
            if let Handle::Volume(a) = &*h {
                if a.open.fetch_sub(1, Ordering::AcqRel) == 1 {
                    a.ahead.clear();
                }
            }
        }
    }

    pub async fn read(&self, ino: u64, fh: u64, off: u64, size: u32) -> FsResult<Bytes> {
        match &*self.handle(fh)? {
            Handle::Text(t) => Ok(slice_at(t, off, size)),
            Handle::Volume(a) => {
                debug_assert_eq!(a.ino, ino);
                self.refresh_if_stale(a, off, size).await?;
                // Not for volumes that others may write (see readahead).
                if a.refreshed.is_none() {
                    let ahead = a.ahead.read(&a.vol, &self.ahead_budget, off, size);
                    if let Some(d) = ahead.await {
                        return Ok(d);
                    }
                }
                a.vol.read_bytes(off, size as usize).await.map_err(|e| {
                    FsError::client(
                        format_args!("read of {size} bytes at {off} from volume {}", a.file),
                        e,
                    )
                })
            }
        }
    }

    /// A read-only attachment of a working VDI holds no lock, so another
    /// client may allocate objects that our map still shows as holes: a read
    /// touching a hole re-reads the map if it is older than [`RO_REFRESH`].
    async fn refresh_if_stale(&self, a: &Attached, off: u64, size: u32) -> FsResult<()> {
        let Some(r) = &a.refreshed else {
            return Ok(());
        };
        let end = off.saturating_add(size as u64).min(a.vol.size());
        // The clock first: seek_hole walks the map, which reads need not pay for.
        if off >= end || r.lock().elapsed() < RO_REFRESH || a.vol.seek_hole(off) >= end {
            return Ok(());
        }
        a.vol.reload().await.map_err(|e| {
            FsError::client(format_args!("re-reading the inode of volume {}", a.file), e)
        })?;
        *r.lock() = Instant::now();
        Ok(())
    }

    /// Returns the number of bytes consumed. The data goes to the socket as
    /// it is (no copy on the way).
    pub async fn write(
        &self,
        ino: u64,
        fh: u64,
        off: u64,
        data: impl Into<Bytes>,
    ) -> FsResult<u32> {
        let mut data: Bytes = data.into();
        if let Some(e) = tree::entry(ino) {
            return match e.kind {
                Static::Control(c) => self.control_write(c, &data).await,
                _ => Err(self.read_only_file(ino)),
            };
        }
        let h = self.handle(fh)?;
        let a = match &*h {
            Handle::Volume(a) => a,
            Handle::Text(_) => return Err(self.read_only_file(ino)),
        };
        a.check_writable()?;
        let size = a.vol.size();
        if off >= size {
            return Err(FsError::new(
                libc::ENOSPC,
                format!(
                    "write of {} bytes at {off} is beyond the end of volume {} ({size} bytes)",
                    data.len(),
                    a.file
                ),
            ));
        }
        // A write crossing the end stores what fits and says so (short
        // count), as a block device does; the next write gets ENOSPC.
        let n = data
            .len()
            .min(usize::try_from(size - off).unwrap_or(usize::MAX));
        data.truncate(n);
        let _change = a.ahead.change();
        a.vol.write_bytes(off, data).await.map_err(|e| {
            FsError::client(
                format_args!("write of {n} bytes at {off} to volume {}", a.file),
                e,
            )
        })?;
        a.touch();
        Ok(n as u32)
    }

    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        let Some(a) = self.volume_by_ino(ino).filter(|_| tree::is_volume_ino(ino)) else {
            return Ok(());
        };
        a.fsyncs.fetch_add(1, Ordering::Relaxed);
        a.vol
            .flush()
            .await
            .map_err(|e| FsError::client(format_args!("fsync of volume {}", a.file), e))
    }

    /// `truncate`: a volume can grow (the VDI is resized) but not shrink.
    /// Other attribute changes (mode, times) are accepted and ignored.
    pub async fn setattr(&self, ino: u64, size: Option<u64>) -> FsResult<Attr> {
        if let Some(new) = size {
            if let Some(e) = tree::entry(ino) {
                match e.kind {
                    Static::Dir => return Err(FsError::new(libc::EISDIR, "is a directory")),
                    Static::State(..) => return Err(self.read_only_file(ino)),
                    // So that `echo x > vdi/mount` works on kernels that send
                    // a truncate for O_TRUNC.
                    Static::Control(_) => {}
                }
            } else if tree::is_stats_ino(ino) {
                return Err(self.read_only_file(ino));
            } else if let Some(a) = self.volume_by_ino(ino) {
                self.resize(&a, new).await?;
            }
        }
        self.getattr(ino).await
    }

    async fn resize(&self, a: &Attached, new: u64) -> FsResult<()> {
        let size = a.vol.size();
        if new == size {
            return Ok(());
        }
        a.check_writable()?;
        if new < size {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "cannot shrink volume {} from {size} to {new} bytes (VDIs only grow)",
                    a.file
                ),
            ));
        }
        let _change = a.ahead.change();
        a.vol.resize(new).await.map_err(|e| {
            FsError::client(
                format_args!("resize of volume {} from {size} to {new} bytes", a.file),
                e,
            )
        })?;
        a.touch();
        info!(volume = %a.file, old = size, new, "volume resized");
        Ok(())
    }

    /// `fallocate`: PUNCH_HOLE (with KEEP_SIZE) discards, ZERO_RANGE zeroes;
    /// whole objects are dropped, partial ones written with zeros. Plain
    /// preallocation is not offered (thin VDIs cannot reserve space).
    pub async fn fallocate(&self, ino: u64, off: u64, len: u64, mode: i32) -> FsResult<()> {
        let a = self
            .volume_by_ino(ino)
            .filter(|_| tree::is_volume_ino(ino))
            .ok_or_else(|| {
                FsError::quiet(libc::EOPNOTSUPP, "fallocate is only supported on volumes")
            })?;
        const KNOWN: i32 =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode & !KNOWN != 0 || punch == zero {
            return Err(FsError::quiet(
                libc::EOPNOTSUPP,
                format!(
                    "fallocate mode {mode:#x} is not supported on volume {}",
                    a.file
                ),
            ));
        }
        if punch && mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            return Err(FsError::new(
                libc::EINVAL,
                "PUNCH_HOLE needs KEEP_SIZE".to_string(),
            ));
        }
        a.check_writable()?;
        let size = a.vol.size();
        let end = off.saturating_add(len);
        if end > size && zero && mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            return Err(FsError::new(
                libc::EFBIG,
                format!(
                    "zeroing up to {end} would grow volume {} ({size} bytes); truncate it first",
                    a.file
                ),
            ));
        }
        let end = end.min(size);
        if off >= end {
            return Ok(());
        }
        a.discards.fetch_add(1, Ordering::Relaxed);
        let change = a.ahead.change();
        let r = if punch {
            a.vol.discard(off, end - off).await
        } else {
            a.vol.write_zeroes(off, end - off).await
        };
        drop(change);
        a.touch();
        r.map_err(|e| {
            FsError::client(
                format_args!(
                    "{} of {} bytes at {off} on volume {}",
                    if punch { "discard" } else { "zeroing" },
                    end - off,
                    a.file
                ),
                e,
            )
        })
    }

    /// `lseek` with SEEK_DATA / SEEK_HOLE, answered from the inode map.
    pub async fn lseek(&self, ino: u64, off: i64, whence: i32) -> FsResult<i64> {
        let a = self
            .volume_by_ino(ino)
            .filter(|_| tree::is_volume_ino(ino))
            .ok_or_else(|| FsError::quiet(libc::EINVAL, "SEEK_DATA/SEEK_HOLE only on volumes"))?;
        let size = a.vol.size();
        let off =
            u64::try_from(off).map_err(|_| FsError::quiet(libc::EINVAL, "negative offset"))?;
        if off >= size {
            return Err(FsError::quiet(libc::ENXIO, "offset at or past the end"));
        }
        let r = match whence {
            libc::SEEK_DATA => a
                .vol
                .seek_data(off)
                .ok_or_else(|| FsError::quiet(libc::ENXIO, "no data after offset"))?,
            libc::SEEK_HOLE => a.vol.seek_hole(off),
            _ => return Err(FsError::quiet(libc::EINVAL, format!("whence {whence}"))),
        };
        Ok(r.min(size) as i64)
    }

    /// (total bytes, free bytes) of the sheep we talk to.
    pub async fn statfs(&self) -> FsResult<(u64, u64)> {
        match self.client.stat_sheep().await {
            // Nothing stored yet: `df` shows an empty filesystem.
            Err(e) if e.is(SdRes::WAIT_FOR_FORMAT) => Ok((0, 0)),
            r => r.map_err(|e| FsError::client("statfs", e)),
        }
    }

    // ------------------------------------------------------------ control files

    async fn control_write(&self, c: Control, data: &[u8]) -> FsResult<u32> {
        match c {
            Control::VdiMount => self.for_each_line(data, true).await,
            Control::VdiUnmount => self.for_each_line(data, false).await,
            Control::PageCache => {
                let on = control::parse_flag(data, "config/page_cache")?;
                self.set_page_cache(on);
                Ok(data.len() as u32)
            }
            Control::ObjectCache => {
                let on = control::parse_flag(data, "config/object_cache")?;
                self.set_object_cache(on).await?;
                Ok(data.len() as u32)
            }
            Control::SheepInfo => {
                let addr = control::parse_addr(data)?;
                self.set_sheep(addr).await?;
                Ok(data.len() as u32)
            }
        }
    }

    /// Attaches (or detaches) every name in `data`, one per line. If a line
    /// fails after others succeeded, the write is short: it reports the
    /// bytes of the lines done, so the writer retries the rest and then sees
    /// the error.
    async fn for_each_line(&self, data: &[u8], attach: bool) -> FsResult<u32> {
        let lines: Vec<Line<'_>> = control::lines(data)?;
        let mut done = 0usize;
        for l in lines {
            let r = match VolumeSpec::parse(l.text) {
                Ok(spec) if attach => self.attach(&spec).await,
                Ok(spec) => self.detach(&spec).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => done = l.end,
                Err(e) if done == 0 => return Err(e),
                Err(e) => {
                    e.log();
                    return Ok(done as u32);
                }
            }
        }
        Ok(data.len() as u32)
    }

    /// Attaches a VDI as `volume/<file>`: the working VDI with the VDI lock,
    /// or a snapshot read-only. Already attached: nothing to do.
    pub async fn attach(&self, spec: &VolumeSpec) -> FsResult<()> {
        let file = spec.file_name();
        let _g = self.attach_lock.lock().await;
        if self.volume(&file).is_some() {
            return Ok(());
        }
        let read_only = spec.is_snapshot() || self.opts.read_only;
        let locking = if read_only {
            Locking::None
        } else if self.cluster_locks().await {
            Locking::On
        } else {
            Locking::Off
        };
        let client_cache = self.page_cache();
        let opts = OpenOptions {
            snapshot: spec.sel.clone(),
            // A read-only attachment does not keep writers out.
            lock: if read_only {
                LockMode::None
            } else {
                LockMode::Normal
            },
            object_cache: self.object_cache(),
            read_only,
            cache: client_cache.then(|| self.cache.clone()),
            dog_requests: false,
        };
        let vol = match Volume::open(self.client.clone(), &spec.vdi, opts).await {
            Ok(v) => Arc::new(v),
            Err(e) if e.is(SdRes::VDI_LOCKED) => return Err(self.locked_error(spec).await),
            Err(e) => return Err(FsError::client(format_args!("attach of VDI '{file}'"), e)),
        };
        // The -k cache skips objects too big for it: say so instead of
        // showing it on in stats/.
        let client_cache = client_cache && vol.cache().is_some();
        if self.page_cache() && !client_cache {
            warn!(
                "volume {file}: its objects ({} bytes) are too big for the -k cache \
                 ({} bytes, which must hold 4); it is not cached (raise --cache-size)",
                vol.object_size(),
                self.opts.cache_size
            );
        }
        let a = {
            let mut v = self.volumes.write();
            let ino = v.next_ino;
            v.next_ino += 2;
            let a = Arc::new(Attached {
                file: file.clone(),
                spec: spec.clone(),
                ino,
                vol: vol.clone(),
                read_only: read_only || vol.is_read_only(),
                client_cache,
                attached_at: SystemTime::now(),
                locking,
                modified: AtomicU64::new(unix_nanos(SystemTime::now())),
                open: AtomicUsize::new(0),
                fsyncs: AtomicU64::new(0),
                discards: AtomicU64::new(0),
                refreshed: (read_only && !spec.is_snapshot())
                    .then(|| parking_lot::Mutex::new(Instant::now())),
                ahead: ReadAhead::default(),
            });
            v.by_name.insert(file.clone(), a.clone());
            v.by_ino.insert(ino, a.clone());
            a
        };
        info!(
            volume = %file,
            vid = format_args!("{:x}", vol.vid()),
            size = vol.size(),
            object_size = vol.object_size(),
            read_only = a.read_only,
            "attached"
        );
        Ok(())
    }

    /// Does the cluster enforce VDI locks (formatted with `-l`)? Asked once;
    /// the first read-write attach on a cluster without locking warns.
    async fn cluster_locks(&self) -> bool {
        // Remembered only once known: an unformatted cluster (ctime 0) or
        // a failed request is asked again next time; meanwhile the attach
        // itself reports any real trouble.
        let known = self
            .cluster_locking
            .get_or_try_init(|| async {
                match self.client.cluster_info().await {
                    Ok(ci) if ci.ctime != 0 => Ok(ci.flags & cluster_flags::USE_LOCK != 0),
                    Ok(_) => Err(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot ask whether the cluster locks VDIs");
                        Err(())
                    }
                }
            })
            .await;
        let on = known.map_or(true, |&on| on);
        if !on && !self.warned_no_locking.swap(true, Ordering::AcqRel) {
            warn!(
                "the cluster at {} was formatted without VDI locking (-l): nothing stops \
                 another client from attaching the same VDI read-write and corrupting it \
                 (stats/NAME shows 'locking: off'); format new clusters with \
                 `sheepctl cluster format -l`",
                self.client.addr()
            );
        }
        on
    }

    /// EBUSY for a VDI locked by someone else: who (as far as sheep
    /// knows) and how to recover if that client is gone.
    async fn locked_error(&self, spec: &VolumeSpec) -> FsError {
        let vdi = &spec.vdi;
        let holder = match self.client.vdi_lookup(vdi, &spec.sel).await {
            Ok(id) => match self.client.vdi_copies().await {
                Ok(states) => states
                    .iter()
                    .find(|s| s.vid == id.vid)
                    .map(|s| s.lock_owner.to_addr_port()),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let by = match holder {
            Some(h) => format!("locked by another client (lock held at sheep {h})"),
            None => "locked by another client".to_string(),
        };
        FsError::new(
            libc::EBUSY,
            format!(
                "attach of VDI '{}': {by}; if that client is gone, release the lock with \
                 `sheepctl vdi lock unlock {vdi}`",
                spec.file_name()
            ),
        )
    }

    /// Detaches `volume/<file>`: flushes, releases the VDI lock. Refused
    /// while the file is open (a loop device, a mounted filesystem...).
    pub async fn detach(&self, spec: &VolumeSpec) -> FsResult<()> {
        let file = spec.file_name();
        let _g = self.attach_lock.lock().await;
        let a = {
            let mut v = self.volumes.write();
            let a = v.by_name.get(&file).cloned().ok_or_else(|| {
                FsError::new(libc::ENOENT, format!("volume {file} is not attached"))
            })?;
            let n = a.open_files();
            if n > 0 {
                return Err(FsError::new(
                    libc::EBUSY,
                    format!("volume {file} is in use ({n} open files); close it first"),
                ));
            }
            v.by_name.remove(&file);
            v.by_ino.remove(&a.ino);
            a
        };
        self.close_volume(&a).await?;
        info!(volume = %file, "detached");
        Ok(())
    }

    async fn close_volume(&self, a: &Attached) -> FsResult<()> {
        // With sheep's object cache on, make everything durable first.
        let flushed = if self.object_cache() {
            a.vol.flush().await
        } else {
            Ok(())
        };
        let closed = a.vol.close().await;
        if let Some(inv) = self.invalidator.read().clone() {
            inv.inval_inode(a.ino);
        }
        flushed.and(closed).map_err(|e| {
            FsError::client(
                format_args!(
                    "closing volume {} (if its lock was kept, release it with \
                     `sheepctl vdi lock unlock {}`)",
                    a.file, a.spec.vdi
                ),
                e,
            )
        })
    }

    fn set_page_cache(&self, on: bool) {
        self.page_cache.store(on, Ordering::Release);
        // Writing the file drops every cached object and page either way.
        self.cache.clear();
        // The object cache follows the setting at once on attached volumes;
        // the kernel's page cache (keep_cache/direct_io) follows on next open.
        for a in self.volumes.read().by_name.values() {
            a.vol.set_cache(on.then(|| self.cache.clone()));
        }
        let inos: Vec<u64> = self.volumes.read().by_ino.keys().copied().collect();
        if let Some(inv) = self.invalidator.read().clone() {
            for ino in inos {
                inv.inval_inode(ino);
            }
        }
        info!(
            page_cache = on,
            "page cache setting changed (object cache now, kernel page cache from the next open); caches dropped"
        );
    }

    async fn set_object_cache(&self, on: bool) -> FsResult<()> {
        let was = self.object_cache.swap(on, Ordering::AcqRel);
        let vols: Vec<Arc<Attached>> = self.volumes.read().by_name.values().cloned().collect();
        for a in vols {
            a.vol.set_object_cache(on);
            if was && !on {
                // Whatever sheep holds in its cache for us must reach disk
                // now that fsync will no longer ask for it.
                self.client
                    .flush_vdi(a.vol.vid())
                    .await
                    .map_err(|e| FsError::client(format_args!("flush of volume {}", a.file), e))?;
            }
        }
        info!(object_cache = on, "object cache setting changed");
        Ok(())
    }

    async fn set_sheep(&self, addr: client::SheepAddr) -> FsResult<()> {
        // Probe first so that a typo does not cut every volume off.
        let c = Client::new(addr.clone(), probe_options(self.client.options()));
        let r = probe(&c).await;
        c.close().await;
        r.map_err(|e| FsError::new(e.errno(), format!("config/sheep_info: {e}")))?;
        let old = self.client.addr();
        self.client.set_addr(addr.clone()).await;
        info!(old = %old, new = %addr, "sheep address changed; volumes reconnect");
        Ok(())
    }

    /// Detaches everything (flush, release locks). Called once the mount is
    /// gone.
    pub async fn shutdown(&self) {
        let _g = self.attach_lock.lock().await;
        let all: Vec<Arc<Attached>> = {
            let mut v = self.volumes.write();
            v.by_ino.clear();
            std::mem::take(&mut v.by_name).into_values().collect()
        };
        // In parallel: with a dead server each close waits for the timeout.
        futures::future::join_all(all.iter().map(|a| async move {
            match self.close_volume(a).await {
                Ok(()) => info!(volume = %a.file, "detached"),
                Err(e) => warn!("{e}"),
            }
        }))
        .await;
        self.handles.write().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices() {
        let t = &Bytes::from_static(b"hello world");
        assert_eq!(slice_at(t, 0, 5), &b"hello"[..]);
        assert_eq!(slice_at(t, 6, 100), &b"world"[..]);
        assert_eq!(slice_at(t, 11, 10), &b""[..]);
        assert_eq!(slice_at(t, u64::MAX, 10), &b""[..]);
    }
}
