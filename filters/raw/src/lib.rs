//! A filter that implements the `filter` export by hand, on the bindings the SDK generates,
//! instead of through `#[spindle_sdk::filter]`: it gives the host answers the SDK's glue never
//! gives, to test that the host refuses them.
//!
//! ```toml
//! [filter.raw.config]
//! answer = "route"   # what on-request answers, see below
//! cluster = "api"    # the cluster of `route`
//! ```
//!
//! `answer`:
//! - `route`: `route(N)`, N the number `cluster-ref` gives `cluster` (what the SDK does);
//! - `reply`: `reply` with a 418 and `respond` (what the SDK does);
//! - `route-unknown`: `route` with a number `cluster-ref` never gave;
//! - `respond-without-reply`: `respond`, without calling `reply` first;
//! - `reply-then-continue`: `reply` with a 418 and `continue`: the next request's
//!   `respond-without-reply` must not find this reply (set `answer_after` to switch).
//!
//! `answer_after = { requests = K, answer = "..." }` switches to another answer after K
//! requests of this instance.

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

use spindle_sdk::wit::exports::spindle::filter::filter::Guest;
use spindle_sdk::wit::spindle::filter::host;
use spindle_sdk::wit::spindle::filter::types as wt;

struct Raw;

#[derive(Clone, Default)]
struct Config {
    answer: String,
    cluster: String,
    after: Option<(u64, String)>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    static SEEN: RefCell<u64> = const { RefCell::new(0) };
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string()
}

impl Guest for Raw {
    fn init(config: String) -> Result<wt::Declaration, String> {
        let v: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let after = v.get("answer_after").map(|a| {
            (
                a.get("requests").and_then(|n| n.as_u64()).unwrap_or(0),
                text(a, "answer"),
            )
        });
        CONFIG.with(|c| {
            *c.borrow_mut() = Config {
                answer: text(&v, "answer"),
                cluster: text(&v, "cluster"),
                after,
            }
        });
        Ok(wt::Declaration {
            hooks: wt::Hooks::REQUEST,
            per_try_timeout_ms: None,
            request_min_in_flight: None,
            attempt_outcomes: wt::AttemptOutcomes::All,
            request_path: false,
        })
    }

    fn on_request(_path: Option<String>, _traced: bool) -> wt::RequestAction {
        let config = CONFIG.with(|c| c.borrow().clone());
        let seen = SEEN.with(|s| {
            let mut s = s.borrow_mut();
            *s += 1;
            *s
        });
        let answer = match &config.after {
            Some((k, later)) if seen > *k => later.as_str(),
            _ => config.answer.as_str(),
        };
        let teapot = || {
            host::reply(wt::LocalReply {
                status: 418,
                headers: &[("x-raw", "reply")],
                body: b"short and stout\n",
            })
        };
        match answer {
            "route" => match host::cluster_ref(&config.cluster) {
                Some(n) => wt::RequestAction::Route(n),
                None => wt::RequestAction::Continue,
            },
            "reply" => {
                teapot();
                wt::RequestAction::Respond
            }
            "route-unknown" => wt::RequestAction::Route(u32::MAX - 7),
            "respond-without-reply" => wt::RequestAction::Respond,
            "reply-then-continue" => {
                teapot();
                wt::RequestAction::Continue
            }
            _ => wt::RequestAction::Continue,
        }
    }

    fn endpoints_changed(_cluster_id: u32, _cluster: String, _endpoints: Vec<wt::Endpoint>) {}

    fn pick_endpoint(_ctx: wt::PickContext) -> Option<u32> {
        None
    }

    fn on_attempt(_outcome: wt::AttemptOutcome, _traced: bool) -> wt::AttemptAction {
        wt::AttemptAction::Done
    }

    fn on_response(_traced: bool) {}

    fn on_done(_summary: wt::RequestSummary, _traced: bool) {}
}

spindle_sdk::export::export!(Raw with_types_in spindle_sdk::wit);
