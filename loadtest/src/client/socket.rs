//! Socket set-up for many loopback connections: the descriptor limit and
//! source-address spreading past the ~28k ephemeral ports one address has.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the limit now
/// in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Ephemeral ports per source address we plan for (the default range
/// 32768-60999 has 28232; leave room for other sockets).
pub const PORTS_PER_SOURCE: usize = 25_000;

/// Source addresses needed so no address runs out of ports.
pub fn default_source_ips(connections: usize) -> u32 {
    connections.div_ceil(PORTS_PER_SOURCE).max(1) as u32
}

/// Start a non-blocking connect to `target`, from 127.0.0.`source` when
/// given. The result is usually still in progress (EINPROGRESS).
pub fn start_connect(target: SocketAddr, source: Option<u8>) -> io::Result<std::net::TcpStream> {
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    sock.set_nodelay(true)?;
    if let (Some(last), IpAddr::V4(_)) = (source, target.ip()) {
        set_bind_address_no_port(&sock)?;
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0);
        sock.bind(&src.into())?;
    }
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock.into())
}

/// Defer the port choice from bind() to connect(), where the kernel can pick
/// per destination; without it every bind() to an address with port 0
/// reserves a port for good and the address runs out at ~28k sockets total.
fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `sock`; the option value is a
    // c_int on this frame whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
