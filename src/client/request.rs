//! [`Request`] and [`Response`]: one exchange with sheep, as the
//! connections ([`super::conn`]) carry it and the pool ([`super::Client`])
//! retries it.

use crate::proto::{ReqHeader, RspHeader, SdRes};
use bytes::Bytes;

/// A request: header, payload (sent only with CMD_WRITE), and whether it may
/// be resent after a transport failure.
#[derive(Debug, Clone)]
pub struct Request {
    pub hdr: ReqHeader,
    pub payload: Bytes,
    pub idempotent: bool,
}

impl Request {
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
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub hdr: RspHeader,
    pub data: Vec<u8>,
}

impl Response {
    pub fn result(&self) -> SdRes {
        self.hdr.result()
    }
}
