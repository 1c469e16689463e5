//! Every protocol violation closes the connection with its close code, over a real socket,
//! and the server keeps serving others.

mod common;

use common::*;
use uringws::proto::frame::OpCode;

fn violation(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut c = Client::connect(addr);
    c.send_raw(bytes);
    c.expect_close()
}

fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    uringws::proto::frame::write_frame(&mut out, fin, op, Some([9, 8, 7, 6]), payload);
    out
}

#[test]
fn violations_close_with_their_code() {
    let Some(server) = start(local(2).max_sizes(1 << 20, 1 << 20)) else {
        return;
    };
    let addr = server.local_addr();
    let mut bad_opcode = masked(true, OpCode::Text, b"x");
    bad_opcode[0] = 0x83;
    let mut rsv = masked(true, OpCode::Text, b"x");
    rsv[0] |= 0x40;
    let mut fragmented_ping = masked(true, OpCode::Ping, b"x");
    fragmented_ping[0] &= 0x7f;
    let mut close_bad_code = masked(true, OpCode::Close, &1005u16.to_be_bytes());
    close_bad_code.truncate(close_bad_code.len());
    let big_header = [0x82u8, 0xff, 0, 0, 0, 0, 0, 0x20, 0, 0, 1, 2, 3, 4];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved bits", rsv, 1002),
        ("reserved opcode", bad_opcode, 1002),
        ("fragmented control", fragmented_ping, 1002),
        (
            "control over 125 bytes",
            masked(true, OpCode::Ping, &[0; 126]),
            1002,
        ),
        (
            "invalid UTF-8",
            masked(true, OpCode::Text, &[0xce, 0xba, 0xff]),
            1007,
        ),
        ("close code 1005", close_bad_code, 1002),
        ("1-byte close", masked(true, OpCode::Close, &[3]), 1002),
        (
            "continuation without start",
            masked(true, OpCode::Continuation, b"x"),
            1002,
        ),
        ("oversized message", big_header.to_vec(), 1009),
        (
            "oversized fragmented message",
            [
                masked(false, OpCode::Binary, &vec![0; 600_000]),
                masked(true, OpCode::Continuation, &vec![0; 600_000]),
            ]
            .concat(),
            1009,
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(violation(addr, &bytes), Some(want), "{what}");
    }
    // Invalid UTF-8 is caught before the frame is complete.
    let mut c = Client::connect(addr);
    let frame = masked(
        true,
        OpCode::Text,
        &[&[0xf4, 0x90, 0x80, 0x80][..], &[b'a'; 5000]].concat(),
    );
    c.send_raw(&frame[..100]);
    assert_eq!(c.expect_close(), Some(1007));
    drop(c);
    // Deep inside a large frame, whose payload is read straight into the reassembly buffer:
    // the bad byte arrives long after the first read, and the frame is never completed.
    let mut c = Client::connect(addr);
    let frame = masked(
        true,
        OpCode::Text,
        &[&[b'a'; 400_000][..], &[0xff], &[b'b'; 100_000]].concat(),
    );
    c.send_raw(&frame[..200_000]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.send_raw(&frame[200_000..400_100]);
    assert_eq!(c.expect_close(), Some(1007));
    drop(c);
    // The server still serves a new client.
    assert_still_serves(addr);
    server.shutdown().unwrap();
}

#[test]
fn ping_pong_and_close_handshakes() {
    let Some(server) = start(local(1)) else {
        return;
    };
    let addr = server.local_addr();
    let mut c = Client::connect(addr);
    // A ping between fragments is answered at once; the message is reassembled.
    c.send(false, OpCode::Text, b"Hel");
    c.send(true, OpCode::Ping, b"are you there");
    let pong = c.read_frame().unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, &b"are you there"[..])
    );
    c.send(true, OpCode::Continuation, b"lo");
    let m = c.read_frame().unwrap();
    assert_eq!(
        (m.fin, m.opcode, m.payload.as_slice()),
        (true, 1, &b"Hello"[..])
    );
    // Client-initiated close: the server echoes the code and closes TCP.
    c.send(true, OpCode::Close, &[0x03, 0xe8, b'b', b'y', b'e']);
    assert_eq!(c.expect_close(), Some(1000));
    drop(c);
    // An empty close is answered with an empty close.
    let mut c = Client::connect(addr);
    c.send(true, OpCode::Close, b"");
    assert_eq!(c.expect_close(), None);
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn server_initiated_close_waits_for_the_peer() {
    let handler = |ws: uringws::WebSocket| async move {
        let (mut rx, tx) = ws.split();
        if let Some(m) = rx.recv().await? {
            tx.send(m).await?;
        }
        tx.close(uringws::CloseCode(4000), "done")?;
        // Waits for the peer's close frame.
        assert!(rx.recv().await?.is_none());
        assert_eq!(rx.close_frame().map(|(c, _)| c.0), Some(4000));
        Ok(())
    };
    let Some(server) = start_with(local(1), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    c.send(true, OpCode::Binary, &[1, 2, 3]);
    assert_eq!(c.read_frame().unwrap().payload, [1, 2, 3]);
    let close = c.read_frame().unwrap();
    assert_eq!(close.opcode, 8);
    assert_eq!(
        &close.payload,
        &[&4000u16.to_be_bytes()[..], b"done"].concat()
    );
    c.send(true, OpCode::Close, &4000u16.to_be_bytes());
    c.expect_eof();
    drop(c);
    server.shutdown().unwrap();
}
