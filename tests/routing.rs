//! Routing through the router filter: path prefix, exact header match, weighted split, no match.

use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, round_robin};
use spindle_tests::{Client, Spindle, Upstream, bounded};

fn config() -> String {
    let routes = r#"routes = [
  { path_prefix = "/api/", cluster = "api" },
  { path_prefix = "/", headers = { x-canary = "1" }, cluster = "canary" },
  { path_prefix = "/split/", split = [ { cluster = "web", weight = 3 }, { cluster = "canary", weight = 1 } ] },
  { path_prefix = "/web/", cluster = "web" },
]"#;
    head(&["router", "balancer"])
        + &filter("router", "router", routes)
        + &round_robin()
        + &cluster("api", &["api"])
        + &cluster("web", &["web"])
        + &cluster("canary", &["canary"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_prefix_header_and_split() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["api", "web", "canary"]).await;
        let [api, web, canary] = [&ups[0], &ups[1], &ups[2]];
        let sp = Spindle::start(&config(), &[api, web, canary]).await;
        let edge = sp.url("edge");
        let client = Client::new();

        // Prefix.
        let resp = client.get(&format!("{edge}/api/users"), &[]).await.unwrap();
        assert_eq!(
            (resp.status, resp.upstream()),
            (200, Some("api")),
            "{resp:?}"
        );
        assert_eq!(api.seen().last().unwrap().path, "/api/users");
        let resp = client
            .get(&format!("{edge}/web/index.html"), &[])
            .await
            .unwrap();
        assert_eq!(
            (resp.status, resp.upstream()),
            (200, Some("web")),
            "{resp:?}"
        );

        // Exact header match wins over later routes, but not over an earlier one.
        let resp = client
            .get(&format!("{edge}/web/x"), &[("x-canary", "1")])
            .await
            .unwrap();
        assert_eq!(resp.upstream(), Some("canary"), "{resp:?}");
        let resp = client
            .get(&format!("{edge}/api/x"), &[("x-canary", "1")])
            .await
            .unwrap();
        assert_eq!(resp.upstream(), Some("api"), "{resp:?}");
        let resp = client
            .get(&format!("{edge}/web/x"), &[("x-canary", "2")])
            .await
            .unwrap();
        assert_eq!(
            resp.upstream(),
            Some("web"),
            "header values match exactly: {resp:?}"
        );

        // No match: 404 from the host, nothing reaches an upstream.
        let before = api.count() + web.count() + canary.count();
        let resp = client.get(&format!("{edge}/nowhere"), &[]).await.unwrap();
        assert_eq!(resp.status, 404, "{resp:?}");
        assert_eq!(resp.upstream(), None);
        assert_eq!(api.count() + web.count() + canary.count(), before);

        // Weighted split 3:1 over 400 requests.
        web.reset();
        canary.reset();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..400 {
            let resp = client.get(&format!("{edge}/split/{i}"), &[]).await.unwrap();
            assert_eq!(resp.status, 200, "{resp:?}");
            *counts
                .entry(resp.upstream().unwrap_or("-").to_string())
                .or_default() += 1;
        }
        let to_web = counts.get("web").copied().unwrap_or(0);
        let to_canary = counts.get("canary").copied().unwrap_or(0);
        assert_eq!(to_web + to_canary, 400, "{counts:?}");
        assert!(
            (240..=360).contains(&to_web),
            "3:1 split should send ~300 of 400 to web: {counts:?}"
        );
        assert_eq!(web.count() as usize, to_web);
        assert_eq!(canary.count() as usize, to_canary);

        // Per-listener request metric exists and counts the 404.
        let not_found = sp
            .metric(
                "spindle_requests_total",
                &[("listener", "edge"), ("code", "404")],
            )
            .await;
        assert_eq!(not_found, Some(1.0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_are_routed() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["api", "web", "canary"]).await;
        let sp = Spindle::start(&config(), &[&ups[0], &ups[1], &ups[2]]).await;
        let client = Client::http2();
        for _ in 0..20 {
            let resp = client
                .get(&format!("{}/api/h2", sp.url("edge")), &[])
                .await
                .unwrap();
            assert_eq!(
                (resp.status, resp.upstream()),
                (200, Some("api")),
                "{resp:?}"
            );
        }
        assert_eq!(ups[0].count(), 20);
    })
    .await
}
