//! One server connection from accept to close: the handshake read through the connection's
//! multishot receive, plain HTTP answers, the handler's run and the closing handshake. Its
//! timeouts are on the thread's timers from the accept on.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use std::rc::Rc;

use crate::conn::buffers::ReadBuf;
use crate::conn::{
    linger, run, Conn, ConnectionInfo, Headers, InfoParts, Phase, RxState, WebSocket,
};
use crate::proto::deflate::{self, Agreed, Compressor};
use crate::proto::frame::Role;
use crate::proto::handshake::{self, Handshake, HeadScanner, UpgradeRequest};
use crate::proto::message::{Reader, ReaderConfig};
use crate::server::{HttpResponse, ThreadCtx};
use crate::uring::{RecvMulti, TcpStream};

/// Serves one accepted connection to the end.
pub(crate) async fn serve(ctx: Rc<ThreadCtx>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let id = ctx.next_id();
    tracing::debug!(%peer, id, "accepted");
    let conn = Conn::new(stream, ctx.limits.clone(), None, ctx.buffers.clone());
    #[cfg(feature = "tls")]
    if let Some(tls) = &ctx.tls {
        match crate::tls::Session::server(tls) {
            Ok(session) => conn.start_tls(session),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session");
                return;
            }
        }
    }
    ctx.register(id, conn.clone());
    conn.watch();
    // Boxed: every open connection's task holds this future for its whole life, and the
    // handshake's state (1.5 KiB of it, unboxed) is needed only at first.
    let opened = Box::pin(handshake(&ctx, &conn, peer)).await;
    // The handler's future (boxed) takes the WebSocket here, so that this task's future does
    // not keep room for the receive state, or the handshake's result, beside it.
    if let Some(handler) = opened.map(|o| open(&ctx, &conn, o)) {
        run(conn.clone(), handler).await;
        ctx.topics.remove_conn(&conn);
    }
    ctx.unregister(id);
}

/// What the handshake leaves: the bytes received (`head[start..]` followed the upgrade
/// request), the receive, still armed, and the compression agreed.
type Opened = (Vec<u8>, usize, Option<RecvMulti>, Option<Agreed>);

/// The handler's future on the WebSocket that the handshake opened.
fn open(
    ctx: &ThreadCtx,
    conn: &Rc<Conn>,
    (head, start, recv, agreed): Opened,
) -> Pin<Box<dyn Future<Output = crate::Result<()>>>> {
    let config = &ctx.config;
    let reader = Reader::new(ReaderConfig {
        max_frame: config.max_frame_size,
        max_message: config.max_message_size,
        inline_limit: config.read_buffer_size.min(crate::conn::DIRECT_READ_MIN),
        inflate: agreed.map(|a| a.receive),
        ..ReaderConfig::new(Role::Server)
    });
    if let Some(a) = agreed {
        conn.set_compressor(Compressor::new(a.send, &config.compression));
    }
    let end = head.len();
    let buf = ReadBuf::Heap(head);
    let state = RxState::new(buf, start, end, reader, ctx.buffers.clone(), recv);
    (ctx.handler)(WebSocket::new(conn.clone(), state))
}

/// Reads requests until a WebSocket upgrade is accepted; answers plain HTTP requests and
/// refusals. Returns what the WebSocket starts with ([`Opened`]); `None` when the connection
/// closed.
///
/// Until bytes arrive the connection holds no buffer: the kernel picks one from the ring.
async fn handshake(ctx: &ThreadCtx, conn: &Conn, peer: SocketAddr) -> Option<Opened> {
    let config = &ctx.config;
    let mut recv = None;
    let mut head = Vec::new();
    loop {
        let mut scanner = HeadScanner::new(config.max_handshake_size);
        let head_len = loop {
            match scanner
                .scan(&head)
                .and_then(|end| handshake::check_request_start(&head).map(|()| end))
            {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => {
                    drop(recv);
                    refuse(conn, &e, peer).await;
                    return None;
                }
            }
            match conn.recv_plain(&mut recv, &mut head, false).await {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    drop(recv);
                    finish_plain(conn).await;
                    return None;
                }
            }
        };
        let mut out = Vec::new();
        let keep_alive;
        match handshake::parse(&head[..head_len]) {
            Err(e) => {
                drop(recv);
                refuse(conn, &e, peer).await;
                return None;
            }
            Ok(Handshake::Plain(request)) => {
                let response = match &ctx.http {
                    Some(f) => f(&request),
                    None => HttpResponse::upgrade_required(),
                };
                let has_body = !matches!(request.body_len(), Ok(0));
                keep_alive = request.keep_alive() && !has_body;
                tracing::debug!(%peer, path = request.path, status = response.status, "plain HTTP request");
                response.write(request.method == "HEAD", keep_alive, &mut out);
            }
            Ok(Handshake::WebSocket(upgrade)) => match accept(ctx, &upgrade, &mut out) {
                Ok((protocol, agreed)) => {
                    let sni = conn.sni();
                    let info = connection_info(
                        &upgrade,
                        peer,
                        protocol.as_deref(),
                        agreed.as_ref().map(|(_, header)| header.as_str()),
                        sni.as_deref(),
                    );
                    // Open from here on: a shutdown that comes while the 101 is being written
                    // queues a close frame, which the writer sends after it, instead of
                    // cutting off a connection whose client may already have read the 101.
                    conn.set_phase(Phase::Open);
                    if conn.send_all(out).await.is_err() {
                        drop(recv);
                        finish_plain(conn).await;
                        return None;
                    }
                    tracing::debug!(%peer, path = info.path(), "upgraded");
                    let _ = conn.info.set(info);
                    return Some((head, head_len, recv, agreed.map(|(a, _)| a)));
                }
                Err(response) => {
                    tracing::debug!(%peer, status = response.status, "upgrade refused by the application");
                    response.write(false, false, &mut out);
                    keep_alive = false;
                }
            },
        }
        if conn.send_all(out).await.is_err() || !keep_alive {
            drop(recv);
            finish_plain(conn).await;
            return None;
        }
        // Keep-alive: the next request starts after this one's head.
        head.drain(..head_len);
        conn.set_phase(Phase::Handshake);
    }
}

/// The subprotocol chosen, and the compression agreed with its response header.
type Accepted = (Option<String>, Option<(Agreed, String)>);

/// Decides the upgrade: the application's check, the subprotocol, then permessage-deflate.
/// Writes the 101 into `out` and returns the chosen subprotocol and the compression agreed
/// with its response header,
/// or the refusal to send (400 for a malformed extension offer).
fn accept(
    ctx: &ThreadCtx,
    upgrade: &UpgradeRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<Accepted, HttpResponse> {
    if let Some(check) = &ctx.check {
        check(upgrade)?;
    }
    let protocol = upgrade
        .protocols()
        .find(|p| ctx.config.subprotocols.iter().any(|s| s == p));
    let extra: Vec<(&str, &str)> = ctx
        .config
        .response_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let deflate = deflate::negotiate(upgrade.extensions(), &ctx.config.compression)
        .map_err(|e| HttpResponse::text(400, &format!("{e}\n")))?;
    let extensions = deflate.as_ref().map(|(_, header)| header.as_str());
    handshake::write_accept(upgrade, protocol, extensions, &extra, out)
        .map_err(|e| HttpResponse::text(500, &format!("{e}\n")))?;
    Ok((protocol.map(str::to_owned), deflate))
}

fn connection_info(
    upgrade: &UpgradeRequest<'_>,
    peer: SocketAddr,
    protocol: Option<&str>,
    extensions: Option<&str>,
    sni: Option<&str>,
) -> ConnectionInfo {
    let request = &upgrade.request;
    ConnectionInfo::new(InfoParts {
        peer_addr: Some(peer),
        path: request.path,
        query: request.query,
        origin: upgrade.origin(),
        protocol,
        extensions,
        sni,
        headers: Headers::new(request.headers().iter().map(|h| (h.name, h.value))),
    })
}

/// Answers a refused handshake with its HTTP error and closes.
async fn refuse(conn: &Conn, e: &handshake::HandshakeError, peer: SocketAddr) {
    tracing::debug!(%peer, status = e.status(), reason = %e, "handshake refused");
    let mut out = Vec::new();
    e.write_response(&mut out);
    let _ = conn.send_all(out).await;
    finish_plain(conn).await;
}

/// Closes a connection that never became a WebSocket: FIN, then wait briefly for the peer's
/// EOF so that unread request bytes do not turn the close into a reset that eats our answer.
async fn finish_plain(conn: &Conn) {
    linger(conn).await;
    conn.set_phase(Phase::Done);
}
