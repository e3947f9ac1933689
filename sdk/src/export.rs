//! The glue `#[spindle_sdk::filter]` expands to: the component's `filter` export, implemented
//! once for every [`Filter`]. Not a stable API.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::time::Duration;

use crate::filter::{Filter, Hooks};
use crate::types::{
    Action, AttemptAction, AttemptError, AttemptOutcome, AttemptOutcomes, Endpoint, PickContext,
    RequestSummary, millis_u32,
};
use crate::wit::exports::spindle::filter::filter::Guest;
use crate::wit::spindle::filter::types as wt;
use crate::{runtime, sys};

#[doc(hidden)]
pub use crate::wit::__export_spindle_filter as export;

/// Implements the component's `filter` export for `F`.
#[doc(hidden)]
pub struct Adapter<F>(PhantomData<F>);

thread_local! {
    // The instance's filter, set by `init`. A component instance is single-threaded and the host
    // never re-enters it, so the borrow below is never contended.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    // The names of the clusters `endpoints-changed` told this instance about, by the ids that
    // `pick-context` names them with.
    static CLUSTERS: RefCell<Vec<(u32, String)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the instance's filter; `default` before a successful `init`.
fn with<F: Filter, R>(default: R, f: impl FnOnce(&mut F) -> R) -> R {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut().and_then(|b| b.downcast_mut::<F>()) {
            Some(filter) => f(filter),
            None => default,
        }
    })
}

fn hooks_to_wit(hooks: Hooks) -> wt::Hooks {
    let mut out = wt::Hooks::empty();
    for (ours, theirs) in [
        (Hooks::REQUEST, wt::Hooks::REQUEST),
        (Hooks::PICK, wt::Hooks::PICK),
        (Hooks::ATTEMPT, wt::Hooks::ATTEMPT),
        (Hooks::RESPONSE, wt::Hooks::RESPONSE),
        (Hooks::DONE, wt::Hooks::DONE),
    ] {
        if hooks.contains(ours) {
            out |= theirs;
        }
    }
    out
}

impl<F: Filter> Guest for Adapter<F> {
    fn init(config: String) -> Result<wt::Declaration, String> {
        let filter = runtime::init::<F>(&config).map_err(|e| e.to_string())?;
        let declaration = wt::Declaration {
            hooks: hooks_to_wit(runtime::hooks(&filter)),
            per_try_timeout_ms: filter.per_try_timeout().map(millis_u32),
            request_min_in_flight: runtime::request_min_in_flight(&filter),
            request_path: runtime::request_path(&filter),
            attempt_outcomes: match runtime::attempt_outcomes(&filter) {
                AttemptOutcomes::All => wt::AttemptOutcomes::All,
                AttemptOutcomes::FailuresAndRecoveries => {
                    wt::AttemptOutcomes::FailuresAndRecoveries
                }
            },
        };
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
        Ok(declaration)
    }

    fn on_request(path: Option<String>, traced: bool) -> wt::RequestAction {
        sys::set_traced(traced);
        sys::begin_request(path);
        let action = with(Action::Continue, runtime::on_request::<F>);
        // The chosen cluster goes back with the answer: as `route` when the chain goes on.
        let route = sys::end_request(matches!(action, Action::Continue));
        match action {
            Action::Continue => route.map_or(wt::RequestAction::Continue, wt::RequestAction::Route),
            Action::Respond(reply) => {
                sys::reply(reply);
                wt::RequestAction::Respond
            }
            Action::Delay(delay) => wt::RequestAction::Delay(millis_u32(delay)),
        }
    }

    fn endpoints_changed(cluster_id: u32, cluster: String, endpoints: Vec<wt::Endpoint>) {
        CLUSTERS.with(|c| {
            let mut c = c.borrow_mut();
            match c.iter_mut().find(|(id, _)| *id == cluster_id) {
                Some((_, name)) => name.clone_from(&cluster),
                None => c.push((cluster_id, cluster.clone())),
            }
        });
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .map(|e| Endpoint {
                id: e.id,
                address: e.address,
                weight: e.weight,
            })
            .collect();
        with((), |f: &mut F| {
            runtime::endpoints_changed(f, &cluster, &endpoints)
        });
    }

    fn pick_endpoint(ctx: wt::PickContext) -> Option<u32> {
        // The host names the cluster before its first pick; unknown, the host's own choice
        // applies.
        // The name is lent to the pick and put back after it, not copied: no allocation per
        // pick. Nothing the pick can call reaches `CLUSTERS` (the host never re-enters an
        // instance), so the entry is only empty while the filter runs.
        let cluster = CLUSTERS.with(|c| {
            c.borrow_mut()
                .iter_mut()
                .find(|(id, _)| *id == ctx.cluster_id)
                .map(|(_, name)| std::mem::take(name))
        })?;
        sys::set_traced(ctx.traced);
        let id = ctx.cluster_id;
        let ctx = PickContext {
            cluster,
            attempt: ctx.attempt,
            previous: ctx.previous,
            ticket: ctx.ticket,
        };
        let picked = with(None, |f: &mut F| runtime::pick_endpoint(f, &ctx));
        CLUSTERS.with(|c| {
            if let Some((_, name)) = c.borrow_mut().iter_mut().find(|(i, _)| *i == id) {
                *name = ctx.cluster;
            }
        });
        picked
    }

    fn on_attempt(outcome: wt::AttemptOutcome, traced: bool) -> wt::AttemptAction {
        sys::set_traced(traced);
        let outcome = AttemptOutcome {
            cluster: outcome.cluster,
            endpoint: outcome.endpoint,
            attempt: outcome.attempt,
            status: outcome.status,
            error: outcome.error.map(|e| match e {
                wt::AttemptError::ConnectFailure => AttemptError::ConnectFailure,
                wt::AttemptError::Reset => AttemptError::Reset,
                wt::AttemptError::Timeout => AttemptError::Timeout,
                wt::AttemptError::Other => AttemptError::Other,
            }),
            latency: Duration::from_nanos(outcome.latency_ns),
            retryable_body: outcome.retryable_body,
            retry_after: outcome.retry_after_ms.map(Duration::from_millis),
        };
        match with(AttemptAction::Done, |f: &mut F| {
            runtime::on_attempt(f, &outcome)
        }) {
            AttemptAction::Done => wt::AttemptAction::Done,
            AttemptAction::Retry(delay) => wt::AttemptAction::Retry(millis_u32(delay)),
        }
    }

    fn on_response(traced: bool) {
        sys::set_traced(traced);
        with((), runtime::on_response::<F>);
    }

    fn on_done(summary: wt::RequestSummary, traced: bool) {
        sys::set_traced(traced);
        let summary = RequestSummary {
            status: summary.status,
            cluster: summary.cluster,
            endpoint: summary.endpoint,
            attempts: summary.attempts,
            duration: Duration::from_nanos(summary.duration_ns),
        };
        with((), |f: &mut F| runtime::on_done(f, &summary));
    }
}
