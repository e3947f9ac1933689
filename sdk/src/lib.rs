//! Write filters for Spindle, the WebAssembly-programmable HTTP proxy, in Rust.
//!
//! A filter is a type that implements [`Filter`]: a typed config read with serde, and the hooks it
//! cares about. `#[spindle_sdk::filter]` on the `impl` block declares those hooks to the host (the
//! host never calls a hook you did not write) and exports the type as the component's filter.
//!
//! ```
//! use spindle_sdk::{Action, Filter, Request, Response};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config { greeting: String }
//!
//! pub struct Hello { greeting: String }
//!
//! #[spindle_sdk::filter]
//! impl Filter for Hello {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, spindle_sdk::InitError> {
//!         Ok(Hello { greeting: config.greeting })
//!     }
//!     fn on_request(&mut self, req: &mut Request) -> Action {
//!         req.set_header("x-hello", &self.greeting);
//!         Action::Continue
//!     }
//!     fn on_response(&mut self, resp: &mut Response) {
//!         resp.set_header("x-filtered-by", "hello");
//!     }
//! }
//! ```
//!
//! Build it for `wasm32-unknown-unknown` (`cargo build --profile wasm --target
//! wasm32-unknown-unknown`) and turn the core module into a component with
//! `spindle-componentize`. Test it natively, without Wasm, with [`testing`].
//!
//! # State
//!
//! The host keeps a pool of instances of each filter and may run each hook of one request in a
//! different instance. Keep per-request state in request variables ([`Request::set_var`]),
//! state shared by all instances in the [`store`], and use fields of your filter only as caches
//! (a balancer's endpoint tables, metric handles).
//!
//! # Layout
//!
//! - `filter`: the [`Filter`] trait, [`Hooks`] and [`InitError`].
//! - `types`: the values hooks receive and return ([`Action`], [`LocalReply`], [`Endpoint`],
//!   [`PickContext`], [`AttemptOutcome`], [`AttemptAction`], [`RequestSummary`], stats).
//! - `request`, `response`: the [`Request`] and [`Response`] handles (lazy host calls, no copies).
//! - [`log`], [`time`], [`random`], [`endpoints`], [`metrics`], [`store`]: the typed host API.
//! - `alloc`: the allocator filters get on `wasm32` (feature `allocator`, on by default): small
//!   blocks from size-class free lists, so the strings a hook allocates and frees cost little.
//! - `config`: JSON config decoding with errors that name the offending key.
//! - `runtime`: the one place that runs `init` and the hooks; used by the Wasm export glue and by
//!   the test driver alike.
//! - `sys`: every host call, dispatched to the `wit-bindgen` imports on `wasm32` and to the mock
//!   host of [`testing`] elsewhere.
//! - [`testing`] (not on `wasm32`): the native mock host and the test driver.
//! - `wit` (hidden): the generated bindings; `export` (hidden): the glue the macro expands to.
#![deny(missing_docs)]

// Lets the generated bindings and the macro's expansion name this crate the same way inside and
// outside it.
extern crate self as spindle_sdk;

// Natively only its tests use it: the global allocator is installed on `wasm32`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod alloc;
mod config;
mod filter;
// Natively only its tests call it: the functions are exported on `wasm32`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod mem;
mod request;
mod response;
mod runtime;
mod sys;
mod types;

pub mod endpoints;
pub mod log;
pub mod metrics;
pub mod random;
pub mod store;
pub mod time;
pub mod trace;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod export;

pub use crate::filter::{Filter, Hooks, InitError};
pub use crate::request::Request;
pub use crate::response::Response;
pub use crate::types::{
    Action, AttemptAction, AttemptError, AttemptOutcome, AttemptOutcomes, ClusterStats, Endpoint,
    EndpointStats, LocalReply, PickContext, RequestSummary,
};

/// Marks `impl Filter for YourType` as this component's filter.
///
/// It declares the hooks the block defines (so the host never calls a default no-op) and, when
/// compiling for `wasm32`, emits the component export glue. Use it once per filter crate.
/// An instance may narrow the declared set for its config with [`Filter::hooks`].
///
/// Misuse is a compile error pointing at the culprit: the attribute on anything but an
/// `impl Filter for Type` block, a generic impl, a method that is not a hook, a hand-written
/// `HOOKS`, or `endpoints_changed` without `pick_endpoint`.
///
/// ```
/// # use spindle_sdk::{Action, Filter, Request};
/// pub struct Tag;
///
/// #[spindle_sdk::filter]
/// impl Filter for Tag {
///     type Config = spindle_sdk::NoConfig;
///     fn new(_: Self::Config) -> Result<Self, spindle_sdk::InitError> { Ok(Tag) }
///     fn on_request(&mut self, req: &mut Request) -> Action {
///         req.set_header("x-tag", "1");
///         Action::Continue
///     }
/// }
/// assert_eq!(<Tag as Filter>::HOOKS, spindle_sdk::Hooks::REQUEST);
/// ```
pub use spindle_sdk_macros::filter;

pub use crate::config::NoConfig;

/// The bindings `wit-bindgen` generates for `sdk/wit/filter.wit`. Not a stable API: use the
/// friendly types of this crate.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "wit",
        world: "spindle-filter",
        // Borrowed nested lists on imports: `record-metric` takes `&[&str]`, no copies.
        ownership: Borrowing { duplicate_if_necessary: false },
        pub_export_macro: true,
        export_macro_name: "__export_spindle_filter",
        default_bindings_module: "::spindle_sdk::wit",
        runtime_path: "::spindle_sdk::wit::__rt",
    });

    #[doc(hidden)]
    pub use wit_bindgen::rt as __rt;
}
