//! The [`Filter`] trait, the [`Hooks`] a filter declares, and [`InitError`].

use std::fmt;

use serde::de::DeserializeOwned;

use crate::request::Request;
use crate::response::Response;
use crate::types::{Action, AttemptAction, AttemptOutcome, Endpoint, PickContext, RequestSummary};

/// A Spindle filter.
///
/// Implement it on your type and put `#[spindle_sdk::filter]` on the `impl` block. Every hook has
/// a default that does nothing; the macro declares to the host only the hooks the block defines.
///
/// Hooks run in this order for one request (each possibly in a different instance):
/// [`on_request`](Filter::on_request) in chain order, [`pick_endpoint`](Filter::pick_endpoint) on
/// the first balancer of the chain, [`on_attempt`](Filter::on_attempt) after every upstream
/// attempt, [`on_response`](Filter::on_response) then [`on_done`](Filter::on_done) in reverse
/// chain order.
pub trait Filter: Sized + 'static {
    /// The filter's configuration, decoded with serde from the `config` table of its
    /// `[filter.NAME]` section (an empty table when absent). Use
    /// `#[serde(deny_unknown_fields)]` so that typos are errors, and [`NoConfig`](crate::NoConfig)
    /// when the filter takes no settings.
    type Config: DeserializeOwned;

    /// The hooks this filter implements. `#[spindle_sdk::filter]` sets it; do not write it by hand.
    /// Without the macro every hook is declared.
    const HOOKS: Hooks = Hooks::ALL;

    /// Builds an instance from its config. Called once per instance, and by `spindle check`.
    /// Return an [`InitError`] naming the key when the config is well-typed but wrong.
    fn new(config: Self::Config) -> Result<Self, InitError>;

    /// The hooks this instance asks the host to call: [`HOOKS`](Filter::HOOKS) unless you narrow
    /// it for the config at hand (a retry filter without a per-try timeout needs no
    /// `on_request`). Hooks outside `HOOKS` are ignored.
    fn hooks(&self) -> Hooks {
        Self::HOOKS
    }

    /// A per-try timeout the host applies to every request that passes this filter, without a
    /// hook call (a request's own [`Request::set_per_try_timeout`] wins; among filters, the last
    /// in chain order that declares one). Declared once, at init; `None` by default.
    fn per_try_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Asks the host to call [`on_request`](Filter::on_request) only when the request's chosen
    /// cluster has at least this many attempts in flight (as
    /// [`endpoints::cluster_stats`](crate::endpoints::cluster_stats) counts them), and to skip it
    /// when no cluster is chosen yet. For admission control whose `on_request` can only refuse
    /// under load: the common request then costs no hook call. `None` (the default): always
    /// called. Declared once, at init.
    fn request_min_in_flight(&self) -> Option<u32> {
        None
    }

    /// Asks the host to pass the request's path with every [`on_request`](Filter::on_request)
    /// call: the first [`Request::path`] of the hook then costs no host call (about 1,000
    /// instructions saved), while a hook that does not read the path pays for the copy (about
    /// 400). Say `true` when `on_request` reads the path on most requests, as a router does.
    /// `false` by default. Declared once, at init.
    fn wants_path(&self) -> bool {
        false
    }

    /// Which outcomes [`on_attempt`](Filter::on_attempt) is called with:
    /// [`AttemptOutcomes::All`](crate::AttemptOutcomes::All) (the default), or only failures and
    /// recoveries
    /// ([`FailuresAndRecoveries`](crate::AttemptOutcomes::FailuresAndRecoveries)).
    /// Declared once, at init.
    fn attempt_outcomes(&self) -> crate::AttemptOutcomes {
        crate::AttemptOutcomes::All
    }

    /// Request phase, in chain order: read and change the request, choose the cluster, or answer
    /// locally with [`Action::Respond`] (which stops the chain), or wait with [`Action::Delay`]
    /// (the host sleeps, then runs the next filter).
    fn on_request(&mut self, req: &mut Request) -> Action {
        let _ = req;
        Action::Continue
    }

    /// The members of `cluster` that may be picked changed (or this instance has not seen them
    /// yet). Ejected endpoints are left out. Balancers rebuild their tables here.
    fn endpoints_changed(&mut self, cluster: &str, endpoints: &[Endpoint]) {
        let _ = (cluster, endpoints);
    }

    /// Picks an endpoint id among those last passed to
    /// [`endpoints_changed`](Filter::endpoints_changed) for `ctx.cluster`; `None` when there is
    /// none (the host then answers 503).
    fn pick_endpoint(&mut self, ctx: &PickContext) -> Option<u32> {
        let _ = ctx;
        None
    }

    /// Sees the outcome of every upstream attempt. When any filter answers
    /// [`AttemptAction::Retry`], the host retries after the longest delay asked for.
    fn on_attempt(&mut self, outcome: &AttemptOutcome) -> AttemptAction {
        let _ = outcome;
        AttemptAction::Done
    }

    /// Response phase, in reverse chain order: read and change the status and headers.
    fn on_response(&mut self, resp: &mut Response) {
        let _ = resp;
    }

    /// After the response was sent (or failed), in reverse chain order.
    fn on_done(&mut self, summary: &RequestSummary) {
        let _ = summary;
    }
}

/// The set of hooks a filter implements.
///
/// ```
/// use spindle_sdk::Hooks;
/// let hooks = Hooks::REQUEST.union(Hooks::RESPONSE);
/// assert!(hooks.contains(Hooks::RESPONSE));
/// assert!(!hooks.contains(Hooks::PICK));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hooks(u8);

impl Hooks {
    /// No hook.
    pub const NONE: Hooks = Hooks(0);
    /// [`Filter::on_request`].
    pub const REQUEST: Hooks = Hooks(1);
    /// [`Filter::pick_endpoint`] and [`Filter::endpoints_changed`].
    pub const PICK: Hooks = Hooks(1 << 1);
    /// [`Filter::on_attempt`].
    pub const ATTEMPT: Hooks = Hooks(1 << 2);
    /// [`Filter::on_response`].
    pub const RESPONSE: Hooks = Hooks(1 << 3);
    /// [`Filter::on_done`].
    pub const DONE: Hooks = Hooks(1 << 4);
    /// Every hook.
    pub const ALL: Hooks = Hooks(0b1_1111);

    /// Both sets.
    pub const fn union(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Whether every hook of `other` is in `self`.
    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }

    /// The hooks in both sets.
    pub const fn intersection(self, other: Hooks) -> Hooks {
        Hooks(self.0 & other.0)
    }

    /// The hooks of `self` not in `other`.
    pub const fn difference(self, other: Hooks) -> Hooks {
        Hooks(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Hooks, &str); 5] = [
            (Hooks::REQUEST, "REQUEST"),
            (Hooks::PICK, "PICK"),
            (Hooks::ATTEMPT, "ATTEMPT"),
            (Hooks::RESPONSE, "RESPONSE"),
            (Hooks::DONE, "DONE"),
        ];
        let mut set = f.debug_set();
        for (hook, name) in NAMES {
            if self.contains(hook) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// Why a filter refused its config (or could not start).
///
/// The message reaches the operator through `spindle check` and the host log, prefixed with the
/// filter's name: say which key is wrong and what would be right.
///
/// ```
/// use spindle_sdk::InitError;
/// let e = InitError::key("routes[2]", "needs exactly one of `cluster` or `split`");
/// assert_eq!(e.to_string(), "routes[2]: needs exactly one of `cluster` or `split`");
/// let e: InitError = "no routes".into();
/// assert_eq!(e.to_string(), "no routes");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError(String);

impl InitError {
    /// An error with a free-form message.
    pub fn new(message: impl Into<String>) -> InitError {
        InitError(message.into())
    }

    /// An error about one key of the config (`key` may be a path such as `routes[2].split`).
    pub fn key(key: &str, message: impl fmt::Display) -> InitError {
        InitError(format!("{key}: {message}"))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InitError {}

impl From<String> for InitError {
    fn from(message: String) -> InitError {
        InitError(message)
    }
}

impl From<&str> for InitError {
    fn from(message: &str) -> InitError {
        InitError(message.to_owned())
    }
}
