//! raw-echo: the *framing floor* — the least work that still gives a client a valid WebSocket
//! echo, on tokio-uring 0.5 like uringws. It is a baseline, not a WebSocket server.
//!
//! What it does per connection:
//! 1. Reads the HTTP request head (up to 16 KiB), finds `Sec-WebSocket-Key` and answers
//!    `101 Switching Protocols` with `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID)).
//!    Nothing else in the request is checked.
//! 2. Then, one read → transcode → write at a time (no concurrent read and write), it rewrites
//!    every client frame into a server frame as the bytes stream through:
//!    - the header is copied with the MASK bit cleared and the 4 key bytes dropped
//!      (FIN, RSV and opcode unchanged, same length encoding);
//!    - the payload is copied into the output buffer and unmasked in place, 8 bytes at a time
//!      (`u64` XOR with the key repeated, key rotated for the frame offset; the tail byte by
//!      byte), without waiting for the whole frame: a frame split across reads is forwarded
//!      in pieces.
//!
//!    So each frame is echoed as a frame (fragments stay fragments, a ping is echoed as a
//!    ping). A close frame echoed back *is* the close reply; after it the connection is shut.
//! 3. It does *not*: reassemble messages, validate UTF-8, check opcodes, RSV bits, control-frame
//!    rules or sizes, answer pings, time anything out, or bound its output buffer. An unmasked
//!    client frame ends the connection.
//!
//! `--verbatim` instead echoes the bytes after the handshake unchanged (masked frames: invalid
//! from a server). It exists only to show that `uringws load` refuses that stream.

use std::rc::Rc;

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

/// Bytes read at a time (and the largest request head). 64 KiB rather than 16 KiB: fewer
/// read/write rounds in the 64 KiB case. It costs memory per connection (see the memory check),
/// which is not what this floor is about.
const READ_BUF: usize = 64 << 10;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() {
    let args = uringws_bench_peers::parse_args("raw-echo", true, false);
    let listener = uringws_bench_peers::listen(args.addr).expect("cannot listen");
    let mode = if args.verbatim { "verbatim (invalid)" } else { "framing floor" };
    eprintln!("raw-echo listening on {} ({mode})", args.addr);
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let listener = listener.try_clone().expect("cannot clone the listener");
            let verbatim = args.verbatim;
            std::thread::spawn(move || {
                tokio_uring::builder()
                    .entries(1024)
                    .start(accept_loop(listener, verbatim))
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

async fn accept_loop(listener: std::net::TcpListener, verbatim: bool) {
    let listener = Rc::new(TcpListener::from_std(listener));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio_uring::spawn(connection(stream, verbatim));
            }
            Err(e) => eprintln!("raw-echo: accept: {e}"),
        }
    }
}

async fn connection(stream: TcpStream, verbatim: bool) {
    let mut buf = vec![0u8; READ_BUF];
    // The request head.
    let mut filled = 0;
    let head_end = loop {
        let (res, slice) = stream.read(buf.slice(filled..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        if let Some(i) = memfind(&buf[..filled], b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            return;
        }
    };
    let mut out = Vec::with_capacity(READ_BUF + 256);
    let Some(key) = header_value(&buf[..head_end], b"sec-websocket-key") else {
        out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(out).await;
        return;
    };
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");

    let mut tr = Transcoder::default();
    let mut rest = (head_end, filled);
    loop {
        let state = if verbatim {
            out.extend_from_slice(&buf[rest.0..rest.1]);
            Ok(false)
        } else {
            tr.feed(&buf[rest.0..rest.1], &mut out)
        };
        if !out.is_empty() {
            let (res, b) = stream.write_all(out).await;
            out = b;
            out.clear();
            if res.is_err() {
                return;
            }
        }
        match state {
            Ok(false) => {}
            // The close frame was echoed, or the client broke the framing.
            Ok(true) | Err(()) => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return;
            }
        }
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = (0, n),
        }
    }
}

/// Rewrites a stream of client (masked) frames into server (unmasked) frames.
#[derive(Default)]
struct Transcoder {
    /// A header being collected (headers split across reads).
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes left in the current frame.
    remaining: u64,
    key: [u8; 4],
    /// Payload bytes of the current frame seen so far, mod 4.
    key_pos: usize,
    /// The current frame is a close frame.
    closing: bool,
}

impl Transcoder {
    /// Appends the server frames for `input` to `out`. `Ok(true)` once a close frame has been
    /// echoed whole; `Err` for an unmasked client frame.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, ()> {
        while !input.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(input.len() as u64)) as usize;
                unmask_into(&input[..n], self.key, self.key_pos, out);
                self.key_pos = (self.key_pos + n) & 3;
                self.remaining -= n as u64;
                input = &input[n..];
                if self.remaining == 0 && self.closing {
                    return Ok(true);
                }
                continue;
            }
            // A header: 2 bytes, the extended length, the key.
            let need = if self.hdr_len < 2 {
                2
            } else {
                2 + match self.hdr[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                } + 4
            };
            let take = (need - self.hdr_len).min(input.len());
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[..take]);
            self.hdr_len += take;
            input = &input[take..];
            if self.hdr_len < need || need == 2 {
                continue;
            }
            let h = &self.hdr[..need];
            if h[1] & 0x80 == 0 {
                return Err(());
            }
            let ext = need - 6;
            let len = match ext {
                0 => u64::from(h[1] & 0x7f),
                2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                _ => u64::from_be_bytes(h[2..10].try_into().unwrap()),
            };
            out.push(h[0]);
            out.push(h[1] & 0x7f);
            out.extend_from_slice(&h[2..2 + ext]);
            self.key = h[need - 4..need].try_into().unwrap();
            self.key_pos = 0;
            self.remaining = len;
            self.closing = h[0] & 0x0f == 0x8;
            self.hdr_len = 0;
            if len == 0 && self.closing {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Appends `src` to `out` XORed with `key` starting at key byte `pos`: copy, then XOR in
/// place 8 bytes at a time with the rotated key repeated, then the tail byte by byte.
#[inline]
fn unmask_into(src: &[u8], key: [u8; 4], pos: usize, out: &mut Vec<u8>) {
    let k: [u8; 4] = std::array::from_fn(|i| key[(pos + i) & 3]);
    let k8 = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let start = out.len();
    out.extend_from_slice(src);
    let dst = &mut out[start..];
    let mut chunks = dst.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ k8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // Whole 8-byte chunks keep the key phase, so the tail starts at key byte 0 of `k`.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The trimmed value of the first header named `name` (lower case) in a request head.
fn header_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (n, v) = line.split_at(colon);
        n.eq_ignore_ascii_case(name).then(|| v[1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(op: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        f
    }

    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = client_frame(op, payload, [0; 4]);
        f[1] &= 0x7f;
        let at = f.len() - payload.len() - 4;
        f.drain(at..at + 4);
        f
    }

    #[test]
    fn transcodes_in_any_split() {
        let payloads: Vec<Vec<u8>> = [0usize, 1, 7, 20, 125, 126, 1000, 70000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 31 + 7) as u8).collect())
            .collect();
        let mut input = Vec::new();
        let mut want = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            input.extend(client_frame(2, p, [i as u8 + 1, 0xa5, 0x3c, 0xc3]));
            want.extend(server_frame(2, p));
        }
        input.extend(client_frame(8, &1000u16.to_be_bytes(), [9, 8, 7, 6]));
        want.extend(server_frame(8, &1000u16.to_be_bytes()));
        for step in [1, 3, 5, 13, 4096, usize::MAX] {
            let mut tr = Transcoder::default();
            let mut out = Vec::new();
            let mut done = false;
            for chunk in input.chunks(step.min(input.len())) {
                assert!(!done);
                done = tr.feed(chunk, &mut out).unwrap();
            }
            assert!(done, "step {step}");
            assert!(out == want, "step {step}");
        }
    }

    #[test]
    fn accept_key_matches_rfc() {
        let mut sha = Sha1::new();
        sha.update(b"dGhlIHNhbXBsZSBub25jZQ==");
        sha.update(GUID.as_bytes());
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nsec-websocket-KEY:  abc \r\n\r\n";
        assert_eq!(header_value(head, b"sec-websocket-key"), Some(&b"abc"[..]));
    }
}
