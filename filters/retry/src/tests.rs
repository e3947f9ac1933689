use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter, TestRequest};
use spindle_sdk::{
    Action, AttemptAction, AttemptError, AttemptOutcome, AttemptOutcomes, Filter, Hooks,
};

use crate::{Retry, idempotent};

fn load(host: &MockHost, config: serde_json::Value) -> TestFilter<Retry> {
    host.load::<Retry>(config).expect("config is valid")
}

fn status(attempt: u32, status: u16) -> AttemptOutcome {
    AttemptOutcome::response("api", 1, attempt, status)
}

fn failed(attempt: u32, error: AttemptError) -> AttemptOutcome {
    AttemptOutcome::failed("api", 1, attempt, error)
}

fn retries(action: AttemptAction) -> bool {
    matches!(action, AttemptAction::Retry(_))
}

#[test]
fn hooks_depend_on_the_attempt_header() {
    assert_eq!(
        <Retry as Filter>::HOOKS,
        Hooks::REQUEST.union(Hooks::ATTEMPT)
    );
    let host = MockHost::new();
    assert_eq!(load(&host, json!({})).hooks(), Hooks::ATTEMPT);
    // A per-try timeout is declared, not set by a hook.
    let with_timeout = load(&host, json!({"per_try_timeout_ms": 1500}));
    assert_eq!(with_timeout.hooks(), Hooks::ATTEMPT);
    let with_header = load(&host, json!({"attempt_header": true}));
    assert_eq!(with_header.hooks(), Hooks::REQUEST.union(Hooks::ATTEMPT));
}

#[test]
fn asks_for_failures_only_when_nothing_else_matters() {
    let host = MockHost::new();
    let outcomes = |config| load(&host, config).attempt_outcomes();
    // The default retry_on names host failures only; a budget reads its request count from the
    // host, so it needs no success either.
    assert_eq!(outcomes(json!({})), AttemptOutcomes::FailuresAndRecoveries);
    assert_eq!(
        outcomes(json!({"budget_percent": 20})),
        AttemptOutcomes::FailuresAndRecoveries
    );
    assert_eq!(
        outcomes(json!({"retry_on": ["gateway-error", "retriable-status:500"]})),
        AttemptOutcomes::FailuresAndRecoveries
    );
    // A 429 is no failure to the host: such a filter sees every outcome.
    assert_eq!(
        outcomes(json!({"retry_on": ["5xx", "retriable-status:429"]})),
        AttemptOutcomes::All
    );

    // Through the mock host, which applies the declaration: a 503 is shown, and retried.
    let id = host.add_endpoint("api", "10.0.0.1:80", 1);
    let mut r = load(&host, json!({}));
    host.start_request(TestRequest::get("/"));
    assert!(retries(
        r.on_attempt(&AttemptOutcome::response("api", id, 1, 503))
    ));
}

#[test]
fn declares_the_per_try_timeout() {
    let host = MockHost::new();
    assert_eq!(load(&host, json!({})).per_try_timeout(), None);
    let mut r = load(&host, json!({"per_try_timeout_ms": 1500}));
    assert_eq!(r.per_try_timeout(), Some(Duration::from_millis(1500)));
    // No hook call sets it per request.
    host.start_request(TestRequest::get("/"));
    assert_eq!(r.on_request(), Action::Continue);
    assert_eq!(host.per_try_timeout(), None);
}

#[test]
fn default_conditions() {
    let host = MockHost::new();
    let mut r = load(&host, json!({}));
    host.start_request(TestRequest::get("/"));
    for error in [AttemptError::ConnectFailure, AttemptError::Reset] {
        assert!(retries(r.on_attempt(&failed(1, error))), "{error:?}");
    }
    for code in [502, 503, 504] {
        assert!(retries(r.on_attempt(&status(1, code))), "{code}");
    }
    assert!(!retries(r.on_attempt(&failed(1, AttemptError::Timeout))));
    assert!(!retries(r.on_attempt(&failed(1, AttemptError::Other))));
    for code in [200, 404, 500, 501] {
        assert!(!retries(r.on_attempt(&status(1, code))), "{code}");
    }
}

#[test]
fn configured_conditions() {
    let host = MockHost::new();
    let mut r = load(&host, json!({"retry_on": ["5xx", "timeout"]}));
    host.start_request(TestRequest::get("/"));
    assert!(retries(r.on_attempt(&status(1, 500))));
    assert!(retries(r.on_attempt(&status(1, 599))));
    assert!(!retries(r.on_attempt(&status(1, 499))));
    assert!(retries(r.on_attempt(&failed(1, AttemptError::Timeout))));
    assert!(!retries(
        r.on_attempt(&failed(1, AttemptError::ConnectFailure))
    ));
}

#[test]
fn stops_when_attempts_are_exhausted() {
    let host = MockHost::new();
    let mut r = load(&host, json!({"attempts": 3}));
    host.start_request(TestRequest::get("/"));
    assert!(retries(r.on_attempt(&status(1, 503))));
    assert!(retries(r.on_attempt(&status(2, 503))));
    assert_eq!(r.on_attempt(&status(3, 503)), AttemptAction::Done);
    let mut once = load(&host, json!({"attempts": 1}));
    assert_eq!(once.on_attempt(&status(1, 503)), AttemptAction::Done);
}

#[test]
fn only_idempotent_methods_by_default() {
    let host = MockHost::new();
    let mut r = load(&host, json!({}));
    host.start_request(TestRequest::new("POST", "/orders"));
    assert_eq!(r.on_attempt(&status(1, 503)), AttemptAction::Done);
    let mut any = load(&host, json!({"retry_non_idempotent": true}));
    assert!(retries(any.on_attempt(&status(1, 503))));
    assert!(idempotent("PUT") && idempotent("DELETE") && !idempotent("PATCH"));
}

#[test]
fn never_when_the_body_cannot_be_replayed() {
    let host = MockHost::new();
    let mut r = load(&host, json!({}));
    host.start_request(TestRequest::get("/"));
    let mut outcome = failed(1, AttemptError::ConnectFailure);
    outcome.retryable_body = false;
    assert_eq!(r.on_attempt(&outcome), AttemptAction::Done);
}

#[test]
fn backoff_is_capped_exponential_with_full_jitter() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"attempts": 10, "backoff_base_ms": 25, "backoff_max_ms": 250}),
    );
    host.start_request(TestRequest::get("/"));
    // The largest draw gives the cap: 25, 50, 100, 200, 250, 250.
    let caps: Vec<Duration> = (1..=6)
        .map(|attempt| {
            host.queue_random([u64::MAX]);
            match r.on_attempt(&status(attempt, 503)) {
                AttemptAction::Retry(delay) => delay,
                AttemptAction::Done => panic!("no retry"),
            }
        })
        .collect();
    let ms: Vec<u128> = caps.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [25, 50, 100, 200, 250, 250]);
    host.queue_random([0]);
    assert_eq!(
        r.on_attempt(&status(1, 503)),
        AttemptAction::Retry(Duration::ZERO)
    );
    for _ in 0..200 {
        match r.on_attempt(&status(2, 503)) {
            AttemptAction::Retry(d) => assert!(d <= Duration::from_millis(50)),
            AttemptAction::Done => panic!("no retry"),
        }
    }
}

#[test]
fn retries_are_counted() {
    let host = MockHost::new();
    let mut r = load(&host, json!({}));
    host.start_request(TestRequest::get("/"));
    r.on_attempt(&status(1, 503));
    r.on_attempt(&failed(1, AttemptError::Reset));
    r.on_attempt(&status(1, 200));
    assert_eq!(
        host.counter("retries_total", &["api", "gateway-error"]),
        1.0
    );
    assert_eq!(host.counter("retries_total", &["api", "reset"]), 1.0);
}

#[test]
fn bad_configs_name_the_key() {
    let host = MockHost::new();
    let err = |config| host.load::<Retry>(config).unwrap_err().to_string();
    assert!(
        err(json!({"atempts": 3}))
            .starts_with("unknown field `atempts`, expected one of `attempts`")
    );
    assert!(
        err(json!({"retry_on": ["5xx", "gateway"]}))
            .starts_with("retry_on[1]: unknown variant `gateway`")
    );
    assert_eq!(
        err(json!({"attempts": 0})),
        "attempts: must be at least 1 (the first attempt counts)"
    );
    assert_eq!(
        err(json!({"backoff_base_ms": 100, "backoff_max_ms": 50})),
        "backoff_max_ms: 50 is less than backoff_base_ms (100)"
    );
    assert_eq!(
        err(json!({"budget_percent": 120})),
        "budget_percent: 120 is not between 0 and 100"
    );
    assert!(host.load::<Retry>(json!({"budget_percent": 20})).is_ok());
}

#[test]
fn retriable_status_entries() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"retry_on": ["retriable-status:429", "retriable-status:409", "reset"]}),
    );
    host.start_request(TestRequest::get("/"));
    assert!(retries(r.on_attempt(&status(1, 429))));
    assert!(retries(r.on_attempt(&status(1, 409))));
    assert!(retries(r.on_attempt(&failed(1, AttemptError::Reset))));
    for code in [200, 428, 500, 503] {
        assert!(!retries(r.on_attempt(&status(1, code))), "{code}");
    }
    assert_eq!(
        host.counter("retries_total", &["api", "retriable-status"]),
        2.0
    );
    let err = |config| host.load::<Retry>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({"retry_on": ["retriable-status:99"]})),
        "retry_on[0]: `retriable-status:99`: the status must be a number from 100 to 599"
    );
    assert_eq!(
        err(json!({"retry_on": ["5xx", "retriable-status:abc"]})),
        "retry_on[1]: `retriable-status:abc`: the status must be a number from 100 to 599"
    );
}

#[test]
fn attempt_header_numbers_every_attempt() {
    let host = MockHost::new();
    let mut plain = load(&host, json!({}));
    host.start_request(TestRequest::get("/"));
    assert!(retries(plain.on_attempt(&status(1, 503))));
    assert_eq!(host.request_header("x-spindle-attempt"), None);

    let mut r = load(&host, json!({"attempt_header": true, "attempts": 3}));
    assert_eq!(r.hooks(), Hooks::REQUEST.union(Hooks::ATTEMPT));
    host.start_request(TestRequest::get("/").header("x-spindle-attempt", "forged"));
    r.on_request();
    assert_eq!(
        host.request_header("x-spindle-attempt").as_deref(),
        Some("1")
    );
    assert!(retries(r.on_attempt(&status(1, 503))));
    assert_eq!(
        host.request_header("x-spindle-attempt").as_deref(),
        Some("2")
    );
    assert!(retries(r.on_attempt(&status(2, 503))));
    assert_eq!(
        host.request_header("x-spindle-attempt").as_deref(),
        Some("3")
    );
    // No retry: the header is left as it was.
    assert!(!retries(r.on_attempt(&status(3, 503))));
    assert_eq!(
        host.request_header("x-spindle-attempt").as_deref(),
        Some("3")
    );
    let values: Vec<_> = host
        .request_headers()
        .into_iter()
        .filter(|(n, _)| n == "x-spindle-attempt")
        .collect();
    assert_eq!(values.len(), 1);
}

/// One request to `api` whose every attempt gets 503: how many retries the filter asked for.
fn failing_request(r: &mut TestFilter<Retry>) -> u32 {
    let mut attempt = 1;
    while retries(r.on_attempt(&status(attempt, 503))) {
        attempt += 1;
    }
    attempt - 1
}

#[test]
fn budget_caps_retries_to_a_share_of_requests() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"attempts": 3, "budget_percent": 20, "budget_min_per_second": 1}),
    );
    host.start_request(TestRequest::get("/"));
    // 100 failing requests within one second: 10 (1/s over 10 s) + 20% of 100.
    let spent: u32 = (0..100).map(|_| failing_request(&mut r)).sum();
    assert_eq!(spent, 30);
    // Each request that met a spent budget counts once (it stops there): 5 got both retries.
    assert_eq!(host.counter("budget_exhausted_total", &["api"]), 95.0);
    assert_eq!(
        host.counter("retries_total", &["api", "gateway-error"]),
        30.0
    );
    // Without a budget, every request would have retried twice.
    let mut unbounded = load(&host, json!({"attempts": 3}));
    assert_eq!(failing_request(&mut unbounded), 2);
}

#[test]
fn budget_is_shared_by_instances_and_per_cluster() {
    let host = MockHost::new();
    let config = json!({"budget_percent": 10, "budget_min_per_second": 0});
    let mut one = load(&host, config.clone());
    let mut two = load(&host, config);
    host.start_request(TestRequest::get("/"));
    // 16 successful requests through instance one (a full batch, in the store now): 1.6 retries.
    for _ in 0..16 {
        one.on_attempt(&status(1, 200));
    }
    assert!(retries(two.on_attempt(&status(1, 503))));
    // That request counted too (17 requests, 1.7 retries; 18 with the next): a second one is
    // refused.
    assert!(!retries(one.on_attempt(&status(1, 503))));
    // Another cluster has its own budget (empty here).
    let other = AttemptOutcome::response("web", 1, 1, 503);
    assert!(!retries(one.on_attempt(&other)));
    assert_eq!(host.counter("budget_exhausted_total", &["web"]), 1.0);
}

#[test]
fn the_budget_reads_requests_from_the_host() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"budget_percent": 10, "budget_min_per_second": 0}),
    );
    host.start_request(TestRequest::get("/"));
    // Requests the host sent to the cluster count whether or not this filter saw them.
    host.add_requests("api", 9);
    assert_eq!(
        spindle_sdk::endpoints::cluster_requests("api", Duration::from_secs(10)),
        9
    );
    // With the failing request itself, 10 requests: one retry is 10%.
    assert!(retries(r.on_attempt(&status(1, 503))));
    assert!(!retries(r.on_attempt(&status(1, 503))));
    assert_eq!(host.counter("budget_exhausted_total", &["api"]), 1.0);
}

#[test]
fn budget_window_slides() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"budget_percent": 50, "budget_min_per_second": 0, "budget_window_ms": 3000}),
    );
    host.start_request(TestRequest::get("/"));
    for _ in 0..4 {
        r.on_attempt(&status(1, 200));
    }
    // 4 requests: 2 retries (each failing request counts as one more request).
    let spent: u32 = (0..4).map(|_| failing_request(&mut r)).sum();
    assert_eq!(spent, 4);
    assert!(!retries(r.on_attempt(&status(1, 503))));
    // Three seconds on, those requests and retries have left the window.
    host.advance(Duration::from_secs(3));
    assert!(!retries(r.on_attempt(&status(1, 503))));
    for _ in 0..4 {
        r.on_attempt(&status(1, 200));
    }
    assert!(retries(r.on_attempt(&status(1, 503))));
    assert!(
        host.store_counter(&format!(
            "spindle.retry.api.retries.{}",
            host.monotonic_ns() / 1_000_000_000
        ))
        .is_some()
    );
}

#[test]
fn budget_config_is_checked() {
    let host = MockHost::new();
    let err = |config| host.load::<Retry>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({"budget_percent": 20, "budget_window_ms": 500})),
        "budget_window_ms: 500 is not between 1000 and 60000"
    );
    assert!(
        host.load::<Retry>(json!({"budget_percent": 0, "budget_min_per_second": 0}))
            .is_ok()
    );
}

#[test]
fn retry_after_within_backoff_max_replaces_the_backoff() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"retry_on": ["5xx", "retriable-status:429"], "backoff_max_ms": 2000}),
    );
    host.start_request(TestRequest::get("/"));
    for code in [503, 429] {
        let outcome = status(1, code).with_retry_after(Duration::from_millis(1500));
        assert_eq!(
            r.on_attempt(&outcome),
            AttemptAction::Retry(Duration::from_millis(1500)),
            "{code}"
        );
    }
    // Exactly backoff_max_ms is still honoured, and zero means at once.
    let at_max = status(1, 503).with_retry_after(Duration::from_millis(2000));
    assert_eq!(
        r.on_attempt(&at_max),
        AttemptAction::Retry(Duration::from_millis(2000))
    );
    let zero = status(1, 503).with_retry_after(Duration::ZERO);
    assert_eq!(r.on_attempt(&zero), AttemptAction::Retry(Duration::ZERO));
}

#[test]
fn retry_after_beyond_backoff_max_keeps_the_outcome() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"retry_on": ["5xx", "retriable-status:429"], "backoff_max_ms": 250, "budget_percent": 0, "budget_min_per_second": 1, "budget_window_ms": 1000}),
    );
    host.start_request(TestRequest::get("/"));
    for code in [503, 429] {
        let outcome = status(1, code).with_retry_after(Duration::from_secs(5));
        assert_eq!(r.on_attempt(&outcome), AttemptAction::Done, "{code}");
    }
    assert_eq!(host.counter("retries_total", &["api", "5xx"]), 0.0);
    // No budget was spent on them: the one retry the budget allows still gets through.
    assert!(retries(r.on_attempt(&status(1, 503))));
}

#[test]
fn retry_after_is_ignored_on_other_statuses() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"retry_on": ["5xx"], "backoff_base_ms": 10, "backoff_max_ms": 10}),
    );
    host.start_request(TestRequest::get("/"));
    let outcome = status(1, 502).with_retry_after(Duration::from_secs(5));
    match r.on_attempt(&outcome) {
        AttemptAction::Retry(delay) => assert!(delay <= Duration::from_millis(10), "{delay:?}"),
        AttemptAction::Done => panic!("502 is retried with the usual backoff"),
    }
    // A Retry-After never makes an outcome retried that retry_on does not name.
    let mut strict = load(&host, json!({"retry_on": ["gateway-error"]}));
    let outcome = status(1, 429).with_retry_after(Duration::ZERO);
    assert_eq!(strict.on_attempt(&outcome), AttemptAction::Done);
}

#[test]
fn a_retry_is_an_event_on_the_attempt_span() {
    let host = MockHost::new();
    let mut r = load(&host, json!({"backoff_base_ms": 10, "backoff_max_ms": 10}));
    host.start_request(TestRequest::get("/"));
    assert!(retries(r.on_attempt(&status(1, 503))));
    let events = host.span_events();
    assert_eq!(events.len(), 1);
    let (name, attrs) = &events[0];
    assert_eq!(name, "retry");
    assert!(
        attrs
            .iter()
            .any(|(k, v)| k == "reason" && v == "gateway-error")
    );
    assert!(attrs.iter().any(|(k, _)| k == "delay_ms"));
    // A final outcome adds nothing.
    assert!(!retries(r.on_attempt(&status(2, 200))));
    assert_eq!(host.span_events().len(), 1);
}
