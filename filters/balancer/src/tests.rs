use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use spindle_sdk::testing::{MockHost, TestFilter, TestRequest};
use spindle_sdk::{Endpoint, Filter, Hooks, PickContext, endpoints};

use crate::ewma::{self, Estimate};
use crate::ring::{self, Ring};
use crate::{Balancer, smooth_schedule};

const POLICIES: [&str; 5] = [
    "round_robin",
    "random",
    "least_request",
    "ewma",
    "ring_hash",
];

fn load(host: &MockHost, policy: &str) -> TestFilter<Balancer> {
    host.load::<Balancer>(json!({ "policy": policy }))
        .expect("config is valid")
}

fn retry(cluster: &str, previous: u32) -> PickContext {
    PickContext {
        cluster: cluster.to_owned(),
        attempt: 2,
        previous: Some(previous),
        ticket: 0,
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
    // Many clients, so that ring_hash spreads too.
    let pick = |lb: &mut TestFilter<Balancer>, n: usize| {
        host.start_request(TestRequest::get("/").client_address(&format!("192.0.2.{n}:1")));
        lb.pick("api")
    };
    for policy in POLICIES {
        let mut lb = load(&host, policy);
        endpoints::eject_endpoint(a, Duration::from_secs(1));
        assert!((0..20).all(|n| pick(&mut lb, n) == Some(b)), "{policy}");
        host.advance(Duration::from_secs(1));
        let seen = counts((0..50).map(|n| pick(&mut lb, n)));
        assert!(seen.contains_key(&a) && seen.contains_key(&b), "{policy}");
    }
}

#[test]
fn retries_avoid_the_previous_endpoint() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 100);
    let b = host.add_endpoint("api", "10.0.0.2:80", 1);
    for policy in POLICIES {
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
    for policy in POLICIES {
        let mut lb = load(&host, policy);
        assert_eq!(lb.pick_with(retry("api", a)), Some(a), "{policy}");
    }
}

#[test]
fn empty_or_unknown_clusters_give_no_pick() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    for policy in POLICIES {
        let mut lb = load(&host, policy);
        assert_eq!(lb.pick("nowhere"), None, "{policy}");
        assert_eq!(lb.pick("api"), Some(a));
    }
    endpoints::eject_endpoint(a, Duration::from_secs(5));
    for policy in POLICIES {
        let mut lb = load(&host, policy);
        assert_eq!(lb.pick("api"), None, "{policy}");
    }
}

#[test]
fn picks_alternating_between_clusters_use_each_ones_endpoints() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let w = host.add_endpoint("web", "10.0.0.2:80", 1);
    for policy in POLICIES {
        let mut lb = load(&host, policy);
        for _ in 0..3 {
            assert_eq!(lb.pick("api"), Some(a), "{policy}");
            assert_eq!(lb.pick("web"), Some(w), "{policy}");
            assert_eq!(lb.pick("nowhere"), None, "{policy}");
            assert_eq!(lb.pick("web"), Some(w), "{policy}");
        }
    }
    // A change of one cluster's members leaves the other's table alone.
    let mut lb = load(&host, "round_robin");
    assert_eq!(lb.pick("web"), Some(w));
    assert_eq!(lb.pick("api"), Some(a));
    let b = host.add_endpoint("api", "10.0.0.3:80", 1);
    endpoints::eject_endpoint(a, Duration::from_secs(5));
    assert_eq!(lb.pick("web"), Some(w));
    assert_eq!(lb.pick("api"), Some(b));
    assert_eq!(lb.pick("web"), Some(w));
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
fn random_retry_skips_the_previous_and_keeps_the_other_weights() {
    let host = MockHost::new();
    let a = host.add_endpoint("api", "10.0.0.1:80", 1);
    let b = host.add_endpoint("api", "10.0.0.2:80", 5);
    let c = host.add_endpoint("api", "10.0.0.3:80", 3);
    let mut lb = load(&host, "random");
    let seen = counts((0..8000).map(|_| lb.pick_with(retry("api", b))));
    assert!(!seen.contains_key(&b), "{seen:?}");
    let share = seen[&c] as f64 / 8000.0;
    assert!((0.72..0.78).contains(&share), "{share}");
    assert!(seen[&a] > 0);
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
fn bad_configs_name_the_key() {
    let host = MockHost::new();
    let err = |config: serde_json::Value| host.load::<Balancer>(config).unwrap_err().to_string();
    assert_eq!(
        err(json!({ "policy": "random", "hash_header": "x-user" })),
        "hash_header: is only used by policy `ring_hash`"
    );
    assert_eq!(
        err(json!({ "policy": "ring_hash", "decay_ms": 5 })),
        "decay_ms: is only used by policy `ewma`"
    );
    assert_eq!(
        err(json!({ "policy": "ewma", "points_per_weight": 5 })),
        "points_per_weight: is only used by policy `ring_hash`"
    );
    assert_eq!(
        err(json!({ "policy": "ring_hash", "points_per_weight": 0 })),
        "points_per_weight: 0 is not between 1 and 65536"
    );
    assert_eq!(
        err(json!({ "policy": "ewma", "decay_ms": 0 })),
        "decay_ms: must be at least 1"
    );
    assert_eq!(
        err(json!({ "policy": "ring_hash", "hash_header": "" })),
        "hash_header: must not be empty"
    );
    let e = err(json!({ "policy": "fastest" }));
    assert!(e.starts_with("policy: unknown variant `fastest`"), "{e}");
    let e = err(json!({ "polcy": "random" }));
    assert!(e.starts_with("unknown field `polcy`"), "{e}");
    assert!(host.load::<Balancer>(json!({})).is_ok());
    for config in [
        json!({ "policy": "ewma", "decay_ms": 2000, "default_rtt_ms": 5 }),
        json!({ "policy": "ring_hash", "hash_header": "x-user", "points_per_weight": 40 }),
        json!({ "policy": "ring_hash" }),
    ] {
        assert!(host.load::<Balancer>(config.clone()).is_ok(), "{config}");
    }
}

// ---- ewma ---------------------------------------------------------------------------------------

fn measured(host: &MockHost, id: u32, ms: u64, total: u64) {
    host.update_stats(id, |s| {
        s.ewma = Duration::from_millis(ms);
        s.total_requests = total;
    });
}

#[test]
fn ewma_prefers_the_faster_endpoint() {
    let host = MockHost::new();
    let fast = host.add_endpoint("api", "10.0.0.1:80", 1);
    let slow = host.add_endpoint("api", "10.0.0.2:80", 1);
    measured(&host, fast, 5, 10);
    measured(&host, slow, 50, 10);
    let mut lb = load(&host, "ewma");
    assert!((0..100).all(|_| lb.pick("api") == Some(fast)));
}

#[test]
fn ewma_multiplies_latency_by_in_flight_and_divides_by_weight() {
    let host = MockHost::new();
    let fast = host.add_endpoint("api", "10.0.0.1:80", 1);
    let slow = host.add_endpoint("api", "10.0.0.2:80", 1);
    measured(&host, fast, 5, 10);
    measured(&host, slow, 50, 10);
    // 5 ms x 11 > 50 ms x 1.
    host.set_in_flight(fast, 10);
    let mut lb = load(&host, "ewma");
    assert!((0..20).all(|_| lb.pick("api") == Some(slow)));
    // 5 ms x 11 / 2 = 27.5 ms < 50 ms.
    let c = host.add_endpoint("web", "10.0.1.1:80", 2);
    let d = host.add_endpoint("web", "10.0.1.2:80", 1);
    measured(&host, c, 5, 10);
    measured(&host, d, 50, 10);
    host.set_in_flight(c, 10);
    assert!((0..20).all(|_| lb.pick("web") == Some(c)));
    assert_eq!(ewma::cost(5e6, 10, 2), 27.5e6);
}

#[test]
fn ewma_spreads_by_p2c_over_many_endpoints() {
    let host = MockHost::new();
    let eps: Vec<u32> = (0..10)
        .map(|i| host.add_endpoint("api", &format!("10.0.0.{i}:80"), 1))
        .collect();
    for (i, &id) in eps.iter().enumerate() {
        measured(&host, id, 10 + i as u64, 10);
    }
    let mut lb = load(&host, "ewma");
    let seen = counts((0..10_000).map(|_| lb.pick("api")));
    // P2C never picks the worst of ten (it loses every pair) and picks the best most.
    assert!(!seen.contains_key(&eps[9]), "{seen:?}");
    assert!(seen[&eps[0]] > seen[&eps[1]], "{seen:?}");
    assert!(seen[&eps[0]] > 1500, "{seen:?}");
}

#[test]
fn ewma_estimate_is_peak_sensitive_and_decays() {
    let params = ewma::Params {
        decay_ns: 10e9,
        default_rtt_ns: 30e6,
    };
    let stats = |ms: u64, total: u64| spindle_sdk::EndpointStats {
        ewma: Duration::from_millis(ms),
        total_requests: total,
        ..Default::default()
    };
    let mut e = Estimate::default();
    let t0 = 1_000_000_000;
    // No sample: the default.
    assert_eq!(e.update(&stats(0, 0), t0, params), 30e6);
    assert_eq!(e.update(&stats(10, 1), t0, params), 10e6);
    // A higher value is taken at once.
    assert_eq!(e.update(&stats(40, 2), t0 + 1_000, params), 40e6);
    // A lower one after one decay period: 40 e^-1 + 20 (1 - e^-1).
    let got = e.update(&stats(20, 3), t0 + 1_000 + 10_000_000_000, params);
    let want = 40e6 * (-1f64).exp() + 20e6 * (1.0 - (-1f64).exp());
    assert!((got - want).abs() < 1.0, "{got} vs {want}");
    // No new attempt for three periods: towards zero.
    let idle = e.update(&stats(20, 3), t0 + 1_000 + 40_000_000_000, params);
    assert!((idle - want * (-3f64).exp()).abs() < 1.0, "{idle}");
}

#[test]
fn ewma_tries_an_idle_slow_endpoint_again_after_decaying() {
    let host = MockHost::new();
    let fast = host.add_endpoint("api", "10.0.0.1:80", 1);
    let slow = host.add_endpoint("api", "10.0.0.2:80", 1);
    measured(&host, fast, 5, 10);
    measured(&host, slow, 50, 10);
    let mut lb = load(&host, "ewma");
    assert_eq!(lb.pick("api"), Some(fast));
    // The fast one keeps answering in 5 ms; the slow one gets nothing for 20 s: 50 ms e^-2 is
    // still 6.8 ms.
    for total in 11..31 {
        host.advance(Duration::from_secs(1));
        measured(&host, fast, 5, total);
        assert_eq!(lb.pick("api"), Some(fast));
    }
    // After 25 s, 50 ms e^-2.5 = 4.1 ms < 5 ms: the slow one is probed again.
    host.advance(Duration::from_secs(5));
    measured(&host, fast, 5, 31);
    assert_eq!(lb.pick("api"), Some(slow));
}

#[test]
fn ewma_assumes_the_default_rtt_for_unmeasured_endpoints() {
    let host = MockHost::new();
    let new = host.add_endpoint("api", "10.0.0.1:80", 1);
    let old = host.add_endpoint("api", "10.0.0.2:80", 1);
    measured(&host, old, 50, 10);
    let mut lb = load(&host, "ewma");
    assert!((0..20).all(|_| lb.pick("api") == Some(new)));
    measured(&host, old, 10, 11);
    let mut lb = host
        .load::<Balancer>(json!({ "policy": "ewma", "default_rtt_ms": 30 }))
        .unwrap();
    assert!((0..20).all(|_| lb.pick("api") == Some(old)));
}

// ---- ring_hash ----------------------------------------------------------------------------------

fn endpoints_n(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            id: i as u32 + 1,
            address: format!("10.0.{}.{}:8080", i / 250, i % 250),
            weight: 1,
        })
        .collect()
}

fn owners(ring: &Ring, eps: &[Endpoint], keys: usize) -> Vec<u32> {
    (0..keys)
        .map(|k| {
            let h = ring::hash(format!("user-{k}").as_bytes());
            eps[ring.pick(h, 0, None).unwrap()].id
        })
        .collect()
}

#[test]
fn ring_adding_one_endpoint_to_ten_moves_few_keys() {
    let ten = endpoints_n(10);
    let eleven = endpoints_n(11);
    let before = owners(&Ring::new(&ten, 160), &ten, 10_000);
    let after = owners(&Ring::new(&eleven, 160), &eleven, 10_000);
    let moved: Vec<usize> = (0..10_000).filter(|&k| before[k] != after[k]).collect();
    // Ideal: 1/11 = 9.1%.
    eprintln!("{} of 10000 keys moved", moved.len());
    assert!(moved.len() <= 1_500, "{} keys moved", moved.len());
    assert!(moved.len() >= 500, "{} keys moved", moved.len());
    // Keys only move to the newcomer.
    assert!(moved.iter().all(|&k| after[k] == 11));
}

#[test]
fn ring_removing_an_endpoint_moves_only_its_keys() {
    let ten = endpoints_n(10);
    let nine: Vec<Endpoint> = ten.iter().filter(|e| e.id != 4).cloned().collect();
    let before = owners(&Ring::new(&ten, 160), &ten, 10_000);
    let after = owners(&Ring::new(&nine, 160), &nine, 10_000);
    for k in 0..10_000 {
        if before[k] != 4 {
            assert_eq!(before[k], after[k], "key {k}");
        }
    }
}

#[test]
fn ring_spreads_keys_by_weight() {
    let mut eps = endpoints_n(4);
    eps[0].weight = 3;
    let ring = Ring::new(&eps, 160);
    assert_eq!(ring.len(), 6 * 160);
    let mut seen = HashMap::<u32, usize>::new();
    for id in owners(&ring, &eps, 60_000) {
        *seen.entry(id).or_default() += 1;
    }
    let share = seen[&1] as f64 / 60_000.0;
    assert!((0.42..0.58).contains(&share), "{share} {seen:?}");
    for id in 2..=4 {
        let share = seen[&id] as f64 / 60_000.0;
        assert!((0.12..0.22).contains(&share), "{id}: {share} {seen:?}");
    }
}

#[test]
fn ring_size_is_capped_and_every_endpoint_keeps_a_point() {
    let mut eps = endpoints_n(1000);
    eps[0].weight = 1_000_000;
    let ring = Ring::new(&eps, 160);
    assert!(ring.len() <= 65_536 + 1000, "{}", ring.len());
    let ring = Ring::new(&endpoints_n(1000), 160);
    assert_eq!(ring.len(), 65_000);
}

#[test]
fn ring_retries_walk_to_the_next_distinct_endpoints() {
    let eps = endpoints_n(5);
    let ring = Ring::new(&eps, 160);
    for k in 0..200u64 {
        let h = ring::hash(&k.to_le_bytes());
        let first = ring.pick(h, 0, None).unwrap();
        let second = ring.pick(h, 1, Some(first)).unwrap();
        let third = ring.pick(h, 2, Some(second)).unwrap();
        assert_ne!(first, second);
        assert_ne!(second, third);
        assert_ne!(first, third);
        // Deterministic.
        assert_eq!(ring.pick(h, 1, Some(first)), Some(second));
        // More attempts than endpoints wrap around, still avoiding the last one.
        let sixth = ring.pick(h, 5, Some(third)).unwrap();
        assert_ne!(sixth, third);
    }
}

#[test]
fn ring_hash_is_sticky_per_header_across_instances() {
    let host = MockHost::new();
    for i in 0..10 {
        host.add_endpoint("api", &format!("10.0.0.{i}:80"), 1);
    }
    let config = json!({ "policy": "ring_hash", "hash_header": "x-user" });
    let mut one = host.load::<Balancer>(config.clone()).unwrap();
    let mut two = host.load::<Balancer>(config).unwrap();
    let mut owners = HashMap::new();
    for round in 0..3 {
        for user in 0..200 {
            let user = format!("u{user}");
            host.start_request(
                TestRequest::get("/")
                    .header("x-user", &user)
                    .client_address(&format!("192.0.2.{round}:4000{round}")),
            );
            let lb = if round % 2 == 0 { &mut one } else { &mut two };
            let id = lb.pick("api").unwrap();
            assert_eq!(*owners.entry(user).or_insert(id), id);
        }
    }
    // 200 users over 10 endpoints: every endpoint gets some.
    let distinct: std::collections::HashSet<u32> = owners.values().copied().collect();
    assert_eq!(distinct.len(), 10);
}

#[test]
fn ring_hash_falls_back_to_the_client_ip() {
    let host = MockHost::new();
    for i in 0..10 {
        host.add_endpoint("api", &format!("10.0.0.{i}:80"), 1);
    }
    let mut lb = host
        .load::<Balancer>(json!({ "policy": "ring_hash", "hash_header": "x-user" }))
        .unwrap();
    let mut picks = HashMap::<String, u32>::new();
    for port in 40000..40050 {
        for ip in ["192.0.2.1", "192.0.2.2", "[2001:db8::1]"] {
            host.start_request(TestRequest::get("/").client_address(&format!("{ip}:{port}")));
            let id = lb.pick("api").unwrap();
            assert_eq!(*picks.entry(ip.to_owned()).or_insert(id), id, "{ip}");
        }
    }
}

#[test]
fn ring_hash_retry_picks_another_endpoint_and_ejection_remaps_only_its_keys() {
    let host = MockHost::new();
    let eps: Vec<u32> = (0..4)
        .map(|i| host.add_endpoint("api", &format!("10.0.0.{i}:80"), 1))
        .collect();
    let mut lb = host
        .load::<Balancer>(json!({ "policy": "ring_hash", "hash_header": "x-user" }))
        .unwrap();
    let mut first = HashMap::new();
    for user in 0..100 {
        host.start_request(TestRequest::get("/").header("x-user", &format!("u{user}")));
        let a = lb.pick("api").unwrap();
        let b = lb.pick_with(retry("api", a)).unwrap();
        assert_ne!(a, b);
        first.insert(user, a);
    }
    endpoints::eject_endpoint(eps[0], Duration::from_secs(10));
    for user in 0..100 {
        host.start_request(TestRequest::get("/").header("x-user", &format!("u{user}")));
        let id = lb.pick("api").unwrap();
        assert_ne!(id, eps[0]);
        if first[&user] != eps[0] {
            assert_eq!(id, first[&user], "u{user} moved");
        }
    }
}
