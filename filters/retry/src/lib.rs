//! Spindle's retry filter: decides, after each upstream attempt, whether to try again.
//!
//! ```toml
//! [filter.retry]
//! config = { attempts = 3, retry_on = ["5xx", "connect-failure", "reset", "timeout"], backoff_base_ms = 25, backoff_max_ms = 250, per_try_timeout_ms = 2000 }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `attempts` | 3 | attempts in all, the first included (1: never retry) |
//! | `retry_on` | `["connect-failure", "reset", "gateway-error"]` | which outcomes are retried |
//! | `backoff_base_ms` | 25 | the first retry waits up to this long |
//! | `backoff_max_ms` | 250 | no retry waits longer |
//! | `per_try_timeout_ms` | none | the per-try timeout set on every request |
//! | `retry_non_idempotent` | false | also retry POST, PATCH, CONNECT, ... |
//! | `budget_percent` | none | accepted and checked (0 to 100), not enforced yet |
//!
//! `retry_on` conditions: `5xx` (any status from 500), `gateway-error` (502, 503, 504),
//! `connect-failure`, `reset` and `timeout` (the per-try timeout expired). The default retries
//! only what most likely never reached the application, or what a gateway says failed; add
//! `5xx` and `timeout` when the upstream's handlers are safe to repeat.
//!
//! Only idempotent methods (`GET HEAD OPTIONS PUT DELETE TRACE`) are retried unless
//! `retry_non_idempotent = true`, and never a request whose body was too large to buffer.
//! Delays are exponential with full jitter: before retry `n` (1 for the first) the filter waits
//! a uniformly random time in `[0, min(backoff_max_ms, backoff_base_ms * 2^(n-1))]`.
//! Retries are counted in `spindle_filter_<name>_retries_total{cluster,reason}`.
//!
//! `budget_percent` (retries as a share of requests, as Envoy's and Linkerd's retry budgets) is
//! accepted so that configs can carry it, but is not enforced yet.

use std::time::Duration;

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{
    Action, AttemptAction, AttemptError, AttemptOutcome, Filter, Hooks, InitError, Request, random,
};

/// An outcome that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RetryOn {
    /// Any status from 500.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The connection could not be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection was reset before a response head.
    #[serde(rename = "reset")]
    Reset,
    /// The per-try timeout expired.
    #[serde(rename = "timeout")]
    Timeout,
}

impl RetryOn {
    fn name(self) -> &'static str {
        match self {
            RetryOn::Status5xx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::Timeout => "timeout",
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]
}
fn default_backoff_base_ms() -> u32 {
    25
}
fn default_backoff_max_ms() -> u32 {
    250
}

/// The retry filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Which outcomes are retried.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// The cap of the first retry's delay, in milliseconds.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u32,
    /// The cap of every delay, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u32,
    /// The per-try timeout to set on every request, in milliseconds.
    #[serde(default)]
    pub per_try_timeout_ms: Option<u32>,
    /// Retry methods that are not idempotent too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Retries as a share of requests (0 to 100). Accepted, not enforced yet.
    #[serde(default)]
    pub budget_percent: Option<f64>,
}

/// The retry filter.
#[derive(Debug)]
pub struct Retry {
    attempts: u32,
    retry_on: Vec<RetryOn>,
    backoff_base_ms: u32,
    backoff_max_ms: u32,
    per_try_timeout: Option<Duration>,
    retry_non_idempotent: bool,
    retries: Option<Counter>,
}

/// Whether a request with this method may be sent twice.
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

impl Retry {
    /// The first condition of `retry_on` that this outcome meets.
    fn reason(&self, outcome: &AttemptOutcome) -> Option<RetryOn> {
        self.retry_on
            .iter()
            .copied()
            .find(|on| match (on, outcome.error, outcome.status) {
                (RetryOn::ConnectFailure, Some(AttemptError::ConnectFailure), _) => true,
                (RetryOn::Reset, Some(AttemptError::Reset), _) => true,
                (RetryOn::Timeout, Some(AttemptError::Timeout), _) => true,
                (RetryOn::Status5xx, None, Some(status)) => status >= 500,
                (RetryOn::GatewayError, None, Some(status)) => matches!(status, 502..=504),
                _ => false,
            })
    }

    /// Full jitter: uniform in `[0, min(max, base * 2^(retry-1))]` milliseconds.
    fn backoff(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(32);
        let cap = (u64::from(self.backoff_base_ms) << shift).min(u64::from(self.backoff_max_ms));
        Duration::from_millis(random::below(cap + 1))
    }
}

#[spindle_sdk::filter]
impl Filter for Retry {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        if config.attempts == 0 {
            return Err(InitError::key(
                "attempts",
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if config.backoff_max_ms < config.backoff_base_ms {
            return Err(InitError::key(
                "backoff_max_ms",
                format!(
                    "{} is less than backoff_base_ms ({})",
                    config.backoff_max_ms, config.backoff_base_ms
                ),
            ));
        }
        if config.per_try_timeout_ms == Some(0) {
            return Err(InitError::key("per_try_timeout_ms", "must be at least 1"));
        }
        if let Some(budget) = config.budget_percent
            && !(0.0..=100.0).contains(&budget)
        {
            return Err(InitError::key(
                "budget_percent",
                format!("{budget} is not between 0 and 100"),
            ));
        }
        let retries = Counter::new(
            "retries_total",
            "Upstream attempts retried, by cluster and reason.",
            &["cluster", "reason"],
        )
        .map_err(|e| spindle_sdk::warn!("retry: no metrics: {e}"))
        .ok();
        Ok(Retry {
            attempts: config.attempts,
            retry_on: config.retry_on,
            backoff_base_ms: config.backoff_base_ms,
            backoff_max_ms: config.backoff_max_ms,
            per_try_timeout: config
                .per_try_timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            retry_non_idempotent: config.retry_non_idempotent,
            retries,
        })
    }

    fn hooks(&self) -> Hooks {
        // `on_request` only sets the per-try timeout: skip it when there is none.
        if self.per_try_timeout.is_some() {
            Hooks::REQUEST.union(Hooks::ATTEMPT)
        } else {
            Hooks::ATTEMPT
        }
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        if let Some(timeout) = self.per_try_timeout {
            req.set_per_try_timeout(timeout);
        }
        Action::Continue
    }

    fn on_attempt(&mut self, outcome: &AttemptOutcome) -> AttemptAction {
        if !outcome.retryable_body || outcome.attempt >= self.attempts {
            return AttemptAction::Done;
        }
        let Some(reason) = self.reason(outcome) else {
            return AttemptAction::Done;
        };
        // Asked last: one host call, only for outcomes worth retrying.
        if !self.retry_non_idempotent && !idempotent(&outcome.request().method()) {
            return AttemptAction::Done;
        }
        if let Some(retries) = &self.retries {
            // A metric that cannot be recorded is no reason to fail the request.
            let _ = retries.inc(&[&outcome.cluster, reason.name()]);
        }
        AttemptAction::Retry(self.backoff(outcome.attempt))
    }
}

#[cfg(test)]
mod tests;
