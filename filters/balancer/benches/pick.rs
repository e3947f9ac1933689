//! The cost of one pick against the cluster size, per policy, natively through the SDK's mock
//! host (a benchmark, not a test: `cargo bench -p spindle-filter-balancer`). Measured here
//! (release, mock host, a shared 2-core machine, so +-50% noise), ns per pick for
//! 3 / 100 / 1000 endpoints: round_robin 324/423/273, random 64/73/82, least_request
//! 90/134/168, ewma 137/204/234, ring_hash 90/103/109. The growth of the P2C policies is cache
//! misses in the mock host's and the filter's maps, not work per endpoint.
//!
//! No pick walks the endpoints: `ring_hash` and `random` binary-search (log2 of the ring's
//! points, of the endpoints), the others do constant work. The mock host's own calls (a
//! `HashMap` per stats read or store add) are included.

use std::hint::black_box;
use std::time::Instant;

use spindle_filter_balancer::Balancer;
use spindle_sdk::testing::{MockHost, TestRequest};
use spindle_sdk::{Filter, PickContext};

fn bench(policy: &str, endpoints: usize) -> f64 {
    let host = MockHost::new();
    for i in 0..endpoints {
        let id = host.add_endpoint("api", &format!("10.{}.{}.1:80", i / 250, i % 250), 1);
        host.update_stats(id, |s| {
            s.ewma = std::time::Duration::from_micros(500 + i as u64);
            s.total_requests = 1;
        });
    }
    let config = serde_json::from_value(serde_json::json!({ "policy": policy })).expect("config");
    let mut lb = Balancer::new(config).expect("valid config");
    // The hooks are called directly: `TestFilter::pick` compares the cluster's endpoint list
    // with the last one pushed before every pick (what the host does with a generation number),
    // which is linear in the cluster's size and would hide the filter's own cost.
    lb.endpoints_changed("api", &host.endpoints("api"));
    host.start_request(TestRequest::get("/").client_address("192.0.2.1:5000"));
    let mut ctx = PickContext {
        cluster: "api".to_owned(),
        attempt: 1,
        previous: None,
        ticket: 0,
    };
    for _ in 0..1_000 {
        black_box(lb.pick_endpoint(&ctx));
        ctx.ticket += 1;
    }
    let n = 200_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(lb.pick_endpoint(black_box(&ctx)));
        ctx.ticket += 1;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    println!("{:<14} {:>10} {:>10} {:>10}", "policy", "3", "100", "1000");
    for policy in [
        "round_robin",
        "random",
        "least_request",
        "ewma",
        "ring_hash",
    ] {
        let costs: Vec<String> = [3, 100, 1000]
            .iter()
            .map(|&n| format!("{:>7.0} ns", bench(policy, n)))
            .collect();
        println!("{policy:<14} {}", costs.join(" "));
    }
}
