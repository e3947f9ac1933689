//! The breaker's outlier detection through the real host: the half-open state (after an
//! ejection, one failed probe ejects again for twice as long; a successful one closes the
//! circuit) and the success-rate detector.

use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_ejects_again_and_a_good_one_closes() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b"]).await;
        let (a, b) = (&ups[0], &ups[1]);
        b.always(503);
        let config = head(&["router", "balancer", "breaker"])
            + &router_all_to("api")
            + &round_robin()
            + &filter(
                "breaker",
                "breaker",
                "consecutive_failures = 3\nbase_ejection_ms = 500\nmax_ejection_ms = 4000",
            )
            + &cluster("api", &["a", "b"]);
        let sp = Spindle::start(&config, &[a, b]).await;
        let client = Client::new();
        let url = format!("{}/x", sp.url("edge"));
        let b_addr = b.address();
        let b_labels = [("cluster", "api"), ("endpoint", b_addr.as_str())];
        let ejections = || async {
            sp.metric_or_zero(
                "spindle_filter_breaker_ejections_total",
                &[("cluster", "api")],
            )
            .await
        };

        // Three 503s in a row eject b.
        for _ in 0..6 {
            client.get(&url, &[]).await.unwrap();
        }
        assert_eq!(ejections().await, 1.0);
        assert_eq!(b.count(), 3);

        // Once the ejection ends, b's first failure is its probe: ejected again at once, for
        // twice as long.
        assert!(
            wait_until(Duration::from_secs(10), || async {
                sp.metric_or_zero("spindle_endpoint_ejected", &b_labels)
                    .await
                    == 0.0
            })
            .await
        );
        assert!(
            wait_until(Duration::from_secs(10), || async {
                client.get(&url, &[]).await.unwrap();
                b.count() > 3
            })
            .await
        );
        assert_eq!(b.count(), 4, "one probe");
        assert_eq!(ejections().await, 2.0);
        assert!(
            wait_until(Duration::from_secs(5), || async {
                sp.stderr().contains("for 1000 ms after its probe failed")
            })
            .await,
            "{}",
            sp.stderr()
        );

        // b recovers; its next probe succeeds and it serves again.
        b.ok();
        assert!(
            wait_until(Duration::from_secs(10), || async {
                let resp = client.get(&url, &[]).await.unwrap();
                resp.upstream() == Some("b")
            })
            .await
        );
        for _ in 0..10 {
            assert_eq!(client.get(&url, &[]).await.unwrap().status, 200);
        }
        assert_eq!(ejections().await, 2.0);
        assert!(
            wait_until(Duration::from_secs(5), || async {
                sp.stderr().contains("passed its probe")
            })
            .await
        );
        assert!(a.count() > 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_the_outlier() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b", "c", "bad"]).await;
        ups[3].always(500);
        let config = head(&["router", "balancer", "breaker"])
            + &router_all_to("api")
            + &round_robin()
            + &filter(
                "breaker",
                "breaker",
                // Consecutive failures out of the way: only the success rate can eject.
                "consecutive_failures = 100000\nbase_ejection_ms = 30000\n\
                 success_rate = { interval_ms = 500, minimum_hosts = 3, request_volume = 5, stdev_factor = 1.0 }",
            )
            + &cluster("api", &["a", "b", "c", "bad"]);
        let sp = Spindle::start(&config, &[&ups[0], &ups[1], &ups[2], &ups[3]]).await;
        let client = Client::new();
        let url = format!("{}/x", sp.url("edge"));
        let bad_addr = ups[3].address();
        let bad_labels = [("cluster", "api"), ("endpoint", bad_addr.as_str())];

        // Traffic until an interval with enough volume ends and is evaluated.
        let ejected = wait_until(Duration::from_secs(20), || async {
            for _ in 0..20 {
                client.get(&url, &[]).await.unwrap();
            }
            sp.metric_or_zero("spindle_endpoint_ejected", &bad_labels)
                .await
                == 1.0
        })
        .await;
        assert!(ejected, "{}", sp.stderr());
        assert!(sp.stderr().contains("as a success-rate outlier"));
        // Only the outlier: the healthy endpoints stay in.
        for up in &ups[..3] {
            let addr = up.address();
            let labels = [("cluster", "api"), ("endpoint", addr.as_str())];
            assert_eq!(sp.metric_or_zero("spindle_endpoint_ejected", &labels).await, 0.0);
        }
        let before = ups[3].count();
        for _ in 0..30 {
            assert_eq!(client.get(&url, &[]).await.unwrap().status, 200);
        }
        assert_eq!(ups[3].count(), before, "no traffic to the ejected outlier");
    })
    .await
}
