//! Shared helpers for the integration tests: a server on 127.0.0.1:0, and a deliberately
//! plain blocking client that writes exactly the bytes a test asks for.
#![allow(dead_code)]

pub mod topics;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use uringws::proto::frame::{write_frame, OpCode};
use uringws::{Error, RunningServer, Server, WebSocket};

/// Starts `server` with an echo handler. Returns `None` (after printing why) when io_uring
/// is unavailable outside CI; in CI (`CI` set) that is a failure.
pub fn start(server: Server) -> Option<RunningServer> {
    start_with(server, |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        while let Some(msg) = rx.recv().await? {
            tx.send(msg).await?;
        }
        Ok(())
    })
}

/// Starts `server` with `handler`; see [`start`].
pub fn start_with<H, F>(server: Server, handler: H) -> Option<RunningServer>
where
    H: Fn(WebSocket) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = uringws::Result<()>> + 'static,
{
    match server.start(handler) {
        Ok(s) => Some(s),
        Err(Error::IoUringUnavailable(msg)) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: io_uring is unavailable here: {msg}");
            None
        }
        Err(e) => panic!("server did not start: {e}"),
    }
}

/// Whether io_uring works here; outside CI an unavailable io_uring skips the test (with a
/// printed reason), in CI it fails it.
pub fn uring_available() -> bool {
    match uringws::client::block_on(async {}) {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: io_uring is unavailable here: {e}");
            false
        }
        Err(e) => panic!("io_uring is unavailable in CI: {e}"),
    }
}

/// This process's resident memory (VmRSS) in KiB.
pub fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A server on 127.0.0.1 with a free port and `threads` threads.
pub fn local(threads: usize) -> Server {
    Server::bind("127.0.0.1:0").unwrap().threads(threads)
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A raw HTTP response: status, head text, body bytes read until EOF.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Sends `request` bytes and reads the whole response until the server closes.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    parse_response(&all)
}

pub fn parse_response(all: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(all).into_owned();
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let status = head[9..12].parse().unwrap();
    RawResponse {
        status,
        head: head.to_owned(),
        body: all[head.len() + 4..].to_vec(),
    }
}

/// A raw WebSocket client over a blocking socket.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub struct Frame {
    pub fin: bool,
    /// The RSV bits in place (`0x40` is RSV1: compressed).
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Checks that the server at `addr` still serves a new client: a text message is echoed.
pub fn assert_still_serves(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    c.send(true, OpCode::Text, b"still here");
    assert_eq!(c.read_frame().unwrap().payload, b"still here");
}

impl Client {
    /// Connects and completes a valid handshake.
    pub fn connect(addr: SocketAddr) -> Client {
        Self::connect_with(addr, &upgrade_request("/", ""))
    }

    pub fn connect_with(addr: SocketAddr, request: &str) -> Client {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        let head = c.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}")),
            "{head}"
        );
        c
    }

    /// A client over `stream`, which has sent an upgrade request, once the server answered
    /// 101; `None` when the connection ended (or was reset) before, or with another status.
    pub fn from_stream_after_101(stream: TcpStream) -> Option<Client> {
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let ok = c.buf.starts_with(b"HTTP/1.1 101 ");
                c.buf.drain(..i + 4);
                return ok.then_some(c);
            }
            let mut chunk = [0u8; 4096];
            match c.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 4);
                return head;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "EOF before the response head");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends one masked frame.
    pub fn send(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        write_frame(&mut out, fin, opcode, Some([1, 2, 3, 4]), payload);
        self.send_raw(&out);
    }

    fn fill(&mut self, need: usize) -> bool {
        while self.buf.len() < need {
            let mut chunk = vec![0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A thread that ran a client ring may see its blocking calls interrupted
                // (io_uring's task work is signalled to it).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("read failed: {e}"),
            }
        }
        true
    }

    /// Reads one frame from the server (which must be unmasked). `None` at EOF.
    pub fn read_frame(&mut self) -> Option<Frame> {
        if !self.fill(2) {
            return None;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let (len, hdr) = match b1 & 0x7f {
            126 => {
                assert!(self.fill(4));
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                assert!(self.fill(10));
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert!(self.fill(hdr + len), "EOF inside a frame");
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Some(Frame {
            fin: b0 & 0x80 != 0,
            rsv: b0 & 0x70,
            opcode: b0 & 0x0f,
            payload,
        })
    }

    /// Reads frames until a close frame; returns its code (or None for an empty close) and
    /// checks that the server then closes the TCP connection.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            let f = self.read_frame().expect("EOF before a close frame");
            if f.opcode == 8 {
                let code = (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                self.expect_eof();
                return code;
            }
        }
    }

    /// Checks that the server closes the connection (EOF or reset) within the read timeout.
    pub fn expect_eof(&mut self) {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }
}
