//! The `uringws` binary: `uringws echo` runs the echo server used by the conformance run, the
//! benchmarks and the container.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uringws::{HttpResponse, Server};

use uringws::cli::load;

#[derive(Parser)]
#[command(name = "uringws", version, about = "io_uring WebSocket server tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an echo server: every text or binary message is sent back. `GET /healthz`
    /// answers 200. SIGINT/SIGTERM close every connection with 1001 and exit 0.
    Echo(EchoArgs),
    /// Run a load generator against an echo server (`ws://` only): C connections with K
    /// messages in flight each, every echo checked; reports throughput and latency.
    Load(load::LoadArgs),
    /// Run a publish/subscribe relay: a connection to `/NAME` subscribes to topic NAME, and
    /// every message it sends goes to every other subscriber of NAME. `GET /healthz` answers
    /// 200. SIGINT/SIGTERM close every connection with 1001 and exit 0.
    Broadcast(uringws::cli::broadcast::BroadcastArgs),
    /// Run the chat example: the page at `GET /`, the WebSocket at `/chat`, rooms as topics,
    /// JSON messages; with `--broker redis://HOST:PORT`, processes sharing that Redis are one
    /// chat (`GET /stats` shows the broker's counters).
    Chat(ChatArgs),
}

#[derive(clap::Args)]
struct ChatArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Runtime threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Redis to share the rooms through, `redis://HOST[:PORT]`.
    #[arg(long)]
    broker: Option<String>,
}

/// The chat example, the same file `cargo run --example chat` runs.
#[path = "../examples/chat.rs"]
#[allow(dead_code)]
mod chat;

#[derive(clap::Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Runtime threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Most open connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Largest frame payload in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame: u64,
    /// Largest message in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_message: u64,
    /// Largest handshake request in bytes.
    #[arg(long, default_value_t = 8192)]
    max_handshake: usize,
    /// Read buffer per connection in bytes.
    #[arg(long, default_value_t = (64 << 10) + 64)]
    read_buffer: usize,
    /// Receive buffers in each thread's provided-buffer ring (a power of two, at most 32768).
    #[arg(long, default_value_t = 128)]
    registered_buffers: usize,
    /// Send queue high-water mark per connection in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    send_queue: usize,
    /// Handshake timeout in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    handshake_timeout: f64,
    /// Idle timeout in seconds (0 disables it).
    #[arg(long, default_value_t = 300.0, value_parser = seconds)]
    idle_timeout: f64,
    /// Keep-alive ping interval in seconds (0 disables pings).
    #[arg(long, default_value_t = 0.0, value_parser = seconds)]
    ping_interval: f64,
    /// Close timeout in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    close_timeout: f64,
    /// Set SO_REUSEPORT, so that a new server started with it can take over the port while
    /// this one drains (both must set it). Without it a second server on the port fails.
    #[arg(long)]
    reuse_port: bool,
    /// Shutdown grace period in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    shutdown_grace: f64,
    /// permessage-deflate: off, shared (no compression state per connection) or
    /// dedicated[:WINDOW_BITS] (per-connection context, windows of 9 to 15 bits).
    #[arg(long, default_value = "off")]
    compression: uringws::Compression,
    /// zlib level for outgoing compressed messages (0 to 9).
    #[arg(long, default_value_t = 1)]
    compression_level: u32,
    /// Messages shorter than this many bytes go out uncompressed.
    #[arg(long, default_value_t = uringws::proto::deflate::DEFAULT_MIN_SIZE)]
    compression_min_size: usize,
    /// Serve TLS (wss://) with this PEM certificate chain (the server's certificate first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Also answer `GET /healthz` in plain HTTP on this address (and nothing else there): a
    /// health check for a TLS server that cannot speak TLS (the container's HEALTHCHECK).
    #[arg(long)]
    health_addr: Option<String>,
}

/// Parses a number of seconds: finite, zero or more, at most a year.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && (0.0..=365.0 * 86400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?}: must be 0 to 31536000 seconds"))
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn nonzero(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| secs(s))
}

/// The `uringws echo` flag of each `Config` field, to name it in errors.
const FLAGS: &[(&str, &str)] = &[
    ("threads", "--threads"),
    ("max_connections", "--max-connections"),
    ("read_buffer_size", "--read-buffer"),
    ("registered_buffers", "--registered-buffers"),
    ("max_frame_size", "--max-frame"),
    ("max_message_size", "--max-message"),
    ("max_handshake_size", "--max-handshake"),
    ("handshake_timeout", "--handshake-timeout"),
    ("close_timeout", "--close-timeout"),
    ("send_queue_limit", "--send-queue"),
    ("compression", "--compression/--compression-level"),
];

/// An error of `uringws echo`, with a configuration error named by its flag.
fn echo_error(e: uringws::Error) -> String {
    uringws::cli::flag_error(e, FLAGS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => echo(args).map_err(echo_error),
        Command::Load(args) => load::run(args),
        Command::Broadcast(args) => uringws::cli::broadcast::run(args),
        Command::Chat(args) => chat::run(chat::Options {
            addr: args.addr,
            threads: args.threads,
            broker: args.broker,
        })
        .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uringws: {e}");
            ExitCode::FAILURE
        }
    }
}

fn echo(args: EchoArgs) -> uringws::Result<()> {
    let mut server = Server::bind(args.addr.as_str())?
        .max_connections(args.max_connections)
        .max_sizes(args.max_frame, args.max_message)
        .max_handshake_size(args.max_handshake)
        .read_buffer_size(args.read_buffer)
        .send_queue_limit(args.send_queue)
        .handshake_timeout(secs(args.handshake_timeout))
        .idle_timeout(nonzero(args.idle_timeout))
        .ping_interval(nonzero(args.ping_interval))
        .close_timeout(secs(args.close_timeout))
        .shutdown_grace(secs(args.shutdown_grace))
        .registered_buffers(args.registered_buffers)
        .reuse_port(args.reuse_port)
        .compression(
            args.compression
                .level(args.compression_level)
                .min_size(args.compression_min_size),
        )
        .http(|req| match req.path {
            "/healthz" => HttpResponse::text(200, "ok\n"),
            _ => HttpResponse::upgrade_required(),
        });
    if let Some(n) = args.threads {
        server = server.threads(n);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        server = server.tls(uringws::tls::TlsConfig::from_pem_files(cert, key)?);
    }
    let running = server.start(|ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        // Owned messages: a large (reassembled) payload goes back out from the buffer it was
        // read into, without a copy; small ones cost one copy either way.
        while let Some(msg) = rx.recv_owned().await? {
            tx.send_owned(msg).await?;
        }
        Ok(())
    })?;
    eprintln!("uringws echo listening on {}", running.local_addr());
    let health = match &args.health_addr {
        Some(addr) => {
            let health = Server::bind(addr.as_str())?
                .threads(1)
                .http(|req| match req.path {
                    "/healthz" => HttpResponse::text(200, "ok\n"),
                    _ => HttpResponse::text(404, "only /healthz here\n"),
                })
                .check(|_| Err(HttpResponse::text(404, "only /healthz here\n")))
                .start(|_ws: uringws::WebSocket| async { Ok(()) })?;
            eprintln!("uringws echo health checks on {}", health.local_addr());
            Some(health)
        }
        None => None,
    };
    let stopped = running.shutdown_on(async {
        uringws::shutdown_signal().await;
        // Not eprintln!, which panics when stderr is gone (a closed pipe).
        let _ = writeln!(std::io::stderr(), "uringws: shutting down");
    });
    if let Some(health) = health {
        health.shutdown()?;
    }
    stopped
}
