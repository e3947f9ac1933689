//! Spindle's circuit breaker: ejects failing endpoints and caps requests pending per cluster.
//!
//! ```toml
//! [filter.breaker]
//! config = { consecutive_failures = 5, base_ejection_ms = 30000, max_ejection_ms = 300000, max_ejection_percent = 50, max_pending = 1024 }
//! # optional, Envoy's success-rate outlier detection beside the consecutive failures:
//! # success_rate = { interval_ms = 10000, minimum_hosts = 5, request_volume = 100, stdev_factor = 1.9 }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `consecutive_failures` | 5 | failures in a row that eject an endpoint |
//! | `base_ejection_ms` | 30000 | the first ejection's length |
//! | `max_ejection_ms` | 300000 | no ejection is longer |
//! | `max_ejection_percent` | 50 | at most this share of a cluster's endpoints is ejected at once |
//! | `max_pending` | 1024 | requests in flight to a cluster beyond which new ones get 503 (0: no cap) |
//! | `success_rate` | none | turns on success-rate outlier detection (a table, below) |
//! | `success_rate.interval_ms` | 10000 | the evaluation interval (at least 100) |
//! | `success_rate.minimum_hosts` | 5 | endpoints with enough volume needed to evaluate an interval |
//! | `success_rate.request_volume` | 100 | attempts an endpoint needs in an interval to be counted |
//! | `success_rate.stdev_factor` | 1.9 | eject below `mean - stdev_factor * stdev` (Envoy's 1900 / 1000) |
//!
//! A failure is an attempt that could not connect, was reset or timed out, or got a status from
//! 500 up; any other response is a success and resets the count. The counts live in the host's
//! shared store (`spindle.breaker.<endpoint id>.failures`), so every instance sees the same
//! ones. The `n`-th ejection of an endpoint lasts `min(base_ejection_ms * n, max_ejection_ms)`;
//! `n` is kept in the store too and forgotten once the endpoint has gone `max_ejection_ms`
//! without being ejected again.
//!
//! # Success rate
//!
//! With `success_rate`, every attempt is also counted per endpoint and interval in the shared
//! store (`spindle.breaker.sr.<endpoint>.<interval>.{total,ok}`; the cluster's members in
//! `spindle.breaker.sr.<cluster>.members`). The first attempt of a cluster seen in a new
//! interval makes its instance evaluate the interval that just ended (a compare-and-swap on
//! `spindle.breaker.sr.<cluster>.evaluated` elects exactly one): among the endpoints with at
//! least `request_volume` attempts, if there are at least `minimum_hosts`, those whose success
//! rate is below `mean - stdev_factor * stdev` are ejected, as by consecutive failures (same
//! lengths, `max_ejection_percent`, half-open probe). Intervals are aligned on the host's
//! monotonic clock; an interval with no attempt at its end is evaluated late, on the next one.
//!
//! # Half-open
//!
//! When an ejection expires the endpoint is half-open: its next outcome is a probe (the balancer
//! sends it traffic again; the first attempt that finishes decides, whichever instance sees it).
//! A failed probe ejects it again at once, without waiting for `consecutive_failures`, for twice
//! the last ejection, up to `max_ejection_ms`; a successful probe closes the circuit (the failure
//! count starts from zero). The probe state is the key `spindle.breaker.<endpoint id>.probe` of
//! the shared store (the last ejection's length in ms), set at each ejection and forgotten
//! `max_ejection_ms` after the ejection ends if no outcome came. Outcomes of attempts that were
//! in flight while the endpoint was ejected are not probes. Re-ejections obey
//! `max_ejection_percent` like the others and are counted in `ejections_total` too.
//!
//! `max_ejection_percent` is applied to the endpoints the host knows in the cluster, rounding
//! down, but one ejection is always allowed when the cluster has two endpoints or more (so that
//! 50% of a two-endpoint cluster, or 10% of a five-endpoint one, can still cut off a bad
//! endpoint). The last endpoint of a cluster is never ejected: it would turn a flaky upstream
//! into certain 503s.
//!
//! Without `success_rate`, the breaker declares
//! [`AttemptOutcomes::FailuresAndRecoveries`]: the host shows it failures, the first outcome
//! after an endpoint's failures (which clears the count) and the first outcome that is no failure
//! once an ejection is over (the probe), and skips the hook for every other success, which would
//! change nothing here. Under concurrency "in a row" is approximate: a success and a failure
//! finishing together may leave one failure counted that a later success would have cleared.
//!
//! In `on_request`, when the cluster chosen so far (put the breaker after the router) has
//! `max_pending` requests in flight or more, the request is answered `503` with the header
//! `x-spindle-breaker: open`. Metrics: `ejections_total{cluster}`, `rejected_total{cluster}`.

mod success_rate;

use std::time::Duration;

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{
    Action, AttemptAction, AttemptError, AttemptOutcome, AttemptOutcomes, Filter, Hooks, InitError,
    LocalReply, Request, endpoints, store,
};

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection_ms() -> u32 {
    30_000
}
fn default_max_ejection_ms() -> u32 {
    300_000
}
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_max_pending() -> u32 {
    1024
}

/// The breaker's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Failures in a row that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length, in milliseconds.
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u32,
    /// The longest ejection, in milliseconds.
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u32,
    /// The largest share of a cluster ejected at once, in percent.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Requests in flight to a cluster beyond which new ones are refused (0: no cap).
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    /// Success-rate outlier detection, off when absent.
    #[serde(default)]
    pub success_rate: Option<SuccessRate>,
}

pub use crate::success_rate::{SuccessRate, Volume, outliers};

/// The breaker filter.
#[derive(Debug)]
pub struct Breaker {
    config: Config,
    success_rate: Option<success_rate::Tracker>,
    ejections: Option<Counter>,
    rejected: Option<Counter>,
}

fn failures_key(endpoint: u32) -> String {
    format!("spindle.breaker.{endpoint}.failures")
}

fn ejections_key(endpoint: u32) -> String {
    format!("spindle.breaker.{endpoint}.ejections")
}

/// The probe key's value while one instance settles a probe.
const SETTLING: &[u8] = b"settling";

fn probe_key(endpoint: u32) -> String {
    format!("spindle.breaker.{endpoint}.probe")
}

/// Whether an attempt counts as a failure of its endpoint.
pub fn is_failure(outcome: &AttemptOutcome) -> bool {
    match outcome.error {
        Some(AttemptError::ConnectFailure | AttemptError::Reset | AttemptError::Timeout) => true,
        Some(AttemptError::Other) => false,
        None => outcome.status.is_some_and(|s| s >= 500),
    }
}

/// Whether one more endpoint of a cluster of `endpoints`, `ejected` of which are out, may be
/// ejected under `max_percent`.
pub fn may_eject(endpoints: u32, ejected: u32, max_percent: u32) -> bool {
    if endpoints < 2 || ejected + 1 >= endpoints {
        return false;
    }
    let allowed = (u64::from(endpoints) * u64::from(max_percent) / 100).max(1);
    u64::from(ejected) < allowed
}

impl Breaker {
    fn record_failure(&self, outcome: &AttemptOutcome) {
        let key = failures_key(outcome.endpoint);
        let failures = store::add(&key, 1, store::FOREVER);
        if failures < i64::from(self.config.consecutive_failures) {
            return;
        }
        let Some(stats) = endpoints::cluster_stats(&outcome.cluster) else {
            return;
        };
        if !may_eject(
            stats.endpoints,
            stats.ejected,
            self.config.max_ejection_percent,
        ) {
            spindle_sdk::debug!(
                "endpoint {} of `{}` failed {failures} times in a row; not ejected: {} of {} \
                 endpoints are out already",
                outcome.endpoint,
                outcome.cluster,
                stats.ejected,
                stats.endpoints
            );
            return;
        }
        // Claim this ejection: of several instances that see the threshold, one wins.
        if !store::cas(
            &key,
            Some(failures.to_string().as_bytes()),
            b"0",
            store::FOREVER,
        ) {
            return;
        }
        let (ms, times) = self.next_ejection(outcome.endpoint);
        self.eject(
            &outcome.cluster,
            outcome.endpoint,
            ms,
            &format!("after {failures} failures in a row (ejection {times})"),
        );
    }

    /// The length of the next ejection of `endpoint` (`min(base * n, max)` for its `n`-th) and
    /// `n`, counted in the store and forgotten once it stays in for `max_ejection_ms` after it.
    fn next_ejection(&self, endpoint: u32) -> (u64, i64) {
        let times_key = ejections_key(endpoint);
        let times = store::counter(&times_key).max(0) + 1;
        let base = u64::from(self.config.base_ejection_ms);
        let max = u64::from(self.config.max_ejection_ms);
        let ms = base
            .saturating_mul(u64::try_from(times).unwrap_or(u64::MAX))
            .min(max);
        store::set(
            &times_key,
            times.to_string().as_bytes(),
            Duration::from_millis(ms + max),
        );
        (ms, times)
    }

    /// Ejects `endpoint` of `cluster` for `ms` and arms its half-open probe.
    fn eject(&self, cluster: &str, endpoint: u32, ms: u64, why: &str) {
        let max = u64::from(self.config.max_ejection_ms);
        store::set(
            &probe_key(endpoint),
            ms.to_string().as_bytes(),
            Duration::from_millis(ms + max),
        );
        if endpoints::eject_endpoint(endpoint, Duration::from_millis(ms)) {
            spindle_sdk::info!("ejected endpoint {endpoint} of `{cluster}` for {ms} ms {why}");
            spindle_sdk::trace::add_event(
                "endpoint_ejected",
                &[
                    ("spindle.endpoint_id", &endpoint.to_string()),
                    ("duration_ms", &ms.to_string()),
                    ("reason", why),
                ],
            );
            if let Some(counter) = &self.ejections {
                let _ = counter.inc(&[cluster]);
            }
        }
    }

    /// Ejects an endpoint whose success rate is an outlier, if the cluster allows it.
    fn eject_outlier(&self, cluster: &str, endpoint: u32) {
        let Some(stats) = endpoints::cluster_stats(cluster) else {
            return;
        };
        if endpoints::endpoint_stats(endpoint).is_none_or(|s| s.ejected) {
            return;
        }
        if !may_eject(
            stats.endpoints,
            stats.ejected,
            self.config.max_ejection_percent,
        ) {
            spindle_sdk::debug!(
                "endpoint {endpoint} of `{cluster}` is a success-rate outlier; not ejected: {} \
                 of {} endpoints are out already",
                stats.ejected,
                stats.endpoints
            );
            return;
        }
        let (ms, times) = self.next_ejection(endpoint);
        self.eject(
            cluster,
            endpoint,
            ms,
            &format!("as a success-rate outlier (ejection {times})"),
        );
    }

    /// Settles a half-open endpoint with this outcome, if it is one. Returns whether the outcome
    /// was its probe.
    fn probe(&self, outcome: &AttemptOutcome, failed: bool) -> bool {
        let key = probe_key(outcome.endpoint);
        let Some(last) = store::get(&key) else {
            return false;
        };
        // Still ejected: an attempt that was in flight when it was cut off, not a probe.
        if endpoints::endpoint_stats(outcome.endpoint).is_none_or(|s| s.ejected) {
            return false;
        }
        // Of several instances that see a probe's outcome, one settles it; the others ignore
        // their outcomes meanwhile.
        let settle_ttl = Duration::from_millis(u64::from(self.config.max_ejection_ms));
        if last == SETTLING || !store::cas(&key, Some(&last), SETTLING, settle_ttl) {
            return true;
        }
        let last_ms = std::str::from_utf8(&last)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::from(self.config.base_ejection_ms));
        if !failed {
            store::delete(&key);
            store::delete(&failures_key(outcome.endpoint));
            spindle_sdk::info!(
                "endpoint {} of `{}` passed its probe: back in",
                outcome.endpoint,
                outcome.cluster
            );
            return true;
        }
        let allowed = endpoints::cluster_stats(&outcome.cluster).is_some_and(|stats| {
            may_eject(
                stats.endpoints,
                stats.ejected,
                self.config.max_ejection_percent,
            )
        });
        if !allowed {
            // Stays half-open: the next outcome is a probe again.
            store::set(
                &key,
                last.as_slice(),
                Duration::from_millis(last_ms + u64::from(self.config.max_ejection_ms)),
            );
            return true;
        }
        let ms = last_ms
            .saturating_mul(2)
            .min(u64::from(self.config.max_ejection_ms));
        let times_key = ejections_key(outcome.endpoint);
        let times = store::counter(&times_key).max(0) + 1;
        store::set(
            &times_key,
            times.to_string().as_bytes(),
            Duration::from_millis(ms + u64::from(self.config.max_ejection_ms)),
        );
        self.eject(
            &outcome.cluster,
            outcome.endpoint,
            ms,
            "after its probe failed",
        );
        true
    }
}

#[spindle_sdk::filter]
impl Filter for Breaker {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        if config.consecutive_failures == 0 {
            return Err(InitError::key("consecutive_failures", "must be at least 1"));
        }
        if config.base_ejection_ms == 0 {
            return Err(InitError::key("base_ejection_ms", "must be at least 1"));
        }
        if config.max_ejection_ms < config.base_ejection_ms {
            return Err(InitError::key(
                "max_ejection_ms",
                format!(
                    "{} is less than base_ejection_ms ({})",
                    config.max_ejection_ms, config.base_ejection_ms
                ),
            ));
        }
        if config.max_ejection_percent > 100 {
            return Err(InitError::key(
                "max_ejection_percent",
                format!("{} is more than 100", config.max_ejection_percent),
            ));
        }
        let counter = |name: &str, help: &str| {
            Counter::new(name, help, &["cluster"])
                .map_err(|e| spindle_sdk::warn!("breaker: no metric: {e}"))
                .ok()
        };
        if let Some(sr) = &config.success_rate {
            sr.validate()
                .map_err(|(key, msg)| InitError::key(&key, msg))?;
        }
        Ok(Breaker {
            success_rate: config.success_rate.clone().map(success_rate::Tracker::new),
            ejections: counter("ejections_total", "Endpoints ejected, by cluster."),
            rejected: counter(
                "rejected_total",
                "Requests refused because too many were pending, by cluster.",
            ),
            config,
        })
    }

    fn hooks(&self) -> Hooks {
        if self.config.max_pending == 0 {
            Hooks::ATTEMPT
        } else {
            Hooks::REQUEST.union(Hooks::ATTEMPT)
        }
    }

    /// Successes on endpoints that have not failed say nothing new to the breaker: without
    /// success-rate detection (which counts every outcome) it asks only for failures and
    /// recoveries.
    fn attempt_outcomes(&self) -> AttemptOutcomes {
        if self.success_rate.is_some() {
            AttemptOutcomes::All
        } else {
            AttemptOutcomes::FailuresAndRecoveries
        }
    }

    /// The host calls `on_request` only once the cluster has `max_pending` in flight.
    fn request_min_in_flight(&self) -> Option<u32> {
        (self.config.max_pending > 0).then_some(self.config.max_pending)
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        if self.config.max_pending == 0 {
            return Action::Continue;
        }
        let Some(cluster) = req.cluster() else {
            return Action::Continue;
        };
        let Some(stats) = endpoints::cluster_stats(&cluster) else {
            return Action::Continue;
        };
        if stats.in_flight < self.config.max_pending {
            return Action::Continue;
        }
        if let Some(counter) = &self.rejected {
            let _ = counter.inc(&[&cluster]);
        }
        Action::Respond(
            LocalReply::text(
                503,
                format!(
                    "breaker open: cluster {cluster} has {} requests pending (max_pending {})\n",
                    stats.in_flight, self.config.max_pending
                ),
            )
            .header("x-spindle-breaker", "open"),
        )
    }

    fn on_attempt(&mut self, outcome: &AttemptOutcome) -> AttemptAction {
        let failed = is_failure(outcome);
        let success = !failed && outcome.status.is_some();
        if (failed || success) && self.probe(outcome, failed) {
            return AttemptAction::Done;
        }
        if failed {
            self.record_failure(outcome);
        } else if success {
            store::delete(&failures_key(outcome.endpoint));
        }
        if (failed || success)
            && let Some(tracker) = &mut self.success_rate
        {
            let outliers = tracker.record(&outcome.cluster, outcome.endpoint, success);
            for endpoint in outliers {
                self.eject_outlier(&outcome.cluster, endpoint);
            }
        }
        // The breaker never asks for a retry; it only watches.
        AttemptAction::Done
    }
}

#[cfg(test)]
mod tests;
