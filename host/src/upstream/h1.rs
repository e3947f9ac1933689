//! HTTP/1.1 to endpoints, written for what a proxy sends and receives.
//!
//! A general client (hyper's `client::conn`) runs each connection in a task of its own and
//! hands requests, responses and body chunks between that task and the request's through
//! channels. Here the request's own task writes the request and reads the response on the
//! socket, and the response body reads its bytes straight from it: no second task, no channel,
//! no wake-up in between.
//!
//! Requests: the head as the chain left it (`content-length` is written from the body, a body
//! of unknown length is sent chunked). Responses: status line and headers parsed with
//! `httparse` (at most 100 headers, 64 KiB of head); `1xx` heads other than `101` are skipped;
//! the body is framed by RFC 9112 section 6.3: none for `HEAD`, `204` and `304`, chunked when
//! `transfer-encoding` ends in `chunked` (chunk extensions and trailers are read and dropped),
//! else `content-length`, else until the endpoint closes. A connection goes back to its endpoint
//! only when its response was read to the end, nothing follows it, and neither side asked to
//! close.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::body::UpBody;
use super::pool::{BoxError, Checkin, Open};
use crate::http1::{
    self, Chunk, DecodeError, Framing, MAX_HEADERS, RawHead, Role, Seen, Source, Spare,
};

/// The largest response head read (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A request body up to this size is written in the same write as the head.
const COALESCE_BYTES: usize = 16 * 1024;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The endpoint closed the connection before the response was complete.
    #[error("connection closed before the response was complete")]
    Incomplete,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
    #[error("the request body did not match its content-length")]
    BodyLength,
}

impl From<DecodeError> for H1Error {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Incomplete => H1Error::Incomplete,
            DecodeError::Io(e) => H1Error::Io(e),
            DecodeError::Invalid(why) => H1Error::Invalid(why),
        }
    }
}

/// One HTTP/1.1 connection to an endpoint, between exchanges. Its state is boxed once, when
/// the connection opens: a response body holds the connection, and a response moves several
/// times on its way to the client, each move copying what is inline.
pub struct Conn(Box<ConnState>);

/// What a [`Conn`] holds.
pub struct ConnState {
    io: TcpStream,
    buf: BytesMut,
    /// The header index of the last response's head, given back when its body was read
    /// ([`ResponseBody`]), for the next head to be located in.
    spare: Spare,
    /// Uncounts the connection when it closes.
    _open: Open,
}

impl std::ops::Deref for Conn {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.0
    }
}

impl Conn {
    pub(super) fn new(io: TcpStream, open: Open) -> Self {
        Self(Box::new(ConnState {
            io,
            buf: BytesMut::new(),
            spare: Spare::default(),
            _open: open,
        }))
    }

    /// Whether the endpoint closed the idle connection or sent something unasked. Asks the
    /// socket only when the runtime has seen it become readable, so a quiet connection costs
    /// no system call.
    pub fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.io.try_read(&mut probe) {
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            // Closed (0), or bytes no request asked for.
            Ok(_) => true,
        }
    }

    /// Writes the request: `wire` (from a [`HeadWriter`]), then what of the body it does
    /// not hold. A complete body is only read, so the request can be written again elsewhere
    /// when this fails.
    pub async fn write_request(&mut self, wire: &Wire, body: &mut UpBody) -> Result<(), H1Error> {
        self.io.write_all(&wire.bytes).await?;
        if wire.has_body {
            return Ok(());
        }
        match body {
            UpBody::Full(b) => {
                self.io.write_all(b.as_deref().unwrap_or_default()).await?;
                Ok(())
            }
            UpBody::Stream { .. } => {
                let length = body.size_hint().exact();
                // Boxed: rare, and its state would weigh on every request's future.
                Box::pin(self.write_stream(body, length)).await
            }
        }
    }

    /// Streams a body: raw when its length is known (and checked), else chunked.
    async fn write_stream(
        &mut self,
        body: &mut UpBody,
        length: Option<u64>,
    ) -> Result<(), H1Error> {
        let mut sent = 0u64;
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            let frame = frame.map_err(H1Error::RequestBody)?;
            // Trailers are not sent: the chunked encoding below ends without them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            match length {
                Some(n) if sent > n => return Err(H1Error::BodyLength),
                Some(_) => self.io.write_all(&data).await?,
                None => {
                    let mut size = Vec::with_capacity(18);
                    http1::push_hex(&mut size, data.len() as u64);
                    size.extend_from_slice(b"\r\n");
                    self.io.write_all(&size).await?;
                    self.io.write_all(&data).await?;
                    self.io.write_all(b"\r\n").await?;
                }
            }
        }
        match length {
            Some(n) if sent != n => Err(H1Error::BodyLength),
            Some(_) => Ok(()),
            None => Ok(self.io.write_all(b"0\r\n\r\n").await?),
        }
    }

    /// Reads the response head (skipping `1xx` ones) to a response whose body reads the rest
    /// from this connection, which it gives back through `checkin` once read. The response's
    /// header map is empty: the headers stay in the body's [`RawHead`].
    pub async fn read_response(
        mut self,
        method: &Method,
        checkin: Checkin,
    ) -> Result<(Response<()>, ResponseBody), H1Error> {
        let (head, framing) = self.read_head(method).await?;
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        let mut body = ResponseBody {
            conn: Some(self),
            framing,
            keep_alive: head.keep_alive,
            checkin: Some(checkin),
            head: Some(head.head),
        };
        // A body that ends before it starts (HEAD, 204, 304, a length of 0) gives the
        // connection back now; its head stays with it, unread yet.
        body.settle(false);
        Ok((resp, body))
    }

    /// The final response head, its body's framing and whether the connection may be reused.
    async fn read_head(&mut self, method: &Method) -> Result<(Head, Framing), H1Error> {
        loop {
            if let Some(mut head) = self.parse_head()? {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(H1Error::Invalid("101 without an upgrade request"));
                    }
                    continue;
                }
                let framing = framing(method, &head)?;
                // A response read until the close, or one with both framings (RFC 9112
                // 6.3.3), leaves nothing to reuse.
                head.keep_alive = head.keep_alive
                    && !matches!(framing, Framing::Close)
                    && !(head.seen.transfer_encoding && head.seen.content_length);
                return Ok((head, framing));
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(H1Error::Invalid("response head too large"));
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(H1Error::Incomplete);
            }
        }
    }

    /// One head from the buffer, if a complete one is there.
    fn parse_head(&mut self) -> Result<Option<Head>, H1Error> {
        let state = &mut *self.0;
        if state.buf.is_empty() {
            return Ok(None);
        }
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len =
            match config.parse_response_with_uninit_headers(&mut parsed, &state.buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(H1Error::Invalid("more than 100 headers"));
                }
                Err(_) => return Err(H1Error::Invalid("malformed head")),
            };
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(H1Error::Invalid("bad status"))?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Kept as the head's bytes and where each header is in them: the headers are only
        // written on to the client, and a map is built when someone needs one.
        let spare = std::mem::take(&mut state.spare);
        let (located, seen) = RawHead::locate_into(&state.buf, parsed.headers, spare);
        let head = RawHead::new(state.buf.split_to(len).freeze(), located);
        let keep_alive = match version {
            Version::HTTP_10 => {
                seen.connection && http1::lists(head.values(Role::Connection), "keep-alive")
            }
            _ => !(seen.connection && http1::lists(head.values(Role::Connection), "close")),
        };
        Ok(Some(Head {
            status,
            version,
            head,
            seen,
            keep_alive,
        }))
    }
}

/// A response head as read.
struct Head {
    status: StatusCode,
    version: Version,
    head: RawHead,
    seen: Seen,
    /// Whether the endpoint keeps the connection open.
    keep_alive: bool,
}

impl Source for Conn {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Through the stream's `poll_read`, which forgets the socket's readiness after a short
    /// read: the next read waits for the runtime instead of making a system call that would
    /// find nothing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let state = &mut *self.0;
        state.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut state.io), cx, &mut state.buf)
    }
}

/// A request as written on the wire: its head, and its body when that is complete and small.
pub struct Wire {
    bytes: Vec<u8>,
    /// Whether `bytes` ends with the whole body.
    has_body: bool,
}

/// The most a [`Wire`]'s buffer keeps of its room for the next request head
/// ([`Wire::into_buffer`]): one that carried a larger body goes back to the allocator.
const KEEP_WIRE_BYTES: usize = 4096;

impl Wire {
    /// The buffer, for the next head to be written in ([`HeadWriter::new_in`]); an empty one
    /// when it grew past what a head needs.
    pub fn into_buffer(self) -> Vec<u8> {
        if self.bytes.capacity() > KEEP_WIRE_BYTES {
            return Vec::new();
        }
        self.bytes
    }
}

/// A request head being written in HTTP/1.1 form.
pub struct HeadWriter {
    out: Vec<u8>,
    had_length: bool,
}

impl HeadWriter {
    /// The request line, with an origin-form `target`.
    pub fn new(method: &Method, target: &str) -> Self {
        Self::new_in(Vec::new(), method, target)
    }

    /// [`HeadWriter::new`], written in `buf`'s allocation (what it holds is cleared): a
    /// [`Wire`]'s, once sent ([`Wire::into_buffer`]).
    pub fn new_in(mut buf: Vec<u8>, method: &Method, target: &str) -> Self {
        buf.clear();
        buf.reserve(256);
        let mut out = buf;
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            out,
            had_length: false,
        }
    }

    /// Adds a header, except `content-length` and `transfer-encoding`: those follow from the
    /// body.
    pub fn header(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            self.had_length = true;
            return;
        }
        if name == header::TRANSFER_ENCODING {
            return;
        }
        self.raw(name.as_str().as_bytes(), value);
    }

    /// Adds a header with its [`Role`], except `content-length` and `transfer-encoding`.
    pub fn header_bytes(&mut self, name: &[u8], role: Role, value: &[u8]) {
        match role {
            Role::ContentLength => self.had_length = true,
            Role::TransferEncoding => {}
            _ => self.raw(name, value),
        }
    }

    /// Adds the headers of a client's head that `keep` accepts (see [`RawHead::write_lines`]),
    /// except `content-length` and `transfer-encoding`.
    pub fn headers_of(&mut self, head: &RawHead, mut keep: impl FnMut(&[u8], &[u8], Role) -> bool) {
        let had_length = &mut self.had_length;
        head.write_lines(&mut self.out, |name, value, role| match role {
            Role::ContentLength => {
                *had_length |= keep(name, value, role);
                false
            }
            Role::TransferEncoding => false,
            _ => keep(name, value, role),
        });
    }

    /// Adds a header whose name is neither of those.
    pub fn raw(&mut self, name: &[u8], value: &[u8]) {
        http1::push_header(&mut self.out, name, value);
    }

    /// `x-forwarded-for`: the `earlier` values (each followed by `, `), then `client`.
    pub fn forwarded_for(&mut self, earlier: &[u8], client: std::net::IpAddr) {
        self.out.extend_from_slice(b"x-forwarded-for: ");
        self.out.extend_from_slice(earlier);
        crate::chain::push_ip(&mut self.out, client);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the body's framing: `content-length` when its size is known (none
    /// for an empty body of a method that takes none, unless the client sent one), else
    /// chunked. A complete body of up to 16 KiB follows in the same bytes (one write).
    pub fn finish(mut self, method: &Method, body: &UpBody) -> Wire {
        let out = &mut self.out;
        match body.size_hint().exact() {
            Some(0)
                if !self.had_length
                    && !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {}
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                http1::push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        let has_body = match body {
            UpBody::Full(b) => {
                let b = b.as_deref().unwrap_or_default();
                let small = b.len() <= COALESCE_BYTES;
                if small {
                    out.extend_from_slice(b);
                }
                small
            }
            UpBody::Stream { .. } => false,
        };
        Wire {
            bytes: self.out,
            has_body,
        }
    }
}

/// The request in HTTP/1.1 form: origin-form target, the headers as given.
#[cfg(test)]
fn encode_request(parts: &http::request::Parts, body: &UpBody) -> Wire {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = HeadWriter::new(&parts.method, target);
    for (name, value) in &parts.headers {
        head.header(name, value.as_bytes());
    }
    head.finish(&parts.method, body)
}

fn framing(method: &Method, head: &Head) -> Result<Framing, H1Error> {
    let status = head.status;
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    if head.seen.transfer_encoding
        && let Some(chunked) =
            http1::last_coding_is_chunked(head.head.values(Role::TransferEncoding))
    {
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        });
    }
    let length = if head.seen.content_length {
        http1::length_of(head.head.values(Role::ContentLength)).map_err(H1Error::Invalid)?
    } else {
        None
    };
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// The body of a response read from a [`Conn`]. Read to the end, it gives the connection
/// back to its endpoint (when it may be reused); dropped before, the connection closes.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    checkin: Option<Checkin>,
    /// The response's headers, until taken or the body is read to its end: the header index
    /// then goes back to the connection, for its next response.
    head: Option<RawHead>,
}

impl ResponseBody {
    /// The response's headers, unless taken.
    pub fn head(&self) -> Option<&RawHead> {
        self.head.as_ref()
    }

    /// Takes the response's headers.
    pub fn take_head(&mut self) -> Option<RawHead> {
        self.head.take()
    }

    /// Whether the connection can serve again once this body is read.
    pub fn keeps_connection(&self) -> bool {
        self.keep_alive && self.conn.is_some() && self.checkin.is_some()
    }

    /// At the end of the body: the connection goes back (with the head's header index when
    /// `read`: the body was read to its end, and with it the head), or closes.
    fn settle(&mut self, read: bool) {
        if !self.framing.is_done() {
            return;
        }
        self.framing = Framing::Done;
        let mut conn = self.conn.take();
        if read && let (Some(conn), Some(head)) = (conn.as_mut(), self.head.take()) {
            conn.spare = head.into_spare();
        }
        // Bytes past the response were not asked for: such a connection is not reused.
        if let (Some(conn), Some(checkin)) = (conn, self.checkin.take())
            && self.keep_alive
            && conn.buf.is_empty()
        {
            checkin.put(conn);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let next = ready!(http1::poll_body(&mut this.framing, &mut this.conn, cx));
        this.settle(true);
        Poll::Ready(next.map(|r| r.map(Frame::data).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use http::Request;
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::{Cluster, Endpoint, Outgoing, SendError, Upstreams, send};

    /// An endpoint that answers each request head it reads on one connection with the next of
    /// `answers`, each written in the given pieces, then closes.
    async fn endpoint(answers: Vec<Vec<&'static [u8]>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut seen = Vec::new();
            for pieces in answers {
                // Up to the end of a request head (these requests have no body).
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.clear();
                for piece in pieces {
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // Keep the connection until the client is done with it.
            let mut rest = [0u8; 64];
            let _ = s.read(&mut rest).await;
        });
        addr
    }

    /// An endpoint that reads one request, writes `answer` and closes the connection.
    async fn answer_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    fn cluster_of(addr: SocketAddr) -> (Upstreams, Arc<Cluster>, Arc<Endpoint>) {
        let u = Upstreams::new(Instant::now());
        let cfg: crate::config::ClusterConfig =
            toml::from_str(&format!("endpoints = [\"{addr}\"]")).expect("cluster config");
        u.apply(&[("api".into(), cfg)]);
        let cluster = u.cluster("api").expect("cluster");
        let ep = cluster.members()[0].clone();
        (u, cluster, ep)
    }

    async fn get(
        cluster: &Cluster,
        ep: &Arc<Endpoint>,
        method: Method,
    ) -> Result<(Response<()>, Result<Bytes, String>), SendError> {
        let body = UpBody::full(Bytes::new());
        let wire = HeadWriter::new(&method, "/").finish(&method, &body);
        let req = Outgoing::Http1 {
            wire: &wire,
            method,
            body,
        };
        let settings = Cluster::pool_settings(&cluster.settings.load());
        let resp = send(ep, settings, &cluster.connections, req).await?;
        let (mut parts, mut body) = resp.into_parts();
        assert!(parts.headers.is_empty(), "the headers travel with the body");
        parts.headers = body.take_head().expect("an HTTP/1.1 head").to_map();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string());
        Ok((Response::from_parts(parts, ()), body))
    }

    #[tokio::test]
    async fn chunked_bodies_split_anywhere_are_read_and_the_connection_reused() {
        let addr = endpoint(vec![
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n5;ext=1\r",
                b"\nhel",
                b"lo\r\n6\r\n world\r\n0\r\ntrailer: x\r\n",
                b"\r\n",
            ],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
        ])
        .await;
        let (_u, cluster, ep) = cluster_of(addr);
        let (resp, body) = get(&cluster, &ep, Method::GET).await.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(body.expect("body"), "hello world");
        assert_eq!(
            ep.conns.idle_http1(),
            1,
            "read to the end: back to the endpoint"
        );
        let (_, body) = get(&cluster, &ep, Method::GET).await.expect("second");
        assert_eq!(body.expect("body"), "ok");
        assert_eq!(
            cluster
                .connections
                .opened
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_its_header_index_to_the_connection() {
        let addr = endpoint(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\nx-c: 3\r\n\r\nok"],
            vec![b"HTTP/1.1 200 OK\r\nx-b: 2\r\ncontent-length: 3\r\n\r\nyes"],
        ])
        .await;
        let (_u, cluster, ep) = cluster_of(addr);
        let settings = Cluster::pool_settings(&cluster.settings.load());
        let exchange = async |want: &str| {
            let body = UpBody::full(Bytes::new());
            let wire = HeadWriter::new(&Method::GET, "/").finish(&Method::GET, &body);
            let req = Outgoing::Http1 {
                wire: &wire,
                method: Method::GET,
                body,
            };
            let resp = send(&ep, settings, &cluster.connections, req)
                .await
                .expect("response");
            let body = resp.into_body();
            // Written on as it came, the head is read before the body.
            let head = body.head().expect("an HTTP/1.1 head");
            let headers: Vec<_> = head
                .iter()
                .map(|(n, v, _)| (n.to_vec(), v.to_vec()))
                .collect();
            let data = body.collect().await.expect("body").to_bytes();
            assert_eq!(data, want);
            headers
        };
        let first = exchange("ok").await;
        assert_eq!(first.len(), 3);
        let conn = ep.conns.take_http1().expect("the connection went back");
        assert!(conn.spare.room() >= 3, "the first head's index is kept");
        ep.conns.put_http1(conn, settings.max_idle);
        // Located in the first head's index: the second head's headers alone.
        let second = exchange("yes").await;
        assert_eq!(
            second,
            [
                (b"x-b".to_vec(), b"2".to_vec()),
                (b"content-length".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(ep.conns.idle_http1(), 1);
    }

    #[tokio::test]
    async fn heads_and_informational_responses_have_no_body() {
        let addr = endpoint(vec![
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        ])
        .await;
        let (_u, cluster, ep) = cluster_of(addr);
        let (resp, body) = get(&cluster, &ep, Method::HEAD).await.expect("head");
        assert_eq!(resp.status(), 200, "the 100 is skipped");
        assert_eq!(body.expect("body"), "");
        let (resp, body) = get(&cluster, &ep, Method::GET).await.expect("204");
        assert_eq!(resp.status(), 204);
        assert_eq!(body.expect("body"), "");
        assert_eq!(ep.conns.idle_http1(), 1);
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_responses_are_not_reused() {
        let addr = endpoint(vec![vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
        ]])
        .await;
        let (_u, cluster, ep) = cluster_of(addr);
        let (_, body) = get(&cluster, &ep, Method::GET).await.expect("response");
        assert_eq!(body.expect("body"), "abc");
        assert_eq!(ep.conns.idle_http1(), 0);

        // No length: the body is what comes until the endpoint closes.
        let addr = answer_once(b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await;
        let (_u, cluster, ep) = cluster_of(addr);
        let (resp, body) = get(&cluster, &ep, Method::GET).await.expect("response");
        assert_eq!(resp.version(), Version::HTTP_10);
        assert_eq!(body.expect("body"), "until the end");
        assert_eq!(ep.conns.idle_http1(), 0);
    }

    #[tokio::test]
    async fn broken_responses_are_errors() {
        for (answer, expected) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
                "bad content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "conflicting content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-",
                "closed before the response was complete",
            ),
            (b"NOT HTTP\r\n\r\n", "malformed head"),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "101"),
        ] {
            let addr = answer_once(answer).await;
            let (_u, cluster, ep) = cluster_of(addr);
            let err = get(&cluster, &ep, Method::GET).await.expect_err("broken");
            assert!(err.to_string().contains(expected), "{err}");
        }
        // Cut off inside the body, or inside a chunk: the body fails, the connection closes.
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ] {
            let addr = answer_once(answer).await;
            let (_u, cluster, ep) = cluster_of(addr);
            let (_, body) = get(&cluster, &ep, Method::GET)
                .await
                .expect("head is complete");
            let err = body.expect_err("a short body is an error");
            assert!(
                err.contains("closed before the response was complete"),
                "{err}"
            );
            assert_eq!(ep.conns.idle_http1(), 0);
        }
    }

    #[test]
    fn requests_are_framed_by_their_body() {
        let head = |method: Method, body: UpBody, headers: &[(&str, &str)]| {
            let mut req = Request::new(());
            *req.method_mut() = method;
            *req.uri_mut() = "/a?b=1".parse().expect("uri");
            for (k, v) in headers {
                req.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            let (parts, ()) = req.into_parts();
            let wire = encode_request(&parts, &body);
            String::from_utf8(wire.bytes).expect("text")
        };
        assert_eq!(
            head(Method::GET, UpBody::full(Bytes::new()), &[("host", "x")]),
            "GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        assert_eq!(
            head(Method::POST, UpBody::full(Bytes::new()), &[]),
            "POST /a?b=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        // The body decides the length, whatever the headers said.
        assert_eq!(
            head(
                Method::PUT,
                UpBody::full(Bytes::from_static(b"abc")),
                &[("content-length", "9"), ("transfer-encoding", "chunked")]
            ),
            "PUT /a?b=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"
        );
    }
}
