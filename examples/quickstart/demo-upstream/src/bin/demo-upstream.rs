//! `demo-upstream --listen ADDR --name NAME [--fail-rate R] [--delay-ms N] [--threads N]`: an
//! HTTP/1.1 + HTTP/2 service for the quickstart. It answers 200 with its name in the body and in
//! `x-upstream`, or 503 with probability `--fail-rate`. It prints one line when it is listening,
//! nothing per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::Rng;
use tokio::net::TcpListener;

/// A demo upstream service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in `x-upstream` and the body.
    #[arg(long)]
    name: String,
    /// Fraction of requests (0.0-1.0) answered with 503.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Worker threads: 0 is one per core it may run on; 1 serves on the main thread alone (no
    /// work-stealing scheduler, the cheapest per request: the load benchmark's upstream).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

struct Service {
    name: String,
    fail_rate: f64,
    delay: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate),
        "--fail-rate must be between 0 and 1"
    );
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!(
        "demo-upstream {} listening on {} (fail rate {}, delay {} ms)",
        args.name,
        listener.local_addr()?,
        args.fail_rate,
        args.delay_ms
    );
    let service = Arc::new(Service {
        name: args.name,
        fail_rate: args.fail_rate,
        delay: Duration::from_millis(args.delay_ms),
    });

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(service.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn handle(
    service: Arc<Service>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body so that keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    if !service.delay.is_zero() {
        tokio::time::sleep(service.delay).await;
    }
    let fail = service.fail_rate > 0.0 && rand::rng().random_bool(service.fail_rate);
    let (status, body) = if fail {
        (503, format!("{} failed (demo fail rate)\n", service.name))
    } else {
        (200, format!("{}\n", service.name))
    };
    let resp = Response::builder()
        .status(status)
        .header("x-upstream", service.name.as_str())
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
