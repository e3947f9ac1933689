//! Upstream clusters: membership, endpoint stats, ejection, each endpoint's
//! connections, and the request and response bodies sent through them.

mod body;
mod cluster;
mod h1;
mod pool;

pub use self::body::{DownBody, UpBody};
pub use self::cluster::{AttemptResult, Cluster, Endpoint, Healthy, InFlight, Upstreams};
pub use self::h1::{H1Error, HeadWriter, Wire};
pub use self::pool::{
    BoxError, ConnStats, Outgoing, PoolSettings, SendError, UpstreamBody, discard, send,
};
