//! Host calls through the generated component imports.

use std::time::Duration;

use crate::log::Level;
use crate::metrics::MetricKind;
use crate::types::{ClusterStats, EndpointStats};
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
    match ROUTE.with(|r| r.borrow().clone()) {
        Some(Some(name)) => Some(name),
        _ => host::cluster(),
    }
}
pub(crate) fn set_cluster(name: &str) {
    let kept = ROUTE.with(|r| match &mut *r.borrow_mut() {
        Some(route) => {
            *route = Some(name.to_owned());
            true
        }
        None => false,
    });
    if !kept {
        host::set_cluster(name);
    }
}

thread_local! {
    // During `on-request`: the path the host passed (for a filter that declared
    // `request-path`), until the filter first reads it.
    static PASSED_PATH: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
    // During `on-request`: `Some`, holding the cluster the filter chose (if it did), which the
    // hook returns as `route` instead of a `set-cluster` host call. `None` outside it.
    static ROUTE: std::cell::RefCell<Option<Option<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Entering `on-request`, with the path the host passed.
pub(crate) fn begin_request(path: Option<String>) {
    PASSED_PATH.with(|p| *p.borrow_mut() = path);
    ROUTE.with(|r| *r.borrow_mut() = Some(None));
}

/// Leaving `on-request`: the cluster the filter chose during it, if it did.
pub(crate) fn end_request() -> Option<String> {
    PASSED_PATH.with(|p| *p.borrow_mut() = None);
    ROUTE.with(|r| r.borrow_mut().take()).flatten()
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
