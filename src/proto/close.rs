//! Close codes and close frame payloads (RFC 6455 sections 5.5.1 and 7.4).
//!
//! Owns which codes may be received, which may be sent, how a close payload is parsed and
//! validated (a 1-byte payload, forbidden codes and invalid UTF-8 reasons are errors), and how
//! one is built.

use crate::proto::ProtocolError;

/// A WebSocket close status code (RFC 6455 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigated away).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed without a close frame. Never sent on the wire.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: message data inconsistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violates the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message is too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting (IANA registry).
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (IANA registry).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: bad gateway (IANA registry).
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: TLS handshake failure. Never sent on the wire.
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether this code may appear in a close frame on the wire, sent or received:
    /// 1000-1003, 1007-1014 (RFC 6455 and the IANA registry), and 3000-4999 (libraries,
    /// frameworks and applications). 1004-1006, 1015, 1016-2999 and everything outside
    /// 1000-4999 are refused.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed close frame payload: a status code and a UTF-8 reason, which may be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code.
    pub code: CloseCode,
    /// The reason; valid UTF-8, at most 123 bytes.
    pub reason: &'a str,
}

/// The most reason bytes a close frame can carry (125 minus the 2-byte code).
pub const MAX_REASON_LEN: usize = 123;

/// Parses and validates a received close payload.
///
/// An empty payload is a close without status (`Ok(None)`, reported to applications as 1005).
/// A 1-byte payload or a code that may not be on the wire is a protocol error (1002); a reason
/// that is not UTF-8 is an invalid-payload error (1007).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseLength),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::CloseCode(code.0));
            }
            let reason =
                simdutf8::basic::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Error for a close frame the application asked to send that the RFC does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClose {
    /// The code may not be sent (1005, 1006, 1015, reserved ranges).
    #[error("close code {0} may not be sent")]
    Code(u16),
    /// The reason is longer than 123 bytes.
    #[error("close reason is {0} bytes, more than 123")]
    ReasonTooLong(usize),
}

/// Writes a close payload (`code` big-endian, then `reason`) into `out`, returning its length.
///
/// `None` writes an empty payload (a close without status).
pub fn write_close_payload(
    code: Option<CloseCode>,
    reason: &str,
    out: &mut [u8; 125],
) -> Result<usize, InvalidClose> {
    let Some(code) = code else {
        return Ok(0);
    };
    if !code.is_valid_on_wire() {
        return Err(InvalidClose::Code(code.0));
    }
    if reason.len() > MAX_REASON_LEN {
        return Err(InvalidClose::ReasonTooLong(reason.len()));
    }
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    out[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    Ok(2 + reason.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_payload_is_no_status() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
    }

    #[test]
    fn one_byte_payload_is_protocol_error() {
        let err = parse_close_payload(&[0x03]).unwrap_err();
        assert_eq!(err, ProtocolError::CloseLength);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn valid_codes_are_accepted() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let p = code.to_be_bytes();
            let f = parse_close_payload(&p).unwrap().unwrap();
            assert_eq!(f.code, CloseCode(code));
            assert_eq!(f.reason, "");
        }
    }

    #[test]
    fn forbidden_codes_are_protocol_errors() {
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let err = parse_close_payload(&code.to_be_bytes()).unwrap_err();
            assert_eq!(err, ProtocolError::CloseCode(code));
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn invalid_utf8_reason_is_1007() {
        let err = parse_close_payload(&[0x03, 0xe8, 0xce, 0xba, 0xff]).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn reason_round_trips() {
        let mut buf = [0u8; 125];
        let n = write_close_payload(Some(CloseCode::GOING_AWAY), "bye κόσμε", &mut buf).unwrap();
        let f = parse_close_payload(&buf[..n]).unwrap().unwrap();
        assert_eq!(f.code, CloseCode::GOING_AWAY);
        assert_eq!(f.reason, "bye κόσμε");
    }

    #[test]
    fn building_refuses_what_may_not_be_sent() {
        let mut buf = [0u8; 125];
        assert_eq!(
            write_close_payload(Some(CloseCode::NO_STATUS), "", &mut buf),
            Err(InvalidClose::Code(1005))
        );
        let long = "x".repeat(124);
        assert_eq!(
            write_close_payload(Some(CloseCode::NORMAL), &long, &mut buf),
            Err(InvalidClose::ReasonTooLong(124))
        );
        assert_eq!(write_close_payload(None, "", &mut buf), Ok(0));
    }
}
