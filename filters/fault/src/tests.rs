use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter, TestRequest};
use spindle_sdk::{Action, Filter, Hooks};

use crate::Fault;

fn load(host: &MockHost, config: serde_json::Value) -> TestFilter<Fault> {
    host.load::<Fault>(config).expect("config is valid")
}

fn aborted(f: &mut TestFilter<Fault>) -> Option<u16> {
    match f.on_request() {
        Action::Continue => None,
        Action::Respond(reply) => {
            assert_eq!(reply.header_value("x-spindle-fault"), Some("abort"));
            Some(reply.status)
        }
        Action::Delay(d) => panic!("delayed {d:?} with no delay configured"),
    }
}

/// What one request gets: `Ok(Some(delay))`, `Ok(None)` (nothing) or `Err(status)` (aborted).
fn fault(f: &mut TestFilter<Fault>) -> Result<Option<Duration>, u16> {
    match f.on_request() {
        Action::Continue => Ok(None),
        Action::Delay(d) => Ok(Some(d)),
        Action::Respond(reply) => Err(reply.status),
    }
}

#[test]
fn declares_only_request() {
    assert_eq!(<Fault as Filter>::HOOKS, Hooks::REQUEST);
}

#[test]
fn aborts_its_share_of_requests() {
    let host = MockHost::new();
    host.seed_random(7);
    let mut f = load(&host, json!({"abort_status": 503, "abort_percent": 10}));
    host.start_request(TestRequest::get("/"));
    let n = 20_000;
    let hits = (0..n).filter(|_| aborted(&mut f) == Some(503)).count();
    // Binomial(20000, 0.1): sd 42; 6 sd either way.
    assert!((1750..=2250).contains(&hits), "{hits}");
    assert_eq!(host.counter("aborted_total", &["503"]), hits as f64);
}

#[test]
fn the_roll_decides_exactly() {
    let host = MockHost::new();
    let mut f = load(&host, json!({"abort_status": 500, "abort_percent": 25}));
    host.start_request(TestRequest::get("/"));
    // unit_f64 takes the top 53 bits: 0.2499... aborts, 0.25 does not.
    host.queue_random([(1u64 << 62) - (1 << 11), 1u64 << 62]);
    assert_eq!(aborted(&mut f), Some(500));
    assert_eq!(aborted(&mut f), None);
}

#[test]
fn zero_and_hundred_percent() {
    let host = MockHost::new();
    host.start_request(TestRequest::get("/"));
    let mut never = load(&host, json!({"abort_status": 503, "abort_percent": 0}));
    assert!((0..1000).all(|_| aborted(&mut never).is_none()));
    let mut always = load(&host, json!({"abort_status": 418}));
    host.queue_random([u64::MAX]);
    assert!((0..1000).all(|_| aborted(&mut always) == Some(418)));
}

#[test]
fn only_with_header() {
    let host = MockHost::new();
    let mut f = load(
        &host,
        json!({"abort_status": 503, "only_with_header": "x-chaos"}),
    );
    host.start_request(TestRequest::get("/"));
    assert_eq!(aborted(&mut f), None);
    host.start_request(TestRequest::get("/").header("X-Chaos", "1"));
    assert_eq!(aborted(&mut f), Some(503));
}

#[test]
fn bad_configs_name_the_key() {
    let host = MockHost::new();
    let err = |config| host.load::<Fault>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({"abort_status": 99})),
        "abort_status: 99 is not a status from 200 to 599"
    );
    assert_eq!(
        err(json!({"abort_status": 503, "abort_percent": 101})),
        "abort_percent: 101 is not between 0 and 100"
    );
    assert_eq!(
        err(json!({"abort_percent": 5})),
        "abort_percent: has no effect without `abort_status`"
    );
    assert_eq!(
        err(json!({"abort_status": 503, "delay_percent": 5})),
        "delay_percent: has no effect without `delay_ms`"
    );
    assert!(err(json!({})).starts_with("nothing to inject"));
    assert_eq!(
        err(json!({"delay_ms": 0})),
        "delay_ms: 0 is not between 1 and 3600000 (an hour)"
    );
    assert_eq!(
        err(json!({"delay_ms": 100, "delay_percent": -1})),
        "delay_percent: -1 is not between 0 and 100"
    );
    let e = err(json!({"abort_status": 503, "abort_pct": 5}));
    assert!(e.starts_with("unknown field `abort_pct`"), "{e}");
}

#[test]
fn delays_every_request_at_100_percent() {
    let host = MockHost::new();
    let mut f = load(&host, json!({"delay_ms": 200}));
    host.start_request(TestRequest::get("/"));
    for _ in 0..100 {
        assert_eq!(fault(&mut f), Ok(Some(Duration::from_millis(200))));
    }
    assert_eq!(host.counter("delayed_total", &[]), 100.0);
}

#[test]
fn delays_its_share_of_requests() {
    let host = MockHost::new();
    host.seed_random(11);
    let mut f = load(&host, json!({"delay_ms": 50, "delay_percent": 50}));
    host.start_request(TestRequest::get("/"));
    let n = 20_000;
    let hits = (0..n).filter(|_| fault(&mut f).unwrap().is_some()).count();
    // Binomial(20000, 0.5): sd 71; 6 sd either way.
    assert!((9575..=10425).contains(&hits), "{hits}");
    assert_eq!(host.counter("delayed_total", &[]), hits as f64);
}

#[test]
fn delay_is_drawn_first_and_an_abort_wins() {
    let host = MockHost::new();
    let mut f = load(
        &host,
        json!({"delay_ms": 10, "delay_percent": 50, "abort_status": 503, "abort_percent": 50}),
    );
    host.start_request(TestRequest::get("/"));
    let (low, high) = (0u64, u64::MAX);
    // Draws in order: delay, abort.
    host.queue_random([low, high]);
    assert_eq!(fault(&mut f), Ok(Some(Duration::from_millis(10))));
    host.queue_random([high, high]);
    assert_eq!(fault(&mut f), Ok(None));
    host.queue_random([high, low]);
    assert_eq!(fault(&mut f), Err(503));
    // Both hit: answered at once, no delay.
    host.queue_random([low, low]);
    assert_eq!(fault(&mut f), Err(503));
    assert_eq!(host.counter("delayed_total", &[]), 1.0);
    assert_eq!(host.counter("aborted_total", &["503"]), 2.0);
}

#[test]
fn only_with_header_gates_delays_too() {
    let host = MockHost::new();
    let mut f = load(
        &host,
        json!({"delay_ms": 10, "only_with_header": "x-chaos"}),
    );
    host.start_request(TestRequest::get("/"));
    assert_eq!(fault(&mut f), Ok(None));
    host.start_request(TestRequest::get("/").header("x-chaos", "1"));
    assert_eq!(fault(&mut f), Ok(Some(Duration::from_millis(10))));
}
