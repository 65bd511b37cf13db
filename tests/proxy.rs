//! ringecho behind real nginx, configured as `docs/deployment.md` says: the
//! documented `location` block is read from the doc itself, so the doc and
//! the test cannot drift apart. `ws://` through nginx, and the echo page
//! over `https://` with nginx terminating TLS, where the page must pick
//! `wss://` by itself. nginx and openssl are installed by `.ci/test.sh`;
//! the tests fail, never skip, without them.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{assert_echo_page_worked, echo_page_output};
use common::{client_frame, raw_ws, raw_ws_with_headers, read_close, read_frame, Ringecho};

/// The nginx `location` block `docs/deployment.md` documents, pointed at
/// `upstream`.
fn documented_location(upstream: SocketAddr) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deployment.md"))
        .expect("docs/deployment.md");
    let start = doc
        .find("location / {")
        .expect("a location block in the doc");
    let end = start + doc[start..].find("\n}").expect("the block's end") + 2;
    let block = &doc[start..end];
    assert!(
        block.contains("proxy_pass http://127.0.0.1:9001;"),
        "{block}"
    );
    block.replace("127.0.0.1:9001", &upstream.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx in the foreground with its own prefix directory; killed, and the
/// directory removed, on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    plain: SocketAddr,
    tls: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn self_signed(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is not installed: run the README's test command (.ci/test.sh)");
    assert!(status.success(), "openssl could not make a certificate");
}

/// nginx with two servers in front of `upstream`: plain HTTP, and TLS with a
/// self-signed certificate, each with the documented location block.
fn nginx(upstream: SocketAddr) -> Nginx {
    // One directory per nginx: the tests of this file run in parallel.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringecho-nginx-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    self_signed(&dir);
    let (plain, tls) = (free_port(), free_port());
    let location = documented_location(upstream);
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         server {{\nlisten 127.0.0.1:{plain};\n{location}\n}}\n\
         server {{\nlisten 127.0.0.1:{tls} ssl;\n\
         ssl_certificate {d}/cert.pem;\nssl_certificate_key {d}/key.pem;\n{location}\n}}\n\
         }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx is not installed: run the README's test command (.ci/test.sh)");
    let n = Nginx {
        child,
        dir,
        plain: SocketAddr::from(([127, 0, 0, 1], plain)),
        tls: SocketAddr::from(([127, 0, 0, 1], tls)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(n.plain).is_err() || TcpStream::connect(n.tls).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

#[test]
fn ws_through_nginx_echoes_every_frame_and_closes_cleanly() {
    let server = Ringecho::start(&["--threads", "1"]);
    let proxy = nginx(server.addr);
    let mut c = raw_ws(proxy.plain);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, len) in [0usize, 20, 125, 126, 65_535, 65_536, 200_000]
        .into_iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        std::io::Write::write_all(&mut c, &client_frame(true, 0x2, &payload)).unwrap();
        let mut got = Vec::new();
        loop {
            let (fin, _, part) = read_frame(&mut c).expect("echo through nginx");
            got.extend_from_slice(&part);
            if fin {
                break;
            }
        }
        assert!(got == payload, "{len} bytes came back changed");
    }
    std::io::Write::write_all(&mut c, &client_frame(true, 0x8, &1000u16.to_be_bytes())).unwrap();
    assert_eq!(read_close(&mut c), Some(1000));
    let total = &server.stats()["total"];
    assert_eq!(total["protocol_errors"].as_u64(), Some(0), "{total}");
}

/// With `--trust-proxy`, the connection's log line names the client
/// nginx saw, not what the client claimed before it.
#[test]
fn the_client_address_nginx_reports_is_logged_for_a_trusted_proxy() {
    use std::io::Write;
    let server = Ringecho::start_with_env(
        &["--threads", "1", "--trust-proxy", "127.0.0.1"],
        &[("RUST_LOG", "debug")],
    );
    let proxy = nginx(server.addr);
    let mut c = raw_ws_with_headers(proxy.plain, "X-Forwarded-For: 203.0.113.50\r\n");
    c.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close(&mut c), Some(1000));
    let line = server
        .wait_log(Duration::from_secs(5), |l| l.contains("connection closed"))
        .expect("a line for the connection");
    assert!(line.contains("client=\"127.0.0.1\""), "{line}");
    assert!(!line.contains("203.0.113.50"), "{line}");
}

#[test]
fn the_page_over_https_through_nginx_picks_wss_by_itself() {
    let server = Ringecho::start(&["--threads", "1"]);
    let proxy = nginx(server.addr);
    let url = format!("https://{}/", proxy.tls);
    let (text, _) = echo_page_output(&url, &["--ignore-certificate-errors"]);
    assert_echo_page_worked(&text);
    // The only way from that page to ringecho is nginx's TLS port, and a
    // page served over https may not open ws://.
    let total = &server.stats()["total"];
    assert!(total["upgraded"].as_u64().unwrap() >= 1, "{total}");
}
