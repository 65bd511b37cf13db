//! Shared by the integration tests: run the real `ringecho` binary on an
//! ephemeral loopback port, and speak raw bytes to it where a library
//! client would refuse to misbehave.
#![allow(dead_code)]

pub mod browser;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The server under test: this build's, or `RINGECHO_BIN` (to show that a
/// regression test fails against an older build).
fn binary() -> std::ffi::OsString {
    std::env::var_os("RINGECHO_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ringecho").into())
}

pub struct Ringecho {
    child: Child,
    pub addr: SocketAddr,
    /// The operator's listener: /metrics, /stats, /healthz.
    pub metrics: SocketAddr,
    /// Every line the server has logged on stdout so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Ringecho {
    /// Start the binary with `args` (plus `--listen 127.0.0.1:0`) and wait for
    /// its start-up line.
    pub fn start(args: &[&str]) -> Ringecho {
        Ringecho::start_command(Command::new(binary()), args)
    }

    /// As `start`, with the process's RLIMIT_NOFILE (soft and hard) set to
    /// `limit` before it runs, so it cannot raise it: descriptor exhaustion
    /// on demand.
    pub fn start_with_fd_limit(args: &[&str], limit: u64) -> Ringecho {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(binary());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setrlimit, which is async-signal-safe, on a struct on its
        // own stack; it touches no lock or allocation of the parent.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ringecho::start_command(cmd, args)
    }

    /// As `start`, with `env` set for the server (say, `RUST_LOG`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Ringecho {
        let mut cmd = Command::new(binary());
        cmd.envs(env.iter().copied());
        Ringecho::start_command(cmd, args)
    }

    /// The lines logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Wait up to `timeout` for a logged line that `pred` accepts.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_command(mut cmd: Command, args: &[&str]) -> Ringecho {
        // The suites run against every I/O shell: RINGECHO_IO picks one.
        if let Some(io) = std::env::var_os("RINGECHO_IO") {
            cmd.arg("--io").arg(io);
        }
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringecho");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                // Log lines: the message follows a timestamp and a level.
                let after = |marker: &str| line.find(marker).map(|i| &line[i + marker.len()..]);
                let found = after("ringecho listening on ws://")
                    .or_else(|| after("ringecho listening on wss://"))
                    .or_else(|| after("metrics on http://"));
                if let Some(rest) = found {
                    let addr = rest.split('/').next().unwrap().to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = || -> SocketAddr {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("ringecho did not report its addresses")
                .parse()
                .unwrap()
        };
        let (addr, metrics) = (addr(), addr());
        Ringecho {
            child,
            addr,
            metrics,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Open descriptors of the server process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// CPU time (user + system) the server process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the line, in clock ticks.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf takes no pointers.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Poll `/stats` until `pred` holds for its totals, at most `timeout`;
    /// returns the last totals seen.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let total = self.stats()["total"].clone();
            if pred(&total) || Instant::now() >= deadline {
                return total;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `n` connections are open; returns the last totals seen.
    pub fn wait_active(&self, n: u64, timeout: Duration) -> serde_json::Value {
        self.wait_stats(timeout, |t| t["active"] == n)
    }

    /// The server's /stats document, from its metrics listener.
    pub fn stats(&self) -> serde_json::Value {
        let (status, _, body) = http_get(self.metrics, "/stats");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Ringecho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw GET: status, header block, body (the server closes after one
/// response).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
}

pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    // Read the head, then exactly Content-Length bytes: after a 101 the
    // server keeps the connection open, so reading to EOF would only time out.
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        if let Some(p) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the header block ended");
        all.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(all[..split].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .map_or(0, |v| v.parse().unwrap());
    while all.len() < split + 4 + len {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the body ended");
        all.extend_from_slice(&chunk[..n]);
    }
    (status, head, all[split + 4..split + 4 + len].to_vec())
}

/// A valid opening handshake request for `addr`.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Read an HTTP response head byte by byte, so nothing after it is consumed.
/// None if the connection ends or the read timeout passes first.
pub fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    Some(head)
}

/// A raw WebSocket connection after a successful handshake.
pub fn raw_ws(addr: SocketAddr) -> TcpStream {
    raw_ws_with_headers(addr, "")
}

/// As `raw_ws`, with `extra` header lines (each ending in CRLF) in the
/// request.
pub fn raw_ws_with_headers(addr: SocketAddr, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = upgrade_request(addr).replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
    s.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut s).expect("handshake response");
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Close `s` with a TCP reset instead of a FIN (SO_LINGER 0): the peer
/// vanishing abruptly.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Send one binary message on a raw connection and check its echo.
pub fn echo_once(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&client_frame(true, 0x2, payload)).unwrap();
    assert_eq!(read_message(s), Some((0x2, payload.to_vec())));
}

/// Masked client frame bytes.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let op = ringecho_proto::frame::OpCode::from_u8(opcode).unwrap();
    ringecho_proto::frame::encode_client_frame(fin, op, [0x12, 0x34, 0x56, 0x78], payload, &mut v);
    v
}

/// Read one server frame: (fin, opcode, payload). None on EOF.
pub fn read_frame(s: &mut TcpStream) -> Option<(bool, u8, Vec<u8>)> {
    use ringecho_proto::frame::{parse_server_header, MAX_CLIENT_HEADER};
    // Two bytes always; the rest of the header a byte at a time, so nothing
    // past the header is read and the short common case costs one read.
    let mut h = [0u8; MAX_CLIENT_HEADER];
    let mut have = 2;
    s.read_exact(&mut h[..have]).ok()?;
    let head = loop {
        match parse_server_header(&h[..have]).expect("server frame length in range") {
            Some(head) => break head,
            None => {
                s.read_exact(&mut h[have..have + 1]).ok()?;
                have += 1;
            }
        }
    };
    assert!(!head.masked, "server frames must not be masked");
    let mut payload = vec![0u8; head.payload_len as usize];
    s.read_exact(&mut payload).ok()?;
    Some((head.fin, head.opcode, payload))
}

/// Read frames until a close; returns its code (None for an empty close).
pub fn read_close(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, op, payload) = read_frame(s).expect("connection ended before a close frame");
        if op == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// True if the server closes the TCP connection within `timeout`.
pub fn closes_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

/// Read one whole message, reassembling fragments (§5.4): (opcode, payload).
/// None on EOF.
pub fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let (mut fin, opcode, mut payload) = read_frame(s)?;
    while !fin {
        let (f, op, more) = read_frame(s)?;
        assert_eq!(op, 0x0, "expected a continuation frame");
        payload.extend(more);
        fin = f;
    }
    Some((opcode, payload))
}

/// One server frame with its first byte as sent (FIN, RSV bits, opcode),
/// from any stream (TLS included): (first byte, payload). None at the end.
pub fn read_raw_frame(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).ok()?;
    Some((h[0], payload))
}

/// Read frames until a close; returns its code (None for an empty close
/// or the end of the stream).
pub fn read_raw_close(s: &mut impl Read) -> Option<u16> {
    loop {
        let (b0, p) = read_raw_frame(s)?;
        if b0 & 0x0F == 0x8 {
            return p.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
    }
}

/// Run `openssl s_client` over TLS 1.2 against `addr`, trusting `ca`; once
/// `ready` returns, ask it three times to renegotiate (its `R` command,
/// RFC 5746), then end its input. Returns all it printed.
pub fn renegotiate_with_s_client(
    addr: SocketAddr,
    ca: &std::path::Path,
    ready: impl FnOnce(),
) -> String {
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-servername",
            "localhost",
            "-connect",
        ])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed by the test command");
    let mut stdin = client.stdin.take().unwrap();
    ready();
    for _ in 0..3 {
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(stdin);
    let started = Instant::now();
    let out = loop {
        if let Ok(Some(_)) = client.try_wait() {
            break client.wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "s_client still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A rustls client configuration trusting the CA in `ca`, for `versions`
/// of TLS with `provider`'s suites, offering ALPN http/1.1.
pub fn tls_client_config(
    ca: &std::path::Path,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(c)
}

/// Send the upgrade request for `addr` over `s` (any stream, TLS included)
/// and read the response head; returns it, status line first.
pub fn upgrade_over(s: &mut (impl Read + Write), addr: SocketAddr) -> Vec<u8> {
    s.write_all(upgrade_request(addr).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
        assert!(head.len() < 8192, "a response head that does not end");
    }
    head
}
