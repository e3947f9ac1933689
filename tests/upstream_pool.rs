//! Upstream connections: keep-alive reuse, the idle cap per endpoint,
//! HTTP/2 endpoints sharing one connection, connections the endpoint closed
//! while idle, and endpoints given by host name.

use std::time::Duration;

use spindle_tests::config::{head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, Workdir, bounded, wait_until};

fn config(cluster: &str) -> String {
    head(&["router", "balancer"]) + &router_all_to("api") + &round_robin() + cluster
}

async fn get_ok(client: &Client, sp: &Spindle, n: usize) {
    for _ in 0..n {
        let resp = client.get(&format!("{}/x", sp.url("edge")), &[]).await;
        assert_eq!(resp.map(|r| r.status), Ok(200));
    }
}

/// `n` requests at once, each on its own client connection.
async fn get_ok_at_once(sp: &Spindle, n: usize) {
    let mut burst = Vec::new();
    for _ in 0..n {
        let url = format!("{}/x", sp.url("edge"));
        burst.push(tokio::spawn(async move {
            Client::new().get(&url, &[]).await.map(|r| r.status)
        }));
    }
    for r in burst {
        assert_eq!(r.await.unwrap(), Ok(200));
    }
}

async fn opened(sp: &Spindle) -> f64 {
    sp.metric_or_zero(
        "spindle_upstream_connections_opened_total",
        &[("cluster", "api")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_per_endpoint() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(
            &config("\n[cluster.api]\nendpoints = [\"{up:a}\"]\nmax_idle_per_endpoint = 2\n"),
            &[&a],
        )
        .await;
        a.delay(Duration::from_millis(300));
        get_ok_at_once(&sp, 6).await;
        assert_eq!(
            opened(&sp).await,
            6.0,
            "six requests at once, six connections"
        );
        assert!(
            wait_until(Duration::from_secs(5), || async {
                sp.metric("spindle_upstream_connections", &[("cluster", "api")])
                    .await
                    == Some(2.0)
            })
            .await,
            "two idle connections are kept, the other four closed"
        );
        a.ok();
        get_ok(&Client::new(), &sp, 5).await;
        assert_eq!(opened(&sp).await, 6.0, "the kept connections are reused");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_endpoints_share_one_connection() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(
            &config("\n[cluster.api]\nendpoints = [\"{up:a}\"]\nhttp2 = true\n"),
            &[&a],
        )
        .await;
        let client = Client::new();
        get_ok(&client, &sp, 3).await;
        get_ok_at_once(&sp, 8).await;
        let seen = a.seen();
        assert_eq!(seen.len(), 11);
        assert!(
            seen.iter().all(|s| s.version == http::Version::HTTP_2),
            "every request reached the endpoint over HTTP/2"
        );
        assert!(
            seen.iter().all(|s| s.path == "/x"),
            "requests keep their path"
        );
        assert_eq!(opened(&sp).await, 1.0, "one multiplexed connection");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_endpoint_closed_is_not_used() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(
            &config(&spindle_tests::config::cluster("api", &["a"])),
            &[&a],
        )
        .await;
        let client = Client::new();
        get_ok(&client, &sp, 2).await;
        assert_eq!(opened(&sp).await, 1.0);
        // The endpoint restarts: the idle keep-alive connection is gone.
        a.stop().await;
        a.restart().await;
        for _ in 0..5 {
            get_ok(&client, &sp, 1).await;
        }
        assert_eq!(opened(&sp).await, 2.0, "one new connection, reused after");
        assert_eq!(
            sp.metric_or_zero(
                "spindle_upstream_requests_total",
                &[("cluster", "api"), ("result", "reset")]
            )
            .await,
            0.0,
            "no attempt went to the closed connection"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_may_be_host_names() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let endpoint = format!("localhost:{}", a.addr().port());
        let sp = Spindle::start_in(
            wd,
            &config(&format!("\n[cluster.api]\nendpoints = [\"{endpoint}\"]\n")),
        )
        .await;
        get_ok(&Client::new(), &sp, 3).await;
        assert_eq!(a.count(), 3);
        assert_eq!(opened(&sp).await, 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_response_leaves_its_connection_open() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let config = head(&["router", "balancer", "retry"])
            + &router_all_to("api")
            + &round_robin()
            + &spindle_tests::config::filter(
                "retry",
                "retry",
                "attempts = 2\nretry_on = [\"5xx\"]\nbackoff_base_ms = 1\nbackoff_max_ms = 2",
            )
            + &spindle_tests::config::cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;
        let client = Client::new();
        for _ in 0..3 {
            a.fail_next(503, 1);
            get_ok(&client, &sp, 1).await;
        }
        assert_eq!(a.count(), 6, "each request was retried once");
        // The 503s' bodies were read to the end, so their connections went back to the pool
        // (or served the retry) instead of being closed.
        assert!(
            wait_until(Duration::from_secs(5), || async {
                let open = sp
                    .metric("spindle_upstream_connections", &[("cluster", "api")])
                    .await;
                open.is_some() && open == Some(opened(&sp).await)
            })
            .await,
            "every upstream connection opened is still open: {:?} of {}",
            sp.metric("spindle_upstream_connections", &[("cluster", "api")])
                .await,
            opened(&sp).await
        );
    })
    .await
}
