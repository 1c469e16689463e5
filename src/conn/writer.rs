//! The writer task, which owns the socket's single in-flight write: control frames first,
//! queued frames coalesced into one write, shared payloads written from where they are; and the
//! corking that sends every reply of one handler poll in one write.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;

/// A write's outcome: the bytes written, and the buffer back.
type Written<T> = (std::io::Result<T>, Vec<u8>);

use crate::conn::buffers::LARGE_MIN;
use crate::conn::{outbox::Handed, shared::Conn};

/// Buffers in one vectored write, well under the kernel's `UIO_MAXIOV` (1024).
pub(super) const MAX_IOVECS: usize = 256;

/// The write buffers are released after a write when they grew past this capacity.
pub(super) const KEEP_WRITE_CAPACITY: usize = 256 << 10;

/// The writer task: one write in flight at a time, control frames first, every queued frame
/// coalesced into one `write_all`. A write the connection task started for it (see
/// [`Conn::flush_corked`]) is finished first.
pub(crate) async fn writer(conn: Rc<Conn>) {
    loop {
        // A write the connection task started comes first: it holds the oldest frames.
        let handed = conn.handed.borrow_mut().take();
        if let Some(handed) = handed {
            let done = match handed {
                Handed::InFlight(write) => crate::uring::sent(write.await),
                Handed::Done(done) => done,
            };
            if !finish_batch(&conn, done).await {
                return;
            }
            continue;
        }
        if conn.is_tls() {
            if !write_sealed(&conn).await {
                return;
            }
            continue;
        }
        let shared = take_chunks(&conn);
        if !shared.is_empty() {
            // Boxed: only large shared payloads come this way, and the writer's future,
            // which every idle connection holds, stays small.
            let res = Box::pin(write_chunks(&conn, shared)).await;
            if !finish_write(&conn, res) {
                return;
            }
            continue;
        }
        let batch = {
            let mut ob = conn.outbox.borrow_mut();
            match ob.take_batch() {
                Some(batch) => Some(batch),
                None if ob.close_queued || ob.failed => {
                    ob.writer_done = true;
                    drop(ob);
                    conn.progress.notify_waiters();
                    return;
                }
                None => None,
            }
        };
        let Some(batch) = batch else {
            conn.wake_writer.notified().await;
            continue;
        };
        let done = conn.stream.write_at(batch, 0).await;
        if !finish_batch(&conn, done).await {
            return;
        }
    }
}

/// The writer's turn on a TLS connection: everything queued, sealed, in one write (see
/// [`seal_queued`]); waits when nothing is queued. False when the writer is done (closed or
/// failed).
async fn write_sealed(conn: &Conn) -> bool {
    let Some(sealed) = seal_queued(conn) else {
        let done = {
            let mut ob = conn.outbox.borrow_mut();
            ob.writer_done = ob.close_queued || ob.failed;
            ob.writer_done
        };
        if done {
            conn.progress.notify_waiters();
            return false;
        }
        conn.wake_writer.notified().await;
        return true;
    };
    let res = match sealed {
        Ok(wire) => {
            let (res, wire) = conn.stream.write_all(wire).await;
            // A large sealed batch's buffer serves the next one (and other connections').
            conn.pool.put_large(wire);
            res
        }
        Err(e) => Err(e),
    };
    finish_write(conn, res)
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

/// After one write of a batch: writes what it left (a partial write, rare), keeps the buffer
/// and finishes the write as [`finish_write`] does.
pub(super) async fn finish_batch(conn: &Conn, done: Written<usize>) -> bool {
    let (res, buf) = match done {
        (Ok(n), buf) if n == buf.len() => (Ok(()), buf),
        // Boxed: the writer's future, which every idle connection holds, stays small.
        partial => Box::pin(write_rest(conn, partial)).await,
    };
    keep_spare(conn, buf);
    finish_write(conn, res)
}

/// Runs the application's handler for the connection task. Frames the handler queues
/// during one poll are announced to the writer once, when the poll ends (see
/// [`Conn::flush_corked`]); frames queued from other tasks wake the writer at once.
pub(crate) async fn corked<F: Future>(conn: &Conn, handler: F) -> F::Output {
    /// Ends the handler's poll even when it unwinds.
    struct InHandler<'a>(&'a Conn);
    impl Drop for InHandler<'_> {
        fn drop(&mut self) {
            self.0.in_handler.set(false);
            if std::thread::panicking() {
                // The handler panicked and the connection goes with its task; no write.
                return;
            }
            self.0.flush_corked();
        }
    }
    let mut handler = std::pin::pin!(handler);
    std::future::poll_fn(|cx| {
        conn.in_handler.set(true);
        let _poll = InHandler(conn);
        handler.as_mut().poll(cx)
    })
    .await
}

/// After a single write of `buf` that wrote `res` bytes, writes the rest, as `write_all`.
pub(super) async fn write_rest(conn: &Conn, (res, buf): Written<usize>) -> Written<()> {
    match res {
        Ok(0) if !buf.is_empty() => (Err(std::io::ErrorKind::WriteZero.into()), buf),
        Ok(n) => conn.stream.write_all_from(buf, n).await,
        Err(e) => (Err(e), buf),
    }
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
    conn.progress.notify_waiters();
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

/// Writes `parts` in order with vectored writes (at most `MAX_IOVECS` at a time), resuming
/// after partial writes. Large payload buffers that nobody else holds go back to the pool.
pub(super) async fn write_chunks(conn: &Conn, mut parts: Vec<Bytes>) -> std::io::Result<()> {
    parts.reverse();
    while !parts.is_empty() {
        let batch: Vec<Bytes> = parts.iter().rev().take(MAX_IOVECS).cloned().collect();
        let (res, batch) = conn.stream.writev(batch).await;
        drop(batch);
        let mut n = res?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(first) = parts.last_mut() else { break };
            if n < first.len() {
                bytes::Buf::advance(first, n);
                break;
            }
            n -= first.len();
            recycle(conn, parts.pop().unwrap_or_default());
        }
    }
    Ok(())
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
