//! Headless Chromium driven over the DevTools protocol: load a page and
//! read what the websocket.org echo page printed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::Message;

/// The browser process and its profile directory, both gone on drop.
pub struct Browser(Child, pub std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: Chromium's helper processes outlive a
        // killed main process long enough to write into the profile again.
        // SAFETY: kill(2) takes no pointers; the group is the browser's own.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
        for _ in 0..50 {
            let _ = std::fs::remove_dir_all(&self.1);
            if !self.1.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Start Chromium with `extra` flags: the browser and its DevTools URL.
pub fn launch_chromium(extra: &[&str]) -> (Browser, String) {
    // One profile per browser: tests in one process run side by side, and
    // two Chromiums on one profile directory refuse each other.
    static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile =
        std::env::temp_dir().join(format!("ringecho-chromium-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let mut child = Command::new("chromium")
        .process_group(0)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "about:blank",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium is not installed: run the README's test command (.ci/test.sh), which installs it");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let browser = Browser(child, profile);
    let ws = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium did not start its DevTools endpoint");
    (browser, ws)
}

/// The first page target's DevTools WebSocket URL.
fn page_target(browser_ws: &str) -> String {
    let hostport = browser_ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut s = TcpStream::connect(&hostport).unwrap();
        write!(
            s,
            "GET /json/list HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        // DevTools keeps the connection open: read by Content-Length.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "DevTools closed before the whole response");
            raw.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap();
                if raw.len() >= end + 4 + len {
                    break raw[end + 4..end + 4 + len].to_vec();
                }
            }
        };
        let targets: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if let Some(url) = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        {
            return url.to_string();
        }
        assert!(Instant::now() < deadline, "no page target: {targets}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    id: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.id += 1;
        let msg = serde_json::json!({"id": self.id, "method": method, "params": params});
        self.ws.send(Message::Text(msg.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.ws.read().unwrap() else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["id"] == self.id {
                return v;
            }
        }
    }
}

/// Load `url` in a fresh headless Chromium started with `extra` flags and
/// return the echo page's output once it says DISCONNECTED (or after 30 s),
/// then a line `extensions: ...` with the extensions its socket agreed to,
/// with the browser's profile directory (removed once the browser is gone).
pub fn echo_page_output(url: &str, extra: &[&str]) -> (String, std::path::PathBuf) {
    let (browser, browser_ws) = launch_chromium(extra);
    let (ws, _) = tungstenite::connect(page_target(&browser_ws)).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    let mut cdp = Cdp { ws, id: 0 };
    cdp.call("Page.navigate", serde_json::json!({ "url": url }));
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let r = cdp.call(
            "Runtime.evaluate",
            serde_json::json!({
                "expression": "(document.getElementById('output') || {innerText: ''}).innerText",
                "returnByValue": true
            }),
        );
        let text = r["result"]["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if text.contains("DISCONNECTED") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // What the browser agreed to (RFC 6455 §9.1), from the page's socket.
    let r = cdp.call(
        "Runtime.evaluate",
        serde_json::json!({
            "expression": "typeof websocket === 'undefined' ? '' : websocket.extensions",
            "returnByValue": true
        }),
    );
    let extensions = r["result"]["result"]["value"].as_str().unwrap_or_default();
    let text = format!("{text}\nextensions: {extensions}");
    let profile = browser.1.clone();
    drop(cdp);
    drop(browser);
    (text, profile)
}

/// What the echo page prints for one good round trip.
pub fn assert_echo_page_worked(text: &str) {
    assert!(text.contains("CONNECTED"), "{text}");
    assert!(text.contains("SENT: WebSocket rocks"), "{text}");
    assert!(text.contains("RESPONSE: WebSocket rocks"), "{text}");
    assert!(text.contains("DISCONNECTED"), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}
