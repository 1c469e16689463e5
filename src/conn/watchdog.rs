//! A connection's phases and timeouts, and the watchdog task that enforces them by shutting
//! the socket down (never by dropping an in-flight read).

use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::conn::shared::Conn;
use crate::proto::close::CloseCode;
use crate::proto::frame::OpCode;

/// Where the connection is in its life, for the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the 101 (or while serving plain HTTP): the handshake deadline applies.
    Handshake,
    /// Messages flow: the idle timeout and keep-alive pings apply.
    Open,
    /// A close frame was sent: the close deadline applies.
    Closing,
    /// Finished; the watchdog exits.
    Done,
}

/// The timeouts a connection's watchdog enforces.
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

/// The connection's watchdog: the handshake timeout, keep-alive pings, the idle timeout and
/// the close timeout. Each is enforced by shutting the socket down, which makes the pending
/// read return 0; an in-flight read is never dropped.
pub(crate) async fn watchdog(conn: Rc<Conn>) {
    let config = conn.timeouts;
    let mut pinged_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let last = conn.last_activity.get();
        let deadline = match conn.phase.get() {
            Phase::Open => {
                if let Some(idle) = config.idle {
                    if now >= last + idle {
                        tracing::debug!("idle timeout; closing with 1001");
                        let _ = conn.queue_close(Some(CloseCode::GOING_AWAY), "idle timeout");
                        continue;
                    }
                }
                let mut next = config.idle.map(|t| last + t);
                if let Some(every) = config.ping {
                    let due = last.max(pinged_at.unwrap_or(last)) + every;
                    if now >= due {
                        let _ = conn.queue_control(OpCode::Ping, b"");
                        pinged_at = Some(now);
                        continue;
                    }
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
                next
            }
            Phase::Handshake | Phase::Closing => {
                let limit = if conn.phase.get() == Phase::Handshake {
                    config.handshake
                } else {
                    config.close
                };
                if now >= last + limit {
                    tracing::debug!(phase = ?conn.phase.get(), "timeout; shutting the socket down");
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    return;
                }
                Some(last + limit)
            }
            Phase::Done => return,
        };
        match deadline {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep_until(d.into()) => {}
                _ = conn.wake_watchdog.notified() => {}
            },
            None => conn.wake_watchdog.notified().await,
        }
    }
}
