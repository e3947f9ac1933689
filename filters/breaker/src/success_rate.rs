//! Success-rate outlier detection (Envoy's `success_rate` detector), counted in the shared store.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use spindle_sdk::{store, time};

fn default_interval_ms() -> u32 {
    10_000
}
fn default_minimum_hosts() -> u32 {
    5
}
fn default_request_volume() -> u32 {
    100
}
fn default_stdev_factor() -> f64 {
    1.9
}

/// The `success_rate` table of the breaker's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessRate {
    /// The length of one evaluation interval, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u32,
    /// Endpoints with enough volume needed in an interval for it to be evaluated.
    #[serde(default = "default_minimum_hosts")]
    pub minimum_hosts: u32,
    /// Attempts an endpoint needs in an interval to be counted.
    #[serde(default = "default_request_volume")]
    pub request_volume: u32,
    /// How many standard deviations below the mean an endpoint is ejected at.
    #[serde(default = "default_stdev_factor")]
    pub stdev_factor: f64,
}

impl SuccessRate {
    /// Checks the values; the error names the key under `success_rate`.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((format!("success_rate.{key}"), msg));
        if self.interval_ms < 100 {
            return err(
                "interval_ms",
                format!("{} is less than 100", self.interval_ms),
            );
        }
        if self.minimum_hosts == 0 {
            return err("minimum_hosts", "must be at least 1".to_owned());
        }
        if self.request_volume == 0 {
            return err("request_volume", "must be at least 1".to_owned());
        }
        if !(self.stdev_factor.is_finite() && self.stdev_factor >= 0.0) {
            return err(
                "stdev_factor",
                format!("{} is not a number from 0 up", self.stdev_factor),
            );
        }
        Ok(())
    }
}

/// One endpoint's attempts in an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    /// The endpoint.
    pub endpoint: u32,
    /// Attempts.
    pub total: u64,
    /// Of which succeeded.
    pub ok: u64,
}

/// The endpoints whose success rate is below `mean - stdev_factor * stdev` of those with at
/// least `request_volume` attempts, when there are at least `minimum_hosts` of those.
pub fn outliers(volumes: &[Volume], config: &SuccessRate) -> Vec<u32> {
    let rates: Vec<(u32, f64)> = volumes
        .iter()
        .filter(|v| v.total >= u64::from(config.request_volume) && v.total > 0)
        .map(|v| (v.endpoint, v.ok as f64 / v.total as f64))
        .collect();
    if rates.len() < config.minimum_hosts as usize || rates.is_empty() {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - config.stdev_factor * variance.sqrt();
    rates
        .into_iter()
        .filter(|&(_, r)| r < threshold)
        .map(|(e, _)| e)
        .collect()
}

fn members_key(cluster: &str) -> String {
    format!("spindle.breaker.sr.{cluster}.members")
}

fn evaluated_key(cluster: &str) -> String {
    format!("spindle.breaker.sr.{cluster}.evaluated")
}

fn volume_key(endpoint: u32, interval: u64, kind: &str) -> String {
    format!("spindle.breaker.sr.{endpoint}.{interval}.{kind}")
}

/// Counts attempts per endpoint and interval, and evaluates each finished interval once.
#[derive(Debug)]
pub(crate) struct Tracker {
    config: SuccessRate,
    /// Endpoints this instance already added to their cluster's member list (a cache).
    registered: HashSet<u32>,
}

impl Tracker {
    pub(crate) fn new(config: SuccessRate) -> Tracker {
        Tracker {
            config,
            registered: HashSet::new(),
        }
    }

    fn interval(&self) -> u64 {
        time::monotonic_ns() / (u64::from(self.config.interval_ms) * 1_000_000)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.config.interval_ms) * 3)
    }

    /// Adds `endpoint` to the member list of `cluster` in the store (once per instance).
    fn register(&mut self, cluster: &str, endpoint: u32) {
        if self.registered.contains(&endpoint) {
            return;
        }
        let key = members_key(cluster);
        for _ in 0..8 {
            let current = store::get(&key);
            let text = current
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            if text.split(',').any(|id| id == endpoint.to_string()) {
                break;
            }
            let next = if text.is_empty() {
                endpoint.to_string()
            } else {
                format!("{text},{endpoint}")
            };
            if store::cas(&key, current.as_deref(), next.as_bytes(), store::FOREVER) {
                break;
            }
        }
        self.registered.insert(endpoint);
    }

    /// Records one attempt; returns the outliers of the interval that just ended when this
    /// instance is the one that evaluates it (at most one does per interval and cluster).
    pub(crate) fn record(&mut self, cluster: &str, endpoint: u32, ok: bool) -> Vec<u32> {
        self.register(cluster, endpoint);
        let now = self.interval();
        let ttl = self.ttl();
        store::add(&volume_key(endpoint, now, "total"), 1, ttl);
        if ok {
            store::add(&volume_key(endpoint, now, "ok"), 1, ttl);
        }
        let Some(previous) = now.checked_sub(1) else {
            return Vec::new();
        };
        let key = evaluated_key(cluster);
        let current = store::get(&key);
        let done = current
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        if done.is_some_and(|d| d >= previous) {
            return Vec::new();
        }
        // Claim the evaluation of `previous`.
        if !store::cas(
            &key,
            current.as_deref(),
            previous.to_string().as_bytes(),
            store::FOREVER,
        ) {
            return Vec::new();
        }
        let members = store::get(&members_key(cluster)).unwrap_or_default();
        let volumes: Vec<Volume> = String::from_utf8_lossy(&members)
            .split(',')
            .filter_map(|id| id.parse::<u32>().ok())
            .map(|endpoint| Volume {
                endpoint,
                total: store::counter(&volume_key(endpoint, previous, "total")).max(0) as u64,
                ok: store::counter(&volume_key(endpoint, previous, "ok")).max(0) as u64,
            })
            .collect();
        outliers(&volumes, &self.config)
    }
}
