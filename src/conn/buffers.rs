//! The per-thread pool of registered (fixed) read buffers, with a heap fallback.
//!
//! Each runtime thread registers `registered_buffers` buffers of `read_buffer_size` bytes with
//! its ring (fewer when RLIMIT_MEMLOCK refuses that many).
//! A connection checks one out while it has bytes to read and gives it back while idle; when
//! the pool is empty (or registration was refused) it gets a plain heap buffer instead. The
//! pool is never waited on. Reads into a registered buffer use `read_fixed`, which spares the kernel the
//! page pinning of every read.

use std::cell::{Cell, RefCell};
use std::io;

use bytes::Bytes;

use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{BoundedBuf, IoBuf};
use tokio_uring::net::TcpStream;

/// Heap buffers always kept for reuse (beyond the registered ones), so that connections that
/// go idle and wake up do not allocate a buffer each time.
const MIN_SPARE_HEAP_BUFFERS: usize = 64;

/// Every this many check-ins the pool forgets its peak demand and frees the spare heap
/// buffers beyond what is in use now (plus the minimum).
const PEAK_WINDOW: u32 = 1 << 16;

/// Reassembly, message and write buffers of 16 KiB or more kept per thread for reuse, at most
/// this many bytes in all, so that a stream of large messages does not fault in fresh pages
/// for each one.
const LARGE_SPARE_BYTES: usize = 64 << 20;
/// Buffers smaller than this are left to the allocator.
pub(crate) const LARGE_MIN: usize = 16 << 10;
/// At most this many large buffers are kept.
const LARGE_SPARE_COUNT: usize = 64;

/// The per-thread buffer pool.
///
/// Heap buffers come back to a spare list, which holds at most as many as the peak number
/// out at once in the current window minus those out now: memory never exceeds the recent
/// peak, and a busy thread whose demand exceeds the registered buffers (measured: 1,000
/// connections on one thread) reuses buffers instead of calling the allocator per message.
pub(crate) struct BufferPool {
    pool: Option<FixedBufPool<Vec<u8>>>,
    size: usize,
    spare: RefCell<Vec<Vec<u8>>>,
    /// Heap buffers checked out and not yet back.
    heap_out: Cell<usize>,
    /// The most heap buffers out at once in this window (at least the minimum).
    peak: Cell<usize>,
    /// Check-ins in this window.
    checkins: Cell<u32>,
    /// Large buffers kept for reuse, and the sum of their capacities.
    large: RefCell<Vec<Vec<u8>>>,
    large_bytes: Cell<usize>,
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
                    return BufferPool::with(Some(pool), size);
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
        BufferPool::with(None, size)
    }

    fn with(pool: Option<FixedBufPool<Vec<u8>>>, size: usize) -> Self {
        BufferPool {
            pool,
            size,
            spare: RefCell::default(),
            heap_out: Cell::new(0),
            peak: Cell::new(MIN_SPARE_HEAP_BUFFERS),
            checkins: Cell::new(0),
            large: RefCell::default(),
            large_bytes: Cell::new(0),
        }
    }

    /// The read buffers' size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The smallest large buffer of at least `capacity` bytes kept from earlier, if any.
    pub(crate) fn take_large(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut large = self.large.borrow_mut();
        let (i, _) = large
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())?;
        let buf = large.swap_remove(i);
        self.large_bytes
            .set(self.large_bytes.get() - buf.capacity());
        Some(buf)
    }

    /// Moves `buf`'s bytes into a kept large buffer of at least `capacity` bytes, if there is
    /// one, and keeps the old buffer in its place; false (and `buf` untouched) otherwise.
    pub(crate) fn move_to_large(&self, buf: &mut Vec<u8>, capacity: usize) -> bool {
        let Some(mut large) = self.take_large(capacity) else {
            return false;
        };
        large.extend_from_slice(buf);
        self.put_large(std::mem::replace(buf, large));
        true
    }

    /// A copy of `bytes` in a kept large buffer (or a new one), which comes back through
    /// [`BufferPool::put_large`] once written.
    pub(crate) fn copy_to_large(&self, bytes: &[u8]) -> Bytes {
        let mut buf = self.take_large(bytes.len()).unwrap_or_default();
        buf.extend_from_slice(bytes);
        Bytes::from(buf)
    }

    /// Keeps a large buffer for reuse (emptied) within the pool's budget, making room by
    /// freeing smaller ones, or frees it.
    pub(crate) fn put_large(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if !(LARGE_MIN..=LARGE_SPARE_BYTES).contains(&cap) {
            return;
        }
        let mut large = self.large.borrow_mut();
        while large.len() >= LARGE_SPARE_COUNT || self.large_bytes.get() + cap > LARGE_SPARE_BYTES {
            let Some((i, _)) = large
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .filter(|(_, b)| b.capacity() < cap)
            else {
                return;
            };
            let freed = large.swap_remove(i);
            self.large_bytes
                .set(self.large_bytes.get() - freed.capacity());
        }
        buf.clear();
        large.push(buf);
        self.large_bytes.set(self.large_bytes.get() + cap);
    }

    /// A buffer for one connection: registered when one is free, else from the heap.
    pub(crate) fn checkout(&self) -> ReadBuf {
        if let Some(fixed) = self.pool.as_ref().and_then(|p| p.try_next(self.size)) {
            return ReadBuf::Fixed(fixed);
        }
        self.heap(None)
    }

    /// A heap buffer of at least the read size (a kept large buffer first), for reads whose
    /// buffer may be handed out with the message it holds ([`BufferPool::detach`]).
    pub(crate) fn checkout_heap(&self) -> ReadBuf {
        self.heap(self.take_large(self.size))
    }

    /// Counts a heap buffer out: `kept` if given, else a spare, else a new one.
    fn heap(&self, kept: Option<Vec<u8>>) -> ReadBuf {
        let out = self.heap_out.get() + 1;
        self.heap_out.set(out);
        self.peak.set(self.peak.get().max(out));
        match kept.or_else(|| self.spare.borrow_mut().pop()) {
            Some(buf) => ReadBuf::Heap(buf),
            None => ReadBuf::heap(self.size),
        }
    }

    /// A checked-out heap buffer left for good (handed to the application with a message):
    /// it no longer counts as out. It may come back later through [`BufferPool::put_large`].
    pub(crate) fn detach(&self) {
        self.heap_out.set(self.heap_out.get().saturating_sub(1));
    }

    /// Gives a buffer back: a registered one returns to the ring's pool when dropped, a heap
    /// one is kept for reuse (within the recent peak demand) or freed; one of another size
    /// (from [`BufferPool::checkout_heap`]) goes to the large buffers.
    pub(crate) fn checkin(&self, buf: ReadBuf) {
        let ReadBuf::Heap(v) = buf else { return };
        // Buffers made outside the pool (the client's first) count as if checked out.
        let out = self.heap_out.get().saturating_sub(1);
        self.heap_out.set(out);
        let mut spare = self.spare.borrow_mut();
        let checkins = self.checkins.get() + 1;
        if checkins == PEAK_WINDOW {
            self.checkins.set(0);
            self.peak.set(out.max(MIN_SPARE_HEAP_BUFFERS));
            spare.truncate(self.peak.get() - out);
        } else {
            self.checkins.set(checkins);
        }
        if v.capacity() != self.size {
            drop(spare);
            self.put_large(v);
        } else if spare.len() + out < self.peak.get() {
            spare.push(v);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spares(pool: &BufferPool) -> usize {
        pool.spare.borrow().len()
    }

    /// Checks `n` buffers out at once, then all of them back in.
    fn out_and_back(pool: &BufferPool, n: usize) {
        let bufs: Vec<ReadBuf> = (0..n).map(|_| pool.checkout()).collect();
        for b in bufs {
            pool.checkin(b);
        }
    }

    #[test]
    fn heap_buffers_are_reused_up_to_the_peak_demand() {
        let pool = BufferPool::new(0, 1024);
        out_and_back(&pool, 300);
        // All 300 were out at once, so all 300 are kept.
        assert_eq!(spares(&pool), 300);
        let again: Vec<ReadBuf> = (0..300).map(|_| pool.checkout()).collect();
        assert_eq!(spares(&pool), 0, "the spares were handed out again");
        for b in again {
            pool.checkin(b);
        }
        // Memory stays within the peak: a buffer of the wrong size is not kept, and nothing
        // beyond the peak is.
        pool.checkin(ReadBuf::heap(512));
        assert_eq!(spares(&pool), 300);
    }

    #[test]
    fn large_buffers_are_kept_within_the_budget_best_fit_first() {
        let pool = BufferPool::new(0, 1024);
        // Under 16 KiB: left to the allocator.
        pool.put_large(Vec::with_capacity(1024));
        assert!(pool.take_large(1).is_none());
        pool.put_large(Vec::with_capacity(8 << 20));
        pool.put_large(Vec::with_capacity(2 << 20));
        pool.put_large(vec![7u8; 3 << 20]);
        let b = pool.take_large(2 << 20).unwrap();
        assert_eq!(b.capacity(), 2 << 20, "the smallest that fits");
        let b = pool.take_large(2 << 20).unwrap();
        assert!(b.is_empty() && b.capacity() >= 3 << 20, "emptied");
        assert!(pool.take_large(9 << 20).is_none());
        // Over the byte budget, smaller buffers make room for a larger one, never the reverse.
        for _ in 0..LARGE_SPARE_BYTES / (4 << 20) {
            pool.put_large(Vec::with_capacity(4 << 20));
        }
        assert!(pool.large_bytes.get() <= LARGE_SPARE_BYTES);
        pool.put_large(Vec::with_capacity(1 << 20));
        assert!(pool.take_large(1 << 20).unwrap().capacity() >= 4 << 20);
        assert!(pool.large.borrow().len() <= LARGE_SPARE_COUNT);
        let total: usize = pool.large.borrow().iter().map(|b| b.capacity()).sum();
        assert_eq!(total, pool.large_bytes.get());
    }

    #[test]
    fn heap_checkouts_prefer_kept_large_buffers_and_detached_ones_stop_counting() {
        let pool = BufferPool::new(0, 20 << 10);
        pool.put_large(Vec::with_capacity(64 << 10));
        let ReadBuf::Heap(first) = pool.checkout_heap() else {
            panic!("a heap buffer")
        };
        assert_eq!(first.capacity(), 64 << 10, "the kept large buffer");
        let second = pool.checkout_heap();
        assert_eq!(second.capacity(), 20 << 10, "a fresh one of the read size");
        assert_eq!(pool.heap_out.get(), 2);
        // The first leaves with a message and comes back later as a large buffer; the second
        // is checked in.
        pool.detach();
        pool.checkin(second);
        assert_eq!(pool.heap_out.get(), 0);
        assert_eq!(spares(&pool), 1);
        pool.put_large(first);
        // A checked-in heap buffer of another size goes to the large buffers.
        let third = pool.checkout_heap();
        assert_eq!(third.capacity(), 64 << 10);
        pool.checkin(third);
        assert_eq!(pool.heap_out.get(), 0);
        assert_eq!(pool.take_large(1).map(|b| b.capacity()), Some(64 << 10));
    }

    #[test]
    fn the_peak_is_forgotten_after_a_window() {
        let pool = BufferPool::new(0, 64);
        out_and_back(&pool, 500);
        assert_eq!(spares(&pool), 500);
        // A window of one-at-a-time use frees the spares beyond the minimum.
        for _ in 0..PEAK_WINDOW {
            let b = pool.checkout();
            pool.checkin(b);
        }
        assert!(spares(&pool) <= MIN_SPARE_HEAP_BUFFERS, "{}", spares(&pool));
        assert!(spares(&pool) >= 1);
    }
}
