//! Connections: framing, concurrency, memory bounds and replies.
//!
//! Each connection has a reader loop and a writer task. The reader takes one
//! request after another (48-byte header, then exactly `data_length` payload
//! bytes iff CMD_WRITE) and runs each handler on the blocking pool, which
//! passes the reply to the writer through a channel in completion order, so a
//! reply (header + payload) is always written whole.
//!
//! Memory is bounded by a global byte budget: before its payload is read, a
//! request reserves, in one piece, what it will hold until its reply has been
//! written — payload or reply buffer plus the handler's working set
//! ([`Sheep::memory_need`]). Handlers never allocate whole large objects:
//! copy-on-write copies file to file and large reads are streamed from the
//! object file in [`STREAM_CHUNK`] pieces. A reservation is capped at the
//! whole budget, so a request larger than the budget still runs (alone).
//! Payloads larger than any legal object are refused with INVALID_PARMS (and
//! skipped), and each connection has at most [`CONN_INFLIGHT`] requests in flight.

use super::core::{Action, FileRange, Reply, Req, Sheep, OP_READ_PEER, STREAM_CHUNK};
use crate::proto::header::RspHeader;
use crate::proto::{op, ReqHeader, SdRes, SD_REQ_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Requests one connection may have in flight.
pub const CONN_INFLIGHT: usize = 256;

/// Shared by every connection.
pub struct Ctx {
    pub sheep: Arc<Sheep>,
    /// Byte budget for payloads and reply buffers.
    pub budget: Arc<Semaphore>,
    pub budget_bytes: u64,
    /// Set to true to stop serving.
    pub stop: watch::Sender<bool>,
    pub next_conn: AtomicU64,
}

struct Outgoing {
    hdr: [u8; 48],
    data: Vec<u8>,
    /// Sent after `data`, read from the object file piece by piece.
    stream: Option<FileRange>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Serves one client until it disconnects or the server stops.
pub async fn serve<S>(ctx: Arc<Ctx>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("conn", conn, peer = %peer);
    async move {
        tracing::debug!("connected");
        let (r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<Outgoing>(CONN_INFLIGHT);
        let writer = tokio::spawn(write_loop(w, rx).in_current_span());
        if let Err(why) = read_loop(&ctx, r, tx).await {
            tracing::debug!(%why, "closing connection");
        }
        // The writer ends once every in-flight request has replied.
        let _ = writer.await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

async fn write_loop<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Outgoing>) {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some(mut o) = rx.recv().await {
        let mut res = w.write_all(&o.hdr).await;
        if res.is_ok() && !o.data.is_empty() {
            res = w.write_all(&o.data).await;
        }
        if res.is_ok() {
            if let Some(s) = o.stream.take() {
                res = send_file_range(&mut w, s).await;
            }
        }
        drop(o);
        // Flush when nothing else is ready, so bursts of small replies coalesce.
        if res.is_ok() && rx.is_empty() {
            res = w.flush().await;
        }
        if let Err(e) = res {
            tracing::debug!(error = %e, "send failed");
            // The client must not wait for replies that will not come.
            let _ = w.shutdown().await;
            // Keep draining so request tasks never block on a dead client.
            while rx.recv().await.is_some() {}
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    ctx: &Arc<Ctx>,
    r: R,
    tx: mpsc::Sender<Outgoing>,
) -> Result<(), String> {
    let mut r = BufReader::with_capacity(128 * 1024, r);
    let inflight = Arc::new(Semaphore::new(CONN_INFLIGHT));
    let mut stop = ctx.stop.subscribe();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let mut hb = [0u8; SD_REQ_SIZE];
        tokio::select! {
            res = r.read_exact(&mut hb) => {
                if let Err(e) = res {
                    return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        Ok(())
                    } else {
                        Err(format!("receive failed: {e}"))
                    };
                }
            }
            _ = stop.changed() => return Ok(()),
        }
        let hdr = ReqHeader::decode(&hb);
        let slot = inflight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "closed".to_string())?;
        let dl = hdr.data_length as u64;
        let max = ctx.sheep.max_payload();
        let has_payload = hdr.has_payload();
        let reads = matches!(hdr.opcode, op::READ_OBJ | OP_READ_PEER);
        if dl > max && (has_payload || reads) {
            tracing::warn!(
                opcode = format_args!("{:#04x}", hdr.opcode),
                data_length = dl,
                max,
                "data_length beyond the largest object; refused"
            );
            if has_payload {
                skip(&mut r, dl)
                    .await
                    .map_err(|e| format!("receive failed: {e}"))?;
            }
            let out = reply_bytes(&ctx.sheep, &hdr, Reply::res(SdRes::INVALID_PARMS));
            tx.send(out).await.map_err(|_| "writer gone".to_string())?;
            drop(slot);
            continue;
        }
        // One reservation for everything the request holds (capped so one
        // request can always proceed).
        let want = ctx
            .sheep
            .memory_need(&hdr)
            .min(ctx.budget_bytes)
            .min(u32::MAX as u64) as u32;
        let permit = if want > 0 {
            Some(
                ctx.budget
                    .clone()
                    .acquire_many_owned(want)
                    .await
                    .map_err(|_| "closed".to_string())?,
            )
        } else {
            None
        };
        let mut data = Vec::new();
        if has_payload {
            data = vec![0u8; dl as usize];
            tokio::select! {
                res = r.read_exact(&mut data) => {
                    res.map_err(|e| format!("payload truncated: {e}"))?;
                }
                _ = stop.changed() => return Ok(()),
            }
        }
        let ctx2 = ctx.clone();
        let tx2 = tx.clone();
        let span = tracing::debug_span!(
            "req",
            op = op::name(hdr.opcode),
            opcode = hdr.opcode,
            id = hdr.id
        );
        // The handler runs on the blocking pool and hands its reply straight
        // to the writer: no async task in between, one thread hand-off less
        // per request.
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let reply = run_request(&ctx2.sheep, Req { hdr, data });
                let action = reply.action;
                let res = reply.result;
                let mut out = reply_bytes(&ctx2.sheep, &hdr, reply);
                tracing::debug!(result = ?res, len = out.data.len(), "reply");
                out._permit = permit;
                // Fails only once the writer is gone (client disconnected).
                let _ = tx2.blocking_send(out);
                drop(slot);
                if action == Action::Stop {
                    let _ = ctx2.stop.send(true);
                }
            })
        });
    }
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
        _permit: None,
    }
}

/// Sends a file range piece by piece. A read error after the header promised
/// the bytes cannot be reported in-band: it closes the connection (the client
/// sees a transport error and retries).
async fn send_file_range<W: AsyncWrite + Unpin>(w: &mut W, s: FileRange) -> std::io::Result<()> {
    // Its size is the request's whole reservation.
    let mut buf = vec![0u8; STREAM_CHUNK.min(s.len as usize)];
    let file = s.file.clone();
    let mut done = 0u64;
    while done < s.len {
        let n = (s.len - done).min(STREAM_CHUNK as u64) as usize;
        let off = s.offset + done;
        let f = file.clone();
        let (b, r) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let r = f.read_exact_at(&mut buf[..n], off);
            (buf, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        buf = b;
        if let Err(e) = r {
            tracing::error!(
                oid = format_args!("{:016x}", s.oid),
                offset = off,
                error = %e,
                "read failed while streaming a reply; closing the connection"
            );
            return Err(e);
        }
        w.write_all(&buf[..n]).await?;
        done += n as u64;
    }
    Ok(())
}

/// Reads and discards `n` bytes.
async fn skip<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> std::io::Result<()> {
    let mut left = n;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..k]).await?;
        left -= k as u64;
    }
    Ok(())
}
