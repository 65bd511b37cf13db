//! A real browser: headless Chromium loads the page ringecho serves and the
//! page's own WebSocket echoes "WebSocket rocks". Chromium is driven over the
//! DevTools protocol (with tungstenite, so no extra tooling). The test fails,
//! never skips, when Chromium is missing: `.ci/test.sh` installs it.

mod common;

use common::browser::{assert_echo_page_worked, echo_page_output};
use common::Ringecho;

#[test]
fn headless_chromium_shows_the_echo_on_the_served_page() {
    let server = Ringecho::start(&["--threads", "1"]);
    let (text, profile) = echo_page_output(&format!("http://{}/", server.addr), &[]);
    assert_echo_page_worked(&text);
    // Offered by the browser, declined by default.
    assert!(text.ends_with("extensions: "), "{text}");
    // The page's close completed a real close handshake.
    let total = &server.stats()["total"];
    assert!(total["upgraded"].as_u64().unwrap() >= 1, "{total}");
    assert_eq!(total["protocol_errors"].as_u64(), Some(0), "{total}");
    assert!(
        !profile.exists(),
        "the browser's profile is left in {profile:?}"
    );
}

#[test]
fn headless_chromium_agrees_to_permessage_deflate_and_gets_its_echo_rfc_7692() {
    let server = Ringecho::start(&["--threads", "1", "--permessage-deflate"]);
    let (text, _) = echo_page_output(&format!("http://{}/", server.addr), &[]);
    assert_echo_page_worked(&text);
    assert!(
        text.contains(
            "extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{text}"
    );
    let total = server.wait_stats(std::time::Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(total["deflate_agreed"].as_u64(), Some(1), "{total}");
    assert_eq!(total["protocol_errors"].as_u64(), Some(0), "{total}");
    assert_eq!(total["deflate_inflaters"].as_u64(), Some(0), "{total}");
}
