//! permessage-deflate (RFC 7692) for a server that echoes and never
//! compresses.
//!
//! An echo server's messages to a client are the client's own messages, in
//! the order it sent them. So the client's inflater, reading our messages,
//! sees exactly the stream its own deflater wrote: a compressed message can
//! be echoed as it came (RSV1 on its first frame, payload untouched) and no
//! deflater ever runs here. What the echo must still hold to is the RFC's
//! promise about the *server's* compressor, which the client's compressor
//! now stands in for:
//!
//! - **Window** (§7.1.2): the client inflates our messages with a window of
//!   `server_max_window_bits`, and our messages use the window the client
//!   compressed with. So whenever an offer limits the server's window below
//!   15, the client's own window must be limited as much, which only
//!   `client_max_window_bits` can do, and a server may answer with that only
//!   when the offer carried it (§7.1.2.2). An offer that limits the server's
//!   window and does not let the server limit the client's is declined.
//! - **Context** (§7.1.1): with `server_no_context_takeover` the client may
//!   drop its inflater's window after each of our messages, so the client
//!   must not refer back to its earlier messages either: whenever the
//!   answer says `server_no_context_takeover` it also says
//!   `client_no_context_takeover`, which a server may always add
//!   (§7.1.1.2). When neither is said, both sides keep context and the
//!   client's inflater holds the same history as its deflater.
//!
//! What the server must check it still checks, by inflating into a small
//! scratch buffer and throwing the output away: UTF-8 of text (§8.1 of RFC
//! 6455, on the decompressed bytes, RFC 7692 §6), the decompressed size
//! against the message limit (so a small message that inflates to a huge
//! one is refused as soon as it passes the limit, not after), and corrupt
//! DEFLATE data.

use std::borrow::Cow;
use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

use crate::utf8::Utf8Validator;
use crate::Error;

/// The extension's registered name (RFC 7692 §7).
pub const EXTENSION: &str = "permessage-deflate";

/// The bytes a sender removes from the end of a compressed message and a
/// receiver appends before inflating it (RFC 7692 §7.2.1, §7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflated bytes produced per call into the library: the output is only
/// validated, never kept, so this bounds the work between two checks of
/// the message limit.
const SCRATCH: usize = 16 * 1024;

/// Idle inflaters a thread keeps for the next compressed message of any of
/// its connections.
const POOL_MAX: usize = 8;

/// What the server agrees to when a client offers permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Decline every offer: no extension, the frame path of RFC 6455 alone.
    #[default]
    Off,
    /// Accept with `server_no_context_takeover` and
    /// `client_no_context_takeover`: no state outlives a message, so a
    /// connection between messages holds no inflater at all.
    NoContextTakeover,
    /// Accept with context takeover unless the client asks otherwise: a
    /// connection that has sent a compressed message keeps its inflater
    /// (a fixed [`Inflater::MEMORY`] bytes) for the rest of its life.
    ContextTakeover,
}

/// The parameters both sides agreed to (RFC 7692 §7.1), written back to the
/// client exactly as [`Agreement::write`] renders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: Option<u8>,
}

impl Agreement {
    /// Whether the client's messages may refer back to its earlier ones, so
    /// that the inflater must keep its window between messages.
    pub fn client_keeps_context(&self) -> bool {
        !self.client_no_context_takeover
    }

    /// Append the Sec-WebSocket-Extensions value of the response (§7.1).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(EXTENSION.as_bytes());
        if self.server_no_context_takeover {
            out.extend_from_slice(b"; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.extend_from_slice(b"; client_no_context_takeover");
        }
        for (name, bits) in [
            ("server_max_window_bits", self.server_max_window_bits),
            ("client_max_window_bits", self.client_max_window_bits),
        ] {
            if let Some(bits) = bits {
                out.extend_from_slice(b"; ");
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                // 8 to 15 (§7.1.2): one or two digits.
                if bits >= 10 {
                    out.push(b'1');
                }
                out.push(b'0' + bits % 10);
            }
        }
    }
}

/// One permessage-deflate offer, its parameters checked (§7.1).
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// Present (§7.1.2.2), with the value the client gave if it gave one.
    client_max_window_bits: Option<Option<u8>>,
}

/// Pick the first offer this server can accept, in the client's order
/// (RFC 6455 §9.1: the order is the client's preference; RFC 7692 §5:
/// several offers of the extension may be made, and the server accepts at
/// most one). Offers of other extensions and offers that break a rule of
/// §7 are passed over; `None` declines.
pub fn negotiate(offers: &[&str], policy: Policy) -> Option<Agreement> {
    if policy == Policy::Off {
        return None;
    }
    offers
        .iter()
        .filter_map(|o| parse_offer(o))
        .find_map(|o| accept(&o, policy))
}

fn accept(o: &Offer, policy: Policy) -> Option<Agreement> {
    // §7.1.2.1: accepting an offer that limits the server's window means
    // answering with a limit no larger. The echo uses the client's window,
    // so the client's must shrink with it (see the module comment).
    let server_bits = o.server_max_window_bits;
    let client_bits = match (server_bits, o.client_max_window_bits) {
        (None | Some(15), _) => None,
        (Some(s), Some(c)) => Some(s.min(c.unwrap_or(15))),
        // §7.1.2.2: without the parameter in the offer the answer must not
        // carry it, and the client keeps a window of 2^15.
        (Some(_), None) => return None,
    };
    // §7.1.1.1: an offer asking for server_no_context_takeover is accepted
    // only by saying it; §7.1.1.2 lets the server add the client's.
    let no_context = policy == Policy::NoContextTakeover || o.server_no_context_takeover;
    Some(Agreement {
        server_no_context_takeover: no_context,
        client_no_context_takeover: no_context || o.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

/// Parse one offer (`name; param; param=value ...`, RFC 6455 §9.1):
/// `None` when it is another extension's or breaks a rule of RFC 7692 §7
/// (an unknown parameter, a parameter given twice, a bad value), which the
/// server must decline.
fn parse_offer(offer: &str) -> Option<Offer> {
    // Empty parts are kept: an empty parameter is not a token, so the
    // offer fails.
    let mut parts = crate::handshake::split_unquoted(offer, ';');
    let name = parts.next()?;
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut o = Offer::default();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim_matches([' ', '\t']), Some(unquote(v)?)),
            None => (part, None),
        };
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        let fresh = match value {
            None if is("server_no_context_takeover") => {
                !std::mem::replace(&mut o.server_no_context_takeover, true)
            }
            None if is("client_no_context_takeover") => {
                !std::mem::replace(&mut o.client_no_context_takeover, true)
            }
            // §7.1.2.1: a value is required.
            Some(v) if is("server_max_window_bits") => {
                o.server_max_window_bits.replace(window_bits(&v)?).is_none()
            }
            // §7.1.2.2: the value is optional.
            v if is("client_max_window_bits") => {
                let bits = match v {
                    Some(v) => Some(window_bits(&v)?),
                    None => None,
                };
                o.client_max_window_bits.replace(bits).is_none()
            }
            _ => return None,
        };
        if !fresh {
            return None;
        }
    }
    Some(o)
}

/// §7.1.2.1, §7.1.2.2: a decimal integer from 8 to 15, without leading
/// zeros.
fn window_bits(v: &str) -> Option<u8> {
    match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A parameter value: a token, or a quoted-string whose unescaped content
/// must itself be a token (RFC 6455 §9.1). Borrowed unless it had escapes.
fn unquote(v: &str) -> Option<Cow<'_, str>> {
    let v = v.trim_matches([' ', '\t']);
    let inner = match v.strip_prefix('"') {
        Some(rest) => {
            let rest = rest.strip_suffix('"')?;
            if rest.contains('\\') {
                let mut out = String::with_capacity(rest.len());
                let mut chars = rest.chars();
                while let Some(c) = chars.next() {
                    out.push(if c == '\\' { chars.next()? } else { c });
                }
                Cow::Owned(out)
            } else {
                Cow::Borrowed(rest)
            }
        }
        None => Cow::Borrowed(v),
    };
    (!inner.is_empty() && inner.bytes().all(is_tchar)).then_some(inner)
}

/// RFC 7230 §3.2.6 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Streaming inflation of one connection's compressed messages, for
/// checking only: the output goes to a scratch buffer and is dropped.
pub struct Inflater {
    z: Decompress,
    /// The stream's final block has been read (RFC 1951 BFINAL): more data
    /// in the same message starts a new stream.
    ended: bool,
    /// Bytes inflated so far in the current message.
    len: u64,
    scratch: [u8; SCRATCH],
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("ended", &self.ended)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// Memory one inflater holds at most: the struct with its scratch, the
    /// library's 32 KiB window and about 15 KiB of its state and tables
    /// (62.7 KiB of RSS each, measured over 1,000 inflaters that each took
    /// a 200 KB message; less when messages are small and the window is
    /// not all touched).
    pub const MEMORY: usize = std::mem::size_of::<Inflater>() + (32 + 15) * 1024;

    fn new() -> Box<Inflater> {
        Box::new(Inflater {
            // Raw DEFLATE with a 2^15 window: any window a client may use
            // (8 to 15 bits) inflates correctly through the largest.
            z: Decompress::new(false),
            ended: false,
            len: 0,
            scratch: [0; SCRATCH],
        })
    }

    /// An inflater at the start of a stream: one the thread kept, or new.
    pub fn take() -> Box<Inflater> {
        POOL.try_with(|p| p.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
            .unwrap_or_else(Inflater::new)
    }

    /// Done with it: reset and keep it for the thread's next message.
    pub fn give_back(mut self: Box<Inflater>) {
        self.reset();
        let _ = POOL.try_with(|p| {
            if let Ok(mut pool) = p.try_borrow_mut() {
                if pool.len() < POOL_MAX {
                    pool.push(self);
                }
            }
        });
    }

    /// Forget the stream and its window: the next byte starts a new one.
    pub fn reset(&mut self) {
        self.z.reset(false);
        self.ended = false;
        self.len = 0;
    }

    /// Bytes inflated so far in this message.
    pub fn message_len(&self) -> u64 {
        self.len
    }

    /// Inflate the next piece of a compressed message, checking as the
    /// output comes: its length against `limit` (1009) and, for text,
    /// its UTF-8 (1007). Corrupt DEFLATE data is [`Error::BadCompressedData`].
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut text: Option<&mut Utf8Validator>,
        limit: u64,
    ) -> Result<(), Error> {
        loop {
            if self.ended {
                if input.is_empty() {
                    return Ok(());
                }
                // RFC 7692 §7.2.3.4 lets a sender end blocks with BFINAL;
                // what follows in the message is a new stream.
                self.z.reset(false);
                self.ended = false;
            }
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress(input, &mut self.scratch, FlushDecompress::None)
                .map_err(|_| Error::BadCompressedData)?;
            let used = (self.z.total_in() - in0) as usize;
            let produced = (self.z.total_out() - out0) as usize;
            self.len += produced as u64;
            if self.len > limit {
                return Err(Error::MessageTooBig);
            }
            if let Some(v) = text.as_deref_mut() {
                v.feed(self.scratch.get(..produced).unwrap_or_default())?;
            }
            input = input.get(used..).unwrap_or_default();
            if status == Status::StreamEnd {
                self.ended = true;
                continue;
            }
            // A full scratch may mean more output is pending even with no
            // input left; otherwise stop once the input is used up or the
            // library can make no progress without more of it.
            if produced < SCRATCH && (input.is_empty() || (used == 0 && produced == 0)) {
                return Ok(());
            }
        }
    }

    /// The message's last byte has been fed: append the tail the sender
    /// removed (§7.2.2) and flush what it releases.
    pub fn finish_message(
        &mut self,
        text: Option<&mut Utf8Validator>,
        limit: u64,
    ) -> Result<(), Error> {
        if !self.ended {
            self.feed(&TAIL, text, limit)?;
        }
        self.len = 0;
        Ok(())
    }
}

thread_local! {
    /// Inflaters between messages, shared by the thread's connections when
    /// no context is kept: one per shard in the common case, never one per
    /// idle connection.
    static POOL: RefCell<Vec<Box<Inflater>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
pub(crate) mod tests;
