//! [`Client`]: a few pipelined connections to one sheep, with per-request
//! timeouts, reconnect and bounded exponential backoff.

use super::conn::Conn;
use super::{Error, Result, SheepAddr};
use crate::proto::{op, ReqHeader, RspHeader, SdRes};
use bytes::Bytes;
use parking_lot::RwLock;
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

    /// One attempt: pick a connection, send, wait up to the request timeout.
    async fn attempt(&self, req: &Request) -> Result<Response> {
        let conn = self.conn().await?;
        let t = self.inner.opts.request_timeout;
        match tokio::time::timeout(t, conn.call(req)).await {
            Ok(r) => r,
            Err(_) => {
                // A silent server: drop the connection so every waiter retries elsewhere.
                conn.kill("request timed out");
                Err(Error::Timeout {
                    addr: self.addr().to_string(),
                    op: op::name(req.hdr.opcode),
                    secs: t.as_secs(),
                })
            }
        }
    }

    /// Sends a request and returns the reply whatever its result code.
    /// Transport failures are retried with backoff until `retry_timeout`:
    /// always when the request was never sent (connect failed), otherwise only
    /// for idempotent requests.
    pub async fn send(&self, req: Request) -> Result<Response> {
        let deadline = Instant::now() + self.inner.opts.retry_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.attempt(&req).await {
                Ok(r) => return Ok(r),
                Err(e) => {
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
}
