//! Traces and access logs: W3C trace context in and out, server and client
//! spans exported over OTLP/HTTP and OTLP/gRPC to a receiver that decodes the
//! real protobuf, filter attributes and events, sampling, a dead collector,
//! and the JSON access log.

use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::otlp::{GRPC_EXPORT_PATH, OtlpCollector, ReceivedSpan};
use spindle_tests::{Client, Spindle, Upstream, Workdir, bounded, run_spindle, wait_until};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";
const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;

/// router → balancer → retry, one cluster `api` on upstream `a`, traces to
/// `endpoint`, and an access log in the work dir.
fn config(telemetry: &str) -> String {
    head(&["router", "balancer", "retry"])
        + "access_log = \"{dir}/access.jsonl\"\n"
        + &router_all_to("api")
        + &round_robin()
        + &filter(
            "retry",
            "retry",
            "attempts = 3\nbackoff_base_ms = 1\nbackoff_max_ms = 2",
        )
        + &cluster("api", &["a"])
        + "\n[telemetry]\n"
        + telemetry
}

/// `(trace id, parent span id, flags)` of a `traceparent` value.
fn parse_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(parts[0], "00", "version of {v:?}");
    assert_eq!(parts[1].len(), 32, "trace id of {v:?}");
    assert_eq!(parts[2].len(), 16, "span id of {v:?}");
    assert!(
        parts[1] != "0".repeat(32) && parts[2] != "0".repeat(16),
        "ids of {v:?}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn spans_of(collector: &OtlpCollector, trace: &str, n: usize) -> Vec<ReceivedSpan> {
    let ok = wait_until(Duration::from_secs(10), || async {
        collector
            .spans()
            .iter()
            .filter(|s| s.trace_id() == trace)
            .count()
            >= n
    })
    .await;
    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id() == trace)
        .collect();
    assert!(ok, "expected {n} spans of trace {trace}, got {spans:#?}");
    spans
}

/// A receiver, upstream `a` and a Spindle running [`config`] with `[telemetry]`
/// exporting to the receiver plus `extra` lines.
async fn traced(extra: &str) -> (OtlpCollector, Upstream, Spindle) {
    let collector = OtlpCollector::start().await;
    let a = Upstream::start("a").await;
    let wd = Workdir::new(&[&a]);
    let telemetry = format!(
        "otlp_endpoint = \"{}\"\nbatch_delay_ms = 20\n{extra}",
        collector.endpoint()
    );
    let sp = Spindle::start_in(wd, &config(&telemetry)).await;
    (collector, a, sp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_request_and_its_retries_over_otlp_http() {
    bounded(Duration::from_secs(90), async {
        let (collector, a, sp) = traced("service_name = \"edge-proxy\"\n").await;
        let client = Client::new();

        // The first attempt gets a 503, the retry a 200.
        a.fail_next(503, 1);
        let resp = client
            .get(
                &format!("{}/orders?id=7", sp.url("edge")),
                &[
                    ("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01")),
                    ("tracestate", "vendor=abc"),
                ],
            )
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "{resp:?}");

        // Upstream: both attempts carry the caller's trace, each with its own parent span.
        let seen = a.seen();
        assert_eq!(seen.len(), 2);
        let sent: Vec<(String, String, String)> = seen
            .iter()
            .map(|s| {
                let tp = s.headers["traceparent"].to_str().unwrap();
                assert_eq!(s.headers["tracestate"], "vendor=abc");
                parse_traceparent(tp)
            })
            .collect();
        for (trace, parent, flags) in &sent {
            assert_eq!(trace, TRACE_ID);
            assert_ne!(parent, PARENT_ID, "upstream's parent is Spindle's span");
            assert_eq!(flags, "01");
        }
        assert_ne!(sent[0].1, sent[1].1, "one client span per attempt");

        // The collector: one server span, two client spans, linked.
        let spans = spans_of(&collector, TRACE_ID, 3).await;
        assert_eq!(spans.len(), 3, "{spans:#?}");
        assert!(spans.iter().all(|s| s.service == "edge-proxy"));
        let server = spans
            .iter()
            .find(|s| s.span.kind == SPAN_KIND_SERVER)
            .expect("a server span");
        assert_eq!(server.parent_id(), PARENT_ID);
        assert_eq!(server.span.name, "GET");
        assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(server.attr("url.path").as_deref(), Some("/orders"));
        assert_eq!(server.attr("url.query").as_deref(), Some("id=7"));
        assert_eq!(
            server.attr("http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(server.attr("spindle.listener").as_deref(), Some("edge"));
        assert_eq!(server.attr("spindle.cluster").as_deref(), Some("api"));
        // Added by the router filter through the SDK.
        assert_eq!(server.attr("spindle.route").as_deref(), Some("/"));

        let mut clients: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.span.kind == SPAN_KIND_CLIENT)
            .collect();
        clients.sort_by_key(|s| s.attr("spindle.attempt"));
        assert_eq!(clients.len(), 2);
        for (c, (_, parent, _)) in clients.iter().zip(&sent) {
            assert_eq!(c.parent_id(), server.span_id());
            assert_eq!(&c.span_id(), parent, "upstream saw this attempt's span");
            assert_eq!(
                c.attr("server.port").as_deref(),
                Some(a.addr().port().to_string().as_str())
            );
            assert_eq!(c.attr("spindle.endpoint"), Some(a.address()));
            assert!(
                c.attr("url.full")
                    .is_some_and(|u| u.ends_with("/orders?id=7")),
                "{c:?}"
            );
        }
        assert_eq!(
            clients[0].attr("http.response.status_code").as_deref(),
            Some("503")
        );
        let retry = clients[0].event("retry").expect("the retry filter's event");
        assert_eq!(
            spindle_tests::otlp::attr(&retry.attributes, "spindle.filter").as_deref(),
            Some("retry")
        );
        assert_eq!(clients[0].attr("http.request.resend_count"), None);
        assert_eq!(
            clients[1].attr("http.request.resend_count").as_deref(),
            Some("1")
        );
        assert_eq!(
            clients[1].attr("http.response.status_code").as_deref(),
            Some("200")
        );
        let requests = collector.requests();
        assert!(
            requests
                .iter()
                .all(|(path, ct)| path == "/v1/traces" && ct == "application/x-protobuf"),
            "{requests:?}"
        );

        // Without a traceparent, Spindle starts a trace and sends it upstream.
        a.reset();
        let resp = client
            .get(&format!("{}/fresh", sp.url("edge")), &[])
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        let tp = a.seen()[0].headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        let (trace, parent, flags) = parse_traceparent(&tp);
        assert_ne!(trace, TRACE_ID);
        assert_eq!(flags, "01", "sampling_ratio defaults to 1");
        let spans = spans_of(&collector, &trace, 2).await;
        let server = spans
            .iter()
            .find(|s| s.span.kind == SPAN_KIND_SERVER)
            .expect("server span");
        assert!(server.span.parent_span_id.is_empty(), "a root span");
        assert!(spans.iter().any(|s| s.span_id() == parent));

        // The export is counted.
        let exported = sp
            .metric_or_zero("spindle_trace_spans_total", &[("result", "exported")])
            .await;
        assert!(exported >= 5.0, "exported {exported}");

        // The access log: one JSON line per request, with the trace id.
        let path = sp.dir().join("access.jsonl");
        let ok = wait_until(Duration::from_secs(5), || async {
            std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 2)
        })
        .await;
        assert!(ok, "two access log lines in {}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let first = &lines[0];
        assert_eq!(first["listener"], "edge");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/orders?id=7");
        assert_eq!(first["status"], 200);
        assert_eq!(first["cluster"], "api");
        assert_eq!(first["endpoint"], a.address());
        assert_eq!(first["attempts"], 2);
        assert_eq!(first["trace_id"], TRACE_ID);
        assert!(first["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
        assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(first["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        assert_eq!(lines[1]["trace_id"], trace.as_str());
        assert_eq!(
            sp.metric_or_zero(
                "spindle_access_log_lines_total",
                &[("listener", "edge"), ("result", "written")]
            )
            .await,
            2.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_grpc() {
    bounded(Duration::from_secs(90), async {
        let (collector, _a, sp) = traced("otlp_protocol = \"grpc\"\n").await;
        let resp = Client::new()
            .get(
                &format!("{}/", sp.url("edge")),
                &[("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01"))],
            )
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        let spans = spans_of(&collector, TRACE_ID, 2).await;
        let server = spans
            .iter()
            .find(|s| s.span.kind == SPAN_KIND_SERVER)
            .expect("server span");
        assert_eq!(server.parent_id(), PARENT_ID);
        assert_eq!(server.service, "spindle", "the default service name");
        let client = spans
            .iter()
            .find(|s| s.span.kind == SPAN_KIND_CLIENT)
            .expect("client span");
        assert_eq!(client.parent_id(), server.span_id());
        let requests = collector.requests();
        assert!(
            requests
                .iter()
                .all(|(path, ct)| path == GRPC_EXPORT_PATH && ct.starts_with("application/grpc")),
            "{requests:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_callers_decision() {
    bounded(Duration::from_secs(90), async {
        let (collector, a, sp) = traced("sampling_ratio = 0.0\n").await;
        let client = Client::new();
        // A new trace at ratio 0: not sampled, but still propagated.
        let resp = client
            .get(&format!("{}/", sp.url("edge")), &[])
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        let tp = a.seen()[0].headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        let (unsampled, _, flags) = parse_traceparent(&tp);
        assert_eq!(flags, "00");
        // A caller that sampled its trace wins over the ratio.
        let resp = client
            .get(
                &format!("{}/", sp.url("edge")),
                &[("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01"))],
            )
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        spans_of(&collector, TRACE_ID, 2).await;
        // By now the unsampled request's spans would have been exported too.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            collector.spans().iter().all(|s| s.trace_id() != unsampled),
            "an unsampled trace is not exported"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_no_request() {
    bounded(Duration::from_secs(90), async {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let telemetry = format!(
            "otlp_endpoint = \"http://127.0.0.1:{port}\"\nbatch_delay_ms = 20\nexport_timeout_ms = 500\n"
        );
        let sp = Spindle::start_in(wd, &config(&telemetry)).await;
        let client = Client::new();
        for _ in 0..20 {
            let resp = client
                .get(&format!("{}/", sp.url("edge")), &[])
                .await
                .expect("request");
            assert_eq!(resp.status, 200);
        }
        let ok = wait_until(Duration::from_secs(10), || async {
            sp.metric_or_zero("spindle_trace_spans_total", &[("result", "failed")])
                .await
                >= 40.0
        })
        .await;
        assert!(ok, "failed exports are counted:\n{}", sp.metrics_text().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_trace_headers_pass_through() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let template = head(&["router", "balancer"])
            + &router_all_to("api")
            + &round_robin()
            + &cluster("api", &["a"]);
        let sp = Spindle::start_in(wd, &template).await;
        let tp = format!("00-{TRACE_ID}-{PARENT_ID}-01");
        let resp = Client::new()
            .get(&format!("{}/", sp.url("edge")), &[("traceparent", &tp)])
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        assert_eq!(a.seen()[0].headers["traceparent"], tp.as_str());
        assert!(
            !sp.metrics_text()
                .await
                .contains("spindle_trace_spans_total"),
            "no trace pipeline when telemetry is off"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_telemetry_settings_fail_check_with_their_line() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        for (telemetry, expected) in [
            (
                "sampling_ratio = 1.5\n",
                "sampling_ratio must be between 0.0 and 1.0",
            ),
            (
                "otlp_endpoint = \"collector:4318\"\n",
                "is not an http:// or https:// URL",
            ),
            ("otlp_protocol = \"thrift\"\n", "unknown variant `thrift`"),
        ] {
            let text = wd.write_config(&config(telemetry));
            let out = run_spindle(
                vec![
                    "check".into(),
                    "--config".into(),
                    wd.config_path().to_string_lossy().into_owned(),
                ],
                Duration::from_secs(30),
            )
            .await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{telemetry} must fail check");
            assert!(stderr.contains(expected), "{telemetry}: {stderr}");
            let line = text
                .lines()
                .position(|l| l.starts_with("[telemetry]"))
                .unwrap()
                + 1;
            assert!(
                stderr.contains(&format!("spindle.toml:{line}"))
                    || stderr.contains(&format!("spindle.toml:{}", line + 1)),
                "{telemetry}: the error names line {line}: {stderr}"
            );
        }
    })
    .await;
}
