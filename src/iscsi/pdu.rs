//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, additional
//! header segments, the data segment, padding and CRC32C digests.
//!
//! Reading is bounded: the data segment length is checked against the limit
//! we declared (MaxRecvDataSegmentLength) before anything is allocated.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const BHS_LEN: usize = 48;
/// The reserved tag: "no task" / "no transfer".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (byte 0, low 6 bits).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK_REQ: u8 = 0x10;

    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const TMF_RSP: u8 = 0x22;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const TEXT_RSP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MSG: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;

    pub fn name(o: u8) -> &'static str {
        match o {
            NOP_OUT => "NOP-Out",
            SCSI_CMD => "SCSI Command",
            TMF_REQ => "Task Management Request",
            LOGIN_REQ => "Login Request",
            TEXT_REQ => "Text Request",
            DATA_OUT => "SCSI Data-Out",
            LOGOUT_REQ => "Logout Request",
            SNACK_REQ => "SNACK Request",
            NOP_IN => "NOP-In",
            SCSI_RSP => "SCSI Response",
            TMF_RSP => "Task Management Response",
            LOGIN_RSP => "Login Response",
            TEXT_RSP => "Text Response",
            DATA_IN => "SCSI Data-In",
            LOGOUT_RSP => "Logout Response",
            R2T => "R2T",
            ASYNC_MSG => "Asynchronous Message",
            REJECT => "Reject",
            _ => "unknown opcode",
        }
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const CMD_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_CMD_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// A Basic Header Segment with typed accessors for the common fields.
#[derive(Clone, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl fmt::Debug for Bhs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(flags={:#04x} itt={:#x} dlen={})",
            op::name(self.opcode()),
            self.flags(),
            self.itt(),
            self.data_len()
        )
    }
}

impl Bhs {
    pub fn new(opcode: u8) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = opcode & 0x3f;
        b
    }
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn set_immediate(&mut self, on: bool) {
        if on {
            self.0[0] |= 0x40;
        } else {
            self.0[0] &= !0x40;
        }
    }
    /// Byte 1: the F bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.0[1] = f;
    }
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    /// Total AHS length in bytes (the field counts 4-byte words).
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }
    pub fn set_data_len(&mut self, n: u32) {
        let b = n.to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
    }
    pub fn lun_raw(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.0[8..16]);
        l
    }
    pub fn set_lun_raw(&mut self, l: [u8; 8]) {
        self.0[8..16].copy_from_slice(&l);
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v);
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Field offsets shared by many PDU types.
pub mod off {
    /// TTT in target PDUs, Data-Out, NOP-Out, Text; RTT in TMF requests.
    pub const TTT: usize = 20;
    pub const EDTL: usize = 20;
    pub const CMD_SN: usize = 24;
    pub const STAT_SN: usize = 24;
    pub const EXP_STAT_SN: usize = 28;
    pub const EXP_CMD_SN: usize = 28;
    pub const MAX_CMD_SN: usize = 32;
    pub const DATA_SN: usize = 36;
    pub const BUFFER_OFFSET: usize = 40;
    pub const RESIDUAL: usize = 44;
    pub const DESIRED_LEN: usize = 44;
    pub const CDB: usize = 32;
}

/// One PDU.
#[derive(Clone, Default)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Vec<u8>,
    pub data: Bytes,
}

impl fmt::Debug for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.bhs)
    }
}

impl Pdu {
    pub fn new(bhs: Bhs) -> Pdu {
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Bytes::new(),
        }
    }
    pub fn with_data(mut self, data: impl Into<Bytes>) -> Pdu {
        self.data = data.into();
        self
    }
    pub fn opcode(&self) -> u8 {
        self.bhs.opcode()
    }
}

/// Why reading a PDU failed.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection closed")]
    Eof,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data segment was read in full; the header is kept so the PDU can be rejected.
    #[error("data digest mismatch in {0:?}")]
    DataDigest(Bhs),
    /// The segment was not read: the stream cannot be resynchronised.
    #[error("{bhs:?}: data segment of {len} bytes exceeds the negotiated {max}")]
    TooLong { bhs: Bhs, len: u32, max: u32 },
}

/// Negotiated framing of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we accept (what we declared as MaxRecvDataSegmentLength).
    pub max_recv: u32,
}

impl Framing {
    /// Login phase: no digests, 8192-byte segments (RFC 7143 §13.12 default).
    pub fn login() -> Framing {
        Framing {
            header_digest: false,
            data_digest: false,
            max_recv: 8192,
        }
    }
}

fn pad_len(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// iSCSI digests are CRC32C sent least significant byte first.
pub fn digest(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p))
}

/// Reads one PDU, and not a byte more (the login phase hands the stream on).
/// EOF before the first byte is [`PduError::Eof`].
pub async fn read_pdu<R: AsyncRead + Unpin>(r: &mut R, fr: &Framing) -> Result<Pdu, PduError> {
    let mut buf = BytesMut::new();
    loop {
        let need = match take_pdu(&mut buf, fr)? {
            Take::Pdu(p) => return Ok(p),
            Take::Need(n) => n,
        };
        let mut have = buf.len();
        buf.resize(need, 0);
        while have < need {
            let n = r.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(if have == 0 {
                    PduError::Eof
                } else {
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
                });
            }
            have += n;
        }
    }
}

/// What [`take_pdu`] found at the front of a buffer.
#[derive(Debug)]
pub enum Take {
    Pdu(Pdu),
    /// Not complete yet: the PDU (or its header) is this many bytes long.
    Need(usize),
}

/// Takes one whole PDU off the front of `buf` (the connection's receive
/// buffer), its data segment sharing the buffer's memory. Bounded like
/// [`read_pdu`]: a data segment longer than `fr.max_recv` is refused as soon
/// as its header is there, so nothing larger is ever asked for.
pub fn take_pdu(buf: &mut BytesMut, fr: &Framing) -> Result<Take, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(Take::Need(BHS_LEN));
    }
    let mut hdr = [0u8; BHS_LEN];
    hdr.copy_from_slice(&buf[..BHS_LEN]);
    let bhs = Bhs(hdr);
    let ahs_end = BHS_LEN + bhs.ahs_len();
    let head = ahs_end + if fr.header_digest { 4 } else { 0 };
    if buf.len() < head {
        return Ok(Take::Need(head));
    }
    if fr.header_digest {
        let d = u32::from_le_bytes([
            buf[ahs_end],
            buf[ahs_end + 1],
            buf[ahs_end + 2],
            buf[ahs_end + 3],
        ]);
        if d != digest(&[&buf[..ahs_end]]) {
            return Err(PduError::HeaderDigest);
        }
    }
    let len = bhs.data_len();
    if len > fr.max_recv {
        return Err(PduError::TooLong {
            bhs,
            len,
            max: fr.max_recv,
        });
    }
    let seg = len as usize + pad_len(len as usize);
    let total = head + seg + if fr.data_digest && len > 0 { 4 } else { 0 };
    if buf.len() < total {
        return Ok(Take::Need(total));
    }
    let mut whole = buf.split_to(total);
    let ahs = whole[BHS_LEN..ahs_end].to_vec();
    let mut data = whole.split_off(head);
    if fr.data_digest && len > 0 {
        let d = &data[seg..seg + 4];
        if u32::from_le_bytes([d[0], d[1], d[2], d[3]]) != digest(&[&data[..seg]]) {
            return Err(PduError::DataDigest(bhs));
        }
    }
    data.truncate(len as usize);
    Ok(Take::Pdu(Pdu {
        bhs,
        ahs,
        data: data.freeze(),
    }))
}

/// Serialises the header part (BHS, AHS, header digest) of a PDU; the
/// caller sends the data segment with [`data_trailer`] after it.
pub fn encode_header(pdu: &mut Pdu, fr: &Framing, out: &mut BytesMut) {
    pdu.bhs.set_data_len(pdu.data.len() as u32);
    pdu.bhs.0[4] = (pdu.ahs.len() / 4) as u8;
    out.put_slice(&pdu.bhs.0);
    out.put_slice(&pdu.ahs);
    if fr.header_digest {
        out.put_u32_le(digest(&[&pdu.bhs.0, &pdu.ahs]));
    }
}

/// Padding and data digest that follow a data segment.
pub fn data_trailer(data: &[u8], fr: &Framing, out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    let pad = [0u8; 3];
    let p = &pad[..pad_len(data.len())];
    out.put_slice(p);
    if fr.data_digest {
        out.put_u32_le(digest(&[data, p]));
    }
}

/// Writes one PDU (without flushing).
pub async fn write_pdu<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut pdu: Pdu,
    fr: &Framing,
) -> std::io::Result<()> {
    let mut head = BytesMut::with_capacity(BHS_LEN + 4);
    encode_header(&mut pdu, fr, &mut head);
    w.write_all(&head).await?;
    if !pdu.data.is_empty() {
        w.write_all(&pdu.data).await?;
        let mut tail = BytesMut::with_capacity(8);
        data_trailer(&pdu.data, fr, &mut tail);
        w.write_all(&tail).await?;
    }
    Ok(())
}

/// The 8-byte LUN field <-> LUN number (SAM-5 peripheral and flat addressing).
pub fn lun_decode(raw: [u8; 8]) -> Option<u64> {
    match raw[0] >> 6 {
        0 if raw[0] == 0 => Some(raw[1] as u64),
        1 => Some((((raw[0] & 0x3f) as u64) << 8) | raw[1] as u64),
        _ => None,
    }
}

pub fn lun_encode(lun: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros.
        assert_eq!(digest(&[&[0u8; 32]]), 0x8a9136aa);
        assert_eq!(digest(&[&[0xffu8; 32]]), 0x62a8ab43);
    }

    #[test]
    fn lun_roundtrip() {
        for l in [0u64, 1, 255, 256, 1000, 16383] {
            assert_eq!(lun_decode(lun_encode(l)), Some(l));
        }
        assert_eq!(lun_decode([0x80, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn serial_arith() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 3));
        assert!(!sn_lt(3, 0xffff_fff0));
        assert!(sn_le(5, 5));
    }

    #[tokio::test]
    async fn roundtrip_with_digests() {
        let fr = Framing {
            header_digest: true,
            data_digest: true,
            max_recv: 1024,
        };
        let mut b = Bhs::new(op::NOP_OUT);
        b.set_itt(7);
        let p = Pdu::new(b).with_data(vec![1u8, 2, 3, 4, 5]);
        let mut buf = Vec::new();
        write_pdu(&mut buf, p, &fr).await.unwrap();
        assert_eq!(buf.len(), 48 + 4 + 8 + 4);
        let q = read_pdu(&mut &buf[..], &fr).await.unwrap();
        assert_eq!(q.bhs.itt(), 7);
        assert_eq!(&q.data[..], &[1, 2, 3, 4, 5]);
        // Corrupt one data byte.
        let mut bad = buf.clone();
        bad[53] ^= 1;
        assert!(matches!(
            read_pdu(&mut &bad[..], &fr).await,
            Err(PduError::DataDigest(_))
        ));
        let mut bad = buf.clone();
        bad[3] ^= 1;
        assert!(matches!(
            read_pdu(&mut &bad[..], &fr).await,
            Err(PduError::HeaderDigest)
        ));
    }

    #[tokio::test]
    async fn oversized_segment_is_refused_before_allocation() {
        let mut b = Bhs::new(op::SCSI_CMD);
        b.set_data_len(0xff_ffff);
        let buf = b.0.to_vec();
        let fr = Framing::login();
        match read_pdu(&mut &buf[..], &fr).await {
            Err(PduError::TooLong { len, max, .. }) => {
                assert_eq!(len, 0xff_ffff);
                assert_eq!(max, 8192);
            }
            other => panic!("{other:?}"),
        }
    }
}
