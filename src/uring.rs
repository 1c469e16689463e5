//! The io_uring runtime of each thread. Today it is tokio-uring's (whose operations the
//! connection core still calls directly); transport v2 moves every io_uring detail here, behind
//! a driver of its own on the `io-uring` crate.

/// A tokio-uring runtime for this thread, with IORING_SETUP_COOP_TASKRUN where the kernel has
/// it (5.19+): completions then run when the thread next enters the kernel instead of
/// interrupting it, which cut server CPU per message by a quarter in scripts/compare.sh's
/// cases. Older kernels refuse the flag (EINVAL) and get a plain ring.
pub fn runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut builder = tokio_uring::builder();
    builder.entries(1024);
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun();
    builder.uring_builder(&ring);
    match tokio_uring::Runtime::new(&builder) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            builder.uring_builder(&tokio_uring::uring_builder());
            tokio_uring::Runtime::new(&builder)
        }
        other => other,
    }
}
