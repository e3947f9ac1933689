//! Upstream connections: each endpoint keeps its own idle HTTP/1.1
//! keep-alive connections (or one shared HTTP/2 connection) and hands them to
//! requests directly, over hyper's `client::conn`.
//!
//! A general-purpose pooled client looks its pool up by authority, sends the
//! request through a channel to the connection's task and spawns a task per
//! response to wait for the connection to be free again. An endpoint already
//! is the pool key here, so a request takes a connection from its endpoint's
//! list, and the response body puts it back when it has been read to the end.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::UpBody;
use super::cluster::Endpoint;

/// How long an unused keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A cluster's connection counts.
#[derive(Default, Debug)]
pub struct ConnStats {
    /// Connections open now (idle pooled ones included).
    pub open: AtomicU64,
    /// Connections ever established.
    pub opened: AtomicU64,
}

/// How a cluster's connections are made and kept.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub http2: bool,
    pub max_idle: usize,
}

/// An endpoint's connections that no request is using.
#[derive(Default)]
pub struct Conns(Mutex<Idle>);

#[derive(Default)]
struct Idle {
    /// HTTP/1.1 connections, oldest first.
    http1: VecDeque<(http1::SendRequest<UpBody>, Instant)>,
    /// The HTTP/2 connection every request to the endpoint shares.
    http2: Option<http2::SendRequest<UpBody>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used HTTP/1.1 connection that is still open.
    fn take_http1(&self) -> Option<http1::SendRequest<UpBody>> {
        let mut idle = self.lock();
        while let Some((tx, since)) = idle.http1.pop_back() {
            if since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                idle.http1.clear();
                return None;
            }
            if !tx.is_closed() {
                return Some(tx);
            }
        }
        None
    }

    fn put_http1(&self, tx: http1::SendRequest<UpBody>, max_idle: usize) {
        if max_idle == 0 || tx.is_closed() {
            return;
        }
        let mut idle = self.lock();
        while idle.http1.len() >= max_idle {
            idle.http1.pop_front();
        }
        idle.http1.push_back((tx, Instant::now()));
    }

    fn shared_http2(&self) -> Option<http2::SendRequest<UpBody>> {
        let idle = self.lock();
        idle.http2.as_ref().filter(|tx| tx.is_ready()).cloned()
    }

    /// Closes idle connections unused for [`IDLE_TIMEOUT`] or closed by the
    /// endpoint, and HTTP/2 ones the endpoint closed.
    pub fn sweep(&self) {
        let mut idle = self.lock();
        idle.http1
            .retain(|(tx, since)| !tx.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        if idle.http2.as_ref().is_some_and(|tx| tx.is_closed()) {
            idle.http2 = None;
        }
    }

    /// Closes every idle connection (the endpoint left its cluster).
    pub fn clear(&self) {
        let mut idle = self.lock();
        idle.http1.clear();
        idle.http2 = None;
    }
}

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Sends `req` to `endpoint`: on one of its idle connections when it has one
/// (a request that a reused connection never started to write goes to the
/// next, then to a new one), else on a new connection.
pub async fn send(
    endpoint: &Arc<Endpoint>,
    settings: PoolSettings,
    stats: &Arc<ConnStats>,
    mut req: Request<UpBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    // The paths that connect are boxed: each request's future is allocated whole, the holes
    // it leaves in the heap add to what an idle keep-alive connection costs, and a connect's
    // state (name lookup, TCP, handshake) is large.
    if settings.http2 {
        return Box::pin(send_http2(endpoint, settings, stats, req)).await;
    }
    while let Some(mut tx) = endpoint.conns.take_http1() {
        if !tx.is_ready() && tx.ready().await.is_err() {
            continue;
        }
        match tx.try_send_request(req).await {
            Ok(resp) => return Ok(with_checkin(resp, tx, endpoint, settings)),
            Err(mut e) => match e.take_message() {
                // Never written: the connection closed while idle.
                Some(r) => req = r,
                None => return Err(SendError::Http(e.into_error())),
            },
        }
    }
    Box::pin(send_on_new_http1(endpoint, settings, stats, req)).await
}

async fn send_on_new_http1(
    endpoint: &Arc<Endpoint>,
    settings: PoolSettings,
    stats: &Arc<ConnStats>,
    req: Request<UpBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    let io = connect(endpoint, settings.connect_timeout).await?;
    let (mut tx, conn) = http1::handshake(TokioIo::new(io)).await?;
    spawn_connection(conn, stats);
    let resp = tx.send_request(req).await?;
    Ok(with_checkin(resp, tx, endpoint, settings))
}

async fn send_http2(
    endpoint: &Arc<Endpoint>,
    settings: PoolSettings,
    stats: &Arc<ConnStats>,
    req: Request<UpBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    let mut tx = match endpoint.conns.shared_http2() {
        Some(tx) => tx,
        None => {
            let io = connect(endpoint, settings.connect_timeout).await?;
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(io))
                .await?;
            spawn_connection(conn, stats);
            endpoint.conns.lock().http2 = Some(tx.clone());
            tx
        }
    };
    let resp = tx.send_request(req).await?;
    Ok(resp.map(|body| UpstreamBody::new(body, None)))
}

fn with_checkin(
    resp: Response<Incoming>,
    tx: http1::SendRequest<UpBody>,
    endpoint: &Arc<Endpoint>,
    settings: PoolSettings,
) -> Response<UpstreamBody> {
    let checkin = Checkin {
        tx,
        endpoint: endpoint.clone(),
        max_idle: settings.max_idle,
    };
    resp.map(|body| UpstreamBody::new(body, Some(checkin)))
}

async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, SendError> {
    let connecting = async {
        if let Some(addr) = endpoint.socket {
            return TcpStream::connect(addr).await;
        }
        let mut last = None;
        for addr in tokio::net::lookup_host(endpoint.address.as_str()).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
        }))
    };
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Err(_) => {
            return Err(SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {} ms", timeout.as_millis()),
            )));
        }
    };
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    Ok(stream)
}

/// Runs a connection's task, counted in `stats` while it lives.
fn spawn_connection<F>(conn: F, stats: &Arc<ConnStats>)
where
    F: std::future::Future + Send + 'static,
{
    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.opened.fetch_add(1, Ordering::Relaxed);
    let open = Open(stats.clone());
    tokio::spawn(async move {
        let _open = open;
        let _ = conn.await;
    });
}

/// Uncounts a connection when its task ends (or is dropped at shutdown).
struct Open(Arc<ConnStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Parses an endpoint address that needs no name lookup.
pub fn socket_addr(address: &str) -> Option<SocketAddr> {
    address.parse().ok()
}

/// An HTTP/1.1 connection to give back once its response is read.
struct Checkin {
    tx: http1::SendRequest<UpBody>,
    endpoint: Arc<Endpoint>,
    max_idle: usize,
}

impl Checkin {
    fn put(self) {
        if !self.endpoint.is_removed() {
            self.endpoint.conns.put_http1(self.tx, self.max_idle);
        }
    }
}

/// The most of a discarded response body [`discard`] reads to keep its connection.
const DISCARD_MAX_BYTES: u64 = 64 * 1024;
/// How long [`discard`] waits for the rest of such a body.
const DISCARD_MAX_WAIT: Duration = Duration::from_secs(1);

/// Lets go of a response the client will not get (its attempt is retried). Its HTTP/1.1
/// connection can serve again only once the body has been read to the end: a body of at most
/// 64 KiB is read in a task of its own (for at most a second), so that a retried 503 does not
/// cost a new connection; a larger or slower one, or an HTTP/2 stream, is dropped (the
/// connection closes, the stream is reset).
pub fn discard(body: UpstreamBody) {
    if body.checkin.is_none()
        || body.is_end_stream()
        || body.size_hint().lower() > DISCARD_MAX_BYTES
    {
        // Dropped: a finished body gives its connection back as it goes.
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0u64;
        let _ = tokio::time::timeout(DISCARD_MAX_WAIT, async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DISCARD_MAX_BYTES {
                    return;
                }
            }
        })
        .await;
    });
}

/// A response body from an endpoint. Read to the end, it gives its HTTP/1.1
/// connection back to the endpoint; dropped before the end, the connection
/// closes (what is left of the body cannot be skipped safely).
pub struct UpstreamBody {
    body: Incoming,
    checkin: Option<Checkin>,
    ended: bool,
}

impl UpstreamBody {
    fn new(body: Incoming, checkin: Option<Checkin>) -> Self {
        Self {
            body,
            checkin,
            ended: false,
        }
    }

    fn give_back(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.put();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.ended = true;
                this.give_back();
            }
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstreams;

    #[test]
    fn a_request_on_a_pooled_connection_keeps_a_small_future() {
        let u = Upstreams::new(Instant::now());
        let cfg: crate::config::ClusterConfig =
            toml::from_str("endpoints = [\"127.0.0.1:1\"]").expect("cluster config");
        u.apply(&[("api".into(), cfg.clone())]);
        let cluster = u.cluster("api").expect("cluster");
        let endpoint = cluster.members()[0].clone();
        let settings = crate::upstream::Cluster::pool_settings(&cfg);
        let sending = send(
            &endpoint,
            settings,
            &cluster.connections,
            Request::new(UpBody::full(Bytes::new())),
        );
        // Every request's future is allocated whole, and the holes it leaves behind make up
        // part of the memory an idle keep-alive connection costs: connecting is boxed.
        let size = std::mem::size_of_val(&sending);
        eprintln!("send future: {size} bytes");
        assert!(size <= 1024, "the send future is {size} bytes");
    }
}
