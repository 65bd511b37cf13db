//! ringecho's command line and start-up: parse flags, raise the descriptor
//! limit, start the shards, and turn SIGINT/SIGTERM into a graceful stop.

use std::process::ExitCode;
use std::time::Duration;

use ringecho::protocol::deflate::Policy;
use ringecho::server::{self, Config, Server};

/// Status lines to stdout. A closed or full stdout (a pipe whose reader has
/// gone) must never take the server down, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Errors to stderr, with the same rule.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// An error that stops the server: a plain line on stderr for whoever
/// started it, and an error event in the log.
macro_rules! fail {
    ($($arg:tt)*) => {{
        let msg = format!($($arg)*);
        esay!("ringecho: {msg}");
        tracing::error!("{msg}");
    }};
}

const HELP: &str = "\
ringecho — a WebSocket (RFC 6455) echo server on io_uring

USAGE:
    ringecho [OPTIONS]

Every text and binary message a client sends is echoed back; GET / serves a
test page that connects, sends \"WebSocket rocks\" and shows the echo.

OPTIONS (defaults are safe on the open internet):
    --listen ADDR:PORT         Address to listen on [default: 127.0.0.1:9001].
                               Use 0.0.0.0:9001 (or [::]:9001) for all interfaces.
    --log-format text|json     Logs on stdout as text lines or one JSON object
                               per line [default: text]; RUST_LOG filters them
                               (default info; debug adds one line per
                               connection: peer, duration, bytes, close codes;
                               nothing is logged per message)
    --trust-proxy IP[,IP...]   Proxies whose Forwarded / X-Forwarded-For report
                               of the client address is logged with the
                               connection [default: none, never logged]
    --metrics-listen ADDR:PORT Serve Prometheus metrics (/metrics), the JSON
                               counters (/stats) and /healthz on this address,
                               for operators only: keep it on loopback or a
                               private network [default: off]. The WebSocket
                               port serves / and /healthz, never the counters.
    --threads N                Shards: threads, each with its own I/O loop and
                               SO_REUSEPORT listener [default: available cores]
    --pin                      Pin shard i to the i-th CPU the process may use
    --max-message-size SIZE    Largest message, summed over its fragments; larger
                               ones are refused at the frame header with close
                               1009 [default: 16MiB]
    --max-header-bytes SIZE    Largest handshake header block; larger gets
                               431 [default: 8KiB]
    --handshake-timeout DUR    Time a client has to complete the opening
                               handshake (stops slowloris) [default: 10s]
    --idle-timeout DUR         Silence after which the server pings; if another
                               period passes without a byte, it closes (1001).
                               0 disables [default: 60s]
    --close-timeout DUR        Time a closing connection has to finish: for the
                               peer to take the rest of its echo and answer our
                               close, or to hang up after a protocol error. A
                               peer that stops reading is cut when it passes
                               [default: 5s]
    --drain-timeout DUR        On SIGINT/SIGTERM: time to wait for close
                               handshakes after sending 1001 [default: 10s]
    --max-connections N        Open connections per shard; beyond it new ones are
                               accepted and closed at once [default: 100000]
    --max-output SIZE          Unsent output per connection, bytes plus a charge
                               per queued frame, before the server stops
                               reading from it (backpressure: a client that
                               does not read cannot grow memory, whatever the
                               size of its frames) [default: 256KiB]
    --read-buffer SIZE         Largest read buffer per connection; buffers start
                               at 4KiB and grow for bulk traffic. Frames that
                               fit it are echoed whole, as they came; larger
                               ones are streamed as fragments. A connection
                               holds at most about --max-output plus twice
                               this [default: 64KiB]
    --tls-cert PATH            wss://: the certificate (PEM; the chain may follow
                               the leaf). With --tls-key, the listener speaks
                               TLS 1.2 and 1.3 only (rustls; ALPN http/1.1)
                               and the test page is served over https://.
                               SIGHUP reads both files again: new connections
                               get the new certificate, open ones keep theirs,
                               and a bad file leaves the old one in use
    --tls-key PATH             The certificate's private key (PEM, PKCS #8,
                               RSA or EC; not encrypted)
    --tls-listen ADDR:PORT     With --tls-cert/--tls-key: keep --listen plain
                               and add a TLS listener here, served by shards
                               of its own (--threads more threads)
    --no-kernel-tls            Keep TLS in user space (rustls) even where the
                               kernel could take the session keys. By default,
                               when the kernel has the tls module, each wss://
                               session passes to it after its handshake, and
                               the kernel encrypts and decrypts: the echo is
                               then sent from the buffer it arrived in, as on
                               ws://. The start-up log says which path is used
    --permessage-deflate       Agree to permessage-deflate (RFC 7692), which
                               every browser offers. Compressed messages are
                               echoed as they came, never recompressed; the
                               server inflates each one into a 16KiB scratch
                               buffer only to check it (UTF-8 of text, the
                               decompressed size against --max-message-size,
                               corrupt data), so a small message that would
                               inflate past the limit is refused at the limit.
                               Costs an inflate pass per compressed message
                               (CPU) and, while one is arriving, up to 63KiB
                               of inflater per connection; with no context
                               takeover (the default answer) an idle
                               connection holds nothing more. Off by default:
                               the echo path then never touches zlib
    --deflate-context-takeover With --permessage-deflate: let clients keep
                               their compression context between messages
                               (better ratios for small similar messages);
                               each connection that sends a compressed
                               message then keeps its inflater (up to 63KiB)
                               until it closes [default: no context takeover]
    --subprotocol NAME         A subprotocol the server may select (repeatable);
                               the first one the client offers that is listed is
                               chosen. None by default.
    --allowed-origin ORIGIN    Allow WebSocket handshakes from this browser origin
                               only (repeatable): a full origin
                               (https://app.example.com), a host (example.com)
                               or a wildcard (*.example.com). Others get 403,
                               which stops cross-site WebSocket hijacking.
                               Clients that send no Origin (non-browsers) are
                               allowed. Default: every origin.
    --io SHELL                 How bytes move: ring (a completion loop per shard
                               on io_uring), tokio-uring (the same on the
                               tokio-uring runtime), epoll (for machines where
                               io_uring is blocked), or auto: ring where
                               io_uring works, else epoll with a one-line
                               warning saying why [default: auto]
    --ring-entries N           Submission queue entries per io_uring [default: 1024]
    --no-ring-tuning           Do not ask for tuned rings (by default SINGLE_ISSUER
                               with DEFER_TASKRUN for --io ring, COOP_TASKRUN for
                               --io tokio-uring, each falling back when refused)
    --recv-pool SIZE           --io ring: memory per shard for the receive
                               buffers its connections share (an io_uring
                               provided-buffer ring), so an idle connection
                               holds none. It starts at 64 buffers and grows
                               with the data in flight up to this; past it,
                               a connection receives into a buffer of its own
                               until buffers come back. 0: every connection
                               has its own [default: 8MiB]
    --recv-buffer SIZE         --io ring: size of each of those buffers
                               [default: 16KiB]
    --recv-single-shot         --io ring: arm one receive at a time per
                               connection instead of a multishot receive
                               limited to 4 buffers per arming (the default
                               where the kernel has that limit, Linux 6.17+;
                               single-shot costs more CPU per echo and pins
                               more buffers while a message straddles two)
    --no-direct-send           Always write through io_uring (by default output
                               is sent with a plain non-blocking sendmsg first:
                               every echo on --io tokio-uring, 4KiB or more
                               at once on --io ring, where smaller echoes go
                               out with the next io_uring_enter anyway)
    -h, --help                 Print this help
    -V, --version              Print the version

SIZE takes an optional suffix: K/KiB, M/MiB, G/GiB (powers of 1024).
DUR takes ms, s or m (plain numbers are seconds).

Extensions are declined unless --permessage-deflate is given. On SIGINT or
SIGTERM the server stops accepting, sends close 1001 to every connection,
waits up to the drain timeout and exits 0; a second signal exits at once.
SIGHUP reloads the TLS certificate and key.
";

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(msg) => {
            esay!("ringecho: {msg}\n\nRun 'ringecho --help' for the options.");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_json);
    let fd_limit = match server::raise_fd_limit() {
        Ok(n) => n,
        Err(e) => {
            fail!("cannot read the descriptor limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Block the stop signals before the shards start, so every thread
    // inherits the mask and only this one receives them (via sigtimedwait).
    let signals = stop_signals();
    // SAFETY: `signals` is an initialised sigset_t on this frame; passing a
    // null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
    }
    let drain = config.drain_timeout;
    // Bound before the shards start, so a taken port is an error at once.
    let metrics = match config.metrics_listen.map(server::metrics::bind).transpose() {
        Ok(m) => m,
        Err(e) => {
            fail!(
                "cannot listen for metrics on {}: {e}",
                config
                    .metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            fail!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = server.local_addr();
    let page_host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    // Up to four descriptors per shard (the listener and a duplicate of it,
    // a ring or epoll instance, an eventfd) plus stdio.
    let capacity = fd_limit.saturating_sub(4 * server.shards() as u64 + 16);
    let (scheme, page) = match (&config.tls, config.tls_listen) {
        (Some(_), None) => ("wss", "https"),
        _ => ("ws", "http"),
    };
    tracing::info!(
        "ringecho listening on {scheme}://{addr}/ with {} on {}",
        plural(server.shards() as u64, "shard"),
        server.io().name()
    );
    if let Some(tls_addr) = server.tls_local_addr() {
        tracing::info!("and a TLS listener on wss://{tls_addr}/");
    }
    tracing::info!("test page: {page}://{page_host}/   health: {page}://{page_host}/healthz");
    if let (Some(slot), Some(kernel)) = (&config.tls, server.kernel_tls()) {
        // Every shard shares one probe of the kernel, so one line says
        // which path each shard's sessions take.
        match kernel {
            Ok(support) => tracing::info!(
                cert = %slot.cert.display(),
                shards = server.shards(),
                "TLS in the kernel (kTLS) on every shard after each rustls handshake, \
                 for {}; other ciphers stay in user space",
                support.describe()
            ),
            Err(why) => tracing::info!(
                cert = %slot.cert.display(),
                shards = server.shards(),
                "TLS in user space (rustls) on every shard: {why}"
            ),
        }
    }
    if let Some(listener) = metrics {
        let at = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if let Err(e) = server::metrics::serve(listener, server.all_stats()) {
            fail!("cannot start the metrics thread: {e}");
            server.stop();
            return ExitCode::FAILURE;
        }
        tracing::info!("metrics on http://{at}/metrics   counters: http://{at}/stats");
    }
    tracing::info!(
        "connection capacity: {capacity} (RLIMIT_NOFILE {fd_limit}; at most {} per shard)",
        config.max_connections_per_shard
    );
    tracing::info!(
        io = server.io().name(),
        shards = server.shards(),
        max_connections_per_shard = config.max_connections_per_shard,
        max_message_size = config.engine.max_message_size,
        max_output = config.engine.max_output_bytes,
        handshake_timeout_ms = config.engine.handshake_timeout.as_millis() as u64,
        idle_timeout_ms = config.engine.idle_timeout.as_millis() as u64,
        close_timeout_ms = config.engine.close_timeout.as_millis() as u64,
        drain_timeout_ms = drain.as_millis() as u64,
        permessage_deflate = match config.engine.deflate {
            Policy::Off => "off",
            Policy::NoContextTakeover => "no context takeover",
            Policy::ContextTakeover => "context takeover allowed",
        },
        "limits"
    );

    let mut stopping = false;
    loop {
        if server.is_finished() {
            break;
        }
        match wait_signal(&signals, Duration::from_millis(200)) {
            Some(libc::SIGHUP) => match &config.tls {
                Some(slot) => match slot.reload() {
                    Ok(()) => tracing::info!(
                        cert = %slot.cert.display(),
                        "SIGHUP: certificate reloaded; new connections use it"
                    ),
                    Err(e) => {
                        tracing::error!("SIGHUP: {e}; still using the certificate loaded before")
                    }
                },
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            },
            Some(sig) if stopping => {
                tracing::warn!("signal {sig} again, exiting now");
                // The shell's convention for death by a signal: 130 for
                // SIGINT, 143 for SIGTERM.
                return ExitCode::from(128u8.saturating_add(sig.clamp(0, 127) as u8));
            }
            Some(_) => {
                tracing::info!(
                    "shutting down: closing connections with 1001, waiting up to {drain:?}"
                );
                server.begin_shutdown();
                stopping = true;
            }
            None => {}
        }
    }
    let s = server.stats();
    tracing::info!(
        accepted = s.accepted,
        upgraded = s.upgraded,
        protocol_errors = s.protocol_errors,
        timed_out = s.timed_out,
        "stopped: {} accepted, {} upgraded, {}, {} timed out",
        plural(s.accepted, "connection"),
        s.upgraded,
        plural(s.protocol_errors, "protocol error"),
        s.timed_out
    );
    server.stop();
    ExitCode::SUCCESS
}

/// Logs go to stdout, as text or one JSON object per line, filtered by
/// `RUST_LOG` (default `info`; `debug` adds a line per connection).
/// Errors that stop the server go to stderr as well, as plain lines.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid
    // signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Wait up to `timeout` for one of the blocked stop signals.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid for the call; a null siginfo pointer
    // is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// `n` and the noun, in the plural unless `n` is 1.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// An address to listen on: ADDR:PORT, or HOST:PORT resolved (the first
/// address the resolver gives, so `localhost:9001` is 127.0.0.1:9001).
fn listen_addr(flag: &str, v: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = v.parse() {
        return Ok(addr);
    }
    let bad = || {
        format!("{flag}: '{v}' is not ADDR:PORT or HOST:PORT (e.g. 127.0.0.1:9001, [::]:9001, localhost:9001)")
    };
    if !v.contains(':') {
        return Err(bad());
    }
    match v.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(bad),
        Err(e) => Err(format!("{flag}: cannot resolve '{v}': {e}")),
    }
}

/// Parse the command line; `Ok(None)` when help or version was printed.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut c = Config::default();
    let mut subprotocols = Vec::new();
    let mut deflate_context = false;
    let (mut tls_cert, mut tls_key) = (None, None);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                {
                    use std::io::Write as _;
                    let _ = write!(std::io::stdout(), "{HELP}");
                }
                return Ok(None);
            }
            "-V" | "--version" => {
                say!("ringecho {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--listen" => {
                let v = value("--listen")?;
                c.listen = listen_addr("--listen", &v)?;
            }
            "--log-format" => {
                c.log_json = match value("--log-format")?.as_str() {
                    "text" => false,
                    "json" => true,
                    other => return Err(format!("--log-format: '{other}' is not text or json")),
                }
            }
            "--trust-proxy" => {
                let v = value("--trust-proxy")?;
                for ip in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    c.trust_proxy.push(
                        ip.parse()
                            .map_err(|_| format!("--trust-proxy: '{ip}' is not an IP address"))?,
                    );
                }
            }
            "--metrics-listen" => {
                let v = value("--metrics-listen")?;
                c.metrics_listen = Some(listen_addr("--metrics-listen", &v)?);
            }
            "--threads" => c.threads = count("--threads", &value("--threads")?, 1, 1024)?,
            "--pin" => c.pin = true,
            "--max-message-size" => {
                c.engine.max_message_size =
                    size("--max-message-size", &value("--max-message-size")?)?
            }
            "--max-header-bytes" => {
                c.engine.max_header_bytes =
                    size("--max-header-bytes", &value("--max-header-bytes")?)?.clamp(256, 1 << 20)
                        as usize
            }
            "--handshake-timeout" => {
                c.engine.handshake_timeout =
                    duration("--handshake-timeout", &value("--handshake-timeout")?, false)?
            }
            "--idle-timeout" => {
                c.engine.idle_timeout = duration("--idle-timeout", &value("--idle-timeout")?, true)?
            }
            "--close-timeout" => {
                c.engine.close_timeout =
                    duration("--close-timeout", &value("--close-timeout")?, false)?
            }
            "--drain-timeout" => {
                c.drain_timeout = duration("--drain-timeout", &value("--drain-timeout")?, true)?
            }
            "--max-connections" => {
                c.max_connections_per_shard = count(
                    "--max-connections",
                    &value("--max-connections")?,
                    1,
                    usize::MAX,
                )?
            }
            "--max-output" => {
                c.engine.max_output_bytes =
                    size("--max-output", &value("--max-output")?)?.max(1) as usize
            }
            "--read-buffer" => {
                let max =
                    size("--read-buffer", &value("--read-buffer")?)?.clamp(1024, 16 << 20) as usize;
                c.engine.read_sizing.max = max;
                c.engine.read_sizing.min = c.engine.read_sizing.min.min(max);
            }
            "--subprotocol" => {
                let v = value("--subprotocol")?;
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
                {
                    return Err(format!("--subprotocol: '{v}' is not an HTTP token"));
                }
                subprotocols.push(v);
            }
            "--allowed-origin" => c.engine.allowed_origins.push(value("--allowed-origin")?),
            "--tls-cert" => tls_cert = Some(std::path::PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => tls_key = Some(std::path::PathBuf::from(value("--tls-key")?)),
            "--tls-listen" => {
                let v = value("--tls-listen")?;
                c.tls_listen = Some(listen_addr("--tls-listen", &v)?);
            }
            "--no-kernel-tls" => c.kernel_tls = false,
            "--permessage-deflate" => {
                if c.engine.deflate == Policy::Off {
                    c.engine.deflate = Policy::NoContextTakeover;
                }
            }
            "--deflate-context-takeover" => deflate_context = true,
            "--ring-entries" => {
                c.ring_entries =
                    count("--ring-entries", &value("--ring-entries")?, 8, 32768)? as u32
            }
            "--recv-pool" => {
                let v = value("--recv-pool")?;
                c.recv_pool = if v.trim() == "0" {
                    0
                } else {
                    size("--recv-pool", &v)?.min(1 << 40) as usize
                }
            }
            "--recv-buffer" => {
                c.recv_buffer =
                    size("--recv-buffer", &value("--recv-buffer")?)?.clamp(1024, 1 << 20) as usize
            }
            "--recv-single-shot" => c.recv_multishot = false,
            "--no-ring-tuning" => c.ring_tuning = false,
            "--no-direct-send" => c.direct_send = false,
            "--io" => {
                c.io = match value("--io")?.as_str() {
                    "auto" => server::Io::Auto,
                    "ring" => server::Io::Ring,
                    "tokio-uring" => server::Io::TokioUring,
                    "epoll" => server::Io::Epoll,
                    other => {
                        return Err(format!(
                            "--io: '{other}' is not a shell (auto, ring, tokio-uring, epoll)"
                        ))
                    }
                }
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    c.engine.subprotocols = subprotocols;
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            c.tls = Some(std::sync::Arc::new(server::tls::TlsSlot::load(
                &cert, &key,
            )?));
        }
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
        (None, None) if c.tls_listen.is_some() => {
            return Err("--tls-listen needs --tls-cert and --tls-key".into())
        }
        (None, None) => {}
    }
    if deflate_context {
        if c.engine.deflate == Policy::Off {
            return Err("--deflate-context-takeover needs --permessage-deflate".into());
        }
        c.engine.deflate = Policy::ContextTakeover;
    }
    Ok(Some(c))
}

fn count(name: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}: '{v}' is not a whole number from {min} to {max}"
        )),
    }
}

fn size(name: &str, v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{name}: '{v}' is not a size (e.g. 65536, 64KiB, 16MiB)"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{name}: '{v}' is not a size (e.g. 65536, 64KiB, 16MiB)"))
}

fn duration(name: &str, v: &str, zero_ok: bool) -> Result<Duration, String> {
    let t = v.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs: f64 = num
        .parse()
        .map_err(|_| format!("{name}: '{v}' is not a duration (e.g. 10, 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => secs,
        "ms" => secs / 1000.0,
        "m" => secs * 60.0,
        _ => {
            return Err(format!(
                "{name}: '{v}' is not a duration (e.g. 10, 10s, 500ms, 2m)"
            ))
        }
    };
    if !secs.is_finite() || secs > 86_400.0 * 365.0 || (secs == 0.0 && !zero_ok) {
        return Err(format!("{name}: '{v}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Config>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn every_flag_in_the_parser_is_documented_in_help() {
        let src = include_str!("main.rs");
        let parser = src.split("fn parse_args").nth(1).unwrap();
        let is_flag = |s: &&str| {
            s.starts_with("--") && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        };
        let flags: Vec<&str> = parser.split('"').filter(is_flag).collect();
        assert!(flags.len() >= 15, "{flags:?}");
        for flag in flags {
            assert!(HELP.contains(flag), "{flag} is not in --help");
        }
    }

    #[test]
    fn flags_parse_into_the_config() {
        let c = parse(&[
            "--listen",
            "0.0.0.0:9100",
            "--threads=3",
            "--max-message-size",
            "1MiB",
            "--idle-timeout",
            "0",
            "--handshake-timeout",
            "500ms",
            "--subprotocol",
            "chat",
            "--subprotocol",
            "echo",
            "--pin",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.threads, 3);
        assert_eq!(c.engine.max_message_size, 1 << 20);
        assert!(c.engine.idle_timeout.is_zero());
        assert_eq!(c.engine.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.engine.subprotocols, vec!["chat", "echo"]);
        assert!(c.pin);
    }

    #[test]
    fn kernel_tls_is_on_unless_turned_off() {
        assert!(parse(&[]).unwrap().unwrap().kernel_tls);
        assert!(!parse(&["--no-kernel-tls"]).unwrap().unwrap().kernel_tls);
    }

    #[test]
    fn permessage_deflate_is_off_unless_asked_for() {
        let off = parse(&[]).unwrap().unwrap();
        assert_eq!(off.engine.deflate, Policy::Off);
        let on = parse(&["--permessage-deflate"]).unwrap().unwrap();
        assert_eq!(on.engine.deflate, Policy::NoContextTakeover);
        for args in [
            &["--permessage-deflate", "--deflate-context-takeover"][..],
            &["--deflate-context-takeover", "--permessage-deflate"],
        ] {
            let c = parse(args).unwrap().unwrap();
            assert_eq!(c.engine.deflate, Policy::ContextTakeover, "{args:?}");
        }
        let err = parse(&["--deflate-context-takeover"]).unwrap_err();
        assert!(err.contains("needs --permessage-deflate"), "{err}");
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(plural(1, "shard"), "1 shard");
        assert_eq!(plural(0, "protocol error"), "0 protocol errors");
        assert_eq!(plural(2, "connection"), "2 connections");
    }

    #[test]
    fn a_host_name_to_listen_on_is_resolved() {
        let c = parse(&["--listen", "localhost:9100"]).unwrap().unwrap();
        assert!(c.listen.ip().is_loopback(), "{}", c.listen);
        assert_eq!(c.listen.port(), 9100);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert!(parse(&["--threads", "0"])
            .unwrap_err()
            .contains("--threads"));
        assert!(parse(&["--listen", "nowhere"])
            .unwrap_err()
            .contains("ADDR:PORT"));
        assert!(parse(&["--listen", "no-such-host.invalid:9001"])
            .unwrap_err()
            .contains("cannot resolve"));
        assert!(parse(&["--max-output", "12XB"])
            .unwrap_err()
            .contains("size"));
        assert!(parse(&["--handshake-timeout", "0"])
            .unwrap_err()
            .contains("range"));
        assert!(parse(&["--bogus"]).unwrap_err().contains("unknown option"));
        assert!(parse(&["--subprotocol", "a b"])
            .unwrap_err()
            .contains("token"));
        assert!(parse(&["--listen"]).unwrap_err().contains("needs a value"));
    }
}
