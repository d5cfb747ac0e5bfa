//! sheepfs: a Sheepdog cluster as a FUSE filesystem.
//!
//! Layout (the mountpoint-s3 model):
//! - [`core::FsCore`]: the async filesystem core — the tree, open handles,
//!   state files (`cluster/info`, `vdi/list`, ... rendered by [`crate::dogfmt`]),
//!   control files (`vdi/mount`, `config/*`) and attached volumes
//!   ([`crate::client::Volume`]). Tests drive it without a mount.
//! - [`fuse`]: the thin `fuser::Filesystem` adapter; each request is a task
//!   on the tokio runtime that calls the core and replies when done.
//! - [`error::FsError`]: the one error type at this boundary (errno + message).
//! - [`daemon`]: backgrounding after the mount is up.
//! - [`mountopt`]: `mount -t sheepfs` options into sheepfs flags.
//!
//! The tree:
//! ```text
//! cluster/info[.json]   dog cluster info
//! vdi/list[.json]       dog vdi list
//! vdi/mount             write NAME[@TAG|@SNAPID] to attach; read: attached volumes
//! vdi/unmount           write NAME to detach
//! node/list[.json]      dog node list
//! node/info[.json]      dog node info
//! config/page_cache     0/1 (-k)
//! config/object_cache   0/1 (-o)
//! config/sheep_info     HOST:PORT; writing it reconnects every volume
//! config/fuse           negotiated FUSE parameters
//! log                   recent warnings and errors of this mount
//! volume/<name>         the VDI as one file
//! stats/<name>          counters and latencies of that volume
//! ```
pub mod control;
pub mod core;
pub mod daemon;
pub mod error;
pub mod fuse;
pub mod mountopt;
pub mod readahead;
pub mod text;
pub mod tree;

pub use self::core::{Attached, FsCore, FsOptions, Opened, DEFAULT_CACHE_SIZE};
pub use self::error::{FsError, FsResult};
pub use self::fuse::{mount, FuseAdapter, MountConfig};
