//! The retry filter's budget, attempt header and `Retry-After` through the real host.

use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded};

fn config(retry: &str) -> String {
    head(&["router", "balancer", "retry"])
        + &router_all_to("api")
        + &round_robin()
        + &filter(
            "retry",
            "retry",
            &format!(
                "attempts = 3\nretry_on = [\"5xx\"]\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n{retry}"
            ),
        )
        + &cluster("api", &["a"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_to_an_always_failing_cluster() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        a.always(503);
        // 20% of requests, plus 1 per second over the 10 s window.
        let sp = Spindle::start(
            &config("budget_percent = 20\nbudget_min_per_second = 1"),
            &[&a],
        )
        .await;
        let client = Client::new();
        let url = format!("{}/x", sp.url("edge"));
        for _ in 0..100 {
            let resp = client.get(&url, &[]).await.unwrap();
            assert_eq!(resp.status, 503, "{resp:?}");
        }
        let retries = a.count() - 100;
        let exhausted = sp
            .metric_or_zero(
                "spindle_filter_retry_budget_exhausted_total",
                &[("cluster", "api")],
            )
            .await;
        eprintln!("budget: {retries} retries for 100 requests, {exhausted} refused");
        // Without a budget: 200 retries. With it: 10 + 20% of 100, and 1 more per second the
        // test takes (it takes about one).
        assert!(retries >= 20, "{retries}");
        assert!(retries <= 40, "{retries} retries: the budget did not hold");
        assert!(exhausted >= 50.0, "{exhausted}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_header_numbers_attempts_upstream() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(&config("attempt_header = true"), &[&a]).await;
        a.fail_next(503, 2);
        let resp = Client::new()
            .get(
                &format!("{}/x", sp.url("edge")),
                &[("x-spindle-attempt", "9")],
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        let attempts: Vec<String> = a
            .seen()
            .iter()
            .map(|s| {
                let values: Vec<_> = s.headers.get_all("x-spindle-attempt").iter().collect();
                assert_eq!(values.len(), 1, "{values:?}");
                values[0].to_str().unwrap_or("?").to_owned()
            })
            .collect();
        assert_eq!(attempts, ["1", "2", "3"]);
    })
    .await
}

fn retry_after_config(backoff_max_ms: u32) -> String {
    head(&["router", "balancer", "retry"])
        + &router_all_to("api")
        + &round_robin()
        + &filter(
            "retry",
            "retry",
            &format!(
                "attempts = 2\nretry_on = [\"5xx\"]\nbackoff_base_ms = 1\nbackoff_max_ms = {backoff_max_ms}"
            ),
        )
        + &cluster("api", &["a"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_within_backoff_max_is_waited_for() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(&retry_after_config(2000), &[&a]).await;
        a.add_header("retry-after", "1");
        a.fail_next(503, 1);
        let start = Instant::now();
        let resp = Client::new()
            .get(&format!("{}/x", sp.url("edge")), &[])
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(a.count(), 2);
        // Without Retry-After the backoff is at most 1 ms (backoff_base_ms).
        assert!(
            took >= Duration::from_millis(1000),
            "retried after {took:?}"
        );
        assert!(took < Duration::from_secs(5), "retried after {took:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_backoff_max_is_not_retried() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(&retry_after_config(250), &[&a]).await;
        a.add_header("retry-after", "5");
        a.fail_next(503, 1);
        let start = Instant::now();
        let resp = Client::new()
            .get(&format!("{}/x", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(a.count(), 1, "not retried");
        assert!(start.elapsed() < Duration::from_secs(5));
    })
    .await
}
