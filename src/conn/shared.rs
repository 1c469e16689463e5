//! The state both halves of a connection and its tasks share: the socket, the send queue and
//! its limits, the wakeups, the phase, and the mask source of the client role.

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::{Rc, Weak};
use std::task::Context;
use std::time::Instant;

use bytes::Bytes;

use tokio::sync::Notify;

use crate::conn::buffers::{BufferPool, LARGE_MIN};
use crate::conn::{
    info::ConnectionInfo,
    outbox::{Outbox, WriterSignal},
    receiver::RxState,
    timers::{Phase, Timeouts},
    writer::{Flight, KEEP_WRITE_CAPACITY},
};
use crate::error::{Error, Result};
use crate::proto::close::{write_close_payload, CloseCode};
use crate::proto::deflate::Compressor;
use crate::proto::frame::{encode_header, write_frame, write_frame_rsv, OpCode, MAX_HEADER_LEN};
use crate::proto::mask::append_copy;
use crate::uring::TcpStream;

/// Payloads of at least this many bytes sent as `Bytes` are written from where they are
/// rather than copied into the send queue (and their buffers go back to the pool after).
pub(super) const SHARE_MIN: usize = LARGE_MIN;

/// What [`Conn::offer_shared`] did.
pub(crate) enum Offered {
    /// The frame is queued.
    Queued,
    /// The queue is over its limit: nothing was queued.
    Full,
    /// The connection is closing: nothing was queued.
    Closed,
}

/// The largest shared payload whose compressed form the thread remembers.
const SHARED_CACHE_MAX: usize = 1 << 20;

/// The RSV bit of a compressed message's first frame.
const RSV1: u8 = 0x40;

thread_local! {
    /// Where a message is compressed before it is framed.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last shared payload compressed without context takeover.
    static LAST_SHARED: RefCell<Option<Compressed>> = const { RefCell::new(None) };
}

/// A shared payload, the compressor settings it was compressed with, its compressed form
/// (`None`: it does not shrink).
type Compressed = (Bytes, (u8, u32), Option<Bytes>);

/// What the connections of a server thread (or a client's connection) share: their
/// timeouts and the send queue's limit.
pub(crate) struct Limits {
    pub(crate) timeouts: Timeouts,
    /// The high-water mark of the send queue, in bytes.
    pub(crate) send_limit: usize,
}

/// A source of mask keys (client role).
pub(crate) type MaskFn = Box<dyn FnMut() -> [u8; 4]>;

/// What the halves and the connection task share.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(super) outbox: RefCell<Outbox>,
    /// Wakes the task that drives the writes when something is queued outside its polls.
    pub(super) wake_writer: WriterSignal,
    /// The connection task is polling the application's handler (or a publish pass is
    /// queueing to many connections, see [`Conn::cork`]): frames queued meanwhile wait for
    /// the write that starts when it ends.
    pub(super) in_handler: Cell<bool>,
    /// Frames were queued during that poll and their write is not started yet.
    pub(super) corked: Cell<bool>,
    /// The write in flight (see [`super::writer::poll_writes`]).
    pub(super) flight: RefCell<Option<Flight>>,
    /// Wakes senders when queue space frees up, waiters for the writer's end, and the
    /// closing handshake's wait for the receiver's state (see [`Conn::receiver_dropped`]).
    pub(super) progress: Notify,
    /// This connection, for the thread's timers (which must not keep it alive).
    pub(super) me: Weak<Conn>,
    /// The time of this connection's current entry in the thread's timers, if any (in the
    /// timers' ticks).
    pub(super) timer_at: Cell<Option<std::num::NonZeroU64>>,
    /// When the last keep-alive ping was sent (in the timers' ticks).
    pub(super) pinged_at: Cell<Option<std::num::NonZeroU64>>,
    pub(crate) phase: Cell<Phase>,
    /// When the phase began (handshake, closing) or the last byte arrived (open).
    pub(crate) last_activity: Cell<Instant>,
    /// A close frame from the peer was received.
    pub(super) close_received: Cell<bool>,
    /// The timeouts and the send queue's limit, shared by the connections of a server thread.
    pub(super) limits: Rc<Limits>,
    /// Receive state handed back when the receiver is dropped, for the closing handshake.
    /// (Boxed: every connection carries the slot, few ever fill it.)
    pub(super) returned_rx: RefCell<Option<Box<RxState>>>,
    /// Set once, when the handshake completes.
    pub(crate) info: OnceCell<ConnectionInfo>,
    /// Source of mask keys for the client role.
    pub(super) mask: RefCell<Option<MaskFn>>,
    /// The thread's buffers: large write buffers are recycled through it.
    pub(super) pool: Rc<BufferPool>,
    /// The application's per-connection data (see [`Sender::set_data`]).
    pub(super) data: RefCell<Option<Rc<dyn Any>>>,
    /// Compresses outgoing messages when permessage-deflate was agreed (set by the
    /// handshake). Boxed: most connections have none.
    pub(super) deflate: RefCell<Option<Box<Compressor>>>,
    /// The TLS layer, on a TLS connection (set before the first byte). Boxed: plain
    /// connections carry only the slot.
    pub(super) secure: RefCell<Option<Box<super::secure::Secure>>>,
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        limits: Rc<Limits>,
        mask: Option<MaskFn>,
        pool: Rc<BufferPool>,
    ) -> Rc<Conn> {
        Rc::new_cyclic(|me| Conn {
            me: me.clone(),
            timer_at: Cell::new(None),
            pinged_at: Cell::new(None),
            stream,
            outbox: RefCell::default(),
            wake_writer: WriterSignal::default(),
            in_handler: Cell::new(false),
            corked: Cell::new(false),
            flight: RefCell::new(None),
            progress: Notify::new(),
            phase: Cell::new(Phase::Handshake),
            last_activity: Cell::new(Instant::now()),
            close_received: Cell::new(false),
            limits,
            returned_rx: RefCell::new(None),
            info: OnceCell::new(),
            mask: RefCell::new(mask),
            pool,
            data: RefCell::new(None),
            deflate: RefCell::new(None),
            secure: RefCell::new(None),
        })
    }

    /// Facts about the connection (empty before the handshake completes).
    pub(super) fn info(&self) -> &ConnectionInfo {
        static EMPTY: std::sync::LazyLock<ConnectionInfo> =
            std::sync::LazyLock::new(ConnectionInfo::default);
        self.info.get().unwrap_or(&EMPTY)
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.set(phase);
        self.last_activity.set(Instant::now());
        self.watch();
    }

    /// Puts the connection on its thread's timers for its current phase (from accept or
    /// connect: the handshake timeout).
    pub(crate) fn watch(&self) {
        if let Some(at) = super::timers::next_deadline(self) {
            super::timers::schedule(self, at);
        }
    }

    pub(super) fn mask_key(&self) -> Option<[u8; 4]> {
        self.mask.borrow_mut().as_mut().map(|m| m())
    }

    /// The writer's next progress (a write ended, or the writer stopped), to wait for after
    /// checking the state it changes. It makes the write in flight wake its task when it
    /// completes (a write that nothing waits for completes quietly: see
    /// `writer::may_complete_quietly`), at once when it already has.
    pub(super) fn writer_progress(&self) -> tokio::sync::futures::Notified<'_> {
        // Created first, so that a write that ends in `kick` below is not missed.
        let notified = self.progress.notified();
        let in_flight = {
            let mut ob = self.outbox.borrow_mut();
            !std::mem::replace(&mut ob.loud, true) && ob.in_flight > 0
        };
        // In the handler's poll, the writes are driven right after it, as the write now must.
        if in_flight && !self.in_handler.get() {
            self.kick();
        }
        notified
    }

    /// Waits until the receiver has been dropped (and its state handed back).
    pub(crate) async fn receiver_dropped(&self) {
        while self.returned_rx.borrow().is_none() {
            // No other task runs between the check and the first poll of this future, so the
            // receiver's notification (on drop) cannot be missed.
            self.progress.notified().await;
        }
    }

    /// Whether a close frame was queued by this side.
    pub(super) fn close_queued(&self) -> bool {
        self.outbox.borrow().close_queued
    }

    /// Whether the write side failed.
    pub(super) fn write_failed(&self) -> bool {
        self.outbox.borrow().failed
    }

    /// Queues a control frame: ping and pong ahead of queued data, close behind it.
    /// Refused after a close was queued.
    pub(super) fn queue_control(&self, opcode: OpCode, payload: &[u8]) -> Result<()> {
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
            peer = ?self.info().peer_addr(),
            code = code.map(|c| c.0),
            reason,
            "close sent"
        );
        self.queue_control(OpCode::Close, &payload[..n])
    }

    /// Encodes a data frame at the end of the queue, compressed when the connection agreed
    /// permessage-deflate and the message is worth it. (Not async, so that the futures of
    /// `send` and `send_owned`, which every connection's handler holds, stay small.)
    pub(super) fn encode_data(&self, opcode: OpCode, payload: &[u8]) {
        let mut deflate = self.deflate.borrow_mut();
        match deflate.as_deref_mut().filter(|c| c.wants(payload.len())) {
            Some(c) => SCRATCH.with(|z| {
                let mut z = z.borrow_mut();
                z.clear();
                if c.compress(payload, &mut z) {
                    self.encode_frame(RSV1, opcode, &z);
                } else {
                    self.encode_frame(0, opcode, payload);
                }
                if z.capacity() > KEEP_WRITE_CAPACITY {
                    *z = Vec::new();
                }
            }),
            None => self.encode_frame(0, opcode, payload),
        }
    }

    /// Sets the compressor that permessage-deflate's agreement calls for.
    pub(crate) fn set_compressor(&self, c: Compressor) {
        *self.deflate.borrow_mut() = Some(Box::new(c));
    }

    /// Queues a data frame with a shared payload now, without waiting: refused when the queue
    /// is over its limit or the connection is closing (a publish to a slow subscriber).
    pub(crate) fn offer_shared(&self, opcode: OpCode, payload: &Bytes) -> Offered {
        match self.has_room() {
            Err(_) => Offered::Closed,
            Ok(false) => Offered::Full,
            Ok(true) => {
                self.encode_shared(opcode, payload);
                Offered::Queued
            }
        }
    }

    /// Encodes a data frame with a shared payload at the end of the queue: a large payload
    /// goes into the queue as it is (or compressed once for every connection with the same
    /// settings); a small one, or any on a masking (client) connection, is copied.
    ///
    /// Takes the payload by reference: a small one is copied into the queue, and only a large
    /// one costs a `Bytes` clone (an atomic count per subscriber of a publish).
    pub(super) fn encode_shared(&self, opcode: OpCode, payload: &Bytes) {
        // `Some(Some(key))`: compressed without context; `Some(None)`: with context.
        let compress = match self.deflate.borrow().as_deref() {
            Some(c) if c.wants(payload.len()) => Some(c.is_stateless().then(|| c.key())),
            _ => None,
        };
        let compressed;
        let (rsv, payload) = match compress {
            Some(Some(key)) => match self.compress_shared(key, payload) {
                Some(z) => {
                    compressed = z;
                    (RSV1, &compressed)
                }
                None => (0, payload),
            },
            Some(None) => return self.encode_data(opcode, payload),
            None => (0, payload),
        };
        if payload.len() < SHARE_MIN || self.mask.borrow().is_some() {
            return self.encode_frame(rsv, opcode, payload);
        }
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, rsv, opcode, None, payload.len() as u64);
        let mut ob = self.outbox.borrow_mut();
        let mut head = Vec::with_capacity(ob.data.len() + n);
        append_copy(&mut head, &ob.data);
        head.extend_from_slice(&header[..n]);
        ob.data.clear();
        ob.chunks_len += head.len() + payload.len();
        ob.chunks.push(Bytes::from(head));
        ob.chunks.push(payload.clone());
        drop(ob);
        self.queued();
    }

    /// Bytes of the write in flight, 0 once it has been written whole (a write that completed
    /// quietly counts as written before the writing task collects it).
    fn in_flight(&self, ob: &super::outbox::Outbox) -> usize {
        if ob.in_flight > 0 && super::writer::written_whole(self) {
            0
        } else {
            ob.in_flight
        }
    }

    /// Whether a data frame may be queued now (the queue is not above the high-water mark);
    /// fails once the connection is closing or failed.
    pub(super) fn has_room(&self) -> Result<bool> {
        let ob = self.outbox.borrow();
        if ob.close_queued || ob.failed {
            return Err(Error::Closed);
        }
        Ok(ob.data.len() + ob.chunks_len + self.in_flight(&ob) <= self.limits.send_limit)
    }

    /// The compressed form of a shared payload for a compressor without context takeover
    /// whose settings are `key`: the thread remembers the last one, so that a payload sent
    /// to many connections is compressed once. (The remembered `Bytes` keeps the original
    /// alive, so an equal pointer and length mean the same bytes.)
    /// `None` when it does not shrink (send it uncompressed).
    fn compress_shared(&self, key: (u8, u32), payload: &Bytes) -> Option<Bytes> {
        LAST_SHARED.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((orig, k, z)) = &*last {
                if *k == key && orig.as_ptr() == payload.as_ptr() && orig.len() == payload.len() {
                    return z.clone();
                }
            }
            let mut z = Vec::new();
            let shrank = match self.deflate.borrow_mut().as_deref_mut() {
                Some(c) => c.compress(payload, &mut z),
                None => false,
            };
            let z = shrank.then(|| Bytes::from(z));
            // A large payload is not kept alive for a later send that may never come.
            *last = (payload.len() <= SHARED_CACHE_MAX).then(|| (payload.clone(), key, z.clone()));
            z
        })
    }

    /// Encodes a data frame (copying the payload) at the end of the queue; `rsv` is
    /// [`RSV1`] for a compressed payload.
    pub(super) fn encode_frame(&self, rsv: u8, opcode: OpCode, payload: &[u8]) {
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
        write_frame_rsv(&mut ob.data, true, rsv, opcode, key, payload);
        drop(ob);
        self.queued();
    }

    /// Starts the write of frames just queued: at once, or, while the connection task polls
    /// the handler, when that poll ends (so that every reply it produced goes out in one
    /// write).
    pub(super) fn queued(&self) {
        if self.in_handler.get() {
            self.corked.set(true);
        } else {
            self.kick();
        }
    }

    /// Corks the queue for a pass that queues frames outside the handler (a publish reaching
    /// every subscriber of a thread), as a poll of the handler does; false when it already
    /// was. End it with [`Conn::uncork`].
    pub(crate) fn cork(&self) -> bool {
        !self.in_handler.replace(true)
    }

    /// Ends a [`Conn::cork`]: what was queued meanwhile leaves in one write, started here.
    pub(crate) fn uncork(&self) {
        self.in_handler.set(false);
        self.flush_corked();
    }

    /// After a pass that queued frames outside the handler's poll: starts their write.
    pub(super) fn flush_corked(&self) {
        if self.corked.replace(false) {
            self.kick();
        }
    }

    /// Drives the writes here and now (see [`super::writer::poll_writes`]) with the waker of
    /// the task that drives them, so that it is woken when the write completes, not also to
    /// start it; before that task first waited, leaves it a wakeup instead.
    fn kick(&self) {
        match self.wake_writer.waker() {
            Some(waker) => {
                let _ = super::writer::poll_writes(self, &mut Context::from_waker(&waker));
            }
            None => self.wake_writer.notify(),
        }
    }

    /// Waits while more than the send-queue limit (control frames included) is pending, so
    /// that a peer that sends pings but never reads cannot make the pong queue grow without
    /// bound: the receive side stops reading until the writer drains.
    pub(super) async fn wait_for_room(&self) {
        loop {
            {
                let ob = self.outbox.borrow();
                if ob.failed
                    || ob.writer_done
                    || ob.data.len() + ob.chunks_len + ob.control.len() + self.in_flight(&ob)
                        <= self.limits.send_limit
                {
                    return;
                }
            }
            self.writer_progress().await;
        }
    }

    /// Bytes queued or being written: encoded frames, headers included.
    pub(super) fn buffered(&self) -> usize {
        let ob = self.outbox.borrow();
        ob.data.len() + ob.chunks_len + ob.control.len() + self.in_flight(&ob)
    }

    /// Waits until everything queued has been written to the socket.
    pub(super) async fn flush(&self) -> Result<()> {
        loop {
            if self.outbox.borrow().failed {
                return Err(Error::ConnectionLost);
            }
            if self.buffered() == 0 {
                return Ok(());
            }
            // No other task runs between the check and the first poll of this future, so the
            // writer's notification cannot be missed.
            self.writer_progress().await;
        }
    }

    /// The application's data of type `T`, if it set some.
    pub(super) fn data<T: 'static>(&self) -> Option<Rc<T>> {
        let data = self.data.borrow().clone()?;
        data.downcast().ok()
    }

    /// Waits until the writer has stopped (after writing a close frame, or on an error).
    pub(super) async fn writer_finished(&self) {
        while !self.outbox.borrow().writer_done {
            self.writer_progress().await;
        }
    }

    /// Stops the writer once it has written what is queued (used when no close frame will
    /// be sent, e.g. after the peer vanished).
    pub(super) fn stop_writer(&self) {
        let mut ob = self.outbox.borrow_mut();
        ob.close_queued = true;
        drop(ob);
        self.wake_writer.notify();
    }
}
