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
    /// A text message to send is not valid UTF-8 (possible only with an
    /// [`OwnedMessage::Text`](crate::OwnedMessage::Text) built from arbitrary bytes); nothing
    /// was sent.
    #[error("a text message must be valid UTF-8")]
    InvalidText,
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

    /// TLS: a certificate or key that cannot be used, an untrusted or expired server
    /// certificate, a failed TLS handshake. The text names the cause (and the file).
    #[error("TLS: {0}")]
    Tls(String),
    /// A configuration value is outside its allowed range (see `Config::validate`); nothing
    /// was started.
    #[error("invalid configuration: {field} is {value}, but {allowed}")]
    InvalidConfig {
        /// The field of `Config` (or of the client's `Connector`), e.g. `read_buffer_size`.
        field: &'static str,
        /// The value it had.
        value: String,
        /// What it must be, e.g. "it must be 256 to 1073741824 bytes".
        allowed: String,
    },
    /// A value could not be serialized as JSON ([`crate::Sender::send_json`]).
    #[cfg(feature = "json")]
    #[error("cannot serialize the message as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An address could not be parsed or resolved (a listen address, or a URL's host).
    #[error("cannot resolve the address {addr}: {source}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why it failed (`invalid socket address`, a DNS failure, ...).
        source: io::Error,
    },
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

/// The oldest kernel the io_uring transport works on: multishot receive (6.0) into a
/// registered provided-buffer ring (5.19), multishot accept and cancellation of any request
/// (5.19). SINGLE_ISSUER (6.0) and COOP_TASKRUN (5.19) are used where the kernel has them.
pub const MIN_KERNEL: (u32, u32) = (6, 0);

/// Parses the major and minor version from a kernel release string such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses to start on a kernel older than [`MIN_KERNEL`], saying so clearly. An unreadable
/// version is let through (io_uring setup then decides).
pub(crate) fn check_kernel() -> Result<()> {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return Ok(());
    };
    match kernel_version(&release) {
        Some(v) if v < MIN_KERNEL => Err(Error::IoUringUnavailable(format!(
            "uringws needs Linux {}.{} or newer for io_uring, but this kernel is {}. A container \
             image cannot change the kernel: run on a newer host.",
            MIN_KERNEL.0,
            MIN_KERNEL.1,
            release.trim()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64\n"), Some((6, 1)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("5.15"), Some((5, 15)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("5.19.0").unwrap() < MIN_KERNEL);
        assert!(kernel_version("6.0.0").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn unavailable_message_names_the_profile() {
        let e = io_uring_unavailable(&io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(e.contains("docker/seccomp-io_uring.json"), "{e}");
        assert!(e.contains("EPERM"), "{e}");
        let e = io_uring_unavailable(&io::Error::from_raw_os_error(libc::ENOSYS)).to_string();
        assert!(e.contains("ENOSYS"), "{e}");
    }
}
