//! Spindle's retry filter: decides, after each upstream attempt, whether to try again.
//!
//! ```toml
//! [filter.retry]
//! config = { attempts = 3, retry_on = ["5xx", "connect-failure", "reset", "timeout", "retriable-status:429"], backoff_base_ms = 25, backoff_max_ms = 250, per_try_timeout_ms = 2000, budget_percent = 20, attempt_header = true }
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
//! | `budget_percent` | none (no budget) | retries may be at most this share of requests (0 to 100) |
//! | `budget_min_per_second` | 10 | retries always allowed per second of the window, whatever the share |
//! | `budget_window_ms` | 10000 | the sliding window of the budget (1000 to 60000) |
//! | `attempt_header` | false | send `x-spindle-attempt: N` upstream (1 on the first attempt) |
//!
//! `retry_on` conditions: `5xx` (any status from 500), `gateway-error` (502, 503, 504),
//! `connect-failure`, `reset`, `timeout` (the per-try timeout expired), and
//! `retriable-status:CODE` (that exact status, any code from 100 to 599, e.g. `retriable-status:429`;
//! list several entries for several codes). The default retries only what most likely never
//! reached the application, or what a gateway says failed; add `5xx` and `timeout` when the
//! upstream's handlers are safe to repeat.
//!
//! Only idempotent methods (`GET HEAD OPTIONS PUT DELETE TRACE`) are retried unless
//! `retry_non_idempotent = true`, and never a request whose body was too large to buffer.
//! Delays are exponential with full jitter: before retry `n` (1 for the first) the filter waits
//! a uniformly random time in `[0, min(backoff_max_ms, backoff_base_ms * 2^(n-1))]`.
//! Retries are counted in `spindle_filter_<name>_retries_total{cluster,reason}`.
//!
//! # Retry budget
//!
//! With `budget_percent`, retries to a cluster may not exceed `budget_percent`% of its requests
//! over the last `budget_window_ms`, plus `budget_min_per_second` per second of the window (so
//! a quiet cluster can still retry), as linkerd2-proxy's and Finagle's budgets. Requests are the
//! host's count ([`endpoints::cluster_requests`]: first attempts to the cluster, from every
//! listener, per second); retries are counted per cluster in one-second buckets of the host's
//! shared store (`spindle.retry.<cluster>.retries.<second>`), so every instance shares one
//! budget. A retry first takes its slot (an atomic add) and gives it back if the budget is
//! exceeded, so concurrent instances cannot overdraw it together. A retry refused for want of
//! budget is counted in `spindle_filter_<name>_budget_exhausted_total{cluster}` and the outcome
//! is kept.
//!
//! # Outcomes it sees
//!
//! With a `retry_on` that names only failures the host counts as such (no `retriable-status:`
//! below 500), the filter declares [`AttemptOutcomes::FailuresAndRecoveries`]: the host skips
//! its `on_attempt` for successes on healthy endpoints, which it would leave alone anyway (the
//! budget does not count requests itself).
//!
//! # Attempt header
//!
//! With `attempt_header = true`, every upstream attempt carries `x-spindle-attempt: N` (1 for the
//! first): `on_request` sets 1, and `on_attempt` sets the next number before asking for a retry
//! (the host rebuilds each attempt's request from the current request head).
//!
//! # Retry-After
//!
//! When a retried outcome has status 503 or 429 and its response carries `Retry-After`
//! (delta-seconds, or an HTTP-date the host converts to a delay from now), the filter honours
//! it as Envoy does: a `Retry-After` of at most `backoff_max_ms` replaces the jittered backoff
//! (the retry waits exactly that long); a longer one means no retry at all, and the 503 or 429
//! is kept for the client (without spending retry budget). An unparseable `Retry-After`, or one
//! on any other status, is ignored and the usual backoff applies.

use std::time::Duration;

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{
    Action, AttemptAction, AttemptError, AttemptOutcome, AttemptOutcomes, Filter, Hooks, InitError,
    Request, endpoints, random, store, time,
};

/// The request header carrying the attempt number, with `attempt_header = true`.
pub const ATTEMPT_HEADER: &str = "x-spindle-attempt";

/// An outcome that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RetryOn {
    /// Any status from 500.
    Status5xx,
    /// 502, 503 or 504.
    GatewayError,
    /// The connection could not be made.
    ConnectFailure,
    /// The connection was reset before a response head.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// This exact status (`retriable-status:CODE`).
    Status(u16),
}

/// The prefix of `retriable-status:CODE` entries.
const RETRIABLE_STATUS: &str = "retriable-status:";

impl TryFrom<String> for RetryOn {
    type Error = String;

    fn try_from(name: String) -> Result<RetryOn, String> {
        Ok(match name.as_str() {
            "5xx" => RetryOn::Status5xx,
            "gateway-error" => RetryOn::GatewayError,
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            other => match other.strip_prefix(RETRIABLE_STATUS) {
                Some(code) => match code.parse::<u16>() {
                    Ok(code @ 100..=599) => RetryOn::Status(code),
                    _ => {
                        return Err(format!(
                            "`{other}`: the status must be a number from 100 to 599"
                        ));
                    }
                },
                None => {
                    return Err(format!(
                        "unknown variant `{other}`, expected one of `5xx`, `gateway-error`, \
                         `connect-failure`, `reset`, `timeout`, `retriable-status:CODE`"
                    ));
                }
            },
        })
    }
}

impl RetryOn {
    /// The `reason` label of the retries metric.
    fn name(self) -> &'static str {
        match self {
            RetryOn::Status5xx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::Timeout => "timeout",
            RetryOn::Status(_) => "retriable-status",
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
fn default_budget_min_per_second() -> u32 {
    10
}
fn default_budget_window_ms() -> u32 {
    10_000
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
    /// Retries as a share of requests over the window (0 to 100); none: no budget.
    #[serde(default)]
    pub budget_percent: Option<f64>,
    /// Retries allowed per second of the window whatever the share.
    #[serde(default = "default_budget_min_per_second")]
    pub budget_min_per_second: u32,
    /// The budget's sliding window, in milliseconds.
    #[serde(default = "default_budget_window_ms")]
    pub budget_window_ms: u32,
    /// Send `x-spindle-attempt: N` upstream.
    #[serde(default)]
    pub attempt_header: bool,
}

/// A retry budget: the share of requests that may be retried, over a sliding window.
#[derive(Debug, Clone)]
struct Budget {
    /// Retries per request, 0.0 to 1.0.
    ratio: f64,
    /// Retries always allowed over the window.
    min_retries: f64,
    /// The window in one-second buckets.
    buckets: u64,
}

/// The TTL of a budget bucket: the window plus one bucket, so that a full window is readable.
fn bucket_ttl(budget: &Budget) -> Duration {
    Duration::from_secs(budget.buckets + 1)
}

fn bucket_key(cluster: &str, second: u64) -> String {
    format!("spindle.retry.{cluster}.retries.{second}")
}

impl Budget {
    fn second() -> u64 {
        time::monotonic_ns() / 1_000_000_000
    }

    /// Retries taken over the window.
    fn retries(&self, cluster: &str, now: u64) -> i64 {
        (0..self.buckets)
            .filter_map(|back| now.checked_sub(back))
            .map(|second| store::counter(&bucket_key(cluster, second)))
            .sum()
    }

    /// Takes one retry from the budget of `cluster`; false (and nothing taken) when it is spent.
    fn withdraw(&mut self, cluster: &str) -> bool {
        let now = Budget::second();
        let key = bucket_key(cluster, now);
        // Take the slot first, then check: two instances racing for the last slot cannot both win.
        store::add(&key, 1, bucket_ttl(self));
        let retries = self.retries(cluster, now) as f64;
        let window = Duration::from_secs(self.buckets);
        let requests = endpoints::cluster_requests(cluster, window) as f64;
        if retries <= self.min_retries + self.ratio * requests {
            return true;
        }
        store::add(&key, -1, bucket_ttl(self));
        false
    }
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
    budget: Option<Budget>,
    attempt_header: bool,
    retries: Option<Counter>,
    exhausted: Option<Counter>,
}

/// An outcome's `Retry-After`, judged against `backoff_max_ms`.
enum RetryAfter {
    /// None to honour: the jittered backoff applies.
    Absent,
    /// Retry after exactly this long.
    Wait(Duration),
    /// Longer than `backoff_max_ms`: do not retry.
    TooLong(Duration),
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
                (RetryOn::Status(code), None, Some(status)) => *code == status,
                _ => false,
            })
    }

    /// What the outcome's `Retry-After` says, honoured on 503 and 429 only.
    fn retry_after(&self, outcome: &AttemptOutcome) -> RetryAfter {
        match (outcome.status, outcome.retry_after) {
            (Some(503 | 429), Some(delay)) => {
                if delay <= Duration::from_millis(u64::from(self.backoff_max_ms)) {
                    RetryAfter::Wait(delay)
                } else {
                    RetryAfter::TooLong(delay)
                }
            }
            _ => RetryAfter::Absent,
        }
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
        if !(1_000..=60_000).contains(&config.budget_window_ms) {
            return Err(InitError::key(
                "budget_window_ms",
                format!("{} is not between 1000 and 60000", config.budget_window_ms),
            ));
        }
        let buckets = u64::from(config.budget_window_ms.div_ceil(1000));
        let budget = config.budget_percent.map(|percent| Budget {
            ratio: percent / 100.0,
            min_retries: f64::from(config.budget_min_per_second) * buckets as f64,
            buckets,
        });
        let counter = |name: &str, help: &str, labels: &[&str]| {
            Counter::new(name, help, labels)
                .map_err(|e| spindle_sdk::warn!("retry: no metric: {e}"))
                .ok()
        };
        let retries = counter(
            "retries_total",
            "Upstream attempts retried, by cluster and reason.",
            &["cluster", "reason"],
        );
        let exhausted = counter(
            "budget_exhausted_total",
            "Retries refused because the cluster's retry budget was spent, by cluster.",
            &["cluster"],
        );
        Ok(Retry {
            attempts: config.attempts,
            retry_on: config.retry_on,
            backoff_base_ms: config.backoff_base_ms,
            backoff_max_ms: config.backoff_max_ms,
            per_try_timeout: config
                .per_try_timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            retry_non_idempotent: config.retry_non_idempotent,
            budget,
            attempt_header: config.attempt_header,
            retries,
            exhausted,
        })
    }

    fn hooks(&self) -> Hooks {
        // `on_request` only sets the attempt header: skip it otherwise.
        if self.attempt_header {
            Hooks::REQUEST.union(Hooks::ATTEMPT)
        } else {
            Hooks::ATTEMPT
        }
    }

    /// The host applies it to every request without calling the filter.
    fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// A retry filter whose `retry_on` names only failures the host counts as such (errors,
    /// statuses from 500) has nothing to do with other outcomes (its budget reads the request
    /// count from the host): it asks the host for failures and recoveries only.
    fn attempt_outcomes(&self) -> AttemptOutcomes {
        let only_host_failures = self
            .retry_on
            .iter()
            .all(|on| !matches!(on, RetryOn::Status(code) if *code < 500));
        if only_host_failures {
            AttemptOutcomes::FailuresAndRecoveries
        } else {
            AttemptOutcomes::All
        }
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        if self.attempt_header {
            req.set_header(ATTEMPT_HEADER, "1");
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
        let mut req = outcome.request();
        if !self.retry_non_idempotent && !idempotent(&req.method()) {
            return AttemptAction::Done;
        }
        let delay = match self.retry_after(outcome) {
            RetryAfter::Absent => self.backoff(outcome.attempt),
            RetryAfter::Wait(delay) => delay,
            RetryAfter::TooLong(delay) => {
                spindle_sdk::debug!(
                    "retry-after of {} ms on attempt {} to `{}` exceeds backoff_max_ms: not retried",
                    delay.as_millis(),
                    outcome.attempt,
                    outcome.cluster
                );
                return AttemptAction::Done;
            }
        };
        if let Some(budget) = &mut self.budget
            && !budget.withdraw(&outcome.cluster)
        {
            if let Some(exhausted) = &self.exhausted {
                let _ = exhausted.inc(&[&outcome.cluster]);
            }
            spindle_sdk::debug!(
                "retry budget of `{}` spent: attempt {} not retried",
                outcome.cluster,
                outcome.attempt
            );
            return AttemptAction::Done;
        }
        if let Some(retries) = &self.retries {
            // A metric that cannot be recorded is no reason to fail the request.
            let _ = retries.inc(&[&outcome.cluster, reason.name()]);
        }
        if self.attempt_header {
            req.set_header(ATTEMPT_HEADER, &(outcome.attempt + 1).to_string());
        }
        // On the failed attempt's client span: why and when the next one goes.
        spindle_sdk::trace::add_event(
            "retry",
            &[
                ("reason", reason.name()),
                ("delay_ms", &delay.as_millis().to_string()),
            ],
        );
        AttemptAction::Retry(delay)
    }
}

#[cfg(test)]
mod tests;
