//! One pipelined connection: a writer task sends requests in order, a reader
//! task matches replies to waiters by `id` (sheep replies in completion order).

use super::pool::{Request, Response};
use super::{Error, Result, SheepAddr};
use crate::proto::{ReqHeader, RspHeader, SD_RSP_SIZE};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

pub(crate) struct Conn {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<(Bytes, Bytes)>,
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
        tokio::spawn(writer(shared.clone(), w, rx));
        tokio::spawn(reader(shared.clone(), r));
        Conn {
            shared,
            tx,
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
        if self
            .tx
            .send((Bytes::copy_from_slice(&hdr.encode()), payload))
            .is_err()
        {
            self.shared.kill("writer stopped");
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

async fn writer<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    w: W,
    mut rx: mpsc::UnboundedReceiver<(Bytes, Bytes)>,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some((hdr, payload)) = rx.recv().await {
        if shared.dead.load(Ordering::Acquire) {
            break;
        }
        let mut res = w.write_all(&hdr).await;
        if res.is_ok() && !payload.is_empty() {
            res = w.write_all(&payload).await;
        }
        // Flush only when nothing else is queued, so bursts go out together.
        if res.is_ok() && rx.is_empty() {
            res = w.flush().await;
        }
        if let Err(e) = res {
            shared.kill(&format!("send failed: {e}"));
            break;
        }
    }
    let _ = w.shutdown().await;
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
