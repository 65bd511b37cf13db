//! ringecho's sans-IO RFC 6455 core: byte slices and time in, decisions
//! out. Nothing here touches a socket, a runtime, a clock or a system call;
//! every rule is unit-, property- and fuzz-tested without any of them.
//! The I/O shells in the `ringecho` crate move bytes and call it.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod close;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
#[cfg(any(test, feature = "testkit"))]
pub mod fuzz_entry;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod out_queue;
pub mod read_buffer;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tls;
pub mod utf8;

pub use connection::{Connection, Deadline, Event, HttpRequest, Summary};
pub use error::{close_code, Error, HandshakeError};
pub use read_buffer::ReadSizing;
