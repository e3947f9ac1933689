//! The retry filter: 5xx, connect failures and timeouts are retried for idempotent requests only.

use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Connection, Spindle, Upstream, bounded};

const RETRY_ON: &str = r#"retry_on = ["5xx", "connect-failure", "reset", "timeout"]"#;

fn config(upstreams: &[&str], retry_extra: &str) -> String {
    head(&["router", "balancer", "retry"])
        + &router_all_to("api")
        + &round_robin()
        + &filter(
            "retry",
            "retry",
            &format!(
                "attempts = 3\n{RETRY_ON}\nbackoff_base_ms = 5\nbackoff_max_ms = 20\n{retry_extra}"
            ),
        )
        + &cluster("api", upstreams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_the_client_sees_200() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(&config(&["a"], "per_try_timeout_ms = 2000"), &[&a]).await;
        let client = Client::new();

        a.fail_next(503, 2);
        let resp = client
            .get(&format!("{}/x", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(a.count(), 3, "two 503s, then the 200");

        // Every attempt fails: the last upstream answer reaches the client, after 3 attempts.
        a.reset();
        a.always(503);
        let resp = client
            .get(&format!("{}/x", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(
            resp.upstream(),
            Some("a"),
            "the upstream's own 503: {resp:?}"
        );
        assert_eq!(a.count(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_to_another_endpoint() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["bad", "good"]).await;
        let (bad, good) = (&ups[0], &ups[1]);
        bad.always(503);
        let sp = Spindle::start(&config(&["bad", "good"], ""), &[bad, good]).await;
        let client = Client::new();
        for i in 0..20 {
            let resp = client
                .get(&format!("{}/r/{i}", sp.url("edge")), &[])
                .await
                .unwrap();
            assert_eq!(
                (resp.status, resp.upstream()),
                (200, Some("good")),
                "{resp:?}"
            );
        }
        assert!(
            bad.count() >= 1,
            "round robin sent some first attempts to `bad`"
        );
        assert_eq!(
            good.count(),
            20,
            "a retry never lands on the endpoint that just failed when another exists"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_by_default() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        a.always(503);
        let sp = Spindle::start(&config(&["a"], ""), &[&a]).await;
        let client = Client::new();

        let resp = client
            .post(&format!("{}/orders", sp.url("edge")), "one order")
            .await
            .unwrap();
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(a.count(), 1, "a POST reaches the upstream exactly once");
        assert_eq!(a.seen()[0].body, "one order");

        // The same with GET is retried.
        let resp = client
            .get(&format!("{}/orders", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(a.count(), 4);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_when_allowed() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        a.fail_next(503, 1);
        let sp = Spindle::start(&config(&["a"], "retry_non_idempotent = true"), &[&a]).await;
        let resp = Client::new()
            .post(&format!("{}/orders", sp.url("edge")), "again")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(a.count(), 2);
        // The buffered body is sent again, whole.
        assert!(a.seen().iter().all(|s| s.body == "again"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_elsewhere_or_give_502() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["down", "up"]).await;
        let (down, up) = (&ups[0], &ups[1]);
        down.stop().await;
        let sp = Spindle::start(&config(&["down", "up"], ""), &[down, up]).await;
        let client = Client::new();
        for i in 0..10 {
            let resp = client
                .get(&format!("{}/c/{i}", sp.url("edge")), &[])
                .await
                .unwrap();
            assert_eq!(
                (resp.status, resp.upstream()),
                (200, Some("up")),
                "{resp:?}"
            );
        }

        // Every endpoint down: 502 from the host.
        up.stop().await;
        let resp = client
            .get(&format!("{}/c", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 502, "{resp:?}");
        assert_eq!(resp.upstream(), None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_are_retried_or_give_504() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["slow", "fast"]).await;
        let (slow, fast) = (&ups[0], &ups[1]);
        slow.hold();
        let sp = Spindle::start(
            &config(&["slow", "fast"], "per_try_timeout_ms = 300"),
            &[slow, fast],
        )
        .await;
        // The timeout is declared at init: the host applies it without an on_request call.
        let retry = sp.filter_view("retry").await;
        assert_eq!(retry["per_try_timeout_ms"], 300, "{retry}");
        assert_eq!(retry["hooks"], serde_json::json!(["attempt"]), "{retry}");
        // No budget, and retry_on names host failures only: successes on healthy endpoints are
        // not shown to it.
        assert_eq!(
            retry["attempt_outcomes"], "failures_and_recoveries",
            "{retry}"
        );
        let client = Client::new();
        for i in 0..6 {
            let started = Instant::now();
            let resp = client
                .get(&format!("{}/t/{i}", sp.url("edge")), &[])
                .await
                .unwrap();
            assert_eq!(
                (resp.status, resp.upstream()),
                (200, Some("fast")),
                "{resp:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        assert!(slow.count() >= 1);

        // Only the slow one left: every attempt times out, the client gets 504.
        fast.stop().await;
        let sp2 = Spindle::start(&config(&["slow"], "per_try_timeout_ms = 200"), &[slow]).await;
        let started = Instant::now();
        let resp = client
            .get(&format!("{}/t", sp2.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 504, "{resp:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "3 tries of 200 ms plus backoff: {:?}",
            started.elapsed()
        );
    })
    .await
}

/// A connection lends its per-try timer to one request after the other (moving its deadline
/// each time): a later request on it still times out, no sooner than its own deadline, and the
/// timer works again after it fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_hold_for_every_request_of_a_connection() {
    bounded(Duration::from_secs(120), async {
        let up = Upstream::start("up").await;
        let sp = Spindle::start(
            &(head(&["router", "balancer", "retry"])
                + &router_all_to("api")
                + &round_robin()
                + &filter("retry", "retry", "attempts = 1\nper_try_timeout_ms = 400")
                + &cluster("api", &["up"])),
            &[&up],
        )
        .await;
        // One pinned connection: a pooled client may open a second one between requests.
        let mut conn = Connection::open(sp.listener_addr("edge")).await.unwrap();
        for i in 0..3 {
            assert_eq!(conn.get(&format!("/k/{i}")).await.unwrap().status, 200);
        }
        // The timer's registered deadline is the last request's; this one's comes later.
        tokio::time::sleep(Duration::from_millis(200)).await;
        up.hold();
        let started = Instant::now();
        let resp = conn.get("/k/3").await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status, 504, "{resp:?}");
        assert!(
            (Duration::from_millis(400)..Duration::from_secs(5)).contains(&took),
            "one try of 400 ms: {took:?}"
        );
        // After it fired, the timer is set again for the next request.
        up.ok();
        assert_eq!(conn.get("/k/4").await.unwrap().status, 200);
        up.hold();
        let started = Instant::now();
        assert_eq!(conn.get("/k/5").await.unwrap().status, 504);
        assert!(started.elapsed() >= Duration::from_millis(400));
        up.ok();
        assert_eq!(
            sp.metric("spindle_downstream_connections", &[("listener", "edge")])
                .await,
            Some(1.0),
            "every request came on one connection"
        );
    })
    .await
}
