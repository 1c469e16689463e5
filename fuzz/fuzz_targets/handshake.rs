//! The opening handshake on arbitrary bytes: the head scanner fed in two pieces, the request
//! parser on the head it finds, and the client's response check. Nothing may panic, and the
//! scanner must find the same head however the bytes are split.
//!
//! Input: one byte that picks the split point, then the bytes received.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uringws::proto::handshake::{check_response, parse, write_accept, Handshake, HeadScanner};

/// Small enough that the size limit is reached by fuzzed inputs.
const LIMIT: usize = 2048;
/// The RFC 6455 section 1.3 sample key; its accept value is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let split = (split as usize * data.len() / 255).min(data.len());

    // The head as found by a scanner that sees the bytes arrive in two reads.
    let mut scanner = HeadScanner::new(LIMIT);
    let two_reads = match scanner.scan(&data[..split]) {
        Ok(None) => scanner.scan(data),
        other => other,
    };
    // The same bytes in one read.
    let one_read = HeadScanner::new(LIMIT).scan(data);
    match (&two_reads, &one_read) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {split}"),
        // Both refuse; which fault shows first (too large, or a bare LF) may depend on how
        // the bytes arrived.
        (Err(_), Err(_)) => {}
        _ => panic!("split at {split}: {two_reads:?} vs {one_read:?}"),
    }
    if let Ok(Some(n)) = two_reads {
        assert!(n <= data.len() && n <= LIMIT);
        assert!(data[..n].ends_with(b"\r\n\r\n"));
        // The first blank line ends the head, and no bare-LF blank line comes before it.
        assert!(!data[..n - 1].windows(4).any(|w| w == b"\r\n\r\n"));
        assert!(!data[..n].windows(2).any(|w| w == b"\n\n"));
        let head = &data[..n];
        let mut out = Vec::new();
        match parse(head) {
            Ok(Handshake::WebSocket(upgrade)) => {
                assert_eq!(upgrade.key.len(), 24);
                let _ = upgrade.host();
                let _ = upgrade.origin();
                let first = upgrade.protocols().next();
                let _ = upgrade.extensions().count();
                write_accept(&upgrade, first, Some("permessage-deflate"), &[], &mut out)
                    .expect("an offered protocol is accepted");
                assert!(out.starts_with(b"HTTP/1.1 101 "));
                // What the server writes back must satisfy a client that sent this key.
                let response_end = out.len();
                let check = check_response(
                    &out[..response_end],
                    upgrade.key,
                    &upgrade.protocols().collect::<Vec<_>>(),
                    &["permessage-deflate"],
                );
                assert!(check.is_ok(), "{check:?}");
            }
            Ok(Handshake::Plain(request)) => {
                let _ = request.keep_alive();
                let _ = request.body_len();
                let _ = request.header_str("host");
                assert!(request.path.starts_with('/') || request.path == "*");
            }
            Err(e) => {
                e.write_response(&mut out);
                assert!(out.starts_with(b"HTTP/1.1 4"));
            }
        }
        let _ = check_response(head, KEY, &["chat"], &["permessage-deflate"]);
    }
    // The client side on the raw bytes, delimited or not.
    let _ = check_response(data, KEY, &["chat", "superchat"], &["permessage-deflate"]);
});
