//! [`TestFilter`]: one instance of a filter, driven as the host drives it.

use std::collections::HashMap;

use super::state::with;
use super::sys;
use crate::filter::{Filter, Hooks};
use crate::runtime;
use crate::types::{Action, AttemptAction, AttemptOutcome, Endpoint, PickContext, RequestSummary};

/// Runs `f` with request variables scoped to filter `F`.
pub(crate) fn in_filter<F: Filter, R>(f: impl FnOnce() -> R) -> R {
    let previous = with(|s| std::mem::replace(&mut s.current_filter, std::any::type_name::<F>()));
    let out = f();
    with(|s| s.current_filter = previous);
    out
}

/// The endpoints of `cluster` the host would push now: known and not ejected, by id.
pub(crate) fn pickable(cluster: &str) -> Vec<Endpoint> {
    with(|s| {
        let now = s.monotonic_ns;
        s.endpoints
            .iter()
            .filter(|(_, e)| e.cluster == cluster && !e.ejected(now))
            .map(|(&id, e)| Endpoint {
                id,
                address: e.address.clone(),
                weight: e.weight,
            })
            .collect()
    })
}

/// One instance of filter `F` on the [`MockHost`](super::MockHost), made by
/// [`MockHost::load`](super::MockHost::load).
///
/// Each method calls one hook as Spindle would: a hook the filter did not declare is not called
/// (the method returns what the host assumes then: `Continue`, no pick, `Done`).
pub struct TestFilter<F> {
    filter: F,
    /// The hooks it declared at init.
    hooks: Hooks,
    /// What this instance was last told about each cluster.
    seen: HashMap<String, Vec<Endpoint>>,
}

impl<F: Filter> TestFilter<F> {
    pub(crate) fn new(filter: F) -> TestFilter<F> {
        TestFilter {
            hooks: runtime::hooks(&filter),
            filter,
            seen: HashMap::new(),
        }
    }

    /// The hooks this instance declared to the host at init.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// The filter itself, to inspect its state.
    pub fn filter(&self) -> &F {
        &self.filter
    }

    /// The per-try timeout this instance declared at init
    /// ([`Filter::per_try_timeout`]): what the host applies to requests that set none.
    pub fn per_try_timeout(&self) -> Option<std::time::Duration> {
        self.filter.per_try_timeout()
    }

    /// The in-flight threshold this instance declared at init
    /// ([`Filter::request_min_in_flight`]), when it has an `on_request` hook.
    pub fn request_min_in_flight(&self) -> Option<u32> {
        runtime::request_min_in_flight(&self.filter)
    }

    /// Whether this instance asked at init for the path with every `on_request` call
    /// ([`Filter::wants_path`]), when it has that hook.
    pub fn wants_path(&self) -> bool {
        runtime::request_path(&self.filter)
    }

    /// Runs `on_request` on the current request, as the host would: not at all when the filter
    /// has no such hook, or when it declared [`Filter::request_min_in_flight`] and the request's
    /// cluster (none chosen, unknown, or below the threshold) does not reach it.
    pub fn on_request(&mut self) -> Action {
        if !self.hooks.contains(Hooks::REQUEST) {
            return Action::Continue;
        }
        if let Some(min) = self.request_min_in_flight() {
            let in_flight = sys::cluster().and_then(|c| sys::cluster_stats(&c));
            if in_flight.is_none_or(|stats| stats.in_flight < min) {
                return Action::Continue;
            }
        }
        in_filter::<F, _>(|| runtime::on_request(&mut self.filter))
    }

    /// Asks for the first attempt's endpoint in `cluster` (see [`pick_with`](Self::pick_with)).
    pub fn pick(&mut self, cluster: &str) -> Option<u32> {
        self.pick_with(PickContext {
            cluster: cluster.to_owned(),
            attempt: 1,
            previous: None,
            ticket: 0,
        })
    }

    /// Asks for an endpoint: first pushes `endpoints_changed` if the pickable set of the cluster
    /// differs from what this instance last saw, then calls `pick_endpoint`. As the host does,
    /// the mock host numbers the picks of each cluster: `ctx.ticket` is replaced by the
    /// cluster's next ticket (0 for its first pick on this mock host, shared by every
    /// [`TestFilter`] loaded on it).
    pub fn pick_with(&mut self, mut ctx: PickContext) -> Option<u32> {
        if !self.hooks.contains(Hooks::PICK) {
            return None;
        }
        ctx.ticket = sys::next_ticket(&ctx.cluster);
        self.sync_endpoints(&ctx.cluster);
        in_filter::<F, _>(|| runtime::pick_endpoint(&mut self.filter, &ctx))
    }

    /// Pushes `endpoints_changed` for `cluster` if this instance's view is stale (the host does
    /// this before every pick; call it to test `endpoints_changed` alone).
    pub fn sync_endpoints(&mut self, cluster: &str) {
        if !self.hooks.contains(Hooks::PICK) {
            return;
        }
        let current = pickable(cluster);
        if self.seen.get(cluster) != Some(&current) {
            in_filter::<F, _>(|| runtime::endpoints_changed(&mut self.filter, cluster, &current));
            self.seen.insert(cluster.to_owned(), current);
        }
    }

    /// The outcomes this instance's `on_attempt` asked for at init ([`Filter::attempt_outcomes`]).
    pub fn attempt_outcomes(&self) -> crate::AttemptOutcomes {
        runtime::attempt_outcomes(&self.filter)
    }

    /// Runs `on_attempt` with this outcome, as the host would: first records it in its
    /// endpoint's statistics (`total_requests`, `total_failures`, `consecutive_failures`) and,
    /// for a first attempt, as a request to its cluster
    /// ([`endpoints::cluster_requests`](crate::endpoints::cluster_requests)), then
    /// calls the hook, unless the filter has none or declared
    /// [`AttemptOutcomes::FailuresAndRecoveries`](crate::AttemptOutcomes::FailuresAndRecoveries)
    /// and the outcome is neither.
    pub fn on_attempt(&mut self, outcome: &AttemptOutcome) -> AttemptAction {
        let notable = sys::record_outcome(outcome);
        if !self.hooks.contains(Hooks::ATTEMPT) {
            return AttemptAction::Done;
        }
        if self.attempt_outcomes() == crate::AttemptOutcomes::FailuresAndRecoveries && !notable {
            return AttemptAction::Done;
        }
        in_filter::<F, _>(|| runtime::on_attempt(&mut self.filter, outcome))
    }

    /// Runs `on_response` on the response set with
    /// [`MockHost::set_response`](super::MockHost::set_response).
    pub fn on_response(&mut self) {
        if self.hooks.contains(Hooks::RESPONSE) {
            in_filter::<F, _>(|| runtime::on_response(&mut self.filter));
        }
    }

    /// Runs `on_done` with this summary.
    pub fn on_done(&mut self, summary: &RequestSummary) {
        if self.hooks.contains(Hooks::DONE) {
            in_filter::<F, _>(|| runtime::on_done(&mut self.filter, summary));
        }
    }
}

impl<F> std::fmt::Debug for TestFilter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestFilter")
            .field("filter", &std::any::type_name::<F>())
            .finish_non_exhaustive()
    }
}
