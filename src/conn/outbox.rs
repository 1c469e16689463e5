//! The send queue's storage and the one-thread signal that wakes the writer.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

use bytes::Bytes;

use crate::uring::Op;

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
            batch.extend_from_slice(&self.data);
            self.data.clear();
        }
        self.in_flight = batch.len();
        Some(batch)
    }
}

/// A write the connection task submitted for the writer to finish.
pub(super) enum Handed {
    InFlight(Op<Vec<u8>>),
    Done((std::io::Result<usize>, Vec<u8>)),
}

/// Wakes the one writer task of a connection, with `Notify::notify_one`'s meaning (a wakeup
/// that finds the writer busy is kept for its next wait) but none of its locking or waiter
/// list: everything here runs on one thread.
#[derive(Default)]
pub(super) struct WriterSignal {
    /// A wakeup not yet consumed.
    pub(super) pending: Cell<bool>,
    /// The writer, while it waits.
    pub(super) waker: RefCell<Option<Waker>>,
    /// The writer is waiting (its last poll of `notified` was pending).
    pub(super) waiting: Cell<bool>,
}

impl WriterSignal {
    /// Wakes the writer, or leaves the wakeup for its next wait.
    pub(super) fn notify(&self) {
        self.pending.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits for a wakeup (returns at once if one is pending).
    pub(super) async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                self.waiting.set(false);
                return Poll::Ready(());
            }
            let mut waker = self.waker.borrow_mut();
            match &mut *waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
            self.waiting.set(true);
            Poll::Pending
        })
        .await
    }

    /// The waiting writer's waker, if it waits with no wakeup pending.
    pub(super) fn idle_writer(&self) -> Option<Waker> {
        if !self.waiting.get() || self.pending.get() {
            return None;
        }
        self.waker.borrow().clone()
    }

    /// Marks a wakeup pending without waking the writer: something else (a write it was
    /// handed) will wake it.
    pub(super) fn set_pending(&self) {
        self.pending.set(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn writer_signal_keeps_a_wakeup_and_wakes_a_waiting_writer() {
        let signal = WriterSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // A wakeup sent while the writer is busy is kept for its next wait, once.
        signal.notify();
        signal.notify();
        let mut wait = std::pin::pin!(signal.notified());
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        let mut wait = std::pin::pin!(signal.notified());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "polled again");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // A waiting writer is woken once, and its wait then completes.
        signal.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
