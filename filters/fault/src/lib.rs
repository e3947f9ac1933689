//! Spindle's fault-injection filter: delays and aborts a share of requests, Istio-style.
//!
//! ```toml
//! [filter.fault]
//! config = { delay_ms = 200, delay_percent = 5, abort_status = 503, abort_percent = 10, only_with_header = "x-chaos" }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `delay_ms` | none | delay this long before the rest of the chain (1 to 3600000) |
//! | `delay_percent` | 100 | the share of requests delayed, 0 to 100 (fractions allowed: `0.5`) |
//! | `abort_status` | none | the status answered instead of the upstream's (200 to 599) |
//! | `abort_percent` | 100 | the share of requests aborted, 0 to 100 (fractions allowed: `0.5`) |
//! | `only_with_header` | none | only requests carrying this header may be delayed or aborted |
//!
//! At least one of `delay_ms` and `abort_status` is required; `delay_percent` without `delay_ms`
//! (or `abort_percent` without `abort_status`) is refused, as it would do nothing.
//!
//! Each eligible request is delayed with probability `delay_percent / 100`, then aborted with
//! probability `abort_percent / 100`: two independent draws from the host's randomness, the
//! delay's first. A delayed request waits `delay_ms` (the host sleeps without holding an instance,
//! [`Action::Delay`]) and then goes on with the rest of the chain and the upstream. An aborted
//! request stops the chain at once: the client gets `abort_status`, the header
//! `x-spindle-fault: abort` and a short body.
//!
//! When both draws hit the same request, the abort wins and the request is answered **without**
//! the delay: a delay action can only go on with the chain, not end in a local reply. So with both
//! faults configured, the share of requests delayed is `delay_percent * (1 - abort_percent / 100)`.
//! To delay and then abort the same requests (Istio's behaviour when both apply), chain two fault
//! filters: the first with the delay, the second with the abort.
//!
//! Put the filter after the router to fault only routed requests, or first to fault before any
//! other work. Metrics: `spindle_filter_<name>_delayed_total` and
//! `spindle_filter_<name>_aborted_total{status}`.

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{Action, Filter, InitError, LocalReply, Request, random};

/// The longest `delay_ms` accepted: an hour.
pub const MAX_DELAY_MS: u32 = 3_600_000;

/// The fault filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The delay injected, in milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u32>,
    /// The share of eligible requests delayed, in percent (default 100).
    #[serde(default)]
    pub delay_percent: Option<f64>,
    /// The status answered.
    #[serde(default)]
    pub abort_status: Option<u16>,
    /// The share of eligible requests aborted, in percent (default 100).
    #[serde(default)]
    pub abort_percent: Option<f64>,
    /// Only requests with this header are eligible.
    #[serde(default)]
    pub only_with_header: Option<String>,
}

/// A share in percent, checked and turned into a probability.
fn probability(key: &str, percent: Option<f64>) -> Result<f64, InitError> {
    let percent = percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&percent) {
        return Err(InitError::key(
            key,
            format!("{percent} is not between 0 and 100"),
        ));
    }
    Ok(percent / 100.0)
}

/// One configured fault: what it does and how often.
#[derive(Debug, Clone, Copy)]
struct Injected<T> {
    what: T,
    /// 0.0 to 1.0.
    probability: f64,
}

impl<T: Copy> Injected<T> {
    /// Draws from the host's randomness: `Some` with the configured probability.
    fn roll(&self) -> Option<T> {
        // `unit_f64` is in [0, 1): 100% always hits, 0% never does.
        (random::unit_f64() < self.probability).then_some(self.what)
    }
}

/// The fault filter.
#[derive(Debug)]
pub struct Fault {
    /// The delay, in milliseconds.
    delay: Option<Injected<u32>>,
    /// The abort status.
    abort: Option<Injected<u16>>,
    only_with_header: Option<String>,
    delayed: Option<Counter>,
    aborted: Option<Counter>,
}

#[spindle_sdk::filter]
impl Filter for Fault {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        for (key, set, needs) in [
            (
                "delay_percent",
                config.delay_percent.is_some() && config.delay_ms.is_none(),
                "delay_ms",
            ),
            (
                "abort_percent",
                config.abort_percent.is_some() && config.abort_status.is_none(),
                "abort_status",
            ),
        ] {
            if set {
                return Err(InitError::key(
                    key,
                    format!("has no effect without `{needs}`"),
                ));
            }
        }
        if config.delay_ms.is_none() && config.abort_status.is_none() {
            return Err(InitError::new(
                "nothing to inject: set `delay_ms` (with `delay_percent`), `abort_status` (with \
                 `abort_percent`), or both",
            ));
        }
        let delay = match config.delay_ms {
            None => None,
            Some(ms @ 1..=MAX_DELAY_MS) => Some(Injected {
                what: ms,
                probability: probability("delay_percent", config.delay_percent)?,
            }),
            Some(ms) => {
                return Err(InitError::key(
                    "delay_ms",
                    format!("{ms} is not between 1 and {MAX_DELAY_MS} (an hour)"),
                ));
            }
        };
        let abort = match config.abort_status {
            None => None,
            Some(status @ 200..=599) => Some(Injected {
                what: status,
                probability: probability("abort_percent", config.abort_percent)?,
            }),
            Some(status) => {
                return Err(InitError::key(
                    "abort_status",
                    format!("{status} is not a status from 200 to 599"),
                ));
            }
        };
        if config.only_with_header.as_deref() == Some("") {
            return Err(InitError::key("only_with_header", "must not be empty"));
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            Counter::new(name, help, labels)
                .map_err(|e| spindle_sdk::warn!("fault: no metric: {e}"))
                .ok()
        };
        let delayed = delay
            .and_then(|_| counter("delayed_total", "Requests delayed by fault injection.", &[]));
        let aborted = abort.and_then(|_| {
            counter(
                "aborted_total",
                "Requests aborted by fault injection, by status.",
                &["status"],
            )
        });
        Ok(Fault {
            delay,
            abort,
            only_with_header: config.only_with_header,
            delayed,
            aborted,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        if let Some(name) = &self.only_with_header
            && req.header(name).is_none()
        {
            return Action::Continue;
        }
        // Both draws are made, the delay's first, so each fault hits its own share.
        let delay = self.delay.and_then(|d| d.roll());
        if let Some(status) = self.abort.and_then(|a| a.roll()) {
            // An abort cannot follow a delay in one hook: it wins, at once.
            let code = status.to_string();
            if let Some(aborted) = &self.aborted {
                let _ = aborted.inc(&[&code]);
            }
            return Action::Respond(
                LocalReply::text(status, "fault injected: request aborted\n")
                    .header("x-spindle-fault", "abort"),
            );
        }
        match delay {
            Some(ms) => {
                if let Some(delayed) = &self.delayed {
                    let _ = delayed.inc(&[]);
                }
                Action::delay_ms(ms)
            }
            None => Action::Continue,
        }
    }
}

#[cfg(test)]
mod tests;
