//! Timeouts, backpressure and graceful shutdown, over real sockets.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use uringws::proto::frame::OpCode;

#[test]
fn half_a_handshake_is_dropped_at_the_timeout() {
    let app = local(1).handshake_timeout(Duration::from_millis(300));
    let Some(server) = start(app) else { return };
    let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgr").unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server should close without answering");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed too late: {waited:?}"
    );
    // A client that connects and sends nothing is dropped too.
    let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    server.shutdown().unwrap();
}

#[test]
fn idle_connections_get_pinged_then_closed() {
    let app = local(1)
        .ping_interval(Some(Duration::from_millis(200)))
        .idle_timeout(Some(Duration::from_millis(700)));
    let Some(server) = start(app) else { return };
    let mut c = Client::connect(server.local_addr());
    let ping = c.read_frame().unwrap();
    assert_eq!(ping.opcode, 9, "a keep-alive ping");
    // Never answering: the idle timeout closes with 1001.
    assert_eq!(c.expect_close(), Some(1001));
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_never_reads_is_bounded_by_the_send_queue() {
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    let handler = move |ws: uringws::WebSocket| {
        let q = q.clone();
        async move {
            let (_rx, tx) = ws.split();
            let chunk = vec![7u8; 64 << 10];
            loop {
                tx.send_binary(&chunk).await?;
                q.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
    };
    let app = local(1)
        .send_queue_limit(256 << 10)
        .idle_timeout(Some(Duration::from_secs(2)));
    let Some(server) = start_with(app, handler) else {
        return;
    };
    let c = Client::connect(server.local_addr());
    std::thread::sleep(Duration::from_millis(800));
    let first = queued.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(400));
    let second = queued.load(Ordering::Relaxed);
    assert_eq!(first, second, "send kept queueing without the peer reading");
    // The queue limit plus the kernel's socket buffers, nothing like unbounded.
    assert!(second < 64 << 20, "{second} bytes queued");
    assert!(second > 0);
    // The idle timeout (nothing received) eventually ends the stuck connection.
    let t = Instant::now();
    while server.connections() > 0 && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.connections(),
        0,
        "the stuck connection was not dropped"
    );
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn graceful_shutdown_closes_with_1001() {
    let Some(server) = start(local(2)) else {
        return;
    };
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for c in &mut clients {
        c.send(true, OpCode::Text, b"x");
        assert_eq!(c.read_frame().unwrap().payload, b"x");
    }
    let handle = server.shutdown_handle();
    let joiner = std::thread::spawn(move || server.join());
    handle.shutdown();
    for c in &mut clients {
        let close = c.read_frame().unwrap();
        assert_eq!(close.opcode, 8);
        assert_eq!(
            u16::from_be_bytes([close.payload[0], close.payload[1]]),
            1001
        );
        c.send(true, OpCode::Close, &1001u16.to_be_bytes());
        c.expect_eof();
    }
    drop(clients);
    let t = Instant::now();
    joiner.join().unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn connection_limit_answers_503() {
    let Some(server) = start(local(1).max_connections(2)) else {
        return;
    };
    let addr = server.local_addr();
    let a = Client::connect(addr);
    let b = Client::connect(addr);
    let r = http_exchange(addr, upgrade_request("/", "").as_bytes());
    assert_eq!(r.status, 503);
    drop((a, b));
    let t = Instant::now();
    while server.connections() > 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client::connect(addr);
    c.send(true, OpCode::Text, b"room again");
    assert_eq!(c.read_frame().unwrap().payload, b"room again");
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    let app = local(1)
        .send_queue_limit(64 << 10)
        .idle_timeout(Some(Duration::from_secs(3)));
    let Some(server) = start(app) else { return };
    let c = Client::connect(server.local_addr());
    let mut stream = c.stream.try_clone().unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let before = rss_kib();
    // 64 MiB of 125-byte pings, each answered by a 127-byte pong nobody reads.
    let mut ping = Vec::new();
    uringws::proto::frame::write_frame(
        &mut ping,
        true,
        OpCode::Ping,
        Some([1, 2, 3, 4]),
        &[7; 125],
    );
    let batch: Vec<u8> = ping.repeat(1000);
    let writer = std::thread::spawn(move || {
        let mut sent = 0usize;
        while sent < 64 << 20 {
            if stream.write_all(&batch).is_err() {
                break; // the server stopped reading: backpressure reached the client
            }
            sent += batch.len();
        }
        sent
    });
    let sent = writer.join().unwrap();
    let grown = rss_kib().saturating_sub(before);
    assert!(
        sent < 64 << 20,
        "the server read {sent} bytes of pings without backpressure"
    );
    assert!(grown < 32 << 10, "memory grew by {grown} KiB");
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn shared_payloads_keep_their_order_through_partial_writes() {
    // For every message: "before", the payload as one Bytes sent twice (written from where it
    // is, not copied), "between"/"after" around it, and a ping in the middle.
    let handler = |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        while let Some(msg) = rx.recv_owned().await? {
            let uringws::OwnedMessage::Binary(payload) = msg else {
                continue;
            };
            tx.send_text("before").await?;
            tx.send_owned(uringws::OwnedMessage::Binary(payload.clone()))
                .await?;
            tx.send_text("between").await?;
            tx.ping(b"p")?;
            tx.send_owned(uringws::OwnedMessage::Binary(payload))
                .await?;
            tx.send_text("after").await?;
        }
        Ok(())
    };
    let Some(server) = start_with(local(1).send_queue_limit(8 << 20), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    c.send(true, OpCode::Binary, &payload);
    c.send(true, OpCode::Binary, &payload[..20_000]);
    // Not reading for a while: the server's socket buffer fills and its vectored writes
    // complete in parts.
    std::thread::sleep(Duration::from_millis(300));
    // Ten data frames in order, and the two pings somewhere among them: control frames go
    // ahead of queued data, so the second message's ping may overtake the first's frames
    // when both messages were received before the first write started.
    let (mut order, mut pings) = (Vec::new(), 0);
    while order.len() < 10 || pings < 2 {
        let f = c.read_frame().expect("a frame");
        match f.opcode {
            0x9 => pings += 1,
            0x2 => {
                let size = if order.len() < 5 {
                    payload.len()
                } else {
                    20_000
                };
                assert!(f.payload[..] == payload[..size], "{size} bytes intact");
                order.push("B".to_owned());
            }
            _ => order.push(String::from_utf8(f.payload).unwrap()),
        }
        assert!(pings <= 2);
    }
    assert_eq!(
        order,
        ["before", "B", "between", "B", "after"].repeat(2),
        "data frames in order"
    );
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn frames_queued_from_other_tasks_and_after_awaits_go_out() {
    // Frames a handler queues are announced to the writer when its poll ends; frames queued
    // from another task wake the writer themselves. Neither may wait for the other.
    let handler = |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let ticker = tx.clone();
        tokio::task::spawn_local(async move {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = ticker.send_text(&format!("tick {i}")).await;
            }
        });
        while let Some(msg) = rx.recv_owned().await? {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send_owned(msg).await?;
            tx.send_text("and after").await?;
        }
        Ok(())
    };
    let Some(server) = start_with(local(1), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    // The ticks arrive while the handler waits in recv (the read timeout is 20 s).
    for i in 0..3 {
        let f = c.read_frame().expect("a tick");
        assert_eq!(f.payload, format!("tick {i}").into_bytes());
    }
    for round in 0..3 {
        let text = format!("echo {round}");
        c.send(true, OpCode::Text, text.as_bytes());
        assert_eq!(c.read_frame().expect("the echo").payload, text.into_bytes());
        assert_eq!(c.read_frame().expect("the second").payload, b"and after");
    }
    c.send(true, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1000));
    c.expect_eof();
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn many_timeouts_on_one_thread_each_fire_on_time() {
    // One thread's timers carry all of these at once: handshakes that never come, closes the
    // peer never answers, and active connections whose idle deadline keeps moving.
    let handler = |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        while let Some(msg) = rx.recv().await? {
            if msg.payload() == b"close me" {
                tx.close(uringws::CloseCode::NORMAL, "")?;
            } else {
                tx.send(msg).await?;
            }
        }
        Ok(())
    };
    let config = local(1)
        .handshake_timeout(Duration::from_millis(300))
        .close_timeout(Duration::from_millis(400))
        .idle_timeout(Some(Duration::from_millis(500)));
    let Some(server) = start_with(config, handler) else {
        return;
    };
    let addr = server.local_addr();
    let start = std::time::Instant::now();
    let silent: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    let mut unanswered: Vec<Client> = (0..50).map(|_| Client::connect(addr)).collect();
    for c in &mut unanswered {
        c.send(true, OpCode::Text, b"close me");
    }
    let mut active: Vec<Client> = (0..10).map(|_| Client::connect(addr)).collect();
    // The active ones talk every 100 ms for 1.2 s: past the idle timeout, never idle for it.
    for _ in 0..12 {
        for c in &mut active {
            c.send(true, OpCode::Text, b"still here");
            assert_eq!(c.read_frame().unwrap().payload, b"still here");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The silent ones were dropped at the handshake timeout.
    for mut s in silent {
        let mut b = [0u8; 16];
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent connection got {other:?}"),
        }
    }
    // The unanswered closes ended at the close timeout: a close frame, then the server's end.
    for c in &mut unanswered {
        let f = c.read_frame().expect("the close frame");
        assert_eq!(f.opcode, 0x8);
        c.expect_eof();
    }
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    // The active ones are open; once they stop talking, the idle timeout closes them.
    for c in &mut active {
        c.send(true, OpCode::Text, b"last");
        assert_eq!(c.read_frame().unwrap().payload, b"last");
    }
    for c in &mut active {
        let f = c.read_frame().expect("the idle close");
        assert_eq!(f.opcode, 0x8);
        assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), 1001);
    }
    server.shutdown().unwrap();
}

/// Connections that come one at a time are spread over the threads: the kernel would wake the
/// same thread's accept for each of them.
#[test]
fn connections_are_spread_over_the_threads() {
    let Some(server) = start_with(local(2), |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let name = std::thread::current().name().unwrap_or("").to_owned();
        while rx.recv().await?.is_some() {
            tx.send_text(&name).await?;
        }
        Ok(())
    }) else {
        return;
    };
    let mut counts = std::collections::HashMap::new();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(server.local_addr());
        c.send(true, OpCode::Text, b"which thread?");
        let name = String::from_utf8(c.read_frame().unwrap().payload).unwrap();
        *counts.entry(name).or_insert(0) += 1;
        clients.push(c);
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    server.shutdown().unwrap();
}

/// Handlers that hold their receive buffers (they do not call `recv` for a while) can use up
/// the thread's ring; the connections that come meanwhile are still served, at once, and the
/// thread does not spin waiting for buffers.
#[test]
fn a_ring_held_by_busy_handlers_does_not_stall_other_connections() {
    let Some(server) = start_with(
        local(1).registered_buffers(4),
        |ws: uringws::WebSocket| async move {
            let (mut rx, tx) = ws.split();
            while let Some(msg) = rx.recv().await? {
                let hold = msg.payload() == b"hold";
                tx.send(msg).await?;
                if hold {
                    // The message's ring buffer stays with this connection meanwhile.
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
            }
            Ok(())
        },
    ) else {
        return;
    };
    let addr = server.local_addr();
    let mut holders = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect(addr);
        c.send(true, OpCode::Text, b"hold");
        assert_eq!(c.read_frame().unwrap().payload, b"hold");
        holders.push(c);
    }
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let mut c = Client::connect(addr);
        c.send(true, OpCode::Text, b"still served");
        assert_eq!(c.read_frame().unwrap().payload, b"still served");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().unwrap();
}
