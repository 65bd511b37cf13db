//! Harnesses for tests, fuzzing and benchmarks (feature `testkit`): feed a
//! [`Session`] bytes the way a shell does and collect what the server would
//! send as one contiguous `Vec`. The engine sends the ranges in place
//! instead; these exist so oracles can compare against plain bytes.

use crate::message::{Config, Event, Session, Step, HEADROOM};
use crate::Error;

/// Run `input` through `session` as one buffer and append everything the
/// server would send to `out`. For tests, fuzzing and benchmarks; the server
/// sends the ranges in place instead.
pub fn echo_all(
    session: &mut Session,
    input: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<usize, Error> {
    echo_all_from(session, input, 0, out, &mut Vec::new()).map(|(next, _closed)| next)
}

/// Feeds a session the way the server shell does: bytes arrive in arbitrary
/// pieces, unconsumed bytes are kept, and [`HEADROOM`] is left before a
/// continued payload. Collects what the server would send. Test and fuzz
/// support; the shell does the same with pooled buffers.
#[doc(hidden)]
#[derive(Debug)]
pub struct StreamHarness {
    pub session: Session,
    buf: Vec<u8>,
    pos: usize,
    pub out: Vec<u8>,
    pub error: Option<Error>,
    pub closed: bool,
    /// Pieces of a frame echoed whole, sent once its last piece is in, as
    /// the engine's output queue holds them: a stream that ends or fails
    /// mid-frame leaves none of that frame on the wire.
    held: Vec<u8>,
}

impl StreamHarness {
    pub fn new(config: Config) -> StreamHarness {
        StreamHarness {
            session: Session::new(config),
            buf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            error: None,
            closed: false,
            held: Vec::new(),
        }
    }

    /// Feed one piece; returns the error that failed the session, if any.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), Error> {
        if self.error.is_some() || self.closed {
            return Ok(());
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.session.needs_headroom() {
                self.buf.resize(HEADROOM, 0);
                self.pos = HEADROOM;
            }
        }
        self.buf.extend_from_slice(piece);
        match echo_all_from(
            &mut self.session,
            &mut self.buf,
            self.pos,
            &mut self.out,
            &mut self.held,
        ) {
            Ok((next, closed)) => {
                self.closed = closed;
                // Keep only unconsumed bytes (a partial header or control frame).
                self.buf.drain(..next);
                self.pos = 0;
                Ok(())
            }
            Err(e) => {
                self.held.clear();
                if let Some(close) = self.session.fail(e) {
                    self.out.extend_from_slice(close.as_bytes());
                }
                self.error = Some(e);
                Err(e)
            }
        }
    }
}

fn echo_all_from(
    session: &mut Session,
    input: &mut [u8],
    mut pos: usize,
    out: &mut Vec<u8>,
    held: &mut Vec<u8>,
) -> Result<(usize, bool), Error> {
    let mut closed = false;
    loop {
        let Step { next, event } = session.step(input, pos)?;
        match event {
            Event::NeedMore => return Ok((next, closed)),
            Event::Nothing => {}
            Event::Echo { frame } => out.extend_from_slice(&input[frame]),
            // A whole-echoed frame's pieces are contiguous on the wire: no
            // control frame can come between them (only its payload can).
            Event::EchoPart { frame, last } => {
                held.extend_from_slice(&input[frame]);
                if last {
                    out.append(held);
                }
            }
            Event::EchoDetached {
                header,
                header_len,
                payload,
            } => {
                out.extend_from_slice(&header[..header_len]);
                out.extend_from_slice(&input[payload]);
            }
            Event::Pong(frame) => out.extend_from_slice(frame.as_bytes()),
            Event::Closed { reply } => {
                closed = true;
                if let Some(frame) = reply {
                    out.extend_from_slice(frame.as_bytes());
                }
            }
        }
        pos = next;
    }
}
