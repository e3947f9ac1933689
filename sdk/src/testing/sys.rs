//! The host calls of `crate::sys`, answered by the thread-local mock state.

use std::time::Duration;

use super::state::{MetricDef, Series, StoreEntry, with};
use crate::log::Level;
use crate::metrics::MetricKind;
use crate::types::{ClusterStats, EndpointStats};

fn find<'a>(headers: &'a [(String, String)], name: &str) -> impl Iterator<Item = &'a String> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_ascii_lowercase(), value.to_owned()));
}

pub(crate) fn log(level: Level, message: &str) {
    with(|s| {
        let filter = s.current_filter;
        eprintln!("[{level:?} {filter}] {message}");
        s.logs.push((level, message.to_owned()));
    });
}

pub(crate) fn method() -> String {
    with(|s| {
        s.request
            .as_ref()
            .map(|r| r.method.clone())
            .unwrap_or_default()
    })
}
pub(crate) fn path() -> String {
    with(|s| {
        s.request
            .as_ref()
            .map(|r| r.path.clone())
            .unwrap_or_default()
    })
}
pub(crate) fn set_path(path: &str) {
    with(|s| {
        if let Some(r) = s.request.as_mut() {
            r.path = path.to_owned();
        }
    });
}
pub(crate) fn authority() -> Option<String> {
    with(|s| {
        let r = s.request.as_ref()?;
        r.authority
            .clone()
            .or_else(|| find(&r.headers, "host").next().cloned())
    })
}
pub(crate) fn client_address() -> String {
    with(|s| {
        s.request
            .as_ref()
            .map(|r| r.client_address.clone())
            .unwrap_or_default()
    })
}
pub(crate) fn request_header(name: &str) -> Option<String> {
    with(|s| find(&s.request.as_ref()?.headers, name).next().cloned())
}
pub(crate) fn request_header_all(name: &str) -> Vec<String> {
    with(|s| match s.request.as_ref() {
        Some(r) => find(&r.headers, name).cloned().collect(),
        None => Vec::new(),
    })
}
pub(crate) fn set_request_header(name: &str, value: &str) {
    with(|s| {
        if let Some(r) = s.request.as_mut() {
            set(&mut r.headers, name, value);
        }
    });
}
pub(crate) fn add_request_header(name: &str, value: &str) {
    with(|s| {
        if let Some(r) = s.request.as_mut() {
            r.headers
                .push((name.to_ascii_lowercase(), value.to_owned()));
        }
    });
}
pub(crate) fn remove_request_header(name: &str) {
    with(|s| {
        if let Some(r) = s.request.as_mut() {
            r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
    });
}
pub(crate) fn cluster() -> Option<String> {
    with(|s| s.request.as_ref()?.cluster.clone())
}
pub(crate) fn set_cluster(name: &str) {
    with(|s| {
        if let Some(r) = s.request.as_mut() {
            r.cluster = Some(name.to_owned());
        }
    });
}
pub(crate) fn set_per_try_timeout(ms: u32) {
    with(|s| {
        if let Some(r) = s.request.as_mut() {
            r.per_try_timeout_ms = Some(ms);
        }
    });
}
pub(crate) fn request_id() -> String {
    with(|s| {
        s.request
            .as_ref()
            .map(|r| r.request_id.clone())
            .unwrap_or_default()
    })
}
pub(crate) fn request_var(name: &str) -> Option<String> {
    with(|s| {
        s.request.as_ref()?;
        s.vars.get(&(s.current_filter, name.to_owned())).cloned()
    })
}
pub(crate) fn set_request_var(name: &str, value: &str) {
    with(|s| {
        if s.request.is_some() {
            s.vars
                .insert((s.current_filter, name.to_owned()), value.to_owned());
        }
    });
}

pub(crate) fn response_status() -> Option<u16> {
    with(|s| s.response.as_ref().map(|r| r.status))
}
pub(crate) fn set_response_status(status: u16) {
    with(|s| {
        if let Some(r) = s.response.as_mut() {
            r.status = status;
        }
    });
}
pub(crate) fn response_header(name: &str) -> Option<String> {
    with(|s| find(&s.response.as_ref()?.headers, name).next().cloned())
}
pub(crate) fn set_response_header(name: &str, value: &str) {
    with(|s| {
        if let Some(r) = s.response.as_mut() {
            set(&mut r.headers, name, value);
        }
    });
}
pub(crate) fn add_response_header(name: &str, value: &str) {
    with(|s| {
        if let Some(r) = s.response.as_mut() {
            r.headers
                .push((name.to_ascii_lowercase(), value.to_owned()));
        }
    });
}
pub(crate) fn remove_response_header(name: &str) {
    with(|s| {
        if let Some(r) = s.response.as_mut() {
            r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
    });
}

pub(crate) fn now_ms() -> u64 {
    with(|s| s.wall_ms)
}
pub(crate) fn monotonic_ns() -> u64 {
    with(|s| s.monotonic_ns)
}
pub(crate) fn random_u64() -> u64 {
    with(|s| s.next_random())
}

pub(crate) fn endpoint_stats(id: u32) -> Option<EndpointStats> {
    with(|s| {
        let now = s.monotonic_ns;
        let e = s.endpoints.get(&id)?;
        Some(EndpointStats {
            ejected: e.ejected(now),
            ..e.stats
        })
    })
}
pub(crate) fn endpoint_address(id: u32) -> Option<String> {
    with(|s| s.endpoints.get(&id).map(|e| e.address.clone()))
}
pub(crate) fn cluster_stats(cluster: &str) -> Option<ClusterStats> {
    with(|s| {
        let now = s.monotonic_ns;
        let mut stats = ClusterStats::default();
        let mut known = false;
        for e in s.endpoints.values().filter(|e| e.cluster == cluster) {
            known = true;
            stats.endpoints += 1;
            stats.ejected += u32::from(e.ejected(now));
            stats.in_flight += e.stats.in_flight;
        }
        known.then_some(stats)
    })
}
/// The next pick's ticket for `cluster`: 0, 1, 2, ... as the host numbers them.
pub(crate) fn next_ticket(cluster: &str) -> u64 {
    with(|s| {
        let next = s.tickets.entry(cluster.to_owned()).or_default();
        *next += 1;
        *next - 1
    })
}

/// Records an attempt's outcome in its endpoint's statistics, as the host does before
/// `on_attempt`; returns whether a filter declaring
/// [`AttemptOutcomes::FailuresAndRecoveries`](crate::AttemptOutcomes) sees it.
pub(crate) fn record_outcome(outcome: &crate::AttemptOutcome) -> bool {
    let failed = crate::AttemptOutcomes::is_host_failure(outcome);
    with(|s| {
        let now = s.monotonic_ns;
        if outcome.attempt == 1 {
            s.count_requests(&outcome.cluster, 1);
        }
        let Some(e) = s.endpoints.get_mut(&outcome.endpoint) else {
            return true;
        };
        e.stats.total_requests += 1;
        if failed {
            e.stats.total_failures += 1;
            e.stats.consecutive_failures += 1;
            return true;
        }
        let had_failed = std::mem::take(&mut e.stats.consecutive_failures) > 0;
        let recovered = e.recovering && !e.ejected(now);
        if recovered {
            e.recovering = false;
        }
        had_failed || recovered
    })
}

pub(crate) fn cluster_requests(cluster: &str, seconds: u32) -> u64 {
    with(|s| {
        let now = s.monotonic_ns / 1_000_000_000;
        (0..u64::from(seconds.clamp(1, 60)))
            .filter_map(|back| now.checked_sub(back))
            .filter_map(|second| s.cluster_requests.get(&(cluster.to_owned(), second)))
            .sum()
    })
}

pub(crate) fn eject_endpoint(id: u32, ms: u32) -> bool {
    with(|s| {
        let until = s
            .monotonic_ns
            .saturating_add(u64::from(ms).saturating_mul(1_000_000));
        match s.endpoints.get_mut(&id) {
            Some(e) => {
                e.ejected_until_ns = e.ejected_until_ns.max(until);
                e.recovering = true;
                s.ejections.push((id, ms));
                true
            }
            None => false,
        }
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn define_metric(
    kind: MetricKind,
    name: &str,
    _help: &str,
    labels: &[&str],
) -> Result<u32, String> {
    if !valid_name(name) {
        return Err(format!("invalid metric name `{name}`"));
    }
    if let Some(bad) = labels.iter().find(|l| !valid_name(l)) {
        return Err(format!("invalid label name `{bad}`"));
    }
    with(|s| {
        if let Some((id, def)) = s.metrics.iter().enumerate().find(|(_, d)| d.name == name) {
            if def.kind == kind && def.labels.iter().eq(labels.iter()) {
                return u32::try_from(id).map_err(|e| e.to_string());
            }
            return Err(format!(
                "`{name}` is already defined as a {:?} with labels {:?}",
                def.kind, def.labels
            ));
        }
        s.metrics.push(MetricDef {
            kind,
            name: name.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        });
        u32::try_from(s.metrics.len() - 1).map_err(|e| e.to_string())
    })
}
pub(crate) fn record_metric(id: u32, label_values: &[&str], value: f64) -> Result<(), String> {
    with(|s| {
        let def = s
            .metrics
            .get(id as usize)
            .ok_or_else(|| format!("unknown metric id {id}"))?;
        if def.labels.len() != label_values.len() {
            return Err(format!(
                "{} label values for {} labels",
                label_values.len(),
                def.labels.len()
            ));
        }
        if !value.is_finite() {
            return Err(format!("value {value} is not finite"));
        }
        let kind = def.kind;
        let key = (id, label_values.iter().map(|v| (*v).to_owned()).collect());
        match kind {
            MetricKind::Counter => {
                if value < 0.0 {
                    return Err(format!("a counter cannot go down (by {value})"));
                }
                match s.series.entry(key).or_insert(Series::Value(0.0)) {
                    Series::Value(v) => *v += value,
                    Series::Observations(_) => {}
                }
            }
            MetricKind::Gauge => {
                s.series.insert(key, Series::Value(value));
            }
            MetricKind::Histogram => {
                match s
                    .series
                    .entry(key)
                    .or_insert(Series::Observations(Vec::new()))
                {
                    Series::Observations(o) => o.push(value),
                    Series::Value(_) => {}
                }
            }
        }
        Ok(())
    })
}

pub(crate) fn store_get(key: &str) -> Option<Vec<u8>> {
    with(|s| s.store_live(key).map(|e| e.value.clone()))
}
pub(crate) fn store_set(key: &str, value: &[u8], ttl_ms: u64) {
    with(|s| {
        let expires_ns = s.expiry(ttl_ms);
        s.store.insert(
            key.to_owned(),
            StoreEntry {
                value: value.to_vec(),
                expires_ns,
            },
        );
    });
}
pub(crate) fn store_cas(key: &str, expected: Option<&[u8]>, new: &[u8], ttl_ms: u64) -> bool {
    with(|s| {
        let current = s.store_live(key).map(|e| e.value.as_slice());
        if current != expected {
            return false;
        }
        let expires_ns = s.expiry(ttl_ms);
        s.store.insert(
            key.to_owned(),
            StoreEntry {
                value: new.to_vec(),
                expires_ns,
            },
        );
        true
    })
}
/// Counters are stored as decimal ASCII text, as the host does (`b"42"`); a value that is not a
/// decimal `i64` counts as 0.
pub(crate) fn store_add(key: &str, delta: i64, ttl_ms: u64) -> i64 {
    with(|s| {
        let expires_ns = s.expiry(ttl_ms);
        let entry = match s.store_live(key) {
            Some(e) => e,
            None => s.store.entry(key.to_owned()).or_insert(StoreEntry {
                value: b"0".to_vec(),
                expires_ns,
            }),
        };
        let new = parse_counter(&entry.value).wrapping_add(delta);
        entry.value = new.to_string().into_bytes();
        new
    })
}

/// The value of a counter stored as decimal text; 0 when it is not one.
pub(crate) fn parse_counter(bytes: &[u8]) -> i64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}
pub(crate) fn store_delete(key: &str) {
    with(|s| {
        s.store.remove(key);
    });
}

/// The mock traces every request: nothing to remember.
pub(crate) fn set_traced(_traced: bool) {}

// The export glue's `on-request` bookkeeping (the passed path, the cluster returned as
// `route`, the local reply given to the host) is Wasm-only: the glue is instantiated on wasm32
// only, and under the mock host `path` and `set_cluster` act on the request directly, which is
// what the host makes of them, and the test driver takes `Action::Respond` as it is.
pub(crate) fn begin_request(_path: Option<String>) {}
pub(crate) fn end_request(_continues: bool) -> Option<u32> {
    None
}
pub(crate) fn reply(_reply: crate::types::LocalReply) {}

/// The mock traces every request: span calls record while one is bound.
pub(crate) fn span_set_attribute(key: &str, value: &str) -> bool {
    with(|s| {
        if s.request.is_none() {
            return false;
        }
        s.span_attributes.push((key.to_owned(), value.to_owned()));
        true
    })
}
pub(crate) fn span_add_event(name: &str, attributes: &[(&str, &str)]) -> bool {
    with(|s| {
        if s.request.is_none() {
            return false;
        }
        let attributes = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s.span_events.push((name.to_owned(), attributes));
        true
    })
}

pub(crate) fn duration_ms(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}
