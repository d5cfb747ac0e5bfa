//! How a [`Client`](super::Client) reaches sheep: TCP or a Unix socket by
//! default, or any byte stream a *connector* opens (a TLS session, an SSH
//! tunnel, one end of [`tokio::io::duplex`] served in-process by
//! sheep-lite). The pool calls the connector for every connection it makes,
//! the first and each reconnect, so a client over a custom transport
//! recovers from a broken stream as one over TCP does.

use super::SheepAddr;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

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
