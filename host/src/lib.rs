//! Spindle: a WebAssembly-programmable HTTP proxy.
//!
//! The library behind the `spindle` binary (`src/main.rs` is only the CLI);
//! it is a library so that benchmarks and tools can drive the same code.
//!
//! # Layout
//! The modules follow one request:
//! - [`listener`]: accept TCP, serve HTTP/1.1 and HTTP/2, limits, drain.
//! - [`chain`]: the filter phases of one request, attempts and retries,
//!   local responses.
//! - [`http1`]: HTTP/1.1 body framing shared by the listener and the upstream client.
//! - [`upstream`]: clusters, endpoints and their stats, ejection, pooled
//!   clients, request and response bodies.
//!
//! Beside them:
//! - [`wasm`]: the engine, filter versions with their instance pools, the
//!   host side of the ABI (`sdk/wit`), the shared store.
//! - [`config`]: the TOML schema, `file:line` errors, validation.
//! - [`runtime`]: the swappable snapshot of config + filters, reloads and
//!   the file watcher that triggers them.
//! - [`admin`]: `/ready`, `/metrics`, `/config`, `/clusters`.
//! - [`telemetry`]: metrics registry and logging.
//! - [`clock`]: the coarse clock read per request for what counts in ms or s.

pub mod admin;
pub mod chain;
pub mod clock;
pub mod config;
pub mod http1;
pub mod listener;
pub mod runtime;
pub mod telemetry;
pub mod upstream;
pub mod wasm;

/// A `HashMap` with foldhash, randomly seeded per process: the host's maps on the request path
/// (shared store, clusters, chains, metric series) hash a key or two per hook call.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
