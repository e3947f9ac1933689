//! Micro-benchmarks of the host's Wasm work, through the code the proxy runs
//! (`make bench-micro`, or `cargo bench -p spindle-host [-- FILTER]`).
//!
//! The filters are the built components in `$SPINDLE_FILTERS_DIR`, else
//! `<workspace>/target/filters` (`make filters`), loaded by `Proxy::new` from
//! a config like the quickstart's: same engine settings, instance pools and
//! shared store as `spindle run`. No socket is opened.
//!
//! - `hook/<filter>/<hook>`: one hook call of a standard filter on a request
//!   with 15 headers, pool check-out and check-in included (what
//!   `FilterModule::on_request` etc. cost the chain; `on_attempt` sees a 200;
//!   the request is for the 3-endpoint cluster, or 1,000 endpoints for
//!   `hook/breaker/on_request/c1000`). Two baselines: `hook/empty/on_request`,
//!   a filter that does nothing (the fixed cost of any hook call), and
//!   `hook/probe/on_request`, one that asks for one absent header (that plus
//!   one host call).
//! - `pick/<policy>/<n>`: one `pick` of the balancer over a cluster of `n`
//!   endpoints (the endpoint set reaches the instance once, not per pick);
//!   `n = 3` is the quickstart's `api` cluster.
//! - `chain/quickstart`: everything the router, balancer, retry, breaker chain
//!   does for one request whose first attempt gets a 200, except network I/O
//!   (`chain::handle_without_io`): 2 hook calls (router, pick; the retry,
//!   without a budget here, and the breaker see no 200 on a healthy
//!   endpoint) plus the host's own work.
//!   `chain/router_only`: the same with the router alone (1 hook call, the
//!   host's round robin), to tell the host's share from the filters'.
//! - `pool/cycle_instance`: an instance checked out of a pool and back in.
//! - `store/cas`, `store/add`: the shared store's compare-and-swap and add.

use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use spindle_host::chain::{RequestCtx, RequestId, handle_without_io};
use spindle_host::config::Config;
use spindle_host::runtime::{Proxy, Runtime};
use spindle_host::upstream::{AttemptResult, Cluster, Healthy};
use spindle_host::wasm::{AttemptAction, AttemptOutcome, FilterModule, RequestAction};

/// Balancer policies benchmarked, each a filter of that name in the config.
const POLICIES: [&str; 4] = ["round_robin", "least_request", "ewma", "ring_hash"];
/// Cluster sizes for `pick`: `c3` is the quickstart's `api` shape.
const SIZES: [usize; 3] = [3, 100, 1000];

fn filters_dir() -> PathBuf {
    match std::env::var_os("SPINDLE_FILTERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("filters"),
    }
}

fn endpoints(n: usize) -> String {
    if n == 3 {
        // The quickstart's `api`: one endpoint of weight 2.
        return r#"["10.0.0.1:80", "10.0.0.2:80", { address = "10.0.0.3:80", weight = 2 }]"#
            .to_string();
    }
    let list: Vec<String> = (0..n)
        .map(|i| format!("\"10.{}.{}.1:80\"", i / 250, i % 250))
        .collect();
    format!("[{}]", list.join(", "))
}

/// The quickstart's chain and filter configs, one balancer filter per policy,
/// the two baseline filters, and clusters of every size in `SIZES`.
fn config_text(dir: &std::path::Path) -> String {
    // Each filter's module and call deadline. Deadlines are wall-clock time
    // (epochs): on a busy machine a benchmark thread preempted for 20 ms, the
    // default, inside a call would trap. And the first pick in `c1000` pushes
    // 1,000 endpoints: `ring_hash` then builds a 65,536-point ring (7-12 ms
    // here). The deadline's length costs nothing per call.
    let module = |name: &str| {
        let path = dir.join(format!("{name}.wasm")).display().to_string();
        format!("module = {path:?}\ncall_timeout_ms = 1000")
    };
    let mut text = format!(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8080"
filters = ["router", "round_robin", "retry", "breaker"]

[filter.router]
{router}
[filter.router.config]
routes = [
  {{ path_prefix = "/api/", cluster = "c3" }},
  {{ path_prefix = "/", cluster = "c100" }},
]

[filter.retry]
{retry}
config = {{ attempts = 3, retry_on = ["5xx", "connect-failure", "reset", "timeout"], backoff_base_ms = 25, backoff_max_ms = 250, per_try_timeout_ms = 2000 }}

[filter.breaker]
{breaker}
config = {{ consecutive_failures = 3, base_ejection_ms = 5000, max_ejection_percent = 50 }}

[[listener]]
name = "router_only"
listen = "127.0.0.1:8081"
filters = ["router"]

[filter.empty]
{testbed}

[filter.probe]
{testbed}
config = {{ only_with_header = "x-absent" }}
"#,
        router = module("router"),
        retry = module("retry"),
        breaker = module("breaker"),
        testbed = module("testbed"),
    );
    for policy in POLICIES {
        text += &format!(
            "\n[filter.{policy}]\n{}\nconfig = {{ policy = \"{policy}\" }}\n",
            module("balancer")
        );
    }
    for n in SIZES {
        text += &format!("\n[cluster.c{n}]\nendpoints = {}\n", endpoints(n));
    }
    text
}

struct Fixture {
    proxy: Arc<Proxy>,
    runtime: Arc<Runtime>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = filters_dir();
        if !dir.join("router.wasm").exists() {
            panic!(
                "no filters in {} (build them with `make filters`, or set SPINDLE_FILTERS_DIR)",
                dir.display()
            );
        }
        let path = dir.join("bench.toml");
        let config = Config::parse(&path, &config_text(&dir)).expect("bench config parses");
        config.validate().expect("bench config is valid");
        let proxy = Proxy::new(config).unwrap_or_else(|e| panic!("loading filters: {e:?}"));
        // Every endpoint has a latency history, as in a proxy that has served
        // traffic (the EWMA policy reads it).
        for n in SIZES {
            let cluster = proxy.upstreams.cluster(&format!("c{n}")).expect("cluster");
            for (i, e) in cluster.members().iter().enumerate() {
                let latency = Duration::from_micros(500 + (i as u64 % 50) * 10);
                e.record(AttemptResult::Status2xx, latency);
            }
        }
        let runtime = proxy.runtime.load_full();
        Fixture { proxy, runtime }
    }

    fn filter(&self, name: &str) -> &Arc<FilterModule> {
        self.runtime.filters.get(name).expect("filter in config")
    }

    fn cluster(&self, name: &str) -> (Arc<Cluster>, Arc<Healthy>) {
        let cluster = self.proxy.upstreams.cluster(name).expect("cluster");
        let healthy = cluster.healthy(self.proxy.upstreams.now_ms());
        (cluster, healthy)
    }
}

const CLIENT: &str = "203.0.113.7:52814";

/// A browser-like API request with 15 headers.
fn request() -> Request<()> {
    let headers = [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9,de;q=0.8"),
        (
            "cookie",
            "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; _ga=GA1.2.1234567890.1700000000",
        ),
        ("x-request-id", "5f0c6a2e9b8d4c1fa7e3b2d1c0f9e8a7"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
        ("referer", "https://www.example.com/app/orders"),
        ("origin", "https://www.example.com"),
        ("x-forwarded-proto", "https"),
        ("cache-control", "no-cache"),
        ("sec-fetch-mode", "cors"),
    ];
    let mut b = Request::get("/api/v1/orders?limit=20&cursor=abc");
    for (name, value) in headers {
        b = b.header(name, value);
    }
    b.body(()).expect("valid request")
}

/// The request as the chain binds it to a hook call.
fn request_ctx() -> Option<Box<RequestCtx>> {
    let (head, ()) = request().into_parts();
    let client: SocketAddr = CLIENT.parse().expect("address");
    let id = RequestId::given(b"5f0c6a2e9b8d4c1fa7e3b2d1c0f9e8a7").expect("a valid id");
    let mut ctx = RequestCtx::new(head, client, id);
    ctx.cluster = Some(Arc::from("c3"));
    Some(Box::new(ctx))
}

/// An upstream's 200 response head.
fn upstream_response() -> Response<()> {
    let headers = [
        ("content-type", "application/json"),
        ("content-length", "1832"),
        ("date", "Fri, 27 Nov 2026 10:00:00 GMT"),
        ("server", "demo-upstream"),
        ("cache-control", "private, max-age=0"),
        ("vary", "accept-encoding"),
        ("etag", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
        ("x-upstream-time-ms", "3"),
    ];
    let mut b = Response::builder().status(StatusCode::OK);
    for (name, value) in headers {
        b = b.header(name, value);
    }
    b.body(()).expect("valid response")
}

fn success(cluster: &str, endpoint: u32) -> AttemptOutcome {
    AttemptOutcome {
        cluster: cluster.to_string(),
        endpoint,
        attempt: 1,
        status: Some(200),
        error: None,
        latency_ns: 1_250_000,
        retryable_body: true,
        retry_after_ms: None,
    }
}

/// Polls a future that must not wait (no filter of the chain delays).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the chain waited: a filter asked for a delay"),
    }
}

fn hooks(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("hook");
    let mut ctx = request_ctx();

    let empty = fx.filter("empty");
    g.bench_function("empty/on_request", |b| {
        b.iter(|| {
            let action = empty.on_request(&mut ctx).expect("hook call");
            debug_assert!(matches!(action, RequestAction::Continue));
            black_box(action)
        })
    });

    let probe = fx.filter("probe");
    g.bench_function("probe/on_request", |b| {
        b.iter(|| black_box(probe.on_request(&mut ctx).expect("hook call")))
    });

    // The router answers with the cluster it chose (the chain sets it on the request).
    let router = fx.filter("router");
    match router.on_request(&mut ctx).expect("hook call") {
        RequestAction::Route(cluster) => {
            assert_eq!(&*cluster, "c3", "the router chose the cluster")
        }
        other => panic!("the router did not route: {other:?}"),
    }
    g.bench_function("router/on_request", |b| {
        b.iter(|| {
            let action = router.on_request(&mut ctx).expect("hook call");
            debug_assert!(matches!(action, RequestAction::Route(_)));
            black_box(action)
        })
    });
    if let Some(c) = ctx.as_mut() {
        c.cluster = Some(Arc::from("c3"));
    }
    let breaker = fx.filter("breaker");
    g.bench_function("breaker/on_request", |b| {
        b.iter(|| {
            let action = breaker.on_request(&mut ctx).expect("hook call");
            debug_assert!(matches!(action, RequestAction::Continue));
            black_box(action)
        })
    });
    // The breaker asks for the stats of the request's cluster: the same call
    // for a cluster of 1,000 endpoints.
    let mut big = request_ctx();
    if let Some(c) = big.as_mut() {
        c.cluster = Some(Arc::from("c1000"));
    }
    let breaker = fx.filter("breaker");
    g.bench_function("breaker/on_request/c1000", |b| {
        b.iter(|| black_box(breaker.on_request(&mut big).expect("hook call")))
    });

    let (_, healthy) = fx.cluster("c3");
    let endpoint = healthy.endpoints[0].id;
    let outcome = success("c3", endpoint);
    let retry = fx.filter("retry");
    g.bench_function("retry/on_attempt", |b| {
        b.iter(|| {
            let action = retry.on_attempt(&mut ctx, &outcome).expect("hook call");
            debug_assert!(matches!(action, AttemptAction::Done));
            black_box(action)
        })
    });
    let breaker = fx.filter("breaker");
    g.bench_function("breaker/on_attempt", |b| {
        b.iter(|| black_box(breaker.on_attempt(&mut ctx, &outcome).expect("hook call")))
    });
    g.finish();
}

fn picks(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("pick");
    let mut ctx = request_ctx();
    for policy in POLICIES {
        let balancer = fx.filter(policy);
        for n in SIZES {
            let (cluster, healthy) = fx.cluster(&format!("c{n}"));
            // The first pick pushes the endpoint set to the instance.
            let first = balancer.pick(&mut ctx, &cluster, &healthy, 1, None);
            assert!(
                matches!(first, Ok(Some(_))),
                "{policy} picks in c{n}: {first:?}"
            );
            g.bench_function(format!("{policy}/{n}"), |b| {
                b.iter(|| {
                    black_box(
                        balancer
                            .pick(&mut ctx, &cluster, &healthy, 1, None)
                            .expect("hook call"),
                    )
                })
            });
        }
    }
    g.finish();
}

fn chain(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("chain");
    let client: SocketAddr = CLIENT.parse().expect("address");
    let (req, resp) = (request(), upstream_response());
    let first = ready(handle_without_io(
        &fx.proxy,
        "edge",
        req.clone(),
        client,
        upstream_response(),
    ));
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "the chain reached the upstream"
    );
    for (name, listener) in [("quickstart", "edge"), ("router_only", "router_only")] {
        g.bench_function(name, |b| {
            b.iter_batched(
                // The request and response heads come from hyper's parsers:
                // not the chain's work.
                || {
                    let mut r = Response::new(());
                    *r.status_mut() = resp.status();
                    *r.headers_mut() = resp.headers().clone();
                    (req.clone(), r)
                },
                |(req, resp)| ready(handle_without_io(&fx.proxy, listener, req, client, resp)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn pool_and_store(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("pool");
    let router = fx.filter("router");
    g.bench_function("cycle_instance", |b| {
        b.iter(|| router.cycle_instance().expect("an idle instance"))
    });
    g.finish();

    let mut g = c.benchmark_group("store");
    let store = &fx.proxy.env.store;
    // The keys and values the balancer and breaker use; the host gets owned
    // strings and byte vectors from the bindings, so their allocation counts.
    let key = "spindle.breaker.7.probe";
    store
        .set(key.to_string(), b"5000".to_vec(), 0)
        .expect("store set");
    let values: [&[u8]; 2] = [b"5000", b"10000"];
    let mut turn = 0;
    g.bench_function("cas", |b| {
        b.iter(|| {
            let (from, to) = (values[turn], values[1 - turn]);
            turn = 1 - turn;
            let swapped = store
                .cas(key.to_string(), Some(from), to.to_vec(), 0)
                .expect("store cas");
            debug_assert!(swapped);
            black_box(swapped)
        })
    });
    g.bench_function("add", |b| {
        b.iter(|| {
            black_box(
                store
                    .add("spindle.balancer.rr.c3".to_string(), 1, 0)
                    .expect("store add"),
            )
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let fx = Fixture::new();
    hooks(c, &fx);
    picks(c, &fx);
    chain(c, &fx);
    pool_and_store(c, &fx);
}

criterion_group! {
    name = micro;
    // Bounded: about 5 s per benchmark, 25 benchmarks.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .without_plots();
    targets = all
}
criterion_main!(micro);
