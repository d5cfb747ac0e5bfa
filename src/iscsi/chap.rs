//! CHAP with MD5 (RFC 1994, as used by RFC 7143 §12.1.3).

use md5::{Digest, Md5};
use rand::RngCore;

/// CHAP_A value for MD5.
pub const ALG_MD5: u32 = 5;
/// Challenge length we send (RFC 7143 recommends at least 16 bytes... of entropy).
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge we answer (bounds the work an initiator can cause).
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// MD5(id || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// A fresh (identifier, challenge).
pub fn new_challenge() -> (u8, Vec<u8>) {
    let mut rng = rand::thread_rng();
    let mut c = vec![0u8; CHALLENGE_LEN];
    rng.fill_bytes(&mut c);
    let mut id = [0u8; 1];
    rng.fill_bytes(&mut id);
    (id[0], c)
}

/// Compares without an early exit (the response is secret-derived).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1994_style_vector() {
        // MD5(0x01 || "secret" || 16 zero bytes), computed independently.
        let r = response(1, b"secret", &[0u8; 16]);
        let mut h = Md5::new();
        let mut all = vec![1u8];
        all.extend_from_slice(b"secret");
        all.extend_from_slice(&[0u8; 16]);
        h.update(&all);
        let expect: [u8; 16] = h.finalize().into();
        assert_eq!(r, expect);
        assert!(ct_eq(&r, &expect));
        assert!(!ct_eq(&r, &expect[..15]));
    }

    #[test]
    fn challenges_differ() {
        let (_, a) = new_challenge();
        let (_, b) = new_challenge();
        assert_eq!(a.len(), CHALLENGE_LEN);
        assert_ne!(a, b);
    }
}
