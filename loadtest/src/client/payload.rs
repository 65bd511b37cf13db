//! What goes on the wire and what must come back.
//!
//! Every message carries the connection's sequence number as lowercase hex
//! in its first `seq_width` payload bytes; the rest is a fixed ASCII pattern,
//! so the payload is valid UTF-8 for text messages. The frame is built and
//! masked once per thread; a send copies it and patches only the masked
//! sequence bytes, so the per-message work is a copy and at most 16 XORs.

use ringecho_proto::frame::{encode_client_frame, OpCode};

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
        }
    }

    /// Append the frame for `seq` to `out`.
    pub fn push_frame(&self, seq: u64, out: &mut Vec<u8>) {
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
