//! HTTP/1.1 to clients, in the connection's own task.
//!
//! The connection reads a request head (`httparse`, at most 100 headers and `max_header_bytes`),
//! runs the request through the chain, writes the response and reads the next head: requests
//! a client pipelines are answered in order. A request body is read by whoever consumes the
//! request (the upstream client): the body takes the connection's read side with it and gives
//! it back once read to its end; a body left unread closes the connection after the response.
//!
//! Request bodies are framed by RFC 9112 section 6: chunked when `transfer-encoding` ends in
//! `chunked`, else by `content-length`, else none. A request with both, with a coding other
//! than chunked last, with `transfer-encoding` in HTTP/1.0, or with conflicting lengths is
//! refused with `400` and the connection closed: those are how requests are smuggled. `Expect:
//! 100-continue` is answered at once. Responses: `content-length` when the body's size is
//! known, else chunked (HTTP/1.0 clients: until the close); none for `HEAD`, `204` and `304`;
//! a `date` header when the response has none.
//!
//! The first bytes of a connection that open an HTTP/2 preface hand the connection back to
//! the listener, which serves it with hyper.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::chain::{Lent, RequestCtx, RequestId, Site};
use crate::http1::{self, Chunk, DecodeError, Framing, MAX_HEADERS, RawHead, Role, Seen, Source};
use crate::runtime::Proxy;
use crate::telemetry::ListenerStats;
use crate::upstream::{BoxError, DownBody};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Response bytes gathered before a write.
const COALESCE_BYTES: usize = 16 * 1024;
/// The largest response buffer a connection keeps between requests.
const KEEP_OUT_BYTES: usize = 4 * 1024;
/// How an HTTP/2 connection with prior knowledge opens.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener's limits on its clients.
pub(super) struct Limits {
    pub max_head: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// How often a waiting connection checks its timeouts: often enough to close within a
    /// quarter of the shorter one.
    fn tick(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// How a connection's HTTP/1.1 service ended.
pub(super) enum Ended {
    Closed,
    /// The client opened with the HTTP/2 preface: the stream and what was read of it.
    Http2(TcpStream, Bytes),
}

/// The read side of a client connection, with what was read and not used yet.
pub struct Reader {
    io: OwnedReadHalf,
    buf: BytesMut,
}

impl Source for Reader {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Why a request head is refused before the chain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    Bad(&'static str),
    TooLarge,
    Timeout,
}

impl Reject {
    /// The `reason` label of `spindle_downstream_rejected_total`.
    fn label(self) -> &'static str {
        match self {
            Reject::Bad(_) => "bad_request",
            Reject::TooLarge => "head_too_large",
            Reject::Timeout => "header_timeout",
        }
    }

    /// The whole response, closing the connection.
    fn response(self) -> Vec<u8> {
        let (status, text) = match self {
            Reject::Bad(why) => (StatusCode::BAD_REQUEST, why),
            Reject::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ),
            Reject::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request head not received in time",
            ),
        };
        let mut out = Vec::with_capacity(160);
        status_line(&mut out, status);
        out.extend_from_slice(b"content-type: text/plain\r\ncontent-length: ");
        http1::push_decimal(&mut out, text.len() as u64 + 1);
        out.extend_from_slice(b"\r\nconnection: close\r\n");
        push_date(&mut out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
        out
    }
}

/// What the connection needs of a parsed request head; the head itself (method, target,
/// version, headers) is written into the request's context.
struct Head {
    framing: Framing,
    keep_alive: bool,
    expects_continue: bool,
}

/// What waiting for the next request head gave.
enum Next {
    Head(Head, Box<RequestCtx>),
    Closed,
    Http2,
    Reject(Reject),
}

/// Serves HTTP/1.1 requests on `stream` until either side closes, a timeout passes or
/// `shutdown` flips (the request in progress is answered first).
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    site: &Site,
    proxy: &Arc<Proxy>,
    limits: &Limits,
    stats: &ListenerStats,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Ended {
    if *shutdown.borrow_and_update() {
        return Ended::Closed;
    }
    let (io, mut wr) = stream.into_split();
    let mut reader = Some(Reader {
        io,
        buf: BytesMut::new(),
    });
    // The first tick comes at once, as an interval's does.
    let tick = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let watch = shutdown.clone();
    let stop = std::pin::pin!(shutdown.changed());
    let mut waiting = Waiting {
        tick,
        period: limits.tick(),
        stop,
        stopped: false,
        watch,
        armed: None,
    };
    let mut first = true;
    // Where the chain runs each request: its state (3.3 KB) is past what glibc's per-thread
    // cache keeps, so it is allocated at the connection's first request and reused for the
    // next ones, and given back once the connection idles for a tick.
    let mut chain_slot = None;
    // The per-try deadline's timer and the request context's allocation, lent to each request
    // (`chain::Lent`) and given back with the response; let go with the chain's state. The
    // next request's head is parsed into the context given back.
    let mut lent = Lent::default();
    // Where each response's head (and the start of its body) is gathered before it is
    // written: kept from one response to the next (no allocation per request) while the
    // connection is busy, let go with the chain's state.
    let mut out = Vec::new();
    loop {
        let Some(r) = reader.as_mut() else {
            return Ended::Closed;
        };
        let (head, ctx) = match waiting
            .next_head(r, limits, first, (&mut lent, peer), &mut || {
                chain_slot = None;
                out = Vec::new();
            })
            .await
        {
            Next::Head(head, ctx) => (head, ctx),
            Next::Closed => return Ended::Closed,
            Next::Http2 => {
                let Some(r) = reader.take() else {
                    return Ended::Closed;
                };
                return match r.io.reunite(wr) {
                    Ok(stream) => Ended::Http2(stream, r.buf.freeze()),
                    Err(_) => Ended::Closed,
                };
            }
            Next::Reject(why) => {
                stats.rejected(why.label());
                let _ = wr.write_all(&why.response()).await;
                let _ = wr.shutdown().await;
                return Ended::Closed;
            }
        };
        first = false;
        let Head {
            framing,
            mut keep_alive,
            expects_continue,
        } = head;
        let is_head = ctx.head.method == Method::HEAD;
        let http10 = ctx.head.version == Version::HTTP_10;
        let (body, back) = if framing.is_done() {
            (RequestBody::Empty, None)
        } else {
            let (tx, rx) = oneshot::channel();
            let body = ServerBody {
                reader: reader.take(),
                framing,
                back: Some(tx),
            };
            (RequestBody::H1(body), Some(rx))
        };
        if expects_continue
            && back.is_some()
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Ended::Closed;
        }
        let timer = lent
            .timer
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())));
        // In a slot of its own, not inline: the chain's state would otherwise weigh on every
        // idle connection.
        let (resp, returned) = placed(&mut chain_slot, || {
            crate::chain::handle(proxy, site, ctx, body, Some(timer))
        })
        .await;
        lent = returned;
        if let Some(mut back) = back {
            // A body not read to its end leaves the connection where no head can be found.
            match back.try_recv() {
                Ok(r) => reader = Some(r),
                Err(_) => keep_alive = false,
            }
        }
        let written = write_response(&mut wr, &mut out, resp, is_head, http10, keep_alive).await;
        if out.capacity() > KEEP_OUT_BYTES {
            // A large body went through: its buffer is not kept for the next small one.
            out = Vec::new();
        }
        match written {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = wr.shutdown().await;
                return Ended::Closed;
            }
        }
    }
}

/// The future `make` returns, pinned in `slot`: in the allocation the slot already has (the
/// finished future it replaces holds nothing), else in a new one.
///
/// The finished future is dropped before `make` runs, so that the new one can be built in
/// place: built first and then moved in, its 3.3 KB were copied on every request.
fn placed<F: Future>(
    slot: &mut Option<Pin<Box<Option<F>>>>,
    make: impl FnOnce() -> F,
) -> Pin<&mut F> {
    let pinned = match slot {
        Some(pinned) => {
            pinned.set(None);
            // SAFETY: nothing is moved out of the pinned place: it holds `None` (just dropped
            // in place), and the new future is written into it, to stay there until dropped.
            unsafe { std::ptr::write(pinned.as_mut().get_unchecked_mut(), Some(make())) };
            pinned
        }
        None => slot.insert(Box::pin(Some(make()))),
    };
    pinned
        .as_mut()
        .as_pin_mut()
        .expect("the slot was just filled")
}

/// What a connection waits on between requests besides its socket.
struct Waiting<'a, F> {
    /// The next tick, every `period` (a tick missed is skipped).
    tick: Pin<&'a mut tokio::time::Sleep>,
    period: Duration,
    /// Shutdown's `changed()`.
    stop: Pin<&'a mut F>,
    stopped: bool,
    /// The same shutdown flag, to look at without polling `stop`.
    watch: tokio::sync::watch::Receiver<bool>,
    /// The waker `tick` and `stop` hold since they were last polled (and found pending). While
    /// the connection's task is woken through that one (a task's waker stays the same), a
    /// wait looks at the timer's state and the flag's version instead of polling them again:
    /// a poll of each takes a lock (the watch's waiter list, the timer's state), about 350
    /// instructions per request together.
    armed: Option<Waker>,
}

enum Wake {
    Read(io::Result<usize>),
    Stop,
    Tick,
}

impl<F: Future> Waiting<'_, F> {
    /// Shutdown or the next tick, whichever came.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // A closed sender reads as a change, as `changed()` would end.
            if !self.stopped && self.watch.has_changed().unwrap_or(true) {
                self.stopped = true;
                return Poll::Ready(Wake::Stop);
            }
            if self.tick.is_elapsed() {
                self.armed = None;
                self.next_tick();
                return Poll::Ready(Wake::Tick);
            }
            return Poll::Pending;
        }
        if !self.stopped && self.stop.as_mut().poll(cx).is_ready() {
            self.stopped = true;
            return Poll::Ready(Wake::Stop);
        }
        if self.tick.as_mut().poll(cx).is_ready() {
            self.next_tick();
            return Poll::Ready(Wake::Tick);
        }
        self.armed = Some(cx.waker().clone());
        Poll::Pending
    }

    fn next_tick(&mut self) {
        let next = tokio::time::Instant::now() + self.period;
        self.tick.as_mut().reset(next);
    }

    /// Reads until a request head is complete, and parses it into the context `lent` has
    /// (a new one for `peer` when it has none). An empty buffer waits at most the idle
    /// timeout, a started head the header timeout (checked at each tick, so up to a tick
    /// later; no clock is read per request). At each tick that finds no request begun, what
    /// was lent is let go of and `idle` runs.
    async fn next_head(
        &mut self,
        r: &mut Reader,
        limits: &Limits,
        first: bool,
        (lent, peer): (&mut Lent, SocketAddr),
        idle: &mut (dyn FnMut() + Send),
    ) -> Next {
        let mut since: Option<(Instant, bool)> = None;
        loop {
            if first && !r.buf.is_empty() {
                let n = r.buf.len().min(PREFACE.len());
                if r.buf[..n] == PREFACE[..n] {
                    if n == PREFACE.len() {
                        return Next::Http2;
                    }
                } else if let Some(next) = parse_or_reject(&mut r.buf, limits, &mut lent.ctx, peer)
                {
                    return next;
                }
            } else if !r.buf.is_empty()
                && let Some(next) = parse_or_reject(&mut r.buf, limits, &mut lent.ctx, peer)
            {
                return next;
            }
            let wake = poll_fn(|cx| {
                if let Poll::Ready(res) = r.poll_fill(cx) {
                    return Poll::Ready(Wake::Read(res));
                }
                self.poll_wake(cx)
            })
            .await;
            match wake {
                Wake::Read(Ok(0)) | Wake::Read(Err(_)) => return Next::Closed,
                Wake::Read(Ok(_)) => {}
                // Draining: an idle connection closes, so does one whose head is unfinished.
                Wake::Stop => return Next::Closed,
                Wake::Tick => {
                    let now = Instant::now();
                    let empty = r.buf.is_empty();
                    if empty {
                        *lent = Lent::default();
                        idle();
                    }
                    match since {
                        Some((at, was_empty)) if was_empty == empty => {
                            let limit = if empty {
                                limits.idle_timeout
                            } else {
                                limits.header_timeout
                            };
                            if now.duration_since(at) >= limit {
                                return if empty {
                                    Next::Closed
                                } else {
                                    Next::Reject(Reject::Timeout)
                                };
                            }
                        }
                        _ => since = Some((now, empty)),
                    }
                }
            }
        }
    }
}

/// A complete head from the buffer, parsed into the context in `spare` (a new one for `peer`
/// when it has none), a refusal, or `None` to read more.
fn parse_or_reject(
    buf: &mut BytesMut,
    limits: &Limits,
    spare: &mut Option<Box<RequestCtx>>,
    peer: SocketAddr,
) -> Option<Next> {
    let mut ctx = spare.take().unwrap_or_else(|| {
        let (head, ()) = Request::new(()).into_parts();
        Box::new(RequestCtx::new(head, peer, RequestId::NONE))
    });
    let next = match parse_head(buf, limits.max_head, &mut ctx) {
        Ok(Some(head)) => return Some(Next::Head(head, ctx)),
        Ok(None) if buf.len() >= limits.max_head => Some(Next::Reject(Reject::TooLarge)),
        Ok(None) => None,
        Err(why) => Some(Next::Reject(why)),
    };
    *spare = Some(ctx);
    next
}

/// One request head from the buffer, if a complete one is there: its method, target, version
/// and headers written into `ctx` (released: it holds no request).
fn parse_head(
    buf: &mut BytesMut,
    max_head: usize,
    ctx: &mut RequestCtx,
) -> Result<Option<Head>, Reject> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(httparse::Error::Version) => return Err(Reject::Bad("unsupported HTTP version")),
        Err(_) => return Err(Reject::Bad("malformed request head")),
    };
    if len > max_head {
        return Err(Reject::TooLarge);
    }
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(Reject::Bad("bad method"))?;
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let path = req.path.unwrap_or_default();
    let at = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = at..at + path.len();
    let (located, seen) = RawHead::locate_into(buf, req.headers, std::mem::take(&mut ctx.spare));
    let head = RawHead::new(buf.split_to(len).freeze(), located);
    let uri = Uri::from_maybe_shared(head.slice(target))
        .map_err(|_| Reject::Bad("bad request target"))?;
    let framing = if seen.transfer_encoding || seen.content_length {
        framing(&head, seen, version)?
    } else {
        Framing::Done
    };
    let keep_alive = match version {
        Version::HTTP_10 => {
            seen.connection && http1::lists(head.values(Role::Connection), "keep-alive")
        }
        _ => !(seen.connection && http1::lists(head.values(Role::Connection), "close")),
    };
    // Answered here; the endpoint gets the body without being asked. Rare enough that such a
    // request's headers go into a map at once, the expectation taken out.
    let mut expects_continue = false;
    if seen.expect {
        let mut headers = head.to_map();
        expects_continue = version == Version::HTTP_11
            && headers
                .remove(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        ctx.head.headers = headers;
    } else {
        ctx.raw = Some(head);
    }
    ctx.head.method = method;
    ctx.head.uri = uri;
    ctx.head.version = version;
    Ok(Some(Head {
        framing,
        keep_alive,
        expects_continue,
    }))
}

/// A request body's framing (RFC 9112 section 6), refusing the shapes requests are smuggled in.
fn framing(head: &RawHead, seen: Seen, version: Version) -> Result<Framing, Reject> {
    let chunked = if seen.transfer_encoding {
        http1::last_coding_is_chunked(head.values(Role::TransferEncoding))
    } else {
        None
    };
    Ok(match chunked {
        Some(_) if version == Version::HTTP_10 => {
            return Err(Reject::Bad("transfer-encoding in an HTTP/1.0 request"));
        }
        Some(_) if seen.content_length => {
            return Err(Reject::Bad("both transfer-encoding and content-length"));
        }
        Some(true) => Framing::Chunked(Chunk::Size),
        Some(false) => return Err(Reject::Bad("transfer-encoding does not end in chunked")),
        None => match http1::length_of(head.values(Role::ContentLength)).map_err(Reject::Bad)? {
            Some(n) => Framing::Length(n),
            None => Framing::Done,
        },
    })
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `date: <now>\r\n`, formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// How a response body is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (`HEAD`, `204`, `304`).
    None,
    Length(u64),
    Chunked,
    /// Until the close (an HTTP/1.0 client, length unknown).
    Close,
}

/// Writes the response, gathered in `out` (cleared first): `Ok(true)` when the connection
/// can take another request.
async fn write_response(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    resp: Response<DownBody>,
    is_head: bool,
    http10: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let no_body = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let out_framing = if no_body {
        Out::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Out::Length(n),
            None if http10 => Out::Close,
            None => Out::Chunked,
        }
    };
    let keep_alive = keep_alive && out_framing != Out::Close;
    out.clear();
    out.reserve(256);
    status_line(out, status);
    // A HEAD or 304 response's `content-length` says what the body would be; elsewhere the
    // body decides.
    let keep_length = no_body && status != StatusCode::NO_CONTENT;
    let (mut has_length, mut has_date) = (false, false);
    if let Some(head) = body.head() {
        // An HTTP/1.1 endpoint's headers, as it sent them, without those for its hop.
        head.write_lines(out, |_, _, role| match role {
            Role::ContentLength if keep_length => {
                has_length = true;
                true
            }
            Role::Date => {
                has_date = true;
                true
            }
            Role::ContentLength | Role::Connection | Role::TransferEncoding | Role::HopByHop => {
                false
            }
            Role::EndToEnd
            | Role::Host
            | Role::Expect
            | Role::RequestId
            | Role::ForwardedFor
            | Role::TraceParent
            | Role::TraceState => true,
        });
    }
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_date |= name == header::DATE;
        if name == header::CONTENT_LENGTH {
            if !keep_length {
                continue;
            }
            has_length = true;
        }
        http1::push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match out_framing {
        Out::Length(n) => push_length(out, n),
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None if is_head && !has_length => {
            if let Some(n) = body.size_hint().exact().filter(|&n| n > 0) {
                push_length(out, n);
            }
        }
        Out::None | Out::Close => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        push_date(out);
    }
    out.extend_from_slice(b"\r\n");
    if out_framing == Out::None {
        wr.write_all(out).await?;
        return Ok(keep_alive);
    }
    let complete = write_body(wr, out, body, out_framing).await?;
    Ok(keep_alive && complete)
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    http1::push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Writes the body after `out` (the head), gathering what is ready into one write. `Ok(false)`
/// when the body failed or did not match its length: the client cannot tell where it ended,
/// so the connection closes.
async fn write_body(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    body: DownBody,
    framing: Out,
) -> io::Result<bool> {
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    let mut trailers = None;
    loop {
        // What is ready goes into `out`; before waiting for more, `out` is written.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    wr.write_all(out).await?;
                    out.clear();
                }
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::debug!("response body failed: {e}");
                wr.write_all(out).await?;
                return Ok(false);
            }
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let Out::Length(n) = framing
            && sent > n
        {
            wr.write_all(out).await?;
            return Ok(false);
        }
        if framing == Out::Chunked {
            http1::push_hex(out, data.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        if out.len() + data.len() <= COALESCE_BYTES {
            out.extend_from_slice(&data);
        } else {
            wr.write_all(out).await?;
            out.clear();
            wr.write_all(&data).await?;
        }
        if framing == Out::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= COALESCE_BYTES {
            wr.write_all(out).await?;
            out.clear();
        }
    }
    let complete = match framing {
        Out::Length(n) => sent == n,
        Out::Chunked => {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flatten() {
                http1::push_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            true
        }
        Out::Close | Out::None => true,
    };
    if !out.is_empty() {
        wr.write_all(out).await?;
    }
    Ok(complete)
}

/// A request body: none, read from an HTTP/1.1 connection, or hyper's HTTP/2 stream.
pub enum RequestBody {
    Empty,
    H1(ServerBody),
    H2(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H1(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::H1(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
        }
    }
}

/// A request body read from its client connection. Read to the end, it gives the connection's
/// read side back for the next request.
pub struct ServerBody {
    reader: Option<Reader>,
    framing: Framing,
    back: Option<oneshot::Sender<Reader>>,
}

impl ServerBody {
    /// At the end of the body: the read side goes back to the connection.
    fn settle(&mut self) {
        if !self.framing.is_done() {
            return;
        }
        self.framing = Framing::Done;
        if let (Some(r), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(r);
        }
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = DecodeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DecodeError>>> {
        let this = self.get_mut();
        let next = ready!(http1::poll_body(&mut this.framing, &mut this.reader, cx));
        this.settle();
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing
            .exact()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for ServerBody {
    /// A body not read but already received whole (a local response to a small upload) is
    /// skipped, so the connection can serve on.
    fn drop(&mut self) {
        if let (Framing::Length(n), Some(r)) = (self.framing, self.reader.as_mut())
            && (r.buf.len() as u64) >= n
        {
            r.buf.advance(n as usize);
            self.framing = Framing::Done;
            self.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_ctx() -> Box<RequestCtx> {
        let peer = "127.0.0.1:4000".parse().expect("address");
        Box::new(RequestCtx::new(
            Request::new(()).into_parts().0,
            peer,
            RequestId::NONE,
        ))
    }

    /// A head parsed into a new context.
    fn parse(text: &str) -> Result<Option<(Head, Box<RequestCtx>)>, Reject> {
        let mut buf = BytesMut::from(text.as_bytes());
        let mut ctx = new_ctx();
        Ok(parse_head(&mut buf, 16 * 1024, &mut ctx)?.map(|head| (head, ctx)))
    }

    #[test]
    fn heads_are_parsed_with_their_framing() {
        let (head, ctx) = parse(
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ctx.head.method, Method::POST);
        assert_eq!(ctx.head.uri, "/a?b=1");
        // The headers stay as they came, no map built.
        assert!(ctx.head.headers.is_empty());
        let raw = ctx.raw.as_ref().expect("the client's head");
        assert_eq!(raw.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(raw.first(Role::Host), Some(&b"x"[..]));
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive && !head.expects_continue);

        let (head, ctx) = parse("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked(Chunk::Size));
        assert!(!head.keep_alive && head.expects_continue);
        // An expectation answered here is taken out: such a head goes into a map.
        assert!(ctx.raw.is_none());
        assert!(!ctx.head.headers.contains_key(header::EXPECT));
        assert_eq!(ctx.head.headers["transfer-encoding"], "chunked");

        let (head, ctx) = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            (ctx.head.version, head.keep_alive),
            (Version::HTTP_10, false)
        );
        let (head, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.keep_alive);
        assert_eq!(head.framing, Framing::Done);

        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn a_released_context_takes_the_next_head_as_a_new_one_would() {
        let mut buf = BytesMut::from(
            &b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nContent-Length: 0\r\n\r\nGET /b?c HTTP/1.0\r\nHost: y\r\n\r\n"[..],
        );
        let mut ctx = new_ctx();
        parse_head(&mut buf, 16 * 1024, &mut ctx).unwrap().unwrap();
        assert_eq!(ctx.header("x-a"), Some(&b"1"[..]));
        ctx.release();
        let head = parse_head(&mut buf, 16 * 1024, &mut ctx).unwrap().unwrap();
        let (fresh_head, fresh) = parse("GET /b?c HTTP/1.0\r\nHost: y\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(ctx.head.method, fresh.head.method);
        assert_eq!(ctx.head.uri, fresh.head.uri);
        assert_eq!(ctx.head.version, fresh.head.version);
        assert_eq!(ctx.header("host"), Some(&b"y"[..]));
        assert_eq!(ctx.header("x-a"), None, "nothing of the head before");
        assert_eq!(ctx.header_all("host"), fresh.header_all("host"));
        assert_eq!(
            (head.framing, head.keep_alive),
            (fresh_head.framing, fresh_head.keep_alive)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn smuggling_shapes_and_broken_heads_are_refused() {
        let bad = |text: &str| match parse(text) {
            Err(Reject::Bad(why)) => why,
            other => panic!(
                "{text:?} gave {:?}",
                other.map(|h| h.map(|(h, _)| h.framing))
            ),
        };
        assert!(
            bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
                .contains("both")
        );
        assert!(
            bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").contains("chunked")
        );
        assert!(bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").contains("HTTP/1.0"));
        assert!(
            bad("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
                .contains("content-length")
        );
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").contains("content-length"));
        assert!(bad("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").contains("malformed"));
        assert!(bad("GET / HTTP/2.0\r\n\r\n").contains("version"));
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
            Some(Reject::TooLarge)
        );
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nx: 0123456789\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut buf, 20, &mut new_ctx()).err(),
            Some(Reject::TooLarge)
        );
    }

    #[test]
    fn refusals_are_complete_responses_that_close() {
        let text = String::from_utf8(Reject::Bad("bad method").response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n") && text.contains("date: "));
        assert!(text.ends_with("\r\n\r\nbad method\n"));
        assert!(text.contains("content-length: 11\r\n"));
        let text = String::from_utf8(Reject::TooLarge.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "));
    }
}
