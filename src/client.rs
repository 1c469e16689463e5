//! The client role: connect to a `ws://` URL through the ring, validate the server's 101, and
//! talk with the same [`WebSocket`] API as the server side. Every frame is masked with a fresh
//! key from a ChaCha-based generator seeded once from the OS (no system call per frame).
//!
//! ```no_run
//! uringws::client::block_on(async {
//!     let ws = uringws::client::connect("ws://127.0.0.1:9001/").await?;
//!     let (mut rx, tx) = ws.split();
//!     tx.send_text("Hello, World!").await?;
//!     if let Some(reply) = rx.recv().await? {
//!         println!("{reply:?}");
//!     }
//!     tx.close(uringws::CloseCode::NORMAL, "")?;
//!     while rx.recv().await?.is_some() {}
//!     Ok::<(), uringws::Error>(())
//! })??;
//! # Ok::<(), uringws::Error>(())
//! ```

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use crate::uring::TcpStream;
use rand::{Rng, SeedableRng};

use crate::conn::buffers::{BufferPool, ReadBuf};
use crate::conn::{
    finish, writer, Conn, ConnectionInfo, Headers, InfoParts, Limits, Phase, RxState, Timeouts,
};
use crate::error::{io_uring_unavailable, Error, Result};
use crate::proto::close::CloseCode;
use crate::proto::deflate::{self, Compression, Compressor};
use crate::proto::frame::Role;
use crate::proto::handshake::{self, HeadScanner};
use crate::proto::message::{Reader, ReaderConfig, DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE};
use crate::server::WebSocket;

/// Runs `future` on a new [`Runtime`] on this thread, for programs that are only clients.
/// Fails with [`Error::IoUringUnavailable`] when io_uring cannot be set up.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(Runtime::new()?.block_on(future))
}

/// An io_uring runtime for client programs, to run many futures on one thread: a tokio
/// current-thread runtime (timers, channels, `tokio::task::spawn_local`) with the thread's
/// ring and 64 receive buffers of 64 KiB + 64 bytes.
pub struct Runtime(crate::uring::Runtime);

impl Runtime {
    /// Sets the ring up. Fails with [`Error::IoUringUnavailable`] when io_uring cannot be.
    pub fn new() -> Result<Runtime> {
        crate::error::check_kernel()?;
        let rt = crate::uring::Runtime::new(crate::uring::RingConfig {
            entries: 256,
            buffers: 64,
            buffer_size: (64 << 10) + 64,
        })
        .map_err(|e| io_uring_unavailable(&e))?;
        Ok(Runtime(rt))
    }

    /// Runs `future` to completion on this thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

/// Connects to `url` (`ws://host[:port][/path][?query]`) with the default [`Connector`].
/// Must run inside an uringws runtime: [`block_on`], or a server's handler.
pub async fn connect(url: &str) -> Result<WebSocket> {
    Connector::new().connect(url).await
}

/// Client options. Defaults: no subprotocols or extra headers, 10 s to connect and complete
/// the handshake, 5 s close timeout, no idle timeout, 16 MiB frames, 64 MiB messages, 64 KiB
/// read buffer, 1 MiB send queue.
#[derive(Debug, Clone)]
pub struct Connector {
    protocols: Vec<String>,
    headers: Vec<(String, String)>,
    timeouts: Timeouts,
    max_frame: u64,
    max_message: u64,
    read_buffer_size: usize,
    send_queue_limit: usize,
    compression: Compression,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConnector>,
}

impl Default for Connector {
    fn default() -> Self {
        Connector {
            protocols: Vec::new(),
            headers: Vec::new(),
            timeouts: Timeouts {
                handshake: Duration::from_secs(10),
                idle: None,
                ping: None,
                close: Duration::from_secs(5),
            },
            max_frame: DEFAULT_MAX_FRAME,
            max_message: DEFAULT_MAX_MESSAGE,
            read_buffer_size: 64 << 10,
            send_queue_limit: 1 << 20,
            compression: Compression::OFF,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// The parts of a `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `wss://`: over TLS.
    pub secure: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80, or 443 for `wss://`).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub resource: String,
}

impl Url {
    /// Parses `ws://host[:port][/path][?query]` or the same with `wss://` (TLS, which needs
    /// the `tls` feature).
    pub fn parse(url: &str) -> Result<Url> {
        let bad = |why: &str| Error::Config(format!("bad WebSocket URL {url:?}: {why}"));
        let (secure, rest) = if let Some(r) = strip_prefix_ci(url, "ws://") {
            (false, r)
        } else if let Some(r) = strip_prefix_ci(url, "wss://") {
            if !cfg!(feature = "tls") {
                return Err(bad("wss:// needs uringws's `tls` feature"));
            }
            (true, r)
        } else {
            return Err(bad("the scheme must be ws:// or wss://"));
        };
        let (authority, resource) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let resource = resource.split('#').next().unwrap_or("/");
        let resource = if resource.starts_with('?') {
            format!("/{resource}")
        } else if resource.is_empty() {
            "/".to_owned()
        } else {
            resource.to_owned()
        };
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if secure => 443,
            None => 80,
        };
        if !resource.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the path must be ASCII without spaces (percent-encode it)",
            ));
        }
        Ok(Url {
            secure,
            host: host.to_owned(),
            port,
            resource,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.secure { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl Connector {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The TLS settings of `wss://` connections: the roots to trust (default: webpki's
    /// Mozilla roots; [`crate::tls::TlsConnector::with_ca_file`] adds a private CA).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::TlsConnector) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Trusts the CA certificates of the PEM file `ca` for `wss://`, besides webpki's roots
    /// (see [`crate::tls::TlsConnector::with_ca_file`]). Errors: [`Error::Tls`] when the file
    /// cannot be used, or when this build has no TLS (the `tls` feature).
    pub fn ca_file(self, ca: impl AsRef<std::path::Path>) -> Result<Self> {
        #[cfg(feature = "tls")]
        return Ok(self.tls(crate::tls::TlsConnector::with_ca_file(ca)?));
        #[cfg(not(feature = "tls"))]
        {
            let _ = ca;
            Err(Error::Tls(
                "this build has no TLS (the `tls` feature)".into(),
            ))
        }
    }

    /// Offers these subprotocols, in order of preference.
    pub fn protocols<S: Into<String>>(mut self, p: impl IntoIterator<Item = S>) -> Self {
        self.protocols = p.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a header to the upgrade request (e.g. `Origin`, `Authorization`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Time allowed to connect and complete the handshake (default 10 s).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.timeouts.handshake = t;
        self
    }

    /// Time allowed for the server's close after ours (default 5 s).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.timeouts.close = t;
        self
    }

    /// Closes with 1001 after receiving nothing for this long (default: never).
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.timeouts.idle = t;
        self
    }

    /// Largest frame and message the client accepts (defaults 16 MiB and 64 MiB).
    pub fn max_sizes(mut self, frame: u64, message: u64) -> Self {
        self.max_frame = frame;
        self.max_message = message;
        self
    }

    /// Read buffer size (default 64 KiB; 256 bytes to 1 GiB, checked by `connect`).
    pub fn read_buffer_size(mut self, n: usize) -> Self {
        self.read_buffer_size = n;
        self
    }

    /// Offers permessage-deflate (RFC 7692) with these settings (default: off). With
    /// [`Compression::shared`] the offer asks for no context takeover both ways, so that the
    /// connection keeps no compression state between messages.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Refuses settings that cannot work, naming the field (nothing is clamped silently).
    fn validate(&self) -> Result<()> {
        let bad = |field, value: String, allowed: &str| {
            Err(Error::InvalidConfig {
                field,
                value,
                allowed: allowed.to_owned(),
            })
        };
        if let Err(why) = self.compression.validate() {
            return bad("compression", format!("{:?}", self.compression), &why);
        }
        if !(256..=crate::Config::MAX_READ_BUFFER).contains(&self.read_buffer_size) {
            return bad(
                "read_buffer_size",
                self.read_buffer_size.to_string(),
                "it must be 256 to 1073741824 bytes",
            );
        }
        if self.max_frame == 0 || self.max_message == 0 {
            return bad(
                "max_sizes",
                format!("{} / {}", self.max_frame, self.max_message),
                "frame and message limits must be at least 1 byte",
            );
        }
        if self.send_queue_limit == 0 {
            return bad("send_queue_limit", "0".into(), "it must be at least 1 byte");
        }
        if self.timeouts.handshake.is_zero() || self.timeouts.close.is_zero() {
            return bad(
                "timeouts",
                format!("{:?} / {:?}", self.timeouts.handshake, self.timeouts.close),
                "the handshake and close timeouts must be longer than zero",
            );
        }
        Ok(())
    }

    /// Connects to `url` and completes the opening handshake (after the TLS handshake, for
    /// `wss://`). Must run inside an uringws runtime ([`block_on`], [`Runtime`], or a server's
    /// handler). Errors: [`Error::Config`] for a bad URL, [`Error::Io`] when the connection
    /// fails or times out, [`Error::Tls`] when the TLS handshake fails (an untrusted or
    /// expired certificate, a name it is not for), [`Error::Handshake`] when the server
    /// refuses or answers wrongly.
    pub async fn connect(&self, url: &str) -> Result<WebSocket> {
        self.validate()?;
        let url = Url::parse(url)?;
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|source| Error::Address {
                addr: url.authority(),
                source,
            })?
            .collect();
        let mut last_err = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some((s, addr));
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some((stream, peer)) = stream else {
            return Err(Error::Io(last_err.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
            })));
        };
        let _ = stream.set_nodelay(true);
        let mut rng = rand::rngs::StdRng::from_entropy();
        let key = handshake::client_key(rng.gen());
        let protocols: Vec<&str> = self.protocols.iter().map(String::as_str).collect();
        let offer = deflate::client_offer(&self.compression);
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(offer.as_deref().map(|o| ("Sec-WebSocket-Extensions", o)))
            .collect();
        let mut request = Vec::new();
        handshake::write_client_request(
            &url.authority(),
            &url.resource,
            &key,
            &protocols,
            &headers,
            &mut request,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        let pool = Rc::new(BufferPool::new(self.read_buffer_size));
        let conn = Conn::new(
            stream,
            Rc::new(Limits {
                timeouts: self.timeouts,
                send_limit: self.send_queue_limit,
            }),
            Some(Box::new(move || rng.gen())),
            pool.clone(),
        );
        conn.watch();
        let mut recv = None;
        if url.secure {
            if let Err(e) = self.start_tls(&conn, &url.host, &mut recv).await {
                drop(recv);
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                conn.set_phase(Phase::Done);
                return Err(e);
            }
        }
        if let Err(e) = conn.send_all(request).await {
            conn.set_phase(Phase::Done);
            return Err(Error::Io(e));
        }
        let mut head = Vec::new();
        let mut scanner = HeadScanner::new(handshake::DEFAULT_MAX_REQUEST);
        let head_len = loop {
            match scanner.scan(&head) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(_) => {
                    conn.set_phase(Phase::Done);
                    return Err(Error::Handshake(
                        handshake::ClientHandshakeError::Malformed("response head too large"),
                    ));
                }
            }
            match conn.recv_plain(&mut recv, &mut head, false).await {
                Ok(false) => {
                    let timed_out = conn.phase.get() == Phase::Handshake
                        && conn.last_activity.get().elapsed() >= self.timeouts.handshake;
                    conn.set_phase(Phase::Done);
                    return Err(Error::Io(std::io::Error::new(
                        if timed_out {
                            std::io::ErrorKind::TimedOut
                        } else {
                            std::io::ErrorKind::UnexpectedEof
                        },
                        if timed_out {
                            "the handshake timed out"
                        } else {
                            "the server closed the connection during the handshake"
                        },
                    )));
                }
                Ok(true) => {}
                Err(e) => {
                    conn.set_phase(Phase::Done);
                    return Err(Error::Io(e));
                }
            }
        };
        let offered: &[&str] = if offer.is_some() {
            &[deflate::EXTENSION]
        } else {
            &[]
        };
        let checked = handshake::check_response(&head[..head_len], &key, &protocols, offered)
            .and_then(|r| {
                let agreed = deflate::accept_response(r.extensions(), &self.compression)
                    .map_err(|e| handshake::ClientHandshakeError::ExtensionParams(e.0))?;
                Ok((r, agreed))
            });
        let (response, agreed) = match checked {
            Ok(r) => r,
            Err(e) => {
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                conn.set_phase(Phase::Done);
                return Err(Error::Handshake(e));
            }
        };
        let info = ConnectionInfo::new(InfoParts {
            peer_addr: Some(peer),
            path: url.resource.split('?').next().unwrap_or("/"),
            query: url.resource.split_once('?').map(|(_, q)| q),
            origin: None,
            protocol: response.protocol,
            extensions: agreed.and(response.extensions().next()),
            sni: None,
            headers: Headers::new(response.headers.iter().map(|h| (h.name, h.value))),
        });
        let _ = conn.info.set(info);
        let reader = Reader::new(ReaderConfig {
            max_frame: self.max_frame,
            max_message: self.max_message,
            inline_limit: self.read_buffer_size.min(crate::conn::DIRECT_READ_MIN),
            inflate: agreed.map(|a| a.receive),
            ..ReaderConfig::new(Role::Client)
        });
        if let Some(a) = agreed {
            conn.set_compressor(Compressor::new(a.send, &self.compression));
        }
        let end = head.len();
        let state = RxState::new(ReadBuf::Heap(head), head_len, end, reader, pool, recv);
        conn.set_phase(Phase::Open);
        tokio::task::spawn_local(writer(conn.clone()));
        tokio::task::spawn_local(closer(conn.clone()));
        Ok(WebSocket::new(conn, state))
    }
}

/// Completes the closing handshake once the application drops its receiver.
async fn closer(conn: Rc<Conn>) {
    conn.receiver_dropped().await;
    finish(&conn, CloseCode::NORMAL).await;
}

impl Connector {
    /// Runs the TLS handshake of a `wss://` connection to `host`.
    #[cfg(feature = "tls")]
    async fn start_tls(
        &self,
        conn: &Conn,
        host: &str,
        recv: &mut Option<crate::uring::RecvMulti>,
    ) -> Result<()> {
        static DEFAULT: std::sync::OnceLock<crate::tls::TlsConnector> = std::sync::OnceLock::new();
        let tls = match &self.tls {
            Some(t) => t,
            None => DEFAULT.get_or_init(crate::tls::TlsConnector::default),
        };
        conn.start_tls(crate::tls::Session::client(tls, host)?);
        conn.tls_handshake(recv).await
    }

    #[cfg(not(feature = "tls"))]
    async fn start_tls(
        &self,
        _conn: &Conn,
        _host: &str,
        _recv: &mut Option<crate::uring::RecvMulti>,
    ) -> Result<()> {
        Err(Error::Config("wss:// needs uringws's `tls` feature".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("ws://127.0.0.1:9001/chat?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.resource.as_str()),
            ("127.0.0.1", 9001, "/chat?x=1")
        );
        assert_eq!(u.authority(), "127.0.0.1:9001");
        let u = Url::parse("WS://example.com").unwrap();
        assert_eq!((u.port, u.resource.as_str()), (80, "/"));
        assert_eq!(u.authority(), "example.com");
        let u = Url::parse("ws://[::1]:8080?q").unwrap();
        assert_eq!((u.host.as_str(), u.resource.as_str()), ("::1", "/?q"));
        assert_eq!(u.authority(), "[::1]:8080");
        let u = Url::parse("wss://example.com/x").unwrap();
        assert_eq!(
            (u.secure, u.port, u.authority().as_str()),
            (true, 443, "example.com")
        );
        let u = Url::parse("wss://example.com:8443").unwrap();
        assert_eq!(u.authority(), "example.com:8443");
        for bad in [
            "http://x/",
            "ws://",
            "ws://h:99999/",
            "ws://u@h/",
            "ws://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
