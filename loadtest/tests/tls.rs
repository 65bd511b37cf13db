//! wss:// and `--handshakes` end to end: the `loadtest` binary against
//! nginx terminating TLS in front of a plain ringecho (the deployment
//! `docs/deployment.md` describes, its location block read from the doc),
//! and against ringecho serving TLS itself. Certificates are made here with
//! the openssl CLI; nginx and openssl are installed by `.ci/test.sh`, and
//! these tests fail, never skip, without them.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::ringecho_bin;

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");

/// A process killed when the test ends, however it ends.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A started ringecho: its address (ws:// or wss://, as it says) and, with
/// `--metrics-listen`, its metrics listener.
struct Ringecho {
    proc: Proc,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl Ringecho {
    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The body of `GET path` on the metrics listener.
    fn get(&self, path: &str) -> String {
        let addr = self.metrics.expect("started with --metrics-listen");
        let mut s = TcpStream::connect(addr).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut all = String::new();
        // The listener closes after one response.
        let _ = s.read_to_string(&mut all);
        all.split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string())
    }

    /// ringecho's `/stats` counters summed over its shards.
    fn stats(&self) -> serde_json::Value {
        let body = self.get("/stats");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/stats {e}: {body}"))
    }

    /// Close frames with `code` ringecho received, from `/metrics`.
    fn closes_received(&self, code: u16) -> u64 {
        let name = "ringecho_close_frames_received_total{";
        self.get("/metrics")
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("code=\"{code}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// ringecho `--threads 1` on an ephemeral port with `extra` flags and a
/// metrics listener.
fn ringecho(extra: &[&str]) -> Ringecho {
    let mut cmd = Command::new(ringecho_bin());
    cmd.args(["--threads", "1", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn ringecho");
    let stdout = child.stdout.take().expect("ringecho stdout");
    let proc = Proc { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let after = |marker: &str| {
                line.find(marker)
                    .map(|i| line[i + marker.len()..].to_string())
            };
            let found = after("ringecho listening on ")
                .map(|r| (false, r))
                .or_else(|| after("metrics on http://").map(|r| (true, r)));
            if let Some((metrics, rest)) = found {
                let rest = rest
                    .strip_prefix("wss://")
                    .or_else(|| rest.strip_prefix("ws://"))
                    .unwrap_or(&rest)
                    .to_string();
                let end = rest.find(['/', ' ']).unwrap_or(rest.len());
                if let Ok(a) = rest[..end].parse::<SocketAddr>() {
                    let _ = tx.send((metrics, a));
                }
            }
        }
    });
    let (mut addr, mut metrics) = (None, None);
    while addr.is_none() || metrics.is_none() {
        let (is_metrics, a) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ringecho reports its addresses");
        if is_metrics {
            metrics = Some(a);
        } else {
            addr = Some(a);
        }
    }
    Ringecho {
        proc,
        addr: addr.unwrap(),
        metrics,
    }
}

/// A directory of certificates, removed on drop: a CA and a server
/// certificate it signed (for `localhost` and 127.0.0.1), another CA that
/// signed nothing here, and a self-signed server certificate as
/// `openssl req -x509` makes it (CA:TRUE, as an operator would have it).
struct Certs {
    dir: PathBuf,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Certs {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is not installed: run the README's test command (.ci/test.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn certs(tag: &str) -> Certs {
    let dir = std::env::temp_dir().join(format!("loadtest-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let ca = |name: &str, cn: &str| {
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let subj = format!("/CN={cn}");
        let args = [
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &["-subj", &subj, "-keyout", &key, "-out", &pem],
        ]
        .concat();
        openssl(&dir, &args);
    };
    ca("ca", "loadtest test CA");
    ca("other-ca", "loadtest other CA");
    openssl(
        &dir,
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
        ],
    );
    Certs { dir }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The nginx `location` block `docs/deployment.md` documents, pointed at
/// `upstream`.
fn documented_location(upstream: SocketAddr) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/deployment.md"
    ))
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

/// nginx (one process) terminating TLS 1.2 and 1.3 in front of `upstream`:
/// on `ca` with the CA-signed certificate, on `selfsigned` with the
/// self-signed one.
struct Nginx {
    proc: Proc,
    dir: PathBuf,
    ca: SocketAddr,
    selfsigned: SocketAddr,
}

impl Nginx {
    fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx(upstream: SocketAddr, certs: &Certs) -> Nginx {
    let dir = certs.dir.join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, selfsigned) = (free_port(), free_port());
    let location = documented_location(upstream);
    let d = dir.display();
    let c = certs.dir.display();
    // nginx 1.22's default ssl_protocols stop at TLS 1.2.
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         ssl_protocols TLSv1.2 TLSv1.3;\n\
         server {{\nlisten 127.0.0.1:{ca} ssl;\n\
         ssl_certificate {c}/server.pem;\nssl_certificate_key {c}/server.key;\n{location}\n}}\n\
         server {{\nlisten 127.0.0.1:{selfsigned} ssl;\n\
         ssl_certificate {c}/self.pem;\nssl_certificate_key {c}/self.key;\n{location}\n}}\n\
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
        proc: Proc { child },
        dir,
        ca: SocketAddr::from(([127, 0, 0, 1], ca)),
        selfsigned: SocketAddr::from(([127, 0, 0, 1], selfsigned)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(n.ca).is_err() || TcpStream::connect(n.selfsigned).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

/// Wait for `child` at most `secs`; kill it and fail the test past that.
fn wait_bounded(child: &mut Child, secs: u64, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `loadtest ARGS` with a time limit: exit status, stdout, stderr.
fn loadtest(args: &[String]) -> (ExitStatus, String, String) {
    let mut child = Command::new(LOADTEST)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn loadtest");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, 90, "loadtest");
    (status, out.join().unwrap(), err.join().unwrap())
}

/// `loadtest URL ARGS --json`: status, report, stderr.
fn load(url: &str, args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    let mut all = vec![url.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.push("--json".into());
    let (status, out, err) = loadtest(&all);
    let json = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("bad JSON {e}: {out}\nstderr: {err}"));
    (status, json, err)
}

fn wss(addr: SocketAddr) -> String {
    format!("wss://{addr}/")
}

/// A run that must verify every echo over TLS 1.3 with the usual
/// parameters: nothing lost or wrong, every connection open.
fn verified_over_tls13(url: &str, args: &[&str], connections: u64) -> serde_json::Value {
    let (status, r, err) = load(url, args);
    assert!(status.success(), "{args:?}: {r}\n{err}");
    assert_eq!(r["error_total"], 0, "{args:?}: {r}");
    assert_eq!(r["connections_open"], connections, "{args:?}: {r}");
    assert!(r["messages"].as_u64().unwrap_or(0) > 0, "{args:?}: {r}");
    assert_eq!(r["tls"], "TLS1.3", "{args:?}: {r}");
    assert_eq!(r["tls_alpn"], "http/1.1", "{r}");
    let suite = r["tls_cipher_suite"].as_str().unwrap_or("");
    assert!(suite.starts_with("TLS13_"), "{r}");
    r
}

fn errors(r: &serde_json::Value, kind: &str) -> u64 {
    r["errors"][kind].as_u64().unwrap_or(0)
}

#[test]
fn wss_through_nginx_verifies_every_echo_in_every_mode() {
    let certs = certs("modes");
    let backend = ringecho(&[]);
    let front = nginx(backend.addr, &certs);
    let url = wss(front.ca);
    let ca = certs.arg("ca.pem");
    let common = ["--ca", &ca, "--duration", "1", "--warmup", "0.2"];
    // Closed loop, the server's CPU and RSS summed over nginx and ringecho.
    let pids = format!("{},{}", front.pid(), backend.pid());
    let r = verified_over_tls13(
        &url,
        &[
            &common[..],
            &[
                "--connections",
                "20",
                "--size",
                "100",
                "--server-pid",
                &pids,
            ],
        ]
        .concat(),
        20,
    );
    assert_eq!(r["tls_kx_group"], "X25519", "{r}");
    assert_eq!(r["mode"], "closed", "{r}");
    assert!(r["cpu"]["server_pct"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(
        r["server"]["rss_kib_before"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    // Text, 16 KiB in several fragments from ringecho, four in flight.
    verified_over_tls13(
        &url,
        &[
            &common[..],
            &[
                "--connections",
                "4",
                "--size",
                "16384",
                "--in-flight",
                "4",
                "--text",
            ],
        ]
        .concat(),
        4,
    );
    // Messages larger than every buffer on the way (rustls's, nginx's,
    // ringecho's read buffer).
    verified_over_tls13(
        &url,
        &[
            &common[..],
            &["--connections", "2", "--size", "400000", "--in-flight", "2"],
        ]
        .concat(),
        2,
    );
    // Open loop holds its rate.
    let r = verified_over_tls13(
        &url,
        &[
            &common[..],
            &["--connections", "10", "--size", "64", "--rate", "2000"],
        ]
        .concat(),
        10,
    );
    assert_eq!(r["mode"], "open", "{r}");
    let rate = r["msgs_per_sec"].as_f64().unwrap_or(0.0);
    assert!((1500.0..=2500.0).contains(&rate), "rate {rate}: {r}");
    // Echoing from each open while the rest still handshake.
    let r = verified_over_tls13(
        &url,
        &[
            &common[..],
            &[
                "--connections",
                "20",
                "--echo-on-open",
                "--connect-rate",
                "200",
            ],
        ]
        .concat(),
        20,
    );
    assert!(r["echoes_while_opening"].as_u64() > Some(0), "{r}");
    // The text report says what was negotiated.
    let (status, text, _) = loadtest(
        &[
            &[url.as_str()][..],
            &common,
            &["--connections", "2", "--tls-kx", "p256"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>(),
    );
    assert!(status.success(), "{text}");
    assert!(
        text.contains("TLS: TLS1.3 TLS13_") && text.contains("secp256r1, ALPN http/1.1"),
        "{text}"
    );
    // Every echo went through nginx to ringecho and came back.
    let total = &backend.stats()["total"];
    assert_eq!(total["protocol_errors"].as_u64(), Some(0), "{total}");
    assert!(
        total["upgraded"].as_u64() >= Some(20 + 4 + 2 + 10 + 20 + 2),
        "{total}"
    );
}

#[test]
fn wss_deflate_through_nginx_comes_back_as_sent() {
    let certs = certs("deflate");
    let backend = ringecho(&["--permessage-deflate"]);
    let front = nginx(backend.addr, &certs);
    let ca = certs.arg("ca.pem");
    for (kind, size) in [("--text", "1024"), ("--binary", "100000")] {
        let r = verified_over_tls13(
            &wss(front.ca),
            &[
                "--ca",
                &ca,
                "--deflate",
                kind,
                "--size",
                size,
                "--connections",
                "4",
                "--in-flight",
                "2",
                "--duration",
                "1",
                "--warmup",
                "0.2",
            ],
            4,
        );
        let sent = r["compression_ratio"].as_f64().unwrap_or(1.0);
        assert!(sent < 0.6, "{kind} {size}: {r}");
        assert_eq!(r["echo_compression_ratio"].as_f64(), Some(sent), "{r}");
    }
}

#[test]
fn the_ca_decides_and_a_wrong_one_fails_every_connection_clearly() {
    let certs = certs("trust");
    let backend = ringecho(&[]);
    let front = nginx(backend.addr, &certs);
    let run = ["--connections", "3", "--duration", "0.5", "--warmup", "0"];
    let ok = |url: &str, trust: &[&str]| {
        verified_over_tls13(url, &[trust, &run[..]].concat(), 3);
    };
    let (ca, other, leaf, selfsigned) = (
        certs.arg("ca.pem"),
        certs.arg("other-ca.pem"),
        certs.arg("server.pem"),
        certs.arg("self.pem"),
    );
    // The CA that signed it, the certificate itself, or no judgement.
    ok(&wss(front.ca), &["--ca", &ca]);
    ok(&wss(front.ca), &["--ca", &leaf]);
    ok(&wss(front.ca), &["--insecure"]);
    ok(
        &wss(front.ca),
        &["--ca", &ca, "--tls-server-name", "127.0.0.1"],
    );
    // A self-signed certificate (CA:TRUE, as openssl makes it) given as
    // its own trust anchor, or not checked at all.
    ok(&wss(front.selfsigned), &["--ca", &selfsigned]);
    ok(&wss(front.selfsigned), &["--insecure"]);

    let refused = |url: &str, args: &[&str], says: &[&str]| {
        let (status, r, err) = load(url, &[args, &run[..]].concat());
        assert!(!status.success(), "{args:?}: {r}");
        assert_eq!(errors(&r, "tls_failed"), 3, "{args:?}: {r}");
        assert_eq!(r["error_total"], 3, "{args:?}: {r}");
        assert_eq!(r["connections_open"], 0, "{args:?}: {r}");
        assert_eq!(r["connections_failed"], 3, "{args:?}: {r}");
        let why = r["tls_error"].as_str().unwrap_or("");
        for s in says {
            assert!(why.contains(s), "{args:?}: {s:?} not in {why:?}");
        }
        // Said once on stderr, however many connections failed.
        assert_eq!(err.matches("TLS handshake failed").count(), 1, "{err}");
    };
    refused(
        &wss(front.ca),
        &["--ca", &other],
        &["UnknownIssuer", "--ca", "other-ca.pem"],
    );
    // webpki refuses a CA:TRUE certificate as a server's before it looks
    // for its issuer; only the pin lets it through.
    for wrong in [&ca, &leaf] {
        refused(
            &wss(front.selfsigned),
            &["--ca", wrong],
            &[
                "CaUsedAsEndEntity",
                "only when --ca names that very certificate",
            ],
        );
    }
    refused(
        &wss(front.ca),
        &["--ca", &ca, "--tls-server-name", "elsewhere.example"],
        &["not valid for name", "--tls-server-name elsewhere.example"],
    );
    // Not TLS at all: ringecho's plain port answers a ClientHello with
    // HTTP.
    refused(
        &wss(backend.addr),
        &["--insecure"],
        &["does the server speak TLS on this port?"],
    );

    // No trust decision, or a file with no certificate in it: refused
    // before any connection, with a line that says what to do.
    let (status, _, err) = loadtest(&[wss(front.ca), "--duration".into(), "0.2".into()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("--ca PEM_FILE") && err.contains("--insecure"),
        "{err}"
    );
    let (status, _, err) = loadtest(&[
        wss(front.ca),
        "--ca".into(),
        certs.arg("server.key"),
        "--duration".into(),
        "0.2".into(),
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("no certificate in it"), "{err}");
}

#[test]
fn handshakes_through_nginx_cycle_with_no_failures() {
    let certs = certs("handshakes");
    let backend = ringecho(&[]);
    let front = nginx(backend.addr, &certs);
    let ca = certs.arg("ca.pem");
    let pids = format!("{},{}", front.pid(), backend.pid());
    let cycle = |extra: &[&str]| {
        let (status, r, err) = load(
            &wss(front.ca),
            &[
                &[
                    "--ca",
                    &ca,
                    "--handshakes",
                    "--connections",
                    "4",
                    "--duration",
                    "1.5",
                    "--warmup",
                    "0.2",
                    "--server-pid",
                    &pids,
                ][..],
                extra,
            ]
            .concat(),
        );
        assert!(status.success(), "{extra:?}: {r}\n{err}");
        assert_eq!(r["mode"], "handshakes", "{r}");
        assert_eq!(r["handshake_failures"], 0, "{r}");
        assert_eq!(r["error_total"], 0, "{r}");
        let n = r["handshakes"].as_u64().unwrap_or(0);
        assert!(n > 0, "{r}");
        let rate = r["handshakes_per_sec"].as_f64().unwrap_or(0.0);
        assert!((rate - n as f64 / 1.5).abs() < 1.0, "{rate} for {n}: {r}");
        // One echo per cycle, each verified.
        assert!(
            r["messages"].as_u64().unwrap_or(0) >= n.saturating_sub(4),
            "{r}"
        );
        assert_eq!(r["tls"], "TLS1.3", "{r}");
        let cyc = &r["cycle_us"];
        assert!(cyc["p50"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(cyc["p99"].as_u64() >= cyc["p50"].as_u64(), "{r}");
        // The cycle includes the connect and upgrade it times.
        assert!(
            cyc["p50"].as_u64() >= r["connect_us"]["p50"].as_u64(),
            "{r}"
        );
        assert!(
            r["server_cpu_us_per_handshake"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
        r
    };
    let r = cycle(&[]);
    assert_eq!(r["tls_kx_group"], "X25519", "{r}");
    let n = r["handshakes"].as_u64().unwrap();
    let r = cycle(&["--tls-kx", "p256", "--text", "--size", "300"]);
    assert_eq!(r["tls_kx_group"], "secp256r1", "{r}");
    let n = n + r["handshakes"].as_u64().unwrap();
    // Each cycle was a real WebSocket session at ringecho, closed with the
    // client's 1000.
    let total = &backend.stats()["total"];
    assert!(total["upgraded"].as_u64() >= Some(n), "{n}: {total}");
    assert_eq!(total["protocol_errors"].as_u64(), Some(0), "{total}");
    let received = backend.closes_received(1000);
    assert!(received >= n, "{received} closes for {n} cycles");

    // Every cycle refused by a wrong CA is a counted failure.
    let (status, r, _) = load(
        &wss(front.ca),
        &[
            "--ca",
            &certs.arg("other-ca.pem"),
            "--handshakes",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ],
    );
    assert!(!status.success(), "{r}");
    assert_eq!(r["handshakes"], 0, "{r}");
    let failed = r["handshake_failures"].as_u64().unwrap_or(0);
    assert!(failed >= 2, "{r}");
    assert_eq!(errors(&r, "tls_failed"), failed, "{r}");
}

#[test]
fn handshakes_over_plain_ws_cycle_with_no_failures() {
    let backend = ringecho(&[]);
    let (status, r, err) = load(
        &format!("ws://{}/", backend.addr),
        &[
            "--handshakes",
            "--connections",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--server-pid",
            &backend.pid().to_string(),
        ],
    );
    assert!(status.success(), "{r}\n{err}");
    assert_eq!(r["handshake_failures"], 0, "{r}");
    let n = r["handshakes"].as_u64().unwrap_or(0);
    assert!(n > 0, "{r}");
    assert!(r["tls"].is_null(), "{r}");
    let total = &backend.stats()["total"];
    assert!(total["upgraded"].as_u64() >= Some(n), "{total}");
    // Every cycle ended with the client's close 1000, which ringecho
    // received (cycles outside the window are not counted in n).
    let received = backend.closes_received(1000);
    assert!(received >= n, "{received} closes for {n} cycles");
}

/// ringecho serving wss:// itself (`--tls-cert`/`--tls-key`): every echo
/// verified over TLS 1.3, handshake cycles with no failures, and
/// `compare --tls` with both rows.
#[test]
fn wss_against_ringecho() {
    let certs = certs("ringecho");
    let server = ringecho(&[
        "--tls-cert",
        &certs.arg("server.pem"),
        "--tls-key",
        &certs.arg("server.key"),
    ]);
    let url = wss(server.addr);
    let ca = certs.arg("ca.pem");
    let r = verified_over_tls13(
        &url,
        &[
            "--ca",
            &ca,
            "--connections",
            "20",
            "--size",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
        20,
    );
    assert_eq!(r["tls_kx_group"], "X25519", "{r}");
    verified_over_tls13(
        &url,
        &[
            "--ca",
            &ca,
            "--connections",
            "4",
            "--size",
            "100000",
            "--in-flight",
            "3",
            "--text",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
        4,
    );
    for kx in ["x25519", "p256"] {
        let (status, r, err) = load(
            &url,
            &[
                "--ca",
                &ca,
                "--handshakes",
                "--tls-kx",
                kx,
                "--connections",
                "4",
                "--duration",
                "1",
                "--warmup",
                "0.2",
                "--server-pid",
                &server.pid().to_string(),
            ],
        );
        assert!(status.success(), "{kx}: {r}\n{err}");
        assert_eq!(r["handshake_failures"], 0, "{kx}: {r}");
        assert!(r["handshakes"].as_u64().unwrap_or(0) > 0, "{kx}: {r}");
        assert_eq!(r["tls"], "TLS1.3", "{kx}: {r}");
        assert!(
            r["server_cpu_us_per_handshake"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
    }
    drop(server);

    // compare --tls, message rate then handshake rate: both rows, no
    // errors, the ratio line.
    let out = certs.path("compare");
    for (handshakes, name) in [(false, "m"), (true, "h")] {
        let mut cmd = Command::new(LOADTEST);
        cmd.arg("compare")
            .arg("--tls")
            .arg("--ringecho")
            .arg(ringecho_bin())
            .arg("--tls-cert")
            .arg(certs.path("server.pem"))
            .arg("--tls-key")
            .arg(certs.path("server.key"))
            .args(["--connections", "4", "--duration", "0.5", "--warmup", "0.2"])
            .args(["--name", name])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null());
        if handshakes {
            cmd.arg("--handshakes");
        }
        let mut child = cmd.spawn().expect("run loadtest compare --tls");
        let status = wait_bounded(&mut child, 120, "compare --tls");
        assert!(status.success(), "compare --tls (handshakes: {handshakes})");
        let md = std::fs::read_to_string(out.join(format!("{name}.md"))).expect("md written");
        for row in ["| ringecho wss | ", "| nginx TLS → ringecho ws | "] {
            let line = md
                .lines()
                .find(|l| l.starts_with(row))
                .unwrap_or_else(|| panic!("no {row} row in {md}"));
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(cells[2].parse::<f64>().unwrap_or(0.0) > 0.0, "{line}");
            assert!(
                cells[8].parse::<f64>().unwrap_or(0.0) > 0.0,
                "µs/op: {line}"
            );
            assert!(cells[9].starts_with("TLS1.3 "), "{line}");
            assert_eq!(cells[10], "0", "errors: {line}");
        }
        let per = if handshakes { "handshake" } else { "echo" };
        assert!(
            md.contains("ringecho wss / nginx TLS → ringecho ws: ")
                && md.contains(&format!("× server CPU per {per}")),
            "{md}"
        );
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).expect("svg written");
        assert!(
            svg.starts_with("<svg") && svg.contains("nginx TLS"),
            "{svg}"
        );
    }
}
