//! What the host knows about one request while filters work on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::http1::{RawHead, Role};
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
    pub cluster: Option<String>,
    pub per_try_timeout: Option<Duration>,
    pub request_id: String,
    /// Per-filter request variables: (filter, name, value).
    pub vars: Vec<(Arc<str>, String, String)>,
    pub response: Option<ResponseHead>,
    /// The request's spans, when it is traced.
    pub trace: Option<Box<RequestTrace>>,
}

/// Request variables are bounded: a filter cannot grow a request without limit.
pub const MAX_VARS: usize = 64;
pub const MAX_VAR_BYTES: usize = 4096;

impl RequestCtx {
    pub fn new(head: http::request::Parts, client: SocketAddr, request_id: String) -> Self {
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
        }
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
