//! permessage-deflate (RFC 7692): what both roles offer and accept, and the compressor and
//! decompressor a connection uses. Pure computation: no I/O.
//!
//! - [`negotiate`] (server) picks an offer from `Sec-WebSocket-Extensions` and writes the
//!   answer; [`client_offer`] and [`accept_response`] are the client's side.
//! - [`Inflater`] inflates a message's compressed frames into the reassembly buffer and stops
//!   at the receive limit, so that a small message cannot inflate into a large allocation.
//! - [`Compressor`] deflates outgoing messages with a sync flush and strips the
//!   `00 00 ff ff` tail.
//!
//! A stream without context takeover needs no state between messages: its codec is borrowed
//! from a per-thread cache for one message and given back after, so that a connection in
//! [`Mode::Shared`] holds no compression memory while it is idle.
//!
//! zlib cannot deflate with an 8-bit window. When a peer limits this side's window to 8 bits,
//! this side accepts and sends every message uncompressed (RSV1 clear), which RFC 7692 allows;
//! an 8-bit stream from the peer is inflated with a 9-bit window, which reads it unchanged.

use std::cell::RefCell;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use crate::proto::ProtocolError;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// What a sender strips from the end of each message and a receiver appends (section 7.2.1).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// Inflated bytes are produced in steps of at most this many, so that a limit is overrun by
/// at most one step before it is noticed.
const INFLATE_STEP: usize = 32 << 10;

/// The smallest window zlib can deflate with.
const MIN_DEFLATE_BITS: u8 = 9;

/// How a connection compresses, when the peer agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No compression: offers are declined (the connection is still accepted).
    Off,
    /// No per-connection compression state: one compressor and one decompressor per thread,
    /// reset between messages (no context takeover in either direction).
    Shared,
    /// A compressor and a decompressor per connection, with context takeover, windows of at
    /// most `window_bits` (9 to 15) bits.
    Dedicated {
        /// Log2 of the largest LZ77 window, 9 to 15.
        window_bits: u8,
    },
}

/// The compression settings of a server or client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Whether and how to compress.
    pub mode: Mode,
    /// The zlib level for outgoing messages, 0 (stored) to 9.
    pub level: u32,
    /// Outgoing messages shorter than this many bytes are sent uncompressed.
    pub min_size: usize,
}

impl Compression {
    /// No compression.
    pub const OFF: Compression = Compression {
        mode: Mode::Off,
        level: 1,
        min_size: DEFAULT_MIN_SIZE,
    };

    /// [`Mode::Shared`] with the default level (1) and threshold.
    pub fn shared() -> Compression {
        Compression {
            mode: Mode::Shared,
            ..Compression::OFF
        }
    }

    /// [`Mode::Dedicated`] with windows of `window_bits` (9 to 15), the default level (1) and
    /// threshold.
    pub fn dedicated(window_bits: u8) -> Compression {
        Compression {
            mode: Mode::Dedicated { window_bits },
            ..Compression::OFF
        }
    }

    /// Sets the zlib level (0 to 9).
    pub fn level(mut self, level: u32) -> Compression {
        self.level = level;
        self
    }

    /// Sets the size below which messages go out uncompressed.
    pub fn min_size(mut self, n: usize) -> Compression {
        self.min_size = n;
        self
    }

    /// Whether compression is on.
    pub fn is_on(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Checks the settings; the error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Mode::Dedicated { window_bits } = self.mode {
            if !(MIN_DEFLATE_BITS..=15).contains(&window_bits) {
                return Err(format!("window bits {window_bits}: it must be 9 to 15"));
            }
        }
        if self.level > 9 {
            return Err(format!("level {}: it must be 0 to 9", self.level));
        }
        Ok(())
    }
}

/// Parses `off`, `shared`, `dedicated` (15-bit windows) or `dedicated:BITS` (9 to 15), as
/// the `--compression` flags take it.
impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let c = match s.split_once(':') {
            None if s == "off" => Compression::OFF,
            None if s == "shared" => Compression::shared(),
            None if s == "dedicated" => Compression::dedicated(15),
            Some(("dedicated", bits)) => {
                let bits = bits
                    .parse()
                    .map_err(|_| format!("{bits:?} is not a number of window bits"))?;
                Compression::dedicated(bits)
            }
            _ => {
                return Err(format!(
                    "{s:?}: expected off, shared, dedicated or dedicated:BITS"
                ))
            }
        };
        c.validate()?;
        Ok(c)
    }
}

impl Default for Compression {
    fn default() -> Self {
        Compression::OFF
    }
}

/// Default for [`Compression::min_size`]: shorter messages rarely shrink by more than the
/// cost of compressing them.
pub const DEFAULT_MIN_SIZE: usize = 128;

/// A malformed `permessage-deflate` offer or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed permessage-deflate parameters: {0}")]
pub struct ExtensionError(pub String);

fn bad(why: impl Into<String>) -> ExtensionError {
    ExtensionError(why.into())
}

/// The parameters of one `permessage-deflate` offer or response (section 7.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// `server_no_context_takeover`.
    pub server_no_context_takeover: bool,
    /// `client_no_context_takeover`.
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits=N`.
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits`, `Some(None)` when present without a value.
    pub client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    /// Parses one item of `Sec-WebSocket-Extensions`. `Ok(None)` when it names another
    /// extension; an error for a duplicate or unknown parameter or a bad value.
    pub fn parse(item: &str) -> Result<Option<Params>, ExtensionError> {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case(EXTENSION) {
            return Ok(None);
        }
        let mut p = Params::default();
        let mut seen = [false; 4];
        for part in parts {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                None => (part.trim(), None),
            };
            let slot = match key.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" => 0,
                "client_no_context_takeover" => 1,
                "server_max_window_bits" => 2,
                "client_max_window_bits" => 3,
                "" => return Err(bad("empty parameter")),
                other => return Err(bad(format!("unknown parameter {other}"))),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(bad(format!("{key} given twice")));
            }
            match (slot, value) {
                (0, None) => p.server_no_context_takeover = true,
                (1, None) => p.client_no_context_takeover = true,
                (0 | 1, Some(_)) => return Err(bad(format!("{key} takes no value"))),
                (2, Some(v)) => p.server_max_window_bits = Some(window_bits(key, v)?),
                (2, None) => return Err(bad("server_max_window_bits needs a value")),
                (_, v) => {
                    p.client_max_window_bits = Some(v.map(|v| window_bits(key, v)).transpose()?)
                }
            }
        }
        Ok(Some(p))
    }

    /// The parameters as a `Sec-WebSocket-Extensions` value.
    pub fn to_header(&self) -> String {
        let mut s = String::from(EXTENSION);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(n) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={n}"));
        }
        match self.client_max_window_bits {
            Some(Some(n)) => s.push_str(&format!("; client_max_window_bits={n}")),
            Some(None) => s.push_str("; client_max_window_bits"),
            None => {}
        }
        s
    }
}

/// A value, without the quotes of a quoted-string (section 7.1: either form is allowed).
fn unquote(v: &str) -> Result<&str, ExtensionError> {
    match v.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| bad("unterminated quoted value")),
        None => Ok(v),
    }
}

/// A window size: exactly "8" to "15" (section 7.1.2, no leading zeros).
fn window_bits(key: &str, v: &str) -> Result<u8, ExtensionError> {
    match v.parse::<u8>() {
        Ok(n @ 8..=15) if !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(bad(format!("{key}={v}: it must be 8 to 15"))),
    }
}

/// One direction's compressed stream, as agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The sender resets its compressor after each message.
    pub no_context_takeover: bool,
    /// Log2 of the sender's largest window (8 to 15).
    pub window_bits: u8,
}

/// What a connection agreed, seen from one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The stream this endpoint sends.
    pub send: Stream,
    /// The stream this endpoint receives.
    pub receive: Stream,
}

/// The server's side: picks the first `permessage-deflate` offer among `offers` (the items of
/// `Sec-WebSocket-Extensions`, in order) and returns what was agreed and the response header
/// value. `Ok(None)` declines (compression off, or nothing offered). A malformed offer is an
/// error, to answer with 400.
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    config: &Compression,
) -> Result<Option<(Agreed, String)>, ExtensionError> {
    if !config.is_on() {
        return Ok(None);
    }
    let mut chosen = None;
    for item in offers {
        if let Some(offer) = Params::parse(item)? {
            chosen.get_or_insert(offer);
        }
    }
    let Some(offer) = chosen else {
        return Ok(None);
    };
    let shared = config.mode == Mode::Shared;
    let ours = match config.mode {
        Mode::Dedicated { window_bits } => window_bits,
        _ => 15,
    };
    let mut response = Params {
        // Shared mode keeps no context in either direction (the client's is asked for:
        // section 7.1.1.2 allows asking even when it was not offered).
        server_no_context_takeover: shared || offer.server_no_context_takeover,
        client_no_context_takeover: shared || offer.client_no_context_takeover,
        server_max_window_bits: offer.server_max_window_bits.map(|n| n.min(ours)),
        client_max_window_bits: None,
    };
    let mut receive_bits = 15;
    if !shared {
        if let Some(offered) = offer.client_max_window_bits {
            let n = offered.unwrap_or(15).min(ours);
            response.client_max_window_bits = Some(Some(n));
            receive_bits = n;
        }
    }
    let agreed = Agreed {
        send: Stream {
            no_context_takeover: response.server_no_context_takeover,
            window_bits: response.server_max_window_bits.unwrap_or(ours),
        },
        receive: Stream {
            no_context_takeover: response.client_no_context_takeover,
            window_bits: receive_bits,
        },
    };
    Ok(Some((agreed, response.to_header())))
}

/// The client's offer for `config`, or `None` when compression is off.
///
/// In shared mode it is two offers: no context takeover either way, then, for a server that
/// insists on keeping its context, only the client's side without it (the connection then
/// holds a decompressor of its own).
pub fn client_offer(config: &Compression) -> Option<String> {
    let params = match config.mode {
        Mode::Off => return None,
        Mode::Shared => {
            let first = Params {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: None,
                client_max_window_bits: Some(None),
            };
            let second = Params {
                server_no_context_takeover: false,
                ..first
            };
            return Some(format!("{}, {}", first.to_header(), second.to_header()));
        }
        Mode::Dedicated { .. } => Params {
            server_max_window_bits: server_window_asked(config),
            client_max_window_bits: Some(None),
            ..Params::default()
        },
    };
    Some(params.to_header())
}

/// The server window [`client_offer`] asks for: dedicated mode's, when below 15 bits.
fn server_window_asked(config: &Compression) -> Option<u8> {
    match config.mode {
        Mode::Dedicated { window_bits } if window_bits < 15 => Some(window_bits),
        _ => None,
    }
}

/// The client's side: checks the server's answer (the items of its
/// `Sec-WebSocket-Extensions`) against the offer [`client_offer`] made for `config`.
/// `Ok(None)` when the server declined. Anything the offer did not allow is an error that
/// fails the handshake (RFC 7692 section 5).
pub fn accept_response<'a>(
    items: impl IntoIterator<Item = &'a str>,
    config: &Compression,
) -> Result<Option<Agreed>, ExtensionError> {
    let mut agreed = None;
    for item in items {
        let Some(p) = Params::parse(item)? else {
            return Err(bad(format!("extension {item:?} was not offered")));
        };
        if !config.is_on() {
            return Err(bad("permessage-deflate was not offered"));
        }
        if agreed.is_some() {
            return Err(bad("permessage-deflate accepted twice"));
        }
        // Any answer on server_no_context_takeover is fine: shared mode's second offer leaves
        // the server its context, and the other offers do not ask.
        let server_bits = match (server_window_asked(config), p.server_max_window_bits) {
            (Some(asked), Some(n)) if n > asked => {
                return Err(bad(format!(
                    "server_max_window_bits={n} is above the {asked} asked for"
                )))
            }
            (Some(_), None) => {
                return Err(bad("server_max_window_bits was asked for and not granted"))
            }
            (_, n) => n.unwrap_or(15),
        };
        let client_bits = match p.client_max_window_bits {
            Some(None) => return Err(bad("client_max_window_bits needs a value in a response")),
            Some(Some(n)) => n,
            None => match config.mode {
                Mode::Dedicated { window_bits } => window_bits,
                _ => 15,
            },
        };
        agreed = Some(Agreed {
            send: Stream {
                no_context_takeover: p.client_no_context_takeover || config.mode == Mode::Shared,
                window_bits: client_bits,
            },
            receive: Stream {
                no_context_takeover: p.server_no_context_takeover,
                window_bits: server_bits,
            },
        });
    }
    Ok(agreed)
}

/// Inflates the compressed frames of received messages, bounded by a limit on its output.
pub struct Inflater {
    /// Boxed: a connection's reader carries the slot, most of the time empty.
    inner: Box<Decompress>,
    /// The peer's stream has no context takeover: reset after each message.
    no_context_takeover: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Idle inflaters with a 15-bit window, for streams without context takeover.
    // Boxed inside the Vec too: an inflater moves between the cache and readers as a box.
    #[allow(clippy::vec_box)]
    static INFLATERS: RefCell<Vec<Box<Decompress>>> = const { RefCell::new(Vec::new()) };
    /// Idle compressors for streams without context takeover, by (window bits, level).
    static DEFLATERS: RefCell<Vec<(u8, u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// How many idle codecs of each kind a thread keeps.
const CACHE: usize = 2;

impl Inflater {
    /// An inflater for the stream `peer` sends: its own for a stream with context takeover,
    /// one from the thread's cache otherwise (give it back with [`Inflater::recycle`]).
    pub fn new(peer: Stream) -> Inflater {
        let inner = if peer.no_context_takeover {
            INFLATERS
                .with(|c| c.borrow_mut().pop())
                .unwrap_or_else(|| Box::new(Decompress::new_with_window_bits(false, 15)))
        } else {
            Box::new(Decompress::new_with_window_bits(
                false,
                peer.window_bits.max(MIN_DEFLATE_BITS),
            ))
        };
        Inflater {
            inner,
            no_context_takeover: peer.no_context_takeover,
        }
    }

    /// Whether the inflater must be dropped or recycled at the end of each message.
    pub fn per_message(&self) -> bool {
        self.no_context_takeover
    }

    /// Forgets the stream's context, for the next message of a stream without context
    /// takeover.
    pub fn reset(&mut self) {
        self.inner.reset(false);
    }

    /// Resets a per-message inflater and returns it to the thread's cache.
    pub fn recycle(mut self) {
        self.inner.reset(false);
        INFLATERS.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() < CACHE {
                c.push(self.inner);
            }
        });
    }

    /// Inflates `input`, one piece of a message's compressed payload, appending to `out`,
    /// which never grows past `limit` bytes: when more output is due, the error is
    /// [`ProtocolError::MessageTooBig`]. With `last`, the piece ends the message and the
    /// `00 00 ff ff` tail is inflated after it. Corrupt data is
    /// [`ProtocolError::InflateFailed`].
    pub fn inflate(
        &mut self,
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        self.feed(input, out, limit)?;
        if last {
            self.feed(&TAIL, out, limit)?;
        }
        Ok(())
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    // Full at the limit: one more byte of output means too big.
                    let mut probe = [0u8; 1];
                    let before = self.inner.total_out();
                    self.inner
                        .decompress(input, &mut probe, FlushDecompress::Sync)
                        .map_err(|_| ProtocolError::InflateFailed)?;
                    if self.inner.total_out() > before {
                        return Err(ProtocolError::MessageTooBig);
                    }
                    return Ok(());
                }
                // Room for about what the input inflates to (text rarely more than 4x),
                // doubling after, never a step past the limit.
                let want = (4 * input.len()).max(out.len()).max(256);
                out.reserve_exact(want.min(INFLATE_STEP).min(limit - out.len()));
            }
            let (in0, out0) = (self.inner.total_in(), self.inner.total_out());
            let status = self
                .inner
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::InflateFailed)?;
            let used = (self.inner.total_in() - in0) as usize;
            let made = self.inner.total_out() - out0;
            input = &input[used..];
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig);
            }
            if status == Status::StreamEnd {
                // A final block ended the stream: what follows (at most the tail) starts anew.
                self.inner.reset(false);
                continue;
            }
            if out.len() < out.capacity() {
                // Inflate stopped with room to spare: it needs more input.
                if input.is_empty() {
                    return Ok(());
                }
                if used == 0 && made == 0 {
                    return Err(ProtocolError::InflateFailed);
                }
            }
        }
    }
}

/// Compresses outgoing messages for one connection's send stream.
pub struct Compressor {
    stream: Stream,
    level: u32,
    min_size: usize,
    /// The compressor of a stream with context takeover.
    own: Option<Compress>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("stream", &self.stream)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// The compressor for the send stream `stream` with `config`'s level and threshold.
    pub fn new(stream: Stream, config: &Compression) -> Compressor {
        Compressor {
            stream,
            level: config.level,
            min_size: config.min_size,
            own: None,
        }
    }

    /// Whether a message of `len` bytes is to be compressed.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_size && self.stream.window_bits >= MIN_DEFLATE_BITS
    }

    /// Whether every message is compressed on its own (no context is carried), so that one
    /// compressed form serves every connection with the same [`Compressor::key`].
    pub fn is_stateless(&self) -> bool {
        self.stream.no_context_takeover
    }

    /// What a stateless compressed form depends on: window bits and level.
    pub fn key(&self) -> (u8, u32) {
        (self.stream.window_bits, self.level)
    }

    /// Compresses `input`, a whole message, appending its compressed payload (without the
    /// `00 00 ff ff` tail) to `out`, and returns `true`. Without context takeover, a message
    /// that would not shrink is left out (`out` unchanged, `false`): send it uncompressed.
    /// (With context takeover it is always compressed: the peer's window must see it.)
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let (bits, level) = self.key();
        let start = out.len();
        if self.stream.no_context_takeover {
            let mut c = DEFLATERS
                .with(|c| {
                    let mut c = c.borrow_mut();
                    let at = c.iter().position(|e| e.0 == bits && e.1 == level)?;
                    Some(c.swap_remove(at).2)
                })
                .unwrap_or_else(|| new_compress(bits, level));
            deflate(&mut c, input, out);
            c.reset();
            DEFLATERS.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() < CACHE {
                    cache.push((bits, level, c));
                }
            });
            if out.len() - start >= input.len() {
                out.truncate(start);
                return false;
            }
        } else {
            let c = self.own.get_or_insert_with(|| new_compress(bits, level));
            deflate(c, input, out);
        }
        true
    }
}

fn new_compress(bits: u8, level: u32) -> Compress {
    Compress::new_with_window_bits(flate2::Compression::new(level), false, bits)
}

/// Deflates a whole message with a sync flush and strips the tail the flush ends with.
fn deflate(c: &mut Compress, mut input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(input.len() / 2 + 64);
    loop {
        let before = c.total_in();
        // Compressing into a Vec cannot fail with a valid stream; a failure would leave the
        // output short, which the peer reports as a corrupt message.
        let _ = c.compress_vec(input, out, FlushCompress::Sync);
        input = &input[(c.total_in() - before) as usize..];
        // The flush is complete when output stopped short of the buffer's end.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.len() >= start + 4 && out[out.len() - 4..] == TAIL {
        out.truncate(out.len() - 4);
    }
    if out.len() == start {
        // Nothing to flush (an empty message after another with context takeover): one
        // empty block header, which the receiver's tail completes (section 7.2.3.6).
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offers(s: &'static str) -> Vec<&'static str> {
        s.split(',').map(str::trim).collect()
    }

    #[test]
    fn parses_every_parameter() {
        let p = Params::parse(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=\"10\"; client_max_window_bits",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            Params {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: Some(10),
                client_max_window_bits: Some(None),
            }
        );
        assert_eq!(Params::parse("x-webkit-deflate-frame").unwrap(), None);
        let p = Params::parse("PerMessage-Deflate;client_max_window_bits=15")
            .unwrap()
            .unwrap();
        assert_eq!(p.client_max_window_bits, Some(Some(15)));
    }

    #[test]
    fn refuses_malformed_parameters() {
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=\"9",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; foo",
            "permessage-deflate; ",
        ] {
            assert!(Params::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_answers_with_what_the_rfc_requires() {
        let dedicated = Compression::dedicated(15);
        let (a, h) = negotiate(
            offers("permessage-deflate; client_max_window_bits"),
            &dedicated,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, "permessage-deflate; client_max_window_bits=15");
        assert!(!a.send.no_context_takeover && !a.receive.no_context_takeover);

        let (a, h) = negotiate(
            offers("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
            &Compression::dedicated(12),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!(
            a.send,
            Stream {
                no_context_takeover: true,
                window_bits: 10
            }
        );
        assert_eq!(
            a.receive,
            Stream {
                no_context_takeover: false,
                window_bits: 15
            }
        );

        // Shared mode keeps no context either way and asks the client for the same.
        let (a, h) = negotiate(offers("permessage-deflate"), &Compression::shared())
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(a.send.no_context_takeover && a.receive.no_context_takeover);

        // The first permessage-deflate offer wins; other extensions are skipped.
        let (_, h) = negotiate(
            offers("foo, permessage-deflate; client_max_window_bits=9, permessage-deflate"),
            &Compression::dedicated(15),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, "permessage-deflate; client_max_window_bits=9");

        // An 8-bit window for the server is accepted; the server then sends uncompressed.
        let (a, _) = negotiate(
            offers("permessage-deflate; server_max_window_bits=8"),
            &dedicated,
        )
        .unwrap()
        .unwrap();
        assert!(!Compressor::new(a.send, &dedicated).wants(1 << 20));

        assert_eq!(negotiate(offers("foo"), &dedicated).unwrap(), None);
        assert_eq!(
            negotiate(offers("permessage-deflate"), &Compression::OFF).unwrap(),
            None
        );
        assert!(negotiate(offers("permessage-deflate; bar"), &dedicated).is_err());
    }

    #[test]
    fn client_checks_the_answer_against_its_offer() {
        let shared = Compression::shared();
        let offer = client_offer(&shared).unwrap();
        assert_eq!(
            offer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits, permessage-deflate; client_no_context_takeover; \
             client_max_window_bits"
        );
        let ok = accept_response(
            ["permessage-deflate; server_no_context_takeover; client_max_window_bits=9"],
            &shared,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ok.send,
            Stream {
                no_context_takeover: true,
                window_bits: 9
            }
        );
        assert!(ok.receive.no_context_takeover);
        // The second offer: the server keeps its context, the client does not.
        let kept = accept_response(["permessage-deflate"], &shared)
            .unwrap()
            .unwrap();
        assert!(kept.send.no_context_takeover && !kept.receive.no_context_takeover);
        for bad in [
            "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "x-other",
        ] {
            assert!(accept_response([bad], &shared).is_err(), "{bad}");
        }
        assert!(accept_response(["permessage-deflate"], &Compression::OFF).is_err());
        assert_eq!(accept_response([], &shared).unwrap(), None);

        let small = Compression::dedicated(10);
        assert_eq!(
            client_offer(&small).unwrap(),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits"
        );
        assert!(
            accept_response(["permessage-deflate; server_max_window_bits=11"], &small).is_err()
        );
        assert!(accept_response(["permessage-deflate"], &small).is_err());
        let a = accept_response(["permessage-deflate; server_max_window_bits=9"], &small)
            .unwrap()
            .unwrap();
        assert_eq!(a.receive.window_bits, 9);
        assert_eq!(
            a.send,
            Stream {
                no_context_takeover: false,
                window_bits: 10
            }
        );
    }

    fn roundtrip(send: Stream, messages: &[Vec<u8>]) {
        let config = Compression::dedicated(15);
        let mut c = Compressor::new(send, &config);
        let mut i = Inflater::new(send);
        for m in messages {
            let mut wire = Vec::new();
            if !c.compress(m, &mut wire) {
                // Sent uncompressed: only a stateless stream may, and only when it saves.
                assert!(send.no_context_takeover && wire.is_empty());
                continue;
            }
            let mut out = Vec::new();
            // In two pieces, as frames may arrive.
            let half = wire.len() / 2;
            i.inflate(&wire[..half], false, &mut out, usize::MAX)
                .unwrap();
            i.inflate(&wire[half..], true, &mut out, usize::MAX)
                .unwrap();
            assert_eq!(&out, m);
        }
    }

    fn inflater(takeover: bool) -> Inflater {
        Inflater::new(Stream {
            no_context_takeover: !takeover,
            window_bits: 15,
        })
    }

    /// Inflates one whole message.
    fn inflated(i: &mut Inflater, wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        i.inflate(wire, true, &mut out, 100).unwrap();
        out
    }

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    // RFC 7692 section 7.2.3: the examples.
    #[test]
    fn rfc_hello() {
        // 7.2.3.1: "Hello" compressed without context.
        assert_eq!(inflated(&mut inflater(false), &HELLO), b"Hello");
        // 7.2.3.2: the second "Hello" of a stream with context takeover.
        let mut i = inflater(true);
        assert_eq!(inflated(&mut i, &HELLO), b"Hello");
        assert_eq!(inflated(&mut i, &[0xf2, 0x00, 0x11, 0x00, 0x00]), b"Hello");
        // 7.2.3.3: a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflated(&mut i, &stored), b"Hello");
        // 7.2.3.6: an empty message is one empty block header.
        assert_eq!(inflated(&mut i, &[0x00]), b"");
    }

    #[test]
    fn an_empty_message_after_another_compresses_to_one_byte() {
        let stream = Stream {
            no_context_takeover: false,
            window_bits: 15,
        };
        let mut c = Compressor::new(stream, &Compression::dedicated(15));
        let mut i = Inflater::new(stream);
        for m in [&b"abc"[..], b"", b"", b"abc"] {
            let mut wire = Vec::new();
            assert!(c.compress(m, &mut wire));
            assert!(!wire.is_empty());
            assert_eq!(inflated(&mut i, &wire), m);
        }
    }

    #[test]
    fn a_final_block_ends_the_stream_cleanly() {
        // Section 7.2.3.5 style: BFINAL set on the last block ("Hello" with a final block).
        let mut c = Compress::new(flate2::Compression::default(), false);
        let mut wire = Vec::with_capacity(64);
        c.compress_vec(b"Hello", &mut wire, FlushCompress::Finish)
            .unwrap();
        let mut i = Inflater::new(Stream {
            no_context_takeover: false,
            window_bits: 15,
        });
        let mut out = Vec::new();
        i.inflate(&wire, true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let big = vec![b'a'; 10 << 20];
        let mut c = Compressor::new(
            Stream {
                no_context_takeover: true,
                window_bits: 15,
            },
            &Compression::shared().level(9),
        );
        let mut wire = Vec::new();
        assert!(c.compress(&big, &mut wire));
        assert!(wire.len() < 64 << 10);
        let mut i = Inflater::new(Stream {
            no_context_takeover: true,
            window_bits: 15,
        });
        let mut out = Vec::new();
        assert_eq!(
            i.inflate(&wire, true, &mut out, 1 << 20),
            Err(ProtocolError::MessageTooBig)
        );
        assert!(
            out.capacity() <= (1 << 20) + INFLATE_STEP,
            "{}",
            out.capacity()
        );
        // Exactly at the limit is fine.
        let mut i = Inflater::new(Stream {
            no_context_takeover: true,
            window_bits: 15,
        });
        let mut out = Vec::new();
        i.inflate(&wire, true, &mut out, 10 << 20).unwrap();
        assert_eq!(out.len(), 10 << 20);
    }

    #[test]
    fn corrupt_data_fails() {
        let mut i = Inflater::new(Stream {
            no_context_takeover: true,
            window_bits: 15,
        });
        let mut out = Vec::new();
        assert_eq!(
            i.inflate(&[0xff; 16], true, &mut out, 1000),
            Err(ProtocolError::InflateFailed)
        );
    }

    proptest! {
        #[test]
        fn compress_then_inflate_roundtrips(
            messages in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..3000), 1..6),
            takeover in any::<bool>(),
            bits in 9u8..=15,
        ) {
            roundtrip(Stream { no_context_takeover: !takeover, window_bits: bits }, &messages);
        }
    }
}
