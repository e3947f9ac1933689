//! The one place that runs a filter's `init` and hooks, shared by the Wasm export glue and by the
//! test driver of [`crate::testing`], so tests exercise exactly what the host calls.

use crate::config;
use crate::filter::{Filter, Hooks, InitError};
use crate::request::Request;
use crate::response::Response;
use crate::types::{Action, AttemptAction, AttemptOutcome, Endpoint, PickContext, RequestSummary};

/// Decodes the config JSON and builds the filter.
pub(crate) fn init<F: Filter>(config_json: &str) -> Result<F, InitError> {
    F::new(config::decode(config_json)?)
}

/// Builds the filter from an already parsed JSON value.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn init_value<F: Filter>(config: serde_json::Value) -> Result<F, InitError> {
    F::new(config::from_value(config)?)
}

/// The hooks an instance declares to the host: what it asks for, within what it implements.
pub(crate) fn hooks<F: Filter>(filter: &F) -> Hooks {
    filter.hooks().intersection(F::HOOKS)
}

/// The in-flight threshold below which the host skips `on_request`: only meaningful when the
/// filter has that hook.
pub(crate) fn request_min_in_flight<F: Filter>(filter: &F) -> Option<u32> {
    filter
        .request_min_in_flight()
        .filter(|_| hooks(filter).contains(Hooks::REQUEST))
}

/// Whether the host passes the path to `on_request`: only meaningful when the filter has that
/// hook.
pub(crate) fn request_path<F: Filter>(filter: &F) -> bool {
    filter.wants_path() && hooks(filter).contains(Hooks::REQUEST)
}

/// The outcomes the filter's `on_attempt` sees: only meaningful when it has that hook.
pub(crate) fn attempt_outcomes<F: Filter>(filter: &F) -> crate::AttemptOutcomes {
    if hooks(filter).contains(Hooks::ATTEMPT) {
        filter.attempt_outcomes()
    } else {
        crate::AttemptOutcomes::All
    }
}

pub(crate) fn on_request<F: Filter>(filter: &mut F) -> Action {
    filter.on_request(&mut Request::current())
}

pub(crate) fn endpoints_changed<F: Filter>(filter: &mut F, cluster: &str, endpoints: &[Endpoint]) {
    filter.endpoints_changed(cluster, endpoints);
}

pub(crate) fn pick_endpoint<F: Filter>(filter: &mut F, ctx: &PickContext) -> Option<u32> {
    filter.pick_endpoint(ctx)
}

pub(crate) fn on_attempt<F: Filter>(filter: &mut F, outcome: &AttemptOutcome) -> AttemptAction {
    filter.on_attempt(outcome)
}

pub(crate) fn on_response<F: Filter>(filter: &mut F) {
    filter.on_response(&mut Response::current());
}

pub(crate) fn on_done<F: Filter>(filter: &mut F, summary: &RequestSummary) {
    filter.on_done(summary);
}
