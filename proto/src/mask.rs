//! In-place (un)masking of frame payloads (RFC 6455 §5.3).
//!
//! Every client frame is masked, so every payload byte the server reads goes
//! through here; it has to run at memory speed. The body of a buffer is
//! processed 64/32/16 bytes at a time with the 4-byte key rotated to the
//! current phase and broadcast across a vector, which makes the XOR
//! position-independent. AVX-512 and AVX2 are picked at run time so that a
//! default build (no `target-cpu`) still uses them.
//!
//! Each implementation also comes in a variant that reports whether every
//! unmasked byte is ASCII, computed in the same pass: text frames are mostly
//! ASCII, and knowing that lets UTF-8 validation skip a second pass.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU8, Ordering};

/// Below this many bytes the call into a `#[target_feature]` function (which
/// cannot be inlined here) costs more than wide vectors save: measured 6.8 ns
/// dispatched against 4.4 ns inline for 125 bytes, 5.5 against 2.2 ns for 16.
/// Most WebSocket messages (2–125 bytes) land here and stay on inline word
/// code, which LLVM vectorises with baseline SSE2 anyway.
const SMALL: usize = 128;

/// The high bit of every byte in a word: set in the OR of all unmasked bytes
/// exactly when some byte is not ASCII.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// XOR `buf` with the 4-byte masking key, where `buf[0]` is payload byte
/// number `offset` (so the key is used from phase `offset % 4`). Masking is
/// its own inverse, so this both masks and unmasks (RFC 6455 §5.3:
/// `transformed-octet-i = original-octet-i XOR masking-key-octet-(i MOD 4)`).
///
/// `offset` lets a payload that arrives in several reads, or is processed in
/// pieces, be unmasked piecewise with the running payload position.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    if buf.len() < SMALL {
        xor_words(buf, rotate_key(key, offset));
        return;
    }
    dispatch::<false>(buf, key, offset);
}

/// [`apply_mask`], also telling whether every resulting byte is ASCII, found
/// in the same pass over `buf` (RFC 6455 §5.3, for the §5.6 text check).
#[inline]
pub(crate) fn apply_mask_is_ascii(buf: &mut [u8], key: [u8; 4], offset: u64) -> bool {
    if buf.len() < SMALL {
        return xor_words(buf, rotate_key(key, offset)) & HIGH_BITS == 0;
    }
    dispatch::<true>(buf, key, offset)
}

/// The byte-at-a-time reference (RFC 6455 §5.3), kept as the oracle for tests
/// and the yardstick for the benchmark.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: u64) {
    let rotated = rotate_key(key, offset);
    for (b, k) in buf.iter_mut().zip(rotated.iter().cycle()) {
        *b ^= k;
    }
}

/// The key as seen from a payload position with phase `offset % 4`: byte 0 of
/// the result masks the byte at that position. Rotating once up front lets
/// every later block use the same broadcast constant.
#[inline]
fn rotate_key(key: [u8; 4], offset: u64) -> [u8; 4] {
    // A rotate of the little-endian word by whole bytes, rather than
    // `<[u8]>::rotate_left`, which with a run-time amount compiles to
    // memcpy/memmove calls. `% 4` keeps the cast lossless.
    let bits = 8 * (offset % 4) as u32;
    u32::from_le_bytes(key).rotate_right(bits).to_le_bytes()
}

/// The rotated key repeated twice, so one `u64` XOR covers 8 payload bytes.
/// Both halves are equal, so the result is the same on either endianness.
#[inline]
fn key_u64(rotated: [u8; 4]) -> u64 {
    let k = u64::from(u32::from_ne_bytes(rotated));
    k | (k << 32)
}

/// XOR eight bytes with the broadcast key; returns the result as a word.
#[inline(always)]
fn xor8(chunk: &mut [u8], k64: u64, rotated: [u8; 4]) -> u64 {
    if let Ok(word) = <&mut [u8; 8]>::try_from(&mut *chunk) {
        let w = u64::from_ne_bytes(*word) ^ k64;
        *word = w.to_ne_bytes();
        w
    } else {
        // Only reachable if a caller passes a chunk that is not 8 bytes;
        // stay correct rather than panic.
        xor_bytes(chunk, rotated)
    }
}

/// XOR a few bytes; returns the OR of the results.
#[inline(always)]
fn xor_bytes(buf: &mut [u8], rotated: [u8; 4]) -> u64 {
    let mut acc = 0u8;
    for (b, k) in buf.iter_mut().zip(rotated.iter().cycle()) {
        *b ^= k;
        acc |= *b;
    }
    u64::from(acc)
}

/// Scalar path for heads, tails and small buffers: `u64` words, one `u32`,
/// then at most three single bytes. `rotated` must already match `buf[0]`'s
/// phase. Returns the OR of all resulting words, for the ASCII check; when
/// the caller ignores it, inlining lets the compiler drop it.
#[inline(always)]
fn xor_words(buf: &mut [u8], rotated: [u8; 4]) -> u64 {
    let k64 = key_u64(rotated);
    let mut acc = 0u64;
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        acc |= xor8(w, k64, rotated);
    }
    // Words and the half word are multiples of the key length, so the
    // phase of what follows them is unchanged.
    let rest = words.into_remainder();
    let (half, bytes) = rest.split_at_mut(rest.len() & 4);
    if let Ok(h) = <&mut [u8; 4]>::try_from(&mut *half) {
        let w = u32::from_ne_bytes(*h) ^ u32::from_ne_bytes(rotated);
        *h = w.to_ne_bytes();
        acc |= u64::from(w);
    }
    acc | xor_bytes(bytes, rotated)
}

/// Tails under 16 bytes: at most one `u64`, one `u32` and three bytes, with
/// no loop for LLVM to version. Returns the OR of the results.
#[inline(always)]
fn xor_short(buf: &mut [u8], rotated: [u8; 4]) -> u64 {
    let k64 = key_u64(rotated);
    let (word, rest) = buf.split_at_mut(buf.len() & 8);
    let mut acc = 0;
    if let Ok(w) = <&mut [u8; 8]>::try_from(&mut *word) {
        let v = u64::from_ne_bytes(*w) ^ k64;
        *w = v.to_ne_bytes();
        acc = v;
    }
    // Phase is unchanged after 8 bytes, a multiple of the key length.
    acc | xor_words(rest, rotated)
}

/// Portable body: four `u64` words per step, which LLVM turns into vector
/// code on any target with SIMD registers. Returns whether all output bytes
/// are ASCII when `ASCII` is set (and `true` otherwise).
fn mask_portable<const ASCII: bool>(buf: &mut [u8], key: [u8; 4], offset: u64) -> bool {
    let (head, rest) = split_head(buf, 8);
    let mut acc = xor_words(head, rotate_key(key, offset));
    let rotated = rotate_key(key, offset.wrapping_add(head.len() as u64));
    let k64 = key_u64(rotated);
    let mut blocks = rest.chunks_exact_mut(32);
    for block in &mut blocks {
        let (a, b) = block.split_at_mut(16);
        let (a0, a1) = a.split_at_mut(8);
        let (b0, b1) = b.split_at_mut(8);
        let w = xor8(a0, k64, rotated)
            | xor8(a1, k64, rotated)
            | xor8(b0, k64, rotated)
            | xor8(b1, k64, rotated);
        if ASCII {
            acc |= w;
        }
    }
    acc |= xor_words(blocks.into_remainder(), rotated);
    !ASCII || acc & HIGH_BITS == 0
}

/// Splits off the bytes before the first `align`-aligned address so the
/// vector body never straddles cache lines. The head is at most `align - 1`
/// bytes, or the whole buffer if it is shorter.
#[inline(always)]
fn split_head(buf: &mut [u8], align: usize) -> (&mut [u8], &mut [u8]) {
    let to_align = buf.as_ptr().align_offset(align).min(buf.len());
    buf.split_at_mut(to_align)
}

/// Which implementation this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The detected [`Path`], cached because feature detection costs an atomic
/// load plus bit tests per query and the frame path asks on every read.
#[cfg(target_arch = "x86_64")]
static PATH: AtomicU8 = AtomicU8::new(PATH_UNSET);

#[cfg(target_arch = "x86_64")]
const PATH_UNSET: u8 = 0;
#[cfg(target_arch = "x86_64")]
const PATH_PORTABLE: u8 = 1;
#[cfg(target_arch = "x86_64")]
const PATH_AVX2: u8 = 2;
#[cfg(target_arch = "x86_64")]
const PATH_AVX512: u8 = 3;

/// The implementation [`apply_mask`] uses on this machine.
#[cfg(target_arch = "x86_64")]
pub(crate) fn selected_path() -> Path {
    match PATH.load(Ordering::Relaxed) {
        PATH_AVX512 => Path::Avx512,
        PATH_AVX2 => Path::Avx2,
        PATH_PORTABLE => Path::Portable,
        _ => detect_path(),
    }
}

/// The implementation [`apply_mask`] uses on this machine.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn selected_path() -> Path {
    Path::Portable
}

/// Whether this CPU can run `path`.
#[cfg(any(test, target_arch = "x86_64"))]
pub(crate) fn path_supported(path: Path) -> bool {
    match path {
        Path::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => is_x86_feature_detected!("avx2"),
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
    }
}

#[cfg(target_arch = "x86_64")]
#[cold]
fn detect_path() -> Path {
    let (path, code) = if path_supported(Path::Avx512) {
        (Path::Avx512, PATH_AVX512)
    } else if path_supported(Path::Avx2) {
        (Path::Avx2, PATH_AVX2)
    } else {
        (Path::Portable, PATH_PORTABLE)
    };
    // Racing threads all compute the same answer, so Relaxed is enough.
    PATH.store(code, Ordering::Relaxed);
    path
}

/// A short name of the run-time choice, for logs and benchmark reports.
pub fn selected_path_name() -> &'static str {
    match selected_path() {
        Path::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => "avx512f+avx512bw",
    }
}

/// Runs one specific implementation: `None` (and `buf` untouched) if this CPU
/// lacks its features, so tests can force every path the machine supports
/// rather than only the one dispatch picks. `Some(all_ascii)` otherwise.
#[cfg(test)]
pub(crate) fn apply_mask_with<const ASCII: bool>(
    path: Path,
    buf: &mut [u8],
    key: [u8; 4],
    offset: u64,
) -> Option<bool> {
    if !path_supported(path) {
        return None;
    }
    Some(match path {
        Path::Portable => mask_portable::<ASCII>(buf, key, offset),
        // SAFETY: `path_supported` just confirmed AVX2 on this CPU, the only
        // precondition of `x86::mask_avx2`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::mask_avx2::<ASCII>(buf, key, offset) },
        // SAFETY: `path_supported` just confirmed AVX-512F and AVX-512BW on
        // this CPU, the only precondition of `x86::mask_avx512`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { x86::mask_avx512::<ASCII>(buf, key, offset) },
    })
}

/// Runs the implementation cached in [`PATH`], detecting it on first use.
#[cfg(target_arch = "x86_64")]
#[inline]
fn dispatch<const ASCII: bool>(buf: &mut [u8], key: [u8; 4], offset: u64) -> bool {
    match PATH.load(Ordering::Relaxed) {
        // SAFETY: PATH only ever holds PATH_AVX512 after `detect_path` saw
        // AVX-512F and AVX-512BW on this CPU, the only precondition of
        // `mask_avx512`.
        PATH_AVX512 => unsafe { x86::mask_avx512::<ASCII>(buf, key, offset) },
        // SAFETY: PATH only ever holds PATH_AVX2 after `detect_path` saw
        // AVX2 on this CPU, the only precondition of `mask_avx2`.
        PATH_AVX2 => unsafe { x86::mask_avx2::<ASCII>(buf, key, offset) },
        PATH_PORTABLE => mask_portable::<ASCII>(buf, key, offset),
        _ => {
            detect_path();
            dispatch::<ASCII>(buf, key, offset)
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn dispatch<const ASCII: bool>(buf: &mut [u8], key: [u8; 4], offset: u64) -> bool {
    mask_portable::<ASCII>(buf, key, offset)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{rotate_key, split_head, xor_short, HIGH_BITS};
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256, _mm512_loadu_si512,
        _mm512_movepi8_mask, _mm512_or_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512, _mm512_xor_si512, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi32,
        _mm_storeu_si128, _mm_xor_si128,
    };

    /// Aligning the body only pays once it is long enough for cache-line
    /// splits to cost more than the extra head steps.
    const ALIGN_FROM: usize = 512;

    /// The key broadcast for a vector starting at payload position `pos`.
    #[inline(always)]
    fn lanes(key: [u8; 4], pos: u64) -> i32 {
        // Vector lanes are little-endian u32s, so lane bytes in memory order
        // are exactly the rotated key.
        i32::from_le_bytes(rotate_key(key, pos))
    }

    /// Heads and tails under 64 bytes: one 32-byte and one 16-byte step as
    /// needed, then `u64`/`u32` words and at most three bytes. The steps
    /// never overlap: overlapping or masked stores would defeat store
    /// forwarding, which small messages handled back to back would feel.
    /// Returns `true` unless `ASCII` is set and some output byte is not.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn steps<const ASCII: bool>(buf: &mut [u8], key: [u8; 4], offset: u64) -> bool {
        let len = buf.len();
        let p = buf.as_mut_ptr();
        let mut i = 0usize;
        let mut high = 0i32;
        if len >= 32 {
            // SAFETY: `p .. p + 32` is inside `buf` (`len >= 32`), which is
            // borrowed exclusively; unaligned variants need no alignment and
            // AVX2 is enabled by the contract.
            unsafe {
                let a = p.cast::<__m256i>();
                let v =
                    _mm256_xor_si256(_mm256_loadu_si256(a), _mm256_set1_epi32(lanes(key, offset)));
                _mm256_storeu_si256(a, v);
                if ASCII {
                    high |= _mm256_movemask_epi8(v);
                }
            }
            i = 32;
        }
        if len - i >= 16 {
            // SAFETY: `p + i .. p + i + 16` is inside `buf` by the check;
            // SSE2 is baseline on x86-64.
            unsafe {
                let a = p.add(i).cast::<__m128i>();
                let k = _mm_set1_epi32(lanes(key, offset.wrapping_add(i as u64)));
                let v = _mm_xor_si128(_mm_loadu_si128(a), k);
                _mm_storeu_si128(a, v);
                if ASCII {
                    high |= _mm_movemask_epi8(v);
                }
            }
            i += 16;
        }
        let words = match buf.get_mut(i..) {
            Some(rest) => xor_short(rest, rotate_key(key, offset.wrapping_add(i as u64))),
            None => 0,
        };
        !ASCII || (high == 0 && words & HIGH_BITS == 0)
    }

    /// AVX-512: for large buffers a head up to a 64-byte boundary, then 256
    /// and 64 bytes per step, then the tail in smaller steps. Returns whether
    /// every output byte is ASCII when `ASCII` is set.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn mask_avx512<const ASCII: bool>(
        buf: &mut [u8],
        key: [u8; 4],
        offset: u64,
    ) -> bool {
        let align = if buf.len() >= ALIGN_FROM { 64 } else { 1 };
        let (head, body) = split_head(buf, align);
        let body_at = offset.wrapping_add(head.len() as u64);
        // SAFETY: AVX2 is implied by AVX-512F, enabled by the contract.
        let mut ascii = unsafe { steps::<ASCII>(head, key, offset) };
        let k = _mm512_set1_epi32(lanes(key, body_at));
        let mut acc = _mm512_setzero_si512();
        let len = body.len();
        let p = body.as_mut_ptr();
        let mut i = 0usize;
        while len - i >= 256 {
            // SAFETY: the four accesses cover `p + i .. p + i + 256` and the
            // loop condition gives `i + 256 <= len`, so they stay inside
            // `body`, borrowed exclusively. Unaligned variants need no
            // alignment; AVX-512F is enabled by the contract.
            unsafe {
                let a = p.add(i);
                let v0 = _mm512_xor_si512(_mm512_loadu_si512(a.cast()), k);
                let v1 = _mm512_xor_si512(_mm512_loadu_si512(a.add(64).cast()), k);
                let v2 = _mm512_xor_si512(_mm512_loadu_si512(a.add(128).cast()), k);
                let v3 = _mm512_xor_si512(_mm512_loadu_si512(a.add(192).cast()), k);
                _mm512_storeu_si512(a.cast(), v0);
                _mm512_storeu_si512(a.add(64).cast(), v1);
                _mm512_storeu_si512(a.add(128).cast(), v2);
                _mm512_storeu_si512(a.add(192).cast(), v3);
                if ASCII {
                    let v = _mm512_or_si512(_mm512_or_si512(v0, v1), _mm512_or_si512(v2, v3));
                    acc = _mm512_or_si512(acc, v);
                }
            }
            i += 256;
        }
        while len - i >= 64 {
            // SAFETY: as above, with `i + 64 <= len`.
            unsafe {
                let a = p.add(i);
                let v = _mm512_xor_si512(_mm512_loadu_si512(a.cast()), k);
                _mm512_storeu_si512(a.cast(), v);
                if ASCII {
                    acc = _mm512_or_si512(acc, v);
                }
            }
            i += 64;
        }
        if let Some(tail) = body.get_mut(i..) {
            // SAFETY: AVX2 is implied by AVX-512F. Steps so far were
            // multiples of 4 bytes, but the exact position is passed anyway.
            ascii &= unsafe { steps::<ASCII>(tail, key, body_at.wrapping_add(i as u64)) };
        }
        !ASCII || (ascii && _mm512_movepi8_mask(acc) == 0)
    }

    /// AVX2: for large buffers a head up to a 32-byte boundary, then 128 and
    /// 32 bytes per step, then the tail in smaller steps. Returns whether
    /// every output byte is ASCII when `ASCII` is set.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mask_avx2<const ASCII: bool>(
        buf: &mut [u8],
        key: [u8; 4],
        offset: u64,
    ) -> bool {
        let align = if buf.len() >= ALIGN_FROM { 32 } else { 1 };
        let (head, body) = split_head(buf, align);
        let body_at = offset.wrapping_add(head.len() as u64);
        // SAFETY: AVX2 is enabled by the contract.
        let mut ascii = unsafe { steps::<ASCII>(head, key, offset) };
        let k = _mm256_set1_epi32(lanes(key, body_at));
        let mut acc = _mm256_set1_epi32(0);
        let len = body.len();
        let p = body.as_mut_ptr();
        let mut i = 0usize;
        while len - i >= 128 {
            // SAFETY: the four accesses cover `p + i .. p + i + 128` and the
            // loop condition gives `i + 128 <= len`, so they stay inside
            // `body`, borrowed exclusively. Unaligned variants need no
            // alignment; AVX2 is enabled by the contract.
            unsafe {
                let a = p.add(i).cast::<__m256i>();
                let v0 = _mm256_xor_si256(_mm256_loadu_si256(a), k);
                let v1 = _mm256_xor_si256(_mm256_loadu_si256(a.add(1)), k);
                let v2 = _mm256_xor_si256(_mm256_loadu_si256(a.add(2)), k);
                let v3 = _mm256_xor_si256(_mm256_loadu_si256(a.add(3)), k);
                _mm256_storeu_si256(a, v0);
                _mm256_storeu_si256(a.add(1), v1);
                _mm256_storeu_si256(a.add(2), v2);
                _mm256_storeu_si256(a.add(3), v3);
                if ASCII {
                    let v = _mm256_or_si256(_mm256_or_si256(v0, v1), _mm256_or_si256(v2, v3));
                    acc = _mm256_or_si256(acc, v);
                }
            }
            i += 128;
        }
        while len - i >= 32 {
            // SAFETY: as above, with `i + 32 <= len`.
            unsafe {
                let a = p.add(i).cast::<__m256i>();
                let v = _mm256_xor_si256(_mm256_loadu_si256(a), k);
                _mm256_storeu_si256(a, v);
                if ASCII {
                    acc = _mm256_or_si256(acc, v);
                }
            }
            i += 32;
        }
        if let Some(tail) = body.get_mut(i..) {
            // SAFETY: AVX2 is enabled by the contract.
            ascii &= unsafe { steps::<ASCII>(tail, key, body_at.wrapping_add(i as u64)) };
        }
        !ASCII || (ascii && _mm256_movemask_epi8(acc) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_paths() -> Vec<Path> {
        #[allow(unused_mut)]
        let mut v = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            for p in [Path::Avx2, Path::Avx512] {
                if path_supported(p) {
                    v.push(p);
                }
            }
        }
        v
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 3)) as u8)
            .collect()
    }

    /// Checks `f` against the bytewise oracle for every length 0..=1024, every
    /// buffer start 0..64 (alignment) and every phase offset 0..64.
    type MaskFn<'a> = &'a dyn Fn(&mut [u8], [u8; 4], u64);

    fn check_all(key: [u8; 4], f: MaskFn<'_>) {
        let src = pattern(1024 + 64);
        let mut big = src.clone();
        let mut want = src.clone();
        for len in 0..=1024usize {
            for start in 0..64usize {
                // `start` moves the buffer (alignment of the head/body split),
                // `phase` the key; both are swept, together and apart.
                for phase in [0u64, start as u64, 63 - start as u64] {
                    let end = start + len;
                    f(&mut big[start..end], key, phase);
                    apply_mask_bytewise(&mut want[start..end], key, phase);
                    assert!(
                        big[start..end] == want[start..end],
                        "len {len} start {start} phase {phase}"
                    );
                    // Bytes outside the window must be untouched.
                    assert!(big[..start] == src[..start] && big[end..] == src[end..]);
                    big[start..end].copy_from_slice(&src[start..end]);
                    want[start..end].copy_from_slice(&src[start..end]);
                }
            }
        }
    }

    #[test]
    fn unmask_matches_bytewise_for_all_lengths_and_offsets_section_5_3() {
        check_all([0x37, 0xfa, 0x21, 0x3d], &apply_mask);
    }

    #[test]
    fn every_supported_simd_path_matches_bytewise_section_5_3() {
        for path in all_paths() {
            check_all([0x9c, 0x01, 0xee, 0x42], &|b, k, o| {
                assert_eq!(
                    apply_mask_with::<false>(path, b, k, o),
                    Some(true),
                    "{path:?}"
                );
            });
        }
    }

    #[test]
    fn ascii_variant_unmasks_and_reports_ascii_on_every_path_section_5_3() {
        let paths = all_paths();
        let ascii: Vec<u8> = (0..1100).map(|i| b' ' + (i % 95) as u8).collect();
        for path in paths.iter().copied().map(Some).chain([None]) {
            for len in 0..=1100usize {
                for start in [0usize, 1, 7, 33] {
                    let Some(window) = len.checked_sub(start) else {
                        continue;
                    };
                    // Every non-ASCII position is tried for a few lengths,
                    // including the head, the blocks and the tails.
                    let bad_positions: Vec<Option<usize>> = if len % 97 == 0 || len < 80 {
                        std::iter::once(None).chain((0..window).map(Some)).collect()
                    } else {
                        vec![None, window.checked_sub(1), Some(window / 2)]
                    };
                    for bad in bad_positions {
                        let mut plain = ascii[..window].to_vec();
                        if let Some(b) = bad.filter(|&b| b < window) {
                            plain[b] = 0xCE;
                        }
                        let key = [0x5a, 0x80, 0x01, 0xff];
                        let offset = (len % 7) as u64;
                        let mut buf = vec![0u8; start];
                        buf.extend_from_slice(&plain);
                        apply_mask_bytewise(&mut buf[start..], key, offset);
                        let got = match path {
                            Some(p) => apply_mask_with::<true>(p, &mut buf[start..], key, offset),
                            None => Some(apply_mask_is_ascii(&mut buf[start..], key, offset)),
                        };
                        assert_eq!(
                            got,
                            Some(plain.is_ascii()),
                            "{path:?} {len} {start} {bad:?}"
                        );
                        assert!(buf[start..] == plain[..], "{path:?} {len} {start} {bad:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn offset_argument_phase_for_every_start_0_to_63_section_5_3() {
        let key = [1, 2, 4, 8];
        for path in all_paths() {
            for offset in 0..64u64 {
                let mut got = pattern(300);
                let mut want = got.clone();
                assert!(apply_mask_with::<false>(path, &mut got, key, offset).is_some());
                apply_mask_bytewise(&mut want, key, offset);
                assert_eq!(got, want, "{path:?} offset {offset}");
            }
        }
    }

    #[test]
    fn rfc_example_hello_masked_section_5_7() {
        // §5.7: "Hello" masked with 37 fa 21 3d.
        let mut b = *b"Hello";
        apply_mask(&mut b, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(b, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        apply_mask(&mut b, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&b, b"Hello");
    }

    #[test]
    fn dispatch_picks_the_best_path_this_cpu_has() {
        let p = selected_path();
        assert_eq!(all_paths().last().copied(), Some(p));
        assert!(!selected_path_name().is_empty());
    }

    proptest! {
        #[test]
        fn unmask_random_keys_match_bytewise_section_5_3(
            key in any::<[u8; 4]>(),
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            start in 0usize..64,
            offset in any::<u64>(),
        ) {
            let mut big = vec![0u8; start];
            big.extend_from_slice(&data);
            let mut want = big.clone();
            apply_mask(&mut big[start..], key, offset);
            apply_mask_bytewise(&mut want[start..], key, offset);
            prop_assert_eq!(&big, &want);
            for path in all_paths() {
                let mut got = vec![0u8; start];
                got.extend_from_slice(&data);
                prop_assert!(apply_mask_with::<false>(path, &mut got[start..], key, offset).is_some());
                prop_assert_eq!(&got, &want);
            }
        }

        #[test]
        fn mask_phase_carries_across_calls_section_5_3(
            key in any::<[u8; 4]>(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            offset in 0u64..1_000_000,
        ) {
            let mut whole = data.clone();
            apply_mask(&mut whole, key, offset);
            let mut points: Vec<usize> = cuts.drain(..).map(|ix| ix.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut pieces = data.clone();
            for w in points.windows(2) {
                apply_mask(&mut pieces[w[0]..w[1]], key, offset + w[0] as u64);
            }
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn masking_twice_is_identity_section_5_3(
            key in any::<[u8; 4]>(),
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            offset in any::<u64>(),
        ) {
            let mut b = data.clone();
            apply_mask(&mut b, key, offset);
            apply_mask(&mut b, key, offset);
            prop_assert_eq!(b, data);
        }
    }
}
