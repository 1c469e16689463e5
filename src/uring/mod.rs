//! The only module that knows io_uring: one ring per thread inside a tokio current-thread
//! runtime, operations that own their buffers until their completion, multishot accept and
//! receive into a provided-buffer ring, and one submission per loop turn.

//!
//! The runtime's park hook submits what the turn queued and reaps what completed, so that a
//! turn costs at most one `io_uring_enter`. While the thread sleeps in epoll, the ring's
//! descriptor, registered with tokio's reactor, wakes it when completions wait.

mod bufring;
mod driver;
mod net;
mod ops;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(crate) use bufring::RecvBuf;
pub(crate) use driver::{Completion, RingConfig};
pub(crate) use net::{received, recv_append, sent, TcpStream};
#[cfg(feature = "tls")]
pub(crate) use net::{recv_next, Chunk};
pub(crate) use ops::{AcceptMulti, Op, Parts, Received, RecvMulti};

use driver::{Driver, Handle};

thread_local! {
    /// The driver of this thread's runtime, while one runs.
    static CURRENT: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// The driver of the runtime running on this thread.
///
/// # Panics
/// Outside a [`Runtime::block_on`].
pub(crate) fn driver() -> Handle {
    CURRENT.with(|c| {
        c.borrow()
            .clone()
            .expect("uringws: an io_uring operation outside its runtime")
    })
}

/// The driver of this thread's runtime, if one runs.
pub(crate) fn try_driver() -> Option<Handle> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Submits what is queued, reaps what completed and wakes its tasks: the end of a loop turn.
fn turn(driver: &Handle) {
    let mut wakers = {
        let mut d = driver.borrow_mut();
        if let Err(e) = d.submit() {
            tracing_error(&e);
        }
        d.reap();
        d.take_wakers()
    };
    for w in wakers.drain(..) {
        w.wake();
    }
    driver.borrow_mut().give_back_wakers(wakers);
}

fn tracing_error(e: &io::Error) {
    tracing::warn!(error = %e, "io_uring_enter failed");
}

/// A tokio current-thread runtime with this thread's ring.
pub(crate) struct Runtime {
    // Dropped in this order: the tasks (their operations become orphans), the runtime, then
    // the driver, which waits for the orphans' completions.
    local: tokio::task::LocalSet,
    rt: tokio::runtime::Runtime,
    driver: Handle,
}

impl Runtime {
    /// Sets up the ring (see [`Driver::new`]) and the runtime around it.
    pub(crate) fn new(config: RingConfig) -> io::Result<Runtime> {
        let driver = Rc::new(RefCell::new(Driver::new(config)?));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(|| {
                CURRENT.with(|c| {
                    if let Some(d) = c.borrow().as_ref() {
                        turn(d);
                    }
                })
            })
            .build()?;
        Ok(Runtime {
            rt,
            local: tokio::task::LocalSet::new(),
            driver,
        })
    }

    /// Runs `future` to completion on this thread, with tasks spawned by
    /// `tokio::task::spawn_local` and io_uring operations.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.driver.clone()));
        let driver = self.driver.clone();
        let out = self.local.block_on(&self.rt, async move {
            let fd = driver.borrow().fd();
            let reaper = tokio::task::spawn_local(reap_on_readable(driver, fd));
            let out = future.await;
            reaper.abort();
            out
        });
        CURRENT.with(|c| *c.borrow_mut() = previous);
        out
    }
}

/// The driver's eventfd, for readiness only (never closed here).
struct RingFd(i32);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

/// Reaps completions whenever the ring's descriptor becomes readable (the thread slept in
/// epoll while they arrived).
async fn reap_on_readable(driver: Handle, fd: i32) {
    // SAFETY: `fd` is the ring's descriptor, open for as long as the driver lives, and the
    // driver outlives this task (it holds a handle); `RingFd` never closes it.
    let Ok(ready) = (unsafe { AsyncFd::register_with_interest(RingFd(fd), Interest::READABLE) })
    else {
        // Without readiness, completions are still reaped at every park.
        return;
    };
    loop {
        let Ok(mut guard) = ready.readable().await else {
            return;
        };
        guard.clear_ready();
        driver.borrow().clear_signal();
        turn(&driver);
    }
}

#[cfg(test)]
mod tests;
