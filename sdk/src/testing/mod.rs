//! A native mock host, so that a filter crate's own `cargo test` drives its hooks without Wasm.
//!
//! On targets other than `wasm32` every host call of the SDK goes to a mock host kept per thread
//! (each `#[test]` runs on its own thread). [`MockHost::new`] resets it and returns a handle to
//! set it up and inspect it: the request, endpoints and their stats, the shared store, a
//! controllable clock and seeded randomness, metrics, ejections and logs.
//!
//! [`MockHost::load`] runs a filter's `init` as the host does (config as JSON, decoded by the SDK)
//! and returns a [`TestFilter`], which calls the hooks as the host would: only those the filter
//! declares, and with `endpoints_changed` before a pick whenever the pickable set of the cluster
//! changed since this instance last saw it. Two `TestFilter`s of one type are two instances
//! sharing the host (store, request variables), as in Spindle.
//!
//! ```
//! use spindle_sdk::testing::{MockHost, TestRequest};
//! use spindle_sdk::{Action, Filter, Request};
//!
//! struct Tag;
//!
//! #[spindle_sdk::filter]
//! impl Filter for Tag {
//!     type Config = spindle_sdk::NoConfig;
//!     fn new(_: Self::Config) -> Result<Self, spindle_sdk::InitError> { Ok(Tag) }
//!     fn on_request(&mut self, req: &mut Request) -> Action {
//!         let method = req.method();
//!         req.set_header("x-method", &method);
//!         Action::Continue
//!     }
//! }
//!
//! let host = MockHost::new();
//! let mut tag = host.load::<Tag>(serde_json::json!({})).unwrap();
//! host.start_request(TestRequest::get("/"));
//! assert_eq!(tag.on_request(), Action::Continue);
//! assert_eq!(host.request_header("x-method").as_deref(), Some("GET"));
//! ```

mod driver;
mod state;
pub(crate) mod sys;

use std::marker::PhantomData;
use std::time::Duration;

pub use self::driver::TestFilter;
use self::state::{EndpointState, RequestState, ResponseState, Series, StoreEntry, with};
use crate::filter::{Filter, InitError};
use crate::log::Level;
use crate::metrics::MetricKind;
use crate::runtime;
use crate::types::{Endpoint, EndpointStats};

/// A handle to this thread's mock host. Cheap; every handle sees the same state.
#[derive(Debug)]
pub struct MockHost {
    // The state is per thread: keep the handle on the thread that made it.
    _not_send: PhantomData<*const ()>,
}

/// A request to start with [`MockHost::start_request`].
///
/// ```
/// use spindle_sdk::testing::TestRequest;
/// let req = TestRequest::new("POST", "/api/orders")
///     .header("content-type", "application/json")
///     .authority("shop.example")
///     .client_address("192.0.2.7:40000");
/// ```
#[derive(Debug, Clone)]
pub struct TestRequest(RequestState);

impl TestRequest {
    /// A request with this method and path, from `127.0.0.1:50000`, id `test-request`.
    pub fn new(method: &str, path: &str) -> TestRequest {
        TestRequest(RequestState {
            method: method.to_owned(),
            path: path.to_owned(),
            client_address: "127.0.0.1:50000".to_owned(),
            request_id: "test-request".to_owned(),
            ..RequestState::default()
        })
    }

    /// A `GET` of `path`.
    pub fn get(path: &str) -> TestRequest {
        TestRequest::new("GET", path)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.0
            .headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the URI's authority (else the `host` header stands for it).
    pub fn authority(mut self, authority: &str) -> TestRequest {
        self.0.authority = Some(authority.to_owned());
        self
    }

    /// Sets the downstream peer address.
    pub fn client_address(mut self, address: &str) -> TestRequest {
        self.0.client_address = address.to_owned();
        self
    }

    /// Sets the cluster chosen so far (as if an earlier filter had routed it).
    pub fn cluster(mut self, cluster: &str) -> TestRequest {
        self.0.cluster = Some(cluster.to_owned());
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, id: &str) -> TestRequest {
        self.0.request_id = id.to_owned();
        self
    }
}

/// An ejection a filter asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// The endpoint.
    pub endpoint: u32,
    /// For how long.
    pub duration: Duration,
}

impl MockHost {
    /// Resets this thread's mock host and returns a handle to it.
    ///
    /// The clock starts at a fixed wall time (2023-11-14T22:13:20Z) and one second of monotonic
    /// time; randomness is a fixed-seed generator, so tests are reproducible.
    #[allow(clippy::new_without_default)]
    pub fn new() -> MockHost {
        state::reset();
        MockHost {
            _not_send: PhantomData,
        }
    }

    // ---- filters -------------------------------------------------------------

    /// Starts an instance of `F` with this config, as the host does (through the SDK's JSON
    /// decoding, so unknown keys are errors exactly as in Spindle).
    pub fn load<F: Filter>(&self, config: serde_json::Value) -> Result<TestFilter<F>, InitError> {
        let filter = driver::in_filter::<F, _>(|| runtime::init_value::<F>(config))?;
        Ok(TestFilter::new(filter))
    }

    /// Starts an instance of `F` from config JSON text (what the host passes to `init`).
    pub fn load_json<F: Filter>(&self, config: &str) -> Result<TestFilter<F>, InitError> {
        let filter = driver::in_filter::<F, _>(|| runtime::init::<F>(config))?;
        Ok(TestFilter::new(filter))
    }

    // ---- the request and the response ----------------------------------------------

    /// Starts a request: hooks see it until the next `start_request` or [`end_request`]
    /// (request variables and any response are cleared).
    ///
    /// [`end_request`]: MockHost::end_request
    pub fn start_request(&self, request: TestRequest) {
        with(|s| {
            s.request = Some(request.0);
            s.response = None;
            s.vars.clear();
            s.span_attributes.clear();
            s.span_events.clear();
        });
    }

    /// Ends the current request: request getters return nothing again.
    pub fn end_request(&self) {
        with(|s| {
            s.request = None;
            s.response = None;
            s.vars.clear();
        });
    }

    /// Sets the response head hooks see in `on_response`.
    pub fn set_response(&self, status: u16, headers: &[(&str, &str)]) {
        with(|s| {
            s.response = Some(ResponseState {
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
                    .collect(),
            });
        });
    }

    /// The span attributes filters added during the current request, in order.
    pub fn span_attributes(&self) -> Vec<(String, String)> {
        with(|s| s.span_attributes.clone())
    }

    /// The span attribute `key` as last set during the current request.
    pub fn span_attribute(&self, key: &str) -> Option<String> {
        with(|s| {
            s.span_attributes
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        })
    }

    /// The span events filters added during the current request: name and attributes.
    pub fn span_events(&self) -> Vec<(String, Vec<(String, String)>)> {
        with(|s| s.span_events.clone())
    }

    /// The request's method now.
    pub fn method(&self) -> Option<String> {
        with(|s| s.request.as_ref().map(|r| r.method.clone()))
    }

    /// The request's path now (after any `set_path`).
    pub fn path(&self) -> Option<String> {
        with(|s| s.request.as_ref().map(|r| r.path.clone()))
    }

    /// The first value of a request header now.
    pub fn request_header(&self, name: &str) -> Option<String> {
        sys::request_header(name)
    }

    /// Every request header now, names lowercased, in order.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        with(|s| {
            s.request
                .as_ref()
                .map(|r| r.headers.clone())
                .unwrap_or_default()
        })
    }

    /// The cluster the request is routed to now.
    pub fn cluster(&self) -> Option<String> {
        sys::cluster()
    }

    /// The per-try timeout a filter set on the request, if any.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        with(|s| s.request.as_ref()?.per_try_timeout_ms.map(sys::duration_ms))
    }

    /// A request variable of filter `F` in the current request.
    pub fn request_var<F: Filter>(&self, name: &str) -> Option<String> {
        with(|s| {
            s.vars
                .get(&(std::any::type_name::<F>(), name.to_owned()))
                .cloned()
        })
    }

    /// The response status now.
    pub fn response_status(&self) -> Option<u16> {
        sys::response_status()
    }

    /// The first value of a response header now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        sys::response_header(name)
    }

    // ---- endpoints ------------------------------------------------------------------

    /// Adds an endpoint to `cluster` (creating it) and returns its id (1, 2, ...).
    pub fn add_endpoint(&self, cluster: &str, address: &str, weight: u32) -> u32 {
        with(|s| {
            let id = s.next_endpoint_id;
            s.next_endpoint_id += 1;
            s.endpoints.insert(
                id,
                EndpointState {
                    cluster: cluster.to_owned(),
                    address: address.to_owned(),
                    weight: weight.max(1),
                    stats: EndpointStats::default(),
                    ejected_until_ns: 0,
                    recovering: false,
                },
            );
            id
        })
    }

    /// Counts `n` requests to `cluster` in the current second, as the host counts first
    /// attempts for [`endpoints::cluster_requests`](crate::endpoints::cluster_requests) (the
    /// driver's `on_attempt` counts each first attempt it is given as well).
    pub fn add_requests(&self, cluster: &str, n: u64) {
        with(|s| s.count_requests(cluster, n));
    }

    /// Removes an endpoint (as discovery would).
    pub fn remove_endpoint(&self, id: u32) {
        with(|s| {
            s.endpoints.remove(&id);
        });
    }

    /// The endpoints of `cluster` that may be picked now (not ejected), by id.
    pub fn endpoints(&self, cluster: &str) -> Vec<Endpoint> {
        driver::pickable(cluster)
    }

    /// Changes the host-kept statistics of an endpoint (`ejected` is derived from ejections and
    /// ignored here).
    pub fn update_stats(&self, id: u32, update: impl FnOnce(&mut EndpointStats)) {
        with(|s| {
            if let Some(e) = s.endpoints.get_mut(&id) {
                update(&mut e.stats);
            }
        });
    }

    /// Sets the requests in flight to an endpoint.
    pub fn set_in_flight(&self, id: u32, in_flight: u32) {
        self.update_stats(id, |s| s.in_flight = in_flight);
    }

    /// Every ejection a filter asked for, in order.
    pub fn ejections(&self) -> Vec<Ejection> {
        with(|s| {
            s.ejections
                .iter()
                .map(|&(endpoint, ms)| Ejection {
                    endpoint,
                    duration: sys::duration_ms(ms),
                })
                .collect()
        })
    }

    /// Whether an endpoint is ejected now.
    pub fn is_ejected(&self, id: u32) -> bool {
        sys::endpoint_stats(id).is_some_and(|s| s.ejected)
    }

    // ---- time and randomness ------------------------------------------------------------

    /// Moves both clocks forward (store TTLs and ejections expire accordingly).
    pub fn advance(&self, by: Duration) {
        with(|s| {
            let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            s.monotonic_ns = s.monotonic_ns.saturating_add(ns);
            s.wall_ms = s
                .wall_ms
                .saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
        });
    }

    /// Monotonic time now, nanoseconds.
    pub fn monotonic_ns(&self) -> u64 {
        sys::monotonic_ns()
    }

    /// Reseeds the random generator.
    pub fn seed_random(&self, seed: u64) {
        with(|s| s.rng = seed);
    }

    /// Makes the next `random_u64` calls return these values, in order, before the seeded
    /// generator resumes. To make [`random::below(n)`](crate::random::below) return `k`, queue
    /// [`for_below(k, n)`](MockHost::for_below).
    pub fn queue_random(&self, values: impl IntoIterator<Item = u64>) {
        with(|s| s.queued_random.extend(values));
    }

    /// The `u64` for which [`random::below(n)`](crate::random::below) returns `k` (`k < n`).
    pub fn for_below(k: u64, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // below(n) = (x * n) >> 64: the smallest x with that result is ceil(k * 2^64 / n).
        let x = (u128::from(k) << 64).div_ceil(u128::from(n));
        u64::try_from(x).unwrap_or(u64::MAX)
    }

    // ---- the shared store -------------------------------------------------------------------

    /// A value of the shared store (expired keys are absent).
    pub fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        sys::store_get(key)
    }

    /// A counter of the shared store made by `store::add` (absent: `None`; stored as decimal text,
    /// a value that is not a number reads as 0, as in the host).
    pub fn store_counter(&self, key: &str) -> Option<i64> {
        sys::store_get(key).map(|bytes| sys::parse_counter(&bytes))
    }

    /// Sets a value of the shared store (`ttl` zero: no expiry).
    pub fn store_set(&self, key: &str, value: &[u8], ttl: Duration) {
        with(|s| {
            let expires_ns = s.expiry(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            s.store.insert(
                key.to_owned(),
                StoreEntry {
                    value: value.to_vec(),
                    expires_ns,
                },
            );
        });
    }

    // ---- metrics and logs -------------------------------------------------------------------

    /// The value of a counter series; 0 when never incremented.
    pub fn counter(&self, name: &str, label_values: &[&str]) -> f64 {
        self.value(MetricKind::Counter, name, label_values)
            .unwrap_or(0.0)
    }

    /// The value of a gauge series, if ever set.
    pub fn gauge(&self, name: &str, label_values: &[&str]) -> Option<f64> {
        self.value(MetricKind::Gauge, name, label_values)
    }

    /// The observations of a histogram series, in order.
    pub fn histogram(&self, name: &str, label_values: &[&str]) -> Vec<f64> {
        match self.series(MetricKind::Histogram, name, label_values) {
            Some(Series::Observations(o)) => o,
            _ => Vec::new(),
        }
    }

    /// The names of the metrics defined so far.
    pub fn metric_names(&self) -> Vec<String> {
        with(|s| s.metrics.iter().map(|m| m.name.clone()).collect())
    }

    fn value(&self, kind: MetricKind, name: &str, label_values: &[&str]) -> Option<f64> {
        match self.series(kind, name, label_values)? {
            Series::Value(v) => Some(v),
            Series::Observations(_) => None,
        }
    }

    fn series(&self, kind: MetricKind, name: &str, label_values: &[&str]) -> Option<Series> {
        with(|s| {
            let id = s
                .metrics
                .iter()
                .position(|m| m.name == name && m.kind == kind)?;
            let key = (
                u32::try_from(id).ok()?,
                label_values.iter().map(|v| (*v).to_owned()).collect(),
            );
            s.series.get(&key).cloned()
        })
    }

    /// Every line logged so far, with its level.
    pub fn logs(&self) -> Vec<(Level, String)> {
        with(|s| s.logs.clone())
    }

    /// Whether some logged line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        with(|s| s.logs.iter().any(|(_, line)| line.contains(needle)))
    }
}

#[cfg(test)]
mod tests;
