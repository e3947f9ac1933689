//! `/metrics` is valid Prometheus text: `promtool check metrics` (Debian's
//! `prometheus` package, installed by `make test`) accepts it, including the
//! series filters define.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let config = head(&["router", "balancer", "retry", "breaker", "hello"])
            + &router_all_to("api")
            + &round_robin()
            + &filter("retry", "retry", "attempts = 2")
            + &filter("breaker", "breaker", "")
            + &filter("hello", "hello", "")
            + &cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;
        let client = Client::new();
        for path in ["/a", "/b", "/c"] {
            let resp = client
                .get(&format!("{}{path}", sp.url("edge")), &[])
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
        }
        let text = sp.metrics_text().await;
        assert!(
            text.contains("spindle_filter_hello_requests_total"),
            "{text}"
        );

        let output = tokio::task::spawn_blocking(move || {
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("promtool runs (Debian package `prometheus`; `make test` installs it)");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write metrics to promtool");
            child.wait_with_output().expect("promtool finishes")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    })
    .await
}
