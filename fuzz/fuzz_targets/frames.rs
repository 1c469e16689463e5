//! The server's receive path on arbitrary bytes, delivered in arbitrary pieces through a read
//! buffer that is compacted the way a server's read loop does it (as the `drive` helper in the
//! tests of src/proto/message.rs).
//!
//! Input: 3 configuration bytes, then the bytes received.
//!   byte 0: `inline_limit`, which is also the buffer capacity, from 139 to 4096; when odd,
//!           the piecewise run reads large payloads straight into the reassembly buffer
//!           (`Reader::take_direct` / `direct_done`, as the I/O loop does), moving them into
//!           a buffer with room for the whole frame first when byte 2 is odd
//!   byte 1: `max_message`: 16 * byte, or the default (64 MiB) for 255
//!   byte 2: how the bytes arrive: 0 in one piece, otherwise pieces of 1..=byte bytes with
//!           pseudo-random sizes seeded by the byte
//!
//! The pieces go through `Reader::advance` + `Reader::message` (what the I/O loops use; a
//! reassembled payload is then also taken out with `Reader::take_assembled`), the
//! reference run (the whole input in one piece, into a buffer that holds it all) through
//! `Reader::read`.
//!
//! Checked: nothing panics; `consumed` never exceeds the bytes passed; messages respect the
//! limits and match what `advance` announced (opcode, length); the reader never stalls with a
//! full buffer; an error is sticky; and both runs give the same messages and the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uringws::proto::frame::Role;
use uringws::proto::message::{ReaderConfig, DEFAULT_MAX_MESSAGE};

#[path = "common/reader.rs"]
mod reader;
use reader::{drive, piece_sizes, Direct};

fuzz_target!(|data: &[u8]| {
    let [b0, b1, b2, ref input @ ..] = *data else {
        return;
    };
    let inline_limit = 139 + b0 as usize * (4096 - 139) / 255;
    let max_message = if b1 == 255 {
        DEFAULT_MAX_MESSAGE
    } else {
        16 * b1 as u64
    };
    let config = ReaderConfig {
        inline_limit,
        max_message,
        ..ReaderConfig::new(Role::Server)
    };
    let sizes = piece_sizes(input.len(), b2);
    let direct = match (b0 & 1, b2 & 1) {
        (0, _) => Direct::No,
        (_, 0) => Direct::Lent,
        _ => Direct::Moved,
    };
    let pieces = drive(config, input, &sizes, inline_limit, true, direct);
    // The same bytes all at once, into a buffer that holds them all.
    let whole = drive(
        config,
        input,
        &[input.len()],
        inline_limit.max(input.len()),
        false,
        Direct::No,
    );
    assert_eq!(pieces, whole, "pieces {sizes:?}");
});
