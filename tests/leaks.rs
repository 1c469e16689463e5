//! Dropping things mid-operation leaks nothing: servers are started and shut down under
//! traffic, clients vanish mid-frame, handlers return early or keep a receive in flight in a
//! `select!`; afterwards the process holds the descriptors it held before, and its memory has
//! not grown with the number of rounds.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{local, rss_kib, start_with, Client};
use uringws::proto::frame::{write_frame, OpCode};
use uringws::WebSocket;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Echoes, except: "quit" returns at once, "hold" keeps a receive in a `select!` that a
/// timer wins until the peer goes.
async fn handler(ws: WebSocket) -> uringws::Result<()> {
    let (mut rx, tx) = ws.split();
    while let Some(msg) = rx.recv().await? {
        match msg.payload() {
            b"quit" => return Ok(()),
            b"hold" => loop {
                tokio::select! {
                    m = rx.recv() => if m?.is_none() { return Ok(()) },
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            },
            _ => tx.send(msg).await?,
        }
    }
    Ok(())
}

/// One client's part of a round: a few echoes, then it goes in one of several rude ways.
fn client(addr: SocketAddr, i: usize) {
    let Ok(mut c) = std::panic::catch_unwind(|| Client::connect(addr)) else {
        return; // the server was already stopping
    };
    for _ in 0..3 {
        c.send(true, OpCode::Binary, &vec![i as u8; 100 + i * 997 % 70_000]);
        if c.read_frame().is_none() {
            return;
        }
    }
    match i % 4 {
        0 => c.send(true, OpCode::Text, b"quit"),
        1 => c.send(true, OpCode::Text, b"hold"),
        2 => {
            // Half a large frame, then gone.
            let mut frame = Vec::new();
            write_frame(
                &mut frame,
                true,
                OpCode::Binary,
                Some([1, 2, 3, 4]),
                &[7; 300_000],
            );
            c.send_raw(&frame[..150_000]);
        }
        _ => {} // gone without a word
    }
}

fn round(threads: usize) {
    let server = start_with(local(threads), handler).unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..24)
        .map(|i| std::thread::spawn(move || client(addr, i)))
        .collect();
    // Some connections that only open, or send half a handshake.
    let mut idle: Vec<TcpStream> = (0..8)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    for s in idle.iter_mut().take(4) {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
    }
    for c in clients {
        c.join().unwrap();
    }
    // Shut down while "hold" handlers wait and half-sent frames are pending.
    server.shutdown().unwrap();
    drop(idle);
}

#[test]
fn servers_stopped_under_traffic_leave_no_descriptors_or_memory_behind() {
    if !common::uring_available() {
        return;
    }
    // A first round fills the allocator's and the runtime's caches.
    round(2);
    std::thread::sleep(Duration::from_millis(100));
    let (fds, rss) = (open_fds(), rss_kib());
    let rounds: usize = std::env::var("UWS_LEAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for _ in 0..rounds {
        round(2);
    }
    std::thread::sleep(Duration::from_millis(100));
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    eprintln!(
        "descriptors {fds} -> {fds_after}, VmRSS {rss} -> {rss_after} KiB over {rounds} rounds"
    );
    assert_eq!(fds_after, fds, "descriptors left open by {rounds} rounds");
    assert!(
        rss_after < rss + 16 * 1024,
        "memory grew from {rss} to {rss_after} KiB over {rounds} rounds"
    );
}
