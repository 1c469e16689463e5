//! The provided-buffer ring: buffers the kernel picks from for multishot receives, so that an
//! idle connection holds none. A received buffer is a [`RecvBuf`], which gives itself back to
//! the ring when dropped.

use std::cell::Cell;
use std::io;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// An anonymous private mapping of `len` bytes, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping asks nothing of existing memory; failure is
        // checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr + len` is the mapping made in `new`, unmapped once, here. The ring
        // that let the kernel write into it is gone by now (see `Driver`'s drop, which waits for
        // every operation and unregisters the ring before the last `Rc<BufRing>` can go).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A registered provided-buffer ring of `count` buffers of `size` bytes (group `group`).
pub(crate) struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    size: usize,
    /// The next tail to publish; the kernel consumes from the head.
    tail: Cell<u16>,
    /// Buffers handed out and not yet back.
    out: Cell<usize>,
    pub(crate) group: u16,
}

impl BufRing {
    /// Maps the ring and its buffers and fills the ring; the caller registers it
    /// (`register_buf_ring_with_flags(ring.ring_addr(), count, group, 0)`).
    pub(crate) fn new(count: u16, size: usize, group: u16) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && size > 0 && size <= u32::MAX as usize);
        let entries = Mapping::new(count as usize * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(count as usize * size)?;
        let ring = BufRing {
            entries,
            buffers,
            count,
            size,
            tail: Cell::new(0),
            out: Cell::new(count as usize),
            group,
        };
        for bid in 0..count {
            ring.give_back(bid);
        }
        Ok(ring)
    }

    /// The ring's address, for registration.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.entries.ptr as u64
    }

    /// Entries in the ring.
    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    /// Buffers out of the ring (received and not yet given back).
    #[cfg(test)]
    pub(crate) fn out(&self) -> usize {
        self.out.get()
    }

    /// Puts buffer `bid` back at the tail and publishes the tail.
    pub(crate) fn give_back(&self, bid: u16) {
        debug_assert!(bid < self.count);
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        let base = self.entries.ptr.cast::<BufRingEntry>();
        // SAFETY: `slot < count`, so the entry lies in the entries mapping. The kernel reads
        // entries only between its head and the published tail; this one is past the tail
        // until the release store below publishes it.
        unsafe {
            let entry = &mut *base.add(slot);
            entry.set_addr(self.buffers.ptr.add(bid as usize * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field overlays the first entry's reserved field, inside the
        // mapping, 2-byte aligned; the kernel reads it with an acquire load.
        let shared = unsafe { &*(BufRingEntry::tail(base) as *const AtomicU16) };
        shared.store(tail, Ordering::Release);
        self.out.set(self.out.get() - 1);
    }

    /// Counts a buffer handed out by a completion (the driver calls it for each).
    pub(crate) fn taken(&self) {
        self.out.set(self.out.get() + 1);
    }

    /// The bytes of buffer `bid`.
    fn buffer(&self, bid: u16) -> *mut u8 {
        assert!(bid < self.count, "buffer id {bid} out of the ring");
        // SAFETY: bid < count, so the offset lies inside the buffers mapping.
        unsafe { self.buffers.ptr.add(bid as usize * self.size) }
    }
}

/// One buffer the kernel filled with `len` received bytes; back to the ring when dropped.
pub(crate) struct RecvBuf {
    ring: Rc<BufRing>,
    bid: u16,
    len: usize,
}

impl RecvBuf {
    /// The buffer `bid` that a completion reported, holding `len` bytes.
    pub(crate) fn new(ring: Rc<BufRing>, bid: u16, len: usize) -> RecvBuf {
        assert!(
            len <= ring.size,
            "a completion reported more bytes than a buffer holds"
        );
        RecvBuf { ring, bid, len }
    }
}

impl Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len <= size` bytes into buffer `bid` and gave it to us
        // with the completion; it does not touch it again until `give_back` (in our drop).
        // Only this `RecvBuf` refers to it.
        unsafe { std::slice::from_raw_parts(self.ring.buffer(self.bid), self.len) }
    }
}

impl DerefMut for RecvBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ring.buffer(self.bid), self.len) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
    }
}
