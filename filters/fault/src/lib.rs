//! Spindle's fault-injection filter: answers a share of requests with an error, Istio-style.
//!
//! ```toml
//! [filter.fault]
//! config = { abort_status = 503, abort_percent = 10, only_with_header = "x-chaos" }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `abort_status` | required | the status answered instead of the upstream's (200 to 599) |
//! | `abort_percent` | 100 | the share of requests aborted, 0 to 100 (fractions allowed: `0.5`) |
//! | `only_with_header` | none | only requests carrying this header may be aborted |
//! | `delay_ms`, `delay_percent` | — | refused: see below |
//!
//! Each eligible request is aborted with probability `abort_percent / 100`, drawn from the
//! host's randomness: the chain stops and the client gets `abort_status`, the header
//! `x-spindle-fault: abort` and a short body. Put the filter after the router to abort only
//! routed requests, or first to abort before any other work. Aborts are counted in
//! `spindle_filter_<name>_aborted_total{status}`.
//!
//! Delays are not supported: ABI 0.1.0 has no way for a filter to wait (a hook that spun would
//! hold a pooled instance and hit the host's per-call deadline). A config with `delay_ms` or
//! `delay_percent` is refused with that explanation; delay injection needs a host capability
//! (a "delay then continue" request action).

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{Action, Filter, InitError, LocalReply, Request, random};

fn default_abort_percent() -> f64 {
    100.0
}

/// The fault filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The status answered.
    pub abort_status: u16,
    /// The share of eligible requests aborted, in percent.
    #[serde(default = "default_abort_percent")]
    pub abort_percent: f64,
    /// Only requests with this header are eligible.
    #[serde(default)]
    pub only_with_header: Option<String>,
    /// Refused: delays need a host capability.
    #[serde(default)]
    pub delay_ms: Option<serde::de::IgnoredAny>,
    /// Refused: delays need a host capability.
    #[serde(default)]
    pub delay_percent: Option<serde::de::IgnoredAny>,
}

/// The fault filter.
#[derive(Debug)]
pub struct Fault {
    status: u16,
    /// The probability of an abort, 0.0 to 1.0.
    probability: f64,
    only_with_header: Option<String>,
    aborted: Option<Counter>,
}

#[spindle_sdk::filter]
impl Filter for Fault {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        for (key, set) in [
            ("delay_ms", config.delay_ms.is_some()),
            ("delay_percent", config.delay_percent.is_some()),
        ] {
            if set {
                return Err(InitError::key(
                    key,
                    "delay injection is not supported: filters cannot wait in ABI 0.1.0 (it \
                     needs a host capability); use `abort_status` and `abort_percent`",
                ));
            }
        }
        if !(200..=599).contains(&config.abort_status) {
            return Err(InitError::key(
                "abort_status",
                format!("{} is not a status from 200 to 599", config.abort_status),
            ));
        }
        if !(0.0..=100.0).contains(&config.abort_percent) {
            return Err(InitError::key(
                "abort_percent",
                format!("{} is not between 0 and 100", config.abort_percent),
            ));
        }
        if config.only_with_header.as_deref() == Some("") {
            return Err(InitError::key("only_with_header", "must not be empty"));
        }
        let aborted = Counter::new(
            "aborted_total",
            "Requests aborted by fault injection, by status.",
            &["status"],
        )
        .map_err(|e| spindle_sdk::warn!("fault: no metric: {e}"))
        .ok();
        Ok(Fault {
            status: config.abort_status,
            probability: config.abort_percent / 100.0,
            only_with_header: config.only_with_header,
            aborted,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        if let Some(name) = &self.only_with_header
            && req.header(name).is_none()
        {
            return Action::Continue;
        }
        // `unit_f64` is in [0, 1): 100% always aborts, 0% never does.
        if random::unit_f64() >= self.probability {
            return Action::Continue;
        }
        let status = self.status.to_string();
        if let Some(aborted) = &self.aborted {
            let _ = aborted.inc(&[&status]);
        }
        Action::Respond(
            LocalReply::text(self.status, "fault injected: request aborted\n")
                .header("x-spindle-fault", "abort"),
        )
    }
}

#[cfg(test)]
mod tests;
