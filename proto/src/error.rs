//! One error type for everything a peer can get wrong, and the single place
//! that decides what goes back on the wire for it: a close code after the
//! handshake (RFC 6455 §7.4.1), an HTTP status before it (§4.2.2, §4.4).

use std::fmt;

/// Close status codes the server sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// What the server answers when it gives up on a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// After the handshake: send a close frame with this code, then close.
    Close(u16),
    /// During the handshake: send an HTTP response with this status, then close.
    Http(u16),
}

/// A peer broke a rule. Every variant maps to exactly one [`Disposition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // ---- Opening handshake (§4.2.1) ----
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

    // ---- Framing (§5) ----
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
    /// Message larger than the configured limit (§7.4.1, 1009).
    MessageTooBig,
}

impl Error {
    /// The one mapping from a rule broken to the answer on the wire.
    pub const fn disposition(self) -> Disposition {
        use Disposition::{Close, Http};
        match self {
            Error::MalformedRequest
            | Error::HttpVersion
            | Error::MissingHost
            | Error::BadUpgrade
            | Error::BadConnection
            | Error::BadKey => Http(400),
            Error::MethodNotAllowed => Http(405),
            Error::UnsupportedVersion => Http(426),
            Error::HeadersTooLarge => Http(431),
            Error::OriginNotAllowed => Http(403),
            Error::UnmaskedFrame
            | Error::ReservedBits
            | Error::UnknownOpcode(_)
            | Error::LengthOverflow
            | Error::ControlFrameTooLong
            | Error::FragmentedControlFrame
            | Error::UnexpectedContinuation
            | Error::ExpectedContinuation
            | Error::CloseTooShort
            | Error::InvalidCloseCode(_) => Close(close_code::PROTOCOL_ERROR),
            Error::InvalidUtf8 => Close(close_code::INVALID_PAYLOAD),
            Error::MessageTooBig => Close(close_code::MESSAGE_TOO_BIG),
        }
    }

    /// Short human-readable reason, safe to put in a close frame or HTTP body
    /// (ASCII, at most 123 bytes so it fits a close frame, §5.5).
    pub const fn reason(self) -> &'static str {
        match self {
            Error::MalformedRequest => "malformed HTTP request",
            Error::MethodNotAllowed => "method must be GET",
            Error::HttpVersion => "HTTP/1.1 or later required",
            Error::MissingHost => "exactly one Host header required",
            Error::BadUpgrade => "Upgrade must be websocket",
            Error::BadConnection => "Connection must include Upgrade",
            Error::BadKey => "Sec-WebSocket-Key must be 16 bytes, base64",
            Error::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            Error::HeadersTooLarge => "request header block too large",
            Error::OriginNotAllowed => "origin not allowed",
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
        }
    }
}

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

    const ALL: &[Error] = &[
        Error::MalformedRequest,
        Error::MethodNotAllowed,
        Error::HttpVersion,
        Error::MissingHost,
        Error::BadUpgrade,
        Error::BadConnection,
        Error::BadKey,
        Error::UnsupportedVersion,
        Error::HeadersTooLarge,
        Error::OriginNotAllowed,
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
    ];

    #[test]
    fn every_variant_has_its_wire_answer() {
        use Disposition::*;
        let expected = [
            Http(400),
            Http(405),
            Http(400),
            Http(400),
            Http(400),
            Http(400),
            Http(400),
            Http(426),
            Http(431),
            Http(403),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1002),
            Close(1007),
            Close(1009),
        ];
        assert_eq!(ALL.len(), expected.len());
        for (e, d) in ALL.iter().zip(expected) {
            assert_eq!(e.disposition(), d, "{e:?}");
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
