//! ringecho: a WebSocket (RFC 6455) echo server on io_uring.
//!
//! [`protocol`] is the sans-IO core (handshake, frames, masking, UTF-8, the
//! message/close state machine); [`server`] is the io_uring shell that moves
//! bytes between sockets and that core. Dependencies point one way:
//! `main` → `server` → `protocol`.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod protocol;
pub mod server;
