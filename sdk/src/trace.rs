//! Attributes and events on the request's trace span.
//!
//! When Spindle exports traces (`[telemetry]` in its config), every request has a server span and
//! every upstream attempt a client span. A filter adds to the *current* span: the attempt's during
//! [`Filter::pick_endpoint`](crate::Filter::pick_endpoint) and
//! [`Filter::on_attempt`](crate::Filter::on_attempt), else the request's. The calls are cheap
//! no-ops returning `false` when the request is not traced or not sampled, so filters can call
//! them unconditionally. Limits per request: 128 attributes and events together, texts up to
//! 4 KiB, 32 attributes per event.
//!
//! ```
//! spindle_sdk::trace::set_attribute("app.tenant", "acme");
//! spindle_sdk::trace::add_event("cache_miss", &[("key", "user:42")]);
//! ```

use crate::sys;

/// Sets an attribute on the current span. Returns whether it was recorded.
pub fn set_attribute(key: &str, value: &str) -> bool {
    sys::span_set_attribute(key, value)
}

/// Adds a timestamped event with attributes to the current span (the host adds
/// `spindle.filter` with the filter's name). Returns whether it was recorded.
pub fn add_event(name: &str, attributes: &[(&str, &str)]) -> bool {
    sys::span_add_event(name, attributes)
}
