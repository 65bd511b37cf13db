//! ringecho: a WebSocket (RFC 6455) echo server on io_uring.
//!
//! [`protocol`] is the sans-IO core, the `ringecho-proto` crate (handshake,
//! frames, masking, UTF-8, the per-connection engine); [`server`] holds the
//! I/O shells that move bytes between sockets and that core. Dependencies
//! point one way: `main` → `server` → `protocol`.
#![deny(unsafe_op_in_unsafe_fn)]

pub use ringecho_proto as protocol;
pub mod server;
