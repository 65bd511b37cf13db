//! In-place (un)masking of frame payloads (RFC 6455 §5.3).
//!
//! Every client frame is masked, so every payload byte the server reads goes
//! through here; it has to run at memory speed. The body of a buffer is
//! processed 64/32/16 bytes at a time with the 4-byte key rotated to the
//! current phase and broadcast across a vector, which makes the XOR
//! position-independent. AVX-512 and AVX2 are picked at run time so that a
//! default build (no `target-cpu`) still uses them.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU8, Ordering};

/// Below this many bytes the dispatch and the alignment head cost more than
/// the vector loop saves; most WebSocket messages (2–125 bytes) land here.
const SMALL: usize = 32;

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
    apply_mask_large(buf, key, offset);
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
    let mut k = key;
    // `% 4` keeps the cast lossless and the rotation in range.
    k.rotate_left((offset % 4) as usize);
    k
}

/// The rotated key repeated twice, so one `u64` XOR covers 8 payload bytes.
/// Both halves are equal, so the result is the same on either endianness.
#[inline]
fn key_u64(rotated: [u8; 4]) -> u64 {
    let k = u64::from(u32::from_ne_bytes(rotated));
    k | (k << 32)
}

/// XOR eight bytes with the broadcast key.
#[inline(always)]
fn xor8(chunk: &mut [u8], k64: u64, rotated: [u8; 4]) {
    if let Ok(word) = <&mut [u8; 8]>::try_from(&mut *chunk) {
        *word = (u64::from_ne_bytes(*word) ^ k64).to_ne_bytes();
    } else {
        // Only reachable if a caller passes a chunk that is not 8 bytes;
        // stay correct rather than panic.
        xor_bytes(chunk, rotated);
    }
}

#[inline(always)]
fn xor_bytes(buf: &mut [u8], rotated: [u8; 4]) {
    for (b, k) in buf.iter_mut().zip(rotated.iter().cycle()) {
        *b ^= k;
    }
}

/// Scalar path for heads, tails and small buffers: `u64` words, then at most
/// seven single bytes. `rotated` must already match `buf[0]`'s phase.
#[inline(always)]
fn xor_words(buf: &mut [u8], rotated: [u8; 4]) {
    let k64 = key_u64(rotated);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        xor8(w, k64, rotated);
    }
    // A word is 8 bytes, a multiple of the key length, so the phase of the
    // remainder is unchanged.
    xor_bytes(words.into_remainder(), rotated);
}

/// Portable body: four `u64` words per step, which LLVM turns into vector
/// code on any target with SIMD registers.
fn mask_portable(buf: &mut [u8], key: [u8; 4], offset: u64) {
    let (head, rest) = split_head(buf, 8);
    xor_words(head, rotate_key(key, offset));
    let rotated = rotate_key(key, offset.wrapping_add(head.len() as u64));
    let k64 = key_u64(rotated);
    let mut blocks = rest.chunks_exact_mut(32);
    for block in &mut blocks {
        let (a, b) = block.split_at_mut(16);
        let (a0, a1) = a.split_at_mut(8);
        let (b0, b1) = b.split_at_mut(8);
        xor8(a0, k64, rotated);
        xor8(a1, k64, rotated);
        xor8(b0, k64, rotated);
        xor8(b1, k64, rotated);
    }
    xor_words(blocks.into_remainder(), rotated);
}

/// Splits off the bytes before the first `align`-aligned address so the
/// vector body never straddles cache lines. The head is at most `align - 1`
/// bytes, or the whole buffer if it is shorter.
#[inline(always)]
fn split_head(buf: &mut [u8], align: usize) -> (&mut [u8], &mut [u8]) {
    let to_align = buf.as_ptr().align_offset(align).min(buf.len());
    buf.split_at_mut(to_align)
}

/// Which implementation this CPU runs. Cached because feature detection is
/// an atomic load plus a bit test per query, and the frame path calls this
/// for every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

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

#[cfg(target_arch = "x86_64")]
#[cold]
fn detect_path() -> Path {
    let (path, code) = if is_x86_feature_detected!("avx512f") {
        (Path::Avx512, PATH_AVX512)
    } else if is_x86_feature_detected!("avx2") {
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
        Path::Avx512 => "avx512f",
    }
}

/// Runs one specific implementation. Returns `false` (and leaves `buf` alone)
/// if this CPU lacks the features that path needs, so tests can force every
/// path the machine supports rather than only the one dispatch picks.
#[cfg(test)]
pub(crate) fn apply_mask_with(path: Path, buf: &mut [u8], key: [u8; 4], offset: u64) -> bool {
    match path {
        Path::Portable => {
            mask_portable(buf, key, offset);
            true
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => {
            if !is_x86_feature_detected!("avx2") {
                return false;
            }
            // SAFETY: AVX2 support was just confirmed on this CPU, which is
            // the only precondition of `x86::mask_avx2`.
            unsafe { x86::mask_avx2(buf, key, offset) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => {
            if !is_x86_feature_detected!("avx512f") {
                return false;
            }
            // SAFETY: AVX-512F support was just confirmed on this CPU, which
            // is the only precondition of `x86::mask_avx512`.
            unsafe { x86::mask_avx512(buf, key, offset) };
            true
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn apply_mask_large(buf: &mut [u8], key: [u8; 4], offset: u64) {
    match PATH.load(Ordering::Relaxed) {
        // SAFETY: PATH only ever holds PATH_AVX512 after `detect_path` saw
        // AVX-512F on this CPU, the only precondition of `mask_avx512`.
        PATH_AVX512 => unsafe { x86::mask_avx512(buf, key, offset) },
        // SAFETY: PATH only ever holds PATH_AVX2 after `detect_path` saw
        // AVX2 on this CPU, the only precondition of `mask_avx2`.
        PATH_AVX2 => unsafe { x86::mask_avx2(buf, key, offset) },
        PATH_PORTABLE => mask_portable(buf, key, offset),
        _ => {
            detect_path();
            apply_mask_large(buf, key, offset);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn apply_mask_large(buf: &mut [u8], key: [u8; 4], offset: u64) {
    mask_portable(buf, key, offset);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{rotate_key, split_head, xor_words};
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256,
        _mm256_xor_si256, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512,
        _mm512_xor_si512, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
    };

    /// AVX-512 body: 256 bytes per iteration from a 64-byte-aligned start,
    /// then one 64/32/16-byte step each, then the scalar tail.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (and therefore AVX2 and SSE2).
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn mask_avx512(buf: &mut [u8], key: [u8; 4], offset: u64) {
        let (head, body) = split_head(buf, 64);
        xor_words(head, rotate_key(key, offset));
        let rotated = rotate_key(key, offset.wrapping_add(head.len() as u64));
        // The vector lanes are little-endian u32s, so lane bytes in memory
        // order are exactly `rotated`.
        let k32 = i32::from_le_bytes(rotated);
        let k512 = _mm512_set1_epi32(k32);

        let len = body.len();
        let p = body.as_mut_ptr();
        let mut i = 0usize;
        // SAFETY (all blocks below): every access covers `p + i .. p + i + w`
        // where the loop condition guarantees `i + w <= len`, so it stays
        // inside `body`, which we borrow mutably and exclusively. The
        // loads/stores are the unaligned variants, so no alignment is
        // required. AVX-512F is enabled by this function's contract.
        while len - i >= 256 {
            unsafe {
                let a = p.add(i);
                let v0 = _mm512_loadu_si512(a.cast());
                let v1 = _mm512_loadu_si512(a.add(64).cast());
                let v2 = _mm512_loadu_si512(a.add(128).cast());
                let v3 = _mm512_loadu_si512(a.add(192).cast());
                _mm512_storeu_si512(a.cast(), _mm512_xor_si512(v0, k512));
                _mm512_storeu_si512(a.add(64).cast(), _mm512_xor_si512(v1, k512));
                _mm512_storeu_si512(a.add(128).cast(), _mm512_xor_si512(v2, k512));
                _mm512_storeu_si512(a.add(192).cast(), _mm512_xor_si512(v3, k512));
            }
            i += 256;
        }
        while len - i >= 64 {
            // SAFETY: as above, `i + 64 <= len`.
            unsafe {
                let a = p.add(i);
                let v = _mm512_loadu_si512(a.cast());
                _mm512_storeu_si512(a.cast(), _mm512_xor_si512(v, k512));
            }
            i += 64;
        }
        if len - i >= 32 {
            // SAFETY: as above, `i + 32 <= len`; AVX2 is implied by AVX-512F
            // and enabled on this function.
            unsafe {
                let a = p.add(i).cast::<__m256i>();
                let v = _mm256_loadu_si256(a);
                _mm256_storeu_si256(a, _mm256_xor_si256(v, _mm256_set1_epi32(k32)));
            }
            i += 32;
        }
        if len - i >= 16 {
            // SAFETY: as above, `i + 16 <= len`; SSE2 is baseline on x86-64.
            unsafe {
                let a = p.add(i).cast::<__m128i>();
                let v = _mm_loadu_si128(a);
                _mm_storeu_si128(a, _mm_xor_si128(v, _mm_set1_epi32(k32)));
            }
            i += 16;
        }
        // Every step above is a multiple of 4 bytes, so `rotated` still
        // matches the tail's phase.
        if let Some(tail) = body.get_mut(i..) {
            xor_words(tail, rotated);
        }
    }

    /// AVX2 body: 128 bytes per iteration from a 32-byte-aligned start, then
    /// one 32/16-byte step each, then the scalar tail.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mask_avx2(buf: &mut [u8], key: [u8; 4], offset: u64) {
        let (head, body) = split_head(buf, 32);
        xor_words(head, rotate_key(key, offset));
        let rotated = rotate_key(key, offset.wrapping_add(head.len() as u64));
        let k32 = i32::from_le_bytes(rotated);
        let k256 = _mm256_set1_epi32(k32);

        let len = body.len();
        let p = body.as_mut_ptr();
        let mut i = 0usize;
        // SAFETY (all blocks below): every access covers `p + i .. p + i + w`
        // where the loop condition guarantees `i + w <= len`, so it stays
        // inside `body`, which we borrow mutably and exclusively. Unaligned
        // load/store variants need no alignment. AVX2 is enabled by this
        // function's contract.
        while len - i >= 128 {
            unsafe {
                let a = p.add(i).cast::<__m256i>();
                let v0 = _mm256_loadu_si256(a);
                let v1 = _mm256_loadu_si256(a.add(1));
                let v2 = _mm256_loadu_si256(a.add(2));
                let v3 = _mm256_loadu_si256(a.add(3));
                _mm256_storeu_si256(a, _mm256_xor_si256(v0, k256));
                _mm256_storeu_si256(a.add(1), _mm256_xor_si256(v1, k256));
                _mm256_storeu_si256(a.add(2), _mm256_xor_si256(v2, k256));
                _mm256_storeu_si256(a.add(3), _mm256_xor_si256(v3, k256));
            }
            i += 128;
        }
        while len - i >= 32 {
            // SAFETY: as above, `i + 32 <= len`.
            unsafe {
                let a = p.add(i).cast::<__m256i>();
                let v = _mm256_loadu_si256(a);
                _mm256_storeu_si256(a, _mm256_xor_si256(v, k256));
            }
            i += 32;
        }
        if len - i >= 16 {
            // SAFETY: as above, `i + 16 <= len`; SSE2 is baseline on x86-64.
            unsafe {
                let a = p.add(i).cast::<__m128i>();
                let v = _mm_loadu_si128(a);
                _mm_storeu_si128(a, _mm_xor_si128(v, _mm_set1_epi32(k32)));
            }
            i += 16;
        }
        if let Some(tail) = body.get_mut(i..) {
            xor_words(tail, rotated);
        }
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
            if is_x86_feature_detected!("avx2") {
                v.push(Path::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(Path::Avx512);
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
                assert!(apply_mask_with(path, b, k, o), "{path:?}");
            });
        }
    }

    #[test]
    fn offset_argument_phase_for_every_start_0_to_63_section_5_3() {
        let key = [1, 2, 4, 8];
        for path in all_paths() {
            for offset in 0..64u64 {
                let mut got = pattern(300);
                let mut want = got.clone();
                assert!(apply_mask_with(path, &mut got, key, offset));
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
                prop_assert!(apply_mask_with(path, &mut got[start..], key, offset));
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
