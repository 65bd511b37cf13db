//! The ring shell's shared receive buffers (an io_uring provided-buffer
//! ring): every buffer comes back once its echo is written, a shard that
//! runs out of them keeps every connection echoing, and the pool can be
//! turned off. The other suites run on the ring shell too (it is the
//! default); these check what only it has.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn payload(conn: usize, round: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((conn * 7 + round * 13 + i) % 251) as u8)
        .collect()
}

/// Every connection sends its message for `round` before any reads, then
/// each reads its echo: many buffers are in use at once.
fn echo_round(conns: &mut [TcpStream], round: usize, len: impl Fn(usize) -> usize) {
    for (c, s) in conns.iter_mut().enumerate() {
        s.write_all(&client_frame(true, 0x2, &payload(c, round, len(c))))
            .unwrap();
    }
    for (c, s) in conns.iter_mut().enumerate() {
        let (op, got) = read_message(s).expect("echo");
        assert_eq!(op, 0x2);
        assert!(
            got == payload(c, round, len(c)),
            "connection {c} round {round}"
        );
    }
}

/// The ring shell, with multishot receives (the default) and with one
/// receive armed at a time.
fn rings(args: &[&str]) -> Vec<Ringecho> {
    [&[][..], &["--recv-single-shot"][..]]
        .iter()
        .map(|mode| {
            let mut all = vec!["--io", "ring", "--threads", "1"];
            all.extend_from_slice(mode);
            all.extend_from_slice(args);
            Ringecho::start(&all)
        })
        .collect()
}

#[test]
fn shared_receive_buffers_all_come_back_once_their_echo_is_written() {
    for server in rings(&[]) {
        let mut conns: Vec<TcpStream> = (0..100).map(|_| raw_ws(server.addr)).collect();
        for round in 0..5 {
            echo_round(&mut conns, round, |c| [20, 1000, 16_000, 40_000][c % 4]);
        }
        let total = server.wait_stats(Duration::from_secs(5), |t| t["recv_pool_in_use"] == 0);
        assert_eq!(total["recv_pool_in_use"], 0, "{total}");
        assert!(total["recv_pool_bytes"].as_u64().unwrap() > 0, "{total}");
        drop(conns);
        let total = server.wait_stats(Duration::from_secs(5), |t| {
            t["active"] == 0 && t["recv_pool_in_use"] == 0
        });
        assert_eq!(total["active"], 0, "{total}");
        assert_eq!(total["recv_pool_in_use"], 0, "{total}");
    }
}

#[test]
fn a_shard_out_of_shared_buffers_keeps_every_connection_echoing() {
    // Two 16 KiB buffers for 50 connections sending 30 KB at once: most
    // receives find the ring empty and fall back to a buffer of their own.
    for server in rings(&["--recv-pool", "32KiB", "--recv-buffer", "16KiB"]) {
        let mut conns: Vec<TcpStream> = (0..50).map(|_| raw_ws(server.addr)).collect();
        for round in 0..3 {
            echo_round(&mut conns, round, |c| 30_000 + c);
        }
        let total = server.wait_stats(Duration::from_secs(5), |t| t["recv_pool_in_use"] == 0);
        assert_eq!(total["recv_pool_in_use"], 0, "{total}");
        assert_eq!(
            total["recv_pool_bytes"],
            32 * 1024,
            "the pool stays within its budget: {total}"
        );
    }
}

#[test]
fn with_the_pool_off_every_connection_receives_into_its_own_buffer() {
    for server in rings(&["--recv-pool", "0"]) {
        let mut conns: Vec<TcpStream> = (0..20).map(|_| raw_ws(server.addr)).collect();
        for round in 0..3 {
            echo_round(&mut conns, round, |c| 100 + c * 1000);
        }
        assert_eq!(server.stats()["total"]["recv_pool_bytes"], 0);
    }
}
