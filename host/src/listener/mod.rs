//! Downstream listeners: accept TCP, serve HTTP/1.1 (our own, `h1`) and HTTP/2 with prior
//! knowledge (hyper), enforce header size, header read timeout, idle timeout and connection
//! limits, and drain gracefully on shutdown.

mod h1;
mod io;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use self::h1::{Ended, Limits};
pub use self::h1::{RequestBody, ServerBody};
use self::io::ActivityIo;
use crate::chain::{RequestCtx, RequestId};
use crate::config::ListenerConfig;
use crate::runtime::Proxy;
use crate::telemetry::ListenerStats;

/// Open downstream connections of every listener, for draining.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

struct ConnGuard(Arc<Connections>, Arc<ListenerStats>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.1.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts until `shutdown` flips, then asks every connection to finish its
/// in-flight requests and close.
pub async fn serve(
    listener: TcpListener,
    cfg: ListenerConfig,
    proxy: Arc<Proxy>,
    conns: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = Arc::new(crate::chain::Site {
        name: cfg.name.clone(),
        access_log: proxy.access_logs.get(&cfg.name),
    });
    let stats = proxy.metrics.listener(&cfg.name);
    let limit = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let limits = Arc::new(Limits {
        max_head: cfg.max_header_bytes.max(1),
        header_timeout: Duration::from_millis(cfg.header_read_timeout_ms.max(1)),
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms.max(1)),
    });
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        conns.open.fetch_add(1, Ordering::AcqRel);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard(conns.clone(), stats.clone());
        let proxy = proxy.clone();
        let name = name.clone();
        let builder = builder.clone();
        let limits = limits.clone();
        let stats = stats.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            let ended = h1::serve(stream, peer, &name, &proxy, &limits, &stats, &mut shutdown);
            if let Ended::Http2(stream, read) = ended.await {
                let idle = limits.idle_timeout;
                serve_http2(stream, read, peer, name, proxy, builder, idle, shutdown).await;
            }
        });
    }
}

/// Serves an HTTP/2 connection (its first bytes already read) with hyper until it closes,
/// idles out or drains.
#[allow(clippy::too_many_arguments)]
async fn serve_http2(
    stream: tokio::net::TcpStream,
    read: Bytes,
    peer: SocketAddr,
    name: Arc<crate::chain::Site>,
    proxy: Arc<Proxy>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (io, activity) = ActivityIo::new(stream, read);
    let active = Arc::new(AtomicUsize::new(0));
    let svc_active = active.clone();
    let svc = service_fn(move |req| {
        let proxy = proxy.clone();
        let name = name.clone();
        let active = svc_active.clone();
        // Boxed: hyper keeps room for the service's future inside every
        // connection, idle ones included; a box keeps that room one pointer
        // wide and the request's state on the heap only while it runs.
        Box::pin(async move {
            active.fetch_add(1, Ordering::AcqRel);
            let (head, body) = req.into_parts();
            let ctx = Box::new(RequestCtx::new(head, peer, RequestId::NONE));
            let (resp, _) =
                crate::chain::handle(&proxy, &name, ctx, RequestBody::H2(body), None).await;
            active.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(resp)
        })
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let tick = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticker.tick(), if !closing => {
                if active.load(Ordering::Acquire) == 0 && activity.idle_for() >= idle_timeout {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
