//! What an operator sees: `GET /filters` (version, pool, reload history with
//! errors) and the runtime gauges and call histograms in `/metrics`.

use std::time::Duration;

use spindle_tests::config::{cluster, head, round_robin};
use spindle_tests::{Client, Spindle, Upstream, Workdir, bounded, wait_until};

fn config() -> String {
    head(&["router", "balancer"])
        + "\n[filter.router]\nmodule = \"{dir}/router.wasm\"\n[filter.router.config]\nroutes = [ { path_prefix = \"/\", cluster = \"api\" } ]\n"
        + &round_robin()
        + &cluster("api", &["a"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_view_and_runtime_metrics() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        wd.install_module("router.wasm", "router");
        let sp = Spindle::start_in(wd, &config()).await;
        let client = Client::new();
        for _ in 0..5 {
            let resp = client
                .get(&format!("{}/x", sp.url("edge")), &[])
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
        }

        let r = sp.filter_view("router").await;
        assert_eq!(r["sha256"].as_str().map(str::len), Some(64), "{r}");
        assert!(r["calls"].as_u64().unwrap_or(0) >= 5, "{r}");
        assert!(r["instances"].as_u64().unwrap_or(0) >= 1, "{r}");
        assert_eq!(r["reloads"][0]["result"], "ok", "{r}");
        assert_eq!(r["reloads"][0]["detail"], r["sha256"], "{r}");

        let metrics = sp.metrics_text().await;
        for needle in [
            "spindle_filter_call_duration_seconds_bucket{filter=\"router\",hook=\"request\"",
            "spindle_filter_call_duration_seconds_count{filter=\"balancer\",hook=\"pick\"}",
            "spindle_filter_instances{filter=\"router\"}",
            "spindle_filter_idle_instances{filter=\"balancer\"}",
            "spindle_downstream_connections{listener=\"edge\"}",
        ] {
            assert!(
                metrics.contains(needle),
                "/metrics has {needle}:\n{metrics}"
            );
        }
        assert!(
            sp.metric("spindle_downstream_connections", &[("listener", "edge")])
                .await
                >= Some(1.0),
            "the client's keep-alive connection is open"
        );
        // Five sequential requests reuse one pooled upstream connection.
        assert_eq!(
            sp.metric("spindle_upstream_connections", &[("cluster", "api")])
                .await,
            Some(1.0)
        );
        assert_eq!(
            sp.metric(
                "spindle_upstream_connections_opened_total",
                &[("cluster", "api")]
            )
            .await,
            Some(1.0)
        );

        // A refused version shows up in the history, with its reason.
        sp.write_file("router.wasm", b"not wasm at all");
        assert!(
            wait_until(Duration::from_secs(10), || async {
                let r = sp.filter_view("router").await;
                r["reloads"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|e| e["result"] == "error"))
            })
            .await,
            "the refused module is in the reload history"
        );
        let r = sp.filter_view("router").await;
        let last = r["reloads"]
            .as_array()
            .and_then(|h| h.last().cloned())
            .unwrap();
        assert!(
            last["detail"]
                .as_str()
                .unwrap_or("")
                .contains("not a Wasm component"),
            "{last}"
        );
        let resp = client
            .get(&format!("{}/y", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "the old version keeps serving");

        // Connections the upstream closes leave the count.
        a.stop().await;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                sp.metric("spindle_upstream_connections", &[("cluster", "api")])
                    .await
                    == Some(0.0)
            })
            .await,
            "closed upstream connections are no longer counted"
        );
    })
    .await
}
