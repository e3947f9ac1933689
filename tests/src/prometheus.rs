//! [`Prometheus`]: a real Prometheus server (Debian's `prometheus` package) in a temp dir,
//! scraping one target every second, and a client for its query API.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;

/// How long the server may take to answer `GET /-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many ports are tried when the one picked was taken in the meantime.
const BIND_ATTEMPTS: usize = 5;

/// A running `prometheus`, killed (and its temp dir removed) when dropped; if the thread is
/// panicking, its log is printed.
pub struct Prometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    client: Client,
}

impl Prometheus {
    /// Starts a server that scrapes `target` (`/metrics`) every second as job `job`, on a free
    /// loopback port (another one if that port was taken before the server bound it); waits
    /// until it is ready. Panics with a hint when the binary is missing, or (printing its log)
    /// when it does not start.
    pub async fn start(job: &str, target: SocketAddr) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("spindle-prometheus-")
            .tempdir()
            .expect("create a temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job:?}\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");

        let mut prometheus = Prometheus {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            client: Client::new(),
        };
        for attempt in 1..=BIND_ATTEMPTS {
            prometheus.addr = free_port();
            prometheus.child = Some(spawn(prometheus.dir.path(), prometheus.addr));
            match prometheus.wait_ready().await {
                Ok(()) => return prometheus,
                Err(why)
                    if attempt < BIND_ATTEMPTS
                        && (why.contains("address already in use")
                            || prometheus.log().contains("address already in use")) =>
                {
                    prometheus.stop();
                }
                // Its log is printed as `prometheus` drops.
                Err(why) => panic!("prometheus did not become ready: {why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs an instant query; the `data` object on success, else the API's error (or the
    /// transport's).
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}/api/v1/query?query={}", self.url(), encode(promql));
        let resp = self.client.get(&url, &[]).await?;
        let body: serde_json::Value = serde_json::from_str(&resp.body)
            .map_err(|e| format!("HTTP {}: not JSON ({e}): {}", resp.status, resp.body))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "HTTP {}: {}: {}",
                resp.status,
                body["errorType"].as_str().unwrap_or("?"),
                body["error"].as_str().unwrap_or("?")
            ))
        }
    }

    /// The value of a query that yields a scalar or a one-element vector; `Ok(None)` for an
    /// empty vector.
    pub async fn value(&self, promql: &str) -> Result<Option<f64>, String> {
        let data = self.query(promql).await?;
        let sample = match data["resultType"].as_str() {
            Some("scalar") => &data["result"],
            Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
                Some([]) => return Ok(None),
                Some([one]) => &one["value"],
                _ => return Err(format!("{promql}: more than one series: {data}")),
            },
            _ => return Err(format!("{promql}: neither scalar nor vector: {data}")),
        };
        // A sample is `[unix_time, "value"]`; values such as "NaN" and "+Inf" parse as f64.
        sample[1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .map(Some)
            .ok_or_else(|| format!("{promql}: malformed sample {sample}"))
    }

    /// Polls `promql` every 250 ms until its value satisfies `want`, for up to `timeout`; panics
    /// with the last value (or error) and `what` when it never does.
    pub async fn wait_for(
        &self,
        what: &str,
        promql: &str,
        timeout: Duration,
        want: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.value(promql).await;
            if let Ok(Some(v)) = last
                && want(v)
            {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("gave up after {timeout:?} waiting for {what}: `{promql}` is {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/-/ready", self.url());
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited with {status}"));
            }
            if matches!(self.client.get(&url, &[]).await, Ok(r) if r.status == 200) {
                // Ready, but is it this server, or one that had the port before?
                return if self.is_ours().await {
                    Ok(())
                } else {
                    Err("another server answers on the port: address already in use".into())
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the server on our port is the one started here (its TSDB is in our dir).
    async fn is_ours(&self) -> bool {
        let url = format!("{}/api/v1/status/flags", self.url());
        let Ok(resp) = self.client.get(&url, &[]).await else {
            return false;
        };
        let flags: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
        flags["data"]["storage.tsdb.path"].as_str()
            == Some(self.dir.path().join("data").to_string_lossy().as_ref())
    }

    /// Kills the server (its TSDB is thrown away with the temp dir, so no graceful stop).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus on {} log:\n{}\n----",
                self.addr,
                self.log()
            );
        }
    }
}

fn spawn(dir: &Path, addr: SocketAddr) -> Child {
    let log = File::create(dir.join("prometheus.log")).expect("create prometheus.log");
    let log_err = log.try_clone().expect("clone the log file handle");
    Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "spawn prometheus: {e} (Debian package `prometheus`; `make test-deps` installs it)"
            )
        })
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode(r#"sum(x{a="b c"}[1m])"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29"
        );
        assert_eq!(encode("up_1.0~-"), "up_1.0~-");
    }
}
