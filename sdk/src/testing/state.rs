//! The mock host's state: one per thread, reset by [`MockHost::new`](super::MockHost::new).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::log::Level;
use crate::metrics::MetricKind;
use crate::types::EndpointStats;

/// Wall-clock time when a mock host starts: 2023-11-14T22:13:20Z.
pub(crate) const START_WALL_MS: u64 = 1_700_000_000_000;
/// Monotonic time when a mock host starts: one second (so that 0 never means "now").
pub(crate) const START_MONOTONIC_NS: u64 = 1_000_000_000;
const DEFAULT_SEED: u64 = 0x5EED_5EED_5EED_5EED;

pub(crate) struct State {
    pub(crate) wall_ms: u64,
    pub(crate) monotonic_ns: u64,
    pub(crate) rng: u64,
    pub(crate) queued_random: VecDeque<u64>,
    /// The filter whose hook runs now (request variables are private to a filter).
    pub(crate) current_filter: &'static str,
    pub(crate) request: Option<RequestState>,
    pub(crate) response: Option<ResponseState>,
    pub(crate) vars: HashMap<(&'static str, String), String>,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) endpoints: BTreeMap<u32, EndpointState>,
    pub(crate) next_endpoint_id: u32,
    pub(crate) ejections: Vec<(u32, u32)>,
    /// Requests (first attempts) per cluster and monotonic second.
    pub(crate) cluster_requests: HashMap<(String, u64), u64>,
    /// Picks per cluster so far: the next `PickContext::ticket`.
    pub(crate) tickets: HashMap<String, u64>,
    pub(crate) metrics: Vec<MetricDef>,
    pub(crate) series: HashMap<(u32, Vec<String>), Series>,
    pub(crate) store: HashMap<String, StoreEntry>,
    /// What filters added to the current request's span.
    pub(crate) span_attributes: Vec<(String, String)>,
    pub(crate) span_events: Vec<(String, Vec<(String, String)>)>,
}

impl Default for State {
    fn default() -> State {
        State {
            wall_ms: START_WALL_MS,
            monotonic_ns: START_MONOTONIC_NS,
            rng: DEFAULT_SEED,
            queued_random: VecDeque::new(),
            current_filter: "",
            request: None,
            response: None,
            vars: HashMap::new(),
            logs: Vec::new(),
            endpoints: BTreeMap::new(),
            next_endpoint_id: 1,
            ejections: Vec::new(),
            cluster_requests: HashMap::new(),
            tickets: HashMap::new(),
            metrics: Vec::new(),
            series: HashMap::new(),
            store: HashMap::new(),
            span_attributes: Vec::new(),
            span_events: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RequestState {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authority: Option<String>,
    pub(crate) client_address: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) cluster: Option<String>,
    pub(crate) per_try_timeout_ms: Option<u32>,
    pub(crate) request_id: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseState {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct EndpointState {
    pub(crate) cluster: String,
    pub(crate) address: String,
    pub(crate) weight: u32,
    pub(crate) stats: EndpointStats,
    /// Monotonic ns until which the endpoint is ejected.
    pub(crate) ejected_until_ns: u64,
    /// Set by each ejection; cleared by the first outcome that is no failure once it is over.
    pub(crate) recovering: bool,
}

impl State {
    /// Counts `n` requests to `cluster` in the current monotonic second.
    pub(crate) fn count_requests(&mut self, cluster: &str, n: u64) {
        let second = self.monotonic_ns / 1_000_000_000;
        *self
            .cluster_requests
            .entry((cluster.to_owned(), second))
            .or_default() += n;
    }
}

impl EndpointState {
    pub(crate) fn ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns > now_ns
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MetricDef {
    pub(crate) kind: MetricKind,
    pub(crate) name: String,
    pub(crate) labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Series {
    Value(f64),
    Observations(Vec<f64>),
}

#[derive(Debug, Clone)]
pub(crate) struct StoreEntry {
    pub(crate) value: Vec<u8>,
    /// Monotonic ns at which the entry expires; `None`: never.
    pub(crate) expires_ns: Option<u64>,
}

impl State {
    pub(crate) fn next_random(&mut self) -> u64 {
        if let Some(v) = self.queued_random.pop_front() {
            return v;
        }
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn store_live(&mut self, key: &str) -> Option<&mut StoreEntry> {
        let now = self.monotonic_ns;
        if self
            .store
            .get(key)
            .is_some_and(|e| e.expires_ns.is_some_and(|t| t <= now))
        {
            self.store.remove(key);
        }
        self.store.get_mut(key)
    }

    pub(crate) fn expiry(&self, ttl_ms: u64) -> Option<u64> {
        (ttl_ms > 0).then(|| {
            self.monotonic_ns
                .saturating_add(ttl_ms.saturating_mul(1_000_000))
        })
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Runs `f` on this thread's mock state.
///
/// Filter code never holds the borrow across a call back into the filter: each host call is one
/// short borrow, and the driver releases it before running a hook.
pub(crate) fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|cell| f(&mut cell.borrow_mut()))
}

pub(crate) fn reset() {
    with(|s| *s = State::default());
}
