//! The balancer filter: smooth weighted round robin, exact over sequential requests.

use std::collections::BTreeMap;
use std::time::Duration;

use spindle_tests::config::{filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded};

async fn spread(sp: &Spindle, requests: usize) -> BTreeMap<String, usize> {
    let client = Client::new();
    let mut counts = BTreeMap::new();
    for i in 0..requests {
        let resp = client
            .get(&format!("{}/item/{i}", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        *counts
            .entry(resp.upstream().unwrap_or("-").to_string())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_equal_endpoints() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b", "c"]).await;
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &round_robin()
            + &spindle_tests::config::cluster("api", &["a", "b", "c"]);
        let sp = Spindle::start(&config, &[&ups[0], &ups[1], &ups[2]]).await;

        let counts = spread(&sp, 200).await;
        let values: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|u| counts.get(*u).copied().unwrap_or(0))
            .collect();
        assert_eq!(values.iter().sum::<usize>(), 200, "{counts:?}");
        let (min, max) = (values.iter().min().unwrap(), values.iter().max().unwrap());
        assert!(max - min <= 1, "round robin must be within ±1: {counts:?}");
        for up in &ups {
            assert_eq!(
                up.count() as usize,
                counts[up.name()],
                "upstream {} saw exactly what the client saw",
                up.name()
            );
        }

        // The upstream request metric exists for the cluster.
        assert!(
            sp.metric("spindle_upstream_requests_total", &[("cluster", "api")])
                .await
                .unwrap_or(0.0)
                >= 200.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b", "c"]).await;
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &round_robin()
            + r#"
[cluster.api]
endpoints = [{ address = "{up:a}", weight = 2 }, "{up:b}", { address = "{up:c}", weight = 1 }]
"#;
        let sp = Spindle::start(&config, &[&ups[0], &ups[1], &ups[2]]).await;

        let counts = spread(&sp, 300).await;
        let get = |u: &str| counts.get(u).copied().unwrap_or(0) as i64;
        assert_eq!(get("a") + get("b") + get("c"), 300, "{counts:?}");
        assert!(
            (get("a") - 150).abs() <= 1,
            "weight 2 gets half: {counts:?}"
        );
        assert!((get("b") - 75).abs() <= 1, "{counts:?}");
        assert!((get("c") - 75).abs() <= 1, "{counts:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_policy_reaches_every_endpoint() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b"]).await;
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &filter("balancer", "balancer", "policy = \"random\"")
            + &spindle_tests::config::cluster("api", &["a", "b"]);
        let sp = Spindle::start(&config, &[&ups[0], &ups[1]]).await;
        let counts = spread(&sp, 200).await;
        // Binomial(200, 0.5): below 50 is more than 7 standard deviations away.
        assert!(counts.get("a").copied().unwrap_or(0) >= 50, "{counts:?}");
        assert!(counts.get("b").copied().unwrap_or(0) >= 50, "{counts:?}");
    })
    .await
}
