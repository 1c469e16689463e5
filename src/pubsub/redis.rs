//! The Redis broker: topics carried over Redis pub/sub (Redis 6 or later), one channel per
//! topic, on a thread of its own.
//!
//! The thread holds two connections: one in subscriber mode (SUBSCRIBE and UNSUBSCRIBE, and
//! the messages), one for PUBLISH, where everything queued since the last round trip leaves
//! in one pipeline. Each message carries its origin (a random id per broker) and a sequence
//! number per topic, so that a process skips its own publishes, drops a message it already
//! delivered and counts those it never saw. When Redis goes away, local delivery goes on;
//! publishes are counted as lost instead of sent, and the thread reconnects with backoff and
//! subscribes again to what its connections need. Delivery across processes is at most once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::Broker;
use crate::error::{Error, Result};
use crate::proto::message::OwnedMessage;
use crate::Publisher;

/// The first bytes of a message that a uringws broker published.
const MAGIC: &[u8; 4] = b"uws1";
/// Magic, origin, sequence number and kind.
const ENVELOPE: usize = 4 + 8 + 8 + 1;
/// Longest wait for a connection, a subscription or a pipeline reply before the connection is
/// taken for dead.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the subscriber connection is checked with a PING (by default).
const PING_EVERY: Duration = Duration::from_secs(5);
/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Most origins remembered per topic (a restarted process has a new origin).
const MAX_ORIGINS: usize = 1024;
/// Most publishes waiting for the broker thread; more are counted as lost (Redis too slow or
/// away, and the server's memory must stay bounded).
const MAX_QUEUED: u64 = 100_000;

/// What the broker has done so far, from [`RedisBroker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Whether the broker is connected to Redis now.
    pub connected: bool,
    /// Successful connections (the first one and each reconnection).
    pub connects: u64,
    /// Publishes of this process sent to Redis.
    pub published: u64,
    /// Publishes of this process not sent, because Redis was unreachable or failed: lost for
    /// the other processes (at most once).
    pub publish_lost: u64,
    /// Messages of other processes delivered here.
    pub received: u64,
    /// Messages of other processes this process never received, counted from the gaps in
    /// their sequence numbers (while it stayed subscribed to their topic).
    pub missed: u64,
    /// Messages received twice and dropped.
    pub duplicates: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    connects: AtomicU64,
    published: AtomicU64,
    publish_lost: AtomicU64,
    received: AtomicU64,
    missed: AtomicU64,
    duplicates: AtomicU64,
    /// Publishes queued for the thread.
    queued: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, OwnedMessage),
    /// The server has stopped.
    Stop,
}

/// Carries a server's topics over Redis pub/sub: set it with [`crate::Server::broker`].
///
/// The topic `T` is the Redis channel `PREFIX` + `T` (prefix `uringws:` unless set with
/// [`RedisBroker::prefix`]). Messages that another program publishes on such a channel are
/// delivered too: as text when they are UTF-8, else as binary.
pub struct RedisBroker {
    client: ::redis::Client,
    prefix: String,
    origin: u64,
    ping_every: Duration,
    counters: Arc<Counters>,
    tx: mpsc::UnboundedSender<Command>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("redis", self.client.get_connection_info().addr())
            .field("prefix", &self.prefix)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisBroker {
    /// A broker for the Redis at `url` (`redis://HOST[:PORT][/DB]`, with a user and password
    /// when needed). It connects when the server starts and keeps trying while Redis is
    /// unreachable; only a malformed URL is an error here ([`Error::Config`]).
    pub fn new(url: &str) -> Result<RedisBroker> {
        let client = ::redis::Client::open(url)
            .map_err(|e| Error::Config(format!("invalid Redis URL {url:?}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(RedisBroker {
            client,
            prefix: "uringws:".into(),
            origin: rand::random(),
            ping_every: PING_EVERY,
            counters: Arc::default(),
            tx,
            rx: Mutex::new(Some(rx)),
            thread: Mutex::new(None),
        })
    }

    /// Sets the prefix of the Redis channels (default `uringws:`), to keep apart the
    /// applications that share one Redis. Every process of one application must use the same.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Sets how often the subscriber connection is checked with a PING (default 5 s), which
    /// finds a Redis that went away without closing the connection.
    pub fn ping_every(mut self, every: Duration) -> Self {
        self.ping_every = every.max(Duration::from_millis(10));
        self
    }

    /// What the broker has done so far.
    pub fn stats(&self) -> BrokerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BrokerStats {
            connected: c.connected.load(Ordering::Relaxed),
            connects: get(&c.connects),
            published: get(&c.published),
            publish_lost: get(&c.publish_lost),
            received: get(&c.received),
            missed: get(&c.missed),
            duplicates: get(&c.duplicates),
        }
    }
}

impl Broker for RedisBroker {
    fn start(&self, local: Publisher) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            tracing::warn!("a RedisBroker serves one server: this one has started already");
            return;
        };
        let link = Link {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            origin: self.origin,
            ping_every: self.ping_every,
            counters: self.counters.clone(),
            local,
            wanted: HashSet::new(),
            seen: HashMap::new(),
            seq: HashMap::new(),
        };
        let spawned = std::thread::Builder::new()
            .name("uringws-redis".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(link.run(rx)),
                    Err(e) => tracing::error!(error = %e, "Redis broker: no runtime"),
                }
            });
        match spawned {
            Ok(t) => *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
            Err(e) => tracing::error!(error = %e, "Redis broker: cannot start its thread"),
        }
    }

    fn subscribe(&self, topic: &str) {
        let _ = self.tx.send(Command::Subscribe(topic.to_owned()));
    }

    fn unsubscribe(&self, topic: &str) {
        let _ = self.tx.send(Command::Unsubscribe(topic.to_owned()));
    }

    fn publish(&self, topic: &str, message: &OwnedMessage) {
        if !matches!(message, OwnedMessage::Text(_) | OwnedMessage::Binary(_)) {
            return;
        }
        let c = &self.counters;
        if c.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED
            || self
                .tx
                .send(Command::Publish(topic.to_owned(), message.clone()))
                .is_err()
        {
            c.queued.fetch_sub(1, Ordering::Relaxed);
            bump(&c.publish_lost, 1);
        }
    }

    fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The broker thread's state.
struct Link {
    client: ::redis::Client,
    prefix: String,
    origin: u64,
    ping_every: Duration,
    counters: Arc<Counters>,
    local: Publisher,
    /// The topics this process's connections need.
    wanted: HashSet<String>,
    /// Per topic: the last sequence number seen from each origin.
    seen: HashMap<String, HashMap<u64, u64>>,
    /// Per topic: the sequence number of this process's last publish.
    seq: HashMap<String, u64>,
}

/// Why a connection's loop ended.
enum End {
    /// The server stopped: the thread ends.
    Stop,
    /// Redis went away or failed: reconnect.
    Lost(String),
}

impl Link {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = BACKOFF_MIN;
        let mut lost_logged = false;
        loop {
            match self.connect().await {
                Ok((sink, stream, publish)) => {
                    backoff = BACKOFF_MIN;
                    lost_logged = false;
                    self.counters.connected.store(true, Ordering::Relaxed);
                    let n = self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        topics = self.wanted.len(),
                        reconnect = n > 0,
                        "Redis broker connected"
                    );
                    let end = self.serve(&mut rx, sink, stream, publish).await;
                    self.counters.connected.store(false, Ordering::Relaxed);
                    match end {
                        End::Stop => return,
                        End::Lost(why) => tracing::warn!(
                            "Redis broker: connection lost ({why}); local delivery goes on, reconnecting"
                        ),
                    }
                }
                Err(e) => {
                    if !lost_logged {
                        tracing::warn!("Redis broker: cannot connect ({e}); retrying");
                        lost_logged = true;
                    }
                }
            }
            // Wait before the next attempt, keeping up with the commands meanwhile.
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            let wait = tokio::time::sleep(backoff.mul_f64(jitter));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    cmd = rx.recv() => match cmd {
                        None | Some(Command::Stop) => return,
                        Some(cmd) => self.offline(cmd),
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(
        &self,
    ) -> std::result::Result<
        (
            ::redis::aio::PubSubSink,
            ::redis::aio::PubSubStream,
            ::redis::aio::MultiplexedConnection,
        ),
        String,
    > {
        let setup = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            let publish = self.client.get_multiplexed_async_connection().await?;
            let channels: Vec<String> = self.wanted.iter().map(|t| self.channel(t)).collect();
            if !channels.is_empty() {
                sink.subscribe(channels).await?;
            }
            Ok::<_, ::redis::RedisError>((sink, stream, publish))
        };
        match tokio::time::timeout(IO_TIMEOUT, setup).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// A command while Redis is unreachable: subscriptions are remembered, publishes lost.
    fn offline(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(t) => {
                self.wanted.insert(t);
            }
            Command::Unsubscribe(t) => self.forget(&t),
            Command::Publish(t, _) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                // Numbered all the same, so that the others count the gap.
                self.next_seq(&t);
                bump(&self.counters.publish_lost, 1);
            }
            Command::Stop => {}
        }
    }

    fn forget(&mut self, topic: &str) {
        self.wanted.remove(topic);
        self.seen.remove(topic);
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    fn next_seq(&mut self, topic: &str) -> u64 {
        let s = self.seq.entry(topic.to_owned()).or_insert(0);
        *s += 1;
        *s
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        mut sink: ::redis::aio::PubSubSink,
        mut stream: ::redis::aio::PubSubStream,
        mut publish: ::redis::aio::MultiplexedConnection,
    ) -> End {
        let mut ping = tokio::time::interval(self.ping_every);
        ping.tick().await;
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(mut cmd) = cmd else { return End::Stop };
                    // Everything queued goes now: publishes in one pipeline, in order with
                    // the subscription changes around them.
                    loop {
                        match cmd {
                            Command::Publish(topic, message) => {
                                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                                let seq = self.next_seq(&topic);
                                batch.push((self.channel(&topic), self.envelope(seq, &message)));
                            }
                            Command::Stop => {
                                let _ = self.flush(&mut publish, &mut batch).await;
                                return End::Stop;
                            }
                            Command::Subscribe(topic) => {
                                if let Err(why) = self.change(&mut sink, &mut publish, &mut batch, topic, true).await {
                                    return End::Lost(why);
                                }
                            }
                            Command::Unsubscribe(topic) => {
                                if let Err(why) = self.change(&mut sink, &mut publish, &mut batch, topic, false).await {
                                    return End::Lost(why);
                                }
                            }
                        }
                        match rx.try_recv() {
                            Ok(next) => cmd = next,
                            Err(_) => break,
                        }
                    }
                    if let Err(why) = self.flush(&mut publish, &mut batch).await {
                        return End::Lost(why);
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => self.inbound(&msg),
                    None => return End::Lost("the subscriber connection closed".into()),
                },
                _ = ping.tick() => {
                    // In subscriber mode (RESP2) Redis answers a PING with ["pong", ""], not
                    // "PONG": any answer will do.
                    match tokio::time::timeout(IO_TIMEOUT, sink.ping::<::redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return End::Lost(e.to_string()),
                        Err(_) => return End::Lost("PING timed out".into()),
                    }
                }
            }
        }
    }

    /// Sends the queued publishes in one pipeline; on failure they count as lost.
    async fn flush(
        &self,
        publish: &mut ::redis::aio::MultiplexedConnection,
        batch: &mut Vec<(String, Vec<u8>)>,
    ) -> std::result::Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (channel, data) in batch.iter() {
            pipe.cmd("PUBLISH").arg(channel).arg(&data[..]).ignore();
        }
        let n = batch.len() as u64;
        batch.clear();
        match tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(publish)).await {
            Ok(Ok(())) => {
                bump(&self.counters.published, n);
                Ok(())
            }
            failed => {
                bump(&self.counters.publish_lost, n);
                Err(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "PUBLISH timed out".into(),
                })
            }
        }
    }

    /// A subscription change while connected, after the publishes queued before it.
    async fn change(
        &mut self,
        sink: &mut ::redis::aio::PubSubSink,
        publish: &mut ::redis::aio::MultiplexedConnection,
        batch: &mut Vec<(String, Vec<u8>)>,
        topic: String,
        subscribe: bool,
    ) -> std::result::Result<(), String> {
        if let Err(why) = self.flush(publish, batch).await {
            // Remembered for the next connection.
            self.offline(if subscribe {
                Command::Subscribe(topic)
            } else {
                Command::Unsubscribe(topic)
            });
            return Err(why);
        }
        let channel = self.channel(&topic);
        let done = if subscribe {
            self.wanted.insert(topic);
            tokio::time::timeout(IO_TIMEOUT, sink.subscribe(channel)).await
        } else {
            self.forget(&topic);
            tokio::time::timeout(IO_TIMEOUT, sink.unsubscribe(channel)).await
        };
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("SUBSCRIBE timed out".into()),
        }
    }

    fn envelope(&self, seq: u64, message: &OwnedMessage) -> Vec<u8> {
        // Only text and binary messages reach the broker (see `RedisBroker::publish`).
        let (kind, payload): (u8, &[u8]) = match message {
            OwnedMessage::Text(b) => (b't', b),
            OwnedMessage::Binary(b) => (b'b', b),
            _ => (b'b', &[]),
        };
        let mut out = Vec::with_capacity(ENVELOPE + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    /// A message from Redis: delivered here unless it is this process's own or a repeat.
    fn inbound(&mut self, msg: &::redis::Msg) {
        let Some(topic) = msg.get_channel_name().strip_prefix(self.prefix.as_str()) else {
            return;
        };
        if !self.wanted.contains(topic) {
            return; // Unsubscribed since.
        }
        let topic = topic.to_owned();
        let data = msg.get_payload_bytes();
        let message = match parse_envelope(data) {
            Some((origin, _, _)) if origin == self.origin => return,
            Some((origin, seq, message)) => {
                let seen = self.seen.entry(topic.clone()).or_default();
                if seen.len() >= MAX_ORIGINS && !seen.contains_key(&origin) {
                    seen.clear();
                }
                match seen.insert(origin, seq) {
                    Some(last) if seq <= last => {
                        seen.insert(origin, last);
                        bump(&self.counters.duplicates, 1);
                        return;
                    }
                    Some(last) => bump(&self.counters.missed, seq - last - 1),
                    None => {}
                }
                message
            }
            None => foreign(data),
        };
        bump(&self.counters.received, 1);
        if let Err(e) = self.local.publish_local(&topic, message) {
            tracing::debug!(error = %e, "Redis broker: message not delivered");
        }
    }
}

/// Origin, sequence number and message of a uringws envelope.
fn parse_envelope(data: &[u8]) -> Option<(u64, u64, OwnedMessage)> {
    if data.len() < ENVELOPE || &data[..4] != MAGIC {
        return None;
    }
    let origin = u64::from_le_bytes(data[4..12].try_into().ok()?);
    let seq = u64::from_le_bytes(data[12..20].try_into().ok()?);
    let payload = Bytes::copy_from_slice(&data[ENVELOPE..]);
    let message = match data[20] {
        b't' => OwnedMessage::Text(payload),
        b'b' => OwnedMessage::Binary(payload),
        _ => return None,
    };
    Some((origin, seq, message))
}

/// A message another program published: text when it is UTF-8.
fn foreign(data: &[u8]) -> OwnedMessage {
    let payload = Bytes::copy_from_slice(data);
    if simdutf8::basic::from_utf8(data).is_ok() {
        OwnedMessage::Text(payload)
    } else {
        OwnedMessage::Binary(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_foreign_messages_are_typed() {
        let data = {
            let mut out = Vec::new();
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&7u64.to_le_bytes());
            out.extend_from_slice(&9u64.to_le_bytes());
            out.push(b't');
            out.extend_from_slice(b"hi");
            out
        };
        let (origin, seq, m) = parse_envelope(&data).unwrap();
        assert_eq!((origin, seq), (7, 9));
        assert_eq!(m, OwnedMessage::Text(Bytes::from_static(b"hi")));
        assert_eq!(
            foreign(b"plain"),
            OwnedMessage::Text(Bytes::from_static(b"plain"))
        );
        assert_eq!(
            foreign(b"\xff"),
            OwnedMessage::Binary(Bytes::from_static(b"\xff"))
        );
        assert!(parse_envelope(b"uws1short").is_none());
    }
}
