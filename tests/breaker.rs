//! A killed upstream: retried (connect failure), ejected by the breaker, back after the ejection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded, wait_until};

fn config() -> String {
    head(&["router", "balancer", "retry", "breaker"])
        + &router_all_to("api")
        + &round_robin()
        + &filter(
            "retry",
            "retry",
            r#"attempts = 3
retry_on = ["5xx", "connect-failure", "reset", "timeout"]
backoff_base_ms = 5
backoff_max_ms = 20"#,
        )
        + &filter(
            "breaker",
            "breaker",
            "consecutive_failures = 3\nbase_ejection_ms = 1000\nmax_ejection_percent = 50",
        )
        + &cluster("api", &["a", "b"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_is_retried_ejected_and_readmitted() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b"]).await;
        let (a, b) = (&ups[0], &ups[1]);
        let sp = Spindle::start(&config(), &[a, b]).await;
        let client = Client::new();
        let url = format!("{}/k", sp.url("edge"));
        let b_addr = b.address();
        let b_labels = [("cluster", "api"), ("endpoint", b_addr.as_str())];

        for _ in 0..10 {
            assert_eq!(client.get(&url, &[]).await.unwrap().status, 200);
        }
        assert!(
            a.count() > 0 && b.count() > 0,
            "both endpoints serve at first"
        );
        assert_eq!(
            sp.metric_or_zero("spindle_endpoint_ejected", &b_labels)
                .await,
            0.0
        );

        // Kill b: every request still succeeds (retried on a) until the breaker ejects b.
        b.stop().await;
        let sent = AtomicUsize::new(0);
        let ejected = wait_until(Duration::from_secs(20), || async {
            let resp = client.get(&url, &[]).await.unwrap();
            assert_eq!(
                (resp.status, resp.upstream()),
                (200, Some("a")),
                "a connect failure to b is retried on a: {resp:?}"
            );
            sent.fetch_add(1, Ordering::SeqCst);
            sp.metric_or_zero("spindle_endpoint_ejected", &b_labels)
                .await
                == 1.0
        })
        .await;
        assert!(
            ejected,
            "b was not ejected after {} requests",
            sent.load(Ordering::SeqCst)
        );

        // While ejected, b gets no attempts at all.
        let attempts_before = sp
            .metric_or_zero("spindle_upstream_requests_total", &b_labels)
            .await;
        for _ in 0..10 {
            let resp = client.get(&url, &[]).await.unwrap();
            assert_eq!((resp.status, resp.upstream()), (200, Some("a")), "{resp:?}");
        }
        let still_ejected = sp
            .metric_or_zero("spindle_endpoint_ejected", &b_labels)
            .await;
        let attempts_after = sp
            .metric_or_zero("spindle_upstream_requests_total", &b_labels)
            .await;
        assert_eq!(
            still_ejected, 1.0,
            "1 s ejection outlasts 10 quick requests"
        );
        assert_eq!(
            attempts_after, attempts_before,
            "no attempt goes to an ejected endpoint"
        );

        // b comes back; after the ejection time it serves again.
        b.restart().await;
        let back = wait_until(Duration::from_secs(20), || async {
            let resp = client.get(&url, &[]).await.unwrap();
            assert_eq!(resp.status, 200, "{resp:?}");
            b.count() > 0 && resp.upstream() == Some("b")
        })
        .await;
        assert!(back, "b never served again after its ejection ended");
        assert!(
            wait_until(Duration::from_secs(10), || async {
                sp.metric_or_zero("spindle_endpoint_ejected", &b_labels)
                    .await
                    == 0.0
            })
            .await,
            "spindle_endpoint_ejected for b returns to 0"
        );
    })
    .await
}
