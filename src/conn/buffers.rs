//! A connection's receive buffers. Bytes arrive in buffers of the thread's provided-buffer
//! ring (see `uring`), where frames are parsed in place; a frame that straddles two of them is
//! gathered into a heap buffer from this per-thread pool, which keeps spare ones up to the
//! recent peak demand. Large buffers (reassembled messages, shared payloads) are recycled
//! through the pool too.

use std::cell::{Cell, RefCell};

use bytes::Bytes;

use crate::proto::mask::append_copy;
use crate::uring::RecvBuf;

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

/// Where a large payload starts within its page (its address modulo 4096), when the buffer
/// is the pool's to place it in: halfway, as far as can be from where the kernel's socket
/// buffers begin. The kernel copies payloads into and out of sockets with `rep movsb`,
/// which on AMD Zen takes about 20 times longer when the destination lies 1 to 15 bytes
/// past the source modulo 4096. A send's bytes start a fresh page of the socket's buffer
/// at its frame header's length (2 to 14 bytes) and a received frame's payload lies that
/// far into the sender's page, so payloads at a page's start, or 16 bytes in (where glibc's
/// `malloc` puts large blocks) meet it: measured (perf samples' registers in the 1 MiB echo,
/// uringws and fastwebsockets alike), half of the send copy's time went there.
const PAYLOAD_PAGE_OFFSET: usize = 2048;
/// The room a large buffer needs beyond its payload for that placement.
const PLACEMENT_SLACK: usize = 4096;

/// How far into `buf` a payload must start to lie at [`PAYLOAD_PAGE_OFFSET`] of a page.
fn placement_gap(buf: &[u8]) -> usize {
    (PAYLOAD_PAGE_OFFSET + 4096 - buf.as_ptr() as usize % 4096) % 4096
}

/// The per-thread buffer pool.
///
/// Heap buffers come back to a spare list, which holds at most as many as the peak number
/// out at once in the current window minus those out now: memory never exceeds the recent
/// peak, and a busy thread whose demand exceeds the registered buffers (measured: 1,000
/// connections on one thread) reuses buffers instead of calling the allocator per message.
pub(crate) struct BufferPool {
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
    /// A pool of heap buffers of `size` bytes.
    pub(crate) fn new(size: usize) -> Self {
        BufferPool {
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
        append_copy(&mut large, buf);
        self.put_large(std::mem::replace(buf, large));
        true
    }

    /// An empty buffer of at least `capacity` bytes: a kept one, or else a new one of exactly
    /// `capacity`, so that once kept by the pool it serves the next request of this size (a
    /// new buffer grown step by step would end a little short of it, and never be reused).
    pub(crate) fn take_large_or_new(&self, capacity: usize) -> Vec<u8> {
        self.take_large(capacity)
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// A copy of `bytes` in a kept large buffer (or a new one), placed in its page as
    /// [`PAYLOAD_PAGE_OFFSET`] says; the buffer comes back through [`BufferPool::put_large`]
    /// once written.
    pub(crate) fn copy_to_large(&self, bytes: &[u8]) -> Bytes {
        let mut buf = self.take_large_or_new(bytes.len() + PLACEMENT_SLACK);
        let gap = placement_gap(&buf);
        buf.resize(gap, 0);
        append_copy(&mut buf, bytes);
        Bytes::from(buf).slice(gap..)
    }

    /// A kept large buffer that holds `capacity` bytes placed as [`PAYLOAD_PAGE_OFFSET`]
    /// says, and how far into it they start; `None` if none is kept. A kept buffer without
    /// the room for that placement is grown once (it is empty: nothing is copied).
    pub(crate) fn take_placed(&self, capacity: usize) -> Option<(Vec<u8>, usize)> {
        let mut buf = self.take_large(capacity)?;
        buf.reserve_exact(capacity + PLACEMENT_SLACK);
        let gap = placement_gap(&buf);
        Some((buf, gap))
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

    /// A heap buffer of the read size (a spare one when there is one).
    pub(crate) fn checkout(&self) -> ReadBuf {
        self.heap(None)
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

    /// A checked-out heap buffer that will not come back (a read that owned it was dropped
    /// with its connection): it no longer counts as out.
    pub(crate) fn forget(&self) {
        self.heap_out.set(self.heap_out.get().saturating_sub(1));
    }

    /// Gives a buffer back: a ring buffer returns to the ring when dropped; a heap one is kept
    /// for reuse (within the recent peak demand) or freed, and one that grew past the read
    /// size goes to the large buffers.
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

/// The buffer a connection parses in; the connection keeps its own `start..end` cursors
/// inside its bytes.
pub(crate) enum ReadBuf {
    /// A buffer of the ring, as the kernel filled it (frames are parsed in place).
    Ring(RecvBuf),
    /// A heap buffer gathering a frame that straddled ring buffers; its length is the filled
    /// part.
    Heap(Vec<u8>),
    /// None: the connection has nothing pending.
    Taken,
}

impl ReadBuf {
    /// An empty heap buffer of exactly `size` bytes of capacity, not zeroed.
    pub(crate) fn heap(size: usize) -> Self {
        ReadBuf::Heap(Vec::with_capacity(size))
    }

    /// The filled bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            ReadBuf::Ring(b) => b,
            ReadBuf::Heap(v) => v,
            ReadBuf::Taken => &[],
        }
    }

    /// The filled bytes, mutably (payloads are unmasked in place).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            ReadBuf::Ring(b) => b,
            ReadBuf::Heap(v) => v,
            ReadBuf::Taken => &mut [],
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
        let pool = BufferPool::new(1024);
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
    fn large_payloads_are_placed_halfway_into_a_page() {
        let pool = BufferPool::new(1024);
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        for _ in 0..3 {
            let copy = pool.copy_to_large(&bytes);
            assert_eq!(copy, bytes);
            assert_eq!(copy.as_ptr() as usize % 4096, PAYLOAD_PAGE_OFFSET);
            // Written, its buffer comes back (emptied) and serves the next copy.
            let mut buf = copy.try_into_mut().expect("unique");
            buf.clear();
            pool.put_large(Vec::from(buf));
            assert_eq!(pool.large.borrow().len(), 1);
        }
        // A kept buffer without the room for the placement grows once to have it.
        let (buf, gap) = pool.take_placed(100_000).expect("kept");
        assert!(buf.capacity() >= 100_000 + gap);
        assert_eq!((buf.as_ptr() as usize + gap) % 4096, PAYLOAD_PAGE_OFFSET);
        pool.put_large(Vec::with_capacity(1 << 20));
        let (buf, gap) = pool.take_placed(1 << 20).expect("kept");
        assert!(buf.capacity() >= (1 << 20) + gap);
        assert_eq!((buf.as_ptr() as usize + gap) % 4096, PAYLOAD_PAGE_OFFSET);
        assert!(pool.take_placed(1).is_none(), "none left");
    }

    #[test]
    fn large_buffers_are_kept_within_the_budget_best_fit_first() {
        let pool = BufferPool::new(1024);
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
    fn the_peak_is_forgotten_after_a_window() {
        let pool = BufferPool::new(64);
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
