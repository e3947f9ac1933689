//! Harness for Spindle's integration tests: the real `spindle` binary, real upstream servers on
//! `127.0.0.1:0`, and a keep-alive HTTP client with a bounded load runner.
//!
//! # Layout
//! - [`upstream`]: [`Upstream`], an in-process hyper server (HTTP/1.1 + HTTP/2) whose behaviour a
//!   test switches at run time (ok, fixed status, N failures then ok, delay, hold, stop/restart).
//! - [`spindle`]: [`Workdir`] (a temp dir with a rendered config and module copies) and
//!   [`Spindle`] (the running binary; SIGTERM then SIGKILL on drop, stderr dumped on panic).
//! - [`client`]: [`Client`] (`get`, `post`, `request`) and [`Load`] (N clients, M requests).
//! - [`metrics`]: Prometheus text parsing ([`parse_metric`]).
//! - [`otlp`]: [`otlp::OtlpCollector`], an OTLP trace receiver (HTTP and gRPC) decoding the real protobuf.
//! - [`prometheus`]: [`Prometheus`], a real Prometheus server scraping spindle, and its query API.
//!
//! Config templates are TOML with three kinds of placeholders, replaced literally:
//! `{filters}` (the directory holding the built `*.wasm` filters), `{dir}` (the test's temp dir,
//! where the config lives) and `{up:NAME}` (the `127.0.0.1:PORT` address of the upstream named NAME).

pub mod client;
pub mod config;
pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod spindle;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use client::{Client, Connection, Load, LoadReport, Resp};
pub use metrics::{parse_metric, parse_series};
pub use prometheus::Prometheus;
pub use spindle::{Spindle, Workdir, run_spindle};
pub use upstream::{Behaviour, Seen, Upstream};

/// The workspace root (the parent of this crate's directory, symlinks resolved).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    manifest
        .parent()
        .map(PathBuf::from)
        .expect("tests/ has a parent directory")
}

/// Where the built filters are: `$SPINDLE_FILTERS_DIR`, else `<workspace>/target/filters`.
pub fn filters_dir() -> PathBuf {
    match std::env::var_os("SPINDLE_FILTERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("filters"),
    }
}

/// The path of a built filter (`router`, `testbed`, ...); panics with a hint when it is missing.
pub fn filter_module(name: &str) -> PathBuf {
    let path = filters_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "filter module {} is missing: run `make filters` (or set SPINDLE_FILTERS_DIR)",
        path.display()
    );
    path
}

/// The `spindle` binary: `$SPINDLE_BIN`, else `<workspace>/target/debug/spindle`; panics with a
/// hint when it is missing.
pub fn spindle_bin() -> PathBuf {
    let path = match std::env::var_os("SPINDLE_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => workspace_root()
            .join("target")
            .join("debug")
            .join("spindle"),
    };
    assert!(
        path.is_file(),
        "spindle binary {} is missing: run `cargo build -p spindle-host` (or set SPINDLE_BIN)",
        path.display()
    );
    path
}

/// Polls `cond` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a whole test body under a deadline, panicking (so that processes are stopped and their
/// logs dumped) if it takes longer.
pub async fn bounded<F: Future>(timeout: Duration, body: F) -> F::Output {
    match tokio::time::timeout(timeout, body).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {timeout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(
            wait_until(Duration::from_secs(2), || {
                n += 1;
                let done = n >= 3;
                async move { done }
            })
            .await
        );
        assert!(!wait_until(Duration::from_millis(120), || async { false }).await);
    }
}
