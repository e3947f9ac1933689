//! Load shedding and the traffic filters through the real host: the breaker's `max_pending`,
//! `ratelimit`, `fault` and `headers`.

use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Load, Spindle, Upstream, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_answers_503_under_a_burst() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        a.delay(Duration::from_millis(1000));
        let config = head(&["router", "breaker", "balancer"])
            + &router_all_to("api")
            + &filter("breaker", "breaker", "max_pending = 2")
            + &round_robin()
            + &cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;

        // The breaker declared its threshold: below it, the host does not call its on_request.
        let breaker = sp.filter_view("breaker").await;
        assert_eq!(breaker["request_min_in_flight"], 2, "{breaker}");
        assert_eq!(breaker["request_path"], false, "{breaker}");
        let router = sp.filter_view("router").await;
        assert_eq!(router["request_path"], true, "{router}");
        assert_eq!(
            breaker["attempt_outcomes"], "failures_and_recoveries",
            "{breaker}"
        );
        let client = Client::new();
        let resp = client.get(&format!("{}/one", sp.url("edge")), &[]).await;
        assert_eq!(resp.unwrap().status, 200);
        let request_calls = || {
            sp.metric_or_zero(
                "spindle_filter_calls_total",
                &[("filter", "breaker"), ("hook", "request")],
            )
        };
        assert_eq!(
            request_calls().await,
            0.0,
            "one request alone is below max_pending"
        );

        let mut load = Load::new(format!("{}/x", sp.url("edge")), 16, 48);
        load.tally_header = Some("x-spindle-breaker".into());
        let report = load.run().await;
        eprintln!("max_pending: {:?} {:?}", report.statuses, report.tally);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.status(200) >= 2, "{report:?}");
        assert!(report.status(503) >= 24, "{report:?}");
        assert_eq!(report.tally.get("open").copied(), Some(report.status(503)));
        assert_eq!(report.status(200) + report.status(503), 48);
        assert_eq!(a.count() as usize, report.status(200) + 1);
        // Every refusal was the filter's own decision, in a hook call the host made.
        assert!(request_calls().await >= report.status(503) as f64);
        let rejected = sp
            .metric_or_zero(
                "spindle_filter_breaker_rejected_total",
                &[("cluster", "api")],
            )
            .await;
        assert_eq!(rejected as usize, report.status(503));
        // Successes on a healthy endpoint are not shown to the breaker's on_attempt.
        assert_eq!(
            sp.metric_or_zero(
                "spindle_filter_calls_total",
                &[("filter", "breaker"), ("hook", "attempt")],
            )
            .await,
            0.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_answers_429_past_the_burst_and_recovers() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let config = head(&["router", "ratelimit", "balancer"])
            + &router_all_to("api")
            + &filter(
                "ratelimit",
                "ratelimit",
                "key = \"header:x-user\"\nrate_per_second = 2\nburst = 5",
            )
            + &round_robin()
            + &cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;
        let client = Client::new();
        let url = format!("{}/x", sp.url("edge"));
        let mut statuses = Vec::new();
        for _ in 0..8 {
            let resp = client.get(&url, &[("x-user", "ann")]).await.unwrap();
            if resp.status == 429 {
                assert_eq!(resp.header("retry-after"), Some("1"), "{resp:?}");
            }
            statuses.push(resp.status);
        }
        // Five at once, then limited (the refill of 2/s adds at most one in the meantime).
        assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
        assert!(
            statuses[5..].iter().filter(|&&s| s == 429).count() >= 2,
            "{statuses:?}"
        );
        // Another key has its own bucket.
        let resp = client.get(&url, &[("x-user", "bob")]).await.unwrap();
        assert_eq!(resp.status, 200);
        // Recovers: a token is back within half a second.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let resp = client.get(&url, &[("x-user", "ann")]).await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(
            sp.metric_or_zero(
                "spindle_filter_ratelimit_limited_total",
                &[("key", "header")]
            )
            .await
                >= 2.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_aborts_its_percentage() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let config = head(&["router", "fault", "balancer"])
            + &router_all_to("api")
            + &filter(
                "fault",
                "fault",
                "abort_status = 503\nabort_percent = 30\nonly_with_header = \"x-chaos\"",
            )
            + &round_robin()
            + &cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;
        let url = format!("{}/x", sp.url("edge"));

        let mut load = Load::new(url.clone(), 4, 600);
        load.headers = vec![("x-chaos".into(), "1".into())];
        let report = load.run().await;
        let aborted = report.status(503);
        eprintln!("fault: {aborted} of 600 aborted at 30%");
        // Binomial(600, 0.3): mean 180, sd 11.2; 6 sd either way.
        assert!((113..=247).contains(&aborted), "{report:?}");
        assert_eq!(report.status(200) + aborted, 600);
        assert_eq!(a.count() as usize, report.status(200));

        // Without the header nothing is aborted.
        let report = Load::new(url, 4, 100).run().await;
        assert_eq!(report.status(200), 100, "{report:?}");
    })
    .await
}

/// Sends `total` GETs to `url` from `clients` concurrent clients; the duration of each.
async fn timed_requests(url: &str, clients: usize, total: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        let n = total / clients + usize::from(c < total % clients);
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            let mut took = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                let resp = client.get(&url, &[]).await.unwrap();
                took.push(start.elapsed());
                assert_eq!(resp.status, 200, "{resp:?}");
            }
            took
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delays_its_percentage() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let config = |percent: u32| {
            head(&["router", "fault", "balancer"])
                + &router_all_to("api")
                + &filter(
                    "fault",
                    "fault",
                    &format!("delay_ms = 200\ndelay_percent = {percent}"),
                )
                + &round_robin()
                + &cluster("api", &["a"])
        };
        let delay = Duration::from_millis(200);

        let sp = Spindle::start(&config(100), &[&a]).await;
        let took = timed_requests(&format!("{}/x", sp.url("edge")), 4, 12).await;
        assert!(took.iter().all(|t| *t >= delay), "{took:?}");
        drop(sp);

        let sp = Spindle::start(&config(50), &[&a]).await;
        let took = timed_requests(&format!("{}/x", sp.url("edge")), 10, 200).await;
        let slow = took.iter().filter(|t| **t >= delay).count();
        let delayed = sp
            .metric_or_zero("spindle_filter_fault_delayed_total", &[])
            .await as usize;
        eprintln!("fault: {slow} of 200 took 200 ms or more, {delayed} delayed, at 50%");
        // Binomial(200, 0.5): mean 100, sd 7.1; 6 sd either way.
        assert!((57..=143).contains(&delayed), "{delayed}");
        // Every delayed request is slow; an undelayed one is slow only on a very busy machine.
        assert!(slow >= delayed, "{slow} slow, {delayed} delayed");
        assert!(slow <= delayed + 10, "{slow} slow, {delayed} delayed");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_set_on_both_sides() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let config = head(&["router", "headers", "balancer"])
            + &router_all_to("api")
            + &filter(
                "headers",
                "headers",
                r#"request = { set = { x-hello = "from %CLIENT_IP% to %CLUSTER%" }, remove = ["x-debug"] }
response = { set = { x-served-by = "endpoint %ENDPOINT_ID% %STATUS%" }, add = { x-request-id-copy = "%REQUEST_ID%" } }"#,
            )
            + &round_robin()
            + &cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;
        let resp = Client::new()
            .get(
                &format!("{}/x", sp.url("edge")),
                &[("x-debug", "1"), ("x-hello", "overwritten")],
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.header("x-echo-x-hello"),
            Some("from 127.0.0.1 to api"),
            "{resp:?}"
        );
        let seen = a.seen();
        assert!(seen[0].headers.get("x-debug").is_none());
        let served = resp.header("x-served-by").unwrap_or("");
        assert!(
            served.starts_with("endpoint ") && served.ends_with(" 200"),
            "{served}"
        );
        assert!(served.len() > "endpoint  200".len(), "{served}");
        assert_eq!(
            resp.header("x-request-id-copy"),
            resp.header("x-echo-x-request-id"),
            "{resp:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_name_the_endpoint_address() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let config = head(&["router", "headers", "balancer"])
            + &router_all_to("api")
            + &filter(
                "headers",
                "headers",
                r#"response = { set = { x-endpoint = "%ENDPOINT%", x-endpoint-id = "%ENDPOINT_ID%" } }"#,
            )
            + &round_robin()
            + &cluster("api", &["a", "b"]);
        let sp = Spindle::start(&config, &[&a, &b]).await;
        let client = Client::new();
        let url = format!("{}/x", sp.url("edge"));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let resp = client.get(&url, &[]).await.unwrap();
            assert_eq!(resp.status, 200, "{resp:?}");
            let expected = match resp.upstream() {
                Some("a") => a.address(),
                Some("b") => b.address(),
                other => panic!("answered by {other:?}"),
            };
            assert_eq!(resp.header("x-endpoint"), Some(expected.as_str()), "{resp:?}");
            assert!(
                resp.header("x-endpoint-id")
                    .is_some_and(|id| id.parse::<u32>().is_ok()),
                "{resp:?}"
            );
            seen.insert(expected);
        }
        assert_eq!(seen.len(), 2, "round robin reaches both: {seen:?}");
    })
    .await
}
