//! Kernel TLS on a kernel that has it. This machine's kernel may not (its
//! `tls` module is missing where `tcp_available_ulp` lists only mptcp), so
//! the test boots Debian's own kernel, which has the module, under qemu
//! (tests/vm), and runs itself inside it: the same binary is the host half
//! (boot, then read the verdict) and the guest half (the checks, against
//! the real `ringecho` on every shell).
//!
//! A plain `main` (harness = false): the guest half is not a test of its
//! own that the host could run or skip.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    client_frame, read_raw_close, read_raw_frame, renegotiate_with_s_client, upgrade_request,
    Ringecho,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned, SupportedCipherSuite};

const GUEST: &str = "RINGECHO_KTLS_GUEST";
const SHELLS: [&str; 3] = ["ring", "tokio-uring", "epoll"];

fn main() {
    // `cargo test -- --list` and filters ask what tests there are: one.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("kernel_tls_in_a_vm: test");
        return;
    }
    if std::env::var_os(GUEST).is_some() {
        guest();
    } else {
        host();
    }
}

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "{program} is installed by the test command"
    );
    path
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The kernels the checks run on: Debian 12's (6.1: kernel TLS, but no
/// key change under a live session) and trixie-backports' (Linux 6.14 and
/// later: KeyUpdates in the kernel).
const KERNELS: [&str; 2] = ["bookworm", "trixie-backports"];

/// Boot each kernel with this binary, the server and the certificates, run
/// the guest half on every shell, and require it to pass.
fn host() {
    for kernel in KERNELS {
        let started = Instant::now();
        let prepare = Command::new("bash")
            .arg(repo().join("tests/vm/prepare.sh"))
            .args(["--kernel", kernel])
            .status()
            .expect("run tests/vm/prepare.sh");
        assert!(prepare.success(), "tests/vm/prepare.sh failed: {prepare}");
        let me = std::env::current_exe().unwrap();
        let tls = repo().join("tests/data/tls");
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("tests/vm/run.sh"))
            .args(["--kernel", kernel, "--timeout", "420", "--cpus", "2"])
            .args(["--bin", &me.display().to_string()])
            .args(["--bin", env!("CARGO_BIN_EXE_ringecho")])
            // A client that renegotiates (rustls never does).
            .args(["--bin", &which("openssl")]);
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            cmd.args(["--file", &format!("{}:/tls/{f}", tls.join(f).display())]);
        }
        let exe = me.file_name().unwrap().to_string_lossy().into_owned();
        cmd.args([
            "--",
            &format!("{GUEST}=1 RINGECHO_BIN=/bin/ringecho /bin/{exe}"),
        ]);
        let out = cmd.output().expect("run tests/vm/run.sh");
        let console = String::from_utf8_lossy(&out.stdout);
        print!("{console}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{kernel}: the guest half failed ({}); its output is above",
            out.status
        );
        // Each shell's checks report their end; all must have run.
        for io in SHELLS {
            assert!(
                console.contains(&format!("ktls guest: --io {io}: all checks passed")),
                "{kernel}: no verdict for --io {io}"
            );
        }
        assert!(console.contains("ktls guest: memory: all checks passed"));
        println!(
            "test kernel_tls_in_a_vm ({kernel}) ... ok ({:.0?})",
            started.elapsed()
        );
    }
}

fn guest() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("ktls guest: kernel {}", kernel.trim());
    for io in SHELLS {
        // Ringecho::start passes it on as --io.
        std::env::set_var("RINGECHO_IO", io);
        every_cipher_goes_to_the_kernel_and_echoes(io);
        the_peers_close_notify_ends_the_connection(io);
        a_renegotiation_through_the_kernel_is_refused_then_cut(io);
        a_forged_record_gets_an_alert_from_the_kernel_path(io);
        a_key_update_moves_the_kernel_to_the_next_keys_or_cuts_cleanly(io, kernel.trim());
        no_kernel_tls_keeps_every_session_in_user_space(io);
        println!("ktls guest: --io {io}: all checks passed");
    }
    std::env::set_var("RINGECHO_IO", "ring");
    an_idle_kernel_tls_connection_holds_less_than_a_user_space_one();
    println!("ktls guest: memory: all checks passed");
}

fn data(name: &str) -> PathBuf {
    Path::new("/tls").join(name)
}

fn start(extra: &[&str]) -> Ringecho {
    let cert = data("cert.pem").display().to_string();
    let key = data("key.pem").display().to_string();
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key, "--threads", "2"];
    args.extend_from_slice(extra);
    Ringecho::start(&args)
}

fn config(suite: Option<SupportedCipherSuite>) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites = vec![suite];
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match suite {
        Some(SupportedCipherSuite::Tls12(_)) => &[&rustls::version::TLS12],
        _ => &[&rustls::version::TLS13],
    };
    common::tls_client_config(&data("ca.pem"), provider, versions)
}

type Wss = StreamOwned<ClientConnection, TcpStream>;

/// TLS, then the WebSocket upgrade.
fn wss(addr: SocketAddr, config: Arc<ClientConfig>) -> Wss {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    let head = common::upgrade_over(&mut s, addr);
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Send a binary message and read its echo: whole, or (past the read
/// buffer's size) as fragments, binary then continuations up to FIN.
fn echo(s: &mut Wss, payload: &[u8]) {
    s.write_all(&client_frame(true, 0x2, payload)).unwrap();
    let mut got = Vec::new();
    let mut opcode = 0x2;
    loop {
        let (b0, part) = read_raw_frame(s).expect("an echo");
        assert_eq!(b0 & 0x0F, opcode, "first byte {b0:#x}");
        opcode = 0x0;
        got.extend_from_slice(&part);
        if b0 & 0x80 != 0 {
            break;
        }
    }
    assert!(got == payload, "echo of {} bytes differs", payload.len());
}

/// Reads until the end of the stream: true if it was a clean TLS end
/// (close_notify), false if the TCP stream ended without one.
fn clean_end(s: &mut Wss) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("reading to the end: {e}"),
        }
    }
    panic!("the connection did not end");
}

fn tls_stat(name: &str) -> u64 {
    let stat = std::fs::read_to_string("/proc/net/tls_stat").expect("/proc/net/tls_stat");
    stat.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {stat}"))
}

fn every_cipher_goes_to_the_kernel_and_echoes(io: &str) {
    let server = start(&[]);
    let line = server
        .wait_log(Duration::from_secs(5), |l| l.contains("TLS in "))
        .unwrap();
    assert!(line.contains("TLS in the kernel (kTLS)"), "{line}");
    for want in [
        "TLS 1.3: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305",
        "TLS 1.2: ",
    ] {
        assert!(line.contains(want), "{line}");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        line.contains("no TLS 1.3 key updates"),
        !kernel_rekeys(release.trim()),
        "{line}"
    );
    // Every suite the certificate (ECDSA P-256) can serve.
    let suites: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| s.tls13().is_some() || format!("{:?}", s.suite()).contains("ECDSA"))
        .collect();
    assert_eq!(suites.len(), 6);
    let (tx_before, rx_before) = (tls_stat("TlsTxSw"), tls_stat("TlsRxSw"));
    let mut handed = 0;
    // A payload that crosses many records, and sizes at the frame
    // header's edges.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    for suite in suites {
        let mut s = wss(server.addr, config(Some(suite)));
        for n in [0, 1, 125, 126, 16_384, 65_535, 65_536, 300_000] {
            echo(&mut s, &big[..n]);
        }
        // Many small messages written at once: records and frames end
        // in different places.
        let mut burst = Vec::new();
        for i in 0..2_000u32 {
            burst.extend(client_frame(true, 0x2, &big[..(i % 300) as usize]));
        }
        s.write_all(&burst).unwrap();
        for i in 0..2_000u32 {
            let (_, got) = read_raw_frame(&mut s).expect("a burst echo");
            assert_eq!(got, big[..(i % 300) as usize], "burst message {i}");
        }
        s.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
            .unwrap();
        assert_eq!(read_raw_close(&mut s), Some(1000), "{suite:?}");
        assert!(
            clean_end(&mut s),
            "{suite:?}: no close_notify from the kernel"
        );
        handed += 1;
        println!(
            "ktls guest: --io {io}: {:?} echoed through the kernel",
            suite.suite()
        );
    }
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["tls_kernel"], handed, "{t}");
    assert_eq!(t["tls_failed"], 0, "{t}");
    assert_eq!(t["tls_kernel_refused"], 0, "{t}");
    // The kernel's own count of sessions it encrypted and decrypted.
    assert_eq!(tls_stat("TlsTxSw") - tx_before, handed);
    assert_eq!(tls_stat("TlsRxSw") - rx_before, handed);
}

fn the_peers_close_notify_ends_the_connection(io: &str) {
    let server = start(&[]);
    let mut s = wss(server.addr, config(None));
    echo(&mut s, b"before close_notify");
    // close_notify alone, with no WebSocket close: the kernel hands it
    // over as an alert record, and the input is over.
    s.conn.send_close_notify();
    s.flush().unwrap();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut s.sock).unwrap();
    }
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "--io {io}: never closed"),
        }
    }
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["active"], 0, "{t}");
    assert_eq!(t["tls_kernel"], 1, "{t}");
    assert_eq!(t["tls_failed"], 0, "{t}");
}

fn a_renegotiation_through_the_kernel_is_refused_then_cut(io: &str) {
    let server = start(&[]);
    // The kernel hands the encrypted ClientHello over as a handshake
    // record, once the session is its.
    let text = renegotiate_with_s_client(server.addr, &data("ca.pem"), || {
        server.wait_stats(Duration::from_secs(10), |t| t["tls_kernel"] == 1);
    });
    assert!(text.contains("RENEGOTIATING"), "--io {io}: {text}");
    assert!(text.contains("no renegotiation"), "--io {io}: {text}");
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["tls_kernel"], 1, "{t}\n{text}");
    assert_eq!(t["tls_failed"], 1, "{t}");
    let mut s = wss(server.addr, config(None));
    echo(&mut s, b"the next connection is served");
}

fn a_forged_record_gets_an_alert_from_the_kernel_path(io: &str) {
    let server = start(&[]);
    let mut s = wss(server.addr, config(None));
    echo(&mut s, b"before the forgery");
    // An application data record whose tag cannot verify: the kernel
    // refuses it (EBADMSG) and the engine answers bad_record_mac.
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend([0x5a; 40]);
    s.sock.write_all(&forged).unwrap();
    let mut buf = [0u8; 64];
    let err = loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("--io {io}: a clean end, not an alert"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert!(err.to_string().contains("BadRecordMac"), "--io {io}: {err}");
    assert_eq!(t["tls_failed"], 1, "{t}");
    assert_eq!(t["tls_kernel"], 1, "{t}");
    assert_eq!(t["tls_kernel_refused"], 0, "{t}");
}

/// Linux 6.14 lets TLS 1.3 keys change under the kernel's record layer;
/// before, the kernel refuses a second key.
fn kernel_rekeys(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 14)
}

fn a_key_update_moves_the_kernel_to_the_next_keys_or_cuts_cleanly(io: &str, release: &str) {
    let server = start(&[]);
    let mut s = wss(server.addr, config(None));
    echo(&mut s, b"before the key update");
    // A KeyUpdate that asks for ours too (RFC 8446 §4.6.3).
    s.conn.refresh_traffic_keys().unwrap();
    s.flush().unwrap();
    let payload = b"after the key update";
    let _ = s.write_all(&client_frame(true, 0x2, payload));
    if kernel_rekeys(release) {
        let (_, got) = read_raw_frame(&mut s).expect("an echo under the new keys");
        assert_eq!(got, payload, "--io {io}");
        let t = server.stats()["total"].clone();
        assert_eq!(t["tls_kernel_refused"], 0, "{t}");
    } else {
        // This kernel cannot change keys: the connection is cut, counted,
        // and the server goes on.
        assert!(
            read_raw_frame(&mut s).is_none(),
            "--io {io}: an echo under old keys"
        );
        let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
        assert_eq!(t["tls_kernel_refused"], 1, "{t}");
        let mut again = wss(server.addr, config(None));
        echo(&mut again, b"the next connection is served");
    }
}

/// Kernel memory in use that grows with sockets (slab: TCP sockets,
/// kernel TLS contexts and their cipher state), in KiB.
fn slab_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// `n` connections, each upgraded with one echo, then left idle: the
/// server's RSS and the kernel's slab per connection, in KiB.
fn idle_cost(server: &Ringecho, n: usize, tls: bool) -> (f64, f64) {
    let open = |s: &mut Vec<Box<dyn std::any::Any>>| {
        if tls {
            let mut c = wss(server.addr, config(None));
            echo(&mut c, b"then idle");
            s.push(Box::new(c));
        } else {
            let mut c = TcpStream::connect(server.addr).unwrap();
            c.write_all(upgrade_request(server.addr).as_bytes())
                .unwrap();
            common::read_head(&mut c).unwrap();
            c.write_all(&client_frame(true, 0x2, b"then idle")).unwrap();
            read_raw_frame(&mut c).unwrap();
            s.push(Box::new(c));
        }
    };
    // The allocator's and the shard's first growth is not per connection.
    let mut held = Vec::new();
    for _ in 0..100 {
        open(&mut held);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, slab0) = (server.rss_kib(), slab_kib());
    for _ in 0..n {
        open(&mut held);
    }
    server.wait_active((n + 100) as u64, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, slab1) = (server.rss_kib(), slab_kib());
    (
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
        (slab1.saturating_sub(slab0)) as f64 / n as f64,
    )
}

fn an_idle_kernel_tls_connection_holds_less_than_a_user_space_one() {
    const N: usize = 1_000;
    let ws = idle_cost(&Ringecho::start(&["--threads", "1"]), N, false);
    let user = idle_cost(&start(&["--threads", "1", "--no-kernel-tls"]), N, true);
    let kernel = idle_cost(&start(&["--threads", "1"]), N, true);
    for (name, (rss, slab)) in [
        ("ws://", ws),
        ("wss:// rustls", user),
        ("wss:// kTLS", kernel),
    ] {
        println!(
            "ktls guest: memory: {name}: {rss:.2} KiB server RSS and {slab:.2} KiB kernel slab \
             per idle connection ({N} open, both ends' sockets in the slab)"
        );
    }
    // rustls's session state leaves the process with the keys: what stays
    // is the engine and the key schedule rustls keeps for KeyUpdates.
    assert!(kernel.0 < user.0, "kTLS {kernel:?} vs rustls {user:?}");
    assert!(kernel.0 < ws.0 + 1.5, "kTLS {kernel:?} vs ws {ws:?}");
}

fn no_kernel_tls_keeps_every_session_in_user_space(io: &str) {
    let server = start(&["--no-kernel-tls"]);
    let line = server
        .wait_log(Duration::from_secs(5), |l| l.contains("TLS in "))
        .unwrap();
    assert!(
        line.contains("TLS in user space (rustls)"),
        "--io {io}: {line}"
    );
    let mut s = wss(server.addr, config(None));
    echo(&mut s, &[7u8; 100_000]);
    s.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1000));
    assert!(clean_end(&mut s));
    let t = server.stats()["total"].clone();
    assert_eq!(t["tls_kernel"], 0, "{t}");
}
