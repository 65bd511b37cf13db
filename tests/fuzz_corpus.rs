//! Replays the committed fuzz corpora through the same entry points the fuzz
//! targets use, so every input ever found interesting stays a regression
//! test on stable `cargo test`, without nightly or cargo-fuzz.

use std::path::Path;

use ringecho_proto::fuzz_entry;

/// Feed every file in `fuzz/corpus/<name>/` to `f`; returns how many ran.
fn replay(name: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("corpus file");
            // Name the input if it panics; the panic itself fails the test.
            eprintln!("replaying {}", path.display());
            f(&data);
            count += 1;
        }
    }
    count
}

/// RFC 6455 §4.2 opening handshake corpus.
#[test]
fn handshake_corpus_section_4_2() {
    let n = replay("handshake", fuzz_entry::handshake);
    // A missing or emptied corpus must fail, not pass vacuously.
    assert!(n >= 10, "only {n} handshake corpus files");
}

/// RFC 6455 §5.2 client frame header corpus.
#[test]
fn frame_corpus_section_5_2() {
    let n = replay("frame", fuzz_entry::frame);
    assert!(n >= 10, "only {n} frame corpus files");
}

/// RFC 6455 §5.4, §5.5 and §7 message and close corpus, cut into reads.
#[test]
fn session_corpus_sections_5_4_5_5_7() {
    let n = replay("session", fuzz_entry::session);
    assert!(n >= 10, "only {n} session corpus files");
}

/// The connection engine driven as the shell drives it (§4, §5, §7): reads,
/// partial writes, timers, shutdown and EOF in the order each input scripts.
#[test]
fn connection_corpus_sections_4_5_7() {
    let n = replay("connection", fuzz_entry::connection);
    assert!(n >= 10, "only {n} connection corpus files");
}

/// wss:// (the engine's TLS layer) corpus.
#[test]
fn tls_corpus() {
    let n = replay("tls", fuzz_entry::tls);
    assert!(n >= 5, "only {n} tls corpus files");
}

/// wss:// with the kernel holding the record layer: what the kernel hands
/// the engine after the hand-over (plaintext, typed records).
#[test]
fn tls_kernel_corpus() {
    let n = replay("tls_kernel", fuzz_entry::tls_kernel);
    assert!(n >= 5, "only {n} tls_kernel corpus files");
}
