//! The balancer's load-aware and sticky policies through the real host: `least_request` keeps
//! traffic away from an upstream that holds requests, `ewma` prefers the faster upstream, and
//! `ring_hash` keeps a key on one endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, router_all_to};
use spindle_tests::{Client, Load, Spindle, Upstream, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_away_from_an_upstream_that_holds_requests() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["fast", "stuck"]).await;
        ups[1].hold();
        let config = head(&["router", "balancer", "retry"])
            + &router_all_to("api")
            + &filter("balancer", "balancer", "policy = \"least_request\"")
            // One attempt, cut after 1 s: a held request ends in a 504.
            + &filter("retry", "retry", "attempts = 1\nper_try_timeout_ms = 1000")
            + &cluster("api", &["fast", "stuck"]);
        let sp = Spindle::start(&config, &[&ups[0], &ups[1]]).await;

        let report = Load::new(format!("{}/x", sp.url("edge")), 4, 300)
            .run()
            .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let stuck = ups[1].count();
        eprintln!(
            "least_request: fast {} stuck {stuck} statuses {:?}",
            ups[0].count(),
            report.statuses
        );
        // Round robin would send 150 there; P2C sends one only when it holds no more than the
        // fast one, which finishes in well under a millisecond.
        assert!(stuck <= 15, "{stuck} requests went to the stuck upstream");
        assert_eq!(report.status(200) as u64, ups[0].count());
        assert_eq!(report.status(504) as u64, stuck);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_prefers_the_faster_upstream() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["fast", "slow"]).await;
        ups[0].delay(Duration::from_millis(5));
        ups[1].delay(Duration::from_millis(50));
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &filter("balancer", "balancer", "policy = \"ewma\"")
            + &cluster("api", &["fast", "slow"]);
        let sp = Spindle::start(&config, &[&ups[0], &ups[1]]).await;

        let report = Load::new(format!("{}/x", sp.url("edge")), 4, 400)
            .run()
            .await;
        assert_eq!(report.status(200), 400, "{report:?}");
        let fast = report.upstreams.get("fast").copied().unwrap_or(0);
        let slow = report.upstreams.get("slow").copied().unwrap_or(0);
        eprintln!("ewma: fast {fast} slow {slow}");
        assert!(fast >= 4 * slow, "fast {fast} vs slow {slow}: not 4:1");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_each_key_on_one_endpoint() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b", "c"]).await;
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &filter(
                "balancer",
                "balancer",
                "policy = \"ring_hash\"\nhash_header = \"x-user\"",
            )
            + &cluster("api", &["a", "b", "c"]);
        let sp = Spindle::start(&config, &[&ups[0], &ups[1], &ups[2]]).await;
        let client = Client::new();
        let url = format!("{}/x", sp.url("edge"));

        let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for i in 0..1000 {
            let user = format!("user-{}", i % 40);
            let resp = client.get(&url, &[("x-user", &user)]).await.unwrap();
            assert_eq!(resp.status, 200, "{resp:?}");
            owners
                .entry(user)
                .or_default()
                .insert(resp.upstream().unwrap_or("-").to_owned());
        }
        for (user, seen) in &owners {
            assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        }
        let used: BTreeSet<&String> = owners.values().flatten().collect();
        eprintln!("ring_hash: 40 keys over {used:?}");
        assert!(used.len() >= 2, "40 keys all on {used:?}");

        // Without the header: the client's IP, so one endpoint for all of this client's requests.
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let resp = client.get(&url, &[]).await.unwrap();
            seen.insert(resp.upstream().unwrap_or("-").to_owned());
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
    })
    .await
}
