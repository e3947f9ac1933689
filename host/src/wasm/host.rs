//! The host side of the ABI: what a filter instance can call.
//!
//! Every call that is about "the current request" reads the [`RequestCtx`]
//! bound to the instance for the duration of a hook. Bad input from a guest
//! (invalid header names, oversized values) is ignored and logged, never a
//! host panic.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

use super::bindings::spindle::filter::host::Host;
use super::bindings::spindle::filter::types::{
    ClusterStats, EndpointStats, LocalReply, LogLevel, MetricKind,
};
use super::store::SharedStore;
use crate::FastMap;
use crate::chain::{MAX_VAR_BYTES, MAX_VARS, RequestCtx};
use crate::telemetry::{FilterMetrics, Kind, Metrics};
use crate::upstream::Upstreams;

/// What every instance of every filter shares.
pub struct HostEnv {
    pub store: SharedStore,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub start: Instant,
    /// The numbers `cluster-ref` gives names, for `request-action::route`.
    pub cluster_refs: ClusterRefs,
}

/// Cluster names numbered for `request-action::route` (`cluster-ref`): a name keeps its
/// number for the process's life, reloads included, so that instances may keep it. Names are
/// never forgotten, hence the bound.
#[derive(Default)]
pub struct ClusterRefs {
    inner: RwLock<Refs>,
}

#[derive(Default)]
struct Refs {
    numbers: FastMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl ClusterRefs {
    /// How many names the host numbers.
    pub const MAX: usize = 4096;

    /// The number of `name`, given now if it has none; `None` once `MAX` names have one.
    pub fn number(&self, name: &str) -> Option<u32> {
        if let Some(n) = read(&self.inner).numbers.get(name) {
            return Some(*n);
        }
        let mut refs = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = refs.numbers.get(name) {
            return Some(*n);
        }
        if refs.names.len() >= Self::MAX {
            return None;
        }
        let n = refs.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        refs.names.push(name.clone());
        refs.numbers.insert(name, n);
        Some(n)
    }

    /// The name numbered `n`.
    pub fn name(&self, n: u32) -> Option<Arc<str>> {
        read(&self.inner).names.get(n as usize).cloned()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// The data of one instance's `Store`.
pub struct HostState {
    pub filter: Arc<str>,
    pub env: Arc<HostEnv>,
    pub filter_metrics: Arc<FilterMetrics>,
    /// The request bound for the current hook call, if any.
    pub req: Option<Box<RequestCtx>>,
    pub memory_limit: usize,
    /// Set when the guest tried to grow past `memory_limit`.
    pub memory_exceeded: bool,
    /// The call's deadline watch: see [`super::filter`]'s deadline callback.
    pub deadline: DeadlineWatch,
    /// What `reply` gave during the current `on-request`.
    pub reply: Option<LocalReply>,
}

/// What the epoch-deadline callback remembers during one guest call.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeadlineWatch {
    /// The thread's CPU time when the deadline first passed (0: not yet).
    pub cpu_mark_ns: u64,
    /// How often the deadline was extended for a thread that did not run.
    pub extensions: u32,
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            wasmtime::bail!(
                "filter `{}` reached its memory limit of {} MiB",
                self.filter,
                self.memory_limit >> 20
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

impl HostState {
    fn bad_input(&self, what: &str) {
        tracing::debug!(filter = %self.filter, "ignored bad input from filter: {what}");
    }

    fn set_header(&mut self, response: bool, name: &str, value: &str, append: bool) {
        if value.len() > MAX_HEADER_VALUE_BYTES {
            self.bad_input("header value too long");
            return;
        }
        let (Some(n), Ok(v)) = (header_name(name), HeaderValue::from_str(value)) else {
            self.bad_input("invalid header name or value");
            return;
        };
        let headers = match (&mut self.req, response) {
            (Some(r), false) => r.headers_mut(),
            (Some(r), true) => match &mut r.response {
                Some(resp) => &mut resp.headers,
                None => return,
            },
            (None, _) => return,
        };
        // A filter cannot grow a request without bound (and HeaderMap panics
        // past 32,768 entries).
        if headers.len() >= MAX_HEADERS && (append || !headers.contains_key(&n)) {
            self.bad_input("too many headers");
            return;
        }
        if append {
            headers.append(n, v);
        } else {
            headers.insert(n, v);
        }
    }
}

/// Bounds on what filters may add to a request or response.
pub const MAX_HEADERS: usize = 1024;
pub const MAX_HEADER_VALUE_BYTES: usize = 64 * 1024;

impl Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        let filter = &*self.filter;
        match level {
            LogLevel::Trace => tracing::trace!(filter, "{message}"),
            LogLevel::Debug => tracing::debug!(filter, "{message}"),
            LogLevel::Info => tracing::info!(filter, "{message}"),
            LogLevel::Warn => tracing::warn!(filter, "{message}"),
            LogLevel::Error => tracing::error!(filter, "{message}"),
        }
    }

    fn span_set_attribute(&mut self, key: String, value: String) -> bool {
        match self.req.as_mut().and_then(|r| r.trace.as_mut()) {
            Some(t) => crate::telemetry::trace::filter_attribute(t, &key, &value),
            None => false,
        }
    }

    fn span_add_event(&mut self, name: String, attributes: Vec<(String, String)>) -> bool {
        let filter = self.filter.clone();
        match self.req.as_mut().and_then(|r| r.trace.as_mut()) {
            Some(t) => crate::telemetry::trace::filter_event(t, &filter, &name, &attributes),
            None => false,
        }
    }

    fn method(&mut self) -> String {
        self.req
            .as_ref()
            .map(|r| r.head.method.to_string())
            .unwrap_or_default()
    }

    fn path(&mut self) -> String {
        self.req
            .as_ref()
            .map(|r| r.path().to_string())
            .unwrap_or_default()
    }

    fn set_path(&mut self, path: String) {
        let Some(r) = self.req.as_mut() else { return };
        let Ok(pq) = path.parse::<http::uri::PathAndQuery>() else {
            self.bad_input("invalid path");
            return;
        };
        let mut parts = r.head.uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            r.head.uri = uri;
        }
    }

    fn authority(&mut self) -> Option<String> {
        self.req
            .as_ref()
            .and_then(|r| r.authority().map(str::to_string))
    }

    fn client_address(&mut self) -> String {
        self.req
            .as_ref()
            .map(|r| r.client.to_string())
            .unwrap_or_default()
    }

    fn request_header(&mut self, name: String) -> Option<String> {
        let r = self.req.as_ref()?;
        let v = r.header(&name)?;
        Some(String::from_utf8_lossy(v).into_owned())
    }

    fn request_header_all(&mut self, name: String) -> Vec<String> {
        let Some(r) = self.req.as_ref() else {
            return Vec::new();
        };
        r.header_all(&name)
            .into_iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    fn set_request_header(&mut self, name: String, value: String) {
        self.set_header(false, &name, &value, false);
    }

    fn add_request_header(&mut self, name: String, value: String) {
        self.set_header(false, &name, &value, true);
    }

    fn remove_request_header(&mut self, name: String) {
        if let Some(r) = self.req.as_mut() {
            r.headers_mut().remove(name.as_str());
        }
    }

    fn cluster(&mut self) -> Option<String> {
        self.req
            .as_ref()
            .and_then(|r| r.cluster.as_deref().map(str::to_string))
    }

    fn set_cluster(&mut self, name: String) {
        if let Some(r) = self.req.as_mut() {
            r.cluster = Some(Arc::from(name));
        }
    }

    fn cluster_ref(&mut self, name: String) -> Option<u32> {
        self.env.cluster_refs.number(&name)
    }

    fn reply(&mut self, reply: LocalReply) {
        self.reply = Some(reply);
    }

    fn set_per_try_timeout(&mut self, ms: u32) {
        if let Some(r) = self.req.as_mut() {
            r.per_try_timeout = Some(Duration::from_millis(u64::from(ms.max(1))));
        }
    }

    fn request_id(&mut self) -> String {
        self.req
            .as_ref()
            .map(|r| r.request_id.to_string())
            .unwrap_or_default()
    }

    fn request_var(&mut self, name: String) -> Option<String> {
        let r = self.req.as_ref()?;
        r.vars
            .iter()
            .find(|(f, n, _)| **f == *self.filter && *n == name)
            .map(|(_, _, v)| v.clone())
    }

    fn set_request_var(&mut self, name: String, value: String) {
        if name.len() + value.len() > MAX_VAR_BYTES {
            self.bad_input("request variable too large");
            return;
        }
        let filter = self.filter.clone();
        let Some(r) = self.req.as_mut() else { return };
        if let Some(slot) = r
            .vars
            .iter_mut()
            .find(|(f, n, _)| *f == filter && *n == name)
        {
            slot.2 = value;
        } else if r.vars.len() < MAX_VARS {
            r.vars.push((filter, name, value));
        } else {
            self.bad_input("too many request variables");
        }
    }

    fn response_status(&mut self) -> Option<u16> {
        self.req
            .as_ref()?
            .response
            .as_ref()
            .map(|r| r.status.as_u16())
    }

    fn set_response_status(&mut self, status: u16) {
        let Ok(s) = http::StatusCode::from_u16(status) else {
            self.bad_input("invalid status");
            return;
        };
        if let Some(resp) = self.req.as_mut().and_then(|r| r.response.as_mut()) {
            resp.status = s;
        }
    }

    fn response_header(&mut self, name: String) -> Option<String> {
        let resp = self.req.as_ref()?.response.as_ref()?;
        let v = resp.headers.get(name.as_str())?;
        Some(String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn set_response_header(&mut self, name: String, value: String) {
        self.set_header(true, &name, &value, false);
    }

    fn add_response_header(&mut self, name: String, value: String) {
        self.set_header(true, &name, &value, true);
    }

    fn remove_response_header(&mut self, name: String) {
        if let Some(resp) = self.req.as_mut().and_then(|r| r.response.as_mut()) {
            resp.headers.remove(name.as_str());
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn monotonic_ns(&mut self) -> u64 {
        self.env.start.elapsed().as_nanos() as u64
    }

    fn random_u64(&mut self) -> u64 {
        rand::random()
    }

    fn endpoint_stats(&mut self, id: u32) -> Option<EndpointStats> {
        let e = self.env.upstreams.endpoint(id)?;
        let now = self.env.upstreams.now_ms();
        Some(EndpointStats {
            in_flight: e.in_flight.load(Ordering::Relaxed),
            ewma_ns: e.ewma_ns.load(Ordering::Relaxed),
            consecutive_failures: e.consecutive_failures.load(Ordering::Relaxed),
            ejected: e.is_ejected(now),
            total_requests: e.total.load(Ordering::Relaxed),
            total_failures: e.failures.load(Ordering::Relaxed),
        })
    }

    fn endpoint_address(&mut self, id: u32) -> Option<String> {
        self.env.upstreams.endpoint(id).map(|e| e.address.clone())
    }

    fn cluster_stats(&mut self, cluster: String) -> Option<ClusterStats> {
        let c = self.env.upstreams.cluster(&cluster)?;
        let now = self.env.upstreams.now_ms();
        let endpoints = c.members().len() as u32;
        let healthy = c.healthy(now).endpoints.len() as u32;
        Some(ClusterStats {
            endpoints,
            ejected: endpoints.saturating_sub(healthy),
            in_flight: c.in_flight(),
        })
    }

    fn cluster_requests(&mut self, cluster: String, seconds: u32) -> u64 {
        self.env.upstreams.cluster(&cluster).map_or(0, |c| {
            c.requests
                .sum(self.env.upstreams.now_secs(), u64::from(seconds))
        })
    }

    fn eject_endpoint(&mut self, id: u32, ms: u32) -> bool {
        self.env.upstreams.eject(id, ms)
    }

    fn define_metric(
        &mut self,
        kind: MetricKind,
        name: String,
        help: String,
        labels: Vec<String>,
    ) -> Result<u32, String> {
        let kind = match kind {
            MetricKind::Counter => Kind::Counter,
            MetricKind::Gauge => Kind::Gauge,
            MetricKind::Histogram => Kind::Histogram,
        };
        self.filter_metrics.define(kind, &name, &help, &labels)
    }

    fn record_metric(
        &mut self,
        id: u32,
        label_values: Vec<String>,
        value: f64,
    ) -> Result<(), String> {
        self.filter_metrics.record(id, label_values, value)
    }

    fn store_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.env.store.get(&key)
    }

    fn store_set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) {
        if let Err(e) = self.env.store.set(key, value, ttl_ms) {
            self.bad_input(&e.to_string());
        }
    }

    fn store_cas(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: u64,
    ) -> bool {
        match self.env.store.cas(key, expected.as_deref(), new, ttl_ms) {
            Ok(b) => b,
            Err(e) => {
                self.bad_input(&e.to_string());
                false
            }
        }
    }

    fn store_add(&mut self, key: String, delta: i64, ttl_ms: u64) -> i64 {
        match self.env.store.add(key, delta, ttl_ms) {
            Ok(v) => v,
            Err(e) => {
                self.bad_input(&e.to_string());
                0
            }
        }
    }

    fn store_delete(&mut self, key: String) {
        self.env.store.delete(&key);
    }
}

impl super::bindings::spindle::filter::types::Host for HostState {}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::telemetry::Metrics;

    fn state() -> HostState {
        let metrics = Arc::new(Metrics::default());
        let env = Arc::new(HostEnv {
            store: SharedStore::default(),
            upstreams: Arc::new(Upstreams::new(Instant::now())),
            metrics: metrics.clone(),
            start: Instant::now(),
            cluster_refs: ClusterRefs::default(),
        });
        let (head, ()) = http::Request::new(()).into_parts();
        let client: SocketAddr = "127.0.0.1:1".parse().expect("address");
        HostState {
            filter: Arc::from("f"),
            env,
            filter_metrics: metrics.filter("f"),
            req: Some(Box::new(RequestCtx::new(
                head,
                client,
                crate::chain::RequestId::given(b"id").expect("a valid id"),
            ))),
            memory_limit: 1 << 20,
            memory_exceeded: false,
            deadline: DeadlineWatch::default(),
            reply: None,
        }
    }

    #[test]
    fn cluster_refs_number_each_name_once_up_to_the_bound() {
        let refs = ClusterRefs::default();
        let api = refs.number("api").expect("a number");
        let web = refs.number("web").expect("a number");
        assert_ne!(api, web);
        assert_eq!(
            refs.number("api"),
            Some(api),
            "the same name, the same number"
        );
        assert_eq!(refs.name(api).as_deref(), Some("api"));
        assert_eq!(refs.name(web).as_deref(), Some("web"));
        assert_eq!(refs.name(u32::MAX), None);
        for i in 2..ClusterRefs::MAX {
            assert!(refs.number(&format!("c{i}")).is_some());
        }
        assert_eq!(refs.number("one-too-many"), None, "bounded");
        assert_eq!(refs.number("web"), Some(web), "numbered names keep theirs");
    }

    #[test]
    fn a_filter_cannot_grow_headers_without_bound() {
        let mut s = state();
        for i in 0..(MAX_HEADERS + 500) {
            s.add_request_header("x-flood".into(), i.to_string());
        }
        s.set_request_header("x-new".into(), "1".into());
        s.set_request_header("x-huge".into(), "v".repeat(MAX_HEADER_VALUE_BYTES + 1));
        s.set_request_header("bad name".into(), "1".into());
        let headers = &s.req.as_ref().expect("bound request").head.headers;
        assert_eq!(headers.len(), MAX_HEADERS);
        assert!(!headers.contains_key("x-new"));
        // Replacing an existing header is still allowed at the cap.
        s.set_request_header("x-flood".into(), "only".into());
        let headers = &s.req.as_ref().expect("bound request").head.headers;
        assert_eq!(headers.get_all("x-flood").iter().count(), 1);
    }

    #[test]
    fn request_headers_are_read_from_the_clients_head_until_one_changes() {
        let mut s = state();
        let raw = crate::http1::RawHead::of_request(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        );
        s.req.as_mut().expect("bound request").raw = Some(raw);
        assert_eq!(s.request_header("x-a".into()), Some("1".into()));
        assert_eq!(s.request_header("HOST".into()), Some("x".into()));
        assert_eq!(s.request_header_all("X-A".into()), ["1", "2"]);
        assert_eq!(s.request_header("x-none".into()), None);
        assert!(
            s.req.as_ref().expect("bound request").raw.is_some(),
            "reading builds no map"
        );
        s.set_request_header("x-b".into(), "3".into());
        let r = s.req.as_ref().expect("bound request");
        assert!(r.raw.is_none(), "a change moves the headers into the map");
        assert_eq!(r.head.headers["host"], "x");
        assert_eq!(r.head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(r.head.headers["x-b"], "3");
        s.remove_request_header("X-A".into());
        assert_eq!(s.request_header_all("x-a".into()), Vec::<String>::new());
        assert_eq!(s.request_header("x-b".into()), Some("3".into()));
    }

    #[test]
    fn request_vars_are_per_filter_and_bounded() {
        let mut s = state();
        s.set_request_var("k".into(), "v".into());
        assert_eq!(s.request_var("k".into()).as_deref(), Some("v"));
        s.set_request_var("big".into(), "x".repeat(MAX_VAR_BYTES + 1));
        assert_eq!(s.request_var("big".into()), None);
        s.filter = Arc::from("other");
        assert_eq!(
            s.request_var("k".into()),
            None,
            "another filter's var is private"
        );
    }
}
