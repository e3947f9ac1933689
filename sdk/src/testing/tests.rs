//! Tests of the mock host and the driver.

use std::time::Duration;

use super::{MockHost, TestRequest};
use crate::types::{Action, AttemptOutcome, Endpoint, PickContext, RequestSummary};
use crate::{AttemptAction, Filter, Hooks, InitError, Request, Response, store};

/// A balancer that records what it was told.
#[derive(Default)]
struct Recorder {
    changes: Vec<(String, Vec<u32>)>,
    tickets: Vec<(String, u64)>,
}

#[crate::filter]
impl Filter for Recorder {
    type Config = crate::NoConfig;
    fn new(_: crate::NoConfig) -> Result<Self, InitError> {
        Ok(Recorder::default())
    }
    fn endpoints_changed(&mut self, cluster: &str, endpoints: &[Endpoint]) {
        self.changes
            .push((cluster.to_owned(), endpoints.iter().map(|e| e.id).collect()));
    }
    fn pick_endpoint(&mut self, ctx: &PickContext) -> Option<u32> {
        self.tickets.push((ctx.cluster.clone(), ctx.ticket));
        let (_, ids) = self.changes.iter().rev().find(|(c, _)| *c == ctx.cluster)?;
        ids.first().copied()
    }
}

/// Declares only `on_response`, and keeps a request variable.
struct Tagger;

#[crate::filter]
impl Filter for Tagger {
    type Config = crate::NoConfig;
    fn new(_: crate::NoConfig) -> Result<Self, InitError> {
        Ok(Tagger)
    }
    fn on_response(&mut self, resp: &mut Response) {
        let mut req = resp.request();
        let seen = req.var("seen").unwrap_or_default();
        req.set_var("seen", &format!("{seen}x"));
        resp.set_header("x-tag", &seen);
    }
}

#[test]
fn hooks_are_declared_by_the_macro() {
    assert_eq!(<Recorder as Filter>::HOOKS, Hooks::PICK);
    assert_eq!(<Tagger as Filter>::HOOKS, Hooks::RESPONSE);
}

#[test]
fn endpoints_are_pushed_before_a_pick_only_when_they_changed() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    let mut f = host.load::<Recorder>(serde_json::json!({})).unwrap();
    assert_eq!(f.pick("api"), Some(a));
    assert_eq!(f.pick("api"), Some(a));
    assert_eq!(f.filter().changes.len(), 1);

    crate::endpoints::eject_endpoint(a, Duration::from_secs(10));
    assert_eq!(f.pick("api"), Some(b));
    assert_eq!(f.filter().changes.len(), 2);
    assert_eq!(f.filter().changes[1].1, vec![b]);

    host.advance(Duration::from_secs(10));
    assert_eq!(f.pick("api"), Some(a));
    assert_eq!(f.filter().changes.len(), 3);

    // A second instance gets the current set on its first pick.
    let mut g = host.load::<Recorder>(serde_json::json!({})).unwrap();
    assert_eq!(g.pick("api"), Some(a));
    assert_eq!(g.filter().changes, vec![("api".to_owned(), vec![a, b])]);
}

#[test]
fn picks_are_numbered_per_cluster_across_instances() {
    let host = MockHost::new();
    host.add_endpoint("api", "10.0.0.1:80", 1);
    host.add_endpoint("web", "10.0.0.2:80", 1);
    let mut one = host.load::<Recorder>(serde_json::json!({})).unwrap();
    let mut two = host.load::<Recorder>(serde_json::json!({})).unwrap();
    one.pick("api");
    two.pick("api");
    one.pick("web");
    // A ticket the test passes is replaced by the cluster's next one, as the host does.
    two.pick_with(PickContext {
        cluster: "api".to_owned(),
        attempt: 2,
        previous: None,
        ticket: 99,
    });
    let seen = |f: &super::TestFilter<Recorder>| f.filter().tickets.clone();
    assert_eq!(seen(&one), [("api".to_owned(), 0), ("web".to_owned(), 0)]);
    assert_eq!(seen(&two), [("api".to_owned(), 1), ("api".to_owned(), 2)]);
}

#[test]
fn undeclared_hooks_are_not_called() {
    let host = MockHost::new();
    let mut t = host.load::<Tagger>(serde_json::json!({})).unwrap();
    host.start_request(TestRequest::get("/"));
    assert_eq!(t.on_request(), Action::Continue);
    assert_eq!(t.pick("api"), None);
    let outcome = AttemptOutcome::response("api", 1, 1, 503);
    assert_eq!(t.on_attempt(&outcome), AttemptAction::Done);
}

#[test]
fn request_vars_are_per_request_and_shared_by_instances() {
    let host = MockHost::new();
    let mut one = host.load::<Tagger>(serde_json::json!({})).unwrap();
    let mut two = host.load::<Tagger>(serde_json::json!({})).unwrap();
    host.start_request(TestRequest::get("/"));
    host.set_response(200, &[]);
    one.on_response();
    two.on_response();
    assert_eq!(host.response_header("x-tag").as_deref(), Some("x"));
    assert_eq!(host.request_var::<Tagger>("seen").as_deref(), Some("xx"));
    host.start_request(TestRequest::get("/"));
    assert_eq!(host.request_var::<Tagger>("seen"), None);
}

#[test]
fn store_counters_are_decimal_text() {
    let host = MockHost::new();
    assert_eq!(store::add("c", 41, store::FOREVER), 41);
    assert_eq!(store::add("c", 1, store::FOREVER), 42);
    assert_eq!(host.store_get("c").as_deref(), Some(&b"42"[..]));
    assert_eq!(host.store_counter("c"), Some(42));
    store::set("c", b"nope", store::FOREVER);
    assert_eq!(store::add("c", -1, store::FOREVER), -1);
    assert_eq!(host.store_get("c").as_deref(), Some(&b"-1"[..]));
}

#[test]
fn store_ttl_follows_the_clock() {
    let host = MockHost::new();
    store::add("k", 1, Duration::from_millis(100));
    // The TTL is set when the key is created, not on later adds.
    host.advance(Duration::from_millis(60));
    store::add("k", 1, Duration::from_millis(100));
    host.advance(Duration::from_millis(50));
    assert_eq!(host.store_get("k"), None);
    assert!(store::cas("k", None, b"v", store::FOREVER));
    assert!(!store::cas("k", None, b"w", store::FOREVER));
}

#[test]
fn random_is_seeded_and_queueable() {
    let _host = MockHost::new();
    let first: Vec<u64> = (0..3).map(|_| crate::random::next_u64()).collect();
    let host2 = MockHost::new();
    let again: Vec<u64> = (0..3).map(|_| crate::random::next_u64()).collect();
    assert_eq!(first, again);
    host2.queue_random([MockHost::for_below(7, 10)]);
    assert_eq!(crate::random::below(10), 7);
}

#[test]
fn metrics_and_logs_are_inspectable() {
    let host = MockHost::new();
    let c = crate::metrics::Counter::new("hits_total", "Hits.", &["code"]).unwrap();
    c.inc(&["200"]).unwrap();
    c.add(&["200"], 2.0).unwrap();
    assert!(c.inc(&[]).is_err());
    assert!(crate::metrics::Gauge::new("hits_total", "again", &["code"]).is_err());
    assert_eq!(host.counter("hits_total", &["200"]), 3.0);
    crate::warn!("endpoint {} is slow", 3);
    assert!(host.logged("endpoint 3 is slow"));
}

#[test]
fn request_getters_are_empty_outside_a_request() {
    let _host = MockHost::new();
    let mut req = Request::current();
    assert_eq!(req.method(), "");
    req.set_header("x", "y");
    assert_eq!(req.header("x"), None);
    let summary = RequestSummary {
        status: 200,
        cluster: None,
        endpoint: None,
        attempts: 0,
        duration: Duration::ZERO,
    };
    assert_eq!(summary.request().path(), "");
}

#[test]
fn config_errors_name_the_key() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        attempts: u32,
    }
    struct F;
    #[crate::filter]
    impl Filter for F {
        type Config = Config;
        fn new(_: Config) -> Result<Self, InitError> {
            Ok(F)
        }
    }
    let host = MockHost::new();
    let err = host
        .load_json::<F>(r#"{"attempts": 1, "atempts": 2}"#)
        .unwrap_err();
    assert_eq!(
        err.message(),
        "unknown field `atempts`, expected `attempts`"
    );
    assert!(host.load_json::<F>("{").is_err());
    assert_eq!(<F as Filter>::HOOKS, Hooks::NONE);
}

#[test]
fn endpoint_addresses_are_known_until_the_endpoint_leaves() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let b = host.add_endpoint("web", "[2001:db8::1]:8080", 1);
    assert_eq!(
        crate::endpoints::endpoint_address(a).as_deref(),
        Some("10.0.0.1:80")
    );
    assert_eq!(
        crate::endpoints::endpoint_address(b).as_deref(),
        Some("[2001:db8::1]:8080")
    );
    // Ejected endpoints keep their address.
    crate::endpoints::eject_endpoint(a, Duration::from_secs(10));
    assert_eq!(
        crate::endpoints::endpoint_address(a).as_deref(),
        Some("10.0.0.1:80")
    );
    host.remove_endpoint(a);
    assert_eq!(crate::endpoints::endpoint_address(a), None);
    assert_eq!(crate::endpoints::endpoint_address(99), None);
}

/// Counts the outcomes it is shown; declares that it wants failures and recoveries only.
#[derive(Default)]
struct Watcher {
    seen: Vec<(u32, Option<u16>)>,
}

#[crate::filter]
impl Filter for Watcher {
    type Config = crate::NoConfig;
    fn new(_: crate::NoConfig) -> Result<Self, InitError> {
        Ok(Watcher::default())
    }
    fn attempt_outcomes(&self) -> crate::AttemptOutcomes {
        crate::AttemptOutcomes::FailuresAndRecoveries
    }
    fn on_attempt(&mut self, outcome: &AttemptOutcome) -> AttemptAction {
        self.seen.push((outcome.endpoint, outcome.status));
        AttemptAction::Done
    }
}

#[test]
fn failures_and_recoveries_skip_successes_on_healthy_endpoints() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let mut f = host.load::<Watcher>(serde_json::json!({})).unwrap();
    assert_eq!(
        f.attempt_outcomes(),
        crate::AttemptOutcomes::FailuresAndRecoveries
    );
    let ok = AttemptOutcome::response("api", a, 1, 200);
    let bad = AttemptOutcome::response("api", a, 1, 503);
    f.on_attempt(&ok);
    f.on_attempt(&bad);
    f.on_attempt(&bad);
    // The first success after failures is a recovery; the next one is not shown.
    f.on_attempt(&ok);
    f.on_attempt(&ok);
    assert_eq!(
        f.filter().seen,
        vec![(a, Some(503)), (a, Some(503)), (a, Some(200))]
    );
    let stats = crate::endpoints::endpoint_stats(a).unwrap();
    assert_eq!(
        (
            stats.total_requests,
            stats.total_failures,
            stats.consecutive_failures
        ),
        (5, 2, 0),
        "outcomes are recorded as the host records them"
    );

    // After an ejection, the first success once it is over is the probe.
    assert!(crate::endpoints::eject_endpoint(
        a,
        Duration::from_millis(100)
    ));
    f.on_attempt(&ok);
    assert_eq!(f.filter().seen.len(), 3, "still ejected: not the probe");
    host.advance(Duration::from_millis(150));
    f.on_attempt(&ok);
    f.on_attempt(&ok);
    assert_eq!(f.filter().seen[3..], [(a, Some(200))]);
}
