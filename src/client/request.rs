//! [`Request`] and [`Response`]: one exchange with sheep, as the
//! connections ([`super::conn`]) carry it and the pool ([`super::Client`])
//! retries it.

use crate::proto::{ReqHeader, RspHeader, SdRes};
use bytes::Bytes;

/// A request: header, payload (sent only with CMD_WRITE), and whether it may
/// be resent after a transport failure.
#[derive(Debug, Clone)]
pub struct Request {
    /// The header; the pool sets its `id`.
    pub hdr: ReqHeader,
    /// The bytes after the header.
    pub payload: Bytes,
    /// May be sent again after a transport failure (true for reads and
    /// object writes, false for NEW_VDI, LOCK_VDI and the like).
    pub idempotent: bool,
}

impl Request {
    /// A request without payload that may be retried.
    pub fn new(hdr: ReqHeader) -> Self {
        Request {
            hdr,
            payload: Bytes::new(),
            idempotent: true,
        }
    }
    /// Attaches a payload, setting CMD_WRITE and `data_length`.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self.hdr.flags |= crate::proto::flags::CMD_WRITE;
        self.hdr.data_length = self.payload.len() as u32;
        self
    }
    /// Marks the request as one that must not be sent twice.
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

/// sheep's reply: header and data (at most the request's `data_length`).
#[derive(Debug, Clone)]
pub struct Response {
    /// The reply header (result, epoch, per-opcode fields).
    pub hdr: RspHeader,
    /// The reply's data.
    pub data: Vec<u8>,
}

impl Response {
    /// sheep's result code.
    pub fn result(&self) -> SdRes {
        self.hdr.result()
    }
}
