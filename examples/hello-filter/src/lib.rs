//! A Spindle filter template: greets every request and counts them by method.
//!
//! Config: `greeting` (default `"hello"`), sent upstream as the request header `x-hello`. Every
//! response gets `x-hello-filter: 1`, and `spindle_filter_<name>_requests_total{method}` counts
//! the requests.

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{Action, Filter, InitError, Request, Response};

/// The filter's config, from `[filter.NAME.config]` in spindle.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The value of the `x-hello` request header.
    #[serde(default = "default_greeting")]
    pub greeting: String,
}

fn default_greeting() -> String {
    "hello".to_owned()
}

/// The filter: one per instance.
pub struct Hello {
    greeting: String,
    requests: Option<Counter>,
}

#[spindle_sdk::filter]
impl Filter for Hello {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        let requests = Counter::new("requests_total", "Requests greeted.", &["method"]).ok();
        Ok(Hello {
            greeting: config.greeting,
            requests,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        req.set_header("x-hello", &self.greeting);
        if let Some(requests) = &self.requests {
            let _ = requests.inc(&[&req.method()]);
        }
        Action::Continue
    }

    fn on_response(&mut self, resp: &mut Response) {
        resp.set_header("x-hello-filter", "1");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spindle_sdk::Action;
    use spindle_sdk::testing::{MockHost, TestRequest};

    use super::Hello;

    #[test]
    fn greets_and_counts() {
        let host = MockHost::new();
        let mut hello = host.load::<Hello>(json!({"greeting": "hi"})).unwrap();
        host.start_request(TestRequest::get("/"));
        assert_eq!(hello.on_request(), Action::Continue);
        assert_eq!(host.request_header("x-hello").as_deref(), Some("hi"));
        host.start_request(TestRequest::new("POST", "/"));
        hello.on_request();
        hello.on_request();
        assert_eq!(host.counter("requests_total", &["GET"]), 1.0);
        assert_eq!(host.counter("requests_total", &["POST"]), 2.0);
    }

    #[test]
    fn greeting_defaults_to_hello() {
        let host = MockHost::new();
        let mut hello = host.load::<Hello>(json!({})).unwrap();
        host.start_request(TestRequest::get("/"));
        hello.on_request();
        assert_eq!(host.request_header("x-hello").as_deref(), Some("hello"));
    }

    #[test]
    fn marks_responses() {
        let host = MockHost::new();
        let mut hello = host.load::<Hello>(json!({})).unwrap();
        host.start_request(TestRequest::get("/"));
        host.set_response(200, &[]);
        hello.on_response();
        assert_eq!(host.response_header("x-hello-filter").as_deref(), Some("1"));
    }

    #[test]
    fn typos_are_errors() {
        let host = MockHost::new();
        let err = host.load::<Hello>(json!({"greting": "hi"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field `greting`, expected `greeting`"
        );
    }
}
