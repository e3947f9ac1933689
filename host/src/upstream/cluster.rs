//! Clusters, their endpoints, host-kept endpoint stats and ejection.
//!
//! The balancer filter sees a cluster's *healthy set* (members not ejected)
//! only when it changes: every change bumps the cluster's generation, and an
//! instance whose view is older gets `endpoints-changed` before its next pick.

use crate::FastMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::pool::{self, ConnStats, Conns, PoolSettings};
use crate::clock::CoarseSince;
use crate::config::{ClusterConfig, EndpointSpec};
use crate::telemetry::{Collector, Histogram, escape};

/// How an attempt ended, as counted in `spindle_upstream_requests_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Other1xx,
    ConnectFailure,
    Reset,
    Timeout,
    Error,
}

impl AttemptResult {
    const ALL: [AttemptResult; 9] = [
        AttemptResult::Other1xx,
        AttemptResult::Status2xx,
        AttemptResult::Status3xx,
        AttemptResult::Status4xx,
        AttemptResult::Status5xx,
        AttemptResult::ConnectFailure,
        AttemptResult::Reset,
        AttemptResult::Timeout,
        AttemptResult::Error,
    ];

    pub fn from_status(s: u16) -> Self {
        match s {
            200..=299 => AttemptResult::Status2xx,
            300..=399 => AttemptResult::Status3xx,
            400..=499 => AttemptResult::Status4xx,
            500..=599 => AttemptResult::Status5xx,
            _ => AttemptResult::Other1xx,
        }
    }

    fn label(self) -> &'static str {
        match self {
            AttemptResult::Other1xx => "1xx",
            AttemptResult::Status2xx => "2xx",
            AttemptResult::Status3xx => "3xx",
            AttemptResult::Status4xx => "4xx",
            AttemptResult::Status5xx => "5xx",
            AttemptResult::ConnectFailure => "connect_failure",
            AttemptResult::Reset => "reset",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Error => "error",
        }
    }

    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            AttemptResult::Status2xx
                | AttemptResult::Status3xx
                | AttemptResult::Status4xx
                | AttemptResult::Other1xx
        )
    }
}

/// One member of a cluster, with the stats the host keeps for it.
pub struct Endpoint {
    pub id: u32,
    pub cluster: Arc<str>,
    pub address: String,
    pub authority: http::uri::Authority,
    pub weight: u32,
    pub in_flight: AtomicU32,
    /// Its cluster's in-flight total, counted along with `in_flight`.
    cluster_in_flight: Arc<AtomicU32>,
    /// EWMA of latency in ns (0: no sample yet).
    pub ewma_ns: AtomicU64,
    pub consecutive_failures: AtomicU32,
    pub total: AtomicU64,
    pub failures: AtomicU64,
    /// Host-monotonic ms until which the endpoint is ejected; 0 when not.
    pub ejected_until_ms: AtomicU64,
    pub ejections: AtomicU64,
    /// Set by each ejection; the first outcome that is no failure once it is over takes it.
    recovering: AtomicBool,
    results: [AtomicU64; 9],
    removed: AtomicBool,
    /// The address as a socket address, when it needs no name lookup.
    pub(super) socket: Option<std::net::SocketAddr>,
    /// Its idle upstream connections.
    pub(super) conns: Conns,
}

impl Endpoint {
    /// Whether the endpoint has left its cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Records an attempt's outcome in the endpoint's stats. Returns whether it is a failure or
    /// the first success after failures (what `failures-and-recoveries` filters see, with
    /// [`Endpoint::take_recovery`]).
    pub fn record(&self, result: AttemptResult, latency: Duration) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = AttemptResult::ALL.iter().position(|r| *r == result) {
            self.results[i].fetch_add(1, Ordering::Relaxed);
        }
        let notable = if result.is_failure() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            // Read first: a healthy endpoint's counter is not written on every success.
            self.consecutive_failures.load(Ordering::Relaxed) > 0
                && self.consecutive_failures.swap(0, Ordering::Relaxed) > 0
        };
        // EWMA with alpha = 0.3; races between threads lose a sample at worst.
        let sample = latency.as_nanos().min(u64::MAX as u128) as u64;
        let old = self.ewma_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        self.ewma_ns.store(new.max(1), Ordering::Relaxed);
        notable
    }

    /// Whether this success is the first since an ejection of the endpoint ended (its half-open
    /// probe); true once per ejection.
    pub fn take_recovery(&self, now_ms: impl FnOnce() -> u64) -> bool {
        self.recovering.load(Ordering::Relaxed)
            && !self.is_ejected(now_ms())
            && self.recovering.swap(false, Ordering::Relaxed)
    }
}

/// Increments an endpoint's in-flight count for as long as it lives.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn new(e: Arc<Endpoint>) -> Self {
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        e.cluster_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(e)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.cluster_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(0);
static NEXT_CLUSTER_ID: AtomicU32 = AtomicU32::new(1);

/// Seconds a [`RequestWindow`] remembers.
const REQUEST_WINDOW_SECONDS: u64 = 60;
const WINDOW_SLOTS: usize = 64;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A cluster's requests per second over the last minute, for retry budgets: one slot per
/// second (modulo 64), each packing its second and its count in one atomic, so that counting
/// a request is one compare-and-swap and nothing is ever locked.
pub struct RequestWindow {
    slots: [AtomicU64; WINDOW_SLOTS],
}

impl Default for RequestWindow {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestWindow {
    /// Counts one request in `second`.
    pub fn record(&self, second: u64) {
        let (slot, stamp) = self.slot(second);
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current & !COUNT_MASK == stamp {
                // Saturates rather than spill into the stamp (16.7M requests in a second).
                current + u64::from(current & COUNT_MASK < COUNT_MASK)
            } else {
                stamp | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Requests over the `seconds` seconds up to `now` (its own included), at most 60.
    pub fn sum(&self, now: u64, seconds: u64) -> u64 {
        (0..seconds.clamp(1, REQUEST_WINDOW_SECONDS))
            .filter_map(|back| now.checked_sub(back))
            .map(|second| {
                let (slot, stamp) = self.slot(second);
                let v = slot.load(Ordering::Relaxed);
                if v & !COUNT_MASK == stamp {
                    v & COUNT_MASK
                } else {
                    0
                }
            })
            .sum()
    }

    /// The slot of `second`, and the stamp that marks it as that second's (never 0, the
    /// value of a slot not used yet).
    fn slot(&self, second: u64) -> (&AtomicU64, u64) {
        (
            &self.slots[(second % WINDOW_SLOTS as u64) as usize],
            (second + 1) << COUNT_BITS,
        )
    }
}

/// The members of a cluster that may be picked, with the generation they belong to.
pub struct Healthy {
    pub generation: u64,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// An upstream cluster.
pub struct Cluster {
    pub name: Arc<str>,
    /// Names the cluster to balancers in `pick-context`; a cluster removed and defined again
    /// gets a new one.
    pub id: u32,
    pub settings: ArcSwap<ClusterConfig>,
    members: ArcSwap<Vec<Arc<Endpoint>>>,
    healthy: ArcSwap<Healthy>,
    /// Earliest ejection expiry among members (u64::MAX: none).
    next_expiry_ms: AtomicU64,
    /// Upstream connections of this cluster.
    pub connections: Arc<ConnStats>,
    pub retries: AtomicU64,
    /// Requests in flight to all members, see [`Cluster::in_flight`].
    in_flight: Arc<AtomicU32>,
    pub duration: Histogram,
    /// Requests (first attempts) per second, for `cluster-requests`.
    pub requests: RequestWindow,
    membership: std::sync::Mutex<()>,
    cursor: std::sync::atomic::AtomicUsize,
    /// Picks through balancer filters so far: `pick-context.ticket`.
    tickets: AtomicU64,
}

impl Cluster {
    /// How connections to the members are made and kept, from `settings`.
    pub fn pool_settings(cfg: &ClusterConfig) -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            http2: cfg.http2,
            max_idle: cfg.max_idle_per_endpoint,
        }
    }

    pub fn members(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.members.load_full()
    }

    /// The current healthy set, after un-ejecting members whose time is up.
    pub fn healthy(&self, now_ms: u64) -> Arc<Healthy> {
        if now_ms >= self.next_expiry_ms.load(Ordering::Relaxed) {
            self.rebuild_healthy(now_ms);
        }
        self.healthy.load_full()
    }

    fn rebuild_healthy(&self, now_ms: u64) {
        let _guard = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let members = self.members.load();
        let mut next = u64::MAX;
        let mut endpoints = Vec::with_capacity(members.len());
        for e in members.iter() {
            let until = e.ejected_until_ms.load(Ordering::Relaxed);
            if until > now_ms {
                next = next.min(until);
            } else {
                if until != 0 {
                    e.ejected_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!(cluster = %self.name, endpoint = %e.address, "endpoint back from ejection");
                }
                endpoints.push(e.clone());
            }
        }
        endpoints.sort_by_key(|e| e.id);
        let current = self.healthy.load();
        let same = current.endpoints.len() == endpoints.len()
            && current
                .endpoints
                .iter()
                .zip(&endpoints)
                .all(|(a, b)| a.id == b.id);
        self.next_expiry_ms.store(next, Ordering::Relaxed);
        if !same {
            // Generations come from one process-wide counter, so a cluster
            // removed and added again never repeats one an instance has seen.
            let generation = NEXT_GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
            self.healthy.store(Arc::new(Healthy {
                generation,
                endpoints,
            }));
        }
    }

    /// The host's own choice when a chain has no balancer (or it failed open):
    /// plain round robin over the healthy set.
    pub fn round_robin(&self, healthy: &Healthy) -> Arc<Endpoint> {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % healthy.endpoints.len().max(1);
        healthy.endpoints[i].clone()
    }

    /// The next pick's ticket (`pick-context.ticket`): 0, 1, 2, ... over every pick of the
    /// cluster through a balancer filter.
    pub fn next_ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// In-flight requests over every member.
    /// Requests in flight to the cluster's endpoints (kept as a total, so
    /// that asking costs the same for 3 endpoints as for 1,000).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Every cluster and endpoint, with id lookup for the host API.
pub struct Upstreams {
    clusters: ArcSwap<FastMap<String, Arc<Cluster>>>,
    by_id: RwLock<FastMap<u32, Arc<Endpoint>>>,
    next_id: AtomicU32,
    /// The host's start, on the coarse clock.
    clock: CoarseSince,
}

impl Upstreams {
    pub fn new(start: Instant) -> Self {
        Self {
            clusters: ArcSwap::from_pointee(FastMap::default()),
            by_id: RwLock::new(FastMap::default()),
            next_id: AtomicU32::new(1),
            clock: CoarseSince::new(start),
        }
    }

    /// Host-monotonic milliseconds, by the coarse clock (within a tick of
    /// `monotonic-ns` / 1e6): ejections, the pick's `now-ms`.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Host-monotonic whole seconds (as filters see `monotonic-ns` / 1e9, within a tick).
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1_000
    }

    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    pub fn endpoint(&self, id: u32) -> Option<Arc<Endpoint>> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Applies a config's clusters: new ones are created, changed ones
    /// updated in place (members keep their stats), missing ones removed.
    pub fn apply(&self, configs: &[(String, ClusterConfig)]) {
        let old = self.clusters.load_full();
        let mut next = FastMap::with_capacity_and_hasher(configs.len(), Default::default());
        for (name, cfg) in configs {
            let cluster = match old.get(name) {
                Some(c) => {
                    let prev = c.settings.load_full();
                    if prev.http2 != cfg.http2 {
                        // Idle connections speak the other protocol.
                        for e in c.members().iter() {
                            e.conns.clear();
                        }
                    }
                    c.settings.store(Arc::new(cfg.clone()));
                    c.clone()
                }
                None => {
                    let connections = Arc::new(ConnStats::default());
                    Arc::new(Cluster {
                        name: Arc::from(name.as_str()),
                        id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
                        settings: ArcSwap::from_pointee(cfg.clone()),
                        members: ArcSwap::from_pointee(Vec::new()),
                        healthy: ArcSwap::from_pointee(Healthy {
                            generation: 0,
                            endpoints: Vec::new(),
                        }),
                        next_expiry_ms: AtomicU64::new(u64::MAX),
                        connections,
                        retries: AtomicU64::new(0),
                        in_flight: Arc::new(AtomicU32::new(0)),
                        duration: Histogram::default(),
                        requests: RequestWindow::default(),
                        membership: std::sync::Mutex::new(()),
                        cursor: Default::default(),
                        tickets: AtomicU64::new(0),
                    })
                }
            };
            self.set_members(&cluster, &cfg.endpoints);
            next.insert(name.clone(), cluster);
        }
        for (name, c) in old.iter() {
            if !next.contains_key(name) {
                self.set_members(c, &[]);
            }
        }
        self.clusters.store(Arc::new(next));
    }

    /// Replaces a cluster's membership (static config today, discovery later).
    pub fn set_members(&self, cluster: &Cluster, specs: &[EndpointSpec]) {
        let old = cluster.members.load_full();
        let mut members = Vec::with_capacity(specs.len());
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        for spec in specs {
            let reuse = old
                .iter()
                .find(|e| e.address == spec.address() && e.weight == spec.weight());
            let e = match reuse {
                Some(e) => e.clone(),
                None => {
                    let Ok(authority) = spec.address().parse::<http::uri::Authority>() else {
                        tracing::warn!(cluster = %cluster.name, address = spec.address(), "skipping bad endpoint address");
                        continue;
                    };
                    let e = Arc::new(Endpoint {
                        id: self.next_id.fetch_add(1, Ordering::Relaxed),
                        cluster: cluster.name.clone(),
                        address: spec.address().to_string(),
                        authority,
                        weight: spec.weight().max(1),
                        in_flight: AtomicU32::new(0),
                        cluster_in_flight: cluster.in_flight.clone(),
                        ewma_ns: AtomicU64::new(0),
                        consecutive_failures: AtomicU32::new(0),
                        total: AtomicU64::new(0),
                        failures: AtomicU64::new(0),
                        ejected_until_ms: AtomicU64::new(0),
                        ejections: AtomicU64::new(0),
                        recovering: AtomicBool::new(false),
                        results: Default::default(),
                        removed: AtomicBool::new(false),
                        socket: pool::socket_addr(spec.address()),
                        conns: Conns::default(),
                    });
                    by_id.insert(e.id, e.clone());
                    e
                }
            };
            members.push(e);
        }
        for e in old.iter() {
            if !members.iter().any(|m| m.id == e.id) {
                e.removed.store(true, Ordering::Relaxed);
                e.conns.clear();
                by_id.remove(&e.id);
            }
        }
        drop(by_id);
        cluster.members.store(Arc::new(members));
        cluster.rebuild_healthy(self.now_ms());
    }

    /// Closes idle upstream connections that timed out or that their
    /// endpoints closed.
    pub fn sweep_idle(&self) {
        for c in self.clusters.load().values() {
            for e in c.members().iter() {
                e.conns.sweep();
            }
        }
    }

    /// Ejects an endpoint for `ms`; false if it is unknown.
    pub fn eject(&self, id: u32, ms: u32) -> bool {
        let Some(e) = self.endpoint(id) else {
            return false;
        };
        let Some(cluster) = self.cluster(&e.cluster) else {
            return false;
        };
        let now = self.now_ms();
        e.ejected_until_ms
            .store(now + u64::from(ms.max(1)), Ordering::Relaxed);
        e.ejections.fetch_add(1, Ordering::Relaxed);
        e.recovering.store(true, Ordering::Relaxed);
        tracing::warn!(cluster = %cluster.name, endpoint = %e.address, ms, "endpoint ejected");
        cluster.rebuild_healthy(now);
        true
    }

    /// `GET /clusters`.
    pub fn to_json(&self) -> serde_json::Value {
        let now = self.now_ms();
        let clusters = self.clusters.load();
        let mut names: Vec<_> = clusters.keys().collect();
        names.sort();
        let list: Vec<_> = names
            .into_iter()
            .map(|name| {
                let c = &clusters[name];
                let healthy = c.healthy(now);
                let eps: Vec<_> = c
                    .members()
                    .iter()
                    .map(|e| {
                        let until = e.ejected_until_ms.load(Ordering::Relaxed);
                        let ejected = until > now;
                        serde_json::json!({
                            "id": e.id,
                            "address": e.address,
                            "weight": e.weight,
                            "health": if ejected { "ejected" } else { "healthy" },
                            "ejected": ejected,
                            "ejected_for_ms": if ejected { until - now } else { 0 },
                            "ejections": e.ejections.load(Ordering::Relaxed),
                            "in_flight": e.in_flight.load(Ordering::Relaxed),
                            "ewma_latency_ms": e.ewma_ns.load(Ordering::Relaxed) as f64 / 1e6,
                            "consecutive_failures": e.consecutive_failures.load(Ordering::Relaxed),
                            "requests": e.total.load(Ordering::Relaxed),
                            "failures": e.failures.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": name,
                    "generation": healthy.generation,
                    "healthy": healthy.endpoints.len(),
                    "retries": c.retries.load(Ordering::Relaxed),
                    "endpoints": eps,
                })
            })
            .collect();
        serde_json::json!({ "clusters": list })
    }
}

/// A per-endpoint series: name, type, help, and its value at a time (ms).
type EndpointSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Endpoint, u64) -> u64,
);

impl Collector for Upstreams {
    fn collect(&self, out: &mut String) {
        let now = self.now_ms();
        let clusters = self.clusters.load();
        let mut names: Vec<_> = clusters.keys().collect();
        names.sort();
        out.push_str("# HELP spindle_upstream_requests_total Upstream attempts, by cluster, endpoint and result.\n");
        out.push_str("# TYPE spindle_upstream_requests_total counter\n");
        for n in &names {
            for e in clusters[*n].members().iter() {
                for (i, r) in AttemptResult::ALL.iter().enumerate() {
                    let v = e.results[i].load(Ordering::Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "spindle_upstream_requests_total{{cluster=\"{}\",endpoint=\"{}\",result=\"{}\"}} {v}",
                            escape(n),
                            escape(&e.address),
                            r.label()
                        );
                    }
                }
            }
        }
        let gauges: [EndpointSeries; 3] = [
            (
                "spindle_endpoint_ejected",
                "gauge",
                "1 while the endpoint is ejected from its cluster.",
                |e, now| u64::from(e.is_ejected(now)),
            ),
            (
                "spindle_endpoint_ejections_total",
                "counter",
                "Times the endpoint was ejected.",
                |e, _| e.ejections.load(Ordering::Relaxed),
            ),
            (
                "spindle_upstream_in_flight",
                "gauge",
                "Requests in flight to the endpoint.",
                |e, _| u64::from(e.in_flight.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for n in &names {
                for e in clusters[*n].members().iter() {
                    let _ = writeln!(
                        out,
                        "{name}{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                        escape(n),
                        escape(&e.address),
                        value(e, now)
                    );
                }
            }
        }
        out.push_str(
            "# HELP spindle_upstream_retries_total Retries decided by filters, by cluster.\n",
        );
        out.push_str("# TYPE spindle_upstream_retries_total counter\n");
        for n in &names {
            let _ = writeln!(
                out,
                "spindle_upstream_retries_total{{cluster=\"{}\"}} {}",
                escape(n),
                clusters[*n].retries.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP spindle_upstream_connections Open upstream connections (pooled idle ones included), by cluster.\n");
        out.push_str("# TYPE spindle_upstream_connections gauge\n");
        for n in &names {
            let _ = writeln!(
                out,
                "spindle_upstream_connections{{cluster=\"{}\"}} {}",
                escape(n),
                clusters[*n].connections.open.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP spindle_upstream_connections_opened_total Upstream connections established, by cluster.\n");
        out.push_str("# TYPE spindle_upstream_connections_opened_total counter\n");
        for n in &names {
            let _ = writeln!(
                out,
                "spindle_upstream_connections_opened_total{{cluster=\"{}\"}} {}",
                escape(n),
                clusters[*n].connections.opened.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP spindle_upstream_request_duration_seconds Upstream attempt duration until the response head, by cluster.\n");
        out.push_str("# TYPE spindle_upstream_request_duration_seconds histogram\n");
        for n in &names {
            clusters[*n].duration.render(
                out,
                "spindle_upstream_request_duration_seconds",
                &format!("cluster=\"{}\"", escape(n)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoints: &[&str]) -> ClusterConfig {
        let text = format!(
            "endpoints = [{}]",
            endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        toml::from_str(&text).expect("cluster config")
    }

    #[test]
    fn request_windows_count_per_second_and_forget_old_seconds() {
        let w = RequestWindow::default();
        for _ in 0..3 {
            w.record(100);
        }
        w.record(101);
        w.record(159);
        assert_eq!(w.sum(159, 60), 5, "seconds 100 to 159");
        assert_eq!(w.sum(159, 59), 2, "seconds 101 to 159");
        assert_eq!(w.sum(101, 1), 1);
        assert_eq!(w.sum(101, 2), 4);
        // Second 164 takes second 100's slot: the old count is not added to it.
        w.record(164);
        assert_eq!(w.sum(164, 1), 1);
        assert_eq!(
            w.sum(164, 60),
            2,
            "seconds 105 to 164: 159 and 164 (101 is too old)"
        );
        assert_eq!(w.sum(5, 60), 0, "nothing was counted that early");
        assert_eq!(w.sum(159, 1000), w.sum(159, 60), "at most a minute");
    }

    #[tokio::test]
    async fn ejection_bumps_generation_and_expires() {
        let u = Upstreams::new(Instant::now());
        u.apply(&[("api".into(), cfg(&["127.0.0.1:1", "127.0.0.1:2"]))]);
        let c = u.cluster("api").unwrap();
        let h = c.healthy(u.now_ms());
        assert_eq!(h.endpoints.len(), 2);
        let g = h.generation;
        let id = h.endpoints[0].id;
        assert!(u.eject(id, 50));
        let h2 = c.healthy(u.now_ms());
        assert_eq!(h2.endpoints.len(), 1);
        assert!(h2.generation > g);
        assert!(!u.eject(9999, 50));
        std::thread::sleep(Duration::from_millis(80));
        let h3 = c.healthy(u.now_ms());
        assert_eq!(h3.endpoints.len(), 2);
        assert!(h3.generation > h2.generation);
    }

    #[tokio::test]
    async fn the_cluster_counts_requests_in_flight_across_members() {
        let u = Upstreams::new(Instant::now());
        u.apply(&[("api".into(), cfg(&["127.0.0.1:1", "127.0.0.1:2"]))]);
        let c = u.cluster("api").unwrap();
        let members = c.members();
        let a = InFlight::new(members[0].clone());
        let b = InFlight::new(members[1].clone());
        let a2 = InFlight::new(members[0].clone());
        assert_eq!(c.in_flight(), 3);
        assert_eq!(members[0].in_flight.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        // A member removed while a request is in flight still counts it out.
        u.apply(&[("api".into(), cfg(&["127.0.0.1:2"]))]);
        assert_eq!(c.in_flight(), 1);
        drop(a2);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn reapply_keeps_stats_of_unchanged_members() {
        let u = Upstreams::new(Instant::now());
        u.apply(&[("api".into(), cfg(&["127.0.0.1:1", "127.0.0.1:2"]))]);
        let id = u.cluster("api").unwrap().members()[0].id;
        u.endpoint(id)
            .unwrap()
            .record(AttemptResult::Status2xx, Duration::from_millis(3));
        u.apply(&[("api".into(), cfg(&["127.0.0.1:1", "127.0.0.1:3"]))]);
        let m = u.cluster("api").unwrap().members();
        assert_eq!(m[0].id, id);
        assert_eq!(m[0].total.load(Ordering::Relaxed), 1);
        assert_eq!(m[1].address, "127.0.0.1:3");
        let mut out = String::new();
        u.collect(&mut out);
        assert!(out.contains("spindle_upstream_requests_total{cluster=\"api\",endpoint=\"127.0.0.1:1\",result=\"2xx\"} 1"));
        assert!(
            out.contains("spindle_endpoint_ejected{cluster=\"api\",endpoint=\"127.0.0.1:3\"} 0")
        );
    }
}
