//! [`Upstream`]: a real HTTP/1.1 + HTTP/2 server on `127.0.0.1:0` whose behaviour tests switch at
//! run time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// Request headers an upstream echoes back as `x-echo-<name>` response headers.
pub const ECHOED_HEADERS: &[&str] = &["x-hello", "x-request-id", "x-canary", "x-misbehave"];

/// What an upstream does with the next request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 with the upstream's name as body.
    Ok,
    /// Always this status.
    Status(u16),
    /// `status` for the next `remaining` requests, then 200.
    StatusThenOk {
        /// The failing status.
        status: u16,
        /// How many requests still get it.
        remaining: u32,
    },
    /// 200 after this delay.
    Delay(Duration),
    /// Never answers (until the connection or the upstream is dropped).
    Hold,
    /// 200 with the request's body as the response body.
    Echo,
}

/// One request an upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// HTTP version it arrived with.
    pub version: http::Version,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    count: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    /// Headers added to every response, whatever the behaviour.
    headers: Mutex<Vec<(String, String)>>,
}

/// An in-process upstream server; stopped when dropped.
pub struct Upstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Upstream {
    /// Starts an upstream named `name` (the `x-upstream` header and body) on `127.0.0.1:0`.
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream local addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour: Mutex::new(Behaviour::Ok),
            count: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Upstream {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        }
    }

    /// Starts one upstream per name, in order.
    pub async fn start_many(names: &[&str]) -> Vec<Upstream> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(Upstream::start(name).await);
        }
        out
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The bound address (kept across `stop`/`restart`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as it goes in a config.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far (counted on arrival, before the behaviour applies).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// Forgets the requests received so far (count and log).
    pub fn reset(&self) {
        let mut seen = lock(&self.shared.seen);
        seen.clear();
        self.shared.count.store(0, Ordering::SeqCst);
    }

    /// Switches the behaviour for the following requests.
    pub fn set(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Answers 200.
    pub fn ok(&self) {
        self.set(Behaviour::Ok);
    }

    /// Always answers `status`.
    pub fn always(&self, status: u16) {
        self.set(Behaviour::Status(status));
    }

    /// Answers `status` to the next `n` requests, then 200.
    pub fn fail_next(&self, status: u16, n: u32) {
        self.set(Behaviour::StatusThenOk {
            status,
            remaining: n,
        });
    }

    /// Answers 200 after `delay`.
    pub fn delay(&self, delay: Duration) {
        self.set(Behaviour::Delay(delay));
    }

    /// Adds `name: value` to every following response, whatever the behaviour (e.g. a
    /// `retry-after` on 503s). Cleared by [`Upstream::clear_headers`], not by `reset`.
    pub fn add_header(&self, name: &str, value: &str) {
        lock(&self.shared.headers).push((name.to_owned(), value.to_owned()));
    }

    /// Stops adding the headers of [`Upstream::add_header`].
    pub fn clear_headers(&self) {
        lock(&self.shared.headers).clear();
    }

    /// Never answers.
    pub fn hold(&self) {
        self.set(Behaviour::Hold);
    }

    /// Answers 200 with the request's body.
    pub fn echo(&self) {
        self.set(Behaviour::Echo);
    }

    /// Whether the server is accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.server).is_some()
    }

    /// Stops accepting and closes every open connection (in-flight requests are cut).
    pub async fn stop(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    /// Serves again on the same port, retrying the bind for up to 5 s.
    pub async fn restart(&self) {
        if self.is_running() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind_reuse(self.addr) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("upstream {}: rebind {}: {e}", self.name(), self.addr),
            }
        };
        let server = tokio::spawn(serve(listener, self.shared.clone()));
        *lock(&self.server) = Some(server);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(server) = lock(&self.server).take() {
            server.abort();
        }
    }
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections; every connection task lives in a `JoinSet` owned by this task, so that
/// aborting it closes every connection at once.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    shared.count.fetch_add(1, Ordering::SeqCst);
    let received = body.clone();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    lock(&shared.seen).push(Seen {
        method: parts.method.clone(),
        path,
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });

    let echo = lock(&shared.behaviour).clone() == Behaviour::Echo;
    let (status, delay, hold) = {
        let mut behaviour = lock(&shared.behaviour);
        match &mut *behaviour {
            Behaviour::Ok => (200, None, false),
            Behaviour::Status(status) => (*status, None, false),
            Behaviour::StatusThenOk { status, remaining } => {
                if *remaining > 0 {
                    *remaining -= 1;
                    (*status, None, false)
                } else {
                    (200, None, false)
                }
            }
            Behaviour::Delay(d) => (200, Some(*d), false),
            Behaviour::Hold => (200, None, true),
            Behaviour::Echo => (200, None, false),
        }
    };
    if hold {
        std::future::pending::<()>().await;
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    let mut resp = Response::builder()
        .status(status)
        .header("x-upstream", shared.name.as_str())
        .header("content-type", "text/plain");
    for name in ECHOED_HEADERS {
        if let Some(value) = parts.headers.get(*name) {
            resp = resp.header(format!("x-echo-{name}"), value.clone());
        }
    }
    for (name, value) in lock(&shared.headers).iter() {
        resp = resp.header(name.as_str(), value.as_str());
    }
    let body = if echo {
        received
    } else {
        Bytes::from(shared.name.clone())
    };
    Ok(resp
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_and_behaviours() {
        let up = Upstream::start("a").await;
        let client = Client::new();
        let resp = client
            .get(&format!("{}/x?y=1", up.url()), &[("x-hello", "hi")])
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.upstream(), Some("a"));
        assert_eq!(resp.body, "a");
        assert_eq!(resp.header("x-echo-x-hello"), Some("hi"));
        assert_eq!(up.count(), 1);
        assert_eq!(up.seen()[0].path, "/x?y=1");

        up.always(503);
        assert_eq!(client.get(&up.url(), &[]).await.unwrap().status, 503);
        up.fail_next(500, 2);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(client.get(&up.url(), &[]).await.unwrap().status);
        }
        assert_eq!(statuses, vec![500, 500, 200]);

        let resp = client.post(&up.url(), "payload").await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(up.seen().last().unwrap().body, "payload");
        assert_eq!(up.seen().last().unwrap().method, http::Method::POST);

        up.delay(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(client.get(&up.url(), &[]).await.unwrap().status, 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(up.count(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_prior_knowledge() {
        let up = Upstream::start("h2").await;
        let resp = Client::http2().get(&up.url(), &[]).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(up.seen()[0].version, http::Version::HTTP_2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hold_stop_and_restart_on_the_same_port() {
        let up = Upstream::start("b").await;
        let client = Client::new();
        let addr = up.addr();
        up.hold();
        let held = {
            let client = client.clone();
            let url = up.url();
            tokio::spawn(async move { client.get(&url, &[]).await })
        };
        assert!(
            crate::wait_until(Duration::from_secs(5), || async { up.count() == 1 }).await,
            "held request arrived"
        );
        up.stop().await;
        // The held request is cut when its connection closes.
        let cut = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("held request ends when the upstream stops")
            .unwrap();
        assert!(cut.is_err(), "held request must fail, got {cut:?}");
        // Connections are refused while stopped.
        assert!(Client::new().get(&up.url(), &[]).await.is_err());

        up.ok();
        up.restart().await;
        assert_eq!(up.addr(), addr);
        let resp = Client::new().get(&up.url(), &[]).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(up.count(), 2);
    }
}
