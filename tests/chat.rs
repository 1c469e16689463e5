//! The chat example, as `uringws chat` runs it: the page, the upgrade at `/chat` with the
//! `chat` subprotocol, and the JSON protocol (join, message, leave, errors) between clients on
//! both server threads.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use uringws::client::{self, Connector};
use uringws::{Error, OwnedMessage};

/// `uringws chat` on a free port with two threads; killed when dropped.
struct Chat {
    child: Child,
    addr: String,
}

impl Chat {
    fn start() -> Chat {
        let mut child = Command::new(env!("CARGO_BIN_EXE_uringws"))
            .args(["chat", "--addr", "127.0.0.1:0", "--threads", "2"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        stderr.read_line(&mut line).unwrap();
        // Keep reading: a closed pipe would make the server's next log line fail.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let addr = line
            .trim()
            .strip_prefix("uringws chat listening on http://")
            .and_then(|a| a.strip_suffix('/'))
            .unwrap_or_else(|| panic!("{line}"))
            .to_owned();
        Chat { child, addr }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Conn = (uringws::Receiver, uringws::Sender);

async fn join(url: &str, room: &str, name: &str) -> Result<Conn, Error> {
    let ws = Connector::new()
        .protocols(["chat", "superchat"])
        .connect(url)
        .await?;
    assert_eq!(ws.info().protocol(), Some("chat"));
    let mut c = ws.split();
    send(&c, json!({"type": "join", "room": room, "name": name})).await?;
    assert_eq!(
        next(&mut c).await,
        json!({"type": "join", "room": room, "name": name})
    );
    Ok(c)
}

async fn send(c: &Conn, v: Value) -> Result<(), Error> {
    c.1.send_json(&v).await
}

async fn next(c: &mut Conn) -> Value {
    match tokio::time::timeout(Duration::from_secs(10), c.0.recv_owned()).await {
        Ok(Ok(Some(m @ OwnedMessage::Text(_)))) => m.json().unwrap(),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

async fn quiet(c: &mut Conn) -> bool {
    tokio::time::timeout(Duration::from_millis(200), c.0.recv_owned())
        .await
        .is_err()
}

#[test]
fn the_page_is_served_and_other_paths_are_refused() {
    if !common::uring_available() {
        return;
    }
    let chat = Chat::start();
    let addr = chat.addr.parse().unwrap();
    let page = common::http_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(page.status, 200);
    assert!(
        page.head.contains("Content-Type: text/html; charset=utf-8"),
        "{}",
        page.head
    );
    assert!(String::from_utf8_lossy(&page.body).contains("<title>uringws chat</title>"));
    let elsewhere =
        common::http_exchange(addr, common::upgrade_request("/elsewhere", "").as_bytes());
    assert_eq!(elsewhere.status, 404);
    // Without the subprotocol offered, the chat still answers (and chooses none).
    let c = common::Client::connect_with(addr, &common::upgrade_request("/chat", ""));
    drop(c);
}

#[test]
fn rooms_messages_leaves_and_errors() {
    if !common::uring_available() {
        return;
    }
    let chat = Chat::start();
    let url = format!("ws://{}/chat", chat.addr);
    client::block_on(async move {
        let mut ann = join(&url, "kitchen", "ann").await?;
        let mut bob = join(&url, "kitchen", "bob").await?;
        let mut cid = join(&url, "garden", "cid").await?;
        assert_eq!(
            next(&mut ann).await,
            json!({"type": "join", "room": "kitchen", "name": "bob"})
        );
        // A message reaches the room, the sender included, and no other room.
        send(&bob, json!({"type": "message", "text": "tea?"})).await?;
        let said = json!({"type": "message", "room": "kitchen", "name": "bob", "text": "tea?"});
        assert_eq!(next(&mut bob).await, said);
        assert_eq!(next(&mut ann).await, said);
        assert!(quiet(&mut cid).await);

        // Malformed requests get an error each, and the connection stays open.
        for bad in [
            "not json",
            r#"{"type":"dance"}"#,
            r#"{"type":"join","room":"","name":"x"}"#,
            r#"{"type":"message"}"#,
            r#"[1,2]"#,
        ] {
            cid.1.send_text(bad).await?;
            let v = next(&mut cid).await;
            assert_eq!(v["type"], "error", "{bad}: {v}");
            assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        }
        cid.1.send_binary(b"{}").await?;
        assert_eq!(next(&mut cid).await["type"], "error");
        let fresh = Connector::new().connect(&url).await?;
        let mut fresh = fresh.split();
        send(&fresh, json!({"type": "message", "text": "hi"})).await?;
        assert_eq!(next(&mut fresh).await["reason"], "join a room first");

        // Leaving: the member and the room hear of it, and the member hears no more.
        send(&ann, json!({"type": "leave"})).await?;
        let left = json!({"type": "leave", "room": "kitchen", "name": "ann"});
        assert_eq!(next(&mut ann).await, left);
        assert_eq!(next(&mut bob).await, left);
        send(&bob, json!({"type": "message", "text": "more tea"})).await?;
        assert_eq!(next(&mut bob).await["text"], "more tea");
        assert!(quiet(&mut ann).await);

        // Joining another room moves the member; a connection that goes is a leave.
        send(
            &bob,
            json!({"type": "join", "room": "garden", "name": "bob"}),
        )
        .await?;
        assert_eq!(
            next(&mut bob).await,
            json!({"type": "leave", "room": "kitchen", "name": "bob"})
        );
        assert_eq!(
            next(&mut bob).await,
            json!({"type": "join", "room": "garden", "name": "bob"})
        );
        assert_eq!(next(&mut cid).await["name"], "bob");
        cid.1.close(uringws::CloseCode::NORMAL, "bye")?;
        while cid.0.recv_owned().await?.is_some() {}
        assert_eq!(
            next(&mut bob).await,
            json!({"type": "leave", "room": "garden", "name": "cid"})
        );
        Ok::<_, Error>(())
    })
    .unwrap()
    .unwrap();
}
