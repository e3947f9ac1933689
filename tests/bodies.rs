//! Request and response bodies of every framing go through unchanged: buffered and streamed
//! request bodies (with a length or chunked), large response bodies, and the upstream
//! connection serves again afterwards.

use std::time::Duration;

use spindle_tests::config::{cluster, head, round_robin, router_all_to};
use spindle_tests::{Client, Spindle, Upstream, bounded};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn config() -> String {
    head(&["router", "balancer"]) + &router_all_to("api") + &round_robin() + &cluster("api", &["a"])
}

/// Bytes that differ along the way, so that a lost or repeated piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_go_through_both_ways() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        a.echo();
        let sp = Spindle::start(&config(), &[&a]).await;
        let client = Client::new();
        // Small (buffered, replayable), and larger than `retry_buffer_bytes` (streamed); a
        // small one again after the large ones, on the same keep-alive connection as they.
        for len in [10, 200_000, 2_000_000, 10] {
            let body = pattern(len);
            let resp = client
                .request(
                    http::Method::POST,
                    &format!("{}/echo", sp.url("edge")),
                    &[],
                    body.clone(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(a.seen().last().unwrap().body.len(), len);
            assert_eq!(a.seen().last().unwrap().body.as_ref(), &body[..]);
            assert_eq!(resp.body.len(), String::from_utf8_lossy(&body).len());
        }
        // The same upstream connection served all four.
        let opened = sp
            .metric(
                "spindle_upstream_connections_opened_total",
                &[("cluster", "api")],
            )
            .await
            .unwrap_or(0.0);
        assert_eq!(opened, 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_of_unknown_length_is_streamed() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        a.echo();
        let sp = Spindle::start(&config(), &[&a]).await;
        let addr = sp.url("edge").trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        // 100 chunks of 1000 bytes: more than the retry buffer, so it is streamed on.
        let body = pattern(100_000);
        for piece in body.chunks(1000) {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await
                .unwrap();
            s.write_all(piece).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
        let seen = a.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body.as_ref(), &body[..]);
    })
    .await
}
