//! Local responses: the host's own (404, 502, 503, 504) and the ones filters
//! ask for.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::upstream::DownBody;
use crate::wasm::bindings::spindle::filter::types::LocalReply;

/// A short plain-text response saying why.
pub fn local(status: StatusCode, text: &str) -> Response<DownBody> {
    let mut r = Response::new(DownBody::Local(Some(Bytes::copy_from_slice(
        text.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A filter's local reply; invalid statuses or headers are replaced or dropped.
pub fn from_reply(reply: LocalReply) -> Response<DownBody> {
    let body = if reply.body.is_empty() {
        None
    } else {
        Some(Bytes::from(reply.body))
    };
    let mut r = Response::new(DownBody::Local(body));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in reply.headers.into_iter().take(crate::wasm::MAX_HEADERS) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    if !r.headers().contains_key(CONTENT_TYPE) && r.body_has_bytes() {
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

trait HasBytes {
    fn body_has_bytes(&self) -> bool;
}

impl HasBytes for Response<DownBody> {
    fn body_has_bytes(&self) -> bool {
        matches!(self.body(), DownBody::Local(Some(_)))
    }
}
