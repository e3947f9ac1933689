//! The shared store: one per host, shared by every instance of every filter.
//!
//! State that must be right across instances (breaker counters, rate-limit buckets) lives here.
//! Keys are global to the host: prefix them with your filter's name. A TTL of
//! [`FOREVER`] means no expiry; any other TTL is rounded up to whole milliseconds.
//!
//! ```
//! use std::time::Duration;
//! use spindle_sdk::store;
//! let failures = store::add("breaker:7:failures", 1, Duration::from_secs(60));
//! assert_eq!(failures, 1);
//! store::set("greeting", b"hi", store::FOREVER);
//! assert!(store::cas("greeting", Some(b"hi"), b"hello", store::FOREVER));
//! assert_eq!(store::get("greeting").as_deref(), Some(&b"hello"[..]));
//! ```

use std::time::Duration;

use crate::sys;

/// The TTL that means "never expires".
pub const FOREVER: Duration = Duration::ZERO;

fn ttl_ms(ttl: Duration) -> u64 {
    if ttl.is_zero() {
        return 0;
    }
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The value of `key`; `None` when absent or expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    sys::store_get(key)
}

/// Sets `key` to `value`, expiring after `ttl`.
pub fn set(key: &str, value: &[u8], ttl: Duration) {
    sys::store_set(key, value, ttl_ms(ttl));
}

/// Sets `key` to `new` only if its value is `expected` (`None`: absent). Returns whether it did.
pub fn cas(key: &str, expected: Option<&[u8]>, new: &[u8], ttl: Duration) -> bool {
    sys::store_cas(key, expected, new, ttl_ms(ttl))
}

/// Atomically adds `delta` to the signed 64-bit counter at `key` (absent counts as 0) and
/// returns the new value. The TTL applies when the key is created.
///
/// Counters are stored as decimal ASCII text: [`get`] of a counter returns e.g. `b"42"`, and a
/// value that is not a decimal number counts as 0. Read one back with [`counter`].
pub fn add(key: &str, delta: i64, ttl: Duration) -> i64 {
    sys::store_add(key, delta, ttl_ms(ttl))
}

/// The counter at `key` (see [`add`]); 0 when absent, expired or not a number.
///
/// ```
/// use spindle_sdk::store;
/// store::add("hits", 41, store::FOREVER);
/// store::add("hits", 1, store::FOREVER);
/// assert_eq!(store::get("hits").as_deref(), Some(&b"42"[..]));
/// assert_eq!(store::counter("hits"), 42);
/// ```
pub fn counter(key: &str) -> i64 {
    get(key)
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Removes `key`.
pub fn delete(key: &str) {
    sys::store_delete(key);
}
