//! The per-thread pool of registered (fixed) read buffers, with a heap fallback.
//!
//! Each runtime thread registers `registered_buffers` buffers of `read_buffer_size` bytes with
//! its ring (fewer when RLIMIT_MEMLOCK refuses that many).
//! A connection checks one out while it has bytes to read and gives it back while idle; when
//! the pool is empty (or registration was refused) it gets a plain heap buffer instead. The
//! pool is never waited on. Reads into a registered buffer use `read_fixed`, which spares the kernel the
//! page pinning of every read.

use std::cell::RefCell;
use std::io;

use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{BoundedBuf, IoBuf};
use tokio_uring::net::TcpStream;

/// Heap buffers kept for reuse (beyond the registered ones), so that connections that go
/// idle and wake up do not allocate and zero a buffer each time.
const SPARE_HEAP_BUFFERS: usize = 64;

/// The per-thread buffer pool.
pub(crate) struct BufferPool {
    pool: Option<FixedBufPool<Vec<u8>>>,
    size: usize,
    spare: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// Registers `count` buffers of `size` bytes with the current thread's ring. Must run
    /// inside the tokio-uring runtime. When registration fails, every buffer is a heap buffer.
    pub(crate) fn new(count: usize, size: usize) -> Self {
        // Registered memory counts against RLIMIT_MEMLOCK (often 8 MiB in containers): on a
        // refusal, try half as many buffers, down to 16, before falling back to the heap.
        let mut count = count;
        while count >= 16 {
            let pool = FixedBufPool::new((0..count).map(|_| vec![0u8; size]));
            match pool.register() {
                Ok(()) => {
                    return BufferPool {
                        pool: Some(pool),
                        size,
                        spare: RefCell::default(),
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, count, size, "buffer registration refused");
                    count /= 2;
                }
            }
        }
        if count > 0 {
            tracing::warn!(
                "could not register read buffers of {size} bytes (RLIMIT_MEMLOCK?); using heap buffers"
            );
        }
        BufferPool {
            pool: None,
            size,
            spare: RefCell::default(),
        }
    }

    /// A buffer for one connection: registered when one is free, else from the heap.
    pub(crate) fn checkout(&self) -> ReadBuf {
        if let Some(fixed) = self.pool.as_ref().and_then(|p| p.try_next(self.size)) {
            return ReadBuf::Fixed(fixed);
        }
        match self.spare.borrow_mut().pop() {
            Some(buf) => ReadBuf::Heap(buf),
            None => ReadBuf::heap(self.size),
        }
    }

    /// Gives a buffer back: a registered one returns to the ring's pool when dropped, a heap
    /// one is kept for reuse (up to a few) or freed.
    pub(crate) fn checkin(&self, buf: ReadBuf) {
        if let ReadBuf::Heap(v) = buf {
            let mut spare = self.spare.borrow_mut();
            if spare.len() < SPARE_HEAP_BUFFERS && v.capacity() == self.size {
                spare.push(v);
            }
        }
    }
}

/// A connection's read buffer; the connection keeps its own `start..end` cursors inside the
/// initialised part (every byte up to `end` was read into it). Heap buffers are not zeroed:
/// a read initialises what it fills.
pub(crate) enum ReadBuf {
    /// A registered buffer, read with `read_fixed`.
    Fixed(FixedBuf),
    /// A heap buffer, read with `read`; its length is the initialised part.
    Heap(Vec<u8>),
    /// Transiently empty while a read owns the buffer.
    Taken,
}

impl ReadBuf {
    /// An empty heap buffer of exactly `size` bytes of capacity, not zeroed.
    pub(crate) fn heap(size: usize) -> Self {
        ReadBuf::Heap(Vec::with_capacity(size))
    }

    /// The initialised bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            ReadBuf::Fixed(b) => b,
            ReadBuf::Heap(v) => v,
            ReadBuf::Taken => &[],
        }
    }

    /// The initialised bytes, mutably.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            ReadBuf::Fixed(b) => b,
            ReadBuf::Heap(v) => v,
            ReadBuf::Taken => &mut [],
        }
    }

    /// The buffer's capacity.
    pub(crate) fn capacity(&self) -> usize {
        match self {
            ReadBuf::Fixed(b) => IoBuf::bytes_total(b),
            // `Vec::with_capacity` gives exactly the capacity asked for.
            ReadBuf::Heap(v) => v.capacity(),
            ReadBuf::Taken => 0,
        }
    }

    /// Reads from `stream` into `self[at..]`, returning the number of bytes read (0 at EOF).
    pub(crate) async fn read_at(&mut self, stream: &TcpStream, at: usize) -> io::Result<usize> {
        if at >= self.capacity() {
            return Err(io::Error::other("read buffer is full"));
        }
        match std::mem::replace(self, ReadBuf::Taken) {
            ReadBuf::Fixed(buf) => {
                let (res, slice) = stream.read_fixed(buf.slice(at..)).await;
                *self = ReadBuf::Fixed(slice.into_inner());
                res
            }
            ReadBuf::Heap(buf) => {
                let (res, slice) = stream.read(buf.slice(at..)).await;
                *self = ReadBuf::Heap(slice.into_inner());
                res
            }
            ReadBuf::Taken => Err(io::Error::other("read buffer lost")),
        }
    }
}
