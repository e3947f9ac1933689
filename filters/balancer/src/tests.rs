use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter};
use spindle_sdk::{Endpoint, Filter, Hooks, PickContext, endpoints};

use crate::{Balancer, smooth_schedule};

fn load(host: &MockHost, policy: &str) -> TestFilter<Balancer> {
    host.load::<Balancer>(json!({ "policy": policy }))
        .expect("config is valid")
}

fn retry(cluster: &str, previous: u32) -> PickContext {
    PickContext {
        cluster: cluster.to_owned(),
        attempt: 2,
        previous: Some(previous),
    }
}

fn counts(picks: impl IntoIterator<Item = Option<u32>>) -> HashMap<u32, usize> {
    let mut out = HashMap::new();
    for id in picks.into_iter().flatten() {
        *out.entry(id).or_default() += 1;
    }
    out
}

#[test]
fn declares_only_pick() {
    assert_eq!(<Balancer as Filter>::HOOKS, Hooks::PICK);
}

#[test]
fn smooth_schedule_is_nginx_order() {
    let eps: Vec<Endpoint> = [5, 1, 1]
        .iter()
        .enumerate()
        .map(|(i, &weight)| Endpoint {
            id: i as u32,
            address: format!("10.0.0.{i}:80"),
            weight,
        })
        .collect();
    assert_eq!(smooth_schedule(&eps), [0, 0, 1, 0, 2, 0, 0]);
    // Scaled by the gcd.
    let eps: Vec<Endpoint> = [10, 20]
        .iter()
        .enumerate()
        .map(|(i, &weight)| Endpoint {
            id: i as u32,
            address: String::new(),
            weight,
        })
        .collect();
    assert_eq!(smooth_schedule(&eps), [1, 0, 1]);
}

#[test]
fn huge_weights_keep_a_short_schedule() {
    let eps: Vec<Endpoint> = [1_000_000, 1, 3_000_000]
        .iter()
        .enumerate()
        .map(|(i, &weight)| Endpoint {
            id: i as u32,
            address: String::new(),
            weight,
        })
        .collect();
    let s = smooth_schedule(&eps);
    assert!(s.len() <= 4098, "{}", s.len());
    assert!(s.contains(&1));
}

#[test]
fn round_robin_follows_weights_smoothly() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 5);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    let c = host.add_endpoint("api", "10.0.0.3:80", 1);
    let mut lb = load(&host, "round_robin");
    let picks: Vec<u32> = (0..14).filter_map(|_| lb.pick("api")).collect();
    assert_eq!(picks, [a, a, b, a, c, a, a, a, a, b, a, c, a, a]);
}

#[test]
fn round_robin_order_holds_across_instances() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    let mut one = load(&host, "round_robin");
    let mut two = load(&host, "round_robin");
    let picks = [
        one.pick("api"),
        two.pick("api"),
        one.pick("api"),
        two.pick("api"),
    ];
    assert_eq!(picks, [Some(a), Some(b), Some(a), Some(b)]);
}

#[test]
fn ejected_endpoints_are_not_picked() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    for policy in ["round_robin", "random", "least_request"] {
        let mut lb = load(&host, policy);
        endpoints::eject_endpoint(a, Duration::from_secs(1));
        assert!((0..20).all(|_| lb.pick("api") == Some(b)), "{policy}");
        host.advance(Duration::from_secs(1));
        let seen = counts((0..50).map(|_| lb.pick("api")));
        assert!(seen.contains_key(&a) && seen.contains_key(&b), "{policy}");
    }
}

#[test]
fn retries_avoid_the_previous_endpoint() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 100);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    for policy in ["round_robin", "random", "least_request"] {
        let mut lb = load(&host, policy);
        for _ in 0..20 {
            assert_eq!(lb.pick_with(retry("api", a)), Some(b), "{policy}");
            assert_eq!(lb.pick_with(retry("api", b)), Some(a), "{policy}");
        }
    }
}

#[test]
fn a_lone_endpoint_is_picked_even_after_it_failed() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    for policy in ["round_robin", "random", "least_request"] {
        let mut lb = load(&host, policy);
        assert_eq!(lb.pick_with(retry("api", a)), Some(a), "{policy}");
    }
}

#[test]
fn empty_or_unknown_clusters_give_no_pick() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    for policy in ["round_robin", "random", "least_request"] {
        let mut lb = load(&host, policy);
        assert_eq!(lb.pick("nowhere"), None, "{policy}");
        assert_eq!(lb.pick("api"), Some(a));
    }
    endpoints::eject_endpoint(a, Duration::from_secs(5));
    for policy in ["round_robin", "random", "least_request"] {
        let mut lb = load(&host, policy);
        assert_eq!(lb.pick("api"), None, "{policy}");
    }
}

#[test]
fn random_follows_weights() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 3);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    let mut lb = load(&host, "random");
    host.queue_random([MockHost::for_below(2, 4), MockHost::for_below(3, 4)]);
    assert_eq!(lb.pick("api"), Some(a));
    assert_eq!(lb.pick("api"), Some(b));
    let seen = counts((0..8000).map(|_| lb.pick("api")));
    let share = seen[&a] as f64 / 8000.0;
    assert!((0.72..0.78).contains(&share), "{share}");
}

#[test]
fn least_request_prefers_the_less_loaded_per_weight() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    let mut lb = load(&host, "least_request");
    host.set_in_flight(a, 10);
    host.set_in_flight(b, 2);
    assert!((0..20).all(|_| lb.pick("api") == Some(b)));
    // Weight 10 with 10 in flight beats weight 1 with 2.
    let c = host.add_endpoint("web", "10.0.1.1:80", 10);
    let d = host.add_endpoint("web", "10.0.1.2:80", 1);
    host.set_in_flight(c, 10);
    host.set_in_flight(d, 2);
    assert!((0..20).all(|_| lb.pick("web") == Some(c)));
}

#[test]
fn unfinished_policies_are_refused() {
    let host = MockHost::new();
    for policy in ["ring_hash", "ewma"] {
        let err = host
            .load::<Balancer>(json!({ "policy": policy }))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("policy: "), "{err}");
        assert!(err.contains("not implemented yet"), "{err}");
    }
    let err = host
        .load::<Balancer>(json!({ "policy": "fastest" }))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("policy: unknown variant `fastest`"),
        "{err}"
    );
    let err = host
        .load::<Balancer>(json!({ "polcy": "random" }))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("unknown field `polcy`"), "{err}");
    assert!(host.load::<Balancer>(json!({})).is_ok());
}
