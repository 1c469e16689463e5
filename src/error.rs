//! The crate's error type for connections and servers.

use std::io;

use crate::proto::close::InvalidClose;
use crate::proto::ProtocolError;

/// What went wrong on a connection or while starting a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (the peer reset the connection, for example).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer violated RFC 6455; the connection was closed with
    /// [`ProtocolError::close_code`].
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection is closed (or closing): nothing more can be sent.
    #[error("the WebSocket connection is closed")]
    Closed,
    /// The peer went away without a closing handshake.
    #[error("the peer closed the connection without a close frame")]
    ConnectionLost,
    /// A close code or reason the application asked to send is not allowed.
    #[error("invalid close frame: {0}")]
    InvalidClose(#[from] InvalidClose),
    /// A ping or pong payload over 125 bytes.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// The server refused the upgrade or answered it wrongly (client role).
    #[error("handshake failed: {0}")]
    Handshake(#[from] crate::proto::handshake::ClientHandshakeError),
    /// io_uring cannot be set up in this process (seccomp, sysctl or kernel).
    #[error("{0}")]
    IoUringUnavailable(String),
    /// The server configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message shown when io_uring cannot be set up, naming the likely cause and the fix.
pub(crate) fn io_uring_unavailable(e: &io::Error) -> Error {
    let cause = match e.raw_os_error() {
        Some(libc::EPERM) => {
            "io_uring_setup was refused (EPERM): a seccomp profile (Docker's default since \
             Engine 25) or the sysctl kernel.io_uring_disabled=2 blocks it"
        }
        Some(libc::ENOSYS) => {
            "io_uring_setup does not exist here (ENOSYS): the kernel is older than 5.1, was \
             built without io_uring, or a seccomp profile (podman's default) hides it"
        }
        Some(libc::ENOMEM) => {
            "io_uring_setup ran out of locked memory (ENOMEM): raise RLIMIT_MEMLOCK"
        }
        _ => "io_uring_setup failed",
    };
    Error::IoUringUnavailable(format!(
        "uringws needs io_uring, but it is unavailable: {cause} ({e}). In a container, run with \
         `--security-opt seccomp=docker/seccomp-io_uring.json` (the profile shipped with uringws, \
         which allows io_uring_setup, io_uring_enter and io_uring_register); on a host, check \
         `sysctl kernel.io_uring_disabled` (must be 0, or 1 with the right group)."
    ))
}
