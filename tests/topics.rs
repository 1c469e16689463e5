//! Topics over real sockets: subscribe, publish (from handlers and from other threads),
//! unsubscribe, order per publisher, the slow-subscriber policy, and closing unsubscribes.

mod common;

use std::time::Duration;

use common::*;
use uringws::client::{self, Connector};
use uringws::{CloseCode, Error, OwnedMessage, Server, SlowSubscriber};

/// A server whose connections take commands as text: `sub T`, `unsub T`, `pub T TEXT`
/// (to the others) and `all T TEXT` (through the publisher: to everyone, itself included).
/// Each command is answered with `ok` (the publish itself is not echoed).
fn command_server(server: Server) -> Option<uringws::RunningServer> {
    start_with(server, |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        while let Some(msg) = rx.recv_owned().await? {
            let OwnedMessage::Text(t) = msg else { continue };
            let line = std::str::from_utf8(&t).unwrap().to_owned();
            let mut parts = line.splitn(3, ' ');
            let (cmd, topic, rest) = (parts.next(), parts.next().unwrap_or(""), parts.next());
            match (cmd, rest) {
                (Some("sub"), _) => {
                    tx.subscribe(topic)?;
                }
                (Some("unsub"), _) => {
                    tx.unsubscribe(topic);
                }
                (Some("pub"), Some(text)) => {
                    tx.publish(topic, OwnedMessage::Text(text.to_owned().into()))?
                }
                (Some("all"), Some(text)) => tx
                    .publisher()
                    .unwrap()
                    .publish(topic, OwnedMessage::Text(text.to_owned().into()))?,
                _ => {}
            }
            tx.send_text(&format!("ok {thread}")).await?;
        }
        Ok(())
    })
}

type Conn = (uringws::Receiver, uringws::Sender);

async fn command(c: &mut Conn, line: &str) -> Result<String, Error> {
    c.1.send_text(line).await?;
    match c.0.recv_owned().await?.expect("an answer") {
        OwnedMessage::Text(t) if t.starts_with(b"ok") => {
            Ok(String::from_utf8(t[3..].to_vec()).unwrap())
        }
        other => panic!("unexpected {other:?} before the ok of {line:?}"),
    }
}

async fn next_text(c: &mut Conn) -> String {
    match tokio::time::timeout(Duration::from_secs(10), c.0.recv_owned()).await {
        Ok(Ok(Some(OwnedMessage::Text(t)))) => String::from_utf8(t.to_vec()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn nothing_within(c: &mut Conn, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), c.0.recv_owned())
        .await
        .is_err()
}

#[test]
fn subscribe_publish_unsubscribe_on_one_thread() {
    let Some(server) = command_server(local(1)) else {
        return;
    };
    let url = format!("ws://{}/", server.local_addr());
    client::block_on(async move {
        let mut a = Connector::new().connect(&url).await?.split();
        let mut b = Connector::new().connect(&url).await?.split();
        let mut c = Connector::new().connect(&url).await?.split();
        command(&mut a, "sub news").await?;
        command(&mut b, "sub news").await?;
        command(&mut c, "sub sport").await?;
        // A handler's publish skips its own connection.
        command(&mut a, "pub news hello").await?;
        assert_eq!(next_text(&mut b).await, "hello");
        assert!(nothing_within(&mut a, 200).await);
        assert!(nothing_within(&mut c, 50).await);
        // Through the publisher: everyone subscribed, itself included.
        command(&mut a, "all news everyone").await?;
        assert_eq!(next_text(&mut a).await, "everyone");
        assert_eq!(next_text(&mut b).await, "everyone");
        command(&mut b, "unsub news").await?;
        command(&mut c, "all news again").await?;
        assert_eq!(next_text(&mut a).await, "again");
        assert!(nothing_within(&mut b, 200).await);
        Ok::<_, Error>(())
    })
    .unwrap()
    .unwrap();
    server.shutdown().unwrap();
}

#[test]
fn publishes_cross_threads_in_order_and_closing_unsubscribes() {
    let Some(server) = command_server(local(2)) else {
        return;
    };
    let url = format!("ws://{}/", server.local_addr());
    let publisher = server.publisher();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Subscribers on both threads (the kernel spreads accepts; more are opened until both
    // threads have some).
    let subscribers = std::thread::spawn(move || {
        client::block_on(async move {
            let mut conns = Vec::new();
            let mut threads = std::collections::HashSet::new();
            while threads.len() < 2 || conns.len() < 4 {
                assert!(conns.len() < 64, "every connection landed on one thread");
                let mut c = Connector::new().connect(&url).await?.split();
                threads.insert(command(&mut c, "sub ticker").await?);
                conns.push(c);
            }
            tx.send(()).unwrap();
            for c in &mut conns {
                for i in 0..1000 {
                    assert_eq!(next_text(c).await, format!("tick {i}"));
                }
            }
            // One subscriber goes; the others still get everything.
            let (rx0, tx0) = conns.remove(0);
            drop(tx0);
            drop(rx0);
            tx.send(()).unwrap();
            for c in &mut conns {
                assert_eq!(next_text(c).await, "after");
            }
            Ok::<_, Error>(conns.len())
        })
    });
    rx.recv().unwrap();
    for i in 0..1000 {
        publisher
            .publish("ticker", OwnedMessage::Text(format!("tick {i}").into()))
            .unwrap();
    }
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    publisher
        .publish("ticker", OwnedMessage::Text("after".into()))
        .unwrap();
    let left = subscribers.join().unwrap().unwrap().unwrap();
    assert!(left >= 3);
    assert_eq!(publisher.dropped(), 0);
    assert!(publisher
        .publish("ticker", OwnedMessage::Ping(Default::default()))
        .is_err());
    server.shutdown().unwrap();
}

/// A subscriber that never reads: with `Drop` the others get everything and the drops are
/// counted; with `Close(1013)` the slow one gets a 1013 close after what had fit in its queue,
/// and the others still get everything.
#[test]
fn a_slow_subscriber_gets_the_policy_and_the_others_everything() {
    for policy in [SlowSubscriber::Drop, SlowSubscriber::Close(CloseCode(1013))] {
        let server = local(1)
            .send_queue_limit(64 << 10)
            .slow_subscriber(policy)
            // Long: the slow subscriber reads only after the publishes, and its close frame
            // waits behind what it had not read.
            .close_timeout(Duration::from_secs(60));
        let Some(server) = command_server(server) else {
            return;
        };
        let addr = server.local_addr();
        let url = format!("ws://{addr}/");
        // The slow one: a raw socket that subscribes and then reads nothing until the
        // publishes are over. (Its receive buffer stays at least a loopback segment large: a
        // smaller one makes TCP fall back to zero-window probes, seconds apart.)
        let mut slow = Client::connect(addr);
        let _ = socket2::SockRef::from(&slow.stream).set_recv_buffer_size(256 << 10);
        slow.send(true, uringws::proto::frame::OpCode::Text, b"sub feed");
        assert_eq!(&slow.read_frame().unwrap().payload[..2], b"ok");
        let publisher = server.publisher();
        let got = client::block_on(async move {
            let mut fast = Connector::new().connect(&url).await?.split();
            command(&mut fast, "sub feed").await?;
            let payload = "x".repeat(64 << 10);
            let mut got = 0;
            for i in 0..300 {
                publisher
                    .publish("feed", OwnedMessage::Text(format!("{i} {payload}").into()))
                    .unwrap();
                let t = next_text(&mut fast).await;
                assert!(t.starts_with(&format!("{i} ")));
                got += 1;
            }
            Ok::<_, Error>((got, publisher.dropped()))
        })
        .unwrap()
        .unwrap();
        assert_eq!(got.0, 300);
        assert!(got.1 > 0, "{policy:?}: nothing was dropped");
        if let SlowSubscriber::Close(_) = policy {
            // What fit in its queue, then the close frame; answered, the server closes.
            let code = loop {
                let f = slow.read_frame().expect("a close frame");
                if f.opcode == 8 {
                    break u16::from_be_bytes([f.payload[0], f.payload[1]]);
                }
            };
            assert_eq!(code, 1013);
            slow.send(
                true,
                uringws::proto::frame::OpCode::Close,
                &1013u16.to_be_bytes(),
            );
            slow.expect_eof();
        }
        server.shutdown().unwrap();
    }
}
