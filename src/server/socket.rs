//! Plain socket calls and checks the shells share.

use std::os::fd::RawFd;

use bytes::Bytes;

/// Send `batch` without blocking, as far as the socket buffer takes it;
/// returns the bytes sent, 0 when the socket buffer is full.
pub(crate) fn send_now(fd: RawFd, batch: &[Bytes]) -> std::io::Result<usize> {
    const MAX: usize = 64;
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX];
    let n = batch.len().min(MAX);
    for (v, b) in iov.iter_mut().zip(batch) {
        v.iov_base = b.as_ptr() as *mut libc::c_void;
        v.iov_len = b.len();
    }
    // SAFETY: the first `n` iovecs point into `batch`'s slices, which stay
    // alive and unmodified for the call; sendmsg only reads them. msghdr is
    // plain data, valid zeroed (no name, no control data). `fd` is this
    // connection's open socket.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    match usize::try_from(sent) {
        Ok(n) => Ok(n),
        Err(_) => {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            }
        }
    }
}

/// An accept failed for want of descriptors or memory (`errno`): the shells
/// keep serving the open connections and back off before the next accept,
/// instead of spinning on the error.
pub(crate) fn out_of_resources(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
    )
}
