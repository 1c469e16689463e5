//! The receiving half: the read buffer with its cursors, the protocol reader, the read kept in
//! flight across cancelled calls, and the messages handed out from the buffer.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use tokio_uring::buf::BoundedBuf;

use crate::conn::buffers::{BufferPool, ReadBuf, LARGE_MIN};
use crate::conn::{info::ConnectionInfo, shared::Conn};
use crate::error::{Error, Result};
use crate::proto::close::CloseCode;
use crate::proto::frame::OpCode;
use crate::proto::message::{Direct, Message, OwnedMessage, Reader, Ready};

/// A frame payload with at least this much still to come is read straight into the
/// reassembly buffer rather than through the connection's read buffer.
pub(super) const DIRECT_READ_MIN: usize = 16 << 10;

/// The receive state: the read buffer with its cursors and the protocol reader.
pub(crate) struct RxState {
    pub(super) buf: ReadBuf,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) reader: Reader,
    /// Where read buffers come from (and go back to while the connection is idle).
    pub(super) pool: Rc<BufferPool>,
    /// The last read did not fill the buffer (the socket is probably drained): the next
    /// wait, if the buffer is empty, is a readiness poll that pins no buffer.
    pub(super) drained: bool,
    /// The last message was large and went out with `recv_owned`: read into heap buffers,
    /// which the next such message can take with it instead of being copied out.
    pub(super) heap_reads: bool,
    /// The peer's close frame, once received.
    pub(super) peer_close: Option<(CloseCode, String)>,
    /// The receive side ended (close received, protocol error, or EOF).
    pub(super) finished: bool,
    /// A read in flight. It lives here, not in the `recv` future, so that a `recv` dropped
    /// mid-read (a `select!` branch that lost) loses no bytes: the next call resumes it.
    pub(super) pending: Option<Pending>,
}

/// A read in flight with the buffer it reads into (which the read owns until it completes).
pub(super) struct Pending {
    pub(super) read: Pin<Box<dyn Future<Output = Filled>>>,
    /// It reads into a heap buffer checked out of the pool.
    pub(super) heap: bool,
}

/// A completed read: the result, the buffer, and how many bytes it could have read.
pub(super) enum Filled {
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
pub(super) enum Got {
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
    pub(super) async fn fill(&mut self, conn: &Rc<Conn>) -> bool {
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
    pub(super) async fn start_read(&mut self, conn: &Rc<Conn>) -> bool {
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
    pub(super) fn note_read(
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
    pub(super) fn take_read_buffer(&mut self, range: Range<usize>) -> Option<Bytes> {
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
    pub(super) fn release_large(&mut self) {
        if let Some(large) = self.reader.take_buffer(self.pool.size()) {
            self.pool.put_large(large);
        }
    }

    /// Starts reading the next bytes of a large frame's payload straight into the reader's
    /// reassembly buffer (at most `room`, never past the frame).
    pub(super) fn start_direct(&mut self, conn: &Rc<Conn>, direct: Direct) {
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
    pub(super) async fn next(&mut self, conn: &Rc<Conn>, deliver: bool) -> Result<Got> {
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
    pub(super) state: RxState,
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
    /// other tasks, or sent on with [`Sender::send_owned`](crate::Sender::send_owned). A message that was reassembled
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
pub(super) fn owned_data(ready: Ready, payload: Bytes) -> OwnedMessage {
    match ready.opcode() {
        OpCode::Text => OwnedMessage::Text(payload),
        _ => OwnedMessage::Binary(payload),
    }
}
