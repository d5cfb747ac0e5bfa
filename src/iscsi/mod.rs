//! `sheep-iscsi`: a small iSCSI target (RFC 7143, error recovery level 0)
//! whose logical units are Sheepdog VDIs opened through [`crate::client::Volume`].
//!
//! Layers, bottom up:
//! - [`pdu`], [`text`]: wire format (no I/O policy).
//! - [`backend`]: block storage under a LUN ([`backend::BlockBackend`]), the
//!   per-VDI [`backend::Disk`] that orders overlapping commands, and the
//!   [`backend::Registry`] that opens each VDI once for all LUNs using it.
//! - [`scsi`]: the SPC-4/SBC-3 command set over a disk; no iSCSI in it.
//! - [`login`], [`chap`]: the login phase as a state machine.
//! - [`task`]: per-command state, CmdSN window, result -> PDUs.
//! - [`conn`]: one connection: login, then one loop that reads PDUs, runs
//!   the command tasks and writes their responses.
//! - [`wire`]: that loop's socket side (PDUs cut from the receive buffer,
//!   vectored writes).
//! - [`shared`]: targets, LUNs and sessions as every connection sees them.
//! - [`stats`]: per-LUN counters and latency percentiles.
//! - [`admin`]: run-time changes (tgtadm's requests), `show`, reload.
//! - [`control`]: the control socket `sheep-iscsi-adm` talks to.
//! - [`server`]: portals, the accept loop, shutdown.
//! - [`config`]: backing-store strings, command-line values, TOML file.

pub mod admin;
pub mod backend;
pub mod chap;
pub mod config;
pub mod conn;
pub mod control;
pub mod login;
pub mod pdu;
pub mod scsi;
pub mod server;
pub mod shared;
pub mod stats;
pub mod task;
pub mod text;
pub mod wire;

pub use config::{Backing, Config, Credential, LunConfig, TargetConfig};
pub use server::{Limits, Server};
