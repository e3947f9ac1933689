//! One request through a listener's filter chain: request phase, endpoint
//! pick, upstream attempts with the filters' retry decisions, response phase,
//! done phase.

mod context;
mod local;
mod without_io;

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;

pub use self::context::{MAX_VAR_BYTES, MAX_VARS, RequestCtx, RequestId, ResponseHead};
use self::local::local;
pub use self::without_io::handle_without_io;
use crate::config::FailMode;
use crate::http1::Role;
use crate::listener::RequestBody;
use crate::runtime::{Chain, Proxy};
use crate::telemetry::access::{AccessEntry, AccessLog};
use crate::telemetry::trace;
use crate::upstream::{
    self, AttemptResult, BoxError, Cluster, DownBody, Endpoint, H1Error, HeadWriter, InFlight,
    Outgoing, SendError, UpBody, UpstreamBody, Wire,
};
use crate::wasm::{
    AttemptAction, AttemptError, AttemptOutcome, FilterError, FilterModule, Hooks, RequestAction,
    RequestSummary,
};

/// The listener a request came in on: its name and its access log.
pub struct Site {
    pub name: String,
    pub access_log: Option<Arc<AccessLog>>,
}

/// The timer of an attempt's per-try deadline, lent by a connection to its requests one after
/// the other (`handle`'s `timer`). Each attempt moves its deadline: a later one (the usual
/// case, a connection's requests being sequential) is a compare-and-swap on the registered
/// timer, which tokio moves in its wheel only when the old deadline comes; a timer made per
/// attempt is put into the wheel and taken out again every time.
pub type AttemptTimer = Pin<Box<tokio::time::Sleep>>;

/// What an HTTP/1.1 connection lends each of its requests in turn, given back with the
/// response: the [`AttemptTimer`] and the request context's allocation (released: it holds
/// nothing of the request it served; the listener writes the next request's head into it).
/// HTTP/2 streams, which run side by side, lend nothing (`Lent::default()`): each attempt
/// makes its own timer, each request its own context.
#[derive(Default)]
pub struct Lent {
    pub timer: Option<AttemptTimer>,
    pub ctx: Option<Box<RequestCtx>>,
}

/// Answers one downstream request, whose head and client are in `ctx` (its id is set here).
/// Never fails: every error becomes a local response.
pub async fn handle(
    proxy: &Arc<Proxy>,
    site: &Site,
    mut ctx: Box<RequestCtx>,
    body: RequestBody,
    timer: Option<AttemptTimer>,
) -> (Response<DownBody>, Lent) {
    let start = Instant::now();
    // One snapshot for the whole request: a hot swap during it does not
    // change the filters it runs through.
    let runtime = proxy.runtime.load_full();
    let Some(chain) = runtime.chains.get(&site.name).cloned() else {
        ctx.release();
        return (
            local(StatusCode::SERVICE_UNAVAILABLE, "listener has no chain\n"),
            Lent {
                timer,
                ctx: Some(ctx),
            },
        );
    };
    ctx.request_id = request_id(match &ctx.raw {
        Some(raw) => raw.first(Role::RequestId),
        None => ctx
            .head
            .headers
            .get(&X_REQUEST_ID)
            .map(HeaderValue::as_bytes),
    });
    let client = ctx.client;
    // What the access log reports is the request as it arrived, before
    // filters rewrite it.
    let logged = site.access_log.as_ref().map(|_| {
        let head = &ctx.head;
        (
            SystemTime::now(),
            head.method.clone(),
            head.uri
                .path_and_query()
                .map_or_else(|| head.uri.path().to_string(), |p| p.as_str().to_string()),
        )
    });
    if let Some(t) = proxy.tracing.get() {
        // The trace context and attributes are read from the map.
        ctx.headers_mut();
        ctx.trace = Some(t.start_server(&ctx.head, client, &site.name, &ctx.request_id));
    }
    let mut ctx = Some(ctx);
    let mut run = Run {
        proxy,
        chain: &chain,
        ctx: &mut ctx,
        attempts: 0,
        endpoint: None,
        cluster: None,
        timer,
    };
    let (status, resp) = run.respond(body).await;
    let duration = start.elapsed();
    chain
        .stats
        .record(status.as_u16(), duration.as_nanos() as u64);
    run.done(status, duration);
    let endpoint = run.endpoint.clone();
    let attempts = run.attempts;
    let timer = run.timer.take();
    if let Some(ctx) = ctx.as_mut() {
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id());
        if let Some(t) = ctx.trace.take() {
            trace::end_server(t, status.as_u16(), ctx.cluster.as_deref());
        }
        if let (Some(log), Some((at, method, path))) = (&site.access_log, &logged) {
            log.log(&AccessEntry {
                start: *at,
                method: method.as_str(),
                path,
                status: status.as_u16(),
                cluster: ctx.cluster.as_deref(),
                endpoint: endpoint.as_ref().map(|e| e.address.as_str()),
                attempts,
                duration,
                trace_id,
                request_id: &ctx.request_id,
                client,
            });
        }
    }
    if let Some(ctx) = ctx.as_mut() {
        ctx.release();
    }
    (resp, Lent { timer, ctx })
}

struct Run<'a> {
    proxy: &'a Arc<Proxy>,
    chain: &'a Chain,
    ctx: &'a mut Option<Box<RequestCtx>>,
    attempts: u32,
    /// The endpoint of the last attempt.
    endpoint: Option<Arc<Endpoint>>,
    /// The last cluster looked up by name.
    cluster: Option<Arc<Cluster>>,
    /// The connection's per-try timer, if it lent one.
    timer: Option<AttemptTimer>,
}

/// What the upstream phase produced.
enum Outcome {
    Upstream(Response<UpstreamBody>),
    Local(Response<DownBody>),
}

impl Run<'_> {
    fn ctx(&mut self) -> &mut RequestCtx {
        // The context is only out of this Option during a synchronous hook call.
        self.ctx
            .as_mut()
            .expect("request context is bound to this request between hook calls")
    }

    /// Applies a filter's fail mode: `Some(response)` when the request must stop.
    fn filter_failed(&self, e: &FilterError, fail: FailMode) -> Option<Response<DownBody>> {
        match fail {
            FailMode::Open => None,
            FailMode::Closed => {
                let mut r = local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("filter `{}` failed ({})\n", e.filter, e.kind.label()),
                );
                if let Ok(v) = HeaderValue::from_str(&e.filter) {
                    r.headers_mut().insert("x-spindle-filter", v);
                }
                Some(r)
            }
        }
    }

    async fn respond(&mut self, body: RequestBody) -> (StatusCode, Response<DownBody>) {
        let outcome = match self.request_phase().await {
            Some(resp) => Outcome::Local(resp),
            None => self.upstream_phase(body).await,
        };
        let resp = self.response_phase(outcome);
        (resp.status(), resp)
    }

    async fn request_phase(&mut self) -> Option<Response<DownBody>> {
        for f in self.chain.filters.iter().filter(|f| f.has(Hooks::REQUEST)) {
            if !self.admits(f) {
                continue;
            }
            match f.on_request(self.ctx) {
                Ok(RequestAction::Continue) => {}
                Ok(RequestAction::Route(cluster)) => self.ctx().cluster = Some(cluster),
                Ok(RequestAction::Respond(reply)) => return Some(local::from_reply(reply)),
                Ok(RequestAction::Delay(ms)) => {
                    // The hook has returned its instance to the pool: the wait holds only this
                    // request's task and its context.
                    tracing::trace!(filter = %f.name, ms, "request delayed");
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    }
                }
                Err(e) => {
                    if let Some(r) = self.filter_failed(&e, f.fail_mode()) {
                        return Some(r);
                    }
                }
            }
        }
        None
    }

    /// Whether `f`'s `on-request` runs for this request: always, unless it declared
    /// `request-min-in-flight` and the chosen cluster (if any) has fewer attempts in flight.
    fn admits(&mut self, f: &FilterModule) -> bool {
        let Some(min) = f.request_min_in_flight else {
            return true;
        };
        self.cluster().is_some_and(|c| c.in_flight() >= min)
    }

    /// The cluster the request names now, if it is defined: looked up once per name.
    fn cluster(&mut self) -> Option<Arc<Cluster>> {
        let ctx = self.ctx.as_ref()?;
        let name = ctx.cluster.as_deref()?;
        if let Some(c) = self.cluster.as_ref().filter(|c| &*c.name == name) {
            return Some(c.clone());
        }
        let c = self.proxy.upstreams.cluster(name)?;
        self.cluster = Some(c.clone());
        Some(c)
    }

    /// The per-try timeout of this request: its own (set by a filter), else the one the last
    /// filter of the chain declared, else the cluster's.
    fn per_try_timeout(&mut self, cluster_timeout_ms: u64) -> Duration {
        let declared = self
            .chain
            .filters
            .iter()
            .rev()
            .find_map(|f| f.per_try_timeout);
        self.ctx()
            .per_try_timeout
            .or(declared)
            .unwrap_or(Duration::from_millis(cluster_timeout_ms))
    }

    /// The cluster the request phase chose: 404 when none was, 503 when it
    /// names no cluster.
    fn chosen_cluster(&mut self) -> Result<Arc<Cluster>, Box<Outcome>> {
        if let Some(cluster) = self.cluster() {
            return Ok(cluster);
        }
        let ctx = self.ctx();
        Err(Box::new(Outcome::Local(match &ctx.cluster {
            None => local(
                StatusCode::NOT_FOUND,
                &format!("no route for {}\n", ctx.head.uri.path()),
            ),
            Some(name) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cluster `{name}` is not defined\n"),
            ),
        })))
    }

    /// Counts a new attempt, starts its span and picks its endpoint: 503
    /// when the cluster has none left.
    fn begin_attempt(
        &mut self,
        cluster: &Cluster,
        previous: Option<u32>,
    ) -> Result<(u32, Arc<Endpoint>), Box<Outcome>> {
        self.attempts += 1;
        let attempt = self.attempts;
        // One (coarse) clock read for the pick and the request count.
        let now_ms = self.proxy.upstreams.now_ms();
        if let Some(t) = self.proxy.tracing.get() {
            let ctx = self.ctx();
            if let Some(trace) = ctx.trace.as_mut() {
                t.start_attempt(trace, &ctx.head.method, attempt);
            }
        }
        let endpoint = match self.pick(cluster, attempt, previous, now_ms) {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Err(Box::new(Outcome::Local(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no healthy endpoint in cluster `{}`\n", cluster.name),
                ))));
            }
            Err(r) => return Err(Box::new(Outcome::Local(*r))),
        };
        self.endpoint = Some(endpoint.clone());
        if attempt == 1 {
            cluster.requests.record(now_ms / 1_000);
        }
        if let Some(trace) = self.ctx().trace.as_mut() {
            trace::attempt_endpoint(trace, &cluster.name, &endpoint);
        }
        Ok((attempt, endpoint))
    }

    async fn upstream_phase(&mut self, body: RequestBody) -> Outcome {
        let cluster = match self.chosen_cluster() {
            Ok(c) => c,
            Err(outcome) => return *outcome,
        };
        let limit = self.chain.retry_buffer_bytes;
        // Without a body (most requests) the reading future is not built: its state would be
        // one more part of the chain's future touched per request.
        let read = if body.is_end_stream() {
            Ok(ReqBody::Replayable(Bytes::new()))
        } else {
            buffer(body, limit).await
        };
        let mut body = match read {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Local(local(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read request body: {e}\n"),
                ));
            }
        };
        let settings = cluster.settings.load_full();
        let pool = Cluster::pool_settings(&settings);
        let mut previous = None;
        loop {
            let (attempt, endpoint) = match self.begin_attempt(&cluster, previous) {
                Ok(a) => a,
                Err(outcome) => return *outcome,
            };
            let replayable = matches!(body, ReqBody::Replayable(_));
            let Some(up_body) = body.take() else {
                // A streamed body was already sent once: nothing to send again.
                return Outcome::Local(local(
                    StatusCode::BAD_GATEWAY,
                    "request body cannot be replayed\n",
                ));
            };
            let mut wire = None;
            let req = self.outgoing(&endpoint, up_body, pool.http2, &mut wire);
            let per_try = self.per_try_timeout(settings.timeout_ms);
            let sent = Instant::now();
            let result = {
                let _guard = InFlight::new(endpoint.clone());
                let sending = pin!(upstream::send(&endpoint, pool, &cluster.connections, req));
                // The deadline from `sent`: no second clock read. One past the clock's range
                // is no deadline.
                match (sent.checked_add(per_try), self.timer.as_mut()) {
                    (Some(at), Some(timer)) => {
                        timer.as_mut().reset(at.into());
                        before(timer.as_mut(), sending).await
                    }
                    (Some(at), None) => {
                        before(pin!(tokio::time::sleep_until(at.into())), sending).await
                    }
                    (None, _) => Some(sending.await),
                }
            };
            let latency = sent.elapsed();
            self.keep_wire(wire);
            let (kind, resp) = match result {
                Some(Ok(resp)) => (
                    AttemptResult::from_status(resp.status().as_u16()),
                    Some(resp),
                ),
                Some(Err(e)) => (classify(&e), None),
                None => (AttemptResult::Timeout, None),
            };
            let notable = self.record_attempt(&endpoint, kind, latency);
            cluster.duration.observe_ns(latency.as_nanos() as u64);
            if resp.is_none() {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, attempt, ?kind, "attempt failed");
            }
            let status = resp.as_ref().map(|r| r.status().as_u16());
            let delay = self.attempt_phase(notable, || AttemptOutcome {
                cluster: cluster.name.to_string(),
                endpoint: endpoint.id,
                attempt,
                status,
                error: attempt_error(kind),
                latency_ns: latency.as_nanos() as u64,
                retryable_body: replayable,
                retry_after_ms: resp.as_ref().and_then(retry_after),
            });
            if let Some(trace) = self.ctx().trace.as_mut() {
                trace::end_attempt(trace, status, span_error(kind));
            }
            let delay = match delay {
                Ok(d) => d,
                Err(r) => return Outcome::Local(*r),
            };
            match (delay, resp) {
                (Some(ms), resp) if replayable => {
                    if let Some(r) = resp {
                        upstream::discard(r.into_body());
                    }
                    cluster.retries.fetch_add(1, Ordering::Relaxed);
                    previous = Some(endpoint.id);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    }
                }
                (_, Some(resp)) => return Outcome::Upstream(resp),
                (_, None) => return Outcome::Local(failure_response(kind, attempt, &cluster.name)),
            }
        }
    }

    /// Picks through the chain's balancer (or round robin when it has none).
    fn pick(
        &mut self,
        cluster: &Cluster,
        attempt: u32,
        previous: Option<u32>,
        now_ms: u64,
    ) -> Result<Option<Arc<Endpoint>>, Box<Response<DownBody>>> {
        let healthy = cluster.healthy(now_ms);
        if healthy.endpoints.is_empty() {
            return Ok(None);
        }
        if let Some(b) = &self.chain.balancer {
            match b.pick(self.ctx, cluster, &healthy, attempt, previous) {
                Ok(None) => return Ok(None),
                Ok(Some(id)) => {
                    if let Ok(i) = healthy.endpoints.binary_search_by_key(&id, |e| e.id) {
                        return Ok(Some(healthy.endpoints[i].clone()));
                    }
                    tracing::warn!(filter = %b.name, id, "balancer picked an endpoint outside the healthy set; using round robin");
                }
                Err(e) => {
                    if let Some(r) = self.filter_failed(&e, b.fail_mode()) {
                        return Err(Box::new(r));
                    }
                }
            }
        }
        Ok(Some(cluster.round_robin(&healthy)))
    }

    /// Records an attempt's outcome in its endpoint's stats; returns whether
    /// filters that see only failures and recoveries see it.
    fn record_attempt(&self, endpoint: &Endpoint, kind: AttemptResult, latency: Duration) -> bool {
        endpoint.record(kind, latency)
            || (self.chain.watches_recoveries
                && endpoint.take_recovery(|| self.proxy.upstreams.now_ms()))
    }

    /// Every filter with the attempt hook sees the outcome (those that declared
    /// `failures-and-recoveries` only when it is `notable`); the longest
    /// requested delay wins when any asks for a retry. The outcome is built only when a
    /// filter is to see it.
    fn attempt_phase(
        &mut self,
        notable: bool,
        outcome: impl FnOnce() -> AttemptOutcome,
    ) -> Result<Option<u32>, Box<Response<DownBody>>> {
        let mut delay: Option<u32> = None;
        let outcome = std::cell::LazyCell::new(outcome);
        for f in self
            .chain
            .filters
            .iter()
            .filter(|f| f.has(Hooks::ATTEMPT) && (notable || !f.failures_and_recoveries))
        {
            match f.on_attempt(self.ctx, &outcome) {
                Ok(AttemptAction::Done) => {}
                Ok(AttemptAction::Retry(ms)) => delay = Some(delay.map_or(ms, |d| d.max(ms))),
                Err(e) => {
                    if let Some(r) = self.filter_failed(&e, f.fail_mode()) {
                        return Err(Box::new(r));
                    }
                }
            }
        }
        Ok(delay)
    }

    /// The request an attempt sends, in the endpoint's protocol; an HTTP/1.1 head is
    /// written into `wire`.
    fn outgoing<'w>(
        &mut self,
        endpoint: &Endpoint,
        body: UpBody,
        http2: bool,
        wire: &'w mut Option<Wire>,
    ) -> Outgoing<'w> {
        if http2 {
            Outgoing::Http2(Box::new(self.http2_request(endpoint, body)))
        } else {
            let (w, method) = self.http1_head(endpoint, &body);
            Outgoing::Http1 {
                wire: wire.insert(w),
                method,
                body,
            }
        }
    }

    /// Keeps the buffer of the head an attempt sent in the request context, for the next
    /// request of the client's connection (the context is lent to each in turn).
    fn keep_wire(&mut self, wire: Option<Wire>) {
        if let Some(wire) = wire {
            self.ctx().wire = wire.into_buffer();
        }
    }

    /// The HTTP/1.1 head, written straight from the request context: the client's headers
    /// (without hop-by-hop ones, `x-request-id` and, when traced, the trace context), then
    /// `host` when it had none, `x-request-id`, `x-forwarded-for` with the client added, and
    /// the attempt's trace context. Origin-form target: the endpoint gets the client's `Host`.
    fn http1_head(&mut self, endpoint: &Endpoint, body: &UpBody) -> (Wire, http::Method) {
        let ctx = self.ctx();
        let path = ctx.head.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some(t) = ctx.trace.as_mut() {
            trace::attempt_url(t, endpoint.authority.as_str(), path);
        }
        let context = ctx.trace.as_ref().map(|t| {
            let mut context = HeaderMap::new();
            trace::inject(t.attempt.as_ref().unwrap_or(&t.server), &mut context);
            context
        });
        let head = &ctx.head;
        let traced = ctx.trace.is_some();
        let mut out = HeadWriter::new_in(std::mem::take(&mut ctx.wire), &head.method, path);
        let mut has_host = false;
        // The client's own `x-forwarded-for` values, if it sent any.
        let mut forwarded: Option<Vec<u8>> = None;
        // Whether a header goes on as it is; `x-forwarded-for` values are gathered. (A name the
        // client's `connection` lists, for its hop only whatever it is, is left out before.)
        let mut keep = |value: &[u8], role: Role| {
            match role {
                Role::Connection | Role::TransferEncoding | Role::HopByHop | Role::RequestId => {
                    false
                }
                Role::TraceParent | Role::TraceState => !traced,
                Role::ForwardedFor => {
                    let f = forwarded.get_or_insert_with(Vec::new);
                    f.extend_from_slice(value);
                    f.extend_from_slice(b", ");
                    false
                }
                Role::Host => {
                    has_host = true;
                    true
                }
                // An expectation other than the `100-continue` answered here goes on.
                Role::ContentLength | Role::EndToEnd | Role::Date | Role::Expect => true,
            }
        };
        match &ctx.raw {
            // The client's lines, copied in runs where it wrote them `name: value` CRLF (the
            // names its `connection` lists left out there).
            Some(raw) => out.headers_of(raw, |_, value, role| keep(value, role)),
            None => {
                let listed = connection_listed(&head.headers).unwrap_or_default();
                for (name, value) in &head.headers {
                    let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
                    let role = Role::of(name);
                    if !listed.iter().any(|l| l.as_str().as_bytes() == name) && keep(value, role) {
                        out.header_bytes(name, role, value);
                    }
                }
            }
        }
        if !has_host && let Some(a) = head.uri.authority() {
            out.raw(b"host", a.as_str().as_bytes());
        }
        out.raw(b"x-request-id", ctx.request_id.as_bytes());
        out.forwarded_for(forwarded.as_deref().unwrap_or_default(), ctx.client.ip());
        for (name, value) in context.iter().flatten() {
            out.header(name, value.as_bytes());
        }
        let method = head.method.clone();
        (out.finish(&method, body), method)
    }

    /// The HTTP/2 request: absolute URI (`:authority` is the endpoint).
    fn http2_request(&mut self, endpoint: &Endpoint, body: UpBody) -> Request<UpBody> {
        let ctx = self.ctx();
        ctx.headers_mut();
        let head = &ctx.head;
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(endpoint.authority.clone())
            .path_and_query(path)
            .build()
            .unwrap_or_default();
        let mut headers = head.headers.clone();
        strip_hop_by_hop(&mut headers);
        if !headers.contains_key(header::HOST)
            && let Some(a) = head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, a);
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            headers.insert(X_REQUEST_ID, v);
        }
        append_forwarded_for(&mut headers, ctx.client);
        if let Some(t) = &ctx.trace {
            trace::inject(t.attempt.as_ref().unwrap_or(&t.server), &mut headers);
        }
        if let Some(t) = ctx.trace.as_mut() {
            trace::attempt_url(t, endpoint.authority.as_str(), path);
        }
        let head = &ctx.head;
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req
    }

    fn response_phase(&mut self, outcome: Outcome) -> Response<DownBody> {
        let (mut parts, body) = match outcome {
            Outcome::Upstream(r) => {
                let (mut p, mut b) = r.into_parts();
                // An HTTP/1.1 endpoint's headers stay as it sent them, written on by the
                // listener, unless filters look at them or the client speaks HTTP/2.
                if (self.chain.has_response_hooks || self.ctx().head.version == Version::HTTP_2)
                    && let Some(head) = b.take_head()
                {
                    p.headers = head.to_map();
                }
                strip_hop_by_hop(&mut p.headers);
                (p, DownBody::Upstream(b))
            }
            Outcome::Local(r) => r.into_parts(),
        };
        // The downstream connection's protocol, not the upstream's.
        parts.version = self.ctx().head.version;
        if !self.chain.has_response_hooks {
            return Response::from_parts(parts, body);
        }
        self.ctx().response = Some(ResponseHead {
            status: parts.status,
            headers: std::mem::take(&mut parts.headers),
        });
        let mut failed = None;
        for f in self
            .chain
            .filters
            .iter()
            .rev()
            .filter(|f| f.has(Hooks::RESPONSE))
        {
            if let Err(e) = f.on_response(self.ctx)
                && let Some(r) = self.filter_failed(&e, f.fail_mode())
            {
                failed = Some(r);
                break;
            }
        }
        if let Some(r) = failed {
            self.ctx().response = None;
            return r;
        }
        let head = self.ctx().response.take();
        if let Some(head) = head {
            parts.status = head.status;
            parts.headers = head.headers;
        }
        Response::from_parts(parts, body)
    }

    fn done(&mut self, status: StatusCode, duration: Duration) {
        if !self.chain.has_done_hooks {
            return;
        }
        let summary = RequestSummary {
            status: status.as_u16(),
            cluster: self
                .ctx
                .as_ref()
                .and_then(|c| c.cluster.as_deref().map(str::to_string)),
            endpoint: self.endpoint.as_ref().map(|e| e.id),
            attempts: self.attempts,
            duration_ns: duration.as_nanos() as u64,
        };
        for f in self
            .chain
            .filters
            .iter()
            .rev()
            .filter(|f| f.has(Hooks::DONE))
        {
            // The response is on its way: a failure here can only be counted.
            let _ = f.on_done(self.ctx, &summary);
        }
    }
}

/// What `fut` gives, unless `timer` fires first (`None`). The timer sits next to the
/// future instead of around it: tokio's `timeout_at` would move the whole future (the send's
/// is most of a kilobyte) into its own.
async fn before<F: Future>(
    mut timer: Pin<&mut tokio::time::Sleep>,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// `error.type` of a failed attempt's span.
fn span_error(kind: AttemptResult) -> Option<&'static str> {
    match kind {
        AttemptResult::ConnectFailure => Some("connect_failure"),
        AttemptResult::Reset => Some("reset"),
        AttemptResult::Timeout => Some("timeout"),
        AttemptResult::Error => Some("error"),
        _ => None,
    }
}

/// A request body, buffered when small enough to replay.
enum ReqBody {
    Replayable(Bytes),
    Streaming(Option<UpBody>),
}

impl ReqBody {
    fn take(&mut self) -> Option<UpBody> {
        match self {
            ReqBody::Replayable(b) => Some(UpBody::full(b.clone())),
            ReqBody::Streaming(b) => b.take(),
        }
    }
}

/// Reads the body up to `limit` bytes; a larger one is streamed, not retried. (The caller
/// handles a body already at its end without this future; given one, it returns it empty.)
async fn buffer(mut body: RequestBody, limit: usize) -> Result<ReqBody, BoxError> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(ReqBody::Streaming(Some(UpBody::Stream {
            prefix: Default::default(),
            rest: body,
        })));
    }
    let mut chunks = std::collections::VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            chunks.push_back(data);
            if total > limit {
                return Ok(ReqBody::Streaming(Some(UpBody::Stream {
                    prefix: chunks,
                    rest: body,
                })));
            }
        }
        // Trailers are dropped: they cannot be replayed either.
    }
    if chunks.len() == 1 {
        return Ok(ReqBody::Replayable(chunks.pop_front().unwrap_or_default()));
    }
    let mut all = BytesMut::with_capacity(total);
    for c in chunks {
        all.extend_from_slice(&c);
    }
    Ok(ReqBody::Replayable(all.freeze()))
}

fn classify(e: &SendError) -> AttemptResult {
    let e = match e {
        SendError::Connect(_) => return AttemptResult::ConnectFailure,
        SendError::Http(e) => e,
        SendError::H1(e) => return classify_h1(e),
    };
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return AttemptResult::Reset;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return AttemptResult::Reset;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && is_reset(io)
        {
            return AttemptResult::Reset;
        }
        source = s.source();
    }
    AttemptResult::Error
}

fn classify_h1(e: &H1Error) -> AttemptResult {
    match e {
        H1Error::Incomplete => AttemptResult::Reset,
        H1Error::Io(io) if is_reset(io) => AttemptResult::Reset,
        _ => AttemptResult::Error,
    }
}

/// An I/O error that means the connection went away under the attempt.
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

fn attempt_error(r: AttemptResult) -> Option<AttemptError> {
    match r {
        AttemptResult::ConnectFailure => Some(AttemptError::ConnectFailure),
        AttemptResult::Reset => Some(AttemptError::Reset),
        AttemptResult::Timeout => Some(AttemptError::Timeout),
        AttemptResult::Error => Some(AttemptError::Other),
        _ => None,
    }
}

/// The response's `Retry-After` in milliseconds from now.
fn retry_after(resp: &Response<UpstreamBody>) -> Option<u64> {
    let value = match resp.body().head() {
        Some(head) => head.get("retry-after")?,
        None => resp.headers().get(header::RETRY_AFTER)?.as_bytes(),
    };
    retry_after_ms(value, SystemTime::now())
}

/// A `Retry-After` value in milliseconds from `now`: delta-seconds (RFC 9110 10.2.3) times
/// 1000, or an HTTP-date minus `now` (0 when it is past). None when it parses as neither.
fn retry_after_ms(value: &[u8], now: SystemTime) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds of absurd length saturate rather than fail.
        return Some(text.parse::<u64>().unwrap_or(u64::MAX).saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let ms = at.duration_since(now).map_or(0, |d| d.as_millis());
    Some(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn failure_response(kind: AttemptResult, attempts: u32, cluster: &str) -> Response<DownBody> {
    let (status, what) = match kind {
        AttemptResult::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timed out"),
        AttemptResult::ConnectFailure => (StatusCode::BAD_GATEWAY, "could not connect"),
        AttemptResult::Reset => (StatusCode::BAD_GATEWAY, "connection reset"),
        _ => (StatusCode::BAD_GATEWAY, "failed"),
    };
    let s = if attempts == 1 { "" } else { "s" };
    local(
        status,
        &format!("upstream {what} (cluster `{cluster}`, {attempts} attempt{s})\n"),
    )
}

/// Whether `name` is a hop-by-hop header (the `connection` header aside, which can name more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    Role::of(name.as_str().as_bytes()).is_hop_by_hop()
}

// A static, not a const: each use of a const array of names would build and drop it.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The headers `connection` names as hop-by-hop: `None` without a `connection` header.
fn connection_listed(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    if !headers.contains_key(header::CONNECTION) {
        return None;
    }
    Some(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect(),
    )
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of seven removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for n in connection_listed(headers).unwrap_or_default() {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

// Named once: a lookup by `&str` parses and hashes the name on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets `x-forwarded-for` to the values the request came with, joined, and the client.
fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let mut value = Vec::new();
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        value.extend_from_slice(prev.as_bytes());
        value.extend_from_slice(b", ");
    }
    push_ip(&mut value, client.ip());
    // Bytes from the Vec without a copy; the value is checked, not copied.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Appends an IP address as text (IPv4 by hand, into one stack buffer).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    let std::net::IpAddr::V4(v4) = ip else {
        out.extend_from_slice(ip.to_string().as_bytes());
        return;
    };
    let mut text = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            text[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            text[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        text[n] = b'0' + octet % 10;
        n += 1;
    }
    out.extend_from_slice(&text[..n]);
}

/// The request's id: its own `x-request-id` (`given`) when usable (1 to 128 bytes of visible
/// ASCII, spaces and tabs), else a new one.
fn request_id(given: Option<&[u8]>) -> RequestId {
    given
        .and_then(RequestId::given)
        .unwrap_or_else(new_request_id)
}

/// 128 random bits as 32 lowercase hex digits.
fn new_request_id() -> RequestId {
    RequestId::hex(rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut text = Vec::new();
            push_ip(&mut text, ip);
            assert_eq!(text, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn request_ids_spell_their_bits_as_format_does() {
        let mut bits: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for _ in 0..1000 {
            assert_eq!(&*RequestId::hex(bits), format!("{bits:032x}"));
            bits = bits.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15) ^ (bits >> 7);
        }
        for bits in [
            0,
            u128::MAX,
            0x0a0a_0a0a_0a0a_0a0a_0a0a_0a0a_0a0a_0a0a,
            0x9999 << 40,
        ] {
            assert_eq!(&*RequestId::hex(bits), format!("{bits:032x}"));
        }
    }

    #[test]
    fn a_given_request_id_is_kept_when_usable() {
        assert_eq!(&*request_id(Some(b"given-id")), "given-id");
        let longest = [b'a'; RequestId::MAX];
        assert_eq!(request_id(Some(&longest)).as_bytes(), &longest[..]);
        for bad in [
            &b""[..],
            &[b'a'; RequestId::MAX + 1][..],
            b"a\nb",
            "é".as_bytes(),
        ] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?} is replaced by a new id");
            assert_ne!(id.as_bytes(), bad);
        }
        assert_eq!(request_id(None).len(), 32);
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn hop_by_hop_headers_named_by_connection_only_go_with_it() {
        let mut h = HeaderMap::new();
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "no connection header: nothing named");
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key(header::TRANSFER_ENCODING));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let addr: SocketAddr = "10.0.0.1:5".parse().unwrap();
        append_forwarded_for(&mut h, addr);
        append_forwarded_for(&mut h, "127.0.0.1:9".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        // Every value the request came with is kept, in order, as the HTTP/1.1 path does.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, addr);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"]
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00 GMT
        let v = |s: &'static str| retry_after_ms(s.as_bytes(), now);
        assert_eq!(v("0"), Some(0));
        assert_eq!(v("120"), Some(120_000));
        assert_eq!(v(" 3 "), Some(3_000));
        assert_eq!(v("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(v("Wed, 21 Oct 2015 07:28:05 GMT"), Some(5_000));
        assert_eq!(v("Wed, 21 Oct 2015 07:27:00 GMT"), Some(0));
        assert_eq!(v("-1"), None);
        assert_eq!(v("1.5"), None);
        assert_eq!(v("soon"), None);
        assert_eq!(v(""), None);
    }

    #[test]
    fn failures_map_to_contract_statuses() {
        assert_eq!(
            failure_response(AttemptResult::Timeout, 1, "a").status(),
            504
        );
        assert_eq!(
            failure_response(AttemptResult::ConnectFailure, 3, "a").status(),
            502
        );
        assert_eq!(failure_response(AttemptResult::Reset, 2, "a").status(), 502);
    }
}
