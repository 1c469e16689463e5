//! The server role: the [`Server`] builder and its [`Config`], one thread per core each with its
//! own io_uring runtime and provided-buffer ring, all accepting from one listening socket, and
//! graceful shutdown (on a [`ShutdownHandle`] or a signal).
//!
//! ```no_run
//! uringws::Server::bind("127.0.0.1:9001")?
//!     .threads(2)
//!     .serve(|ws: uringws::WebSocket| async move {
//!         let (mut rx, tx) = ws.split();
//!         while let Some(msg) = rx.recv().await? {
//!             tx.send(msg).await?;
//!         }
//!         Ok(())
//!     })?;
//! # Ok::<(), uringws::Error>(())
//! ```

mod conn;

pub use crate::conn::{ConnectionInfo, Headers, Receiver, Sender, Sending, WebSocket};
pub use crate::proto::handshake::{Header, Request, UpgradeRequest};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{io_uring_unavailable, Error, Result};
use crate::proto::close::CloseCode;
pub use crate::proto::deflate::Compression;
use crate::proto::message::{DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE};
use crate::pubsub::topics;
pub use crate::pubsub::{Publisher, SlowSubscriber};

use crate::conn::buffers::BufferPool;
use crate::conn::{Conn, Phase};
use crate::uring::{AcceptMulti, RingConfig, Runtime, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

/// Server settings. Every field has a documented default; set them with the [`Server`]
/// builder methods or directly (the struct is `#[non_exhaustive]`: start from
/// `Config::default()`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Runtime threads, each with its own ring and listener. Default: the number of CPUs.
    pub threads: usize,
    /// Most open connections across all threads; more are answered with 503 and closed.
    /// Default: 10,000.
    pub max_connections: usize,
    /// Size of each receive buffer. A single-frame message that arrives in one is handed out
    /// where it lies, without a copy; larger ones are reassembled. A connection holds no
    /// buffer while idle: the kernel picks one from the thread's ring when bytes arrive.
    /// Default: 64 KiB + 64 bytes, so that a 64 KiB message and its header fit (minimum 256
    /// bytes).
    pub read_buffer_size: usize,
    /// Receive buffers in each thread's provided-buffer ring, registered with its io_uring
    /// (a power of two, at most 32768). When all are in use, receives wait until one comes
    /// back. Default: 128.
    pub registered_buffers: usize,
    /// Largest frame payload; larger frames close with 1009. Default: 16 MiB.
    pub max_frame_size: u64,
    /// Largest message, all fragments together; larger ones close with 1009. Default: 64 MiB.
    pub max_message_size: u64,
    /// Largest handshake request head; larger ones get 431. Default: 8 KiB (and at most the
    /// read buffer size).
    pub max_handshake_size: usize,
    /// Time allowed from accept to a complete handshake (and per plain HTTP request).
    /// Default: 10 s.
    pub handshake_timeout: Duration,
    /// A connection that receives nothing for this long is closed with 1001. Default: 300 s.
    pub idle_timeout: Option<Duration>,
    /// Send a ping after this long without receiving anything. Default: none.
    pub ping_interval: Option<Duration>,
    /// After a close frame is sent, time allowed for the peer's close and its end of the TCP
    /// connection. Default: 5 s.
    pub close_timeout: Duration,
    /// Send queue high-water mark per connection, in bytes: `send` waits while more than this
    /// is queued or in flight. Default: 1 MiB.
    pub send_queue_limit: usize,
    /// Subprotocols the server speaks, in its order; the first one the client offers (in the
    /// client's order) is chosen. Default: none.
    pub subprotocols: Vec<String>,
    /// Extra headers sent with every 101 response. Default: none.
    pub response_headers: Vec<(String, String)>,
    /// On shutdown, time allowed for connections to finish their closing handshake.
    /// Default: 10 s.
    pub shutdown_grace: Duration,
    /// Sets `SO_REUSEPORT` on the listening socket, so that another process that also sets it
    /// (a new version of this server, for a hand-over) can listen on the same port while this
    /// one drains. Default: off, so that starting a second server on a port in use fails with
    /// "address in use" instead of silently sharing the traffic. (The threads of one server
    /// share one socket either way.)
    pub reuse_port: bool,
    /// permessage-deflate (RFC 7692): [`Compression::OFF`] (the default) declines every offer;
    /// [`Compression::shared`] keeps no compression state per connection (one compressor
    /// and one decompressor per thread, no context takeover either way);
    /// [`Compression::dedicated`] gives each connection its own, with context takeover.
    pub compression: Compression,
    /// What a subscriber whose send queue is over `send_queue_limit` gets when a publish
    /// reaches it (see [`Publisher`]). Default: [`SlowSubscriber::Drop`] (counted).
    pub slow_subscriber: SlowSubscriber,
}

impl Config {
    pub(crate) fn timeouts(&self) -> crate::conn::Timeouts {
        crate::conn::Timeouts {
            handshake: self.handshake_timeout,
            idle: self.idle_timeout,
            ping: self.ping_interval,
            close: self.close_timeout,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_connections: 10_000,
            read_buffer_size: (64 << 10) + 64,
            registered_buffers: 128,
            max_frame_size: DEFAULT_MAX_FRAME,
            max_message_size: DEFAULT_MAX_MESSAGE,
            max_handshake_size: crate::proto::handshake::DEFAULT_MAX_REQUEST,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            ping_interval: None,
            close_timeout: Duration::from_secs(5),
            send_queue_limit: 1 << 20,
            subprotocols: Vec::new(),
            response_headers: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            reuse_port: false,
            compression: Compression::OFF,
            slow_subscriber: SlowSubscriber::Drop,
        }
    }
}

/// Refuses `value` of `field` unless `ok`, saying what `allowed` is.
fn check(
    ok: bool,
    field: &'static str,
    value: impl std::fmt::Display,
    allowed: &str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            value: value.to_string(),
            allowed: allowed.to_owned(),
        })
    }
}

/// Refuses a duration of zero, which would fire at once.
fn check_positive(t: Option<Duration>, field: &'static str, disable: &str) -> Result<()> {
    match t {
        Some(t) => check(
            !t.is_zero(),
            field,
            format_args!("{t:?}"),
            &format!("it must be longer than zero{disable}"),
        ),
        None => Ok(()),
    }
}

impl Config {
    /// The largest read buffer (1 GiB).
    pub const MAX_READ_BUFFER: usize = 1 << 30;
    /// The most buffers one provided-buffer ring can hold.
    pub const MAX_REGISTERED_BUFFERS: usize = 32768;

    /// Checks every field against its allowed range; [`Server::start`] calls it and starts
    /// nothing when it fails. Nothing is clamped silently: an [`Error::InvalidConfig`] names
    /// the field, its value and what it must be.
    pub fn validate(&self) -> Result<()> {
        check(
            (1..=1024).contains(&self.threads),
            "threads",
            self.threads,
            "it must be 1 to 1024",
        )?;
        check(
            self.max_connections >= 1,
            "max_connections",
            self.max_connections,
            "it must be at least 1 (with 0 every client would get 503)",
        )?;
        check(
            (256..=Self::MAX_READ_BUFFER).contains(&self.read_buffer_size),
            "read_buffer_size",
            self.read_buffer_size,
            &format!("it must be 256 to {} bytes", Self::MAX_READ_BUFFER),
        )?;
        check(
            self.registered_buffers.is_power_of_two()
                && self.registered_buffers <= Self::MAX_REGISTERED_BUFFERS,
            "registered_buffers",
            self.registered_buffers,
            "it must be a power of two from 1 to 32768 (a provided-buffer ring)",
        )?;
        check(
            self.max_frame_size >= 1,
            "max_frame_size",
            self.max_frame_size,
            "it must be at least 1 byte",
        )?;
        check(
            self.max_message_size >= 1,
            "max_message_size",
            self.max_message_size,
            "it must be at least 1 byte",
        )?;
        check(
            (256..=self.read_buffer_size).contains(&self.max_handshake_size),
            "max_handshake_size",
            self.max_handshake_size,
            &format!(
                "it must be 256 bytes to read_buffer_size ({} bytes): a request head is read \
                 into the read buffer",
                self.read_buffer_size
            ),
        )?;
        check_positive(Some(self.handshake_timeout), "handshake_timeout", "")?;
        check_positive(Some(self.close_timeout), "close_timeout", "")?;
        check_positive(self.idle_timeout, "idle_timeout", " (None disables it)")?;
        check_positive(
            self.ping_interval,
            "ping_interval",
            " (None disables pings)",
        )?;
        check(
            self.send_queue_limit >= 1,
            "send_queue_limit",
            self.send_queue_limit,
            "it must be at least 1 byte",
        )?;
        for p in &self.subprotocols {
            check(
                crate::proto::handshake::is_token(p),
                "subprotocols",
                format_args!("{p:?}"),
                "each must be a non-empty HTTP token (RFC 6455 section 4.1)",
            )?;
        }
        for (name, value) in &self.response_headers {
            let pair = [(name.as_str(), value.as_str())];
            check(
                crate::proto::handshake::check_headers(&pair).is_ok(),
                "response_headers",
                format_args!("{name:?}: {value:?}"),
                "names must be HTTP tokens and values free of control characters",
            )?;
        }
        if let Err(why) = self.compression.validate() {
            check(
                false,
                "compression",
                format_args!("{:?}", self.compression),
                &why,
            )?;
        }
        Ok(())
    }
}

/// An HTTP response for a plain (non-WebSocket) request or a refused upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Extra headers. `Content-Length` and `Connection` are written by the server;
    /// `Content-Type` is `text/plain; charset=utf-8` unless one is given here.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a plain-text body.
    pub fn text(status: u16, body: &str) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// A response with `body` of type `content_type` (e.g. `text/html; charset=utf-8`).
    pub fn with_type(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
        .header("Content-Type", content_type)
    }

    /// Adds a header. Names must be tokens and values free of control characters; invalid
    /// ones are dropped, and so are `Content-Length`, `Transfer-Encoding` and `Connection`,
    /// which the server writes itself. A `Content-Type` replaces the default.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        const OWN: [&str; 3] = ["content-length", "transfer-encoding", "connection"];
        if OWN.iter().any(|own| name.eq_ignore_ascii_case(own)) {
            return self;
        }
        if name.eq_ignore_ascii_case("content-type") {
            self.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        }
        if crate::proto::handshake::check_headers(&[(name, value)]).is_ok() {
            self.headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// Appends the whole response to `out` (without the body for a HEAD request).
    pub(crate) fn write(&self, head_only: bool, keep_alive: bool, out: &mut Vec<u8>) {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body: &[u8] = if head_only { &[] } else { &self.body };
        crate::proto::handshake::write_response(self.status, &headers, body, keep_alive, out);
    }

    /// The default answer to a plain HTTP request: 426 Upgrade Required.
    pub fn upgrade_required() -> Self {
        HttpResponse::text(
            426,
            "426 Upgrade Required: this is a WebSocket endpoint (RFC 6455)\n",
        )
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
    }
}

type HttpFn = dyn Fn(&Request<'_>) -> HttpResponse + Send + Sync;
type CheckFn = dyn Fn(&UpgradeRequest<'_>) -> std::result::Result<(), HttpResponse> + Send + Sync;
type Handler = dyn Fn(WebSocket) -> std::pin::Pin<Box<dyn Future<Output = Result<()>>>>;

/// The WebSocket server builder.
#[derive(Clone)]
pub struct Server {
    addr: SocketAddr,
    config: Config,
    http: Option<Arc<HttpFn>>,
    check: Option<Arc<CheckFn>>,
    broker: Option<Arc<dyn crate::pubsub::Broker>>,
    tls: Option<TlsSettings>,
}

/// The server's TLS settings (nothing without the `tls` feature).
#[cfg(feature = "tls")]
pub(crate) type TlsSettings = crate::tls::TlsConfig;
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
pub(crate) enum TlsSettings {}

impl Server {
    /// A server for `addr` with the default [`Config`]. The address is resolved here (an
    /// [`Error::Address`] names it when that fails); the listening socket is bound by
    /// [`Server::start`] (port 0 picks a free port).
    pub fn bind<A: ToSocketAddrs + std::fmt::Debug>(addr: A) -> Result<Server> {
        let address = |source| Error::Address {
            addr: format!("{addr:?}"),
            source,
        };
        let addr = addr
            .to_socket_addrs()
            .map_err(address)?
            .next()
            .ok_or_else(|| {
                address(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it resolved to no address",
                ))
            })?;
        Ok(Server {
            addr,
            config: Config::default(),
            http: None,
            check: None,
            broker: None,
            tls: None,
        })
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets the number of runtime threads (default: one per CPU).
    pub fn threads(mut self, n: usize) -> Self {
        self.config.threads = n;
        self
    }

    /// Sets the most open connections (default 10,000).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Sets the largest frame and message sizes (defaults 16 MiB and 64 MiB).
    pub fn max_sizes(mut self, frame: u64, message: u64) -> Self {
        self.config.max_frame_size = frame;
        self.config.max_message_size = message;
        self
    }

    /// Sets the largest handshake request (default 8 KiB).
    pub fn max_handshake_size(mut self, n: usize) -> Self {
        self.config.max_handshake_size = n;
        self
    }

    /// Sets the number of receive buffers in each thread's ring (default 128; a power of
    /// two, at most 32768).
    pub fn registered_buffers(mut self, n: usize) -> Self {
        self.config.registered_buffers = n;
        self
    }

    /// Sets the read buffer size per connection (default 64 KiB + 64 bytes).
    pub fn read_buffer_size(mut self, n: usize) -> Self {
        self.config.read_buffer_size = n;
        self
    }

    /// Sets the handshake timeout (default 10 s).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.config.handshake_timeout = t;
        self
    }

    /// Sets the idle timeout (default 300 s; `None` disables it).
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.idle_timeout = t;
        self
    }

    /// Sets the keep-alive ping interval (default none).
    pub fn ping_interval(mut self, t: Option<Duration>) -> Self {
        self.config.ping_interval = t;
        self
    }

    /// Sets the close timeout (default 5 s).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.config.close_timeout = t;
        self
    }

    /// Sets the send queue high-water mark in bytes (default 1 MiB).
    pub fn send_queue_limit(mut self, n: usize) -> Self {
        self.config.send_queue_limit = n;
        self
    }

    /// Sets the subprotocols the server speaks, in its order of preference.
    pub fn subprotocols<S: Into<String>>(mut self, p: impl IntoIterator<Item = S>) -> Self {
        self.config.subprotocols = p.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`Config::compression`] (permessage-deflate; default off).
    pub fn compression(mut self, c: Compression) -> Self {
        self.config.compression = c;
        self
    }

    /// Sets [`Config::slow_subscriber`] (default: drop the message and count it).
    pub fn slow_subscriber(mut self, policy: SlowSubscriber) -> Self {
        self.config.slow_subscriber = policy;
        self
    }

    /// Sets `SO_REUSEPORT` on the listening socket (default off); see [`Config::reuse_port`].
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.config.reuse_port = on;
        self
    }

    /// Sets the shutdown grace period (default 10 s).
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.config.shutdown_grace = t;
        self
    }

    /// Carries the topics to and from other server processes through `broker` (for instance
    /// a [`crate::pubsub::RedisBroker`]): see [`crate::pubsub`].
    pub fn broker(mut self, broker: Arc<dyn crate::pubsub::Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Serves TLS (`wss://`) with `tls`, on every connection of this server: the TLS handshake
    /// comes first, within the handshake timeout, and a client that does not speak TLS is
    /// closed at once. The connection's [`ConnectionInfo::sni`] is the name the client asked
    /// for.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Answers plain HTTP requests (no upgrade) with `f`, e.g. a health check or a page.
    /// Without it they get 426 Upgrade Required.
    pub fn http<F>(mut self, f: F) -> Self
    where
        F: Fn(&Request<'_>) -> HttpResponse + Send + Sync + 'static,
    {
        self.http = Some(Arc::new(f));
        self
    }

    /// Checks each upgrade request (origin, path, headers) before accepting it; an `Err`
    /// refuses it with that response (e.g. 403 for a foreign `Origin`).
    pub fn check<F>(mut self, f: F) -> Self
    where
        F: Fn(&UpgradeRequest<'_>) -> std::result::Result<(), HttpResponse> + Send + Sync + 'static,
    {
        self.check = Some(Arc::new(f));
        self
    }

    /// Starts the server and blocks until it shuts down (see [`RunningServer::join`]). Nothing
    /// here reacts to signals: see [`Server::serve_with_shutdown`].
    pub fn serve<H, F>(self, handler: H) -> Result<()>
    where
        H: Fn(WebSocket) -> F + Clone + Send + 'static,
        F: Future<Output = Result<()>> + 'static,
    {
        self.start(handler)?.join()
    }

    /// Starts the server, runs until `signal` completes (or a [`ShutdownHandle`] stops it),
    /// then shuts down gracefully: stops accepting, closes every WebSocket with 1001 (going
    /// away), waits up to the grace period, and returns `Ok(())` once every thread has ended.
    ///
    /// With [`shutdown_signal`] this is the one line that makes SIGINT (Ctrl-C) and SIGTERM
    /// (`kill`, `docker stop`) close connections cleanly:
    ///
    /// ```no_run
    /// uringws::Server::bind("127.0.0.1:9001")?.serve_with_shutdown(
    ///     |ws: uringws::WebSocket| async move {
    ///         let (mut rx, tx) = ws.split();
    ///         while let Some(msg) = rx.recv().await? {
    ///             tx.send(msg).await?;
    ///         }
    ///         Ok(())
    ///     },
    ///     uringws::shutdown_signal(),
    /// )?;
    /// # Ok::<(), uringws::Error>(())
    /// ```
    ///
    /// `signal` runs on the calling thread in a tokio current-thread runtime (any future
    /// works: a timer, a channel, a signal). To learn the bound address first (port 0), use
    /// [`Server::start`] and then [`RunningServer::shutdown_on`].
    pub fn serve_with_shutdown<H, F, S>(self, handler: H, signal: S) -> Result<()>
    where
        H: Fn(WebSocket) -> F + Clone + Send + 'static,
        F: Future<Output = Result<()>> + 'static,
        S: Future<Output = ()>,
    {
        self.start(handler)?.shutdown_on(signal)
    }

    /// Starts the server threads and returns once every listener is bound.
    ///
    /// The handler runs once per connection, on the thread that accepted it; its future need
    /// not be `Send`. Fails with [`Error::IoUringUnavailable`] when io_uring cannot be set up.
    pub fn start<H, F>(self, handler: H) -> Result<RunningServer>
    where
        H: Fn(WebSocket) -> F + Clone + Send + 'static,
        F: Future<Output = Result<()>> + 'static,
    {
        self.config.validate()?;
        crate::error::check_kernel()?;
        let config = Arc::new(self.config);
        let listener = listen(self.addr, config.reuse_port)?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (handoffs, mut handoff_rx): (Vec<_>, Vec<_>) = (0..config.threads)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let shared = Arc::new(Shared {
            open: AtomicUsize::new(0),
            stop: stop_tx,
            next_thread: AtomicUsize::new(0),
            handoffs,
        });
        let (hub, mut queues) =
            topics::Hub::new(config.threads, config.slow_subscriber, self.broker.clone());
        if let Some(broker) = &self.broker {
            broker.start(Publisher::new(hub.clone()));
        }
        let mut threads = Vec::new();
        for i in 0..config.threads {
            let (ready_tx, ready_rx) = mpsc::channel();
            let setup = ThreadSetup {
                listener: listener.try_clone()?,
                config: config.clone(),
                shared: shared.clone(),
                stop: stop_rx.clone(),
                http: self.http.clone(),
                check: self.check.clone(),
                tls: self.tls.clone(),
                index: i,
                hub: hub.clone(),
                queue: queues.remove(0),
                handoff: handoff_rx.remove(0),
            };
            let handler = handler.clone();
            let thread = std::thread::Builder::new()
                .name(format!("uringws-{i}"))
                .spawn(move || run_thread(setup, handler, ready_tx))?;
            threads.push(thread);
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = shared.stop.send(true);
                    for t in threads {
                        let _ = t.join();
                    }
                    stop_broker(&hub);
                    return Err(e);
                }
                Err(_) => {
                    let _ = shared.stop.send(true);
                    stop_broker(&hub);
                    return Err(Error::Config("a server thread died at start".into()));
                }
            }
        }
        Ok(RunningServer {
            addr,
            shared,
            threads,
            hub,
        })
    }
}

/// State shared by all threads of one server.
struct Shared {
    open: AtomicUsize,
    stop: watch::Sender<bool>,
    /// The thread the next accepted connection goes to (round robin).
    next_thread: AtomicUsize,
    /// Each thread's queue of connections another thread accepted for it.
    handoffs: Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
}

/// A connection accepted by one thread for another: its socket and its peer.
type Accepted = (std::os::fd::OwnedFd, SocketAddr);

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    hub: Arc<topics::Hub>,
}

impl RunningServer {
    /// The address the listeners are bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that can shut the server down from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// A [`Publisher`] for this server's topics, usable from any thread.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.hub.clone())
    }

    /// The number of open connections.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Waits for every thread to finish (after a shutdown), then stops the broker.
    pub fn join(self) -> Result<()> {
        let mut panicked = false;
        for t in self.threads {
            panicked |= t.join().is_err();
        }
        stop_broker(&self.hub);
        if panicked {
            return Err(Error::Config("a server thread panicked".into()));
        }
        Ok(())
    }

    /// Shuts down gracefully and waits: see [`ShutdownHandle::shutdown`].
    pub fn shutdown(self) -> Result<()> {
        self.shutdown_handle().shutdown();
        self.join()
    }

    /// Blocks until `signal` completes (or a [`ShutdownHandle`] stops the server), then shuts
    /// down gracefully and waits for every thread; see [`Server::serve_with_shutdown`]. The
    /// signal future runs on the calling thread in a tokio current-thread runtime.
    pub fn shutdown_on<S: Future<Output = ()>>(self, signal: S) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = self.shutdown_handle();
        let mut stopped = self.shared.stop.subscribe();
        rt.block_on(async {
            tokio::select! {
                _ = signal => {
                    tracing::info!("shutdown requested: closing every connection with 1001");
                    handle.shutdown();
                }
                // Stopped some other way (a ShutdownHandle).
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        });
        drop(rt);
        self.join()
    }
}

fn stop_broker(hub: &topics::Hub) {
    if let Some(broker) = hub.broker() {
        broker.stop();
    }
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM (`kill`, `docker stop`), for
/// [`Server::serve_with_shutdown`]. The handlers are installed when it is first polled and
/// stay installed for the life of the process (a later SIGINT or SIGTERM no longer ends it
/// by default). If they cannot be installed it logs why and never completes.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot install SIGINT/SIGTERM handlers");
            std::future::pending::<()>().await;
        }
    }
}

/// Shuts a server down: stop accepting, close every connection with 1001, wait up to the
/// grace period for the closing handshakes, then drop what remains.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        let _ = self.shared.stop.send(true);
    }
}

struct ThreadSetup {
    /// This thread's descriptor of the server's one listening socket.
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    http: Option<Arc<HttpFn>>,
    check: Option<Arc<CheckFn>>,
    tls: Option<TlsSettings>,
    /// The thread's index, and its end of the topics.
    index: usize,
    hub: Arc<topics::Hub>,
    queue: tokio::sync::mpsc::UnboundedReceiver<topics::Delivery>,
    /// Connections accepted by other threads for this one.
    handoff: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
}

/// What one runtime thread shares between its connections.
pub(crate) struct ThreadCtx {
    pub(crate) config: Arc<Config>,
    pub(crate) http: Option<Arc<HttpFn>>,
    pub(crate) check: Option<Arc<CheckFn>>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls: Option<TlsSettings>,
    pub(crate) handler: Box<Handler>,
    pub(crate) buffers: Rc<BufferPool>,
    /// The connections' timeouts and send queue limit, shared by all of them.
    pub(crate) limits: Rc<crate::conn::Limits>,
    pub(crate) topics: Rc<topics::ThreadTopics>,
    shared: Arc<Shared>,
    /// This thread's index among the server's threads.
    index: usize,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    next_id: Cell<u64>,
    stopping: Cell<bool>,
    /// Accept loops still running (each ends after its accept completes during a stop).
    accepting: Cell<usize>,
}

impl ThreadCtx {
    pub(crate) fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    pub(crate) fn register(&self, id: u64, conn: Rc<Conn>) {
        if self.stopping.get() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        self.conns.borrow_mut().insert(id, conn);
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.conns.borrow_mut().remove(&id);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens the server's one listening socket: `SO_REUSEADDR` (a restart need not wait for
/// TIME_WAIT connections to expire), `SO_REUSEPORT` only when asked for, a backlog of 1024.
/// Every thread accepts from a descriptor of it (with a multishot accept).
fn listen(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let open = || -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket)
    };
    match open() {
        Ok(socket) => Ok(socket.into()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr}: the address is already in use (another server \
                     listens there; for a hand-over both must set reuse_port)"
            ),
        ))),
        Err(e) => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e}"),
        ))),
    }
}

fn run_thread<H, F>(setup: ThreadSetup, handler: H, ready: mpsc::Sender<Result<()>>)
where
    H: Fn(WebSocket) -> F + Clone + Send + 'static,
    F: Future<Output = Result<()>> + 'static,
{
    let ring = RingConfig {
        entries: 1024,
        buffers: setup.config.registered_buffers as u16,
        buffer_size: setup.config.read_buffer_size,
    };
    let rt = match Runtime::new(ring) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(io_uring_unavailable(&e)));
            return;
        }
    };
    rt.block_on(async move {
        let listener = setup.listener;
        let topics = topics::ThreadTopics::install(setup.index, setup.hub);
        tokio::task::spawn_local(topics.clone().run(setup.queue));
        let ctx = Rc::new(ThreadCtx {
            topics,
            buffers: Rc::new(BufferPool::new(setup.config.read_buffer_size)),
            limits: Rc::new(crate::conn::Limits {
                timeouts: setup.config.timeouts(),
                send_limit: setup.config.send_queue_limit,
            }),
            config: setup.config,
            http: setup.http,
            check: setup.check,
            tls: setup.tls,
            handler: Box::new(move |ws| Box::pin(handler(ws))),
            shared: setup.shared,
            index: setup.index,
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            stopping: Cell::new(false),
            accepting: Cell::new(0),
        });
        let _ = ready.send(Ok(()));
        tracing::info!(addr = ?listener.local_addr(), "listening");
        tokio::task::spawn_local(accept_loop(ctx.clone(), listener.as_raw_fd()));
        tokio::task::spawn_local(handoff_loop(ctx.clone(), setup.handoff));
        let mut stop = setup.stop;
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        graceful_stop(&ctx, &listener).await;
    });
}

/// Serves the connections other threads accepted for this one (closing them once stopping).
async fn handoff_loop(
    ctx: Rc<ThreadCtx>,
    mut handoff: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
) {
    while let Some((fd, peer)) = handoff.recv().await {
        if ctx.stopping.get() {
            let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
            ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        tokio::task::spawn_local(conn::serve(ctx.clone(), TcpStream::from_fd(fd), peer));
    }
}

/// Accepts connections with one multishot accept (re-armed when it ends) and serves each, or
/// hands it to the thread whose turn it is.
async fn accept_loop(ctx: Rc<ThreadCtx>, listener: RawFd) {
    ctx.accepting.set(ctx.accepting.get() + 1);
    let mut accepts: Option<AcceptMulti> = None;
    loop {
        let multi = match &mut accepts {
            Some(a) => a,
            None => match AcceptMulti::new(listener) {
                Ok(a) => accepts.insert(a),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start accepting");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let accepted = multi.accept().await;
        if ctx.stopping.get() {
            // A connection accepted just as the listener was shut down is closed here (the
            // others the multishot accept still holds are closed by the driver).
            if let Some(Ok(fd)) = accepted {
                let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
            }
            drop(accepts);
            ctx.accepting.set(ctx.accepting.get() - 1);
            return;
        }
        match accepted {
            // The multishot accept ended: start another.
            None => accepts = None,
            Some(Ok(fd)) => {
                let Ok(peer) = socket2::SockRef::from(&fd).peer_addr() else {
                    continue; // gone already
                };
                let Some(peer) = peer.as_socket() else {
                    continue;
                };
                let open = ctx.shared.open.fetch_add(1, Ordering::Relaxed);
                if open >= ctx.config.max_connections {
                    ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "connection limit reached; answering 503");
                    let stream = TcpStream::from_fd(fd);
                    tokio::task::spawn_local(async move {
                        let mut out = Vec::new();
                        crate::proto::handshake::write_response(
                            503,
                            &[("Retry-After", "1")],
                            b"503 Service Unavailable: too many connections\n",
                            false,
                            &mut out,
                        );
                        let _ = stream.write_all(out).await;
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    });
                    continue;
                }
                // Round robin over the threads: the kernel wakes the same thread's accept for
                // every connection that comes while it waits, which would put every
                // connection of a lightly loaded server on one thread.
                let n = ctx.shared.handoffs.len();
                let target = ctx.shared.next_thread.fetch_add(1, Ordering::Relaxed) % n;
                if target == ctx.index {
                    let stream = TcpStream::from_fd(fd);
                    tokio::task::spawn_local(conn::serve(ctx.clone(), stream, peer));
                } else if let Err(e) = ctx.shared.handoffs[target].send((fd, peer)) {
                    // That thread has stopped: the connection is closed as it is dropped.
                    drop(e);
                    ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // Cancelled (the driver ends a multishot operation for reasons of its own): start
            // another at once.
            Some(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => accepts = None,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of descriptors or memory: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Stops accepting, closes every connection with 1001, and waits up to the grace period.
async fn graceful_stop(ctx: &ThreadCtx, listener: &std::net::TcpListener) {
    ctx.stopping.set(true);
    // Wake the pending accepts: shutting a listening socket down makes accept fail, and new
    // connection attempts are refused from here on (not accepted and then reset).
    let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Both);
    let conns: Vec<Rc<Conn>> = ctx.conns.borrow().values().cloned().collect();
    for conn in &conns {
        // A connection whose 101 is being written is already `Open` (see `conn::handshake`),
        // so it gets its close frame after the 101.
        match conn.phase.get() {
            Phase::Open => {
                let _ = conn.queue_close(Some(CloseCode::GOING_AWAY), "server shutting down");
            }
            Phase::Handshake => {
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            }
            Phase::Closing | Phase::Done => {}
        }
    }
    drop(conns);
    let deadline = Instant::now() + ctx.config.shutdown_grace;
    // The accepts in flight complete (with an error) now that the listener is shut down:
    // wait for them, so that none is left in the ring when the runtime ends.
    while ctx.accepting.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while !ctx.conns.borrow().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for conn in ctx.conns.borrow().values() {
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }
    tracing::info!("stopped");
}
