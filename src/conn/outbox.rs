//! The send queue's storage and the one-thread signal that wakes the writer.

use std::cell::{Cell, RefCell};
use std::task::{Context, Waker};

use crate::proto::mask::append_copy;
use bytes::Bytes;

/// The send queue.
#[derive(Default)]
pub(super) struct Outbox {
    /// Queued bytes that go out before `data`, in order: large shared payloads, each after
    /// a chunk with the frames queued before it and its own header.
    pub(super) chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    pub(super) chunks_len: usize,
    /// Encoded data frames waiting for the writer (after `chunks`).
    pub(super) data: Vec<u8>,
    /// Encoded control frames waiting; written before `data`.
    pub(super) control: Vec<u8>,
    /// Bytes of the write in flight.
    pub(super) in_flight: usize,
    /// A close frame was queued: nothing more may be sent.
    pub(super) close_queued: bool,
    /// The writer stopped (after the close frame, or on an error).
    pub(super) writer_done: bool,
    /// The write side failed; the peer is gone.
    pub(super) failed: bool,
    /// A task waits for the writer's progress: the write in flight must wake the writing task
    /// when it completes (see `writer::may_complete_quietly`). Cleared as each write ends.
    pub(super) loud: bool,
    /// The buffer of the last write, emptied, for the next batch to swap in.
    pub(super) spare: Vec<u8>,
}

impl Outbox {
    /// Takes the queued control and data frames, control first, as one write; `None` when
    /// none are queued. The spare buffer takes `data`'s place.
    pub(super) fn take_batch(&mut self) -> Option<Vec<u8>> {
        if self.control.is_empty() && self.data.is_empty() {
            return None;
        }
        let mut batch = std::mem::take(&mut self.spare);
        batch.clear();
        if self.control.is_empty() {
            std::mem::swap(&mut batch, &mut self.data);
        } else {
            std::mem::swap(&mut batch, &mut self.control);
            append_copy(&mut batch, &self.data);
            self.data.clear();
        }
        self.in_flight = batch.len();
        Some(batch)
    }
}

/// Wakes the task that drives a connection's writes (see `writer::poll_writes`), with
/// `Notify::notify_one`'s meaning (a wakeup that finds it busy is kept for its next wait) but
/// none of its locking or waiter list: everything here runs on one thread.
#[derive(Default)]
pub(super) struct WriterSignal {
    /// A wakeup not yet consumed.
    pub(super) pending: Cell<bool>,
    /// The task's waker, from its last wait.
    pub(super) waker: RefCell<Option<Waker>>,
}

impl WriterSignal {
    /// Wakes the task, or leaves the wakeup for its next wait.
    pub(super) fn notify(&self) {
        self.pending.set(true);
        let waker = self.waker.borrow().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Registers `cx` for the next wakeup; true (and consumed) when one is already pending.
    pub(super) fn register(&self, cx: &Context<'_>) -> bool {
        if self.pending.replace(false) {
            return true;
        }
        let mut waker = self.waker.borrow_mut();
        match &mut *waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            other => *other = Some(cx.waker().clone()),
        }
        false
    }

    /// Registers `cx` for the next wakeup, dropping one already pending: for a task that
    /// acts on the queue's present state anyway.
    pub(super) fn watch(&self, cx: &Context<'_>) {
        self.pending.set(false);
        let _ = self.register(cx);
    }

    /// The waker of the task that drives the writes, once it has waited.
    pub(super) fn waker(&self) -> Option<Waker> {
        self.waker.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn writer_signal_keeps_a_wakeup_and_wakes_a_waiting_task() {
        let signal = WriterSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        // A wakeup sent before the task waits is kept for its next wait, once.
        signal.notify();
        signal.notify();
        assert!(signal.register(&cx));
        assert!(!signal.register(&cx));
        assert!(!signal.register(&cx), "registered again");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // A waiting task is woken, and its next registration sees the wakeup.
        signal.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(signal.register(&cx));
        assert!(signal.waker().is_some());
    }
}
