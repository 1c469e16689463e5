//! The receiving half: the bytes being parsed with their cursors, the protocol reader, the
//! multishot receive that survives cancelled calls, and the messages handed out in place.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::buffers::{BufferPool, ReadBuf, LARGE_MIN};
use crate::conn::{info::ConnectionInfo, shared::Conn};
use crate::error::{Error, Result};
use crate::proto::close::CloseCode;
use crate::proto::frame::OpCode;
use crate::proto::mask::append_copy;
use crate::proto::message::{Direct, Message, OwnedMessage, Reader, Ready};
use crate::uring::{received, Op, Received, RecvBuf, RecvMulti};

/// A frame payload with at least this much still to come is read straight into the
/// reassembly buffer; frames up to this size are parsed where they land.
pub(crate) const DIRECT_READ_MIN: usize = 16 << 10;

/// After a message of at least this size the connection reads without the ring (see
/// [`RxState::large`]). Measured (scripts/compare.sh, one message in flight): with every
/// message of 16 KiB or more read this way a 64 KiB echo cost 2.4x the server CPU of the
/// ring (41 against 17 us), while 1 MiB messages cost half as much as through the ring
/// (307 against 669 us).
const LARGE_MODE_MIN: usize = 256 << 10;

/// The receive state: the bytes being parsed with their cursors, the protocol reader, and the
/// multishot receive that delivers the connection's bytes.
pub(crate) struct RxState {
    /// A ring buffer the kernel filled (parsed in place), or a heap buffer gathering a frame
    /// that straddled two of them, or nothing while idle.
    pub(super) buf: ReadBuf,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) reader: Reader,
    /// Where heap buffers come from (and go back to while the connection is idle).
    pub(super) pool: Rc<BufferPool>,
    /// The multishot receive, while armed. It lives here, not in the `recv` future, so a
    /// `recv` dropped before it completes (a `select!` branch that lost) loses nothing: what
    /// arrived meanwhile waits in the driver for the next call.
    pub(super) recv: Option<RecvMulti>,
    /// The multishot receive was asked to stop, so that a large frame's payload can be read
    /// straight into the reassembly buffer.
    pub(super) stopping: bool,
    /// A single-shot read in flight (kept here so that a cancelled `recv` resumes it). Boxed:
    /// only large messages use it, and every connection holds the slot.
    pub(super) single: Option<Box<Single>>,
    /// The last message was large: read with single-shot reads into heap buffers (and the
    /// payloads straight into the reassembly buffer) instead of through the ring, which a
    /// stream of large messages would only pass through and drain.
    pub(super) large: bool,
    /// The peer's close frame, once received.
    /// (Boxed: every connection holds the slot, and only a closing one fills it.)
    pub(super) peer_close: Option<Box<(CloseCode, String)>>,
    /// The receive side ended (close received, protocol error, or EOF).
    pub(super) finished: bool,
}

impl Drop for RxState {
    fn drop(&mut self) {
        // A read still in flight keeps its buffer until its completion (the driver holds it);
        // a heap one from the pool then no longer counts as out.
        if let Some(Single::Heap(_)) = self.single.take().map(|s| *s) {
            self.pool.forget();
        }
        self.pool
            .checkin(std::mem::replace(&mut self.buf, ReadBuf::Taken));
        self.release_large();
    }
}

/// A single-shot read, used instead of the multishot receive for large messages.
pub(super) enum Single {
    /// A large frame's payload, straight into the reader's reassembly buffer.
    Direct(Op<Vec<u8>>),
    /// The next bytes, into a heap buffer of the read size.
    Heap(Op<Vec<u8>>),
}

/// What one step of the receive loop found.
pub(super) enum Got {
    /// A data message is ready at `base`.
    Data(usize, Ready),
    /// The stream ended (close received, error handled, or EOF).
    End,
}

impl RxState {
    /// The receive state after a handshake: `buf[start..end]` holds bytes that followed it,
    /// and `recv` is the handshake's receive, still armed.
    pub(crate) fn new(
        buf: ReadBuf,
        start: usize,
        end: usize,
        mut reader: Reader,
        pool: Rc<BufferPool>,
        recv: Option<RecvMulti>,
    ) -> Self {
        // Large frames are reassembled in the pool's buffers (see `BufferPool::take_large`).
        reader.request_buffers(LARGE_MIN);
        RxState {
            buf,
            start,
            end,
            reader,
            pool,
            recv,
            stopping: false,
            single: None,
            large: false,
            peer_close: None,
            finished: false,
        }
    }

    /// Waits for the next bytes from the multishot receive (arming it, or re-arming it after
    /// the ring ran dry or the driver stopped it for a slow consumer). Returns false at EOF or
    /// on an error. Cancellation safe: the receive and what it delivered stay in `self`.
    ///
    /// While idle (nothing pending) the connection holds no buffer at all: the kernel picks a
    /// ring buffer when bytes arrive.
    ///
    /// The payload of a large frame (at least `DIRECT_READ_MIN` still to come) is read
    /// straight into the reassembly buffer instead, with the multishot receive stopped (what it
    /// had received first comes first), so that the kernel copies it once and no ring buffer
    /// holds it.
    pub(super) async fn fill(&mut self, conn: &Rc<Conn>) -> bool {
        if conn.is_tls() {
            return Box::pin(self.fill_tls(conn)).await;
        }
        if self.start == self.end && self.single.is_none() {
            self.start = 0;
            self.end = 0;
            self.pool
                .checkin(std::mem::replace(&mut self.buf, ReadBuf::Taken));
            let direct = self.reader.take_direct(DIRECT_READ_MIN);
            if direct.is_none() {
                // Going idle: a reassembly buffer a large message grew goes back to the pool.
                self.release_large();
            }
            if direct.is_some() || self.large {
                match &mut self.recv {
                    // Stop receiving into the ring first; the single-shot reads start once
                    // the receive has delivered what it had and ended.
                    Some(recv) => {
                        if let Some(direct) = direct {
                            let _ = self.reader.direct_done(direct.buf);
                        }
                        if !self.stopping {
                            recv.stop();
                            self.stopping = true;
                        }
                    }
                    None => {
                        if let Err(e) = self.start_single(conn, direct) {
                            tracing::debug!(error = %e, "cannot start a read");
                            return false;
                        }
                    }
                }
            }
        }
        if self.single.is_none() && self.start < self.end && self.large && self.recv.is_none() {
            // Part of a frame is here: read the rest behind it, still without the ring.
            if let Err(e) = self.continue_single(conn) {
                tracing::debug!(error = %e, "cannot start a read");
                return false;
            }
        }
        if let Some(single) = &mut self.single {
            let (heap, done) = match &mut **single {
                Single::Direct(read) => (false, read.await),
                Single::Heap(read) => (true, read.await),
            };
            self.single = None;
            let (res, buf) = received(done);
            if heap {
                self.end = buf.len();
                self.buf = ReadBuf::Heap(buf);
            } else {
                // A protocol error in these bytes is sticky: the next `advance` reports it.
                let _ = self.reader.direct_done(buf);
            }
            return match res {
                Ok(0) => false,
                Ok(_) => {
                    conn.last_activity.set(Instant::now());
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    false
                }
            };
        }
        let recv = match &mut self.recv {
            Some(r) => r,
            None => match conn.stream.recv_multi() {
                Ok(r) => self.recv.insert(r),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot start a receive");
                    return false;
                }
            },
        };
        match recv.recv().await {
            Received::Data(bytes) => {
                conn.last_activity.set(Instant::now());
                self.take_in(bytes);
                true
            }
            Received::Eof => false,
            Received::Rearm if self.stopping => {
                // Stopped for single-shot reads: the caller's next `fill` starts them.
                self.recv = None;
                self.stopping = false;
                true
            }
            Received::Rearm => {
                // The ring ran dry (its buffers are held by connections whose messages
                // are not consumed yet), or the receive was ended. Re-arming at once could
                // end the same way, again and again, while the buffers that would let it
                // go on wait for other connections' handlers: read the next bytes once
                // into a heap buffer instead; the next `fill` re-arms the ring receive.
                self.recv = None;
                let started = if self.start < self.end {
                    self.move_to_heap();
                    self.continue_single(conn)
                } else {
                    self.start_single(conn, None)
                };
                if let Err(e) = started {
                    tracing::debug!(error = %e, "cannot start a read");
                    return false;
                }
                // Boxed: rare, and `fill`'s future is part of every `recv`.
                Box::pin(self.fill(conn)).await
            }
            Received::Err(e) => {
                tracing::debug!(error = %e, "receive failed");
                false
            }
        }
    }

    /// [`RxState::fill`] on a TLS connection: the records received are opened and their
    /// plaintext appended behind the pending bytes, in a heap buffer (no ring buffer is
    /// parsed in place, and no payload read straight into the reassembly buffer). While idle
    /// the connection holds no buffer. Cancellation safe: the pending bytes stay in `self`,
    /// and a record cut by the read waits in the TLS state.
    async fn fill_tls(&mut self, conn: &Rc<Conn>) -> bool {
        let (start, end) = (self.start, self.end);
        let pending = match std::mem::replace(&mut self.buf, ReadBuf::Taken) {
            ReadBuf::Heap(mut v) if start < end => {
                v.copy_within(start..end, 0);
                v.truncate(end - start);
                v
            }
            ReadBuf::Ring(r) if start < end => {
                let mut v = Vec::with_capacity(end - start);
                append_copy(&mut v, &r[start..end]);
                v
            }
            idle => {
                if matches!(&idle, ReadBuf::Heap(v) if v.capacity() > 0) {
                    self.pool.checkin(idle);
                }
                self.release_large();
                Vec::new()
            }
        };
        self.start = 0;
        self.end = pending.len();
        self.buf = ReadBuf::Heap(pending);
        let ReadBuf::Heap(buf) = &mut self.buf else {
            unreachable!("set above")
        };
        let res = conn
            .recv_plain_into(&mut self.recv, buf, true, Some(&self.pool))
            .await;
        self.end = buf.len();
        match res {
            Ok(true) => {
                conn.last_activity.set(Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::debug!(error = %e, "receive failed");
                false
            }
        }
    }

    /// Starts a single-shot read: a large frame's payload straight into the reassembly buffer
    /// (at most `room` bytes, never past the frame), or else the next bytes into a heap
    /// buffer.
    fn start_single(&mut self, conn: &Conn, direct: Option<Direct>) -> std::io::Result<()> {
        let Some(Direct {
            buf: mut payload,
            mut room,
            remaining,
        }) = direct
        else {
            let ReadBuf::Heap(mut buf) = self.pool.checkout() else {
                unreachable!("the pool hands out heap buffers")
            };
            buf.clear();
            let room = buf.capacity();
            self.single = Some(Box::new(Single::Heap(conn.stream.start_read(buf, room)?)));
            return Ok(());
        };
        let len = payload.len();
        if (room as u64) < remaining {
            // A buffer kept from an earlier large message that holds the whole frame spares
            // growing this one step by step, and the page faults of fresh memory.
            let whole = usize::try_from(len as u64 + remaining).unwrap_or(usize::MAX);
            if self.pool.move_to_large(&mut payload, whole) {
                room = whole - len;
            }
        }
        self.single = Some(Box::new(Single::Direct(
            conn.stream.start_read(payload, room)?,
        )));
        Ok(())
    }

    /// Starts a single-shot read into the heap buffer behind its pending bytes (moved to its
    /// front first), or returns without one when the bytes are in a ring buffer (the multishot
    /// receive then gathers the rest).
    fn continue_single(&mut self, conn: &Conn) -> std::io::Result<()> {
        if !matches!(self.buf, ReadBuf::Heap(_)) {
            return Ok(());
        }
        let ReadBuf::Heap(mut buf) = std::mem::replace(&mut self.buf, ReadBuf::Taken) else {
            unreachable!("checked above")
        };
        let (start, end) = (self.start, self.end);
        buf.copy_within(start..end, 0);
        buf.truncate(end - start);
        if buf.len() == buf.capacity() {
            buf.reserve(self.pool.size());
        }
        // While the read owns the buffer, nothing is pending here; its completion sets `end`.
        self.start = 0;
        self.end = 0;
        let room = buf.capacity() - buf.len();
        self.single = Some(Box::new(Single::Heap(conn.stream.start_read(buf, room)?)));
        Ok(())
    }

    /// Moves pending bytes that lie in a ring buffer into a heap buffer (giving the ring
    /// buffer back), so that a single-shot read can continue behind them.
    fn move_to_heap(&mut self) {
        if !matches!(self.buf, ReadBuf::Ring(_)) {
            return;
        }
        let ReadBuf::Heap(mut heap) = self.pool.checkout() else {
            unreachable!("the pool hands out heap buffers")
        };
        heap.clear();
        append_copy(&mut heap, &self.buf.bytes()[self.start..self.end]);
        self.start = 0;
        self.end = heap.len();
        // The ring buffer goes back to the ring as it is dropped here.
        self.buf = ReadBuf::Heap(heap);
    }

    /// Adds received bytes: parsed where they lie when nothing is pending, else gathered
    /// behind the pending bytes (a frame that straddles two ring buffers) in a heap buffer.
    fn take_in(&mut self, bytes: RecvBuf) {
        if self.start == self.end {
            self.pool
                .checkin(std::mem::replace(&mut self.buf, ReadBuf::Ring(bytes)));
            self.start = 0;
            self.end = self.buf.bytes().len();
            return;
        }
        let (start, end) = (self.start, self.end);
        let mut heap = match std::mem::replace(&mut self.buf, ReadBuf::Taken) {
            ReadBuf::Heap(mut v) => {
                v.copy_within(start..end, 0);
                v.truncate(end - start);
                v
            }
            ReadBuf::Ring(old) => {
                let ReadBuf::Heap(mut v) = self.pool.checkout() else {
                    unreachable!("the pool hands out heap buffers")
                };
                v.clear();
                append_copy(&mut v, &old[start..end]);
                v // `old` goes back to the ring
            }
            ReadBuf::Taken => unreachable!("pending bytes without a buffer"),
        };
        append_copy(&mut heap, &bytes);
        self.start = 0;
        self.end = heap.len();
        self.buf = ReadBuf::Heap(heap);
    }

    /// Gives a reassembly buffer larger than a read buffer back to the pool (none while a
    /// message is in progress).
    pub(super) fn release_large(&mut self) {
        if let Some(large) = self.reader.take_buffer(self.pool.size()) {
            self.pool.put_large(large);
        }
    }

    /// Runs the receive loop until a data message is ready or the stream ends, answering
    /// pings, recording pongs and handling the close handshake and protocol errors.
    ///
    /// Cancellation safe: dropped at any await, it leaves the state consistent, and bytes that
    /// arrive meanwhile wait in the driver for the next call.
    pub(super) async fn next(&mut self, conn: &Rc<Conn>, deliver: bool) -> Result<Got> {
        loop {
            if self.finished {
                return Ok(Got::End);
            }
            if self.single.is_some() {
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
                    tracing::debug!(peer = ?conn.info().peer_addr(), error = %e, code = e.close_code().0, "protocol error; closing");
                    self.finished = true;
                    let _ = conn.queue_close(Some(e.close_code()), "");
                    return Err(Error::Protocol(e));
                }
            };
            self.start = base + advance.consumed;
            let Some(ready) = advance.ready else {
                if let Some(capacity) = self.reader.wants_buffer() {
                    // A large frame starts: reassemble it in a buffer kept from an earlier
                    // message, if there is one, then go on with the bytes that are here.
                    if let Some((buf, gap)) = self.pool.take_placed(capacity) {
                        self.pool.put_large(self.reader.provide_buffer_at(buf, gap));
                    }
                    continue;
                }
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
                    tracing::debug!(peer = ?conn.info().peer_addr(), code = code.map(|c| c.0), "close received");
                    self.peer_close =
                        Some(Box::new((code.unwrap_or(CloseCode::NO_STATUS), reason)));
                    conn.close_received.set(true);
                    // Echo the status code (section 5.5.1), or send an empty close.
                    let _ = conn.queue_close(code, "");
                    self.finished = true;
                    return Ok(Got::End);
                }
                _ if deliver && !conn.close_queued() => {
                    self.large = ready.len() >= LARGE_MODE_MIN;
                    return Ok(Got::Data(base, ready));
                }
                // After our close frame, data is discarded while we wait for the peer's.
                _ => {}
            }
        }
    }

    /// The stream ended (EOF or a read error).
    pub(super) fn read_ended(&mut self, conn: &Conn) -> Result<Got> {
        self.finished = true;
        if conn.close_queued() {
            // We closed first and the peer hung up: that ends the handshake.
            return Ok(Got::End);
        }
        conn.stop_writer();
        Err(Error::ConnectionLost)
    }

    /// Reads and discards messages until the peer's close frame or the end of the stream.
    pub(super) async fn drain(&mut self, conn: &Rc<Conn>) {
        while let Ok(Got::Data(..)) = self.next(conn, false).await {}
    }
}

/// The receiving half of a WebSocket.
pub struct Receiver {
    pub(super) conn: Rc<Conn>,
    /// Boxed: the application's handler future holds the receiver, usually twice over
    /// (the `WebSocket`, then its half), for the connection's whole life.
    pub(super) state: Box<RxState>,
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
    /// call resumes it. See [`Sender`](crate::Sender) for an example.
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
    /// other tasks, or sent on with [`Sender::send_owned`](crate::Sender::send_owned). A
    /// message that was reassembled (fragmented, or larger than the read buffer) is handed
    /// over without a copy; one that lies in a receive buffer is copied out of it (a large one
    /// into a pooled buffer that comes back when `send_owned` has written it).
    pub async fn recv_owned(&mut self) -> Result<Option<OwnedMessage>> {
        match self.state.next(&self.conn, true).await? {
            Got::End => Ok(None),
            Got::Data(base, ready) => {
                let state = &mut self.state;
                if let Some(payload) = state.reader.take_assembled(ready) {
                    return Ok(Some(owned_data(ready, payload)));
                }
                let end = state.end;
                let message = state.reader.message(&state.buf.bytes()[base..end], ready);
                if ready.len() < LARGE_MIN {
                    return Ok(Some(message.into_owned()));
                }
                // (`advance` validated the payload: it is copied as bytes, not checked again.)
                let payload = state.pool.copy_to_large(message.payload());
                Ok(Some(owned_data(ready, payload)))
            }
        }
    }

    /// The peer's close frame (code and reason), once received. A close without status reads
    /// as 1005.
    pub fn close_frame(&self) -> Option<(CloseCode, &str)> {
        self.state.peer_close.as_ref().map(|b| (b.0, b.1.as_str()))
    }

    /// Facts about the connection.
    pub fn info(&self) -> &ConnectionInfo {
        self.conn.info()
    }

    /// The data the application attached to this connection; see [`Sender::set_data`](crate::Sender::set_data).
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
            Box::new(RxState {
                buf: ReadBuf::Taken,
                start: 0,
                end: 0,
                reader: Reader::new(config),
                pool,
                recv: None,
                stopping: false,
                single: None,
                large: false,
                peer_close: None,
                finished: true,
            }),
        );
        *self.conn.returned_rx.borrow_mut() = Some(state);
        self.conn.progress.notify_waiters();
    }
}

/// A data message's payload as the owned message of its kind.
pub(super) fn owned_data(ready: Ready, payload: Bytes) -> OwnedMessage {
    match ready.opcode() {
        OpCode::Text => OwnedMessage::Text(payload),
        _ => OwnedMessage::Binary(payload),
    }
}
