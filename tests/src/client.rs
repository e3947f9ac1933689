//! [`Client`]: a keep-alive HTTP client for tests, [`Connection`]: one pinned connection, and [`Load`], a bounded concurrent load runner.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long one request may take before it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A response, fully read.
#[derive(Clone, Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body, lossily decoded as UTF-8.
    pub body: String,
}

impl Resp {
    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-upstream` header: which upstream answered.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }
}

/// A pooled keep-alive client (HTTP/1.1, or HTTP/2 prior knowledge with [`Client::http2`]).
#[derive(Clone)]
pub struct Client {
    inner: Legacy<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// An HTTP/1.1 keep-alive client.
    pub fn new() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client {
            inner: Legacy::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// An HTTP/2 client with prior knowledge (h2c).
    pub fn http2() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client {
            inner: Legacy::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// Sends one request and reads the whole response, within [`REQUEST_TIMEOUT`].
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder
            .body(Full::new(body.into()))
            .map_err(|e| format!("build request {url}: {e}"))?;
        let send = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e:?}"))?;
            read_response(url, resp).await
        };
        within_timeout(url, send).await
    }

    /// `GET url` with extra headers.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    /// `POST url` with a body.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Result<Resp, String> {
        self.request(Method::POST, url, &[], body).await
    }
}

/// One HTTP/1.1 keep-alive connection that every request goes on, one after the other: for tests
/// that depend on the requests sharing a connection (a pooled [`Client`] may open a second one
/// when the next request starts before the last connection is back in its pool).
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    addr: SocketAddr,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay {addr}: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            driver,
            addr,
        })
    }

    /// `GET path` on this connection, fully read within [`REQUEST_TIMEOUT`]; an error if the
    /// connection was closed.
    pub async fn get(&mut self, path: &str) -> Result<Resp, String> {
        let url = format!("http://{}{path}", self.addr);
        let req = Request::builder()
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("build request {url}: {e}"))?;
        let send = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("{url}: connection closed: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("{url}: {e:?}"))?;
            read_response(&url, resp).await
        };
        within_timeout(&url, send).await
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn read_response(url: &str, resp: http::Response<Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{url}: reading body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn within_timeout(
    url: &str,
    send: impl Future<Output = Result<Resp, String>>,
) -> Result<Resp, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, send).await {
        Ok(result) => result,
        Err(_) => Err(format!("{url}: no response within {REQUEST_TIMEOUT:?}")),
    }
}

/// A bounded load: `clients` concurrent loops sharing `total` requests.
#[derive(Clone, Debug)]
pub struct Load {
    /// Target URL.
    pub url: String,
    /// Concurrent clients (each its own connection pool).
    pub clients: usize,
    /// Requests in all.
    pub total: usize,
    /// Pause between two requests of one client.
    pub pause: Duration,
    /// Request method.
    pub method: Method,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Response header whose values are tallied in [`LoadReport::tally`] (`-` when absent).
    pub tally_header: Option<String>,
    /// Requests finished so far; readable while the load runs.
    pub progress: Arc<AtomicUsize>,
    /// Request number `n` (0-based) is not sent until `n < gate`; lets a test hold the load at a
    /// point until something else happened. Starts open (`usize::MAX`).
    pub gate: Arc<AtomicUsize>,
}

/// What a [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Responses per status code.
    pub statuses: BTreeMap<u16, usize>,
    /// Responses per `x-upstream` value (`-` when absent).
    pub upstreams: BTreeMap<String, usize>,
    /// Responses per value of [`Load::tally_header`].
    pub tally: BTreeMap<String, usize>,
    /// Transport errors and timeouts, one line each.
    pub errors: Vec<String>,
}

impl LoadReport {
    /// Responses with this status.
    pub fn status(&self, code: u16) -> usize {
        self.statuses.get(&code).copied().unwrap_or(0)
    }

    /// Responses and errors in all.
    pub fn total(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.errors.len()
    }

    fn merge(&mut self, other: LoadReport) {
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.upstreams {
            *self.upstreams.entry(k).or_default() += v;
        }
        for (k, v) in other.tally {
            *self.tally.entry(k).or_default() += v;
        }
        self.errors.extend(other.errors);
    }
}

impl Load {
    /// `total` GETs of `url` over `clients` concurrent clients, no pause.
    pub fn new(url: impl Into<String>, clients: usize, total: usize) -> Load {
        Load {
            url: url.into(),
            clients: clients.max(1),
            total,
            pause: Duration::ZERO,
            method: Method::GET,
            headers: Vec::new(),
            tally_header: None,
            progress: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    /// Runs the load to completion.
    pub async fn run(&self) -> LoadReport {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            let load = self.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let client = Client::new();
                let headers: Vec<(&str, &str)> = load
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut report = LoadReport::default();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= load.total {
                        break;
                    }
                    while n >= load.gate.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    match client
                        .request(load.method.clone(), &load.url, &headers, Bytes::new())
                        .await
                    {
                        Ok(resp) => {
                            *report.statuses.entry(resp.status).or_default() += 1;
                            let upstream = resp.upstream().unwrap_or("-").to_string();
                            *report.upstreams.entry(upstream).or_default() += 1;
                            if let Some(name) = &load.tally_header {
                                let value = resp.header(name).unwrap_or("-").to_string();
                                *report.tally.entry(value).or_default() += 1;
                            }
                        }
                        Err(e) => report.errors.push(e),
                    }
                    load.progress.fetch_add(1, Ordering::SeqCst);
                    if !load.pause.is_zero() {
                        tokio::time::sleep(load.pause).await;
                    }
                }
                report
            }));
        }
        let mut report = LoadReport::default();
        for task in tasks {
            match task.await {
                Ok(part) => report.merge(part),
                Err(e) => report.errors.push(format!("load client task: {e}")),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_counts_statuses_and_upstreams() {
        let up = Upstream::start("u").await;
        up.fail_next(503, 5);
        let mut load = Load::new(up.url(), 4, 100);
        load.headers.push(("x-request-id".into(), "r".into()));
        load.tally_header = Some("x-echo-x-request-id".into());
        let report = load.run().await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.status(200), 95);
        assert_eq!(report.status(503), 5);
        assert_eq!(report.upstreams["u"], 100);
        assert_eq!(report.tally["r"], 100);
        assert_eq!(report.total(), 100);
        assert_eq!(load.progress.load(Ordering::SeqCst), 100);
        assert_eq!(up.count(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_holds_the_load() {
        let up = Upstream::start("u").await;
        let load = Load::new(up.url(), 3, 30);
        load.gate.store(10, Ordering::SeqCst);
        let runner = {
            let load = load.clone();
            tokio::spawn(async move { load.run().await })
        };
        assert!(crate::wait_until(Duration::from_secs(5), || async { up.count() == 10 }).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(up.count(), 10, "no request past the gate");
        load.gate.store(usize::MAX, Ordering::SeqCst);
        let report = runner.await.unwrap();
        assert_eq!(report.status(200), 30);
    }

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let report = Load::new(format!("http://{addr}/"), 2, 4).run().await;
        assert_eq!(report.errors.len(), 4);
        assert_eq!(report.total(), 4);
    }
}
