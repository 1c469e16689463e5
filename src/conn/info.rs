//! Facts about a connection fixed at the handshake: peer, path, query, origin, subprotocol,
//! extensions, headers, TLS server name.

use std::net::SocketAddr;

/// Facts about a connection, fixed at the handshake.
///
/// Every connection holds one for its whole life, so its strings share one allocation (and
/// the headers another): read them with the accessors.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    peer_addr: Option<SocketAddr>,
    /// The path, query, origin, subprotocol, extensions and server name, one after the other.
    text: Box<str>,
    /// Where each of them ends in `text` (each starts where the one before ends).
    ends: [u32; FIELDS],
    /// Bit `i` set: field `i` is present (the path always is).
    present: u8,
    headers: Headers,
}

/// The string fields of a [`ConnectionInfo`], in the order they are stored.
const FIELDS: usize = 6;
const PATH: usize = 0;
const QUERY: usize = 1;
const ORIGIN: usize = 2;
const PROTOCOL: usize = 3;
const EXTENSIONS: usize = 4;
const SNI: usize = 5;

/// What a [`ConnectionInfo`] is made from (the handshake's view of it).
#[derive(Default)]
pub(crate) struct InfoParts<'a> {
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) origin: Option<&'a str>,
    pub(crate) protocol: Option<&'a str>,
    pub(crate) extensions: Option<&'a str>,
    pub(crate) sni: Option<&'a str>,
    pub(crate) headers: Headers,
}

impl ConnectionInfo {
    pub(crate) fn new(parts: InfoParts<'_>) -> ConnectionInfo {
        let fields = [
            Some(parts.path),
            parts.query,
            parts.origin,
            parts.protocol,
            parts.extensions,
            parts.sni,
        ];
        let mut text = String::with_capacity(fields.iter().flatten().map(|f| f.len()).sum());
        let mut ends = [0u32; FIELDS];
        let mut present = 0u8;
        for (i, field) in fields.iter().enumerate() {
            // (A handshake is far below 4 GiB; a field that is not is left out.)
            if let Some(f) = field.filter(|f| u32::try_from(text.len() + f.len()).is_ok()) {
                text.push_str(f);
                present |= 1 << i;
            }
            ends[i] = text.len() as u32;
        }
        ConnectionInfo {
            peer_addr: parts.peer_addr,
            text: text.into_boxed_str(),
            ends,
            present,
            headers: parts.headers,
        }
    }

    /// Field `i`, if present.
    fn field(&self, i: usize) -> Option<&str> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The request path, e.g. `/chat` (empty before the handshake completes).
    pub fn path(&self) -> &str {
        self.field(PATH).unwrap_or_default()
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.field(QUERY)
    }

    /// The `Origin` header, sent by browsers.
    pub fn origin(&self) -> Option<&str> {
        self.field(ORIGIN)
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.field(PROTOCOL)
    }

    /// The extensions agreed in the handshake, as the `Sec-WebSocket-Extensions` value of the
    /// 101 (`permessage-deflate; ...` when compression was agreed).
    pub fn extensions(&self) -> Option<&str> {
        self.field(EXTENSIONS)
    }

    /// On a TLS connection, the server name the client asked for (SNI), if it sent one.
    pub fn sni(&self) -> Option<&str> {
        self.field(SNI)
    }

    /// Every header of the request (the server's side) or of the 101 (the client's).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("peer_addr", &self.peer_addr)
            .field("path", &self.path())
            .field("query", &self.query())
            .field("origin", &self.origin())
            .field("protocol", &self.protocol())
            .field("extensions", &self.extensions())
            .field("sni", &self.sni())
            .field("headers", &self.headers)
            .finish()
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
    fn info_fields_come_back_as_given() {
        let info = ConnectionInfo::new(InfoParts {
            peer_addr: Some("127.0.0.1:9".parse().unwrap()),
            path: "/chat",
            query: Some(""),
            origin: None,
            protocol: Some("chat.v1"),
            extensions: Some("permessage-deflate"),
            sni: Some("example.com"),
            headers: Headers::new([("Host", &b"example.com"[..])]),
        });
        assert_eq!(info.peer_addr(), Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(info.path(), "/chat");
        assert_eq!(info.query(), Some(""), "present but empty");
        assert_eq!(info.origin(), None);
        assert_eq!(info.protocol(), Some("chat.v1"));
        assert_eq!(info.extensions(), Some("permessage-deflate"));
        assert_eq!(info.sni(), Some("example.com"));
        assert_eq!(info.header("host"), Some("example.com"));
        let empty = ConnectionInfo::default();
        assert_eq!((empty.path(), empty.query(), empty.sni()), ("", None, None));
        assert!(empty.headers().is_empty());
    }

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
