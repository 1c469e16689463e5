//! The reader driven the way the server's read loop drives it, shared by the `frames` and
//! `inflate` targets: arbitrary pieces through a compacted buffer, optional direct reads, and
//! checks of every message against the limits and what `advance` announced.

use uringws::proto::frame::{OpCode, MAX_CONTROL_PAYLOAD};
use uringws::proto::message::{Message, OwnedMessage, Reader, ReaderConfig, Ready};
use uringws::proto::ProtocolError;

#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub messages: Vec<OwnedMessage>,
    pub error: Option<ProtocolError>,
}

pub fn check_message(m: &Message<'_>, config: &ReaderConfig) {
    match m {
        Message::Text(s) => {
            assert!(std::str::from_utf8(s.as_bytes()).is_ok());
            assert!(
                s.len() as u64 <= config.max_message,
                "text of {} bytes",
                s.len()
            );
        }
        Message::Binary(b) => {
            assert!(
                b.len() as u64 <= config.max_message,
                "binary of {} bytes",
                b.len()
            );
        }
        Message::Ping(b) | Message::Pong(b) => assert!(b.len() <= MAX_CONTROL_PAYLOAD),
        Message::Close(f) => {
            if let Some(f) = f {
                assert!(f.reason.len() <= MAX_CONTROL_PAYLOAD - 2);
            }
        }
    }
}

/// Checks that a message from [`Reader::message`] is the one [`Reader::advance`] announced:
/// `message` cannot fail, so a payload that `advance` let through unvalidated would show up
/// here as an empty text or a status-less close.
fn check_ready(m: &Message<'_>, ready: &Ready) {
    let kind_matches = matches!(
        (m, ready.opcode()),
        (Message::Text(_), OpCode::Text)
            | (Message::Binary(_), OpCode::Binary)
            | (Message::Ping(_), OpCode::Ping)
            | (Message::Pong(_), OpCode::Pong)
            | (Message::Close(_), OpCode::Close)
    );
    assert!(kind_matches, "{m:?} announced as {ready:?}");
    let len = match m {
        Message::Close(None) => 0,
        Message::Close(Some(f)) => 2 + f.reason.len(),
        other => other.payload().len(),
    };
    assert_eq!(len, ready.len(), "{m:?} announced as {ready:?}");
}

/// How payloads are read straight into the reassembly buffer, if they are.
#[derive(Clone, Copy)]
#[allow(dead_code)] // The `inflate` target reads no payload directly.
pub enum Direct {
    No,
    /// Into the reader's buffer.
    Lent,
    /// Into a buffer with room for the whole frame, as the server does with a pooled one.
    Moved,
}

/// Feeds `input` to a fresh reader in pieces of `sizes` through a buffer of `capacity` bytes,
/// with [`Reader::advance`] and [`Reader::message`] (`split_api`, which also answers the
/// reader's requests for reassembly buffers) or with [`Reader::read`].
pub fn drive(
    config: ReaderConfig,
    input: &[u8],
    sizes: &[usize],
    capacity: usize,
    split_api: bool,
    direct: Direct,
) -> Outcome {
    assert!(config.inline_limit <= capacity);
    let mut reader = Reader::new(config);
    if split_api {
        // As the I/O loop does: large frames ask for a buffer (answered below).
        reader.request_buffers(config.inline_limit / 2);
    }
    let mut buf = vec![0u8; capacity];
    let (mut start, mut end) = (0usize, 0usize);
    let mut messages = Vec::new();
    let mut input = input;
    let mut sizes = sizes.iter().copied().rev().collect::<Vec<_>>();
    loop {
        loop {
            let len = end - start;
            let step = if split_api {
                reader.advance(&mut buf[start..end]).map(|a| {
                    let m = a.ready.map(|r| {
                        let m = reader.message(&buf[start..end], r);
                        check_ready(&m, &r);
                        check_message(&m, &config);
                        let owned = m.into_owned();
                        // A reassembled payload can be taken out whole, and reading goes on.
                        if let Some(taken) = reader.take_assembled(r) {
                            assert_eq!(taken.len(), r.len());
                            match &owned {
                                OwnedMessage::Text(b) | OwnedMessage::Binary(b) => {
                                    assert_eq!(&taken[..], &b[..])
                                }
                                other => panic!("{other:?} taken as reassembled"),
                            }
                        }
                        owned
                    });
                    (a.consumed, m)
                })
            } else {
                reader.read(&mut buf[start..end]).map(|p| {
                    let m = p.message.map(|m| {
                        check_message(&m, &config);
                        m.into_owned()
                    });
                    (p.consumed, m)
                })
            };
            let (consumed, message) = match step {
                Ok(step) => step,
                Err(e) => {
                    // Sticky: every later call reports the same error.
                    let mut more = [0x81u8, 0x80, 0, 0, 0, 0];
                    assert_eq!(reader.read(&mut more).unwrap_err(), e);
                    assert_eq!(reader.advance(&mut []).unwrap_err(), e);
                    return Outcome {
                        messages,
                        error: Some(e),
                    };
                }
            };
            assert!(consumed <= len, "consumed {consumed} of {len}");
            start += consumed;
            match message {
                Some(m) => messages.push(m),
                None if reader.wants_buffer().is_some() => {
                    // Answered with a buffer of the size asked for (within reason), holding
                    // bytes the reader must clear; anything it gives back is empty.
                    let capacity = reader.wants_buffer().unwrap_or_default();
                    if capacity <= 1 << 20 {
                        // Placed some bytes in, as a caller that aligns payloads does.
                        let gap = capacity % 97;
                        let mut given = Vec::with_capacity(capacity + gap);
                        given.extend_from_slice(b"stale");
                        assert!(reader.provide_buffer_at(given, gap).is_empty());
                    }
                }
                None => {
                    assert!(
                        !(consumed == 0 && len == capacity),
                        "reader stalled: no message, nothing consumed, buffer full ({capacity})"
                    );
                    break;
                }
            }
        }
        if input.is_empty() {
            return Outcome {
                messages,
                error: None,
            };
        }
        let Some(mut n) = sizes.pop() else {
            unreachable!("sizes cover the input")
        };
        let lent = match direct {
            Direct::No => None,
            _ if start < end => None,
            _ => reader.take_direct(0),
        };
        if let Some(d) = lent {
            assert!(
                d.room > 0 && d.room as u64 <= d.remaining,
                "{} {}",
                d.room,
                d.remaining
            );
            assert!(reader.take_direct(0).is_none(), "lent twice");
            let (mut payload, mut room) = (d.buf, d.room);
            if let Direct::Moved = direct {
                let mut whole = Vec::with_capacity(payload.len() + d.remaining as usize);
                whole.extend_from_slice(&payload);
                payload = whole;
                room = d.remaining as usize;
            }
            let take = n.min(room);
            payload.extend_from_slice(&input[..take]);
            input = &input[take..];
            if take < n {
                sizes.push(n - take);
            }
            if let Err(e) = reader.direct_done(payload) {
                assert_eq!(reader.advance(&mut []).unwrap_err(), e);
                return Outcome {
                    messages,
                    error: Some(e),
                };
            }
            continue;
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        if n > capacity - end {
            // Deliver the rest of this piece after the reader has made room.
            sizes.push(n - (capacity - end));
            n = capacity - end;
        }
        assert!(n > 0, "reader stalled with a full buffer");
        buf[end..end + n].copy_from_slice(&input[..n]);
        input = &input[n..];
        end += n;
    }
}

/// Piece sizes covering `len` bytes: all at once for `seed` 0, else pseudo-random sizes of 1
/// to `seed` bytes.
pub fn piece_sizes(len: usize, seed: u8) -> Vec<usize> {
    let mut sizes = Vec::new();
    if seed == 0 || len == 0 {
        sizes.push(len);
        return sizes;
    }
    let mut state = 0x9e37_79b9u32 ^ (seed as u32) << 8 | 1;
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % seed as usize).min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}
