use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{Ejection, MockHost, TestFilter, TestRequest};
use spindle_sdk::{
    Action, AttemptAction, AttemptError, AttemptOutcome, AttemptOutcomes, Filter, Hooks,
};

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
    let unlimited = load(&host, json!({"max_pending": 0}));
    assert_eq!(unlimited.hooks(), Hooks::ATTEMPT);
    assert_eq!(unlimited.request_min_in_flight(), None);
    // Successes on healthy endpoints are not shown to it, unless success rates are counted.
    assert_eq!(
        unlimited.attempt_outcomes(),
        AttemptOutcomes::FailuresAndRecoveries
    );
    let counting = load(
        &host,
        json!({"success_rate": {"interval_ms": 1000, "minimum_hosts": 3, "request_volume": 10}}),
    );
    assert_eq!(counting.attempt_outcomes(), AttemptOutcomes::All);
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
    // The host calls on_request only from 10 in flight on.
    assert_eq!(b.request_min_in_flight(), Some(10));
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

fn half_open_breaker(host: &MockHost) -> (Vec<u32>, TestFilter<Breaker>) {
    let eps = cluster(host, 4);
    let b = load(
        host,
        json!({"consecutive_failures": 3, "base_ejection_ms": 1000, "max_ejection_ms": 5000}),
    );
    (eps, b)
}

fn durations(host: &MockHost) -> Vec<u128> {
    host.ejections()
        .iter()
        .map(|e| e.duration.as_millis())
        .collect()
}

#[test]
fn a_failed_probe_ejects_again_for_twice_as_long_up_to_the_cap() {
    let host = MockHost::new();
    let (eps, mut b) = half_open_breaker(&host);
    fail(&mut b, eps[0], 3);
    assert_eq!(durations(&host), [1000]);
    // While ejected, late outcomes of attempts in flight are not probes.
    fail(&mut b, eps[0], 1);
    assert_eq!(durations(&host), [1000]);
    let mut expected = vec![1000];
    for ms in [2000, 4000, 5000, 5000] {
        host.advance(Duration::from_millis(*expected.last().unwrap() as u64));
        assert!(!host.is_ejected(eps[0]));
        // One failure is enough in half-open state.
        fail(&mut b, eps[0], 1);
        expected.push(ms);
        assert_eq!(durations(&host), expected);
        assert!(host.is_ejected(eps[0]));
    }
    assert_eq!(host.counter("ejections_total", &["api"]), 5.0);
}

#[test]
fn a_successful_probe_closes_the_circuit() {
    let host = MockHost::new();
    let (eps, mut b) = half_open_breaker(&host);
    fail(&mut b, eps[0], 3);
    host.advance(Duration::from_millis(1000));
    succeed(&mut b, eps[0]);
    assert_eq!(host.store_get("spindle.breaker.1.probe"), None);
    // Closed: one failure no longer ejects; the threshold applies again.
    fail(&mut b, eps[0], 2);
    assert_eq!(durations(&host), [1000]);
    fail(&mut b, eps[0], 1);
    assert_eq!(durations(&host), [1000, 2000]);
}

#[test]
fn a_probe_is_settled_once_across_instances() {
    let host = MockHost::new();
    let (eps, mut one) = half_open_breaker(&host);
    let mut two = load(
        &host,
        json!({"consecutive_failures": 3, "base_ejection_ms": 1000, "max_ejection_ms": 5000}),
    );
    fail(&mut one, eps[0], 3);
    host.advance(Duration::from_millis(1000));
    // Another instance sees the probe fail: one re-ejection only.
    fail(&mut two, eps[0], 1);
    fail(&mut one, eps[0], 1);
    assert_eq!(durations(&host), [1000, 2000]);
}

#[test]
fn the_probe_is_forgotten_after_max_ejection_ms_without_traffic() {
    let host = MockHost::new();
    let (eps, mut b) = half_open_breaker(&host);
    fail(&mut b, eps[0], 3);
    host.advance(Duration::from_millis(1000 + 5000));
    fail(&mut b, eps[0], 1);
    assert_eq!(durations(&host), [1000]);
}

#[test]
fn a_failed_probe_respects_max_ejection_percent() {
    let host = MockHost::new();
    let eps = cluster(&host, 2);
    let mut b = load(
        &host,
        json!({"consecutive_failures": 1, "base_ejection_ms": 1000, "max_ejection_percent": 50}),
    );
    fail(&mut b, eps[0], 1);
    host.advance(Duration::from_millis(1000));
    fail(&mut b, eps[1], 1);
    assert!(host.is_ejected(eps[1]));
    // eps[0]'s probe fails while eps[1] is out: it stays in, half-open.
    fail(&mut b, eps[0], 1);
    assert!(!host.is_ejected(eps[0]));
    host.advance(Duration::from_millis(1000));
    fail(&mut b, eps[0], 1);
    assert!(host.is_ejected(eps[0]));
    assert_eq!(host.ejections().last().unwrap().duration.as_millis(), 2000);
}

// ---- success rate -------------------------------------------------------------------------------

fn sr_config(host: &MockHost, min_hosts: u32) -> TestFilter<Breaker> {
    load(
        host,
        json!({
            "consecutive_failures": 1000,
            "base_ejection_ms": 1000,
            "success_rate": {"interval_ms": 1000, "minimum_hosts": min_hosts, "request_volume": 10, "stdev_factor": 1.0},
        }),
    )
}

/// `total` attempts on `endpoint`, `failures` of which are 503s.
fn traffic(b: &mut TestFilter<Breaker>, endpoint: u32, total: usize, failures: usize) {
    for i in 0..total {
        let status = if i < failures { 503 } else { 200 };
        b.on_attempt(&AttemptOutcome::response("api", endpoint, 1, status));
    }
}

#[test]
fn outliers_are_below_mean_minus_factor_stdev() {
    let config: crate::SuccessRate = serde_json::from_value(json!({
        "minimum_hosts": 3, "request_volume": 10, "stdev_factor": 1.0
    }))
    .unwrap();
    let v = |endpoint, total, ok| crate::Volume {
        endpoint,
        total,
        ok,
    };
    // Rates 1, 1, 1, 0.5: mean 0.875, stdev 0.2165, threshold 0.658.
    let volumes = [
        v(1, 100, 100),
        v(2, 100, 100),
        v(3, 100, 100),
        v(4, 100, 50),
    ];
    assert_eq!(crate::outliers(&volumes, &config), [4]);
    // Endpoint 4 below the request volume: three equal rates, no outlier.
    let volumes = [v(1, 100, 100), v(2, 100, 100), v(3, 100, 100), v(4, 9, 0)];
    assert!(crate::outliers(&volumes, &config).is_empty());
    // Too few endpoints with volume.
    let volumes = [v(1, 100, 100), v(2, 100, 10)];
    assert!(crate::outliers(&volumes, &config).is_empty());
    // Everyone equally bad: no outlier.
    let volumes = [v(1, 100, 10), v(2, 100, 10), v(3, 100, 10)];
    assert!(crate::outliers(&volumes, &config).is_empty());
}

#[test]
fn success_rate_ejects_an_outlier_once_its_interval_ends() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut b = sr_config(&host, 3);
    for &ep in &eps[..3] {
        traffic(&mut b, ep, 20, 1);
    }
    traffic(&mut b, eps[3], 20, 10);
    assert!(host.ejections().is_empty(), "not before the interval ends");
    host.advance(Duration::from_millis(1000));
    // The next attempt evaluates the interval that ended.
    traffic(&mut b, eps[0], 1, 0);
    assert_eq!(
        host.ejections(),
        [Ejection {
            endpoint: eps[3],
            duration: Duration::from_secs(1)
        }]
    );
    // Evaluated once: more attempts in this interval change nothing.
    let mut other = sr_config(&host, 3);
    traffic(&mut other, eps[1], 5, 0);
    assert_eq!(host.ejections().len(), 1);
    assert_eq!(host.counter("ejections_total", &["api"]), 1.0);
}

#[test]
fn success_rate_needs_volume_and_hosts() {
    let host = MockHost::new();
    let eps = cluster(&host, 4);
    let mut b = sr_config(&host, 4);
    // Only three endpoints reach the volume of 10: not evaluated.
    for &ep in &eps[..2] {
        traffic(&mut b, ep, 20, 0);
    }
    traffic(&mut b, eps[2], 20, 15);
    traffic(&mut b, eps[3], 9, 0);
    host.advance(Duration::from_millis(1000));
    traffic(&mut b, eps[0], 1, 0);
    assert!(host.ejections().is_empty());
}

#[test]
fn success_rate_config_is_checked() {
    let host = MockHost::new();
    let err = |config| host.load::<Breaker>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({"success_rate": {"interval_ms": 10}})),
        "success_rate.interval_ms: 10 is less than 100"
    );
    assert_eq!(
        err(json!({"success_rate": {"minimum_hosts": 0}})),
        "success_rate.minimum_hosts: must be at least 1"
    );
    assert_eq!(
        err(json!({"success_rate": {"stdev_factor": -1.0}})),
        "success_rate.stdev_factor: -1 is not a number from 0 up"
    );
    let e = err(json!({"success_rate": {"interval": 10}}));
    assert!(
        e.starts_with("success_rate: unknown field `interval`"),
        "{e}"
    );
    assert!(host.load::<Breaker>(json!({"success_rate": {}})).is_ok());
}
