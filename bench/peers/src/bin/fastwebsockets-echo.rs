//! Echo server on fastwebsockets (hyper 1 upgrade), written the way its README and
//! `examples/echo_server.rs` show: hyper's http1 connection with upgrades, the WebSocket driven
//! in a spawned, `unconstrained` task, vectored writes, auto-pong and auto-close on, and a
//! `FragmentCollector` so that fragmented messages are echoed whole.
//!
//! With `--tls-cert CHAIN.pem --tls-key KEY.pem` it serves wss:// instead: tokio-rustls over
//! the same rustls release as uringws, ring provider only, the server config that
//! `uringws echo --tls-cert --tls-key` builds (see `tls_server_config`); the HTTP and
//! WebSocket code is the same. The first connection's negotiated protocol version, cipher
//! suite, key exchange group and ALPN protocol are printed on stderr.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_writev(true);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // The close reply was sent by auto-close.
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    if !upgrade::is_upgrade_request(&req) {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(res);
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            // Peers that go away are normal; over TLS that is an EOF without close_notify.
            let gone = match &e {
                WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => true,
                WebSocketError::IoError(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
                _ => false,
            };
            if !gone {
                eprintln!("fastwebsockets-echo: {e}");
            }
        }
    });
    Ok(response)
}

/// Serves one connection (plain TCP or TLS): hyper's http1 with upgrades.
async fn serve<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = http1::Builder::new()
        .serve_connection(io, service_fn(server_upgrade))
        .with_upgrades();
    let _ = conn.await;
}

/// Whether the first TLS connection's parameters were printed.
static TLS_LOGGED: AtomicBool = AtomicBool::new(false);

fn main() {
    let args = uringws_bench_peers::parse_args("fastwebsockets-echo", false, true);
    let tls = args.tls.as_ref().map(|(chain, key)| {
        match uringws_bench_peers::tls_server_config(chain, key) {
            Ok(config) => TlsAcceptor::from(config),
            Err(e) => {
                eprintln!("fastwebsockets-echo: TLS: {e}");
                std::process::exit(2);
            }
        }
    });
    let std_listener = uringws_bench_peers::listen(args.addr).expect("cannot listen");
    std_listener.set_nonblocking(true).unwrap();
    let rt = uringws_bench_peers::tokio_runtime(args.threads);
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).expect("cannot register the listener");
        let scheme = if tls.is_some() { " (TLS)" } else { "" };
        eprintln!("fastwebsockets-echo listening on {}{scheme}", args.addr);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fastwebsockets-echo: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(acceptor) = &tls else {
                tokio::spawn(serve(stream));
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let stream = match acceptor.accept(stream).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("fastwebsockets-echo: TLS handshake: {e}");
                        return;
                    }
                };
                if !TLS_LOGGED.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "fastwebsockets-echo: first TLS connection: {}",
                        uringws_bench_peers::tls_summary(stream.get_ref().1)
                    );
                }
                serve(stream).await;
            });
        }
    });
}
