use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter, TestRequest};
use spindle_sdk::{Action, Filter, Hooks};

use crate::Router;

fn load(host: &MockHost, config: serde_json::Value) -> TestFilter<Router> {
    host.load::<Router>(config).expect("config is valid")
}

fn error(config: serde_json::Value) -> String {
    let host = MockHost::new();
    host.load::<Router>(config)
        .expect_err("config is invalid")
        .to_string()
}

fn route(host: &MockHost, router: &mut TestFilter<Router>, req: TestRequest) -> Option<String> {
    host.start_request(req);
    match router.on_request() {
        Action::Continue => host.cluster(),
        Action::Respond(reply) => panic!("answered {}", reply.status),
        Action::Delay(d) => panic!("delayed {d:?}"),
    }
}

#[test]
fn declares_only_on_request() {
    assert_eq!(<Router as Filter>::HOOKS, Hooks::REQUEST);
}

#[test]
fn asks_for_the_path_with_every_call() {
    let host = MockHost::new();
    let r = load(&host, json!({"routes": [{"cluster": "web"}]}));
    assert!(r.wants_path());
}

#[test]
fn first_matching_prefix_wins() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [
            {"path_prefix": "/api/", "cluster": "api"},
            {"path_prefix": "/api/v2/", "cluster": "never"},
            {"path_prefix": "/", "cluster": "web"},
        ]}),
    );
    assert_eq!(
        route(&host, &mut r, TestRequest::get("/api/v2/x")).as_deref(),
        Some("api")
    );
    assert_eq!(
        route(&host, &mut r, TestRequest::get("/index.html")).as_deref(),
        Some("web")
    );
}

#[test]
fn headers_must_match_exactly() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [
            {"path_prefix": "/", "headers": {"X-Canary": "1"}, "cluster": "canary"},
            {"cluster": "web"},
        ]}),
    );
    let canary = TestRequest::get("/").header("x-canary", "1");
    assert_eq!(route(&host, &mut r, canary).as_deref(), Some("canary"));
    let other = TestRequest::get("/").header("x-canary", "10");
    assert_eq!(route(&host, &mut r, other).as_deref(), Some("web"));
    assert_eq!(
        route(&host, &mut r, TestRequest::get("/")).as_deref(),
        Some("web")
    );
}

#[test]
fn host_matches_the_authority() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [
            {"host": "admin.example.com", "cluster": "admin"},
            {"cluster": "web"},
        ]}),
    );
    let by_uri = TestRequest::get("/").authority("Admin.Example.com");
    assert_eq!(route(&host, &mut r, by_uri).as_deref(), Some("admin"));
    let by_header = TestRequest::get("/").header("host", "admin.example.com");
    assert_eq!(route(&host, &mut r, by_header).as_deref(), Some("admin"));
    let with_port = TestRequest::get("/").header("host", "admin.example.com:8080");
    assert_eq!(route(&host, &mut r, with_port).as_deref(), Some("web"));
}

#[test]
fn no_match_is_a_404_naming_the_path() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [{"path_prefix": "/api/", "cluster": "api"}]}),
    );
    host.start_request(TestRequest::get("/nope?x=1"));
    let Action::Respond(reply) = r.on_request() else {
        panic!("expected a local reply");
    };
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, b"no route for /nope\n");
    assert_eq!(host.cluster(), None);
}

#[test]
fn the_query_is_not_part_of_the_prefix() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [{"path_prefix": "/a", "cluster": "a"}]}),
    );
    assert_eq!(
        route(&host, &mut r, TestRequest::get("/a?b")).as_deref(),
        Some("a")
    );
}

#[test]
fn split_follows_the_weights() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [{"split": [
            {"cluster": "web", "weight": 90},
            {"cluster": "off", "weight": 0},
            {"cluster": "canary", "weight": 10},
        ]}]}),
    );
    host.queue_random([
        MockHost::for_below(0, 100),
        MockHost::for_below(89, 100),
        MockHost::for_below(90, 100),
        MockHost::for_below(99, 100),
    ]);
    let picks: Vec<_> = (0..4)
        .map(|_| route(&host, &mut r, TestRequest::get("/")).unwrap_or_default())
        .collect();
    assert_eq!(picks, ["web", "web", "canary", "canary"]);

    let mut canary = 0;
    for _ in 0..10_000 {
        if route(&host, &mut r, TestRequest::get("/")).as_deref() == Some("canary") {
            canary += 1;
        }
    }
    assert!((800..1200).contains(&canary), "{canary} of 10000");
}

#[test]
fn a_route_needs_exactly_one_target() {
    let both =
        error(json!({"routes": [{"cluster": "a", "split": [{"cluster": "b", "weight": 1}]}]}));
    assert_eq!(
        both,
        "routes[0]: has both `cluster` and `split`: give exactly one"
    );
    let none = error(json!({"routes": [{"cluster": "a"}, {"path_prefix": "/x"}]}));
    assert_eq!(none, "routes[1]: needs `cluster` or `split` (exactly one)");
}

#[test]
fn bad_configs_name_the_key() {
    let typo = error(json!({"routes": [{"path_prefx": "/", "cluster": "a"}]}));
    assert!(
        typo.starts_with("routes[0]: unknown field `path_prefx`, expected one of `path_prefix`"),
        "{typo}"
    );
    let split_typo = error(json!({"routes": [{"split": [{"cluster": "a", "wieght": 1}]}]}));
    assert!(
        split_typo.starts_with("routes[0].split[0]: unknown field `wieght`"),
        "{split_typo}"
    );
    let zero = error(json!({"routes": [{"split": [{"cluster": "a", "weight": 0}]}]}));
    assert_eq!(zero, "routes[0].split: the weights add up to 0");
    let empty = error(json!({"routes": [{"split": []}]}));
    assert_eq!(empty, "routes[0].split: must name at least one cluster");
    let prefix = error(json!({"routes": [{"path_prefix": "api", "cluster": "a"}]}));
    assert_eq!(prefix, "routes[0].path_prefix: `api` must start with `/`");
    let missing = error(json!({}));
    assert!(missing.contains("missing field `routes`"), "{missing}");
}

#[test]
fn names_the_matched_route_on_the_trace_span() {
    let host = MockHost::new();
    let mut r = load(
        &host,
        json!({"routes": [
            {"path_prefix": "/api/", "cluster": "api"},
            {"path_prefix": "/", "cluster": "web"},
        ]}),
    );
    route(&host, &mut r, TestRequest::get("/api/users"));
    assert_eq!(
        host.span_attribute("spindle.route").as_deref(),
        Some("/api/")
    );
    route(&host, &mut r, TestRequest::get("/about"));
    assert_eq!(host.span_attribute("spindle.route").as_deref(), Some("/"));
}
