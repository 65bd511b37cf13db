//! Ring set-up, and what to tell an operator when io_uring is not there.

use std::io;

use super::Config;

/// Ring flags that help a thread-per-core server: completions are delivered
/// when the thread next enters the kernel anyway (COOP_TASKRUN) and the
/// kernel can skip locking for a ring that only one thread submits to
/// (SINGLE_ISSUER). Kernels older than 6.0 refuse them with EINVAL; then the
/// plain ring is used.
fn tuned(cfg: &Config) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if cfg.ring_tuning {
        b.setup_coop_taskrun().setup_single_issuer();
    }
    b
}

/// Build the shard's tokio-uring runtime on the calling thread.
pub(crate) fn runtime(cfg: &Config) -> io::Result<tokio_uring::Runtime> {
    let attempt = |b: &io_uring::Builder| {
        tokio_uring::Runtime::new(
            tokio_uring::builder()
                .entries(cfg.ring_entries)
                .uring_builder(b),
        )
    };
    match attempt(&tuned(cfg)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && cfg.ring_tuning => {
            attempt(&io_uring::IoUring::builder())
        }
        other => other,
    }
}

/// Check that io_uring works here before any thread starts, so the failure
/// is one clear message rather than one per shard.
pub fn probe(cfg: &Config) -> Result<(), String> {
    let attempt = |b: &io_uring::Builder| b.build(8);
    let ring = match attempt(&tuned(cfg)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && cfg.ring_tuning => {
            attempt(&io_uring::IoUring::builder())
        }
        other => other,
    }
    .map_err(|e| explain(&e))?;
    // Without NODROP (Linux 5.5+) a full completion ring silently drops
    // completions, and a connection whose read was dropped would hang
    // forever; with it the kernel keeps the overflow until it is reaped.
    if !ring.params().is_feature_nodrop() {
        return Err(
            "cannot start: this kernel's io_uring lacks IORING_FEAT_NODROP (Linux 5.5+), so \
             completions could be lost under load; ringecho needs Linux 5.11 or later"
                .to_string(),
        );
    }
    Ok(())
}

/// Turn a ring set-up error into what happened and what to do about it.
pub fn explain(e: &io::Error) -> String {
    let what = match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "this kernel has no io_uring (it needs Linux 5.11 or later, built with CONFIG_IO_URING)"
                .to_string()
        }
        Some(libc::EPERM) | Some(libc::EACCES) => "io_uring is not permitted here: the sysctl \
             kernel.io_uring_disabled is set (0 allows it: `sysctl kernel.io_uring_disabled=0`), \
             or a seccomp profile blocks io_uring_setup (container runtimes' default profiles \
             do: run with a profile that allows io_uring_setup, io_uring_enter and \
             io_uring_register)"
            .to_string(),
        Some(libc::EOPNOTSUPP) => {
            "io_uring is not supported in this environment (EOPNOTSUPP at ring set-up)".to_string()
        }
        Some(libc::ENOMEM) => {
            "the kernel could not allocate the io_uring rings: lower --ring-entries, \
             or raise the locked-memory limit (ulimit -l) on kernels before 5.12"
                .to_string()
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "out of file descriptors while creating the io_uring instance".to_string()
        }
        _ => format!("io_uring set-up failed: {e}"),
    };
    format!("cannot start: {what}")
}
