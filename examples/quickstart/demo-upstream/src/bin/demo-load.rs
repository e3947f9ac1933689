//! `demo-load --url URL --requests N --concurrency C [--path P]...`: sends N GETs over C
//! keep-alive connections (cycling through the paths, if given) and prints who answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Send demo traffic through Spindle and count the answers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Requests in all.
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Path(s) to request, cycled through (default: the URL as given).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(Default)]
struct Tally {
    upstreams: BTreeMap<String, usize>,
    statuses: BTreeMap<u16, usize>,
    errors: BTreeMap<String, usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let base = args.url.trim_end_matches('/').to_string();
    let urls: Arc<Vec<String>> = Arc::new(if args.paths.is_empty() {
        vec![args.url.clone()]
    } else {
        args.paths
            .iter()
            .map(|p| format!("{base}/{}", p.trim_start_matches('/')))
            .collect()
    });
    for url in urls.iter() {
        url.parse::<http::Uri>()
            .map_err(|e| anyhow::anyhow!("bad URL {url}: {e}"))?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (args, urls, next) = (args.clone(), urls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.requests {
                    return tally;
                }
                let url = &urls[i % urls.len()];
                let send = async {
                    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
                    let resp = client.get(uri).await.map_err(|e| format!("{e}"))?;
                    let upstream = resp
                        .headers()
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(spindle)")
                        .to_string();
                    let status = resp.status().as_u16();
                    resp.into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("{e}"))?;
                    Ok::<_, String>((upstream, status))
                };
                match tokio::time::timeout(Duration::from_millis(args.timeout_ms), send).await {
                    Ok(Ok((upstream, status))) => {
                        *tally.upstreams.entry(upstream).or_default() += 1;
                        *tally.statuses.entry(status).or_default() += 1;
                    }
                    Ok(Err(e)) => *tally.errors.entry(e).or_default() += 1,
                    Err(_) => *tally.errors.entry("timeout".into()).or_default() += 1,
                }
            }
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let part = task.await?;
        for (k, v) in part.upstreams {
            *total.upstreams.entry(k).or_default() += v;
        }
        for (k, v) in part.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        for (k, v) in part.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();

    println!(
        "{} requests to {} in {:.2}s ({} concurrent)",
        args.requests,
        urls.join(", "),
        elapsed.as_secs_f64(),
        args.concurrency
    );
    println!("  {:<24} {:>8}", "answered by (x-upstream)", "count");
    for (upstream, n) in &total.upstreams {
        println!("  {upstream:<24} {n:>8}");
    }
    println!("  {:<24} {:>8}", "status", "count");
    for (status, n) in &total.statuses {
        println!("  {status:<24} {n:>8}");
    }
    let errors: usize = total.errors.values().sum();
    println!("  {:<24} {:>8}", "errors", errors);
    for (e, n) in &total.errors {
        println!("    {n:>6} x {e}");
    }
    Ok(())
}
