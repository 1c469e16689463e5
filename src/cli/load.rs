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
//!
//! `--fanout` measures a publish/subscribe server (`uringws broadcast`) instead: the
//! connections are subscribers that only read, and one more connection, the publisher, sends
//! numbered text messages with at most `--pipeline` of them not yet received by every
//! subscriber. Every subscriber checks each delivery (size, content, and that its sequence
//! number follows the last one); the report counts deliveries. See `Fanout`.

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
use tokio::sync::{Notify, Semaphore};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the opening handshake may take once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the echoes still in flight when the measured window ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the server's close frame after ours (and for our last write).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Fan-out: what each subscriber of a thread adds to the close timeout. Thousands of
/// subscribers close at the same moment, and a server thread takes tens of microseconds per
/// closing handshake.
const CLOSE_PER_SUBSCRIBER: Duration = Duration::from_micros(200);
/// The largest response head accepted in the handshake.
const MAX_RESPONSE_HEAD: usize = 8192;
/// The smallest read buffer per connection.
const MIN_READ_BUFFER: usize = 16 << 10;
/// The largest message size accepted on the command line.
const MAX_SIZE: usize = 64 << 20;
/// Fan-out: subscribers of one thread that may be connecting at once. Thousands of
/// simultaneous connects would overflow a listen backlog (a dropped SYN is retried only after
/// a second); and a uringws server's multishot accept ends when 8 accepted connections queue
/// up before its accept loop runs (its driver stops a multishot operation there), after which
/// the loop logs "accept failed" and backs off 50 ms: a few at a time is faster than a storm.
const FANOUT_CONNECTING: usize = 6;
/// Fan-out: the hexadecimal digits of the sequence number that opens every payload.
const SEQ_DIGITS: usize = 16;
/// Fan-out: how long the publisher waits for the oldest message in flight to reach every
/// subscriber before it gives up (an error).
const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Fan-out: how often a join message is published while some subscribers have had none.
const JOIN_INTERVAL: Duration = Duration::from_millis(20);
/// Fan-out: how often the publisher looks at the subscribers' progress while they join.
const JOIN_POLL: Duration = Duration::from_millis(2);

/// Arguments of `uringws load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Server URL: `ws://host[:port][/path]`, or `wss://` (TLS, trusting webpki's roots and
    /// --ca).
    #[arg(long)]
    pub url: String,
    /// With wss://, also trust the certificates of this PEM file (a test CA, or the server's
    /// self-signed certificate).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
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
    /// Fan-out mode, against a publish/subscribe server such as `uringws broadcast`: the
    /// connections only read (subscribers of the URL's path), and one more connection
    /// publishes --size-byte text messages (at least 16 bytes: a sequence number opens each),
    /// at most --pipeline of them not yet received by every subscriber. `messages` counts
    /// deliveries (a message received by one subscriber) and latency runs from publish to
    /// delivery.
    #[arg(long)]
    pub fanout: bool,
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
    let close_timeout = match args.fanout {
        false => CLOSE_TIMEOUT,
        true => CLOSE_TIMEOUT + CLOSE_PER_SUBSCRIBER * args.connections.div_ceil(threads) as u32,
    };
    let sched = Schedule {
        measure_start,
        measure_end,
        hard_end: measure_end + DRAIN_TIMEOUT + close_timeout + Duration::from_millis(500),
        close_timeout,
    };
    #[cfg(feature = "tls")]
    let tls = match (&args.ca, target.secure) {
        (Some(ca), true) => {
            Some(crate::tls::TlsConnector::with_ca_file(ca).map_err(|e| e.to_string())?)
        }
        (None, true) => Some(crate::tls::TlsConnector::default()),
        (Some(_), false) => return Err("--ca is for wss:// URLs".into()),
        (None, false) => None,
    };
    #[allow(unused_mut)]
    let mut plan = Plan::new(&args, target, sched);
    #[cfg(feature = "tls")]
    {
        plan.tls = tls;
    }
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared::default());

    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let conns = args.connections / threads + usize::from(i < args.connections % threads);
        let (plan, shared) = (plan.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name(format!("uringws-load-{i}"))
            .spawn(move || thread_main(plan, shared, conns, i == 0))
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
    if args.fanout {
        if args.size < SEQ_DIGITS {
            return bad(
                "--size",
                &args.size,
                "with --fanout it must be at least 16 (a sequence number opens each message)",
            );
        }
        if args.compression.is_on() {
            return bad(
                "--compression",
                &format_args!("{:?}", args.compression.mode),
                "--fanout does not offer compression",
            );
        }
        if args.json_payload {
            return bad("--json-payload", &"", "--fanout sends letters");
        }
    }
    Ok(())
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `wss://`: over TLS.
    secure: bool,
    /// The host as named in the URL (for TLS: the server name).
    name: String,
    /// The resolved address.
    addr: SocketAddr,
    /// The `Host` header: the URL's authority.
    host: String,
    /// The request target: path and query.
    path: String,
}

/// Parses `ws[s]://host[:port][/path][?query]` and resolves the host.
fn parse_url(url: &str) -> Result<Target, String> {
    let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
    let secure = lower.starts_with("wss://");
    if !secure && !lower.starts_with("ws://") {
        return Err(format!("{url}: the URL must start with ws:// or wss://"));
    }
    if secure && !cfg!(feature = "tls") {
        return Err(format!("{url}: wss:// needs uringws's `tls` feature"));
    }
    let rest = &url[if secure { 6 } else { 5 }..];
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
        format!("{authority}:{}", if secure { 443 } else { 80 })
    };
    let name = if has_port {
        &authority[..authority.rfind(':').unwrap_or(authority.len())]
    } else {
        authority
    };
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: {with_port} resolved to nothing"))?;
    Ok(Target {
        secure,
        name,
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
    /// How long to wait for the server's close frame after ours (and for our last write).
    close_timeout: Duration,
}

/// What every connection sends, prepared once.
struct Plan {
    target: Target,
    /// With wss://: the client's TLS settings.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConnector>,
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
    /// The state of a `--fanout` run.
    fanout: Option<Arc<Fanout>>,
}

impl Plan {
    /// Builds the payload and the frame template for `args`.
    fn new(args: &LoadArgs, target: Target, sched: Schedule) -> Plan {
        const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        // Fan-out always sends text (letters behind the sequence number).
        let text = args.text || args.fanout;
        let payload: Vec<u8> = if text && args.json_payload {
            json_like(args.size)
        } else if text {
            (0..args.size)
                .map(|i| LETTERS[(i * 7 + i / 52) % 52])
                .collect()
        } else {
            noise(args.size)
        };
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
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
            #[cfg(feature = "tls")]
            tls: None,
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
            fanout: args
                .fanout
                .then(|| Arc::new(Fanout::new(args.connections, args.pipeline, sched))),
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

/// One thread: its own io_uring runtime running `conns` connections to completion (with
/// `--fanout`, `conns` subscribers, and on the `first` thread the publisher too).
fn thread_main(
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    conns: usize,
    first: bool,
) -> crate::Result<Stats> {
    let rt = Runtime::new(RingConfig {
        entries: 1024,
        buffers: 64,
        buffer_size: 64 << 10,
    })
    .map_err(|e| crate::error::io_uring_unavailable(&e))?;
    let stats = rt.block_on(async move {
        let stats = Rc::new(RefCell::new(Stats::default()));
        let tasks: Vec<_> = match &plan.fanout {
            None => (0..conns)
                .map(|_| {
                    tokio::task::spawn_local(connection(
                        plan.clone(),
                        stats.clone(),
                        shared.clone(),
                    ))
                })
                .collect(),
            Some(fan) => {
                let gate = Rc::new(Semaphore::new(FANOUT_CONNECTING));
                let publisher = first.then(|| {
                    let (plan, fan) = (plan.clone(), fan.clone());
                    tokio::task::spawn_local(publisher(plan, fan, stats.clone(), shared.clone()))
                });
                publisher
                    .into_iter()
                    .chain((0..conns).map(|_| {
                        tokio::task::spawn_local(subscriber(
                            plan.clone(),
                            fan.clone(),
                            stats.clone(),
                            shared.clone(),
                            gate.clone(),
                        ))
                    }))
                    .collect()
            }
        };
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

/// A wss:// connection's TLS state, and the receive it reads through.
#[cfg(feature = "tls")]
/// (The third part is the buffer the last write was sealed into, kept for the next: a fresh
/// one per message costs page faults that would make the load tool, not the server, the
/// limit.)
type LoadTls = (
    crate::conn::Secure,
    Option<crate::uring::RecvMulti>,
    Vec<u8>,
);

/// A connection's state, shared by its reader, writer and controller tasks.
struct Conn {
    stream: TcpStream,
    /// With wss://: the TLS state, and the receive it reads through (records can arrive at
    /// any time once the handshake is over, so the receive stays armed).
    #[cfg(feature = "tls")]
    tls: RefCell<Option<Box<LoadTls>>>,
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
    /// Fan-out subscribers: the sequence number of the last delivery (`None` before the
    /// first, which makes the subscriber joined).
    last_seq: Option<u64>,
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
            last_seq: None,
        }
    }
}

impl Conn {
    /// A connection over a connected `stream`.
    fn new(stream: TcpStream, pipeline: usize) -> Conn {
        Conn {
            stream,
            #[cfg(feature = "tls")]
            tls: RefCell::new(None),
            st: RefCell::new(State::new(pipeline)),
            wake_writer: Notify::new(),
            progress: Notify::new(),
        }
    }

    /// Writes all of `buf` (sealed on a TLS connection); gives the buffer back.
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        #[cfg(feature = "tls")]
        {
            let sealed = self.tls.borrow_mut().as_mut().map(|t| {
                let mut wire = std::mem::take(&mut t.2);
                wire.clear();
                wire.extend_from_slice(&t.0.take_out());
                t.0.seal_into(&buf, &mut wire).map(|()| wire)
            });
            match sealed {
                Some(Ok(wire)) => {
                    let (res, wire) = self.stream.write_all(wire).await;
                    if let Some(t) = self.tls.borrow_mut().as_mut() {
                        t.2 = wire;
                    }
                    return (res, buf);
                }
                Some(Err(e)) => return (Err(e), buf),
                None => {}
            }
        }
        self.stream.write_all(buf).await
    }

    /// Reads into `buf` from `at` (its length past that is ignored): the bytes received, or
    /// on a TLS connection the plaintext of the records received; 0 at the end.
    async fn read_at(&self, buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
        #[cfg(feature = "tls")]
        if self.tls.borrow().is_some() {
            return self.read_tls(buf, at).await;
        }
        self.stream.read_at(buf, at).await
    }

    #[cfg(feature = "tls")]
    async fn read_tls(&self, mut buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
        buf.truncate(at);
        loop {
            let Some(mut recv) = self.tls.borrow_mut().as_mut().map(|t| t.1.take()) else {
                return (Ok(0), buf);
            };
            let received = crate::uring::recv_next(&mut recv, &self.stream).await;
            let (fresh, more) = match received {
                Ok(Some(chunk)) => (chunk, true),
                Ok(None) => (crate::uring::Chunk::Heap(Vec::new()), false),
                Err(e) => return (Err(e), buf),
            };
            let opened = {
                let mut tls = self.tls.borrow_mut();
                let Some(t) = tls.as_mut() else {
                    return (Ok(0), buf);
                };
                t.1 = recv;
                // Records to send in answer (a key update) go out with the next write.
                t.0.open(fresh, &mut buf)
            };
            match opened {
                Err(e) => {
                    let e =
                        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("TLS: {e}"));
                    return (Err(e), buf);
                }
                Ok(_) if buf.len() > at => return (Ok(buf.len() - at), buf),
                Ok(o) if o.peer_closed || !more => return (Ok(0), buf),
                Ok(_) => {}
            }
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

/// Connects to the target within [`CONNECT_TIMEOUT`] (and the measured window); a failure is
/// counted in `stats`.
async fn open(plan: &Plan, stats: &RefCell<Stats>, shared: &Shared) -> Option<TcpStream> {
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
            return None;
        }
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            stats
                .borrow_mut()
                .error(format!("connect to {addr}: timed out"));
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// The end of a connection whose reader has returned: waits for its writer and controller,
/// then counts its error (if any) in `stats`.
async fn wind_up(
    conn: &Conn,
    writer_task: Option<tokio::task::JoinHandle<()>>,
    controller: tokio::task::JoinHandle<()>,
    stats: &RefCell<Stats>,
    shared: &Shared,
) {
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

/// One connection, from connect to close. Its error (if any) is counted in `stats`.
async fn connection(plan: Arc<Plan>, stats: Rc<RefCell<Stats>>, shared: Arc<Shared>) {
    let Some(stream) = open(&plan, &stats, &shared).await else {
        return;
    };
    let conn = Rc::new(Conn::new(stream, plan.pipeline));
    let controller = tokio::task::spawn_local(controller(conn.clone(), plan.sched, Drain::Echo));

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
            writer_task = Some(tokio::task::spawn_local(writer(
                conn.clone(),
                plan.clone(),
                None,
            )));
            let inflater = agreed.map(|a| Inflater::new(a.receive));
            let input = Input { buf, start, end };
            reader(&conn, &plan, &stats, &shared, input, inflater).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        Err(why) => conn.fail(why),
    }
    wind_up(&conn, writer_task, controller, &stats, &shared).await;
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
    #[cfg(feature = "tls")]
    if let Some(tls) = &plan.tls {
        let session =
            crate::tls::Session::client(tls, &plan.target.name).map_err(|e| e.to_string())?;
        let mut secure = crate::conn::Secure::new(session);
        let mut recv = None;
        secure
            .handshake(&conn.stream, &mut recv)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        *conn.tls.borrow_mut() = Some(Box::new((secure, recv, Vec::new())));
    }
    let (res, _) = conn.write_all(request).await;
    res.map_err(|e| format!("handshake write: {e}"))?;
    let mut scanner = HeadScanner::new(MAX_RESPONSE_HEAD);
    let mut end = 0;
    loop {
        let (res, back) = conn.read_at(std::mem::take(buf), end).await;
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

/// What a connection waits for after the measured window, before it closes.
enum Drain {
    /// The echoes of the messages in flight.
    Echo,
    /// A fan-out subscriber: every message the publisher published.
    Subscriber(Arc<Fanout>),
}

/// Drives a connection through the phases of the run and bounds every wait: the handshake,
/// the measured window, the drain, the closing handshake. It shuts the socket down when the
/// server does not keep up, which completes any pending read or write.
async fn controller(conn: Rc<Conn>, sched: Schedule, drain: Drain) {
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
        match &drain {
            Drain::Echo => {
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
            }
            Drain::Subscriber(fan) => {
                if !fan.wait_drained(&conn, drain_deadline).await {
                    let why = match fan.final_count() {
                        None => "the publisher had not finished".to_owned(),
                        Some(n) => {
                            let got = conn.st.borrow().last_seq.map_or(0, |l| l + 1);
                            format!("{} message(s) still missing", n.saturating_sub(got))
                        }
                    };
                    conn.note_error(format!("subscriber: {why} {DRAIN_TIMEOUT:?} after the run"));
                }
            }
        }
        if conn.st.borrow().reader_done {
            break 'run;
        }
        conn.st.borrow_mut().close_requested = true;
        conn.wake_writer.notify_one();
        let close_deadline = (Instant::now() + sched.close_timeout).min(sched.hard_end);
        if !conn.wait_for(close_deadline, |st| st.reader_done).await {
            conn.fail(format!(
                "no close frame from the server within {:?}",
                sched.close_timeout
            ));
        }
    }
    // The reader is done; give the writer (e.g. our answer to the server's close) a moment.
    let deadline = (Instant::now() + sched.close_timeout).min(sched.hard_end);
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
///
/// With `stamp` (the fan-out publisher) each data frame gets the next sequence number.
async fn writer(conn: Rc<Conn>, plan: Arc<Plan>, stamp: Option<Arc<Fanout>>) {
    let mut framer = Framer::new(&plan, stamp);
    let mut out: Vec<u8> = Vec::with_capacity(plan.pipeline.min(64) * plan.frame.len());
    loop {
        out.clear();
        let next = framer.batch(&mut conn.st.borrow_mut(), &mut out);
        match next {
            Batch::Stop => break,
            Batch::Idle => conn.wake_writer.notified().await,
            Batch::Write => {
                let (res, buf) = conn.write_all(out).await;
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
                let (res, frame) = conn.write_all(frame).await;
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
    /// Where the 4 key bytes sit in `frame` (the payload follows them).
    key_at: usize,
    /// The key `frame` is masked with now.
    key: [u8; 4],
    keys: KeyGen,
    /// The fan-out publisher's run: each data frame is numbered (the first [`SEQ_DIGITS`]
    /// payload bytes) and its send time recorded there, instead of in `in_flight`.
    stamp: Option<Arc<Fanout>>,
}

impl Framer {
    /// The framer of `plan`'s frame, with fresh keys.
    fn new(plan: &Plan, stamp: Option<Arc<Fanout>>) -> Framer {
        Framer {
            frame: plan.frame.clone(),
            key_at: plan.key_at,
            key: plan.key,
            keys: KeyGen::new(),
            stamp,
        }
    }

    /// Re-keys the frame for its next send and numbers it or records its send time.
    fn next_frame(&mut self, st: &mut State, now: Instant) {
        self.rekey();
        let Some(fan) = &self.stamp else {
            st.in_flight.push_back(now);
            return;
        };
        let digits = seq_digits(fan.stamp(now));
        let at = self.key_at + 4;
        for (i, d) in digits.iter().enumerate() {
            self.frame[at + i] = d ^ self.key[i % 4];
        }
    }

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
            self.next_frame(st, Instant::now());
            return Batch::Frame;
        }
        if n > 0 {
            let now = Instant::now();
            for _ in 0..n {
                self.next_frame(st, now);
                out.extend_from_slice(&self.frame);
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
                        server_closed(conn, st, payload);
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
        let (res, back) = conn.read_at(buf, end).await;
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

/// The server's close frame: an error unless this side closed first; the writer answers it
/// (the controller bounds how long that may take).
fn server_closed(conn: &Conn, mut st: std::cell::RefMut<'_, State>, payload: &[u8]) {
    if st.close_requested {
        return;
    }
    let code = match parse_close_payload(payload) {
        Ok(Some(f)) if f.reason.is_empty() => f.code.0.to_string(),
        Ok(Some(f)) => format!("{} ({})", f.code.0, f.reason),
        Ok(None) => "no status".into(),
        Err(e) => format!("an invalid close frame: {e}"),
    };
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

/// The bytes read with the handshake: the frames the server sent right behind its response
/// lie in `buf[start..end]`.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The state of a `--fanout` run, shared by the publisher and every subscriber on every
/// thread.
///
/// Flow control: the publisher numbers its messages 0, 1, 2, ... and each subscriber counts
/// every message it receives in `acks[seq % window]`. Message `seq` is received by all when
/// its counter reaches the subscribers still open; the publisher then clears the counter and
/// may publish one more, so that at most `window` messages are on their way at any time
/// (counter `seq % window` is free again by the time `seq + window` is published).
///
/// Joining: a subscriber is subscribed once the server has run its handler, which may be a
/// little after the client has read the 101. So once every subscriber has connected, the
/// publisher publishes a join message every [`JOIN_INTERVAL`] until each has received one
/// (a subscriber checks order from its first message on), and only the messages from then on
/// (`counted_from`) are flow-controlled. All of that belongs in the warm-up: a run whose
/// subscribers were not all joined when the measured window began counts an error.
struct Fanout {
    sched: Schedule,
    /// The subscribers asked for (`--connections`).
    subscribers: usize,
    /// Subscribers whose handshake completed, or that failed before it did.
    settled: AtomicUsize,
    /// Subscribers that received a first message (and are therefore subscribed).
    joined: AtomicUsize,
    /// Joined subscribers whose connection has ended.
    left: AtomicUsize,
    /// Subscribers that ended without receiving anything.
    lost: AtomicUsize,
    /// Messages from this sequence number on are counted in `acks` (`u64::MAX` while the
    /// subscribers join).
    counted_from: AtomicU64,
    /// Per sequence number modulo the window: the subscribers that received it.
    acks: Box<[AtomicUsize]>,
    /// Per sequence number modulo the window: when it was framed, in ns after `base`.
    sent_ns: Box<[AtomicU64]>,
    base: Instant,
    /// Messages framed by the publisher so far.
    stamped: AtomicU64,
    /// Messages framed inside the measured window.
    published: AtomicU64,
    /// Messages published in all, once the publisher has finished (`u64::MAX` before).
    final_count: AtomicU64,
    /// Wakes the publisher: a message reached every subscriber, or a subscriber left.
    progress: Notify,
    /// Wakes the subscribers' controllers when the publisher has finished.
    done: Notify,
}

impl Fanout {
    /// The state for `subscribers` subscribers and at most `window` messages in flight.
    fn new(subscribers: usize, window: usize, sched: Schedule) -> Fanout {
        let window = window.max(1);
        Fanout {
            sched,
            subscribers,
            settled: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            counted_from: AtomicU64::new(u64::MAX),
            acks: (0..window).map(|_| AtomicUsize::new(0)).collect(),
            sent_ns: (0..window).map(|_| AtomicU64::new(0)).collect(),
            base: Instant::now(),
            stamped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            final_count: AtomicU64::new(u64::MAX),
            progress: Notify::new(),
            done: Notify::new(),
        }
    }

    /// The window: messages that may be on their way.
    fn window(&self) -> u64 {
        self.acks.len() as u64
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.window()) as usize
    }

    /// Subscribers that joined and are still open: every message must reach them all.
    fn alive(&self) -> usize {
        let left = self.left.load(Ordering::SeqCst);
        self.joined.load(Ordering::SeqCst).saturating_sub(left)
    }

    /// Numbers the next message the publisher frames (at `now`) and records when.
    fn stamp(&self, now: Instant) -> u64 {
        let seq = self.stamped.fetch_add(1, Ordering::SeqCst);
        let ns = u64::try_from(now.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.sent_ns[self.slot(seq)].store(ns, Ordering::SeqCst);
        if now >= self.sched.measure_start && now < self.sched.measure_end {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
        seq
    }

    /// When message `seq` was framed, if it is one whose slot is still its own (a counted
    /// message that has not reached every subscriber yet).
    fn sent_at(&self, seq: u64) -> Instant {
        self.base + Duration::from_nanos(self.sent_ns[self.slot(seq)].load(Ordering::SeqCst))
    }

    /// One subscriber received `seq`; wakes the publisher when every subscriber has.
    fn ack(&self, seq: u64) {
        if seq < self.counted_from.load(Ordering::SeqCst) {
            return;
        }
        let n = self.acks[self.slot(seq)].fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.alive() {
            self.progress.notify_one();
        }
    }

    /// The publisher has finished: what it framed is all there is.
    fn finish(&self) {
        let n = self.stamped.load(Ordering::SeqCst);
        self.final_count.store(n, Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// The messages published in all, once the publisher has finished.
    fn final_count(&self) -> Option<u64> {
        let n = self.final_count.load(Ordering::SeqCst);
        (n != u64::MAX).then_some(n)
    }

    /// Whether a subscriber has everything it will get: the publisher has finished and the
    /// subscriber received its last message (or never joined: it was counted as missing when
    /// the subscribers joined), or its connection has ended.
    fn drained(&self, st: &State) -> bool {
        st.reader_done
            || self
                .final_count()
                .is_some_and(|n| st.last_seq.is_none_or(|last| last + 1 >= n))
    }

    /// Waits until the subscriber on `conn` is [drained](Fanout::drained) (true) or
    /// `deadline` passes (false).
    async fn wait_drained(&self, conn: &Conn, deadline: Instant) -> bool {
        loop {
            // Created before the check: a notification after it is not missed.
            let progress = conn.progress.notified();
            let done = self.done.notified();
            if self.drained(&conn.st.borrow()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = progress => {}
                _ = done => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }
}

/// `seq` as [`SEQ_DIGITS`] lowercase hexadecimal digits, the start of a fan-out payload.
fn seq_digits(seq: u64) -> [u8; SEQ_DIGITS] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| HEX[((seq >> (4 * (SEQ_DIGITS - 1 - i))) & 15) as usize])
}

/// The sequence number that opens a fan-out payload, if it has one.
fn parse_seq(payload: &[u8]) -> Option<u64> {
    payload.get(..SEQ_DIGITS)?.iter().try_fold(0u64, |n, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(d))
    })
}

/// Checks one frame a subscriber received against what the publisher sends (one whole text
/// message: a sequence number, then `published`'s bytes); returns the sequence number.
fn check_delivery(
    published: &[u8],
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
) -> Result<u64, &'static str> {
    if opcode != OpCode::Text || !fin {
        return Err("subscriber: a delivery was not one whole text message");
    }
    if payload.len() != published.len() {
        return Err("subscriber: a delivery had the wrong size");
    }
    if payload[SEQ_DIGITS..] != published[SEQ_DIGITS..] {
        return Err("subscriber: a delivery differs from the message published");
    }
    parse_seq(payload).ok_or("subscriber: a delivery has no sequence number")
}

/// Where a delivery's sequence number stands against the subscriber's last one.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    /// The subscriber's first message: it has joined.
    First,
    /// The one after the last.
    Next,
    /// Later than the next: this many messages were missed.
    Gap(u64),
    /// Not later than the last: out of order or repeated.
    Stale,
}

/// Where `seq` stands after `last`.
fn order(last: Option<u64>, seq: u64) -> Order {
    match last {
        None => Order::First,
        Some(last) if seq == last.wrapping_add(1) => Order::Next,
        Some(last) if seq > last => Order::Gap(seq - last - 1),
        Some(_) => Order::Stale,
    }
}

/// A fan-out subscriber, from connect to close: connects (at most [`FANOUT_CONNECTING`] of a
/// thread's at once), then only reads and checks what the publisher sends. Its error (if
/// any) is counted in `stats`.
async fn subscriber(
    plan: Arc<Plan>,
    fan: Arc<Fanout>,
    stats: Rc<RefCell<Stats>>,
    shared: Arc<Shared>,
    gate: Rc<Semaphore>,
) {
    let permit = gate.acquire().await.ok();
    let Some(stream) = open(&plan, &stats, &shared).await else {
        fan.settled.fetch_add(1, Ordering::SeqCst);
        fan.lost.fetch_add(1, Ordering::SeqCst);
        fan.progress.notify_one();
        return;
    };
    let conn = Rc::new(Conn::new(stream, 0));
    let drain = Drain::Subscriber(fan.clone());
    let controller = tokio::task::spawn_local(controller(conn.clone(), plan.sched, drain));
    let mut buf = vec![0u8; plan.read_buffer];
    let mut writer_task = None;
    let handshake = handshake(&conn, &plan, &mut buf).await;
    fan.settled.fetch_add(1, Ordering::SeqCst);
    drop(permit);
    match handshake {
        Ok((start, end, _)) => {
            {
                let mut st = conn.st.borrow_mut();
                st.open = true;
                st.writer_done = false;
            }
            stats.borrow_mut().connected += 1;
            shared.open.fetch_add(1, Ordering::Relaxed);
            conn.progress.notify_waiters();
            // It only ever writes pongs and its close frame.
            writer_task = Some(tokio::task::spawn_local(writer(
                conn.clone(),
                plan.clone(),
                None,
            )));
            let input = Input { buf, start, end };
            subscriber_reader(&conn, &plan, &fan, &stats, &shared, input).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        Err(why) => conn.fail(format!("subscriber: {why}")),
    }
    if conn.st.borrow().last_seq.is_some() {
        fan.left.fetch_add(1, Ordering::SeqCst);
    } else {
        fan.lost.fetch_add(1, Ordering::SeqCst);
    }
    fan.progress.notify_one();
    wind_up(&conn, writer_task, controller, &stats, &shared).await;
}

/// A subscriber's reader: parses the server's frames where they land in `buf`, checks every
/// delivery (content, then order by sequence number), counts it for the publisher's flow
/// control and, inside the measured window, in `stats` with its latency from publish to
/// delivery. Returns when the connection ends (close received, error, EOF).
async fn subscriber_reader(
    conn: &Conn,
    plan: &Plan,
    fan: &Fanout,
    stats: &RefCell<Stats>,
    shared: &Shared,
    input: Input,
) {
    let Input {
        mut buf,
        mut start,
        mut end,
    } = input;
    let limits = DecodeLimits {
        role: Role::Client,
        allowed_rsv: 0,
        max_frame: (plan.size + SLACK) as u64,
    };
    let sched = &plan.sched;
    let mut in_window = false;
    let mut now = Instant::now();
    loop {
        let mut received = 0u64;
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
                        conn.fail(format!("subscriber: protocol error from the server: {e}"));
                        return;
                    }
                };
                let total = h.header_len + h.payload_len as usize;
                if end - start < total {
                    break;
                }
                let payload = &buf[start + h.header_len..start + total];
                start += total;
                match h.opcode {
                    OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                        received += 1;
                        let checked = check_delivery(&plan.payload, h.opcode, h.fin, payload);
                        let seq = match checked {
                            Ok(seq) => seq,
                            Err(why) => {
                                stats.error(why.into());
                                shared.errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        match order(st.last_seq, seq) {
                            Order::First => {
                                fan.joined.fetch_add(1, Ordering::SeqCst);
                            }
                            Order::Next => {}
                            Order::Gap(missed) => {
                                stats.error(
                                    "subscriber: message(s) missed (a gap in the sequence numbers)"
                                        .into(),
                                );
                                shared.errors.fetch_add(1, Ordering::Relaxed);
                                // They will not come: count them, so as not to hold up the
                                // publisher (at most a window's worth can be in flight).
                                for s in seq - missed.min(fan.window())..seq {
                                    fan.ack(s);
                                }
                            }
                            Order::Stale => {
                                stats.error(
                                    "subscriber: a delivery came out of order or twice".into(),
                                );
                                shared.errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                        st.last_seq = Some(seq);
                        fan.ack(seq);
                        if now >= sched.measure_start && now < sched.measure_end {
                            stats.messages += 1;
                            stats.bytes += payload.len() as u64;
                            let sent = fan.sent_at(seq);
                            if sent >= sched.measure_start
                                && seq >= fan.counted_from.load(Ordering::Relaxed)
                            {
                                stats.hist.record(now.saturating_duration_since(sent));
                            }
                        }
                    }
                    OpCode::Ping => {
                        st.pongs.push(payload.to_vec());
                        wake = true;
                    }
                    OpCode::Pong => {}
                    OpCode::Close => {
                        server_closed(conn, st, payload);
                        return;
                    }
                }
            }
            if received > 0 && now >= sched.measure_end {
                // The controller waits for the last messages.
                conn.progress.notify_waiters();
            }
        }
        if received > 0 {
            shared.echoed.fetch_add(received, Ordering::Relaxed);
        }
        if wake {
            conn.wake_writer.notify_one();
        }
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let (res, back) = conn.read_at(buf, end).await;
        buf = back;
        now = Instant::now();
        match res {
            Ok(0) => {
                conn.fail(
                    "subscriber: the server closed the connection without a close frame".into(),
                );
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
                conn.fail(format!("subscriber: read: {e}"));
                return;
            }
        }
    }
}

/// The fan-out publisher, from connect to close: its writer numbers every message, [`pace`]
/// decides how many to send, and its reader expects nothing but control frames (the server
/// does not send a connection its own messages). Its error (if any) is counted in `stats`.
async fn publisher(
    plan: Arc<Plan>,
    fan: Arc<Fanout>,
    stats: Rc<RefCell<Stats>>,
    shared: Arc<Shared>,
) {
    let Some(stream) = open(&plan, &stats, &shared).await else {
        fan.finish();
        return;
    };
    let conn = Rc::new(Conn::new(stream, 0));
    let controller = tokio::task::spawn_local(controller(conn.clone(), plan.sched, Drain::Echo));
    let mut buf = vec![0u8; plan.read_buffer];
    let (mut writer_task, mut pacer) = (None, None);
    match handshake(&conn, &plan, &mut buf).await {
        Ok((start, end, _)) => {
            {
                let mut st = conn.st.borrow_mut();
                st.open = true;
                st.writer_done = false;
            }
            shared.open.fetch_add(1, Ordering::Relaxed);
            conn.progress.notify_waiters();
            let stamp = Some(fan.clone());
            writer_task = Some(tokio::task::spawn_local(writer(
                conn.clone(),
                plan.clone(),
                stamp,
            )));
            pacer = Some(tokio::task::spawn_local(pace(conn.clone(), fan.clone())));
            let input = Input { buf, start, end };
            reader(&conn, &plan, &stats, &shared, input, None).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        Err(why) => conn.fail(format!("publisher: {why}")),
    }
    conn.st.borrow_mut().reader_done = true;
    if let Some(task) = pacer {
        let _ = task.await;
    }
    fan.finish();
    wind_up(&conn, writer_task, controller, &stats, &shared).await;
}

/// The publisher's pace: join messages until every subscriber has one, then as many messages
/// as the window allows until the measured window ends; then it tells the subscribers how
/// many there were in all ([`Fanout::finish`]).
async fn pace(conn: Rc<Conn>, fan: Arc<Fanout>) {
    let sched = fan.sched;
    let stopped = || {
        let st = conn.st.borrow();
        st.abort || st.close_requested || st.reader_done
    };
    let send = |n: u64| {
        conn.st.borrow_mut().to_send += n as usize;
        conn.wake_writer.notify_one();
    };
    let mut queued = 0u64;
    'run: {
        // Join: once every subscriber has connected (or failed to), a message every
        // JOIN_INTERVAL until every one has received one.
        let mut next_join = Instant::now();
        loop {
            if stopped() {
                break 'run;
            }
            let now = Instant::now();
            let joined = fan.joined.load(Ordering::SeqCst) + fan.lost.load(Ordering::SeqCst);
            if joined >= fan.subscribers {
                break;
            }
            if now >= sched.measure_end {
                let missing = fan.subscribers - joined;
                conn.note_error(format!(
                    "publisher: {missing} of {} subscriber(s) had received no message when the \
                     run ended (raise --warmup)",
                    fan.subscribers
                ));
                break 'run;
            }
            if fan.settled.load(Ordering::SeqCst) >= fan.subscribers && now >= next_join {
                send(1);
                queued += 1;
                next_join = now + JOIN_INTERVAL;
            }
            tokio::time::sleep(JOIN_POLL).await;
        }
        if Instant::now() > sched.measure_start {
            conn.note_error(
                "publisher: the subscribers were not all connected and subscribed when the \
                 measured window began (raise --warmup)"
                    .into(),
            );
        }
        // Steady: at most a window of messages not yet received by every subscriber.
        fan.counted_from.store(queued, Ordering::SeqCst);
        let mut acked = queued;
        let mut moved_at = Instant::now();
        loop {
            if stopped() {
                break;
            }
            let alive = fan.alive();
            if alive == 0 {
                conn.note_error("publisher: no subscriber left".into());
                break;
            }
            while acked < queued && fan.acks[fan.slot(acked)].load(Ordering::SeqCst) >= alive {
                fan.acks[fan.slot(acked)].store(0, Ordering::SeqCst);
                acked += 1;
                moved_at = Instant::now();
            }
            let now = Instant::now();
            if now >= sched.measure_end {
                break;
            }
            if now >= moved_at + STALL_TIMEOUT {
                let missing = alive - fan.acks[fan.slot(acked)].load(Ordering::SeqCst).min(alive);
                conn.note_error(format!(
                    "publisher: message {acked} had not reached {missing} of {alive} \
                     subscriber(s) after {STALL_TIMEOUT:?}; stopped publishing"
                ));
                break;
            }
            let target = acked + fan.window();
            if queued < target {
                send(target - queued);
                queued = target;
            }
            let progress = fan.progress.notified();
            let wait = (moved_at + STALL_TIMEOUT).min(sched.measure_end);
            tokio::select! {
                _ = progress => {}
                _ = tokio::time::sleep_until(wait.into()) => {}
            }
        }
    }
    // Let the writer frame what was asked for (or stop), so that the count is final.
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        {
            let st = conn.st.borrow();
            if st.to_send == 0 || st.close_sent || st.abort || st.writer_done {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fan.finish();
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
    // Fan-out: the messages the publisher sent in the window, and their rate.
    let published = plan.fanout.as_ref().map(|f| {
        let n = f.published.load(Ordering::Relaxed);
        (n, n as f64 / secs)
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        let num = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.1}"));
        // Fan-out adds its fields before the closing brace.
        let extra = published.map_or(String::new(), |(n, rate)| {
            format!(
                ",\"fanout\":true,\"subscribers\":{},\"published\":{n},\
                 \"published_per_sec\":{rate:.1},\"deliveries_per_sec\":{:.1}",
                args.connections,
                total.messages as f64 / secs
            )
        });
        let _ = writeln!(
            out,
            "{{\"connections\":{},\"size\":{},\"pipeline\":{},\"threads\":{},\"text\":{},\
             \"duration_s\":{},\"connected\":{},\"messages\":{},\"msgs_per_sec\":{:.1},\
             \"mb_per_sec\":{:.3},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\
             \"mean_us\":{},\"errors\":{},\"wire_bytes_per_msg\":{},\"compression\":\"{:?}\"{}}}",
            args.connections,
            args.size,
            args.pipeline,
            threads,
            args.text || args.fanout,
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
            extra,
        );
    } else {
        let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} us"));
        let kind = if args.text || args.fanout {
            "text"
        } else {
            "binary"
        };
        let (url, addr) = (&args.url, plan.target.addr);
        let (conns, connected, k) = (args.connections, total.connected, args.pipeline);
        let (size, warmup, msgs) = (args.size, args.warmup, total.messages);
        let (load, throughput) = match published {
            None => (
                format!(
                    "load         {conns} connections ({connected} connected) x pipeline {k} \
                     on {threads} thread(s), {size}-byte {kind} messages"
                ),
                format!("throughput   {msgs} messages: {rate:.0} msg/s, {mb:.2} MB/s of payload"),
            ),
            Some((n, prate)) => (
                format!(
                    "load         fan-out: 1 publisher, {conns} subscribers ({connected} \
                     connected), window {k}, on {threads} thread(s), {size}-byte {kind} messages"
                ),
                format!(
                    "throughput   {n} published ({prate:.0}/s), {msgs} deliveries: {rate:.0} \
                     deliveries/s, {mb:.2} MB/s of payload"
                ),
            ),
        };
        let lines = [
            format!("target       {url} ({addr})"),
            load,
            format!("window       {secs} s measured after {warmup} s of warm-up"),
            throughput,
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
        let t = parse_url("wss://localhost:9443/x").unwrap();
        assert_eq!(
            (t.secure, t.name.as_str(), t.addr.port()),
            (true, "localhost", 9443)
        );
        let t = parse_url("wss://[::1]/").unwrap();
        assert_eq!((t.name.as_str(), t.addr.port()), ("::1", 443));
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
    fn sequence_numbers_round_trip() {
        for seq in [0, 1, 15, 16, 255, 1 << 40, u64::MAX] {
            let d = seq_digits(seq);
            assert!(d.iter().all(u8::is_ascii_hexdigit));
            assert_eq!(parse_seq(&d), Some(seq));
        }
        assert_eq!(&seq_digits(0x1f), b"000000000000001f");
        assert_eq!(parse_seq(b"000000000000001F"), None);
        assert_eq!(parse_seq(b"00000000000001f"), None);
    }

    #[test]
    fn deliveries_are_checked() {
        let mut published = b"0000000000000000".to_vec();
        published.extend_from_slice(b"abcdefgh");
        let mut ok = seq_digits(7).to_vec();
        ok.extend_from_slice(b"abcdefgh");
        assert_eq!(check_delivery(&published, OpCode::Text, true, &ok), Ok(7));
        assert!(check_delivery(&published, OpCode::Binary, true, &ok).is_err());
        assert!(check_delivery(&published, OpCode::Text, false, &ok).is_err());
        assert!(check_delivery(&published, OpCode::Text, true, &ok[1..]).is_err());
        let mut bad = ok.clone();
        bad[20] = b'X';
        assert!(check_delivery(&published, OpCode::Text, true, &bad).is_err());
        bad = ok.clone();
        bad[3] = b'g';
        assert!(check_delivery(&published, OpCode::Text, true, &bad).is_err());

        assert_eq!(order(None, 5), Order::First);
        assert_eq!(order(Some(5), 6), Order::Next);
        assert_eq!(order(Some(5), 9), Order::Gap(3));
        assert_eq!(order(Some(5), 5), Order::Stale);
        assert_eq!(order(Some(5), 2), Order::Stale);
    }

    #[test]
    fn the_window_counts_every_subscriber() {
        let now = Instant::now();
        let sched = Schedule {
            measure_start: now,
            measure_end: now + Duration::from_secs(60),
            hard_end: now + Duration::from_secs(60),
            close_timeout: CLOSE_TIMEOUT,
        };
        let fan = Fanout::new(3, 2, sched);
        fan.joined.store(3, Ordering::SeqCst);
        // Join messages (before `counted_from` is set) are not counted.
        fan.ack(0);
        assert_eq!(fan.acks[0].load(Ordering::SeqCst), 0);
        fan.counted_from.store(1, Ordering::SeqCst);
        fan.ack(1);
        fan.ack(1);
        assert_eq!(fan.acks[fan.slot(1)].load(Ordering::SeqCst), 2);
        assert!(fan.acks[fan.slot(1)].load(Ordering::SeqCst) < fan.alive());
        // A subscriber that leaves no longer holds the window up.
        fan.left.store(1, Ordering::SeqCst);
        assert!(fan.acks[fan.slot(1)].load(Ordering::SeqCst) >= fan.alive());
        // Numbers and send times.
        assert_eq!((fan.stamp(now), fan.stamp(now)), (0, 1));
        assert_eq!(fan.sent_at(1), now.max(fan.base));
        assert_eq!(fan.final_count(), None);
        fan.finish();
        assert_eq!(fan.final_count(), Some(2));
        let mut st = State::new(0);
        st.last_seq = Some(0);
        assert!(!fan.drained(&st));
        st.last_seq = Some(1);
        assert!(fan.drained(&st));
    }

    #[test]
    fn the_publisher_numbers_its_messages() {
        let args = LoadArgs {
            ca: None,
            url: String::new(),
            connections: 2,
            size: 40,
            duration: 1.0,
            pipeline: 4,
            threads: 1,
            warmup: 0.0,
            text: false,
            json: false,
            json_payload: false,
            compression: Compression::OFF,
            fanout: true,
        };
        check_args(&args).unwrap();
        assert!(check_args(&LoadArgs {
            size: 15,
            ..args_clone(&args)
        })
        .is_err());
        let now = Instant::now();
        let sched = Schedule {
            measure_start: now,
            measure_end: now,
            hard_end: now,
            close_timeout: CLOSE_TIMEOUT,
        };
        let target = parse_url("ws://127.0.0.1:1/room").unwrap();
        let plan = Plan::new(&args, target, sched);
        assert_eq!(plan.opcode, OpCode::Text);
        let fan = plan.fanout.clone().unwrap();
        let mut framer = Framer::new(&plan, Some(fan.clone()));
        let mut st = State::new(0);
        st.to_send = 3;
        let mut out = Vec::new();
        assert!(matches!(framer.batch(&mut st, &mut out), Batch::Write));
        assert!(st.in_flight.is_empty());
        st.to_send = 1;
        assert!(matches!(
            framer.batch(&mut st, &mut Vec::new()),
            Batch::Frame
        ));
        out.extend_from_slice(&framer.frame);
        let limits = DecodeLimits {
            role: Role::Server,
            allowed_rsv: 0,
            max_frame: 1 << 20,
        };
        let mut at = 0;
        let mut seqs = Vec::new();
        while at < out.len() {
            let Ok(Decoded::Header(h)) = decode_header(&out[at..], &limits) else {
                panic!("bad frame at {at}")
            };
            let body = at + h.header_len..at + h.header_len + h.payload_len as usize;
            let mut payload = out[body.clone()].to_vec();
            apply_mask(&mut payload, h.mask.unwrap(), 0);
            seqs.push(check_delivery(&plan.payload, h.opcode, h.fin, &payload).unwrap());
            at = body.end;
        }
        assert_eq!(seqs, [0, 1, 2, 3]);
        assert_eq!(fan.stamped.load(Ordering::SeqCst), 4);
    }

    fn args_clone(a: &LoadArgs) -> LoadArgs {
        LoadArgs {
            url: a.url.clone(),
            ca: a.ca.clone(),
            compression: a.compression,
            ..*a
        }
    }

    #[test]
    fn rekeying_keeps_the_payload() {
        let args = LoadArgs {
            ca: None,
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
            fanout: false,
        };
        let now = Instant::now();
        let sched = Schedule {
            measure_start: now,
            measure_end: now,
            hard_end: now,
            close_timeout: CLOSE_TIMEOUT,
        };
        let target = parse_url("ws://127.0.0.1:1/").unwrap();
        let plan = Plan::new(&args, target, sched);
        assert!(std::str::from_utf8(&plan.payload).is_ok());
        let mut framer = Framer::new(&plan, None);
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
