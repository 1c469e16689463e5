//! The io_uring transport, built on tokio-uring: the [`Server`] builder and its [`Config`],
//! one thread per core each with its own ring, `SO_REUSEPORT` listener and registered read
//! buffers, and graceful shutdown.
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

pub(crate) mod buffers;
mod conn;
pub(crate) mod websocket;

pub use websocket::{ConnectionInfo, Receiver, Sender, WebSocket};

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
use tokio_uring::net::TcpListener;

use crate::error::{io_uring_unavailable, Error, Result};
use crate::proto::close::CloseCode;
use crate::proto::handshake::{Request, UpgradeRequest};
use crate::proto::message::{DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE};

use buffers::BufferPool;
use websocket::{Conn, Phase};

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
    /// Size of each connection's read buffer. A single-frame message that fits in it is handed
    /// out without a copy; larger ones are reassembled. A connection holds its buffer only
    /// while bytes are pending, not while idle. Default: 64 KiB + 64 bytes, so that a 64 KiB
    /// message and its header fit (minimum 256 bytes).
    pub read_buffer_size: usize,
    /// Read buffers registered with each thread's ring (at most 1024; fewer when
    /// RLIMIT_MEMLOCK refuses them); connections beyond them use heap buffers. Default: 128.
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
    /// Accept operations kept in flight per thread. Default: 4.
    pub accepts_in_flight: usize,
}

impl Config {
    pub(crate) fn timeouts(&self) -> websocket::Timeouts {
        websocket::Timeouts {
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
            accepts_in_flight: 4,
        }
    }
}

/// An HTTP response for a plain (non-WebSocket) request or a refused upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Extra headers (`Content-Type`, `Content-Length` and `Connection` are written by the
    /// server).
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

    /// Adds a header. Names must be tokens and values free of control characters; invalid
    /// ones are dropped.
    pub fn header(mut self, name: &str, value: &str) -> Self {
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
}

impl Server {
    /// A server for `addr` with the default [`Config`]. The address is resolved here; the
    /// listeners are bound by [`Server::start`] (port 0 picks a free port).
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Server> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::Config("the address resolved to nothing".into()))?;
        Ok(Server {
            addr,
            config: Config::default(),
            http: None,
            check: None,
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

    /// Sets the number of read buffers registered per thread (default 128, at most 1024).
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

    /// Sets the shutdown grace period (default 10 s).
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.config.shutdown_grace = t;
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

    /// Starts the server and blocks until it shuts down (see [`RunningServer::join`]).
    pub fn serve<H, F>(self, handler: H) -> Result<()>
    where
        H: Fn(WebSocket) -> F + Clone + Send + 'static,
        F: Future<Output = Result<()>> + 'static,
    {
        self.start(handler)?.join()
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
        crate::error::check_kernel()?;
        let mut config = self.config;
        if config.threads == 0 {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        config.read_buffer_size = config.read_buffer_size.max(256);
        config.registered_buffers = config.registered_buffers.min(1024);
        config.max_handshake_size = config.max_handshake_size.min(config.read_buffer_size);
        config.accepts_in_flight = config.accepts_in_flight.max(1);
        let config = Arc::new(config);
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            open: AtomicUsize::new(0),
            stop: stop_tx,
        });
        let mut threads = Vec::new();
        let mut addr = self.addr;
        for i in 0..config.threads {
            let (ready_tx, ready_rx) = mpsc::channel();
            let setup = ThreadSetup {
                addr,
                config: config.clone(),
                shared: shared.clone(),
                stop: stop_rx.clone(),
                http: self.http.clone(),
                check: self.check.clone(),
            };
            let handler = handler.clone();
            let thread = std::thread::Builder::new()
                .name(format!("uringws-{i}"))
                .spawn(move || run_thread(setup, handler, ready_tx))?;
            threads.push(thread);
            match ready_rx.recv() {
                Ok(Ok(bound)) => addr = bound,
                Ok(Err(e)) => {
                    let _ = shared.stop.send(true);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
                Err(_) => {
                    let _ = shared.stop.send(true);
                    return Err(Error::Config("a server thread died at start".into()));
                }
            }
        }
        Ok(RunningServer {
            addr,
            shared,
            threads,
        })
    }
}

/// State shared by all threads of one server.
struct Shared {
    open: AtomicUsize,
    stop: watch::Sender<bool>,
}

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
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

    /// The number of open connections.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Waits for every thread to finish (after a shutdown).
    pub fn join(self) -> Result<()> {
        for t in self.threads {
            t.join()
                .map_err(|_| Error::Config("a server thread panicked".into()))?;
        }
        Ok(())
    }

    /// Shuts down gracefully and waits: see [`ShutdownHandle::shutdown`].
    pub fn shutdown(self) -> Result<()> {
        self.shutdown_handle().shutdown();
        self.join()
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
    addr: SocketAddr,
    config: Arc<Config>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    http: Option<Arc<HttpFn>>,
    check: Option<Arc<CheckFn>>,
}

/// What one runtime thread shares between its connections.
pub(crate) struct ThreadCtx {
    pub(crate) config: Arc<Config>,
    pub(crate) http: Option<Arc<HttpFn>>,
    pub(crate) check: Option<Arc<CheckFn>>,
    pub(crate) handler: Box<Handler>,
    pub(crate) buffers: Rc<BufferPool>,
    shared: Arc<Shared>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    next_id: Cell<u64>,
    stopping: Cell<bool>,
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

/// A tokio-uring runtime for this thread, with IORING_SETUP_COOP_TASKRUN where the kernel has
/// it (5.19+): completions then run when the thread next enters the kernel instead of
/// interrupting it, which cut server CPU per message by a quarter in scripts/compare.sh's
/// cases. Older kernels refuse the flag (EINVAL) and get a plain ring.
pub fn runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut builder = tokio_uring::builder();
    builder.entries(1024);
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun();
    builder.uring_builder(&ring);
    match tokio_uring::Runtime::new(&builder) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            builder.uring_builder(&tokio_uring::uring_builder());
            tokio_uring::Runtime::new(&builder)
        }
        other => other,
    }
}

fn run_thread<H, F>(setup: ThreadSetup, handler: H, ready: mpsc::Sender<Result<SocketAddr>>)
where
    H: Fn(WebSocket) -> F + Clone + Send + 'static,
    F: Future<Output = Result<()>> + 'static,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(io_uring_unavailable(&e)));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(setup.addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}: {e}", setup.addr),
                ))));
                return;
            }
        };
        let bound = listener.local_addr().unwrap_or(setup.addr);
        let ctx = Rc::new(ThreadCtx {
            buffers: Rc::new(BufferPool::new(
                setup.config.registered_buffers,
                setup.config.read_buffer_size,
            )),
            config: setup.config,
            http: setup.http,
            check: setup.check,
            handler: Box::new(move |ws| Box::pin(handler(ws))),
            shared: setup.shared,
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            stopping: Cell::new(false),
        });
        let _ = ready.send(Ok(bound));
        tracing::info!(addr = %bound, "listening");
        let listener = Rc::new(listener);
        for _ in 0..ctx.config.accepts_in_flight {
            tokio_uring::spawn(accept_loop(ctx.clone(), listener.clone()));
        }
        let mut stop = setup.stop;
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        graceful_stop(&ctx, &listener).await;
    });
}

async fn accept_loop(ctx: Rc<ThreadCtx>, listener: Rc<TcpListener>) {
    loop {
        let accepted = listener.accept().await;
        if ctx.stopping.get() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let open = ctx.shared.open.fetch_add(1, Ordering::Relaxed);
                if open >= ctx.config.max_connections {
                    ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "connection limit reached; answering 503");
                    tokio_uring::spawn(async move {
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
                tokio_uring::spawn(conn::serve(ctx.clone(), stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of descriptors or memory: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Stops accepting, closes every connection with 1001, and waits up to the grace period.
async fn graceful_stop(ctx: &ThreadCtx, listener: &TcpListener) {
    ctx.stopping.set(true);
    // Wake the pending accepts: shutting a listening socket down makes accept fail.
    // SAFETY: plain syscall on a descriptor the listener owns for the whole call.
    unsafe {
        libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(listener), libc::SHUT_RDWR);
    }
    let conns: Vec<Rc<Conn>> = ctx.conns.borrow().values().cloned().collect();
    for conn in &conns {
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
    while !ctx.conns.borrow().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for conn in ctx.conns.borrow().values() {
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }
    tracing::info!("stopped");
}
