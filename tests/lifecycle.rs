//! Start-up and shutdown of the real binary: graceful SIGTERM, and a clear
//! message when io_uring is not available.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sigterm_sends_1001_to_every_client_and_exits_0() {
    let mut server = Ringecho::start(&["--threads", "2", "--drain-timeout", "2s"]);
    let mut clients: Vec<_> = (0..12).map(|_| raw_ws(server.addr)).collect();
    // Prove each connection is live before the signal.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&client_frame(true, 0x1, format!("hello {i}").as_bytes()))
            .unwrap();
        let (_, op, payload) = read_frame(c).unwrap();
        assert_eq!((op, payload), (0x1, format!("hello {i}").into_bytes()));
    }
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_close(c), Some(1001), "client {i}");
        // Half answer the close like well-behaved clients; the rest stay
        // silent and are cut at the drain timeout.
        if i % 2 == 0 {
            c.write_all(&client_frame(true, 0x8, &1001u16.to_be_bytes()))
                .unwrap();
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "drain took {:?}",
        t.elapsed()
    );
    for c in clients.iter_mut() {
        assert!(closes_within(c, Duration::from_secs(2)));
    }
}

#[test]
fn a_second_signal_during_the_drain_exits_at_once_with_the_shells_code() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut server = Ringecho::start(&["--threads", "1", "--drain-timeout", "30s"]);
        // A client that never answers the close keeps the drain going.
        let mut c = raw_ws(server.addr);
        server.signal(sig);
        assert_eq!(read_close(&mut c), Some(1001));
        server.signal(sig);
        let status = server
            .wait_exit(Duration::from_secs(5))
            .expect("did not exit on the second signal");
        assert_eq!(status.code(), Some(code), "signal {sig}");
    }
}

#[test]
fn sigint_with_no_connections_exits_0_promptly() {
    let mut server = Ringecho::start(&["--threads", "2"]);
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("did not exit after SIGINT");
    assert_eq!(status.code(), Some(0));
}

/// Run ringecho with io_uring_setup failing with `errno`, the way a
/// container's default seccomp profile or an old kernel makes it fail.
#[cfg(target_arch = "x86_64")]
/// The binary, with io_uring_setup failing with `errno` (a seccomp filter,
/// as a container's default profile or `kernel.io_uring_disabled` does).
fn without_io_uring(errno: i32) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringecho"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (prctl); the filter program lives on this closure's stack until the
    // prctl that copies it into the kernel returns.
    unsafe {
        cmd.pre_exec(move || {
            // Classic BPF: load the syscall number; if io_uring_setup, fail
            // with `errno`; else allow.
            let filter = [
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                }, // ld [nr]
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_io_uring_setup as u32,
                }, // jeq
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | errno as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const _ as usize,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Run with io_uring blocked and `--io tokio-uring`: it must exit, and say
/// why.
fn run_without_io_uring(errno: i32) -> std::process::Output {
    let mut cmd = without_io_uring(errno);
    cmd.args(["--io", "tokio-uring"]);
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("ringecho hung without io_uring");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn io_uring_blocked_by_seccomp_or_sysctl_is_explained_not_a_panic() {
    let out = run_without_io_uring(libc::EPERM);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring is not permitted"), "{stderr}");
    assert!(
        stderr.contains("kernel.io_uring_disabled") && stderr.contains("seccomp"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("os error"),
        "{stderr}"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn without_io_uring_the_default_serves_through_epoll_and_says_why_in_one_line() {
    use std::io::{BufRead, BufReader};
    let mut child = without_io_uring(libc::EPERM).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The log says why too, then where it listens.
    let first = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a start-up line");
        if line.contains("listening on") {
            break line;
        }
        assert!(line.contains("serving through epoll"), "{line}");
    };
    let addr = first
        .find("ringecho listening on ws://")
        .map(|i| &first[i + "ringecho listening on ws://".len()..])
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected start-up line: {first}"));
    assert!(first.ends_with("on epoll"), "{first}");
    let mut s = raw_ws(addr);
    echo_once(&mut s, b"through epoll");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(read_close(&mut s), Some(1001));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let warnings: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("io_uring is not permitted") && warnings[0].contains("epoll"),
        "{warnings:?}"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_kernel_without_io_uring_is_explained_not_a_panic() {
    let out = run_without_io_uring(libc::ENOSYS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("this kernel has no io_uring"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("os error"),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_flag_and_bad_flags_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringecho"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--threads",
        "--pin",
        "--max-message-size",
        "--handshake-timeout",
        "--idle-timeout",
        "--drain-timeout",
        "--max-connections",
        "--max-output",
        "--subprotocol",
    ] {
        assert!(help.contains(flag), "{flag}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ringecho"))
        .args(["--threads", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--threads") && err.contains("--help"), "{err}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringecho"))
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot listen on") && err.contains("another process"),
        "{err}"
    );
}

#[test]
fn a_second_server_on_the_same_port_is_refused_not_silently_sharing_it() {
    let first = Ringecho::start(&["--threads", "2"]);
    let out = Command::new(env!("CARGO_BIN_EXE_ringecho"))
        .args(["--listen", &first.addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process"));
}
