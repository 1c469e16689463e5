//! `uringws load`: a WebSocket echo load generator over io_uring.
//!
//! `C` connections are spread over `T` OS threads, each running its own io_uring runtime.
//! Every connection keeps `K` messages in flight: its reader task parses the echoes, checks
//! each one byte for byte against what was sent, records the round-trip latency and asks the
//! writer task for one more message; the writer coalesces everything pending into one write.
//! Frames are built once per connection and only re-keyed before each send (no allocation per
//! message).
//!
//! The run has fixed phases: a warm-up (not counted), the measured window, a bounded drain of
//! the echoes still in flight, and the closing handshake. Every wait is bounded; a connection
//! that stalls is shut down (`shutdown(2)`, which completes its pending reads and writes)
//! rather than having an in-flight io_uring operation dropped.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::close::parse_close_payload;
use crate::proto::deflate::{
    accept_response, Agreed, Compression, Compressor, Inflater, Mode, Stream, EXTENSION,
};
use crate::proto::frame::{
    decode_header, encode_header, write_frame, write_frame_rsv, DecodeLimits, Decoded, OpCode,
    Role, MAX_HEADER_LEN,
};
use crate::proto::handshake::{check_response, client_key, write_client_request, HeadScanner};
use crate::proto::mask::apply_mask;
use crate::uring::{RingConfig, Runtime, TcpStream};
use tokio::sync::Notify;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the opening handshake may take once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the echoes still in flight when the measured window ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the server's close frame after ours (and for our last write).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest response head accepted in the handshake.
const MAX_RESPONSE_HEAD: usize = 8192;
/// The smallest read buffer per connection.
const MIN_READ_BUFFER: usize = 16 << 10;
/// The largest message size accepted on the command line.
const MAX_SIZE: usize = 64 << 20;

/// Arguments of `uringws load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Server URL: `ws://host[:port][/path]` (`wss://` is not supported).
    #[arg(long)]
    pub url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 20)]
    pub size: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Client threads, each with its own io_uring runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Warm-up seconds before the measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Send text messages (ASCII letters) instead of binary ones.
    #[arg(long)]
    pub text: bool,
    /// Print exactly one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --text, send JSON-like text (records of ids, names and words) instead of letters.
    #[arg(long)]
    pub json_payload: bool,
    /// Offer permessage-deflate: `off`, `shared` (no context takeover either way) or
    /// `dedicated` (context takeover). Every message is sent compressed (each one on its own,
    /// which any agreement allows) and every echo is inflated and checked.
    #[arg(long, default_value = "off")]
    pub compression: crate::proto::deflate::Compression,
}

/// Runs the load generator and prints its report. Fails, with a message naming the value and
/// the cause, when the arguments are invalid or the host does not resolve, when io_uring is
/// unavailable, or when the run counted errors (the report and each cause are printed first).
pub fn run(args: LoadArgs) -> Result<(), String> {
    check_args(&args)?;
    let target = parse_url(&args.url)?;
    let threads = args.threads.min(args.connections);
    let start = Instant::now();
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let measure_end = measure_start + Duration::from_secs_f64(args.duration);
    let sched = Schedule {
        measure_start,
        measure_end,
        hard_end: measure_end + DRAIN_TIMEOUT + CLOSE_TIMEOUT + Duration::from_millis(500),
    };
    let plan = Arc::new(Plan::new(&args, target, sched));
    let shared = Arc::new(Shared::default());

    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let conns = args.connections / threads + usize::from(i < args.connections % threads);
        let (plan, shared) = (plan.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name(format!("uringws-load-{i}"))
            .spawn(move || thread_main(plan, shared, conns))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(handle);
    }
    if args.warmup + args.duration > 3.0 {
        show_progress(&handles, &shared, start, sched);
    }

    let mut total = Stats::default();
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(stats)) => total.merge(stats),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => total.error("a load thread panicked".into()),
        }
    }
    if let Some(e) = failure {
        if total.connected == 0 {
            return Err(e.to_string());
        }
        eprintln!("uringws load: {e}");
        total.error("a load thread could not start".into());
    }
    report(&args, threads, &plan, &total);
    let errors = total.errors();
    if errors > 0 {
        return Err(format!(
            "the load run failed: {errors} error(s) (causes above), {} of {} connection(s) \
             opened, against {}",
            total.connected, args.connections, args.url
        ));
    }
    Ok(())
}

/// Refuses arguments that cannot make a run.
fn check_args(args: &LoadArgs) -> Result<(), String> {
    let bad = |flag: &str, value: &dyn std::fmt::Display, why: &str| {
        Err(format!("invalid {flag} {value}: {why}"))
    };
    if args.connections == 0 {
        return bad("--connections", &0, "it must be at least 1");
    }
    if args.threads == 0 {
        return bad("--threads", &0, "it must be at least 1");
    }
    if args.pipeline == 0 {
        return bad("--pipeline", &0, "it must be at least 1");
    }
    if args.size > MAX_SIZE {
        return bad("--size", &args.size, "it must be at most 64 MiB (67108864)");
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 1e6) {
        return bad(
            "--duration",
            &args.duration,
            "it must be more than 0 and at most 1000000 seconds",
        );
    }
    if !(args.warmup.is_finite() && (0.0..=1e6).contains(&args.warmup)) {
        return bad("--warmup", &args.warmup, "it must be 0 to 1000000 seconds");
    }
    Ok(())
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The resolved address.
    addr: SocketAddr,
    /// The `Host` header: the URL's authority.
    host: String,
    /// The request target: path and query.
    path: String,
}

/// Parses `ws://host[:port][/path][?query]` and resolves the host.
fn parse_url(url: &str) -> Result<Target, String> {
    let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("wss://") {
        return Err(format!(
            "{url}: wss:// (TLS) is not supported by the load generator; use ws://"
        ));
    }
    if !lower.starts_with("ws://") {
        return Err(format!("{url}: the URL must start with ws://"));
    }
    let rest = &url[5..];
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let path = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    if authority.is_empty() {
        return Err(format!("{url}: the URL has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{url}: user information in the URL is not supported"
        ));
    }
    // A port is present when the authority ends in `:digits` outside an IPv6 literal.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {with_port} resolved to nothing"))?;
    Ok(Target {
        addr,
        host: authority.to_owned(),
        path,
    })
}

/// The phases of the run, shared by every connection.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// The warm-up ends: echoes and latencies count from here.
    measure_start: Instant,
    /// The measured window ends: no new messages are sent.
    measure_end: Instant,
    /// Every connection is shut down by now, whatever the server does.
    hard_end: Instant,
}

/// What every connection sends, prepared once.
struct Plan {
    target: Target,
    sched: Schedule,
    size: usize,
    pipeline: usize,
    opcode: OpCode,
    /// The payload as sent (unmasked): what every echo must equal.
    payload: Vec<u8>,
    /// A whole frame, header and payload, masked with `key`.
    frame: Vec<u8>,
    /// Where the 4 key bytes sit in `frame`.
    key_at: usize,
    /// The key `frame` is masked with.
    key: [u8; 4],
    /// Read buffer per connection: room for two whole frames at least.
    read_buffer: usize,
    /// The permessage-deflate offer, if compression is asked for.
    offer: Option<String>,
    /// What `--compression` asked for.
    compression: Compression,
}

impl Plan {
    /// Builds the payload and the frame template for `args`.
    fn new(args: &LoadArgs, target: Target, sched: Schedule) -> Plan {
        const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let payload: Vec<u8> = if args.text && args.json_payload {
            json_like(args.size)
        } else if args.text {
            (0..args.size)
                .map(|i| LETTERS[(i * 7 + i / 52) % 52])
                .collect()
        } else {
            noise(args.size)
        };
        let opcode = if args.text {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let key = [0x5a, 0xa5, 0x3c, 0xc3];
        // Compressed on its own (no context), which is valid under any agreement.
        let (rsv, wire) = if args.compression.is_on() {
            let stream = Stream {
                no_context_takeover: true,
                window_bits: 15,
            };
            let mut z = Vec::new();
            match Compressor::new(stream, &args.compression).compress(&payload, &mut z) {
                true => (0x40, z),
                false => (0, payload.clone()),
            }
        } else {
            (0, payload.clone())
        };
        let mut frame = Vec::with_capacity(MAX_HEADER_LEN + wire.len());
        write_frame_rsv(&mut frame, true, rsv, opcode, Some(key), &wire);
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len =
            encode_header(&mut header, true, rsv, opcode, Some(key), wire.len() as u64);
        // The client's window is never limited: the offer leaves out client_max_window_bits.
        let offer = match args.compression.mode {
            Mode::Off => None,
            Mode::Shared => Some(format!(
                "{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
            )),
            Mode::Dedicated { .. } => Some(EXTENSION.to_owned()),
        };
        Plan {
            target,
            sched,
            size: args.size,
            pipeline: args.pipeline,
            opcode,
            payload,
            frame,
            key_at: header_len - 4,
            key,
            read_buffer: MIN_READ_BUFFER
                .max(2 * (args.size + args.size / 8 + MAX_HEADER_LEN + SLACK)),
            offer,
            compression: args.compression,
        }
    }
}

/// What a compressed echo may add to its payload's size: incompressible data grows a little
/// (a server with context takeover cannot fall back to sending it uncompressed).
const SLACK: usize = 1024;

/// `size` deterministic bytes that cover every value, not a repeating short pattern (and do
/// not compress).
pub fn noise(size: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// `size` bytes of JSON-like text: an array of small records, cut to length (the payload of
/// `--json-payload`, and of the compression benchmarks).
pub fn json_like(size: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "hello", "world", "uring", "socket", "frame", "chat", "room", "ok",
    ];
    let mut s = String::from("[");
    let mut i = 0usize;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"room\":\"{}\",\"text\":\"{} {} {}\",\"ts\":{}}},",
            i % 97,
            WORDS[i % 8],
            WORDS[(i * 3) % 8],
            WORDS[(i * 5 + 1) % 8],
            WORDS[(i * 7 + 2) % 8],
            1_700_000_000 + i * 13
        ));
        i += 1;
    }
    s.truncate(size);
    s.into_bytes()
}

/// Live counters for the progress line, shared by all threads.
#[derive(Default)]
struct Shared {
    /// Echoes received so far, warm-up included.
    echoed: AtomicU64,
    /// Connections with a completed handshake that are still open.
    open: AtomicUsize,
    /// Errors so far.
    errors: AtomicU64,
}

/// Prints a progress line on stderr every second until every thread has finished.
fn show_progress(
    handles: &[std::thread::JoinHandle<crate::Result<Stats>>],
    shared: &Shared,
    start: Instant,
    sched: Schedule,
) {
    let mut next = start + Duration::from_secs(1);
    let mut last = (start, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if now < next {
            continue;
        }
        next += Duration::from_secs(1);
        let echoed = shared.echoed.load(Ordering::Relaxed);
        let rate = (echoed - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, echoed);
        // The phase the past second was (mostly) in.
        let mid = now - Duration::from_millis(500);
        let phase = if mid < sched.measure_start {
            "warm-up"
        } else if mid < sched.measure_end {
            "measure"
        } else {
            "closing"
        };
        eprintln!(
            "[{:>4.0}s] {phase:<8} {rate:>10.0} msg/s  open {:>6}  errors {}",
            now.duration_since(start).as_secs_f64(),
            shared.open.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
    }
}

/// Round-trip latencies in nanoseconds, log-linear: 128 sub-buckets per power of two (under
/// 0.8% relative error), exact below 128 ns, covering the whole `u64` range (so no overflow
/// bucket is needed). 7,424 counters per thread; merged by adding.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

/// Sub-buckets per power of two, as bits.
const SUB_BITS: u32 = 7;
/// Sub-buckets per power of two.
const SUB: usize = 1 << SUB_BITS;
/// Buckets covering every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// The bucket of a value in nanoseconds.
    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        ((shift as usize + 1) << SUB_BITS) + ((v >> shift) as usize - SUB)
    }

    /// The lowest value of bucket `i` and the bucket's width.
    fn bucket(i: usize) -> (u64, u64) {
        if i < SUB {
            return (i as u64, 1);
        }
        let shift = (i >> SUB_BITS) - 1;
        (((SUB + (i & (SUB - 1))) as u64) << shift, 1 << shift)
    }

    /// Counts one latency.
    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    /// Adds another thread's counts.
    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile in microseconds (the middle of its bucket), if anything was recorded.
    fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bucket(i);
                let mid = low.saturating_add(width / 2).min(self.max);
                return Some(mid as f64 / 1e3);
            }
        }
        Some(self.max as f64 / 1e3)
    }

    /// The exact mean in microseconds, if anything was recorded.
    fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64 / 1e3)
    }
}

/// What one thread measured.
#[derive(Default)]
struct Stats {
    hist: Histogram,
    /// Echoes received in the measured window.
    messages: u64,
    /// Payload bytes of those echoes.
    bytes: u64,
    /// Bytes read from the sockets in the measured window (frames, as on the wire).
    wire_bytes: u64,
    /// Connections whose handshake completed.
    connected: u64,
    /// Errors by reason.
    reasons: BTreeMap<String, u64>,
}

impl Stats {
    /// Counts one error.
    fn error(&mut self, reason: String) {
        *self.reasons.entry(reason).or_default() += 1;
    }

    /// All errors counted.
    fn errors(&self) -> u64 {
        self.reasons.values().sum()
    }

    /// Adds another thread's results.
    fn merge(&mut self, other: Stats) {
        self.hist.merge(&other.hist);
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.wire_bytes += other.wire_bytes;
        self.connected += other.connected;
        for (reason, n) in other.reasons {
            *self.reasons.entry(reason).or_default() += n;
        }
    }
}

/// One thread: its own io_uring runtime running `conns` connections to completion.
fn thread_main(plan: Arc<Plan>, shared: Arc<Shared>, conns: usize) -> crate::Result<Stats> {
    let rt = Runtime::new(RingConfig {
        entries: 1024,
        buffers: 64,
        buffer_size: 64 << 10,
    })
    .map_err(|e| crate::error::io_uring_unavailable(&e))?;
    let stats = rt.block_on(async move {
        let stats = Rc::new(RefCell::new(Stats::default()));
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                tokio::task::spawn_local(connection(plan.clone(), stats.clone(), shared.clone()))
            })
            .collect();
        for task in tasks {
            if task.await.is_err() {
                stats
                    .borrow_mut()
                    .error("a connection task panicked".into());
            }
        }
        stats.take()
    });
    Ok(stats)
}

/// A connection's state, shared by its reader, writer and controller tasks.
struct Conn {
    stream: TcpStream,
    st: RefCell<State>,
    /// Wakes the writer when there is something to send (or it must stop).
    wake_writer: Notify,
    /// Wakes the controller when the state changed.
    progress: Notify,
}

/// The mutable part of [`Conn`].
struct State {
    /// The handshake completed.
    open: bool,
    /// Each echo asks for one more message (until the measured window ends).
    sending: bool,
    /// Messages the writer is to send.
    to_send: usize,
    /// Send times of the messages in flight, oldest first.
    in_flight: VecDeque<Instant>,
    /// Payloads of pings to answer.
    pongs: Vec<Vec<u8>>,
    /// The writer is to send a close frame after what is pending.
    close_requested: bool,
    /// The close frame was handed to the kernel (or is being written).
    close_sent: bool,
    /// The reader has finished.
    reader_done: bool,
    /// The writer has finished (true while there is none).
    writer_done: bool,
    /// The connection is being torn down: stop writing, and errors from now on are ours.
    abort: bool,
    /// The first thing that went wrong on the connection.
    error: Option<String>,
}

impl State {
    /// The state before the handshake.
    fn new(pipeline: usize) -> State {
        State {
            open: false,
            sending: false,
            to_send: 0,
            in_flight: VecDeque::with_capacity(pipeline),
            pongs: Vec::new(),
            close_requested: false,
            close_sent: false,
            reader_done: false,
            writer_done: true,
            abort: false,
            error: None,
        }
    }
}

impl Conn {
    /// A connection over a connected `stream`.
    fn new(stream: TcpStream, pipeline: usize) -> Conn {
        Conn {
            stream,
            st: RefCell::new(State::new(pipeline)),
            wake_writer: Notify::new(),
            progress: Notify::new(),
        }
    }

    /// Records the connection's error (the first one only) without ending it.
    fn note_error(&self, why: String) {
        let mut st = self.st.borrow_mut();
        if st.error.is_none() && !st.abort {
            st.error = Some(why);
        }
    }

    /// Records an error and ends the connection: the writer stops and `shutdown(2)` completes
    /// the pending read and write.
    fn fail(&self, why: String) {
        self.note_error(why);
        self.abort();
    }

    /// Ends the connection without recording an error.
    fn abort(&self) {
        self.st.borrow_mut().abort = true;
        let _ = self.stream.shutdown(Shutdown::Both);
        self.wake_writer.notify_one();
        self.progress.notify_waiters();
    }

    /// Waits until `cond` holds (true) or `deadline` passes (false).
    async fn wait_for(&self, deadline: Instant, cond: impl Fn(&State) -> bool) -> bool {
        loop {
            // Created before the check: a `notify_waiters` after it is not missed.
            let notified = self.progress.notified();
            if cond(&self.st.borrow()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }
}

/// One connection, from connect to close. Its error (if any) is counted in `stats`.
async fn connection(plan: Arc<Plan>, stats: Rc<RefCell<Stats>>, shared: Arc<Shared>) {
    let addr = plan.target.addr;
    let deadline = (Instant::now() + CONNECT_TIMEOUT).min(plan.sched.measure_end);
    // A connect dropped at the deadline is cancelled by the driver, which keeps its address
    // until the completion.
    let connected = tokio::time::timeout_at(deadline.into(), TcpStream::connect(addr)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            stats.borrow_mut().error(format!("connect to {addr}: {e}"));
            return;
        }
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            stats
                .borrow_mut()
                .error(format!("connect to {addr}: timed out"));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let conn = Rc::new(Conn::new(stream, plan.pipeline));
    let controller = tokio::task::spawn_local(controller(conn.clone(), plan.sched));

    let mut buf = vec![0u8; plan.read_buffer];
    let mut writer_task = None;
    match handshake(&conn, &plan, &mut buf).await {
        Ok((start, end, agreed)) => {
            {
                let mut st = conn.st.borrow_mut();
                st.open = true;
                st.sending = Instant::now() < plan.sched.measure_end && !st.abort;
                st.to_send = if st.sending { plan.pipeline } else { 0 };
                st.writer_done = false;
            }
            stats.borrow_mut().connected += 1;
            shared.open.fetch_add(1, Ordering::Relaxed);
            conn.progress.notify_waiters();
            writer_task = Some(tokio::task::spawn_local(writer(conn.clone(), plan.clone())));
            let inflater = agreed.map(|a| Inflater::new(a.receive));
            let input = Input { buf, start, end };
            reader(&conn, &plan, &stats, &shared, input, inflater).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        Err(why) => conn.fail(why),
    }
    conn.st.borrow_mut().reader_done = true;
    conn.progress.notify_waiters();
    if let Some(task) = writer_task {
        let _ = task.await;
    }
    let _ = controller.await;
    let error = conn.st.borrow_mut().error.take();
    if let Some(e) = error {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        stats.borrow_mut().error(e);
    }
}

/// Sends the upgrade request and validates the `101`. Returns the bytes after the response
/// head in `buf` as `start..end` (frames the server sent right behind it) and the compression
/// agreed.
async fn handshake(
    conn: &Conn,
    plan: &Plan,
    buf: &mut Vec<u8>,
) -> Result<(usize, usize, Option<Agreed>), String> {
    let key = client_key(rand::random());
    let mut request = Vec::with_capacity(256);
    let offer: Vec<(&str, &str)> = plan
        .offer
        .iter()
        .map(|o| ("Sec-WebSocket-Extensions", o.as_str()))
        .collect();
    write_client_request(
        &plan.target.host,
        &plan.target.path,
        &key,
        &[],
        &offer,
        &mut request,
    )
    .map_err(|e| format!("handshake request: {e}"))?;
    let (res, _) = conn.stream.write_all(request).await;
    res.map_err(|e| format!("handshake write: {e}"))?;
    let mut scanner = HeadScanner::new(MAX_RESPONSE_HEAD);
    let mut end = 0;
    loop {
        let (res, back) = conn.stream.read_at(std::mem::take(buf), end).await;
        *buf = back;
        match res {
            Ok(0) => return Err("the server closed the connection during the handshake".into()),
            Ok(n) => end += n,
            Err(e) => return Err(format!("handshake read: {e}")),
        }
        match scanner.scan(&buf[..end]) {
            Ok(Some(len)) => {
                let names: &[&str] = if plan.offer.is_some() {
                    &[EXTENSION]
                } else {
                    &[]
                };
                let response =
                    check_response(&buf[..len], &key, &[], names).map_err(|e| e.to_string())?;
                let agreed = accept_response(response.extensions(), &plan.compression)
                    .map_err(|e| e.to_string())?;
                if plan.offer.is_some() && agreed.is_none() {
                    return Err("the server declined permessage-deflate".into());
                }
                if agreed.is_some_and(|a| a.send.window_bits < 15) {
                    return Err(
                        "the server limited the client's window, which was not offered".into(),
                    );
                }
                return Ok((len, end, agreed));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("handshake response: {e}")),
        }
    }
}

/// Drives a connection through the phases of the run and bounds every wait: the handshake,
/// the measured window, the drain, the closing handshake. It shuts the socket down when the
/// server does not keep up, which completes any pending read or write.
async fn controller(conn: Rc<Conn>, sched: Schedule) {
    let handshake_deadline = (Instant::now() + HANDSHAKE_TIMEOUT).min(sched.hard_end);
    if !conn
        .wait_for(handshake_deadline, |st| st.open || st.reader_done)
        .await
    {
        conn.fail("handshake timed out".into());
        return;
    }
    'run: {
        if conn.wait_for(sched.measure_end, |st| st.reader_done).await {
            break 'run;
        }
        conn.st.borrow_mut().sending = false;
        let drain_deadline = sched.measure_end + DRAIN_TIMEOUT;
        if !conn
            .wait_for(drain_deadline, |st| {
                st.in_flight.is_empty() || st.reader_done
            })
            .await
        {
            let missing = conn.st.borrow().in_flight.len();
            conn.note_error(format!(
                "{missing} echo(es) still missing {DRAIN_TIMEOUT:?} after the run"
            ));
        }
        if conn.st.borrow().reader_done {
            break 'run;
        }
        conn.st.borrow_mut().close_requested = true;
        conn.wake_writer.notify_one();
        let close_deadline = (Instant::now() + CLOSE_TIMEOUT).min(sched.hard_end);
        if !conn.wait_for(close_deadline, |st| st.reader_done).await {
            conn.fail(format!(
                "no close frame from the server within {CLOSE_TIMEOUT:?}"
            ));
        }
    }
    // The reader is done; give the writer (e.g. our answer to the server's close) a moment.
    let deadline = (Instant::now() + CLOSE_TIMEOUT).min(sched.hard_end);
    if !conn.wait_for(deadline, |st| st.writer_done).await {
        conn.abort();
    }
}

/// A fast, non-cryptographic source of masking keys (xorshift64*). Masking only keeps
/// intermediaries from interpreting the payload; a load generator needs no strong keys.
struct KeyGen(u64);

impl KeyGen {
    /// A generator seeded from the OS.
    fn new() -> KeyGen {
        KeyGen(rand::random::<u64>() | 1)
    }

    /// The next masking key.
    fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32).to_ne_bytes()
    }
}

/// The writer task: one write in flight, everything pending coalesced into one reused buffer.
/// Each data frame is re-keyed in place: its payload is XORed with `old ^ new` and the new key
/// written into the header.
async fn writer(conn: Rc<Conn>, plan: Arc<Plan>) {
    let mut framer = Framer {
        frame: plan.frame.clone(),
        key_at: plan.key_at,
        key: plan.key,
        keys: KeyGen::new(),
    };
    let mut out: Vec<u8> = Vec::with_capacity(plan.pipeline.min(64) * plan.frame.len());
    loop {
        out.clear();
        let next = framer.batch(&mut conn.st.borrow_mut(), &mut out);
        match next {
            Batch::Stop => break,
            Batch::Idle => conn.wake_writer.notified().await,
            Batch::Write => {
                let (res, buf) = conn.stream.write_all(out).await;
                out = buf;
                if let Err(e) = res {
                    conn.fail(format!("write: {e}"));
                    break;
                }
            }
            Batch::Frame => {
                // One data frame and nothing else: written from where it was masked, which
                // spares copying it (a tenth of the generator's CPU at 64 KiB).
                let frame = std::mem::take(&mut framer.frame);
                let (res, frame) = conn.stream.write_all(frame).await;
                framer.frame = frame;
                if let Err(e) = res {
                    conn.fail(format!("write: {e}"));
                    break;
                }
            }
        }
    }
    conn.st.borrow_mut().writer_done = true;
    conn.progress.notify_waiters();
}

/// What the writer does next.
enum Batch {
    /// The connection is closed or aborted.
    Stop,
    /// Nothing to send: wait to be woken.
    Idle,
    /// Write the buffer.
    Write,
    /// Write the framer's frame (the buffer is empty).
    Frame,
}

/// A connection's prepared data frame and its masking keys.
struct Framer {
    /// Header and payload, masked with `key`.
    frame: Vec<u8>,
    /// Where the 4 key bytes sit in `frame`.
    key_at: usize,
    /// The key `frame` is masked with now.
    key: [u8; 4],
    keys: KeyGen,
}

impl Framer {
    /// Appends everything pending to `out`: pongs, the data frames asked for (recording their
    /// send time), then the close frame if one was requested. A lone data frame is not
    /// appended: `Batch::Frame` says to write `self.frame` itself.
    fn batch(&mut self, st: &mut State, out: &mut Vec<u8>) -> Batch {
        if st.abort || st.close_sent {
            return Batch::Stop;
        }
        for payload in std::mem::take(&mut st.pongs) {
            let key = self.keys.next_key();
            write_frame(out, true, OpCode::Pong, Some(key), &payload);
        }
        let n = std::mem::take(&mut st.to_send);
        if n == 1 && out.is_empty() && !st.close_requested {
            self.rekey();
            st.in_flight.push_back(Instant::now());
            return Batch::Frame;
        }
        if n > 0 {
            let now = Instant::now();
            for _ in 0..n {
                self.rekey();
                out.extend_from_slice(&self.frame);
                st.in_flight.push_back(now);
            }
        }
        if st.close_requested {
            // Close code 1000, no reason.
            let key = self.keys.next_key();
            write_frame(out, true, OpCode::Close, Some(key), &1000u16.to_be_bytes());
            st.close_sent = true;
        }
        if out.is_empty() {
            Batch::Idle
        } else {
            Batch::Write
        }
    }

    /// Masks the frame with a fresh key in place: the payload is XORed with `old ^ new` and
    /// the new key written into the header.
    fn rekey(&mut self) {
        let new = self.keys.next_key();
        let delta = std::array::from_fn(|i| self.key[i] ^ new[i]);
        apply_mask(&mut self.frame[self.key_at + 4..], delta, 0);
        self.frame[self.key_at..self.key_at + 4].copy_from_slice(&new);
        self.key = new;
    }
}

/// The reader: parses the server's frames where they land in `buf`, checks every echo against
/// the payload sent, records latencies, and asks the writer for one more message per echo.
/// Returns when the connection ends (close received, error, EOF).
async fn reader(
    conn: &Conn,
    plan: &Plan,
    stats: &RefCell<Stats>,
    shared: &Shared,
    input: Input,
    mut inflater: Option<Inflater>,
) {
    let Input {
        mut buf,
        mut start,
        mut end,
    } = input;
    let limits = DecodeLimits {
        role: Role::Client,
        allowed_rsv: if inflater.is_some() { 0x40 } else { 0 },
        // Echoes are never much larger than what was sent; this bounds the buffer.
        max_frame: (plan.size + plan.size / 8 + SLACK).max(125) as u64,
    };
    // A compressed echo while it arrives: its opcode and its inflated bytes so far.
    let mut inflated: Option<(OpCode, Vec<u8>)> = None;
    let mut in_window = false;
    let sched = &plan.sched;
    // The message being reassembled: its opcode, its bytes so far, whether it matches so far.
    let mut current: Option<(OpCode, usize, bool)> = None;
    let mut now = Instant::now();
    loop {
        let mut echoed = 0u64;
        let mut wake = false;
        {
            let mut st = conn.st.borrow_mut();
            let mut stats = stats.borrow_mut();
            loop {
                let h = match decode_header(&buf[start..end], &limits) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Header(h)) => h,
                    Err(e) => {
                        drop(st);
                        conn.fail(format!("protocol error from the server: {e}"));
                        return;
                    }
                };
                let total = h.header_len + h.payload_len as usize;
                if end - start < total {
                    break;
                }
                let payload = &buf[start + h.header_len..start + total];
                start += total;
                let compressed =
                    h.rsv & 0x40 != 0 || (inflated.is_some() && h.opcode == OpCode::Continuation);
                let mut whole = None;
                if let (true, Some(inf)) = (compressed, inflater.as_mut()) {
                    if h.opcode != OpCode::Continuation && inflated.is_some() {
                        drop(st);
                        conn.fail("protocol error from the server: bad fragmentation".into());
                        return;
                    }
                    let (_, out) = inflated.get_or_insert_with(|| (h.opcode, Vec::new()));
                    if let Err(e) = inf.inflate(payload, h.fin, out, plan.size) {
                        drop(st);
                        conn.fail(format!("compressed echo: {e}"));
                        return;
                    }
                    if !h.fin {
                        continue;
                    }
                    if inf.per_message() {
                        inf.reset();
                    }
                    whole = inflated.take();
                }
                let (opcode, payload, fin) = match &whole {
                    Some((op, v)) => (*op, &v[..], true),
                    None => (h.opcode, payload, h.fin),
                };
                match opcode {
                    OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                        let (op, off, ok) = match (opcode, current.take()) {
                            (OpCode::Continuation, Some(m)) => m,
                            (OpCode::Continuation, None) | (_, Some(_)) => {
                                drop(st);
                                conn.fail(
                                    "protocol error from the server: bad fragmentation".into(),
                                );
                                return;
                            }
                            (op, None) => (op, 0, op == plan.opcode),
                        };
                        let ok = ok && plan.payload.get(off..off + payload.len()) == Some(payload);
                        let off = off + payload.len();
                        if !fin {
                            current = Some((op, off, ok));
                            continue;
                        }
                        let Some(sent) = st.in_flight.pop_front() else {
                            stats.error("echo received with no message in flight".into());
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if !(ok && off == plan.size) {
                            stats.error("echo differs from the message sent".into());
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        if now >= sched.measure_start && now < sched.measure_end {
                            stats.messages += 1;
                            stats.bytes += off as u64;
                            if sent >= sched.measure_start {
                                stats.hist.record(now - sent);
                            }
                        }
                        echoed += 1;
                        if st.sending {
                            st.to_send += 1;
                            wake = true;
                        }
                    }
                    OpCode::Ping => {
                        st.pongs.push(payload.to_vec());
                        wake = true;
                    }
                    OpCode::Pong => {}
                    OpCode::Close => {
                        if !st.close_requested {
                            let code = match parse_close_payload(payload) {
                                Ok(Some(f)) if f.reason.is_empty() => f.code.0.to_string(),
                                Ok(Some(f)) => format!("{} ({})", f.code.0, f.reason),
                                Ok(None) => "no status".into(),
                                Err(e) => format!("an invalid close frame: {e}"),
                            };
                            // Answer it; the controller bounds how long that may take.
                            st.close_requested = true;
                            st.sending = false;
                            if st.error.is_none() && !st.abort {
                                st.error = Some(format!(
                                    "the server closed the connection early with {code}"
                                ));
                            }
                            drop(st);
                            conn.wake_writer.notify_one();
                        }
                        return;
                    }
                }
            }
            if echoed > 0 && !st.sending {
                // The controller waits for the drain.
                conn.progress.notify_waiters();
            }
        }
        if echoed > 0 {
            shared.echoed.fetch_add(echoed, Ordering::Relaxed);
        }
        if wake {
            conn.wake_writer.notify_one();
        }
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        // `max_frame` keeps every frame within half the buffer, so there is always room.
        let (res, back) = conn.stream.read_at(buf, end).await;
        buf = back;
        now = Instant::now();
        match res {
            Ok(0) => {
                conn.fail("the server closed the connection without a close frame".into());
                return;
            }
            Ok(n) => {
                end += n;
                let was = std::mem::replace(
                    &mut in_window,
                    now >= sched.measure_start && now < sched.measure_end,
                );
                if in_window && was {
                    stats.borrow_mut().wire_bytes += n as u64;
                }
            }
            Err(e) => {
                conn.fail(format!("read: {e}"));
                return;
            }
        }
    }
}

/// The bytes read with the handshake: the frames the server sent right behind its response
/// lie in `buf[start..end]`.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Prints the report: text lines, or one JSON object with `--json`. Error reasons go to
/// stderr.
fn report(args: &LoadArgs, threads: usize, plan: &Plan, total: &Stats) {
    let secs = args.duration;
    let rate = total.messages as f64 / secs;
    let mb = total.bytes as f64 / secs / 1e6;
    let h = &total.hist;
    let (p50, p99, p999) = (
        h.quantile_us(0.5),
        h.quantile_us(0.99),
        h.quantile_us(0.999),
    );
    let max = (h.count > 0).then(|| h.max as f64 / 1e3);
    let errors = total.errors();
    for (reason, n) in &total.reasons {
        eprintln!("uringws load: {n} x {reason}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let num = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "{{\"connections\":{},\"size\":{},\"pipeline\":{},\"threads\":{},\"text\":{},\
             \"duration_s\":{},\"connected\":{},\"messages\":{},\"msgs_per_sec\":{:.1},\
             \"mb_per_sec\":{:.3},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\
             \"mean_us\":{},\"errors\":{},\"wire_bytes_per_msg\":{},\"compression\":\"{:?}\"}}",
            args.connections,
            args.size,
            args.pipeline,
            threads,
            args.text,
            secs,
            total.connected,
            total.messages,
            rate,
            mb,
            num(p50),
            num(p99),
            num(p999),
            num(max),
            num(h.mean_us()),
            errors,
            num((total.messages > 0).then(|| total.wire_bytes as f64 / total.messages as f64)),
            args.compression.mode,
        );
    } else {
        let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} us"));
        let kind = if args.text { "text" } else { "binary" };
        let (url, addr) = (&args.url, plan.target.addr);
        let (conns, connected, k) = (args.connections, total.connected, args.pipeline);
        let (size, warmup, msgs) = (args.size, args.warmup, total.messages);
        let lines = [
            format!("target       {url} ({addr})"),
            format!(
                "load         {conns} connections ({connected} connected) x pipeline {k} \
                 on {threads} thread(s), {size}-byte {kind} messages"
            ),
            format!("window       {secs} s measured after {warmup} s of warm-up"),
            format!("throughput   {msgs} messages: {rate:.0} msg/s, {mb:.2} MB/s of payload"),
            format!(
                "latency      p50 {}, p99 {}, p99.9 {}, max {}, mean {}",
                us(p50),
                us(p99),
                us(p999),
                us(max),
                us(h.mean_us())
            ),
            format!("errors       {errors}"),
        ];
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:9301/chat?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9301".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9301", "/chat?x=1")
        );
        let t = parse_url("WS://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = parse_url("ws://[::1]:9001?q").unwrap();
        assert_eq!(
            (t.addr.port(), t.host.as_str(), t.path.as_str()),
            (9001, "[::1]:9001", "/?q")
        );
        assert!(parse_url("wss://127.0.0.1/")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_url("http://127.0.0.1/").is_err());
        assert!(parse_url("ws:///x").is_err());
    }

    #[test]
    fn histogram_buckets_round_trip() {
        for v in (0..5000u64).chain([1 << 20, 123_456_789, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i < BUCKETS);
            let (low, width) = Histogram::bucket(i);
            assert!(
                low <= v && v - low < width,
                "{v}: bucket {i} = {low}+{width}"
            );
        }
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_us(0.5).unwrap();
        assert!((p50 - 500.0).abs() < 5.0, "{p50}");
        let p999 = h.quantile_us(0.999).unwrap();
        assert!((p999 - 999.0).abs() < 8.0, "{p999}");
    }

    #[test]
    fn rekeying_keeps_the_payload() {
        let args = LoadArgs {
            url: String::new(),
            connections: 1,
            size: 300,
            duration: 1.0,
            pipeline: 1,
            threads: 1,
            warmup: 0.0,
            text: true,
            json: false,
            json_payload: false,
            compression: Compression::OFF,
        };
        let now = Instant::now();
        let sched = Schedule {
            measure_start: now,
            measure_end: now,
            hard_end: now,
        };
        let target = parse_url("ws://127.0.0.1:1/").unwrap();
        let plan = Plan::new(&args, target, sched);
        assert!(std::str::from_utf8(&plan.payload).is_ok());
        let mut framer = Framer {
            frame: plan.frame.clone(),
            key_at: plan.key_at,
            key: plan.key,
            keys: KeyGen::new(),
        };
        let mut st = State::new(1);
        st.to_send = 3;
        st.close_requested = true;
        let mut out = Vec::new();
        assert!(matches!(framer.batch(&mut st, &mut out), Batch::Write));
        assert_eq!(
            (st.to_send, st.in_flight.len(), st.close_sent),
            (0, 3, true)
        );
        assert!(matches!(framer.batch(&mut st, &mut out), Batch::Stop));
        let limits = DecodeLimits {
            role: Role::Server,
            allowed_rsv: 0,
            max_frame: 1 << 20,
        };
        let mut at = 0;
        let mut seen = Vec::new();
        while at < out.len() {
            let Ok(Decoded::Header(h)) = decode_header(&out[at..], &limits) else {
                panic!("bad frame at {at}")
            };
            let body = at + h.header_len..at + h.header_len + h.payload_len as usize;
            let mut payload = out[body.clone()].to_vec();
            apply_mask(&mut payload, h.mask.unwrap(), 0);
            seen.push((h.opcode, h.mask, payload));
            at = body.end;
        }
        assert_eq!(seen.len(), 4);
        for (op, _, payload) in &seen[..3] {
            assert_eq!((*op, payload), (OpCode::Text, &plan.payload));
        }
        assert_ne!(seen[0].1, seen[1].1);
        assert_eq!(
            (seen[3].0, &seen[3].2[..]),
            (OpCode::Close, &[0x03, 0xe8][..])
        );
    }
}
