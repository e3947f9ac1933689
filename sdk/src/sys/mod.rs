//! Every host call the SDK makes, in friendly types.
//!
//! On `wasm32` they go to the `wit-bindgen` imports (`wasm.rs`); elsewhere to the thread-local mock
//! host of [`crate::testing`]. The public modules call only these functions, so a filter behaves
//! the same under `cargo test` as inside Spindle.

#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
pub(crate) use self::wasm::*;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::sys::*;
