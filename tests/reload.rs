//! Hot swap: config reloads, module swaps under load, refused modules and configs.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, head, round_robin, router_all_to};
use spindle_tests::{Client, Load, Spindle, Upstream, Workdir, bounded, wait_until};

const SWAP_WAIT: Duration = Duration::from_secs(10);

fn routing_to(cluster_name: &str) -> String {
    head(&["router", "balancer"])
        + &router_all_to(cluster_name)
        + &round_robin()
        + &cluster("one", &["a"])
        + &cluster("two", &["b"])
}

async fn upstream_of(client: &Client, url: &str) -> Option<String> {
    let resp = client.get(url, &[]).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.upstream().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_changes_routing_and_a_broken_config_is_refused() {
    bounded(Duration::from_secs(120), async {
        let ups = Upstream::start_many(&["a", "b"]).await;
        let sp = Spindle::start(&routing_to("one"), &[&ups[0], &ups[1]]).await;
        let client = Client::new();
        let url = format!("{}/r", sp.url("edge"));
        assert_eq!(upstream_of(&client, &url).await.as_deref(), Some("a"));

        sp.rewrite_config(&routing_to("two"));
        assert!(
            wait_until(SWAP_WAIT, || async {
                upstream_of(&client, &url).await.as_deref() == Some("b")
            })
            .await,
            "routing did not follow the new config"
        );
        for _ in 0..20 {
            assert_eq!(upstream_of(&client, &url).await.as_deref(), Some("b"));
        }

        // A config with an unknown key is refused: the running one keeps serving.
        let broken =
            routing_to("one").replace("name = \"edge\"", "name = \"edge\"\nmax_conections = 10");
        assert!(broken.contains("max_conections"));
        sp.rewrite_config(&broken);
        // Absence of change can only be observed over time: give it twice the contract's 1 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..20 {
            assert_eq!(upstream_of(&client, &url).await.as_deref(), Some("b"));
        }

        // Reloading still works after a refused config.
        sp.rewrite_config(&routing_to("one"));
        assert!(
            wait_until(SWAP_WAIT, || async {
                upstream_of(&client, &url).await.as_deref() == Some("a")
            })
            .await,
            "a good config after a refused one was not applied"
        );
    })
    .await
}

/// `swap` is first in the chain, its module file alternates between `testbed` (config-less: a
/// pass-through) and `hello` (adds `x-hello`, which the upstream echoes as `x-echo-x-hello`).
fn swap_config() -> String {
    head(&["swap", "router", "balancer"])
        + "\n[filter.swap]\nmodule = \"{dir}/swap.wasm\"\n"
        + &router_all_to("api")
        + &round_robin()
        + &cluster("api", &["a", "b"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_swap_under_load_loses_no_request() {
    bounded(Duration::from_secs(120), async {
        const TOTAL: usize = 2000;
        const SWAPS: usize = 20;
        // New versions are live within 1 s (contract); allow for a loaded debug build.
        const PICKUP_LIMIT: Duration = Duration::from_secs(3);
        let ups = Upstream::start_many(&["a", "b"]).await;
        let wd = Workdir::new(&[&ups[0], &ups[1]]);
        wd.install_module("swap.wasm", "testbed");
        let sp = Spindle::start_in(wd, &swap_config()).await;
        let ok_before = sp
            .metric_or_zero(
                "spindle_filter_reloads_total",
                &[("filter", "swap"), ("result", "ok")],
            )
            .await;

        // Swap i is written once the load has sent `threshold(i)` requests; the load may run on
        // to `threshold(i + 1)` while the swap is picked up, then waits for it: every swap
        // happens with requests in flight, and the load spans all 20 swaps.
        let threshold = |i: usize| (i * TOTAL / (SWAPS + 1)).min(TOTAL);
        let mut load = Load::new(format!("{}/swap", sp.url("edge")), 8, TOTAL);
        load.tally_header = Some("x-echo-x-hello".into());
        load.gate.store(threshold(2), Ordering::SeqCst);
        let (progress, gate) = (load.progress.clone(), load.gate.clone());
        let runner = tokio::spawn(async move { load.run().await });

        let probe = Client::new();
        let probe_url = format!("{}/probe", sp.url("edge"));
        let mut probes = 0u64;
        let mut slowest = Duration::ZERO;
        for i in 1..=SWAPS {
            while progress.load(Ordering::SeqCst) < threshold(i) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let hello = i % 2 == 1;
            sp.install_module("swap.wasm", if hello { "hello" } else { "testbed" });
            let written = Instant::now();
            let live = wait_until(SWAP_WAIT, || {
                probes += 1;
                let (probe, url) = (&probe, &probe_url);
                async move {
                    let resp = probe.get(url, &[]).await.unwrap();
                    assert_eq!(resp.status, 200, "probe during swap {i}: {resp:?}");
                    resp.header("x-echo-x-hello").is_some() == hello
                }
            })
            .await;
            assert!(live, "swap {i} was not live within {SWAP_WAIT:?}");
            slowest = slowest.max(written.elapsed());
            gate.store(
                if i + 2 > SWAPS {
                    usize::MAX
                } else {
                    threshold(i + 2)
                },
                Ordering::SeqCst,
            );
        }
        gate.store(usize::MAX, Ordering::SeqCst);
        let report = runner.await.expect("load task");

        assert!(
            report.errors.is_empty(),
            "requests lost: {:?}",
            report.errors
        );
        assert_eq!(
            report.status(200),
            TOTAL,
            "every request is a 200: {report:?}"
        );
        assert_eq!(ups[0].count() + ups[1].count(), TOTAL as u64 + probes);
        let without = report.tally.get("-").copied().unwrap_or(0);
        assert!(
            without > 0 && without < TOTAL,
            "both versions served the load: {:?}",
            report.tally
        );
        assert!(
            slowest <= PICKUP_LIMIT,
            "slowest swap took {slowest:?} to go live"
        );
        let reloads = sp
            .metric_or_zero(
                "spindle_filter_reloads_total",
                &[("filter", "swap"), ("result", "ok")],
            )
            .await
            - ok_before;
        assert!(
            reloads >= SWAPS as f64,
            "{reloads} successful reloads of `swap` for {SWAPS} swaps"
        );
    })
    .await
}

fn testbed_config(tb_config: &str) -> String {
    head(&["tb", "router", "balancer"])
        + &format!("\n[filter.tb]\nmodule = \"{{dir}}/tb.wasm\"\n[filter.tb.config]\n{tb_config}\n")
        + &router_all_to("api")
        + &round_robin()
        + &cluster("api", &["a"])
}

async fn tag_of(client: &Client, url: &str) -> Option<String> {
    let resp = client.get(url, &[]).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.header("x-testbed").map(str::to_string)
}

async fn reload_errors(sp: &Spindle) -> f64 {
    sp.metric_or_zero(
        "spindle_filter_reloads_total",
        &[("filter", "tb"), ("result", "error")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_modules_are_refused() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let good = std::fs::read(wd.install_module("tb.wasm", "testbed")).unwrap();
        let sp = Spindle::start_in(wd, &testbed_config("mode = \"ok\"\ntag = \"v1\"")).await;
        let client = Client::new();
        let url = format!("{}/g", sp.url("edge"));
        assert_eq!(tag_of(&client, &url).await.as_deref(), Some("v1"));

        let garbage: Vec<u8> = b"\0asm this is not a component at all"
            .iter()
            .copied()
            .cycle()
            .take(4096)
            .collect();
        let truncated = good[..good.len() / 2].to_vec();
        // The same filter as if built for another version of the ABI: every interface name
        // says 0.2.0, the previous one (same length, so the binary stays well-formed).
        let other_abi = replace_all(&good, b"spindle:filter/host@0.3.0", b"spindle:filter/host@0.2.0");
        let other_abi = replace_all(&other_abi, b"spindle:filter/filter@0.3.0", b"spindle:filter/filter@0.2.0");
        assert_ne!(other_abi, good, "the module names the ABI's version");
        for (what, bytes) in [
            ("garbage", garbage),
            ("truncated", truncated),
            ("other ABI version", other_abi),
        ] {
            let before = reload_errors(&sp).await;
            sp.write_file("tb.wasm", &bytes);
            assert!(
                wait_until(SWAP_WAIT, || async { reload_errors(&sp).await > before }).await,
                "{what} module: spindle_filter_reloads_total{{filter=\"tb\",result=\"error\"}} did not go up"
            );
            for _ in 0..20 {
                assert_eq!(
                    tag_of(&client, &url).await.as_deref(),
                    Some("v1"),
                    "the old version keeps serving after a {what} module"
                );
            }
            if what == "other ABI version" {
                // The refusal names what the module lacks.
                let view = sp.filter_view("tb").await;
                let last = view["reloads"]
                    .as_array()
                    .and_then(|r| r.last())
                    .cloned()
                    .unwrap_or_default();
                let detail = last["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("cannot link") && detail.contains("@0.2.0"),
                    "{last}"
                );
            }
        }

        // Put the good module back and change the config: both take effect.
        sp.write_file("tb.wasm", &good);
        sp.rewrite_config(&testbed_config("mode = \"ok\"\ntag = \"v2\""));
        assert!(
            wait_until(SWAP_WAIT, || async {
                tag_of(&client, &url).await.as_deref() == Some("v2")
            })
            .await,
            "a good config after refused modules applies"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_filter_rejects_is_refused() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        wd.install_module("tb.wasm", "testbed");
        let sp = Spindle::start_in(wd, &testbed_config("mode = \"ok\"\ntag = \"v1\"")).await;
        let client = Client::new();
        let url = format!("{}/c", sp.url("edge"));
        assert_eq!(tag_of(&client, &url).await.as_deref(), Some("v1"));

        let before = reload_errors(&sp).await;
        sp.rewrite_config(&testbed_config("mode = \"reject-config\"\ntag = \"v2\""));
        assert!(
            wait_until(SWAP_WAIT, || async { reload_errors(&sp).await > before }).await,
            "a config the filter rejects counts as a failed reload of `tb`"
        );
        for _ in 0..20 {
            assert_eq!(tag_of(&client, &url).await.as_deref(), Some("v1"));
        }
    })
    .await
}

/// `bytes` with every `from` replaced by `to` (of the same length).
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}
