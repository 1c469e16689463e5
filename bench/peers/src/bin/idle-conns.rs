//! idle-conns: opens N WebSocket connections to a server, completes each opening handshake
//! (checking the `101` and its `Sec-WebSocket-Accept`), then holds them idle. For the memory
//! check in scripts/compare.sh.
//!
//! Usage: `idle-conns --addr IP:PORT --count N [--hold SECS] [--extensions VALUE]
//! [--message BYTES]`. Prints `ready N` on stdout once every connection is open (`failed K`
//! lines on stderr for those that were not), then holds them until stdin reaches EOF or SECS
//! pass (default 60), and exits, closing them all. Plain blocking sockets, one handshake at a
//! time. `--extensions` sends that `Sec-WebSocket-Extensions` offer (the 101 must accept an
//! extension then). `--message N` (with an extension) sends one N-byte text message per
//! connection as a compressed frame (RSV1; the payload is a stored deflate block, which any
//! permessage-deflate receiver inflates) and waits for one frame back, so that both sides'
//! compression state exists when memory is measured. Without it no frame is ever sent.
//!
//! `--ca CA.pem` makes them wss:// connections: a full TLS handshake each (rustls, ring
//! provider, the server's IP address as its name, trusting CA.pem only, ALPN `http/1.1`, no
//! session resumption), then the same WebSocket handshake inside it. Once the 101 has been read
//! the client drops its TLS state and keeps only the socket (the server's side stays as it is),
//! so that 10,000 connections cost this process little. The first connection's negotiated
//! protocol version, cipher suite, key exchange group and ALPN protocol go to stderr.
//!
//! Raises its soft limit of open files to the hard limit (one descriptor per connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() {
    let mut addr: Option<SocketAddr> = None;
    let mut count = 10_000usize;
    let mut hold = 60.0f64;
    let mut opts = Opts::default();
    let mut ca: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next();
        match (a.as_str(), v) {
            ("--addr", Some(v)) => addr = v.parse().ok(),
            ("--count", Some(v)) => count = v.parse().expect("bad --count"),
            ("--hold", Some(v)) => hold = v.parse().expect("bad --hold"),
            ("--extensions", Some(v)) => opts.extensions = Some(v),
            ("--message", Some(v)) => opts.message = v.parse().expect("bad --message"),
            ("--ca", Some(v)) => ca = Some(v.into()),
            _ => {
                eprintln!(
                    "usage: idle-conns --addr IP:PORT --count N [--hold SECS] \
                     [--extensions VALUE] [--message BYTES] [--ca CA.pem]"
                );
                std::process::exit(2);
            }
        }
    }
    let addr = addr.expect("--addr IP:PORT is required");
    raise_fd_limit(count);
    opts.tls = ca.map(|ca| tls_client_config(&ca));
    let started = Instant::now();
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0usize;
    for i in 0..count {
        match open(addr, i as u64, &opts) {
            Ok(s) => conns.push(s),
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("idle-conns: connection {i}: {e}");
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("failed {failed}");
    }
    println!("ready {}", conns.len());
    eprintln!(
        "idle-conns: {} open in {:.1} s",
        conns.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    // Hold until stdin closes or the hold time passes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs_f64(hold));
    drop(conns);
}

/// What each connection offers and sends.
#[derive(Default)]
struct Opts {
    /// A `Sec-WebSocket-Extensions` offer.
    extensions: Option<String>,
    /// Bytes of the one compressed text message to send (0: none).
    message: usize,
    /// wss://: the TLS client config (`--ca`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Raises the soft RLIMIT_NOFILE to the hard one; warns when `count` connections will not fit.
fn raise_fd_limit(count: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    if (lim.rlim_cur as u128) < count as u128 + 16 {
        eprintln!(
            "idle-conns: warning: {count} connections need about {} descriptors; the limit is {}",
            count + 16,
            lim.rlim_cur
        );
    }
}

/// The TLS client config: ring provider, CA.pem the only trust anchor(s), ALPN http/1.1, no
/// resumption (every connection makes a full handshake).
fn tls_client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fail = |why: String| -> ! {
        eprintln!("idle-conns: {}: {why}", ca.display());
        std::process::exit(2)
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| fail(e.to_string()));
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        fail("no usable CA certificate".into());
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| fail(e.to_string()))
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn open(addr: SocketAddr, n: u64, opts: &Opts) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    match &opts.tls {
        None => handshake(&mut s, addr, n, opts)?,
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let mut conn = rustls::ClientConnection::new(config.clone(), name)
                .map_err(std::io::Error::other)?;
            handshake(&mut rustls::Stream::new(&mut conn, &mut s), addr, n, opts)?;
            if n == 0 {
                eprintln!(
                    "idle-conns: first TLS connection: {}",
                    uringws_bench_peers::tls_summary(&conn)
                );
            }
            // `conn` (the client's TLS state) is dropped here; the socket stays open.
        }
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// The WebSocket opening handshake (and `--message`) over `s`.
fn handshake<S: Read + Write>(
    s: &mut S,
    addr: SocketAddr,
    n: u64,
    opts: &Opts,
) -> std::io::Result<()> {
    // A distinct 16-byte key per connection, base64-encoded.
    let raw: [u8; 16] =
        std::array::from_fn(|i| (n.rotate_left(i as u32 * 5) as u8) ^ (i as u8 * 37));
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let ext = opts.extensions.as_ref().map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = s.read(&mut buf)?;
        if k == 0 || head.len() > 8192 {
            return Err(std::io::Error::other("no complete 101 response"));
        }
        head.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "not a 101: {}",
            text.lines().next().unwrap_or("")
        )));
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let ok = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
        })
    });
    if !ok {
        return Err(std::io::Error::other(
            "wrong or missing Sec-WebSocket-Accept",
        ));
    }
    if opts.extensions.is_some() {
        let agreed = text.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
        });
        if !agreed {
            return Err(std::io::Error::other("the server declined the extension"));
        }
        if opts.message > 0 {
            s.write_all(&stored_frame(opts.message))?;
            // One frame back (its header); the rest of it is left unread.
            let mut two = [0u8; 2];
            s.read_exact(&mut two)?;
        }
    }
    Ok(())
}

/// A masked text frame with RSV1 whose payload is `len` letters in one stored (uncompressed)
/// deflate block, ending as a sync flush does without its `00 00 ff ff` tail.
fn stored_frame(len: usize) -> Vec<u8> {
    assert!((1..=65000).contains(&len));
    let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut payload = vec![0x00];
    payload.extend_from_slice(&(len as u16).to_le_bytes());
    payload.extend_from_slice(&(!(len as u16)).to_le_bytes());
    payload.extend_from_slice(&text);
    // The header bits of the empty block whose LEN and NLEN the receiver's tail supplies
    // (RFC 7692 section 7.2.3.3).
    payload.push(0x00);
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | 0x40 | 0x1];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}
