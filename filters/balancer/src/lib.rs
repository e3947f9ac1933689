//! Spindle's balancer: picks the endpoint of the request's cluster.
//!
//! ```toml
//! [filter.balancer]
//! config = { policy = "round_robin" }   # round_robin | random | least_request
//! ```
//!
//! - `round_robin` (default): smooth weighted round robin, nginx-style. An endpoint of weight 5
//!   next to two of weight 1 is picked `a a b a c a a`, never five times in a row. The schedule
//!   of each cluster is computed when its endpoints change; the cursor into it is a counter in
//!   the host's shared store, so the order holds across the host's pool of instances (each hook
//!   may run in a different one). Weights are reduced by their gcd, and a schedule longer than
//!   4096 picks is scaled down proportionally (every endpoint keeps at least one slot).
//! - `random`: weighted random, with the host's randomness.
//! - `least_request`: power of two choices on the host's in-flight counts: two distinct
//!   endpoints drawn at random, the one with fewer requests in flight per unit of weight wins.
//! - `ring_hash` and `ewma` are refused at init: not implemented yet.
//!
//! The endpoints of a cluster come from `endpoints_changed` (ejected ones are left out). On a
//! retry, the endpoint of the failed attempt is never picked again when another one exists. A
//! cluster with no endpoint gives no pick (the host answers 503).

use std::collections::HashMap;

use serde::Deserialize;
use spindle_sdk::{Endpoint, Filter, InitError, PickContext, endpoints, random, store};

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
    /// Consistent hashing on a header (not implemented yet).
    RingHash,
    /// Lowest latency average (not implemented yet).
    Ewma,
}

/// The balancer's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policy (default `round_robin`).
    #[serde(default)]
    pub policy: Policy,
    /// The header `ring_hash` hashes on.
    #[serde(default)]
    pub hash_header: Option<String>,
}

/// What this instance knows of one cluster.
#[derive(Debug, Default)]
struct Table {
    endpoints: Vec<Endpoint>,
    /// Cumulative weights, for `random`.
    cumulative: Vec<u64>,
    /// Indices into `endpoints`, one period of smooth weighted round robin.
    schedule: Vec<usize>,
}

/// The balancer filter.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    tables: HashMap<String, Table>,
}

impl Table {
    fn new(policy: Policy, endpoints: &[Endpoint]) -> Table {
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
        Table {
            endpoints: endpoints.to_vec(),
            cumulative,
            schedule,
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

impl Balancer {
    fn round_robin(cluster: &str, table: &Table, avoid: Option<usize>) -> Option<usize> {
        let len = table.schedule.len();
        if len == 0 {
            return None;
        }
        // One counter per cluster for the whole host: exact order across instances.
        let key = format!("spindle.balancer.rr.{cluster}");
        let ticket = store::add(&key, 1, store::FOREVER) - 1;
        let start = usize::try_from(ticket.rem_euclid(len as i64)).unwrap_or(0);
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
        let roll = random::below(total - skipped);
        // Walk the cumulative weights as if `avoid` were not there.
        let mut seen = 0;
        for i in 0..table.endpoints.len() {
            if Some(i) == avoid {
                continue;
            }
            seen += weight_of(i);
            if roll < seen {
                return Some(i);
            }
        }
        avoid
    }

    fn least_request(table: &Table, avoid: Option<usize>) -> Option<usize> {
        let candidates: Vec<usize> = (0..table.endpoints.len())
            .filter(|&i| Some(i) != avoid)
            .collect();
        match candidates.len() {
            0 => return avoid,
            1 => return Some(candidates[0]),
            _ => {}
        }
        let n = candidates.len() as u64;
        let first = random::below(n) as usize;
        let mut second = random::below(n - 1) as usize;
        if second >= first {
            second += 1;
        }
        let (a, b) = (candidates[first], candidates[second]);
        // Fewer in flight per unit of weight wins: compare (a+1)/wa with (b+1)/wb.
        let load = |i: usize| {
            let e = &table.endpoints[i];
            let in_flight = endpoints::endpoint_stats(e.id).map_or(0, |s| s.in_flight);
            (u64::from(in_flight) + 1, u64::from(e.weight.max(1)))
        };
        let ((la, wa), (lb, wb)) = (load(a), load(b));
        Some(if la * wb <= lb * wa { a } else { b })
    }
}

#[spindle_sdk::filter]
impl Filter for Balancer {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        match config.policy {
            Policy::RingHash | Policy::Ewma => {
                let name = if config.policy == Policy::Ewma {
                    "ewma"
                } else {
                    "ring_hash"
                };
                return Err(InitError::key(
                    "policy",
                    format!(
                        "`{name}` is not implemented yet: use `round_robin`, `random` or \
                         `least_request`"
                    ),
                ));
            }
            _ if config.hash_header.is_some() => {
                return Err(InitError::key(
                    "hash_header",
                    "is only used by policy `ring_hash`",
                ));
            }
            _ => {}
        }
        Ok(Balancer {
            policy: config.policy,
            tables: HashMap::new(),
        })
    }

    fn endpoints_changed(&mut self, cluster: &str, endpoints: &[Endpoint]) {
        self.tables
            .insert(cluster.to_owned(), Table::new(self.policy, endpoints));
    }

    fn pick_endpoint(&mut self, ctx: &PickContext) -> Option<u32> {
        let table = self.tables.get(&ctx.cluster)?;
        if table.endpoints.is_empty() {
            return None;
        }
        let avoid = table
            .position(ctx.previous)
            .filter(|_| table.endpoints.len() > 1);
        let index = match self.policy {
            Policy::RoundRobin => Balancer::round_robin(&ctx.cluster, table, avoid),
            Policy::Random => Balancer::random(table, avoid),
            Policy::LeastRequest => Balancer::least_request(table, avoid),
            Policy::RingHash | Policy::Ewma => None,
        }?;
        table.endpoints.get(index).map(|e| e.id)
    }
}

#[cfg(test)]
mod tests;
