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
    /// Every header of the request (the server's side) or of the 101 (the client's).
    pub headers: Headers,
    /// On a TLS connection, the server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
}

impl ConnectionInfo {
    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// Header lines, names as sent and raw values, in order, kept in one allocation (a browser's
/// dozen headers would otherwise be two dozen small ones, held for the connection's life).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Each header as the length of its name and of its value (u32, big-endian), then both.
    packed: Vec<u8>,
}

impl Headers {
    /// Packs `headers` (name, value) in order.
    pub fn new<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone) -> Headers {
        let size = headers
            .clone()
            .into_iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum();
        let mut packed = Vec::with_capacity(size);
        for (name, value) in headers {
            // (A handshake is far below 4 GiB; a part that is not cannot be packed.)
            let (Ok(n), Ok(v)) = (u32::try_from(name.len()), u32::try_from(value.len())) else {
                continue;
            };
            packed.extend_from_slice(&n.to_be_bytes());
            packed.extend_from_slice(&v.to_be_bytes());
            packed.extend_from_slice(name.as_bytes());
            packed.extend_from_slice(value);
        }
        Headers { packed }
    }

    /// No headers.
    pub const fn empty() -> Headers {
        Headers { packed: Vec::new() }
    }

    /// Every header, name and raw value, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut rest = &self.packed[..];
        std::iter::from_fn(move || {
            let (lens, tail) = rest.split_first_chunk::<8>()?;
            let [a, b, c, d, e, f, g, h] = *lens;
            let name_len = u32::from_be_bytes([a, b, c, d]) as usize;
            let value_len = u32::from_be_bytes([e, f, g, h]) as usize;
            let (name, tail) = tail.split_at_checked(name_len)?;
            let (value, tail) = tail.split_at_checked(value_len)?;
            rest = tail;
            Some((std::str::from_utf8(name).unwrap_or_default(), value))
        })
    }

    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_names_and_raw_values() {
        let h = Headers::new([
            ("Host", &b"example.com"[..]),
            ("X-Empty", b""),
            ("x-bin", b"\xff\x00:"),
            ("host", b"second"),
        ]);
        let all: Vec<_> = h.iter().collect();
        assert_eq!(
            all,
            [
                ("Host", &b"example.com"[..]),
                ("X-Empty", b""),
                ("x-bin", b"\xff\x00:"),
                ("host", b"second"),
            ]
        );
        assert_eq!(h.get("HOST"), Some("example.com"));
        assert_eq!(h.get("x-empty"), Some(""));
        assert_eq!(h.get("X-Bin"), None, "not UTF-8");
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.len(), 4);
        assert!(Headers::default().is_empty());
        assert_eq!(Headers::default().iter().count(), 0);
    }
}
