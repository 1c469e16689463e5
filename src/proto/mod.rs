//! RFC 6455 as pure code over byte slices: no sockets, no async, no clock.
//!
//! - [`handshake`]: the HTTP Upgrade exchange, both roles.
//! - [`frame`]: frame headers, decoded in place and encoded.
//! - [`mask`]: word-at-a-time masking with the phase carried across reads.
//! - [`utf8`]: fail-fast UTF-8 validation across fragments.
//! - [`message`]: the receive state machine (reassembly, limits, control frames).
//! - [`close`]: close codes and close payloads.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation and the codecs.
//!
//! Every violation by the peer is a [`ProtocolError`] carrying the close code to answer with.

pub mod close;
pub mod deflate;
mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use error::ProtocolError;
