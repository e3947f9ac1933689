//! Host calls through the generated component imports.

use std::time::Duration;

use crate::log::Level;
use crate::metrics::MetricKind;
use crate::types::{ClusterStats, EndpointStats, LocalReply};
use crate::wit::spindle::filter::host;
use crate::wit::spindle::filter::types as wt;

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wt::LogLevel::Trace,
        Level::Debug => wt::LogLevel::Debug,
        Level::Info => wt::LogLevel::Info,
        Level::Warn => wt::LogLevel::Warn,
        Level::Error => wt::LogLevel::Error,
    };
    host::log(level, message);
}

pub(crate) fn method() -> String {
    host::method()
}
pub(crate) fn path() -> String {
    // The path `on-request` was called with is handed out once, without a copy; a second
    // read in the same hook asks the host.
    PASSED_PATH
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(host::path)
}
pub(crate) fn set_path(path: &str) {
    PASSED_PATH.with(|p| *p.borrow_mut() = None);
    host::set_path(path);
}
pub(crate) fn authority() -> Option<String> {
    host::authority()
}
pub(crate) fn client_address() -> String {
    host::client_address()
}
pub(crate) fn request_header(name: &str) -> Option<String> {
    host::request_header(name)
}
pub(crate) fn request_header_all(name: &str) -> Vec<String> {
    host::request_header_all(name)
}
pub(crate) fn set_request_header(name: &str, value: &str) {
    host::set_request_header(name, value);
}
pub(crate) fn add_request_header(name: &str, value: &str) {
    host::add_request_header(name, value);
}
pub(crate) fn remove_request_header(name: &str) {
    host::remove_request_header(name);
}
pub(crate) fn cluster() -> Option<String> {
    match ROUTE.get() {
        Some(Some(n)) => ref_name(n),
        _ => host::cluster(),
    }
}
pub(crate) fn set_cluster(name: &str) {
    // In `on-request`, the cluster's number is kept to be returned as `route`.
    if ROUTE.get().is_some() {
        if let Some(n) = cluster_ref(name) {
            ROUTE.set(Some(Some(n)));
            return;
        }
        // Past what the host numbers: the host call below sets it, and a number kept earlier in
        // this hook must not override it.
        ROUTE.set(Some(None));
    }
    host::set_cluster(name);
}

/// How many cluster numbers an instance keeps (a router knows a few clusters; past this, a
/// name is set through the `set-cluster` host call).
const MAX_REFS: usize = 256;

/// The host's number for a cluster name, asked once per name and kept.
fn cluster_ref(name: &str) -> Option<u32> {
    REFS.with(|refs| {
        let mut refs = refs.borrow_mut();
        if let Some((_, n)) = refs.iter().find(|(known, _)| **known == *name) {
            return Some(*n);
        }
        if refs.len() >= MAX_REFS {
            return None;
        }
        let n = host::cluster_ref(name)?;
        refs.push((name.into(), n));
        Some(n)
    })
}

/// The name behind a number `cluster_ref` gave.
fn ref_name(n: u32) -> Option<String> {
    REFS.with(|refs| {
        refs.borrow()
            .iter()
            .find(|(_, known)| *known == n)
            .map(|(name, _)| name.to_string())
    })
}

thread_local! {
    // During `on-request`: the path the host passed (for a filter that declared
    // `request-path`), until the filter first reads it.
    static PASSED_PATH: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
    // During `on-request`: `Some`, holding the number of the cluster the filter chose (if it
    // did), which the hook returns as `route` instead of a `set-cluster` host call. `None`
    // outside it.
    static ROUTE: std::cell::Cell<Option<Option<u32>>> = const { std::cell::Cell::new(None) };
    // The cluster names this instance had numbered by `cluster-ref`.
    static REFS: std::cell::RefCell<Vec<(Box<str>, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Entering `on-request`, with the path the host passed.
pub(crate) fn begin_request(path: Option<String>) {
    PASSED_PATH.with(|p| *p.borrow_mut() = path);
    ROUTE.set(Some(None));
}

/// Leaving `on-request`: the number of the cluster the filter chose during it, if it did and
/// the chain goes on (`continues`); when it does not, the choice is made through the host
/// call (rare: a local reply or a delay after choosing).
pub(crate) fn end_request(continues: bool) -> Option<u32> {
    PASSED_PATH.with(|p| *p.borrow_mut() = None);
    let n = ROUTE.take().flatten()?;
    if continues {
        return Some(n);
    }
    if let Some(name) = ref_name(n) {
        host::set_cluster(&name);
    }
    None
}

/// The local reply `on-request` answers with (`request-action::respond`).
pub(crate) fn reply(reply: LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    host::reply(wt::LocalReply {
        status: reply.status,
        headers: &headers,
        body: &reply.body,
    });
}
pub(crate) fn set_per_try_timeout(ms: u32) {
    host::set_per_try_timeout(ms);
}
pub(crate) fn request_id() -> String {
    host::request_id()
}
pub(crate) fn request_var(name: &str) -> Option<String> {
    host::request_var(name)
}
pub(crate) fn set_request_var(name: &str, value: &str) {
    host::set_request_var(name, value);
}

pub(crate) fn response_status() -> Option<u16> {
    host::response_status()
}
pub(crate) fn set_response_status(status: u16) {
    host::set_response_status(status);
}
pub(crate) fn response_header(name: &str) -> Option<String> {
    host::response_header(name)
}
pub(crate) fn set_response_header(name: &str, value: &str) {
    host::set_response_header(name, value);
}
pub(crate) fn add_response_header(name: &str, value: &str) {
    host::add_response_header(name, value);
}
pub(crate) fn remove_response_header(name: &str) {
    host::remove_response_header(name);
}

pub(crate) fn now_ms() -> u64 {
    host::now_ms()
}
pub(crate) fn monotonic_ns() -> u64 {
    host::monotonic_ns()
}
pub(crate) fn random_u64() -> u64 {
    host::random_u64()
}

pub(crate) fn endpoint_stats(id: u32) -> Option<EndpointStats> {
    host::endpoint_stats(id).map(|s| EndpointStats {
        in_flight: s.in_flight,
        ewma: Duration::from_nanos(s.ewma_ns),
        consecutive_failures: s.consecutive_failures,
        ejected: s.ejected,
        total_requests: s.total_requests,
        total_failures: s.total_failures,
    })
}
pub(crate) fn endpoint_address(id: u32) -> Option<String> {
    host::endpoint_address(id)
}
pub(crate) fn cluster_stats(cluster: &str) -> Option<ClusterStats> {
    host::cluster_stats(cluster).map(|s| ClusterStats {
        endpoints: s.endpoints,
        ejected: s.ejected,
        in_flight: s.in_flight,
    })
}
pub(crate) fn cluster_requests(cluster: &str, seconds: u32) -> u64 {
    host::cluster_requests(cluster, seconds)
}
pub(crate) fn eject_endpoint(id: u32, ms: u32) -> bool {
    host::eject_endpoint(id, ms)
}

pub(crate) fn define_metric(
    kind: MetricKind,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<u32, String> {
    let kind = match kind {
        MetricKind::Counter => wt::MetricKind::Counter,
        MetricKind::Gauge => wt::MetricKind::Gauge,
        MetricKind::Histogram => wt::MetricKind::Histogram,
    };
    host::define_metric(kind, name, help, labels)
}
pub(crate) fn record_metric(id: u32, label_values: &[&str], value: f64) -> Result<(), String> {
    host::record_metric(id, label_values, value)
}

pub(crate) fn store_get(key: &str) -> Option<Vec<u8>> {
    host::store_get(key)
}
pub(crate) fn store_set(key: &str, value: &[u8], ttl_ms: u64) {
    host::store_set(key, value, ttl_ms);
}
pub(crate) fn store_cas(key: &str, expected: Option<&[u8]>, new: &[u8], ttl_ms: u64) -> bool {
    host::store_cas(key, expected, new, ttl_ms)
}
pub(crate) fn store_add(key: &str, delta: i64, ttl_ms: u64) -> i64 {
    host::store_add(key, delta, ttl_ms)
}
pub(crate) fn store_delete(key: &str) {
    host::store_delete(key);
}

thread_local! {
    // The current hook's `traced`: whether span calls would record. Set on entry to every
    // request hook; outside one (init, endpoints-changed) span calls record nothing anyway.
    static TRACED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn set_traced(traced: bool) {
    TRACED.with(|t| t.set(traced));
}

// Untraced, span calls would be host calls that record nothing: skipped.
pub(crate) fn span_set_attribute(key: &str, value: &str) -> bool {
    TRACED.with(std::cell::Cell::get) && host::span_set_attribute(key, value)
}
pub(crate) fn span_add_event(name: &str, attributes: &[(&str, &str)]) -> bool {
    TRACED.with(std::cell::Cell::get) && host::span_add_event(name, attributes)
}
