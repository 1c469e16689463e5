//! `uringws broadcast`: a minimal publish/subscribe relay on the server's topics.
//!
//! A WebSocket connection to `/NAME` subscribes to topic `NAME` (the request path without its
//! leading `/`, query string excluded; `/` alone is the topic with the empty name, which is a
//! topic like any other). Every text or binary message a connection sends is published to its
//! topic and reaches every *other* subscriber of it, on every server thread
//! ([`crate::Sender::publish`]); the sender does not get its own messages back. A subscriber
//! whose send queue is over `--send-queue` misses the message (the server's
//! [`crate::SlowSubscriber::Drop`] policy); `uringws broadcast` logs how many were dropped when
//! it stops. `GET /healthz` answers 200.
//!
//! It is the server side of `uringws load --fanout` and of `scripts/fanout.sh`.

use std::io::Write as _;

use crate::{HttpResponse, Server, WebSocket};

/// Arguments of `uringws broadcast`.
#[derive(clap::Args, Debug)]
pub struct BroadcastArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: String,
    /// Runtime threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most open connections.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,
    /// Send queue high-water mark per connection in bytes: a subscriber with more queued
    /// misses what is published meanwhile.
    #[arg(long, default_value_t = 1 << 20)]
    pub send_queue: usize,
}

/// The topic of a connection to `path`: the path without its leading `/` (`/` alone: the
/// topic with the empty name).
pub fn topic_of(path: &str) -> &str {
    path.strip_prefix('/').unwrap_or(path)
}

/// Runs the relay until SIGINT or SIGTERM, then closes every connection with 1001 and returns.
/// Fails, with a message naming the flag, on an invalid argument, or when the address cannot
/// be bound or io_uring is unavailable.
pub fn run(args: BroadcastArgs) -> Result<(), String> {
    let mut server = Server::bind(args.addr.as_str())
        .map_err(|e| e.to_string())?
        .max_connections(args.max_connections)
        .send_queue_limit(args.send_queue)
        // Subscribers only read: a connection that sends nothing for a long benchmark run
        // must not be closed as idle.
        .idle_timeout(None)
        .http(|req| match req.path {
            "/healthz" => HttpResponse::text(200, "ok\n"),
            _ => HttpResponse::upgrade_required(),
        });
    if let Some(n) = args.threads {
        server = server.threads(n);
    }
    let running = server.start(relay).map_err(config_error)?;
    let publisher = running.publisher();
    eprintln!("uringws broadcast listening on {}", running.local_addr());
    let result = running.shutdown_on(async {
        crate::shutdown_signal().await;
        // Not eprintln!, which panics when stderr is gone (a closed pipe).
        let _ = writeln!(std::io::stderr(), "uringws: shutting down");
    });
    let dropped = publisher.dropped();
    if dropped > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "uringws broadcast: {dropped} message(s) dropped for subscribers whose send queue \
             was full (--send-queue {})",
            args.send_queue
        );
    }
    result.map_err(|e| e.to_string())
}

/// One connection: subscribe to the path's topic, publish whatever it sends to the others.
async fn relay(ws: WebSocket) -> crate::Result<()> {
    let (mut rx, tx) = ws.split();
    let topic = topic_of(tx.info().path()).to_owned();
    tx.subscribe(&topic)?;
    while let Some(msg) = rx.recv_owned().await? {
        // Only text and binary come out of `recv_owned`; pings are answered on the way.
        tx.publish(&topic, msg)?;
    }
    Ok(())
}

/// A configuration error named by its `uringws broadcast` flag.
fn config_error(e: crate::Error) -> String {
    const FLAGS: &[(&str, &str)] = &[
        ("threads", "--threads"),
        ("max_connections", "--max-connections"),
        ("send_queue_limit", "--send-queue"),
    ];
    super::flag_error(e, FLAGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_from_paths() {
        assert_eq!(topic_of("/room"), "room");
        assert_eq!(topic_of("/a/b"), "a/b");
        assert_eq!(topic_of("/"), "");
        assert_eq!(topic_of(""), "");
    }
}
