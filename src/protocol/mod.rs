//! The sans-IO RFC 6455 core: byte slices in, decisions out. Nothing here
//! touches a socket, a runtime or the allocator on the frame path.

pub mod error;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod handshake;
pub use error::{close_code, Disposition, Error};
