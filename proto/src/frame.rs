//! Frame header codec (RFC 6455 §5.2): incremental parsing of client frame
//! headers and encoding of server frame headers into caller-owned bytes.
//!
//! Checks run as soon as the byte that decides them has arrived, so a bad
//! frame is refused at its first or second byte, before any length-driven
//! buffering happens.

use super::Error;

/// Frame opcodes (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// Opcodes 3-7 and 0xB-0xF are reserved; receiving one fails the
    /// connection (§5.2).
    pub const fn from_u8(op: u8) -> Result<OpCode, Error> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(Error::UnknownOpcode(other)),
        })
    }

    /// Control frames have the most significant opcode bit set (§5.5).
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest server (unmasked) frame header: 2 + 8 bytes of extended length.
pub const MAX_SERVER_HEADER: usize = 10;
/// Largest client (masked) frame header: 2 + 8 + 4 bytes of masking key.
pub const MAX_CLIENT_HEADER: usize = 14;

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    /// The masking key (§5.3); always present on a valid client frame.
    pub key: [u8; 4],
    pub payload_len: u64,
    /// Bytes the header occupies on the wire (6, 8 or 14).
    pub header_len: usize,
    /// The RSV bits that were set, all of them among `allowed_rsv`.
    pub rsv: u8,
}

/// Parse a client-to-server frame header (§5.2).
///
/// Returns `Ok(None)` while more bytes are needed. `allowed_rsv` holds the
/// RSV bits (0x40, 0x20, 0x10) an extension negotiated (RSV1 for
/// permessage-deflate, RFC 7692 §6); any other set RSV bit is an error.
/// Which frames may carry an allowed bit is the extension's rule, checked
/// by the caller.
pub fn parse_client_header(buf: &[u8], allowed_rsv: u8) -> Result<Option<FrameHeader>, Error> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    if b0 & 0x70 & !allowed_rsv != 0 {
        return Err(Error::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    if opcode.is_control() && !fin {
        return Err(Error::FragmentedControlFrame);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    // §5.1: the server MUST close the connection on an unmasked client frame.
    if b1 & 0x80 == 0 {
        return Err(Error::UnmaskedFrame);
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(Error::ControlFrameTooLong);
    }
    let (payload_len, key_at) = match payload_len(buf, len7) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(TopBitSet) => return Err(Error::LengthOverflow),
    };
    let Some(k) = buf.get(key_at..key_at + 4) else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        key: [k[0], k[1], k[2], k[3]],
        payload_len,
        header_len: key_at + 4,
        rsv: b0 & 0x70,
    }))
}

/// A server-to-client frame header as a client reads it (§5.2).
///
/// Nothing a client might want to judge is judged here: RSV bits, the MASK
/// bit, the opcode and a non-minimal length are reported as they arrived,
/// so a strict client, a lenient one and a fuzz oracle share one decoder
/// and each applies its own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrameHeader {
    pub fin: bool,
    /// RSV1-3 as they sit in the first byte (`0x70` mask).
    pub rsv: u8,
    /// The raw opcode nibble: reserved opcodes are the caller's to refuse.
    pub opcode: u8,
    /// A server must never mask (§5.1); a masked frame still parses, with
    /// its 4 key bytes counted in `header_len`, so the caller can refuse it.
    pub masked: bool,
    pub payload_len: u64,
    /// Bytes the header occupies on the wire (2, 4 or 10, plus 4 if masked).
    pub header_len: usize,
}

/// A server frame header that no reading can make sense of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeaderError {
    /// A 64-bit length with its most significant bit set (§5.2).
    LengthOverflow,
}

/// Parse a server-to-client frame header (§5.2), the client's side of
/// [`encode_server_header`]. Returns `Ok(None)` while more bytes are needed.
pub fn parse_server_header(buf: &[u8]) -> Result<Option<ServerFrameHeader>, ServerHeaderError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let (payload_len, len_end) = match payload_len(buf, b1 & 0x7F) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(TopBitSet) => return Err(ServerHeaderError::LengthOverflow),
    };
    let masked = b1 & 0x80 != 0;
    let header_len = len_end + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    Ok(Some(ServerFrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0F,
        masked,
        payload_len,
        header_len,
    }))
}

/// A 64-bit payload length with its most significant bit set (§5.2: "the
/// most significant bit MUST be 0").
struct TopBitSet;

/// The payload length a header's second byte (`len7`, its low 7 bits) and
/// the extended length after it give, and the offset where the length ends
/// (§5.2). `Ok(None)` while its bytes have not all arrived.
fn payload_len(buf: &[u8], len7: u8) -> Result<Option<(u64, usize)>, TopBitSet> {
    Ok(Some(match len7 {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(ext);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(TopBitSet);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    }))
}

/// Bytes an unmasked server header takes for a payload of `len` bytes.
pub const fn server_header_len(len: u64) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Encode an unmasked server frame header (§5.2) into the front of `out`;
/// returns its length. Servers never mask (§5.1).
pub fn encode_server_header(
    fin: bool,
    opcode: OpCode,
    len: u64,
    out: &mut [u8; MAX_SERVER_HEADER],
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    match server_header_len(len) {
        2 => {
            out[1] = len as u8;
            2
        }
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    }
}

/// Append a complete masked client frame to `out`. Used by tests, benches
/// and load generators that speak to the server as a client would (§5.3).
pub fn encode_client_frame(
    fin: bool,
    opcode: OpCode,
    key: [u8; 4],
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let len = payload.len() as u64;
    out.push((u8::from(fin) << 7) | opcode as u8);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    super::mask::apply_mask(&mut out[start..], key, 0);
}

/// A complete server control frame held inline: no allocation to answer a
/// ping or to close.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    bytes: [u8; 2 + MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl ControlFrame {
    fn new(opcode: OpCode, parts: &[&[u8]]) -> ControlFrame {
        let mut bytes = [0u8; 2 + MAX_CONTROL_PAYLOAD];
        let mut at = 2;
        for part in parts {
            let room = bytes.len() - at;
            let n = part.len().min(room);
            bytes[at..at + n].copy_from_slice(&part[..n]);
            at += n;
        }
        bytes[0] = 0x80 | opcode as u8;
        bytes[1] = (at - 2) as u8;
        ControlFrame {
            bytes,
            len: at as u8,
        }
    }

    /// A pong echoing a ping's application data (§5.5.3). Payloads over 125
    /// bytes cannot come from a valid ping; they are cut rather than trusted.
    pub fn pong(payload: &[u8]) -> ControlFrame {
        ControlFrame::new(OpCode::Pong, &[payload])
    }

    /// A ping the server sends to probe an idle peer (§5.5.2).
    pub fn ping(payload: &[u8]) -> ControlFrame {
        ControlFrame::new(OpCode::Ping, &[payload])
    }

    /// A close frame (§5.5.1): no body when `code` is `None`, else the code
    /// and a reason cut to the 123 bytes that fit, at a UTF-8 boundary.
    pub fn close(code: Option<u16>, reason: &str) -> ControlFrame {
        match code {
            None => ControlFrame::new(OpCode::Close, &[]),
            Some(code) => {
                let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                let reason = reason.as_bytes().get(..cut).unwrap_or_default();
                ControlFrame::new(OpCode::Close, &[&code.to_be_bytes(), reason])
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlFrame")
            .field(&self.as_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(bytes: &[u8]) -> Result<Option<FrameHeader>, Error> {
        parse_client_header(bytes, 0)
    }

    fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(fin, op, [1, 2, 3, 4], payload, &mut v);
        v
    }

    #[test]
    fn parses_7_16_and_64_bit_lengths_section_5_2() {
        for (len, header_len) in [(0usize, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let f = masked(true, OpCode::Binary, &vec![0; len]);
            let h = hdr(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len, header_len);
            assert_eq!(h.key, [1, 2, 3, 4]);
            assert!(h.fin);
            assert_eq!(h.opcode, OpCode::Binary);
        }
    }

    #[test]
    fn every_strict_prefix_of_a_header_needs_more_section_5_2() {
        for len in [5usize, 300, 70000] {
            let f = masked(false, OpCode::Text, &vec![b'a'; len]);
            let h = hdr(&f).unwrap().unwrap();
            for cut in 0..h.header_len {
                assert_eq!(hdr(&f[..cut]), Ok(None), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error_section_5_1() {
        assert_eq!(hdr(&[0x81, 0x05]), Err(Error::UnmaskedFrame));
    }

    #[test]
    fn reserved_bits_without_extension_are_refused_at_the_first_byte_section_5_2() {
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(hdr(&[0x81 | rsv]), Err(Error::ReservedBits));
            // An extension that negotiated the bit would allow it.
            assert!(parse_client_header(&[0x81 | rsv, 0x80, 0, 0, 0, 0], rsv)
                .unwrap()
                .is_some());
        }
    }

    #[test]
    fn reserved_opcodes_are_refused_section_5_2() {
        for op in (3..=7).chain(0xB..=0xF) {
            assert_eq!(hdr(&[0x80 | op]), Err(Error::UnknownOpcode(op)));
        }
    }

    #[test]
    fn fragmented_control_frame_is_refused_section_5_5() {
        for op in [0x8, 0x9, 0xA] {
            assert_eq!(hdr(&[op]), Err(Error::FragmentedControlFrame));
        }
    }

    #[test]
    fn control_frame_over_125_bytes_is_refused_at_the_second_byte_section_5_5() {
        assert_eq!(hdr(&[0x89, 0x80 | 126]), Err(Error::ControlFrameTooLong));
        assert_eq!(hdr(&[0x88, 0x80 | 127]), Err(Error::ControlFrameTooLong));
        assert!(hdr(&masked(true, OpCode::Ping, &[7; 125]))
            .unwrap()
            .is_some());
    }

    #[test]
    fn sixty_four_bit_length_with_top_bit_set_is_refused_section_5_2() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(hdr(&f), Err(Error::LengthOverflow));
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        assert_eq!(hdr(&f).unwrap().unwrap().payload_len, u64::MAX >> 1);
    }

    #[test]
    fn server_headers_are_unmasked_and_minimal_section_5_2() {
        let mut out = [0u8; MAX_SERVER_HEADER];
        assert_eq!(encode_server_header(true, OpCode::Text, 5, &mut out), 2);
        assert_eq!(&out[..2], &[0x81, 5]);
        assert_eq!(
            encode_server_header(false, OpCode::Binary, 126, &mut out),
            4
        );
        assert_eq!(&out[..4], &[0x02, 126, 0, 126]);
        assert_eq!(
            encode_server_header(true, OpCode::Continuation, 65536, &mut out),
            10
        );
        assert_eq!(&out[..10], &[0x80, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            assert_eq!(
                server_header_len(len),
                encode_server_header(true, OpCode::Binary, len, &mut out)
            );
            // The in-place echo relies on this: a server header is exactly 4 bytes
            // (the masking key) shorter than the client header for the same length.
            let mut c = Vec::new();
            encode_client_frame(true, OpCode::Binary, [0; 4], &[], &mut c);
            let client = match len {
                0..=125 => 6,
                126..=65535 => 8,
                _ => 14,
            };
            assert_eq!(server_header_len(len) + 4, client);
        }
    }

    fn server_frame(fin: bool, op: OpCode, len: u64) -> Vec<u8> {
        let mut out = [0u8; MAX_SERVER_HEADER];
        let n = encode_server_header(fin, op, len, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn server_headers_parse_at_7_16_and_64_bit_lengths_section_5_2() {
        for (len, header_len) in [(0u64, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = server_frame(true, OpCode::Text, len);
            let h = parse_server_header(&f).unwrap().unwrap();
            assert_eq!(
                h,
                ServerFrameHeader {
                    fin: true,
                    rsv: 0,
                    opcode: OpCode::Text as u8,
                    masked: false,
                    payload_len: len,
                    header_len,
                }
            );
        }
        let h = parse_server_header(&server_frame(false, OpCode::Continuation, 1 << 40));
        let h = h.unwrap().unwrap();
        assert!(!h.fin);
        assert_eq!((h.opcode, h.payload_len), (0, 1 << 40));
    }

    #[test]
    fn every_strict_prefix_of_a_server_header_needs_more_section_5_2() {
        for len in [5u64, 300, 70000] {
            let mut f = server_frame(true, OpCode::Binary, len);
            f.extend_from_slice(&[0xAB; 3]);
            let h = parse_server_header(&f).unwrap().unwrap();
            for cut in 0..h.header_len {
                assert_eq!(
                    parse_server_header(&f[..cut]),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
            // Payload bytes after the header change nothing.
            assert_eq!(parse_server_header(&f[..h.header_len]), Ok(Some(h)));
        }
    }

    #[test]
    fn a_masked_server_frame_is_reported_with_its_key_section_5_1() {
        let mut c = Vec::new();
        encode_client_frame(true, OpCode::Binary, [9; 4], &[0; 300], &mut c);
        for cut in 0..8 {
            assert_eq!(parse_server_header(&c[..cut]), Ok(None), "cut {cut}");
        }
        let h = parse_server_header(&c).unwrap().unwrap();
        assert!(h.masked);
        assert_eq!((h.payload_len, h.header_len), (300, 8));
    }

    #[test]
    fn reserved_bits_and_opcodes_are_reported_not_judged_section_5_2() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let h = parse_server_header(&[0x81 | rsv, 0]).unwrap().unwrap();
            assert_eq!((h.rsv, h.opcode), (rsv, 1));
        }
        for op in 0..=0xF {
            let h = parse_server_header(&[op, 3]).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.payload_len), (false, op, 3));
        }
    }

    #[test]
    fn server_header_64_bit_length_with_top_bit_set_is_refused_section_5_2() {
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(
            parse_server_header(&f),
            Err(ServerHeaderError::LengthOverflow)
        );
        // A non-minimal length is reported, not refused: minimality is the
        // caller's rule to apply.
        let f = [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 5];
        let h = parse_server_header(&f).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len), (5, 10));
    }

    #[test]
    fn server_header_parsing_never_panics() {
        // Every first two bytes, followed by a spread of tails and cuts.
        let tails: [&[u8]; 3] = [
            &[0xFF; 12],
            &[0; 12],
            &[0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
        ];
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                for tail in tails {
                    let mut f = vec![b0, b1];
                    f.extend_from_slice(tail);
                    for cut in 0..=f.len() {
                        if let Ok(Some(h)) = parse_server_header(&f[..cut]) {
                            assert!(h.header_len <= cut && h.header_len <= MAX_CLIENT_HEADER);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn control_frames_are_built_inline_section_5_5() {
        assert_eq!(ControlFrame::pong(b"hi").as_bytes(), &[0x8A, 2, b'h', b'i']);
        assert_eq!(ControlFrame::close(None, "ignored").as_bytes(), &[0x88, 0]);
        assert_eq!(
            ControlFrame::close(Some(1001), "bye").as_bytes(),
            &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
        let long = "é".repeat(100);
        let c = ControlFrame::close(Some(1000), &long);
        assert!(c.as_bytes().len() <= 127);
        assert!(
            std::str::from_utf8(&c.as_bytes()[4..]).is_ok(),
            "reason cut at a char boundary"
        );
    }
}
