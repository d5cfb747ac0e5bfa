//! One pipelined connection. A caller finding the socket idle writes its
//! request itself (no hop to another thread: FUSE threads call in from outside
//! the runtime); otherwise a writer task sends queued requests in batches. A
//! reader task matches replies to waiters by `id` (sheep replies in
//! completion order).
//!
//! A killed connection is not simply dropped: its write side is shut down
//! and the reader keeps reading (and discarding) until sheep closes the
//! socket. sheep closes a client's socket only once every request it read
//! from it has completed (sheep/request.c frees the client when its request
//! count drops to zero; sheep-lite's connection ends when its writer has sent
//! the last reply), so [`Conn::drained`] turning true means that no request
//! sent on this connection can still be executing. The write fences of
//! [`super::Client`] rest on this.
//!
//! The file uses nothing of the crate but its parent's types and
//! `crate::proto`, and locks and spawns through `super::sync`, so that
//! tests/shuttle_conn.rs can compile it onto Shuttle's executor and explore
//! the interleavings of callers, cancels and kills.

use super::request::Request;
use super::sync::{spawn, Mutex};
use super::transport::Connector;
use super::{Error, Result, SheepAddr};
use crate::proto::{ReqHeader, RspHeader, SD_RSP_SIZE};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// A reply: its header and data.
type Reply = (RspHeader, BytesMut);
type Waiter = oneshot::Sender<Result<Reply>>;

struct Pending {
    /// Reply-buffer size the request asked for (bounds what we keep).
    want: usize,
    /// Where the reply data goes.
    buf: BytesMut,
    tx: Waiter,
}

struct Shared {
    addr: String,
    pending: Mutex<Option<HashMap<u32, Pending>>>,
    dead: AtomicBool,
    /// Wakes the writer task so it shuts the write side down.
    killed: Notify,
    /// True once the reader saw the socket end (see the module docs).
    drained: watch::Sender<bool>,
}

impl Shared {
    /// Marks the connection dead, fails every waiter and has the write side
    /// shut down (the reader drains until sheep closes).
    fn kill(&self, why: &str) {
        self.dead.store(true, Ordering::Release);
        self.killed.notify_one();
        let drained = self.pending.lock().take();
        if let Some(map) = drained {
            for (_, p) in map {
                let _ = p.tx.send(Err(io_err(&self.addr, why)));
            }
        }
    }
}

fn io_err(addr: &str, why: &str) -> Error {
    Error::Io {
        addr: addr.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string()),
    }
}

type Sink = tokio::sync::Mutex<BufWriter<Box<dyn AsyncWrite + Send + Unpin>>>;

pub(crate) struct Conn {
    shared: Arc<Shared>,
    /// The socket's write side, shared by direct writers and the writer task.
    sink: Arc<Sink>,
    tx: mpsc::UnboundedSender<(Bytes, Bytes)>,
    /// Messages handed to the writer task and not written yet.
    queued: Arc<AtomicUsize>,
    next_id: AtomicU32,
}

impl Conn {
    /// Connects to `addr`, through `via` if given (see [`super::transport`]).
    pub async fn connect(
        addr: &SheepAddr,
        timeout: Duration,
        via: Option<&Connector>,
    ) -> Result<Conn> {
        let name = addr.to_string();
        let fut = async {
            if let Some(connect) = via {
                let (r, w) = tokio::io::split(connect(addr).await?);
                return Ok(Conn::start(name.clone(), r, w));
            }
            match addr {
                SheepAddr::Tcp { host, port } => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    let (r, w) = s.into_split();
                    Ok::<_, std::io::Error>(Conn::start(name.clone(), r, w))
                }
                SheepAddr::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    let (r, w) = super::transport::unix_halves(s)?;
                    Ok(Conn::start(name.clone(), r, w))
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(Error::Connect { addr: name, source }),
            Err(_) => Err(Error::Connect {
                addr: name,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            }),
        }
    }

    /// Runs a connection over `r` and `w` (tests/shuttle_conn.rs drives it
    /// over an in-memory socket).
    pub(super) fn start<R, W>(addr: String, r: R, w: W) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            addr,
            pending: Mutex::new(Some(HashMap::new())),
            dead: AtomicBool::new(false),
            killed: Notify::new(),
            drained: watch::channel(false).0,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let boxed: Box<dyn AsyncWrite + Send + Unpin> = Box::new(w);
        let sink = Arc::new(tokio::sync::Mutex::new(BufWriter::with_capacity(
            256 * 1024,
            boxed,
        )));
        let queued = Arc::new(AtomicUsize::new(0));
        spawn(writer(shared.clone(), sink.clone(), queued.clone(), rx));
        spawn(reader(shared.clone(), r));
        Conn {
            shared,
            sink,
            tx,
            queued,
            next_id: AtomicU32::new(0),
        }
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    pub fn kill(&self, why: &str) {
        self.shared.kill(why);
    }

    /// Turns true once sheep has closed the socket, i.e. once nothing sent
    /// on this connection can still be executing.
    pub fn drained(&self) -> watch::Receiver<bool> {
        self.shared.drained.subscribe()
    }

    /// Sends one request and waits for its reply (no timeout here). The
    /// reply data is appended to `buf`, read from the socket straight into
    /// its spare capacity: given the room, the caller's final buffer, with
    /// no zero-fill and no copy.
    pub async fn call_into(&self, req: &Request, buf: BytesMut) -> Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut hdr: ReqHeader = req.hdr;
        hdr.id = id;
        let (tx, rx) = oneshot::channel();
        {
            let mut guard = self.shared.pending.lock();
            let Some(map) = guard.as_mut() else {
                return Err(io_err(&self.shared.addr, "connection closed"));
            };
            map.insert(
                id,
                Pending {
                    want: hdr.data_length as usize,
                    buf,
                    tx,
                },
            );
        }
        let payload = if hdr.has_payload() {
            req.payload.clone()
        } else {
            Bytes::new()
        };
        let hdr = hdr.encode();
        // Fast path: nobody is writing and nothing waits in the queue.
        let direct = if self.queued.load(Ordering::Acquire) == 0 {
            self.sink.try_lock().ok()
        } else {
            None
        };
        match direct {
            // A killed connection may hold a half-sent message: add nothing.
            // (Our waiter has been failed by the kill.)
            Some(_) if self.is_dead() => {}
            Some(mut w) => {
                // Dropped half-way (cancelled), the stream would be corrupt.
                let guard = KillOnDrop(Some(&self.shared));
                let res = write_direct(&mut w, &hdr, &payload).await;
                guard.disarm();
                if let Err(e) = res {
                    self.shared.kill(&format!("send failed: {e}"));
                }
            }
            None => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                if self
                    .tx
                    .send((Bytes::copy_from_slice(&hdr), payload))
                    .is_err()
                {
                    self.shared.kill("writer stopped");
                }
            }
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(io_err(&self.shared.addr, "connection closed")),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Ends the writer (channel closes); the reader ends when the socket does.
        self.shared.kill("connection dropped");
    }
}

/// Queues one message in the buffer (the writer task flushes a batch).
async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    hdr: &[u8],
    payload: &[u8],
) -> std::io::Result<()> {
    w.write_all(hdr).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    Ok(())
}

/// Sends one message at once: header and payload in one writev, past the
/// buffer (no copy of the payload, one syscall unless the socket is full).
async fn write_direct<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    mut hdr: &[u8],
    mut payload: &[u8],
) -> std::io::Result<()> {
    // Empty whenever the lock is free (the writer task flushes before it
    // lets go); flushed anyway so that nothing can overtake it.
    w.flush().await?;
    let w = w.get_mut();
    while !hdr.is_empty() || !payload.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(hdr), IoSlice::new(payload)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let h = n.min(hdr.len());
        hdr = &hdr[h..];
        payload = &payload[n - h..];
    }
    Ok(())
}

/// Kills the connection if a direct write is abandoned half-way.
struct KillOnDrop<'a>(Option<&'a Shared>);

impl KillOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.kill("request abandoned while being sent");
        }
    }
}

async fn writer(
    shared: Arc<Shared>,
    sink: Arc<Sink>,
    queued: Arc<AtomicUsize>,
    rx: mpsc::UnboundedReceiver<(Bytes, Bytes)>,
) {
    // A kill also interrupts a write blocked on a peer that stopped reading.
    // Biased: a kill is seen first, and no random branch order makes a
    // Shuttle schedule (tests/shuttle_conn.rs) replay differently.
    tokio::select! {
        biased;
        _ = shared.killed.notified() => {}
        _ = write_queued(&shared, &sink, &queued, rx) => {}
    }
    let mut w = sink.lock().await;
    if shared.dead.load(Ordering::Acquire) {
        // Shut the socket's write side without flushing what is buffered (it
        // may end in a half message): sheep sees the end of the stream, lets
        // what it already read finish, then closes, which ends the reader.
        let _ = w.get_mut().shutdown().await;
    } else {
        let _ = w.shutdown().await;
    }
}

async fn write_queued(
    shared: &Shared,
    sink: &Sink,
    queued: &AtomicUsize,
    mut rx: mpsc::UnboundedReceiver<(Bytes, Bytes)>,
) {
    let dead = || shared.dead.load(Ordering::Acquire);
    'outer: while let Some((hdr, payload)) = rx.recv().await {
        let mut w = sink.lock().await;
        // A direct writer abandoned half-way kills the connection before it
        // lets go of the socket: nothing may follow its partial message.
        let mut next = Some((hdr, payload));
        while let Some((h, p)) = next.take() {
            queued.fetch_sub(1, Ordering::AcqRel);
            if dead() {
                break 'outer;
            }
            if let Err(e) = write_msg(&mut w, &h, &p).await {
                shared.kill(&format!("send failed: {e}"));
                break 'outer;
            }
            // Everything queued meanwhile goes out in the same flush.
            next = rx.try_recv().ok();
        }
        if dead() {
            break;
        }
        if let Err(e) = w.flush().await {
            shared.kill(&format!("send failed: {e}"));
            break;
        }
    }
}

async fn reader<R: AsyncRead + Unpin>(shared: Arc<Shared>, r: R) {
    let mut r = BufReader::with_capacity(128 * 1024, r);
    let why = read_replies(&shared, &mut r).await;
    shared.kill(&why);
    // Drain: whatever still comes is for requests nobody waits for; the end
    // of the stream says sheep has finished all of them.
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    shared.drained.send_replace(true);
}

/// Hands replies to their waiters until the stream ends, fails or the
/// connection is killed; says why it stopped.
async fn read_replies<R: AsyncRead + Unpin>(shared: &Shared, r: &mut BufReader<R>) -> String {
    loop {
        let mut hb = [0u8; SD_RSP_SIZE];
        if let Err(e) = r.read_exact(&mut hb).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "closed by sheep".to_string()
            } else {
                format!("receive failed: {e}")
            };
        }
        let hdr = RspHeader::decode(&hb);
        let waiter = {
            let mut pending = shared.pending.lock();
            match pending.as_mut() {
                Some(m) => m.remove(&hdr.id),
                None => return "connection killed".to_string(),
            }
        };
        let Some(waiter) = waiter else {
            return format!("reply with unknown id {}", hdr.id);
        };
        // Keep at most what was asked for; drain the rest so the stream stays in sync.
        let len = hdr.data_length as usize;
        let keep = len.min(waiter.want);
        let mut data = waiter.buf;
        if let Err(e) = read_into(r, &mut data, keep).await {
            let _ = waiter.tx.send(Err(io_err(&shared.addr, "reply truncated")));
            return format!("receive failed: {e}");
        }
        if len > keep {
            let mut rest = (&mut *r).take((len - keep) as u64);
            if let Err(e) = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await {
                let _ = waiter.tx.send(Err(io_err(&shared.addr, "reply truncated")));
                return format!("receive failed: {e}");
            }
        }
        let _ = waiter.tx.send(Ok((hdr, data)));
    }
}

/// Appends exactly `n` bytes from `r` to `buf`, read straight into its spare
/// capacity (no zero-fill first).
async fn read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    n: usize,
) -> std::io::Result<()> {
    buf.reserve(n);
    let end = buf.len() + n;
    while buf.len() < end {
        let left = end - buf.len();
        let mut rest = (&mut *buf).limit(left);
        if r.read_buf(&mut rest).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}
