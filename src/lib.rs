//! sheepfs: the client side of Sheepdog in Rust.
//!
//! Layers, bottom up:
//! - [`proto`]: wire types, bytes only (no I/O).
//! - [`client`]: async connections, the high-level cluster/VDI API and [`client::Volume`].
//! - [`server`]: `sheep-lite`, a single-node server speaking the same protocol.
//! - [`dogfmt`]: dog's output formats (shared by `sheepctl` and sheepfs's state files).
//! - [`ctl`]: `sheepctl`, the dog-compatible admin CLI.
//! - [`fs`]: the sheepfs FUSE filesystem.
//! - [`iscsi`]: the `sheep-iscsi` target.
pub mod client;
pub mod ctl;
pub mod dogfmt;
pub mod fs;
pub mod iscsi;
pub mod proto;
pub mod server;
pub mod util;
