//! One request through a listener's chain without network I/O, for the
//! micro-benchmarks (`host/benches`): the phases and bookkeeping of
//! [`handle`](super::handle), with the upstream's answer given instead of
//! fetched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};

use super::local::local;
use super::{
    Outcome, RequestCtx, Run, attempt_error, request_id, retry_after_ms, strip_hop_by_hop,
};
use crate::runtime::Proxy;
use crate::upstream::{AttemptResult, DownBody, InFlight, UpBody};
use crate::wasm::AttemptOutcome;

/// Runs `req` through the chain of `listener` as [`handle`](super::handle)
/// does (request phase, pick, attempt phase, response phase, done phase,
/// stats), except that no body is read and no connection is made: the
/// endpoint picked for the first attempt answers with `upstream`'s head.
/// A retry the filters ask for is not made; the answer is kept.
///
/// Only a filter's `delay` awaits (a tokio timer): without one, the future
/// is ready on its first poll.
pub async fn handle_without_io(
    proxy: &Arc<Proxy>,
    listener: &str,
    req: Request<()>,
    client: SocketAddr,
    upstream: Response<()>,
) -> Response<DownBody> {
    let start = Instant::now();
    let runtime = proxy.runtime.load_full();
    let Some(chain) = runtime.chains.get(listener).cloned() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "listener has no chain\n");
    };
    let (parts, ()) = req.into_parts();
    let request_id = request_id(parts.headers.get("x-request-id").map(|v| v.as_bytes()));
    let mut ctx = Some(Box::new(RequestCtx::new(parts, client, request_id)));
    let mut run = Run {
        proxy,
        chain: &chain,
        ctx: &mut ctx,
        attempts: 0,
        endpoint: None,
        cluster: None,
        timer: None,
    };
    let outcome = match run.request_phase().await {
        Some(resp) => Outcome::Local(resp),
        None => run.first_attempt_without_io(upstream),
    };
    let resp = run.response_phase(outcome);
    let status = resp.status();
    let duration = start.elapsed();
    chain
        .stats
        .record(status.as_u16(), duration.as_nanos() as u64);
    run.done(status, duration);
    resp
}

impl Run<'_> {
    /// `upstream_phase` for one attempt whose endpoint answers `upstream`.
    fn first_attempt_without_io(&mut self, upstream: Response<()>) -> Outcome {
        let cluster = match self.chosen_cluster() {
            Ok(c) => c,
            Err(outcome) => return *outcome,
        };
        let (attempt, endpoint) = match self.begin_attempt(&cluster, None) {
            Ok(a) => a,
            Err(outcome) => return *outcome,
        };
        // Built as for a real attempt, then dropped instead of sent.
        let mut wire = None;
        let sent_req = self.outgoing(&endpoint, UpBody::full(Bytes::new()), false, &mut wire);
        let sent = Instant::now();
        let in_flight = InFlight::new(endpoint.clone());
        drop(sent_req);
        drop(in_flight);
        let latency = sent.elapsed();
        self.keep_wire(wire);
        let (mut parts, ()) = upstream.into_parts();
        let kind = AttemptResult::from_status(parts.status.as_u16());
        let notable = self.record_attempt(&endpoint, kind, latency);
        cluster.duration.observe_ns(latency.as_nanos() as u64);
        let status = parts.status.as_u16();
        let retry_after = parts.headers.get(header::RETRY_AFTER);
        let delay = self.attempt_phase(notable, || AttemptOutcome {
            cluster: cluster.name.to_string(),
            endpoint: endpoint.id,
            attempt,
            status: Some(status),
            error: attempt_error(kind),
            latency_ns: latency.as_nanos() as u64,
            retryable_body: true,
            retry_after_ms: retry_after
                .and_then(|v| retry_after_ms(v.as_bytes(), SystemTime::now())),
        });
        if let Err(r) = delay {
            return Outcome::Local(*r);
        }
        // What `response_phase` does to an upstream response's head.
        strip_hop_by_hop(&mut parts.headers);
        Outcome::Local(Response::from_parts(parts, DownBody::Local(None)))
    }
}
