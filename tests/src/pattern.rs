//! Deterministic large bodies: chunk `i` is a fixed pseudo-random MiB with `i`
//! stamped in its first bytes, so reordered, dropped or duplicated chunks change the hash.

use std::sync::OnceLock;

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub const CHUNK: usize = 1 << 20;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// The chunks of a `total`-byte body.
pub fn chunks(total: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let n = total.div_ceil(CHUNK as u64);
    (0..n).map(move |i| {
        let len = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        let mut c = base()[..len].to_vec();
        let stamp = i.to_le_bytes();
        let k = stamp.len().min(len);
        c[..k].copy_from_slice(&stamp[..k]);
        Bytes::from(c)
    })
}

/// SHA-256 (hex) of the `total`-byte body.
pub fn sha256(total: u64) -> String {
    let mut h = Sha256::new();
    for c in chunks(total) {
        h.update(&c);
    }
    crate::echo::hex(&h.finalize())
}
