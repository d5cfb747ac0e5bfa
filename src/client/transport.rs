//! How a [`Client`](super::Client) reaches sheep: TCP or a Unix socket by
//! default, or any byte stream a *connector* opens (a TLS session, an SSH
//! tunnel, one end of [`tokio::io::duplex`] served in-process by
//! sheep-lite). The pool calls the connector for every connection it makes,
//! the first and each reconnect, so a client over a custom transport
//! recovers from a broken stream as one over TCP does.

use super::SheepAddr;
use futures::future::BoxFuture;
use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A byte stream to sheep: anything readable and writable.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A stream being opened.
type Opening = BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>>;

/// Opens one stream to the sheep at an address.
pub(crate) type Connector = Arc<dyn Fn(&SheepAddr) -> Opening + Send + Sync>;

/// Boxes a connector function (see [`Client::with_connector`](super::Client::with_connector)).
pub(crate) fn connector<F, Fut, S>(f: F) -> Connector
where
    F: Fn(&SheepAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<S>> + Send + 'static,
    S: ByteStream,
{
    Arc::new(move |addr: &SheepAddr| -> Opening {
        let fut = f(addr);
        Box::pin(async move { fut.await.map(|s| Box::new(s) as Box<dyn ByteStream>) })
    })
}

// ---- Unix sockets ------------------------------------------------------------

/// A Unix socket to sheep, split into halves whose epoll registration asks
/// for readability only; writability is asked for only while a write waits
/// for room.
///
/// Why: a Unix socket wakes the sender's poll waiters with EPOLLOUT every
/// time the peer consumes a message from it. With the usual registration
/// (readable and writable), each request that sheep reads wakes the thread
/// waiting for its reply for nothing: a context switch in the middle of
/// every round trip, which at queue depth 1 is several microseconds a
/// request. (TCP wakes for room only after a write found none.)
pub(crate) fn unix_halves(s: tokio::net::UnixStream) -> io::Result<(UnixRead, UnixWrite)> {
    let rt = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let s = s.into_std()?;
    let fd = Arc::new(register(s, Interest::READABLE)?);
    Ok((
        UnixRead(fd.clone()),
        UnixWrite {
            rt,
            sock: fd,
            room: None,
            last_whole: true,
        },
    ))
}

/// Registers `fd` with the runtime for `interest` only.
fn register<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `fd` owns its descriptor (a UnixStream or an OwnedFd), which
    // stays open, and the same, for as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// The reading half of [`unix_halves`].
pub(crate) struct UnixRead(Arc<AsyncFd<UnixStream>>);

/// The writing half of [`unix_halves`].
pub(crate) struct UnixWrite {
    /// The runtime the socket is registered with: a write may be polled
    /// from a thread that is not in it.
    rt: tokio::runtime::Handle,
    sock: Arc<AsyncFd<UnixStream>>,
    /// A second descriptor of the socket, registered for writability while
    /// the socket is full; dropped (deregistered) once two writes in a row
    /// take all they are offered (so that a stream of messages larger than
    /// the socket buffer keeps one registration).
    room: Option<AsyncFd<OwnedFd>>,
    /// The last write took all it was offered.
    last_whole: bool,
}

impl AsyncRead for UnixRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            // SAFETY: read(2) only writes into the spare bytes it is given,
            // and `n` of them are initialized once it returns `n`.
            let unfilled = unsafe { buf.unfilled_mut() };
            let want = unfilled.len();
            let res = ready.try_io(|s| {
                let n = unsafe {
                    libc::read(s.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        // A short read drained the socket: wait for the next
                        // event rather than find out with one more read.
                        ready.clear_ready();
                    }
                    // SAFETY: see above.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl UnixWrite {
    /// Writes what the socket takes now; waits for room when it takes nothing.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            let mut sock: &UnixStream = self.sock.get_ref();
            match sock.write_vectored(bufs) {
                Ok(n) => {
                    let whole = n == offered;
                    if whole && self.last_whole {
                        self.room = None;
                    }
                    self.last_whole = whole;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.last_whole = false,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let room = match &mut self.room {
                Some(room) => room,
                none => {
                    let fd = self.sock.get_ref().as_fd().try_clone_to_owned()?;
                    // Registered after the failed write: room made since
                    // then is reported by the registration itself.
                    let _rt = self.rt.enter();
                    none.insert(register(fd, Interest::WRITABLE)?)
                }
            };
            let mut ready = ready!(room.poll_write_ready(cx))?;
            // Cleared only if no event came since it was reported: the
            // write above is retried first, and a full socket waits again.
            ready.clear_ready();
        }
    }
}

impl AsyncWrite for UnixWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.sock.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (UnixRead, UnixWrite, tokio::net::UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let a = tokio::net::UnixStream::from_std(a).unwrap();
        let (r, w) = unix_halves(a).unwrap();
        (r, w, tokio::net::UnixStream::from_std(b).unwrap())
    }

    /// Writes far larger than the socket buffer wait for room and arrive
    /// whole and in order; once writes go through again, no writability
    /// registration is left; shutdown ends the peer's stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_socket_waits_for_room_and_data_arrives_whole() {
        let (mut r, mut w, mut peer) = pair();
        let data: Vec<u8> = (0..8usize << 20)
            .map(|i| (i * 31 + i / 4096) as u8)
            .collect();
        let mut sent = data.clone();
        sent.extend_from_slice(b"end");
        let echo = tokio::spawn(async move {
            // Slow at first, so that the writer finds the socket full.
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                if got.len() < (1 << 20) {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let n = peer.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got.len(), sent.len());
            assert!(got == sent, "bytes differ");
            peer.write_all(b"reply").await.unwrap();
        });
        let (a, b) = data.split_at(3 << 20);
        let mut bufs = [IoSlice::new(a), IoSlice::new(b)];
        let mut bufs = &mut bufs[..];
        while !bufs.is_empty() {
            let n = w.write_vectored(bufs).await.unwrap();
            assert!(n > 0);
            IoSlice::advance_slices(&mut bufs, n);
        }
        // The last write of the stream took all it was offered; one more
        // (a small message) ends the writability registration.
        assert!(w.room.is_some(), "the socket never filled up");
        w.write_all(b"end").await.unwrap();
        assert!(w.room.is_none(), "writability registration left behind");
        w.shutdown().await.unwrap();
        echo.await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"reply");
    }

    /// A write polled from a thread outside the runtime (as FUSE threads
    /// may) waits for room too.
    #[test]
    fn write_polled_outside_the_runtime_waits_for_room() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_r, mut w, mut peer) = rt.block_on(async { pair() });
        let data: Vec<u8> = (0..4usize << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let echo = rt.spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got == sent
        });
        futures::executor::block_on(async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        assert!(rt.block_on(echo).unwrap(), "bytes differ");
    }
}
