//! [`Client`]: a few pipelined connections to one sheep, with per-request
//! timeouts, reconnect and bounded exponential backoff.
//!
//! # Write fencing
//!
//! Object writes are retried on a new connection after a timeout or a
//! broken connection, but the first transmission may still be executing in
//! sheep (handlers run to completion whatever happens to the client). Were a
//! later write to the same bytes acknowledged before it, the stale first copy
//! would overwrite it. So an object mutation (WRITE_OBJ,
//! CREATE_AND_WRITE_OBJ, DISCARD_OBJ, REMOVE_OBJ) whose fate is unknown
//! leaves a *fence* on what it may touch (its byte range; the whole object
//! for a create, discard or remove, plus the inode for a discard) until its
//! connection is drained: the client shuts the connection's write side and
//! waits for sheep to close it, which sheep does only once every request it
//! read from it has completed (see `conn`). Any other mutation overlapping a
//! fence waits for it, for at most `retry_timeout`, then fails with
//! [`Error::Fenced`] without being sent. The retry of the fenced request
//! itself is not held back: it carries the same bytes.
//!
//! The guarantee, per [`Client`] (clones share it): once a mutation has been
//! acknowledged, no mutation of an overlapping range that this client sent
//! earlier can still land. Writers in other processes are not covered (the
//! VDI lock keeps them out).

use super::conn::Conn;
use super::{Error, Result, SheepAddr};
use crate::proto::header::ObjArgs;
use crate::proto::{oid, op, ReqHeader, RspHeader, SdRes};
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request: header, payload (sent only with CMD_WRITE), and whether it may
/// be resent after a transport failure.
#[derive(Debug, Clone)]
pub struct Request {
    pub hdr: ReqHeader,
    pub payload: Bytes,
    pub idempotent: bool,
}

impl Request {
    pub fn new(hdr: ReqHeader) -> Self {
        Request {
            hdr,
            payload: Bytes::new(),
            idempotent: true,
        }
    }
    /// Attaches a payload, setting CMD_WRITE and `data_length`.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self.hdr.flags |= crate::proto::flags::CMD_WRITE;
        self.hdr.data_length = self.payload.len() as u32;
        self
    }
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub hdr: RspHeader,
    pub data: Vec<u8>,
}

impl Response {
    pub fn result(&self) -> SdRes {
        self.hdr.result()
    }
}

/// Client tuning.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections in the pool (requests are pipelined on each).
    pub connections: usize,
    /// How long one request may wait for its reply before the connection is
    /// considered dead.
    pub request_timeout: Duration,
    /// How long to keep retrying (reconnecting) before giving up on a request.
    pub retry_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connections: 4,
            request_timeout: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

struct Inner {
    addr: RwLock<SheepAddr>,
    opts: Options,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    closed: AtomicBool,
    reconnects: AtomicU64,
    /// Bumped when the address changes, so stale connections are replaced.
    generation: AtomicU64,
    /// Ranges of mutations in doubt (see the module docs).
    fences: Mutex<Vec<Fence>>,
    /// Numbers [`Client::send`] calls, so a retry passes its own fences.
    next_send: AtomicU64,
}

/// What one object mutation may change: `(oid, start, end)` byte ranges.
type Scope = Vec<(u64, u64, u64)>;

/// The bytes a mutation whose fate is unknown may still change, until the
/// connection it was sent on is drained.
struct Fence {
    owner: u64,
    oid: u64,
    start: u64,
    end: u64,
    drained: tokio::sync::watch::Receiver<bool>,
}

impl Fence {
    fn is_open(&self) -> bool {
        // A dropped sender: the reader task is gone with its runtime.
        !*self.drained.borrow() && self.drained.has_changed().is_ok()
    }
}

/// The ranges a request may change, if it is an object mutation.
fn scope(hdr: &ReqHeader) -> Option<Scope> {
    let args = ObjArgs::decode(&hdr.args);
    let whole = |oid: u64| (oid, 0, u64::MAX);
    match hdr.opcode {
        op::WRITE_OBJ => {
            let start = u64::from(args.offset);
            Some(vec![(args.oid, start, start + u64::from(hdr.data_length))])
        }
        // A create (re)writes the whole object, COW copy included.
        op::CREATE_AND_WRITE_OBJ | op::REMOVE_OBJ => Some(vec![whole(args.oid)]),
        // A discard also clears the object's entry in its inode.
        op::DISCARD_OBJ => Some(vec![
            whole(args.oid),
            whole(oid::vid_to_vdi_oid(oid::oid_to_vid(args.oid))),
        ]),
        _ => None,
    }
}

/// A handle to one sheep (cheap to clone; clones share the pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.addr())
    }
}

impl Client {
    /// A client that connects on first use.
    pub fn new(addr: SheepAddr, opts: Options) -> Client {
        let n = opts.connections.max(1);
        Client {
            inner: Arc::new(Inner {
                addr: RwLock::new(addr),
                opts,
                slots: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                fences: Mutex::new(Vec::new()),
                next_send: AtomicU64::new(0),
            }),
        }
    }

    /// A client whose first connection is made now, so a wrong address fails here.
    pub async fn connect(addr: SheepAddr, opts: Options) -> Result<Client> {
        let c = Client::new(addr, opts);
        c.conn().await?;
        Ok(c)
    }

    pub fn addr(&self) -> SheepAddr {
        self.inner.addr.read().clone()
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Points the client at another sheep; open connections are replaced.
    pub async fn set_addr(&self, addr: SheepAddr) {
        *self.inner.addr.write() = addr;
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        for slot in &self.inner.slots {
            if let Some(c) = slot.lock().await.take() {
                c.kill("address changed");
            }
        }
    }

    /// Connections made after the first (a measure of server trouble).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Stops the client: pending requests fail, new ones get [`Error::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for slot in &self.inner.slots {
            if let Some(c) = slot.lock().await.take() {
                c.kill("client closed");
            }
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let n = self.inner.slots.len();
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut slot = self.inner.slots[i].lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_dead() {
                return Ok(c.clone());
            }
            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let addr = self.addr();
        let c = Arc::new(Conn::connect(&addr, self.inner.opts.connect_timeout).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Object mutations whose fate is still unknown: sent on a connection
    /// that failed or timed out, and that sheep has not closed yet.
    pub fn writes_in_doubt(&self) -> usize {
        let mut f = self.inner.fences.lock();
        f.retain(Fence::is_open);
        f.len()
    }

    /// One attempt: pick a connection, send, wait up to the request timeout.
    /// On failure, also returns the connection if the request may have been
    /// sent on it.
    async fn attempt(
        &self,
        req: &Request,
        buf: BytesMut,
    ) -> Result<(RspHeader, BytesMut), (Error, Option<Arc<Conn>>)> {
        let conn = self.conn().await.map_err(|e| (e, None))?;
        let t = self.inner.opts.request_timeout;
        match tokio::time::timeout(t, conn.call_into(req, buf)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err((e, Some(conn))),
            Err(_) => {
                // A silent server: drop the connection so every waiter retries elsewhere.
                conn.kill("request timed out");
                let e = Error::Timeout {
                    addr: self.addr().to_string(),
                    op: op::name(req.hdr.opcode),
                    secs: t.as_secs(),
                };
                Err((e, Some(conn)))
            }
        }
    }

    /// Fences `scope` until `conn` is drained.
    fn fence(&self, owner: u64, scope: &Scope, conn: &Conn) {
        let drained = conn.drained();
        let mut fences = self.inner.fences.lock();
        fences.retain(Fence::is_open);
        fences.extend(scope.iter().map(|&(oid, start, end)| Fence {
            owner,
            oid,
            start,
            end,
            drained: drained.clone(),
        }));
    }

    /// Waits until no fence of another request overlaps `scope`; fails at
    /// `deadline`.
    async fn pass_fences(&self, owner: u64, scope: &Scope, deadline: Instant) -> Result<()> {
        loop {
            let blocking = {
                let mut fences = self.inner.fences.lock();
                fences.retain(Fence::is_open);
                fences
                    .iter()
                    .find(|f| {
                        f.owner != owner
                            && scope
                                .iter()
                                .any(|&(oid, s, e)| f.oid == oid && f.start < e && s < f.end)
                    })
                    .map(|f| (f.oid, f.drained.clone()))
            };
            let Some((oid, mut drained)) = blocking else {
                return Ok(());
            };
            tracing::debug!(
                oid = format_args!("{oid:016x}"),
                "waiting for a write in doubt"
            );
            let wait = tokio::time::timeout_at(deadline.into(), drained.wait_for(|d| *d));
            if wait.await.is_err() {
                return Err(Error::Fenced {
                    addr: self.addr().to_string(),
                    oid,
                    secs: self.inner.opts.retry_timeout.as_secs(),
                });
            }
        }
    }

    /// Sends a request and returns the reply whatever its result code.
    /// Transport failures are retried with backoff until `retry_timeout`:
    /// always when the request was never sent (connect failed), otherwise only
    /// for idempotent requests. Object mutations are fenced (module docs).
    pub async fn send(&self, req: Request) -> Result<Response> {
        let (hdr, data) = self.send_into(req, BytesMut::new()).await?;
        Ok(Response {
            hdr,
            data: data.into(),
        })
    }

    /// [`Client::send`] whose reply data is read straight into `buf`'s spare
    /// capacity (appended; a retry after a transport failure uses a new
    /// buffer, so pass an empty one).
    pub async fn send_into(&self, req: Request, buf: BytesMut) -> Result<(RspHeader, BytesMut)> {
        let mut buf = Some(buf);
        let deadline = Instant::now() + self.inner.opts.retry_timeout;
        let mut backoff = Duration::from_millis(20);
        let scope = scope(&req.hdr);
        let owner = self.inner.next_send.fetch_add(1, Ordering::Relaxed);
        loop {
            if let Some(scope) = &scope {
                self.pass_fences(owner, scope, deadline).await?;
            }
            let e = match self.attempt(&req, buf.take().unwrap_or_default()).await {
                // Sheep rejected the request unexecuted because it is
                // restarting (waiting for the nodes of its last epoch) or
                // going down: wait for it as for a dead one.
                Ok((hdr, _))
                    if restarting(&req, &hdr)
                        && Instant::now() < deadline
                        && !self.inner.closed.load(Ordering::Acquire) =>
                {
                    tracing::debug!(result = ?hdr.result(), op = op::name(req.hdr.opcode), "sheep not ready; retrying");
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Ok(r) => return Ok(r),
                Err((e, conn)) => {
                    if let (Some(scope), Some(conn)) = (&scope, conn) {
                        if matches!(e, Error::Io { .. } | Error::Timeout { .. }) {
                            self.fence(owner, scope, &conn);
                        }
                    }
                    e
                }
            };
            let retry = match &e {
                Error::Connect { .. } => true,
                Error::Io { .. } | Error::Timeout { .. } => req.idempotent,
                _ => false,
            };
            let now = Instant::now();
            if !retry || now >= deadline || self.inner.closed.load(Ordering::Acquire) {
                return Err(e);
            }
            tracing::debug!(error = %e, op = op::name(req.hdr.opcode), "retrying");
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Like [`Client::send`], but a non-success result becomes [`Error::Sheep`].
    pub async fn call(&self, req: Request) -> Result<Response> {
        let opcode = req.hdr.opcode;
        let rsp = self.send(req).await?;
        match rsp.result() {
            SdRes::SUCCESS => Ok(rsp),
            res => Err(Error::sheep(opcode, res)),
        }
    }

    /// Like [`Client::send_into`], but a non-success result becomes [`Error::Sheep`].
    pub async fn call_into(&self, req: Request, buf: BytesMut) -> Result<BytesMut> {
        let opcode = req.hdr.opcode;
        let (hdr, data) = self.send_into(req, buf).await?;
        match hdr.result() {
            SdRes::SUCCESS => Ok(data),
            res => Err(Error::sheep(opcode, res)),
        }
    }
}

/// A reply of a sheep that is restarting (WAIT_FOR_JOIN: back from a stop,
/// waiting for the other nodes of its last epoch) or shutting down (KILLED):
/// the request was refused before it ran, so sending it again is safe.
/// STAT_CLUSTER answers WAIT_FOR_JOIN as the cluster's status, not as a
/// refusal.
fn restarting(req: &Request, rsp: &RspHeader) -> bool {
    matches!(rsp.result(), SdRes::WAIT_FOR_JOIN | SdRes::KILLED)
        && req.hdr.opcode != op::STAT_CLUSTER
}
