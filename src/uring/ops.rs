//! Operations as futures and streams. A single-shot [`Op`] owns what the kernel reads or writes
//! until its completion; dropped before that, it hands them to the driver, which keeps them
//! until the completion arrives. A multishot [`RecvMulti`] or [`AcceptMulti`] is a stream of
//! completions that the driver queues for it; dropped, it cancels the operation and gives back
//! whatever completions it did not take.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::{opcode, squeue, types};

use super::driver::{Completion, Handle};
use super::{driver, RecvBuf};

/// A single-shot operation in flight, owning `T` (its buffers) until it completes.
pub(crate) struct Op<T: 'static> {
    driver: Handle,
    index: usize,
    data: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Submits `entry` (at the end of this loop turn), which may point into `data`.
    ///
    /// # Safety
    /// Every pointer in `entry` must point into `data`'s heap memory (or be null), which must
    /// not move when `data` does: the kernel may use it until the completion, and `data`
    /// (kept here, or by the driver once this is dropped) lives that long.
    pub(crate) unsafe fn new(data: T, entry: squeue::Entry) -> io::Result<Op<T>> {
        let driver = driver();
        // SAFETY: the caller vouched for `entry`; `data` is kept until the completion.
        let index = unsafe { driver.borrow_mut().start(entry)? };
        Ok(Op {
            driver,
            index,
            data: Some(data),
        })
    }

    /// The operation's completion, if it has arrived (it stays to be collected by a poll).
    pub(crate) fn peek(&self) -> Option<Completion> {
        self.driver.borrow().peek(self.index)
    }

    /// What the operation owns, until it completes.
    pub(crate) fn data(&self) -> Option<&T> {
        self.data.as_ref()
    }

    /// Polls the operation like [`Future::poll`], except that a completion whose result is
    /// `quiet` does not wake the task (see [`Driver::poll_op`](super::driver::Driver::poll_op));
    /// `None` wakes it for any completion.
    pub(crate) fn poll_quiet(
        &mut self,
        cx: &mut Context<'_>,
        quiet: Option<u32>,
    ) -> Poll<(Completion, T)> {
        let quiet = quiet.map_or(0, |n| i32::try_from(n).unwrap_or(0));
        let done = self
            .driver
            .borrow_mut()
            .poll_op(self.index, cx.waker(), quiet);
        match done {
            Some(c) => Poll::Ready((
                c,
                self.data.take().expect("an Op polled after it completed"),
            )),
            None => Poll::Pending,
        }
    }
}

// `Op` never pins `T` (no structural pinning): the bytes the kernel uses are heap memory
// that `T` points to.
impl<T: 'static> Unpin for Op<T> {}

impl<T: 'static> Future for Op<T> {
    type Output = (Completion, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Op` is `Unpin`: it holds no self-references.
        self.get_mut().poll_quiet(cx, None)
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            self.driver.borrow_mut().orphan(self.index, Box::new(data));
        }
    }
}

/// A multishot operation's completions, as they arrive.
struct Multi {
    driver: Handle,
    index: usize,
}

impl Multi {
    fn start(entry: squeue::Entry, fds: bool) -> io::Result<Multi> {
        let driver = driver();
        // SAFETY: the multishot entries built here point to no memory of ours.
        let index = unsafe { driver.borrow_mut().start_multi(entry, fds)? };
        Ok(Multi { driver, index })
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        match self.driver.borrow_mut().poll_multi(self.index, cx.waker()) {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }
}

impl Drop for Multi {
    fn drop(&mut self) {
        self.driver.borrow_mut().drop_multi(self.index);
    }
}

/// What a multishot receive delivered.
pub(crate) enum Received {
    /// Bytes, in a buffer of the ring.
    Data(RecvBuf),
    /// The peer closed its side (or the socket was shut down).
    Eof,
    /// The operation ended without an error or EOF (the ring ran out of buffers, ENOBUFS, or
    /// the kernel stopped it): start a new one to read on. No bytes were lost.
    Rearm,
    /// The receive failed.
    Err(io::Error),
}

/// A multishot receive on a socket: every completion names a buffer the kernel picked from
/// the provided-buffer ring.
pub(crate) struct RecvMulti {
    multi: Multi,
}

impl RecvMulti {
    /// Starts receiving on `fd` (which must stay open while this lives).
    pub(crate) fn new(fd: RawFd) -> io::Result<RecvMulti> {
        let group = driver().borrow().bufs.group;
        let entry = opcode::RecvMulti::new(types::Fd(fd), group).build();
        Ok(RecvMulti {
            multi: Multi::start(entry, false)?,
        })
    }

    /// The next delivery. After `Eof`, `Rearm` or `Err` the operation has ended.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        let Some(c) = std::task::ready!(self.multi.poll_next(cx)) else {
            return Poll::Ready(Received::Rearm);
        };
        Poll::Ready(self.received(c))
    }

    /// A delivery already queued, without waiting.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Received> {
        let c = self
            .multi
            .driver
            .borrow_mut()
            .next_multi(self.multi.index)?;
        Some(self.received(c))
    }

    fn received(&self, c: Completion) -> Received {
        match (c.io(), c.buffer()) {
            (Ok(0), Some(bid)) => {
                // End of stream with a buffer picked all the same: it goes straight back.
                drop(RecvBuf::new(
                    self.multi.driver.borrow().bufs.clone(),
                    bid,
                    0,
                ));
                Received::Eof
            }
            (Ok(n), Some(bid)) => {
                let ring = self.multi.driver.borrow().bufs.clone();
                Received::Data(RecvBuf::new(ring, bid, n as usize))
            }
            (Ok(0), None) => Received::Eof,
            (Ok(_), None) => Received::Err(io::Error::other("a receive without a buffer")),
            (Err(e), _) if e.raw_os_error() == Some(libc::ENOBUFS) => Received::Rearm,
            (Err(e), _) if e.raw_os_error() == Some(libc::ECANCELED) => Received::Rearm,
            (Err(e), _) => Received::Err(e),
        }
    }

    /// Asks the kernel to stop this receive. Deliveries that arrive before it stops still
    /// come out of [`RecvMulti::recv`], then `Rearm`: nothing is lost.
    pub(crate) fn stop(&mut self) {
        self.multi.driver.borrow_mut().stop_multi(self.multi.index);
    }

    /// Waits for the next delivery.
    pub(crate) async fn recv(&mut self) -> Received {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// A multishot accept on a listening socket: every completion is a new connection's
/// descriptor (blocking mode as the listener's, close-on-exec).
pub(crate) struct AcceptMulti {
    multi: Multi,
}

impl AcceptMulti {
    /// Starts accepting on `fd` (which must stay open while this lives).
    pub(crate) fn new(fd: RawFd) -> io::Result<AcceptMulti> {
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build();
        Ok(AcceptMulti {
            multi: Multi::start(entry, true)?,
        })
    }

    /// The next accepted descriptor; `None` once the operation ended (start a new one, unless
    /// the listener was shut down).
    pub(crate) async fn accept(&mut self) -> Option<io::Result<std::os::fd::OwnedFd>> {
        let c = std::future::poll_fn(|cx| self.multi.poll_next(cx)).await?;
        Some(c.io().map(|fd| {
            // SAFETY: the kernel made this descriptor for us; nothing else owns it.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) }
        }))
    }
}

/// A buffer whose bytes stay where they are when the value moves, so that the kernel can
/// use them while an operation that owns the value is in flight.
///
/// # Safety
/// `as_ptr()..as_ptr() + len()` must be valid for reads and must not move or change while the
/// value lives, whatever happens to the value itself (it is heap memory it owns or shares).
pub(crate) unsafe trait StableBuf: 'static {
    fn as_ptr(&self) -> *const u8;
    fn len(&self) -> usize;
}

// SAFETY: a Vec's bytes are on the heap; moving the Vec moves only its pointer.
unsafe impl StableBuf for Vec<u8> {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: `Bytes` points to shared heap memory (or static data), never into itself.
unsafe impl StableBuf for bytes::Bytes {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// Sends `buf[offset..]` on `fd`; completes with the bytes sent (a stream socket may send
/// fewer).
pub(crate) fn send<B: StableBuf>(fd: RawFd, buf: B, offset: usize) -> io::Result<Op<B>> {
    let offset = offset.min(buf.len());
    let len = (buf.len() - offset).min(u32::MAX as usize) as u32;
    // SAFETY: `offset <= len()`, so the pointer stays inside (or one past) the buffer.
    let ptr = unsafe { buf.as_ptr().add(offset) };
    let entry = opcode::Send::new(types::Fd(fd), ptr, len)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    // SAFETY: the entry points into `buf`'s stable bytes (`StableBuf`), which the `Op` keeps.
    unsafe { Op::new(buf, entry) }
}

/// What a vectored send owns while in flight: the parts, their iovecs and the header.
pub(crate) struct Parts {
    // Only kept alive for the kernel, which reads them until the completion.
    #[allow(dead_code)]
    parts: Vec<bytes::Bytes>,
    #[allow(dead_code)]
    iovecs: Box<[libc::iovec]>,
    #[allow(dead_code)]
    header: Box<libc::msghdr>,
}

/// Sends `parts` in order with one `sendmsg` (at most 1024 of them); completes with the bytes
/// sent, which may be fewer than all.
pub(crate) fn send_parts(fd: RawFd, parts: Vec<bytes::Bytes>) -> io::Result<Op<Parts>> {
    let iovecs: Box<[libc::iovec]> = parts
        .iter()
        .take(1024)
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut header: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    header.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = iovecs.len() as _;
    let entry = opcode::SendMsg::new(types::Fd(fd), &*header)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build();
    let data = Parts {
        parts,
        iovecs,
        header,
    };
    // SAFETY: the entry points to the boxed header, which points to the boxed iovecs, which
    // point into the parts' heap bytes: all owned by `data`, none moves when `data` does.
    unsafe { Op::new(data, entry) }
}

/// Connects the socket `fd` to `addr`.
pub(crate) fn connect(
    fd: RawFd,
    addr: socket2::SockAddr,
) -> io::Result<Op<Box<socket2::SockAddr>>> {
    let addr = Box::new(addr);
    let entry = opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len()).build();
    // SAFETY: the entry points into the boxed address, which the `Op` keeps.
    unsafe { Op::new(addr, entry) }
}

#[cfg(feature = "cli")]
/// Receives into `buf[at..capacity]` on `fd`; completes with the bytes read (the caller then
/// extends the length over them if they end past it).
pub(crate) fn recv_at(fd: RawFd, mut buf: Vec<u8>, at: usize) -> io::Result<Op<Vec<u8>>> {
    let at = at.min(buf.capacity());
    let len = (buf.capacity() - at).min(u32::MAX as usize) as u32;
    // SAFETY: `at <= capacity`, so the pointer stays inside (or one past) the allocation.
    let ptr = unsafe { buf.as_mut_ptr().add(at) };
    let entry = opcode::Recv::new(types::Fd(fd), ptr, len).build();
    // SAFETY: the entry points into `buf`'s heap allocation, which the `Op` keeps.
    unsafe { Op::new(buf, entry) }
}

/// Receives into `buf`'s spare capacity on `fd`, without a provided buffer; completes with
/// the bytes read, which the caller then counts in (`set_len`).
pub(crate) fn recv_into(fd: RawFd, buf: Vec<u8>) -> io::Result<Op<Vec<u8>>> {
    recv_into_max(fd, buf, usize::MAX)
}

/// As [`recv_into`], but reads at most `max` bytes.
pub(crate) fn recv_into_max(fd: RawFd, mut buf: Vec<u8>, max: usize) -> io::Result<Op<Vec<u8>>> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max).min(u32::MAX as usize) as u32;
    let entry = opcode::Recv::new(types::Fd(fd), spare.as_mut_ptr().cast(), len).build();
    // SAFETY: the entry points into `buf`'s heap spare capacity, which the `Op` keeps.
    unsafe { Op::new(buf, entry) }
}

/// Shuts `fd` down (`how`: `libc::SHUT_WR`, ...): its pending receives end.
#[cfg(test)]
pub(crate) fn shutdown(fd: RawFd, how: i32) -> io::Result<Op<()>> {
    let entry = opcode::Shutdown::new(types::Fd(fd), how).build();
    // SAFETY: the entry points to no memory.
    unsafe { Op::new((), entry) }
}
