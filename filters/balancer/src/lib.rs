//! Spindle's balancer: picks the endpoint of the request's cluster.
//!
//! ```toml
//! [filter.balancer]
//! config = { policy = "round_robin" }   # round_robin | random | least_request | ewma | ring_hash
//! # config = { policy = "ring_hash", hash_header = "x-user", points_per_weight = 160 }
//! # config = { policy = "ewma", decay_ms = 10000, default_rtt_ms = 30 }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `policy` | `round_robin` | the balancing policy, below |
//! | `hash_header` | none | `ring_hash` only: the request header whose value is hashed |
//! | `points_per_weight` | 160 | `ring_hash` only: ring points per unit of endpoint weight (1 to 65536) |
//! | `decay_ms` | 10000 | `ewma` only: the time constant of the latency estimate's decay |
//! | `default_rtt_ms` | 30 | `ewma` only: the latency assumed for an endpoint never measured |
//!
//! - `round_robin` (default): smooth weighted round robin, nginx-style. An endpoint of weight 5
//!   next to two of weight 1 is picked `a a b a c a a`, never five times in a row. The schedule
//!   of each cluster is computed when its endpoints change; the cursor into it is the pick's
//!   `ticket`, which the host numbers per cluster, so the order holds across the host's pool of
//!   instances (each hook may run in a different one) without a store call. Weights are reduced by their gcd, and a schedule longer than
//!   4096 picks is scaled down proportionally (every endpoint keeps at least one slot).
//! - `random`: weighted random, with the host's randomness (a binary search over cumulative
//!   weights).
//! - `least_request`: power of two choices on the host's in-flight counts: two distinct
//!   endpoints drawn at random, the one with fewer requests in flight per unit of weight wins.
//! - `ewma`: power of two choices on peak-EWMA latency, linkerd2-proxy's policy: the one with the
//!   lower `latency estimate * (in_flight + 1) / weight` wins. The estimate is built from the
//!   host's per-attempt EWMA (`ewma_ns` of the endpoint stats): a higher value is taken at once,
//!   a lower one blended in with weight `1 - exp(-elapsed / decay_ms)`, and without new
//!   attempts the estimate decays towards zero at that rate, so that an endpoint that was slow
//!   once is tried again later. An endpoint never measured costs `default_rtt_ms`. The
//!   estimates are cached per instance (see `ewma.rs`).
//! - `ring_hash`: consistent hashing (a Ketama-style ring) on the value of `hash_header`; when
//!   the header is absent or not configured, on the client's IP address (without its port). Each
//!   endpoint gets `weight * points_per_weight` points, scaled down proportionally when the ring
//!   would exceed 65536 points (every endpoint keeps one); the points are hashes of the endpoint's address, so when one of `n`
//!   endpoints joins or leaves only about `1/n` of the keys move. The ring is rebuilt when the
//!   endpoints change; a pick is a binary search. A retry (`attempt` n) walks on clockwise to the
//!   n-th distinct endpoint from the key's point, never the one that just failed.
//!
//! The endpoints of a cluster come from `endpoints_changed` (ejected ones are left out). On a
//! retry, the endpoint of the failed attempt is never picked again when another one exists. A
//! cluster with no endpoint gives no pick (the host answers 503). No policy copies the endpoint
//! list per pick: picks cost about the same over 3 endpoints or 1,000 (a binary search for
//! `ring_hash` and `random`, a constant amount of work for the others; `benches/pick.rs`
//! measures it).

mod ewma;
mod ring;

// foldhash, not std's SipHash: the tables are looked up by cluster name on every pick, and
// neither names nor endpoint ids come from clients.
use foldhash::HashMap;

use serde::Deserialize;
use spindle_sdk::{Endpoint, Filter, InitError, PickContext, endpoints, random, time};

use crate::ewma::Estimate;
use crate::ring::Ring;

/// The longest round-robin schedule kept per cluster.
const MAX_SCHEDULE: u64 = 4096;

/// The balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on in-flight requests, weight-aware.
    LeastRequest,
    /// Consistent hashing on a header, else the client address; weighted.
    RingHash,
    /// Power of two choices on peak-EWMA latency times in-flight requests, weight-aware.
    Ewma,
}

fn default_points_per_weight() -> u32 {
    ring::DEFAULT_POINTS_PER_WEIGHT
}
fn default_decay_ms() -> u32 {
    10_000
}
fn default_rtt_ms() -> u32 {
    30
}

/// The balancer's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policy (default `round_robin`).
    #[serde(default)]
    pub policy: Policy,
    /// The header `ring_hash` hashes on (absent: the client's IP address).
    #[serde(default)]
    pub hash_header: Option<String>,
    /// `ring_hash`: ring points per unit of endpoint weight.
    #[serde(default)]
    pub points_per_weight: Option<u32>,
    /// `ewma`: the decay time constant of latency estimates, in milliseconds.
    #[serde(default)]
    pub decay_ms: Option<u32>,
    /// `ewma`: the latency of an endpoint never measured, in milliseconds.
    #[serde(default)]
    pub default_rtt_ms: Option<u32>,
}

/// What this instance knows of one cluster.
#[derive(Debug, Default)]
struct Table {
    endpoints: Vec<Endpoint>,
    /// Cumulative weights, for `random`.
    cumulative: Vec<u64>,
    /// Indices into `endpoints`, one period of smooth weighted round robin.
    schedule: Vec<usize>,
    /// The hash ring, for `ring_hash`.
    ring: Ring,
    /// Latency estimates by endpoint id, for `ewma` (kept across endpoint changes).
    estimates: HashMap<u32, Estimate>,
}

/// The balancer filter.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    hash_header: Option<String>,
    points_per_weight: u32,
    ewma: ewma::Params,
    /// Each cluster's table, in the order first seen; found by name through `index`.
    tables: Vec<(String, Table)>,
    index: HashMap<String, usize>,
    /// The table of the last pick: picks mostly follow each other for one cluster, and a name
    /// compare costs a fraction of hashing it.
    last: usize,
}

impl Table {
    fn new(balancer: &Balancer, endpoints: &[Endpoint], previous: Option<Table>) -> Table {
        let policy = balancer.policy;
        let mut total = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                total += u64::from(e.weight.max(1));
                total
            })
            .collect();
        let schedule = if policy == Policy::RoundRobin {
            smooth_schedule(endpoints)
        } else {
            Vec::new()
        };
        let ring = if policy == Policy::RingHash {
            Ring::new(endpoints, balancer.points_per_weight)
        } else {
            Ring::default()
        };
        // Keep the estimates of the endpoints that stay.
        let mut estimates = previous.map(|t| t.estimates).unwrap_or_default();
        estimates.retain(|id, _| endpoints.iter().any(|e| e.id == *id));
        Table {
            endpoints: endpoints.to_vec(),
            cumulative,
            schedule,
            ring,
            estimates,
        }
    }

    fn position(&self, id: Option<u32>) -> Option<usize> {
        let id = id?;
        self.endpoints.iter().position(|e| e.id == id)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of nginx's smooth weighted round robin over `endpoints`.
fn smooth_schedule(endpoints: &[Endpoint]) -> Vec<usize> {
    let mut weights: Vec<u64> = endpoints
        .iter()
        .map(|e| u64::from(e.weight.max(1)))
        .collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter_mut().for_each(|w| *w /= g);
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        weights
            .iter_mut()
            .for_each(|w| *w = (*w * MAX_SCHEDULE / total).max(1));
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

/// Two distinct indices in `0..len` other than `avoid`, drawn uniformly; one when only one
/// exists. Constant work whatever `len`: no candidate list is built.
fn two_choices(len: usize, avoid: Option<usize>) -> Option<(usize, Option<usize>)> {
    let n = len - usize::from(avoid.is_some_and(|a| a < len));
    // Index `k` among the candidates is `k`, or `k + 1` from `avoid` on.
    let skip = |k: usize| match avoid {
        Some(a) if k >= a => k + 1,
        _ => k,
    };
    match n {
        0 => None,
        1 => Some((skip(0), None)),
        _ => {
            let first = random::below(n as u64) as usize;
            let mut second = random::below(n as u64 - 1) as usize;
            if second >= first {
                second += 1;
            }
            Some((skip(first), Some(skip(second))))
        }
    }
}

impl Balancer {
    fn round_robin(ticket: u64, table: &Table, avoid: Option<usize>) -> Option<usize> {
        let len = table.schedule.len();
        if len == 0 {
            return None;
        }
        // The host numbers the cluster's picks: exact order across instances.
        let start = usize::try_from(ticket % len as u64).unwrap_or(0);
        (0..len)
            .map(|i| table.schedule[(start + i) % len])
            .find(|&i| Some(i) != avoid)
            .or(Some(table.schedule[start]))
    }

    fn random(table: &Table, avoid: Option<usize>) -> Option<usize> {
        let total = *table.cumulative.last()?;
        let weight_of =
            |i: usize| table.cumulative[i] - if i == 0 { 0 } else { table.cumulative[i - 1] };
        let skipped = avoid.map_or(0, weight_of);
        let mut roll = random::below(total - skipped);
        // Draw as if `avoid` were not there: skip over its share of the cumulative weights.
        if let Some(a) = avoid
            && roll >= table.cumulative[a] - weight_of(a)
        {
            roll += weight_of(a);
        }
        // A binary search: no walk over the endpoints.
        let index = table.cumulative.partition_point(|&c| c <= roll);
        (index < table.endpoints.len()).then_some(index).or(avoid)
    }

    fn least_request(table: &Table, avoid: Option<usize>) -> Option<usize> {
        let (a, b) = match two_choices(table.endpoints.len(), avoid) {
            None => return avoid,
            Some((a, None)) => return Some(a),
            Some((a, Some(b))) => (a, b),
        };
        // Fewer in flight per unit of weight wins: compare (a+1)/wa with (b+1)/wb.
        let load = |i: usize| {
            let e = &table.endpoints[i];
            let in_flight = endpoints::endpoint_stats(e.id).map_or(0, |s| s.in_flight);
            (u64::from(in_flight) + 1, u64::from(e.weight.max(1)))
        };
        let ((la, wa), (lb, wb)) = (load(a), load(b));
        Some(if la * wb <= lb * wa { a } else { b })
    }

    fn ewma(params: ewma::Params, table: &mut Table, avoid: Option<usize>) -> Option<usize> {
        let (a, b) = match two_choices(table.endpoints.len(), avoid) {
            None => return avoid,
            Some((a, None)) => return Some(a),
            Some((a, Some(b))) => (a, b),
        };
        let now = time::monotonic_ns();
        let mut cost = |i: usize| {
            let e = &table.endpoints[i];
            let stats = endpoints::endpoint_stats(e.id).unwrap_or_default();
            let rtt = table
                .estimates
                .entry(e.id)
                .or_default()
                .update(&stats, now, params);
            ewma::cost(rtt, stats.in_flight, e.weight)
        };
        let (ca, cb) = (cost(a), cost(b));
        Some(if ca <= cb { a } else { b })
    }

    fn ring_hash(
        hash_header: Option<&str>,
        ctx: &PickContext,
        table: &Table,
        avoid: Option<usize>,
    ) -> Option<usize> {
        let req = ctx.request();
        let key_hash = match hash_header.and_then(|h| req.header(h)) {
            Some(value) => ring::hash(value.as_bytes()),
            None => ring::hash(req.client_ip().as_bytes()),
        };
        // Attempt n passes over the n-1 endpoints earlier attempts used; when the failed one
        // has left the set (ejected), one fewer is still on the ring.
        let mut skip = ctx.attempt.saturating_sub(1) as usize;
        if ctx.previous.is_some() && avoid.is_none() {
            skip = skip.saturating_sub(1);
        }
        table.ring.pick(key_hash, skip, avoid)
    }
}

#[spindle_sdk::filter]
impl Filter for Balancer {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        let only_for = |key: &str, set: bool, policy: Policy, name: &str| {
            if set && config.policy != policy {
                Err(InitError::key(
                    key,
                    format!("is only used by policy `{name}`"),
                ))
            } else {
                Ok(())
            }
        };
        only_for(
            "hash_header",
            config.hash_header.is_some(),
            Policy::RingHash,
            "ring_hash",
        )?;
        only_for(
            "points_per_weight",
            config.points_per_weight.is_some(),
            Policy::RingHash,
            "ring_hash",
        )?;
        only_for("decay_ms", config.decay_ms.is_some(), Policy::Ewma, "ewma")?;
        only_for(
            "default_rtt_ms",
            config.default_rtt_ms.is_some(),
            Policy::Ewma,
            "ewma",
        )?;
        if config.hash_header.as_deref() == Some("") {
            return Err(InitError::key("hash_header", "must not be empty"));
        }
        let points_per_weight = config
            .points_per_weight
            .unwrap_or_else(default_points_per_weight);
        if !(1..=ring::MAX_RING_SIZE).contains(&u64::from(points_per_weight)) {
            return Err(InitError::key(
                "points_per_weight",
                format!(
                    "{points_per_weight} is not between 1 and {}",
                    ring::MAX_RING_SIZE
                ),
            ));
        }
        let decay_ms = config.decay_ms.unwrap_or_else(default_decay_ms);
        if decay_ms == 0 {
            return Err(InitError::key("decay_ms", "must be at least 1"));
        }
        let default_rtt_ms = config.default_rtt_ms.unwrap_or_else(default_rtt_ms);
        Ok(Balancer {
            policy: config.policy,
            hash_header: config.hash_header,
            points_per_weight,
            ewma: ewma::Params {
                decay_ns: f64::from(decay_ms) * 1e6,
                default_rtt_ns: f64::from(default_rtt_ms) * 1e6,
            },
            tables: Vec::new(),
            index: HashMap::default(),
            last: 0,
        })
    }

    fn endpoints_changed(&mut self, cluster: &str, endpoints: &[Endpoint]) {
        match self.index.get(cluster) {
            Some(&i) => {
                let previous = std::mem::take(&mut self.tables[i].1);
                self.tables[i].1 = Table::new(self, endpoints, Some(previous));
            }
            None => {
                let table = Table::new(self, endpoints, None);
                self.index.insert(cluster.to_owned(), self.tables.len());
                self.tables.push((cluster.to_owned(), table));
            }
        }
    }

    fn pick_endpoint(&mut self, ctx: &PickContext) -> Option<u32> {
        if self
            .tables
            .get(self.last)
            .is_none_or(|(name, _)| *name != ctx.cluster)
        {
            self.last = *self.index.get(&ctx.cluster)?;
        }
        let table = &mut self.tables.get_mut(self.last)?.1;
        if table.endpoints.is_empty() {
            return None;
        }
        let avoid = table
            .position(ctx.previous)
            .filter(|_| table.endpoints.len() > 1);
        let index = match self.policy {
            Policy::RoundRobin => Balancer::round_robin(ctx.ticket, table, avoid),
            Policy::Random => Balancer::random(table, avoid),
            Policy::LeastRequest => Balancer::least_request(table, avoid),
            Policy::RingHash => Balancer::ring_hash(self.hash_header.as_deref(), ctx, table, avoid),
            Policy::Ewma => Balancer::ewma(self.ewma, table, avoid),
        }?;
        table.endpoints.get(index).map(|e| e.id)
    }
}

#[cfg(test)]
mod tests;
