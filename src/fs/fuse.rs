//! The thin FUSE adapter: every kernel request becomes a task on the tokio
//! runtime that calls [`FsCore`] and replies when done, so many reads and
//! writes are in flight at once whatever the number of FUSE threads.

use super::core::{FsCore, Invalidator, Opened};
use super::error::FsError;
use super::text::FuseParams;
use super::tree::{Attr, Kind};
use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug_span, Instrument, Span};

/// Largest read/write the kernel sends us (its default `max_pages` limit
/// of 256 pages).
pub const MAX_WRITE: u32 = 1 << 20;

/// Mount-time settings of the FUSE session.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Threads reading `/dev/fuse`. Two by default: a FUSE thread only
    /// decodes a request and sends it (replies leave from the runtime), and
    /// every idle one is a sleeping reader the kernel wakes for the next
    /// request, where a busy one would have picked it up itself (4k random
    /// reads at depth 16: 0.50-0.53 of the client with 4, 0.62-0.65 with 2).
    pub threads: usize,
    pub allow_other: bool,
    /// The source column of /proc/mounts (the sheep's address).
    pub fsname: String,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            threads: 2,
            allow_other: false,
            fsname: "sheepfs".into(),
        }
    }
}

/// Counts requests being served, so shutdown can let them finish.
#[derive(Default)]
pub struct Inflight {
    n: AtomicUsize,
    idle: tokio::sync::Notify,
}

pub struct InflightGuard(Arc<Inflight>);

impl Inflight {
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }
    pub fn count(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }
    /// Waits until no request is in flight, at most `limit`.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub struct FuseAdapter {
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    inflight: Arc<Inflight>,
    cfg: MountConfig,
    /// The session's mount, taken in `destroy` (see there).
    unmounter: Arc<parking_lot::Mutex<Option<fuser::SessionUnmounter>>>,
}

fn errno(e: FsError) -> Errno {
    e.log();
    Errno::from_i32(e.errno())
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.parallel_direct_writes {
        f |= FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
    }
    f
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks(),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink(),
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Dynamic entries (volumes come and go) are never cached by name.
fn reply_entry(reply: ReplyEntry, a: &Attr) {
    let entry_ttl = if a.kind == Kind::Dir {
        a.ttl
    } else {
        Duration::ZERO
    };
    reply.entry_with_ttls(&a.ttl, &entry_ttl, &file_attr(a), Generation(0));
}

/// Kernel cache invalidation through the FUSE notifier. Runs on its own
/// thread: the kernel may wait for pages locked by requests that we are
/// serving.
struct KernelInvalidator(Notifier);

impl Invalidator for KernelInvalidator {
    fn inval_inode(&self, ino: u64) {
        let n = self.0.clone();
        let _ = std::thread::Builder::new()
            .name("sheepfs-inval".into())
            .spawn(move || {
                if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                    // ENOENT: the kernel has no such inode cached.
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!(ino, error = %e, "cache invalidation failed");
                    }
                }
            });
    }
}

impl FuseAdapter {
    pub fn new(core: Arc<FsCore>, rt: tokio::runtime::Handle, cfg: MountConfig) -> Self {
        FuseAdapter {
            core,
            rt,
            inflight: Arc::new(Inflight::default()),
            cfg,
            unmounter: Arc::default(),
        }
    }

    /// Runs a request: polled once right here on the FUSE thread, so that
    /// requests needing no I/O (holes, state and control files) complete
    /// without a thread hop and network I/O is on its way at once. If it has
    /// to wait, it goes to the runtime only when woken (see [`Parked`]).
    fn spawn<F>(&self, span: Span, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let g = self.inflight.enter();
        let fut: ParkedFuture = Box::pin(
            async move {
                let _g = g;
                f.await
            }
            .instrument(span),
        );
        let _rt = self.rt.enter();
        Parked::run(fut, &self.rt);
    }
}

type ParkedFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request that returned Pending on the FUSE thread, waiting for its first
/// wake-up. Spawning it on the runtime right away would wake a worker only
/// to poll it again and find it still waiting (a second wake-up and an
/// inject-queue hop per request); instead the waker spawns it, from the
/// thread that wakes it: usually the connection's reader task, whose worker
/// then runs it next (tokio's LIFO slot), so the reply leaves from the
/// thread that received the answer, with no further hand-off.
struct Parked {
    state: parking_lot::Mutex<ParkState>,
    rt: tokio::runtime::Handle,
}

enum ParkState {
    /// Being polled on the FUSE thread; `woken` if woken meanwhile.
    Polling { woken: bool },
    /// Waiting for its wake-up.
    Waiting(ParkedFuture),
    /// Handed to the runtime, whose own waker takes over.
    Spawned,
}

impl Parked {
    fn run(mut fut: ParkedFuture, rt: &tokio::runtime::Handle) {
        let parked = Arc::new(Parked {
            state: parking_lot::Mutex::new(ParkState::Polling { woken: false }),
            rt: rt.clone(),
        });
        let waker = Waker::from(parked.clone());
        if fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            return;
        }
        let mut s = parked.state.lock();
        if matches!(*s, ParkState::Polling { woken: true }) {
            *s = ParkState::Spawned;
            drop(s);
            rt.spawn(fut);
        } else {
            *s = ParkState::Waiting(fut);
        }
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut s = self.state.lock();
        match std::mem::replace(&mut *s, ParkState::Spawned) {
            ParkState::Waiting(fut) => {
                drop(s);
                self.rt.spawn(fut);
            }
            ParkState::Polling { .. } => *s = ParkState::Polling { woken: true },
            // A stale registration (the runtime polls it now).
            ParkState::Spawned => {}
        }
    }
}

/// Takes a mount made by [`mount`] down (from a signal handler, say).
pub enum Unmounter {
    /// Mounted by fuser (through fusermount3 when not root).
    Fuser(fuser::SessionUnmounter),
    /// Mounted by us with mount(2).
    Direct(std::path::PathBuf),
}

impl Unmounter {
    /// umount(2); EBUSY (open files, a loop device) is for the caller to
    /// handle, e.g. with a lazy unmount.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Fuser(u) => u.unmount(),
            Unmounter::Direct(p) => umount2(p, 0),
        }
    }
}

/// umount2(2) of `p` with `flags`.
pub fn umount2(p: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts `core` at `mountpoint` (mount + FUSE INIT done when this returns).
///
/// As root we call mount(2) ourselves with type `fuse.sheepfs`, so that
/// /proc/mounts, `df -T` and `umount -t` see the subtype (fuser's own
/// mount(2) drops it); otherwise fuser mounts through fusermount3.
pub fn mount(
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    mountpoint: &Path,
    cfg: MountConfig,
) -> std::io::Result<(Session<FuseAdapter>, Unmounter)> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(cfg.fsname.clone()),
        MountOption::Subtype("sheepfs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads.max(1));
    // One /dev/fuse fd per thread: the kernel spreads requests over them.
    config.clone_fd = true;
    let direct = mount_direct(mountpoint, &cfg.fsname, cfg.allow_other)?;
    let acl = config.acl;
    drop(rt.spawn(keep_timer_armed()));
    let adapter = FuseAdapter::new(core.clone(), rt, cfg);
    let (session, un) = match direct {
        Some(fd) => match Session::from_fd(adapter, fd, acl, config) {
            Ok(s) => (s, Unmounter::Direct(mountpoint.to_path_buf())),
            Err(e) => {
                let _ = umount2(mountpoint, libc::MNT_DETACH);
                return Err(e);
            }
        },
        None => {
            let unmounter = adapter.unmounter.clone();
            let mut session = Session::new(adapter, mountpoint, &config)?;
            *unmounter.lock() = Some(session.unmount_callable());
            let un = Unmounter::Fuser(session.unmount_callable());
            (session, un)
        }
    };
    core.set_invalidator(Arc::new(KernelInvalidator(session.notifier())));
    Ok((session, un))
}

/// Keeps a timer due within a second pending on the runtime, for as long as
/// it runs. FUSE threads register each request's timeout from outside the
/// runtime; were it the earliest timer, tokio would wake the parked worker
/// that drives timers just to shorten its sleep: a thread wake-up per
/// request at queue depth 1. Behind a nearer deadline, registering is silent.
async fn keep_timer_armed() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// mount(2) of a fresh /dev/fuse connection as `fuse.sheepfs`; `None` when
/// not permitted (not root: fuser then goes through fusermount3).
fn mount_direct(
    mountpoint: &Path,
    fsname: &str,
    allow_other: bool,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(e),
    };
    let inval = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let target = CString::new(mountpoint.as_os_str().as_bytes()).map_err(|_| inval())?;
    let source = CString::new(fsname).map_err(|_| inval())?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = CString::new(format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid}{}",
        dev.as_raw_fd(),
        if allow_other { ",allow_other" } else { "" }
    ))
    .map_err(|_| inval())?;
    // SAFETY: valid C strings; data is the option string fuse expects.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"fuse.sheepfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EPERM) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(dev.into()))
}

/// Capabilities we ask for beyond fuser's defaults (ASYNC_READ, BIG_WRITES,
/// MAX_PAGES).
fn wanted_caps() -> [InitFlags; 3] {
    [
        // Several O_DIRECT requests of one io_submit in flight at once.
        InitFlags::FUSE_ASYNC_DIO,
        InitFlags::FUSE_PARALLEL_DIROPS,
        // O_TRUNC arrives with open instead of as a truncate, so it can be
        // ignored on volumes (fixed size) and control files (`echo x > f`).
        InitFlags::FUSE_ATOMIC_O_TRUNC,
    ]
}

fn cap_names(f: InitFlags) -> Vec<String> {
    f.iter_names().map(|(n, _)| n.to_string()).collect()
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, kc: &mut KernelConfig) -> std::io::Result<()> {
        let max_write = match kc.set_max_write(MAX_WRITE) {
            Ok(_) => MAX_WRITE,
            Err(n) => {
                let _ = kc.set_max_write(n);
                n
            }
        };
        let max_readahead = match kc.set_max_readahead(MAX_WRITE) {
            Ok(_) => MAX_WRITE,
            Err(n) => {
                let _ = kc.set_max_readahead(n);
                n
            }
        };
        let _ = kc.set_max_background(64);
        let _ = kc.set_congestion_threshold(48);
        let caps = kc.capabilities();
        let mut enabled =
            InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_BIG_WRITES | InitFlags::FUSE_MAX_PAGES;
        let mut unsupported = InitFlags::empty();
        for f in wanted_caps() {
            match kc.add_capabilities(f) {
                Ok(()) => enabled |= f,
                Err(u) => unsupported |= u,
            }
        }
        enabled &= caps;
        let v = kc.kernel_abi();
        let p = FuseParams {
            kernel_abi: format!("{}.{}", v.0, v.1),
            max_write,
            max_readahead,
            max_background: 64,
            congestion_threshold: 48,
            threads: self.cfg.threads,
            clone_fd: true,
            enabled: cap_names(enabled),
            unsupported: cap_names(unsupported),
            parallel_direct_writes: true,
        };
        tracing::info!(
            abi = %p.kernel_abi,
            max_write,
            capabilities = %p.enabled.join(","),
            "FUSE session initialised"
        );
        self.core.set_fuse_params(p);
        Ok(())
    }

    fn destroy(&mut self) {
        // Usually the mount is gone already (umount from outside): taking
        // it here keeps fuser from unmounting it again when the session
        // ends and warning "Invalid argument" on every clean unmount.
        if let Some(mut un) = self.unmounter.lock().take() {
            if let Err(e) = un.unmount() {
                if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                    tracing::warn!("unmount at the end of the session: {e}");
                }
            }
        }
        let core = self.core.clone();
        let inflight = self.inflight.clone();
        self.rt.block_on(async move {
            if !inflight.wait_idle(Duration::from_secs(60)).await {
                tracing::warn!(
                    requests = inflight.count(),
                    "requests still running at unmount"
                );
            }
            core.shutdown().await;
        });
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let core = self.core.clone();
        let name = name.to_str().map(str::to_string);
        let span = debug_span!("lookup", req = req.unique().0, ino = parent.0, name = ?name);
        self.spawn(span, async move {
            let Some(name) = name else {
                return reply.error(Errno::ENOENT);
            };
            match core.lookup(parent.0, &name).await {
                Ok(a) => reply_entry(reply, &a),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let core = self.core.clone();
        let span = debug_span!(
            "getattr",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.map(|f| f.0)
        );
        self.spawn(span, async move {
            match core.getattr(ino.0).await {
                Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let core = self.core.clone();
        let span = debug_span!(
            "setattr",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.map(|f| f.0),
            size
        );
        self.spawn(span, async move {
            match core.setattr(ino.0, size).await {
                Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let core = self.core.clone();
        let span = debug_span!("open", req = req.unique().0, ino = ino.0, flags = flags.0);
        self.spawn(span, async move {
            match core.open(ino.0, flags.0).await {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let core = self.core.clone();
        let span = debug_span!(
            "read",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.0,
            offset,
            size
        );
        self.spawn(span, async move {
            match core.read(ino.0, fh.0, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let core = self.core.clone();
        // fuser reuses its receive buffer for the next request at once: the
        // one copy of the data (into the Bytes that reaches the socket).
        let data = bytes::Bytes::copy_from_slice(data);
        let span = debug_span!(
            "write",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.0,
            offset,
            size = data.len()
        );
        self.spawn(span, async move {
            match core.write(ino.0, fh.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are acknowledged only once sheep has them; nothing is
        // buffered here. Durability with -o is fsync's job.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        let span = debug_span!("fsync", req = req.unique().0, ino = ino.0, fh = fh.0);
        self.spawn(span, async move {
            match core.fsync(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _s = debug_span!(
            "readdir",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.0,
            offset
        )
        .entered();
        match self.core.readdir(ino.0) {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    let kind = match kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let core = self.core.clone();
        let span = debug_span!("statfs", req = req.unique().0);
        self.spawn(span, async move {
            const BS: u64 = 4096;
            match core.statfs().await {
                Ok((total, free)) => reply.statfs(
                    total / BS,
                    free / BS,
                    free / BS,
                    0,
                    0,
                    BS as u32,
                    255,
                    BS as u32,
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are decided at open (EROFS, EACCES), as the original.
        reply.ok();
    }

    /// sheepfs has no extended attributes. ENOSYS (not ENODATA) makes the
    /// kernel remember that and answer EOPNOTSUPP itself from then on, so
    /// `ls -l` (an ACL probe per file) and every write (a
    /// security.capability probe) cost no round trip here.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        tracing::debug!(parent = parent.0, ?name, "create refused");
        // Volumes appear by writing a VDI name into vdi/mount.
        reply.error(Errno::EPERM);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        // Detaching is done through vdi/unmount.
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        let span = debug_span!(
            "fallocate",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.0,
            offset,
            length,
            mode
        );
        self.spawn(span, async move {
            match core.fallocate(ino.0, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let core = self.core.clone();
        let span = debug_span!(
            "lseek",
            req = req.unique().0,
            ino = ino.0,
            fh = fh.0,
            offset,
            whence
        );
        self.spawn(span, async move {
            match core.lseek(ino.0, offset, whence).await {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inflight_waits_for_the_last_request() {
        let inf = Arc::new(Inflight::default());
        assert!(inf.wait_idle(Duration::from_millis(1)).await);
        let g1 = inf.enter();
        let g2 = inf.enter();
        assert_eq!(inf.count(), 2);
        assert!(!inf.wait_idle(Duration::from_millis(20)).await);
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(g1);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(g2);
        });
        assert!(inf.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(inf.count(), 0);
        t.await.unwrap();
    }

    /// Runs `fut` as a FUSE thread does (outside the runtime); its output
    /// arrives on the returned channel.
    fn run_parked<T: Send + 'static>(
        rt: &tokio::runtime::Handle,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rt = rt.clone();
        std::thread::spawn(move || {
            let _g = rt.enter();
            Parked::run(
                Box::pin(async move {
                    let _ = tx.send(fut.await);
                }),
                &rt,
            );
        })
        .join()
        .unwrap();
        rx
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_requests_finish_when_woken() {
        let rt = tokio::runtime::Handle::current();
        let limit = Duration::from_secs(5);
        // Done at the first poll.
        let r = run_parked(&rt, async { 1 });
        assert_eq!(tokio::time::timeout(limit, r).await.unwrap().unwrap(), 1);
        // Pending, then woken from a runtime worker (a reply arriving).
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let r = run_parked(&rt, async { rx.await.unwrap() + 1 });
        tokio::spawn(async move { tx.send(41).unwrap() });
        assert_eq!(tokio::time::timeout(limit, r).await.unwrap().unwrap(), 42);
        // Woken during its first poll, before it is parked.
        let mut first = true;
        let r = run_parked(
            &rt,
            std::future::poll_fn(move |cx| {
                if std::mem::take(&mut first) {
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(3)
            }),
        );
        assert_eq!(tokio::time::timeout(limit, r).await.unwrap().unwrap(), 3);
        // A timer registered on the FUSE thread fires on the runtime.
        let r = run_parked(&rt, async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            4
        });
        assert_eq!(tokio::time::timeout(limit, r).await.unwrap().unwrap(), 4);
    }

    #[test]
    fn open_flags() {
        let o = Opened {
            fh: 1,
            direct_io: true,
            keep_cache: false,
            parallel_direct_writes: true,
        };
        let f = fopen_flags(&o);
        assert!(f.contains(FopenFlags::FOPEN_DIRECT_IO));
        assert!(f.contains(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES));
        assert!(!f.contains(FopenFlags::FOPEN_KEEP_CACHE));
    }
}
