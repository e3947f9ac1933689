use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter, TestRequest};
use spindle_sdk::{Action, AttemptOutcome, Filter, Hooks};

use crate::{Headers, Part, Template, Var};

fn load(host: &MockHost, config: serde_json::Value) -> TestFilter<Headers> {
    host.load::<Headers>(config).expect("config is valid")
}

#[test]
fn hooks_follow_the_config() {
    assert_eq!(
        <Headers as Filter>::HOOKS,
        Hooks::REQUEST.union(Hooks::ATTEMPT).union(Hooks::RESPONSE)
    );
    let host = MockHost::new();
    assert_eq!(load(&host, json!({})).hooks(), Hooks::NONE);
    assert_eq!(
        load(&host, json!({"request": {"remove": ["x-a"]}})).hooks(),
        Hooks::REQUEST
    );
    assert_eq!(
        load(&host, json!({"response": {"set": {"x-a": "1"}}})).hooks(),
        Hooks::RESPONSE
    );
    assert_eq!(
        load(
            &host,
            json!({"response": {"add": {"x-e": "%ENDPOINT_ID%"}}})
        )
        .hooks(),
        Hooks::RESPONSE.union(Hooks::ATTEMPT)
    );
    assert_eq!(
        load(&host, json!({"response": {"set": {"x-e": "%ENDPOINT%"}}})).hooks(),
        Hooks::RESPONSE.union(Hooks::ATTEMPT)
    );
}

#[test]
fn request_headers_remove_then_set_then_add() {
    let host = MockHost::new();
    let mut f = load(
        &host,
        json!({"request": {
            "remove": ["X-Debug", "x-via"],
            "set": {"X-Client": "%CLIENT_IP% (%CLIENT_ADDRESS%)", "x-tenant": "acme"},
            "add": {"x-via": "spindle", "x-trace": "%REQUEST_ID%/%METHOD% %PATH% %AUTHORITY% %CLUSTER% 100%%"},
        }}),
    );
    host.start_request(
        TestRequest::get("/a?b=1")
            .header("x-debug", "1")
            .header("x-via", "old")
            .header("x-tenant", "other")
            .header("x-tenant", "more")
            .authority("shop.example")
            .cluster("api")
            .client_address("192.0.2.9:4444")
            .request_id("rid-1"),
    );
    assert_eq!(f.on_request(), Action::Continue);
    let headers = host.request_headers();
    let values = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert!(values("x-debug").is_empty());
    assert_eq!(values("x-via"), ["spindle"]);
    assert_eq!(values("x-tenant"), ["acme"]);
    assert_eq!(values("x-client"), ["192.0.2.9 (192.0.2.9:4444)"]);
    assert_eq!(
        values("x-trace"),
        ["rid-1/GET /a?b=1 shop.example api 100%"]
    );
}

#[test]
fn response_headers_with_status_and_endpoint() {
    let host = MockHost::new();
    let mut f = load(
        &host,
        json!({"response": {
            "remove": ["server"],
            "set": {"x-served-by": "endpoint %ENDPOINT_ID% (%STATUS%)", "x-request-id": "%REQUEST_ID%"},
            "add": {"x-client": "%CLIENT_IP%"},
        }}),
    );
    host.start_request(
        TestRequest::get("/")
            .client_address("[2001:db8::7]:5000")
            .request_id("rid-2"),
    );
    f.on_attempt(&AttemptOutcome::response("api", 7, 1, 503));
    f.on_attempt(&AttemptOutcome::response("api", 9, 2, 200));
    host.set_response(200, &[("server", "nginx"), ("content-type", "text/plain")]);
    f.on_response();
    assert_eq!(host.response_header("server"), None);
    assert_eq!(
        host.response_header("x-served-by").as_deref(),
        Some("endpoint 9 (200)")
    );
    assert_eq!(
        host.response_header("x-request-id").as_deref(),
        Some("rid-2")
    );
    assert_eq!(
        host.response_header("x-client").as_deref(),
        Some("2001:db8::7")
    );
    assert_eq!(
        host.response_header("content-type").as_deref(),
        Some("text/plain")
    );
    // A local answer (no attempt): the endpoint is empty.
    host.start_request(TestRequest::get("/"));
    host.set_response(404, &[]);
    f.on_response();
    assert_eq!(
        host.response_header("x-served-by").as_deref(),
        Some("endpoint  (404)")
    );
}

#[test]
fn templates_parse_variables_and_escapes() {
    assert_eq!(
        Template::parse("a%%b").unwrap(),
        Template(vec![Part::Literal("a%b".into())])
    );
    assert_eq!(
        Template::parse("%REQUEST_ID%-x").unwrap(),
        Template(vec![Part::Var(Var::RequestId), Part::Literal("-x".into())])
    );
    assert_eq!(Template::parse("").unwrap(), Template(vec![]));
    assert!(Template::parse("50%").unwrap_err().contains("unclosed `%`"));
    assert!(
        Template::parse("%NOPE%")
            .unwrap_err()
            .contains("unknown variable `%NOPE%`")
    );
}

#[test]
fn bad_configs_name_the_key() {
    let host = MockHost::new();
    let err = |config| host.load::<Headers>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({"request": {"set": {"x-a": "%STATUS%"}}})),
        "request.set.x-a: `%STATUS%`: Status is only known in `response`"
    );
    assert_eq!(
        err(json!({"request": {"set": {"x-a": "%ENDPOINT%"}}})),
        "request.set.x-a: `%ENDPOINT%`: Endpoint is only known in `response`"
    );
    assert_eq!(
        err(json!({"request": {"add": {"bad name": "1"}}})),
        "request.add.bad name: `bad name` is not a valid header name"
    );
    assert_eq!(
        err(json!({"response": {"remove": ["ok", ""]}})),
        "response.remove[1]: `` is not a valid header name"
    );
    assert!(
        err(json!({"response": {"set": {"x-a": "%FOO%"}}}))
            .starts_with("response.set.x-a: `%FOO%`: unknown variable `%FOO%`")
    );
    assert_eq!(
        err(json!({"request": {"set": {"x-a": "a\nb"}}})),
        "request.set.x-a: a header value cannot hold a newline"
    );
    let e = err(json!({"request": {"append": {}}}));
    assert!(e.starts_with("request: unknown field `append`"), "{e}");
}

#[test]
fn response_endpoint_address_of_the_last_attempt() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:8080", 1);
    let b = host.add_endpoint("api", "[2001:db8::2]:80", 1);
    let mut f = load(
        &host,
        json!({"response": {"set": {"x-served-by": "%ENDPOINT% (#%ENDPOINT_ID%)"}}}),
    );
    host.start_request(TestRequest::get("/"));
    f.on_attempt(&AttemptOutcome::response("api", a, 1, 503));
    f.on_attempt(&AttemptOutcome::response("api", b, 2, 200));
    host.set_response(200, &[]);
    f.on_response();
    assert_eq!(
        host.response_header("x-served-by"),
        Some(format!("[2001:db8::2]:80 (#{b})"))
    );
    // An endpoint gone by the response (discovery removed it): its address is empty.
    host.start_request(TestRequest::get("/"));
    f.on_attempt(&AttemptOutcome::response("api", a, 1, 200));
    host.remove_endpoint(a);
    host.set_response(200, &[]);
    f.on_response();
    assert_eq!(
        host.response_header("x-served-by"),
        Some(format!(" (#{a})"))
    );
    // A local answer (no attempt): both are empty.
    host.start_request(TestRequest::get("/"));
    host.set_response(404, &[]);
    f.on_response();
    assert_eq!(host.response_header("x-served-by").as_deref(), Some(" (#)"));
}
