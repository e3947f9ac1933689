//! Spindle's circuit breaker: ejects failing endpoints and caps requests pending per cluster.
//!
//! ```toml
//! [filter.breaker]
//! config = { consecutive_failures = 5, base_ejection_ms = 30000, max_ejection_ms = 300000, max_ejection_percent = 50, max_pending = 1024 }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `consecutive_failures` | 5 | failures in a row that eject an endpoint |
//! | `base_ejection_ms` | 30000 | the first ejection's length |
//! | `max_ejection_ms` | 300000 | no ejection is longer |
//! | `max_ejection_percent` | 50 | at most this share of a cluster's endpoints is ejected at once |
//! | `max_pending` | 1024 | requests in flight to a cluster beyond which new ones get 503 (0: no cap) |
//!
//! A failure is an attempt that could not connect, was reset or timed out, or got a status from
//! 500 up; any other response is a success and resets the count. The counts live in the host's
//! shared store (`spindle.breaker.<endpoint id>.failures`), so every instance sees the same
//! ones. The `n`-th ejection of an endpoint lasts `min(base_ejection_ms * n, max_ejection_ms)`;
//! `n` is kept in the store too and forgotten once the endpoint has gone `max_ejection_ms`
//! without being ejected again.
//!
//! `max_ejection_percent` is applied to the endpoints the host knows in the cluster, rounding
//! down, but one ejection is always allowed when the cluster has two endpoints or more (so that
//! 50% of a two-endpoint cluster, or 10% of a five-endpoint one, can still cut off a bad
//! endpoint). The last endpoint of a cluster is never ejected: it would turn a flaky upstream
//! into certain 503s.
//!
//! In `on_request`, when the cluster chosen so far (put the breaker after the router) has
//! `max_pending` requests in flight or more, the request is answered `503` with the header
//! `x-spindle-breaker: open`. Metrics: `ejections_total{cluster}`, `rejected_total{cluster}`.

use std::time::Duration;

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{
    Action, AttemptAction, AttemptError, AttemptOutcome, Filter, Hooks, InitError, LocalReply,
    Request, endpoints, store,
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
}

/// The breaker filter.
#[derive(Debug)]
pub struct Breaker {
    config: Config,
    ejections: Option<Counter>,
    rejected: Option<Counter>,
}

fn failures_key(endpoint: u32) -> String {
    format!("spindle.breaker.{endpoint}.failures")
}

fn ejections_key(endpoint: u32) -> String {
    format!("spindle.breaker.{endpoint}.ejections")
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
        let times_key = ejections_key(outcome.endpoint);
        let times = store::counter(&times_key).max(0) + 1;
        let base = u64::from(self.config.base_ejection_ms);
        let max = u64::from(self.config.max_ejection_ms);
        let ms = base
            .saturating_mul(u64::try_from(times).unwrap_or(u64::MAX))
            .min(max);
        let duration = Duration::from_millis(ms);
        // Forget the count once the endpoint stays in for `max_ejection_ms` after this one.
        store::set(
            &times_key,
            times.to_string().as_bytes(),
            duration + Duration::from_millis(max),
        );
        if endpoints::eject_endpoint(outcome.endpoint, duration) {
            spindle_sdk::info!(
                "ejected endpoint {} of `{}` for {ms} ms after {failures} failures in a row \
                 (ejection {times})",
                outcome.endpoint,
                outcome.cluster
            );
            if let Some(counter) = &self.ejections {
                let _ = counter.inc(&[&outcome.cluster]);
            }
        }
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
        Ok(Breaker {
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
        if is_failure(outcome) {
            self.record_failure(outcome);
        } else if outcome.status.is_some() {
            store::delete(&failures_key(outcome.endpoint));
        }
        // The breaker never asks for a retry; it only watches.
        AttemptAction::Done
    }
}

#[cfg(test)]
mod tests;
