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
//!
//! Cargo features: `default = ["fs", "iscsi", "server", "cli"]`. With
//! `default-features = false` only [`proto`], [`client`] and [`util`] are
//! built, over tokio (no FUSE, clap, TOML or iSCSI crypto).
//!
//! The library's interface is [`client`] and the [`proto`] types it uses;
//! start there. The other modules are the programs' own (public because the
//! programs under `src/bin` and the tests use them) and carry no promise of
//! stability.
#![warn(missing_docs)]

pub mod client;
#[cfg(feature = "cli")]
#[allow(missing_docs)]
pub mod ctl;
#[cfg(feature = "dogfmt")]
#[allow(missing_docs)]
pub mod dogfmt;
#[cfg(feature = "fs")]
#[allow(missing_docs)]
pub mod fs;
#[cfg(feature = "iscsi")]
#[allow(missing_docs)]
pub mod iscsi;
pub mod proto;
#[cfg(feature = "server")]
#[allow(missing_docs)]
pub mod server;
pub mod util;
