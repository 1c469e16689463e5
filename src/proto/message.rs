//! The receive state machine: bytes in, messages out.
//!
//! [`Reader`] takes the bytes of a connection as they arrive and yields complete messages
//! (text, binary) and control events (ping, pong, close). It decodes each header where it lies,
//! unmasks the payload in place, validates UTF-8 as the bytes arrive (failing fast), reassembles
//! fragments into one owned buffer bounded by the message size limit, and lets control frames
//! interleave with fragments. A message whose single frame fits the caller's buffer is handed
//! out as a slice of that buffer, not copied. The payload of a larger frame can be read
//! straight into the reassembly buffer ([`Reader::take_direct`]), so that it is not copied
//! through the caller's buffer either. A caller that keeps spare buffers can be asked for one
//! when a large frame starts ([`Reader::request_buffers`]), so that reassembly reuses memory
//! instead of growing a fresh buffer per message.

use bytes::Bytes;

use crate::proto::close::{parse_close_payload, CloseCode, CloseFrame};
use crate::proto::deflate::{Inflater, Stream};
use crate::proto::frame::{decode_header, DecodeLimits, Decoded, FrameHeader, OpCode, Role};
use crate::proto::mask::{append_copy, append_masked, apply_mask};
use crate::proto::utf8::Utf8Validator;
use crate::proto::ProtocolError;

/// Default largest frame payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: u64 = 16 << 20;
/// Default largest message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;

/// Reassembly reserves at most this much ahead of the bytes that actually arrived.
const MAX_RESERVE: u64 = 64 << 10;

/// What a [`Reader`] enforces beyond the RFC's fixed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    /// The role of this endpoint (a server receives masked frames).
    pub role: Role,
    /// Largest payload of one frame (default [`DEFAULT_MAX_FRAME`]); larger frames close with 1009.
    pub max_frame: u64,
    /// Largest message, all fragments together (default [`DEFAULT_MAX_MESSAGE`]); 1009 past it.
    pub max_message: u64,
    /// RSV bits a negotiated extension allows (`0x40` for RSV1); 0 without extensions.
    pub allowed_rsv: u8,
    /// The peer's compressed stream, when permessage-deflate was agreed: RSV1 on the first
    /// frame of a message marks it compressed, and it is inflated into the reassembly buffer,
    /// with the size limits applied to the inflated bytes. Implies RSV1 in `allowed_rsv`.
    pub inflate: Option<Stream>,
    /// A single-frame message whose header and payload together fit in this many bytes is
    /// waited for whole and handed out in place; larger ones stream into an owned buffer.
    /// Set it to the capacity of the buffer the caller reads into (and compact that buffer so
    /// that a pending frame starts at its beginning).
    pub inline_limit: usize,
}

impl ReaderConfig {
    /// The defaults for `role`: 16 MiB frames, 64 MiB messages, no extensions, 64 KiB buffers.
    pub fn new(role: Role) -> Self {
        ReaderConfig {
            role,
            max_frame: DEFAULT_MAX_FRAME,
            max_message: DEFAULT_MAX_MESSAGE,
            allowed_rsv: 0,
            inflate: None,
            inline_limit: 64 << 10,
        }
    }
}

/// A message or control event, borrowing the read buffer or the reader's reassembly buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message, valid UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (at most 125 bytes).
    Ping(&'a [u8]),
    /// A pong with its payload (at most 125 bytes).
    Pong(&'a [u8]),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame<'a>>),
}

impl Message<'_> {
    /// Copies the payload into an owned message that can outlive the read buffer.
    pub fn into_owned(self) -> OwnedMessage {
        match self {
            Message::Text(s) => OwnedMessage::Text(Bytes::copy_from_slice(s.as_bytes())),
            Message::Binary(b) => OwnedMessage::Binary(Bytes::copy_from_slice(b)),
            Message::Ping(b) => OwnedMessage::Ping(Bytes::copy_from_slice(b)),
            Message::Pong(b) => OwnedMessage::Pong(Bytes::copy_from_slice(b)),
            Message::Close(f) => OwnedMessage::Close(f.map(|f| (f.code, f.reason.to_owned()))),
        }
    }

    /// The payload bytes (for a close, the reason).
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(f) => f.map_or(&[][..], |f| f.reason.as_bytes()),
        }
    }
}

/// An owned message, `Bytes`-backed, to send to other tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedMessage {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close with its code and reason, or `None` without status.
    Close(Option<(CloseCode, String)>),
}

/// What one call of [`Reader::read`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Bytes at the front of the buffer the reader is done with; the caller drops them.
    pub consumed: usize,
    /// A message, if one completed. `None` means more bytes are needed.
    pub message: Option<Message<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a frame header at the front of the buffer.
    Header,
    /// A frame that is waited for whole at the front of the buffer; `done` payload bytes of it
    /// are already unmasked and validated.
    Inline {
        header: FrameHeader,
        done: usize,
        phase: usize,
    },
    /// A frame whose header was consumed; its payload streams into the reassembly buffer.
    Stream {
        header: FrameHeader,
        remaining: u64,
        phase: usize,
    },
    /// A close frame was received; later bytes are ignored.
    Closed,
    /// A protocol error was reported; it is reported again on every call.
    Failed(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// The receive side of the protocol, one per connection.
#[derive(Debug)]
pub struct Reader {
    config: ReaderConfig,
    state: State,
    /// The kind of the fragmented (or streamed) message in progress.
    kind: Option<Kind>,
    /// Reassembly buffer for messages that are fragmented or larger than the inline limit.
    /// The message's bytes are `assembled[gap..]`.
    assembled: Vec<u8>,
    /// Bytes left before the message in `assembled`, as the caller that provided the buffer
    /// asked ([`Reader::provide_buffer_at`]); 0 in a buffer the reader grew itself.
    gap: usize,
    /// `assembled` was handed out by the previous call and must be cleared first.
    handed_out: bool,
    utf8: Utf8Validator,
    /// `assembled` is out for a direct read; its length when it was taken.
    direct_from: Option<usize>,
    /// A message that a direct read completed, reported by the next `advance`.
    pending: Option<Ready>,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// Where the current frame's bytes start in `assembled` (its inflated size is limited).
    frame_start: usize,
    /// The decompressor: kept for a stream with context takeover, per message otherwise.
    inflater: Option<Inflater>,
    /// Frames of at least this many payload bytes pause [`Reader::advance`] to ask the caller
    /// for a reassembly buffer (`u32::MAX`: never).
    request_min: u32,
    /// The last `advance` paused just after a frame's header to ask for a buffer.
    paused: bool,
}

impl Reader {
    /// A reader at the start of a connection (just after the handshake).
    pub fn new(config: ReaderConfig) -> Self {
        Reader {
            config,
            state: State::Header,
            kind: None,
            assembled: Vec::new(),
            gap: 0,
            handed_out: false,
            utf8: Utf8Validator::new(),
            direct_from: None,
            pending: None,
            compressed: false,
            frame_start: 0,
            inflater: None,
            request_min: u32::MAX,
            paused: false,
        }
    }

    /// Asks the reader to pause when an uncompressed data frame of at least `min` payload
    /// bytes starts and its reassembly buffer is too small for it: [`Reader::advance`] then
    /// returns just after the frame's header, with no message, and
    /// [`Reader::wants_buffer`] says how large a buffer would hold the message so far. The
    /// caller may hand one over with [`Reader::provide_buffer`], and must call `advance` again
    /// with the rest of its bytes before reading more (without a buffer the reader then grows
    /// its own, as it does when not asked). A caller with a pool of spare buffers thus spares
    /// the allocator, and the page faults of fresh memory, a large buffer per message.
    pub fn request_buffers(&mut self, min: usize) {
        self.request_min = u32::try_from(min).unwrap_or(u32::MAX);
    }

    /// The capacity of the reassembly buffer that the last [`Reader::advance`] paused to ask
    /// for (see [`Reader::request_buffers`]); `None` when it did not pause.
    pub fn wants_buffer(&self) -> Option<usize> {
        match self.state {
            // Nothing of the frame's payload was taken yet: the message so far and all of it.
            // (Within `max_message`, checked when the frame started, so it fits a usize.)
            State::Stream { remaining, .. } if self.paused => {
                Some(usize::try_from(self.assembled_len() as u64 + remaining).unwrap_or(usize::MAX))
            }
            _ => None,
        }
    }

    /// Makes `buf` the reassembly buffer if its capacity is larger than the current one's,
    /// moving the bytes reassembled so far into it, and returns the buffer it gave up
    /// (emptied); otherwise returns `buf` untouched. Nothing changes while the buffer is out
    /// for a direct read, or holds a reassembled message that was reported ready (until the
    /// next [`Reader::advance`]).
    pub fn provide_buffer(&mut self, buf: Vec<u8>) -> Vec<u8> {
        self.provide_buffer_at(buf, 0)
    }

    /// [`Reader::provide_buffer`], with the message placed `gap` bytes into `buf` (the bytes
    /// before it are zeroed), so that a caller can choose where its payloads lie in memory:
    /// the message taken out with [`Reader::take_assembled`] starts there, and so do the
    /// bytes that [`Reader::take_direct`] lends the buffer for. The capacity compared is what
    /// lies past the gap.
    pub fn provide_buffer_at(&mut self, mut buf: Vec<u8>, gap: usize) -> Vec<u8> {
        if self.direct_from.is_some()
            || self.pending.is_some()
            || self.handed_out
            || buf.capacity().saturating_sub(gap)
                <= self.assembled.capacity().saturating_sub(self.gap)
        {
            return buf;
        }
        buf.clear();
        buf.resize(gap, 0);
        append_copy(&mut buf, self.assembled_message());
        self.gap = gap;
        let mut old = std::mem::replace(&mut self.assembled, buf);
        old.clear();
        old
    }

    /// The message reassembled so far (past the gap).
    fn assembled_message(&self) -> &[u8] {
        self.assembled.get(self.gap..).unwrap_or_default()
    }

    /// The length of the message reassembled so far.
    fn assembled_len(&self) -> usize {
        self.assembled_message().len()
    }

    /// Empties the reassembly buffer, keeping its gap.
    fn clear_assembled(&mut self) {
        self.assembled.truncate(self.gap);
    }

    /// The configuration this reader enforces.
    pub fn config(&self) -> &ReaderConfig {
        &self.config
    }

    /// Whether a close frame has been received.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Takes the reassembly buffer out, emptied, when no message is in progress and its
    /// capacity exceeds `larger_than` bytes; the reader goes on with an empty one. The reader
    /// keeps the capacity a large message made it grow (so that the next one is not
    /// reassembled into fresh memory): a caller whose connection goes idle takes the buffer
    /// here to free it or to recycle it (for instance into [`Reader::take_direct`]).
    pub fn take_buffer(&mut self, larger_than: usize) -> Option<Vec<u8>> {
        if self.is_mid_message()
            || self.direct_from.is_some()
            || self.pending.is_some()
            || self.assembled.capacity() <= larger_than
        {
            return None;
        }
        self.handed_out = false;
        self.gap = 0;
        let mut buf = std::mem::take(&mut self.assembled);
        buf.clear();
        Some(buf)
    }

    /// Whether a message is partly received (a frame or fragment is pending).
    pub fn is_mid_message(&self) -> bool {
        self.kind.is_some() || !matches!(self.state, State::Header | State::Closed)
    }

    /// Feeds the bytes that have arrived and not yet been consumed, and returns at most one
    /// message: [`Reader::advance`] followed by [`Reader::message`].
    ///
    /// `buf` must start with the first byte not consumed by earlier calls. The reader unmasks
    /// payloads in place. Call again with the rest until it returns no message, then read more
    /// bytes. After an error the reader stays failed: close the connection with
    /// [`ProtocolError::close_code`].
    pub fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Progress<'a>, ProtocolError> {
        let advance = self.advance(buf)?;
        Ok(Progress {
            consumed: advance.consumed,
            message: advance.ready.map(|r| self.message(buf, r)),
        })
    }

    /// Feeds the bytes that have arrived and not yet been consumed, and reports how many the
    /// reader is done with and whether a message is ready, without borrowing anything.
    ///
    /// `buf` must start with the first byte not consumed by earlier calls; payloads are
    /// unmasked in place and fully validated (UTF-8, close payloads) before a message is
    /// reported ready. Fetch a ready message with [`Reader::message`], passing the same `buf`.
    /// This split lets an I/O loop decide what to do with a message before borrowing it.
    pub fn advance(&mut self, buf: &mut [u8]) -> Result<Advance, ProtocolError> {
        if std::mem::take(&mut self.paused) {
            // Paused for a buffer last time: with or without one, the frame goes on.
            if let State::Stream { remaining, .. } = self.state {
                self.reserve(remaining);
            }
        }
        if self.handed_out {
            self.handed_out = false;
            self.clear_assembled();
        }
        if self.direct_from.is_some() {
            // The reassembly buffer is out for a direct read: wait for it.
            return Ok(Advance::more(0));
        }
        if let Some(ready) = self.pending.take() {
            self.handed_out = true;
            return Ok(Advance {
                consumed: 0,
                ready: Some(ready),
            });
        }
        match self.step(buf) {
            Ok(advance) => Ok(advance),
            Err(e) => {
                self.state = State::Failed(e);
                Err(e)
            }
        }
    }

    /// The message that [`Reader::advance`] reported ready, borrowing `buf` (the same slice
    /// that was passed to `advance`) or the reader's reassembly buffer.
    pub fn message<'a>(&'a self, buf: &'a [u8], ready: Ready) -> Message<'a> {
        let payload = match ready.at {
            Some(at) => &buf[at..at + ready.len],
            None => self.assembled_message(),
        };
        match ready.opcode {
            // `advance` validated the payload; this second check only turns it into a `str`.
            OpCode::Text => Message::Text(simdutf8::basic::from_utf8(payload).unwrap_or_default()),
            OpCode::Binary | OpCode::Continuation => Message::Binary(payload),
            OpCode::Ping => Message::Ping(payload),
            OpCode::Pong => Message::Pong(payload),
            OpCode::Close => Message::Close(parse_close_payload(payload).unwrap_or_default()),
        }
    }

    /// For a ready message that was reassembled (fragmented, or larger than the inline
    /// limit), takes its payload out of the reader without copying (where the buffer's
    /// provider placed it, see [`Reader::provide_buffer_at`]); use it instead of
    /// [`Reader::message`]. `None` for a message that lies in the caller's buffer. A text
    /// payload is valid UTF-8, as `advance` checked.
    pub fn take_assembled(&mut self, ready: Ready) -> Option<Bytes> {
        if ready.at.is_some() || !self.handed_out || self.assembled_len() != ready.len {
            return None;
        }
        let gap = std::mem::take(&mut self.gap);
        let payload = Bytes::from(std::mem::take(&mut self.assembled));
        Some(if gap == 0 {
            payload
        } else {
            payload.slice(gap..)
        })
    }

    /// Advances the state machine as far as `buf` allows, up to one complete message.
    fn step(&mut self, buf: &mut [u8]) -> Result<Advance, ProtocolError> {
        let mut consumed = 0;
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Closed => return Ok(Advance::more(buf.len())),
                State::Header => {
                    let deflate_rsv = if self.config.inflate.is_some() {
                        0x40
                    } else {
                        0
                    };
                    let limits = DecodeLimits {
                        role: self.config.role,
                        allowed_rsv: self.config.allowed_rsv | deflate_rsv,
                        max_frame: self.config.max_frame,
                    };
                    let header = match decode_header(&buf[consumed..], &limits)? {
                        Decoded::NeedMore(_) => return Ok(Advance::more(consumed)),
                        Decoded::Header(h) => h,
                    };
                    self.state = self.start_frame(header)?;
                    if let State::Stream { .. } = self.state {
                        consumed += header.header_len;
                        if self.paused {
                            return Ok(Advance::more(consumed));
                        }
                    }
                }
                State::Inline {
                    header,
                    mut done,
                    mut phase,
                } => {
                    let start = consumed + header.header_len;
                    // An inline frame fits in `inline_limit`, a usize.
                    let len = header.payload_len as usize;
                    let avail = buf.len().saturating_sub(start).min(len);
                    if avail == len && done == 0 {
                        // The common case: the whole frame arrived at once. Validation of
                        // text happens once, on the complete payload, in `read`.
                        if let Some(key) = header.mask {
                            apply_mask(&mut buf[start..start + len], key, 0);
                        }
                    } else if avail > done {
                        let piece = &mut buf[start + done..start + avail];
                        if let Some(key) = header.mask {
                            phase = apply_mask(piece, key, phase);
                        }
                        if header.opcode == OpCode::Text {
                            self.utf8
                                .feed(piece, avail == len)
                                .map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                        done = avail;
                    }
                    if avail < len {
                        self.state = State::Inline {
                            header,
                            done,
                            phase,
                        };
                        return Ok(Advance::more(consumed));
                    }
                    let payload = &buf[start..start + len];
                    match header.opcode {
                        OpCode::Text if done == 0 => {
                            simdutf8::basic::from_utf8(payload)
                                .map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                        OpCode::Close => {
                            parse_close_payload(payload)?;
                        }
                        _ => {}
                    }
                    self.state = if header.opcode == OpCode::Close {
                        State::Closed
                    } else {
                        State::Header
                    };
                    return Ok(Advance {
                        consumed: start + len,
                        ready: Some(Ready {
                            opcode: header.opcode,
                            at: Some(start),
                            len,
                        }),
                    });
                }
                State::Stream {
                    header,
                    mut remaining,
                    mut phase,
                } => {
                    let avail = ((buf.len() - consumed) as u64).min(remaining) as usize;
                    if avail == 0 && remaining > 0 {
                        return Ok(Advance::more(consumed));
                    }
                    let piece = &mut buf[consumed..consumed + avail];
                    if self.compressed {
                        self.inflate_piece(piece, &header, &mut remaining, &mut phase)?;
                    } else {
                        // Unmasked as it is copied: one pass over the payload, not two.
                        let at = self.assembled.len();
                        match header.mask {
                            Some(key) => {
                                phase = append_masked(&mut self.assembled, piece, key, phase)
                            }
                            None => append_copy(&mut self.assembled, piece),
                        }
                        remaining -= avail as u64;
                        if self.kind == Some(Kind::Text) {
                            self.utf8
                                .feed(&self.assembled[at..], remaining == 0 && header.fin)
                                .map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                    }
                    consumed += avail;
                    if let Some(ready) = self.end_piece(header, remaining, phase) {
                        if ready.is_some() {
                            self.handed_out = true;
                        }
                        return Ok(Advance { consumed, ready });
                    }
                }
            }
        }
    }

    /// Records where a streamed frame stands after a piece of its payload: `None` to go on
    /// with the next header, or `Some(ready)` to return (`ready` is the completed message,
    /// if the frame was the last one of its message).
    fn end_piece(
        &mut self,
        header: FrameHeader,
        remaining: u64,
        phase: usize,
    ) -> Option<Option<Ready>> {
        if remaining > 0 {
            self.state = State::Stream {
                header,
                remaining,
                phase,
            };
            return Some(None);
        }
        self.state = State::Header;
        if !header.fin {
            return None;
        }
        let opcode = match self.kind.take() {
            Some(Kind::Text) => OpCode::Text,
            _ => OpCode::Binary,
        };
        Some(Some(Ready {
            opcode,
            at: None,
            len: self.assembled_len(),
        }))
    }

    /// While a frame's payload streams into the reassembly buffer and more of it is due,
    /// hands that buffer out so that the caller can read the payload's next bytes straight
    /// into its spare capacity instead of through its own buffer (one copy fewer). Call it
    /// only when every byte the caller holds has been passed to [`Reader::advance`].
    ///
    /// [`Direct::room`] says how many bytes at most to append: never past the frame's end
    /// (the next header is read the usual way), and never more than is reserved, which
    /// grows with what arrived (at most the bytes received so far, or 64 KiB, ahead), so a
    /// header announcing a huge frame does not make the reader allocate it up front. The
    /// caller may move the buffer's bytes into a larger buffer of its own and read up to
    /// [`Direct::remaining`] more into that instead. `None` when no payload is due, when less
    /// than `min` bytes of it are, or when the buffer is already out. Give the buffer back
    /// with [`Reader::direct_done`].
    pub fn take_direct(&mut self, min: usize) -> Option<Direct> {
        let State::Stream { remaining, .. } = self.state else {
            return None;
        };
        if remaining == 0 || remaining < min as u64 || self.direct_from.is_some() || self.compressed
        {
            return None;
        }
        let len = self.assembled.len();
        if self.assembled.capacity() == len {
            let ahead = (len as u64).max(MAX_RESERVE).min(remaining);
            self.assembled.reserve(ahead as usize);
        }
        let room = ((self.assembled.capacity() - len) as u64).min(remaining) as usize;
        self.direct_from = Some(len);
        Some(Direct {
            buf: std::mem::take(&mut self.assembled),
            room,
            remaining,
        })
    }

    /// Takes back the buffer lent by [`Reader::take_direct`] (or the caller's larger one
    /// holding the same bytes), with the bytes that were read appended (none at the end of
    /// the stream). They are unmasked and validated like bytes
    /// passed to [`Reader::advance`]; a message they complete is reported by the next
    /// `advance`. Errors are sticky, as with `advance`.
    pub fn direct_done(&mut self, buf: Vec<u8>) -> Result<(), ProtocolError> {
        let Some(from) = self.direct_from.take() else {
            return Ok(());
        };
        self.assembled = buf;
        let State::Stream {
            header,
            mut remaining,
            mut phase,
        } = self.state
        else {
            return Ok(());
        };
        // Bytes past the frame's end (a caller that read more than allowed) are not payload.
        let end = (self.assembled.len() as u64).min(from as u64 + remaining) as usize;
        self.assembled.truncate(end);
        let text = self.kind == Some(Kind::Text);
        let piece = &mut self.assembled[from.min(end)..end];
        if let Err(e) = unmask_and_check(
            piece,
            &header,
            &mut remaining,
            &mut phase,
            text.then_some(&mut self.utf8),
        ) {
            self.state = State::Failed(e);
            return Err(e);
        }
        if let Some(Some(ready)) = self.end_piece(header, remaining, phase) {
            self.pending = Some(ready);
        }
        Ok(())
    }

    /// Applies the message-level rules to a new frame header and picks how to receive it.
    fn start_frame(&mut self, header: FrameHeader) -> Result<State, ProtocolError> {
        let len = header.payload_len;
        // RSV1 is permessage-deflate's, and only on the first frame of a data message.
        let rsv1 = header.rsv & 0x40 != 0 && self.config.inflate.is_some();
        if rsv1 && (header.opcode.is_control() || header.opcode == OpCode::Continuation) {
            return Err(ProtocolError::ReservedBits);
        }
        self.frame_start = self.assembled.len();
        let kind = match header.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                // At most 125 bytes (checked by the decoder): always received in place.
                return Ok(State::Inline {
                    header,
                    done: 0,
                    phase: 0,
                });
            }
            OpCode::Continuation => {
                if self.kind.is_none() {
                    return Err(ProtocolError::UnexpectedContinuation);
                }
                if !self.compressed {
                    if self.assembled_len() as u64 + len > self.config.max_message {
                        return Err(ProtocolError::MessageTooBig);
                    }
                    self.reserve_or_ask(len);
                }
                return Ok(State::Stream {
                    header,
                    remaining: len,
                    phase: 0,
                });
            }
            _ if self.kind.is_some() => return Err(ProtocolError::ExpectedContinuation),
            OpCode::Text => Kind::Text,
            OpCode::Binary => Kind::Binary,
        };
        // A compressed message's limits hold on its inflated bytes, checked as they come.
        if len > self.config.max_message && !rsv1 {
            return Err(ProtocolError::MessageTooBig);
        }
        self.utf8.reset();
        self.compressed = rsv1;
        if !rsv1 && header.fin && header.header_len as u64 + len <= self.config.inline_limit as u64
        {
            return Ok(State::Inline {
                header,
                done: 0,
                phase: 0,
            });
        }
        self.kind = Some(kind);
        if rsv1 {
            // Inflated into the buffer's start: the limits below count from there.
            self.gap = 0;
        }
        self.clear_assembled();
        self.frame_start = self.gap;
        if !rsv1 {
            self.reserve_or_ask(len);
        }
        Ok(State::Stream {
            header,
            remaining: len,
            phase: 0,
        })
    }

    /// Unmasks one piece of a compressed frame's payload, inflates it into the reassembly
    /// buffer (never past the frame and message limits), and validates the text it makes.
    fn inflate_piece(
        &mut self,
        piece: &mut [u8],
        header: &FrameHeader,
        remaining: &mut u64,
        phase: &mut usize,
    ) -> Result<(), ProtocolError> {
        if let Some(key) = header.mask {
            *phase = apply_mask(piece, key, *phase);
        }
        *remaining -= piece.len() as u64;
        let last = *remaining == 0 && header.fin;
        let limit = self
            .config
            .max_message
            .min(self.frame_start as u64 + self.config.max_frame);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let from = self.assembled.len();
        let peer = self.config.inflate.unwrap_or(Stream {
            no_context_takeover: true,
            window_bits: 15,
        });
        let inflater = self.inflater.get_or_insert_with(|| Inflater::new(peer));
        let inflated = inflater.inflate(piece, last, &mut self.assembled, limit);
        // The text inflated so far is checked even when inflation then failed, so that the
        // first fault in the message is the one reported, however its frames were cut.
        if self.kind == Some(Kind::Text) {
            self.utf8
                .feed(&self.assembled[from..], last && inflated.is_ok())
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        inflated?;
        if last && inflater.per_message() {
            if let Some(inflater) = self.inflater.take() {
                inflater.recycle();
            }
        }
        Ok(())
    }

    /// Reserves room for a frame of `len` payload bytes, or, for one large enough when the
    /// caller asked for it ([`Reader::request_buffers`]) and the buffer lacks the room, pauses
    /// to ask for a buffer instead.
    fn reserve_or_ask(&mut self, len: u64) {
        let need = self.assembled_len() as u64 + len;
        let room = self.assembled.capacity().saturating_sub(self.gap);
        if len >= u64::from(self.request_min) && (room as u64) < need {
            self.paused = true;
        } else {
            self.reserve(len);
        }
    }

    /// Reserves room for `len` more bytes, but never far ahead of what has arrived.
    fn reserve(&mut self, len: u64) {
        self.assembled.reserve(len.min(MAX_RESERVE) as usize);
    }
}

/// The reassembly buffer lent out by [`Reader::take_direct`] for a direct read.
#[derive(Debug)]
pub struct Direct {
    /// The buffer; append the payload's next bytes after its current length.
    pub buf: Vec<u8>,
    /// How many bytes `buf` has room for, at most `remaining`.
    pub room: usize,
    /// Payload bytes of the frame still to come.
    pub remaining: u64,
}

/// Unmasks one piece of a streamed frame's payload, counts it off `remaining`, and feeds it
/// to the UTF-8 validator of a text message.
fn unmask_and_check(
    piece: &mut [u8],
    header: &FrameHeader,
    remaining: &mut u64,
    phase: &mut usize,
    utf8: Option<&mut Utf8Validator>,
) -> Result<(), ProtocolError> {
    if let Some(key) = header.mask {
        *phase = apply_mask(piece, key, *phase);
    }
    *remaining -= piece.len() as u64;
    if let Some(utf8) = utf8 {
        utf8.feed(piece, *remaining == 0 && header.fin)
            .map_err(|_| ProtocolError::InvalidUtf8)?;
    }
    Ok(())
}

/// What one call of [`Reader::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// Bytes at the front of the buffer the reader is done with; the caller drops them (after
    /// fetching the ready message, which may lie among them).
    pub consumed: usize,
    /// A message is ready; fetch it with [`Reader::message`]. `None` means more bytes are
    /// needed.
    pub ready: Option<Ready>,
}

impl Advance {
    fn more(consumed: usize) -> Self {
        Advance {
            consumed,
            ready: None,
        }
    }
}

/// Where a ready message lies. Only meaningful for the [`Reader::message`] call that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    opcode: OpCode,
    /// Offset in the caller's buffer, or `None` for the reassembly buffer.
    at: Option<usize>,
    len: usize,
}

impl Ready {
    /// The message's opcode (`Text` or `Binary` for data, whether or not it was fragmented).
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The payload length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Where the payload lies in the buffer passed to [`Reader::advance`], or `None` when it
    /// is in the reader's reassembly buffer.
    pub fn in_buffer(&self) -> Option<std::ops::Range<usize>> {
        self.at.map(|at| at..at + self.len)
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::write_frame;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn server(inline_limit: usize) -> Reader {
        Reader::new(ReaderConfig {
            inline_limit,
            ..ReaderConfig::new(Role::Server)
        })
    }

    /// Emulates a server read loop: a buffer of `capacity` bytes, filled from `chunks`,
    /// compacted when the reader needs more. Returns the messages, owned, or the first error.
    fn drive(
        reader: &mut Reader,
        chunks: &[&[u8]],
        capacity: usize,
    ) -> Result<Vec<OwnedMessage>, ProtocolError> {
        drive_with(reader, chunks, capacity, None)
    }

    /// [`drive`], and with `direct = Some((min, swap))` payloads of large frames are read
    /// straight into the reassembly buffer whenever the reader offers it (`take_direct(min)`),
    /// moved first into a buffer with room for the whole frame when `swap` is set.
    fn drive_with(
        reader: &mut Reader,
        chunks: &[&[u8]],
        capacity: usize,
        direct: Option<(usize, bool)>,
    ) -> Result<Vec<OwnedMessage>, ProtocolError> {
        let mut buf = vec![0u8; capacity];
        let (mut start, mut end) = (0, 0);
        let mut out = Vec::new();
        let mut input: Vec<u8> = chunks.concat();
        let mut sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        sizes.reverse();
        let mut requests = 0;
        loop {
            loop {
                let p = reader.read(&mut buf[start..end])?;
                start += p.consumed;
                match p.message {
                    Some(m) => out.push(m.into_owned()),
                    None => match reader.wants_buffer() {
                        // Every other request is answered, with a buffer with a few bytes of
                        // garbage in it (the reader must clear it).
                        Some(capacity) => {
                            requests += 1;
                            if requests % 2 == 1 {
                                let mut given = Vec::with_capacity(capacity);
                                given.extend_from_slice(b"junk");
                                let old = reader.provide_buffer(given);
                                assert!(old.is_empty());
                                assert!(reader.wants_buffer().is_some(), "asked until advance");
                            }
                        }
                        None => break,
                    },
                }
            }
            let Some(mut n) = sizes.pop() else {
                return Ok(out);
            };
            if let Some((min, swap)) = direct.filter(|_| start == end) {
                if let Some(d) = reader.take_direct(min) {
                    assert!(d.room > 0 && d.room as u64 <= d.remaining);
                    let (mut payload, mut room) = (d.buf, d.room);
                    if swap {
                        let mut larger = Vec::with_capacity(payload.len() + d.remaining as usize);
                        larger.extend_from_slice(&payload);
                        payload = larger;
                        room = d.remaining as usize;
                    }
                    let take = n.min(room);
                    payload.extend_from_slice(&input[..take]);
                    input.drain(..take);
                    if take < n {
                        sizes.push(n - take);
                    }
                    reader.direct_done(payload)?;
                    continue;
                }
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            if n > capacity - end {
                // Deliver the rest of this chunk after the reader has made room.
                sizes.push(n - (capacity - end));
                n = capacity - end;
            }
            assert!(
                n > 0 || input.is_empty(),
                "reader stalled with a full buffer"
            );
            buf[end..end + n].copy_from_slice(&input[..n]);
            input.drain(..n);
            end += n;
        }
    }

    fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, fin, op, Some(KEY), payload);
        v
    }

    #[test]
    fn large_payload_is_read_straight_into_the_reassembly_buffer() {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let wire = masked(true, OpCode::Binary, &payload);
        let mut r = server(1024);
        // The header and the first bytes arrive in the caller's buffer.
        let mut first = wire[..1000].to_vec();
        let a = r.advance(&mut first).unwrap();
        assert_eq!((a.consumed, a.ready), (1000, None));
        let mut at = 1000;
        let mut reads = 0;
        while at < wire.len() {
            let d = r.take_direct(1).expect("payload is due");
            assert!(d.room as u64 <= d.remaining);
            assert_eq!(d.remaining, (wire.len() - at) as u64);
            // Reservation grows with what arrived, never the whole announced frame at once.
            assert!(
                d.buf.capacity() <= 2 * (at + (64 << 10)),
                "{}",
                d.buf.capacity()
            );
            assert!(r.take_direct(1).is_none(), "lent once");
            let mut buf = d.buf;
            buf.extend_from_slice(&wire[at..at + d.room]);
            at += d.room;
            reads += 1;
            r.direct_done(buf).unwrap();
        }
        assert!(reads < 10, "{reads} reads");
        assert!(r.take_direct(1).is_none(), "the frame is complete");
        let p = r.read(&mut []).unwrap();
        assert_eq!(p.consumed, 0);
        assert_eq!(p.message, Some(Message::Binary(&payload[..])));
        // The capacity is kept for the next message until the caller takes it.
        let kept = r.take_buffer(1 << 10).expect("a large buffer");
        assert!(kept.is_empty() && kept.capacity() >= payload.len());
        assert!(r.take_buffer(0).is_none());
    }

    #[test]
    fn a_large_frame_pauses_for_a_buffer_when_asked() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = masked(false, OpCode::Binary, &payload[..3000]);
        wire.extend(masked(true, OpCode::Continuation, &payload[3000..]));
        let mut r = server(1024);
        r.request_buffers(2000);
        // The first frame's header: the reader stops there and asks for room for 3000 bytes.
        let a = r.advance(&mut wire).unwrap();
        assert_eq!((a.consumed, a.ready.is_none()), (8, true));
        assert_eq!(r.wants_buffer(), Some(3000));
        let given = Vec::with_capacity(8000);
        let ptr = given.as_ptr();
        assert_eq!(r.provide_buffer(given).capacity(), 0, "it held none");
        // A smaller buffer than the one it holds is given back untouched.
        assert_eq!(r.provide_buffer(Vec::with_capacity(100)).capacity(), 100);
        let at = a.consumed;
        // Through the continuation's header without a pause: 8000 bytes hold the message.
        let a = r.advance(&mut wire[at..]).unwrap();
        assert_eq!(r.wants_buffer(), None);
        let ready = a.ready.expect("complete");
        assert_eq!(at + a.consumed, wire.len());
        // Not while the reassembled message is out: it stays where it was reported.
        let larger = r.provide_buffer(Vec::with_capacity(1 << 16));
        assert_eq!(larger.capacity(), 1 << 16, "given back untouched");
        let taken = r.take_assembled(ready).unwrap();
        assert_eq!(taken, payload);
        assert_eq!(taken.as_ptr(), ptr, "reassembled in the given buffer");

        // Not answered, the request costs nothing: the reader grows its own buffer.
        let wire = masked(true, OpCode::Binary, &payload);
        let mut r = server(1024);
        r.request_buffers(2000);
        let a = r.advance(&mut wire.clone()).unwrap();
        assert_eq!(r.wants_buffer(), Some(5000));
        let mut rest = wire[a.consumed..].to_vec();
        let a = r.advance(&mut rest).unwrap();
        assert_eq!(r.message(&rest, a.ready.unwrap()).payload(), &payload[..]);
        // Frames below the minimum, and compressed ones, never pause.
        let mut small = masked(true, OpCode::Binary, &payload[..1500]);
        assert!(r.advance(&mut small).unwrap().ready.is_some());
    }

    #[test]
    fn a_provided_buffer_places_messages_after_its_gap() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = masked(true, OpCode::Binary, &payload);
        let mut r = server(1024);
        r.request_buffers(2000);
        let a = r.advance(&mut wire).unwrap();
        assert_eq!(r.wants_buffer(), Some(5000));
        let at = a.consumed;
        let mut given = Vec::with_capacity(5300);
        given.extend_from_slice(b"stale bytes");
        let ptr = given.as_ptr();
        assert_eq!(
            r.provide_buffer_at(given, 200).capacity(),
            0,
            "it held none"
        );
        // Another whose room past its gap is no larger than the one it holds is refused.
        assert_eq!(
            r.provide_buffer_at(Vec::with_capacity(9000), 4000)
                .capacity(),
            9000
        );
        // Part of the payload the usual way, the rest by a direct read into the same buffer.
        let split = at + 1000;
        let a = r.advance(&mut wire[at..split]).unwrap();
        assert_eq!((a.consumed, a.ready), (1000, None));
        let d = r.take_direct(1).expect("payload is due");
        assert_eq!(d.buf.len(), 200 + 1000, "the gap, then the payload so far");
        let mut buf = d.buf;
        buf.extend_from_slice(&wire[split..]);
        r.direct_done(buf).unwrap();
        let a = r.advance(&mut []).unwrap();
        let ready = a.ready.expect("complete");
        assert_eq!(ready.len(), payload.len());
        assert_eq!(r.message(&[], ready).payload(), &payload[..]);
        // The next message (fragmented) is reassembled behind the same gap.
        let mut next = masked(false, OpCode::Text, b"hello, ");
        next.extend(masked(true, OpCode::Continuation, b"world"));
        let a = r.advance(&mut next).unwrap();
        let ready = a.ready.expect("complete");
        assert_eq!(a.consumed, next.len());
        let taken = r.take_assembled(ready).expect("reassembled");
        assert_eq!(&taken[..], b"hello, world");
        assert_eq!(
            taken.as_ptr(),
            ptr.wrapping_add(200),
            "placed after the gap"
        );
        // The buffer left with the message: none is kept.
        assert!(r.take_buffer(0).is_none());
    }

    #[test]
    fn reassembled_payloads_can_be_taken_without_a_copy() {
        let mut r = server(64);
        let mut wire = masked(false, OpCode::Text, b"Hel");
        wire.extend(masked(true, OpCode::Continuation, b"lo"));
        wire.extend(masked(true, OpCode::Binary, b"in place"));
        let a = r.advance(&mut wire).unwrap();
        let ready = a.ready.unwrap();
        let Message::Text(s) = r.message(&wire, ready) else {
            panic!()
        };
        let at = s.as_ptr();
        let taken = r.take_assembled(ready).unwrap();
        assert_eq!((taken.as_ptr(), &taken[..]), (at, &b"Hello"[..]));
        assert!(r.take_assembled(ready).is_none(), "taken once");
        assert_eq!(ready.in_buffer(), None, "reassembled");
        let rest = &mut wire[a.consumed..];
        let b = r.advance(rest).unwrap();
        assert!(
            r.take_assembled(b.ready.unwrap()).is_none(),
            "in the caller's buffer"
        );
        // A single frame's payload follows its 6-byte header (short length, mask).
        assert_eq!(b.ready.unwrap().in_buffer(), Some(6..14));
        assert_eq!(
            r.message(rest, b.ready.unwrap()),
            Message::Binary(b"in place")
        );
    }

    #[test]
    fn direct_reads_validate_utf8_and_respect_small_minimums() {
        let text = "é".repeat(20_000);
        let mut wire = masked(true, OpCode::Text, text.as_bytes());
        let mut r = server(512);
        let mut head = wire[..100].to_vec();
        r.advance(&mut head).unwrap();
        assert!(
            r.take_direct(usize::MAX).is_none(),
            "less than the minimum is due"
        );
        // Break the last code point: the error comes from the direct read. The last of the
        // 40,000 payload bytes is masked with KEY[3].
        let last = wire.len() - 1;
        wire[last] = 0xff ^ KEY[3]; // unmasked: 0xff, never valid UTF-8
        let d = r.take_direct(1).unwrap();
        let mut buf = d.buf;
        buf.extend_from_slice(&wire[100..]);
        assert_eq!(r.direct_done(buf), Err(ProtocolError::InvalidUtf8));
        assert_eq!(r.advance(&mut []), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn rfc_masked_hello_is_borrowed_from_the_buffer() {
        let mut r = server(1024);
        let mut buf = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let start = buf.as_ptr() as usize;
        let p = r.read(&mut buf).unwrap();
        assert_eq!(p.consumed, 11);
        let Some(Message::Text(s)) = p.message else {
            panic!("{p:?}")
        };
        assert_eq!(s, "Hello");
        assert_eq!(s.as_ptr() as usize, start + 6, "payload is not copied");
    }

    #[test]
    fn rfc_fragmented_hello_with_ping_between() {
        let mut r = server(1024);
        let input = [
            masked(false, OpCode::Text, b"Hel"),
            masked(true, OpCode::Ping, b"Hello"),
            masked(true, OpCode::Continuation, b"lo"),
        ]
        .concat();
        let got = drive(&mut r, &[&input], 1024).unwrap();
        assert_eq!(
            got,
            vec![
                OwnedMessage::Ping(Bytes::from_static(b"Hello")),
                OwnedMessage::Text(Bytes::from_static(b"Hello")),
            ]
        );
    }

    #[test]
    fn byte_by_byte_arrival() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let input = [
            masked(true, OpCode::Binary, &payload),
            masked(true, OpCode::Text, "κόσμε".as_bytes()),
            masked(true, OpCode::Close, &[0x03, 0xe8, b'o', b'k']),
        ]
        .concat();
        for capacity in [139, 1000, 200_000] {
            let mut r = server(capacity);
            let chunks: Vec<&[u8]> = input.chunks(7).collect();
            let got = drive(&mut r, &chunks, capacity).unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!(got[0], OwnedMessage::Binary(Bytes::from(payload.clone())));
            assert_eq!(got[1], OwnedMessage::Text(Bytes::from("κόσμε")));
            assert_eq!(
                got[2],
                OwnedMessage::Close(Some((CloseCode::NORMAL, "ok".into())))
            );
            assert!(r.is_closed());
        }
    }

    fn first_error(input: &[u8], chunk: usize) -> ProtocolError {
        let mut r = server(1024);
        let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
        drive(&mut r, &chunks, 1024).unwrap_err()
    }

    #[test]
    fn continuation_without_start_is_1002() {
        let e = first_error(&masked(true, OpCode::Continuation, b"x"), 100);
        assert_eq!(e, ProtocolError::UnexpectedContinuation);
        assert_eq!(e.close_code().0, 1002);
    }

    #[test]
    fn new_message_inside_fragments_is_1002() {
        let input = [
            masked(false, OpCode::Text, b"a"),
            masked(true, OpCode::Binary, b"b"),
        ]
        .concat();
        let e = first_error(&input, 100);
        assert_eq!(e, ProtocolError::ExpectedContinuation);
        assert_eq!(e.close_code().0, 1002);
    }

    #[test]
    fn message_limit_counts_all_fragments() {
        let mut r = Reader::new(ReaderConfig {
            max_message: 10,
            ..ReaderConfig::new(Role::Server)
        });
        let input = [
            masked(false, OpCode::Binary, b"123456"),
            masked(false, OpCode::Continuation, b"7890"),
            masked(true, OpCode::Continuation, b"!"),
        ]
        .concat();
        let e = drive(&mut r, &[&input], 1024).unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooBig);
        assert_eq!(e.close_code().0, 1009);
        // A single frame over the message limit is refused from its header.
        let mut r = Reader::new(ReaderConfig {
            max_message: 10,
            ..ReaderConfig::new(Role::Server)
        });
        let mut header = [0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4];
        assert_eq!(
            r.read(&mut header).unwrap_err(),
            ProtocolError::MessageTooBig
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_completes() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(&[b'a'; 500]);
        let frame = masked(true, OpCode::Text, &payload);
        let mut r = server(1024);
        // Only the first 30 bytes have arrived: the invalid sequence is among them.
        let mut part = frame[..30].to_vec();
        assert_eq!(r.read(&mut part).unwrap_err(), ProtocolError::InvalidUtf8);
        // The same for a fragmented message streamed into the reassembly buffer.
        let input = [
            masked(false, OpCode::Text, "κό".as_bytes()),
            masked(false, OpCode::Continuation, &[0xce]),
            masked(false, OpCode::Continuation, &[0x41]),
        ]
        .concat();
        let mut r = server(1024);
        let e = drive(&mut r, &[&input], 1024).unwrap_err();
        assert_eq!((e, e.close_code().0), (ProtocolError::InvalidUtf8, 1007));
    }

    #[test]
    fn text_ending_mid_code_point_is_1007() {
        let input = [
            masked(false, OpCode::Text, &[0xce]),
            masked(true, OpCode::Continuation, &[]),
        ]
        .concat();
        assert_eq!(first_error(&input, 100), ProtocolError::InvalidUtf8);
    }

    #[test]
    fn bad_close_payloads() {
        assert_eq!(
            first_error(&masked(true, OpCode::Close, &[3]), 100),
            ProtocolError::CloseLength
        );
        assert_eq!(
            first_error(&masked(true, OpCode::Close, &[0x03, 0xed]), 100),
            ProtocolError::CloseCode(1005)
        );
        let e = first_error(&masked(true, OpCode::Close, &[0x03, 0xe8, 0xff]), 100);
        assert_eq!(e.close_code().0, 1007);
    }

    #[test]
    fn errors_are_sticky() {
        let mut r = server(1024);
        let mut bad = [0x81u8, 0x05, 0, 0, 0, 0, 0];
        assert_eq!(r.read(&mut bad).unwrap_err(), ProtocolError::UnmaskedFrame);
        let mut good = masked(true, OpCode::Text, b"x");
        assert_eq!(r.read(&mut good).unwrap_err(), ProtocolError::UnmaskedFrame);
    }

    #[test]
    fn empty_messages() {
        let input = [
            masked(true, OpCode::Text, b""),
            masked(false, OpCode::Binary, b""),
            masked(true, OpCode::Continuation, b""),
            masked(true, OpCode::Close, b""),
        ]
        .concat();
        let got = drive(&mut server(1024), &[&input], 1024).unwrap();
        assert_eq!(
            got,
            vec![
                OwnedMessage::Text(Bytes::new()),
                OwnedMessage::Binary(Bytes::new()),
                OwnedMessage::Close(None),
            ]
        );
    }

    #[test]
    fn client_role_reads_unmasked_and_refuses_masked() {
        let mut r = Reader::new(ReaderConfig::new(Role::Client));
        let mut buf = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let p = r.read(&mut buf).unwrap();
        assert_eq!(p.message, Some(Message::Text("Hello")));
        let mut masked = masked(true, OpCode::Text, b"x");
        assert_eq!(r.read(&mut masked).unwrap_err(), ProtocolError::MaskedFrame);
    }

    #[derive(Debug, Clone)]
    struct Msg {
        text: bool,
        data: Vec<u8>,
        fragments: Vec<usize>,
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        (
            any::<bool>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 0..5000),
            ],
            proptest::collection::vec(0usize..400, 0..4),
        )
            .prop_map(|(text, data, fragments)| {
                let data = if text {
                    String::from_utf8_lossy(&data).into_owned().into_bytes()
                } else {
                    data
                };
                Msg {
                    text,
                    data,
                    fragments,
                }
            })
    }

    proptest! {
        #[test]
        fn messages_survive_any_fragmentation_and_arrival(
            msgs in proptest::collection::vec(msg_strategy(), 1..6),
            chunk in 1usize..3000, capacity in 139usize..8000, key in any::<[u8; 4]>(),
            direct_min in 0usize..600, swap in any::<bool>(), request in 0usize..600)
        {
            let mut wire = Vec::new();
            for m in &msgs {
                let mut cuts: Vec<usize> = m.fragments.iter().map(|&c| c.min(m.data.len())).collect();
                cuts.sort();
                let mut at = 0;
                let mut first = true;
                for c in cuts.into_iter().chain([m.data.len()]) {
                    let op = if !first { OpCode::Continuation } else if m.text { OpCode::Text } else { OpCode::Binary };
                    let last = c == m.data.len() && at <= c;
                    if c < at { continue; }
                    write_frame(&mut wire, last, op, Some(key), &m.data[at..c]);
                    if !last {
                        // A control frame between fragments.
                        write_frame(&mut wire, true, OpCode::Pong, Some(key), b"p");
                    }
                    at = c;
                    first = false;
                    if last { break; }
                }
            }
            let chunks: Vec<&[u8]> = wire.chunks(chunk).collect();
            let mut r = server(capacity);
            if request > 0 {
                r.request_buffers(request - 1);
            }
            let direct = (direct_min > 0).then(|| (direct_min - 1, swap));
            let got = drive_with(&mut r, &chunks, capacity, direct).unwrap();
            let data: Vec<OwnedMessage> = got.into_iter().filter(|m| !matches!(m, OwnedMessage::Pong(_))).collect();
            let want: Vec<OwnedMessage> = msgs.iter().map(|m| if m.text {
                OwnedMessage::Text(Bytes::from(m.data.clone()))
            } else {
                OwnedMessage::Binary(Bytes::from(m.data.clone()))
            }).collect();
            prop_assert_eq!(data, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2000),
                                       chunk in 1usize..64, direct in any::<bool>()) {
            let mut r = server(256);
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let _ = drive_with(&mut r, &chunks, 256, direct.then_some((0, false)));
        }
    }

    fn deflating(takeover: bool) -> (Reader, crate::proto::deflate::Compressor) {
        use crate::proto::deflate::{Compression, Compressor};
        let stream = Stream {
            no_context_takeover: !takeover,
            window_bits: 15,
        };
        let reader = Reader::new(ReaderConfig {
            inflate: Some(stream),
            max_message: 1 << 20,
            inline_limit: 4096,
            ..ReaderConfig::new(Role::Server)
        });
        (
            reader,
            Compressor::new(stream, &Compression::shared().min_size(0)),
        )
    }

    fn compressed(
        c: &mut crate::proto::deflate::Compressor,
        op: OpCode,
        payload: &[u8],
        pieces: usize,
    ) -> Vec<u8> {
        // A stateless compressor sends what does not shrink uncompressed; a fresh one with
        // context compresses everything, and its output needs no context either.
        let mut fresh;
        let c = if c.is_stateless() {
            let stream = Stream {
                no_context_takeover: false,
                window_bits: 15,
            };
            fresh = crate::proto::deflate::Compressor::new(
                stream,
                &crate::proto::deflate::Compression::dedicated(15).level(c.key().1),
            );
            &mut fresh
        } else {
            c
        };
        let mut z = Vec::new();
        assert!(c.compress(payload, &mut z));
        let step = z.len().div_ceil(pieces).max(1);
        let mut wire = Vec::new();
        let parts: Vec<&[u8]> = if z.is_empty() {
            vec![&[][..]]
        } else {
            z.chunks(step).collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let first = i == 0;
            let fin = i + 1 == parts.len();
            let op = if first { op } else { OpCode::Continuation };
            let rsv = if first { 0x40 } else { 0 };
            crate::proto::frame::write_frame_rsv(&mut wire, fin, rsv, op, Some(KEY), part);
        }
        wire
    }

    #[test]
    fn compressed_messages_inflate_whole_and_fragmented() {
        for takeover in [false, true] {
            let (mut r, mut c) = deflating(takeover);
            let text = "{\"type\":\"message\",\"text\":\"hello hello hello\"}".repeat(50);
            let mut wire = compressed(&mut c, OpCode::Text, text.as_bytes(), 1);
            wire.extend(compressed(&mut c, OpCode::Binary, &[7u8; 5000], 3));
            wire.extend(compressed(&mut c, OpCode::Text, b"", 1));
            // An uncompressed message between them.
            wire.extend(masked(true, OpCode::Text, b"plain"));
            wire.extend(compressed(&mut c, OpCode::Text, text.as_bytes(), 4));
            let chunks: Vec<&[u8]> = wire.chunks(7).collect();
            let got = drive(&mut r, &chunks, 4096).unwrap();
            assert_eq!(
                got,
                vec![
                    OwnedMessage::Text(Bytes::from(text.clone())),
                    OwnedMessage::Binary(Bytes::from(vec![7u8; 5000])),
                    OwnedMessage::Text(Bytes::new()),
                    OwnedMessage::Text(Bytes::from_static(b"plain")),
                    OwnedMessage::Text(Bytes::from(text.clone())),
                ],
                "takeover {takeover}"
            );
        }
    }

    #[test]
    fn uncompressed_message_on_a_deflate_connection_stays_in_place() {
        let (mut r, _) = deflating(false);
        let mut wire = masked(true, OpCode::Binary, b"zero-copy");
        let a = r.advance(&mut wire).unwrap();
        assert_eq!(a.ready.unwrap().in_buffer(), Some(6..15));
    }

    #[test]
    fn rsv1_where_it_does_not_belong_is_a_protocol_error() {
        let (mut r, mut c) = deflating(false);
        let mut wire = compressed(&mut c, OpCode::Text, b"abc", 1);
        wire[0] |= 0x00;
        // RSV1 on a continuation frame.
        let mut bad = Vec::new();
        crate::proto::frame::write_frame(&mut bad, false, OpCode::Text, Some(KEY), b"a");
        crate::proto::frame::write_frame_rsv(
            &mut bad,
            true,
            0x40,
            OpCode::Continuation,
            Some(KEY),
            b"b",
        );
        assert_eq!(
            drive(&mut r, &[&bad], 4096),
            Err(ProtocolError::ReservedBits)
        );
        // RSV1 on a control frame.
        let (mut r, _) = deflating(false);
        let mut ping = Vec::new();
        crate::proto::frame::write_frame_rsv(&mut ping, true, 0x40, OpCode::Ping, Some(KEY), b"");
        assert_eq!(
            drive(&mut r, &[&ping], 4096),
            Err(ProtocolError::ReservedBits)
        );
        // RSV1 without the extension.
        assert_eq!(
            drive(&mut server(4096), &[&wire], 4096),
            Err(ProtocolError::ReservedBits)
        );
        // Data that does not inflate, and inflated text that is not UTF-8.
        let (mut r, _) = deflating(false);
        let mut junk = Vec::new();
        crate::proto::frame::write_frame_rsv(
            &mut junk,
            true,
            0x40,
            OpCode::Binary,
            Some(KEY),
            &[0xff; 9],
        );
        assert_eq!(
            drive(&mut r, &[&junk], 4096),
            Err(ProtocolError::InflateFailed)
        );
        let (mut r, mut c) = deflating(false);
        let latin1 = compressed(&mut c, OpCode::Text, &[b'a', 0xe9, b'b'], 1);
        assert_eq!(
            drive(&mut r, &[&latin1], 4096),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn the_first_fault_is_reported_however_the_frames_arrive() {
        // Text that turns invalid early and then inflates past the limit: 1007, whether the
        // compressed bytes come at once or in small pieces.
        let (_, mut c) = deflating(false);
        let mut text = b"ok \xff".to_vec();
        text.extend(std::iter::repeat_n(b'a', 4 << 20));
        let wire = compressed(&mut c, OpCode::Text, &text, 1);
        for piece in [wire.len(), 7] {
            let (mut r, _) = deflating(false);
            let chunks: Vec<&[u8]> = wire.chunks(piece).collect();
            assert_eq!(
                drive(&mut r, &chunks, 4096),
                Err(ProtocolError::InvalidUtf8)
            );
        }
    }

    #[test]
    fn a_compressed_bomb_stops_at_the_message_limit() {
        let (mut r, _) = deflating(false);
        let mut c = crate::proto::deflate::Compressor::new(
            Stream {
                no_context_takeover: true,
                window_bits: 15,
            },
            &crate::proto::deflate::Compression::shared().level(9),
        );
        let bomb = compressed(&mut c, OpCode::Binary, &vec![0u8; 8 << 20], 1);
        assert!(bomb.len() < 64 << 10);
        assert_eq!(
            drive(&mut r, &[&bomb], 4096),
            Err(ProtocolError::MessageTooBig)
        );
        assert!(r.assembled.capacity() <= (1 << 20) + (32 << 10));
    }
}
