//! Kernel TLS on a socket: the system calls that carry out the engine's
//! [`TlsCommand`]s, the read of a record the kernel will not hand over as
//! data, and the start-up probe of what the kernel takes. The engine
//! decides when and what (`ringecho_proto::tls::kernel`); this only moves
//! keys and records, the same for every shell.
//!
//! The ABI is `include/uapi/linux/tls.h` and
//! `Documentation/networking/tls.rst`.

use std::io;
use std::mem::size_of;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use crate::protocol::tls::kernel::{
    Cipher, Direction, KernelKey, KernelSupport, TlsCommand, Version, APPLICATION_DATA,
};
use crate::protocol::Connection;

use super::stats::ShardStats;

const SOL_TLS: libc::c_int = 282;
const TCP_ULP: libc::c_int = 31;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_RX_EXPECT_NO_PAD: libc::c_int = 4;
/// cmsg types: the record type to send, and of a record received.
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;

/// `tls_crypto_info.cipher_type` values.
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// The largest record plaintext (RFC 8446 §5.1: 2^14), with room to spare
/// for TLS 1.2's (RFC 5246 §6.2.1 allows no more either).
const MAX_RECORD: usize = 16 * 1024 + 256;

/// The largest `tls12_crypto_info_*`: AES-GCM-256's and
/// ChaCha20-Poly1305's, 56 bytes each.
const MAX_INFO: usize = 56;

/// The kernel's `tls12_crypto_info_*` for `key`, as bytes: a u16 version
/// and cipher type (native order), then byte arrays with no padding
/// between them, so the layout is the arrays' order and sizes.
fn crypto_info(key: &KernelKey) -> ([u8; MAX_INFO], usize) {
    let mut info = [0u8; MAX_INFO];
    let cipher_type = match key.cipher() {
        Cipher::Aes128Gcm => TLS_CIPHER_AES_GCM_128,
        Cipher::Aes256Gcm => TLS_CIPHER_AES_GCM_256,
        Cipher::Chacha20Poly1305 => TLS_CIPHER_CHACHA20_POLY1305,
    };
    info[..2].copy_from_slice(&key.version.wire().to_ne_bytes());
    info[2..4].copy_from_slice(&cipher_type.to_ne_bytes());
    let iv = key.iv();
    let mut at = 4;
    let mut put = |bytes: &[u8]| {
        info[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    match key.cipher() {
        // AES-GCM: iv[8] (the nonce's explicit part), key, salt[4] (its
        // implicit part), rec_seq[8].
        Cipher::Aes128Gcm | Cipher::Aes256Gcm => {
            put(iv.get(4..12).unwrap_or(&[0; 8]));
            put(key.key());
            put(iv.get(..4).unwrap_or(&[0; 4]));
        }
        // ChaCha20-Poly1305: iv[12], key[32], no salt.
        Cipher::Chacha20Poly1305 => {
            put(iv);
            put(key.key());
        }
    }
    put(&key.seq.to_be_bytes());
    (info, at)
}

fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a live slice for the call, and its length is the
    // option length given; setsockopt only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_key(fd: RawFd, direction: Direction, key: &KernelKey) -> io::Result<()> {
    let (info, len) = crypto_info(key);
    let name = match direction {
        Direction::Send => TLS_TX,
        Direction::Receive => TLS_RX,
    };
    setsockopt(fd, SOL_TLS, name, &info[..len])
}

/// Attach the kernel's TLS to `fd` and give it both keys.
fn attach(fd: RawFd, send: &KernelKey, receive: &KernelKey) -> io::Result<()> {
    setsockopt(fd, libc::SOL_TCP, TCP_ULP, b"tls")?;
    set_key(fd, Direction::Send, send)?;
    set_key(fd, Direction::Receive, receive)?;
    if receive.version == Version::Tls13 {
        // rustls-built clients never pad, and the kernel decrypts straight
        // into the reader's buffer when told to expect none (Linux 6.0; it
        // checks, and falls back for a padded record). Older kernels lack
        // the option: nothing is lost but that shortcut.
        let _ = setsockopt(fd, SOL_TLS, TLS_RX_EXPECT_NO_PAD, &1u32.to_ne_bytes());
    }
    Ok(())
}

/// Send one record of `content_type` through the kernel's record layer.
/// Never waits: a socket with no room refuses it (the peer is not reading,
/// and the connection is ending or cut for it anyway).
fn send_record(fd: RawFd, content_type: u8, payload: &[u8]) -> io::Result<()> {
    // A cmsg buffer for one byte of data, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as usize;
    // SAFETY: `msg` points to `control`, which has room for one cmsghdr with
    // one byte of data (CMSG_SPACE(1) = 24 <= 32 bytes), so CMSG_FIRSTHDR is
    // non-null and the header and its data byte lie inside `control`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(cmsg) = content_type;
    }
    // SAFETY: `msg` and everything it points to (`iov`, `payload`,
    // `control`) live across the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    match usize::try_from(n) {
        Ok(n) if n == payload.len() => Ok(()),
        Ok(_) => Err(io::Error::new(io::ErrorKind::WriteZero, "record cut short")),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// Read the next record with its content type into `buf`. Never waits.
fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 4]>();
    // SAFETY: `msg` points to `buf` and `control`, both live and writable
    // for their given lengths across the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut content_type = APPLICATION_DATA;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with
    // well-formed cmsghdrs; CMSG_FIRSTHDR/NXTHDR stay inside them and a
    // record type's data is one byte.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                content_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((content_type, n))
}

/// Carry out the engine's TLS commands on `fd`; call before arming a read.
/// A command the kernel refuses cuts the connection.
pub fn run_commands(fd: RawFd, conn: &mut Connection, stats: &ShardStats, read_in_flight: bool) {
    while let Some(command) = conn.poll_tls_command(read_in_flight) {
        let result = match &command {
            TlsCommand::Attach { send, receive } => attach(fd, send, receive),
            TlsCommand::SetKey(direction, key) => set_key(fd, *direction, key),
            TlsCommand::Record {
                content_type,
                payload,
            } => send_record(fd, *content_type, payload),
        };
        match result {
            Ok(()) if matches!(command, TlsCommand::Attach { .. }) => stats.tls_kernel.incr(),
            Ok(()) => {}
            Err(e) => {
                tracing::debug!("kernel TLS refused {command:?}: {e}");
                stats.tls_kernel_refused.incr();
                conn.tls_command_failed();
                return;
            }
        }
    }
}

/// A read failed with `errno`. On a kernel-TLS socket, EIO means the next
/// record is not data (RFC 8446 §5.1 content types other than 23, which
/// the kernel hands over only with their type): read it and give it to the
/// engine; EBADMSG and EMSGSIZE mean a record failed authentication or was
/// too long, which the engine answers with an alert. Anything else ends
/// the input. Call with no read in flight.
pub fn read_failed(fd: RawFd, errno: i32, conn: &mut Connection, now: Instant) {
    if !conn.kernel_tls() {
        return conn.handle_eof(now);
    }
    // The kernel's verdict on a record it could not open. It also marks
    // the socket failed, which would refuse our alert: reading SO_ERROR
    // clears that mark, and the send path is whole.
    if errno == libc::EBADMSG || errno == libc::EMSGSIZE {
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live locals of the sizes given.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        return conn.handle_tls_record_error(now);
    }
    if errno != libc::EIO {
        return conn.handle_eof(now);
    }
    let mut buf = [0u8; MAX_RECORD];
    match recv_record(fd, &mut buf) {
        Ok((content_type, n)) if n > 0 => conn.handle_tls_record(content_type, &buf[..n], now),
        _ => conn.handle_eof(now),
    }
}

/// What this kernel's TLS takes, found by trying each version and cipher
/// on a loopback connection of our own (which also loads the `tls` module
/// where it is a module); the error says why none.
pub fn probe() -> Result<KernelSupport, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot open a loopback socket to probe it: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot probe it: {e}"))?;
    let mut support = KernelSupport::NONE;
    let mut why = String::new();
    for version in [Version::Tls13, Version::Tls12] {
        for cipher in Cipher::ALL {
            let stream = TcpStream::connect(addr).map_err(|e| format!("cannot probe it: {e}"))?;
            let _peer = listener.accept();
            let fd = stream.as_raw_fd();
            if let Err(e) = setsockopt(fd, libc::SOL_TCP, TCP_ULP, b"tls") {
                let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
                    .unwrap_or_default();
                return Err(match e.raw_os_error() {
                    // The kernel loads the module on first use only for a
                    // process with CAP_NET_ADMIN, which a locked-down
                    // service lacks: say how to load it.
                    Some(libc::ENOENT) => format!(
                        "the kernel's tls module is not loaded (tcp_available_ulp: {}); \
                         `modprobe tls`, or tls in /etc/modules-load.d, where the kernel has it",
                        ulps.trim()
                    ),
                    _ => format!("the kernel refused the tls upper-layer protocol: {e}"),
                });
            }
            let key = KernelKey::probe(version, cipher);
            match set_key(fd, Direction::Send, &key)
                .and_then(|()| set_key(fd, Direction::Receive, &key))
            {
                Ok(()) => support = support.with(version, cipher),
                Err(e) => why = format!("{}: {e}", cipher.name()),
            }
            // A second TLS 1.3 send key: Linux 6.14 takes it (a KeyUpdate),
            // earlier kernels refuse it (EBUSY).
            if version == Version::Tls13
                && support.allows(version, cipher)
                && !support.rekeys()
                && set_key(fd, Direction::Send, &key).is_ok()
            {
                support = support.with_rekey();
            }
        }
    }
    if support.is_empty() {
        return Err(format!("the kernel's tls module took no cipher ({why})"));
    }
    Ok(support)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crypto_info_follows_the_kernels_layout() {
        // include/uapi/linux/tls.h: tls12_crypto_info_aes_gcm_128 is 40
        // bytes, _aes_gcm_256 and _chacha20_poly1305 56.
        for (cipher, len, cipher_type) in [
            (Cipher::Aes128Gcm, 40, 51u16),
            (Cipher::Aes256Gcm, 56, 52),
            (Cipher::Chacha20Poly1305, 56, 54),
        ] {
            let key = KernelKey::probe(Version::Tls13, cipher);
            let (info, n) = crypto_info(&key);
            assert_eq!(n, len, "{cipher:?}");
            assert_eq!(u16::from_ne_bytes([info[0], info[1]]), 0x0304);
            assert_eq!(u16::from_ne_bytes([info[2], info[3]]), cipher_type);
            // The sequence number is last, big-endian.
            assert_eq!(&info[n - 8..n], &key.seq.to_be_bytes());
        }
        // AES-GCM: the IV's first four bytes are the salt, after the key.
        let key = KernelKey::probe(Version::Tls12, Cipher::Aes128Gcm);
        let (info, _) = crypto_info(&key);
        assert_eq!(&info[4..12], &key.iv()[4..]);
        assert_eq!(&info[12..28], key.key());
        assert_eq!(&info[28..32], &key.iv()[..4]);
    }
}
