//! What both roles share: one open WebSocket connection over io_uring. The receiving half
//! reads into the connection's buffer and hands out borrowed messages; the sending half queues
//! frames under a byte limit; the writes (one in flight at a time) are driven by the server's
//! connection task itself, after each poll of its handler (a writer task on the client); the
//! thread's timers enforce the timeouts. Nothing here knows who accepted or connected the socket.
//!
//! Replies are corked: `send` only appends an encoded frame to the queue; the write starts
//! when the handler's poll ends (typically waiting for the next read), so every reply produced
//! from one read goes out in one write. Control frames jump the queue.

pub(crate) mod buffers;
mod close;
mod info;
mod outbox;
mod receiver;
mod secure;
mod sender;
mod shared;
mod timers;
mod websocket;
mod writer;

pub(crate) use close::{finish, linger};
pub(crate) use info::InfoParts;
pub use info::{ConnectionInfo, Headers};
pub use receiver::Receiver;
pub(crate) use receiver::{RxState, DIRECT_READ_MIN};
#[cfg(feature = "tls")]
pub(crate) use secure::Secure;
pub use sender::{Sender, Sending};
pub(crate) use shared::{Conn, Limits, Offered};
pub(crate) use timers::{Phase, Timeouts};
pub use websocket::WebSocket;
pub(crate) use writer::{run, writer};
