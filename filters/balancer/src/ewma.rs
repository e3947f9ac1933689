//! `ewma`: peak-EWMA latency estimates (linkerd2-proxy's and tower's policy), kept per endpoint.
//!
//! The host keeps a per-attempt EWMA of each endpoint's latency (`ewma_ns`, a fixed weight per
//! sample, no notion of time). This filter turns it into tower's peak EWMA:
//!
//! - a new host value (the endpoint's `total_requests` moved since this instance last looked)
//!   that is above the estimate replaces it at once (peak sensitivity: a slowdown is seen on the
//!   next pick);
//! - a new value below the estimate is blended in with weight `1 - exp(-elapsed / decay)`;
//! - without new values the estimate decays towards zero with the same weight, so an endpoint
//!   that was slow once and then left alone is tried again after a few `decay` periods, as tower
//!   does;
//! - an endpoint with no sample at all costs `default_rtt`.
//!
//! The estimates are a per-instance cache (each pooled instance keeps its own and refreshes it
//! from the host's values); the cost of an endpoint is `estimate * (in_flight + 1) / weight`.

use spindle_sdk::EndpointStats;

/// One endpoint's estimate in this instance.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Estimate {
    /// Nanoseconds; meaningful once `sampled`.
    rtt_ns: f64,
    /// Monotonic time of the last update.
    updated_ns: u64,
    /// The host's `total_requests` at the last update.
    seen_total: u64,
    /// Whether the host ever had a sample.
    sampled: bool,
}

/// The decay and default of the estimates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// The decay time constant, nanoseconds.
    pub(crate) decay_ns: f64,
    /// The estimate of an endpoint without samples, nanoseconds.
    pub(crate) default_rtt_ns: f64,
}

impl Estimate {
    /// Brings the estimate up to `now_ns` with the host's stats and returns it (nanoseconds).
    pub(crate) fn update(&mut self, stats: &EndpointStats, now_ns: u64, params: Params) -> f64 {
        let sample = stats.ewma.as_nanos() as f64;
        if stats.ewma.is_zero() {
            // No attempt has finished yet.
            return params.default_rtt_ns;
        }
        let elapsed = now_ns.saturating_sub(self.updated_ns) as f64;
        let decay = (-elapsed / params.decay_ns).exp();
        if !self.sampled {
            self.rtt_ns = sample;
            self.sampled = true;
        } else if stats.total_requests != self.seen_total {
            self.rtt_ns = if sample > self.rtt_ns {
                sample
            } else {
                self.rtt_ns * decay + sample * (1.0 - decay)
            };
        } else {
            self.rtt_ns *= decay;
        }
        self.seen_total = stats.total_requests;
        self.updated_ns = now_ns;
        self.rtt_ns
    }
}

/// The cost P2C compares: `rtt * (in_flight + 1) / weight`.
pub(crate) fn cost(rtt_ns: f64, in_flight: u32, weight: u32) -> f64 {
    rtt_ns * (f64::from(in_flight) + 1.0) / f64::from(weight.max(1))
}
