//! Spindle as Prometheus and Grafana see it: a real Prometheus server scrapes the admin listener
//! and its query API counts exactly the requests sent; every query of the Grafana dashboard in
//! `examples/grafana/` is accepted by that Prometheus and names only metrics that spindle exports;
//! and the example scrape config passes `promtool check config`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, head, round_robin, router_all_to};
use spindle_tests::{Client, Prometheus, Spindle, Upstream, bounded, workspace_root};

/// Requests sent through spindle; Prometheus must count exactly these.
const REQUESTS: usize = 25;
/// How long each wait on Prometheus (first scrape, counts) may take.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);
/// What Grafana's interval variables stand for in these tests.
const INTERVAL: &str = "1m";
/// The dashboard's own query variables; `.*` (their "All" value) when a query is run here.
const VARIABLES: [&str; 3] = ["instance", "listener", "cluster"];

fn grafana_dir() -> PathBuf {
    workspace_root().join("examples").join("grafana")
}

fn dashboard() -> serde_json::Value {
    let path = grafana_dir().join("spindle-dashboard.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One query of a panel.
struct Target {
    panel: String,
    expr: String,
    legend: String,
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn targets(dashboard: &serde_json::Value) -> Vec<Target> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(Target {
                panel: panel["title"].as_str().unwrap_or("?").to_string(),
                expr: target["expr"].as_str().unwrap_or_default().to_string(),
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    out
}

/// The `label_values(SELECTOR, LABEL)` query variables, as (name, selector, label).
fn label_variables(dashboard: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?").to_string();
        let query = var["query"]
            .as_str()
            .or_else(|| var["query"]["query"].as_str())
            .unwrap_or_default();
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| {
                panic!("variable {name}: expected label_values(SELECTOR, LABEL), got {query:?}")
            });
        out.push((name, selector.trim().to_string(), label.trim().to_string()));
    }
    out
}

/// A dashboard expression as Prometheus gets it once Grafana has filled in its variables.
fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for interval in ["__rate_interval", "__interval", "__range"] {
        out = out
            .replace(&format!("${{{interval}}}"), INTERVAL)
            .replace(&format!("${interval}"), INTERVAL);
    }
    for var in VARIABLES {
        out = out
            .replace(&format!("${{{var}}}"), ".*")
            .replace(&format!("${var}"), ".*");
    }
    assert!(
        !out.contains('$'),
        "{expr:?} uses a variable the dashboard does not define"
    );
    out
}

/// The `spindle_*` metric names an expression mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in expr.match_indices("spindle_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let end = expr[at..]
            .find(|c: char| !is_ident(c))
            .map_or(expr.len(), |n| at + n);
        names.insert(expr[at..end].to_string());
    }
    names
}

/// The labels of every `by (...)` clause in an expression.
fn by_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for (at, _) in expr.match_indices("by (") {
        let rest = &expr[at + "by (".len()..];
        let list = rest.split(')').next().unwrap_or_default();
        labels.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    labels
}

/// The `{{label}}` references of a legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

/// Names a query may use, from spindle's `/metrics` text: each sample's name, and for each
/// declared family (which may have no samples yet) the names its type yields in PromQL: a
/// histogram is only `_bucket`, `_sum` and `_count`, never its bare family name.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "histogram" => {
                    names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{family}{s}")))
                }
                "summary" => names.extend(["", "_sum", "_count"].map(|s| format!("{family}{s}"))),
                _ => {
                    names.insert(family.to_string());
                }
            }
        } else if let Some(name) = sample_name(line) {
            names.insert(name.to_string());
        }
    }
    names
}

/// Names with at least one sample in the `/metrics` text.
fn sampled_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(sample_name)
        .map(str::to_string)
        .collect()
}

/// The metric name of a sample line (`name{labels} value` or `name value`).
fn sample_name(line: &str) -> Option<&str> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    Some(&line[..end])
}

fn is_empty_result(data: &serde_json::Value) -> bool {
    data["resultType"] == "vector" && data["result"].as_array().is_some_and(Vec::is_empty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_spindle_and_answers_the_dashboard() {
    bounded(Duration::from_secs(90), async {
        let started = Instant::now();
        let a = Upstream::start("a").await;
        let config = head(&["router", "balancer"])
            + &router_all_to("api")
            + &round_robin()
            + &cluster("api", &["a"]);
        let sp = Spindle::start(&config, &[&a]).await;

        // Prometheus first, so that rates and quantiles see the requests arrive.
        let prom = Prometheus::start("spindle", sp.admin_addr()).await;
        prom.wait_for(
            "Prometheus's first scrape of spindle",
            "up{job=\"spindle\"}",
            PROMETHEUS_WAIT,
            |v| v == 1.0,
        )
        .await;

        // One request first: it creates the series (spindle exports a status code's counter
        // from its first request on), and rate() only counts increases after a series' first
        // scrape. Then the rest, which rates and quantiles must see.
        let client = Client::new();
        let send = |range: std::ops::Range<usize>| {
            let client = client.clone();
            let url = sp.url("edge");
            async move {
                for n in range {
                    let resp = client
                        .get(&format!("{url}/req/{n}"), &[])
                        .await
                        .unwrap_or_else(|e| panic!("request {n}: {e}"));
                    assert_eq!(resp.status, 200, "request {n}: {resp:?}");
                }
            }
        };
        send(0..1).await;
        prom.wait_for(
            "the first request to be scraped",
            "sum(spindle_requests_total{listener=\"edge\"})",
            PROMETHEUS_WAIT,
            |v| v == 1.0,
        )
        .await;
        send(1..REQUESTS).await;
        assert_eq!(a.count(), REQUESTS as u64);

        let sent = REQUESTS as f64;
        prom.wait_for(
            "every request sent to be scraped",
            "sum(spindle_requests_total{listener=\"edge\"})",
            PROMETHEUS_WAIT,
            |v| v == sent,
        )
        .await;
        // Same scrape: the upstream attempts are all there too, and nothing more came in.
        for promql in [
            "sum(spindle_upstream_requests_total{cluster=\"api\",result=\"2xx\"})",
            "sum(spindle_requests_total{listener=\"edge\",code=\"200\"})",
        ] {
            assert_eq!(prom.value(promql).await, Ok(Some(sent)), "{promql}");
        }
        let rate = prom
            .value("sum(rate(spindle_requests_total{listener=\"edge\"}[1m]))")
            .await;
        assert!(matches!(rate, Ok(Some(r)) if r > 0.0), "request rate {rate:?}");
        let p99 = prom
            .wait_for(
                "a p99 latency",
                "histogram_quantile(0.99, sum by (le) (rate(spindle_request_duration_seconds_bucket{listener=\"edge\"}[1m])))",
                PROMETHEUS_WAIT,
                f64::is_finite,
            )
            .await;
        assert!(p99 > 0.0 && p99 < 10.0, "p99 latency {p99} s");

        // The dashboard: its variables resolve, and every panel query is valid PromQL that
        // Prometheus runs; a panel over metrics spindle has samples of shows data.
        let dashboard = dashboard();
        let metrics = sp.metrics_text().await;
        let sampled = sampled_names(&metrics);
        let mut problems = Vec::new();
        for (name, selector, label) in label_variables(&dashboard) {
            let promql = format!("count by ({label}) ({})", substitute(&selector));
            match prom.query(&promql).await {
                Ok(data) if !is_empty_result(&data) => {}
                Ok(data) => problems.push(format!("variable {name}: `{promql}` has no values: {data}")),
                Err(e) => problems.push(format!("variable {name}: `{promql}`: {e}")),
            }
        }
        let targets = targets(&dashboard);
        assert!(targets.len() >= 10, "the dashboard has its panels");
        for t in &targets {
            let promql = substitute(&t.expr);
            let all_sampled = metric_names(&promql).iter().all(|m| sampled.contains(m));
            match prom.query(&promql).await {
                Ok(data) if all_sampled && is_empty_result(&data) => problems.push(format!(
                    "panel {:?}: `{promql}` shows nothing although spindle exports its metrics",
                    t.panel
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("panel {:?}: `{promql}`: {e}", t.panel)),
            }
        }

        // Every metric name the dashboard uses is one spindle exports.
        let exported = exported_names(&metrics);
        let mut used = BTreeSet::new();
        for t in &targets {
            used.extend(metric_names(&t.expr));
        }
        for (_, selector, _) in label_variables(&dashboard) {
            used.extend(metric_names(&selector));
        }
        for name in &used {
            if !exported.contains(name) {
                problems.push(format!("the dashboard uses {name}, which spindle does not export"));
            }
        }
        assert!(
            problems.is_empty(),
            "dashboard problems:\n{}\n/metrics:\n{metrics}",
            problems.join("\n")
        );
        eprintln!(
            "prometheus: {} dashboard queries over {} metrics checked; {:?} in all",
            targets.len(),
            used.len(),
            started.elapsed()
        );
    })
    .await
}

#[test]
fn example_scrape_config_passes_promtool() {
    let path = grafana_dir().join("prometheus.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&path)
        .output()
        .expect("promtool runs (Debian package `prometheus`; `make test-deps` installs it)");
    assert!(
        out.status.success(),
        "promtool check config {} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("read prometheus.yml");
    assert!(
        text.contains("job_name: spindle") && text.contains("\"127.0.0.1:9901\""),
        "the example scrapes the quickstart's admin listener as job `spindle`"
    );
}

#[test]
fn dashboard_is_importable_and_uses_its_data_source_variable() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a `datasource` variable over Prometheus data sources"
    );
    let uses_variable = |owner: &str, ds: &serde_json::Value| {
        assert!(
            ds["type"] == "prometheus" && ds["uid"] == "${datasource}",
            "{owner}: datasource {ds} is not the `datasource` variable"
        );
    };
    for var in vars.iter().filter(|v| v["type"] == "query") {
        uses_variable(&format!("variable {}", var["name"]), &var["datasource"]);
    }

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} ({title}) is used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if x + w <= 24),
            "{title}: gridPos {grid} leaves the 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        uses_variable(title, &panel["datasource"]);
        let targets = panel["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            uses_variable(title, &target["datasource"]);
            assert!(
                ref_ids.insert(target["refId"].as_str().unwrap_or_default()),
                "{title}: refId {} is used twice",
                target["refId"]
            );
        }
    }

    // A legend names only labels that the query keeps.
    for t in targets(&dashboard) {
        let kept = by_labels(&t.expr);
        for label in legend_labels(&t.legend) {
            assert!(
                kept.contains(&label),
                "panel {:?}: legend {:?} names {label}, which `{}` aggregates away",
                t.panel,
                t.legend,
                t.expr
            );
        }
        substitute(&t.expr);
    }
}

#[test]
fn expression_helpers() {
    let expr = r#"histogram_quantile(0.99, sum by (cluster, le) (rate(spindle_upstream_request_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["spindle_upstream_request_duration_seconds_bucket"]
    );
    assert_eq!(
        by_labels(expr).into_iter().collect::<Vec<_>>(),
        ["cluster", "le"]
    );
    assert_eq!(
        substitute(expr),
        r#"histogram_quantile(0.99, sum by (cluster, le) (rate(spindle_upstream_request_duration_seconds_bucket{instance=~".*"}[1m])))"#
    );
    assert_eq!(
        legend_labels("{{cluster}} {{ endpoint }} p99"),
        ["cluster", "endpoint"]
    );
    let text = "# TYPE spindle_x_seconds histogram\nspindle_x_seconds_count 1\n# TYPE spindle_errors_total counter\n";
    let names = exported_names(text);
    assert!(names.contains("spindle_x_seconds_bucket") && names.contains("spindle_errors_total"));
    assert!(!names.contains("spindle_x_seconds"));
    assert_eq!(
        sampled_names(text).into_iter().collect::<Vec<_>>(),
        ["spindle_x_seconds_count"]
    );
}
