//! What the host knows about one request while filters work on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::telemetry::trace::RequestTrace;

/// The response head, while `on-response` hooks run.
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// One request's state, handed to each filter instance for the duration of a
/// hook call (moved in and out as a `Box`, so binding costs a pointer move).
pub struct RequestCtx {
    pub head: http::request::Parts,
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
            self.head
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
    }
}
