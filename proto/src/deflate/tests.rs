use super::*;
use flate2::{Compress, Compression, FlushCompress};

/// What a client's deflater sends for `data` (RFC 7692 §7.2.1): raw
/// DEFLATE, flushed with an empty stored block whose 4-byte tail is removed.
pub(crate) fn compress(z: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let mut input = data;
    loop {
        let before = z.total_in();
        z.compress_vec(input, &mut out, FlushCompress::Sync)
            .expect("compress");
        input = &input[(z.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    assert!(
        out.ends_with(&TAIL),
        "a sync flush ends with the empty block"
    );
    out.truncate(out.len() - TAIL.len());
    out
}

pub(crate) fn compress_once(data: &[u8]) -> Vec<u8> {
    compress(&mut Compress::new(Compression::default(), false), data)
}

fn agreed(offers: &[&str]) -> Option<String> {
    policy_agreed(offers, Policy::NoContextTakeover)
}

fn policy_agreed(offers: &[&str], policy: Policy) -> Option<String> {
    negotiate(offers, policy).map(|a| {
        let mut out = Vec::new();
        a.write(&mut out);
        String::from_utf8(out).unwrap()
    })
}

const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn off_declines_every_offer_section_5() {
    assert_eq!(policy_agreed(&["permessage-deflate"], Policy::Off), None);
}

#[test]
fn other_extensions_are_passed_over_and_the_first_deflate_offer_is_taken_section_5() {
    assert_eq!(agreed(&[]), None);
    assert_eq!(agreed(&["x-webkit-deflate-frame"]), None);
    assert_eq!(
        agreed(&["x-webkit-deflate-frame", "permessage-deflate"]).as_deref(),
        Some(BOTH)
    );
}

#[test]
fn a_browsers_offer_gets_no_context_takeover_both_ways_section_7_1_1() {
    // What Chromium and Firefox send.
    assert_eq!(
        agreed(&["permessage-deflate; client_max_window_bits"]).as_deref(),
        Some(BOTH)
    );
}

#[test]
fn offers_are_tried_in_the_clients_order_until_one_is_acceptable_section_5() {
    let offers = [
        // Unknown parameter: must be declined (§7).
        "permessage-deflate; foo=1",
        // Limits our window without letting us limit the client's.
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits",
        "permessage-deflate",
    ];
    assert_eq!(
        agreed(&offers).as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=10"
        )
    );
}

#[test]
fn an_offer_that_breaks_a_rule_of_section_7_is_declined() {
    for bad in [
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=15; server_max_window_bits=15",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"x\"",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=7; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=16; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=08; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=+9; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=1 5",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; client_max_window_bits=\"\"",
        "permessage-deflate; client_max_window_bits=\"10",
        "permessage-deflate; mystery",
        "permessage-deflate;",
        "permessage-deflate; ; client_max_window_bits",
    ] {
        assert_eq!(agreed(&[bad]), None, "{bad}");
    }
}

#[test]
fn quoted_values_and_loose_spacing_are_read_as_tokens_rfc_6455_section_9_1() {
    assert_eq!(
        agreed(&[
            "permessage-deflate ;server_max_window_bits = \"12\";client_max_window_bits=\"1\\1\""
        ])
        .as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=12; client_max_window_bits=11"
        )
    );
}

#[test]
fn a_limit_on_our_window_limits_the_clients_as_much_so_the_echo_fits_section_7_1_2() {
    // The client's window becomes ours: it may not exceed what the client's
    // inflater keeps for our messages.
    for (offer, server, client) in [
        ("server_max_window_bits=9; client_max_window_bits", 9, 9),
        ("server_max_window_bits=8; client_max_window_bits", 8, 8),
        (
            "server_max_window_bits=12; client_max_window_bits=14",
            12,
            12,
        ),
        (
            "client_max_window_bits=10; server_max_window_bits=12",
            12,
            10,
        ),
    ] {
        let a = negotiate(
            &[&format!("permessage-deflate; {offer}")],
            Policy::NoContextTakeover,
        )
        .unwrap();
        assert_eq!(
            (a.server_max_window_bits, a.client_max_window_bits),
            (Some(server), Some(client)),
            "{offer}"
        );
    }
    // A full-size window on our side needs no limit on the client's.
    let a = negotiate(
        &["permessage-deflate; server_max_window_bits=15"],
        Policy::NoContextTakeover,
    )
    .unwrap();
    assert_eq!(
        (a.server_max_window_bits, a.client_max_window_bits),
        (Some(15), None)
    );
    // §7.1.2.2: never answer client_max_window_bits to an offer without it.
    let a = negotiate(&["permessage-deflate"], Policy::NoContextTakeover).unwrap();
    assert_eq!(a.client_max_window_bits, None);
}

#[test]
fn with_context_takeover_allowed_the_client_decides_section_7_1_1() {
    let ctx = Policy::ContextTakeover;
    assert_eq!(
        policy_agreed(&["permessage-deflate"], ctx).as_deref(),
        Some("permessage-deflate")
    );
    assert!(negotiate(&["permessage-deflate"], ctx)
        .unwrap()
        .client_keeps_context());
    // §7.1.1.1: the client asked us to drop context, and then it must too
    // (the echo is its stream).
    assert_eq!(
        policy_agreed(&["permessage-deflate; server_no_context_takeover"], ctx).as_deref(),
        Some(BOTH)
    );
    // The client drops its own context: no need to keep an inflater.
    let a = negotiate(&["permessage-deflate; client_no_context_takeover"], ctx).unwrap();
    assert!(!a.server_no_context_takeover && !a.client_keeps_context());
}

#[test]
fn names_are_matched_without_regard_to_case() {
    assert_eq!(
        agreed(&["PerMessage-Deflate; Client_Max_Window_Bits"]).as_deref(),
        Some(BOTH)
    );
}

fn text_check(data: &[u8], limit: u64) -> Result<(), Error> {
    let mut i = Inflater::take();
    let mut v = Utf8Validator::new();
    i.feed(data, Some(&mut v), limit)?;
    i.finish_message(Some(&mut v), limit)?;
    v.finish()
}

#[test]
fn compressed_text_is_checked_on_its_inflated_bytes_section_6() {
    let text = "héllo wörld, ".repeat(500);
    assert_eq!(text_check(&compress_once(text.as_bytes()), 1 << 20), Ok(()));
    let mut bad = text.clone().into_bytes();
    bad[3000] = 0xFF;
    assert_eq!(
        text_check(&compress_once(&bad), 1 << 20),
        Err(Error::InvalidUtf8)
    );
    // Cut inside a code point at the end of the message.
    let cut = &"ab€".as_bytes()[..3];
    assert_eq!(
        text_check(&compress_once(cut), 1 << 20),
        Err(Error::InvalidUtf8)
    );
}

#[test]
fn invalid_utf8_fails_before_the_rest_of_the_message_is_inflated() {
    let mut data = vec![b'a'; 100];
    data.push(0xC0);
    data.extend(std::iter::repeat_n(b'b', 1 << 20));
    let z = compress_once(&data);
    let mut i = Inflater::take();
    let mut v = Utf8Validator::new();
    assert_eq!(i.feed(&z, Some(&mut v), 1 << 22), Err(Error::InvalidUtf8));
    assert!(
        i.message_len() <= SCRATCH as u64,
        "stopped at the first scratch buffer, not after {}",
        i.message_len()
    );
}

#[test]
fn a_zip_bomb_is_refused_as_soon_as_it_passes_the_limit() {
    // 16 MiB of zeros compress to about 16 KiB.
    let bomb = compress_once(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    let limit = 64 * 1024;
    let mut i = Inflater::take();
    assert_eq!(i.feed(&bomb, None, limit), Err(Error::MessageTooBig));
    assert!(
        i.message_len() <= limit + SCRATCH as u64,
        "inflated {} bytes past a {limit}-byte limit",
        i.message_len()
    );
    // At the limit exactly is fine.
    let edge = compress_once(&vec![7u8; limit as usize]);
    let mut i = Inflater::take();
    assert_eq!(i.feed(&edge, None, limit), Ok(()));
    assert_eq!(i.finish_message(None, limit), Ok(()));
}

#[test]
fn corrupt_deflate_data_is_an_error_section_7_2_2() {
    // Block type 11 is reserved (RFC 1951 §3.2.3).
    let mut i = Inflater::take();
    assert_eq!(
        i.feed(&[0xFF, 0xFF], None, 1 << 20),
        Err(Error::BadCompressedData)
    );
    // A back-reference before the start of the stream.
    let mut z = Compress::new(Compression::default(), false);
    let _ = compress(&mut z, &b"0123456789".repeat(20));
    let second = compress(&mut z, &b"0123456789".repeat(20));
    let mut i = Inflater::take();
    assert_eq!(
        i.feed(&second, None, 1 << 20),
        Err(Error::BadCompressedData),
        "without the first message, its window is not there"
    );
}

#[test]
fn a_kept_inflater_resolves_references_to_the_previous_message_section_7_1_1() {
    let mut z = Compress::new(Compression::default(), false);
    let first = compress(&mut z, &b"0123456789".repeat(20));
    let second = compress(&mut z, &b"0123456789".repeat(20));
    let mut i = Inflater::take();
    for m in [first, second] {
        i.feed(&m, None, 1 << 20).unwrap();
        i.finish_message(None, 1 << 20).unwrap();
    }
}

#[test]
fn data_after_a_final_block_starts_a_new_stream_section_7_2_3() {
    let mut z = Compress::new(Compression::default(), false);
    let mut one = Vec::with_capacity(1024);
    z.compress_vec(b"hello", &mut one, FlushCompress::Finish)
        .unwrap();
    let mut msg = one.clone();
    msg.extend_from_slice(&one);
    assert_eq!(text_check(&msg, 1 << 20), Ok(()));
}

#[test]
fn the_thread_keeps_a_given_back_inflater_for_the_next_message() {
    let i = Inflater::take();
    let at = &*i as *const Inflater;
    i.give_back();
    let again = Inflater::take();
    assert_eq!(&*again as *const Inflater, at);
    assert_eq!(again.message_len(), 0);
}

#[test]
fn empty_and_tiny_compressed_messages_inflate_section_7_2_3_6() {
    // An empty message compresses to one empty fixed block: 0x02 0x00.
    assert_eq!(text_check(&compress_once(b""), 10), Ok(()));
    // So may a sender write no bytes at all (§7.2.3.6).
    assert_eq!(text_check(&[], 10), Ok(()));
    assert_eq!(text_check(&[0x00], 10), Ok(()));
}
