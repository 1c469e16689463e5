//! The receive path of a connection that agreed permessage-deflate, on arbitrary compressed
//! frames, with and without context takeover.
//!
//! Input: 3 configuration bytes, then records that become masked frames.
//!   byte 0: bit 0: the peer keeps its context (takeover); bits 1-7: `max_message` and
//!           `max_frame` = 64 * (value + 1) bytes, small so that inflation hits the limits
//!   byte 1: `inline_limit` (also the buffer capacity), 139 to 4096
//!   byte 2: how the bytes arrive, as in the `frames` target (0: in one piece)
//!   records: a flags byte, a length byte, then that many bytes:
//!     flags bit 0-1: opcode (text, binary, continuation, ping); bit 2: FIN; bit 3: RSV1;
//!     bit 4: the bytes are compressed by a real compressor first (with context, so that
//!     later records may refer back), else they go on the wire as they are (arbitrary
//!     deflate data); bit 5: repeat the bytes 64 times before compressing (a small bomb).
//!
//! Checked, beyond the `frames` checks: nothing panics, no message exceeds the limit (a bomb
//! fails with 1009 instead), and the bytes in pieces give the same messages and the same
//! error as the bytes at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uringws::proto::deflate::{Compression, Compressor, Stream};
use uringws::proto::frame::{write_frame_rsv, OpCode, Role};
use uringws::proto::message::ReaderConfig;

#[path = "common/reader.rs"]
mod reader;
use reader::{drive, piece_sizes, Direct};

fuzz_target!(|data: &[u8]| {
    let [b0, b1, b2, ref records @ ..] = *data else {
        return;
    };
    let takeover = b0 & 1 == 1;
    let limit = 64 * ((b0 >> 1) as u64 + 1);
    let inline_limit = 139 + b1 as usize * (4096 - 139) / 255;
    let stream = Stream {
        no_context_takeover: !takeover,
        window_bits: 15,
    };
    let mut compressor = Compressor::new(
        Stream {
            no_context_takeover: false,
            window_bits: 15,
        },
        &Compression::dedicated(15).min_size(0),
    );
    let mut wire = Vec::new();
    let mut rest = records;
    while let [flags, len, ref tail @ ..] = *rest {
        let n = (len as usize).min(tail.len());
        let (bytes, after) = tail.split_at(n);
        rest = after;
        let opcode = [
            OpCode::Text,
            OpCode::Binary,
            OpCode::Continuation,
            OpCode::Ping,
        ][(flags & 3) as usize];
        let payload = if flags & 0x10 != 0 {
            let plain = if flags & 0x20 != 0 {
                bytes.repeat(64)
            } else {
                bytes.to_vec()
            };
            let mut z = Vec::new();
            compressor.compress(&plain, &mut z);
            z
        } else {
            bytes.to_vec()
        };
        let rsv = if flags & 8 != 0 { 0x40 } else { 0 };
        let fin = flags & 4 != 0 || opcode == OpCode::Ping;
        let payload = if opcode == OpCode::Ping {
            &payload[..payload.len().min(125)]
        } else {
            &payload[..]
        };
        write_frame_rsv(
            &mut wire,
            fin,
            rsv,
            opcode,
            Some([0x11, 0x22, 0x33, 0x44]),
            payload,
        );
    }
    let config = ReaderConfig {
        inline_limit,
        max_message: limit,
        max_frame: limit,
        inflate: Some(stream),
        ..ReaderConfig::new(Role::Server)
    };
    let sizes = piece_sizes(wire.len(), b2);
    let pieces = drive(config, &wire, &sizes, inline_limit, true, Direct::No);
    let whole = drive(
        config,
        &wire,
        &[wire.len()],
        inline_limit.max(wire.len()),
        false,
        Direct::No,
    );
    assert_eq!(pieces, whole, "pieces {sizes:?}");
});
