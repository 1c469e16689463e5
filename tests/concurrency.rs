//! 2,000 concurrent connections on 2 threads, each echoing 100 messages, some larger than
//! the read buffer and some dribbled in tiny TCP writes; then a fresh client is still served.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uringws::proto::frame::{write_frame, OpCode};

const CONNECTIONS: usize = 2000;
const MESSAGES: usize = 100;

fn payload(conn: usize, i: usize) -> Vec<u8> {
    // Every 25th message is larger than a small read buffer (the test server uses 16 KiB).
    let len = if i % 25 == 24 {
        40_000
    } else {
        1 + (conn * 7 + i * 13) % 300
    };
    (0..len).map(|j| (conn + i + j) as u8).collect()
}

async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if buf.len() >= 2 {
            let (hdr, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                126 | 127 => (usize::MAX, 0),
                n => (2, n as usize),
            };
            if hdr != usize::MAX && buf.len() >= hdr + len {
                let op = buf[0] & 0x0f;
                let p = buf[hdr..hdr + len].to_vec();
                buf.drain(..hdr + len);
                return (op, p);
            }
        }
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn one_client(addr: SocketAddr, conn: usize) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(buf.starts_with(b"HTTP/1.1 101"));
            buf.drain(..i + 4);
            break;
        }
    }
    // Ten messages in flight at a time.
    for batch in (0..MESSAGES).collect::<Vec<_>>().chunks(10) {
        let mut out = Vec::new();
        for &i in batch {
            write_frame(
                &mut out,
                true,
                OpCode::Binary,
                Some([conn as u8, i as u8, 3, 4]),
                &payload(conn, i),
            );
        }
        if conn.is_multiple_of(50) {
            // Dribble this batch in 7-byte writes.
            for piece in out.chunks(7) {
                s.write_all(piece).await.unwrap();
            }
        } else {
            s.write_all(&out).await.unwrap();
        }
        for &i in batch {
            let (op, p) = read_frame(&mut s, &mut buf).await;
            assert_eq!(op, 2);
            assert!(
                p == payload(conn, i),
                "connection {conn} message {i} corrupted"
            );
        }
    }
    let mut close = Vec::new();
    write_frame(
        &mut close,
        true,
        OpCode::Close,
        Some([1, 1, 1, 1]),
        &1000u16.to_be_bytes(),
    );
    s.write_all(&close).await.unwrap();
    let (op, _) = read_frame(&mut s, &mut buf).await;
    assert_eq!(op, 8);
}

#[test]
fn two_thousand_connections_echo_correctly() {
    let Some(server) = start(local(2)) else {
        return;
    };
    let addr = server.local_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|c| tokio::spawn(one_client(addr, c)))
            .collect();
        let all = async {
            for t in tasks {
                t.await.expect("client task");
            }
        };
        tokio::time::timeout(Duration::from_secs(240), all)
            .await
            .expect("the clients did not finish in time");
    });
    // After all of that, a new client is served.
    let mut c = Client::connect(addr);
    c.send(true, OpCode::Text, b"after the storm");
    assert_eq!(c.read_frame().unwrap().payload, b"after the storm");
    drop(c);
    server.shutdown().unwrap();
}
