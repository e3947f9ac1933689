//! What the host knows about one request while filters work on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::http1::{RawHead, Role, Spare};
use crate::telemetry::trace::RequestTrace;

/// The response head, while `on-response` hooks run.
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// One request's state, handed to each filter instance for the duration of a
/// hook call (moved in and out as a `Box`, so binding costs a pointer move).
pub struct RequestCtx {
    /// Method, target, version, and the headers once they are in a map (see `raw`).
    pub head: http::request::Parts,
    /// The headers as an HTTP/1.1 client sent them, until something needs them in a map
    /// ([`RequestCtx::headers_mut`]): reading them needs none, and most requests are passed
    /// on with no header changed. While this is `Some`, `head.headers` is empty.
    pub raw: Option<RawHead>,
    pub client: SocketAddr,
    pub cluster: Option<Arc<str>>,
    pub per_try_timeout: Option<Duration>,
    pub request_id: RequestId,
    /// Per-filter request variables: (filter, name, value).
    pub vars: Vec<(Arc<str>, String, String)>,
    pub response: Option<ResponseHead>,
    /// The request's spans, when it is traced.
    pub trace: Option<Box<RequestTrace>>,
    /// Allocations a context keeps from one request to the next (the listener lends an
    /// HTTP/1.1 connection's context to each of its requests in turn): the header index of
    /// the last request head, for the next one to be located in, and the buffer the last
    /// upstream request head was written in.
    pub spare: Spare,
    pub wire: Vec<u8>,
}

/// A request's id: the client's `x-request-id` when usable (1 to [`RequestId::MAX`] bytes of
/// visible ASCII, spaces and tabs), else a random one. Kept inline: no allocation per request.
/// [`RequestId::NONE`] until the request's is known.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; RequestId::MAX],
}

impl RequestId {
    /// The longest id taken from a client.
    pub const MAX: usize = 128;

    /// No id (empty): a context's before its request has one.
    pub const NONE: RequestId = RequestId {
        len: 0,
        bytes: [0; Self::MAX],
    };

    /// `id` as a request id, when it is one.
    pub fn given(id: &[u8]) -> Option<RequestId> {
        if id.is_empty()
            || id.len() > Self::MAX
            || !id.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return None;
        }
        let mut bytes = [0; Self::MAX];
        bytes[..id.len()].copy_from_slice(id);
        Some(RequestId {
            len: id.len() as u8,
            bytes,
        })
    }

    /// `bits` as 32 lowercase hex digits.
    pub fn hex(bits: u128) -> RequestId {
        let mut bytes = [0; Self::MAX];
        let digits = [
            (bits >> 96) as u32,
            (bits >> 64) as u32,
            (bits >> 32) as u32,
            bits as u32,
        ];
        for (out, word) in bytes.chunks_exact_mut(8).zip(digits) {
            out.copy_from_slice(&hex8(word));
        }
        RequestId { len: 32, bytes }
    }

    pub fn as_str(&self) -> &str {
        // Checked ASCII when made: the conversion cannot fail.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// The 8 lowercase hex digits of `word`, all at once: each nibble spread to a byte of its own
/// (most significant first), then `'0'` added to every byte and `'a' - '0' - 10` more to those
/// above 9 (each byte's 0 or 1 times 39 carries into no other byte).
fn hex8(word: u32) -> [u8; 8] {
    const BYTES: u64 = 0x0101_0101_0101_0101;
    let v = u64::from(word);
    let v = (v | (v << 16)) & 0x0000_ffff_0000_ffff;
    let v = (v | (v << 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v | (v << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let above_9 = ((v + 6 * BYTES) >> 4) & BYTES;
    (v + u64::from(b'0') * BYTES + above_9 * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Request variables are bounded: a filter cannot grow a request without limit.
pub const MAX_VARS: usize = 64;
pub const MAX_VAR_BYTES: usize = 4096;

impl RequestCtx {
    pub fn new(head: http::request::Parts, client: SocketAddr, request_id: RequestId) -> Self {
        Self {
            head,
            raw: None,
            client,
            cluster: None,
            per_try_timeout: None,
            request_id,
            vars: Vec::new(),
            response: None,
            trace: None,
            spare: Spare::default(),
            wire: Vec::new(),
        }
    }

    /// Lets go of what the request held (its head's buffers, its spans) and makes the context
    /// over for the next request of the same connection, in the allocation it has: the
    /// listener writes the next head into it ([`RequestCtx::head`], [`RequestCtx::raw`]) and
    /// the chain its id; every other field is as in a new context, the room of its variables,
    /// its header index and its wire buffer kept.
    pub fn release(&mut self) {
        // Named one by one (no `..`): a field added later must be seen to here too.
        let RequestCtx {
            head,
            raw,
            client: _,
            cluster,
            per_try_timeout,
            request_id,
            vars,
            response,
            trace,
            spare,
            wire: _,
        } = self;
        *head = http::Request::new(()).into_parts().0;
        if let Some(raw) = raw.take() {
            *spare = raw.into_spare();
        }
        *cluster = None;
        *per_try_timeout = None;
        *request_id = RequestId::NONE;
        vars.clear();
        *response = None;
        *trace = None;
    }

    /// The path with its query, as sent upstream (`/` when the target has none).
    pub fn path(&self) -> &str {
        self.head.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// The authority: the URI's, else the `host` header.
    pub fn authority(&self) -> Option<&str> {
        self.head.uri.authority().map(|a| a.as_str()).or_else(|| {
            let host = match &self.raw {
                Some(raw) => raw.first(Role::Host)?,
                None => self.head.headers.get(http::header::HOST)?.as_bytes(),
            };
            std::str::from_utf8(host).ok()
        })
    }

    /// The first value of the request header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        match &self.raw {
            Some(raw) => raw.get(name),
            None => self.head.headers.get(name).map(HeaderValue::as_bytes),
        }
    }

    /// Every value of the request header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        match &self.raw {
            Some(raw) => raw.get_all(name).collect(),
            None => self
                .head
                .headers
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect(),
        }
    }

    /// The request headers as a map, built from the client's head the first time.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        if let Some(raw) = self.raw.take() {
            self.head.headers = raw.to_map();
        }
        &mut self.head.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(target: &str) -> http::request::Parts {
        http::Request::get(target)
            .header("x-a", "1")
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    #[test]
    fn a_reused_context_holds_nothing_of_the_request_before() {
        let client: SocketAddr = "127.0.0.1:4000".parse().expect("address");
        let mut ctx = Box::new(RequestCtx::new(
            parts("/first?q=1"),
            client,
            RequestId::hex(1),
        ));
        ctx.cluster = Some("api".into());
        ctx.per_try_timeout = Some(Duration::from_millis(5));
        ctx.vars.push(("f".into(), "k".into(), "v".into()));
        ctx.response = Some(ResponseHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        });
        let room = ctx.vars.capacity();

        ctx.release();
        assert_eq!(ctx.path(), "/", "the head is let go");
        assert!(ctx.head.headers.is_empty() && ctx.cluster.is_none() && ctx.vars.is_empty());
        assert!(ctx.response.is_none() && ctx.trace.is_none() && ctx.raw.is_none());
        assert!(ctx.per_try_timeout.is_none() && ctx.request_id == RequestId::NONE);

        let other: SocketAddr = "127.0.0.1:5000".parse().expect("address");
        ctx.head = parts("/second");
        ctx.client = other;
        ctx.request_id = RequestId::hex(2);
        let fresh = RequestCtx::new(parts("/second"), other, RequestId::hex(2));
        assert_eq!(ctx.path(), fresh.path());
        assert_eq!(ctx.header("x-a"), fresh.header("x-a"));
        assert_eq!(ctx.client, fresh.client);
        assert_eq!(ctx.request_id, fresh.request_id);
        assert_eq!(ctx.cluster, fresh.cluster);
        assert_eq!(ctx.per_try_timeout, fresh.per_try_timeout);
        assert!(ctx.vars.is_empty() && ctx.response.is_none() && ctx.trace.is_none());
        assert_eq!(ctx.vars.capacity(), room, "the variables' room is kept");
    }
}
