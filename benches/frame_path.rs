//! The per-byte work on the frame path: unmasking (RFC 6455 §5.3) and UTF-8
//! validation of text (§5.6, §8.1), each measured beside a plain
//! `copy_from_slice` of the same size, the memory-bandwidth yardstick.
//!
//! The `deflate` group is permessage-deflate's check (RFC 7692): inflating
//! a compressed text message into scratch and validating it, beside
//! validating the inflated bytes alone and beside the deflate pass a
//! recompressing echo would add.
//!
//! One function per group; add new groups to `criterion_group!` below.

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use ringecho_proto::frame::{encode_client_frame, OpCode};
use ringecho_proto::mask::{apply_mask, apply_mask_bytewise, selected_path_name};
use ringecho_proto::message::{Config, Event, Session};
use ringecho_proto::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn unmask(c: &mut Criterion) {
    eprintln!(
        "apply_mask path selected at run time: {}",
        selected_path_name()
    );
    let mut g = c.benchmark_group("unmask");
    for size in [16usize, 125, 1 << 10, 16 << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut buf = src.clone();
        g.bench_with_input(
            BenchmarkId::new("apply_mask", label(size)),
            &size,
            |b, _| b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), black_box(0))),
        );
        let mut dst = vec![0u8; size];
        g.bench_with_input(BenchmarkId::new("copy", label(size)), &size, |b, _| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
        });
        // The store ceiling: no transform that writes every byte can run
        // faster than filling the buffer, so unmask / copy can never exceed
        // fill / copy on this machine.
        g.bench_with_input(BenchmarkId::new("fill", label(size)), &size, |b, _| {
            b.iter(|| black_box(&mut dst).fill(black_box(0x5a)))
        });
        g.bench_with_input(BenchmarkId::new("bytewise", label(size)), &size, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), black_box(0)))
        });
    }
    g.finish();
}

/// Mixed Greek, CJK and emoji, so every UTF-8 sequence length occurs.
fn multibyte_text(size: usize) -> Vec<u8> {
    let unit = "κόσμε 世界 🦀 ascii ";
    let mut s = String::with_capacity(size + unit.len());
    while s.len() + unit.len() <= size {
        s.push_str(unit);
    }
    while s.len() < size {
        s.push('.');
    }
    s.into_bytes()
}

fn ascii_text(size: usize) -> Vec<u8> {
    (0..size).map(|i| b' ' + (i % 95) as u8).collect()
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for size in [16usize << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        for (kind, text) in [
            ("ascii", ascii_text(size)),
            ("multibyte", multibyte_text(size)),
        ] {
            let id = format!("{kind} {}", label(size));
            g.bench_with_input(BenchmarkId::new("simdutf8", &id), &text, |b, t| {
                let mut v = Utf8Validator::new();
                b.iter(|| {
                    let fed = v.feed(black_box(t));
                    (fed, v.finish())
                })
            });
            g.bench_with_input(BenchmarkId::new("std", &id), &text, |b, t| {
                b.iter(|| std::str::from_utf8(black_box(t)).is_ok())
            });
        }
    }

    // Unmask + validate in one pass beside a copy of the same size: a text
    // frame should cost about one trip through memory. The key has its high
    // bits clear, so ASCII XOR key is ASCII again: each iteration flips the
    // buffer between two valid ASCII texts and no untimed re-masking (or
    // cache-cold batch setup) is needed to keep the input realistic.
    let size = 16usize << 10;
    let ascii_key = [0x15, 0x2a, 0x3f, 0x09];
    g.throughput(Throughput::Bytes(size as u64));
    let mut buf = ascii_text(size);
    g.bench_function(BenchmarkId::new("unmask_validate", "ascii 16 KiB"), |b| {
        let mut v = Utf8Validator::new();
        b.iter(|| {
            let r = v.feed_masked(black_box(&mut buf), black_box(ascii_key), 0);
            (r, v.finish())
        })
    });
    // The same on multibyte text, which takes the validator's slow path: a
    // masked copy is made for each iteration outside the timing.
    let key = [0x9d, 0x4e, 0xc1, 0x37];
    let mut masked = multibyte_text(size);
    apply_mask(&mut masked, key, 0);
    g.bench_function(
        BenchmarkId::new("unmask_validate", "multibyte 16 KiB"),
        |b| {
            let mut v = Utf8Validator::new();
            b.iter_batched_ref(
                || masked.clone(),
                |buf| {
                    let r = v.feed_masked(black_box(buf), black_box(key), 0);
                    (r, v.finish())
                },
                BatchSize::SmallInput,
            )
        },
    );
    let src = ascii_text(size);
    let mut dst = vec![0u8; size];
    g.bench_function(BenchmarkId::new("copy", "ascii 16 KiB"), |b| {
        b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
    });
    g.finish();
}

/// Drive `session` over every frame in `buf` as the server does after a
/// read; returns the echoed bytes so nothing can be optimised away.
fn echo_buffer(session: &mut Session, buf: &mut [u8]) -> usize {
    let mut pos = 0;
    let mut sent = 0;
    loop {
        match session.step(buf, pos) {
            Ok(step) => {
                match step.event {
                    Event::NeedMore => return sent,
                    Event::Echo { frame } => sent += black_box(&buf[frame]).len(),
                    other => panic!("unexpected {other:?}"),
                }
                pos = step.next;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// The whole per-frame path through `Session::step`: header parse, unmask,
/// UTF-8 validation and the in-place echo header, on masked ASCII text.
/// Small frames come 1000 to a buffer so per-frame overhead shows against
/// per-byte work. Unmasking is destructive, so each iteration gets a fresh
/// copy of the pristine masked input, made in untimed setup.
fn whole_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("whole_path");
    for (size, frames, batch) in [
        (20usize, 1000usize, BatchSize::SmallInput),
        (16 << 10, 1, BatchSize::SmallInput),
        (1 << 20, 1, BatchSize::LargeInput),
    ] {
        let text = ascii_text(size);
        let mut pristine = Vec::new();
        for _ in 0..frames {
            encode_client_frame(true, OpCode::Text, KEY, &text, &mut pristine);
        }
        let payload = (size * frames) as u64;
        g.throughput(Throughput::Bytes(payload));
        let id = if frames > 1 {
            format!("{frames} x {}", label(size))
        } else {
            label(size)
        };
        // Check once, outside timing, that every frame is echoed whole: a
        // server header is the client's less the 4-byte masking key.
        let mut check = pristine.clone();
        let echoed = echo_buffer(&mut Session::new(Config::default()), &mut check);
        assert_eq!(echoed, pristine.len() - 4 * frames);
        g.bench_function(BenchmarkId::new("session_step", &id), |b| {
            b.iter_batched_ref(
                || (Session::new(Config::default()), pristine.clone()),
                |(session, buf)| echo_buffer(session, buf),
                batch,
            )
        });
        // The memory-bandwidth yardstick for the same bytes.
        let mut dst = vec![0u8; pristine.len()];
        g.bench_function(BenchmarkId::new("copy", &id), |b| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&pristine)))
        });
    }
    g.finish();
}

/// The same 1000 × 20 B and 16 KiB inputs through the connection engine, as
/// a shell drives it: the bytes land in the engine's read buffer,
/// `handle_read` processes them, and `poll_transmit` / `handle_written`
/// take every echo out. Beside `whole_path/session_step`, this is what the
/// engine adds to the frame path (buffer cutting, the output queue, its
/// bookkeeping). Only the engine's work is timed, not the copy that stands
/// in for the kernel's write into the buffer.
fn engine(c: &mut Criterion) {
    use ringecho_proto::connection::{Config as EngineConfig, Connection};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut g = c.benchmark_group("engine");
    for (size, frames) in [(20usize, 1000usize), (16 << 10, 1)] {
        let text = ascii_text(size);
        let mut pristine = Vec::new();
        for _ in 0..frames {
            encode_client_frame(true, OpCode::Text, KEY, &text, &mut pristine);
        }
        g.throughput(Throughput::Bytes((size * frames) as u64));
        let id = if frames > 1 {
            format!("{frames} x {}", label(size))
        } else {
            label(size)
        };
        let now = Instant::now();
        let mut conn = Connection::new(Arc::new(EngineConfig::default()), now);
        let mut batch = Vec::new();
        // One turn of a shell: read `input` in buffer-sized pieces, write
        // everything; returns the bytes written.
        let mut turn = |conn: &mut Connection, input: &[u8], timed: &mut Duration| {
            let mut written = 0;
            let mut rest = input;
            while !rest.is_empty() {
                let mut buf = conn.read_buffer();
                let n = rest.len().min(buf.capacity() - buf.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                let t = Instant::now();
                conn.handle_read(buf, n, now);
                loop {
                    conn.poll_transmit(&mut batch, 256);
                    let sent: usize = batch.iter().map(|b| b.len()).sum();
                    if sent == 0 {
                        break;
                    }
                    written += sent;
                    conn.handle_written(sent, now);
                }
                *timed += t.elapsed();
            }
            written
        };
        let mut untimed = Duration::ZERO;
        assert!(turn(&mut conn, REQUEST, &mut untimed) > 0, "the 101");
        // Warm the buffers up to their working size, and check the echo.
        let mut echoed = 0;
        for _ in 0..64 {
            echoed = turn(&mut conn, &pristine, &mut untimed);
        }
        assert_eq!(echoed, pristine.len() - 4 * frames);
        g.bench_function(BenchmarkId::new("handle_read_transmit", &id), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    black_box(turn(&mut conn, &pristine, &mut timed));
                }
                timed
            })
        });
    }
    g.finish();
}

/// JSON chat lines from a small vocabulary with a fixed pseudo-random walk:
/// text that compresses the way real chat or log traffic does (about 1:3
/// at zlib's default level), not a repeated unit that compresses 1:100.
fn chat_text(size: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "ring",
        "echo",
        "frame",
        "mask",
        "deflate",
        "héllo",
        "wörld",
        "shard",
        "socket",
        "buffer",
        "κόσμε",
        "latency",
        "window",
        "client",
        "server",
        "message",
    ];
    let mut x: u32 = 0x9E37_79B9;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut s = String::with_capacity(size + 64);
    while s.len() < size {
        let n = next();
        s.push_str(&format!(
            "{{\"user\":\"u{}\",\"seq\":{},\"text\":\"",
            n % 500,
            n % 100_000
        ));
        for _ in 0..(3 + n % 9) {
            s.push_str(WORDS[(next() % 16) as usize]);
            s.push(' ');
        }
        s.push_str("\"}\n");
    }
    let mut b = s.into_bytes();
    while b.len() > size || std::str::from_utf8(&b).is_err() {
        b.pop();
    }
    b
}

/// What a client sends for `data` (RFC 7692 §7.2.1): raw DEFLATE at zlib's
/// default level, sync-flushed, the 4-byte tail removed.
fn client_deflate(data: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut z = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    z.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert_eq!(z.total_in() as usize, data.len());
    out.truncate(out.len() - 4);
    out
}

fn deflate(c: &mut Criterion) {
    use ringecho_proto::deflate::Inflater;
    let mut g = c.benchmark_group("deflate");
    for size in [16 << 10, 1 << 20] {
        let text = chat_text(size);
        let z = client_deflate(&text);
        eprintln!(
            "deflate: {} of chat text compresses to {} bytes ({:.2})",
            label(size),
            z.len(),
            z.len() as f64 / size as f64
        );
        // Bytes of message (inflated), so every row is comparable.
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("inflate_validate", label(size)), |b| {
            let mut inflater = Inflater::take();
            let mut v = Utf8Validator::new();
            b.iter(|| {
                inflater
                    .feed(black_box(&z), Some(&mut v), u64::MAX)
                    .unwrap();
                inflater.finish_message(Some(&mut v), u64::MAX).unwrap();
                v.finish().unwrap();
                inflater.reset();
            })
        });
        g.bench_function(BenchmarkId::new("from_utf8_inflated", label(size)), |b| {
            b.iter(|| std::str::from_utf8(black_box(&text)).is_ok())
        });
        // What a recompressing echo adds on top of the check.
        g.bench_function(BenchmarkId::new("deflate_level6", label(size)), |b| {
            b.iter(|| client_deflate(black_box(&text)))
        });
    }
    g.finish();
}

criterion_group!(benches, unmask, utf8, whole_path, engine, deflate);
criterion_main!(benches);
