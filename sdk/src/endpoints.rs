//! Host-kept endpoint and cluster statistics, and ejection.

use std::time::Duration;

use crate::sys;
use crate::types::{ClusterStats, EndpointStats, millis_u32};

/// Statistics of one endpoint; `None` when the id is unknown.
pub fn endpoint_stats(id: u32) -> Option<EndpointStats> {
    sys::endpoint_stats(id)
}

/// The address (`host:port`) of an endpoint, whatever its cluster and whether it is ejected;
/// `None` when the id is unknown (it may have left its cluster since).
///
/// A balancer already has the addresses from
/// [`Filter::endpoints_changed`](crate::Filter::endpoints_changed); this is for the other filters,
/// which know endpoints only by the ids of [`AttemptOutcome`](crate::AttemptOutcome) and
/// [`RequestSummary`](crate::RequestSummary).
pub fn endpoint_address(id: u32) -> Option<String> {
    sys::endpoint_address(id)
}

/// Statistics of one cluster; `None` when the name is unknown.
pub fn cluster_stats(cluster: &str) -> Option<ClusterStats> {
    sys::cluster_stats(cluster)
}

/// Requests the host sent to `cluster` (their first attempts, from every listener) over the
/// last `window` of its monotonic clock, rounded up to whole seconds, the current second
/// included; at most the last 60 seconds. 0 when the cluster is unknown. A retry budget reads
/// its request count here instead of counting requests in a hook.
pub fn cluster_requests(cluster: &str, window: Duration) -> u64 {
    let seconds = window.as_millis().div_ceil(1000).clamp(1, 60) as u32;
    sys::cluster_requests(cluster, seconds)
}

/// Ejects an endpoint from its cluster's balancing set for `duration` (whole milliseconds,
/// saturating at `u32::MAX` ms). Returns false when the endpoint is unknown.
pub fn eject_endpoint(id: u32, duration: Duration) -> bool {
    sys::eject_endpoint(id, millis_u32(duration))
}
