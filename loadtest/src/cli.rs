//! Command-line parsing for the three faces of `loadtest`: the load generator
//! (`loadtest URL ...`), `loadtest compare ...` and `loadtest peer ...`.
//!
//! Hand-written rather than derived: the top level takes either a URL or a
//! subcommand name in the same position, which derive-based parsers express
//! awkwardly, and the flag set is small.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::{Kx, TlsOptions, Trust};

pub const HELP: &str = "\
loadtest — load generator and comparison harness for ringecho

USAGE:
    loadtest URL [OPTIONS]                 generate load against a WebSocket echo server
    loadtest compare [OPTIONS]             benchmark ringecho against peer echo servers
    loadtest soak [OPTIONS]                long mixed well-behaved and hostile load
    loadtest peer KIND --listen ADDR:PORT  run a peer echo server
                                           KIND: fastwebsockets | tungstenite | raw-uring | raw-ring
                                                 | deflate-recompress

LOAD OPTIONS (URL is ws://IP:PORT/PATH, wss://IP:PORT/PATH, or tcp://IP:PORT with --raw):
    --connections N        Connections [default: 10]
    --size BYTES           Payload bytes per message [default: 20]
    --duration SECS        Measured window [default: 5]
    --warmup SECS          Load before the measured window, not counted [default: 1]
    --rate MSGS_PER_SEC    Open loop: total send rate over all connections, on a
                           fixed schedule; latency counts from the intended send
                           time (no coordinated omission). Default: closed loop.
    --in-flight K          Closed loop: messages outstanding per connection [default: 1]
    --echo-on-open         Closed loop: each connection starts echoing as soon as its
                           own handshake completes, while the rest are still being
                           opened (uWebSockets' load_test pattern). The clock,
                           --warmup included, starts at the first connect. Default:
                           all connections open first, then the load starts at once.
    --binary | --text      Message opcode [default: --binary]
    --threads T            Client threads, each with its own epoll loop
                           [default: min(available CPUs, connections)]
    --pin CPU_LIST         Pin client thread i to the i-th CPU of the list (e.g. 1 or 0-3,8)
    --connect-rate PER_SEC Limit new connections per second (total)
    --source-ips N         Bind sources 127.0.0.1..127.0.0.N round-robin (each address
                           has ~28k ephemeral ports) [default: enough for N connections]
    --raw                  Raw TCP: send the pre-built masked frame bytes, expect
                           them back verbatim (for a raw echo server)
    --deflate              Offer permessage-deflate (RFC 7692) with
                           client_no_context_takeover; server_no_context_takeover
                           and send every message compressed: raw DEFLATE at zlib
                           level 6, a fresh compressor state per message, RSV1 set.
                           A 101 that does not accept the offer fails the connection
                           (error deflate_refused; the reason goes to stderr). Each
                           echo is reassembled and must come back compressed: one
                           byte-identical to what was sent is verified as it is,
                           any other is inflated and compared with the original.
                           The messages are compressible, a set of 64 made once at
                           start-up (fewer for tiny or huge sizes); message n is
                           the set's n mod 64. --text: JSON lines of common English words (wire bytes
                           per message byte ~0.40 at 1 KiB, ~0.27 at 16 KiB);
                           --binary: 16-byte little-endian sensor records whose
                           fields move in small steps (~0.50 at 1 KiB, ~0.45 at
                           16 KiB). Below ~100 B they do not compress (~1.1 at
                           20 B). The report gives the compression ratio.
    --compressible         Send the messages --deflate sends, uncompressed (the
                           baseline for --deflate)
    --handshakes           Handshake rate instead of message rate: each of the
                           --connections slots, over and over, opens a new TCP
                           connection (wss://: with a full TLS handshake, never
                           resumed), upgrades it, sends one --size message,
                           verifies its echo, closes (a close frame with 1000, the
                           server's close frame with 1000 back, then the server's
                           TCP close; RFC 6455 §7.1) and starts again. Reports
                           handshakes/s (completed cycles in the window), failures
                           by kind, cycle latency percentiles (connect to TCP close)
                           and, with --server-pid, server CPU µs per handshake. A
                           cycle gets --connect-timeout to complete. Closed loop
                           only: not with --rate, --in-flight, --echo-on-open, --raw
                           or --connect-rate.
    --json                 Print one JSON object on stdout instead of the text report
    --server-pid PID[,PID...]
                           Sample the CPU time of these processes (summed) over the
                           measured window, and their RSS before the run and under
                           load (RSS per connection in the report)
    --server-stats ADDR    The target is ringecho with --metrics-listen ADDR: with
                           --server-pid, also read its /stats there for the
                           connections open per shard
    --drain SECS           After the window, time to wait for outstanding echoes before
                           counting them lost [default: 2]
    --connect-timeout SECS Time for all connections of a thread to be set up [default: 15]

    The report gives the time from the first connect until the last connection
    opened (open_secs) and how many never opened (connections_failed).

TLS OPTIONS (wss:// only; rustls with the ring provider, TLS 1.3 and 1.2, ALPN
http/1.1, no session resumption: every connection makes a full handshake):
    --ca PEM_FILE          Trust the certificates in this file: the CA that signed
                           the server's certificate, or the server's (self-signed)
                           certificate itself, which is then trusted as presented
                           (its name and dates are still checked)
    --insecure             Accept any certificate: issuer, name and dates are not
                           checked. The handshake signature is still verified, so
                           the server must hold the certificate's private key.
                           wss:// needs --ca or --insecure.
    --tls-server-name NAME SNI and the name the certificate must be valid for
                           [default: localhost]; an IP address sends no SNI
    --tls-kx GROUP         Key exchange: x25519 (rustls's default order: X25519,
                           then P-256 and P-384) or p256 (secp256r1 only)
                           [default: x25519]

    The report gives the negotiated version (tls: TLS1.3), cipher suite, key
    exchange group and ALPN protocol. A failed TLS handshake counts as
    tls_failed and the first one is explained on stderr and in tls_error.

COMPARE OPTIONS:
    --ringecho PATH        ringecho binary (build it with cargo build --release)
    --ringecho-baseline PATH
                           A second ringecho binary (e.g. built from main), run
                           exactly as --ringecho is and shown as its own row,
                           `ringecho (baseline)`, with ringecho's ratio to it
    --server-cpus LIST     CPUs for the server under test [default: 0]
    --client-cpus LIST     CPUs for the load generator [default: 1]
    --connections N  --size BYTES  --duration SECS  --warmup SECS  --in-flight K
    --rounds R             Repeat the interleaved server sequence R times; medians are
                           reported [default: 1]
    --servers LIST         Comma list of ringecho,fastwebsockets,tungstenite,raw-uring,raw-ring,
                           deflate-recompress [default: the first four]
    --text                 Text messages [default: binary]
    --deflate              permessage-deflate: ringecho started with --permessage-deflate
                           and the deflate-recompress peer, each with the client
                           sending compressed (loadtest --deflate), beside ringecho
                           without the flag, sent the same messages uncompressed
                           (--compressible). Other WebSocket peers in --servers are
                           sent them uncompressed too. The table adds server CPU per
                           echo, and ringecho --permessage-deflate's ratio to the
                           recompressing peer follows it
                           [defaults: --servers ringecho,deflate-recompress, --size 1024]
    --tls                  TLS: two rows instead of --servers. `ringecho wss` is
                           ringecho --threads 1 with --tls-cert/--tls-key, serving TLS
                           itself; `nginx TLS → ringecho ws` is nginx (one worker,
                           TLS 1.3 only, the same certificate, ALPN http/1.1, the
                           WebSocket location block of docs/deployment.md)
                           proxying to a plain ringecho --threads 1. nginx's master
                           and worker and both ringechos are pinned to
                           --server-cpus; server CPU is summed over the row's
                           processes (nginx master + worker + ringecho). The client
                           speaks wss:// with --insecure (handshake signatures
                           checked, the certificate chain not: what is compared is
                           the servers' work) and no session resumption. nginx runs
                           from a temporary directory (its own pid, log and temp
                           paths), so it needs no root. The table gives msgs/s,
                           p50/p99, server CPU % and server CPU µs per echo, the TLS
                           version, suite and group, and ringecho wss's ratio to
                           nginx. Each server keeps its own session-ticket default.
    --tls-cert PEM         Certificate chain for both servers (with --tls)
    --tls-key PEM          Its private key (with --tls)
    --handshakes           With --tls: handshake rate (loadtest --handshakes) instead
                           of message rate: handshakes/s, cycle p50/p99 and server
                           CPU µs per handshake, same two rows
    --tls-kx GROUP         With --tls: x25519 or p256, as for loadtest [default: x25519]
    --nginx PATH           With --tls: the nginx binary [default: nginx]
    --out DIR              Where NAME.md and NAME.svg go [default: a new
                           directory ./loadtest-compare-TIME, printed]
    --name NAME            [default: c{connections}-s{size}; with --tls
                           tls-c{connections}-s{size}, or tls-handshakes-c{connections}]

SOAK OPTIONS (loadtest soak --ringecho PATH): well-behaved open-loop clients
alone (the baseline), then beside hostile clients; checks that they lose
nothing, that their p99 stays within --max-p99-ratio of the baseline, and
that the server's RSS stays flat and its descriptors return to the baseline.
Writes NAME.md, NAME.json and NAME.svg; exit status 1 if a check fails.
    --ringecho PATH        ringecho binary
    --server-arg ARG       Extra ringecho flag (repeatable, e.g. --server-arg=--idle-timeout=20s)
    --server-cpus LIST     [default: 0]; ringecho runs one shard per CPU listed
    --client-cpus LIST     [default: 1]; the load and the hostile clients
    --baseline SECS        Well-behaved clients alone [default: 60]
    --duration SECS        Well-behaved and hostile clients together [default: 600]
    --ramp SECS            Hostile clients alone before the mixed window [default: 5]
    --recovery SECS        Time the server gets afterwards to let every hostile
                           connection go [default: 60]
    --connections N        Well-behaved connections [default: 100]
    --size BYTES           Their message size [default: 256]
    --rate MSGS_PER_SEC    Their total open-loop rate [default: 10000]
    --slowloris N          Connections trickling a header that never ends [default: 50]
    --never-read N         Connections pushing 64 KiB messages, never reading [default: 20]
    --flooders N           Connections sending pings and messages back to back [default: 4]
    --flood-rate PER_SEC   Frames per second per flooder; 0 = as fast as the
                           socket takes them [default: 5000]
    --reset-rate PER_SEC   Connections reset mid-handshake, mid-frame or mid-write
                           [default: 20]
    --max-p99-ratio X      [default: 2]
    --out DIR  --name NAME [default: a new directory ./loadtest-soak-TIME, soak]

PEER OPTIONS:
    --listen ADDR:PORT     [default: 127.0.0.1:9002]; port 0 picks a free one
    --corrupt              (broken server, for tests) flip a byte of every 100th message
                           (deflate-recompress: of the message before compressing it)
    --drop                 (broken server, for tests) drop every 100th message

    deflate-recompress echoes compressed messages as most servers do: it
    accepts a permessage-deflate offer (server_no_context_takeover;
    client_no_context_takeover), then inflates each compressed message,
    checks text is UTF-8, and compresses it again (zlib level 6, a fresh
    state per message) to send it back; uncompressed messages come back as
    they are.

Exit status: 0 when every echo verified and no error of any kind was counted,
1 when any error was counted, 2 on bad usage.
";

#[derive(Debug)]
pub enum Command {
    Help,
    Load(LoadArgs),
    Compare(CompareArgs),
    Soak(SoakArgs),
    Peer(PeerArgs),
}

#[derive(Debug, Clone)]
pub struct LoadArgs {
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub connections: usize,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub rate: Option<f64>,
    pub in_flight: usize,
    /// Each connection starts its closed loop the moment it opens, instead
    /// of all starting together once every connection is open.
    pub echo_on_open: bool,
    pub binary: bool,
    pub threads: usize,
    pub pin: Option<Vec<usize>>,
    pub connect_rate: Option<f64>,
    pub source_ips: Option<u32>,
    pub raw: bool,
    /// Offer permessage-deflate and send every message compressed.
    pub deflate: bool,
    /// Send `deflate`'s messages uncompressed.
    pub compressible: bool,
    pub json: bool,
    /// Server processes whose CPU time and RSS are sampled, summed.
    pub server_pids: Vec<u32>,
    /// The target is ringecho, whose metrics listener is here: read its
    /// `/stats` for per-shard counts.
    pub server_stats: Option<SocketAddr>,
    pub drain: Duration,
    pub connect_timeout: Duration,
    /// Hidden: this process is a child of a split run; print the JSON with
    /// serialized histograms so the parent can merge them.
    pub child: bool,
    /// Hidden: global index of this process's first connection, so source
    /// addresses stay spread across the children of a split run.
    pub conn_offset: usize,
    /// wss://: how to speak TLS.
    pub tls: Option<TlsOptions>,
    /// Connect, upgrade, one echo, close, again: the handshake rate.
    pub handshakes: bool,
}

#[derive(Debug, Clone)]
pub struct CompareArgs {
    pub ringecho: PathBuf,
    /// Another ringecho build to measure beside `ringecho`, under the same
    /// flags and pinning, so a change can be judged against where it began.
    pub ringecho_baseline: Option<PathBuf>,
    pub server_cpus: String,
    pub client_cpus: String,
    pub connections: usize,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub in_flight: usize,
    pub rounds: usize,
    pub servers: Vec<String>,
    /// Text messages rather than binary.
    pub text: bool,
    /// The permessage-deflate comparison (see HELP).
    pub deflate: bool,
    pub out: PathBuf,
    pub name: Option<String>,
    /// `--tls`: ringecho's own TLS against nginx terminating TLS.
    pub tls: Option<CompareTls>,
    /// With `--tls`: handshake rate instead of message rate.
    pub handshakes: bool,
}

/// `compare --tls`.
#[derive(Debug, Clone)]
pub struct CompareTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The nginx binary.
    pub nginx: PathBuf,
    pub kx: Kx,
}

#[derive(Debug, Clone)]
pub struct SoakArgs {
    pub ringecho: PathBuf,
    pub server_args: Vec<String>,
    pub server_cpus: String,
    pub client_cpus: String,
    pub baseline: Duration,
    pub duration: Duration,
    pub ramp: Duration,
    pub recovery: Duration,
    pub connections: usize,
    pub size: usize,
    pub rate: f64,
    pub slowloris: usize,
    pub never_read: usize,
    pub flooders: usize,
    pub flood_rate: f64,
    pub reset_rate: f64,
    pub max_p99_ratio: f64,
    pub out: PathBuf,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    FastWebSockets,
    Tungstenite,
    RawUring,
    RawRing,
    DeflateRecompress,
}

impl PeerKind {
    pub fn parse(s: &str) -> Option<PeerKind> {
        match s {
            "fastwebsockets" => Some(PeerKind::FastWebSockets),
            "tungstenite" | "tokio-tungstenite" => Some(PeerKind::Tungstenite),
            "raw-uring" | "raw" => Some(PeerKind::RawUring),
            "raw-ring" => Some(PeerKind::RawRing),
            "deflate-recompress" => Some(PeerKind::DeflateRecompress),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::FastWebSockets => "fastwebsockets",
            PeerKind::Tungstenite => "tungstenite",
            PeerKind::RawUring => "raw-uring",
            PeerKind::RawRing => "raw-ring",
            PeerKind::DeflateRecompress => "deflate-recompress",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerArgs {
    pub kind: PeerKind,
    pub listen: SocketAddr,
    pub corrupt: bool,
    pub drop: bool,
}

pub fn parse(args: Vec<String>) -> Result<Command, String> {
    let Some(first) = args.first() else {
        return Ok(Command::Help);
    };
    match first.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "compare" => parse_compare(&args[1..]).map(Command::Compare),
        "soak" => parse_soak(&args[1..]).map(Command::Soak),
        "peer" => parse_peer(&args[1..]).map(Command::Peer),
        _ => parse_load(&args).map(Command::Load),
    }
}

/// Walks `--flag value` pairs; `value()` takes the next argument.
struct Flags<'a> {
    args: &'a [String],
    at: usize,
}

impl<'a> Flags<'a> {
    fn next_flag(&mut self) -> Option<&'a str> {
        let f = self.args.get(self.at)?;
        self.at += 1;
        Some(f.as_str())
    }

    fn value(&mut self, flag: &str) -> Result<&'a str, String> {
        let v = self
            .args
            .get(self.at)
            .ok_or_else(|| format!("{flag} needs a value"))?;
        self.at += 1;
        Ok(v.as_str())
    }

    fn num<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| format!("{flag}: cannot parse {v:?} as a number"))
    }

    fn secs(&mut self, flag: &str) -> Result<Duration, String> {
        let v: f64 = self.num(flag)?;
        if !(0.0..=86_400.0).contains(&v) {
            return Err(format!("{flag}: {v} is out of range (0..86400 s)"));
        }
        Ok(Duration::from_secs_f64(v))
    }
}

fn parse_load(args: &[String]) -> Result<LoadArgs, String> {
    let mut a = LoadArgs {
        url: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
        host: String::new(),
        path: "/".into(),
        connections: 10,
        size: 20,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        rate: None,
        in_flight: 1,
        echo_on_open: false,
        binary: true,
        threads: 0,
        pin: None,
        connect_rate: None,
        source_ips: None,
        raw: false,
        deflate: false,
        compressible: false,
        json: false,
        server_pids: Vec::new(),
        server_stats: None,
        drain: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(15),
        child: false,
        conn_offset: 0,
        tls: None,
        handshakes: false,
    };
    let mut url = None;
    let mut ca: Option<PathBuf> = None;
    let mut insecure = false;
    let mut server_name: Option<String> = None;
    let mut kx: Option<Kx> = None;
    let mut f = Flags { args, at: 0 };
    while let Some(flag) = f.next_flag() {
        match flag {
            "--connections" | "-c" => a.connections = f.num(flag)?,
            "--size" | "-s" => a.size = f.num(flag)?,
            "--duration" | "-d" => a.duration = f.secs(flag)?,
            "--warmup" => a.warmup = f.secs(flag)?,
            "--rate" => {
                let r: f64 = f.num(flag)?;
                if !(r > 0.0 && r.is_finite()) {
                    return Err("--rate must be positive".into());
                }
                a.rate = Some(r);
            }
            "--in-flight" => a.in_flight = f.num(flag)?,
            "--echo-on-open" => a.echo_on_open = true,
            "--binary" => a.binary = true,
            "--text" => a.binary = false,
            "--threads" | "-t" => a.threads = f.num(flag)?,
            "--pin" => a.pin = Some(parse_cpu_list(f.value(flag)?)?),
            "--connect-rate" => {
                let r: f64 = f.num(flag)?;
                if !(r > 0.0 && r.is_finite()) {
                    return Err("--connect-rate must be positive".into());
                }
                a.connect_rate = Some(r);
            }
            "--source-ips" => {
                let n: u32 = f.num(flag)?;
                if !(1..=250).contains(&n) {
                    return Err("--source-ips must be 1..=250".into());
                }
                a.source_ips = Some(n);
            }
            "--raw" => a.raw = true,
            "--deflate" => a.deflate = true,
            "--compressible" => a.compressible = true,
            "--json" => a.json = true,
            "--server-pid" => a.server_pids = parse_pids(f.value(flag)?)?,
            "--ca" => ca = Some(PathBuf::from(f.value(flag)?)),
            "--insecure" => insecure = true,
            "--tls-server-name" => server_name = Some(f.value(flag)?.into()),
            "--tls-kx" => {
                let v = f.value(flag)?;
                kx = Some(
                    Kx::parse(v).ok_or_else(|| format!("--tls-kx: {v:?} is not x25519 or p256"))?,
                );
            }
            "--handshakes" => a.handshakes = true,
            "--server-stats" => {
                let v = f.value(flag)?;
                a.server_stats = Some(v.parse().map_err(|_| {
                    format!("--server-stats: '{v}' is not ADDR:PORT (ringecho's --metrics-listen)")
                })?);
            }
            "--drain" => a.drain = f.secs(flag)?,
            "--connect-timeout" => a.connect_timeout = f.secs(flag)?,
            "--child" => a.child = true,
            "--conn-offset" => a.conn_offset = f.num(flag)?,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if url.replace(s.to_string()).is_some() {
                    return Err(format!("unexpected argument {s}"));
                }
            }
        }
    }
    let url = url.ok_or("missing URL (e.g. ws://127.0.0.1:9001/)")?;
    let (scheme, addr, host, path) = parse_url(&url)?;
    a.url = url;
    a.addr = addr;
    a.host = host;
    a.path = path;
    a.tls = tls_options(scheme, ca, insecure, server_name, kx)?;
    if a.tls.is_some() && a.raw {
        return Err("--raw speaks raw TCP (tcp://); drop it for wss://".into());
    }
    if a.handshakes {
        // One message per cycle on a fresh connection; the other load
        // shapes describe many messages on connections that stay open.
        let clash = [
            (a.rate.is_some(), "--rate"),
            (a.in_flight > 1, "--in-flight"),
            (a.echo_on_open, "--echo-on-open"),
            (a.raw, "--raw"),
            (a.connect_rate.is_some(), "--connect-rate"),
        ];
        if let Some((_, flag)) = clash.iter().find(|(on, _)| *on) {
            return Err(format!(
                "--handshakes cycles one message per connection as fast as it can; drop {flag}"
            ));
        }
    }
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if a.in_flight == 0 {
        return Err("--in-flight must be at least 1".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if a.raw && (a.deflate || a.compressible) {
        return Err("--deflate and --compressible speak WebSocket; drop --raw".into());
    }
    if a.deflate && a.compressible {
        return Err(
            "--compressible sends --deflate's messages uncompressed; give one of the two".into(),
        );
    }
    if a.echo_on_open && a.rate.is_some() {
        // The open-loop schedule spreads over the connections open when it
        // starts; one that grows as connections open is another workload.
        return Err("--echo-on-open is a closed-loop mode; drop --rate".into());
    }
    if a.threads == 0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        a.threads = match &a.pin {
            Some(list) => list.len(),
            None => cpus,
        };
    }
    a.threads = a.threads.clamp(1, a.connections);
    Ok(a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ws,
    Wss,
    Tcp,
}

/// The TLS options of a wss:// URL; the TLS flags make sense for nothing
/// else.
fn tls_options(
    scheme: Scheme,
    ca: Option<PathBuf>,
    insecure: bool,
    server_name: Option<String>,
    kx: Option<Kx>,
) -> Result<Option<TlsOptions>, String> {
    if scheme != Scheme::Wss {
        let given = [
            (ca.is_some(), "--ca"),
            (insecure, "--insecure"),
            (server_name.is_some(), "--tls-server-name"),
            (kx.is_some(), "--tls-kx"),
        ];
        return match given.iter().find(|(on, _)| *on) {
            Some((_, flag)) => Err(format!("{flag} is for wss:// URLs")),
            None => Ok(None),
        };
    }
    let trust = match (ca, insecure) {
        (Some(path), false) => Trust::Ca(path),
        (None, true) => Trust::Insecure,
        (Some(_), true) => return Err("give --ca or --insecure, not both".into()),
        (None, false) => {
            return Err(
                "wss:// needs to know whom to trust: --ca PEM_FILE (the CA that \
                 signed the server's certificate, or that certificate itself) or \
                 --insecure (accept any certificate)"
                    .into(),
            )
        }
    };
    Ok(Some(TlsOptions {
        trust,
        server_name: server_name.unwrap_or_else(|| "localhost".into()),
        kx: kx.unwrap_or(Kx::Default),
    }))
}

/// `PID` or `PID,PID,...`.
fn parse_pids(v: &str) -> Result<Vec<u32>, String> {
    let pids = v
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("--server-pid: {v:?} is not PID[,PID...]"))?;
    if pids.is_empty() || pids.contains(&0) {
        return Err(format!("--server-pid: {v:?} is not PID[,PID...]"));
    }
    Ok(pids)
}

/// `ws://IP:PORT/PATH`, `wss://IP:PORT/PATH` or `tcp://IP:PORT`. Only what
/// a loopback benchmark needs; no DNS beyond what `ToSocketAddrs` does for
/// `localhost`.
fn parse_url(url: &str) -> Result<(Scheme, SocketAddr, String, String), String> {
    let (scheme, rest) = [
        ("ws://", Scheme::Ws),
        ("wss://", Scheme::Wss),
        ("tcp://", Scheme::Tcp),
    ]
    .into_iter()
    .find_map(|(prefix, scheme)| url.strip_prefix(prefix).map(|r| (scheme, r)))
    .ok_or_else(|| format!("{url}: only ws://, wss:// and tcp:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        // RFC 6455 §3: 80 for ws, 443 for wss.
        let port = if scheme == Scheme::Wss { 443 } else { 80 };
        format!("{authority}:{port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok((scheme, addr, authority.to_string(), path.to_string()))
}

/// `1`, `0-3,8` → CPU numbers, in the order given.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {s:?}");
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: usize = lo.trim().parse().map_err(|_| bad())?;
                let hi: usize = hi.trim().parse().map_err(|_| bad())?;
                if lo > hi || hi >= 4096 {
                    return Err(bad());
                }
                out.extend(lo..=hi);
            }
            None => {
                let c: usize = part.trim().parse().map_err(|_| bad())?;
                if c >= 4096 {
                    return Err(bad());
                }
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("empty CPU list {s:?}"));
    }
    Ok(out)
}

fn parse_compare(args: &[String]) -> Result<CompareArgs, String> {
    let mut c = CompareArgs {
        ringecho: PathBuf::new(),
        ringecho_baseline: None,
        server_cpus: "0".into(),
        client_cpus: "1".into(),
        connections: 100,
        size: 20,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        in_flight: 1,
        rounds: 1,
        servers: ["ringecho", "fastwebsockets", "tungstenite", "raw-uring"]
            .map(String::from)
            .to_vec(),
        text: false,
        deflate: false,
        out: fresh_dir("compare"),
        name: None,
        tls: None,
        handshakes: false,
    };
    let mut have_ringecho = false;
    let mut have_servers = false;
    let mut have_size = false;
    let mut tls = false;
    let mut cert = None;
    let mut key = None;
    let mut nginx = None;
    let mut kx = None;
    let mut f = Flags { args, at: 0 };
    while let Some(flag) = f.next_flag() {
        match flag {
            "--ringecho" => {
                c.ringecho = PathBuf::from(f.value(flag)?);
                have_ringecho = true;
            }
            "--ringecho-baseline" => c.ringecho_baseline = Some(PathBuf::from(f.value(flag)?)),
            "--server-cpus" => {
                let v = f.value(flag)?;
                parse_cpu_list(v)?;
                c.server_cpus = v.into();
            }
            "--client-cpus" => {
                let v = f.value(flag)?;
                parse_cpu_list(v)?;
                c.client_cpus = v.into();
            }
            "--connections" | "-c" => c.connections = f.num(flag)?,
            "--size" | "-s" => {
                c.size = f.num(flag)?;
                have_size = true;
            }
            "--duration" | "-d" => c.duration = f.secs(flag)?,
            "--warmup" => c.warmup = f.secs(flag)?,
            "--in-flight" => c.in_flight = f.num(flag)?,
            "--rounds" => c.rounds = f.num::<usize>(flag)?.max(1),
            "--servers" => {
                let list: Vec<String> = f.value(flag)?.split(',').map(String::from).collect();
                for s in &list {
                    if s != "ringecho" && PeerKind::parse(s).is_none() {
                        return Err(format!("--servers: unknown server {s}"));
                    }
                }
                c.servers = list;
                have_servers = true;
            }
            "--text" => c.text = true,
            "--deflate" => c.deflate = true,
            "--out" => c.out = PathBuf::from(f.value(flag)?),
            "--name" => c.name = Some(f.value(flag)?.into()),
            "--tls" => tls = true,
            "--tls-cert" => cert = Some(PathBuf::from(f.value(flag)?)),
            "--tls-key" => key = Some(PathBuf::from(f.value(flag)?)),
            "--nginx" => nginx = Some(PathBuf::from(f.value(flag)?)),
            "--tls-kx" => {
                let v = f.value(flag)?;
                kx = Some(
                    Kx::parse(v).ok_or_else(|| format!("--tls-kx: {v:?} is not x25519 or p256"))?,
                );
            }
            "--handshakes" => c.handshakes = true,
            "-h" | "--help" => return Err(String::new()),
            s => return Err(format!("compare: unexpected argument {s}")),
        }
    }
    if tls {
        let clash = [
            (have_servers, "--servers"),
            (c.deflate, "--deflate"),
            (c.ringecho_baseline.is_some(), "--ringecho-baseline"),
        ];
        if let Some((_, flag)) = clash.iter().find(|(on, _)| *on) {
            return Err(format!("--tls compares its own two servers; drop {flag}"));
        }
        if !have_ringecho {
            return Err(
                "compare --tls needs --ringecho PATH (e.g. target/release/ringecho)".into(),
            );
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err("compare --tls needs --tls-cert PEM and --tls-key PEM".into());
        };
        c.tls = Some(CompareTls {
            cert,
            key,
            nginx: nginx.unwrap_or_else(|| PathBuf::from("nginx")),
            kx: kx.unwrap_or(Kx::Default),
        });
    } else {
        let given = [
            (cert.is_some(), "--tls-cert"),
            (key.is_some(), "--tls-key"),
            (nginx.is_some(), "--nginx"),
            (kx.is_some(), "--tls-kx"),
            (c.handshakes, "--handshakes"),
        ];
        if let Some((_, flag)) = given.iter().find(|(on, _)| *on) {
            return Err(format!("compare: {flag} goes with --tls"));
        }
    }
    if c.deflate {
        if !have_servers {
            c.servers = ["ringecho", "deflate-recompress"]
                .map(String::from)
                .to_vec();
        }
        // The usual 20 bytes grow when compressed; 1 KiB is a small
        // message that compresses.
        if !have_size {
            c.size = 1024;
        }
        if let Some(raw) = c.servers.iter().find(|s| s.starts_with("raw")) {
            return Err(format!(
                "--deflate: {raw} is a raw TCP echo, which cannot take part"
            ));
        }
    }
    if c.servers.iter().any(|s| s == "ringecho") && !have_ringecho {
        return Err("compare needs --ringecho PATH (e.g. target/release/ringecho)".into());
    }
    if c.connections == 0 || c.in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".into());
    }
    Ok(c)
}

fn parse_soak(args: &[String]) -> Result<SoakArgs, String> {
    let mut s = SoakArgs {
        ringecho: PathBuf::new(),
        server_args: Vec::new(),
        server_cpus: "0".into(),
        client_cpus: "1".into(),
        baseline: Duration::from_secs(60),
        duration: Duration::from_secs(600),
        ramp: Duration::from_secs(5),
        recovery: Duration::from_secs(60),
        connections: 100,
        size: 256,
        rate: 10_000.0,
        slowloris: 50,
        never_read: 20,
        flooders: 4,
        flood_rate: 5000.0,
        reset_rate: 20.0,
        max_p99_ratio: 2.0,
        out: fresh_dir("soak"),
        name: "soak".into(),
    };
    let mut have_ringecho = false;
    let mut f = Flags { args, at: 0 };
    let positive = |flag: &str, v: f64| {
        if v > 0.0 && v.is_finite() {
            Ok(v)
        } else {
            Err(format!("{flag} must be positive"))
        }
    };
    while let Some(flag) = f.next_flag() {
        // `--server-arg=--flag=value` keeps a value that starts with "--"
        // from being read as one of ours.
        if let Some(v) = flag.strip_prefix("--server-arg=") {
            s.server_args.push(v.into());
            continue;
        }
        match flag {
            "--ringecho" => {
                s.ringecho = PathBuf::from(f.value(flag)?);
                have_ringecho = true;
            }
            "--server-arg" => s.server_args.push(f.value(flag)?.into()),
            "--server-cpus" => {
                let v = f.value(flag)?;
                parse_cpu_list(v)?;
                s.server_cpus = v.into();
            }
            "--client-cpus" => {
                let v = f.value(flag)?;
                parse_cpu_list(v)?;
                s.client_cpus = v.into();
            }
            "--baseline" => s.baseline = f.secs(flag)?,
            "--duration" | "-d" => s.duration = f.secs(flag)?,
            "--ramp" => s.ramp = f.secs(flag)?,
            "--recovery" => s.recovery = f.secs(flag)?,
            "--connections" | "-c" => s.connections = f.num(flag)?,
            "--size" | "-s" => s.size = f.num(flag)?,
            "--rate" => s.rate = positive(flag, f.num(flag)?)?,
            "--slowloris" => s.slowloris = f.num(flag)?,
            "--never-read" => s.never_read = f.num(flag)?,
            "--flooders" => s.flooders = f.num(flag)?,
            "--flood-rate" => {
                let v: f64 = f.num(flag)?;
                if !(v >= 0.0 && v.is_finite()) {
                    return Err("--flood-rate must be 0 or positive".into());
                }
                s.flood_rate = v;
            }
            "--reset-rate" => {
                let v: f64 = f.num(flag)?;
                if !(v >= 0.0 && v.is_finite()) {
                    return Err("--reset-rate must be 0 or positive".into());
                }
                s.reset_rate = v;
            }
            "--max-p99-ratio" => s.max_p99_ratio = positive(flag, f.num(flag)?)?,
            "--out" => s.out = PathBuf::from(f.value(flag)?),
            "--name" => s.name = f.value(flag)?.into(),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("soak: unexpected argument {other}")),
        }
    }
    if !have_ringecho {
        return Err("soak needs --ringecho PATH (e.g. target/release/ringecho)".into());
    }
    if s.connections == 0 || s.baseline.is_zero() || s.duration.is_zero() {
        return Err("--connections, --baseline and --duration must be positive".into());
    }
    Ok(s)
}

fn parse_peer(args: &[String]) -> Result<PeerArgs, String> {
    let kind = args.first().and_then(|k| PeerKind::parse(k)).ok_or(
        "peer needs a kind: fastwebsockets, tungstenite, raw-uring, raw-ring \
             or deflate-recompress",
    )?;
    let mut p = PeerArgs {
        kind,
        listen: SocketAddr::from(([127, 0, 0, 1], 9002)),
        corrupt: false,
        drop: false,
    };
    let mut f = Flags { args, at: 1 };
    while let Some(flag) = f.next_flag() {
        match flag {
            "--listen" => {
                let v = f.value(flag)?;
                p.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: {v:?} is not ADDR:PORT"))?;
            }
            "--corrupt" => p.corrupt = true,
            "--drop" => p.drop = true,
            s => return Err(format!("peer: unexpected argument {s}")),
        }
    }
    Ok(p)
}

/// A directory under the current one that does not exist yet, for results
/// nobody asked to put elsewhere: committed benchmark files are never
/// overwritten by default.
pub fn fresh_dir(kind: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("loadtest-{kind}-{secs}");
    (1..1000)
        .map(|n| {
            if n == 1 {
                PathBuf::from(&base)
            } else {
                PathBuf::from(format!("{base}-{n}"))
            }
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_go_to_a_new_directory_unless_told_otherwise() {
        let a = fresh_dir("compare");
        assert!(!a.exists());
        assert!(
            a.to_string_lossy().starts_with("loadtest-compare-"),
            "{a:?}"
        );
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse_compare(&args(&["--ringecho", "ringecho"])).unwrap();
        assert!(c.out.to_string_lossy().starts_with("loadtest-compare-"));
        let c = parse_compare(&args(&["--ringecho", "ringecho", "--out", "x"])).unwrap();
        assert_eq!(c.out, PathBuf::from("x"));
        let s = parse_soak(&args(&["--ringecho", "ringecho"])).unwrap();
        assert!(s.out.to_string_lossy().starts_with("loadtest-soak-"));
    }

    #[test]
    fn deflate_flags() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = parse_compare(&args(&["--ringecho", "r", "--deflate"])).unwrap();
        assert_eq!(c.servers, ["ringecho", "deflate-recompress"]);
        assert_eq!(c.size, 1024);
        let c = parse_compare(&args(&[
            "--deflate",
            "--servers",
            "deflate-recompress,fastwebsockets",
            "--size",
            "20",
        ]))
        .unwrap();
        assert_eq!(c.servers, ["deflate-recompress", "fastwebsockets"]);
        assert_eq!(c.size, 20);
        assert!(parse_compare(&args(&["--deflate", "--servers", "raw-ring"])).is_err());
        let c = parse_compare(&args(&["--servers", "deflate-recompress"])).unwrap();
        assert_eq!((c.deflate, c.size), (false, 20));
        let l = parse_load(&args(&["ws://127.0.0.1:1/", "--deflate"])).unwrap();
        assert!(l.deflate && !l.compressible);
        for bad in [
            &["ws://127.0.0.1:1/", "--deflate", "--raw"][..],
            &["ws://127.0.0.1:1/", "--compressible", "--raw"],
            &["ws://127.0.0.1:1/", "--compressible", "--deflate"],
        ] {
            assert!(parse_load(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compare_tls_flags() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let base = [
            "--ringecho",
            "r",
            "--tls",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ];
        let c = parse_compare(&args(&base)).unwrap();
        let tls = c.tls.expect("--tls");
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert_eq!(tls.nginx, PathBuf::from("nginx"));
        assert_eq!(tls.kx, Kx::Default);
        assert!(!c.handshakes);
        let c = parse_compare(&args(
            &[
                &base[..],
                &["--handshakes", "--tls-kx", "p256", "--nginx", "/n"],
            ]
            .concat(),
        ))
        .unwrap();
        assert!(c.handshakes);
        assert_eq!(c.tls.as_ref().unwrap().kx, Kx::P256);
        assert_eq!(c.tls.unwrap().nginx, PathBuf::from("/n"));
        for bad in [
            &["--ringecho", "r", "--tls"][..],
            &["--ringecho", "r", "--tls", "--tls-cert", "c"],
            &["--tls", "--tls-cert", "c", "--tls-key", "k"],
            &["--ringecho", "r", "--handshakes"],
            &["--ringecho", "r", "--tls-cert", "c"],
            &[&base[..], &["--deflate"]].concat(),
            &[&base[..], &["--servers", "ringecho"]].concat(),
            &[&base[..], &["--ringecho-baseline", "b"]].concat(),
        ] {
            assert!(parse_compare(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn urls() {
        let (s, a, h, p) = parse_url("ws://127.0.0.1:9001/").unwrap();
        assert_eq!(s, Scheme::Ws);
        assert_eq!(a, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(h, "127.0.0.1:9001");
        assert_eq!(p, "/");
        let (_, a, _, p) = parse_url("ws://127.0.0.1:9/x/y").unwrap();
        assert_eq!(a.port(), 9);
        assert_eq!(p, "/x/y");
        assert!(parse_url("http://127.0.0.1/").is_err());
        let (s, a, h, _) = parse_url("wss://127.0.0.1/").unwrap();
        assert_eq!((s, a.port(), h.as_str()), (Scheme::Wss, 443, "127.0.0.1"));
        let (s, a, ..) = parse_url("ws://127.0.0.1").unwrap();
        assert_eq!((s, a.port()), (Scheme::Ws, 80));
        let (s, a, ..) = parse_url("wss://127.0.0.1:8443/echo").unwrap();
        assert_eq!((s, a.port()), (Scheme::Wss, 8443));
    }

    fn load(v: &[&str]) -> Result<LoadArgs, String> {
        parse_load(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn wss_needs_a_trust_decision_and_takes_its_flags() {
        let e = load(&["wss://127.0.0.1:1/"]).unwrap_err();
        assert!(
            e.contains("--ca PEM_FILE") && e.contains("--insecure"),
            "{e}"
        );
        let a = load(&["wss://127.0.0.1:1/", "--insecure"]).unwrap();
        let tls = a.tls.expect("wss:// has TLS options");
        assert_eq!(tls.trust, Trust::Insecure);
        assert_eq!(tls.server_name, "localhost");
        assert_eq!(tls.kx, Kx::Default);
        let a = load(&[
            "wss://127.0.0.1:1/",
            "--ca",
            "ca.pem",
            "--tls-server-name",
            "echo.test",
            "--tls-kx",
            "p256",
        ])
        .unwrap();
        let tls = a.tls.unwrap();
        assert_eq!(tls.trust, Trust::Ca(PathBuf::from("ca.pem")));
        assert_eq!(tls.server_name, "echo.test");
        assert_eq!(tls.kx, Kx::P256);
        assert!(load(&["ws://127.0.0.1:1/"]).unwrap().tls.is_none());
        for bad in [
            &["wss://127.0.0.1:1/", "--ca", "c", "--insecure"][..],
            &["wss://127.0.0.1:1/", "--insecure", "--tls-kx", "x448"],
            &["wss://127.0.0.1:1/", "--insecure", "--raw"],
            &["ws://127.0.0.1:1/", "--insecure"],
            &["ws://127.0.0.1:1/", "--ca", "c"],
            &["ws://127.0.0.1:1/", "--tls-server-name", "x"],
            &["ws://127.0.0.1:1/", "--tls-kx", "p256"],
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn handshakes_is_its_own_closed_loop() {
        let a = load(&["wss://127.0.0.1:1/", "--insecure", "--handshakes"]).unwrap();
        assert!(a.handshakes);
        assert!(
            load(&["ws://127.0.0.1:1/", "--handshakes"])
                .unwrap()
                .handshakes
        );
        for clash in [
            &["--rate", "100"][..],
            &["--in-flight", "2"],
            &["--echo-on-open"],
            &["--raw"],
            &["--connect-rate", "10"],
        ] {
            let args = [&["ws://127.0.0.1:1/", "--handshakes"][..], clash].concat();
            let e = load(&args).unwrap_err();
            assert!(e.contains(clash[0]), "{clash:?}: {e}");
        }
    }

    #[test]
    fn server_pids() {
        let a = load(&["ws://127.0.0.1:1/", "--server-pid", "12,34"]).unwrap();
        assert_eq!(a.server_pids, [12, 34]);
        let a = load(&["ws://127.0.0.1:1/", "--server-pid", "7"]).unwrap();
        assert_eq!(a.server_pids, [7]);
        for bad in ["", "1,", "x", "0"] {
            assert!(
                load(&["ws://127.0.0.1:1/", "--server-pid", bad]).is_err(),
                "{bad:?}"
            );
        }
    }
}
