//! Metrics with labels, exported by the host as `spindle_filter_<filter>_<name>`.
//!
//! Define metrics once, in [`Filter::new`](crate::Filter::new), and keep the handles in your
//! filter. Defining the same name again (another instance does) returns the same metric.
//! Nothing here panics: every call returns a [`MetricError`] you may ignore.
//!
//! ```
//! use spindle_sdk::metrics::Counter;
//! let requests = Counter::new("requests_total", "Requests seen.", &["method"])?;
//! requests.inc(&["GET"])?;
//! # Ok::<(), spindle_sdk::metrics::MetricError>(())
//! ```

use std::fmt;

use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Why a metric could not be defined or recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricError(String);

impl MetricError {
    /// The host's (or the SDK's) explanation.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MetricError {}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    id: u32,
    name: String,
    labels: usize,
}

impl Metric {
    fn define(
        kind: MetricKind,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<Metric, MetricError> {
        let id = sys::define_metric(kind, name, help, labels)
            .map_err(|e| MetricError(format!("metric `{name}`: {e}")))?;
        Ok(Metric {
            id,
            name: name.to_owned(),
            labels: labels.len(),
        })
    }

    fn record(&self, label_values: &[&str], value: f64) -> Result<(), MetricError> {
        if label_values.len() != self.labels {
            return Err(MetricError(format!(
                "metric `{}`: {} label values given, {} labels defined",
                self.name,
                label_values.len(),
                self.labels
            )));
        }
        sys::record_metric(self.id, label_values, value)
            .map_err(|e| MetricError(format!("metric `{}`: {e}", self.name)))
    }
}

/// A counter: only goes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter(Metric);

impl Counter {
    /// Defines a counter with these label names (`name` such as `requests_total`).
    pub fn new(name: &str, help: &str, labels: &[&str]) -> Result<Counter, MetricError> {
        Metric::define(MetricKind::Counter, name, help, labels).map(Counter)
    }

    /// Adds 1 to the series of these label values (in the order of the definition).
    pub fn inc(&self, label_values: &[&str]) -> Result<(), MetricError> {
        self.0.record(label_values, 1.0)
    }

    /// Adds `value` (not negative) to the series of these label values.
    pub fn add(&self, label_values: &[&str], value: f64) -> Result<(), MetricError> {
        self.0.record(label_values, value)
    }
}

/// A gauge: set to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gauge(Metric);

impl Gauge {
    /// Defines a gauge with these label names.
    pub fn new(name: &str, help: &str, labels: &[&str]) -> Result<Gauge, MetricError> {
        Metric::define(MetricKind::Gauge, name, help, labels).map(Gauge)
    }

    /// Sets the series of these label values to `value`.
    pub fn set(&self, label_values: &[&str], value: f64) -> Result<(), MetricError> {
        self.0.record(label_values, value)
    }
}

/// A histogram: observes values (the host chooses the buckets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram(Metric);

impl Histogram {
    /// Defines a histogram with these label names (`name` such as `latency_seconds`).
    pub fn new(name: &str, help: &str, labels: &[&str]) -> Result<Histogram, MetricError> {
        Metric::define(MetricKind::Histogram, name, help, labels).map(Histogram)
    }

    /// Observes `value` in the series of these label values.
    pub fn observe(&self, label_values: &[&str], value: f64) -> Result<(), MetricError> {
        self.0.record(label_values, value)
    }
}
