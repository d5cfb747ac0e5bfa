//! The commands we implement, with their CDB usage bitmaps for REPORT
//! SUPPORTED OPERATION CODES (SPC-4 §6.35).

use super::{invalid_cdb, Sense};

pub struct OpInfo {
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub sa: Option<u16>,
    /// CDB usage data; its length is the CDB length.
    pub usage: &'static [u8],
}

const fn op(opcode: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        sa: None,
        usage,
    }
}
const fn sa(opcode: u8, sa: u16, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        sa: Some(sa),
        usage,
    }
}

pub static OPS: &[OpInfo] = &[
    op(0x00, &[0x00, 0, 0, 0, 0, 0]),
    op(0x03, &[0x03, 0x01, 0, 0, 0xff, 0]),
    op(0x08, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    op(0x0a, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]),
    op(0x12, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    op(0x15, &[0x15, 0x11, 0, 0, 0xff, 0]),
    op(0x16, &[0x16, 0, 0, 0, 0, 0]),
    op(0x17, &[0x17, 0, 0, 0, 0, 0]),
    op(0x1a, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    op(0x1b, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),
    op(0x1e, &[0x1e, 0, 0, 0, 0x03, 0]),
    op(0x25, &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0]),
    op(0x28, &rw10(0x28, 0x18)),
    op(0x2a, &rw10(0x2a, 0x18)),
    op(0x2e, &rw10(0x2e, 0x12)),
    op(0x2f, &rw10(0x2f, 0x16)),
    op(0x34, &rw10(0x34, 0x02)),
    op(0x37, &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(0x35, &rw10(0x35, 0x02)),
    op(0x41, &rw10(0x41, 0x08)),
    op(0x42, &[0x42, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0]),
    op(0x55, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op(0x56, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    op(0x57, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    op(0x5a, &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    sa(0x5e, 0, &PRIN),
    sa(0x5e, 1, &PRIN),
    sa(0x5e, 2, &PRIN),
    sa(0x5e, 3, &PRIN),
    sa(0x5f, 0, &PROUT),
    sa(0x5f, 1, &PROUT),
    sa(0x5f, 2, &PROUT),
    sa(0x5f, 3, &PROUT),
    sa(0x5f, 4, &PROUT),
    sa(0x5f, 5, &PROUT),
    sa(0x5f, 6, &PROUT),
    op(0x88, &rw16(0x88, 0x18)),
    op(
        0x89,
        &[
            0x89, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0,
        ],
    ),
    op(0x8a, &rw16(0x8a, 0x18)),
    op(0x8b, &rw16(0x8b, 0x18)),
    op(0x8e, &rw16(0x8e, 0x12)),
    op(0x8f, &rw16(0x8f, 0x16)),
    op(0x90, &rw16(0x90, 0x02)),
    op(0x91, &rw16(0x91, 0x02)),
    op(0x93, &rw16(0x93, 0x09)),
    sa(
        0x9e,
        0x10,
        &[
            0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    sa(
        0x9e,
        0x12,
        &[
            0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    op(
        0xa0,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    sa(
        0xa3,
        0x0c,
        &[
            0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    op(0xa8, &rw12(0xa8, 0x18)),
    op(
        0xb7,
        &[0xb7, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    op(0xaa, &rw12(0xaa, 0x18)),
    op(0xae, &rw12(0xae, 0x12)),
    op(0xaf, &rw12(0xaf, 0x16)),
];

const PRIN: [u8; 10] = [0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0];
const PROUT: [u8; 10] = [0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0];

const fn rw10(opc: u8, b1: u8) -> [u8; 10] {
    [opc, b1, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]
}
const fn rw16(opc: u8, b1: u8) -> [u8; 16] {
    [
        opc, b1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
    ]
}
const fn rw12(opc: u8, b1: u8) -> [u8; 12] {
    [
        opc, b1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
    ]
}

fn has_sa(opcode: u8) -> bool {
    OPS.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

/// Timeouts descriptor (nominal 0 = unknown, recommended 30 s).
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t[8..12].copy_from_slice(&30u32.to_be_bytes());
    t
}

/// The parameter data of REPORT SUPPORTED OPERATION CODES.
pub fn report(cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = u16::from_be_bytes([cdb[4], cdb[5]]);
    match options {
        0 => {
            let mut body = Vec::new();
            for o in OPS {
                let mut d = [0u8; 8];
                d[0] = o.opcode;
                let sa = o.sa.unwrap_or(0);
                d[2..4].copy_from_slice(&sa.to_be_bytes());
                d[5] = if o.sa.is_some() { 0x01 } else { 0 } | if rctd { 0x02 } else { 0 };
                d[6..8].copy_from_slice(&(o.usage.len() as u16).to_be_bytes());
                body.extend_from_slice(&d);
                if rctd {
                    body.extend_from_slice(&timeouts());
                }
            }
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            Ok(out)
        }
        1..=3 => {
            let want_sa = match options {
                1 => {
                    if has_sa(req_op) {
                        return Err(invalid_cdb(2));
                    }
                    None
                }
                2 => {
                    if !has_sa(req_op) && OPS.iter().any(|o| o.opcode == req_op) {
                        return Err(invalid_cdb(2));
                    }
                    Some(req_sa)
                }
                _ => has_sa(req_op).then_some(req_sa),
            };
            let found = OPS.iter().find(|o| o.opcode == req_op && o.sa == want_sa);
            let mut out = vec![0u8; 4];
            if rctd {
                out[1] |= 0x80;
            }
            match found {
                Some(o) => {
                    out[1] |= 0x03;
                    out[2..4].copy_from_slice(&(o.usage.len() as u16).to_be_bytes());
                    out.extend_from_slice(o.usage);
                }
                None => {
                    out[1] |= 0x01;
                }
            }
            if rctd {
                out.extend_from_slice(&timeouts());
            }
            Ok(out)
        }
        _ => Err(invalid_cdb(2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lengths_match_groups() {
        for o in OPS {
            assert_eq!(o.usage[0], o.opcode);
            assert_eq!(
                o.usage.len(),
                super::super::cdb_len(o.opcode),
                "{:#x}",
                o.opcode
            );
        }
    }

    #[test]
    fn one_command() {
        let r = report(&[0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(r[1] & 7, 3);
        assert_eq!(u16::from_be_bytes([r[2], r[3]]), 10);
        assert_eq!(r[4], 0x28);
        let r = report(&[0xa3, 0x0c, 0x01, 0xee, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(r[1] & 7, 1);
        assert!(report(&[0xa3, 0x0c, 0x01, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0]).is_err());
        let r = report(&[0xa3, 0x0c, 0x02, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(r[1] & 7, 3);
    }
}
