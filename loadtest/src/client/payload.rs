//! What goes on the wire and what must come back.
//!
//! Every message carries the connection's sequence number as lowercase hex
//! in its first `seq_width` payload bytes; the rest is a fixed ASCII pattern,
//! so the payload is valid UTF-8 for text messages. The frame is built and
//! masked once per thread; a send copies it and patches only the masked
//! sequence bytes, so the per-message work is a copy and at most 16 XORs.
//!
//! `--deflate` and `--compressible` send a [`MessageSet`] instead: a few
//! dozen distinct compressible messages, made (and, for `--deflate`,
//! compressed) once per process, each framed and masked once per thread.
//! Compressed bytes cannot be patched, so message `seq` is the set's
//! message `seq % len`, and an echo is judged whole, once reassembled.

use std::sync::Arc;

use flate2::{Compression, Decompress};
use ringecho_proto::frame::{encode_client_frame, OpCode};

use crate::deflate;

/// Most hex digits of the sequence number a payload carries (a full u64).
pub const MAX_SEQ_WIDTH: usize = 16;

/// The bytes one direction of a connection is checked against: the pattern
/// with a hole of `seq_width` bytes at `seq_at` where the hex sequence number
/// goes, XORed with `seq_xor` (the mask, for raw mode where the masked frame
/// comes back verbatim; zero for an unmasked echo).
#[derive(Debug, Clone)]
pub struct Expect {
    pub base: Vec<u8>,
    pub seq_at: usize,
    pub seq_width: usize,
    pub seq_xor: [u8; MAX_SEQ_WIDTH],
}

/// A thread's pre-built frame and what its echo must look like.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The complete masked client frame for sequence number 0.
    pub frame: Vec<u8>,
    pub mask_key: [u8; 4],
    /// Where the masked sequence digits sit inside `frame`.
    pub frame_seq_at: usize,
    pub opcode: OpCode,
    pub size: usize,
    pub raw: bool,
    /// Echoed WebSocket payload (unmasked) or, in raw mode, the frame bytes.
    pub expect: Expect,
    /// `--deflate` or `--compressible`: what is sent instead of `frame`.
    pub set: Option<Arc<MessageSet>>,
    /// The set's messages as masked frames, RSV1 set with `--deflate`.
    set_frames: Vec<Vec<u8>>,
    /// Messages go out compressed, so echoes must come back compressed.
    pub deflate: bool,
    /// Largest echo payload, in one frame or reassembled, accepted: the
    /// message size plus room for a compressor that expands it.
    pub max_echo: usize,
}

fn hex_digits(seq: u64, width: usize, out: &mut [u8; MAX_SEQ_WIDTH]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out.iter_mut().take(width).enumerate() {
        let shift = 4 * (width - 1 - i);
        *slot = HEX[((seq >> shift) & 0xF) as usize];
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(n);
    }
    Some(v)
}

impl Workload {
    pub fn new(size: usize, binary: bool, raw: bool, mask_key: [u8; 4]) -> Workload {
        let seq_width = size.min(MAX_SEQ_WIDTH);
        let mut payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        payload[..seq_width].fill(b'0');
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        let mut frame = Vec::with_capacity(size + 14);
        encode_client_frame(true, opcode, mask_key, &payload, &mut frame);
        let header = frame.len() - size;
        let mut mask_xor = [0u8; MAX_SEQ_WIDTH];
        for (i, b) in mask_xor.iter_mut().enumerate() {
            *b = mask_key[i % 4];
        }
        let expect = if raw {
            Expect {
                base: frame.clone(),
                seq_at: header,
                seq_width,
                seq_xor: mask_xor,
            }
        } else {
            Expect {
                base: payload,
                seq_at: 0,
                seq_width,
                seq_xor: [0; MAX_SEQ_WIDTH],
            }
        };
        Workload {
            frame,
            mask_key,
            frame_seq_at: header,
            opcode,
            size,
            raw,
            expect,
            set: None,
            set_frames: Vec::new(),
            deflate: false,
            // Data frames may not exceed the message; leave slack for a
            // peer that pads, but never let a length field drive a huge
            // allocation.
            max_echo: size + 1024,
        }
    }

    /// A workload that sends `set`'s messages in turn, compressed (RSV1,
    /// RFC 7692 §6) when the set has their compressed form.
    pub fn with_set(set: Arc<MessageSet>, binary: bool, mask_key: [u8; 4]) -> Workload {
        let size = set.size;
        let mut w = Workload::new(size, binary, false, mask_key);
        let deflate = set.compressed.is_some();
        let payloads = set.compressed.as_ref().unwrap_or(&set.messages);
        w.set_frames = payloads
            .iter()
            .map(|p| {
                let mut f = Vec::with_capacity(p.len() + 14);
                encode_client_frame(true, w.opcode, mask_key, p, &mut f);
                if deflate {
                    f[0] |= deflate::RSV1;
                }
                f
            })
            .collect();
        if deflate {
            // A server that compresses again may do worse than we did:
            // allow DEFLATE's stored-block overhead with a wide margin.
            w.max_echo = size + size / 8 + 1024;
        }
        w.deflate = deflate;
        w.set = Some(set);
        w
    }

    /// Append the frame for `seq` to `out`.
    pub fn push_frame(&self, seq: u64, out: &mut Vec<u8>) {
        if !self.set_frames.is_empty() {
            let i = (seq % self.set_frames.len() as u64) as usize;
            out.extend_from_slice(&self.set_frames[i]);
            return;
        }
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let w = self.expect.seq_width;
        let mut digits = [0u8; MAX_SEQ_WIDTH];
        hex_digits(seq, w, &mut digits);
        let at = start + self.frame_seq_at;
        for (i, slot) in out[at..at + w].iter_mut().enumerate() {
            *slot = digits[i] ^ self.mask_key[i % 4];
        }
    }
}

/// Most distinct messages a [`MessageSet`] holds. Skips of fewer messages
/// than the set holds are told apart from an echo in order.
pub const SET_MESSAGES: usize = 64;
/// The bytes a set's messages may take together; larger messages make a
/// smaller set (each thread holds its own framed copy).
const SET_BYTES: usize = 16 << 20;
/// The level `--deflate` compresses at: zlib's default, the one most
/// clients and servers use.
pub const CLIENT_LEVEL: u32 = 6;
/// Every process and thread makes the same set.
const SEED: u64 = 0x7692_5eed;

/// The messages of `--deflate` and `--compressible`. Each starts with its
/// index in the set as hex digits (so no two are equal), followed by text
/// or binary records made from a seeded generator.
#[derive(Debug)]
pub struct MessageSet {
    pub size: usize,
    pub messages: Vec<Vec<u8>>,
    /// With `--deflate`: each message as raw DEFLATE, tail removed.
    pub compressed: Option<Vec<Vec<u8>>>,
}

impl MessageSet {
    /// Make the set and, with `deflate`, compress every message once and
    /// check that it inflates back to itself. The check is what lets an
    /// echo that comes back byte-identical count as verified without being
    /// inflated: inflation is deterministic.
    pub fn build(size: usize, binary: bool, deflate: bool) -> Result<MessageSet, String> {
        let width = size.min(2);
        let count = SET_MESSAGES
            .min(16usize.pow(width as u32))
            .min((SET_BYTES / size.max(1)).max(1));
        let messages: Vec<Vec<u8>> = (0..count)
            .map(|i| compressible(i, width, size, binary))
            .collect();
        let compressed = if deflate {
            let mut c = deflate::compressor(Compression::new(CLIENT_LEVEL));
            let mut d = deflate::inflater();
            let mut back = Vec::with_capacity(size);
            let mut all = Vec::with_capacity(count);
            for (i, m) in messages.iter().enumerate() {
                let mut packed = Vec::new();
                deflate::compress_message(&mut c, m, &mut packed)?;
                deflate::inflate_message(&mut d, &packed, m.len(), &mut back).map_err(|e| {
                    format!("start-up check: message {i} compressed to data that is {e}")
                })?;
                if back != *m {
                    return Err(format!(
                        "start-up check: message {i} does not inflate back to itself"
                    ));
                }
                all.push(packed);
            }
            Some(all)
        } else {
            None
        };
        Ok(MessageSet {
            size,
            messages,
            compressed,
        })
    }
}

/// Common English words, for text that compresses like text.
const WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
    "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there",
    "use", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about",
    "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "time",
    "water",
];

const EVENTS: [&str; 6] = [
    "created", "updated", "deleted", "viewed", "shared", "archived",
];

/// Message `index` of a set: `width` hex digits of the index, then records
/// until `size` bytes. Text is JSON lines of English words (ASCII, so the
/// cut at `size` is valid UTF-8); binary is 16-byte little-endian sensor
/// records whose fields move in small steps.
fn compressible(index: usize, width: usize, size: usize, binary: bool) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(SEED ^ (index as u64).wrapping_mul(0x9e37_79b9));
    let mut out = Vec::with_capacity(size + 256);
    let mut digits = [0u8; MAX_SEQ_WIDTH];
    hex_digits(index as u64, width, &mut digits);
    out.extend_from_slice(&digits[..width]);
    let mut ts = rng.u32(1_600_000_000..1_700_000_000);
    let mut value = rng.i32(-1000..1000);
    let mut n = 0u32;
    while out.len() < size {
        if binary {
            ts = ts.wrapping_add(rng.u32(1..=20));
            value += rng.i32(-3..=3);
            n = n.wrapping_add(1);
            let flags: u16 = if rng.u8(..) < 240 { 0 } else { rng.u16(1..4) };
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&rng.u16(0..16).to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        } else {
            let word = |rng: &mut fastrand::Rng| WORDS[rng.usize(..WORDS.len())];
            let user = format!("{}_{}", word(&mut rng), word(&mut rng));
            let text: Vec<&str> = (0..rng.usize(4..12)).map(|_| word(&mut rng)).collect();
            let line = format!(
                "{{\"id\":{},\"user\":\"{user}\",\"event\":\"{}\",\"score\":{},\"text\":\"{}.\"}}\n",
                rng.u32(10_000..100_000),
                EVENTS[rng.usize(..EVENTS.len())],
                rng.u8(..100),
                text.join(" ")
            );
            out.extend_from_slice(line.as_bytes());
        }
    }
    out.truncate(size);
    out
}

/// A thread's room for inflating echoes that did not come back as sent.
pub struct Scratch {
    inflater: Option<Decompress>,
    plain: Vec<u8>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            inflater: None,
            plain: Vec::new(),
        }
    }
}

impl Workload {
    /// Payload bytes message `seq` took on the wire, compressed.
    pub fn wire_len(&self, seq: u64) -> usize {
        match self.set.as_ref().and_then(|s| s.compressed.as_ref()) {
            Some(c) => c[(seq % c.len() as u64) as usize].len(),
            None => self.size,
        }
    }

    /// Judge a whole echo of a set workload against message `expected` and
    /// the `outstanding - 1` sent after it. `compressed` is whether its
    /// first frame had RSV1.
    ///
    /// With `--deflate`, an echo byte-identical to what was sent is
    /// verified by that alone (its inflation was checked at start-up);
    /// anything else is inflated (bounded by the message size) and the
    /// result compared with the original. An echo without RSV1 is corrupt:
    /// every message was sent compressed.
    pub fn judge_set(
        &self,
        echo: &[u8],
        compressed: bool,
        expected: u64,
        outstanding: u64,
        scratch: &mut Scratch,
    ) -> Verdict {
        let Some(set) = &self.set else {
            return Verdict::Corrupt;
        };
        if compressed != self.deflate {
            return Verdict::Corrupt;
        }
        let count = set.messages.len() as u64;
        // Earliest of the messages that may be echoed now that matches.
        let first_match = |candidates: &[Vec<u8>], echo: &[u8]| {
            (0..outstanding.min(count))
                .find(|n| candidates[((expected.wrapping_add(*n)) % count) as usize] == echo)
        };
        let (found, plain): (Option<u64>, &[u8]) = match &set.compressed {
            None => (first_match(&set.messages, echo), echo),
            Some(packed) => match first_match(packed, echo) {
                Some(n) => (Some(n), echo),
                None => {
                    let d = scratch.inflater.get_or_insert_with(deflate::inflater);
                    let limit = self.size;
                    if deflate::inflate_message(d, echo, limit, &mut scratch.plain).is_err() {
                        return Verdict::Corrupt;
                    }
                    (first_match(&set.messages, &scratch.plain), &scratch.plain)
                }
            },
        };
        match found {
            Some(0) => Verdict::Ok,
            Some(n) => Verdict::Skipped(n),
            // A message of the set, but not one that may come back now.
            None if set.messages.iter().any(|m| m == plain) => Verdict::OutOfOrder,
            None => Verdict::Corrupt,
        }
    }
}

/// How a received unit (message, or frame-sized chunk in raw mode) compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The sequence number is `n` ahead of the expected one and the rest
    /// matched: `n` messages were lost before this one.
    Skipped(u64),
    /// A sequence number already received, or one never sent.
    OutOfOrder,
    /// Wrong bytes outside the sequence number, or a wrong length.
    Corrupt,
}

/// Streaming comparison of one unit against `Expect`, fed in pieces.
#[derive(Debug, Default)]
pub struct UnitCheck {
    pub offset: usize,
    body_ok: bool,
    seen_seq: [u8; MAX_SEQ_WIDTH],
}

impl UnitCheck {
    pub fn start(&mut self) {
        self.offset = 0;
        self.body_ok = true;
    }

    /// Compare `chunk`, which holds unit bytes from `self.offset` on.
    pub fn feed(&mut self, e: &Expect, chunk: &[u8]) {
        let off = self.offset;
        let end = off + chunk.len();
        self.offset = end;
        if end > e.base.len() {
            self.body_ok = false;
            return;
        }
        let (s0, s1) = (e.seq_at, e.seq_at + e.seq_width);
        // The parts of the chunk before, inside and after the sequence hole.
        let pre_end = end.min(s0);
        if off < pre_end && chunk[..pre_end - off] != e.base[off..pre_end] {
            self.body_ok = false;
        }
        let (h0, h1) = (off.max(s0), end.min(s1));
        for i in h0..h1 {
            self.seen_seq[i - s0] = chunk[i - off] ^ e.seq_xor[i - s0];
        }
        let post = off.max(s1);
        if post < end && chunk[post - off..] != e.base[post..end] {
            self.body_ok = false;
        }
    }

    /// Judge the finished unit against the sequence number expected next,
    /// given how many messages are outstanding (sent, not yet echoed).
    pub fn finish(&self, e: &Expect, expected: u64, outstanding: u64) -> Verdict {
        if !self.body_ok || self.offset != e.base.len() {
            return Verdict::Corrupt;
        }
        let w = e.seq_width;
        if w == 0 {
            return Verdict::Ok;
        }
        let Some(got) = parse_hex(&self.seen_seq[..w]) else {
            return Verdict::Corrupt;
        };
        // Digits are the low 4*w bits of the number; compare modulo that.
        let modulus_mask = if w >= 16 {
            u64::MAX
        } else {
            (1u64 << (4 * w)) - 1
        };
        let ahead = got.wrapping_sub(expected) & modulus_mask;
        if ahead == 0 {
            Verdict::Ok
        } else if ahead < outstanding {
            Verdict::Skipped(ahead)
        } else {
            Verdict::OutOfOrder
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(w: &Workload, seq: u64) -> Vec<u8> {
        let mut f = Vec::new();
        w.push_frame(seq, &mut f);
        if w.raw {
            f
        } else {
            let mut p = f[w.frame_seq_at..].to_vec();
            ringecho_proto::mask::apply_mask(&mut p, w.mask_key, 0);
            p
        }
    }

    #[test]
    fn round_trip_in_pieces() {
        for raw in [false, true] {
            for size in [0, 5, 16, 20, 300] {
                let w = Workload::new(size, false, raw, [1, 2, 3, 4]);
                let u = unit(&w, 0x1234);
                for split in [0, 1, 3, u.len() / 2, u.len()].map(|s| s.min(u.len())) {
                    let mut c = UnitCheck::default();
                    c.start();
                    c.feed(&w.expect, &u[..split]);
                    c.feed(&w.expect, &u[split..]);
                    assert_eq!(c.finish(&w.expect, 0x1234, 1), Verdict::Ok, "{raw} {size}");
                }
            }
        }
    }

    /// Compressed bytes per message byte over a whole set.
    fn ratio(set: &MessageSet) -> f64 {
        let packed: usize = set.compressed.as_ref().unwrap().iter().map(Vec::len).sum();
        let plain: usize = set.messages.iter().map(Vec::len).sum();
        packed as f64 / plain as f64
    }

    #[test]
    fn sets_are_distinct_compressible_and_sized() {
        let text = MessageSet::build(1024, false, true).unwrap();
        assert_eq!(text.messages.len(), SET_MESSAGES);
        assert!(text.messages.iter().all(|m| m.len() == 1024));
        assert!(text.messages.iter().all(|m| std::str::from_utf8(m).is_ok()));
        let mut sorted = text.messages.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), SET_MESSAGES, "messages repeat");
        assert!(ratio(&text) < 0.45, "text {}", ratio(&text));
        let binary = MessageSet::build(4096, true, true).unwrap();
        assert!(ratio(&binary) < 0.55, "binary {}", ratio(&binary));
        // Every process makes the same set.
        assert_eq!(
            MessageSet::build(4096, true, false).unwrap().messages,
            binary.messages
        );
        // As many distinct messages as the leading hex digits can tell
        // apart, and no more than SET_BYTES holds.
        assert_eq!(MessageSet::build(0, false, true).unwrap().messages.len(), 1);
        assert_eq!(
            MessageSet::build(1, false, true).unwrap().messages.len(),
            16
        );
        assert_eq!(
            MessageSet::build(1 << 20, true, false)
                .unwrap()
                .messages
                .len(),
            16
        );
        assert!(MessageSet::build(20, false, false)
            .unwrap()
            .compressed
            .is_none());
    }

    /// A message's echo as a compressing server may frame it: the payload
    /// cut into `parts` frames, RSV1 on the first only, joined again.
    fn refragment(payload: &[u8], parts: usize, rsv1: bool) -> Vec<u8> {
        let mut r = deflate::Reassembler::new(1 << 20);
        let chunk = payload.len().div_ceil(parts).max(1);
        let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
        let mut whole = None;
        for (i, piece) in pieces.iter().enumerate() {
            let (opcode, rsv) = if i == 0 {
                (0x2, if rsv1 { deflate::RSV1 } else { 0 })
            } else {
                (0x0, 0)
            };
            assert!(deflate::rsv_allowed(rsv, opcode, true));
            if let Some(m) = r.push(i + 1 == pieces.len(), rsv, opcode, piece).unwrap() {
                assert_eq!(m.compressed, rsv1);
                whole = Some(m.payload.to_vec());
            }
        }
        whole.unwrap()
    }

    #[test]
    fn deflate_echoes_verify_verbatim_refragmented_or_recompressed() {
        let set = Arc::new(MessageSet::build(2000, true, true).unwrap());
        let w = Workload::with_set(Arc::clone(&set), true, [1, 2, 3, 4]);
        let mut scratch = Scratch::new();
        let sent = &set.compressed.as_ref().unwrap()[3];
        // The frame on the wire: RSV1 set, the compressed payload masked.
        let mut frame = Vec::new();
        w.push_frame(3, &mut frame);
        assert_eq!(frame[0], 0x80 | deflate::RSV1 | 0x2);
        assert_eq!(
            frame.len() - sent.len(),
            8,
            "header with 16-bit length and key"
        );
        let mut payload = frame[8..].to_vec();
        ringecho_proto::mask::apply_mask(&mut payload, [1, 2, 3, 4], 0);
        assert_eq!(&payload, sent);

        let mut judge = |echo: &[u8], compressed| w.judge_set(echo, compressed, 3, 1, &mut scratch);
        assert_eq!(judge(sent, true), Verdict::Ok);
        assert_eq!(judge(&refragment(sent, 5, true), true), Verdict::Ok);
        // A server that inflates and compresses again, differently: the
        // bytes differ, what they inflate to does not.
        let mut other = Vec::new();
        deflate::compress_message(
            &mut deflate::compressor(Compression::new(1)),
            &set.messages[3],
            &mut other,
        )
        .unwrap();
        assert_ne!(&other, sent);
        assert_eq!(judge(&other, true), Verdict::Ok);
        // Wrong: one bit of the compressed data, the plain message without
        // RSV1, the right bytes without RSV1, another message's bytes.
        let mut bad = sent.clone();
        bad[sent.len() / 2] ^= 0x10;
        assert_eq!(judge(&bad, true), Verdict::Corrupt);
        assert_eq!(judge(&set.messages[3], false), Verdict::Corrupt);
        assert_eq!(judge(sent, false), Verdict::Corrupt);
        assert_eq!(judge(&refragment(sent, 3, false), false), Verdict::Corrupt);
        let fifth = &set.compressed.as_ref().unwrap()[5];
        assert_eq!(judge(fifth, true), Verdict::OutOfOrder);
        // Message 5 while 3, 4 and 5 are outstanding: two were lost.
        assert_eq!(
            w.judge_set(fifth, true, 3, 3, &mut scratch),
            Verdict::Skipped(2)
        );
        assert_eq!(w.wire_len(3 + SET_MESSAGES as u64), sent.len());
    }

    #[test]
    fn compressible_echoes_are_judged_uncompressed() {
        let set = Arc::new(MessageSet::build(300, false, false).unwrap());
        let w = Workload::with_set(Arc::clone(&set), false, [9, 9, 9, 9]);
        assert!(!w.deflate);
        let mut frame = Vec::new();
        w.push_frame(1, &mut frame);
        assert_eq!(frame[0], 0x80 | 0x1, "text, no RSV1");
        let mut scratch = Scratch::new();
        let m = &set.messages[1];
        assert_eq!(w.judge_set(m, false, 1, 1, &mut scratch), Verdict::Ok);
        let mut bad = m.clone();
        bad[299] ^= 1;
        assert_eq!(
            w.judge_set(&bad, false, 1, 1, &mut scratch),
            Verdict::Corrupt
        );
    }

    #[test]
    fn detects_skip_corruption_and_order() {
        let w = Workload::new(100, true, false, [9, 8, 7, 6]);
        let check = |u: &[u8], expected, outstanding| {
            let mut c = UnitCheck::default();
            c.start();
            c.feed(&w.expect, u);
            c.finish(&w.expect, expected, outstanding)
        };
        assert_eq!(check(&unit(&w, 7), 5, 4), Verdict::Skipped(2));
        assert_eq!(check(&unit(&w, 4), 5, 4), Verdict::OutOfOrder);
        let mut bad = unit(&w, 5);
        bad[60] ^= 1;
        assert_eq!(check(&bad, 5, 4), Verdict::Corrupt);
        assert_eq!(check(&unit(&w, 5)[..99], 5, 4), Verdict::Corrupt);
    }
}
