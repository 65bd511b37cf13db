//! The io_uring shell around the protocol core: shards, accept, the
//! per-connection loop, buffers, timers and shutdown. Every protocol
//! decision is the core's (`crate::protocol`); this module moves bytes.

mod buf_ring;
mod conn;
mod context;
mod epoll;
pub mod http;
pub mod ktls;
pub mod log;
pub mod metrics;
mod ring;
mod shard;
mod socket;
pub mod stats;
pub mod tls;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::protocol::connection;
pub use crate::protocol::ReadSizing;
use stats::{AllStats, ShardStats, Snapshot};

/// Everything an operator can tune. `Default` is safe on the open internet.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `/metrics`, `/stats` and `/healthz` are served for operators;
    /// off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` report of the client
    /// address is logged; nobody else's is.
    pub trust_proxy: Vec<std::net::IpAddr>,
    /// Logs as JSON lines rather than text (read by `main`, not the shells).
    pub log_json: bool,
    /// Shards (threads, rings, listeners).
    pub threads: usize,
    /// Pin shard i to the i-th CPU this process may run on.
    pub pin: bool,
    /// Everything that bounds what a client can make one connection do:
    /// the limits and timeouts the connection engine enforces.
    pub engine: connection::Config,
    /// Graceful-shutdown wait for close handshakes.
    pub drain_timeout: Duration,
    pub max_connections_per_shard: usize,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Ask for DEFER_TASKRUN/COOP_TASKRUN and SINGLE_ISSUER rings.
    pub ring_tuning: bool,
    /// Try a non-blocking send before queueing a ring write.
    pub direct_send: bool,
    /// Memory per shard for the ring shell's provided-buffer ring; 0 gives
    /// every connection a receive buffer of its own instead.
    pub recv_pool: usize,
    /// Size of each buffer in that ring.
    pub recv_buffer: usize,
    /// Receive into that ring with byte-limited multishot receives where
    /// the kernel has them, instead of one receive at a time.
    pub recv_multishot: bool,
    /// Which I/O shell moves the bytes.
    pub io: Io,
    /// wss://: the certificate (reloaded on SIGHUP). Without `tls_listen`
    /// the listener speaks TLS only.
    pub tls: Option<Arc<tls::TlsSlot>>,
    /// A TLS listener beside the plain one, with shards of its own.
    pub tls_listen: Option<SocketAddr>,
    /// Hand each wss:// session to the kernel's TLS after its handshake,
    /// where the kernel takes the negotiated cipher.
    pub kernel_tls: bool,
}

/// The I/O shells; every one drives the same connection engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// The ring shell where io_uring works, else epoll (with a warning).
    Auto,
    /// A completion loop on the `io-uring` crate, one per shard.
    Ring,
    /// tokio-uring, or a clear error where io_uring is unavailable.
    TokioUring,
    /// A plain epoll loop: for machines where io_uring is blocked.
    Epoll,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::Auto => "auto",
            Io::Ring => "ring",
            Io::TokioUring => "tokio-uring",
            Io::Epoll => "epoll",
        }
    }
}

impl Config {
    /// Sweep period: fine enough for the shortest timeout, never busier than
    /// 100 times a second.
    pub(crate) fn tick(&self) -> Duration {
        let shortest = [
            self.engine.handshake_timeout,
            self.engine.close_timeout,
            self.engine.idle_timeout,
        ]
        .into_iter()
        .filter(|d| !d.is_zero())
        .min()
        .unwrap_or(Duration::from_secs(1));
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            metrics_listen: None,
            trust_proxy: Vec::new(),
            log_json: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: false,
            engine: connection::Config::default(),
            drain_timeout: Duration::from_secs(10),
            max_connections_per_shard: 100_000,
            ring_entries: 1024,
            ring_tuning: true,
            direct_send: true,
            recv_pool: 8 << 20,
            recv_buffer: 16 << 10,
            recv_multishot: true,
            io: Io::Auto,
            tls: None,
            tls_listen: None,
            kernel_tls: true,
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// io_uring is unavailable; the message says why and what to do.
    Uring(String),
    /// The epoll shell could not set up its poller.
    Epoll(io::Error),
    Bind(SocketAddr, io::Error),
    Thread(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Uring(msg) => f.write_str(msg),
            StartError::Bind(addr, e) => {
                let hint = match e.kind() {
                    io::ErrorKind::AddrInUse => {
                        " (another process is listening there; pick another --listen port)"
                    }
                    io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
                    io::ErrorKind::AddrNotAvailable => " (no local interface has that address)",
                    _ => "",
                };
                write!(f, "cannot listen on {addr}: {e}{hint}")
            }
            StartError::Thread(e) => write!(f, "cannot start a shard thread: {e}"),
            StartError::Epoll(e) => write!(f, "cannot set up epoll: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

enum Stopper {
    Epoll(Arc<epoll::Stopper>),
    Ring(Arc<ring::Stopper>),
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    io: Io,
    /// With TLS: what the kernel's TLS takes, or why the keys stay in
    /// user space.
    kernel_tls: Option<Result<crate::protocol::tls::kernel::KernelSupport, String>>,
    shutdown: watch::Sender<bool>,
    /// The epoll and ring shards' way to be told to stop.
    stoppers: Vec<Stopper>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<AllStats>,
}

impl Server {
    /// Bind every shard's listener and start the shards.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let io = match config.io {
            io @ (Io::Ring | Io::TokioUring) => {
                uring::probe(&config).map_err(StartError::Uring)?;
                io
            }
            Io::Epoll => Io::Epoll,
            Io::Auto => match uring::probe(&config) {
                Ok(()) => Io::Ring,
                Err(why) => {
                    let first = why.lines().next().unwrap_or_default();
                    eprintln!(
                        "ringecho: {first}; serving through epoll instead \
                         (--io epoll chooses it, --io ring requires io_uring)"
                    );
                    tracing::warn!(
                        reason = first,
                        "io_uring unavailable: serving through epoll"
                    );
                    Io::Epoll
                }
            },
        };
        let mut config = Config { io, ..config };
        // What the kernel's TLS takes is found once, here: every shard's
        // engine then hands over the sessions it can.
        let kernel_tls = match (&config.tls, config.kernel_tls) {
            (None, _) => None,
            (Some(_), false) => Some(Err("--no-kernel-tls was given".to_owned())),
            (Some(_), true) => Some(ktls::probe()),
        };
        if let Some(Ok(support)) = &kernel_tls {
            config.engine.kernel_tls = *support;
        }
        let threads = config.threads.max(1);
        // Each listening address gets `threads` shards of its own: the
        // main one (plain, or TLS only when there is a certificate and no
        // --tls-listen), and the --tls-listen one beside it.
        let (main_tls, extra) = match config.tls_listen {
            Some(addr) => (None, Some((addr, config.tls.clone()))),
            None => (config.tls.clone(), None),
        };
        let mut endpoints = Vec::new();
        for (addr, tls) in std::iter::once((config.listen, main_tls)).chain(extra) {
            ensure_port_free(addr).map_err(|e| StartError::Bind(addr, e))?;
            let first = reuseport_listener(addr).map_err(|e| StartError::Bind(addr, e))?;
            // Port 0 means "any": the other shards join the port the first got.
            let local = first.local_addr().map_err(|e| StartError::Bind(addr, e))?;
            let mut listeners = vec![first];
            for _ in 1..threads {
                listeners.push(reuseport_listener(local).map_err(|e| StartError::Bind(local, e))?);
            }
            let cfg = Arc::new(Config {
                threads,
                tls,
                ..config.clone()
            });
            endpoints.push((local, cfg, listeners));
        }
        let local_addr = endpoints[0].0;
        let tls_local_addr = endpoints.get(1).map(|e| e.0);
        let cpus = if config.pin {
            allowed_cpus()
        } else {
            Vec::new()
        };
        let shards = threads * endpoints.len();
        let (shutdown, rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stats = Arc::new(AllStats(
            (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
        ));
        let mut server = Server {
            local_addr,
            tls_local_addr,
            io,
            kernel_tls,
            shutdown,
            stoppers: Vec::new(),
            threads: Vec::new(),
            stats: stats.clone(),
        };
        let shard_listeners = endpoints
            .into_iter()
            .flat_map(|(_, cfg, listeners)| listeners.into_iter().map(move |l| (cfg.clone(), l)));
        for (id, (cfg, listener)) in shard_listeners.enumerate() {
            let (rx, ready, stats) = (rx.clone(), ready_tx.clone(), stats.clone());
            let cpu = cpus.get(id % cpus.len().max(1)).copied();
            let builder = std::thread::Builder::new().name(format!("ringecho-shard-{id}"));
            let pin = move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
            };
            let handle = if io == Io::Epoll {
                let (stopper, run) = match epoll::start(id, cfg, listener, stats) {
                    Ok(started) => started,
                    Err(e) => {
                        server.stop();
                        return Err(StartError::Epoll(e));
                    }
                };
                server.stoppers.push(Stopper::Epoll(stopper));
                let _ = ready.send(Ok(id));
                builder.spawn(move || {
                    pin();
                    run();
                })
            } else if io == Io::Ring {
                let (stopper, body) = match ring::start(id, cfg, listener, stats) {
                    Ok(started) => started,
                    Err(e) => {
                        server.stop();
                        return Err(StartError::Uring(uring::explain(&e)));
                    }
                };
                server.stoppers.push(Stopper::Ring(stopper));
                builder.spawn(move || {
                    pin();
                    body(ready);
                })
            } else {
                builder.spawn(move || {
                    pin();
                    shard::run(id, cfg, listener, stats, rx, ready);
                })
            };
            server.threads.push(handle.map_err(StartError::Thread)?);
        }
        drop(ready_tx);
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(msg)) => {
                    server.stop();
                    return Err(StartError::Uring(msg));
                }
                Err(_) => {
                    server.stop();
                    return Err(StartError::Uring(
                        "cannot start: a shard exited during start-up".into(),
                    ));
                }
            }
        }
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The --tls-listen address, when there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// With TLS: the ciphers whose sessions go to the kernel after their
    /// handshake, or why every session stays in user space.
    pub fn kernel_tls(
        &self,
    ) -> Option<&Result<crate::protocol::tls::kernel::KernelSupport, String>> {
        self.kernel_tls.as_ref()
    }

    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    /// The I/O shell the shards run.
    pub fn io(&self) -> Io {
        self.io
    }

    /// Counters summed over shards.
    pub fn stats(&self) -> Snapshot {
        self.stats.total()
    }

    /// The shards' live counters, for the metrics listener.
    pub fn all_stats(&self) -> Arc<AllStats> {
        self.stats.clone()
    }

    /// Each shard's counters.
    pub fn shard_stats(&self) -> Vec<Snapshot> {
        self.stats.0.iter().map(|s| s.snapshot()).collect()
    }

    /// Begin a graceful shutdown: stop accepting, close 1001 to everyone.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
        for s in &self.stoppers {
            match s {
                Stopper::Epoll(s) => s.stop(),
                Stopper::Ring(s) => s.stop(),
            }
        }
    }

    /// True once every shard has finished.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Shut down gracefully and wait for every shard.
    pub fn stop(mut self) {
        self.begin_shutdown();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The engine for a connection accepted at `now`: over TLS when the
/// listener is wss://, with the certificate the slot holds now.
pub(crate) fn open_connection(
    cfg: &Config,
    engine: &Arc<connection::Config>,
    now: std::time::Instant,
) -> crate::protocol::Connection {
    use crate::protocol::Connection;
    let Some(slot) = &cfg.tls else {
        return Connection::new(engine.clone(), now);
    };
    Connection::with_tls(engine.clone(), slot.current(), now).unwrap_or_else(|_| {
        // rustls refuses only a configuration it cannot use, which
        // `TlsSlot::load` rules out; were it to, the connection ends at once.
        let mut conn = Connection::new(engine.clone(), now);
        conn.shutdown(now);
        conn
    })
}

/// A listener that shares its address with the other shards' (SO_REUSEPORT):
/// the kernel hashes each new connection to one of them.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// SO_REUSEPORT would let a second server started by the same user on the
/// same port silently take half the connections. A plain bind first fails
/// with EADDRINUSE if anyone listens there, reuseport group or not.
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Allow TIME_WAIT leftovers of an earlier run, as the real listeners do;
    // with SO_REUSEADDR Linux reports a live listener only at listen().
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, valid when zeroed; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it, and CPU_ISSET
    // reads within it for every index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: as above; CPU_SET writes within the zeroed set for any index
    // below CPU_SETSIZE, which `allowed_cpus` guarantees.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Raise RLIMIT_NOFILE's soft limit to its hard limit (each connection is a
/// descriptor) and return the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
