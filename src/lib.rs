//! ringecho: a WebSocket (RFC 6455) echo server on io_uring.
//!
//! [`protocol`] is the sans-IO core (handshake, frames, masking, UTF-8, the
//! message/close state machine).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod protocol;
