//! Frame headers (RFC 6455 section 5.2): decoded in place from a byte slice, encoded into a
//! small array.
//!
//! Decoding enforces every rule of section 5 that the receiving side can check on the header
//! alone: masking by role, reserved bits, reserved opcodes, control frame size and
//! fragmentation, the minimal length encoding and the top bit of the 64-bit length, and the
//! frame size limit. A header that declares a huge payload is refused before anything is
//! allocated.

use crate::proto::mask::{append_copy, append_masked};
use crate::proto::ProtocolError;

/// The largest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest control frame payload (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: starts a text message.
    Text,
    /// 0x2: starts a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Maps the 4-bit wire value to an opcode; reserved values are an error.
    pub fn from_u8(v: u8) -> Result<OpCode, ProtocolError> {
        Ok(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::UnknownOpcode(other)),
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Which end of the connection this endpoint is. It decides which frames must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The server: receives masked frames, sends unmasked ones.
    Server,
    /// The client: receives unmasked frames, sends masked ones.
    Client,
}

/// What the decoder checks besides the RFC's fixed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The role of the receiving endpoint.
    pub role: Role,
    /// RSV bits (as the 3 high bits of a byte, `0x70`) that a negotiated extension allows.
    pub allowed_rsv: u8,
    /// The largest payload of a single frame.
    pub max_frame: u64,
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The FIN bit: this is the last frame of its message.
    pub fin: bool,
    /// The RSV1-3 bits, in place (`0x40`, `0x20`, `0x10`).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
    /// The length of the header itself (2 to 14 bytes).
    pub header_len: usize,
}

/// The result of [`decode_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// The header is incomplete: at least this many more bytes are needed.
    NeedMore(usize),
    /// A complete, valid header.
    Header(FrameHeader),
}

/// Decodes a frame header from the start of `buf` and checks it against RFC 6455 section 5.
///
/// Returns [`Decoded::NeedMore`] when `buf` holds only part of the header. Errors are reported
/// as soon as the bytes that prove them have arrived.
pub fn decode_header(buf: &[u8], limits: &DecodeLimits) -> Result<Decoded, ProtocolError> {
    let Some(&b0) = buf.first() else {
        return Ok(Decoded::NeedMore(2));
    };
    let fin = b0 & 0x80 != 0;
    let rsv = b0 & 0x70;
    if rsv & !limits.allowed_rsv != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = OpCode::from_u8(b0 & 0x0f)?;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(Decoded::NeedMore(1));
    };
    let masked = b1 & 0x80 != 0;
    match (limits.role, masked) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
        _ => {}
    }
    let len7 = b1 & 0x7f;
    if opcode.is_control() && len7 > MAX_CONTROL_PAYLOAD as u8 {
        return Err(ProtocolError::ControlTooLong);
    }
    let ext_len = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext_len + if masked { 4 } else { 0 };
    if buf.len() < 2 + ext_len {
        return Ok(Decoded::NeedMore(header_len - buf.len()));
    }
    let payload_len = match len7 {
        126 => {
            let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if n < 126 {
                return Err(ProtocolError::NonMinimalLength);
            }
            n
        }
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(ProtocolError::LengthTopBit);
            }
            if n <= u16::MAX as u64 {
                return Err(ProtocolError::NonMinimalLength);
            }
            n
        }
        n => n as u64,
    };
    if payload_len > limits.max_frame {
        return Err(ProtocolError::FrameTooBig);
    }
    if buf.len() < header_len {
        return Ok(Decoded::NeedMore(header_len - buf.len()));
    }
    let mask = masked.then(|| {
        let at = 2 + ext_len;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Ok(Decoded::Header(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Encodes a frame header into `out`, returning the number of bytes written (2 to 14).
///
/// `rsv` holds RSV bits in place (`0x40` is RSV1). A server passes `mask: None`; a client
/// passes a fresh key for every frame.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | (rsv & 0x70) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// Appends a whole frame (header and payload) to `out`; with a mask key the payload is masked
/// as it is copied (client role).
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    write_frame_rsv(out, fin, 0, opcode, mask, payload);
}

/// [`write_frame`] with RSV bits (`0x40` is RSV1, which marks a compressed message).
pub fn write_frame_rsv(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, rsv, opcode, mask, payload.len() as u64);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    match mask {
        Some(key) => {
            append_masked(out, payload, key, 0);
        }
        None => append_copy(out, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SERVER: DecodeLimits = DecodeLimits {
        role: Role::Server,
        allowed_rsv: 0,
        max_frame: 1 << 24,
    };
    const CLIENT: DecodeLimits = DecodeLimits {
        role: Role::Client,
        allowed_rsv: 0,
        max_frame: u64::MAX >> 1,
    };

    fn header(buf: &[u8], limits: &DecodeLimits) -> FrameHeader {
        match decode_header(buf, limits).unwrap() {
            Decoded::Header(h) => h,
            other => panic!("expected a header, got {other:?}"),
        }
    }

    // RFC 6455 section 5.7 examples.
    #[test]
    fn rfc_unmasked_hello() {
        let h = header(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], &CLIENT);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!((h.payload_len, h.header_len, h.mask), (5, 2, None));
    }

    #[test]
    fn rfc_masked_hello() {
        let h = header(
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            &SERVER,
        );
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!((h.payload_len, h.header_len), (5, 6));
    }

    #[test]
    fn rfc_fragmented_hello() {
        let first = header(&[0x01, 0x03, 0x48, 0x65, 0x6c], &CLIENT);
        assert!(!first.fin);
        assert_eq!(first.opcode, OpCode::Text);
        let second = header(&[0x80, 0x02, 0x6c, 0x6f], &CLIENT);
        assert!(second.fin);
        assert_eq!(second.opcode, OpCode::Continuation);
        assert_eq!(second.payload_len, 2);
    }

    #[test]
    fn rfc_ping_and_pong() {
        let ping = header(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], &CLIENT);
        assert_eq!(ping.opcode, OpCode::Ping);
        let pong = header(
            &[
                0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            &SERVER,
        );
        assert_eq!(pong.opcode, OpCode::Pong);
        assert_eq!(pong.payload_len, 5);
    }

    #[test]
    fn rfc_256_byte_and_64k_binary() {
        let h = header(&[0x82, 0x7e, 0x01, 0x00], &CLIENT);
        assert_eq!(
            (h.opcode, h.payload_len, h.header_len),
            (OpCode::Binary, 256, 4)
        );
        let h = header(&[0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00], &CLIENT);
        assert_eq!((h.payload_len, h.header_len), (65536, 10));
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, true, 0, OpCode::Binary, None, 256);
        assert_eq!(&out[..n], &[0x82, 0x7e, 0x01, 0x00]);
        let n = encode_header(&mut out, true, 0, OpCode::Binary, None, 65536);
        assert_eq!(&out[..n], &[0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let full = [0x82u8, 0xff, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00, 1, 2, 3, 4];
        for cut in 0..full.len() {
            match decode_header(&full[..cut], &SERVER).unwrap() {
                Decoded::NeedMore(n) => assert!(n >= 1 && cut + n <= full.len(), "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert_eq!(header(&full, &SERVER).header_len, 14);
    }

    fn err(buf: &[u8], limits: &DecodeLimits) -> ProtocolError {
        decode_header(buf, limits).unwrap_err()
    }

    #[test]
    fn each_rule_is_rejected_with_1002() {
        let cases: [(&[u8], &DecodeLimits, ProtocolError); 9] = [
            (&[0x81, 0x05], &SERVER, ProtocolError::UnmaskedFrame),
            (&[0x81, 0x85], &CLIENT, ProtocolError::MaskedFrame),
            (&[0xc1, 0x85], &SERVER, ProtocolError::ReservedBits),
            (&[0x93, 0x85], &SERVER, ProtocolError::ReservedBits),
            (&[0x83, 0x85], &SERVER, ProtocolError::UnknownOpcode(3)),
            (&[0x8b, 0x85], &SERVER, ProtocolError::UnknownOpcode(0xb)),
            (&[0x09, 0x80], &SERVER, ProtocolError::FragmentedControl),
            (
                &[0x89, 0xfe, 0x00, 0x7e],
                &SERVER,
                ProtocolError::ControlTooLong,
            ),
            (
                &[0x82, 0xfe, 0x00, 0x05],
                &SERVER,
                ProtocolError::NonMinimalLength,
            ),
        ];
        for (buf, limits, want) in cases {
            let got = err(buf, limits);
            assert_eq!(got, want, "{buf:x?}");
            assert_eq!(got.close_code().0, 1002);
        }
        let long_short = [0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(err(&long_short, &SERVER), ProtocolError::NonMinimalLength);
        let top_bit = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(err(&top_bit, &SERVER), ProtocolError::LengthTopBit);
    }

    #[test]
    fn rsv_allowed_by_extension() {
        let limits = DecodeLimits {
            allowed_rsv: 0x40,
            ..SERVER
        };
        assert_eq!(header(&[0xc1, 0x80, 1, 2, 3, 4], &limits).rsv, 0x40);
        assert_eq!(err(&[0xa1, 0x80], &limits), ProtocolError::ReservedBits);
    }

    #[test]
    fn huge_frame_is_1009_before_allocation() {
        // 2^63 - 1 bytes declared: refused from the header alone.
        let buf = [0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let e = err(&buf, &SERVER);
        assert_eq!(e, ProtocolError::FrameTooBig);
        assert_eq!(e.close_code().0, 1009);
    }

    #[test]
    fn write_frame_matches_rfc_examples() {
        let mut out = Vec::new();
        write_frame(&mut out, true, OpCode::Text, None, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        out.clear();
        write_frame(
            &mut out,
            true,
            OpCode::Text,
            Some([0x37, 0xfa, 0x21, 0x3d]),
            b"Hello",
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn opcode_values_round_trip() {
        for v in 0..16u8 {
            if let Ok(op) = OpCode::from_u8(v) {
                assert_eq!(op.as_u8(), v);
            } else {
                assert!(matches!(v, 3..=7 | 0xb..=0xf));
            }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(fin in any::<bool>(), op in prop::sample::select(vec![
                OpCode::Continuation, OpCode::Text, OpCode::Binary]),
                len in prop_oneof![0u64..200, 60000u64..70000, 0u64..(1 << 40)],
                mask in any::<Option<[u8; 4]>>(), rsv in 0u8..8) {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&mut out, fin, rsv << 4, op, mask, len);
            let limits = DecodeLimits {
                role: if mask.is_some() { Role::Server } else { Role::Client },
                allowed_rsv: 0x70,
                max_frame: u64::MAX,
            };
            let h = header(&out[..n], &limits);
            prop_assert_eq!(h, FrameHeader { fin, rsv: rsv << 4, opcode: op, mask, payload_len: len, header_len: n });
        }

        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = decode_header(&buf, &SERVER);
            let _ = decode_header(&buf, &CLIENT);
        }
    }
}
