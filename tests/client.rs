//! The client role against the project's server, and against servers that answer wrongly.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use uringws::client::{self, Connector};
use uringws::proto::handshake::{accept_key, ClientHandshakeError};
use uringws::{CloseCode, Error, Message, OwnedMessage};

#[test]
fn client_talks_to_the_server() {
    let Some(server) = start(local(1).subprotocols(["chat"])) else {
        return;
    };
    let url = format!("ws://{}/room?x=1", server.local_addr());
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31) as u8).collect();
    let big2 = big.clone();
    let got = client::block_on(async move {
        let ws = Connector::new()
            .protocols(["mqtt", "chat"])
            .connect(&url)
            .await?;
        assert_eq!(ws.info().protocol(), Some("chat"));
        let (mut rx, tx) = ws.split();
        tx.send_text("Hello, World!").await?;
        tx.send_binary(&big2).await?;
        tx.ping(b"p")?;
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(rx.recv().await?.unwrap().into_owned());
        }
        tx.close(CloseCode::NORMAL, "bye")?;
        assert!(rx.recv().await?.is_none());
        assert_eq!(rx.close_frame().map(|(c, _)| c), Some(CloseCode::NORMAL));
        Ok::<_, Error>(got)
    })
    .unwrap()
    .unwrap();
    assert_eq!(got[0], OwnedMessage::Text("Hello, World!".into()));
    assert_eq!(got[1], OwnedMessage::Binary(big.into()));
    server.shutdown().unwrap();
}

/// The client's writes complete without waking its writer task when nothing waits for them:
/// sends spaced out so that each write has ended (unobserved) before the next, and no read in
/// between, all still go out; `flush` and `buffered` see them written.
#[test]
fn client_sends_after_writes_that_ended_unobserved() {
    let Some(server) = start(local(1)) else {
        return;
    };
    let url = format!("ws://{}/", server.local_addr());
    client::block_on(async move {
        let ws = Connector::new().connect(&url).await?;
        let (mut rx, tx) = ws.split();
        for i in 0..5u8 {
            tx.send_binary(&[i; 3]).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(tx.buffered(), 0, "send {i}");
        }
        tx.send_text("last").await?;
        tx.flush().await?;
        for i in 0..5u8 {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.recv_owned()).await;
            assert_eq!(
                m.expect("an echo").unwrap(),
                Some(OwnedMessage::Binary(vec![i; 3].into()))
            );
        }
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv_owned()).await;
        assert_eq!(
            m.expect("an echo").unwrap(),
            Some(OwnedMessage::Text("last".into()))
        );
        tx.close(CloseCode::NORMAL, "")?;
        assert!(rx.recv().await?.is_none());
        Ok::<_, Error>(())
    })
    .unwrap()
    .unwrap();
    server.shutdown().unwrap();
}

#[test]
fn large_messages_round_trip_again_and_again() {
    // A small server read buffer: most of every payload is read straight into the
    // reassembly buffer, which then comes back from the thread's pool for the next message.
    let Some(server) = start(local(1).read_buffer_size(16 << 10)) else {
        return;
    };
    round_trips(server);
}

#[test]
fn owned_messages_round_trip_without_copies() {
    // recv_owned hands reassembled payloads over as Bytes, send_owned writes large ones from
    // where they are; the same buffers cycle through the thread's pool.
    let Some(server) = start_owned_echo(local(1).read_buffer_size(16 << 10)) else {
        return;
    };
    round_trips(server);
}

/// Starts `server` with an echo handler that uses `recv_owned` and `send_owned`.
fn start_owned_echo(server: uringws::Server) -> Option<uringws::RunningServer> {
    start_with(server, |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        while let Some(msg) = rx.recv_owned().await? {
            tx.send_owned(msg).await?;
        }
        Ok(())
    })
}

#[test]
fn owned_messages_that_fit_the_read_buffer_keep_order_and_bytes() {
    // With the default 64 KiB read buffer these messages lie whole in it. The first large
    // one is copied out of a registered buffer; after it reads go to heap buffers, which
    // later large messages take with them, the bytes behind them moving to a fresh buffer
    // (the client sends them all before reading, so several share a read).
    let Some(server) = start_owned_echo(local(1)) else {
        return;
    };
    let url = format!("ws://{}/", server.local_addr());
    let sizes = [
        20_000, 40_000, 5, 60_000, 30_000, 17, 65_000, 16_384, 16_383, 50_000, 0, 65_536,
    ];
    let sent: Vec<OwnedMessage> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            if i % 3 == 1 {
                OwnedMessage::Text("é".repeat(n / 2).into())
            } else {
                let bytes: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
                OwnedMessage::Binary(bytes.into())
            }
        })
        .collect();
    let want = sent.clone();
    let got = client::block_on(async move {
        let ws = client::connect(&url).await?;
        let (mut rx, tx) = ws.split();
        let mut got = Vec::new();
        for _ in 0..3 {
            for msg in &sent {
                tx.send_owned(msg.clone()).await?;
            }
            for _ in &sent {
                got.push(rx.recv_owned().await?.unwrap());
            }
        }
        tx.close(CloseCode::NORMAL, "")?;
        assert!(rx.recv().await?.is_none());
        Ok::<_, Error>(got)
    })
    .unwrap()
    .unwrap();
    assert_eq!(got.len(), 3 * want.len());
    for (i, msg) in got.iter().enumerate() {
        assert!(*msg == want[i % want.len()], "message {i}");
    }
    server.shutdown().unwrap();
}

/// Sends large and small messages three times over one connection and checks the echoes.
fn round_trips(server: uringws::RunningServer) {
    let url = format!("ws://{}/", server.local_addr());
    let binary: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let text = "κόσμε, ".repeat(150_000); // 1.5 MB of two-byte code points
    let (b2, t2) = (binary.clone(), text.clone());
    let got = client::block_on(async move {
        let ws = client::connect(&url).await?;
        let (mut rx, tx) = ws.split();
        // Text built by hand from bytes that are not UTF-8 is refused before anything is sent.
        let bad = OwnedMessage::Text(vec![b'a', 0xff].into());
        assert!(matches!(tx.send_owned(bad).await, Err(Error::InvalidText)));
        let mut got = Vec::new();
        for round in 0..3 {
            tx.send_binary(&b2[..b2.len() - round * 1000]).await?;
            tx.send_text(&t2).await?;
            tx.send_binary(&b2[..70_000]).await?;
            tx.send_text("small").await?;
            for _ in 0..4 {
                got.push(rx.recv().await?.unwrap().into_owned());
            }
        }
        tx.close(CloseCode::NORMAL, "")?;
        assert!(rx.recv().await?.is_none());
        Ok::<_, Error>(got)
    })
    .unwrap()
    .unwrap();
    assert_eq!(got.len(), 12);
    for (round, msgs) in got.chunks(4).enumerate() {
        let want = &binary[..binary.len() - round * 1000];
        assert!(
            msgs[0] == OwnedMessage::Binary(want.to_vec().into()),
            "round {round}"
        );
        assert!(
            msgs[1] == OwnedMessage::Text(text.clone().into()),
            "round {round}"
        );
        assert!(msgs[2] == OwnedMessage::Binary(binary[..70_000].to_vec().into()));
        assert_eq!(msgs[3], OwnedMessage::Text("small".into()));
    }
    server.shutdown().unwrap();
}

/// A one-shot server that reads the request head and answers with `respond(key)`, then
/// writes `frames` and keeps the socket open briefly.
fn fake_server(respond: fn(&str) -> String, frames: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap_or("")
            .to_owned();
        let _ = s.write_all(respond(&key).as_bytes());
        let _ = s.write_all(&frames);
        let mut sink = [0u8; 1024];
        while s.read(&mut sink).unwrap_or(0) > 0 {}
    });
    format!("ws://{addr}/")
}

fn ok_101(key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    )
}

fn handshake_error(url: &str) -> Error {
    client::block_on(async { client::connect(url).await.map(|_| ()) })
        .unwrap()
        .unwrap_err()
}

#[test]
fn client_refuses_bad_101s() {
    if !uring_available() {
        return;
    }
    type Respond = fn(&str) -> String;
    let cases: Vec<(Respond, ClientHandshakeError)> = vec![
        (
            |_| {
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".into()
            },
            ClientHandshakeError::Accept,
        ),
        (
            |k| ok_101(k).replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n"),
            ClientHandshakeError::Protocol("chat".into()),
        ),
        (
            |k| {
                ok_101(k).replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                )
            },
            ClientHandshakeError::Extension("permessage-deflate".into()),
        ),
        (
            |_| "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into(),
            ClientHandshakeError::Status(403),
        ),
        (
            |k| ok_101(k).replace("Upgrade: websocket\r\n", ""),
            ClientHandshakeError::Upgrade,
        ),
    ];
    for (respond, want) in cases {
        match handshake_error(&fake_server(respond, Vec::new())) {
            Error::Handshake(got) => assert_eq!(got, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
}

fn first_error(frames: Vec<u8>) -> Error {
    let url = fake_server(ok_101, frames);
    client::block_on(async move {
        let ws = Connector::new()
            .max_sizes(1 << 20, 1 << 20)
            .connect(&url)
            .await?;
        let (mut rx, _tx) = ws.split();
        loop {
            match rx.recv().await {
                Ok(Some(Message::Text(_) | Message::Binary(_))) => continue,
                Ok(other) => panic!("expected an error, got {other:?}"),
                Err(e) => return Ok::<_, Error>(e),
            }
        }
    })
    .unwrap()
    .unwrap()
}

#[test]
fn client_refuses_bad_frames() {
    if !uring_available() {
        return;
    }
    use uringws::proto::ProtocolError as P;
    let masked = vec![0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1];
    let invalid_utf8 = vec![0x81, 0x02, 0xc3, 0x28];
    let oversized = vec![0x82, 0x7f, 0, 0, 0, 0, 0, 0x20, 0, 0];
    for (frames, want) in [
        (masked, P::MaskedFrame),
        (invalid_utf8, P::InvalidUtf8),
        (oversized, P::FrameTooBig),
    ] {
        match first_error(frames) {
            Error::Protocol(got) => assert_eq!(got, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
}

#[test]
fn client_reports_refused_connections_and_wss() {
    if !uring_available() {
        return;
    }
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        handshake_error(&format!("ws://{free}/")),
        Error::Io(_)
    ));
    // wss:// to a server that does not speak TLS: a TLS error, not a hang.
    // (It waits for the end of an HTTP head that never comes: its handshake timeout ends it.)
    let Some(plain) = start(local(1).handshake_timeout(std::time::Duration::from_secs(1))) else {
        return;
    };
    let e = handshake_error(&format!("wss://{}/", plain.local_addr()));
    assert!(matches!(e, Error::Tls(_) | Error::Io(_)), "{e:?}");
    plain.shutdown().unwrap();
}
