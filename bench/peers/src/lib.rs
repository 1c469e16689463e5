//! What the peer echo servers share: the command line (`--addr ADDR [--threads N]`), the
//! listening socket (SO_REUSEADDR, backlog 1024: what tokio-uring's `TcpListener::bind`, and so
//! uringws, uses) and, for the TLS mode of fastwebsockets-echo, the rustls server config (the
//! one `uringws echo --tls-cert --tls-key` builds).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// fastwebsockets-echo only: `--tls-cert CHAIN.pem --tls-key KEY.pem`, serve wss://.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Parses `--addr ADDR [--threads N] [--verbatim]` (and `[--tls-cert PEM --tls-key PEM]` when
/// `allow_tls`); prints usage and exits on anything else.
pub fn parse_args(name: &str, allow_verbatim: bool, allow_tls: bool) -> Args {
    let usage = |why: &str| -> ! {
        let extra = if allow_verbatim { " [--verbatim]" } else { "" };
        let tls = if allow_tls {
            " [--tls-cert CHAIN.pem --tls-key KEY.pem]"
        } else {
            ""
        };
        eprintln!("{name}: {why}\nusage: {name} --addr ADDR [--threads N]{extra}{tls}");
        std::process::exit(2)
    };
    let mut args = Args {
        addr: "127.0.0.1:9001".parse().unwrap(),
        threads: 1,
        verbatim: false,
        tls: None,
    };
    let (mut cert, mut key) = (None, None);
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
                let v = it
                    .next()
                    .unwrap_or_else(|| usage("--threads needs a value"));
                args.threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => usage(&format!("bad --threads {v}")),
                };
            }
            "--verbatim" if allow_verbatim => args.verbatim = true,
            "--tls-cert" if allow_tls => {
                cert = Some(
                    it.next()
                        .unwrap_or_else(|| usage("--tls-cert needs a value")),
                );
            }
            "--tls-key" if allow_tls => {
                key = Some(
                    it.next()
                        .unwrap_or_else(|| usage("--tls-key needs a value")),
                );
            }
            "-h" | "--help" => usage("echoes every text and binary message"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) => args.tls = Some((c.into(), k.into())),
        (None, None) => {}
        _ => usage("--tls-cert and --tls-key go together"),
    }
    args
}

/// The TLS server config of `uringws echo --tls-cert CHAIN --tls-key KEY` (its
/// `TlsConfig::from_pem_files`): rustls with the ring provider only, its safe default protocol
/// versions (TLS 1.2 and 1.3), cipher suites and key exchange groups, no client
/// authentication, one certificate chain, ALPN `http/1.1`; everything else rustls' defaults.
pub fn tls_server_config(chain: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(chain)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", chain.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", chain.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a TLS connection negotiated: "TLSv1_3 TLS13_AES_256_GCM_SHA384, key exchange X25519,
/// ALPN http/1.1".
pub fn tls_summary(conn: &rustls::CommonState) -> String {
    let none = || "none".to_owned();
    format!(
        "{} {}, key exchange {}, ALPN {}",
        conn.protocol_version()
            .map_or_else(none, |v| format!("{v:?}")),
        conn.negotiated_cipher_suite()
            .map_or_else(none, |s| format!("{:?}", s.suite())),
        conn.negotiated_key_exchange_group()
            .map_or_else(none, |g| format!("{:?}", g.name())),
        conn.alpn_protocol()
            .map_or_else(none, |a| String::from_utf8_lossy(a).into_owned()),
    )
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
    builder
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime")
}
