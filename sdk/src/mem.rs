//! `memcmp` and `bcmp` for `wasm32`, eight bytes at a time.
//!
//! Every string or byte-slice comparison a filter makes ends in one of these (a route's prefix,
//! a header value, a map key). The `wasm32` runtime's own versions compare one byte per loop
//! turn, and a compiled Wasm loop turn costs more than a native one (each checks the epoch
//! deadline): measured in the balancer's pick, 215 instructions to compare an 8-byte cluster
//! name. These compare eight bytes per turn with unaligned 64-bit loads, the rest one by one.
//!
//! On by default (the `mem` feature, exported on `wasm32` only); the functions are plain code,
//! tested natively.

/// The first 8-byte word of `a` and `b` from `offset`, as little-endian integers.
///
/// # Safety
/// `a` and `b` must be readable for `offset + 8` bytes.
#[inline(always)]
unsafe fn words(a: *const u8, b: *const u8, offset: usize) -> (u64, u64) {
    // SAFETY: the caller's bounds; unaligned reads need no alignment.
    unsafe {
        (
            u64::from_le(a.add(offset).cast::<u64>().read_unaligned()),
            u64::from_le(b.add(offset).cast::<u64>().read_unaligned()),
        )
    }
}

/// The first differing bytes of `a` and `b` within `n` bytes, if any.
///
/// # Safety
/// `a` and `b` must be readable for `n` bytes.
#[inline(always)]
unsafe fn first_difference(a: *const u8, b: *const u8, n: usize) -> Option<(u8, u8)> {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`.
        let (x, y) = unsafe { words(a, b, i) };
        if x != y {
            // Little-endian: the lowest differing byte is the first in memory.
            let shift = (x ^ y).trailing_zeros() & !7;
            return Some(((x >> shift) as u8, (y >> shift) as u8));
        }
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return Some((x, y));
        }
        i += 1;
    }
    None
}

/// Compares `n` bytes: negative, zero or positive as the first differing byte of `a` is below,
/// equal to or above that of `b` (as unsigned bytes).
///
/// # Safety
/// `a` and `b` must be readable for `n` bytes.
#[cfg_attr(all(target_arch = "wasm32", feature = "mem"), unsafe(no_mangle))]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's bounds.
    match unsafe { first_difference(a, b, n) } {
        Some((x, y)) => i32::from(x) - i32::from(y),
        None => 0,
    }
}

/// Whether `n` bytes differ: zero when equal, non-zero otherwise.
///
/// # Safety
/// `a` and `b` must be readable for `n` bytes.
#[cfg_attr(all(target_arch = "wasm32", feature = "mem"), unsafe(no_mangle))]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's bounds.
    i32::from(unsafe { first_difference(a, b, n) }.is_some())
}

#[cfg(test)]
mod tests {
    use super::{bcmp, memcmp};

    fn sign(x: i32) -> i32 {
        x.signum()
    }

    #[test]
    fn agree_with_slice_comparison_at_every_length_and_difference() {
        let base: Vec<u8> = (0..40u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(200))
            .collect();
        for n in 0..=base.len() {
            let a = &base[..n];
            // Equal, then each byte changed up and down in turn.
            assert_eq!(unsafe { memcmp(a.as_ptr(), a.to_vec().as_ptr(), n) }, 0);
            assert_eq!(unsafe { bcmp(a.as_ptr(), a.to_vec().as_ptr(), n) }, 0);
            for at in 0..n {
                for delta in [1u8, 128, 255] {
                    let mut b = a.to_vec();
                    b[at] = b[at].wrapping_add(delta);
                    let want = a.cmp(&b[..]) as i32;
                    let got = unsafe { memcmp(a.as_ptr(), b.as_ptr(), n) };
                    assert_eq!(sign(got), want, "n {n}, byte {at} + {delta}");
                    assert_ne!(unsafe { bcmp(a.as_ptr(), b.as_ptr(), n) }, 0);
                }
            }
        }
    }

    #[test]
    fn the_first_difference_decides_not_the_largest() {
        let a = [1u8, 0, 0, 0, 0, 0, 0, 0xff, 9];
        let b = [2u8, 0, 0, 0, 0, 0, 0, 0x00, 9];
        assert!(unsafe { memcmp(a.as_ptr(), b.as_ptr(), a.len()) } < 0);
        assert!(unsafe { memcmp(b.as_ptr(), a.as_ptr(), a.len()) } > 0);
        // Unaligned starts.
        let x = [0u8, 5, 6, 7, 8, 9, 10, 11, 12, 13];
        let y = [9u8, 5, 6, 7, 8, 9, 10, 11, 12, 14];
        assert!(unsafe { memcmp(x[1..].as_ptr(), y[1..].as_ptr(), 9) } < 0);
        assert_eq!(unsafe { memcmp(x[1..].as_ptr(), y[1..].as_ptr(), 8) }, 0);
    }
}
