//! A chat: rooms are topics, messages are JSON, the page is served at `GET /` and the
//! WebSocket at `/chat` (subprotocol `chat`). With `--broker`, several processes sharing one
//! Redis are one chat.
//!
//! ```sh
//! cargo run --release --example chat                       # http://127.0.0.1:9001/
//! cargo run --release --example chat -- 127.0.0.1:9002 --broker redis://127.0.0.1:6379
//! ```
//!
//! The client sends `{"type":"join","room":R,"name":N}`, then `{"type":"message","text":T}`
//! and `{"type":"leave"}`. Everyone in the room, the sender included, receives
//! `{"type":"join"|"leave","room":R,"name":N}` and `{"type":"message","room":R,"name":N,"text":T}`;
//! a malformed message gets `{"type":"error","reason":...}` and the connection stays open.
//! (`uringws chat` runs this same file.)

use std::sync::Arc;

use serde_json::{json, Value};
use uringws::pubsub::RedisBroker;
use uringws::{HttpResponse, Message, Publisher, Sender, Server, WebSocket};

const PAGE: &str = include_str!("chat.html");

/// Where and how to run the chat.
pub struct Options {
    /// Address to listen on.
    pub addr: String,
    /// Server threads (default: one per CPU).
    pub threads: Option<usize>,
    /// `redis://HOST:PORT` to share the rooms with other processes.
    pub broker: Option<String>,
}

/// Runs the chat until SIGINT or SIGTERM.
pub fn run(opts: Options) -> uringws::Result<()> {
    let broker = opts.broker.as_deref().map(RedisBroker::new).transpose()?;
    let broker = broker.map(Arc::new);
    let stats = broker.clone();
    let mut server = Server::bind(opts.addr.as_str())?
        .subprotocols(["chat"])
        .max_sizes(64 << 10, 64 << 10)
        .compression(uringws::Compression::shared())
        .check(|up| match up.request.path {
            "/chat" => Ok(()),
            _ => Err(HttpResponse::text(404, "the chat is at /chat\n")),
        })
        .http(move |req| match req.path {
            "/" => HttpResponse::with_type(200, "text/html; charset=utf-8", PAGE),
            "/healthz" => HttpResponse::text(200, "ok\n"),
            // What the broker did: connected, published, lost, received, missed, duplicates.
            "/stats" => match &stats {
                Some(b) => HttpResponse::with_type(200, "application/json", stats_json(b)),
                None => HttpResponse::text(404, "no broker\n"),
            },
            _ => HttpResponse::text(404, "not found\n"),
        });
    if let Some(b) = broker {
        server = server.broker(b);
    }
    if let Some(n) = opts.threads {
        server = server.threads(n);
    }
    let running = server.start(session)?;
    eprintln!("uringws chat listening on http://{}/", running.local_addr());
    running.shutdown_on(uringws::shutdown_signal())
}

fn stats_json(b: &RedisBroker) -> String {
    let s = b.stats();
    json!({
        "connected": s.connected, "connects": s.connects, "published": s.published,
        "publish_lost": s.publish_lost, "received": s.received, "missed": s.missed,
        "duplicates": s.duplicates,
    })
    .to_string()
}

/// The member a connection is, once it has joined a room.
struct Member {
    room: String,
    name: String,
}

impl Member {
    fn topic(&self) -> String {
        format!("room:{}", self.room)
    }

    fn event(&self, kind: &str) -> Value {
        json!({"type": kind, "room": self.room, "name": self.name})
    }
}

/// One connection: reads requests until the peer goes, then leaves its room.
async fn session(ws: WebSocket) -> uringws::Result<()> {
    let (mut rx, tx) = ws.split();
    let Some(room) = tx.publisher() else {
        return Err(uringws::Error::Config("a chat runs on a server".into()));
    };
    let mut member: Option<Member> = None;
    let result = async {
        while let Some(msg) = rx.recv().await? {
            let request = match msg {
                Message::Text(_) => msg.json::<Value>().map_err(|e| format!("not JSON: {e}")),
                _ => Err("send JSON text messages".into()),
            };
            let done = match request {
                Ok(r) => handle(&tx, &room, &mut member, &r).await,
                Err(reason) => Err(reason),
            };
            if let Err(reason) = done {
                tx.send_json(&json!({"type": "error", "reason": reason}))
                    .await?;
            }
        }
        Ok(())
    }
    .await;
    if let Some(m) = member {
        let _ = tx.publish_json(&m.topic(), &m.event("leave"));
    }
    result
}

/// Acts on one request; `Err` is the reason sent back to the client.
async fn handle(
    tx: &Sender,
    room: &Publisher,
    member: &mut Option<Member>,
    req: &Value,
) -> Result<(), String> {
    let field = |name: &str, max: usize| -> Result<String, String> {
        match req.get(name).and_then(Value::as_str).map(str::trim) {
            Some(s) if !s.is_empty() && s.chars().count() <= max => Ok(s.to_owned()),
            _ => Err(format!(
                "\"{name}\" must be a string of 1 to {max} characters"
            )),
        }
    };
    let failed = |e: uringws::Error| e.to_string();
    match req.get("type").and_then(Value::as_str) {
        Some("join") => {
            let joining = Member {
                room: field("room", 64)?,
                name: field("name", 32)?,
            };
            leave(tx, member.take()).await.map_err(failed)?;
            tx.subscribe(&joining.topic()).map_err(failed)?;
            // Through the topic, so the sender sees it in order with the room's messages.
            room.publish_json(&joining.topic(), &joining.event("join"))
                .map_err(failed)?;
            *member = Some(joining);
            Ok(())
        }
        Some("message") => {
            let m = member.as_ref().ok_or("join a room first")?;
            let mut event = m.event("message");
            event["text"] = field("text", 2000)?.into();
            room.publish_json(&m.topic(), &event).map_err(failed)
        }
        Some("leave") => {
            let m = member.take().ok_or("not in a room")?;
            leave(tx, Some(m)).await.map_err(failed)
        }
        _ => Err("\"type\" must be \"join\", \"message\" or \"leave\"".into()),
    }
}

/// Leaves the room: the others hear of it through the topic, the member directly (it is no
/// longer subscribed when the topic delivers).
async fn leave(tx: &Sender, member: Option<Member>) -> uringws::Result<()> {
    let Some(m) = member else { return Ok(()) };
    tx.unsubscribe(&m.topic());
    tx.publish_json(&m.topic(), &m.event("leave"))?;
    tx.send_json(&m.event("leave")).await
}

#[allow(dead_code)]
fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        addr: "127.0.0.1:9001".into(),
        threads: None,
        broker: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => opts.threads = args.next().and_then(|n| n.parse().ok()),
            "--broker" => opts.broker = args.next(),
            addr => opts.addr = addr.into(),
        }
    }
    if let Err(e) = run(opts) {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}
