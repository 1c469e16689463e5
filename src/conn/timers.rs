//! A connection's phases and timeouts, and the timers of a thread's connections: one task per
//! thread sleeps until the earliest deadline and checks the connections that are due (no task
//! or timer per connection). A timeout is enforced by shutting the socket down (never by
//! dropping an in-flight read); reads move a connection's deadline without touching the timers,
//! which find the real deadline when the old one comes.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Shutdown;
use std::num::NonZeroU64;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::conn::shared::Conn;
use crate::proto::close::CloseCode;
use crate::proto::frame::OpCode;

/// Where the connection is in its life, for its timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the 101 (or while serving plain HTTP): the handshake deadline applies.
    Handshake,
    /// Messages flow: the idle timeout and keep-alive pings apply.
    Open,
    /// A close frame was sent: the close deadline applies.
    Closing,
    /// Finished; no timer applies.
    Done,
}

/// The timeouts a connection's timer enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From accept (or connect) to a complete handshake.
    pub(crate) handshake: Duration,
    /// Nothing received for this long closes with 1001.
    pub(crate) idle: Option<Duration>,
    /// Nothing received for this long sends a ping.
    pub(crate) ping: Option<Duration>,
    /// After a close frame was sent, time allowed for the peer's close and EOF.
    pub(crate) close: Duration,
}

/// When `conn` next needs its timer checked, from its phase and last activity (`None`: never,
/// until its phase changes).
pub(super) fn next_deadline(conn: &Conn) -> Option<Instant> {
    let config = conn.limits.timeouts;
    let last = conn.last_activity.get();
    match conn.phase.get() {
        Phase::Open => {
            let idle = config.idle.map(|t| last + t);
            let ping = config
                .ping
                .map(|every| last.max(pinged_at(conn).unwrap_or(last)) + every);
            match (idle, ping) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Phase::Handshake => Some(last + config.handshake),
        Phase::Closing => Some(last + config.close),
        Phase::Done => None,
    }
}

/// When the last keep-alive ping was sent to `conn`, if one was.
fn pinged_at(conn: &Conn) -> Option<Instant> {
    let at = conn.pinged_at.get()?;
    Some(TIMERS.with(|t| t.instant(at)))
}

/// Does what is due for `conn` at `now` (the idle timeout's close, a keep-alive ping, the
/// shutdown at a handshake or close timeout) and returns its next deadline.
fn expire(conn: &Conn, now: Instant) -> Option<Instant> {
    let config = conn.limits.timeouts;
    loop {
        let last = conn.last_activity.get();
        match conn.phase.get() {
            Phase::Open => {
                if config.idle.is_some_and(|idle| now >= last + idle) {
                    tracing::debug!("idle timeout; closing with 1001");
                    // The close moves the connection to `Closing`.
                    let _ = conn.queue_close(Some(CloseCode::GOING_AWAY), "idle timeout");
                    continue;
                }
                if let Some(every) = config.ping {
                    if now >= last.max(pinged_at(conn).unwrap_or(last)) + every {
                        let _ = conn.queue_control(OpCode::Ping, b"");
                        conn.pinged_at.set(Some(TIMERS.with(|t| t.ticks(now))));
                    }
                }
            }
            Phase::Handshake | Phase::Closing => {
                if now >= next_deadline(conn)? {
                    tracing::debug!(phase = ?conn.phase.get(), "timeout; shutting the socket down");
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    return None;
                }
            }
            Phase::Done => return None,
        }
        return next_deadline(conn);
    }
}

/// A connection due at `at` (in ticks; see [`Timers::ticks`]). 16 bytes: the heap holds one
/// or two per connection.
struct Entry {
    at: NonZeroU64,
    conn: Weak<Conn>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The timers of this thread's connections.
struct Timers {
    /// Earliest first. A connection has at most one current entry: the one whose time is its
    /// `timer_at`; others are stale and skipped.
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    /// Where the ticks count from.
    base: Instant,
    /// The timer task runs (it ends with the runtime that ran it).
    running: Cell<bool>,
    /// The deadline the task sleeps until.
    sleeping_until: Cell<Option<Instant>>,
    wake: Notify,
}

impl Timers {
    fn new() -> Self {
        Timers {
            heap: RefCell::default(),
            base: Instant::now(),
            running: Cell::new(false),
            sleeping_until: Cell::new(None),
            wake: Notify::new(),
        }
    }

    /// `at` in ticks: nanoseconds since `base`, plus one (a time before `base` is tick 1, due
    /// at once, and finds its real deadline then).
    fn ticks(&self, at: Instant) -> NonZeroU64 {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        NonZeroU64::new(u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1).unwrap_or(NonZeroU64::MIN)
    }

    /// The time of tick `at`.
    fn instant(&self, at: NonZeroU64) -> Instant {
        self.base + Duration::from_nanos(at.get() - 1)
    }
}

thread_local! {
    static TIMERS: Rc<Timers> = Rc::new(Timers::new());
}

/// Puts `conn` (whose timer is due at `at`) on this thread's timers, unless an entry at or
/// before `at` is there already. Must run inside the runtime.
pub(super) fn schedule(conn: &Conn, at: Instant) {
    TIMERS.with(|timers| {
        let tick = timers.ticks(at);
        if conn.timer_at.get().is_some_and(|t| t <= tick) {
            return; // that entry comes first and finds the real deadline
        }
        conn.timer_at.set(Some(tick));
        timers.heap.borrow_mut().push(Reverse(Entry {
            at: tick,
            conn: conn.me.clone(),
        }));
        if !timers.running.get() {
            timers.running.set(true);
            tokio::task::spawn_local(run(timers.clone()));
        } else if timers.sleeping_until.get().is_none_or(|s| at < s) {
            timers.wake.notify_one();
        }
    });
}

/// The timer task: sleeps until the earliest entry (or until an earlier one is added), then
/// checks every connection that is due.
async fn run(timers: Rc<Timers>) {
    /// Marks the task gone when the runtime drops it, so that the next `schedule` (in a new
    /// runtime on this thread) starts another.
    struct Running(Rc<Timers>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.running.set(false);
            self.0.sleeping_until.set(None);
        }
    }
    let _running = Running(timers.clone());
    loop {
        let now = Instant::now();
        let now_tick = timers.ticks(now);
        loop {
            let due = {
                let mut heap = timers.heap.borrow_mut();
                match heap.peek() {
                    Some(Reverse(e)) if e.at <= now_tick => heap.pop(),
                    _ => None,
                }
            };
            let Some(Reverse(entry)) = due else { break };
            let Some(conn) = entry.conn.upgrade() else {
                continue; // the connection is gone
            };
            if conn.timer_at.get() != Some(entry.at) {
                continue; // stale: an earlier entry replaced it
            }
            conn.timer_at.set(None);
            if let Some(next) = expire(&conn, now) {
                schedule(&conn, next);
            }
        }
        let next = timers
            .heap
            .borrow()
            .peek()
            .map(|Reverse(e)| timers.instant(e.at));
        timers.sleeping_until.set(next);
        match next {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = timers.wake.notified() => {}
            },
            None => timers.wake.notified().await,
        }
    }
}
