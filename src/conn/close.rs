//! The end of a connection: the closing handshake, then the TCP close that avoids a reset.

use std::net::Shutdown;
use std::rc::Rc;

use crate::conn::{shared::Conn, timers::Phase};
use crate::proto::close::CloseCode;

/// Ends an open connection: queues a close with `code` unless one was sent, waits (bounded by
/// the close timeout) for the peer's close when this side closed first, lets the writer
/// finish, then half-closes and waits for the peer's end so that the close is not a reset.
pub(crate) async fn finish(conn: &Rc<Conn>, code: CloseCode) {
    // The application dropped its receiver, which handed the read state back.
    let returned = conn.returned_rx.borrow_mut().take();
    if !conn.close_queued() && !conn.write_failed() {
        let _ = conn.queue_close(Some(code), "");
    }
    if let Some(mut state) = returned {
        if !conn.close_received.get() && !conn.write_failed() {
            // We closed first: wait (bounded by the close timeout) for the peer's answer.
            state.drain(conn).await;
        }
    }
    conn.writer_finished().await;
    // The server closes the TCP connection first (section 7.1.1): FIN, then wait for the
    // peer's EOF (bounded by the close timeout).
    if !conn.write_failed() {
        linger(conn).await;
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    conn.set_phase(Phase::Done);
}

/// Half-closes and reads until the peer's EOF, discarding what arrives.
pub(crate) async fn linger(conn: &Conn) {
    conn.close_notify().await;
    let _ = conn.stream.shutdown(Shutdown::Write);
    if conn.phase.get() != Phase::Closing {
        conn.set_phase(Phase::Closing);
    }
    let mut scratch = Vec::with_capacity(512);
    let mut total = 0usize;
    while total < (16 << 20) {
        scratch.clear();
        let (res, buf) = conn.stream.read(scratch).await;
        scratch = buf;
        match res {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
