//! The ring of one thread and the table of its operations in flight. Every operation is a slot,
//! named in its submission's `user_data`; the driver, not the task that asked, owns the slot and
//! whatever memory the kernel may still touch until the operation's last completion arrives.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::Waker;

use io_uring::{cqueue, opcode, squeue, IoUring};

use super::bufring::BufRing;

/// `user_data` of submissions whose completion nobody waits for (cancellations).
const UNTRACKED: u64 = u64::MAX;

/// IORING_ENTER_GETEVENTS: run deferred completion work and post completions.
const ENTER_GETEVENTS: u32 = 1;

/// Completions a multishot operation may have waiting for its consumer before the driver
/// cancels it.
const MAX_QUEUED: usize = 8;

/// One completion: the result (a count, a descriptor, or `-errno`) and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Completion {
    /// The result as `io::Result`.
    pub(crate) fn io(self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }

    /// The provided buffer the kernel chose, if any.
    pub(crate) fn buffer(self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// More completions follow for this (multishot) operation.
    pub(crate) fn more(self) -> bool {
        cqueue::more(self.flags)
    }
}

/// The state of one operation.
enum Slot {
    /// Unused; the next free slot.
    Free(usize),
    /// A single-shot operation whose future waits. A completion whose result is `quiet`
    /// (when it is not 0) does not wake it: see [`Driver::poll_op`].
    Waiting { waker: Option<Waker>, quiet: i32 },
    /// A single-shot operation completed before its future looked.
    Done(Completion),
    /// A single-shot operation whose future was dropped: what the kernel may touch is kept
    /// here until the completion.
    Orphan(#[allow(dead_code)] Box<dyn Any>),
    /// A multishot operation: its completions, queued for the consumer.
    Multi {
        queue: VecDeque<Completion>,
        waker: Option<Waker>,
        ended: bool,
        /// Its results are descriptors (a multishot accept).
        fds: bool,
    },
    /// A multishot operation whose consumer went away: the buffers (or descriptors) of its
    /// later completions are given back (closed), and the slot is freed at its last one.
    MultiOrphan { fds: bool },
}

/// The driver of one thread's ring.
pub(crate) struct Driver {
    ring: IoUring,
    slots: Vec<Slot>,
    /// The first free slot (`usize::MAX`: none).
    free: usize,
    /// Slots not free.
    live: usize,
    /// The provided-buffer ring for multishot receives.
    pub(crate) bufs: Rc<BufRing>,
    /// Wakers collected while reaping, woken once the driver is no longer borrowed.
    wake: Vec<Waker>,
    /// An empty vector with room, to take `wake`'s place (see [`Driver::take_wakers`]), so
    /// that a busy loop does not grow a new one every turn.
    spare_wake: Vec<Waker>,
    /// Signalled by the kernel for every completion; see [`Driver::fd`].
    eventfd: std::os::fd::OwnedFd,
}

/// How a thread's ring is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingConfig {
    /// Submission queue entries.
    pub(crate) entries: u32,
    /// Provided buffers (a power of two) and their size.
    pub(crate) buffers: u16,
    pub(crate) buffer_size: usize,
}

impl Driver {
    /// A ring with SINGLE_ISSUER and COOP_TASKRUN where the kernel has them, else a plain one;
    /// with its provided-buffer ring registered.
    ///
    /// Not DEFER_TASKRUN: the thread sleeps in epoll, where only the ring's eventfd can wake
    /// it, and for deferred work the development machine's kernel (6.18.44) signalled that
    /// eventfd about 14 ms late (a ping-pong echo ran 35 times slower; see the wake test in
    /// `uring::tests`). With COOP_TASKRUN the kernel wakes the sleeping thread itself to post
    /// the completion.
    pub(crate) fn new(config: RingConfig) -> io::Result<Driver> {
        let cq = config.entries.saturating_mul(4);
        let attempts: [fn(&mut io_uring::Builder); 3] = [
            |b| {
                b.setup_single_issuer()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag();
            },
            |b| {
                b.setup_coop_taskrun().setup_taskrun_flag();
            },
            |_| {},
        ];
        let mut last = None;
        for setup in attempts {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq).setup_clamp();
            setup(&mut builder);
            match builder.build(config.entries) {
                Ok(ring) => return Driver::with(ring, config),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
    }

    fn with(ring: IoUring, config: RingConfig) -> io::Result<Driver> {
        let bufs = Rc::new(BufRing::new(config.buffers, config.buffer_size, 0)?);
        // SAFETY: the ring's memory lives in `bufs`, which outlives the registration: the
        // driver holds an `Rc` of it, and its drop unregisters the group (after every
        // operation has completed) before that `Rc` goes.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufs.count(),
                bufs.group,
                0,
            )?;
        }
        // SAFETY: plain syscall; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` was just created and nothing else owns it.
        let eventfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd)?;
        Ok(Driver {
            eventfd,
            ring,
            slots: Vec::new(),
            free: usize::MAX,
            live: 0,
            bufs,
            wake: Vec::new(),
            spare_wake: Vec::new(),
        })
    }

    /// The descriptor that becomes readable when completions wait: an eventfd registered with
    /// the ring.
    pub(crate) fn fd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    /// Operations in flight (or completed and not yet collected).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    fn alloc(&mut self, slot: Slot) -> usize {
        self.live += 1;
        if self.free == usize::MAX {
            self.slots.push(slot);
            return self.slots.len() - 1;
        }
        let index = self.free;
        match std::mem::replace(&mut self.slots[index], slot) {
            Slot::Free(next) => self.free = next,
            _ => unreachable!("the free list holds a used slot"),
        }
        index
    }

    fn release(&mut self, index: usize) {
        self.slots[index] = Slot::Free(self.free);
        self.free = index;
        self.live -= 1;
    }

    /// Queues `entry` for the next submission, as operation `index`.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller of `start`/`start_multi` vouched for the entry's memory.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            // The queue is full: hand what is there to the kernel and try again.
            self.submit()?;
        }
    }

    /// Starts a single-shot operation; the returned slot is watched with [`Driver::poll_op`].
    ///
    /// # Safety
    /// Every buffer or struct `entry` points to must stay valid until the operation's
    /// completion: the caller keeps it in the `Op` that owns the slot, and hands it to
    /// [`Driver::orphan`] if that goes first.
    pub(crate) unsafe fn start(&mut self, entry: squeue::Entry) -> io::Result<usize> {
        let index = self.alloc(Slot::Waiting {
            waker: None,
            quiet: 0,
        });
        if let Err(e) = self.push(entry.user_data(index as u64)) {
            self.release(index);
            return Err(e);
        }
        Ok(index)
    }

    /// Starts a multishot operation (receive with buffer selection, accept).
    ///
    /// # Safety
    /// As for [`Driver::start`]; multishot entries here point to no caller memory.
    pub(crate) unsafe fn start_multi(
        &mut self,
        entry: squeue::Entry,
        fds: bool,
    ) -> io::Result<usize> {
        let index = self.alloc(Slot::Multi {
            queue: VecDeque::new(),
            waker: None,
            ended: false,
            fds,
        });
        if let Err(e) = self.push(entry.user_data(index as u64)) {
            self.release(index);
            return Err(e);
        }
        Ok(index)
    }

    /// The completion of single-shot operation `index`, freeing its slot, or `None` (and
    /// `waker` kept) while it is in flight.
    ///
    /// With `quiet` not 0, a completion whose result is `quiet` (a send that wrote all it was
    /// given) does not wake `waker`: the owner collects it at its next poll, which something
    /// else causes. Any other result (a short write, an error) wakes it. Each poll sets
    /// `quiet` anew.
    pub(crate) fn poll_op(
        &mut self,
        index: usize,
        waker: &Waker,
        quiet: i32,
    ) -> Option<Completion> {
        match &mut self.slots[index] {
            Slot::Done(c) => {
                let c = *c;
                self.release(index);
                Some(c)
            }
            Slot::Waiting { waker: w, quiet: q } => {
                *q = quiet;
                if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *w = Some(waker.clone());
                }
                None
            }
            _ => unreachable!("poll_op on a slot that is not a single-shot operation"),
        }
    }

    /// The completion of single-shot operation `index`, if it has arrived, left to be
    /// collected by [`Driver::poll_op`].
    pub(crate) fn peek(&self, index: usize) -> Option<Completion> {
        match &self.slots[index] {
            Slot::Done(c) => Some(*c),
            _ => None,
        }
    }

    /// The owner of single-shot operation `index` went away before collecting it: keep
    /// `keep` (what the kernel may touch) until the completion, and ask for a cancellation.
    pub(crate) fn orphan(&mut self, index: usize, keep: Box<dyn Any>) {
        match &self.slots[index] {
            Slot::Done(_) => self.release(index),
            Slot::Waiting { .. } => {
                self.slots[index] = Slot::Orphan(keep);
                self.cancel(index);
            }
            _ => unreachable!("orphan on a slot that is not a single-shot operation"),
        }
    }

    /// The next completion of multishot operation `index`: `Some(Some(c))`, `Some(None)` once
    /// it ended (its last completion was taken), `None` (and `waker` kept) while waiting.
    pub(crate) fn poll_multi(&mut self, index: usize, waker: &Waker) -> Option<Option<Completion>> {
        let Slot::Multi {
            queue,
            waker: w,
            ended,
            ..
        } = &mut self.slots[index]
        else {
            unreachable!("poll_multi on a slot that is not a multishot operation")
        };
        if let Some(c) = queue.pop_front() {
            return Some(Some(c));
        }
        if *ended {
            return Some(None);
        }
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
        None
    }

    /// Completions of multishot operation `index` already queued, without waiting.
    #[cfg(test)]
    pub(crate) fn next_multi(&mut self, index: usize) -> Option<Completion> {
        match &mut self.slots[index] {
            Slot::Multi { queue, .. } => queue.pop_front(),
            _ => None,
        }
    }

    /// Queues `entry` with nobody waiting for its completion (a close).
    ///
    /// # Safety
    /// `entry` must point to no memory.
    pub(crate) unsafe fn start_detached(&mut self, entry: squeue::Entry) -> io::Result<()> {
        self.push(entry.user_data(UNTRACKED))
    }

    /// Cancels multishot operation `index`, whose consumer stays: its last completions still
    /// queue for it.
    pub(crate) fn stop_multi(&mut self, index: usize) {
        if let Slot::Multi { ended: false, .. } = self.slots[index] {
            self.cancel(index);
        }
    }

    /// The consumer of multishot operation `index` went away: queued buffers go back to the
    /// ring, the operation is cancelled unless it ended, and the slot is freed at its end.
    pub(crate) fn drop_multi(&mut self, index: usize) {
        let Slot::Multi {
            queue, ended, fds, ..
        } = std::mem::replace(&mut self.slots[index], Slot::MultiOrphan { fds: false })
        else {
            unreachable!("drop_multi on a slot that is not a multishot operation")
        };
        self.slots[index] = Slot::MultiOrphan { fds };
        for c in queue {
            self.discard(c, fds);
        }
        if ended {
            self.release(index);
        } else {
            self.cancel(index);
        }
    }

    /// Gives back the buffer of a completion nobody will read, or closes the descriptor a
    /// multishot accept made for nobody.
    fn discard(&self, c: Completion, fds: bool) {
        if fds {
            if c.result >= 0 {
                // SAFETY: the descriptor was just made by the kernel for this process and
                // nothing else knows it.
                unsafe { libc::close(c.result) };
            }
        } else if let Some(bid) = c.buffer() {
            self.bufs.give_back(bid);
        }
    }

    /// Asks the kernel to cancel operation `index` (its completion still arrives).
    fn cancel(&mut self, index: usize) {
        let entry = opcode::AsyncCancel::new(index as u64)
            .build()
            .user_data(UNTRACKED);
        // A failed push only delays the end of the operation until it completes by itself.
        let _ = self.push(entry);
    }

    /// Empties the eventfd's counter after a wakeup.
    pub(crate) fn clear_signal(&self) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count`; the eventfd is non-blocking, so an empty counter
        // gives EAGAIN, which is fine.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    /// Submits what is queued, and runs the completion work the kernel left for this thread
    /// (TASKRUN flag), so that it can be reaped.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        let sq = self.ring.submission();
        let pending = sq.len() as u32;
        // With TASKRUN_FLAG the kernel says when completion work waits for this thread.
        let work = sq.taskrun() || sq.cq_overflow();
        drop(sq);
        if pending == 0 && !work {
            return Ok(());
        }
        let flags = if work { ENTER_GETEVENTS } else { 0 };
        loop {
            // SAFETY: no argument is passed; the flags are valid for this ring.
            let res = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(pending, 0, flags, None)
            };
            match res {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full: reap first (the caller does), then retry.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves every posted completion to its slot and collects the wakers to wake. Returns
    /// how many completions there were.
    pub(crate) fn reap(&mut self) -> usize {
        let mut n = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            n += 1;
            let c = Completion {
                result: cqe.result(),
                flags: cqe.flags(),
            };
            let index = cqe.user_data();
            if index == UNTRACKED {
                continue;
            }
            if c.buffer().is_some() {
                self.bufs.taken();
            }
            let index = index as usize;
            let mut free = false;
            let mut cancel = false;
            match &mut self.slots[index] {
                slot @ Slot::Waiting { .. } => {
                    if let Slot::Waiting {
                        waker: Some(w),
                        quiet,
                    } = std::mem::replace(slot, Slot::Done(c))
                    {
                        if quiet == 0 || c.result != quiet {
                            self.wake.push(w);
                        }
                    }
                }
                Slot::Orphan(_) => free = true,
                Slot::Multi {
                    queue,
                    waker,
                    ended,
                    fds,
                } => {
                    queue.push_back(c);
                    if !c.more() {
                        *ended = true;
                    }
                    if let Some(w) = waker.take() {
                        self.wake.push(w);
                    }
                    // A consumer that does not keep up must not hold the thread's buffers: stop
                    // its receive (it is re-armed when the consumer comes back), so that the
                    // peer meets TCP's flow control instead. Not an accept: it holds no
                    // buffer, and a burst of connections would end it again and again.
                    if queue.len() == MAX_QUEUED && !*ended && !*fds {
                        cancel = true;
                    }
                }
                Slot::MultiOrphan { fds } => {
                    let fds = *fds;
                    self.discard(c, fds);
                    free = !c.more();
                }
                Slot::Free(_) | Slot::Done(_) => {
                    debug_assert!(false, "a completion for slot {index}, which expects none");
                }
            }
            if free {
                self.release(index);
            }
            if cancel {
                self.cancel(index);
            }
        }
        n
    }

    /// The wakers collected by `reap`; hand the emptied vector back with
    /// [`Driver::give_back_wakers`].
    pub(crate) fn take_wakers(&mut self) -> Vec<Waker> {
        let spare = std::mem::take(&mut self.spare_wake);
        std::mem::replace(&mut self.wake, spare)
    }

    /// Keeps an emptied vector from [`Driver::take_wakers`] for the next turn.
    pub(crate) fn give_back_wakers(&mut self, mut wakers: Vec<Waker>) {
        wakers.clear();
        if wakers.capacity() > self.spare_wake.capacity() {
            self.spare_wake = wakers;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Every operation still in flight may write into memory the driver owns (orphans,
        // provided buffers): cancel them all and wait for their completions, bounded.
        let all = opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::any())
            .build()
            .user_data(UNTRACKED);
        let _ = self.push(all);
        for _ in 0..1000 {
            if self.live == 0 {
                break;
            }
            let pending = self.ring.submission().len() as u32;
            // SAFETY: no argument; wait for at least one completion, with GETEVENTS.
            let _ = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(pending, 1, ENTER_GETEVENTS, None)
            };
            // Every owner is gone (each holds the driver): only orphans are left.
            self.reap();
        }
        self.wake.clear();
        let _ = self.ring.submitter().unregister_buf_ring(self.bufs.group);
    }
}

/// A shared handle to the thread's driver.
pub(crate) type Handle = Rc<RefCell<Driver>>;
