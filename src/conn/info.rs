//! Facts about a connection fixed at the handshake: peer, path, query, origin, subprotocol,
//! extensions, headers, TLS server name.

use std::net::SocketAddr;

/// Facts about a connection, fixed at the handshake.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub peer_addr: Option<SocketAddr>,
    /// The request path, e.g. `/chat`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// The subprotocol agreed in the handshake.
    pub protocol: Option<String>,
    /// The extensions agreed in the handshake, as the `Sec-WebSocket-Extensions` value of the
    /// 101 (`permessage-deflate; ...` when compression was agreed).
    pub extensions: Option<String>,
    /// Every request header, name as sent and raw value.
    pub headers: Vec<(String, Vec<u8>)>,
    /// On a TLS connection, the server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
}

impl ConnectionInfo {
    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}
