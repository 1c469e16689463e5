//! The connection's writes: one in flight at a time, control frames first, queued frames
//! coalesced into one write, shared payloads written from where they are, records sealed on a
//! TLS connection. A poll-driven machine ([`poll_writes`]) that the server's connection task
//! runs after each poll of its handler (so there is no writer task), and that a writer task
//! runs for the client.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::conn::buffers::LARGE_MIN;
use crate::conn::close::finish;
use crate::conn::shared::Conn;
use crate::proto::close::CloseCode;
use crate::uring::{sent, Op, Parts};

/// Buffers in one vectored write, well under the kernel's `UIO_MAXIOV` (1024).
pub(super) const MAX_IOVECS: usize = 256;

/// The write buffers are released after a write when they grew past this capacity.
pub(super) const KEEP_WRITE_CAPACITY: usize = 256 << 10;

/// The write in flight.
pub(crate) enum Flight {
    /// A batch of frames, or sealed records (`sealed`): `buf[done..]` is being sent.
    Buf {
        op: Op<Vec<u8>>,
        done: usize,
        sealed: bool,
    },
    /// Shared payloads in order: the first ones are being sent, `rest` holds them all (in
    /// reverse order: the next to send is last).
    /// (The operation is boxed: it is rare, and every connection holds room for a flight.)
    Parts {
        op: Box<Op<Parts>>,
        rest: Vec<Bytes>,
    },
}

/// What polling the write in flight gave.
enum Step {
    Pending(Flight),
    /// It continues with another write (the rest of a partial one).
    Next(Flight),
    /// It ended.
    Done(std::io::Result<()>),
}

/// Drives the connection's writes: finishes the write in flight (writing what a partial one
/// left), then starts one with everything queued, and registers `cx` to be woken for either.
/// Ready once the writer is done: after the close frame was written, or when the write side
/// failed.
pub(crate) fn poll_writes(conn: &Conn, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        let flight = conn.flight.borrow_mut().take();
        if let Some(flight) = flight {
            match step(conn, flight, cx) {
                Step::Pending(f) => {
                    *conn.flight.borrow_mut() = Some(f);
                    // A write that completes quietly wakes nobody: frames queued later must
                    // still reach this task (through `kick` or a wakeup).
                    conn.wake_writer.watch(cx);
                    return Poll::Pending;
                }
                Step::Next(f) => {
                    *conn.flight.borrow_mut() = Some(f);
                    continue;
                }
                Step::Done(res) => {
                    if !finish_write(conn, res) {
                        return Poll::Ready(());
                    }
                }
            }
        }
        if conn.outbox.borrow().writer_done {
            return Poll::Ready(());
        }
        match start_next(conn) {
            Ok(Some(f)) => *conn.flight.borrow_mut() = Some(f),
            Ok(None) => {
                let done = {
                    let mut ob = conn.outbox.borrow_mut();
                    ob.writer_done = ob.close_queued || ob.failed;
                    ob.writer_done
                };
                if done {
                    conn.progress.notify_waiters();
                    return Poll::Ready(());
                }
                if !conn.wake_writer.register(cx) {
                    return Poll::Pending;
                }
            }
            Err(e) => {
                if !finish_write(conn, Err(e)) {
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The writer task of a connection whose own task does not drive its writes (the client's:
/// the application owns that task).
pub(crate) async fn writer(conn: Rc<Conn>) {
    std::future::poll_fn(|cx| poll_writes(&conn, cx)).await
}

/// Polls the write in flight.
fn step(conn: &Conn, flight: Flight, cx: &mut Context<'_>) -> Step {
    match flight {
        Flight::Buf {
            mut op,
            done,
            sealed,
        } => {
            // A plain write that nothing waits for completes without waking the task.
            let quiet = (!sealed && may_complete_quietly(conn))
                .then(|| u32::try_from(unsent(&op, done)).ok())
                .flatten();
            let Poll::Ready(out) = op.poll_quiet(cx, quiet) else {
                return Step::Pending(Flight::Buf { op, done, sealed });
            };
            let (res, buf) = sent(out);
            match res {
                Ok(n) if n > 0 && done + n < buf.len() => start_buf(conn, buf, done + n, sealed)
                    .map_or_else(|e| Step::Done(Err(e)), Step::Next),
                Ok(0) if done < buf.len() => Step::Done(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(_) if sealed => {
                    // A large sealed batch's buffer serves the next one (and other
                    // connections'); the batch it sealed was kept as the spare.
                    conn.pool.put_large(buf);
                    Step::Done(Ok(()))
                }
                Ok(_) => {
                    keep_spare(conn, buf);
                    Step::Done(Ok(()))
                }
                Err(e) => Step::Done(Err(e)),
            }
        }
        Flight::Parts { mut op, mut rest } => {
            let Poll::Ready((c, sent_parts)) = Pin::new(&mut *op).poll(cx) else {
                return Step::Pending(Flight::Parts { op, rest });
            };
            // The kernel is done with them: a payload written whole can go back to the pool.
            drop(sent_parts);
            let mut n = match c.io() {
                Ok(0) => return Step::Done(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => n as usize,
                Err(e) => return Step::Done(Err(e)),
            };
            while n > 0 {
                let Some(first) = rest.last_mut() else { break };
                if n < first.len() {
                    bytes::Buf::advance(first, n);
                    break;
                }
                n -= first.len();
                recycle(conn, rest.pop().unwrap_or_default());
            }
            if rest.is_empty() {
                return Step::Done(Ok(()));
            }
            start_parts(conn, rest).map_or_else(|e| Step::Done(Err(e)), Step::Next)
        }
    }
}

/// Whether the write in flight may complete without waking the task that drives the writes
/// (a completion that wrote it all, that is: a short write or an error still wakes it). True
/// when nothing waits for it: no frames queued behind it, no close frame, and no task waiting
/// for the writer's progress ([`Conn::writer_progress`] marks the outbox `loud`). The task then
/// collects the completion at its next poll, which new frames, a waiter or the next message
/// cause; with one message in flight this saves a poll of the connection's task (and of its
/// handler) per message.
fn may_complete_quietly(conn: &Conn) -> bool {
    let ob = conn.outbox.borrow();
    !ob.loud
        && !ob.close_queued
        && ob.data.is_empty()
        && ob.control.is_empty()
        && ob.chunks.is_empty()
}

/// The bytes a plain write in flight was given: its buffer from `done` on.
fn unsent(op: &Op<Vec<u8>>, done: usize) -> usize {
    op.data().map_or(0, |b| b.len() - done)
}

/// Whether the write in flight has completed with all of its bytes written (before the
/// writing task collected it: see [`may_complete_quietly`]).
pub(super) fn written_whole(conn: &Conn) -> bool {
    match &*conn.flight.borrow() {
        Some(Flight::Buf { op, done, .. }) => op
            .peek()
            .is_some_and(|c| c.io().is_ok_and(|n| n as usize == unsent(op, *done))),
        _ => false,
    }
}

/// Starts a write of everything queued (sealed on a TLS connection); `None` when nothing is.
fn start_next(conn: &Conn) -> std::io::Result<Option<Flight>> {
    if conn.is_tls() {
        return match seal_queued(conn) {
            Some(sealed) => start_buf(conn, sealed?, 0, true).map(Some),
            None => Ok(None),
        };
    }
    let mut parts = take_chunks(conn);
    if !parts.is_empty() {
        parts.reverse();
        return start_parts(conn, parts).map(Some);
    }
    let batch = conn.outbox.borrow_mut().take_batch();
    match batch {
        Some(batch) => start_buf(conn, batch, 0, false).map(Some),
        None => Ok(None),
    }
}

fn start_buf(conn: &Conn, buf: Vec<u8>, done: usize, sealed: bool) -> std::io::Result<Flight> {
    let op = conn.stream.start_write(buf, done)?;
    Ok(Flight::Buf { op, done, sealed })
}

/// Starts a vectored write of the first (at most `MAX_IOVECS`) of `rest` (reversed).
fn start_parts(conn: &Conn, rest: Vec<Bytes>) -> std::io::Result<Flight> {
    let batch: Vec<Bytes> = rest.iter().rev().take(MAX_IOVECS).cloned().collect();
    let op = Box::new(conn.stream.start_writev(batch)?);
    Ok(Flight::Parts { op, rest })
}

/// Everything queued on a TLS connection (the shared chunks with the rest, in order, and any
/// record the session has waiting), sealed into one buffer; `None` when nothing is queued.
pub(super) fn seal_queued(conn: &Conn) -> Option<std::io::Result<Vec<u8>>> {
    let chunks = take_chunks(conn);
    if !chunks.is_empty() {
        // Large shared payloads are sealed from where they are (no copy into one buffer
        // first); the small parts between them are gathered into one record.
        let sealed = conn.seal_parts(&chunks);
        for part in chunks {
            recycle(conn, part);
        }
        return Some(sealed);
    }
    let batch = conn.outbox.borrow_mut().take_batch();
    match batch {
        Some(batch) => Some(conn.seal(batch)),
        None if conn.tls_pending() => Some(conn.seal(Vec::new())),
        None => None,
    }
}

/// Runs the handler on an open WebSocket, then completes the closing handshake. This task
/// also drives the connection's writes: after every poll, what the poll queued leaves in one
/// write (see [`poll_writes`]). A poll of the handler is marked (`in_handler`), so that what
/// it queues waits for that write instead of starting one per frame.
pub(crate) async fn run(
    conn: Rc<Conn>,
    mut handler: Pin<Box<dyn Future<Output = crate::Result<()>>>>,
) {
    /// Ends the handler's poll even when it unwinds.
    struct InHandler<'a>(&'a Conn);
    impl Drop for InHandler<'_> {
        fn drop(&mut self) {
            self.0.in_handler.set(false);
        }
    }
    let rc = &conn;
    let conn = &**rc;
    // The closing handshake, once the handler returned. (Boxed: it is needed only at the end,
    // and this future lives as long as the connection.)
    let mut closing: Option<Pin<Box<dyn Future<Output = ()> + '_>>> = None;
    // The phase is already `Open` (or `Closing`, when a shutdown came during the 101).
    std::future::poll_fn(|cx| {
        if closing.is_none() {
            conn.in_handler.set(true);
            let polled = {
                let _poll = InHandler(conn);
                handler.as_mut().poll(cx)
            };
            if let Poll::Ready(result) = polled {
                let code = match result {
                    Ok(()) => CloseCode::NORMAL,
                    Err(e) => {
                        tracing::debug!(error = %e, "handler ended with an error");
                        CloseCode::INTERNAL_ERROR
                    }
                };
                closing = Some(Box::pin(finish(rc, code)));
            }
        }
        let closed = closing
            .as_mut()
            .is_some_and(|f| f.as_mut().poll(cx).is_ready());
        conn.corked.set(false);
        let _ = poll_writes(conn, cx);
        if closed {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Keeps a written batch buffer for the next batch, or gives a large one to the pool.
pub(super) fn keep_spare(conn: &Conn, buf: Vec<u8>) {
    if buf.capacity() > KEEP_WRITE_CAPACITY {
        conn.pool.put_large(buf);
    } else {
        conn.outbox.borrow_mut().spare = buf;
    }
}

/// After a write: on success wakes waiting senders and returns true; on failure marks the
/// connection failed, drops the queue, shuts the socket down and returns false.
pub(super) fn finish_write(conn: &Conn, res: std::io::Result<()>) -> bool {
    let mut ob = conn.outbox.borrow_mut();
    ob.in_flight = 0;
    // Every task that waits for the writer's progress asked for it (`Conn::writer_progress`):
    // they are woken below, and a later one asks again. Without them, no notification.
    let loud = std::mem::replace(&mut ob.loud, false);
    if let Err(e) = res {
        tracing::debug!(error = %e, "write failed; the peer is gone");
        ob.failed = true;
        ob.writer_done = true;
        ob.data = Vec::new();
        ob.control = Vec::new();
        ob.chunks = Vec::new();
        ob.chunks_len = 0;
        drop(ob);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        conn.progress.notify_waiters();
        return false;
    }
    drop(ob);
    if loud {
        conn.progress.notify_waiters();
    }
    true
}

/// Takes everything queued, in order, when shared payloads are among it: control frames,
/// the chunks, then the data frames queued after them. Empty when no chunk is queued.
pub(super) fn take_chunks(conn: &Conn) -> Vec<Bytes> {
    let mut ob = conn.outbox.borrow_mut();
    if ob.chunks.is_empty() {
        return Vec::new();
    }
    let mut parts = Vec::with_capacity(ob.chunks.len() + 2);
    if !ob.control.is_empty() {
        parts.push(Bytes::copy_from_slice(&ob.control));
        ob.control.clear();
    }
    parts.append(&mut ob.chunks);
    if !ob.data.is_empty() {
        parts.push(Bytes::copy_from_slice(&ob.data));
        ob.data.clear();
    }
    ob.in_flight = parts.iter().map(Bytes::len).sum();
    ob.chunks_len = 0;
    parts
}

/// Gives a written large payload's buffer back to the pool, if nobody else holds it.
fn recycle(conn: &Conn, done: Bytes) {
    if done.len() >= LARGE_MIN {
        if let Ok(mut buf) = done.try_into_mut() {
            // Emptied first: a payload that starts inside its allocation would otherwise be
            // moved to the front.
            buf.clear();
            conn.pool.put_large(Vec::from(buf));
        }
    }
}
