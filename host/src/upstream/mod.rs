//! Upstream clusters: membership, endpoint stats, ejection, pooled clients
//! and the request bodies sent to them.

mod body;
mod cluster;
mod pool;

pub use self::body::{DownBody, UpBody};
pub use self::cluster::{AttemptResult, Cluster, Endpoint, Healthy, InFlight, Upstreams};
pub use self::pool::{
    ConnStats, IDLE_TIMEOUT, PoolSettings, SendError, UpstreamBody, discard, send,
};
