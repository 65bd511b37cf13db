//! The per-connection message and close state machine (RFC 6455 §5.4, §5.5,
//! §7), shaped for an in-place echo.
//!
//! The caller owns a buffer of bytes read from the peer and calls
//! [`Session::step`] repeatedly. Each step consumes input and says what to
//! send. Payload is unmasked and validated where it lies as soon as it
//! arrives (so invalid UTF-8 fails fast, §8.1), and the session writes each
//! server header into the buffer just before the payload it heads (a server
//! header is 4 bytes shorter than the client's, §5.2): the echo is a slice of
//! the read buffer and no payload byte is copied.
//!
//! A client frame of at most [`Config::echo_whole_up_to`] payload bytes is
//! echoed as exactly one server frame with the client's opcode and FIN, even
//! when it arrives over several reads: its pieces come out as
//! [`Event::EchoPart`]s that the caller sends only once the last one is in.
//! A larger frame is streamed: every piece that arrives becomes one complete
//! server frame of its own (a valid re-fragmentation, §5.4), so memory per
//! connection does not grow with frame size. Either way every server frame
//! is complete before a control frame may be slotted in after it.

use std::num::NonZeroU16;
use std::ops::Range;

use super::close::parse_close_payload;
use super::deflate::{Agreement, Inflater};
use super::error::close_code;
use super::frame::{
    encode_server_header, parse_client_header, server_header_len, ControlFrame, OpCode,
    MAX_SERVER_HEADER,
};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;
use super::Error;

/// The first byte's RSV1 bit: a compressed message (RFC 7692 §6).
const RSV1: u8 = 0x40;

/// Default limit on a whole message, across its fragments.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 16 * 1024 * 1024;

/// Bytes a caller should leave free before the first new byte when the
/// session [`needs_headroom`](Session::needs_headroom), so the header of a
/// streamed frame's next piece can be written in place.
pub const HEADROOM: usize = MAX_SERVER_HEADER;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest message accepted, summed over fragments (§7.4.1: 1009 beyond).
    pub max_message_size: u64,
    /// Frames with at most this many payload bytes are echoed whole, as one
    /// server frame; larger ones are streamed piece by piece. The caller
    /// must be able to hold this much of one frame.
    pub echo_whole_up_to: u64,
}

/// Default for [`Config::echo_whole_up_to`]: a frame that fits a 64 KiB
/// read buffer with its largest header.
pub const DEFAULT_ECHO_WHOLE_UP_TO: u64 = 64 * 1024 - super::frame::MAX_CLIENT_HEADER as u64;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            echo_whole_up_to: DEFAULT_ECHO_WHOLE_UP_TO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between frames: the next bytes are a frame header.
    Header,
    /// Inside a data frame's payload.
    Payload {
        key: [u8; 4],
        remaining: u64,
        /// Payload bytes of this frame already handled: the mask phase.
        offset: u64,
        fin: bool,
        /// False once we have sent a close: payload is skipped, not echoed.
        echo: bool,
        /// The frame is echoed whole: its server header is already written
        /// and its pieces are [`Event::EchoPart`]s.
        whole: bool,
    },
    /// The peer's close arrived or the connection failed: input is ignored.
    Closed,
}

/// What the caller should do after a [`Session::step`].
#[derive(Debug)]
pub enum Event {
    /// Nothing more can be done with the input: read more, keeping the bytes
    /// from `Step::next` on (a partial header or control frame).
    NeedMore,
    /// Input consumed, nothing to send; call `step` again.
    Nothing,
    /// Send `buf[frame]`: a complete server frame, header written in place.
    Echo { frame: Range<usize> },
    /// `buf[frame]` is a piece of a server frame echoed whole (the first
    /// piece starts with its header). Pieces come in order and are contiguous
    /// within one buffer; send them together once the `last` one is in,
    /// never before: a control frame must not wait for a client that stops
    /// halfway through a frame. Nothing but more of this frame's payload can
    /// come until `last`.
    EchoPart { frame: Range<usize>, last: bool },
    /// Send `header` then `buf[payload]`: the caller left no headroom, so the
    /// header could not be written in place.
    EchoDetached {
        header: [u8; MAX_SERVER_HEADER],
        header_len: usize,
        payload: Range<usize>,
    },
    /// Send this pong, ahead of queued echo data (§5.5.3).
    Pong(ControlFrame),
    /// The peer sent a close (§5.5.1). Send `reply` if there is one (after
    /// the echo already queued, so every message the peer sent before its
    /// close is echoed), then close the connection.
    Closed { reply: Option<ControlFrame> },
}

/// One step's result: input before `next` has been consumed.
#[derive(Debug)]
pub struct Step {
    pub next: usize,
    pub event: Event,
}

/// Protocol state of one connection after the handshake.
#[derive(Debug)]
pub struct Session {
    config: Config,
    phase: Phase,
    /// The client message in progress, from its first frame to its FIN.
    message: Option<Kind>,
    message_len: u64,
    /// We sent a non-FIN echo frame, so the next echo is a continuation.
    echo_open: bool,
    utf8: Utf8Validator,
    close_sent: bool,
    /// The code of the close frame handed out to be sent (1005 for one
    /// without a code), once there is one.
    /// (Close codes are never 0, so `NonZeroU16` keeps these 2 bytes
    /// each: the engine's size is most of an idle connection's memory.)
    sent_code: Option<NonZeroU16>,
    /// The code of the peer's close frame (1005 for none, §7.1.5).
    received_code: Option<NonZeroU16>,
    /// Messages whose echo is complete.
    messages: u64,
    /// permessage-deflate was agreed (RFC 7692): RSV1 marks a compressed
    /// message, echoed as it came.
    deflate: bool,
    /// The client's compressed messages may refer back to earlier ones
    /// (no client_no_context_takeover), so the inflater stays between them.
    keep_context: bool,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// Held while a compressed message is in progress, or for the whole
    /// connection when context is kept; otherwise back in the thread's pool.
    inflater: Option<Box<Inflater>>,
}

impl Session {
    pub fn new(config: Config) -> Session {
        Session {
            config,
            phase: Phase::Header,
            message: None,
            message_len: 0,
            echo_open: false,
            utf8: Utf8Validator::new(),
            close_sent: false,
            sent_code: None,
            received_code: None,
            messages: 0,
            deflate: false,
            keep_context: false,
            compressed: false,
            inflater: None,
        }
    }

    /// permessage-deflate was agreed in the handshake (RFC 7692 §5): from
    /// now on RSV1 marks a compressed message.
    pub fn enable_deflate(&mut self, agreed: &Agreement) {
        self.deflate = true;
        self.keep_context = agreed.client_keeps_context();
    }

    /// Whether permessage-deflate was agreed.
    pub fn deflate_agreed(&self) -> bool {
        self.deflate
    }

    /// Whether this connection holds an inflater now (between messages only
    /// when context is kept): for memory accounting.
    pub fn holds_inflater(&self) -> bool {
        self.inflater.is_some()
    }

    /// Close codes so far: the one sent and the peer's (1005 where a
    /// close frame carried none, as §7.1.5 reports it).
    pub fn close_codes(&self) -> (Option<u16>, Option<u16>) {
        (
            self.sent_code.map(NonZeroU16::get),
            self.received_code.map(NonZeroU16::get),
        )
    }

    /// Client messages echoed whole so far (their last byte is queued).
    pub fn messages_echoed(&self) -> u64 {
        self.messages
    }

    /// True when the next input byte continues a streamed frame's payload;
    /// the caller then leaves [`HEADROOM`] scratch bytes before it.
    pub fn needs_headroom(&self) -> bool {
        matches!(self.phase, Phase::Payload { whole: false, .. })
    }

    /// Payload bytes still to come of a frame being echoed whole: the caller
    /// keeps that much room after the pieces it holds.
    pub fn whole_frame_remaining(&self) -> Option<u64> {
        match self.phase {
            Phase::Payload {
                whole: true,
                remaining,
                echo: true,
                ..
            } if !self.close_sent => Some(remaining),
            _ => None,
        }
    }

    /// True once the peer's close has been received or the session failed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True once a close frame has been handed out to be sent.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Start a server-initiated close (§7.1.2; shutdown and idle both use
    /// 1001). Returns the frame to send, or `None` if a close was already
    /// sent. From here no data is echoed (§5.5.1), not even the rest of a
    /// frame whose first pieces were: the caller drops unsent pieces.
    pub fn initiate_close(&mut self, code: u16, reason: &str) -> Option<ControlFrame> {
        if self.close_sent {
            return None;
        }
        self.close_sent = true;
        self.sent_code = NonZeroU16::new(code);
        Some(ControlFrame::close(Some(code), reason))
    }

    /// Fail the connection for `err` (§7.1.7): the close frame to send, if
    /// none was sent yet. Input is ignored from here on.
    pub fn fail(&mut self, err: Error) -> Option<ControlFrame> {
        self.phase = Phase::Closed;
        let code = err.close_code();
        self.initiate_close(code, err.reason())
    }

    /// Process input at `buf[pos..]`.
    ///
    /// `buf[..pos]` is the caller's scratch: when a frame's payload continues
    /// from an earlier call, the session writes that chunk's header into the
    /// bytes just before `pos`. On `Err`, the session is failed: pass the
    /// error to [`Session::fail`] for the close frame.
    pub fn step(&mut self, buf: &mut [u8], pos: usize) -> Result<Step, Error> {
        let result = self.step_inner(buf, pos);
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    fn step_inner(&mut self, buf: &mut [u8], pos: usize) -> Result<Step, Error> {
        let need_more = |next| {
            Ok(Step {
                next,
                event: Event::NeedMore,
            })
        };
        let Some(input) = buf.get(pos..) else {
            return need_more(buf.len());
        };
        if input.is_empty() {
            return need_more(pos);
        }
        match self.phase {
            Phase::Closed => need_more(buf.len()),
            // A whole-echoed frame's next piece starts right at `pos`: its
            // header went out with the first piece.
            Phase::Payload { whole, .. } => self.payload(buf, pos, whole.then_some(pos)),
            Phase::Header => {
                let allowed_rsv = if self.deflate { RSV1 } else { 0 };
                let Some(h) = parse_client_header(input, allowed_rsv)? else {
                    return need_more(pos);
                };
                let rsv1 = h.rsv & RSV1 != 0;
                // RFC 7692 §6: RSV1 belongs on a data message's first
                // frame only.
                if rsv1 && (h.opcode.is_control() || matches!(h.opcode, OpCode::Continuation)) {
                    return Err(Error::MisplacedCompressedBit);
                }
                let payload_start = pos + h.header_len;
                if h.opcode.is_control() {
                    // At most 125 bytes (checked by the header parser), so
                    // control frames are handled whole.
                    let end = payload_start + h.payload_len as usize;
                    let Some(payload) = buf.get_mut(payload_start..end) else {
                        return need_more(pos);
                    };
                    apply_mask(payload, h.key, 0);
                    let event = self.control(h.opcode, payload)?;
                    return Ok(Step { next: end, event });
                }
                let kind = match (h.opcode, self.message) {
                    (OpCode::Continuation, Some(kind)) => kind,
                    (OpCode::Continuation, None) => return Err(Error::UnexpectedContinuation),
                    (_, Some(_)) => return Err(Error::ExpectedContinuation),
                    (OpCode::Text, None) => Kind::Text,
                    (_, None) => Kind::Binary,
                };
                // §7.4.1 / 1009: the limit is on the whole message, checked at
                // the header so no byte of an oversize frame is buffered.
                let total = self.message_len.saturating_add(h.payload_len);
                if total > self.config.max_message_size {
                    return Err(Error::MessageTooBig);
                }
                let whole = h.payload_len <= self.config.echo_whole_up_to;
                if !whole && h.payload_len > 0 && payload_start == buf.len() {
                    // Keep the header unconsumed: when payload arrives it
                    // gives the echo header room in place.
                    return need_more(pos);
                }
                if self.message.is_none() {
                    self.compressed = rsv1;
                    if rsv1 && self.inflater.is_none() {
                        self.inflater = Some(Inflater::take());
                    }
                }
                self.message = Some(kind);
                self.message_len = total;
                let echo = !self.close_sent;
                self.phase = Phase::Payload {
                    key: h.key,
                    remaining: h.payload_len,
                    offset: 0,
                    fin: h.fin,
                    echo,
                    whole,
                };
                if whole && echo && payload_start + h.payload_len as usize > buf.len() {
                    // The frame is not all here: write its one header now,
                    // in the client header's place, and hold its pieces.
                    let opcode = self.echo_opcode(kind);
                    self.echo_open = !h.fin;
                    let mut header = [0u8; MAX_SERVER_HEADER];
                    let len = encode_server_header(h.fin, opcode, h.payload_len, &mut header);
                    header[0] |= self.echo_rsv(opcode);
                    let at = payload_start - len;
                    buf[at..payload_start].copy_from_slice(&header[..len]);
                    return self.payload(buf, payload_start, Some(at));
                }
                self.payload(buf, payload_start, None)
            }
        }
    }

    /// Handle the payload bytes available at `buf[start..]` for the frame in
    /// progress; an empty frame is handled (and echoed) here too. `part_at`
    /// is set for a frame echoed whole but not all here: where its piece
    /// starts (at its header, for the first piece).
    fn payload(
        &mut self,
        buf: &mut [u8],
        start: usize,
        part_at: Option<usize>,
    ) -> Result<Step, Error> {
        let Phase::Payload {
            key,
            remaining,
            offset,
            fin,
            echo,
            whole,
        } = self.phase
        else {
            return Ok(Step {
                next: start,
                event: Event::Nothing,
            });
        };
        let kind = self.message.unwrap_or(Kind::Binary);
        let available = buf.len().saturating_sub(start) as u64;
        let n = remaining.min(available) as usize;
        let end = start + n;
        let frame_done = n as u64 == remaining;
        let message_done = frame_done && fin;
        self.phase = if frame_done {
            Phase::Header
        } else {
            Phase::Payload {
                key,
                remaining: remaining - n as u64,
                offset: offset + n as u64,
                fin,
                echo,
                whole,
            }
        };
        if message_done {
            self.message = None;
            self.message_len = 0;
        }
        // §5.5.1: after our close no data goes out, even when the close was
        // decided while this frame's payload was still arriving.
        if !echo || self.close_sent {
            return Ok(Step {
                next: end,
                event: Event::Nothing,
            });
        }
        let chunk = buf.get_mut(start..end).unwrap_or_default();
        match (kind, &mut self.inflater) {
            // RFC 7692 §6.2, §7.2.2: what is checked of a compressed
            // message is its decompressed data; the payload itself goes
            // back untouched.
            (_, Some(inflater)) if self.compressed => {
                apply_mask(chunk, key, offset);
                let limit = self.config.max_message_size;
                let text = (kind == Kind::Text).then_some(&mut self.utf8);
                inflater.feed(chunk, text, limit)?;
                if message_done {
                    let text = (kind == Kind::Text).then_some(&mut self.utf8);
                    inflater.finish_message(text, limit)?;
                    if kind == Kind::Text {
                        self.utf8.finish()?;
                    }
                    if !self.keep_context {
                        if let Some(i) = self.inflater.take() {
                            i.give_back();
                        }
                    }
                }
            }
            (Kind::Text, _) => {
                self.utf8.feed_masked(chunk, key, offset)?;
                if message_done {
                    self.utf8.finish()?;
                }
            }
            (Kind::Binary, _) => apply_mask(chunk, key, offset),
        }
        if message_done {
            self.messages += 1;
        }
        if let Some(from) = part_at {
            return Ok(Step {
                next: end,
                event: Event::EchoPart {
                    frame: from..end,
                    last: frame_done,
                },
            });
        }
        let opcode = self.echo_opcode(kind);
        // A whole frame keeps the client's FIN; a streamed piece ends the
        // echo's message only with the client's last byte of it.
        let echo_fin = if whole { fin } else { message_done };
        self.echo_open = !echo_fin;
        let mut header = [0u8; MAX_SERVER_HEADER];
        let header_len = encode_server_header(echo_fin, opcode, n as u64, &mut header);
        header[0] |= self.echo_rsv(opcode);
        let event = match start.checked_sub(header_len) {
            Some(at) => {
                buf[at..start].copy_from_slice(&header[..header_len]);
                Event::Echo { frame: at..end }
            }
            None => Event::EchoDetached {
                header,
                header_len,
                payload: start..end,
            },
        };
        debug_assert_eq!(header_len, server_header_len(n as u64));
        Ok(Step { next: end, event })
    }

    /// RFC 7692 §6: the echo of a compressed message is compressed, so
    /// its first frame carries RSV1; no other frame does.
    fn echo_rsv(&self, opcode: OpCode) -> u8 {
        if self.compressed && !matches!(opcode, OpCode::Continuation) {
            RSV1
        } else {
            0
        }
    }

    fn echo_opcode(&self, kind: Kind) -> OpCode {
        match (self.echo_open, kind) {
            (true, _) => OpCode::Continuation,
            (false, Kind::Text) => OpCode::Text,
            (false, Kind::Binary) => OpCode::Binary,
        }
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<Event, Error> {
        match opcode {
            OpCode::Ping if !self.close_sent => Ok(Event::Pong(ControlFrame::pong(payload))),
            OpCode::Close => {
                let code = parse_close_payload(payload)?;
                self.phase = Phase::Closed;
                self.received_code = NonZeroU16::new(code.unwrap_or(close_code::NO_STATUS));
                // §5.5.1: answer a close we did not start, echoing its code.
                let reply = if self.close_sent {
                    None
                } else {
                    self.close_sent = true;
                    self.sent_code = NonZeroU16::new(code.unwrap_or(close_code::NO_STATUS));
                    Some(ControlFrame::close(code, ""))
                };
                Ok(Event::Closed { reply })
            }
            // Unsolicited pongs are allowed and need no answer (§5.5.3); after
            // our close we send nothing more, pongs included.
            _ => Ok(Event::Nothing),
        }
    }
}

#[cfg(test)]
mod deflate_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_client_frame;
    use crate::fuzz_entry::{decode_server, Seen};
    use crate::testkit::StreamHarness;
    use proptest::prelude::*;

    /// Decode server frames as a strict client would, with the fuzz
    /// oracle's decoder (§5.1, §5.2, §5.4, §5.5).
    fn decode(bytes: &[u8]) -> Vec<Seen> {
        let mut seen = decode_server(bytes, None);
        // A failed connection may leave its echo open; the close says why.
        if let Some(Seen::Open(..)) = seen.last() {
            seen.pop();
            assert!(matches!(seen.last(), Some(Seen::Close(Some(c))) if *c != 1000));
        }
        seen
    }

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(fin, op, [0x37, 0xFA, 0x21, 0x3D], payload, &mut v);
        v
    }

    fn run(input: &[u8]) -> (Vec<Seen>, Option<Error>) {
        run_split(input, &[input.len()])
    }

    /// Feed `input` in pieces of the given sizes (cycled).
    fn run_split(input: &[u8], sizes: &[usize]) -> (Vec<Seen>, Option<Error>) {
        // Small enough that generated frames take both paths: echoed whole
        // and streamed.
        let mut h = StreamHarness::new(Config {
            max_message_size: 1 << 20,
            echo_whole_up_to: 1000,
        });
        let mut rest = input;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].clamp(1, rest.len());
            let _ = h.feed(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        (decode(&h.out), h.error)
    }

    #[test]
    fn text_and_binary_are_echoed_with_their_opcode_at_every_length_class_section_5_6() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let bin: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut input = frame(true, OpCode::Text, &text);
            input.extend(frame(true, OpCode::Binary, &bin));
            assert_eq!(
                run(&input),
                (vec![Seen::Text(text), Seen::Binary(bin)], None),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_whole_frame_is_echoed_in_place_as_one_slice_of_the_input() {
        let mut s = Session::new(Config::default());
        let mut input = frame(true, OpCode::Binary, &[9; 300]);
        let step = s.step(&mut input, 0).unwrap();
        match step.event {
            // 8-byte client header: the 4-byte server header sits right after
            // the mask key's first 4 bytes, ending where the payload starts.
            Event::Echo { frame } => assert_eq!(frame, 4..308),
            other => panic!("{other:?}"),
        }
        assert_eq!(&input[4..8], &[0x82, 126, 1, 44]);
        assert!(input[8..].iter().all(|&b| b == 9), "unmasked in place");
    }

    #[test]
    fn fragmented_text_with_a_code_point_split_across_fragments_is_echoed_section_5_4() {
        let text = "ab€cd𝄞e".as_bytes();
        // Split inside € (3 bytes) and inside 𝄞 (4 bytes).
        let mut input = frame(false, OpCode::Text, &text[..3]);
        input.extend(frame(false, OpCode::Continuation, &text[3..9]));
        input.extend(frame(true, OpCode::Continuation, &text[9..]));
        assert_eq!(run(&input), (vec![Seen::Text(text.to_vec())], None));
    }

    #[test]
    fn control_frames_may_interleave_with_fragments_section_5_4() {
        let mut input = frame(false, OpCode::Text, b"he");
        input.extend(frame(true, OpCode::Ping, b"p1"));
        input.extend(frame(true, OpCode::Pong, b"unsolicited"));
        input.extend(frame(true, OpCode::Continuation, b"llo"));
        let (seen, err) = run(&input);
        assert_eq!(err, None);
        assert_eq!(
            seen,
            vec![Seen::Pong(b"p1".to_vec()), Seen::Text(b"hello".to_vec())]
        );
    }

    #[test]
    fn ping_gets_a_pong_with_the_same_payload_section_5_5_2() {
        for len in [0usize, 1, 125] {
            let payload: Vec<u8> = (0..len as u8).collect();
            assert_eq!(
                run(&frame(true, OpCode::Ping, &payload)),
                (vec![Seen::Pong(payload)], None)
            );
        }
    }

    #[test]
    fn continuation_without_a_message_is_a_protocol_error_section_5_4() {
        let (seen, err) = run(&frame(true, OpCode::Continuation, b"x"));
        assert_eq!(err, Some(Error::UnexpectedContinuation));
        assert_eq!(seen, vec![Seen::Close(Some(1002))]);
    }

    #[test]
    fn new_data_frame_inside_a_fragmented_message_is_a_protocol_error_section_5_4() {
        let mut input = frame(false, OpCode::Text, b"a");
        input.extend(frame(true, OpCode::Binary, b"b"));
        let mut h = StreamHarness::new(Config::default());
        assert_eq!(h.feed(&input), Err(Error::ExpectedContinuation));
        let close = ControlFrame::close(Some(1002), Error::ExpectedContinuation.reason());
        assert!(h.out.ends_with(close.as_bytes()), "{:?}", h.out);
        assert_eq!(&close.as_bytes()[2..4], &1002u16.to_be_bytes());
    }

    #[test]
    fn valid_close_codes_are_echoed_and_invalid_ones_get_1002_section_7_4() {
        for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(b"bye");
            assert_eq!(
                run(&frame(true, OpCode::Close, &p)),
                (vec![Seen::Close(Some(code))], None)
            );
        }
        assert_eq!(
            run(&frame(true, OpCode::Close, &[])),
            (vec![Seen::Close(None)], None)
        );
        for code in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000] {
            let (seen, err) = run(&frame(true, OpCode::Close, &code.to_be_bytes()));
            assert_eq!(err, Some(Error::InvalidCloseCode(code)));
            assert_eq!(seen, vec![Seen::Close(Some(1002))]);
        }
        let (seen, err) = run(&frame(true, OpCode::Close, &[3]));
        assert_eq!(
            (seen, err),
            (vec![Seen::Close(Some(1002))], Some(Error::CloseTooShort))
        );
    }

    #[test]
    fn invalid_utf8_in_text_or_close_reason_is_1007_section_8_1() {
        let (seen, err) = run(&frame(true, OpCode::Text, b"ok\xFFok"));
        assert_eq!(
            (seen, err),
            (vec![Seen::Close(Some(1007))], Some(Error::InvalidUtf8))
        );
        let (seen, err) = run(&frame(true, OpCode::Close, b"\x03\xE8\xC3"));
        assert_eq!(
            (seen, err),
            (vec![Seen::Close(Some(1007))], Some(Error::InvalidUtf8))
        );
        // Truncated code point at the end of the message.
        let (_, err) = run(&frame(true, OpCode::Text, "é".as_bytes().get(..1).unwrap()));
        assert_eq!(err, Some(Error::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_fails_fast_before_the_frame_ends_section_8_1() {
        let mut payload = vec![b'a'; 1000];
        payload[10] = 0xFF;
        let input = frame(true, OpCode::Text, &payload);
        let mut h = StreamHarness::new(Config::default());
        // Only the header and the first 20 payload bytes have arrived.
        assert_eq!(h.feed(&input[..8 + 20]), Err(Error::InvalidUtf8));
        assert_eq!(decode(&h.out), vec![Seen::Close(Some(1007))]);
    }

    #[test]
    fn oversize_frame_is_refused_at_its_header_with_1009_section_7_4_1() {
        let mut s = Session::new(Config {
            max_message_size: 1000,
            ..Config::default()
        });
        let mut hdr = vec![0x82, 0x80 | 127];
        hdr.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        hdr.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(s.step(&mut hdr, 0).unwrap_err(), Error::MessageTooBig);
        assert_eq!(
            s.fail(Error::MessageTooBig).unwrap().as_bytes()[2..4],
            1009u16.to_be_bytes()
        );
    }

    #[test]
    fn fragmented_message_growing_past_the_limit_is_1009_section_7_4_1() {
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend(frame(
                false,
                OpCode::Binary.min_for_test(input.is_empty()),
                &[0; 400_000],
            ));
        }
        let (seen, err) = run(&input);
        assert_eq!(err, Some(Error::MessageTooBig));
        // The first two fragments fit and were echoed; the third is refused at its header.
        assert_eq!(seen, vec![Seen::Close(Some(1009))]);
    }

    impl OpCode {
        fn min_for_test(self, first: bool) -> OpCode {
            if first {
                self
            } else {
                OpCode::Continuation
            }
        }
    }

    #[test]
    fn after_the_peers_close_nothing_more_is_echoed_section_5_5_1() {
        let mut input = frame(true, OpCode::Text, b"before");
        input.extend(frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        input.extend(frame(true, OpCode::Text, b"after"));
        input.extend(frame(true, OpCode::Ping, b"p"));
        assert_eq!(
            run(&input),
            (
                vec![Seen::Text(b"before".to_vec()), Seen::Close(Some(1000))],
                None
            )
        );
    }

    #[test]
    fn after_a_server_close_data_is_not_echoed_and_the_peers_close_needs_no_reply_section_5_5_1() {
        let mut h = StreamHarness::new(Config::default());
        let close = h.session.initiate_close(1001, "going away").unwrap();
        assert_eq!(&close.as_bytes()[2..4], &1001u16.to_be_bytes());
        assert!(h.session.initiate_close(1001, "again").is_none());
        let mut input = frame(true, OpCode::Text, b"late");
        input.extend(frame(true, OpCode::Ping, b"p"));
        input.extend(frame(true, OpCode::Close, &1001u16.to_be_bytes()));
        h.feed(&input).unwrap();
        assert!(h.out.is_empty(), "{:?}", h.out);
        assert!(h.closed);
    }

    #[test]
    fn unmasked_frame_gets_1002_section_5_1() {
        let (seen, err) = run(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(
            (seen, err),
            (vec![Seen::Close(Some(1002))], Some(Error::UnmaskedFrame))
        );
    }

    #[test]
    fn a_large_frame_split_across_reads_is_streamed_as_complete_fragments_section_5_4() {
        let payload: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let input = frame(true, OpCode::Text, &payload);
        let mut h = StreamHarness::new(Config {
            echo_whole_up_to: 4096,
            ..Config::default()
        });
        for piece in input.chunks(777) {
            h.feed(piece).unwrap();
            // Every server frame so far was complete: a control frame could
            // go next, and the next piece needs room for its own header.
            assert!(h.session.whole_frame_remaining().is_none());
        }
        assert_eq!(decode(&h.out), vec![Seen::Text(payload)]);
        assert!(
            h.out.len() > 5000 + 4,
            "re-fragmented: one header per piece"
        );
    }

    #[test]
    fn a_frame_within_the_whole_limit_is_echoed_as_the_client_framed_it() {
        // Two fragments of one text message, each split across many reads:
        // the echo is byte for byte the client's frames minus their masks.
        let payload: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = frame(false, OpCode::Text, &payload[..3000]);
        input.extend(frame(true, OpCode::Continuation, &payload[3000..]));
        let mut h = StreamHarness::new(Config::default());
        let mut parts = 0;
        for piece in input.chunks(777) {
            h.feed(piece).unwrap();
            parts += usize::from(h.session.whole_frame_remaining().is_some());
        }
        assert!(parts > 3, "the frames were held across reads");
        let mut expected = vec![0x01, 126];
        expected.extend_from_slice(&3000u16.to_be_bytes());
        expected.extend_from_slice(&payload[..3000]);
        expected.extend_from_slice(&[0x80, 126]);
        expected.extend_from_slice(&2000u16.to_be_bytes());
        expected.extend_from_slice(&payload[3000..]);
        assert_eq!(h.out, expected);
    }

    #[test]
    fn a_close_decided_mid_frame_stops_the_rest_of_that_frame_section_5_5_1() {
        for whole_limit in [0, 1 << 20] {
            let payload = vec![7u8; 4000];
            let input = frame(true, OpCode::Binary, &payload);
            let mut h = StreamHarness::new(Config {
                echo_whole_up_to: whole_limit,
                ..Config::default()
            });
            h.feed(&input[..2000]).unwrap();
            let before = h.out.len();
            assert!(h.session.initiate_close(1001, "going away").is_some());
            assert!(h.session.whole_frame_remaining().is_none());
            h.feed(&input[2000..]).unwrap();
            assert_eq!(h.out.len(), before, "data after our close ({whole_limit})");
            // The session still parses what follows: the peer's close ends it.
            h.feed(&frame(true, OpCode::Close, &1001u16.to_be_bytes()))
                .unwrap();
            assert!(h.closed);
        }
    }

    #[derive(Debug, Clone)]
    enum Msg {
        Text(String, usize),
        Binary(Vec<u8>, usize),
        Ping(Vec<u8>),
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (".{0,300}", 1usize..4).prop_map(|(s, f)| Msg::Text(s, f)),
            (proptest::collection::vec(any::<u8>(), 0..3000), 1usize..4)
                .prop_map(|(b, f)| Msg::Binary(b, f)),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
        ]
    }

    proptest! {
        /// Whatever the fragmentation on the way in and however the stream is
        /// cut into reads, the client gets back exactly its messages.
        #[test]
        fn any_messages_split_anywhere_are_echoed_exactly(
            msgs in proptest::collection::vec(msg(), 1..8),
            sizes in proptest::collection::vec(1usize..700, 1..6),
        ) {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for m in &msgs {
                let (op, data, frags) = match m {
                    Msg::Text(s, f) => (OpCode::Text, s.as_bytes().to_vec(), *f),
                    Msg::Binary(b, f) => (OpCode::Binary, b.clone(), *f),
                    Msg::Ping(p) => {
                        input.extend(frame(true, OpCode::Ping, p));
                        expected.push(Seen::Pong(p.clone()));
                        continue;
                    }
                };
                // Cut anywhere, code points included: §5.4 allows it.
                let step = data.len().div_ceil(frags).max(1);
                let pieces: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(step).collect() };
                for (i, p) in pieces.iter().enumerate() {
                    let o = if i == 0 { op } else { OpCode::Continuation };
                    input.extend(frame(i + 1 == pieces.len(), o, p));
                }
                expected.push(if op == OpCode::Text { Seen::Text(data) } else { Seen::Binary(data) });
            }
            prop_assert_eq!(run_split(&input, &sizes), (expected, None));
        }
    }
}
