//! The Wasm side of the host: engine, loaded filter versions with their
//! instance pools, the host API filters call, and the shared store.

mod engine;
mod filter;
mod host;
mod store;

/// Bindings generated from `sdk/wit`, the only thing host and SDK share.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "spindle-filter",
    });
}

pub use self::bindings::exports::spindle::filter::filter::{
    AttemptAction, AttemptOutcome, RequestSummary,
};
pub use self::bindings::spindle::filter::types::{AttemptError, Hooks};
pub use self::engine::{WasmEngine, default_cache_dir};
pub use self::filter::{FilterError, FilterModule, LoadError, RequestAction, sha256_hex};
pub use self::host::{ClusterRefs, HostEnv, MAX_HEADERS};
pub use self::store::SharedStore;
