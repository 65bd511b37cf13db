//! End-to-end runs of the `loadtest` binary against ringecho and against its
//! own peer servers, including deliberately broken ones.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::ringecho_bin;

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");

/// A server process, killed when the test ends however it ends.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mut cmd: Command) -> Server {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("server stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("listening on ") {
                let rest = &line[i + "listening on ".len()..];
                let rest = rest.strip_prefix("ws://").unwrap_or(rest);
                let end = rest.find(['/', ' ']).unwrap_or(rest.len());
                if let Ok(a) = rest[..end].parse::<SocketAddr>() {
                    let _ = tx.send(a);
                }
            }
        }
    });
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    server.addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server reports its address");
    server
}

fn ringecho() -> Server {
    let mut cmd = Command::new(ringecho_bin());
    cmd.args(["--threads", "1", "--listen", "127.0.0.1:0"]);
    start(cmd)
}

fn peer(kind: &str, extra: &[&str]) -> Server {
    let mut cmd = Command::new(LOADTEST);
    cmd.args(["peer", kind, "--listen", "127.0.0.1:0"])
        .args(extra);
    start(cmd)
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

/// Run `loadtest` with a hard time limit; its JSON report and exit status.
fn load(server: &Server, args: &[&str]) -> (ExitStatus, serde_json::Value) {
    let mut child = Command::new(LOADTEST)
        .arg(format!("ws://{}/", server.addr))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn loadtest");
    let mut stdout = child.stdout.take().expect("loadtest stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, 60, "loadtest");
    let out = reader.join().expect("reader thread");
    let json = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
    (status, json)
}

fn errors(r: &serde_json::Value, kind: &str) -> u64 {
    r["errors"][kind].as_u64().unwrap_or(0)
}

#[test]
fn closed_loop_against_ringecho_verifies_every_echo() {
    let server = ringecho();
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "20",
            "--size",
            "100",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    assert_eq!(r["connections_open"], 20, "{r}");
    assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["latency_us"]["p99"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn text_and_fragments_with_several_in_flight() {
    // 16 KiB messages come back from ringecho in several fragments; with
    // four in flight the reassembly and ordering checks both get exercised.
    let server = ringecho();
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "8",
            "--size",
            "16384",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--in-flight",
            "4",
            "--text",
        ],
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    assert!(r["messages"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn corrupting_server_is_detected() {
    let server = peer("tungstenite", &["--corrupt"]);
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "10",
            "--size",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    assert!(!status.success(), "{r}");
    assert!(errors(&r, "corrupt") > 0, "{r}");
}

#[test]
fn dropping_server_is_detected() {
    let server = peer("fastwebsockets", &["--drop"]);
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "10",
            "--size",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--in-flight",
            "2",
            "--drain",
            "0.5",
        ],
    );
    assert!(!status.success(), "{r}");
    assert!(errors(&r, "lost") > 0, "{r}");
}

#[test]
fn open_loop_holds_the_rate_and_reports_percentiles() {
    let server = ringecho();
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "10",
            "--size",
            "64",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--rate",
            "2000",
        ],
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["mode"], "open", "{r}");
    let rate = r["msgs_per_sec"].as_f64().unwrap_or(0.0);
    assert!((1500.0..=2500.0).contains(&rate), "rate {rate}: {r}");
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_us"][p].as_u64().unwrap_or(0) > 0, "{p}: {r}");
    }
}

#[test]
fn raw_mode_against_the_raw_echo_peers() {
    // 64 KiB messages with 3 in flight overflow the socket buffers, so the
    // io_uring peer's partial sends are exercised too.
    for (kind, size) in [
        ("raw-uring", "300"),
        ("raw-ring", "300"),
        ("raw-ring", "65536"),
    ] {
        let server = peer(kind, &[]);
        let (status, r) = load(
            &server,
            &[
                "--connections",
                "10",
                "--size",
                size,
                "--duration",
                "1",
                "--warmup",
                "0.2",
                "--raw",
                "--in-flight",
                "3",
            ],
        );
        assert!(status.success(), "{kind} {size}: {r}");
        assert_eq!(r["error_total"], 0, "{kind} {size}: {r}");
        assert!(
            r["messages"].as_u64().unwrap_or(0) > 0,
            "{kind} {size}: {r}"
        );
    }
}

#[test]
fn echo_on_open_echoes_while_the_other_connections_are_still_opening() {
    // The connect rate stretches the opening over about a quarter of a
    // second, so the first connections are certain to echo before the last
    // ones open; it also keeps SYNs within the peer's accept backlog.
    let server = peer("fastwebsockets", &[]);
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "500",
            "--connect-rate",
            "2000",
            "--source-ips",
            "4",
            "--size",
            "64",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--echo-on-open",
        ],
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    assert_eq!(r["connections_open"], 500, "{r}");
    assert_eq!(r["connections_failed"], 0, "{r}");
    assert_eq!(r["echo_on_open"], true, "{r}");
    let open = r["open_secs"].as_f64().unwrap_or(0.0);
    assert!((0.2..10.0).contains(&open), "open_secs {open}: {r}");
    assert!(r["echoes_while_opening"].as_u64() > Some(0), "{r}");
    assert!(r["messages"].as_u64() > Some(0), "{r}");
}

#[test]
fn ringecho_opens_10000_connections_within_10_s_while_the_open_ones_echo() {
    // A reconnect storm: every connection echoes from the moment it opens,
    // so the shard is busy echoing while the rest are still arriving. One
    // ring accept per scheduler turn opened fewer than half in a minute.
    let server = ringecho();
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "10000",
            "--threads",
            "1",
            "--duration",
            "12",
            "--warmup",
            "0",
            "--echo-on-open",
        ],
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["connections_open"], 10000, "{r}");
    assert_eq!(r["connections_failed"], 0, "{r}");
    let open = r["open_secs"].as_f64().unwrap_or(f64::MAX);
    assert!(open < 10.0, "open_secs {open}");
    assert!(r["echoes_while_opening"].as_u64() > Some(0), "{r}");
}

/// `GET path` on `addr`: the response body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect for GET");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = String::new();
    // The server closes after a plain response (Connection: close).
    let _ = s.read_to_string(&mut all);
    all.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// HAProxy in TCP mode in front of two ringecho processes, the scale-out
/// shape of `docs/deployment.md`: every echo through it is verified, and
/// both processes serve a share.
#[test]
fn haproxy_in_tcp_mode_spreads_verified_echoes_over_two_ringecho_processes() {
    let backends = [ringecho_with_metrics(), ringecho_with_metrics()];
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let dir = std::env::temp_dir().join(format!("ringecho-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    // The configuration docs/deployment.md documents, on this test's ports.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/deployment.md"
    ))
    .expect("docs/deployment.md");
    let start = doc
        .find("defaults\n    mode tcp")
        .expect("the HAProxy block in the doc");
    let end = start + doc[start..].find("```").expect("the block's end");
    let documented = &doc[start..end];
    for placeholder in ["0.0.0.0:80", "127.0.0.1:9001", "127.0.0.1:9002"] {
        assert!(documented.contains(placeholder), "{documented}");
    }
    let config = documented
        .replace("0.0.0.0:80", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9001", &backends[0].0.addr.to_string())
        .replace("127.0.0.1:9002", &backends[1].0.addr.to_string());
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("haproxy is not installed: run the README's test command (.ci/test.sh), which installs it");
    let proxy = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(proxy.addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, r) = load(
        &proxy,
        &[
            "--connections",
            "20",
            "--size",
            "100",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    assert_eq!(r["connections_open"], 20, "{r}");
    let mut upgraded = 0;
    for (_, metrics_at) in &backends {
        let stats: serde_json::Value =
            serde_json::from_str(&http_get(*metrics_at, "/stats")).expect("/stats is JSON");
        let n = stats["total"]["upgraded"].as_u64().unwrap_or(0);
        assert!(n >= 5, "a backend served only {n} of 20: {stats}");
        upgraded += n;
    }
    assert!(upgraded >= 20, "{upgraded}");
}

/// ringecho with its metrics listener: the server and the listener's
/// address.
fn ringecho_with_metrics() -> (Server, SocketAddr) {
    let mut cmd = Command::new(ringecho_bin());
    cmd.args(["--threads", "2", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn ringecho");
    let stdout = child.stdout.take().expect("ringecho stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Log lines: the message follows a timestamp and a level.
            let after = |marker: &str| {
                line.find(marker)
                    .map(|i| line[i + marker.len()..].to_string())
            };
            let found = after("ringecho listening on ws://")
                .map(|r| (false, r))
                .or_else(|| after("metrics on http://").map(|r| (true, r)));
            if let Some((metrics, rest)) = found {
                let end = rest.find('/').unwrap_or(rest.len());
                if let Ok(a) = rest[..end].parse::<SocketAddr>() {
                    let _ = tx.send((metrics, a));
                }
            }
        }
    });
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut metrics = None;
    for _ in 0..2 {
        let (is_metrics, a) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ringecho reports both addresses");
        if is_metrics {
            metrics = Some(a);
        } else {
            server.addr = a;
        }
    }
    (server, metrics.expect("a metrics address"))
}

/// The sum over shards of a Prometheus sample, e.g.
/// `ringecho_messages_echoed_total`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Metrics scraped during a load run only climb, and after it they agree
/// with what the load generator counted: every connection, and every echo it verified, plus at most one
/// message per connection at each edge of its measured window (echoes that
/// arrive just outside it are verified but not counted).
#[test]
fn metrics_scraped_during_and_after_a_run_match_the_load_generators_counts() {
    let (server, metrics_at) = ringecho_with_metrics();
    // Scraped while the run goes on: the count climbs, never falls.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = http_get(metrics_at, "/metrics");
                seen.push(metric(&text, "ringecho_messages_echoed_total"));
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    let (status, r) = load(
        &server,
        &[
            "--connections",
            "20",
            "--size",
            "100",
            "--duration",
            "2",
            "--warmup",
            "0",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = scraper.join().unwrap();
    assert!(during.windows(2).all(|w| w[0] <= w[1]), "{during:?}");
    assert!(
        during.iter().filter(|&&n| n > 0).count() >= 3,
        "scraped while echoing: {during:?}"
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    let text = http_get(metrics_at, "/metrics");
    let verified = r["messages"].as_u64().unwrap();
    let echoed = metric(&text, "ringecho_messages_echoed_total");
    assert!(
        echoed >= verified && echoed <= verified + 2 * 20,
        "server echoed {echoed}, client verified {verified}\n{text}"
    );
    assert_eq!(
        metric(&text, "ringecho_connections_upgraded_total"),
        20,
        "{text}"
    );
    assert_eq!(
        metric(&text, "ringecho_connections_accepted_total"),
        20,
        "{text}"
    );
    assert_eq!(metric(&text, "ringecho_protocol_errors_total"), 0, "{text}");
    // Each closed with a normal close, received and answered.
    let closes = |text: &str, dir: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("ringecho_close_frames_{dir}_total{{")))
            .filter(|l| l.contains("code=\"1000\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = text;
    while closes(&text, "received") < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        text = http_get(metrics_at, "/metrics");
    }
    assert_eq!(closes(&text, "received"), 20, "{text}");
    assert_eq!(closes(&text, "sent"), 20, "{text}");
    // The counters are for operators: not on the public port.
    assert_eq!(http_get_status(server.addr, "/stats"), 404);
    assert_eq!(http_get_status(server.addr, "/healthz"), 200);
    assert_eq!(http_get_status(metrics_at, "/healthz"), 200);
}

/// The status of `GET path` on `addr`.
fn http_get_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect for GET");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    all.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn nothing_listening_is_a_counted_connect_failure() {
    // Bind then drop to find a port with (almost certainly) no listener.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let fake = Server {
        child: Command::new("true").spawn().expect("spawn true"),
        addr,
    };
    let (status, r) = load(
        &fake,
        &["--connections", "3", "--duration", "0.5", "--warmup", "0"],
    );
    assert!(!status.success(), "{r}");
    assert_eq!(errors(&r, "connect_failed"), 3, "{r}");
}

/// `loadtest soak` with every timeout short, so each kind of hostile client
/// meets its defence within seconds. The latency check is a benchmark's,
/// not a test's, and is switched off with a huge ratio.
fn soak(extra: &[&str], out: &std::path::Path) -> (ExitStatus, serde_json::Value) {
    let mut child = Command::new(LOADTEST)
        .arg("soak")
        .arg("--ringecho")
        .arg(ringecho_bin())
        .args(["--baseline", "2", "--ramp", "1", "--recovery", "15"])
        .args(["--connections", "20", "--rate", "2000"])
        .args(["--slowloris", "10", "--never-read", "4", "--flooders", "2"])
        .args(["--flood-rate", "1000", "--reset-rate", "10"])
        .args(["--max-p99-ratio", "1000"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn loadtest soak");
    let status = wait_bounded(&mut child, 120, "soak");
    let json = std::fs::read_to_string(out.join("soak.json")).expect("soak.json written");
    (
        status,
        serde_json::from_str(&json).expect("soak.json parses"),
    )
}

fn hostile<'a>(r: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    r["hostile"]
        .as_array()
        .and_then(|v| v.iter().find(|h| h["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} clients in {r}"))
}

#[test]
fn soak_meets_every_hostile_client_with_its_defence_and_recovers() {
    let out = std::env::temp_dir().join(format!("ringecho-soak-{}", std::process::id()));
    let (status, r) = soak(
        &[
            "--duration",
            "6",
            "--server-arg=--handshake-timeout=1s",
            "--server-arg=--idle-timeout=1s",
            "--server-arg=--close-timeout=1s",
        ],
        &out,
    );
    let checks = r["checks"].to_string();
    assert!(status.success(), "{checks}");
    assert_eq!(r["mixed"]["error_total"], 0, "{}", r["mixed"]);
    assert!(r["mixed"]["messages"].as_u64().unwrap_or(0) > 5000);
    // Each kind really ran and really met the server's defence.
    assert!(hostile(&r, "slowloris")["cut_by_server"].as_u64() > Some(0));
    assert!(hostile(&r, "never-read")["cut_by_server"].as_u64() > Some(0));
    assert!(hostile(&r, "flood")["opened"].as_u64() > Some(0));
    assert!(hostile(&r, "reset")["opened"].as_u64() > Some(10));
    let server = &r["server_stats"]["total"];
    assert!(server["timed_out"].as_u64() > Some(0), "{server}");
    assert!(server["idle_closed"].as_u64() > Some(0), "{server}");
    assert!(r["fds_end"].as_u64() <= r["fds_baseline"].as_u64(), "{r}");
    for ext in ["md", "svg"] {
        assert!(out.join(format!("soak.{ext}")).exists(), "soak.{ext}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn soak_fails_when_well_behaved_clients_are_not_served() {
    // A connection limit below the well-behaved clients' count: some of
    // them are refused, and the run must say so in its exit status.
    let out = std::env::temp_dir().join(format!("ringecho-soak-fail-{}", std::process::id()));
    eprintln!(
        "note: this soak run is meant to fail (a connection limit below its \
         well-behaved clients); the failed checks it prints are expected"
    );
    let (status, r) = soak(
        &["--duration", "1", "--server-arg=--max-connections=5"],
        &out,
    );
    assert!(!status.success(), "{}", r["checks"]);
    assert_eq!(r["checks"][0]["passed"], false, "{}", r["checks"]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_writes_a_table_and_chart_with_each_server_as_a_ratio_to_ringecho() {
    let out = std::env::temp_dir().join(format!("ringecho-compare-{}", std::process::id()));
    // The same binary as its own baseline: enough to show the row exists
    // and is run like ringecho; the ratio itself is noise here.
    let status = Command::new(LOADTEST)
        .arg("compare")
        .arg("--ringecho")
        .arg(ringecho_bin())
        .arg("--ringecho-baseline")
        .arg(ringecho_bin())
        .args(["--servers", "ringecho,fastwebsockets,raw-uring"])
        .args(["--connections", "4", "--duration", "0.5", "--warmup", "0.2"])
        .args(["--name", "t"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run loadtest compare");
    assert!(status.success());
    let md = std::fs::read_to_string(out.join("t.md")).expect("t.md written");
    let rows = [
        "| ringecho | ",
        "| ringecho (baseline) | ",
        "| fastwebsockets | ",
        "| raw-uring | ",
    ];
    for row in rows {
        let line = md
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row in {md}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells[2].parse::<f64>().unwrap_or(0.0) > 0.0, "{line}");
        assert!(cells[3].ends_with('×'), "{line}");
        assert_eq!(cells[9], "0", "errors: {line}");
    }
    assert!(md.contains("| ringecho | ") && md.contains("| 1.00× |"));
    assert!(md.contains("ringecho / ringecho (baseline): "), "{md}");
    let svg = std::fs::read_to_string(out.join("t.svg")).expect("t.svg written");
    assert!(svg.starts_with("<svg") && svg.contains("ringecho (baseline)"));
    let _ = std::fs::remove_dir_all(&out);
}

/// `loadtest ARGS --json` against `server`, with stderr kept: status,
/// report and what it said there.
fn load_with_stderr(server: &Server, args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    let mut child = Command::new(LOADTEST)
        .arg(format!("ws://{}/", server.addr))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn loadtest");
    let mut stdout = child.stdout.take().expect("loadtest stdout");
    let mut stderr = child.stderr.take().expect("loadtest stderr");
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
    let status = wait_bounded(&mut child, 60, "loadtest");
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    let json = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
    (status, json, err)
}

/// A `--deflate` run that must verify every echo: none lost, none wrong,
/// every connection open; the report's compression ratio as sent and as
/// echoed.
fn deflate_run_verifies_everything(server: &Server, args: &[&str]) -> (f64, f64) {
    let (status, r) = load(
        server,
        &[&["--deflate", "--connections", "6"], args].concat(),
    );
    assert!(status.success(), "{args:?}: {r}");
    assert_eq!(r["error_total"], 0, "{args:?}: {r}");
    assert_eq!(errors(&r, "lost"), 0, "{args:?}: {r}");
    assert_eq!(r["connections_open"], 6, "{args:?}: {r}");
    assert_eq!(r["deflate"], true, "{r}");
    assert!(r["messages"].as_u64().unwrap_or(0) > 0, "{args:?}: {r}");
    let ratio = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("no {k}: {r}"));
    (ratio("compression_ratio"), ratio("echo_compression_ratio"))
}

#[test]
fn deflate_against_the_recompressing_peer_verifies_every_echo() {
    let server = peer("deflate-recompress", &[]);
    let common = ["--duration", "1", "--warmup", "0.2", "--in-flight", "2"];
    let (text, text_echoed) = deflate_run_verifies_everything(
        &server,
        &[&common[..], &["--text", "--size", "1024"]].concat(),
    );
    assert!(text < 0.5, "text compresses to {text}");
    // The peer compresses again at the client's level, with the same
    // library: the same bytes come back.
    assert_eq!(text, text_echoed);
    let (binary, _) = deflate_run_verifies_everything(
        &server,
        &[&common[..], &["--binary", "--size", "4096"]].concat(),
    );
    assert!(binary < 0.6, "binary compresses to {binary}");
}

#[test]
fn deflate_corruption_by_the_recompressing_peer_is_detected() {
    // The peer spoils the message before compressing it again, so the
    // echo's bytes differ from what was sent and the client must inflate
    // it to find out.
    let server = peer("deflate-recompress", &["--corrupt"]);
    let (status, r) = load(
        &server,
        &[
            "--deflate",
            "--text",
            "--size",
            "512",
            "--connections",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    assert!(!status.success(), "{r}");
    assert!(errors(&r, "corrupt") > 0, "{r}");
    assert_eq!(r["error_total"], r["errors"]["corrupt"], "{r}");
}

#[test]
fn deflate_declined_by_the_server_fails_every_connection_and_says_why() {
    // fastwebsockets' handshake here answers without extensions.
    let server = peer("fastwebsockets", &[]);
    let (status, r, stderr) = load_with_stderr(
        &server,
        &[
            "--deflate",
            "--connections",
            "3",
            "--duration",
            "0.3",
            "--warmup",
            "0",
        ],
    );
    assert!(!status.success(), "{r}");
    assert_eq!(errors(&r, "deflate_refused"), 3, "{r}");
    assert_eq!(r["connections_open"], 0, "{r}");
    assert_eq!(r["connections_failed"], 3, "{r}");
    assert!(
        stderr.contains("declined permessage-deflate"),
        "stderr: {stderr}"
    );
    assert_eq!(
        stderr.matches("--deflate:").count(),
        1,
        "said once: {stderr}"
    );
}

#[test]
fn compressible_messages_go_uncompressed_to_a_server_without_deflate() {
    let server = ringecho();
    let (status, r) = load(
        &server,
        &[
            "--compressible",
            "--text",
            "--size",
            "100000",
            "--connections",
            "4",
            "--in-flight",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    assert!(status.success(), "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    assert_eq!(r["compressible"], true, "{r}");
    assert!(r["compression_ratio"].is_null(), "{r}");
    assert!(r["messages"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn compare_deflate_names_the_recompressing_peer_and_adds_cpu_per_echo() {
    let out = std::env::temp_dir().join(format!("ringecho-compare-deflate-{}", std::process::id()));
    let status = Command::new(LOADTEST)
        .arg("compare")
        .arg("--deflate")
        .args(["--servers", "deflate-recompress,fastwebsockets"])
        .args(["--connections", "2", "--duration", "0.5", "--warmup", "0.2"])
        .args(["--name", "d"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run loadtest compare --deflate");
    assert!(status.success());
    let md = std::fs::read_to_string(out.join("d.md")).expect("d.md written");
    assert!(md.contains("| server CPU µs/echo | wire/message |"), "{md}");
    for (row, compressed) in [
        ("| recompress (flate2, level 6) | ", true),
        ("| fastwebsockets (no deflate) | ", false),
    ] {
        let line = md
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row in {md}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells[2].parse::<f64>().unwrap_or(0.0) > 0.0, "{line}");
        assert!(
            cells[9].parse::<f64>().unwrap_or(0.0) > 0.0,
            "µs/echo: {line}"
        );
        // The peer compresses again at the client's level, so what comes
        // back is as small as what went out.
        let (sent, echoed) = cells[10].split_once(" / ").expect("sent / echoed");
        assert_eq!(sent, echoed, "{line}");
        let sent: f64 = sent.parse().unwrap();
        assert_eq!(sent < 0.6, compressed, "{line}");
        assert_eq!(cells[11], "0", "errors: {line}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// ringecho with `--permessage-deflate` echoes compressed messages as they
/// came: every echo verifies, and the bytes that come back are the bytes
/// sent, even where ringecho splits a large message into several frames.
#[test]
fn deflate_against_ringecho_every_echo_is_the_compressed_message_as_sent() {
    let mut cmd = Command::new(ringecho_bin());
    cmd.args([
        "--threads",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--permessage-deflate",
    ]);
    let server = start(cmd);
    let common = ["--duration", "1", "--warmup", "0.2", "--in-flight", "2"];
    for (kind, size, below) in [
        ("--text", "1024", 0.5),
        ("--binary", "4096", 0.6),
        // Larger than ringecho's 64 KiB read buffer, compressed or not.
        ("--text", "400000", 0.5),
    ] {
        let (sent, echoed) = deflate_run_verifies_everything(
            &server,
            &[&common[..], &[kind, "--size", size]].concat(),
        );
        assert!(sent < below, "{kind} {size}: {sent}");
        assert_eq!(sent, echoed, "{kind} {size}: echoed verbatim");
    }
    // Without the flag ringecho declines, and the client says so.
    let plain = ringecho();
    let (status, r, stderr) = load_with_stderr(
        &plain,
        &["--deflate", "--connections", "2", "--duration", "0.3"],
    );
    assert!(!status.success(), "{r}");
    assert_eq!(errors(&r, "deflate_refused"), 2, "{r}");
    assert!(stderr.contains("declined permessage-deflate"), "{stderr}");

    // compare --deflate: ringecho with the flag, the recompressing peer and
    // ringecho without the flag, and the ratio of the first to the second.
    let out = std::env::temp_dir().join(format!("ringecho-compare-pmd-{}", std::process::id()));
    let status = Command::new(LOADTEST)
        .arg("compare")
        .arg("--deflate")
        .arg("--text")
        .arg("--ringecho")
        .arg(ringecho_bin())
        .args(["--connections", "2", "--duration", "0.5", "--warmup", "0.2"])
        .args(["--name", "pmd"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run loadtest compare --deflate");
    assert!(status.success());
    let md = std::fs::read_to_string(out.join("pmd.md")).expect("pmd.md written");
    for row in [
        "| ringecho --permessage-deflate | ",
        "| recompress (flate2, level 6) | ",
        "| ringecho (no deflate) | ",
    ] {
        let line = md
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row in {md}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(
            cells[9].parse::<f64>().unwrap_or(0.0) > 0.0,
            "µs/echo: {line}"
        );
        assert_eq!(cells[11], "0", "errors: {line}");
    }
    assert!(
        md.contains("ringecho --permessage-deflate / recompress (flate2, level 6): "),
        "{md}"
    );
    assert!(md.contains("× server CPU per echo"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
}
