//! The protocol layer's error type: every RFC 6455 violation a peer can commit, each with the
//! close code to answer it with.

use crate::proto::close::CloseCode;

/// A violation of RFC 6455 by the peer. [`ProtocolError::close_code`] gives the code to close with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A client sent a frame without a mask (section 5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server sent a masked frame (section 5.1).
    #[error("server frame is masked")]
    MaskedFrame,
    /// RSV1-3 were set without an extension that defines them (section 5.2).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// The opcode is reserved (0x3-0x7, 0xB-0xF).
    #[error("reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame had FIN clear (section 5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame's payload was over 125 bytes (section 5.5).
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// The payload length did not use the minimal encoding (section 5.2).
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    /// The 64-bit payload length had its most significant bit set (section 5.2).
    #[error("64-bit payload length has its top bit set")]
    LengthTopBit,
    /// A continuation frame arrived with no fragmented message in progress (section 5.4).
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame arrived while a fragmented message was in progress.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// A frame was larger than the configured frame size limit.
    #[error("frame larger than the limit")]
    FrameTooBig,
    /// A message grew larger than the configured message size limit.
    #[error("message larger than the limit")]
    MessageTooBig,
    /// A text message or close reason was not valid UTF-8 (section 8.1).
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
    /// A compressed message did not inflate (RFC 7692 section 7.2.2).
    #[error("compressed data that does not inflate")]
    InflateFailed,
    /// A close frame had a 1-byte payload (section 5.5.1).
    #[error("close frame payload of 1 byte")]
    CloseLength,
    /// A close frame carried a code that may not be on the wire (section 7.4).
    #[error("close code {0} is not allowed on the wire")]
    CloseCode(u16),
}

impl ProtocolError {
    /// The close code to send in answer to this error: 1007 for invalid UTF-8 and data that does not inflate, 1009 for
    /// size limits, 1002 for everything else.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InflateFailed => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}
