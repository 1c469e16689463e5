//! permessage-deflate (RFC 7692) over real sockets: the project's client and server in every
//! mode, raw frames from a hand-written peer, and what hostile compressed input gets.

mod common;

use bytes::Bytes;
use common::*;
use uringws::client::{self, Connector};
use uringws::proto::deflate::{Compressor, Inflater, Stream};
use uringws::proto::frame::{write_frame_rsv, OpCode};
use uringws::{Compression, Error, OwnedMessage};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user-{}\",\"text\":\"hello room\"}},",
            i % 13
        ));
        i += 1;
    }
    s.truncate(n);
    s
}

fn random(n: usize) -> Vec<u8> {
    uringws::cli::load::noise(n)
}

/// Echoes a mix of messages through a server in `server_mode` with a client in `client_mode`
/// and returns the `Sec-WebSocket-Extensions` both sides saw.
fn echo_through(
    server_mode: Compression,
    client_mode: Compression,
) -> (Option<String>, Vec<Option<String>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let Some(server) = start_with(
        local(1).compression(server_mode),
        move |ws: uringws::WebSocket| {
            let seen = seen2.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(ws.info().extensions().map(str::to_owned));
                let (mut rx, tx) = ws.split();
                while let Some(msg) = rx.recv_owned().await? {
                    tx.send_owned(msg).await?;
                }
                Ok(())
            }
        },
    ) else {
        return (None, Vec::new());
    };
    let url = format!("ws://{}/", server.local_addr());
    let messages = vec![
        OwnedMessage::Text(json(50 << 10).into()),
        OwnedMessage::Binary(random(100_000).into()),
        OwnedMessage::Text(Bytes::new()),
        OwnedMessage::Text("short".into()),
        OwnedMessage::Binary(vec![0u8; 256 << 10].into()),
        OwnedMessage::Text(json(2000).into()),
        OwnedMessage::Text(json(2000).into()),
    ];
    let expected = messages.clone();
    let client_ext = client::block_on(async move {
        let ws = Connector::new()
            .compression(client_mode)
            .connect(&url)
            .await?;
        let ext = ws.info().extensions().map(str::to_owned);
        let (mut rx, tx) = ws.split();
        for round in 0..2 {
            for m in &messages {
                tx.send_owned(m.clone()).await?;
            }
            for (i, m) in messages.iter().enumerate() {
                let got = rx.recv_owned().await?.expect("an echo");
                assert!(got == *m, "round {round}, message {i} differs");
            }
        }
        Ok::<_, Error>(ext)
    })
    .unwrap()
    .unwrap();
    drop(expected);
    server.shutdown().unwrap();
    let seen = seen.lock().unwrap().clone();
    (client_ext, seen)
}

#[test]
fn every_mode_pair_round_trips() {
    if !uring_available() {
        return;
    }
    let modes = [
        Compression::OFF,
        Compression::shared(),
        Compression::dedicated(15),
        Compression::dedicated(10),
        Compression::shared().level(9).min_size(0),
    ];
    for server_mode in modes {
        for client_mode in modes {
            let (client_ext, server_ext) = echo_through(server_mode, client_mode);
            let on = server_mode.is_on() && client_mode.is_on();
            assert_eq!(
                client_ext.is_some(),
                on,
                "{server_mode:?} / {client_mode:?}"
            );
            assert_eq!(
                server_ext,
                vec![client_ext.clone()],
                "{server_mode:?} / {client_mode:?}"
            );
            if on {
                assert!(client_ext.unwrap().starts_with("permessage-deflate"));
            }
        }
    }
}

/// A hand-made compressing client: the agreement from the server's answer, and a compressor
/// and inflater to match.
struct Deflating {
    c: Client,
    tx: Compressor,
    rx: Inflater,
}

impl Deflating {
    fn connect(addr: std::net::SocketAddr, offer: &str) -> (Deflating, String) {
        let c = Client::connect_with(addr, &upgrade_request("/", offer));
        // The response head is consumed by connect_with; ask the server what it agreed by
        // the behaviour below instead. Settings that any agreement allows: each message on
        // its own, inflated with a full window.
        let stream = Stream {
            no_context_takeover: true,
            window_bits: 15,
        };
        let tx = Compressor::new(stream, &Compression::dedicated(15).min_size(0));
        let d = Deflating {
            c,
            tx,
            rx: Inflater::new(Stream {
                no_context_takeover: false,
                window_bits: 15,
            }),
        };
        (d, offer.to_owned())
    }

    /// Sends `payload` compressed, in `pieces` frames.
    fn send(&mut self, op: OpCode, payload: &[u8], pieces: usize) {
        let mut z = Vec::new();
        // A fresh compressor per message: its output needs no context on the other side.
        self.tx = Compressor::new(
            Stream {
                no_context_takeover: false,
                window_bits: 15,
            },
            &Compression::dedicated(15).min_size(0),
        );
        assert!(self.tx.compress(payload, &mut z));
        let step = z.len().div_ceil(pieces).max(1);
        let parts: Vec<&[u8]> = z.chunks(step).collect();
        let mut wire = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let (op, rsv) = if i == 0 {
                (op, 0x40)
            } else {
                (OpCode::Continuation, 0)
            };
            write_frame_rsv(
                &mut wire,
                i + 1 == parts.len(),
                rsv,
                op,
                Some([9, 8, 7, 6]),
                part,
            );
        }
        self.c.send_raw(&wire);
    }

    /// Reads one message, inflating it when RSV1 is set on its first frame.
    fn recv(&mut self) -> (u8, Vec<u8>) {
        let first = self.c.read_frame().expect("a frame");
        let compressed = first.rsv & 0x40 != 0;
        let mut frames = vec![first];
        while !frames.last().unwrap().fin {
            frames.push(self.c.read_frame().expect("a continuation"));
        }
        let mut out = Vec::new();
        let n = frames.len();
        for (i, f) in frames.iter().enumerate() {
            if compressed {
                self.rx
                    .inflate(&f.payload, i + 1 == n, &mut out, usize::MAX)
                    .unwrap();
            } else {
                out.extend_from_slice(&f.payload);
            }
        }
        (frames[0].opcode, out)
    }
}

#[test]
fn a_raw_peer_gets_compressed_echoes() {
    let Some(server) = start(local(1).compression(Compression::dedicated(15))) else {
        return;
    };
    let addr = server.local_addr();
    let (mut d, _) = Deflating::connect(addr, OFFER);
    let text = json(50_000);
    d.send(OpCode::Text, text.as_bytes(), 1);
    assert_eq!(d.recv(), (1, text.clone().into_bytes()));
    d.send(OpCode::Binary, &random(70_000), 5);
    assert_eq!(d.recv(), (2, random(70_000)));
    // An uncompressed message on the same connection.
    d.c.send(true, OpCode::Text, b"plain");
    assert_eq!(d.recv(), (1, b"plain".to_vec()));
    d.send(OpCode::Text, text.as_bytes(), 3);
    assert_eq!(d.recv(), (1, text.into_bytes()));
    server.shutdown().unwrap();
}

#[test]
fn misplaced_rsv1_and_corrupt_data_close_with_the_right_code() {
    let Some(server) = start(local(1).compression(Compression::shared())) else {
        return;
    };
    let addr = server.local_addr();
    let frame = |fin: bool, rsv: u8, op: OpCode, payload: &[u8]| {
        let mut v = Vec::new();
        write_frame_rsv(&mut v, fin, rsv, op, Some([1, 2, 3, 4]), payload);
        v
    };
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("RSV1 on a ping", frame(true, 0x40, OpCode::Ping, b""), 1002),
        (
            "RSV1 on a continuation",
            [
                frame(false, 0, OpCode::Text, b"a"),
                frame(true, 0x40, OpCode::Continuation, b"b"),
            ]
            .concat(),
            1002,
        ),
        ("RSV2", frame(true, 0x20, OpCode::Text, b"a"), 1002),
        (
            "data that does not inflate",
            frame(true, 0x40, OpCode::Binary, &[0xff; 40]),
            1007,
        ),
        // "\xe9" (Latin-1), stored in a deflate block: inflates fine, is not UTF-8.
        (
            "inflated text that is not UTF-8",
            frame(
                true,
                0x40,
                OpCode::Text,
                &[0x00, 0x01, 0x00, 0xfe, 0xff, 0xe9],
            ),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = Client::connect_with(addr, &upgrade_request("/", OFFER));
        c.send_raw(&bytes);
        assert_eq!(c.expect_close(), Some(code), "{what}");
    }
    // Without the extension, RSV1 is a protocol error.
    let Some(plain) = start(local(1)) else {
        return;
    };
    let mut c = Client::connect_with(plain.local_addr(), &upgrade_request("/", OFFER));
    c.send_raw(&frame(true, 0x40, OpCode::Text, &[0x00]));
    assert_eq!(c.expect_close(), Some(1002));
    assert_still_serves(addr);
    plain.shutdown().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn offers_are_answered_as_the_rfc_requires() {
    let Some(server) = start(local(1).compression(Compression::dedicated(12))) else {
        return;
    };
    let addr = server.local_addr();
    // The status and the head (with its last CRLF) of the answer to an upgrade with `offer`.
    let head = |offer: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(upgrade_request("/", offer).as_bytes()).unwrap();
        let mut all = Vec::new();
        while !all.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "EOF before the head");
            all.extend_from_slice(&chunk[..n]);
        }
        let r = parse_response(&all);
        (r.status, r.head + "\r\n")
    };
    let (status, h) = head("Sec-WebSocket-Extensions: x-foo, permessage-deflate; server_max_window_bits=10; client_max_window_bits\r\n");
    assert_eq!(status, 101);
    assert!(
        h.contains("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; client_max_window_bits=12\r\n"),
        "{h}"
    );
    // Two header lines, quoted value: the first offer wins.
    let (status, h) = head(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=\"9\"\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    assert_eq!(status, 101);
    assert!(
        h.contains("permessage-deflate; client_max_window_bits=9\r\n"),
        "{h}"
    );
    // Not offered: no extension, the connection is still accepted.
    let (status, h) = head("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n");
    assert_eq!(status, 101);
    assert!(
        !h.to_ascii_lowercase().contains("sec-websocket-extensions"),
        "{h}"
    );
    // Malformed offers are refused with 400.
    for bad in [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mystery",
    ] {
        let (status, _) = head(&format!("Sec-WebSocket-Extensions: {bad}\r\n"));
        assert_eq!(status, 400, "{bad}");
    }
    server.shutdown().unwrap();
}

/// A 64 KiB compressed message that would inflate to far more than the message limit is
/// closed with 1009, and the server's memory grows by less than the limit plus 1 MiB.
#[test]
fn a_compression_bomb_gets_1009_without_the_memory() {
    const LIMIT: u64 = 4 << 20;
    let Some(server) = start(
        local(1)
            .compression(Compression::shared())
            .max_sizes(LIMIT, LIMIT),
    ) else {
        return;
    };
    let addr = server.local_addr();
    // A few hundred MiB of zeros, level 9: about 64 KiB on the wire (a bomb of ratio ~1000).
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::best(), false, 15);
    let mut bomb = Vec::with_capacity(1 << 20);
    let zeros = vec![0u8; 1 << 20];
    while bomb.len() < 64 << 10 {
        c.compress_vec(&zeros, &mut bomb, flate2::FlushCompress::None)
            .unwrap();
    }
    c.compress_vec(&[], &mut bomb, flate2::FlushCompress::Sync)
        .unwrap();
    let inflates_to = c.total_in();
    assert!(inflates_to > 16 * LIMIT, "{inflates_to}");
    let mut wire = Vec::new();
    write_frame_rsv(
        &mut wire,
        true,
        0x40,
        OpCode::Binary,
        Some([5, 6, 7, 8]),
        &bomb,
    );
    let before = rss_kib();
    let mut clients: Vec<Client> = (0..4)
        .map(|_| Client::connect_with(addr, &upgrade_request("/", OFFER)))
        .collect();
    for c in &mut clients {
        c.send_raw(&wire);
    }
    for c in &mut clients {
        assert_eq!(c.expect_close(), Some(1009));
    }
    let grew = rss_kib().saturating_sub(before);
    // Each connection allocates at most the limit plus one inflate step before it fails;
    // the four are inflated one after the other on one thread.
    assert!(
        grew < (LIMIT >> 10) as usize + 1024,
        "RSS grew by {grew} KiB"
    );
    assert_still_serves(addr);
    server.shutdown().unwrap();
}

thread_local! {
    /// The senders of the connections on this (single-threaded) server.
    static SENDERS: std::cell::RefCell<Vec<uringws::Sender>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[test]
fn one_payload_sent_to_many_connections_arrives_intact_everywhere() {
    // Compressed once per thread for the connections that share settings; a connection
    // that limited the server's window to 10 bits gets its own compressed form.
    let Some(server) = start_with(
        local(1).compression(Compression::shared()),
        |ws: uringws::WebSocket| async move {
            let (mut rx, tx) = ws.split();
            SENDERS.with(|s| s.borrow_mut().push(tx.clone()));
            while let Some(msg) = rx.recv_owned().await? {
                let all = SENDERS.with(|s| s.borrow().clone());
                for s in all {
                    let _ = s.send_owned(msg.clone()).await;
                }
            }
            Ok(())
        },
    ) else {
        return;
    };
    let url = format!("ws://{}/", server.local_addr());
    let payload = json(200_000);
    let expected = payload.clone();
    client::block_on(async move {
        let mut sockets = Vec::new();
        for i in 0..6 {
            let mode = if i % 3 == 2 {
                Compression::dedicated(10)
            } else {
                Compression::shared()
            };
            sockets.push(
                Connector::new()
                    .compression(mode)
                    .connect(&url)
                    .await?
                    .split(),
            );
        }
        // Every connection is registered once it has been served its first message.
        for (rx, tx) in &mut sockets {
            tx.send_text("hello").await?;
            let _ = rx;
        }
        let mut hellos = vec![0; sockets.len()];
        for (i, (rx, _)) in sockets.iter_mut().enumerate() {
            // Each hello reaches the connections registered by then; drain them.
            while hellos[i] < i + 1 {
                let m = rx.recv_owned().await?.expect("a hello");
                assert_eq!(m, OwnedMessage::Text("hello".into()));
                hellos[i] += 1;
            }
        }
        sockets[0].1.send_text(&payload).await?;
        for (i, (rx, _)) in sockets.iter_mut().enumerate() {
            loop {
                let m = rx.recv_owned().await?.expect("the broadcast");
                if m == OwnedMessage::Text("hello".into()) {
                    continue;
                }
                assert!(
                    m == OwnedMessage::Text(expected.clone().into()),
                    "connection {i}"
                );
                break;
            }
        }
        Ok::<_, Error>(())
    })
    .unwrap()
    .unwrap();
    server.shutdown().unwrap();
}
