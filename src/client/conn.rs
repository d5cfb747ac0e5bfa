//! One pipelined connection. A caller finding the socket idle writes its
//! request itself (no hop to another thread: FUSE threads call in from outside
//! the runtime); otherwise a writer task sends queued requests in batches. A
//! reader task matches replies to waiters by `id` (sheep replies in
//! completion order).

use super::pool::{Request, Response};
use super::{Error, Result, SheepAddr};
use crate::proto::{ReqHeader, RspHeader, SD_RSP_SIZE};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<Response>>;

struct Pending {
    /// Reply-buffer size the request asked for (bounds what we keep).
    want: usize,
    tx: Waiter,
}

struct Shared {
    addr: String,
    pending: Mutex<Option<HashMap<u32, Pending>>>,
    dead: AtomicBool,
}

impl Shared {
    /// Marks the connection dead and fails every waiter.
    fn kill(&self, why: &str) {
        self.dead.store(true, Ordering::Release);
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
    pub async fn connect(addr: &SheepAddr, timeout: Duration) -> Result<Conn> {
        let name = addr.to_string();
        let fut = async {
            match addr {
                SheepAddr::Tcp { host, port } => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    let (r, w) = s.into_split();
                    Ok::<_, std::io::Error>(Conn::start(name.clone(), r, w))
                }
                SheepAddr::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    let (r, w) = s.into_split();
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

    fn start<R, W>(addr: String, r: R, w: W) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            addr,
            pending: Mutex::new(Some(HashMap::new())),
            dead: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let boxed: Box<dyn AsyncWrite + Send + Unpin> = Box::new(w);
        let sink = Arc::new(tokio::sync::Mutex::new(BufWriter::with_capacity(
            256 * 1024,
            boxed,
        )));
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(writer(shared.clone(), sink.clone(), queued.clone(), rx));
        tokio::spawn(reader(shared.clone(), r));
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

    /// Sends one request and waits for its reply (no timeout here).
    pub async fn call(&self, req: &Request) -> Result<Response> {
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
                let res = write_msg(&mut w, &hdr, &payload, true).await;
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

async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    hdr: &[u8],
    payload: &[u8],
    flush: bool,
) -> std::io::Result<()> {
    w.write_all(hdr).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    if flush {
        w.flush().await?;
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
            if let Err(e) = write_msg(&mut w, &h, &p, false).await {
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
    // Dropping the socket (not shutting it down) discards anything buffered
    // for a dead connection instead of flushing a half message.
    if !dead() {
        let _ = sink.lock().await.shutdown().await;
    }
}

async fn reader<R: AsyncRead + Unpin>(shared: Arc<Shared>, r: R) {
    let mut r = BufReader::with_capacity(128 * 1024, r);
    let why = loop {
        let mut hb = [0u8; SD_RSP_SIZE];
        if let Err(e) = r.read_exact(&mut hb).await {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "closed by sheep".to_string()
            } else {
                format!("receive failed: {e}")
            };
        }
        let hdr = RspHeader::decode(&hb);
        let waiter = shared
            .pending
            .lock()
            .as_mut()
            .and_then(|m| m.remove(&hdr.id));
        let Some(waiter) = waiter else {
            break format!("reply with unknown id {}", hdr.id);
        };
        // Keep at most what was asked for; drain the rest so the stream stays in sync.
        let len = hdr.data_length as usize;
        let keep = len.min(waiter.want);
        let mut data = vec![0u8; keep];
        if let Err(e) = r.read_exact(&mut data).await {
            let _ = waiter.tx.send(Err(io_err(&shared.addr, "reply truncated")));
            break format!("receive failed: {e}");
        }
        if len > keep {
            let mut rest = (&mut r).take((len - keep) as u64);
            if let Err(e) = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await {
                let _ = waiter.tx.send(Err(io_err(&shared.addr, "reply truncated")));
                break format!("receive failed: {e}");
            }
        }
        let _ = waiter.tx.send(Ok(Response { hdr, data }));
    };
    shared.kill(&why);
}
