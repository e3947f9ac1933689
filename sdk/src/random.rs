//! Randomness from the host (seeded and controllable under [`testing`](crate::testing)).
//!
//! ```
//! let roll = spindle_sdk::random::below(100);
//! assert!(roll < 100);
//! ```

use crate::sys;

/// A uniformly random `u64`.
pub fn next_u64() -> u64 {
    sys::random_u64()
}

/// A uniformly random number in `0..n`; 0 when `n` is 0.
///
/// Uses Lemire's multiply-shift; the bias is below 2^-32 for any `n` below 2^32.
pub fn below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// A uniformly random `f64` in `[0, 1)`.
pub fn unit_f64() -> f64 {
    (next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
