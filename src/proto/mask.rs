//! Masking (RFC 6455 section 5.3): XOR a payload with a 4-byte key, in place, word-at-a-time.
//!
//! The key is applied in memory order (`key[(phase + i) % 4]`), which avoids any endianness
//! question, and the phase is carried across calls so that a payload which arrives in several
//! reads is unmasked piece by piece. The hot loop works on 32-byte chunks, starting at a 32-byte
//! aligned address, against a repeated pattern, which LLVM turns into vector XORs without
//! `unsafe`.
//!
//! [`append_masked`] copies a payload and unmasks it in the same pass; [`append_copy`] is the
//! same copy without a key, used for every large copy on the hot paths (see its note on
//! glibc's `memcpy`).

/// Width of the repeated mask pattern the hot loop XORs with.
const LANE: usize = 32;
/// Buffers at least this long are masked from a LANE-aligned address on.
const ALIGN_FROM: usize = 128 * LANE;
/// The step of [`append_masked`] and [`append_copy`].
const BLOCK: usize = 4 * LANE;
/// Runs at least this long are appended by [`append_copy`]'s loop rather than by `memcpy`.
const COPY_LOOP_MIN: usize = 2048;

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

/// Appends `src` to `dst` XORed with `key` from mask position `phase`, leaving `src` as it
/// is: the copy and the unmasking in one pass, for a payload that is moved anyway (into a
/// reassembly buffer). Returns the phase after the last byte, as [`apply_mask`] does.
///
/// ```
/// use uringws::proto::mask::append_masked;
/// let mut out = b"He".to_vec();
/// append_masked(&mut out, &[0x4d, 0x51, 0x58], [0x37, 0xfa, 0x21, 0x3d], 2);
/// assert_eq!(out, b"Hello"); // RFC 6455 section 5.7, unmasked from its third byte on
/// ```
pub fn append_masked(dst: &mut Vec<u8>, src: &[u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    dst.reserve(src.len());
    // As in `apply_mask`: in a long payload, bytes up to the first LANE-aligned destination
    // address go one by one, so that the vector stores do not straddle cache lines.
    let head_len = if src.len() >= ALIGN_FROM {
        (dst.as_ptr() as usize + dst.len()).wrapping_neg() & (LANE - 1)
    } else {
        0
    };
    let (head, body) = src.split_at(head_len);
    dst.extend(
        head.iter()
            .enumerate()
            .map(|(i, b)| b ^ key[(phase + i) & 3]),
    );
    let phase_body = (phase + head_len) & 3;
    let rotated = [
        key[phase_body],
        key[(phase_body + 1) & 3],
        key[(phase_body + 2) & 3],
        key[(phase_body + 3) & 3],
    ];
    // Four lanes per step: the vector's length is updated once per block.
    let mut pattern = [0u8; BLOCK];
    for (i, p) in pattern.iter_mut().enumerate() {
        *p = rotated[i & 3];
    }
    let mut chunks = body.chunks_exact(BLOCK);
    for chunk in &mut chunks {
        let mut block = [0u8; BLOCK];
        for ((o, s), m) in block.iter_mut().zip(chunk).zip(pattern.iter()) {
            *o = s ^ m;
        }
        dst.extend_from_slice(&block);
    }
    // BLOCK and LANE are multiples of 4, so each remainder starts at phase 0 of `rotated`.
    let mut lanes = chunks.remainder().chunks_exact(LANE);
    for chunk in &mut lanes {
        let mut lane = [0u8; LANE];
        for ((o, s), m) in lane.iter_mut().zip(chunk).zip(pattern.iter()) {
            *o = s ^ m;
        }
        dst.extend_from_slice(&lane);
    }
    let rest = lanes.remainder();
    dst.extend(rest.iter().enumerate().map(|(i, b)| b ^ rotated[i & 3]));
    (phase + src.len()) & 3
}

/// Appends `src` to `dst` as it is. Runs of 2 KiB or more are copied in 128-byte blocks
/// rather than by one `memcpy`: glibc (2.36, Debian 12) copies those with `rep movsb`,
/// which on AMD Zen takes 15-20 times longer (64 KiB: 25-36 us against 1.4-2.2) when the
/// destination lies a few bytes after the source modulo 4096, and which of two reused
/// buffers meet that way is chance. Measured: `cargo bench --bench proto -- mask/copy`.
///
/// ```
/// use uringws::proto::mask::append_copy;
/// let mut out = b"He".to_vec();
/// append_copy(&mut out, b"llo");
/// assert_eq!(out, b"Hello");
/// ```
pub fn append_copy(dst: &mut Vec<u8>, src: &[u8]) {
    if src.len() < COPY_LOOP_MIN {
        dst.extend_from_slice(src);
        return;
    }
    dst.reserve(src.len());
    let mut chunks = src.chunks_exact(BLOCK);
    for chunk in &mut chunks {
        let block: &[u8; BLOCK] = chunk.try_into().expect("chunks_exact gives BLOCK bytes");
        dst.extend_from_slice(block);
    }
    dst.extend_from_slice(chunks.remainder());
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

    #[test]
    fn append_masked_every_length_phase_and_alignment() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let src: Vec<u8> = (0..(ALIGN_FROM as u32 + 200))
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        let lengths = (0..300).chain(ALIGN_FROM - 3 * LANE..ALIGN_FROM + 3 * LANE);
        for before in 0..(LANE + 1) {
            for len in lengths.clone() {
                for phase in 0..4 {
                    let mut dst = vec![0x55; before];
                    let p = append_masked(&mut dst, &src[..len], key, phase);
                    let mut want = src[..len].to_vec();
                    let q = apply_mask_bytewise(&mut want, key, phase);
                    assert_eq!(p, q);
                    assert_eq!(&dst[..before], &vec![0x55; before][..]);
                    assert_eq!(
                        &dst[before..],
                        &want[..],
                        "before {before} len {len} phase {phase}"
                    );
                }
            }
        }
    }

    #[test]
    fn append_copy_every_length_around_the_loop() {
        let src: Vec<u8> = (0..3 * COPY_LOOP_MIN as u32)
            .map(|i| (i * 13 + 5) as u8)
            .collect();
        let lengths = (0..200)
            .chain(COPY_LOOP_MIN - BLOCK - 2..COPY_LOOP_MIN + BLOCK + 2)
            .chain([src.len() - 1, src.len()]);
        for before in [0, 1, 14, 4095] {
            for len in lengths.clone() {
                let mut dst = vec![0x55; before];
                append_copy(&mut dst, &src[..len]);
                assert_eq!(dst.len(), before + len);
                assert!(dst[..before].iter().all(|&b| b == 0x55));
                assert_eq!(&dst[before..], &src[..len], "before {before} len {len}");
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
