//! An OTLP trace receiver for tests: it decodes what Spindle exports, over
//! OTLP/HTTP (`POST /v1/traces`, protobuf) or OTLP/gRPC (`TraceService/Export`
//! over HTTP/2), with the real protobuf definitions of `opentelemetry-proto`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The gRPC method an OTLP trace exporter calls.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// A string, int or bool attribute as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    pub fn event(&self, name: &str) -> Option<&opentelemetry_proto::tonic::trace::v1::span::Event> {
        self.span.events.iter().find(|e| e.name == name)
    }
}

/// An attribute of a list as text.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v {
        AnyValue {
            value: Some(Value::StringValue(s)),
            ..
        } => Some(s.clone()),
        AnyValue {
            value: Some(Value::IntValue(i)),
            ..
        } => Some(i.to_string()),
        AnyValue {
            value: Some(Value::BoolValue(b)),
            ..
        } => Some(b.to_string()),
        AnyValue {
            value: Some(Value::DoubleValue(d)),
            ..
        } => Some(d.to_string()),
        _ => None,
    }
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// (path, content-type) of each export request.
    requests: Vec<(String, String)>,
}

/// A receiver on `127.0.0.1:0`; stopped when dropped.
pub struct OtlpCollector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    server: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OtlpCollector {
    pub async fn start() -> OtlpCollector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver addr");
        let received = Arc::new(Mutex::new(Received::default()));
        let state = received.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OtlpCollector {
            addr,
            received,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.received).spans.clone()
    }

    /// Path and content type of every export request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.received).requests.clone()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    state: Arc<Mutex<Received>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let grpc = path == GRPC_EXPORT_PATH;
    let message = if grpc {
        // One length-prefixed message: flag (0: uncompressed), u32 length.
        if body.len() < 5 || body[0] != 0 {
            return Ok(status(StatusCode::BAD_REQUEST));
        }
        body.slice(5..)
    } else if path == "/v1/traces" {
        body
    } else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let Ok(export) = ExportTraceServiceRequest::decode(message) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    {
        let mut r = lock(&state);
        r.requests.push((path, content_type));
        for rs in export.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|res| attr(&res.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    r.spans.push(ReceivedSpan {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }
    if grpc {
        // An empty ExportTraceServiceResponse, then grpc-status 0 in the trailers.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        Ok(resp)
    } else {
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(resp)
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = code;
    r
}
