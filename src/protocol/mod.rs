//! The sans-IO RFC 6455 core: byte slices in, decisions out. Nothing here
//! touches a socket, a runtime or the allocator on the frame path.

pub mod close;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use error::{close_code, Disposition, Error};
