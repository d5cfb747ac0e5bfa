//! Connections: framing, concurrency, memory bounds, timeouts and replies.
//!
//! Each connection has a reader loop and a writer task. The reader takes one
//! request after another (48-byte header, then exactly `data_length` payload
//! bytes iff CMD_WRITE) and runs each handler on the blocking pool (a small
//! read or cached write that needs no waiting runs in the reader itself),
//! which passes the reply to the writer through a channel in completion
//! order, so a reply (header + payload) is always written whole.
//!
//! No client can hold what other clients need (sheep-lite(8), LIMITS):
//! - memory is reserved as payload bytes arrive, [`CHUNK`] at a time once
//!   bytes are readable, never from `data_length` alone; a handler's working
//!   set and reply buffer ([`Sheep::memory_need`]) are reserved once the
//!   payload is complete, and the reservation shrinks to the reply's size
//!   when the handler returns;
//! - three pools of bytes: the whole budget, the part of it payloads still
//!   arriving may hold (so stalled uploads never starve replies), and each
//!   connection's share (payloads, working sets and replies not yet written:
//!   a peer that does not read its replies stops being read);
//! - each connection has a bounded number of requests in flight (admitted,
//!   reply not yet written);
//! - a header or payload that stops arriving, or a reply that cannot be
//!   written, for the I/O timeout closes the connection; so does a connection
//!   with nothing in flight that sends nothing for the idle timeout;
//! - the payload limit is what the protocol allows: the size of the object a
//!   request names (its VDI's object size, fixed when the VDI was created),
//!   or [`SMALL_OP_MAX`] for every other request. A request never raises it.
//!
//! Waiting for memory while holding some could deadlock (every upload half
//! received, all waiting for more). So a wait on the shared pools races the
//! *overdraft*: one request at a time may proceed past them without waiting,
//! until its reply is written. Requests larger than a pool work the same way,
//! so a request larger than the whole budget still runs. Memory in use is at
//! most the budget plus one request.
//!
//! What is released returns to the system: the sheep-lite program allocates
//! large buffers with [`super::alloc::Recycler`] (mapped blocks, a small
//! cache of idle ones emptied by [`Ctx::trim_heap`]), and the heap is trimmed
//! after bursts.

use super::core::{
    Action, FileRange, Reply, Req, Sheep, OP_CREATE_AND_WRITE_PEER, OP_READ_PEER, OP_WRITE_PEER,
};
use super::{Config, ServerError};
use crate::proto::header::{ObjArgs, RspHeader};
use crate::proto::{op, ReqHeader, SdRes, SD_REQ_SIZE, VDI_BITMAP_SIZE};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::{mpsc, watch, Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Payload bytes reserved (and read) at a time once they are readable.
pub const CHUNK: usize = 256 << 10;
/// Largest payload, and largest reply buffer reserved, of a request that
/// names no object: the vdi bitmap of READ_VDIS. Their handlers answer at
/// their natural size (clipped to `data_length`), so a larger `data_length`
/// only asks for a buffer nobody fills.
pub const SMALL_OP_MAX: u64 = VDI_BITMAP_SIZE as u64;
/// Reply bytes written per timed write (a stalled peer is noticed within the
/// I/O timeout even during a large reply).
const WRITE_SLICE: usize = 256 << 10;
/// A server that became quiet after reserving this many bytes, or that
/// released [`RELEASED`] bytes since the last check, hands free heap memory
/// back to the system.
const TRIM_AFTER: u64 = 8 << 20;
const RELEASED: u64 = 16 << 20;
/// Cached large buffers unused for this long go back to the system.
const BUFFER_IDLE: Duration = Duration::from_secs(1);

/// Limits in effect, derived from [`Config`] (sheep-lite(8), LIMITS).
#[derive(Debug, Clone)]
struct Limits {
    budget: u64,
    recv: u64,
    conn_memory: u64,
    conn_requests: usize,
    io_timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl Limits {
    fn new(cfg: &Config) -> Limits {
        let budget = cfg.memory_budget.clamp(CHUNK as u64, u32::MAX as u64);
        Limits {
            budget,
            // Arriving payloads may never hold more than half: replies always
            // have room.
            recv: cfg.recv_memory.min(budget / 2).max(1),
            conn_memory: cfg.conn_memory.min(budget).max(1),
            conn_requests: cfg.conn_requests.clamp(1, Semaphore::MAX_PERMITS),
            io_timeout: cfg.io_timeout.max(Duration::from_millis(1)),
            idle_timeout: (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout),
        }
    }
}

/// What serving needs, shared by every connection of one server.
pub struct Ctx {
    sheep: Arc<Sheep>,
    limits: Limits,
    /// The whole byte budget: payloads, working sets, reply buffers.
    budget: Arc<Semaphore>,
    /// The part of the budget payloads still arriving may hold.
    recv: Arc<Semaphore>,
    /// Held by the one request allowed past the shared pools (module doc).
    overdraft: Arc<Mutex<()>>,
    /// Set to true to stop serving.
    stop: watch::Sender<bool>,
    next_conn: AtomicU64,
    /// Bytes reserved since the heap was last trimmed.
    churn: AtomicU64,
    /// Bytes in use at the last [`Ctx::trim_heap`].
    last_in_use: AtomicU64,
    /// The store directory's lock, when this context opened the store.
    _lock: Option<std::fs::File>,
}

impl Ctx {
    /// A context serving `sheep` with the limits of `cfg`.
    pub fn new(sheep: Arc<Sheep>, cfg: &Config) -> Arc<Ctx> {
        Ctx::build(sheep, cfg, None)
    }

    /// Opens the store of `cfg` (creating and locking its directory) without
    /// listening anywhere, for serving streams in-process with
    /// [`serve_stream`]. The node advertises `cfg.bind` and `cfg.port`.
    pub fn open(cfg: &Config) -> Result<Arc<Ctx>, ServerError> {
        let (dir, lock) = super::open_dir(&cfg.dir)?;
        let node = super::advertised_node(cfg.bind, cfg.port);
        let sheep = Arc::new(Sheep::new(&dir, node, cfg.fd_cache)?);
        Ok(Ctx::build(sheep, cfg, Some(lock)))
    }

    pub(super) fn build(sheep: Arc<Sheep>, cfg: &Config, lock: Option<std::fs::File>) -> Arc<Ctx> {
        let limits = Limits::new(cfg);
        Arc::new(Ctx {
            sheep,
            budget: Arc::new(Semaphore::new(limits.budget as usize)),
            recv: Arc::new(Semaphore::new(limits.recv as usize)),
            overdraft: Arc::new(Mutex::new(())),
            limits,
            stop: watch::channel(false).0,
            next_conn: AtomicU64::new(0),
            churn: AtomicU64::new(0),
            last_in_use: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// The server this context serves.
    pub fn sheep(&self) -> &Arc<Sheep> {
        &self.sheep
    }

    /// Asks every connection to stop after its requests in flight.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// A receiver that turns true when serving should stop (also after a
    /// SHUTDOWN request).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Bytes of the budget reserved right now.
    pub fn memory_in_use(&self) -> u64 {
        self.limits.budget - self.budget.available_permits() as u64
    }

    /// Hands free memory back to the system: cached large buffers idle for
    /// a second (`BUFFER_IDLE`; see `server::alloc`), and free heap memory (glibc
    /// keeps freed arena memory otherwise) when the server has become quiet
    /// after reserving much, or has just released a lot (connections
    /// holding big buffers closed). Called periodically; blocking (it walks
    /// the heap), cheap when there is nothing to do.
    pub fn trim_heap(&self) {
        super::alloc::release_idle(BUFFER_IDLE);
        let in_use = self.memory_in_use();
        let before = self.last_in_use.swap(in_use, Ordering::Relaxed);
        let released = before.saturating_sub(in_use) >= RELEASED;
        // Quiet now, and busy at the last check or since the last trim.
        let quiet = in_use <= CHUNK as u64
            && (before > CHUNK as u64 || self.churn.load(Ordering::Relaxed) >= TRIM_AFTER);
        if !(quiet || released) {
            return;
        }
        tracing::debug!(in_use, before, "returning free heap memory to the system");
        self.churn.store(0, Ordering::Relaxed);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Serves one client connection over any byte stream — a socket, or one end
/// of [`tokio::io::duplex`] so a test runs client and server in one process —
/// until the peer closes it, a limit closes it (timeouts; see the module
/// doc) or the server stops. Returns when its last reply has been written.
pub async fn serve_stream<S>(ctx: &Arc<Ctx>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(ctx.clone(), stream, "stream".to_string()).await
}

/// A reservation: what one request holds of the connection's share, the
/// budget and (while its payload arrives) the receive pool.
#[derive(Default)]
struct Charge {
    conn: Option<OwnedSemaphorePermit>,
    budget: Option<OwnedSemaphorePermit>,
    recv: Option<OwnedSemaphorePermit>,
    overdraft: Option<OwnedMutexGuard<()>>,
}

fn held(p: &Option<OwnedSemaphorePermit>) -> u64 {
    p.as_ref().map_or(0, |p| p.num_permits() as u64)
}

fn add(slot: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
    match slot {
        Some(have) => have.merge(p),
        None => *slot = Some(p),
    }
}

/// Keeps at most `n` permits of `slot`.
fn keep(slot: &mut Option<OwnedSemaphorePermit>, n: u64) {
    if let Some(p) = slot.as_mut() {
        let excess = (p.num_permits() as u64).saturating_sub(n);
        if excess > 0 {
            drop(p.split(excess as usize));
        }
    }
}

/// Which pools a reservation takes from.
#[derive(Clone, Copy, PartialEq)]
enum Pool {
    /// Payload bytes still arriving: also the receive pool.
    Arriving,
    /// Working set and reply buffer.
    Handling,
}

impl Charge {
    /// Reserves `n` more bytes: first of the connection's share (waiting only
    /// for this connection's own requests), then of the shared pools, racing
    /// the overdraft when they are short.
    async fn grow(&mut self, ctx: &Ctx, conn: &Arc<Semaphore>, n: u64, pool: Pool) {
        // A request never holds more than the whole share: beyond it, it has
        // the connection to itself.
        let c = n.min(ctx.limits.conn_memory - held(&self.conn)) as u32;
        if c > 0 {
            if let Ok(p) = conn.clone().acquire_many_owned(c).await {
                add(&mut self.conn, p);
            }
        }
        ctx.churn.fetch_add(n, Ordering::Relaxed);
        // More than a pool holds can only be had on the overdraft.
        let recv = pool == Pool::Arriving;
        let cap = if recv {
            ctx.limits.recv
        } else {
            ctx.limits.budget
        };
        let n = n.min(cap) as u32;
        if self.overdraft.is_some() {
            // Past the pools: take what is free, never wait.
            if let Ok(p) = ctx.budget.clone().try_acquire_many_owned(n) {
                add(&mut self.budget, p);
            }
            return;
        }
        if recv {
            if let Ok(p) = ctx.recv.clone().try_acquire_many_owned(n) {
                add(&mut self.recv, p);
            } else {
                return self.wait_shared(ctx, n, true).await;
            }
        }
        match ctx.budget.clone().try_acquire_many_owned(n) {
            Ok(p) => add(&mut self.budget, p),
            Err(_) => self.wait_shared(ctx, n, false).await,
        }
    }

    /// Waits for `n` bytes of the shared pools or for the overdraft,
    /// whichever comes first.
    async fn wait_shared(&mut self, ctx: &Ctx, n: u32, recv: bool) {
        let pools = async {
            let r = if recv {
                Some(ctx.recv.clone().acquire_many_owned(n).await)
            } else {
                None
            };
            (r, ctx.budget.clone().acquire_many_owned(n).await)
        };
        tokio::select! {
            (r, b) = pools => {
                if let Some(Ok(r)) = r {
                    add(&mut self.recv, r);
                }
                if let Ok(b) = b {
                    add(&mut self.budget, b);
                }
            }
            g = ctx.overdraft.clone().lock_owned() => {
                tracing::debug!(bytes = n, "memory budget short: proceeding on the overdraft");
                self.overdraft = Some(g);
            }
        }
    }

    /// The payload is complete: it no longer counts as arriving.
    fn received(&mut self) {
        self.recv = None;
    }

    /// Shrinks to the `n` bytes the reply still holds.
    fn shrink_to(&mut self, n: u64) {
        keep(&mut self.conn, n);
        keep(&mut self.budget, n);
    }
}

struct Outgoing {
    hdr: [u8; 48],
    data: Vec<u8>,
    /// Sent after `data`, read from the object file piece by piece.
    stream: Option<FileRange>,
    /// Released once the reply is written.
    _charge: Charge,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Serves one client until it disconnects, a limit closes it or the server stops.
pub async fn serve<S>(ctx: Arc<Ctx>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("conn", conn, peer = %peer);
    async move {
        tracing::debug!("connected");
        let (r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let writer = tokio::spawn(write_loop(w, rx, ctx.limits.io_timeout).in_current_span());
        let mut reader = ConnReader {
            r: BufReader::with_capacity(16 << 10, r),
            share: Arc::new(Semaphore::new(ctx.limits.conn_memory as usize)),
            inflight: Arc::new(Semaphore::new(ctx.limits.conn_requests)),
            stop: ctx.stop.subscribe(),
            ctx,
            tx,
        };
        if let Err(End::Why(why)) = reader.run().await {
            tracing::info!(%why, "closing connection");
        }
        drop(reader);
        // The writer ends once every in-flight request has replied.
        let _ = writer.await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// Runs `f` with a deadline; `what` names the stalled step in the error.
async fn timed<T, E: std::fmt::Display>(
    t: Duration,
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: nothing for {t:?} (I/O timeout)")),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    io: Duration,
) {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    while let Some(mut o) = rx.recv().await {
        let mut res = timed(io, "send", w.write_all(&o.hdr)).await;
        for piece in o.data.chunks(WRITE_SLICE) {
            if res.is_err() {
                break;
            }
            res = timed(io, "send", w.write_all(piece)).await;
        }
        if res.is_ok() {
            if let Some(s) = o.stream.take() {
                res = send_file_range(&mut w, s, io).await;
            }
        }
        drop(o);
        // Flush when nothing else is ready, so bursts of small replies coalesce.
        if res.is_ok() && rx.is_empty() {
            res = timed(io, "send", w.flush()).await;
        }
        if let Err(e) = res {
            // Dropping the receiver frees the queued replies, tells the
            // reader to stop, and closes the socket with the reader's half.
            tracing::info!(error = %e, "reply not sent; closing connection");
            return;
        }
    }
    let _ = tokio::time::timeout(io, w.shutdown()).await;
}

/// The reading half of a connection.
struct ConnReader<R> {
    ctx: Arc<Ctx>,
    r: BufReader<R>,
    /// The connection's share of the budget.
    share: Arc<Semaphore>,
    /// Requests admitted whose reply is not written yet.
    inflight: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// Why a reader stops early.
enum End {
    /// The server stops or the writer already closed the connection.
    Quiet,
    /// Worth a log line.
    Why(String),
}

impl From<String> for End {
    fn from(s: String) -> End {
        End::Why(s)
    }
}

impl<R: AsyncRead + Unpin> ConnReader<R> {
    /// Serves requests until EOF (Ok) or an early end.
    async fn run(&mut self) -> Result<(), End> {
        loop {
            if !self.wait_header().await? {
                return Ok(());
            }
            let mut hb = [0u8; SD_REQ_SIZE];
            let io = self.ctx.limits.io_timeout;
            stoppable(
                &mut self.stop,
                &self.tx,
                timed(io, "header", self.r.read_exact(&mut hb)),
            )
            .await??;
            let hdr = ReqHeader::decode(&hb);
            let slot = stoppable(
                &mut self.stop,
                &self.tx,
                self.inflight.clone().acquire_owned(),
            )
            .await?
            .map_err(|_| End::Quiet)?;
            self.request(hdr, slot).await?;
        }
    }

    /// Waits until the next header starts arriving. False at EOF or stop.
    /// The idle timeout counts only while nothing is in flight.
    async fn wait_header(&mut self) -> Result<bool, End> {
        loop {
            let idle = self.ctx.limits.idle_timeout.unwrap_or(Duration::MAX);
            let wait = tokio::time::timeout(idle, self.r.fill_buf());
            match stoppable(&mut self.stop, &self.tx, wait).await? {
                Ok(Ok(b)) => return Ok(!b.is_empty()),
                Ok(Err(e)) => return Err(format!("receive failed: {e}").into()),
                Err(_) => {
                    if self.inflight.available_permits() == self.ctx.limits.conn_requests {
                        return Err(format!("idle for {idle:?} (idle timeout)").into());
                    }
                }
            }
        }
    }

    /// Receives one request's payload and starts its handler.
    async fn request(&mut self, hdr: ReqHeader, slot: OwnedSemaphorePermit) -> Result<(), End> {
        let ctx = self.ctx.clone();
        let io = ctx.limits.io_timeout;
        let dl = hdr.data_length as u64;
        let has_payload = hdr.has_payload();
        let object = is_object_io(hdr.opcode);
        let limit = if object {
            ctx.sheep.object_size(ObjArgs::decode(&hdr.args).oid)
        } else {
            SMALL_OP_MAX
        };
        if dl > limit && (has_payload || object) {
            tracing::warn!(
                opcode = format_args!("{:#04x}", hdr.opcode),
                data_length = dl,
                limit,
                "data_length beyond what the request allows; refused"
            );
            if has_payload {
                stoppable(&mut self.stop, &self.tx, skip(&mut self.r, dl, io)).await??;
            }
            let mut out = reply_bytes(&ctx.sheep, &hdr, Reply::res(SdRes::INVALID_PARMS));
            out._slot = Some(slot);
            return self.tx.send(out).map_err(|_| End::Quiet);
        }
        let mut charge = Charge::default();
        let mut data = Vec::new();
        if has_payload {
            // The buffer grows as bytes arrive (its capacity at most twice
            // what arrived), never ahead of the reservation: a stalled upload
            // holds no more memory than it is charged for, however warm the
            // block the allocator hands out.
            while (data.len() as u64) < dl {
                // Reserve only for bytes that are there (or on their way).
                let b = stoppable(
                    &mut self.stop,
                    &self.tx,
                    timed(io, "payload", self.r.fill_buf()),
                )
                .await??;
                if b.is_empty() {
                    return Err(End::Why("payload truncated: end of stream".into()));
                }
                let k = (dl - data.len() as u64).min(CHUNK as u64);
                stoppable(
                    &mut self.stop,
                    &self.tx,
                    charge.grow(&ctx, &self.share, k, Pool::Arriving),
                )
                .await?;
                let start = data.len();
                data.resize(start + k as usize, 0);
                stoppable(
                    &mut self.stop,
                    &self.tx,
                    timed(io, "payload", self.r.read_exact(&mut data[start..])),
                )
                .await??;
            }
            charge.received();
        }
        let rest = reservation(&ctx.sheep, &hdr).saturating_sub(data.len() as u64);
        if rest > 0 {
            stoppable(
                &mut self.stop,
                &self.tx,
                charge.grow(&ctx, &self.share, rest, Pool::Handling),
            )
            .await?;
        }
        let tx = self.tx.clone();
        let span = tracing::debug_span!(
            "req",
            op = op::name(hdr.opcode),
            opcode = hdr.opcode,
            id = hdr.id
        );
        let req = Req { hdr, data };
        // A small cached read or write is answered right here (see
        // `Sheep::handle_quick`): no thread hand-off at all. Anything else
        // runs on the blocking pool and hands its reply straight to the
        // writer: no async task in between.
        let quick = span.in_scope(|| run_quick(&ctx.sheep, &req));
        let sheep = ctx.sheep.clone();
        let finish = move |reply: Reply| {
            let action = reply.action;
            let res = reply.result;
            let mut out = reply_bytes(&ctx.sheep, &hdr, reply);
            tracing::debug!(result = ?res, len = out.data.len(), "reply");
            // What the reply holds until written: its buffer, or the
            // writer's piece of a streamed one.
            let stream_buf = out.stream.as_ref().map_or(0, |s| {
                s.len.min(super::core::STREAM_CHUNK as u64) + WRITE_SLICE as u64
            });
            charge.shrink_to(out.data.len() as u64 + stream_buf);
            out._charge = charge;
            out._slot = Some(slot);
            // Fails only once the writer is gone (connection closing).
            let _ = tx.send(out);
            if action == Action::Stop {
                ctx.stop();
            }
        };
        match quick {
            Some(reply) => span.in_scope(|| finish(reply)),
            None => {
                tokio::task::spawn_blocking(move || {
                    span.in_scope(|| finish(run_request(&sheep, req)))
                });
            }
        }
        Ok(())
    }
}

/// Runs `f` unless the server stops or the writer closes the connection first.
async fn stoppable<T>(
    stop: &mut watch::Receiver<bool>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    f: impl Future<Output = T>,
) -> Result<T, End> {
    if *stop.borrow() {
        return Err(End::Quiet);
    }
    // Stop and close first: a connection being torn down (its writer gone,
    // its queued replies freed) must not admit more work with the memory
    // they release.
    tokio::select! {
        biased;
        _ = stop.changed() => Err(End::Quiet),
        _ = tx.closed() => Err(End::Quiet),
        r = f => Ok(r),
    }
}

/// READ/WRITE/CREATE_AND_WRITE of an object (client or peer form): their
/// `data_length` is bounded by the size of the object they name.
fn is_object_io(opcode: u8) -> bool {
    matches!(
        opcode,
        op::READ_OBJ
            | op::WRITE_OBJ
            | op::CREATE_AND_WRITE_OBJ
            | OP_READ_PEER
            | OP_WRITE_PEER
            | OP_CREATE_AND_WRITE_PEER
    )
}

/// Bytes a request holds while handled: [`Sheep::memory_need`], with the
/// reply buffer of a request naming no object bounded by [`SMALL_OP_MAX`].
fn reservation(sheep: &Sheep, h: &ReqHeader) -> u64 {
    let need = sheep.memory_need(h);
    if is_object_io(h.opcode) || h.has_payload() {
        return need;
    }
    let dl = h.data_length as u64;
    need.saturating_sub(dl) + dl.min(SMALL_OP_MAX)
}

/// [`Sheep::handle_quick`]; a panic is answered with SYSTEM_ERROR.
fn run_quick(sheep: &Sheep, req: &Req) -> Option<Reply> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sheep.handle_quick(req)))
        .unwrap_or_else(|_| {
            tracing::error!("request handler panicked");
            Some(Reply::res(SdRes::SYSTEM_ERROR))
        })
}

/// Runs the handler; a panic is answered with SYSTEM_ERROR, not silence.
fn run_request(sheep: &Sheep, req: Req) -> Reply {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sheep.handle(req))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("request handler panicked");
            Reply::res(SdRes::SYSTEM_ERROR)
        }
    }
}

fn reply_bytes(sheep: &Sheep, req: &ReqHeader, reply: Reply) -> Outgoing {
    let rsp = RspHeader {
        data_length: (reply.data.len() as u64 + reply.stream.as_ref().map(|s| s.len).unwrap_or(0))
            as u32,
        args: reply.args,
        // The epoch at reply time (MAKE_FS answers with the new epoch).
        ..RspHeader::reply_to(req, reply.result, sheep.epoch())
    };
    Outgoing {
        hdr: rsp.encode(),
        data: reply.data,
        stream: reply.stream,
        _charge: Charge::default(),
        _slot: None,
    }
}

/// Sends a file range piece by piece. A read error after the header promised
/// the bytes cannot be reported in-band: it closes the connection (the client
/// sees a transport error and retries).
async fn send_file_range<W: AsyncWrite + Unpin>(
    w: &mut W,
    s: FileRange,
    io: Duration,
) -> Result<(), String> {
    let chunk = super::core::STREAM_CHUNK;
    // Its size is part of the request's reservation.
    let mut buf = vec![0u8; chunk.min(s.len as usize)];
    let file = s.file.clone();
    let mut done = 0u64;
    while done < s.len {
        let n = (s.len - done).min(chunk as u64) as usize;
        let off = s.offset + done;
        let f = file.clone();
        let (b, r) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let r = f.read_exact_at(&mut buf[..n], off);
            (buf, r)
        })
        .await
        .map_err(|e| format!("read task failed: {e}"))?;
        buf = b;
        if let Err(e) = r {
            tracing::error!(
                oid = format_args!("{:016x}", s.oid),
                offset = off,
                error = %e,
                "read failed while streaming a reply; closing the connection"
            );
            return Err(format!("read of object {:016x} failed: {e}", s.oid));
        }
        for piece in buf[..n].chunks(WRITE_SLICE) {
            timed(io, "send", w.write_all(piece)).await?;
        }
        done += n as u64;
    }
    Ok(())
}

/// Reads and discards `n` bytes (each piece within the I/O timeout).
async fn skip<R: AsyncRead + Unpin>(r: &mut R, n: u64, io: Duration) -> Result<(), String> {
    let mut left = n;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        timed(io, "payload", r.read_exact(&mut buf[..k])).await?;
        left -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RspHeader;

    /// One GET_STORE_LIST over an in-memory stream: `serve_stream` answers
    /// it and ends when the client closes its end.
    #[tokio::test]
    async fn serve_stream_answers_over_a_duplex_stream() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx::open(&Config::new(dir.path())).unwrap();
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let serving = tokio::spawn({
            let ctx = ctx.clone();
            async move { serve_stream(&ctx, server).await }
        });
        let mut h = ReqHeader::for_op(op::GET_STORE_LIST);
        h.data_length = 512;
        h.id = 42;
        client.write_all(&h.encode()).await.unwrap();
        let mut rb = [0u8; 48];
        client.read_exact(&mut rb).await.unwrap();
        let rsp = RspHeader::decode(&rb);
        assert_eq!((rsp.id, rsp.result()), (42, SdRes::SUCCESS));
        let mut data = vec![0u8; rsp.data_length as usize];
        client.read_exact(&mut data).await.unwrap();
        assert_eq!(data, b"tree plain \0");
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("serve_stream did not end after the client closed")
            .unwrap();
    }
}
