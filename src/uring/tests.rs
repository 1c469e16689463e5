//! The driver over real sockets: echo, ring exhaustion, and operations dropped mid-flight.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::ops::{recv_into, send, shutdown, Received};
use super::{driver, AcceptMulti, RecvMulti, RingConfig, Runtime};

fn runtime(buffers: u16, size: usize) -> Runtime {
    Runtime::new(RingConfig {
        entries: 64,
        buffers,
        buffer_size: size,
    })
    .expect("io_uring")
}

/// A connected pair: (the side the test drives with std, the side the driver uses).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (c, s)
}

fn live() -> usize {
    driver().borrow().live()
}

fn out() -> usize {
    driver().borrow().bufs.out()
}

/// Lets the loop turn a few times (submissions go out, completions come in).
async fn turns() {
    for _ in 0..5 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn accept_receive_and_send_echo() {
    let rt = runtime(8, 4096);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"hello, ring").unwrap();
        let mut back = [0u8; 11];
        c.read_exact(&mut back).unwrap();
        back
    });
    rt.block_on(async {
        let mut accepts = AcceptMulti::new(listener.as_raw_fd()).unwrap();
        let conn = accepts.accept().await.unwrap().unwrap();
        let fd = conn.as_raw_fd();
        let mut recv = RecvMulti::new(fd).unwrap();
        let mut got = Vec::new();
        while got.len() < 11 {
            match recv.recv().await {
                Received::Data(buf) => got.extend_from_slice(&buf),
                other => panic!("unexpected {}", name(&other)),
            }
        }
        let (c, _) = send(fd, got, 0).unwrap().await;
        assert_eq!(c.io().unwrap(), 11);
        drop(recv);
        drop(accepts);
        turns().await;
        assert_eq!(live(), 0, "every operation ended");
        assert_eq!(out(), 0, "every buffer is back in the ring");
    });
    assert_eq!(&client.join().unwrap(), b"hello, ring");
}

/// A burst of connections that queue more completions than the driver lets a receive queue
/// does not end the multishot accept (it holds no buffer; ending it made the server's accept
/// loop back off for 50 ms).
#[test]
fn a_burst_of_connections_does_not_end_the_multishot_accept() {
    let rt = runtime(8, 4096);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    rt.block_on(async {
        let mut accepts = AcceptMulti::new(listener.as_raw_fd()).unwrap();
        turns().await; // armed
        let clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
        turns().await; // every completion queued, none consumed
        for i in 0..clients.len() {
            match accepts.accept().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("accept {i}: {e}"),
                None => panic!("the multishot accept ended after {i}"),
            }
        }
        // Still accepting.
        let _late = TcpStream::connect(addr).unwrap();
        match accepts.accept().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the accept after the burst: {e}"),
            None => panic!("the multishot accept ended after the burst"),
        }
        drop(clients);
        drop(accepts);
        turns().await;
        assert_eq!(live(), 0, "every operation ended");
    });
}

fn name(r: &Received) -> &'static str {
    match r {
        Received::Data(_) => "data",
        Received::Eof => "eof",
        Received::Rearm => "rearm",
        Received::Err(_) => "error",
    }
}

#[test]
fn an_exhausted_ring_ends_the_receive_without_losing_bytes() {
    // 4 buffers of 64 bytes; 4 KiB arrive while the test holds every buffer it gets.
    let rt = runtime(4, 64);
    let (mut peer, conn) = pair();
    let sent: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let data = sent.clone();
    let writer = std::thread::spawn(move || peer.write_all(&data).map(|_| peer));
    rt.block_on(async {
        let fd = conn.as_raw_fd();
        let mut got = Vec::new();
        let mut rearms = 0;
        while got.len() < sent.len() {
            let mut recv = RecvMulti::new(fd).unwrap();
            let mut held = Vec::new();
            loop {
                match recv.recv().await {
                    Received::Data(buf) => held.push(buf),
                    Received::Rearm => {
                        rearms += 1;
                        break;
                    }
                    other => panic!("unexpected {}", name(&other)),
                }
                if got.len() + held.iter().map(|b| b.len()).sum::<usize>() == sent.len() {
                    break;
                }
            }
            for b in held {
                got.extend_from_slice(&b);
            }
        }
        assert!(rearms > 0, "the ring never ran out");
        assert!(got == sent, "bytes lost or reordered");
        turns().await;
        assert_eq!(out(), 0);
    });
    writer.join().unwrap().unwrap();
}

#[test]
fn an_operation_dropped_in_flight_keeps_its_buffer_until_it_completes() {
    let rt = runtime(4, 1024);
    let (mut peer, conn) = pair();
    rt.block_on(async {
        let fd = conn.as_raw_fd();
        // A single-shot receive into our own buffer, dropped before any data: the kernel may
        // still write into the buffer, which the driver now keeps.
        let op = recv_into(fd, Vec::with_capacity(4096)).unwrap();
        turns().await;
        drop(op);
        assert_eq!(live(), 1, "the driver keeps the orphaned receive");
        peer.write_all(b"late bytes").unwrap();
        turns().await;
        assert_eq!(
            live(),
            0,
            "the orphan's completion (or cancellation) freed it"
        );
        // A multishot receive dropped with data queued gives its buffers back.
        let mut recv = RecvMulti::new(fd).unwrap();
        peer.write_all(b"more bytes").unwrap();
        turns().await;
        // Whatever the orphan did not take arrives here.
        let first = recv.try_recv();
        let _ = first.map(|r| assert!(matches!(r, Received::Data(_))));
        peer.write_all(b"queued, never read").unwrap();
        turns().await;
        assert!(out() <= 2);
        drop(recv);
        turns().await;
        assert_eq!(live(), 0);
        assert_eq!(out(), 0, "a dropped receive gave its buffers back");
    });
}

#[test]
fn shutdown_ends_a_pending_receive() {
    let rt = runtime(4, 1024);
    let (_peer, conn) = pair();
    rt.block_on(async {
        let fd = conn.as_raw_fd();
        let mut recv = RecvMulti::new(fd).unwrap();
        let (c, ()) = shutdown(fd, libc::SHUT_RDWR).unwrap().await;
        c.io().unwrap();
        assert!(matches!(recv.recv().await, Received::Eof));
    });
}

#[test]
fn dropping_the_runtime_with_operations_in_flight_does_not_hang() {
    let (_peer, conn) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let rt = runtime(4, 1024);
    rt.block_on(async {
        let fd = conn.as_raw_fd();
        let lfd = listener.as_raw_fd();
        tokio::task::spawn_local(async move {
            let mut r = RecvMulti::new(fd).unwrap();
            let _ = r.recv().await;
        });
        tokio::task::spawn_local(async move {
            let mut a = AcceptMulti::new(lfd).unwrap();
            let _ = a.accept().await;
        });
        let op = recv_into(fd, Vec::with_capacity(64)).unwrap();
        turns().await;
        drop(op);
    });
    let start = std::time::Instant::now();
    drop(rt);
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// A completion that arrives while the thread sleeps in epoll (after busy turns) wakes it
/// through the ring's eventfd, round after round, at once. Nothing else would wake it: the
/// peer writes 10 ms after the thread went to sleep, and the only timer is the 5 s bound that
/// turns a lost wakeup into a failure instead of a hang.
///
/// A late wakeup is a bug too, and time is its only symptom: with DEFER_TASKRUN, the kernel
/// of the development machine (6.18.44) signalled the eventfd for a receive's deferred work
/// 13.7 ms late in every round, which made a ping-pong echo 35 times slower. The median delay
/// from the peer's write to the handler must stay under 5 ms (a wakeup takes about 0.1 ms;
/// the median of 20 rounds is not moved by a few slow ones on a busy machine).
#[test]
fn a_thread_that_sleeps_after_busy_turns_is_woken_by_its_completions() {
    let rt = runtime(8, 4096);
    let (mut peer, conn) = pair();
    let rounds = 20;
    let written = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let stamp = written.clone();
    let echoer = std::thread::spawn(move || {
        let mut back = [0u8; 1];
        for i in 0..rounds {
            // Late enough that the runtime has parked in epoll.
            std::thread::sleep(Duration::from_millis(10));
            *stamp.lock().unwrap() = std::time::Instant::now();
            peer.write_all(&[i as u8]).unwrap();
            peer.read_exact(&mut back).unwrap();
            assert_eq!(back[0], i as u8);
        }
    });
    let mut delays = Vec::new();
    rt.block_on(async {
        let fd = conn.as_raw_fd();
        let mut recv = RecvMulti::new(fd).unwrap();
        for i in 0..rounds {
            // Busy first: polls and turns with the thread awake.
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            let got = tokio::time::timeout(Duration::from_secs(5), recv.recv()).await;
            let got = got.unwrap_or_else(|_| panic!("round {i}: the completion did not wake it"));
            delays.push(written.lock().unwrap().elapsed());
            let byte = match got {
                Received::Data(buf) => buf[0],
                other => panic!("unexpected {}", name(&other)),
            };
            assert_eq!(byte, i as u8);
            let (c, _) = send(fd, vec![byte], 0).unwrap().await;
            assert_eq!(c.io().unwrap(), 1);
        }
    });
    echoer.join().unwrap();
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        median < Duration::from_millis(5),
        "completions woke the sleeping thread late: median {median:?}, all {delays:?}"
    );
}

/// A socket dropped with the runtime while an operation queued for it has not reached the
/// kernel yet is closed through the ring, behind that operation, which thus runs on the socket
/// it was meant for. With a close system call, the number was free at once: the receive then
/// ran on whatever socket took the number next (here one opened right after the drop, as
/// another thread might) and took its bytes. A client test saw a 101 response lose its start
/// this way.
#[test]
fn a_socket_dropped_with_the_runtime_is_closed_behind_its_queued_operations() {
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Opens descriptors when dropped (right after the socket), as another thread might.
    struct Reopen {
        victim: TcpStream,
        opened: Rc<RefCell<Vec<TcpStream>>>,
    }
    impl Drop for Reopen {
        fn drop(&mut self) {
            let mut opened = self.opened.borrow_mut();
            for _ in 0..16 {
                opened.push(self.victim.try_clone().unwrap());
            }
        }
    }
    // Dropped in this order: the socket, its receive (queued, not yet submitted), the reopen.
    struct Held {
        _stream: super::TcpStream,
        _op: super::Op<Vec<u8>>,
        _then: Reopen,
    }

    let (_peer, conn) = pair();
    let (mut victim_peer, victim) = pair();
    victim_peer.write_all(b"hello").unwrap();
    let opened = Rc::new(RefCell::new(Vec::new()));
    let rt = runtime(4, 1024);
    let reopen = Reopen {
        victim: victim.try_clone().unwrap(),
        opened: opened.clone(),
    };
    rt.block_on(async move {
        let stream = super::TcpStream::from_fd(conn.into());
        let op = stream.start_read(Vec::with_capacity(4), 4).unwrap();
        let held = Held {
            _stream: stream,
            _op: op,
            _then: reopen,
        };
        // Never polled: the receive is still in the submission queue when the runtime goes.
        tokio::task::spawn_local(async move {
            let _held = held;
            std::future::pending::<()>().await
        });
    });
    drop(rt);
    victim.set_nonblocking(true).unwrap();
    let mut got = [0u8; 16];
    let n = (&victim).read(&mut got).unwrap();
    assert_eq!(&got[..n], b"hello", "another socket's bytes were taken");
    drop(opened);
}

/// The same when the socket is dropped outside any `block_on`, its runtime alive: the close
/// waits in its own ring, behind the receive, until the runtime runs again.
#[test]
fn a_socket_dropped_outside_its_runtime_is_closed_through_its_ring() {
    let (_peer, conn) = pair();
    let (mut victim_peer, victim) = pair();
    victim_peer.write_all(b"hello").unwrap();
    let rt = runtime(4, 1024);
    let (stream, op) = rt.block_on(async move {
        let stream = super::TcpStream::from_fd(conn.into());
        let op = stream.start_read(Vec::with_capacity(4), 4).unwrap();
        (stream, op)
    });
    drop(stream);
    drop(op);
    let clones: Vec<TcpStream> = (0..16).map(|_| victim.try_clone().unwrap()).collect();
    rt.block_on(async {
        turns().await;
        assert_eq!(live(), 0, "the receive ended");
    });
    victim.set_nonblocking(true).unwrap();
    let mut got = [0u8; 16];
    let n = (&victim).read(&mut got).unwrap();
    assert_eq!(&got[..n], b"hello", "another socket's bytes were taken");
    drop(clones);
}

/// A send polled with `quiet` set to its length completes without waking its task, and its
/// next poll collects it; a completion with any other result (here: a "quiet" length that the
/// send cannot reach, standing for a short write) wakes the task as usual.
#[test]
fn a_quiet_completion_wakes_nobody_and_any_other_result_wakes_the_task() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let rt = runtime(4, 1024);
    let (mut peer, conn) = pair();
    rt.block_on(async {
        let fd = conn.as_raw_fd();
        for (quiet, wakes) in [(5, 0), (6, 1)] {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let mut cx = Context::from_waker(&waker);
            let mut op = send(fd, b"hello".to_vec(), 0).unwrap();
            assert!(op.poll_quiet(&mut cx, Some(quiet)).is_pending());
            turns().await;
            assert_eq!(count.0.load(Ordering::SeqCst), wakes, "quiet {quiet}");
            match op.poll_quiet(&mut cx, Some(quiet)) {
                Poll::Ready((c, buf)) => {
                    assert_eq!(c.io().unwrap(), 5);
                    assert_eq!(buf, b"hello");
                }
                Poll::Pending => panic!("the send did not complete (quiet {quiet})"),
            }
            let mut got = [0u8; 5];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        }
        assert_eq!(live(), 0);
    });
}
