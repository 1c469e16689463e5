//! What a handler can rely on: `recv` inside `select!` and under timeouts loses nothing, the
//! send queue can be measured and flushed, and data can be attached to a connection.

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::{local, start_with, Client};
use uringws::proto::frame::OpCode;
use uringws::WebSocket;

/// Sizes around the read buffer (16 KiB here) and the direct-read threshold, so that reads
/// into the read buffer and straight into the reassembly buffer are both cancelled.
const SIZES: [usize; 8] = [1, 125, 4000, 16_000, 16_500, 40_000, 100_000, 300_000];

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[test]
fn recv_under_a_timeout_that_keeps_firing_loses_no_bytes() {
    // Each recv is given 50 µs: almost every read is cancelled at least once, and resumed
    // by the next call.
    let handler = |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let mut timeouts = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_micros(50), rx.recv()).await {
                Err(_) => timeouts += 1,
                Ok(Ok(Some(msg))) => tx.send(msg).await?,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e),
            }
        }
        assert!(timeouts > 0, "the timeout never fired");
        Ok(())
    };
    let Some(server) = start_with(local(1).read_buffer_size(16 << 10), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    for round in 0..3 {
        for (i, &len) in SIZES.iter().enumerate() {
            let data = payload(round * 10 + i, len);
            // Sent in pieces with pauses, so that reads wait and get cancelled mid-frame.
            let mut frame = Vec::new();
            uringws::proto::frame::write_frame(
                &mut frame,
                true,
                OpCode::Binary,
                Some([9, 8, 7, 6]),
                &data,
            );
            for piece in frame.chunks(frame.len() / 3 + 1) {
                c.send_raw(piece);
                std::thread::sleep(Duration::from_millis(2));
            }
            let echo = c.read_frame().expect("echo");
            assert_eq!(echo.opcode, 2);
            assert!(echo.payload == data, "round {round}, {len} bytes differ");
        }
    }
    c.send(true, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1000));
    server.shutdown().unwrap();
}

#[test]
fn recv_in_select_with_a_busy_timer_keeps_message_order() {
    let handler = |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        let mut tick = tokio::time::interval(Duration::from_micros(100));
        let ticks = Cell::new(0u64);
        loop {
            tokio::select! {
                msg = rx.recv_owned() => match msg? {
                    Some(msg) => tx.send_owned(msg).await?,
                    None => break,
                },
                _ = tick.tick() => ticks.set(ticks.get() + 1),
            }
        }
        assert!(ticks.get() > 0);
        Ok(())
    };
    let Some(server) = start_with(local(1).read_buffer_size(16 << 10), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    for i in 0..200 {
        let data = payload(i, SIZES[i % SIZES.len()]);
        c.send(true, OpCode::Binary, &data);
        if i % 7 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let echo = c.read_frame().expect("echo");
        assert!(echo.payload == data, "message {i} differs");
    }
    c.send(true, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1000));
    server.shutdown().unwrap();
}

#[test]
fn buffered_counts_the_queue_and_flush_waits_for_it() {
    let handler = |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        assert_eq!(tx.buffered(), 0);
        // The client does not read until told: 4 MiB cannot all leave at once.
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..64 {
            tx.send_binary(&chunk).await?;
        }
        let queued = tx.buffered();
        assert!(queued > 0, "nothing queued");
        tx.flush().await?; // returns once the client has read enough
        assert_eq!(tx.buffered(), 0);
        tx.send_text(&format!("queued {queued}")).await?;
        while rx.recv().await?.is_some() {}
        Ok(())
    };
    let Some(server) = start_with(local(1).send_queue_limit(8 << 20), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..64 {
        let f = c.read_frame().unwrap();
        assert_eq!(f.payload.len(), 64 << 10);
    }
    let f = c.read_frame().unwrap();
    let text = String::from_utf8(f.payload).unwrap();
    let queued: usize = text.strip_prefix("queued ").unwrap().parse().unwrap();
    assert!(
        queued > 64 << 10 && queued <= 64 * ((64 << 10) + 10),
        "{queued}"
    );
    c.send(true, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1000));
    server.shutdown().unwrap();
}

/// A write that nothing waits for completes without waking the connection's task, which
/// collects it at its next poll. What waits for the writer must not wait on that poll: after
/// such a write, `buffered` says 0 and `flush` returns at once, whether it is called while the
/// write is in flight or after it ended; and a send from another task (which the handler's
/// task does not poll for) still goes out.
#[test]
fn a_write_that_ended_unobserved_counts_as_written() {
    let handler = |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        // Flush right after a send, while the write may still be in flight.
        tx.send_text("one").await?;
        tx.flush().await?;
        assert_eq!(tx.buffered(), 0);
        // Flush long after the write ended, with nothing else happening meanwhile.
        tx.send_text("two").await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(tx.buffered(), 0, "a write that ended still counts");
        tx.flush().await?;
        // A send from another task, while this one waits for the client.
        let other = tx.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = other.send_text("three").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = other.send_text("four").await;
        });
        while let Some(m) = rx.recv().await? {
            tx.send(m).await?;
        }
        Ok(())
    };
    let Some(server) = start_with(local(1), handler) else {
        return;
    };
    let mut c = Client::connect(server.local_addr());
    for want in ["one", "two", "three", "four"] {
        let f = c.read_frame().expect(want);
        assert_eq!(f.payload, want.as_bytes());
    }
    c.send(true, OpCode::Text, b"echo");
    assert_eq!(c.read_frame().unwrap().payload, b"echo");
    c.send(true, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1000));
    server.shutdown().unwrap();
}

#[test]
fn data_attached_to_a_connection_is_seen_by_every_half() {
    struct User {
        name: String,
        messages: Cell<u32>,
    }
    let handler = |ws: WebSocket| async move {
        assert!(ws.data::<User>().is_none());
        let name = ws.info().query().unwrap_or_default().to_owned();
        ws.set_data(User {
            name,
            messages: Cell::new(0),
        });
        let (mut rx, tx) = ws.split();
        let kept = tx.clone(); // e.g. a sender kept in a room's list
        assert!(tx.data::<String>().is_none(), "wrong type");
        let user = rx.data::<User>().unwrap();
        while let Some(msg) = rx.recv().await? {
            user.messages.set(user.messages.get() + 1);
            let reply = format!(
                "{} #{}: {}",
                kept.data::<User>().unwrap().name,
                user.messages.get(),
                std::str::from_utf8(msg.payload()).unwrap_or("")
            );
            tx.send_text(&reply).await?;
        }
        Ok(())
    };
    let Some(server) = start_with(local(1), handler) else {
        return;
    };
    let mut c = Client::connect_with(
        server.local_addr(),
        &common::upgrade_request("/chat?ada", ""),
    );
    for i in 1..=2 {
        c.send(true, OpCode::Text, b"hi");
        let f = c.read_frame().unwrap();
        assert_eq!(
            String::from_utf8(f.payload).unwrap(),
            format!("ada #{i}: hi")
        );
    }
    c.send(true, OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1000));
    server.shutdown().unwrap();
}
