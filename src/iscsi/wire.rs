//! The socket side of a connection in full feature phase, driven by the
//! connection's own loop (no reader or writer task to hand PDUs to): PDUs
//! are taken from a receive buffer whose memory becomes their data segments,
//! and queued PDUs go out with vectored writes (header, data and trailer of
//! many PDUs in one call, the data never copied into a send buffer).

use super::pdu::{self, off, op, take_pdu, Framing, Pdu, PduError, Take};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Spare room kept in the receive buffer: most reads are shorter, which
/// tells the runtime the socket is drained (no extra read to see EAGAIN).
const RECV_SPARE: usize = 64 * 1024;
/// Segments handed to one `writev`.
const MAX_IOV: usize = 64;

/// Reading half: a buffer that PDUs are cut from.
pub struct Inbound {
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// Length of the incomplete PDU at the front (or of its header).
    need: usize,
    pub framing: Framing,
}

impl Inbound {
    pub fn new(rd: OwnedReadHalf, framing: Framing) -> Inbound {
        Inbound {
            rd,
            buf: BytesMut::new(),
            need: pdu::BHS_LEN,
            framing,
        }
    }

    /// Receives more bytes; 0 at the end of the stream. Cancel safe (a
    /// `select!` branch): nothing is lost if another branch wins.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let want = self.need.saturating_sub(self.buf.len()).max(RECV_SPARE);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next complete PDU, if the buffer holds one.
    pub fn next_pdu(&mut self) -> Result<Option<Pdu>, PduError> {
        match take_pdu(&mut self.buf, &self.framing)? {
            Take::Pdu(p) => {
                self.need = pdu::BHS_LEN;
                Ok(Some(p))
            }
            Take::Need(n) => {
                self.need = n;
                Ok(None)
            }
        }
    }

    /// True if the stream ended inside a PDU.
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Writing half: encoded PDUs waiting for the socket.
pub struct Outbound {
    wr: OwnedWriteHalf,
    segs: VecDeque<Bytes>,
    bytes: usize,
    /// Headers and trailers are encoded here and split off (one allocation
    /// serves many PDUs).
    arena: BytesMut,
    framing: Framing,
    stat_sn: u32,
}

impl Outbound {
    pub fn new(wr: OwnedWriteHalf, framing: Framing, stat_sn: u32) -> Outbound {
        Outbound {
            wr,
            segs: VecDeque::new(),
            bytes: 0,
            arena: BytesMut::new(),
            framing,
            stat_sn,
        }
    }

    /// Bytes queued and not yet accepted by the socket.
    pub fn pending(&self) -> usize {
        self.bytes
    }

    fn push_seg(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.segs.push_back(b);
        }
    }

    /// Queues one PDU, stamping StatSN (in send order; `status`: the PDU
    /// consumes one) and the current ExpCmdSN/MaxCmdSN.
    pub fn push(&mut self, mut pdu: Pdu, status: bool, sn: (u32, u32)) {
        let b = &mut pdu.bhs;
        if has_sn(b.opcode()) {
            if b.opcode() != op::DATA_IN || status {
                b.set_u32(off::STAT_SN, self.stat_sn);
            }
            b.set_u32(off::EXP_CMD_SN, sn.0);
            b.set_u32(off::MAX_CMD_SN, sn.1);
        }
        if status {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        if self.arena.capacity() - self.arena.len() < 128 {
            self.arena.reserve(4096);
        }
        pdu::encode_header(&mut pdu, &self.framing, &mut self.arena);
        let head = self.arena.split().freeze();
        self.push_seg(head);
        if !pdu.data.is_empty() {
            pdu::data_trailer(&pdu.data, &self.framing, &mut self.arena);
            let tail = self.arena.split().freeze();
            self.push_seg(pdu.data);
            self.push_seg(tail);
        }
    }

    /// Writes what the socket takes without waiting; true once all is sent.
    pub fn try_flush(&mut self) -> io::Result<bool> {
        while !self.segs.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let k = self.segs.len().min(MAX_IOV);
                for (v, s) in iov.iter_mut().zip(self.segs.iter()) {
                    *v = IoSlice::new(s);
                }
                match self.wr.try_write_vectored(&iov[..k]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            self.consume(n);
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.segs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Waits until the socket can take more (a `select!` branch).
    pub async fn writable(&self) -> io::Result<()> {
        self.wr.writable().await
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.try_flush()? {
            self.wr.writable().await?;
        }
        Ok(())
    }

    /// Ends the stream (after [`Outbound::flush`]).
    pub async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.wr).await;
    }
}

/// PDUs that carry StatSN, ExpCmdSN and MaxCmdSN.
fn has_sn(opcode: u8) -> bool {
    matches!(
        opcode,
        op::NOP_IN
            | op::SCSI_RSP
            | op::TMF_RSP
            | op::TEXT_RSP
            | op::DATA_IN
            | op::LOGOUT_RSP
            | op::R2T
            | op::ASYNC_MSG
            | op::REJECT
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{read_pdu, Bhs};

    fn framing(digests: bool) -> Framing {
        Framing {
            header_digest: digests,
            data_digest: digests,
            max_recv: 8192,
        }
    }

    /// PDUs written in pieces of every size come out whole and equal.
    #[tokio::test]
    async fn pdus_cut_from_a_buffer_filled_piecewise() {
        for digests in [false, true] {
            let fr = framing(digests);
            let mut wire = Vec::new();
            for (i, len) in [0usize, 5, 4096, 8192].into_iter().enumerate() {
                let mut b = Bhs::new(op::SCSI_CMD);
                b.set_itt(i as u32);
                let data: Vec<u8> = (0..len).map(|k| (k * 7 + i) as u8).collect();
                pdu::write_pdu(&mut wire, Pdu::new(b).with_data(data), &fr)
                    .await
                    .unwrap();
            }
            for step in [1usize, 3, 48, 1000, wire.len()] {
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in wire.chunks(step) {
                    buf.extend_from_slice(piece);
                    while let Take::Pdu(p) = take_pdu(&mut buf, &fr).unwrap() {
                        got.push(p);
                    }
                }
                assert!(buf.is_empty());
                let want: Vec<Pdu> = {
                    let mut r = &wire[..];
                    let mut v = Vec::new();
                    while !r.is_empty() {
                        v.push(read_pdu(&mut r, &fr).await.unwrap());
                    }
                    v
                };
                assert_eq!(got.len(), 4);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.bhs, w.bhs);
                    assert_eq!(g.data, w.data);
                }
            }
        }
    }

    #[test]
    fn oversized_and_corrupt_pdus_are_refused() {
        let fr = framing(true);
        let mut b = Bhs::new(op::SCSI_CMD);
        b.set_data_len(8193);
        let mut buf = BytesMut::from(&b.0[..]);
        buf.extend_from_slice(&pdu::digest(&[&b.0]).to_le_bytes());
        assert!(matches!(
            take_pdu(&mut buf, &fr),
            Err(PduError::TooLong { len: 8193, .. })
        ));
        let mut buf = BytesMut::from(&b.0[..]);
        buf.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            take_pdu(&mut buf, &fr),
            Err(PduError::HeaderDigest)
        ));
    }
}
