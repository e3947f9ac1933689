//! Upstream connections: each endpoint keeps its own idle HTTP/1.1
//! keep-alive connections (or one shared HTTP/2 connection) and hands them to
//! requests directly.
//!
//! A general-purpose pooled client looks its pool up by authority, sends the
//! request through a channel to the connection's task and spawns a task per
//! response to wait for the connection to be free again. An endpoint already
//! is the pool key here, so a request takes a connection from its endpoint's
//! list, writes and reads it in its own task ([`super::h1`]), and the response
//! body puts it back when it has been read to the end. HTTP/2 connections are
//! hyper's `client::conn::http2`, each in a task of its own.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::UpBody;
use super::cluster::Endpoint;
use super::h1::{self, H1Error, Wire};
use crate::clock::coarse_ms;
use crate::http1::RawHead;

/// How long an unused keep-alive connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether a connection put back at `since` has been idle for [`IDLE_TIMEOUT`] at `now`
/// (coarse ms: a tick is nothing against 90 s).
fn idle_too_long(since: u64, now: u64) -> bool {
    now.saturating_sub(since) >= IDLE_TIMEOUT.as_millis() as u64
}

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
    /// HTTP/1.1 connections, oldest first, each with when it was put back (coarse ms).
    http1: VecDeque<(h1::Conn, u64)>,
    /// The HTTP/2 connection every request to the endpoint shares.
    http2: Option<http2::SendRequest<UpBody>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used HTTP/1.1 connection that is still open.
    pub(super) fn take_http1(&self) -> Option<h1::Conn> {
        let mut idle = self.lock();
        let now = coarse_ms();
        while let Some((conn, since)) = idle.http1.pop_back() {
            if idle_too_long(since, now) {
                // The rest are older still.
                idle.http1.clear();
                return None;
            }
            if !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    pub(super) fn put_http1(&self, conn: h1::Conn, max_idle: usize) {
        if max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        while idle.http1.len() >= max_idle {
            idle.http1.pop_front();
        }
        idle.http1.push_back((conn, coarse_ms()));
    }

    fn shared_http2(&self) -> Option<http2::SendRequest<UpBody>> {
        let idle = self.lock();
        idle.http2.as_ref().filter(|tx| tx.is_ready()).cloned()
    }

    /// Closes idle connections unused for [`IDLE_TIMEOUT`] or closed by the
    /// endpoint, and HTTP/2 ones the endpoint closed.
    pub fn sweep(&self) {
        let mut idle = self.lock();
        let now = coarse_ms();
        idle.http1
            .retain(|(conn, since)| !conn.is_stale() && !idle_too_long(*since, now));
        if idle.http2.as_ref().is_some_and(|tx| tx.is_closed()) {
            idle.http2 = None;
        }
    }

    /// Idle HTTP/1.1 connections now.
    #[cfg(test)]
    pub(super) fn idle_http1(&self) -> usize {
        self.lock().http1.len()
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
    #[error(transparent)]
    H1(#[from] H1Error),
}

/// A request ready for its endpoint's protocol.
pub enum Outgoing<'a> {
    /// HTTP/1.1: the head already in wire form (see [`HeadWriter`]), borrowed: its buffer
    /// goes on to the next request of the client's connection.
    Http1 {
        wire: &'a Wire,
        method: Method,
        body: UpBody,
    },
    /// HTTP/2: the request as hyper sends it (boxed: every HTTP/1.1 send future would carry
    /// its size).
    Http2(Box<Request<UpBody>>),
}

/// Sends a request to `endpoint`: on one of its idle connections when it has one
/// (a request that a reused connection never started to write goes to the
/// next, then to a new one), else on a new connection.
pub async fn send(
    endpoint: &Arc<Endpoint>,
    settings: PoolSettings,
    stats: &Arc<ConnStats>,
    req: Outgoing<'_>,
) -> Result<Response<UpstreamBody>, SendError> {
    let (wire, method, mut body) = match req {
        Outgoing::Http1 { wire, method, body } => (wire, method, body),
        // The paths that connect are boxed: each request's future is allocated whole, the
        // holes it leaves in the heap add to what an idle keep-alive connection costs, and a
        // connect's state (name lookup, TCP, handshake) is large.
        Outgoing::Http2(req) => return Box::pin(send_http2(endpoint, settings, stats, *req)).await,
    };
    let conn = loop {
        let Some(mut conn) = endpoint.conns.take_http1() else {
            let mut conn = Box::pin(connect_http1(endpoint, settings, stats)).await?;
            conn.write_request(wire, &mut body).await?;
            break conn;
        };
        match conn.write_request(wire, &mut body).await {
            Ok(()) => break conn,
            // A complete body was only read: the endpoint got no request it could act on (a
            // partial one at most), so the next connection gets it.
            Err(H1Error::Io(_)) if matches!(body, UpBody::Full(_)) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let checkin = Checkin {
        endpoint: endpoint.clone(),
        max_idle: settings.max_idle,
    };
    let (resp, body) = conn.read_response(&method, checkin).await?;
    Ok(resp.map(|()| UpstreamBody(Inner::H1(body))))
}

async fn connect_http1(
    endpoint: &Arc<Endpoint>,
    settings: PoolSettings,
    stats: &Arc<ConnStats>,
) -> Result<h1::Conn, SendError> {
    let io = connect(endpoint, settings.connect_timeout).await?;
    Ok(h1::Conn::new(io, Open::count(stats)))
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
    Ok(resp.map(|body| UpstreamBody(Inner::H2(body))))
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

/// Runs an HTTP/2 connection's task, counted in `stats` while it lives.
fn spawn_connection<F>(conn: F, stats: &Arc<ConnStats>)
where
    F: std::future::Future + Send + 'static,
{
    let open = Open::count(stats);
    tokio::spawn(async move {
        let _open = open;
        let _ = conn.await;
    });
}

/// Counts a connection open while it lives (its task, or its `h1::Conn`).
pub(super) struct Open(Arc<ConnStats>);

impl Open {
    fn count(stats: &Arc<ConnStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        stats.opened.fetch_add(1, Ordering::Relaxed);
        Open(stats.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Parses an endpoint address that needs no name lookup.
pub fn socket_addr(address: &str) -> Option<SocketAddr> {
    address.parse().ok()
}

/// Where an HTTP/1.1 connection goes back once its response is read.
pub(super) struct Checkin {
    endpoint: Arc<Endpoint>,
    max_idle: usize,
}

impl Checkin {
    pub(super) fn put(self, conn: h1::Conn) {
        if !self.endpoint.is_removed() {
            self.endpoint.conns.put_http1(conn, self.max_idle);
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
    if !body.keeps_connection()
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
///
/// An HTTP/1.1 endpoint's response headers travel with its body, as the head's bytes
/// ([`UpstreamBody::head`]), and the response's own header map is empty: written on to an
/// HTTP/1.1 client they need no map. Whoever needs the map takes the head
/// ([`UpstreamBody::take_head`]) and builds it. The head is there until the body is read to
/// its end: its header index then goes back to the connection, for the next response to be
/// located in (no allocation per response).
pub struct UpstreamBody(Inner);

enum Inner {
    H1(h1::ResponseBody),
    H2(Incoming),
}

/// What reading an upstream body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl UpstreamBody {
    /// The response's headers, when they came from an HTTP/1.1 endpoint and were not taken.
    pub fn head(&self) -> Option<&RawHead> {
        match &self.0 {
            Inner::H1(b) => b.head(),
            Inner::H2(_) => None,
        }
    }

    /// Takes the response's headers (see [`UpstreamBody::head`]).
    pub fn take_head(&mut self) -> Option<RawHead> {
        match &mut self.0 {
            Inner::H1(b) => b.take_head(),
            Inner::H2(_) => None,
        }
    }

    /// Whether reading this body to the end lets its connection serve again.
    fn keeps_connection(&self) -> bool {
        match &self.0 {
            Inner::H1(b) => b.keeps_connection(),
            Inner::H2(_) => false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Inner::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::H1(b) => b.is_end_stream(),
            Inner::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::H1(b) => b.size_hint(),
            Inner::H2(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

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
        let body = UpBody::full(Bytes::new());
        let wire = h1::HeadWriter::new(&Method::GET, "/").finish(&Method::GET, &body);
        let req = Outgoing::Http1 {
            wire: &wire,
            method: Method::GET,
            body,
        };
        let sending = send(&endpoint, settings, &cluster.connections, req);
        // Every request's future is allocated whole, and the holes it leaves behind make up
        // part of the memory an idle keep-alive connection costs: connecting is boxed.
        let size = std::mem::size_of_val(&sending);
        eprintln!("send future: {size} bytes");
        assert!(size <= 1024, "the send future is {size} bytes");
    }

    #[test]
    fn a_response_is_small_enough_to_move_without_a_memcpy_call() {
        // A response moves about fifteen times between the upstream client and the client's
        // connection; up to 256 bytes the compiler copies inline instead of calling memcpy.
        let size = std::mem::size_of::<Response<UpstreamBody>>();
        let down = std::mem::size_of::<Response<crate::upstream::DownBody>>();
        eprintln!("response: {size} bytes, downstream response: {down} bytes");
        assert!(size <= 256 && down <= 256, "{size} / {down} bytes");
    }
}
