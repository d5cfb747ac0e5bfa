//! Async Sheepdog client (tokio).
//!
//! - [`SheepAddr`]: where sheep listens (`tcp:HOST:PORT`, `unix:PATH`).
//! - [`Client`]: a small pool of pipelined connections with per-request
//!   timeouts and reconnect; raw [`Request`]s and the high-level cluster/VDI API.
//! - [`list`]: listing VDIs with many inode reads in flight.
//! - [`Volume`]: byte-addressed I/O on one VDI (COW, thin provisioning,
//!   locking, snapshots taken underneath, optional object cache).
//!
//! Writes are fenced: once a write is acknowledged, no older write of the
//! same [`Client`] to an overlapping range can land after it, even when an
//! earlier copy timed out and was retried while sheep was still executing
//! it: the range stays fenced until sheep has closed the connection the
//! in-doubt copy was sent on, which sheep does only once every request read
//! from it has completed. A write that cannot pass a fence within
//! `retry_timeout` fails with [`Error::Fenced`] and is not sent. Writers in
//! other processes are not covered (the VDI lock keeps them out).
//!
//! Requests are the ones `dog` sends, byte for byte, so a real sheep sees
//! dog's traffic; one exception: [`Volume::resize`] writes only the size
//! field of the inode, not the whole header as `vdi resize` does. The
//! client runs over TCP or a Unix socket, or over any byte stream
//! ([`Client::with_connector`]).
//!
//! # Examples
//!
//! Against a cluster (sheep on port 7000):
//!
//! ```no_run
//! use sheepfs::client::{Client, Error, Options, SheepAddr};
//!
//! # async fn example() -> sheepfs::client::Result<()> {
//! let addr: SheepAddr = "127.0.0.1:7000".parse().map_err(Error::Invalid)?;
//! let client = Client::connect(addr, Options::default()).await?;
//! for node in client.node_list().await? {
//!     println!("{}", node.nid.to_addr_port());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A VDI written and read back, with a sheep-lite served in this process
//! (cargo feature `server`) standing in for the cluster:
//!
//! ```
//! # #[cfg(feature = "server")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sheepfs::client::{Client, CreateOptions, OpenOptions, Options, SheepAddr, Volume};
//! use sheepfs::server::{self, Config, Ctx};
//!
//! let dir = tempfile::tempdir()?;
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let sheep = Ctx::open(&Config::new(dir.path()))?;
//!     let addr = SheepAddr::Unix("in-process".into());
//!     let client = Client::with_connector(addr, Options::default(), move |_| {
//!         let stream = server::serve_duplex(&sheep);
//!         async move { Ok(stream) }
//!     });
//!     // `dog cluster format`, `dog vdi create disk 1G`
//!     client.make_fs(0, 0, 0, 0, "plain").await?;
//!     client.create_vdi("disk", 1 << 30, &CreateOptions::default()).await?;
//!     let vol = Volume::open(client.clone(), "disk", OpenOptions::default()).await?;
//!     vol.write_at(4096, b"hello").await?;
//!     assert_eq!(vol.read_at(4096, 5).await?, b"hello");
//!     vol.close().await?;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # }
//! # #[cfg(not(feature = "server"))]
//! # fn main() {}
//! ```

mod addr;
pub mod admin;
pub mod cache;
mod conn;
mod dogmap;
mod error;
pub mod list;
mod lock;
mod map;
mod ops;
mod pool;
mod request;
mod transport;
mod vdi;
pub mod volume;

/// What `lock`, `cache` and `conn` synchronise with and spawn on.
/// tests/shuttle_locks.rs and tests/shuttle_conn.rs compile those files
/// against a `sync` of their own, which adds Shuttle's scheduling points
/// around each lock and spawns on Shuttle's executor.
mod sync {
    pub(crate) use parking_lot::Mutex;
    pub(crate) use tokio::spawn;
    pub(crate) use tokio::sync::Notify;
}

pub use addr::{parse_port, SheepAddr};
pub use admin::{CreateOptions, DeleteOptions, ProgressFn};
pub use cache::ObjectCache;
pub use error::{Error, Result, Step};
pub use list::{ScanError, ScanItem, ScanOptions, ScanStage, ScannedVdi};
pub use map::{DataMap, FlatMap, Inode};
pub use ops::{AttrRequest, ObjWrite};
pub use pool::{Client, Options};
pub use request::{Request, Response};
pub use transport::ByteStream;
pub use vdi::{SnapSel, VdiEntry, VdiId};
pub use volume::{LockMode, OpenOptions, Volume, VolumeStats};
