//! Echo server on fastwebsockets (hyper 1 upgrade), written the way its README and
//! `examples/echo_server.rs` show: hyper's http1 connection with upgrades, the WebSocket driven
//! in a spawned, `unconstrained` task, vectored writes, auto-pong and auto-close on, and a
//! `FragmentCollector` so that fragmented messages are echoed whole.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

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
            if !matches!(e, WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) {
                eprintln!("fastwebsockets-echo: {e}");
            }
        }
    });
    Ok(response)
}

fn main() {
    let args = uringws_bench_peers::parse_args("fastwebsockets-echo", false);
    let std_listener = uringws_bench_peers::listen(args.addr).expect("cannot listen");
    std_listener.set_nonblocking(true).unwrap();
    let rt = uringws_bench_peers::tokio_runtime(args.threads);
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener).expect("cannot register the listener");
        eprintln!("fastwebsockets-echo listening on {}", args.addr);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fastwebsockets-echo: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}
