//! Host metrics and filter-defined metrics, rendered in the Prometheus text
//! format.
//!
//! Hot-path counters are plain atomics owned by the thing they count
//! (listener stats, endpoint stats) and collected at scrape time, so a
//! request never takes a lock or allocates to count itself. Rare events
//! (reloads, filter errors) and filter-defined series live in maps behind a
//! mutex.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::FastMap;

/// Latency buckets in seconds, shared by every duration histogram.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Filter hook calls take microseconds: their own buckets, in seconds.
pub const CALL_BUCKETS: [f64; 12] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.02,
];

/// A lock-free histogram over fixed bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&DURATION_BUCKETS)
    }
}

impl Histogram {
    pub fn with_bounds(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe_ns(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braced = braced(labels);
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {count}");
    }
}

/// Per-listener request counters, indexed by status code.
pub struct ListenerStats {
    pub name: String,
    codes: Box<[AtomicU64; 600]>,
    pub duration: Histogram,
    /// Open downstream connections.
    pub connections: AtomicU64,
    /// Request heads refused before the chain, by [`REJECT_REASONS`].
    rejected: [AtomicU64; 3],
}

/// Why a listener refused a request head: the `reason` label of
/// `spindle_downstream_rejected_total`.
pub const REJECT_REASONS: [&str; 3] = ["bad_request", "head_too_large", "header_timeout"];

impl ListenerStats {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            codes: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            duration: Histogram::default(),
            connections: AtomicU64::new(0),
            rejected: Default::default(),
        }
    }

    pub fn record(&self, status: u16, duration_ns: u64) {
        if let Some(c) = self.codes.get(status as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe_ns(duration_ns);
    }

    /// Counts a refused request head; `reason` is one of [`REJECT_REASONS`].
    pub fn rejected(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reload events kept per filter for `GET /filters`.
const RELOAD_HISTORY: usize = 10;

struct ReloadEvent {
    at_unix_ms: u64,
    result: &'static str,
    detail: String,
}

/// Something that renders its own series at scrape time.
pub trait Collector: Send + Sync {
    fn collect(&self, out: &mut String);
}

/// The `kind` label values of `spindle_filter_errors_total`.
const FILTER_ERROR_KINDS: [&str; 4] = ["deadline", "instantiate", "memory", "trap"];

/// Host metrics that share the `spindle_filter_` prefix with filter-defined ones.
const HOST_FILTER_METRICS: [&str; 6] = [
    "spindle_filter_reloads_total",
    "spindle_filter_calls_total",
    "spindle_filter_errors_total",
    "spindle_filter_call_duration_seconds",
    "spindle_filter_instances",
    "spindle_filter_idle_instances",
];

/// Whether a filter-defined family (or a histogram's `_bucket`/`_sum`/`_count`
/// series) would have the name of one of the host's series.
fn collides_with_host_metric(full: &str) -> bool {
    const SUFFIXES: [&str; 4] = ["", "_bucket", "_sum", "_count"];
    HOST_FILTER_METRICS.iter().any(|host| {
        SUFFIXES.iter().any(|a| {
            SUFFIXES
                .iter()
                .any(|b| format!("{full}{a}") == format!("{host}{b}"))
        })
    })
}

/// The host's metric registry.
#[derive(Default)]
pub struct Metrics {
    listeners: Mutex<Vec<Arc<ListenerStats>>>,
    reloads: Mutex<BTreeMap<(String, &'static str), u64>>,
    history: Mutex<BTreeMap<String, VecDeque<ReloadEvent>>>,
    config_reloads: Mutex<BTreeMap<&'static str, u64>>,
    filter_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    filters: Mutex<BTreeMap<String, Arc<FilterMetrics>>>,
    collectors: Mutex<Vec<Arc<dyn Collector>>>,
}

impl Metrics {
    /// Stats for a listener, created on first use and kept across reloads.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut ls = lock(&self.listeners);
        if let Some(l) = ls.iter().find(|l| l.name == name) {
            return l.clone();
        }
        let l = Arc::new(ListenerStats::new(name));
        ls.push(l.clone());
        l
    }

    /// Counts a load attempt of a filter version and keeps it in the
    /// filter's history (`detail`: the sha256, or the error).
    pub fn filter_reload(&self, filter: &str, ok: bool, detail: &str) {
        let result = if ok { "ok" } else { "error" };
        *lock(&self.reloads)
            .entry((filter.to_string(), result))
            .or_default() += 1;
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut history = lock(&self.history);
        let events = history.entry(filter.to_string()).or_default();
        if events.len() == RELOAD_HISTORY {
            events.pop_front();
        }
        events.push_back(ReloadEvent {
            at_unix_ms,
            result,
            detail: detail.to_string(),
        });
    }

    /// The last reloads of a filter, oldest first.
    pub fn reload_history(&self, filter: &str) -> Vec<serde_json::Value> {
        lock(&self.history)
            .get(filter)
            .map(|events| {
                events
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "at_unix_ms": e.at_unix_ms,
                            "result": e.result,
                            "detail": e.detail,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn config_reload(&self, ok: bool) {
        *lock(&self.config_reloads)
            .entry(if ok { "ok" } else { "error" })
            .or_default() += 1;
    }

    pub fn filter_error(&self, filter: &str, kind: &'static str) {
        *lock(&self.filter_errors)
            .entry((filter.to_string(), kind))
            .or_default() += 1;
    }

    /// The metric families a filter defined; shared by all its versions so
    /// that a reload keeps the counts.
    pub fn filter(&self, name: &str) -> Arc<FilterMetrics> {
        lock(&self.filters)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(FilterMetrics::new(name)))
            .clone()
    }

    pub fn add_collector(&self, c: Arc<dyn Collector>) {
        lock(&self.collectors).push(c);
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let listeners = lock(&self.listeners).clone();
        out.push_str("# HELP spindle_requests_total Downstream requests answered, by listener and status code.\n");
        out.push_str("# TYPE spindle_requests_total counter\n");
        for l in &listeners {
            for (code, c) in l.codes.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "spindle_requests_total{{listener=\"{}\",code=\"{code}\"}} {v}",
                        escape(&l.name)
                    );
                }
            }
        }
        out.push_str("# HELP spindle_request_duration_seconds Downstream request duration until the response head, by listener.\n");
        out.push_str("# TYPE spindle_request_duration_seconds histogram\n");
        for l in &listeners {
            l.duration.render(
                &mut out,
                "spindle_request_duration_seconds",
                &format!("listener=\"{}\"", escape(&l.name)),
            );
        }
        out.push_str(
            "# HELP spindle_downstream_connections Open downstream connections, by listener.\n",
        );
        out.push_str("# TYPE spindle_downstream_connections gauge\n");
        for l in &listeners {
            let _ = writeln!(
                out,
                "spindle_downstream_connections{{listener=\"{}\"}} {}",
                escape(&l.name),
                l.connections.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP spindle_downstream_rejected_total Request heads refused before the filter chain (malformed, too large, too slow), by listener and reason.\n");
        out.push_str("# TYPE spindle_downstream_rejected_total counter\n");
        for l in &listeners {
            for (reason, c) in REJECT_REASONS.iter().zip(&l.rejected) {
                let _ = writeln!(
                    out,
                    "spindle_downstream_rejected_total{{listener=\"{}\",reason=\"{reason}\"}} {}",
                    escape(&l.name),
                    c.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP spindle_filter_calls_total Filter hook calls, by filter and hook.\n");
        out.push_str("# TYPE spindle_filter_calls_total counter\n");
        for f in lock(&self.filters).values() {
            for (hook, c) in HOOK_NAMES.iter().zip(f.call_counts.iter()) {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "spindle_filter_calls_total{{filter=\"{}\",hook=\"{hook}\"}} {v}",
                        escape(&f.filter)
                    );
                }
            }
        }
        out.push_str("# HELP spindle_filter_call_duration_seconds Duration of filter hook calls (one call in 32 is timed), by filter and hook.\n");
        out.push_str("# TYPE spindle_filter_call_duration_seconds histogram\n");
        for f in lock(&self.filters).values() {
            for (hook, h) in HOOK_NAMES.iter().zip(f.calls.iter()) {
                if h.count.load(Ordering::Relaxed) > 0 {
                    h.render(
                        &mut out,
                        "spindle_filter_call_duration_seconds",
                        &format!("filter=\"{}\",hook=\"{hook}\"", escape(&f.filter)),
                    );
                }
            }
        }
        out.push_str(
            "# HELP spindle_filter_reloads_total Filter loads and reloads, by filter and result.\n",
        );
        out.push_str("# TYPE spindle_filter_reloads_total counter\n");
        for ((f, r), v) in lock(&self.reloads).iter() {
            let _ = writeln!(
                out,
                "spindle_filter_reloads_total{{filter=\"{}\",result=\"{r}\"}} {v}",
                escape(f)
            );
        }
        out.push_str("# HELP spindle_config_reloads_total Config file reloads, by result.\n");
        out.push_str("# TYPE spindle_config_reloads_total counter\n");
        // Both results always, from 0, so that rate() sees the first one.
        let config_reloads = lock(&self.config_reloads).clone();
        for r in ["error", "ok"] {
            let v = config_reloads.get(r).copied().unwrap_or(0);
            let _ = writeln!(out, "spindle_config_reloads_total{{result=\"{r}\"}} {v}");
        }
        out.push_str("# HELP spindle_filter_errors_total Filter failures (trap, deadline, memory, instantiate), by filter and kind.\n");
        out.push_str("# TYPE spindle_filter_errors_total counter\n");
        // Every kind of every loaded filter, from 0, so that rate() sees the first error.
        let mut errors = lock(&self.filter_errors).clone();
        for f in lock(&self.filters).keys() {
            for kind in FILTER_ERROR_KINDS {
                errors.entry((f.clone(), kind)).or_insert(0);
            }
        }
        for ((f, k), v) in &errors {
            let _ = writeln!(
                out,
                "spindle_filter_errors_total{{filter=\"{}\",kind=\"{k}\"}} {v}",
                escape(f)
            );
        }
        for c in lock(&self.collectors).clone() {
            c.collect(&mut out);
        }
        for f in lock(&self.filters).values() {
            f.render(&mut out);
        }
        out
    }
}

/// Kinds of filter-defined metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The metrics one filter defined.
pub struct FilterMetrics {
    filter: String,
    families: Mutex<Vec<Arc<Family>>>,
    /// Label sets per metric (`max_metric_series` of the running version).
    max_series: std::sync::atomic::AtomicUsize,
    /// Hook call durations, indexed like [`HOOK_NAMES`].
    pub calls: [Histogram; 5],
    /// Every hook call, by hook (`calls` times a sample of them).
    pub call_counts: [AtomicU64; 5],
}

/// The hooks whose call durations are measured.
/// (`pick` includes the `endpoints-changed` push that may precede it.)
pub const HOOK_NAMES: [&str; 5] = ["request", "pick", "attempt", "response", "done"];

/// Series cap per filter-defined metric, so that a filter cannot exhaust memory.
/// The default of `max_metric_series`.
pub const MAX_SERIES_PER_METRIC: usize = 1000;
const MAX_METRICS_PER_FILTER: usize = 256;

pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<String>,
    series: Mutex<FastMap<Vec<String>, Value>>,
}

#[derive(Default)]
struct Value {
    value: f64,
    buckets: Vec<u64>,
    count: u64,
}

/// Histogram buckets for filter-defined histograms (unitless).
const FILTER_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 1000.0,
];

impl FilterMetrics {
    /// Sets the cap on label sets per metric (a filter version's
    /// `max_metric_series`; series already recorded stay).
    pub fn set_max_series(&self, cap: usize) {
        self.max_series.store(cap.max(1), Ordering::Relaxed);
    }

    fn new(filter: &str) -> Self {
        Self {
            filter: filter.to_string(),
            families: Mutex::new(Vec::new()),
            max_series: std::sync::atomic::AtomicUsize::new(MAX_SERIES_PER_METRIC),
            calls: std::array::from_fn(|_| Histogram::with_bounds(&CALL_BUCKETS)),
            call_counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Defines (or finds) a metric; returns its id.
    pub fn define(
        &self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[String],
    ) -> Result<u32, String> {
        if !valid_name(name) {
            return Err(format!(
                "metric name `{name}` must match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
        for l in labels {
            if !valid_name(l) || l.starts_with("__") {
                return Err(format!(
                    "label name `{l}` must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"
                ));
            }
        }
        let full = format!("spindle_filter_{}_{}", sanitize(&self.filter), name);
        if collides_with_host_metric(&full) {
            return Err(format!(
                "metric `{name}` would be exported as `{full}`, which Spindle itself exports: choose another name"
            ));
        }
        let mut fams = lock(&self.families);
        if let Some((i, f)) = fams.iter().enumerate().find(|(_, f)| f.name == full) {
            if f.kind != kind || f.labels != labels {
                return Err(format!(
                    "metric `{name}` is already defined with another kind or labels"
                ));
            }
            return Ok(i as u32);
        }
        if fams.len() >= MAX_METRICS_PER_FILTER {
            return Err(format!(
                "a filter may define at most {MAX_METRICS_PER_FILTER} metrics"
            ));
        }
        fams.push(Arc::new(Family {
            name: full,
            help: help.replace('\n', " "),
            kind,
            labels: labels.to_vec(),
            series: Mutex::new(FastMap::default()),
        }));
        Ok((fams.len() - 1) as u32)
    }

    pub fn record(&self, id: u32, label_values: Vec<String>, value: f64) -> Result<(), String> {
        let fam = lock(&self.families)
            .get(id as usize)
            .cloned()
            .ok_or_else(|| format!("unknown metric id {id}"))?;
        if label_values.len() != fam.labels.len() {
            return Err(format!(
                "metric `{}` takes {} label values, got {}",
                fam.name,
                fam.labels.len(),
                label_values.len()
            ));
        }
        if !value.is_finite() {
            return Err("metric values must be finite".to_string());
        }
        if fam.kind == Kind::Counter && value < 0.0 {
            return Err("counters only go up".to_string());
        }
        let mut series = lock(&fam.series);
        let len = series.len();
        let cap = self.max_series.load(Ordering::Relaxed);
        let v = match series.get_mut(&label_values) {
            Some(v) => v,
            None if len >= cap => {
                return Err(format!(
                    "metric `{}` reached its cap of {cap} label sets (max_metric_series)",
                    fam.name
                ));
            }
            None => series.entry(label_values).or_default(),
        };
        match fam.kind {
            Kind::Counter => v.value += value,
            Kind::Gauge => v.value = value,
            Kind::Histogram => {
                if v.buckets.is_empty() {
                    v.buckets = vec![0; FILTER_BUCKETS.len()];
                }
                if let Some(i) = FILTER_BUCKETS.iter().position(|b| value <= *b) {
                    v.buckets[i] += 1;
                }
                v.count += 1;
                v.value += value;
            }
        }
        Ok(())
    }

    fn render(&self, out: &mut String) {
        for fam in lock(&self.families).iter() {
            let kind = match fam.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", fam.name, fam.help);
            let _ = writeln!(out, "# TYPE {} {kind}", fam.name);
            let series = lock(&fam.series);
            let mut keys: Vec<_> = series.keys().collect();
            keys.sort();
            for k in keys {
                let v = &series[k];
                let labels: Vec<String> = fam
                    .labels
                    .iter()
                    .zip(k)
                    .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                    .collect();
                let labels = labels.join(",");
                match fam.kind {
                    Kind::Counter | Kind::Gauge => {
                        let _ = writeln!(out, "{}{} {}", fam.name, braced(&labels), v.value);
                    }
                    Kind::Histogram => {
                        let sep = if labels.is_empty() { "" } else { "," };
                        let mut cum = 0;
                        for (i, b) in FILTER_BUCKETS.iter().enumerate() {
                            cum += v.buckets.get(i).copied().unwrap_or(0);
                            let _ = writeln!(
                                out,
                                "{}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}",
                                fam.name
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                            fam.name, v.count
                        );
                        let _ = writeln!(out, "{}_sum{} {}", fam.name, braced(&labels), v.value);
                        let _ = writeln!(out, "{}_count{} {}", fam.name, braced(&labels), v.count);
                    }
                }
            }
        }
    }
}

/// `{labels}`, or nothing for an empty label set.
fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Filter names may hold `-`; metric names may not.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Escapes a label value.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Locks a mutex, recovering from poisoning (a panicking scrape must not
/// take metrics down for good).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_metrics_define_record_render() {
        let m = Metrics::default();
        let f = m.filter("hello");
        let id = f
            .define(
                Kind::Counter,
                "requests_total",
                "Requests.",
                &["method".into()],
            )
            .unwrap();
        assert_eq!(
            f.define(Kind::Counter, "requests_total", "x", &["method".into()]),
            Ok(id)
        );
        assert!(f.define(Kind::Gauge, "requests_total", "x", &[]).is_err());
        assert!(f.define(Kind::Gauge, "bad-name", "x", &[]).is_err());
        f.record(id, vec!["GET".into()], 2.0).unwrap();
        f.record(id, vec!["GET".into()], 1.0).unwrap();
        assert!(f.record(id, vec![], 1.0).is_err());
        assert!(f.record(id, vec!["GET".into()], -1.0).is_err());
        let h = f.define(Kind::Histogram, "size", "Sizes.", &[]).unwrap();
        f.record(h, vec![], 0.7).unwrap();
        let text = m.render();
        assert!(
            text.contains("spindle_filter_hello_requests_total{method=\"GET\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("spindle_filter_hello_size_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("spindle_filter_hello_size_count 1"), "{text}");
    }

    #[test]
    fn filter_metrics_cannot_take_host_names() {
        let m = Metrics::default();
        let err = m
            .filter("reloads")
            .define(Kind::Counter, "total", "", &[])
            .unwrap_err();
        assert!(err.contains("spindle_filter_reloads_total"), "{err}");
        let call = m.filter("call");
        assert!(
            call.define(Kind::Counter, "duration_seconds_bucket", "", &[])
                .is_err()
        );
        assert!(
            call.define(Kind::Counter, "duration_total", "", &[])
                .is_ok()
        );
        assert!(
            m.filter("idle")
                .define(Kind::Gauge, "instances", "", &[])
                .is_err()
        );
    }

    #[test]
    fn error_and_reload_series_start_at_zero() {
        let m = Metrics::default();
        m.filter("router");
        m.filter_error("router", "trap");
        let text = m.render();
        assert!(
            text.contains("spindle_config_reloads_total{result=\"ok\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("spindle_config_reloads_total{result=\"error\"} 0"),
            "{text}"
        );
        assert!(text.contains("spindle_filter_errors_total{filter=\"router\",kind=\"trap\"} 1"));
        assert!(
            text.contains("spindle_filter_errors_total{filter=\"router\",kind=\"deadline\"} 0")
        );
    }

    #[test]
    fn series_are_capped() {
        let m = Metrics::default();
        let f = m.filter("x");
        let id = f.define(Kind::Gauge, "g", "", &["k".into()]).unwrap();
        for i in 0..MAX_SERIES_PER_METRIC {
            f.record(id, vec![i.to_string()], 1.0).unwrap();
        }
        assert!(f.record(id, vec!["one more".into()], 1.0).is_err());
        f.record(id, vec!["0".into()], 5.0).unwrap();
    }

    #[test]
    fn the_series_cap_is_configurable() {
        let m = Metrics::default();
        let f = m.filter("x");
        f.set_max_series(2);
        let id = f.define(Kind::Counter, "c", "", &["k".into()]).unwrap();
        f.record(id, vec!["a".into()], 1.0).unwrap();
        f.record(id, vec!["b".into()], 1.0).unwrap();
        let err = f.record(id, vec!["c".into()], 1.0).unwrap_err();
        assert!(err.contains("cap of 2"), "{err}");
        f.record(id, vec!["a".into()], 1.0).unwrap();
    }

    #[test]
    fn listener_counts() {
        let m = Metrics::default();
        let l = m.listener("edge");
        l.record(200, 1_000_000);
        l.record(503, 30_000_000);
        m.filter_reload("router", true, "abc");
        assert_eq!(m.reload_history("router")[0]["detail"], "abc");
        let text = m.render();
        assert!(text.contains("spindle_requests_total{listener=\"edge\",code=\"503\"} 1"));
        assert!(
            text.contains(
                "spindle_request_duration_seconds_bucket{listener=\"edge\",le=\"0.001\"} 1"
            )
        );
        assert!(text.contains("spindle_request_duration_seconds_count{listener=\"edge\"} 2"));
        assert!(text.contains("spindle_filter_reloads_total{filter=\"router\",result=\"ok\"} 1"));
    }
}
