//! Request bodies sent upstream: either fully buffered (replayable on retry)
//! or streamed after a buffered prefix (sent once, never retried).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::pool::{BoxError, UpstreamBody};
use crate::http1::RawHead;
use crate::listener::RequestBody;

/// The body of one upstream attempt. An enum rather than a boxed trait object:
/// this is on every request's path.
pub enum UpBody {
    /// A complete body (possibly empty); cloning the `Bytes` is cheap, so
    /// every attempt gets its own.
    Full(Option<Bytes>),
    /// What was read while trying to buffer, then the rest of the downstream body.
    Stream {
        prefix: VecDeque<Bytes>,
        rest: RequestBody,
    },
}

impl UpBody {
    pub fn full(b: Bytes) -> Self {
        if b.is_empty() {
            UpBody::Full(None)
        } else {
            UpBody::Full(Some(b))
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream { prefix, rest } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream { prefix, rest } => {
                let pre: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(pre + r.lower());
                if let Some(u) = r.upper() {
                    h.set_upper(pre + u);
                }
                h
            }
        }
    }
}

/// The body of a downstream response: the upstream's, streamed, or a local one.
pub enum DownBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

impl DownBody {
    /// The response's headers when they are still an HTTP/1.1 endpoint's head (see
    /// [`UpstreamBody`]).
    pub fn head(&self) -> Option<&RawHead> {
        match self {
            DownBody::Upstream(b) => b.head(),
            DownBody::Local(_) => None,
        }
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            DownBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            DownBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownBody::Upstream(b) => b.is_end_stream(),
            DownBody::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownBody::Upstream(b) => b.size_hint(),
            DownBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
