//! The retry filter's budget and attempt header through the real host.

use std::time::Duration;

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
