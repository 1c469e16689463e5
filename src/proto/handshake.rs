//! The opening handshake (RFC 6455 section 4), both roles, as pure functions over bytes.
//!
//! Server side: [`HeadScanner`] finds the end of the request (`\r\n\r\n`, with memchr's
//! `memmem`) scanning only the bytes that are new, [`parse`] validates it and tells a WebSocket
//! upgrade from a plain HTTP request, [`write_accept`] writes the `101 Switching Protocols`
//! answer, and every [`HandshakeError`] writes its own ready HTTP error response.
//!
//! Client side: [`client_key`] and [`write_client_request`] build the request, and
//! [`check_response`] validates the server's `101`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID appended to the key before hashing (section 1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Default largest request head, request line and headers included: 8 KiB.
pub const DEFAULT_MAX_REQUEST: usize = 8 * 1024;

/// The most header lines a request or response may have.
pub const MAX_HEADERS: usize = 100;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
///
/// ```
/// use uringws::proto::handshake::accept_key;
/// assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A client's `Sec-WebSocket-Key` from 16 random bytes the caller supplies (this module does
/// no I/O, so it has no randomness of its own).
pub fn client_key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// Finds the end of an HTTP head as bytes arrive, enforcing a size limit.
///
/// Each call searches only the bytes added since the previous call, plus the 3 before them
/// (a `\r\n\r\n` can straddle two reads).
#[derive(Debug, Clone)]
pub struct HeadScanner {
    scanned: usize,
    limit: usize,
}

impl HeadScanner {
    /// A scanner that refuses heads longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        HeadScanner { scanned: 0, limit }
    }

    /// `buf` holds every byte received so far, from the first byte of the head. Returns the
    /// length of the head (through the blank line) once it is complete; bytes after it belong
    /// to what follows (frames, or a request body).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
        let from = self.scanned.saturating_sub(3).min(buf.len());
        let end = memchr::memmem::find(&buf[from..], b"\r\n\r\n").map(|i| from + i + 4);
        // A head whose lines end in a bare LF would never show the CRLF blank line: it is
        // refused as soon as its own blank line ("\n\n", which CRLF lines never contain)
        // arrives, rather than at the size limit or the timeout.
        let head = &buf[self.scanned.saturating_sub(1).min(buf.len())..end.unwrap_or(buf.len())];
        if memchr::memmem::find(head, b"\n\n").is_some() {
            return Err(HandshakeError::Malformed("line ends in a bare LF"));
        }
        if let Some(len) = end {
            if len > self.limit {
                return Err(HandshakeError::TooLarge);
            }
            return Ok(Some(len));
        }
        self.scanned = buf.len();
        if buf.len() >= self.limit {
            return Err(HandshakeError::TooLarge);
        }
        Ok(None)
    }
}

/// How many bytes of a request's start [`check_request_start`] looks at: more than any
/// registered method's length (the longest, `UPDATEREDIRECTREF`, has 17).
pub const METHOD_CHECKED: usize = 32;

/// Checks, before a request head is complete, that the bytes received so far can start an
/// HTTP request: what precedes the first space (the method, or all of it while no space has
/// come) must be token characters. A TLS ClientHello or other binary sent to a plain port
/// is refused as it arrives, rather than at the handshake timeout. Only the first
/// [`METHOD_CHECKED`] bytes are looked at, so that a caller may run it after every read at a
/// cost that does not grow with the head.
///
/// ```
/// use uringws::proto::handshake::check_request_start;
/// assert!(check_request_start(b"GET / HT").is_ok());
/// assert!(check_request_start(b"\x16\x03\x01\x02\x00").is_err());
/// ```
pub fn check_request_start(buf: &[u8]) -> Result<(), HandshakeError> {
    let start = &buf[..buf.len().min(METHOD_CHECKED)];
    let method = start
        .iter()
        .position(|&b| b == b' ')
        .map_or(start, |i| &start[..i]);
    if method.iter().all(|&b| is_tchar(b)) {
        Ok(())
    } else {
        Err(HandshakeError::Malformed("bad method"))
    }
}

/// One header line: its name as sent and its value with surrounding whitespace trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name, as sent (compare it case-insensitively).
    pub name: &'a str,
    /// The value, without leading or trailing spaces and tabs.
    pub value: &'a [u8],
}

/// A syntactically valid HTTP/1.x request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The request target as sent.
    pub target: &'a str,
    /// The path part of the target (`/` when the target has none).
    pub path: &'a str,
    /// The query, without the `?`.
    pub query: Option<&'a str>,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    headers: Vec<Header<'a>>,
}

impl<'a> Request<'a> {
    /// All header lines, in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        header(&self.headers, name)
    }

    /// The first value of the header `name` as text, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether the connection should stay open after the response (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            has_token(&self.headers, "connection", "keep-alive")
        } else {
            !has_token(&self.headers, "connection", "close")
        }
    }

    /// The length of the request body from `Content-Length` (0 without one), or an error
    /// for a body this module cannot frame (chunked, or an invalid length).
    pub fn body_len(&self) -> Result<u64, HandshakeError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HandshakeError::Malformed(
                "Transfer-Encoding is not supported",
            ));
        }
        let mut len = None;
        for h in self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        {
            let v = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(HandshakeError::Malformed("invalid Content-Length"))?;
            if len.is_some_and(|l| l != v) {
                return Err(HandshakeError::Malformed("conflicting Content-Length"));
            }
            len = Some(v);
        }
        Ok(len.unwrap_or(0))
    }
}

/// A validated WebSocket upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// The request it came in (path, query, all headers).
    pub request: Request<'a>,
    /// The `Sec-WebSocket-Key`, checked to be base64 of 16 bytes.
    pub key: &'a str,
}

impl<'a> UpgradeRequest<'a> {
    /// The `Host` header.
    pub fn host(&self) -> &'a [u8] {
        self.request.header("host").unwrap_or_default()
    }

    /// The `Origin` header, sent by browsers.
    pub fn origin(&self) -> Option<&'a str> {
        self.request.header_str("origin")
    }

    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order of
    /// preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        list_items(&self.request.headers, "sec-websocket-protocol")
    }

    /// The extension offers in `Sec-WebSocket-Extensions`, one item each with its
    /// parameters (e.g. `permessage-deflate; client_max_window_bits`).
    pub fn extensions(&self) -> impl Iterator<Item = &'a str> + '_ {
        list_items(&self.request.headers, "sec-websocket-extensions")
    }

    /// The `Sec-WebSocket-Accept` value for this request.
    pub fn accept_key(&self) -> String {
        accept_key(self.key.as_bytes())
    }
}

/// What a complete request head turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake<'a> {
    /// A valid WebSocket upgrade: answer with [`write_accept`].
    WebSocket(UpgradeRequest<'a>),
    /// A plain HTTP request (no `Upgrade: websocket`, no WebSocket headers): the server may
    /// answer it as HTTP (a health check, a page) or refuse it.
    Plain(Request<'a>),
}

/// Why an upgrade request was refused. Each variant maps to an HTTP status and a one-line
/// reason, and [`HandshakeError::write_response`] writes the whole response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The head is larger than the limit (431).
    #[error("request header fields too large")]
    TooLarge,
    /// More than [`MAX_HEADERS`] header lines (431).
    #[error("too many header fields")]
    TooManyHeaders,
    /// The request is not valid HTTP/1.x (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A WebSocket upgrade with a method other than GET (405).
    #[error("WebSocket upgrade requires GET")]
    MethodNotAllowed,
    /// A WebSocket upgrade over HTTP/1.0 (400).
    #[error("WebSocket upgrade requires HTTP/1.1 or later")]
    HttpVersion,
    /// No `Host` header, or more than one (400).
    #[error("missing or duplicate Host header")]
    Host,
    /// `Upgrade` does not contain the token `websocket` (400).
    #[error("Upgrade header must contain websocket")]
    Upgrade,
    /// `Connection` does not contain the token `Upgrade` (400).
    #[error("Connection header must contain Upgrade")]
    Connection,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    #[error("unsupported WebSocket version: this server speaks version 13")]
    Version,
    /// `Sec-WebSocket-Key` is missing, repeated, or not base64 of 16 bytes (400).
    #[error("Sec-WebSocket-Key must be base64 of 16 bytes")]
    Key,
    /// A `Sec-WebSocket-Protocol` item is not a valid token (400).
    #[error("invalid Sec-WebSocket-Protocol")]
    Protocol,
}

impl HandshakeError {
    /// The HTTP status code of the response.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::TooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::Version => 426,
            _ => 400,
        }
    }

    /// Appends the complete HTTP error response (status, headers, a one-line text body) to
    /// `out`. The connection is to be closed after it.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let extra: &[(&str, &str)] = match self {
            HandshakeError::Version => &[("Sec-WebSocket-Version", "13")],
            HandshakeError::MethodNotAllowed => &[("Allow", "GET")],
            _ => &[],
        };
        let body = format!("{self}\n");
        write_response(self.status(), extra, body.as_bytes(), false, out);
    }
}

/// A header the caller asked to send has a name that is not a token, or a value with a
/// control character (which could split the response).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid header {0:?}")]
pub struct InvalidHeader(pub String);

/// The standard reason phrase for the statuses this crate writes.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends an HTTP/1.1 response to `out`: status line, `Content-Type` (plain UTF-8 text unless
/// `extra` names one), `Content-Length`, `Connection: keep-alive` or `close`, the `extra`
/// headers, the body.
///
/// `extra` comes from this crate or is checked with [`check_headers`] by the caller, and names
/// neither `Content-Length` nor `Connection` (which this writes).
pub fn write_response(
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    if !extra
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    }
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Whether `s` is a non-empty HTTP token (RFC 9110 section 5.6.2), as header names and
/// subprotocol names must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Checks that each header name is a token and each value is free of control characters.
pub fn check_headers(headers: &[(&str, &str)]) -> Result<(), InvalidHeader> {
    for (name, value) in headers {
        let ok = is_token(name)
            && value
                .bytes()
                .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !ok {
            return Err(InvalidHeader(format!("{name}: {value}")));
        }
    }
    Ok(())
}

/// Appends the `101 Switching Protocols` response for `request` to `out`, with the chosen
/// subprotocol (which must be one the client offered), the accepted extensions header value,
/// and extra headers.
pub fn write_accept(
    request: &UpgradeRequest<'_>,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), InvalidHeader> {
    if let Some(p) = protocol {
        if !request.protocols().any(|o| o == p) {
            return Err(InvalidHeader(format!(
                "Sec-WebSocket-Protocol: {p} (not offered)"
            )));
        }
    }
    check_headers(extra)?;
    if let Some(e) = extensions {
        check_headers(&[("Sec-WebSocket-Extensions", e)])?;
    }
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(request.accept_key().as_bytes());
    out.extend_from_slice(b"\r\n");
    let chosen = [
        ("Sec-WebSocket-Protocol", protocol),
        ("Sec-WebSocket-Extensions", extensions),
    ];
    for (name, value) in chosen.iter().filter_map(|(n, v)| v.map(|v| (*n, v))) {
        push_header(out, name, value);
    }
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses and validates a complete request head (as delimited by [`HeadScanner`]).
///
/// A request that carries no sign of a WebSocket upgrade (no `Upgrade: websocket`, no
/// `Sec-WebSocket-Key`, no `Sec-WebSocket-Version`) is [`Handshake::Plain`]; anything else
/// must be a complete, valid upgrade or it is an error.
pub fn parse(head: &[u8]) -> Result<Handshake<'_>, HandshakeError> {
    let request = parse_request(head)?;
    let h = &request.headers;
    let attempt = has_token(h, "upgrade", "websocket")
        || header(h, "sec-websocket-key").is_some()
        || header(h, "sec-websocket-version").is_some();
    if !attempt {
        return Ok(Handshake::Plain(request));
    }
    if request.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if request.minor_version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if count(h, "host") != 1 || header(h, "host").is_some_and(<[u8]>::is_empty) {
        return Err(HandshakeError::Host);
    }
    if !has_token(h, "upgrade", "websocket") {
        return Err(HandshakeError::Upgrade);
    }
    if !has_token(h, "connection", "upgrade") {
        return Err(HandshakeError::Connection);
    }
    if count(h, "sec-websocket-version") != 1 || header(h, "sec-websocket-version") != Some(b"13") {
        return Err(HandshakeError::Version);
    }
    if count(h, "sec-websocket-key") != 1 {
        return Err(HandshakeError::Key);
    }
    let key = header(h, "sec-websocket-key").unwrap_or_default();
    let decoded_len = BASE64.decode(key).map(|k| k.len()).unwrap_or(0);
    let key = match std::str::from_utf8(key) {
        Ok(k) if key.len() == 24 && decoded_len == 16 => k,
        _ => return Err(HandshakeError::Key),
    };
    if list_items(h, "sec-websocket-protocol").any(|p| !p.bytes().all(is_tchar)) {
        return Err(HandshakeError::Protocol);
    }
    // Bytes after the head are frames: a body would be read as frames (or smuggle a
    // request past a proxy that frames it), so an upgrade that announces one is refused.
    if request.body_len()? != 0 {
        return Err(HandshakeError::Malformed("an upgrade request has no body"));
    }
    Ok(Handshake::WebSocket(UpgradeRequest { request, key }))
}

/// Parses a request head into its request line and headers, checking HTTP/1.x syntax only.
pub fn parse_request(head: &[u8]) -> Result<Request<'_>, HandshakeError> {
    let (line, rest) = split_line(head).ok_or(HandshakeError::Malformed("no request line"))?;
    let line = std::str::from_utf8(line)
        .map_err(|_| HandshakeError::Malformed("request line is not ASCII"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HandshakeError::Malformed("bad method"));
    }
    let minor_version = match version.as_bytes() {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => d - b'0',
        _ => return Err(HandshakeError::Malformed("unsupported HTTP version")),
    };
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HandshakeError::Malformed("bad request target"));
    }
    let origin_form = if target.starts_with('/') {
        target
    } else if let Some(after) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .or_else(|| target.strip_prefix("ws://"))
        .or_else(|| target.strip_prefix("wss://"))
    {
        // Absolute form: keep what follows the authority.
        after.find('/').map_or("/", |i| &after[i..])
    } else if target == "*" && method == "OPTIONS" {
        target
    } else {
        return Err(HandshakeError::Malformed("bad request target"));
    };
    let (path, query) = match origin_form.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin_form, None),
    };
    let headers = parse_headers(rest)?;
    Ok(Request {
        method,
        target,
        path,
        query,
        minor_version,
        headers,
    })
}

/// Parses header lines up to the blank line that ends the head.
fn parse_headers(mut rest: &[u8]) -> Result<Vec<Header<'_>>, HandshakeError> {
    let mut headers = Vec::with_capacity(16);
    loop {
        let (line, next) =
            split_line(rest).ok_or(HandshakeError::Malformed("unterminated head"))?;
        rest = next;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HandshakeError::TooManyHeaders);
        }
        let colon = memchr::memchr(b':', line)
            .ok_or(HandshakeError::Malformed("header line without a colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            // Also refuses obsolete line folding (a line starting with a space or tab).
            return Err(HandshakeError::Malformed("bad header name"));
        }
        let value = trim(&line[colon + 1..]);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HandshakeError::Malformed(
                "control character in a header value",
            ));
        }
        headers.push(Header {
            // Token characters are ASCII.
            name: std::str::from_utf8(name).unwrap_or_default(),
            value,
        });
    }
    if !rest.is_empty() {
        return Err(HandshakeError::Malformed("bytes after the end of the head"));
    }
    Ok(headers)
}

/// Splits off one CRLF-terminated line; a bare CR or LF inside the line is refused by the
/// callers' character checks.
fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memmem::find(buf, b"\r\n")?;
    let line = &buf[..i];
    if line.iter().any(|&b| b == b'\n' || b == b'\r') {
        return None;
    }
    Some((line, &buf[i + 2..]))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header<'a>(headers: &[Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn count(headers: &[Header<'_>], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

/// The comma-separated items of every `name` header, trimmed, empty items skipped. Commas
/// inside quoted strings do not split.
fn list_items<'h, 'a: 'h>(
    headers: &'h [Header<'a>],
    name: &'h str,
) -> impl Iterator<Item = &'a str> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| split_list(h.value))
        .filter_map(|item| std::str::from_utf8(item).ok())
}

fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let item = trim(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or_default();
        if !item.is_empty() {
            return Some(item);
        }
    })
}

fn has_token(headers: &[Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| split_list(h.value))
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Appends a client's upgrade request to `out`. `host` is the authority (`host[:port]`),
/// `path` the path and query, `key` from [`client_key`].
pub fn write_client_request(
    host: &str,
    path: &str,
    key: &str,
    protocols: &[&str],
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), InvalidHeader> {
    check_headers(extra)?;
    check_headers(&[("Host", host)])?;
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidHeader(format!("request target {path:?}")));
    }
    if let Some(p) = protocols
        .iter()
        .find(|p| p.is_empty() || !p.bytes().all(is_tchar))
    {
        return Err(InvalidHeader(format!("Sec-WebSocket-Protocol: {p}")));
    }
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, "Host", host);
    out.extend_from_slice(
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    );
    push_header(out, "Sec-WebSocket-Key", key);
    if !protocols.is_empty() {
        push_header(out, "Sec-WebSocket-Protocol", &protocols.join(", "));
    }
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Why a client refuses the server's handshake response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The response is not valid HTTP/1.x.
    #[error("malformed handshake response: {0}")]
    Malformed(&'static str),
    /// The server answered with a status other than 101.
    #[error("server refused the upgrade with HTTP status {0}")]
    Status(u16),
    /// `Upgrade: websocket` is missing.
    #[error("response lacks Upgrade: websocket")]
    Upgrade,
    /// `Connection: Upgrade` is missing.
    #[error("response lacks Connection: Upgrade")]
    Connection,
    /// `Sec-WebSocket-Accept` is missing or wrong.
    #[error("wrong Sec-WebSocket-Accept")]
    Accept,
    /// The server chose a subprotocol the client did not offer.
    #[error("server chose a subprotocol that was not offered: {0}")]
    Protocol(String),
    /// The server accepted an extension the client did not offer.
    #[error("server accepted an extension that was not offered: {0}")]
    Extension(String),
    /// The server's permessage-deflate parameters are malformed or not what was offered.
    #[error("bad permessage-deflate answer: {0}")]
    ExtensionParams(String),
}

/// The parts of a server's `101` a client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerResponse<'a> {
    /// The subprotocol the server chose, if any.
    pub protocol: Option<&'a str>,
    /// All header lines of the response.
    pub headers: Vec<Header<'a>>,
}

impl<'a> ServerResponse<'a> {
    /// The extensions the server accepted (`Sec-WebSocket-Extensions` items, in order).
    pub fn extensions(&self) -> impl Iterator<Item = &'a str> + '_ {
        list_items(&self.headers, "sec-websocket-extensions")
    }
}

/// Validates a server's response head (as delimited by [`HeadScanner`]) to a request made with
/// `key`, offering `protocols` and the extensions named in `extensions`.
pub fn check_response<'a>(
    head: &'a [u8],
    key: &str,
    protocols: &[&str],
    extensions: &[&str],
) -> Result<ServerResponse<'a>, ClientHandshakeError> {
    let bad = ClientHandshakeError::Malformed;
    let (line, rest) = split_line(head).ok_or(bad("no status line"))?;
    let status = match line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', v, b' ', a, b, c, tail @ ..]
            if v.is_ascii_digit()
                && [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (tail.is_empty() || tail[0] == b' ') =>
        {
            (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16
        }
        _ => return Err(bad("bad status line")),
    };
    let headers = parse_headers(rest).map_err(|e| match e {
        HandshakeError::Malformed(why) => bad(why),
        _ => bad("too many headers"),
    })?;
    if status != 101 {
        return Err(ClientHandshakeError::Status(status));
    }
    if !has_token(&headers, "upgrade", "websocket") {
        return Err(ClientHandshakeError::Upgrade);
    }
    if !has_token(&headers, "connection", "upgrade") {
        return Err(ClientHandshakeError::Connection);
    }
    if count(&headers, "sec-websocket-accept") != 1
        || header(&headers, "sec-websocket-accept") != Some(accept_key(key.as_bytes()).as_bytes())
    {
        return Err(ClientHandshakeError::Accept);
    }
    let mut chosen = list_items(&headers, "sec-websocket-protocol");
    let protocol = chosen.next();
    if let Some(p) = protocol {
        if chosen.next().is_some() || !protocols.contains(&p) {
            return Err(ClientHandshakeError::Protocol(p.to_owned()));
        }
    }
    if let Some(e) = list_items(&headers, "sec-websocket-extensions").find(|e| {
        let name = e.split(';').next().unwrap_or_default().trim();
        !extensions.iter().any(|o| o.eq_ignore_ascii_case(name))
    }) {
        return Err(ClientHandshakeError::Extension(e.to_owned()));
    }
    drop(chosen);
    Ok(ServerResponse { protocol, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: 127.0.0.1:9001\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Upgrade: websocket\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    fn upgrade(head: &[u8]) -> UpgradeRequest<'_> {
        match parse(head).unwrap() {
            Handshake::WebSocket(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn status(head: &str) -> u16 {
        parse(head.as_bytes()).unwrap_err().status()
    }

    /// A valid request with the header `name` replaced by `line` (or removed when empty).
    fn with(name: &str, line: &str) -> String {
        let mut out = String::new();
        for l in std::str::from_utf8(CHROME).unwrap().split_inclusive("\r\n") {
            if l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                if !line.is_empty() {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
            } else {
                out.push_str(l);
            }
        }
        out
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn browser_request_is_parsed() {
        let u = upgrade(CHROME);
        assert_eq!(u.request.path, "/chat");
        assert_eq!(u.request.query, Some("room=1"));
        assert_eq!(u.origin(), Some("http://example.com"));
        assert_eq!(u.host(), b"127.0.0.1:9001");
        assert_eq!(u.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        assert_eq!(
            u.extensions().collect::<Vec<_>>(),
            ["permessage-deflate; client_max_window_bits"]
        );
        assert_eq!(u.request.headers().len(), 9);
        assert_eq!(u.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accept_response() {
        let u = upgrade(CHROME);
        let mut out = Vec::new();
        write_accept(&u, Some("chat"), None, &[("X-Server", "uringws")], &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\
X-Server: uringws\r\n\r\n"
        );
        let mut out = Vec::new();
        assert!(write_accept(&u, Some("mqtt"), None, &[], &mut out).is_err());
        assert!(write_accept(&u, None, None, &[("X", "a\r\nSet-Cookie: x")], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let h = with("connection", "connection: keep-alive, UPGRADE");
        let h = h.replace("Upgrade: websocket", "upgrade: WebSocket");
        upgrade(h.as_bytes());
    }

    #[test]
    fn each_malformed_handshake_has_its_status() {
        let cases: Vec<(String, u16)> = vec![
            (String::from_utf8_lossy(CHROME).replace("GET", "POST"), 405),
            (
                String::from_utf8_lossy(CHROME).replace("HTTP/1.1", "HTTP/1.0"),
                400,
            ),
            (
                String::from_utf8_lossy(CHROME).replace("HTTP/1.1", "HTTP/2.0"),
                400,
            ),
            (with("host", ""), 400),
            (with("host", "Host: a\r\nHost: b"), 400),
            (with("upgrade", ""), 400),
            (with("upgrade", "Upgrade: h2c"), 400),
            (with("connection", ""), 400),
            (with("connection", "Connection: keep-alive"), 400),
            (with("sec-websocket-version", ""), 426),
            (
                with("sec-websocket-version", "Sec-WebSocket-Version: 8"),
                426,
            ),
            (with("sec-websocket-key", ""), 400),
            (with("sec-websocket-key", "Sec-WebSocket-Key: short"), 400),
            (
                with(
                    "sec-websocket-key",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
                ),
                400,
            ),
            (
                with(
                    "sec-websocket-key",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE=",
                ),
                400,
            ),
            (
                with(
                    "sec-websocket-key",
                    "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==",
                ),
                400,
            ),
            (
                with("sec-websocket-protocol", "Sec-WebSocket-Protocol: a b"),
                400,
            ),
            (with("pragma", " folded: line"), 400),
            (with("pragma", "Bad Name: x"), 400),
            (with("pragma", "NoColon"), 400),
            (with("pragma", "X: a\x01b"), 400),
            ("GET /\r\n\r\n".into(), 400),
            ("GET  / HTTP/1.1\r\n\r\n".into(), 400),
            ("GET nopath HTTP/1.1\r\n\r\n".into(), 400),
            ("\r\n\r\n".into(), 400),
        ];
        for (head, want) in cases {
            assert_eq!(status(&head), want, "{head}");
        }
        let many = with("pragma", &"X-A: b\r\n".repeat(101));
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn error_responses_are_complete_http() {
        let mut out = Vec::new();
        HandshakeError::Version.write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let mut out = Vec::new();
        HandshakeError::TooLarge.write_response(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn plain_requests_are_recognised() {
        let head = b"GET /healthz HTTP/1.0\r\nUser-Agent: curl\r\n\r\n";
        let Handshake::Plain(r) = parse(head).unwrap() else {
            panic!()
        };
        assert_eq!((r.method, r.path, r.minor_version), ("GET", "/healthz", 0));
        assert!(!r.keep_alive());
        assert_eq!(r.body_len(), Ok(0));
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
        let Handshake::Plain(r) = parse(head).unwrap() else {
            panic!()
        };
        assert!(r.keep_alive());
        assert_eq!(r.body_len(), Ok(5));
        let absolute = b"GET http://a:1/p?q HTTP/1.1\r\nHost: a:1\r\n\r\n";
        let Handshake::Plain(r) = parse(absolute).unwrap() else {
            panic!()
        };
        assert_eq!((r.path, r.query), ("/p", Some("q")));
    }

    #[test]
    fn scanner_finds_the_end_across_reads() {
        let mut data = CHROME.to_vec();
        data.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        for step in [1, 2, 3, 7, 100] {
            let mut s = HeadScanner::new(DEFAULT_MAX_REQUEST);
            let mut found = None;
            for end in (step..data.len() + step).step_by(step) {
                if let Some(n) = s.scan(&data[..end.min(data.len())]).unwrap() {
                    found = Some(n);
                    break;
                }
            }
            assert_eq!(found, Some(CHROME.len()), "step {step}");
        }
    }

    #[test]
    fn scanner_refuses_bare_lf_heads_at_their_blank_line() {
        let bare = b"GET / HTTP/1.1\nHost: x\nUpgrade: websocket\n\n";
        let mixed = b"GET / HTTP/1.1\r\nHost: x\r\n\n";
        for head in [&bare[..], &mixed[..]] {
            for step in [1, 5, head.len()] {
                let mut s = HeadScanner::new(DEFAULT_MAX_REQUEST);
                let mut got = Ok(None);
                for end in (step..head.len() + step).step_by(step) {
                    got = s.scan(&head[..end.min(head.len())]);
                    if got != Ok(None) {
                        break;
                    }
                }
                assert_eq!(
                    got,
                    Err(HandshakeError::Malformed("line ends in a bare LF")),
                    "step {step}"
                );
            }
        }
        // Frame bytes after a complete head may hold anything.
        let mut data = CHROME.to_vec();
        data.extend_from_slice(b"\n\n\n");
        assert_eq!(
            HeadScanner::new(DEFAULT_MAX_REQUEST).scan(&data),
            Ok(Some(CHROME.len()))
        );
    }

    #[test]
    fn upgrades_with_a_body_are_refused() {
        let head = String::from_utf8(CHROME.to_vec()).unwrap();
        for extra in [
            "Content-Length: 5\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Content-Length: x\r\n",
        ] {
            let with = head.replacen("\r\n", &format!("\r\n{extra}"), 1);
            let err = parse(with.as_bytes()).unwrap_err();
            assert_eq!(err.status(), 400, "{extra}");
        }
        let empty = head.replacen("\r\n", "\r\nContent-Length: 0\r\n", 1);
        assert!(matches!(
            parse(empty.as_bytes()),
            Ok(Handshake::WebSocket(_))
        ));
    }

    #[test]
    fn scanner_enforces_the_limit() {
        let mut s = HeadScanner::new(64);
        assert_eq!(s.scan(&[b'a'; 63]), Ok(None));
        assert_eq!(s.scan(&[b'a'; 64]), Err(HandshakeError::TooLarge));
        let mut s = HeadScanner::new(16);
        assert_eq!(
            s.scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(HandshakeError::TooLarge)
        );
    }

    #[test]
    fn every_prefix_of_a_request_may_start_one_and_binary_may_not() {
        let requests: [&[u8]; 3] = [
            b"GET /chat?x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nX: \x80\xff\r\n\r\n",
        ];
        for request in requests {
            for end in 0..=request.len() {
                assert_eq!(check_request_start(&request[..end]), Ok(()), "{end}");
            }
        }
        let refused: [&[u8]; 5] = [
            b"\x16\x03\x01\x00\xa5\x01",
            b"GE\x00",
            b"\r\nGET / HTTP/1.1",
            b"G(T / HTTP/1.1",
            b"\x80",
        ];
        // A long run of token bytes without a space passes (only the start is looked at).
        assert_eq!(check_request_start(&[b'A'; 10_000]), Ok(()));
        let mut late = vec![b'A'; METHOD_CHECKED];
        late.push(0);
        assert_eq!(check_request_start(&late), Ok(()));
        for bytes in refused {
            assert_eq!(
                check_request_start(bytes),
                Err(HandshakeError::Malformed("bad method")),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn client_request_round_trips_through_the_server_parser() {
        let key = client_key([7; 16]);
        let mut out = Vec::new();
        write_client_request(
            "h:1",
            "/p?x=1",
            &key,
            &["chat"],
            &[("Origin", "o")],
            &mut out,
        )
        .unwrap();
        let u = upgrade(&out);
        assert_eq!(u.key, key);
        assert_eq!(u.protocols().collect::<Vec<_>>(), ["chat"]);
        let mut resp = Vec::new();
        write_accept(&u, Some("chat"), None, &[], &mut resp).unwrap();
        let r = check_response(&resp, &key, &["chat"], &[]).unwrap();
        assert_eq!(r.protocol, Some("chat"));
    }

    #[test]
    fn client_refuses_bad_responses() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
        let check = |extra: &str, base: &str| {
            check_response(format!("{base}{extra}\r\n").as_bytes(), key, &["chat"], &[])
                .map(|r| r.protocol.map(str::to_owned))
        };
        assert!(check("", ok).is_ok());
        assert_eq!(
            check("", &ok.replace("s3pP", "AAAA")),
            Err(ClientHandshakeError::Accept)
        );
        assert_eq!(
            check("Sec-WebSocket-Protocol: mqtt\r\n", ok),
            Err(ClientHandshakeError::Protocol("mqtt".into()))
        );
        assert_eq!(
            check("Sec-WebSocket-Extensions: permessage-deflate\r\n", ok),
            Err(ClientHandshakeError::Extension("permessage-deflate".into()))
        );
        assert_eq!(
            check("", &ok.replace("101 Switching Protocols", "403 Forbidden")),
            Err(ClientHandshakeError::Status(403))
        );
        assert_eq!(
            check("", &ok.replace("Upgrade: websocket\r\n", "")),
            Err(ClientHandshakeError::Upgrade)
        );
        assert_eq!(
            check("", &ok.replace("Connection: Upgrade\r\n", "")),
            Err(ClientHandshakeError::Connection)
        );
        assert!(matches!(
            check_response(b"HTTP/1.1 10\r\n\r\n", key, &[], &[]),
            Err(ClientHandshakeError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut s = HeadScanner::new(512);
            if let Ok(Some(n)) = s.scan(&data) {
                let _ = parse(&data[..n]);
                let _ = check_response(&data[..n], "k", &["a"], &["b"]);
            }
        }
    }
}
