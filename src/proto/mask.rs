//! Masking (RFC 6455 section 5.3): XOR a payload with a 4-byte key, in place, word-at-a-time.
//!
//! The key is applied in memory order (`key[(phase + i) % 4]`), which avoids any endianness
//! question, and the phase is carried across calls so that a payload which arrives in several
//! reads is unmasked piece by piece. The hot loop works on 32-byte chunks, starting at a 32-byte
//! aligned address, against a repeated pattern, which LLVM turns into vector XORs without
//! `unsafe`.

/// Width of the repeated mask pattern the hot loop XORs with.
const LANE: usize = 32;
/// Buffers at least this long are masked from a LANE-aligned address on.
const ALIGN_FROM: usize = 128 * LANE;

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
    // In a long buffer, bytes up to the first LANE-aligned address go one by one: vector
    // stores that straddle cache lines made the pass 1.4x slower (64 KiB at a frame header's
    // offset of 14). A short buffer is not worth the byte loop.
    let head_len = if buf.len() >= ALIGN_FROM {
        (buf.as_ptr() as usize).wrapping_neg() & (LANE - 1)
    } else {
        0
    };
    let (head, body) = buf.split_at_mut(head_len);
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= key[(phase + i) & 3];
    }
    mask_lanes(body, key, (phase + head_len) & 3);
    (phase + buf.len()) & 3
}

/// The vectorised pass of [`apply_mask`] over `buf`, from mask position `phase` (0..4).
#[inline]
fn mask_lanes(buf: &mut [u8], key: [u8; 4], phase: usize) {
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
        // Every alignment; every short length, and the lengths on both sides of ALIGN_FROM.
        let base: Vec<u8> = (0..(ALIGN_FROM as u32 + 200))
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        let lengths = (0..300).chain(ALIGN_FROM - 3 * LANE..ALIGN_FROM + 3 * LANE);
        for offset in 0..(LANE + 1) {
            for len in lengths.clone() {
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
        fn agrees_with_bytewise(data in proptest::collection::vec(any::<u8>(), 0..2 * ALIGN_FROM + 100),
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
