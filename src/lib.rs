//! uringws: a WebSocket (RFC 6455) server library for Linux whose I/O runs on io_uring.
#![deny(missing_docs)]

pub mod proto;
