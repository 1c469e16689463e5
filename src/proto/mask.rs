//! Masking (RFC 6455 section 5.3): XOR a payload with a 4-byte key, in place, word-at-a-time.
//!
//! The key is applied in memory order (`key[(phase + i) % 4]`), which avoids any endianness
//! question, and the phase is carried across calls so that a payload which arrives in several
//! reads is unmasked piece by piece. The hot loop works on 32-byte chunks against a repeated
//! pattern, which LLVM turns into vector XORs without `unsafe` or alignment tricks.

/// Width of the repeated mask pattern the hot loop XORs with.
const LANE: usize = 32;

/// XORs `buf` in place with `key`, starting at mask position `phase` (taken modulo 4).
///
/// Returns the phase after the last byte, `(phase + buf.len()) % 4`, to pass to the next call
/// when the same payload continues in another buffer. Masking is its own inverse, so the same
/// function masks (client role) and unmasks (server role).
///
/// ```
/// use uringws::proto::mask::apply_mask;
/// let key = [0x37, 0xfa, 0x21, 0x3d];
/// let mut data = *b"Hello";
/// let phase = apply_mask(&mut data[..2], key, 0);
/// apply_mask(&mut data[2..], key, phase);
/// assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]); // RFC 6455 section 5.7
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let rotated = [
        key[phase],
        key[(phase + 1) & 3],
        key[(phase + 2) & 3],
        key[(phase + 3) & 3],
    ];
    let mut pattern = [0u8; LANE];
    for (i, p) in pattern.iter_mut().enumerate() {
        *p = rotated[i & 3];
    }
    let mut chunks = buf.chunks_exact_mut(LANE);
    for chunk in &mut chunks {
        for (b, m) in chunk.iter_mut().zip(pattern.iter()) {
            *b ^= m;
        }
    }
    // LANE is a multiple of 4, so the remainder starts at phase 0 of `rotated`.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i & 3];
    }
    (phase + buf.len()) & 3
}

/// The byte-by-byte definition of masking; the reference [`apply_mask`] is tested and
/// benchmarked against.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) & 3];
    }
    (phase + buf.len()) & 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_hello_example() {
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn every_length_phase_and_alignment() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let base: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..8 {
            for len in 0..(base.len() - offset) {
                for phase in 0..4 {
                    let mut a = base.clone();
                    let mut b = base.clone();
                    let pa = apply_mask(&mut a[offset..offset + len], key, phase);
                    let pb = apply_mask_bytewise(&mut b[offset..offset + len], key, phase);
                    assert_eq!(pa, pb);
                    assert_eq!(a, b, "offset {offset} len {len} phase {phase}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_bytewise(data in proptest::collection::vec(any::<u8>(), 0..2000),
                                key in any::<[u8; 4]>(), phase in 0usize..4, split in any::<prop::sample::Index>()) {
            let mut a = data.clone();
            let mut b = data.clone();
            // Mask in two pieces, carrying the phase, against one bytewise pass.
            let cut = if data.is_empty() { 0 } else { split.index(data.len() + 1) };
            let p = apply_mask(&mut a[..cut], key, phase);
            let p = apply_mask(&mut a[cut..], key, p);
            let q = apply_mask_bytewise(&mut b, key, phase);
            prop_assert_eq!(p, q);
            prop_assert_eq!(&a, &b);
            // Masking is an involution.
            apply_mask(&mut a, key, phase);
            prop_assert_eq!(a, data);
        }
    }
}
