//! One open WebSocket connection over io_uring: the receive half that reads into the
//! connection's buffer and hands out borrowed messages, the send half with its byte-bounded
//! queue, and the writer task that owns the socket's single in-flight write.
//!
//! Replies are corked: `send` only appends an encoded frame to the queue; the writer task runs
//! when the handler next waits (typically for the next read), so every reply produced from one
//! read goes out in one write. Control frames jump the queue.

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::net::Shutdown;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use tokio_uring::{BufResult, InFlightOneshot, WriteData, WriteTransform};

use crate::error::{Error, Result};
use crate::proto::close::{write_close_payload, CloseCode};
use crate::proto::frame::{
    encode_header, write_frame, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
use crate::proto::message::{Direct, Message, OwnedMessage, Reader, Ready};
use crate::server::buffers::{BufferPool, ReadBuf, LARGE_MIN};

/// A frame payload with at least this much still to come is read straight into the
/// reassembly buffer rather than through the connection's read buffer.
const DIRECT_READ_MIN: usize = 16 << 10;

/// Payloads of at least this many bytes sent as `Bytes` are written from where they are
/// rather than copied into the send queue (and their buffers go back to the pool after).
const SHARE_MIN: usize = LARGE_MIN;

/// Buffers in one vectored write, well under the kernel's `UIO_MAXIOV` (1024).
const MAX_IOVECS: usize = 256;

/// The write buffers are released after a write when they grew past this capacity.
const KEEP_WRITE_CAPACITY: usize = 256 << 10;

/// Facts about a connection, fixed at the handshake.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub peer_addr: Option<SocketAddr>,
    /// The request path, e.g. `/chat`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// The subprotocol agreed in the handshake.
    pub protocol: Option<String>,
    /// Every request header, name as sent and raw value.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConnectionInfo {
    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Where the connection is in its life, for the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the 101 (or while serving plain HTTP): the handshake deadline applies.
    Handshake,
    /// Messages flow: the idle timeout and keep-alive pings apply.
    Open,
    /// A close frame was sent: the close deadline applies.
    Closing,
    /// Finished; the watchdog exits.
    Done,
}

/// A socket descriptor borrowed from the connection's stream, for readiness polling only.
/// It never closes the descriptor.
pub(crate) struct SocketFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// A source of mask keys (client role).
pub(crate) type MaskFn = Box<dyn FnMut() -> [u8; 4]>;

/// The timeouts a connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From accept (or connect) to a complete handshake.
    pub(crate) handshake: Duration,
    /// Nothing received for this long closes with 1001.
    pub(crate) idle: Option<Duration>,
    /// Nothing received for this long sends a ping.
    pub(crate) ping: Option<Duration>,
    /// After a close frame was sent, time allowed for the peer's close and EOF.
    pub(crate) close: Duration,
}

/// The send queue.
#[derive(Default)]
struct Outbox {
    /// Queued bytes that go out before `data`, in order: large shared payloads, each after
    /// a chunk with the frames queued before it and its own header.
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    chunks_len: usize,
    /// Encoded data frames waiting for the writer (after `chunks`).
    data: Vec<u8>,
    /// Encoded control frames waiting; written before `data`.
    control: Vec<u8>,
    /// Bytes of the write in flight.
    in_flight: usize,
    /// A close frame was queued: nothing more may be sent.
    close_queued: bool,
    /// The writer stopped (after the close frame, or on an error).
    writer_done: bool,
    /// The write side failed; the peer is gone.
    failed: bool,
    /// The buffer of the last write, emptied, for the next batch to swap in.
    spare: Vec<u8>,
}

impl Outbox {
    /// Takes the queued control and data frames, control first, as one write; `None` when
    /// none are queued. The spare buffer takes `data`'s place.
    fn take_batch(&mut self) -> Option<Vec<u8>> {
        if self.control.is_empty() && self.data.is_empty() {
            return None;
        }
        let mut batch = std::mem::take(&mut self.spare);
        batch.clear();
        if self.control.is_empty() {
            std::mem::swap(&mut batch, &mut self.data);
        } else {
            std::mem::swap(&mut batch, &mut self.control);
            batch.extend_from_slice(&self.data);
            self.data.clear();
        }
        self.in_flight = batch.len();
        Some(batch)
    }
}

/// A write the connection task submitted for the writer to finish.
enum Handed {
    InFlight(InFlightOneshot<WriteData<Vec<u8>>, WriteTransform<Vec<u8>>>),
    Done(BufResult<usize, Vec<u8>>),
}

/// Wakes the one writer task of a connection, with `Notify::notify_one`'s meaning (a wakeup
/// that finds the writer busy is kept for its next wait) but none of its locking or waiter
/// list: everything here runs on one thread.
#[derive(Default)]
struct WriterSignal {
    /// A wakeup not yet consumed.
    pending: Cell<bool>,
    /// The writer, while it waits.
    waker: RefCell<Option<Waker>>,
    /// The writer is waiting (its last poll of `notified` was pending).
    waiting: Cell<bool>,
}

impl WriterSignal {
    /// Wakes the writer, or leaves the wakeup for its next wait.
    fn notify(&self) {
        self.pending.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits for a wakeup (returns at once if one is pending).
    async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                self.waiting.set(false);
                return Poll::Ready(());
            }
            let mut waker = self.waker.borrow_mut();
            match &mut *waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
            self.waiting.set(true);
            Poll::Pending
        })
        .await
    }

    /// The waiting writer's waker, if it waits with no wakeup pending.
    fn idle_writer(&self) -> Option<Waker> {
        if !self.waiting.get() || self.pending.get() {
            return None;
        }
        self.waker.borrow().clone()
    }

    /// Marks a wakeup pending without waking the writer: something else (a write it was
    /// handed) will wake it.
    fn set_pending(&self) {
        self.pending.set(true);
    }
}

/// What the halves and the connection task share.
pub(crate) struct Conn {
    /// Epoll readiness of the socket, registered on first use. Declared before `stream` so
    /// that it is deregistered before the descriptor closes (a closed number can be reused).
    readiness: OnceCell<Option<AsyncFd<SocketFd>>>,
    pub(crate) stream: TcpStream,
    outbox: RefCell<Outbox>,
    /// Wakes the writer when something is queued.
    wake_writer: WriterSignal,
    /// The connection task is polling the application's handler (see [`Corked`]).
    in_handler: Cell<bool>,
    /// Frames were queued during that poll and the writer was not told yet.
    corked: Cell<bool>,
    /// A write submitted by the connection task, for the writer to finish.
    handed: RefCell<Option<Handed>>,
    /// Wakes senders when queue space frees up, and waiters for the writer's end.
    progress: Notify,
    /// Wakes the watchdog when the phase or deadline changes.
    pub(crate) wake_watchdog: Notify,
    pub(crate) phase: Cell<Phase>,
    /// When the phase began (handshake, closing) or the last byte arrived (open).
    pub(crate) last_activity: Cell<Instant>,
    /// A close frame from the peer was received.
    pub(crate) close_received: Cell<bool>,
    /// The high-water mark of the send queue, in bytes.
    send_limit: usize,
    pub(crate) timeouts: Timeouts,
    /// Receive state handed back when the receiver is dropped, for the closing handshake.
    /// (Boxed: every connection carries the slot, few ever fill it.)
    pub(crate) returned_rx: RefCell<Option<Box<RxState>>>,
    /// Signalled when the receiver is dropped.
    rx_dropped: Notify,
    /// Set once, when the handshake completes.
    pub(crate) info: OnceCell<ConnectionInfo>,
    /// Source of mask keys for the client role.
    mask: Option<RefCell<MaskFn>>,
    /// The thread's buffers: large write buffers are recycled through it.
    pool: Rc<BufferPool>,
    /// The application's per-connection data (see [`Sender::set_data`]).
    data: RefCell<Option<Rc<dyn Any>>>,
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        send_limit: usize,
        timeouts: Timeouts,
        mask: Option<MaskFn>,
        pool: Rc<BufferPool>,
    ) -> Rc<Conn> {
        Rc::new(Conn {
            readiness: OnceCell::new(),
            stream,
            outbox: RefCell::default(),
            wake_writer: WriterSignal::default(),
            in_handler: Cell::new(false),
            corked: Cell::new(false),
            handed: RefCell::new(None),
            progress: Notify::new(),
            wake_watchdog: Notify::new(),
            phase: Cell::new(Phase::Handshake),
            last_activity: Cell::new(Instant::now()),
            close_received: Cell::new(false),
            send_limit,
            timeouts,
            returned_rx: RefCell::new(None),
            rx_dropped: Notify::new(),
            info: OnceCell::new(),
            mask: mask.map(RefCell::new),
            pool,
            data: RefCell::new(None),
        })
    }

    /// The socket's readiness registration with the runtime's epoll driver, created on first
    /// use; `None` when registration failed (reads then always pin a buffer).
    fn readiness(&self) -> Option<&AsyncFd<SocketFd>> {
        self.readiness
            .get_or_init(|| {
                let fd = SocketFd(std::os::fd::AsRawFd::as_raw_fd(&self.stream));
                // SAFETY: `fd` is the stream's open descriptor. The `AsyncFd` lives in this
                // `Conn`, in the field declared before `stream`, so it is dropped (and
                // deregistered) before the stream; the stream never closes its descriptor
                // earlier (it is closed only when the stream and every in-flight operation on
                // it are dropped), and `SocketFd::as_raw_fd` always returns the same number.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
            })
            .as_ref()
    }

    /// Waits until the socket is readable (or closed), without pinning any buffer. Without a
    /// readiness registration it returns at once and the read that follows waits instead.
    pub(crate) async fn wait_readable(&self) {
        if let Some(readiness) = self.readiness() {
            if let Ok(mut guard) = readiness.readable().await {
                // The read that follows takes what is there; a later arrival sets the
                // readiness again.
                guard.clear_ready();
            }
        }
    }

    /// Facts about the connection (empty before the handshake completes).
    pub(crate) fn info(&self) -> &ConnectionInfo {
        static EMPTY: ConnectionInfo = ConnectionInfo {
            peer_addr: None,
            path: String::new(),
            query: None,
            origin: None,
            protocol: None,
            headers: Vec::new(),
        };
        self.info.get().unwrap_or(&EMPTY)
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.set(phase);
        self.last_activity.set(Instant::now());
        self.wake_watchdog.notify_one();
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        self.mask.as_ref().map(|m| (m.borrow_mut())())
    }

    /// Waits until the receiver has been dropped (and its state handed back).
    pub(crate) async fn receiver_dropped(&self) {
        while self.returned_rx.borrow().is_none() {
            self.rx_dropped.notified().await;
        }
    }

    /// Whether a close frame was queued by this side.
    pub(crate) fn close_queued(&self) -> bool {
        self.outbox.borrow().close_queued
    }

    /// Whether the write side failed.
    pub(crate) fn write_failed(&self) -> bool {
        self.outbox.borrow().failed
    }

    /// Queues a control frame: ping and pong ahead of queued data, close behind it.
    /// Refused after a close was queued.
    pub(crate) fn queue_control(&self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        let mut ob = self.outbox.borrow_mut();
        if ob.close_queued || ob.failed {
            return Err(Error::Closed);
        }
        let key = self.mask_key();
        if opcode == OpCode::Close {
            // The close frame is the last frame: it goes behind queued data, not ahead.
            write_frame(&mut ob.data, true, opcode, key, payload);
            ob.close_queued = true;
        } else {
            write_frame(&mut ob.control, true, opcode, key, payload);
        }
        drop(ob);
        if opcode == OpCode::Close {
            if self.phase.get() == Phase::Open {
                self.set_phase(Phase::Closing);
            }
            // Waiting senders learn that the connection is closing.
            self.progress.notify_waiters();
        }
        self.queued();
        Ok(())
    }

    /// Queues a close frame with `code` and `reason` (or an empty one for `None`), unless
    /// one was already queued.
    pub(crate) fn queue_close(&self, code: Option<CloseCode>, reason: &str) -> Result<()> {
        let mut payload = [0u8; 125];
        let n = write_close_payload(code, reason, &mut payload)?;
        if self.close_queued() {
            return Ok(());
        }
        tracing::debug!(
            peer = ?self.info().peer_addr,
            code = code.map(|c| c.0),
            reason,
            "close sent"
        );
        self.queue_control(OpCode::Close, &payload[..n])
    }

    /// Queues a data frame, waiting while the queue is above the high-water mark.
    async fn queue_data(&self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        self.wait_to_queue().await?;
        self.encode_data(opcode, payload);
        Ok(())
    }

    /// Queues a data frame whose payload is shared rather than copied when it is large (and
    /// the frame is not masked), waiting while the queue is above the high-water mark.
    async fn queue_shared(&self, opcode: OpCode, payload: Bytes) -> Result<()> {
        self.wait_to_queue().await?;
        if payload.len() < SHARE_MIN || self.mask.is_some() {
            self.encode_data(opcode, &payload);
            return Ok(());
        }
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, 0, opcode, None, payload.len() as u64);
        let mut ob = self.outbox.borrow_mut();
        let mut head = Vec::with_capacity(ob.data.len() + n);
        head.extend_from_slice(&ob.data);
        head.extend_from_slice(&header[..n]);
        ob.data.clear();
        ob.chunks_len += head.len() + payload.len();
        ob.chunks.push(Bytes::from(head));
        ob.chunks.push(payload);
        drop(ob);
        self.queued();
        Ok(())
    }

    /// Waits while the queue is above the high-water mark; fails once the connection is
    /// closing or failed.
    async fn wait_to_queue(&self) -> Result<()> {
        loop {
            {
                let ob = self.outbox.borrow();
                if ob.close_queued || ob.failed {
                    return Err(Error::Closed);
                }
                if ob.data.len() + ob.chunks_len + ob.in_flight <= self.send_limit {
                    break;
                }
            }
            // No other task runs between the check above and the first poll of this
            // future, so the writer's notification cannot be missed.
            self.progress.notified().await;
        }
        Ok(())
    }

    /// Encodes a data frame (copying the payload) at the end of the queue.
    fn encode_data(&self, opcode: OpCode, payload: &[u8]) {
        let key = self.mask_key();
        let mut ob = self.outbox.borrow_mut();
        let need = ob.data.len() + payload.len() + MAX_HEADER_LEN;
        if need > ob.data.capacity() && payload.len() > KEEP_WRITE_CAPACITY {
            // A large message: a buffer kept from an earlier one spares faulting in fresh
            // memory for this one.
            if !self.pool.move_to_large(&mut ob.data, need) {
                // Whole 64 KiB steps, so that the buffer fits the next message of about
                // this size when it comes back from the pool.
                let len = ob.data.len();
                ob.data.reserve_exact(need.next_multiple_of(64 << 10) - len);
            }
        }
        write_frame(&mut ob.data, true, opcode, key, payload);
        drop(ob);
        self.queued();
    }

    /// Tells the writer that frames were queued: at once, or, while the connection task
    /// polls the handler, when that poll ends (so that every reply it produced goes out in
    /// one write).
    fn queued(&self) {
        if self.in_handler.get() {
            self.corked.set(true);
        } else {
            self.wake_writer.notify();
        }
    }

    /// At the end of a poll of the handler: when frames were queued during it and the writer
    /// is idle, submits their write here, registered with the writer's waker, so that the
    /// writer runs once, when the write completes, instead of also once to start it.
    /// Otherwise wakes the writer.
    fn flush_corked(&self) {
        if !self.corked.replace(false) {
            return;
        }
        let batch = match self.wake_writer.idle_writer() {
            Some(waker) if self.handed.borrow().is_none() => {
                let mut ob = self.outbox.borrow_mut();
                let plain = ob.chunks.is_empty() && ob.in_flight == 0 && !ob.failed;
                plain.then(|| ob.take_batch()).flatten().map(|b| (waker, b))
            }
            _ => None,
        };
        let Some((waker, batch)) = batch else {
            self.wake_writer.notify();
            return;
        };
        let mut write = self.stream.write(batch).submit();
        // The write is not in the kernel yet (that happens when the thread next enters the
        // ring), so this registers the writer's waker with it.
        let handed = match Pin::new(&mut write).poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => Handed::InFlight(write),
            Poll::Ready(done) => Handed::Done(done),
        };
        *self.handed.borrow_mut() = Some(handed);
        self.wake_writer.set_pending();
    }

    /// Waits while more than the send-queue limit (control frames included) is pending, so
    /// that a peer that sends pings but never reads cannot make the pong queue grow without
    /// bound: the receive side stops reading until the writer drains.
    pub(crate) async fn wait_for_room(&self) {
        loop {
            {
                let ob = self.outbox.borrow();
                if ob.failed
                    || ob.writer_done
                    || ob.data.len() + ob.chunks_len + ob.control.len() + ob.in_flight
                        <= self.send_limit
                {
                    return;
                }
            }
            self.progress.notified().await;
        }
    }

    /// Bytes queued or being written: encoded frames, headers included.
    fn buffered(&self) -> usize {
        let ob = self.outbox.borrow();
        ob.data.len() + ob.chunks_len + ob.control.len() + ob.in_flight
    }

    /// Waits until everything queued has been written to the socket.
    async fn flush(&self) -> Result<()> {
        loop {
            if self.outbox.borrow().failed {
                return Err(Error::ConnectionLost);
            }
            if self.buffered() == 0 {
                return Ok(());
            }
            // As in `wait_to_queue`: nothing runs between the check and the first poll.
            self.progress.notified().await;
        }
    }

    /// The application's data of type `T`, if it set some.
    fn data<T: 'static>(&self) -> Option<Rc<T>> {
        let data = self.data.borrow().clone()?;
        data.downcast().ok()
    }

    /// Waits until the writer has stopped (after writing a close frame, or on an error).
    pub(crate) async fn writer_finished(&self) {
        while !self.outbox.borrow().writer_done {
            self.progress.notified().await;
        }
    }

    /// Stops the writer once it has written what is queued (used when no close frame will
    /// be sent, e.g. after the peer vanished).
    pub(crate) fn stop_writer(&self) {
        let mut ob = self.outbox.borrow_mut();
        ob.close_queued = true;
        drop(ob);
        self.wake_writer.notify();
    }
}

/// The writer task: one write in flight at a time, control frames first, every queued frame
/// coalesced into one `write_all`. A write the connection task started for it (see
/// [`Conn::flush_corked`]) is finished first.
pub(crate) async fn writer(conn: Rc<Conn>) {
    loop {
        // A write the connection task started comes first: it holds the oldest frames.
        let handed = conn.handed.borrow_mut().take();
        if let Some(handed) = handed {
            let done = match handed {
                Handed::InFlight(write) => write.await,
                Handed::Done(done) => done,
            };
            if !finish_batch(&conn, done).await {
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
        let done = conn.stream.write(batch).submit().await;
        if !finish_batch(&conn, done).await {
            return;
        }
    }
}

/// After one write of a batch: writes what it left (a partial write, rare), keeps the buffer
/// and finishes the write as [`finish_write`] does.
async fn finish_batch(conn: &Conn, done: BufResult<usize, Vec<u8>>) -> bool {
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
async fn write_rest(conn: &Conn, (res, buf): BufResult<usize, Vec<u8>>) -> BufResult<(), Vec<u8>> {
    match res {
        Ok(0) if !buf.is_empty() => (Err(std::io::ErrorKind::WriteZero.into()), buf),
        Ok(n) if n < buf.len() => {
            let (res, rest) = conn.stream.write_all(buf.slice(n..)).await;
            (res, rest.into_inner())
        }
        Ok(_) => (Ok(()), buf),
        Err(e) => (Err(e), buf),
    }
}

/// Keeps a written batch buffer for the next batch, or gives a large one to the pool.
fn keep_spare(conn: &Conn, buf: Vec<u8>) {
    if buf.capacity() > KEEP_WRITE_CAPACITY {
        conn.pool.put_large(buf);
    } else {
        conn.outbox.borrow_mut().spare = buf;
    }
}

/// After a write: on success wakes waiting senders and returns true; on failure marks the
/// connection failed, drops the queue, shuts the socket down and returns false.
fn finish_write(conn: &Conn, res: std::io::Result<()>) -> bool {
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
fn take_chunks(conn: &Conn) -> Vec<Bytes> {
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
async fn write_chunks(conn: &Conn, mut parts: Vec<Bytes>) -> std::io::Result<()> {
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
            let done = parts.pop().unwrap_or_default();
            if done.len() >= LARGE_MIN {
                if let Ok(mut buf) = done.try_into_mut() {
                    // Emptied first: a payload that starts inside its allocation would
                    // otherwise be moved to the front.
                    buf.clear();
                    conn.pool.put_large(Vec::from(buf));
                }
            }
        }
    }
    Ok(())
}

/// The receive state: the read buffer with its cursors and the protocol reader.
pub(crate) struct RxState {
    buf: ReadBuf,
    start: usize,
    end: usize,
    reader: Reader,
    /// Where read buffers come from (and go back to while the connection is idle).
    pool: Rc<BufferPool>,
    /// The last read did not fill the buffer (the socket is probably drained): the next
    /// wait, if the buffer is empty, is a readiness poll that pins no buffer.
    drained: bool,
    /// The last message was large and went out with `recv_owned`: read into heap buffers,
    /// which the next such message can take with it instead of being copied out.
    heap_reads: bool,
    /// The peer's close frame, once received.
    pub(crate) peer_close: Option<(CloseCode, String)>,
    /// The receive side ended (close received, protocol error, or EOF).
    pub(crate) finished: bool,
    /// A read in flight. It lives here, not in the `recv` future, so that a `recv` dropped
    /// mid-read (a `select!` branch that lost) loses no bytes: the next call resumes it.
    pending: Option<Pending>,
}

/// A read in flight with the buffer it reads into (which the read owns until it completes).
struct Pending {
    read: Pin<Box<dyn Future<Output = Filled>>>,
    /// It reads into a heap buffer checked out of the pool.
    heap: bool,
}

/// A completed read: the result, the buffer, and how many bytes it could have read.
enum Filled {
    /// Into the read buffer.
    Buf(std::io::Result<usize>, ReadBuf, usize),
    /// Into the reader's reassembly buffer (a large frame's payload).
    Direct(std::io::Result<usize>, Vec<u8>, usize),
}

impl Drop for RxState {
    fn drop(&mut self) {
        // A read still in flight keeps its buffer until its completion (the runtime holds it);
        // a heap one then no longer counts as out of the pool.
        if self.pending.take().is_some_and(|p| p.heap) {
            self.pool.detach();
        }
        self.pool
            .checkin(std::mem::replace(&mut self.buf, ReadBuf::Taken));
        self.release_large();
    }
}

/// What one step of the receive loop found.
enum Got {
    /// A data message is ready at `base`.
    Data(usize, Ready),
    /// The stream ended (close received, error handled, or EOF).
    End,
}

impl RxState {
    /// The receive state after a handshake: `buf[start..end]` holds bytes that followed it.
    pub(crate) fn new(
        buf: ReadBuf,
        start: usize,
        end: usize,
        reader: Reader,
        pool: Rc<BufferPool>,
    ) -> Self {
        RxState {
            drained: true,
            heap_reads: false,
            buf,
            start,
            end,
            reader,
            pool,
            peer_close: None,
            finished: false,
            pending: None,
        }
    }

    /// Reads more bytes, compacting first. Returns false at EOF or on a read error.
    ///
    /// A pending io_uring read pins its buffer until data arrives, so an idle connection
    /// would hold a whole read buffer. When the buffer is empty and the last read drained the
    /// socket, the buffer goes back to the pool and the wait is an epoll readiness poll on the
    /// runtime's own driver; the buffer is checked out again when data is there. The read
    /// that follows completes at once, which also spares io_uring a failed first attempt and
    /// a poll arm: measured 5-7% less server CPU per message than reading blind.
    ///
    /// The read itself is kept in `pending` until it completes (see [`RxState::pending`]);
    /// a call that finds one resumes it.
    async fn fill(&mut self, conn: &Rc<Conn>) -> bool {
        if self.pending.is_none() && !self.start_read(conn).await {
            return false;
        }
        let Some(pending) = self.pending.as_mut() else {
            return false;
        };
        let filled = pending.read.as_mut().await;
        self.pending = None;
        match filled {
            Filled::Buf(res, buf, room) => {
                self.buf = buf;
                match self.note_read(conn, res, room) {
                    Some(n) => {
                        self.end += n;
                        true
                    }
                    None => false,
                }
            }
            Filled::Direct(res, payload, room) => {
                // A protocol error in these bytes is sticky: the next `advance` reports it.
                let _ = self.reader.direct_done(payload);
                self.note_read(conn, res, room).is_some()
            }
        }
    }

    /// Makes room and starts the next read into `pending`. Returns false when the buffer
    /// has no room (which the reader never lets happen).
    async fn start_read(&mut self, conn: &Rc<Conn>) -> bool {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.drained {
                self.pool
                    .checkin(std::mem::replace(&mut self.buf, ReadBuf::Taken));
                // Going idle: a reassembly buffer a large message grew goes back to the pool.
                self.release_large();
                conn.wait_readable().await;
            }
            if let Some(direct) = self.reader.take_direct(DIRECT_READ_MIN) {
                self.pool
                    .checkin(std::mem::replace(&mut self.buf, ReadBuf::Taken));
                self.start_direct(conn, direct);
                return true;
            }
        } else if self.start > 0 {
            let (start, end) = (self.start, self.end);
            self.buf.bytes_mut().copy_within(start..end, 0);
            self.end -= start;
            self.start = 0;
        }
        if let ReadBuf::Taken = self.buf {
            self.buf = if self.heap_reads {
                self.pool.checkout_heap()
            } else {
                self.pool.checkout()
            };
        }
        let space = self.buf.capacity() - self.end;
        if space == 0 {
            // The reader never waits for more than the buffer holds; this is unreachable
            // unless the buffer is smaller than a control frame.
            return false;
        }
        let mut buf = std::mem::replace(&mut self.buf, ReadBuf::Taken);
        let heap = matches!(buf, ReadBuf::Heap(_));
        let (conn, at) = (conn.clone(), self.end);
        let read = async move {
            let res = buf.read_at(&conn.stream, at).await;
            Filled::Buf(res, buf, space)
        };
        self.pending = Some(Pending {
            read: Box::pin(read),
            heap,
        });
        true
    }

    /// Records a read of at most `room` bytes: the bytes read, or `None` at EOF or on an error.
    fn note_read(
        &mut self,
        conn: &Conn,
        res: std::io::Result<usize>,
        room: usize,
    ) -> Option<usize> {
        match res {
            Ok(0) => None,
            Ok(n) => {
                self.drained = n < room;
                conn.last_activity.set(Instant::now());
                Some(n)
            }
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                None
            }
        }
    }

    /// Hands out `range` of a heap read buffer as `Bytes` without a copy: the buffer goes
    /// with it, and the bytes after the message move to a fresh one. `None` (and nothing
    /// changed) for a registered buffer, which must go back to the ring; when more bytes
    /// follow the message than it holds (copying the message out is then cheaper); and when
    /// the message fills less than half the buffer (which it would keep alive with it).
    fn take_read_buffer(&mut self, range: Range<usize>) -> Option<Bytes> {
        if self.end - self.start > range.len() || range.len() * 2 < self.buf.capacity() {
            return None;
        }
        let taken = match std::mem::replace(&mut self.buf, ReadBuf::Taken) {
            ReadBuf::Heap(v) => v,
            other => {
                self.buf = other;
                return None;
            }
        };
        self.pool.detach();
        if self.start < self.end {
            let ReadBuf::Heap(mut rest) = self.pool.checkout_heap() else {
                unreachable!("checkout_heap gives heap buffers")
            };
            rest.clear();
            rest.extend_from_slice(&taken[self.start..self.end]);
            self.buf = ReadBuf::Heap(rest);
        }
        self.end -= self.start;
        self.start = 0;
        Some(Bytes::slice(&Bytes::from(taken), range))
    }

    /// Gives a reassembly buffer larger than a read buffer back to the pool (none while a
    /// message is in progress).
    fn release_large(&mut self) {
        if let Some(large) = self.reader.take_buffer(self.pool.size()) {
            self.pool.put_large(large);
        }
    }

    /// Starts reading the next bytes of a large frame's payload straight into the reader's
    /// reassembly buffer (at most `room`, never past the frame).
    fn start_direct(&mut self, conn: &Rc<Conn>, direct: Direct) {
        let Direct {
            buf: mut payload,
            mut room,
            remaining,
        } = direct;
        let len = payload.len();
        if (room as u64) < remaining {
            // A buffer kept from an earlier large message that holds the whole frame spares
            // growing this one step by step, and the page faults of fresh memory.
            let whole = usize::try_from(len as u64 + remaining).unwrap_or(usize::MAX);
            if self.pool.move_to_large(&mut payload, whole) {
                room = whole - len;
            }
        }
        let conn = conn.clone();
        let read = async move {
            let (res, slice) = conn.stream.read(payload.slice(len..len + room)).await;
            Filled::Direct(res, slice.into_inner(), room)
        };
        self.pending = Some(Pending {
            read: Box::pin(read),
            heap: false,
        });
    }

    /// Runs the receive loop until a data message is ready or the stream ends, answering
    /// pings, recording pongs and handling the close handshake and protocol errors.
    ///
    /// Cancellation safe: dropped at any await, it leaves the state consistent, and a read it
    /// started stays in `pending` for the next call.
    async fn next(&mut self, conn: &Rc<Conn>, deliver: bool) -> Result<Got> {
        loop {
            if self.finished {
                return Ok(Got::End);
            }
            if self.pending.is_some() {
                // A call dropped mid-read left it: its bytes come first.
                if !self.fill(conn).await {
                    return self.read_ended(conn);
                }
                continue;
            }
            let base = self.start;
            let end = self.end;
            let advance = match self.reader.advance(&mut self.buf.bytes_mut()[base..end]) {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(peer = ?conn.info().peer_addr, error = %e, code = e.close_code().0, "protocol error; closing");
                    self.finished = true;
                    let _ = conn.queue_close(Some(e.close_code()), "");
                    return Err(Error::Protocol(e));
                }
            };
            self.start = base + advance.consumed;
            let Some(ready) = advance.ready else {
                conn.wait_for_room().await;
                if !self.fill(conn).await {
                    return self.read_ended(conn);
                }
                continue;
            };
            match ready.opcode() {
                OpCode::Ping => {
                    let msg = self.reader.message(&self.buf.bytes()[base..end], ready);
                    // After our close, pings are no longer answered (section 5.5.1).
                    let _ = conn.queue_control(OpCode::Pong, msg.payload());
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let msg = self.reader.message(&self.buf.bytes()[base..end], ready);
                    let Message::Close(frame) = msg else {
                        unreachable!("a close opcode yields a close message")
                    };
                    let (code, reason) = match frame {
                        Some(f) => (Some(f.code), f.reason.to_owned()),
                        None => (None, String::new()),
                    };
                    tracing::debug!(peer = ?conn.info().peer_addr, code = code.map(|c| c.0), "close received");
                    self.peer_close = Some((code.unwrap_or(CloseCode::NO_STATUS), reason));
                    conn.close_received.set(true);
                    // Echo the status code (section 5.5.1), or send an empty close.
                    let _ = conn.queue_close(code, "");
                    self.finished = true;
                    return Ok(Got::End);
                }
                _ if deliver && !conn.close_queued() => return Ok(Got::Data(base, ready)),
                // After our close frame, data is discarded while we wait for the peer's.
                _ => {}
            }
        }
    }

    /// The stream ended (EOF or a read error).
    fn read_ended(&mut self, conn: &Conn) -> Result<Got> {
        self.finished = true;
        if conn.close_queued() {
            // We closed first and the peer hung up: that ends the handshake.
            return Ok(Got::End);
        }
        conn.stop_writer();
        Err(Error::ConnectionLost)
    }

    /// Reads and discards messages until the peer's close frame or the end of the stream.
    pub(crate) async fn drain(&mut self, conn: &Rc<Conn>) {
        while let Ok(Got::Data(..)) = self.next(conn, false).await {}
    }
}

/// The receiving half of a WebSocket.
pub struct Receiver {
    conn: Rc<Conn>,
    state: RxState,
}

impl Receiver {
    /// Waits for the next text or binary message. Pings are answered and pongs consumed on
    /// the way. Returns `Ok(None)` once the peer's close frame arrived (after this side's
    /// answer was queued; see [`Receiver::close_frame`]), or after this side closed and the
    /// peer answered.
    ///
    /// A protocol violation by the peer closes the connection with the matching code (1002,
    /// 1007, 1009) and returns [`Error::Protocol`]; a peer that vanishes gives
    /// [`Error::ConnectionLost`].
    ///
    /// The message borrows this receiver's buffer: drop it before the next `recv`, or copy it
    /// with [`Message::into_owned`]. It is only ever `Message::Text` or `Message::Binary`,
    /// but [`Message`] also has `Ping`, `Pong` and `Close` (for sending), so a `match` on it
    /// needs a `_ => {}` arm.
    ///
    /// **Cancellation safe**: `recv` (and [`Receiver::recv_owned`]) may be a branch of
    /// `tokio::select!` or be put under `tokio::time::timeout`. When it is dropped before it
    /// completes, no bytes are lost: a read it started stays with the receiver and the next
    /// call resumes it. See [`Sender`] for an example.
    pub async fn recv(&mut self) -> Result<Option<Message<'_>>> {
        match self.state.next(&self.conn, true).await? {
            Got::End => Ok(None),
            Got::Data(base, ready) => {
                let end = self.state.end;
                Ok(Some(
                    self.state
                        .reader
                        .message(&self.state.buf.bytes()[base..end], ready),
                ))
            }
        }
    }

    /// Like [`Receiver::recv`], but the message is owned (`Bytes`), so it can be kept, sent to
    /// other tasks, or sent on with [`Sender::send_owned`]. A message that was reassembled
    /// (fragmented, or larger than the read buffer) is handed over without a copy. One that
    /// lies in the read buffer is copied out of it, except that after a first large
    /// (16 KiB or more) message the connection reads into heap buffers, and a large message
    /// that fills at least half of one then leaves with it.
    pub async fn recv_owned(&mut self) -> Result<Option<OwnedMessage>> {
        match self.state.next(&self.conn, true).await? {
            Got::End => Ok(None),
            Got::Data(base, ready) => {
                let state = &mut self.state;
                if let Some(payload) = state.reader.take_assembled(ready) {
                    return Ok(Some(owned_data(ready, Bytes::from(payload))));
                }
                let end = state.end;
                if ready.len() < LARGE_MIN {
                    state.heap_reads = false;
                    let message = state.reader.message(&state.buf.bytes()[base..end], ready);
                    return Ok(Some(message.into_owned()));
                }
                // A large message leaves with its heap read buffer; from a registered one it
                // is copied into a pooled buffer. Either comes back to the pool when
                // `send_owned` has written it. Later reads go to heap buffers. (`advance`
                // validated the payload: it is copied as bytes, not checked again.)
                state.heap_reads = true;
                let payload = match ready.in_buffer() {
                    Some(r) => {
                        let range = base + r.start..base + r.end;
                        match state.take_read_buffer(range.clone()) {
                            Some(taken) => taken,
                            None => state.pool.copy_to_large(&state.buf.bytes()[range]),
                        }
                    }
                    None => {
                        let message = state.reader.message(&state.buf.bytes()[base..end], ready);
                        state.pool.copy_to_large(message.payload())
                    }
                };
                Ok(Some(owned_data(ready, payload)))
            }
        }
    }

    /// The peer's close frame (code and reason), once received. A close without status reads
    /// as 1005.
    pub fn close_frame(&self) -> Option<(CloseCode, &str)> {
        self.state
            .peer_close
            .as_ref()
            .map(|(c, r)| (*c, r.as_str()))
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        self.conn.info()
    }

    /// The data the application attached to this connection; see [`Sender::set_data`].
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.conn.data()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Hand the read state back so the connection can finish the closing handshake.
        let config = *self.state.reader.config();
        let pool = self.state.pool.clone();
        let state = std::mem::replace(
            &mut self.state,
            RxState {
                buf: ReadBuf::Taken,
                start: 0,
                end: 0,
                reader: Reader::new(config),
                pool,
                drained: false,
                heap_reads: false,
                peer_close: None,
                finished: true,
                pending: None,
            },
        );
        *self.conn.returned_rx.borrow_mut() = Some(Box::new(state));
        self.conn.rx_dropped.notify_one();
    }
}

/// A data message's payload as the owned message of its kind.
fn owned_data(ready: Ready, payload: Bytes) -> OwnedMessage {
    match ready.opcode() {
        OpCode::Text => OwnedMessage::Text(payload),
        _ => OwnedMessage::Binary(payload),
    }
}

/// The sending half of a WebSocket. Cheap to clone; every clone feeds the same queue.
///
/// A `Sender` is not `Send`: it lives on the thread that runs the connection (each server
/// thread runs its own runtime, and the connection's state is not locked). Clones can go to
/// tasks on the same thread (`tokio::task::spawn_local`; see [`WebSocket`]). To send from
/// another thread, give the connection a channel and let the handler forward what arrives;
/// `recv` is cancellation safe, so both can wait in one `select!`:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tokio::sync::mpsc;
/// use uringws::{client, Message, WebSocket};
///
/// // Each connection registers the sending end of its own channel here.
/// let inboxes: Arc<Mutex<Vec<mpsc::UnboundedSender<String>>>> = Arc::default();
/// let registry = inboxes.clone();
/// let server = uringws::Server::bind("127.0.0.1:0")?
///     .threads(1)
///     .start(move |ws: WebSocket| {
///         let registry = registry.clone();
///         async move {
///             let (to_me, mut inbox) = mpsc::unbounded_channel::<String>();
///             registry.lock().unwrap().push(to_me);
///             let (mut rx, tx) = ws.split();
///             loop {
///                 tokio::select! {
///                     // Cancellation safe: when the inbox wins, no received bytes are lost.
///                     msg = rx.recv() => match msg? {
///                         Some(msg) => tx.send(msg).await?, // echo
///                         None => return Ok(()),
///                     },
///                     Some(text) = inbox.recv() => tx.send_text(&text).await?,
///                 }
///             }
///         }
///     })?;
/// let url = format!("ws://{}/", server.local_addr());
/// client::block_on(async {
///     let mut ws = client::connect(&url).await?;
///     ws.send(Message::Text("hello")).await?;
///     assert!(matches!(ws.recv().await?, Some(Message::Text("hello")))); // registered now
///     // Another thread sends through the channel.
///     let inboxes = inboxes.clone();
///     std::thread::spawn(move || {
///         for inbox in inboxes.lock().unwrap().iter() {
///             let _ = inbox.send("from another thread".to_owned());
///         }
///     })
///     .join()
///     .unwrap();
///     assert!(matches!(ws.recv().await?, Some(Message::Text("from another thread"))));
///     ws.close(uringws::CloseCode::NORMAL, "")?;
///     while ws.recv().await?.is_some() {}
///     Ok::<(), uringws::Error>(())
/// })??;
/// server.shutdown()?;
/// # Ok::<(), uringws::Error>(())
/// ```
#[derive(Clone)]
pub struct Sender {
    conn: Rc<Conn>,
}

impl Sender {
    /// Sends a message: text and binary are queued behind earlier messages (waiting while the
    /// queue is above its limit); ping and pong go ahead of queued data; a close starts the
    /// closing handshake (a missing status sends an empty close frame).
    ///
    /// The payload is copied once, into the send queue. Fails with [`Error::Closed`] once a
    /// close frame was queued or the connection failed.
    pub async fn send(&self, message: Message<'_>) -> Result<()> {
        match message {
            Message::Text(s) => self.conn.queue_data(OpCode::Text, s.as_bytes()).await,
            Message::Binary(b) => self.conn.queue_data(OpCode::Binary, b).await,
            Message::Ping(p) => self.control(OpCode::Ping, p),
            Message::Pong(p) => self.control(OpCode::Pong, p),
            Message::Close(None) => self.conn.queue_close(None, ""),
            Message::Close(Some(f)) => self.close(f.code, f.reason),
        }
    }

    /// Sends an owned message, as [`Sender::send`] does. A text or binary payload of 16 KiB or
    /// more is not copied: the queue keeps a reference and the kernel reads it from where it
    /// is (so one `Bytes` can go to many connections without a copy for each). A text
    /// payload must be valid UTF-8 (it is when it came from [`Receiver::recv_owned`]); one that
    /// is not is refused with [`Error::InvalidText`].
    pub async fn send_owned(&self, message: OwnedMessage) -> Result<()> {
        match message {
            OwnedMessage::Text(b) => {
                if simdutf8::basic::from_utf8(&b).is_err() {
                    return Err(Error::InvalidText);
                }
                self.conn.queue_shared(OpCode::Text, b).await
            }
            OwnedMessage::Binary(b) => self.conn.queue_shared(OpCode::Binary, b).await,
            OwnedMessage::Ping(p) => self.control(OpCode::Ping, &p),
            OwnedMessage::Pong(p) => self.control(OpCode::Pong, &p),
            OwnedMessage::Close(None) => self.conn.queue_close(None, ""),
            OwnedMessage::Close(Some((code, reason))) => self.close(code, &reason),
        }
    }

    /// Sends a text message.
    pub async fn send_text(&self, text: &str) -> Result<()> {
        self.conn.queue_data(OpCode::Text, text.as_bytes()).await
    }

    /// Sends a binary message.
    pub async fn send_binary(&self, data: &[u8]) -> Result<()> {
        self.conn.queue_data(OpCode::Binary, data).await
    }

    /// Sends a ping (at most 125 bytes), ahead of queued data.
    pub fn ping(&self, payload: &[u8]) -> Result<()> {
        self.control(OpCode::Ping, payload)
    }

    /// Starts the closing handshake with `code` and `reason` (at most 123 bytes). Codes that
    /// may not be sent (1005, 1006, 1015, reserved ranges) are refused. Receiving continues
    /// until the peer answers; data that arrives meanwhile is discarded.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        if self.conn.close_queued() {
            return Err(Error::Closed);
        }
        self.conn.queue_close(Some(code), reason)
    }

    /// Whether the connection is closing or closed (nothing more can be sent).
    pub fn is_closed(&self) -> bool {
        self.conn.close_queued() || self.conn.write_failed()
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        self.conn.info()
    }

    /// Bytes queued on this connection and not yet written to the socket: encoded frames
    /// (headers included) of every clone of this sender, and the write in flight. `send`
    /// waits while this is above the send-queue limit; a sender that must never wait (a
    /// broadcast to many connections) can check it first and skip or drop a slow peer.
    pub fn buffered(&self) -> usize {
        self.conn.buffered()
    }

    /// Waits until everything queued so far has been written to the socket (handed to the
    /// kernel: it says nothing about what the peer has read). Fails with
    /// [`Error::ConnectionLost`] when the write side failed first.
    pub async fn flush(&self) -> Result<()> {
        self.conn.flush().await
    }

    /// Attaches the application's data to this connection (a user id, a room name, ...),
    /// replacing any earlier data. Every clone of the sender and the receiver see it.
    pub fn set_data<T: 'static>(&self, data: T) {
        *self.conn.data.borrow_mut() = Some(Rc::new(data));
    }

    /// The data attached with [`Sender::set_data`], if it is a `T`. It is shared (`Rc`): keep
    /// mutable state in a `Cell` or `RefCell` inside it.
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.conn.data()
    }

    fn control(&self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::ControlTooLong);
        }
        self.conn.queue_control(opcode, payload)
    }
}

/// An open WebSocket connection, as handed to the server's handler.
///
/// Use [`WebSocket::split`] to receive and send at the same time: a received message
/// borrows the receiver's buffer, and the sender can reply while holding it.
///
/// The handler runs as a task on the thread that accepted the connection, inside a tokio
/// runtime: tokio's timers, channels and `tokio::task::spawn_local` work there (the spawned
/// future need not be `Send`, so it can hold a [`Sender`] clone). A task that sends on its
/// own while the handler receives:
///
/// ```
/// use std::time::Duration;
/// use uringws::{client, Message, WebSocket};
///
/// let server = uringws::Server::bind("127.0.0.1:0")?
///     .threads(1)
///     .start(|ws: WebSocket| async move {
///         let (mut rx, tx) = ws.split();
///         let ticker = tx.clone();
///         let ticks = tokio::task::spawn_local(async move {
///             for i in 0..3 {
///                 ticker.send_text(&format!("tick {i}")).await?;
///                 tokio::time::sleep(Duration::from_millis(10)).await;
///             }
///             Ok::<(), uringws::Error>(())
///         });
///         while rx.recv().await?.is_some() {} // until the client closes
///         ticks.abort(); // a spawned task outlives the handler unless stopped
///         Ok(())
///     })?;
/// let url = format!("ws://{}/", server.local_addr());
/// client::block_on(async {
///     let mut ws = client::connect(&url).await?;
///     for i in 0..3 {
///         match ws.recv().await? {
///             Some(Message::Text(t)) => assert_eq!(t, format!("tick {i}")),
///             other => panic!("unexpected {other:?}"),
///         }
///     }
///     ws.close(uringws::CloseCode::NORMAL, "")?;
///     while ws.recv().await?.is_some() {}
///     Ok::<(), uringws::Error>(())
/// })??;
/// server.shutdown()?;
/// # Ok::<(), uringws::Error>(())
/// ```
pub struct WebSocket {
    rx: Receiver,
    tx: Sender,
}

impl WebSocket {
    pub(crate) fn new(conn: Rc<Conn>, state: RxState) -> Self {
        WebSocket {
            rx: Receiver {
                conn: conn.clone(),
                state,
            },
            tx: Sender { conn },
        }
    }

    /// Splits into the receiving and the sending half.
    pub fn split(self) -> (Receiver, Sender) {
        (self.rx, self.tx)
    }

    /// Waits for the next message; see [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Message<'_>>> {
        self.rx.recv().await
    }

    /// Sends a message; see [`Sender::send`]. To reply with a received message, split first.
    pub async fn send(&self, message: Message<'_>) -> Result<()> {
        self.tx.send(message).await
    }

    /// Waits for the next message, owned; see [`Receiver::recv_owned`].
    pub async fn recv_owned(&mut self) -> Result<Option<OwnedMessage>> {
        self.rx.recv_owned().await
    }

    /// Sends an owned message; see [`Sender::send_owned`].
    pub async fn send_owned(&self, message: OwnedMessage) -> Result<()> {
        self.tx.send_owned(message).await
    }

    /// Starts the closing handshake; see [`Sender::close`].
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.tx.close(code, reason)
    }

    /// Facts about the connection (path, query, origin, subprotocol, headers).
    pub fn info(&self) -> &ConnectionInfo {
        self.tx.conn.info()
    }

    /// Attaches the application's data to this connection; see [`Sender::set_data`].
    pub fn set_data<T: 'static>(&self, data: T) {
        self.tx.set_data(data)
    }

    /// The data attached to this connection, if it is a `T`; see [`Sender::data`].
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.tx.data()
    }
}

/// Ends an open connection: queues a close with `code` unless one was sent, waits (bounded by
/// the close timeout) for the peer's close when this side closed first, lets the writer
/// finish, then half-closes and waits for the peer's end so that the close is not a reset.
pub(crate) async fn finish(conn: &Rc<Conn>, code: CloseCode) {
    // The application dropped its receiver, which handed the read state back.
    let returned = conn.returned_rx.borrow_mut().take();
    if !conn.close_queued() && !conn.write_failed() {
        let _ = conn.queue_close(Some(code), "");
    }
    if let Some(mut state) = returned {
        if !conn.close_received.get() && !conn.write_failed() {
            // We closed first: wait (bounded by the close timeout) for the peer's answer.
            state.drain(conn).await;
        }
    }
    conn.writer_finished().await;
    // The server closes the TCP connection first (section 7.1.1): FIN, then wait for the
    // peer's EOF (bounded by the close timeout).
    if !conn.write_failed() {
        linger(conn).await;
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    conn.set_phase(Phase::Done);
}

/// Half-closes and reads until the peer's EOF, discarding what arrives.
pub(crate) async fn linger(conn: &Conn) {
    let _ = conn.stream.shutdown(Shutdown::Write);
    if conn.phase.get() != Phase::Closing {
        conn.set_phase(Phase::Closing);
    }
    let mut scratch = vec![0u8; 512];
    let mut total = 0usize;
    while total < (16 << 20) {
        let (res, buf) = conn.stream.read(scratch).await;
        scratch = buf;
        match res {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// The connection's watchdog: the handshake timeout, keep-alive pings, the idle timeout and
/// the close timeout. Each is enforced by shutting the socket down, which makes the pending
/// read return 0; an in-flight read is never dropped.
pub(crate) async fn watchdog(conn: Rc<Conn>) {
    let config = conn.timeouts;
    let mut pinged_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let last = conn.last_activity.get();
        let deadline = match conn.phase.get() {
            Phase::Open => {
                if let Some(idle) = config.idle {
                    if now >= last + idle {
                        tracing::debug!("idle timeout; closing with 1001");
                        let _ = conn.queue_close(Some(CloseCode::GOING_AWAY), "idle timeout");
                        continue;
                    }
                }
                let mut next = config.idle.map(|t| last + t);
                if let Some(every) = config.ping {
                    let due = last.max(pinged_at.unwrap_or(last)) + every;
                    if now >= due {
                        let _ = conn.queue_control(OpCode::Ping, b"");
                        pinged_at = Some(now);
                        continue;
                    }
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
                next
            }
            Phase::Handshake | Phase::Closing => {
                let limit = if conn.phase.get() == Phase::Handshake {
                    config.handshake
                } else {
                    config.close
                };
                if now >= last + limit {
                    tracing::debug!(phase = ?conn.phase.get(), "timeout; shutting the socket down");
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    return;
                }
                Some(last + limit)
            }
            Phase::Done => return,
        };
        match deadline {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep_until(d.into()) => {}
                _ = conn.wake_watchdog.notified() => {}
            },
            None => conn.wake_watchdog.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn writer_signal_keeps_a_wakeup_and_wakes_a_waiting_writer() {
        let signal = WriterSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // A wakeup sent while the writer is busy is kept for its next wait, once.
        signal.notify();
        signal.notify();
        let mut wait = std::pin::pin!(signal.notified());
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        let mut wait = std::pin::pin!(signal.notified());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "polled again");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // A waiting writer is woken once, and its wait then completes.
        signal.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
