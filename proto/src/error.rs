//! What a peer can get wrong, in two types, each knowing its answer on the
//! wire: [`HandshakeError`] an HTTP status before the upgrade (§4.2.2,
//! §4.4), [`Error`] a close code after it (§7.4.1). No caller maps one into
//! the other.

use std::fmt;

/// Close status codes the server sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Never on the wire (§7.4.1): stands for a close frame without a code
    /// where one is reported (§7.1.5).
    pub const NO_STATUS: u16 = 1005;
}

/// A client's opening handshake broke a rule of RFC 6455 §4.2.1 (or a
/// server policy); answered with an HTTP status, then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not parseable as an HTTP/1.1 request.
    MalformedRequest,
    /// Request line method other than GET (§4.2.1 item 1).
    MethodNotAllowed,
    /// HTTP version below 1.1 (§4.2.1 item 1).
    HttpVersion,
    /// No Host header, or more than one (§4.2.1 item 2).
    MissingHost,
    /// `Upgrade` present but without the `websocket` token (§4.2.1 item 3).
    BadUpgrade,
    /// `Connection` lacks the `Upgrade` token (§4.2.1 item 4).
    BadConnection,
    /// Sec-WebSocket-Key missing, repeated, or not 16 bytes of base64 (§4.2.1 item 5).
    BadKey,
    /// Sec-WebSocket-Version missing or not 13 (§4.2.1 item 6, §4.4).
    UnsupportedVersion,
    /// The header block is larger than the configured limit.
    HeadersTooLarge,
    /// A browser Origin outside the configured list (§10.2: servers may
    /// refuse origins they do not accept; prevents cross-site hijacking).
    OriginNotAllowed,
}

impl HandshakeError {
    /// The one mapping from a handshake rule broken to its HTTP status.
    pub const fn status(self) -> u16 {
        match self {
            HandshakeError::MalformedRequest
            | HandshakeError::HttpVersion
            | HandshakeError::MissingHost
            | HandshakeError::BadUpgrade
            | HandshakeError::BadConnection
            | HandshakeError::BadKey => 400,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadersTooLarge => 431,
            HandshakeError::OriginNotAllowed => 403,
        }
    }

    /// Short human-readable reason for the response body (ASCII).
    pub const fn reason(self) -> &'static str {
        match self {
            HandshakeError::MalformedRequest => "malformed HTTP request",
            HandshakeError::MethodNotAllowed => "method must be GET",
            HandshakeError::HttpVersion => "HTTP/1.1 or later required",
            HandshakeError::MissingHost => "exactly one Host header required",
            HandshakeError::BadUpgrade => "Upgrade must be websocket",
            HandshakeError::BadConnection => "Connection must include Upgrade",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be 16 bytes, base64",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HandshakeError::HeadersTooLarge => "request header block too large",
            HandshakeError::OriginNotAllowed => "origin not allowed",
        }
    }
}

/// A peer broke a framing or message rule after the handshake (§5, §7,
/// §8); answered with a close frame carrying [`Error::close_code`], then
/// the connection closes (§7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A client frame without the MASK bit (§5.1, §5.3).
    UnmaskedFrame,
    /// RSV1-3 set with no extension negotiated (§5.2).
    ReservedBits,
    /// Opcode 3-7 or 0xB-0xF (§5.2).
    UnknownOpcode(u8),
    /// 64-bit payload length with the most significant bit set (§5.2).
    LengthOverflow,
    /// Control frame with more than 125 bytes of payload (§5.5).
    ControlFrameTooLong,
    /// Control frame without FIN (§5.5).
    FragmentedControlFrame,
    /// Continuation frame with no message in progress (§5.4).
    UnexpectedContinuation,
    /// New text/binary frame while a fragmented message is open (§5.4).
    ExpectedContinuation,
    /// Close frame with a 1-byte payload (§5.5.1).
    CloseTooShort,
    /// Close code that must not appear on the wire (§7.4.1, §7.4.2).
    InvalidCloseCode(u16),
    /// Text message or close reason that is not UTF-8 (§5.6, §8.1).
    InvalidUtf8,
    /// Message larger than the configured limit (§7.4.1, 1009); for a
    /// compressed message, its decompressed size (RFC 7692 §8.1 leaves the
    /// limit to the endpoint).
    MessageTooBig,
    /// RSV1, the compressed-message bit, on a control frame or a
    /// continuation frame (RFC 7692 §6).
    MisplacedCompressedBit,
    /// A compressed message whose payload is not valid DEFLATE data
    /// (RFC 7692 §7.2.2, RFC 1951).
    BadCompressedData,
}

impl Error {
    /// The one mapping from a framing rule broken to its close code (§7.4.1).
    pub const fn close_code(self) -> u16 {
        match self {
            Error::UnmaskedFrame
            | Error::ReservedBits
            | Error::UnknownOpcode(_)
            | Error::LengthOverflow
            | Error::ControlFrameTooLong
            | Error::FragmentedControlFrame
            | Error::UnexpectedContinuation
            | Error::ExpectedContinuation
            | Error::CloseTooShort
            | Error::InvalidCloseCode(_)
            | Error::MisplacedCompressedBit => close_code::PROTOCOL_ERROR,
            // Not data of the message's type, as 1007 is defined (§7.4.1).
            Error::InvalidUtf8 | Error::BadCompressedData => close_code::INVALID_PAYLOAD,
            Error::MessageTooBig => close_code::MESSAGE_TOO_BIG,
        }
    }

    /// Short human-readable reason, safe to put in a close frame (ASCII, at
    /// most 123 bytes, §5.5).
    pub const fn reason(self) -> &'static str {
        match self {
            Error::UnmaskedFrame => "client frames must be masked",
            Error::ReservedBits => "reserved bits set without an extension",
            Error::UnknownOpcode(_) => "unknown opcode",
            Error::LengthOverflow => "payload length has its top bit set",
            Error::ControlFrameTooLong => "control frame payload over 125 bytes",
            Error::FragmentedControlFrame => "control frames must not be fragmented",
            Error::UnexpectedContinuation => "continuation frame without a message",
            Error::ExpectedContinuation => "data frame inside a fragmented message",
            Error::CloseTooShort => "close payload of one byte",
            Error::InvalidCloseCode(_) => "invalid close code",
            Error::InvalidUtf8 => "invalid UTF-8",
            Error::MessageTooBig => "message too big",
            Error::MisplacedCompressedBit => "RSV1 on a control or continuation frame",
            Error::BadCompressedData => "invalid compressed data",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HandshakeError {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownOpcode(op) => write!(f, "{} {op:#x}", self.reason()),
            Error::InvalidCloseCode(c) => write!(f, "{} {c}", self.reason()),
            _ => f.write_str(self.reason()),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handshake_error_has_its_http_status_section_4_2_2() {
        use HandshakeError::*;
        let expected = [
            (MalformedRequest, 400),
            (MethodNotAllowed, 405),
            (HttpVersion, 400),
            (MissingHost, 400),
            (BadUpgrade, 400),
            (BadConnection, 400),
            (BadKey, 400),
            (UnsupportedVersion, 426),
            (HeadersTooLarge, 431),
            (OriginNotAllowed, 403),
        ];
        for (e, status) in expected {
            assert_eq!(e.status(), status, "{e:?}");
            assert!(e.reason().is_ascii() && !e.reason().is_empty());
        }
    }

    const ALL: &[Error] = &[
        Error::UnmaskedFrame,
        Error::ReservedBits,
        Error::UnknownOpcode(3),
        Error::LengthOverflow,
        Error::ControlFrameTooLong,
        Error::FragmentedControlFrame,
        Error::UnexpectedContinuation,
        Error::ExpectedContinuation,
        Error::CloseTooShort,
        Error::InvalidCloseCode(1005),
        Error::InvalidUtf8,
        Error::MessageTooBig,
        Error::MisplacedCompressedBit,
        Error::BadCompressedData,
    ];

    #[test]
    fn every_frame_error_has_its_close_code_section_7_4_1() {
        let expected = [
            1002, 1002, 1002, 1002, 1002, 1002, 1002, 1002, 1002, 1002, 1007, 1009, 1002, 1007,
        ];
        assert_eq!(ALL.len(), expected.len());
        for (e, code) in ALL.iter().zip(expected) {
            assert_eq!(e.close_code(), code, "{e:?}");
        }
    }

    #[test]
    fn reasons_fit_in_a_close_frame_section_5_5() {
        for e in ALL {
            let r = e.to_string();
            assert!(r.is_ascii() && !r.is_empty() && r.len() <= 123, "{e:?}");
        }
    }
}
