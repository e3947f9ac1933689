//! Misbehaving filters (trap, endless loop, unbounded allocation) are contained: the request that
//! triggered it gets 503 naming the filter (`fail = "closed"`) or skips it (`fail = "open"`), and
//! the host keeps serving everything else.

use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, Workdir, bounded};

const MISBEHAVE: (&str, &str) = ("x-misbehave", "1");

/// `tb` (testbed in `mode`, only when `x-misbehave` is present) first in the chain, then routing
/// to one upstream. `limits` are extra `[filter.tb]` keys (`fail`, `call_timeout_ms`, ...).
fn config(mode: &str, limits: &str) -> String {
    head(&["tb", "router", "balancer"])
        + &format!(
            r#"
[filter.tb]
module = "{{filters}}/testbed.wasm"
{limits}
[filter.tb.config]
mode = "{mode}"
tag = "t"
only_with_header = "x-misbehave"
"#
        )
        + &router_all_to("api")
        + &round_robin()
        + &cluster("api", &["a"])
}

async fn start(mode: &str, limits: &str) -> (Upstream, Spindle) {
    let a = Upstream::start("a").await;
    let sp = Spindle::start_in(Workdir::new(&[&a]), &config(mode, limits)).await;
    (a, sp)
}

async fn assert_normal_requests_pass(client: &Client, url: &str, n: usize) {
    for _ in 0..n {
        let resp = client.get(url, &[]).await.unwrap();
        assert_eq!(
            resp.status, 200,
            "a normal request after a contained fault: {resp:?}"
        );
        assert_eq!(resp.upstream(), Some("a"));
        assert_eq!(resp.header("x-testbed"), Some("t"), "{resp:?}");
    }
}

/// The misbehaving request gets a 503 naming `tb`, fast; the upstream never sees it; normal
/// requests before and after (and concurrently) are fine; the filter error is counted.
async fn contained_closed(mode: &str, limits: &str) {
    let (a, sp) = start(mode, limits).await;
    let client = Client::new();
    let url = format!("{}/m", sp.url("edge"));
    assert_normal_requests_pass(&client, &url, 5).await;

    for round in 0..3 {
        let seen_before = a.count();
        let started = Instant::now();
        let resp = client.get(&url, &[MISBEHAVE]).await.unwrap();
        assert_eq!(resp.status, 503, "mode {mode}, round {round}: {resp:?}");
        assert_eq!(resp.header("x-spindle-filter"), Some("tb"), "{resp:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "mode {mode}: contained in {:?}",
            started.elapsed()
        );
        assert_eq!(
            a.count(),
            seen_before,
            "the failed request never reached the upstream"
        );
        assert_normal_requests_pass(&client, &url, 10).await;
    }

    // Misbehaving and normal requests at once: only the misbehaving ones fail.
    let bad: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(&url, &[MISBEHAVE]).await })
        })
        .collect();
    let good: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = Client::new();
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    statuses.push(client.get(&url, &[]).await.map(|r| r.status));
                }
                statuses
            })
        })
        .collect();
    for task in bad {
        let resp = task.await.unwrap().unwrap();
        assert_eq!(resp.status, 503, "{resp:?}");
    }
    for task in good {
        for status in task.await.unwrap() {
            assert_eq!(status, Ok(200));
        }
    }

    let errors = sp
        .metric_or_zero("spindle_filter_errors_total", &[("filter", "tb")])
        .await;
    assert!(
        errors >= 7.0,
        "spindle_filter_errors_total{{filter=\"tb\"}} = {errors}"
    );
    let ready = sp.admin_get("/ready").await.unwrap();
    assert_eq!(ready.status, 200, "the filter stays live: {ready:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_filter_fails_closed_for_that_request_only() {
    bounded(Duration::from_secs(120), contained_closed("trap", "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_the_call_deadline() {
    bounded(
        Duration::from_secs(120),
        contained_closed("loop", "call_timeout_ms = 50"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_limit() {
    bounded(
        Duration::from_secs(120),
        contained_closed("alloc", "memory_limit_mb = 16"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_a_broken_filter() {
    bounded(Duration::from_secs(120), async {
        let (a, sp) = start("trap", "fail = \"open\"").await;
        let client = Client::new();
        let url = format!("{}/o", sp.url("edge"));
        for _ in 0..5 {
            let resp = client.get(&url, &[MISBEHAVE]).await.unwrap();
            assert_eq!(resp.status, 200, "fail = open skips the filter: {resp:?}");
            assert_eq!(resp.upstream(), Some("a"));
            assert_eq!(resp.header("x-spindle-filter"), None);
        }
        assert_eq!(a.count(), 5);
        assert_normal_requests_pass(&client, &url, 5).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_also_covers_the_call_deadline() {
    bounded(Duration::from_secs(120), async {
        let (a, sp) = start("loop", "fail = \"open\"\ncall_timeout_ms = 50").await;
        let client = Client::new();
        let url = format!("{}/o", sp.url("edge"));
        let started = Instant::now();
        let resp = client.get(&url, &[MISBEHAVE]).await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(a.count(), 1);
    })
    .await
}

/// `raw` (a filter written against the ABI without the SDK's glue) answering `answer` from
/// `on-request`, then a round-robin balancer: no router, `raw` chooses the cluster itself.
fn raw_config(answer: &str) -> String {
    head(&["raw", "balancer"])
        + &spindle_tests::config::filter("raw", "raw", &format!("cluster = \"api\"\n{answer}"))
        + &round_robin()
        + &cluster("api", &["a"])
}

/// `on-request` answers by the ABI's rules work as the SDK's do (`route` by the number
/// `cluster-ref` gave, `respond` after `reply`); answers that break them (a `route` number the
/// host never gave, `respond` with no `reply` in that call) fail the hook as a trap does: a 503
/// naming the filter, counted as `kind="trap"`, and the next requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_from_on_request_fail_the_hook() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let client = Client::new();

        let sp = Spindle::start_in(Workdir::new(&[&a]), &raw_config("answer = \"route\"")).await;
        let resp = client.get(&format!("{}/r", sp.url("edge")), &[]).await.unwrap();
        assert_eq!((resp.status, resp.upstream()), (200, Some("a")), "{resp:?}");
        drop(sp);

        let sp = Spindle::start_in(Workdir::new(&[&a]), &raw_config("answer = \"reply\"")).await;
        let resp = client.get(&format!("{}/r", sp.url("edge")), &[]).await.unwrap();
        assert_eq!(resp.status, 418, "{resp:?}");
        assert_eq!(resp.header("x-raw"), Some("reply"), "{resp:?}");
        assert_eq!(resp.body, "short and stout\n");
        drop(sp);

        // A reply given in one call and not answered with is gone by the next call.
        for answer in [
            "answer = \"route-unknown\"",
            "answer = \"respond-without-reply\"",
            "answer = \"reply-then-continue\"\nanswer_after = { requests = 1, answer = \"respond-without-reply\" }",
        ] {
            let sp = Spindle::start_in(Workdir::new(&[&a]), &raw_config(answer)).await;
            let url = format!("{}/r", sp.url("edge"));
            let seen = a.count();
            if answer.contains("reply-then-continue") {
                let resp = client.get(&url, &[]).await.unwrap();
                assert_eq!(resp.status, 404, "continue, no cluster chosen: {resp:?}");
            }
            for _ in 0..3 {
                let resp = client.get(&url, &[]).await.unwrap();
                assert_eq!(resp.status, 503, "{answer}: {resp:?}");
                assert_eq!(resp.header("x-spindle-filter"), Some("raw"), "{resp:?}");
            }
            assert_eq!(a.count(), seen, "{answer}: nothing reached the upstream");
            let errors = sp
                .metric_or_zero(
                    "spindle_filter_errors_total",
                    &[("filter", "raw"), ("kind", "trap")],
                )
                .await;
            assert_eq!(errors, 3.0, "{answer}");
            let ready = sp.admin_get("/ready").await.unwrap();
            assert_eq!(ready.status, 200, "the filter stays live: {ready:?}");
        }
    })
    .await
}
