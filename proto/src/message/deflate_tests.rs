//! The frame rules that change with permessage-deflate (RFC 7692 §6), and
//! the echo of compressed messages as they came.

use super::*;
use crate::deflate::tests::{compress, compress_once};
use crate::deflate::{negotiate, Policy};
use crate::frame::encode_client_frame;
use crate::fuzz_entry::{decode_server_with, Seen};
use crate::testkit::StreamHarness;
use flate2::{Compress, Compression};
use proptest::prelude::*;

const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn frame(fin: bool, rsv1: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(fin, op, KEY, payload, &mut v);
    if rsv1 {
        v[0] |= 0x40;
    }
    v
}

fn harness(offer: &str, policy: Policy) -> StreamHarness {
    let mut h = StreamHarness::new(Config {
        max_message_size: 1 << 20,
        echo_whole_up_to: 1000,
    });
    h.session
        .enable_deflate(&negotiate(&[offer], policy).expect("agreed"));
    h
}

/// Feed `input` in pieces of `piece` bytes; what the server sent, decoded
/// with deflate agreed, and the error that failed the session.
fn run_with(mut h: StreamHarness, input: &[u8], piece: usize) -> (Vec<Seen>, Option<Error>) {
    for p in input.chunks(piece.max(1)) {
        let _ = h.feed(p);
    }
    (decode_server_with(&h.out, h.error, Some(true)), h.error)
}

/// The last frame that is not part of an echo left open by the failure.
fn last(seen: &[Seen]) -> Option<&Seen> {
    seen.iter().rev().find(|s| !matches!(s, Seen::Open(..)))
}

fn run(input: &[u8], piece: usize) -> (Vec<Seen>, Option<Error>) {
    run_with(
        harness("permessage-deflate", Policy::NoContextTakeover),
        input,
        piece,
    )
}

fn text(n: usize) -> Vec<u8> {
    let words = ["echo ", "ring ", "frame ", "mask ", "deflate ", "héllo "];
    words
        .iter()
        .cycle()
        .take(n)
        .flat_map(|w| w.bytes())
        .collect()
}

#[test]
fn a_compressed_message_is_echoed_as_it_came_with_rsv1_section_6() {
    for len in [0usize, 10, 2_000, 50_000] {
        for (op, data) in [(OpCode::Text, text(len)), (OpCode::Binary, text(len))] {
            let z = compress_once(&data);
            let input = frame(true, true, op, &z);
            for piece in [input.len(), 1, 7, 333] {
                assert_eq!(
                    run(&input, piece),
                    (vec![Seen::Compressed(op, z.clone())], None),
                    "len {len}, pieces of {piece}"
                );
            }
        }
    }
}

#[test]
fn a_fragmented_compressed_message_keeps_rsv1_on_its_first_frame_only_section_6() {
    let data = text(3000);
    let z = compress_once(&data);
    let (a, b) = z.split_at(z.len() / 3);
    let (b, c) = b.split_at(b.len() / 2);
    let mut input = frame(false, true, OpCode::Text, a);
    input.extend(frame(true, false, OpCode::Ping, b"p"));
    input.extend(frame(false, false, OpCode::Continuation, b));
    input.extend(frame(true, false, OpCode::Continuation, c));
    for piece in [input.len(), 3, 100] {
        assert_eq!(
            run(&input, piece),
            (
                vec![
                    Seen::Pong(b"p".to_vec()),
                    Seen::Compressed(OpCode::Text, z.clone())
                ],
                None
            ),
            "pieces of {piece}"
        );
    }
}

#[test]
fn uncompressed_messages_still_echo_without_rsv1_beside_compressed_ones() {
    let z = compress_once(b"squeezed");
    let mut input = frame(true, false, OpCode::Text, b"plain");
    input.extend(frame(true, true, OpCode::Text, &z));
    input.extend(frame(true, false, OpCode::Binary, &[0xFF, 0x00]));
    assert_eq!(
        run(&input, input.len()),
        (
            vec![
                Seen::Text(b"plain".to_vec()),
                Seen::Compressed(OpCode::Text, z),
                Seen::Binary(vec![0xFF, 0x00]),
            ],
            None
        )
    );
}

#[test]
fn rsv1_on_a_continuation_or_control_frame_is_a_protocol_error_section_6() {
    let z = compress_once(b"abc");
    let cases = [
        [
            frame(false, true, OpCode::Text, &z[..1]),
            frame(true, true, OpCode::Continuation, &z[1..]),
        ]
        .concat(),
        [
            frame(false, false, OpCode::Text, b"a"),
            frame(true, true, OpCode::Continuation, b"b"),
        ]
        .concat(),
        frame(true, true, OpCode::Ping, b""),
        frame(true, true, OpCode::Close, &1000u16.to_be_bytes()),
    ];
    for input in cases {
        let (seen, err) = run(&input, input.len());
        assert_eq!(err, Some(Error::MisplacedCompressedBit), "{input:x?}");
        assert_eq!(last(&seen), Some(&Seen::Close(Some(1002))));
    }
    // RSV2 and RSV3 belong to no extension we agree to.
    for rsv in [0x20u8, 0x10] {
        let mut input = frame(true, false, OpCode::Text, b"a");
        input[0] |= rsv;
        assert_eq!(run(&input, input.len()).1, Some(Error::ReservedBits));
    }
}

#[test]
fn without_the_extension_rsv1_is_still_a_protocol_error_rfc_6455_section_5_2() {
    let mut h = StreamHarness::new(Config::default());
    let input = frame(true, true, OpCode::Text, &compress_once(b"a"));
    let _ = h.feed(&input);
    assert_eq!(h.error, Some(Error::ReservedBits));
}

#[test]
fn invalid_utf8_inside_compressed_text_fails_with_1007_before_the_message_ends() {
    let mut data = text(200);
    data.push(0xFF);
    let z = compress_once(&data);
    // First fragment only: no FIN, so the failure cannot wait for the end.
    let input = frame(false, true, OpCode::Text, &z);
    let (seen, err) = run(&input, input.len());
    assert_eq!(err, Some(Error::InvalidUtf8));
    assert_eq!(last(&seen), Some(&Seen::Close(Some(1007))));
    // The same bytes as binary are fine.
    let input = frame(true, true, OpCode::Binary, &z);
    assert_eq!(run(&input, 50).1, None);
}

#[test]
fn a_zip_bomb_is_refused_with_1009_long_before_its_end() {
    // 1 MiB limit; 64 MiB of zeros compress to about 64 KiB.
    let z = compress_once(&vec![0u8; 64 << 20]);
    let input = frame(true, true, OpCode::Binary, &z);
    let mut h = harness("permessage-deflate", Policy::NoContextTakeover);
    let mut fed = 0;
    for p in input.chunks(1024) {
        fed += p.len();
        if h.feed(p).is_err() {
            break;
        }
    }
    assert_eq!(h.error, Some(Error::MessageTooBig));
    assert!(
        fed < input.len() / 8,
        "refused after {fed} of {} bytes",
        input.len()
    );
    let seen = decode_server_with(&h.out, h.error, Some(true));
    assert_eq!(last(&seen), Some(&Seen::Close(Some(1009))));
}

#[test]
fn corrupt_compressed_data_fails_the_connection_with_1007() {
    let input = frame(true, true, OpCode::Binary, &[0xFF, 0xFF, 0xFF]);
    let (seen, err) = run(&input, input.len());
    assert_eq!(err, Some(Error::BadCompressedData));
    assert_eq!(seen, vec![Seen::Close(Some(1007))]);
}

#[test]
fn with_client_context_kept_a_message_may_refer_to_the_previous_one_section_7_1_1_2() {
    let mut z = Compress::new(Compression::default(), false);
    let a = compress(&mut z, &text(300));
    let b = compress(&mut z, &text(300));
    let mut input = frame(true, true, OpCode::Text, &a);
    input.extend(frame(true, true, OpCode::Text, &b));
    let h = harness("permessage-deflate", Policy::ContextTakeover);
    let (seen, err) = run_with(h, &input, 64);
    assert_eq!(err, None);
    assert_eq!(seen.len(), 2);
    // Agreed without context, the same stream is corrupt: the second
    // message's references reach into a window that is gone.
    assert_eq!(run(&input, 64).1, Some(Error::BadCompressedData));
}

#[test]
fn without_context_no_inflater_is_held_between_messages() {
    let z = compress_once(&text(3000));
    let input = frame(true, true, OpCode::Text, &z);
    let mut h = harness("permessage-deflate", Policy::NoContextTakeover);
    h.feed(&input[..input.len() / 2]).unwrap();
    assert!(h.session.holds_inflater(), "mid-message");
    h.feed(&input[input.len() / 2..]).unwrap();
    assert!(
        !h.session.holds_inflater(),
        "given back at the message's end"
    );
    let mut h = harness("permessage-deflate", Policy::ContextTakeover);
    h.feed(&input).unwrap();
    assert!(h.session.holds_inflater(), "kept for the client's context");
}

#[test]
fn the_decompressed_size_counts_across_fragments_against_the_limit() {
    let mut h = StreamHarness::new(Config {
        max_message_size: 10_000,
        echo_whole_up_to: 1000,
    });
    h.session
        .enable_deflate(&negotiate(&["permessage-deflate"], Policy::NoContextTakeover).unwrap());
    let z = compress_once(&vec![b'x'; 10_001]);
    let (a, b) = z.split_at(z.len() / 2);
    let mut input = frame(false, true, OpCode::Text, a);
    input.extend(frame(true, false, OpCode::Continuation, b));
    let _ = h.feed(&input);
    assert_eq!(h.error, Some(Error::MessageTooBig));
}

proptest! {
    #[test]
    fn any_compressed_text_cut_anywhere_is_echoed_byte_for_byte(
        s in "\\PC{0,600}",
        cuts in proptest::collection::vec(1usize..200, 1..8),
        frags in 1usize..4,
    ) {
        let z = compress_once(s.as_bytes());
        let step = z.len().div_ceil(frags).max(1);
        let mut input = Vec::new();
        let parts: Vec<&[u8]> = if z.is_empty() { vec![&z[..]] } else { z.chunks(step).collect() };
        for (i, part) in parts.iter().enumerate() {
            let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            input.extend(frame(i + 1 == parts.len(), i == 0, op, part));
        }
        let mut h = harness("permessage-deflate; client_max_window_bits", Policy::NoContextTakeover);
        let mut rest = &input[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            let _ = h.feed(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        prop_assert_eq!(h.error, None);
        prop_assert_eq!(
            decode_server_with(&h.out, None, Some(true)),
            vec![Seen::Compressed(OpCode::Text, z.clone())]
        );
    }
}
