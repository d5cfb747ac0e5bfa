//! Concurrency checks of the client's connection (src/client/conn.rs) with
//! Shuttle: callers racing for the socket (the first finding it idle writes
//! its request itself, the others queue for the writer task), a caller
//! cancelled in the middle of its own write, and a kill racing queued
//! writes, over an in-memory socket that accepts a scheduler-chosen part of
//! each write, or nothing for now, and reads back likewise.
//!
//! conn.rs is compiled here against the `sync` of tests/shuttle_common/
//! (its mutex adds Shuttle's scheduling points; its `spawn` runs the writer
//! and reader tasks on Shuttle's executor). tokio's channels, `Notify` and
//! `Mutex` need no runtime and wake Shuttle's tasks like any other waker.
//! Shuttle picks the next task at every scheduling point: each lock of the
//! connection's table of waiters, each read and write of the socket (which
//! also answers `Pending` at random), and each await that waits; so where a
//! write stops half-way, and when a cancel or a kill lands, are its choices.
//!
//! The peer reads the stream as sheep does (48-byte headers, then
//! `data_length` bytes when CMD_WRITE is set) and answers each request. The
//! checks, on every schedule:
//! - every message on the wire is a whole request of one caller, sent once:
//!   no two interleaved, nothing after a partial one (which may only end
//!   the stream of a killed or dropped connection);
//! - every caller gets the reply to its own request (its id, its bytes) or
//!   an error, and an error only from a killed connection;
//! - once the connection is dead (killed, a direct write cancelled, or
//!   dropped) it starts nothing new: the socket takes no byte past what it
//!   had been asked to write before (a direct write may finish its message,
//!   the writer the batch it was flushing), and a request made after a kill
//!   fails without reaching the wire;
//! - a killed connection shuts its write side and `drained` turns true once
//!   the peer has closed, while the connection is still held; no task waits
//!   forever (Shuttle fails a deadlock).
//!
//! Bugs planted in conn.rs that these checks catch within the default
//! iteration count, each one alone, in every run tried:
//! - `guard.disarm()` before `write_direct` (a cancelled direct write no
//!   longer kills the connection): the next request follows the partial
//!   one on the wire (caught within ten schedules);
//! - the writer task ignoring `dead()` (both of its checks removed): it
//!   sends queued requests after the kill;
//! - the direct path not checking `is_dead()`: it writes after the writer
//!   has shut the write side down;
//! - the writer not waiting for `killed`: a killed connection never
//!   drains (a deadlock).
//!
//! Removing only the writer's first `dead()` check is not caught, and is
//! not a bug on the wire: the check before the flush stops the batch, and a
//! batch reaches the socket only when flushed (short of 256 KiB). The
//! direct path not looking at `queued` is not a bug either (it overtakes
//! queued requests, and replies go by id).
//!
//! `SHUTTLE_ITERATIONS` (default 2000) sets the schedules tried per check.

mod shuttle_common;

// What conn.rs imports from its parent, `sheepfs::client`, and from the
// crate (`crate::proto`): this file stands in for both.
use sheepfs::client::{Error, Result, SheepAddr};
use sheepfs::proto;

#[allow(dead_code, unused_imports)]
#[path = "shuttle_common/sync.rs"]
mod sync;

mod request {
    pub use sheepfs::client::Request;
}

mod transport {
    use futures::future::BoxFuture;
    use sheepfs::client::{ByteStream, SheepAddr};

    pub type Connector = std::sync::Arc<
        dyn Fn(&SheepAddr) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>>
            + Send
            + Sync,
    >;

    /// conn.rs's Unix-socket branch, never taken here (the checks run over
    /// an in-memory socket): tokio's own halves stand in for the library's.
    pub fn unix_halves(
        s: tokio::net::UnixStream,
    ) -> std::io::Result<(
        tokio::net::unix::OwnedReadHalf,
        tokio::net::unix::OwnedWriteHalf,
    )> {
        Ok(s.into_split())
    }
}

#[allow(dead_code)]
#[path = "../src/client/conn.rs"]
mod conn;

use bytes::{Bytes, BytesMut};
use conn::Conn;
use proto::{flags, op, ReqHeader, RspHeader, SdRes};
use shuttle::future::{block_on, spawn, yield_now, JoinHandle};
use shuttle::rand::{thread_rng, Rng};
use shuttle_common::{check, iterations};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------
// The in-memory socket.

/// Bytes one direction holds before a write has to wait for the reader.
const ROOM: usize = 64;

/// One direction of the socket.
#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    /// The writing side has shut down (or is gone).
    shut: bool,
    /// Bytes written so far.
    total: usize,
    /// The end of the bytes the writing side has asked to write so far.
    begun: usize,
    /// Set by [`Wire::seal`] once the connection is dead: where the bytes
    /// must end.
    sealed: Option<usize>,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

type Shared = Arc<Mutex<Pipe>>;

/// The writing end of a [`Pipe`].
struct Tx(Shared);

/// The reading end of a [`Pipe`].
struct Rx(Shared);

/// The client's side of the socket as the test sees it.
#[derive(Clone)]
struct Wire(Shared);

impl Wire {
    /// From now on, at most what the connection had begun to send before
    /// may go out: called once it is dead, when it must start nothing new
    /// (it finishes a direct write and the batch it was flushing).
    fn seal(&self) {
        let mut p = self.0.lock().unwrap();
        p.sealed = Some(p.begun);
    }
}

/// A pair of connected ends, the client's and the peer's, and the client's
/// write side to watch.
fn socket() -> ((Rx, Tx), (Rx, Tx), Wire) {
    let (up, down) = (Shared::default(), Shared::default());
    let wire = Wire(up.clone());
    ((Rx(down.clone()), Tx(up.clone())), (Rx(up), Tx(down)), wire)
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

impl Tx {
    /// Takes some of `parts` (a scheduler-chosen count of bytes), or none
    /// for now.
    fn write_parts(&self, cx: &mut Context<'_>, parts: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let want: usize = parts.iter().map(|p| p.len()).sum();
        {
            let mut p = self.0.lock().unwrap();
            // The connection has begun to send this much: a kill from here
            // on may not stop it.
            p.begun = p.begun.max(p.total + want);
            if want == 0 {
                return Poll::Ready(Ok(0));
            }
            if p.bytes.len() == ROOM {
                p.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        // Not writable for now: the writer has to wait (where a cancel takes
        // effect).
        if thread_rng().gen_range(0..3) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Another task may run here: a cancel or a kill lands mid-message.
        // (Only on the way to Ready: the point wakes this task, so before a
        // Pending it would have it polled again at once, forever.)
        shuttle::thread::yield_now();
        let mut p = self.0.lock().unwrap();
        assert!(!p.shut, "written after the write side was shut down");
        // Only the reader ran meanwhile: there is more room, not less.
        let room = ROOM - p.bytes.len();
        let n = thread_rng().gen_range(1..=want.min(room));
        let mut left = n;
        for part in parts {
            let k = left.min(part.len());
            p.bytes.extend(&part[..k]);
            left -= k;
        }
        p.total += n;
        if let Some(limit) = p.sealed {
            assert!(
                p.total <= limit,
                "a request the connection had not begun to send went out after the kill"
            );
        }
        let r = p.reader.take();
        drop(p);
        wake(r);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Tx {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_parts(cx, &[IoSlice::new(data)])
    }

    /// Whole (header and payload of a direct write), so that `begun`
    /// covers the whole message.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_parts(cx, parts)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = {
            let mut p = self.0.lock().unwrap();
            p.shut = true;
            p.reader.take()
        };
        wake(r);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let r = {
            let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
            p.shut = true;
            p.reader.take()
        };
        wake(r);
    }
}

impl AsyncRead for Rx {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        {
            let mut p = self.0.lock().unwrap();
            if p.bytes.is_empty() {
                if !p.shut {
                    p.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                return Poll::Ready(Ok(())); // the end of the stream
            }
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Another task may run here (see `write_parts`); only the writer,
        // which adds bytes.
        shuttle::thread::yield_now();
        let mut p = self.0.lock().unwrap();
        let n = thread_rng().gen_range(1..=p.bytes.len().min(buf.remaining()));
        let chunk: Vec<u8> = p.bytes.drain(..n).collect();
        buf.put_slice(&chunk);
        let w = p.writer.take();
        drop(p);
        wake(w);
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------
// Callers and the peer.

/// A caller's request (its id aside) and the reply the peer gives it.
struct Call {
    hdr: ReqHeader,
    payload: Bytes,
    reply: Vec<u8>,
}

impl Call {
    /// Caller `i`'s request: a write of `len` bytes (a read when 0), with
    /// bytes and object id of its own; the reply says who it is for.
    fn new(i: usize, len: usize) -> Call {
        let mut hdr = ReqHeader::for_op(if len > 0 { op::WRITE_OBJ } else { op::READ_OBJ });
        hdr.args = proto::header::ObjArgs {
            oid: 0x00ab_0000_0000_0000 | i as u64,
            offset: 512 * i as u32,
            ..Default::default()
        }
        .encode();
        let mut payload = Bytes::new();
        if len > 0 {
            hdr.flags |= flags::CMD_WRITE;
            payload = (0..len).map(|b| (i * 37 + b) as u8).collect();
        }
        // A read asks for 16 bytes; a write's reply carries more than it
        // asked for (its length), which the reader must drain.
        hdr.data_length = if len > 0 { len as u32 } else { 16 };
        let reply = (0..len + 16).map(|b| (0x80 + i * 11 + b) as u8).collect();
        Call {
            hdr,
            payload,
            reply,
        }
    }

    fn request(&self) -> sheepfs::client::Request {
        sheepfs::client::Request {
            hdr: self.hdr,
            payload: self.payload.clone(),
            idempotent: true,
        }
    }

    /// The reply data the caller keeps (what it asked for).
    fn kept(&self) -> &[u8] {
        &self.reply[..self.reply.len().min(self.hdr.data_length as usize)]
    }
}

/// What the peer read off the wire.
#[derive(Default)]
struct Heard {
    /// (caller, id) of each whole request, in wire order.
    requests: Vec<(usize, u32)>,
    /// The stream ended inside a request.
    partial: bool,
}

impl Heard {
    fn id_of(&self, caller: usize) -> Option<u32> {
        self.requests.iter().find(|r| r.0 == caller).map(|r| r.1)
    }
}

/// Fills `buf` from `r`; says how much it got before the end of the stream.
async fn read_full(r: &mut Rx, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("peer read failed: {e}"),
        }
    }
    got
}

/// sheep: reads requests until the client shuts its write side, answering
/// each, then closes.
async fn peer(mut r: Rx, mut w: Tx, calls: Arc<Vec<Call>>) -> Heard {
    let mut heard = Heard::default();
    loop {
        let mut hb = [0u8; proto::SD_REQ_SIZE];
        match read_full(&mut r, &mut hb).await {
            0 => break,
            n if n < hb.len() => {
                heard.partial = true;
                break;
            }
            _ => {}
        }
        let hdr = ReqHeader::decode(&hb);
        let anon = ReqHeader { id: 0, ..hdr };
        let caller = calls.iter().position(|c| c.hdr == anon);
        let Some(i) = caller else {
            panic!(
                "message {} on the wire is no caller's request (two interleaved, or one \
                 after a partial one): {hdr:?}",
                heard.requests.len()
            );
        };
        assert!(heard.id_of(i).is_none(), "caller {i}'s request sent twice");
        assert!(
            heard.requests.iter().all(|r| r.1 != hdr.id),
            "id {} used twice",
            hdr.id
        );
        let mut payload = vec![
            0u8;
            if hdr.has_payload() {
                hdr.data_length as usize
            } else {
                0
            }
        ];
        if read_full(&mut r, &mut payload).await < payload.len() {
            heard.partial = true;
            break;
        }
        assert_eq!(
            payload, calls[i].payload,
            "caller {i}'s payload garbled on the wire"
        );
        heard.requests.push((i, hdr.id));
        let mut rsp = RspHeader::reply_to(&hdr, SdRes(0), 0);
        rsp.data_length = calls[i].reply.len() as u32;
        // The client reads until we close, so these cannot fail.
        w.write_all(&rsp.encode()).await.expect("reply");
        w.write_all(&calls[i].reply).await.expect("reply");
    }
    // Everything read has been answered: close, as sheep does.
    w.shutdown().await.expect("close");
    heard
}

/// A connection to a peer answering `calls`, and what the test watches.
struct Net {
    conn: Arc<Conn>,
    calls: Arc<Vec<Call>>,
    wire: Wire,
    peer: JoinHandle<Heard>,
}

impl Net {
    fn start(calls: Vec<Call>) -> Net {
        let calls = Arc::new(calls);
        let ((r, w), (pr, pw), wire) = socket();
        let conn = Arc::new(Conn::start("peer".into(), r, w));
        let peer = spawn(peer(pr, pw, calls.clone()));
        Net {
            conn,
            calls,
            wire,
            peer,
        }
    }

    /// A task calling with `calls[i]`; cancelled (its call dropped,
    /// wherever it is) when `cancel` fires first.
    fn caller(&self, i: usize, cancel: Option<oneshot::Receiver<()>>) -> JoinHandle<Outcome> {
        let (conn, calls, wire) = (self.conn.clone(), self.calls.clone(), self.wire.clone());
        spawn(async move {
            let req = calls[i].request();
            let call = conn.call_into(&req, BytesMut::new());
            let Some(cancel) = cancel else {
                return Some(call.await);
            };
            tokio::select! {
                biased;
                _ = cancel => {}
                r = call => return Some(r),
            }
            // Dropped in the middle of its own write, the call has killed
            // the connection (nothing else kills it in that check).
            if conn.is_dead() {
                wire.seal();
                CANCELLED_MID_WRITE.fetch_add(1, Ordering::Relaxed);
            }
            None
        })
    }

    /// Waits for every caller, lets go of the connection and waits for it
    /// to drain; then checks the callers' outcomes against what the peer
    /// heard, which it returns.
    async fn finish(self, callers: Vec<JoinHandle<Outcome>>) -> Heard {
        let mut outcomes = Vec::new();
        for c in callers {
            outcomes.push(c.await.expect("caller panicked"));
        }
        let killed = self.conn.is_dead();
        let mut drained = self.conn.drained();
        if killed {
            // Killed, it drains while still held (the pool keeps a killed
            // connection until then): its writer has shut the write side.
            wait_drained(&mut drained).await;
        }
        // The last handle: dropping it kills the connection, which ends the
        // writer; from then on it sends nothing new.
        drop(Arc::into_inner(self.conn).expect("a task still holds the connection"));
        self.wire.seal();
        let heard = self.peer.await.expect("peer panicked");
        wait_drained(&mut drained).await;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                None => {}
                Some(Ok((rsp, data))) => {
                    let call = &self.calls[i];
                    assert_eq!(
                        Some(rsp.id),
                        heard.id_of(i),
                        "caller {i} got another's reply"
                    );
                    assert_eq!(&data[..], call.kept(), "caller {i} got wrong reply bytes");
                }
                Some(Err(e)) => assert!(killed, "caller {i} failed on a live connection: {e}"),
            }
        }
        heard
    }
}

async fn wait_drained(drained: &mut tokio::sync::watch::Receiver<bool>) {
    drained
        .wait_for(|d| *d)
        .await
        .expect("the reader ended without saying drained");
}

/// What a caller got: `None` when it was cancelled.
type Outcome = Option<Result<(RspHeader, BytesMut)>>;

/// Schedules of the cancel check in which the call was dropped during its
/// own write, and in which the stream then ended inside its request: the
/// cases that check is about, which the search must reach.
static CANCELLED_MID_WRITE: AtomicUsize = AtomicUsize::new(0);
static ENDED_PARTIAL: AtomicUsize = AtomicUsize::new(0);

/// A few scheduling points, as many as a random draw says.
async fn some_yields(max: usize) {
    for _ in 0..thread_rng().gen_range(0..=max) {
        yield_now().await;
    }
}

/// Callers racing for the socket, one of them cancelled at a point the
/// scheduler picks (often while it writes its own request, half-way).
#[test]
fn a_cancelled_write_never_corrupts_the_stream() {
    check(|| {
        block_on(async {
            let net = Net::start((0..4).map(|i| Call::new(i, [40, 0, 9, 0][i])).collect());
            let (cancel, cancelled) = oneshot::channel();
            let mut callers = vec![net.caller(0, Some(cancelled))];
            callers.extend((1..4).map(|i| net.caller(i, None)));
            spawn(async move {
                some_yields(12).await;
                let _ = cancel.send(());
            });
            if net.finish(callers).await.partial {
                ENDED_PARTIAL.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    let (mid, partial) = (
        CANCELLED_MID_WRITE.load(Ordering::Relaxed),
        ENDED_PARTIAL.load(Ordering::Relaxed),
    );
    eprintln!(
        "{} schedules: a call cancelled mid-write in {mid}, the stream ended inside a request in {partial}",
        iterations()
    );
    if iterations() >= 500 {
        assert!(
            mid > 0 && partial > 0,
            "the search never cancelled a call mid-write"
        );
    }
}

/// Callers racing with a kill: the connection starts nothing new once
/// killed (a request made after it fails without reaching the wire), what
/// is on the wire stays whole or ends it, and callers get their replies or
/// errors.
#[test]
fn a_kill_stops_the_writes_and_drains() {
    check(|| {
        block_on(async {
            let net = Net::start((0..5).map(|i| Call::new(i, [30, 0, 12, 0, 5][i])).collect());
            let mut callers: Vec<_> = (0..4).map(|i| net.caller(i, None)).collect();
            let (conn, calls, wire) = (net.conn.clone(), net.calls.clone(), net.wire.clone());
            callers.push(spawn(async move {
                some_yields(12).await;
                conn.kill("killed by the test");
                wire.seal();
                // Too late: refused.
                Some(conn.call_into(&calls[4].request(), BytesMut::new()).await)
            }));
            let heard = net.finish(callers).await;
            assert!(
                heard.id_of(4).is_none(),
                "a request made after the kill was sent"
            );
        });
    });
}
