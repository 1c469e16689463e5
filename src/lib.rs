//! uringws: a WebSocket (RFC 6455) server and client library for Linux whose I/O runs on
//! io_uring natively.
//!
//! The layers, kept apart:
//!
//! - [`proto`] knows bytes: the handshake, frames, masking, UTF-8, message reassembly and close
//!   codes, as pure code over byte slices with no sockets, no async and no clock.
//! - The connection core ([`WebSocket`], [`Receiver`], [`Sender`]) is shared by both roles:
//!   frames are parsed where the kernel put them, unmasked in place, and handed to the
//!   application as borrowed slices; replies are queued and leave in one write per batch.
//! - [`server`] and [`client`] know their role: listening, accepting and the server handshake;
//!   connecting and the client handshake.
//! - One private module knows io_uring: each thread's ring inside a tokio current-thread
//!   runtime, multishot accept and receive into a provided-buffer ring, operations that own
//!   their buffers until they complete.
//!
//! A hello-world echo server:
//!
//! ```no_run
//! fn main() -> Result<(), uringws::Error> {
//!     uringws::Server::bind("127.0.0.1:9001")?.serve(|ws: uringws::WebSocket| async move {
//!         let (mut rx, tx) = ws.split();
//!         while let Some(msg) = rx.recv().await? {
//!             tx.send(msg).await?; // echo: one copy, into the send queue
//!         }
//!         Ok(())
//!     })
//! }
//! ```
#![deny(missing_docs)]

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub mod client;
mod conn;
mod error;
#[cfg(feature = "json")]
mod json;
pub mod proto;
pub mod pubsub;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;
mod uring;

pub use error::{Error, Result, MIN_KERNEL};
pub use proto::close::CloseCode;
pub use proto::message::{Message, OwnedMessage};
pub use server::{
    shutdown_signal, Compression, Config, ConnectionInfo, Headers, HttpResponse, Publisher,
    Receiver, Request, RunningServer, Sender, Sending, Server, ShutdownHandle, SlowSubscriber,
    UpgradeRequest, WebSocket,
};

/// The README's Rust examples, compiled as doctests so that they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
