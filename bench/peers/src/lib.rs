//! What the peer echo servers share: the command line (`--addr ADDR [--threads N]`) and the
//! listening socket (SO_REUSEADDR, backlog 1024: what tokio-uring's `TcpListener::bind`, and so
//! uringws, uses).

use std::net::SocketAddr;

/// The command line of every peer server.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Runtime threads (1: a single-threaded runtime).
    pub threads: usize,
    /// raw-echo only: echo the bytes verbatim after the handshake (masked frames: not a valid
    /// server stream; kept to show that `uringws load` rejects it).
    pub verbatim: bool,
}

/// Parses `--addr ADDR [--threads N] [--verbatim]`; prints usage and exits on anything else.
pub fn parse_args(name: &str, allow_verbatim: bool) -> Args {
    let usage = |why: &str| -> ! {
        let extra = if allow_verbatim { " [--verbatim]" } else { "" };
        eprintln!("{name}: {why}\nusage: {name} --addr ADDR [--threads N]{extra}");
        std::process::exit(2)
    };
    let mut args = Args {
        addr: "127.0.0.1:9001".parse().unwrap(),
        threads: 1,
        verbatim: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--addr" => {
                let v = it.next().unwrap_or_else(|| usage("--addr needs a value"));
                args.addr = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --addr {v}: want IP:PORT")));
            }
            "--threads" => {
                let v = it.next().unwrap_or_else(|| usage("--threads needs a value"));
                args.threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => usage(&format!("bad --threads {v}")),
                };
            }
            "--verbatim" if allow_verbatim => args.verbatim = true,
            "-h" | "--help" => usage("echoes every text and binary message"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

/// A bound, listening socket with SO_REUSEADDR and a backlog of 1024.
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Builds the tokio runtime: `current_thread` for one thread, else `multi_thread`.
pub fn tokio_runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().expect("cannot build the tokio runtime")
}
