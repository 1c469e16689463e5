//! Topics over real sockets: subscribe, publish (from handlers and from other threads),
//! unsubscribe, order per publisher, the slow-subscriber policy, and closing unsubscribes.

mod common;

use std::time::Duration;

use common::topics::*;
use common::*;
use uringws::client::{self, Connector};
use uringws::{CloseCode, Error, OwnedMessage, SlowSubscriber};

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
            // Room for two of the 64 KiB messages: the fast subscriber's last one still counts
            // as being written until the server reaps its send's completion, which may come
            // after the next publish (with one message's room, that publish was dropped for
            // the fast one too, now and then, and the test waited for it in vain).
            .send_queue_limit(192 << 10)
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

const SUBSCRIBERS: usize = 10_000;
const BROADCASTS: usize = 100;

#[test]
fn ten_thousand_subscribers_on_two_threads_each_receive_all_of_100_broadcasts() {
    let server = local(2).max_connections(SUBSCRIBERS + 10);
    let Some(server) = start_with(server, |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        tx.subscribe("ticker")?;
        tx.send_text("subscribed").await?;
        while rx.recv().await?.is_some() {}
        Ok(())
    }) else {
        return;
    };
    // The subscribers live in a child process (this test binary, running the ignored test
    // below), so that each side needs only its own 10,000 descriptors.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "subscribers_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("UWS_SUBSCRIBE_TO", server.local_addr().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // libtest may print the test's name on the same line first.
    while !line.contains("SUBSCRIBERS READY") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the subscribers' process ended before it was ready");
    }
    // Every subscriber is subscribed before the first broadcast; they are spread over both
    // threads (round robin), so the broadcasts cross threads.
    let publisher = server.publisher();
    for i in 0..BROADCASTS {
        let text = format!("tick {i:03}");
        publisher
            .publish("ticker", OwnedMessage::Text(text.into()))
            .unwrap();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "subscribers' process: {status}\n{rest}");
    assert!(
        rest.contains(&format!("received {}", SUBSCRIBERS * BROADCASTS)),
        "{rest}"
    );
    assert_eq!(publisher.dropped(), 0);
    server.shutdown().unwrap();
}

/// The subscribers of the test above, in their own process: connects them, says READY, then
/// checks that each receives every broadcast, in order.
#[test]
#[ignore = "run by ten_thousand_subscribers_on_two_threads_each_receive_all_of_100_broadcasts"]
fn subscribers_process() {
    let addr: std::net::SocketAddr = std::env::var("UWS_SUBSCRIBE_TO")
        .expect("run by the ten_thousand_subscribers test")
        .parse()
        .unwrap();
    let mut clients: Vec<Client> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut c = Client::connect(addr);
            assert_eq!(c.read_frame().unwrap().payload, b"subscribed");
            c
        })
        .collect();
    println!("\nSUBSCRIBERS READY");
    let mut received = 0;
    for (n, c) in clients.iter_mut().enumerate() {
        for i in 0..BROADCASTS {
            let f = c
                .read_frame()
                .unwrap_or_else(|| panic!("subscriber {n} lost broadcast {i}"));
            assert_eq!(f.opcode, 1, "subscriber {n}");
            assert_eq!(
                f.payload,
                format!("tick {i:03}").as_bytes(),
                "subscriber {n}"
            );
            received += 1;
        }
    }
    println!("received {received}");
}
