//! The coarse clock, for what is counted in milliseconds or seconds on every request.
//!
//! `Instant::now()` reads the TSC through the vDSO: 47 ns a read on the benchmark machine (a
//! VM), seven reads a request were a tenth of the host's user time per request. The coarse
//! monotonic clock (`CLOCK_MONOTONIC_COARSE`) is the time of the kernel's last tick, a load
//! from the vDSO page (9 ns there), at most one tick (1 to 10 ms) behind the fine clock. It
//! serves ejections, the pick's clock, per-second request counts and idle connections; what is
//! measured in micro- or nanoseconds (latencies, durations) still reads `Instant`.

use std::time::Instant;

/// Milliseconds of the coarse monotonic clock, from an arbitrary start (the system's boot).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        // A kernel without it (before 2.6.32) fails every read the same way.
        return fine_ms();
    }
    (ts.tv_sec as u64) * 1_000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Elsewhere: the fine clock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn coarse_ms() -> u64 {
    fine_ms()
}

/// Milliseconds of the fine clock since its first read here.
fn fine_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Coarse milliseconds since `start`, an `Instant` taken earlier: the two clocks are lined up
/// once (`CoarseSince::new`), so that coarse times and `start.elapsed()` agree within a tick
/// either way.
#[derive(Debug, Clone, Copy)]
pub struct CoarseSince {
    origin_ms: u64,
}

impl CoarseSince {
    pub fn new(start: Instant) -> Self {
        Self {
            origin_ms: coarse_ms().saturating_sub(start.elapsed().as_millis() as u64),
        }
    }

    /// Milliseconds since `start`, by the coarse clock.
    pub fn now_ms(&self) -> u64 {
        coarse_ms().saturating_sub(self.origin_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_fine_one_within_a_tick() {
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let since = CoarseSince::new(start);
        for _ in 0..3 {
            let fine = start.elapsed().as_millis() as u64;
            let coarse = since.now_ms();
            // Either way by up to a tick (at most 10 ms, HZ=100: the lining up may have read
            // the coarse clock just before a tick), and a ms for the rounding of each read.
            assert!(
                coarse.abs_diff(fine) <= 12,
                "coarse {coarse} ms, fine {fine} ms"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    #[test]
    fn the_coarse_clock_never_goes_back() {
        let mut last = coarse_ms();
        for _ in 0..10_000 {
            let now = coarse_ms();
            assert!(now >= last);
            last = now;
        }
    }
}
