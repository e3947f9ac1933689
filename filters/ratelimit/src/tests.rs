use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter, TestRequest};
use spindle_sdk::{Action, Filter, Hooks};

use crate::{Key, RateLimit};

fn load(host: &MockHost, config: serde_json::Value) -> TestFilter<RateLimit> {
    host.load::<RateLimit>(config).expect("config is valid")
}

/// Runs `on_request` for `req`; `None` when let through, else the 429's `retry-after`.
fn ask(host: &MockHost, rl: &mut TestFilter<RateLimit>, req: TestRequest) -> Option<String> {
    host.start_request(req);
    match rl.on_request() {
        Action::Continue => None,
        Action::Respond(reply) => {
            assert_eq!(reply.status, 429);
            Some(reply.header_value("retry-after").unwrap_or("-").to_owned())
        }
        Action::Delay(d) => panic!("ratelimit never delays (asked for {d:?})"),
    }
}

fn from(ip: &str) -> TestRequest {
    TestRequest::get("/").client_address(&format!("{ip}:40000"))
}

#[test]
fn declares_only_request() {
    assert_eq!(<RateLimit as Filter>::HOOKS, Hooks::REQUEST);
}

#[test]
fn allows_the_burst_then_limits_then_refills() {
    let host = MockHost::new();
    let mut rl = load(&host, json!({"rate_per_second": 2, "burst": 5}));
    for _ in 0..5 {
        assert_eq!(ask(&host, &mut rl, from("192.0.2.1")), None);
    }
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")).as_deref(), Some("1"));
    assert_eq!(host.counter("limited_total", &["client"]), 1.0);
    // 2 tokens per second: after 0.5 s one is back, and only one.
    host.advance(Duration::from_millis(500));
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")), None);
    assert!(ask(&host, &mut rl, from("192.0.2.1")).is_some());
    // A long quiet spell refills up to the burst, not beyond.
    host.advance(Duration::from_secs(60));
    let allowed = (0..10)
        .filter(|_| ask(&host, &mut rl, from("192.0.2.1")).is_none())
        .count();
    assert_eq!(allowed, 5);
}

#[test]
fn retry_after_is_the_wait_for_one_token_rounded_up() {
    let host = MockHost::new();
    let mut rl = load(&host, json!({"rate_per_second": 0.2, "burst": 1}));
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")), None);
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")).as_deref(), Some("5"));
    host.advance(Duration::from_millis(2500));
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")).as_deref(), Some("3"));
    host.advance(Duration::from_millis(2500));
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")), None);
}

#[test]
fn buckets_are_per_client_ip_not_per_connection() {
    let host = MockHost::new();
    let mut rl = load(
        &host,
        json!({"key": "client", "rate_per_second": 1, "burst": 1}),
    );
    assert_eq!(
        ask(
            &host,
            &mut rl,
            TestRequest::get("/").client_address("192.0.2.1:1000")
        ),
        None
    );
    assert!(
        ask(
            &host,
            &mut rl,
            TestRequest::get("/").client_address("192.0.2.1:2000")
        )
        .is_some()
    );
    assert_eq!(ask(&host, &mut rl, from("192.0.2.2")), None);
    assert_eq!(ask(&host, &mut rl, from("[2001:db8::1]")), None);
    assert!(ask(&host, &mut rl, from("[2001:db8::1]")).is_some());
}

#[test]
fn buckets_per_header_and_per_route() {
    let host = MockHost::new();
    let mut rl = load(
        &host,
        json!({"key": "header:X-Api-Key", "rate_per_second": 1, "burst": 2}),
    );
    let with = |k: &str| TestRequest::get("/").header("x-api-key", k);
    assert_eq!(ask(&host, &mut rl, with("a")), None);
    assert_eq!(ask(&host, &mut rl, with("a")), None);
    assert!(ask(&host, &mut rl, with("a")).is_some());
    assert_eq!(ask(&host, &mut rl, with("b")), None);
    // Requests without the header share one bucket.
    assert_eq!(ask(&host, &mut rl, TestRequest::get("/")), None);
    assert_eq!(ask(&host, &mut rl, TestRequest::get("/")), None);
    assert!(ask(&host, &mut rl, TestRequest::get("/")).is_some());
    assert_eq!(host.counter("limited_total", &["header"]), 2.0);

    let mut rl = load(
        &host,
        json!({"key": "route", "rate_per_second": 1, "burst": 1}),
    );
    assert_eq!(
        ask(&host, &mut rl, TestRequest::get("/").cluster("api")),
        None
    );
    assert!(ask(&host, &mut rl, TestRequest::get("/").cluster("api")).is_some());
    assert_eq!(
        ask(&host, &mut rl, TestRequest::get("/").cluster("web")),
        None
    );
}

#[test]
fn instances_share_buckets() {
    let host = MockHost::new();
    let config = json!({"rate_per_second": 1, "burst": 3});
    let mut one = load(&host, config.clone());
    let mut two = load(&host, config);
    assert_eq!(ask(&host, &mut one, from("192.0.2.1")), None);
    assert_eq!(ask(&host, &mut two, from("192.0.2.1")), None);
    assert_eq!(ask(&host, &mut one, from("192.0.2.1")), None);
    assert!(ask(&host, &mut two, from("192.0.2.1")).is_some());
    // A filter with other settings has its own buckets.
    let mut other = load(&host, json!({"rate_per_second": 1, "burst": 4}));
    assert_eq!(ask(&host, &mut other, from("192.0.2.1")), None);
}

#[test]
fn a_bucket_expires_once_it_would_be_full() {
    let host = MockHost::new();
    let mut rl = load(&host, json!({"rate_per_second": 10, "burst": 5}));
    assert_eq!(ask(&host, &mut rl, from("192.0.2.1")), None);
    let key = "spindle.ratelimit.10/5.client.192.0.2.1";
    assert_eq!(
        host.store_get(key).as_deref(),
        Some(format!("4000000 {}", host.monotonic_ns()).as_bytes())
    );
    host.advance(Duration::from_millis(1600));
    assert_eq!(host.store_get(key), None);
}

#[test]
fn bad_configs_name_the_key() {
    let host = MockHost::new();
    let err = |config| host.load::<RateLimit>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({"rate_per_second": 0, "burst": 1})),
        "rate_per_second: 0 is not a number above 0"
    );
    assert_eq!(
        err(json!({"rate_per_second": 1, "burst": 0})),
        "burst: must be at least 1"
    );
    assert_eq!(
        err(json!({"key": "cookie:x", "rate_per_second": 1, "burst": 1})),
        "key: unknown key `cookie:x`, expected `client`, `route` or `header:NAME`"
    );
    assert_eq!(
        err(json!({"key": "header:a b", "rate_per_second": 1, "burst": 1})),
        "key: `a b` is not a valid header name"
    );
    let e = err(json!({"burst": 1}));
    assert!(e.starts_with("missing field `rate_per_second`"), "{e}");
    let e = err(json!({"rate": 1, "burst": 1}));
    assert!(e.starts_with("unknown field `rate`"), "{e}");
    assert_eq!(
        Key::try_from("header:X-User".to_owned()),
        Ok(Key::Header("x-user".to_owned()))
    );
}
