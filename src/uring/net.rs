//! A TCP socket whose I/O goes through the thread's ring: sends and receives that own their
//! buffers, a vectored send of shared payloads, connect, and a close that goes through the ring
//! behind any submission still queued for the descriptor.

#[cfg(feature = "tls")]
use super::bufring::RecvBuf;
use std::cell::RefCell;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};

use bytes::Bytes;
use io_uring::{opcode, types};

use super::driver::Driver;
use super::ops::{self, Op, Parts, Received, RecvMulti};
use super::try_driver;
use super::Completion;
use crate::proto::mask::append_copy;

/// A connected TCP socket driven by the thread's ring.
pub(crate) struct TcpStream {
    fd: Option<OwnedFd>,
    /// The ring its operations are queued on, which closes it (see the `Drop` impl).
    ring: Weak<RefCell<Driver>>,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.raw())
            .finish()
    }
}

impl TcpStream {
    /// Takes over a connected socket (blocking or not: io_uring does not care), for the ring
    /// of the runtime running on this thread.
    pub(crate) fn from_fd(fd: OwnedFd) -> TcpStream {
        TcpStream {
            fd: Some(fd),
            ring: try_driver().as_ref().map_or_else(Weak::new, Rc::downgrade),
        }
    }

    /// Connects to `addr` through the ring.
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.cloexec(),
            None,
        )?;
        let stream = TcpStream::from_fd(socket.into());
        let (c, _) = ops::connect(stream.raw(), addr.into())?.await;
        c.io()?;
        Ok(stream)
    }

    /// The descriptor, for operations (it stays open while `self` lives).
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn sock(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self)
    }

    /// Sets TCP_NODELAY.
    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.sock().set_tcp_nodelay(on)
    }

    /// Shuts one or both directions down at once (a plain system call: it starts no
    /// operation and ends the receives in flight).
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock().shutdown(how)
    }

    /// Receives once into `buf`'s spare capacity (which must not be empty), appending.
    pub(crate) async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match ops::recv_into(self.raw(), buf) {
            Ok(op) => received(op.await),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Starts receiving at most `max` bytes into `buf`'s spare capacity (appending); see
    /// [`received`] for the outcome.
    pub(crate) fn start_read(&self, buf: Vec<u8>, max: usize) -> io::Result<Op<Vec<u8>>> {
        ops::recv_into_max(self.raw(), buf, max)
    }

    #[cfg(feature = "cli")]
    /// Receives once into `buf[at..capacity]` (the load generator reads this way); the length grows over the bytes read when
    /// they end past it (a zeroed buffer of full length keeps its length).
    pub(crate) async fn read_at(&self, buf: Vec<u8>, at: usize) -> (io::Result<usize>, Vec<u8>) {
        if at > buf.len() {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "read past the buffer's length");
            return (Err(e), buf);
        }
        let op = match ops::recv_at(self.raw(), buf, at) {
            Ok(op) => op,
            Err(e) => return (Err(e), Vec::new()),
        };
        let (c, mut buf) = op.await;
        match c.io() {
            Ok(n) => {
                let end = at + n as usize;
                if end > buf.len() {
                    // SAFETY: the kernel initialised `at..end`, and `..at` lies within the
                    // length checked above.
                    unsafe { buf.set_len(end) };
                }
                (Ok(n as usize), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    /// Starts sending `buf[offset..]` (submitted at the end of this loop turn); the
    /// operation completes with the bytes sent, which may be fewer (see [`sent`]).
    pub(crate) fn start_write(&self, buf: Vec<u8>, offset: usize) -> io::Result<Op<Vec<u8>>> {
        ops::send(self.raw(), buf, offset)
    }

    /// Sends `buf[offset..]` once; the bytes sent may be fewer.
    pub(crate) async fn write_at(
        &self,
        buf: Vec<u8>,
        offset: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        match self.start_write(buf, offset) {
            Ok(op) => sent(op.await),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Sends all of `buf`.
    pub(crate) async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.write_all_from(buf, 0).await
    }

    /// Sends `buf[done..]`, all of it (the rest of a partial write).
    pub(crate) async fn write_all_from(
        &self,
        mut buf: Vec<u8>,
        mut done: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        while done < buf.len() {
            let (res, back) = self.write_at(buf, done).await;
            buf = back;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Starts sending `parts` in order with one vectored send (at most 1,024 of them); the
    /// operation completes with the bytes sent, which may be fewer.
    pub(crate) fn start_writev(&self, parts: Vec<Bytes>) -> io::Result<Op<Parts>> {
        ops::send_parts(self.raw(), parts)
    }

    /// Starts a multishot receive into the ring's buffers.
    pub(crate) fn recv_multi(&self) -> io::Result<RecvMulti> {
        RecvMulti::new(self.raw())
    }
}

/// A finished [`TcpStream::start_read`] as (bytes read, the buffer with them appended).
pub(crate) fn received((c, mut buf): (Completion, Vec<u8>)) -> (io::Result<usize>, Vec<u8>) {
    match c.io() {
        Ok(n) => {
            // SAFETY: the kernel initialised `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
            (Ok(n as usize), buf)
        }
        Err(e) => (Err(e), buf),
    }
}

/// A finished send as (bytes sent, the buffer).
pub(crate) fn sent((c, buf): (Completion, Vec<u8>)) -> (io::Result<usize>, Vec<u8>) {
    (c.io().map(|n| n as usize), buf)
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("a TcpStream's descriptor").as_fd()
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        // Submissions for this descriptor may still sit in the ring's queue: a close system
        // call now would let the number be reused (by a socket another thread opens, say)
        // before they reach the kernel, and a receive among them would take that socket's
        // bytes. The close goes through the ring, behind them: the ring the socket was made
        // for, wherever it is dropped (in a task the runtime drops, or outside any
        // `block_on`, where it waits for the runtime's next turn or its drop). Once that ring
        // is gone, nothing of it is queued.
        if let Some(driver) = self.ring.upgrade() {
            let raw = fd.into_raw_fd();
            let entry = opcode::Close::new(types::Fd(raw)).build();
            // SAFETY: a close points to no memory.
            if unsafe { driver.borrow_mut().start_detached(entry) }.is_ok() {
                return;
            }
            // SAFETY: the push failed, so the descriptor is still ours to close.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
}

/// What [`recv_next`] received: a ring buffer the kernel filled, or (when the ring ran dry) a
/// heap buffer of one single-shot read. (For the TLS layer, which opens records where they lie.)
#[cfg(feature = "tls")]
pub(crate) enum Chunk {
    Ring(RecvBuf),
    Heap(Vec<u8>),
}

#[cfg(feature = "tls")]
impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Ring(b) => b,
            Chunk::Heap(v) => v,
        }
    }
}

#[cfg(feature = "tls")]
impl std::ops::DerefMut for Chunk {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Chunk::Ring(b) => b,
            Chunk::Heap(v) => v,
        }
    }
}

/// Waits for the next delivery of the multishot receive `recv` (armed, or re-armed after it
/// ended, on `stream`); `None` at EOF. Cancellation safe: nothing is taken from the caller,
/// and what arrives after a cancelled call waits in the driver.
#[cfg(feature = "tls")]
pub(crate) async fn recv_next(
    recv: &mut Option<RecvMulti>,
    stream: &TcpStream,
) -> io::Result<Option<Chunk>> {
    let r = match recv {
        Some(r) => r,
        None => recv.insert(stream.recv_multi()?),
    };
    match r.recv().await {
        Received::Data(b) => Ok(Some(Chunk::Ring(b))),
        Received::Eof => Ok(None),
        Received::Rearm => {
            // As in `recv_append`: one single-shot read instead of re-arming into the
            // shortage; the next call re-arms.
            *recv = None;
            let (res, v) = stream.read(Vec::with_capacity(16 << 10)).await;
            Ok((res? > 0).then_some(Chunk::Heap(v)))
        }
        Received::Err(e) => Err(e),
    }
}

/// Waits for the next delivery of the multishot receive `recv` (armed, or re-armed after it
/// ended, on `stream`) and appends it to `buf`. Returns `Ok(false)` at EOF.
pub(crate) async fn recv_append(
    recv: &mut Option<RecvMulti>,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let r = match recv {
        Some(r) => r,
        None => recv.insert(stream.recv_multi()?),
    };
    match r.recv().await {
        Received::Data(b) => {
            append_copy(buf, &b);
            Ok(true)
        }
        Received::Eof => Ok(false),
        Received::Rearm => {
            // The ring ran dry (or the receive ended): read once into `buf` instead of
            // re-arming into the same shortage (see `RxState::fill`); the next call re-arms
            // the ring receive.
            *recv = None;
            let mut v = std::mem::take(buf);
            v.reserve(4096);
            let (res, v) = stream.read(v).await;
            *buf = v;
            res.map(|n| n > 0)
        }
        Received::Err(e) => Err(e),
    }
}
