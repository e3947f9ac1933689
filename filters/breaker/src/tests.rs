use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{Ejection, MockHost, TestFilter, TestRequest};
use spindle_sdk::{Action, AttemptAction, AttemptError, AttemptOutcome, Filter, Hooks};

use crate::{Breaker, is_failure, may_eject};

fn load(host: &MockHost, config: serde_json::Value) -> TestFilter<Breaker> {
    host.load::<Breaker>(config).expect("config is valid")
}

fn fail(b: &mut TestFilter<Breaker>, endpoint: u32, times: usize) {
    for _ in 0..times {
        let outcome = AttemptOutcome::response("api", endpoint, 1, 503);
        assert_eq!(b.on_attempt(&outcome), AttemptAction::Done);
    }
}

fn succeed(b: &mut TestFilter<Breaker>, endpoint: u32) {
    b.on_attempt(&AttemptOutcome::response("api", endpoint, 1, 200));
}

fn cluster(host: &MockHost, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| host.add_endpoint("api", &format!("10.0.0.{i}:80"), 1))
        .collect()
}

#[test]
fn hooks() {
    assert_eq!(
        <Breaker as Filter>::HOOKS,
        Hooks::REQUEST.union(Hooks::ATTEMPT)
    );
    let host = MockHost::new();
    assert_eq!(
        load(&host, json!({"max_pending": 0})).hooks(),
        Hooks::ATTEMPT
    );
}

#[test]
fn what_counts_as_a_failure() {
    let ok = |s| is_failure(&AttemptOutcome::response("api", 1, 1, s));
    assert!(ok(500) && ok(503) && !ok(404) && !ok(200));
    let err = |e| is_failure(&AttemptOutcome::failed("api", 1, 1, e));
    assert!(err(AttemptError::ConnectFailure) && err(AttemptError::Reset));
    assert!(err(AttemptError::Timeout) && !err(AttemptError::Other));
}

#[test]
fn ejects_after_consecutive_failures() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut b = load(&host, json!({"consecutive_failures": 3}));
    fail(&mut b, eps[0], 2);
    assert!(host.ejections().is_empty());
    assert_eq!(host.store_counter("spindle.breaker.1.failures"), Some(2));
    fail(&mut b, eps[0], 1);
    assert_eq!(
        host.ejections(),
        [Ejection {
            endpoint: eps[0],
            duration: Duration::from_secs(30)
        }]
    );
    assert!(host.is_ejected(eps[0]));
    assert_eq!(host.counter("ejections_total", &["api"]), 1.0);
}

#[test]
fn a_success_resets_the_count() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut b = load(&host, json!({"consecutive_failures": 3}));
    fail(&mut b, eps[0], 2);
    succeed(&mut b, eps[0]);
    fail(&mut b, eps[0], 2);
    assert!(host.ejections().is_empty());
    // Failures of one endpoint do not count against another.
    fail(&mut b, eps[1], 2);
    assert!(host.ejections().is_empty());
}

#[test]
fn counts_are_shared_by_instances() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut one = load(&host, json!({"consecutive_failures": 2}));
    let mut two = load(&host, json!({"consecutive_failures": 2}));
    fail(&mut one, eps[0], 1);
    fail(&mut two, eps[0], 1);
    assert_eq!(host.ejections().len(), 1);
}

#[test]
fn ejections_grow_and_are_capped() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut b = load(
        &host,
        json!({"consecutive_failures": 1, "base_ejection_ms": 1000, "max_ejection_ms": 2500}),
    );
    let mut lengths = Vec::new();
    for _ in 0..4 {
        fail(&mut b, eps[0], 1);
        let last = host.ejections().last().map(|e| e.duration);
        lengths.push(last.unwrap_or_default().as_millis());
        host.advance(Duration::from_millis(2600));
    }
    assert_eq!(lengths, [1000, 2000, 2500, 2500]);
    // Forgotten after max_ejection_ms in good standing.
    host.advance(Duration::from_millis(3000));
    fail(&mut b, eps[0], 1);
    assert_eq!(
        host.ejections().last().map(|e| e.duration.as_millis()),
        Some(1000)
    );
}

#[test]
fn max_ejection_percent_is_respected() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut b = load(
        &host,
        json!({"consecutive_failures": 1, "max_ejection_percent": 50}),
    );
    for &ep in &eps {
        fail(&mut b, ep, 1);
    }
    let ejected: Vec<u32> = host.ejections().iter().map(|e| e.endpoint).collect();
    assert_eq!(ejected, [eps[0], eps[1]]);
}

#[test]
fn one_ejection_is_always_allowed_but_never_the_last_endpoint() {
    assert!(may_eject(5, 0, 10));
    assert!(!may_eject(5, 1, 10));
    assert!(may_eject(2, 0, 50));
    assert!(!may_eject(2, 1, 100));
    assert!(!may_eject(1, 0, 100));
    assert!(may_eject(10, 8, 100));
    assert!(!may_eject(10, 9, 100));

    let host = MockHost::new();
    let only = host.add_endpoint("api", "10.0.0.1:80", 1);
    let mut b = load(&host, json!({"consecutive_failures": 1}));
    fail(&mut b, only, 3);
    assert!(host.ejections().is_empty());
}

#[test]
fn too_many_pending_is_a_503() {
    let host = MockHost::new();
    let eps = cluster(&host, 2);
    let mut b = load(&host, json!({"max_pending": 10}));
    host.set_in_flight(eps[0], 4);
    host.set_in_flight(eps[1], 5);
    host.start_request(TestRequest::get("/").cluster("api"));
    assert_eq!(b.on_request(), Action::Continue);
    host.set_in_flight(eps[1], 6);
    let Action::Respond(reply) = b.on_request() else {
        panic!("expected a 503");
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header_value("x-spindle-breaker"), Some("open"));
    assert_eq!(host.counter("rejected_total", &["api"]), 1.0);
    // No cluster chosen, or an unknown one: nothing to say.
    host.start_request(TestRequest::get("/"));
    assert_eq!(b.on_request(), Action::Continue);
    host.start_request(TestRequest::get("/").cluster("nope"));
    assert_eq!(b.on_request(), Action::Continue);
}

#[test]
fn bad_configs_name_the_key() {
    let host = MockHost::new();
    let err = |config| host.load::<Breaker>(config).unwrap_err().to_string();
    assert!(
        err(json!({"consecutive_failure": 3}))
            .starts_with("unknown field `consecutive_failure`, expected one of")
    );
    assert_eq!(
        err(json!({"max_ejection_percent": 150})),
        "max_ejection_percent: 150 is more than 100"
    );
    assert_eq!(
        err(json!({"base_ejection_ms": 5000, "max_ejection_ms": 1000})),
        "max_ejection_ms: 1000 is less than base_ejection_ms (5000)"
    );
    assert_eq!(
        err(json!({"consecutive_failures": 0})),
        "consecutive_failures: must be at least 1"
    );
}
