//! Downstream protections: a slow client is cut off by the header read
//! timeout (408), an oversized request head is refused (431), both counted in
//! `spindle_downstream_rejected_total`, and an idle keep-alive connection is
//! closed — while normal requests keep working.

use std::time::{Duration, Instant};

use spindle_tests::config::{cluster, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config() -> String {
    r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
filters = ["router", "balancer"]
header_read_timeout_ms = 300
idle_timeout_ms = 500
max_header_bytes = 4096
"#
    .to_string()
        + &router_all_to("api")
        + &round_robin()
        + &cluster("api", &["a"])
}

/// Reads until the peer closes (or `limit` passes); returns what was read and
/// how long the close took.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into(), Some(start.elapsed()));
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_oversized_heads_and_idle_connections_are_cut_off() {
    bounded(Duration::from_secs(60), async {
        let a = Upstream::start("a").await;
        let sp = Spindle::start(&config(), &[&a]).await;
        let addr = sp.listener_addr("edge");

        // Slowloris: half a request head, then nothing.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
        let closed = closed.expect("a slow request head is cut off");
        assert!(closed < Duration::from_secs(3), "cut off after {closed:?}");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");

        // A request head over max_header_bytes is refused.
        let mut big = TcpStream::connect(addr).await.unwrap();
        let filler = "x".repeat(8192);
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\nx-filler: {filler}\r\n\r\n");
        let _ = big.write_all(head.as_bytes()).await;
        let (answer, closed) = read_until_closed(&mut big, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "an oversized head closes the connection");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "refused, not proxied: {answer:?}"
        );
        assert_eq!(a.count(), 0, "neither request reached the upstream");
        for reason in ["header_timeout", "head_too_large"] {
            let n = sp
                .metric(
                    "spindle_downstream_rejected_total",
                    &[("listener", "edge"), ("reason", reason)],
                )
                .await;
            assert_eq!(n, Some(1.0), "{reason}");
        }

        // An idle keep-alive connection is closed after idle_timeout_ms.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
        let closed = closed.expect("an idle connection is closed");
        assert!(closed < Duration::from_secs(3), "closed after {closed:?}");

        // And the listener still serves.
        let resp = Client::new()
            .get(&format!("{}/y", sp.url("edge")), &[])
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
    })
    .await
}
