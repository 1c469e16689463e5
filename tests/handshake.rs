//! Every malformed handshake gets its HTTP status over a real socket, and plain HTTP gets a
//! proper answer.

mod common;

use common::*;
use uringws::HttpResponse;

fn status_of(addr: std::net::SocketAddr, request: &str) -> RawResponse {
    http_exchange(addr, request.as_bytes())
}

#[test]
fn malformed_handshakes_get_their_status() {
    let Some(server) = start(local(1)) else {
        return;
    };
    let addr = server.local_addr();
    let valid = upgrade_request("/", "");
    let cases: Vec<(String, u16)> = vec![
        (valid.replace("GET", "POST"), 405),
        (valid.replace("HTTP/1.1", "HTTP/1.0"), 400),
        (valid.replace("Host: localhost\r\n", ""), 400),
        (valid.replace("Upgrade: websocket\r\n", ""), 400),
        (
            valid.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"),
            400,
        ),
        (
            valid.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            426,
        ),
        (
            valid.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            400,
        ),
        (valid.replace(KEY, "c2hvcnQ="), 400),
        ("GARBAGE\r\n\r\n".into(), 400),
        // The start of a TLS ClientHello on the plain port: refused as it arrives, not at the
        // handshake timeout (10 s, which is also this client's read timeout).
        ("\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\u{0}".into(), 400),
        // Bare LF line ends: refused at their blank line, not at the timeout.
        (valid.replace("\r\n", "\n"), 400),
        // An upgrade with a body.
        (upgrade_request("/", "Content-Length: 5\r\n") + "hello", 400),
        (upgrade_request("/", "Transfer-Encoding: chunked\r\n"), 400),
        ("GET / HTTP/1.1\r\nBad Header\r\n\r\n".into(), 400),
        (
            upgrade_request("/", &format!("X-Big: {}\r\n", "a".repeat(9000))),
            431,
        ),
    ];
    for (request, want) in cases {
        let r = status_of(addr, &request);
        assert_eq!(r.status, want, "{request:.120}\n{}", r.head);
        assert!(r.head.contains("Connection: close"), "{}", r.head);
        if want == 426 {
            assert!(r.head.contains("Sec-WebSocket-Version: 13"), "{}", r.head);
        }
        if want == 405 {
            assert!(r.head.contains("Allow: GET"), "{}", r.head);
        }
    }
    // An endless head without a blank line is cut at the limit with 431.
    let r = http_exchange(addr, &vec![b'a'; 20_000]);
    assert_eq!(r.status, 431);
    // The server still serves a new client.
    assert_still_serves(addr);
    server.shutdown().unwrap();
}

#[test]
fn plain_http_gets_426_by_default_and_the_app_can_answer() {
    let Some(server) = start(local(1)) else {
        return;
    };
    let r = status_of(
        server.local_addr(),
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 426);
    assert!(r.head.contains("Upgrade: websocket"), "{}", r.head);
    server.shutdown().unwrap();

    let app = local(1).http(|req| match req.path {
        "/healthz" => HttpResponse::text(200, "ok\n"),
        _ => HttpResponse::text(404, "no\n"),
    });
    let Some(server) = start(app) else { return };
    let r = status_of(server.local_addr(), "GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    // Keep-alive: two requests on one connection, the second closing it.
    let r = http_exchange(
        server.local_addr(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let rest = String::from_utf8_lossy(&r.body);
    assert!(rest.starts_with("ok\nHTTP/1.1 404 Not Found\r\n"), "{rest}");
    server.shutdown().unwrap();
}

#[test]
fn check_refuses_and_subprotocol_is_chosen() {
    let app = local(1)
        .subprotocols(["v2.chat", "chat"])
        .check(|req| match req.origin() {
            Some("http://evil.example") => Err(HttpResponse::text(403, "origin refused\n")),
            _ => Ok(()),
        });
    let Some(server) = start(app) else { return };
    let addr = server.local_addr();
    let r = status_of(
        addr,
        &upgrade_request("/", "Origin: http://evil.example\r\n"),
    );
    assert_eq!(r.status, 403);
    let mut c = Client::connect_with(
        addr,
        &upgrade_request("/", "Sec-WebSocket-Protocol: chat, v2.chat\r\n"),
    );
    c.send(true, uringws::proto::frame::OpCode::Text, b"hi");
    assert_eq!(c.read_frame().unwrap().payload, b"hi");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(upgrade_request("/", "Sec-WebSocket-Protocol: chat, v2.chat\r\n").as_bytes())
        .unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.contains("Sec-WebSocket-Protocol: chat\r\n"), "{head}");
    drop((c, s));
    server.shutdown().unwrap();
}
