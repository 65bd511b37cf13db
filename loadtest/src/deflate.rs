//! permessage-deflate (RFC 7692) as both ends of `loadtest` need it: the
//! load generator compresses what it sends and checks what comes back, the
//! recompressing peer inflates and deflates every message. Compression,
//! inflation, reassembly of compressed messages and both sides of the
//! negotiation live here, apart from any socket, so tests can drive them.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's registered name (RFC 7692 §7).
pub const EXTENSION: &str = "permessage-deflate";

/// What the load generator offers. No `client_max_window_bits`: without it
/// the server may not limit our window (§7.1.2.2), so one compressed form
/// per message, made with the full window, is valid whatever it answers.
pub const CLIENT_OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// The recompressing peer's answer to an offer it accepts.
pub const PEER_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// RSV1, the "Per-Message Compressed" bit (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// The empty stored block a sync flush ends with, which the sender removes
/// and the receiver appends back (RFC 7692 §7.2.1, §7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output room added per call while compressing or inflating: large enough
/// that a small message takes one call, small enough not to over-allocate
/// for it.
const STEP: usize = 16 * 1024;

/// A fresh raw-DEFLATE compressor at `level` with the full 32 KiB window
/// (the window every peer must accept when no `*_max_window_bits` limits
/// it, §7.1.2).
pub fn compressor(level: Compression) -> Compress {
    Compress::new(level, false)
}

/// A raw-DEFLATE inflater with the full window, which reads what any
/// smaller window wrote too.
pub fn inflater() -> Decompress {
    Decompress::new(false)
}

/// Compress one message into `out` (cleared first) as §7.2.1 says: DEFLATE
/// with a sync flush, its trailing `00 00 ff ff` removed. `c` is reset
/// first, so no message refers back to another (`*_no_context_takeover`,
/// §7.1.1): resetting gives the fresh state a new compressor would have,
/// without allocating its tables again.
pub fn compress_message(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    c.reset();
    out.clear();
    let start = c.total_in();
    loop {
        out.reserve(STEP.min(input.len() / 2 + 64));
        let consumed = (c.total_in() - start) as usize;
        let rest = input.get(consumed..).unwrap_or_default();
        c.compress_vec(rest, out, FlushCompress::Sync)
            .map_err(|e| format!("deflate: {e}"))?;
        // zlib's flush is complete once all input is in and the call left
        // output room unused; a full buffer may hide more pending output.
        if (c.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if !out.ends_with(&TAIL) {
        return Err("deflate: a sync flush did not end with 00 00 ff ff".into());
    }
    out.truncate(out.len() - TAIL.len());
    Ok(())
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Not valid DEFLATE data.
    Corrupt,
    /// It inflates to more than the limit.
    TooLarge,
    /// The inflater stopped making progress before the appended tail was
    /// read: the data ends inside a block, so it cannot be a whole message.
    Truncated,
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InflateError::Corrupt => "not valid DEFLATE data",
            InflateError::TooLarge => "inflates past the message limit",
            InflateError::Truncated => "DEFLATE data ends inside a block",
        })
    }
}

/// Inflate one message's payload into `out` (cleared first), appending the
/// tail its sender removed (§7.2.2). `d` is reset first: every message
/// stands alone (`*_no_context_takeover`, §7.1.1). Output past `limit`
/// bytes is an error, found as soon as it is produced, so a small message
/// cannot make us allocate more than about `limit`.
pub fn inflate_message(
    d: &mut Decompress,
    compressed: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    d.reset(false);
    out.clear();
    for part in [compressed, &TAIL[..]] {
        let start = d.total_in();
        loop {
            let consumed = (d.total_in() - start) as usize;
            let rest = part.get(consumed..).unwrap_or_default();
            // One byte of room past the limit tells "exactly at the limit"
            // from "over it".
            let room = (limit + 1).saturating_sub(out.len()).min(STEP);
            if room == 0 {
                return Err(InflateError::TooLarge);
            }
            out.reserve_exact(room);
            let before = (d.total_in(), out.len());
            let status = d
                .decompress_vec(rest, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooLarge);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL) ends the message's data. What
                // follows it is not read: §7.2.3.4's own example has a
                // byte there, and the appended tail always is.
                return Ok(());
            }
            let all_in = (d.total_in() - start) as usize == part.len();
            if all_in && out.len() < out.capacity() {
                break;
            }
            if (d.total_in(), out.len()) == before {
                return Err(InflateError::Truncated);
            }
        }
    }
    Ok(())
}

/// Whether a frame's RSV bits are allowed: RSV2 and RSV3 never are (RFC
/// 6455 §5.2, no extension here defines them); RSV1 only when
/// permessage-deflate was agreed and only on the first frame of a data
/// message, never on a continuation or a control frame (RFC 7692 §6).
pub fn rsv_allowed(rsv: u8, opcode: u8, deflate: bool) -> bool {
    match rsv & 0x70 {
        0 => true,
        RSV1 => deflate && matches!(opcode, 0x1 | 0x2),
        _ => false,
    }
}

/// A data frame that cannot belong to the message stream (RFC 6455 §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A continuation with no message started.
    NoMessage,
    /// A text or binary frame while a fragmented message is still open.
    Interleaved,
    /// The message grew past the limit.
    TooLarge,
    /// An opcode that is not a data frame's.
    NotData,
}

/// A complete message: its opcode, whether its first frame had RSV1, and
/// the payload of all its frames, concatenated.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub opcode: u8,
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Joins a message's frames. Whether it is compressed is decided by its
/// first frame alone (RFC 7692 §6.2); callers refuse RSV1 elsewhere with
/// [`rsv_allowed`] before a frame gets here.
#[derive(Debug)]
pub struct Reassembler {
    limit: usize,
    open: Option<(u8, bool)>,
    buf: Vec<u8>,
}

impl Reassembler {
    /// Messages (their payload as received, compressed or not) larger than
    /// `limit` bytes are refused.
    pub fn new(limit: usize) -> Reassembler {
        Reassembler {
            limit,
            open: None,
            buf: Vec::new(),
        }
    }

    /// Take one data frame's (unmasked) payload. A message in a single
    /// frame is handed back as that frame's payload, uncopied.
    pub fn push<'a>(
        &'a mut self,
        fin: bool,
        rsv: u8,
        opcode: u8,
        payload: &'a [u8],
    ) -> Result<Option<Message<'a>>, FrameError> {
        let (opcode, compressed) = match (opcode, self.open) {
            (0x1 | 0x2, Some(_)) => return Err(FrameError::Interleaved),
            (0x1 | 0x2, None) => (opcode, rsv & RSV1 != 0),
            (0x0, Some(open)) => open,
            (0x0, None) => return Err(FrameError::NoMessage),
            _ => return Err(FrameError::NotData),
        };
        if self.open.is_none() && fin {
            if payload.len() > self.limit {
                return Err(FrameError::TooLarge);
            }
            return Ok(Some(Message {
                opcode,
                compressed,
                payload,
            }));
        }
        if self.open.is_none() {
            self.buf.clear();
            self.open = Some((opcode, compressed));
        }
        if self.buf.len() + payload.len() > self.limit {
            return Err(FrameError::TooLarge);
        }
        self.buf.extend_from_slice(payload);
        if !fin {
            return Ok(None);
        }
        self.open = None;
        Ok(Some(Message {
            opcode,
            compressed,
            payload: &self.buf,
        }))
    }
}

/// One `name[=value]` parameter of an extension element, the value with
/// any quotes removed (RFC 6455 §9.1 allows a quoted-string value that
/// reads as a token).
fn params(element: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    element.split(';').skip(1).map(|p| {
        let p = p.trim();
        match p.split_once('=') {
            Some((n, v)) => {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                (n.trim(), Some(v))
            }
            None => (p, None),
        }
    })
}

fn element_name(element: &str) -> &str {
    element.split(';').next().unwrap_or_default().trim()
}

/// A window size parameter's value: 8 to 15, digits only with no leading
/// zero (§7.1.2.1, §7.1.2.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The client's check of the 101's `Sec-WebSocket-Extensions` values
/// (every such header, in order) against [`CLIENT_OFFER`]. `Err` says why
/// the connection cannot go on compressed.
pub fn check_answer(values: &[&str]) -> Result<(), String> {
    let elements: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let element =
        match elements.as_slice() {
            [] => return Err(
                "the server declined permessage-deflate (no Sec-WebSocket-Extensions in its 101)"
                    .into(),
            ),
            [one] => *one,
            _ => {
                return Err(format!(
                "the server answered with {} extensions ({}); only permessage-deflate was offered",
                elements.len(),
                elements.join(", ")
            ))
            }
        };
    // RFC 6455 §9.1: a server may only answer with what was offered.
    if !element_name(element).eq_ignore_ascii_case(EXTENSION) {
        return Err(format!(
            "the server answered with extension {element:?}, which was not offered"
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_no_context = false;
    for (name, value) in params(element) {
        // §7: a repeated parameter fails the connection.
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return Err(format!("the server's answer repeats {name}: {element:?}"));
        }
        seen.push(name);
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => server_no_context = true,
            ("client_no_context_takeover", None) => {}
            // §7.1.2.1: limits the server's window; our inflater has the
            // full one and reads any smaller.
            ("server_max_window_bits", Some(v)) if window_bits(v).is_some() => {}
            ("client_max_window_bits", _) => {
                // §7.1.2.2: not allowed in an answer to an offer without it.
                return Err(format!(
                    "the server's answer has client_max_window_bits, which the offer \
                     did not carry (RFC 7692 §7.1.2.2): {element:?}"
                ));
            }
            _ => {
                return Err(format!(
                    "the server's answer has a parameter RFC 7692 does not define for it, \
                     or a bad value: {name} in {element:?}"
                ))
            }
        }
    }
    // §7.1.1.1: accepting an offer with server_no_context_takeover means
    // answering with it. Each echo is inflated on its own, so one that
    // leans on earlier messages could not be checked.
    if !server_no_context {
        return Err(format!(
            "the server's answer lacks server_no_context_takeover, which was offered \
             (RFC 7692 §7.1.1.1): {element:?}"
        ));
    }
    Ok(())
}

/// The recompressing peer's answer to a request's `Sec-WebSocket-Extensions`
/// values: [`PEER_ANSWER`] (with `server_max_window_bits=15` when the offer
/// asked for 15) for the first permessage-deflate offer it can honour,
/// `None` to decline them all.
///
/// §7 has a server decline an offer with an unknown parameter, a bad value
/// or a repeated name; this one also declines `server_max_window_bits`
/// below 15, as it compresses with the full window only. A
/// `client_max_window_bits` in an offer may be ignored (§7.1.2.2): its
/// inflater reads any window.
pub fn peer_answer(values: &[&str]) -> Option<String> {
    'offers: for element in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if !element_name(element).eq_ignore_ascii_case(EXTENSION) {
            continue;
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut window_asked = false;
        for (name, value) in params(element) {
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                continue 'offers;
            }
            seen.push(name);
            let ok = match (name.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
                ("server_max_window_bits", Some(v)) => {
                    window_asked = true;
                    window_bits(v) == Some(15)
                }
                ("client_max_window_bits", None) => true,
                ("client_max_window_bits", Some(v)) => window_bits(v).is_some(),
                _ => false,
            };
            if !ok {
                continue 'offers;
            }
        }
        let mut answer = PEER_ANSWER.to_string();
        if window_asked {
            // §7.1.2.1: accepting a server window limit means answering
            // with a value no larger than the one offered.
            answer.push_str("; server_max_window_bits=15");
        }
        return Some(answer);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(input: &[u8], level: u32) -> Vec<u8> {
        let mut out = Vec::new();
        compress_message(&mut compressor(Compression::new(level)), input, &mut out).unwrap();
        out
    }

    fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        inflate_message(&mut inflater(), compressed, limit, &mut out).map(|()| out)
    }

    #[test]
    fn round_trip_strips_the_tail_and_appends_it_back() {
        let text =
            b"the quick brown fox jumps over the lazy dog, the quick brown fox again".repeat(50);
        for input in [&b""[..], b"a", b"Hello", &text] {
            let c = deflate(input, 6);
            // The sync flush's empty stored block is gone (§7.2.1)...
            assert!(!c.ends_with(&TAIL), "{c:02x?}");
            // ...and a raw inflate of the stripped data with the tail
            // appended gives the message back (§7.2.2).
            assert_eq!(inflate(&c, input.len()).unwrap(), input);
        }
        assert!(deflate(&text, 6).len() < text.len() / 10);
    }

    #[test]
    fn rfc_7692_example_inflates_to_hello() {
        // §7.2.3.1: "Hello" compressed without context takeover.
        let c = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&c, 5).unwrap(), b"Hello");
        // §7.2.3.3: the same in a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&stored, 5).unwrap(), b"Hello");
        // §7.2.3.4: a final block (BFINAL set) may end a message too, and
        // the byte after it is not data.
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(&last, 5).unwrap(), b"Hello");
    }

    #[test]
    fn a_fresh_state_per_message_gives_the_same_bytes_every_time() {
        // Without context takeover, a message's compressed form depends on
        // the message alone, which is what lets the client compare an echo
        // with what it sent instead of inflating it.
        let mut c = compressor(Compression::default());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        compress_message(&mut c, b"first message, first message", &mut a).unwrap();
        compress_message(&mut c, b"first message, first message", &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn inflation_is_bounded_and_refuses_bad_data() {
        let big = vec![b'x'; 100_000];
        let c = deflate(&big, 6);
        assert!(c.len() < 1000);
        assert_eq!(inflate(&c, 100_000).unwrap().len(), 100_000);
        assert_eq!(inflate(&c, 99_999), Err(InflateError::TooLarge));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Corrupt)
        );
        // Cut mid-block: flate2 cannot say whether the inflater stopped on
        // a block boundary, so the cut may come back as an error or as
        // some shorter output, never as the message.
        let original = b"abcdefghij".repeat(100);
        let text = deflate(&original, 6);
        assert_ne!(
            inflate(&text[..text.len() / 2], 10_000).ok(),
            Some(original)
        );
    }

    #[test]
    fn rsv1_only_on_the_first_frame_of_a_data_message() {
        assert!(rsv_allowed(0, 0x0, false));
        assert!(rsv_allowed(RSV1, 0x1, true));
        assert!(rsv_allowed(RSV1, 0x2, true));
        assert!(!rsv_allowed(RSV1, 0x2, false), "not negotiated");
        assert!(!rsv_allowed(RSV1, 0x0, true), "continuation");
        assert!(!rsv_allowed(RSV1, 0x9, true), "ping");
        assert!(!rsv_allowed(RSV1, 0x8, true), "close");
        assert!(!rsv_allowed(0x20, 0x1, true), "RSV2");
        assert!(!rsv_allowed(RSV1 | 0x10, 0x1, true), "RSV3 beside RSV1");
    }

    #[test]
    fn reassembly_takes_compression_from_the_first_frame() {
        let mut r = Reassembler::new(100);
        let m = r.push(true, RSV1, 0x1, b"whole").unwrap().unwrap();
        assert_eq!(
            m,
            Message {
                opcode: 0x1,
                compressed: true,
                payload: b"whole"
            }
        );
        assert_eq!(r.push(false, RSV1, 0x2, b"ab"), Ok(None));
        assert_eq!(r.push(false, 0, 0x0, b"cd"), Ok(None));
        let m = r.push(true, 0, 0x0, b"ef").unwrap().unwrap();
        assert_eq!(
            (m.opcode, m.compressed, m.payload),
            (0x2, true, &b"abcdef"[..])
        );
        assert_eq!(r.push(false, 0, 0x1, b"x"), Ok(None));
        let m = r.push(true, 0, 0x0, b"y").unwrap().unwrap();
        assert_eq!((m.compressed, m.payload), (false, &b"xy"[..]));
    }

    #[test]
    fn reassembly_refuses_what_cannot_be_a_message() {
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(true, 0, 0x0, b"x"), Err(FrameError::NoMessage));
        assert_eq!(r.push(true, 0, 0x9, b""), Err(FrameError::NotData));
        assert_eq!(r.push(true, 0, 0x1, b"12345"), Err(FrameError::TooLarge));
        assert_eq!(r.push(false, 0, 0x1, b"123"), Ok(None));
        assert_eq!(r.push(false, 0, 0x1, b"4"), Err(FrameError::Interleaved));
        assert_eq!(r.push(true, 0, 0x0, b"45"), Err(FrameError::TooLarge));
    }

    #[test]
    fn each_fragmented_message_gets_the_whole_limit() {
        // Messages right at the limit, one after the other: the previous
        // message's bytes must not count against the next.
        let mut r = Reassembler::new(4);
        for _ in 0..3 {
            assert_eq!(r.push(false, 0, 0x2, b"ab"), Ok(None));
            let m = r.push(true, 0, 0x0, b"cd").unwrap().unwrap();
            assert_eq!(m.payload, b"abcd");
        }
    }

    #[test]
    fn the_client_accepts_only_an_answer_it_can_check() {
        assert_eq!(check_answer(&[PEER_ANSWER]), Ok(()));
        assert_eq!(
            check_answer(&["permessage-deflate;server_no_context_takeover"]),
            Ok(())
        );
        assert_eq!(
            check_answer(&[
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=\"10\""
            ]),
            Ok(())
        );
        let refused = [
            vec![],
            vec!["permessage-deflate"],
            vec!["permessage-deflate; server_no_context_takeover; client_max_window_bits=15"],
            vec!["permessage-deflate; server_no_context_takeover; server_max_window_bits=16"],
            vec!["permessage-deflate; server_no_context_takeover; server_max_window_bits=015"],
            vec!["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            vec!["permessage-deflate; server_no_context_takeover; x=1"],
            vec!["permessage-deflate; server_no_context_takeover", "x-other"],
            vec!["x-webkit-deflate-frame"],
        ];
        for answer in refused {
            let why = check_answer(&answer).unwrap_err();
            assert!(!why.is_empty(), "{answer:?}");
        }
        assert!(check_answer(&[]).unwrap_err().contains("declined"));
    }

    #[test]
    fn the_peer_accepts_the_first_offer_it_can_honour() {
        assert_eq!(peer_answer(&[CLIENT_OFFER]).as_deref(), Some(PEER_ANSWER));
        assert_eq!(
            peer_answer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(PEER_ANSWER)
        );
        // The first offer limits the server's window below what it uses,
        // the second has a parameter twice; the third is fine.
        assert_eq!(
            peer_answer(&[
                "permessage-deflate; server_max_window_bits=10, \
                 permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                "permessage-deflate; server_max_window_bits=15"
            ]),
            Some(format!("{PEER_ANSWER}; server_max_window_bits=15"))
        );
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=7",
        ] {
            assert_eq!(peer_answer(&[declined]), None, "{declined}");
        }
        assert_eq!(peer_answer(&[]), None);
    }
}
