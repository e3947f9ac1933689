//! Time as the host sees it (the mock host's controllable clock under [`testing`](crate::testing)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sys;

/// Wall-clock time, milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    sys::now_ms()
}

/// Wall-clock time.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(now_ms())
}

/// Monotonic time, nanoseconds since the host started. Use it to measure intervals.
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

/// Monotonic time since the host started.
pub fn monotonic() -> Duration {
    Duration::from_nanos(monotonic_ns())
}
