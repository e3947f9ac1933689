//! OpenTelemetry traces: a server span per downstream request, a client
//! span per upstream attempt, W3C trace context in and out, OTLP export.
//!
//! Export never touches the request path: a finished span is handed to a
//! bounded queue with `try_send` (a full queue drops the span and counts it),
//! and one task on the runtime batches the queue into OTLP requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::telemetry::Collector;

/// One span as the request holds it: the SDK's span, owned (no lock).
pub type Span = opentelemetry_sdk::trace::Span;

/// Spans a filter can add to one request: attributes and events, each.
pub const MAX_FILTER_SPAN_ITEMS: u32 = 128;
/// Longest attribute key, event name or value a filter can set, in bytes.
pub const MAX_FILTER_SPAN_TEXT: usize = 4096;

/// Counts of what happened to finished spans.
#[derive(Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

impl Collector for ExportStats {
    fn collect(&self, out: &mut String) {
        out.push_str("# HELP spindle_trace_spans_total Finished spans: exported, dropped (queue full), failed (export error).\n");
        out.push_str("# TYPE spindle_trace_spans_total counter\n");
        for (result, c) in [
            ("exported", &self.exported),
            ("dropped", &self.dropped),
            ("failed", &self.failed),
        ] {
            out.push_str(&format!(
                "spindle_trace_spans_total{{result=\"{result}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
    }
}

/// The process's tracer and its export pipeline.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    pub stats: Arc<ExportStats>,
    stop: std::sync::Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

/// The spans of one request.
pub struct RequestTrace {
    pub server: Span,
    /// The current attempt's client span, from before the pick until the
    /// filters have seen its outcome.
    pub attempt: Option<Span>,
    /// Attributes and events filters added so far.
    pub filter_items: u32,
}

impl RequestTrace {
    /// The span filters write to: the attempt's while one runs, else the
    /// server span.
    pub fn current(&mut self) -> &mut Span {
        self.attempt.as_mut().unwrap_or(&mut self.server)
    }

    /// Whether the current span records (is sampled): the `traced` filters are told.
    pub fn is_recording(&mut self) -> bool {
        self.current().is_recording()
    }

    /// The trace id as 32 hex digits (for logs).
    pub fn trace_id(&self) -> String {
        self.server.span_context().trace_id().to_string()
    }
}

impl Tracing {
    /// Builds the exporter and starts the export task; must run inside the
    /// tokio runtime.
    pub fn start(config: &TelemetryConfig) -> Result<Tracing, String> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Err("telemetry: otlp_endpoint is not set".into());
        };
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let mut exporter = match config.otlp_protocol {
            OtlpProtocol::Http => {
                use opentelemetry_otlp::WithExportConfig as _;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(http_traces_url(endpoint))
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(timeout)
                    .build()
            }
            OtlpProtocol::Grpc => {
                use opentelemetry_otlp::WithExportConfig as _;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(timeout)
                    .build()
            }
        }
        .map_err(|e| format!("telemetry: cannot build the OTLP exporter for {endpoint}: {e}"))?;
        exporter.set_resource(&resource);

        let stats = Arc::new(ExportStats::default());
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(export_loop(
            exporter,
            rx,
            stop_rx,
            stats.clone(),
            config.batch_size.max(1),
            Duration::from_millis(config.batch_delay_ms.max(1)),
            timeout,
        ));
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor {
                tx,
                stats: stats.clone(),
            })
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("spindle");
        Ok(Tracing {
            provider,
            tracer,
            stats,
            stop: std::sync::Mutex::new(Some((stop_tx, task))),
        })
    }

    /// Starts the server span of a downstream request, continuing the trace
    /// in its `traceparent`/`tracestate` when they are valid.
    pub fn start_server(
        &self,
        head: &http::request::Parts,
        client: std::net::SocketAddr,
        listener: &str,
        request_id: &str,
    ) -> Box<RequestTrace> {
        let parent = TraceContextPropagator::new().extract(&HeaderRead(&head.headers));
        let method = head.method.as_str();
        let mut attrs = Vec::with_capacity(12);
        attrs.push(KeyValue::new("http.request.method", method.to_string()));
        attrs.push(KeyValue::new("url.path", head.uri.path().to_string()));
        if let Some(q) = head.uri.query() {
            attrs.push(KeyValue::new("url.query", q.to_string()));
        }
        attrs.push(KeyValue::new(
            "url.scheme",
            head.uri.scheme_str().unwrap_or("http").to_string(),
        ));
        let authority = head.uri.authority().map(|a| a.as_str()).or_else(|| {
            head.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        if let Some(a) = authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
            attrs.push(KeyValue::new("server.address", a.host().to_string()));
            if let Some(p) = a.port_u16() {
                attrs.push(KeyValue::new("server.port", i64::from(p)));
            }
        }
        attrs.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(head.version),
        ));
        attrs.push(KeyValue::new("client.address", client.ip().to_string()));
        attrs.push(KeyValue::new("client.port", i64::from(client.port())));
        if let Some(ua) = head
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
        attrs.push(KeyValue::new("spindle.listener", listener.to_string()));
        attrs.push(KeyValue::new("spindle.request_id", request_id.to_string()));
        let server = self.tracer.build_with_context(
            self.tracer
                .span_builder(method.to_string())
                .with_kind(SpanKind::Server)
                .with_attributes(attrs),
            &parent,
        );
        Box::new(RequestTrace {
            server,
            attempt: None,
            filter_items: 0,
        })
    }

    /// Starts the client span of an upstream attempt, a child of the
    /// request's server span.
    pub fn start_attempt(&self, trace: &mut RequestTrace, method: &http::Method, attempt: u32) {
        let parent = Context::new().with_remote_span_context(trace.server.span_context().clone());
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.as_str().to_string()),
            KeyValue::new("spindle.attempt", i64::from(attempt)),
        ];
        if attempt > 1 {
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(method.as_str().to_string())
                .with_kind(SpanKind::Client)
                .with_attributes(attrs),
            &parent,
        );
        trace.attempt = Some(span);
    }

    /// Flushes what is queued (bounded by `wait`) and stops the export task.
    pub async fn shutdown(&self, wait: Duration) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some((tx, task)) = stop {
            let _ = tx.send(());
            let _ = tokio::time::timeout(wait, task).await;
        }
        let _ = self.provider.shutdown();
    }
}

/// Writes `traceparent` (and `tracestate` when there is one) for `span`
/// into upstream request headers, replacing the downstream's.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    let cx = Context::new().with_remote_span_context(span.span_context().clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderWrite(headers));
}

/// Names the endpoint an attempt goes to on its client span.
pub fn attempt_endpoint(
    trace: &mut RequestTrace,
    cluster: &str,
    endpoint: &crate::upstream::Endpoint,
) {
    let Some(span) = trace.attempt.as_mut() else {
        return;
    };
    if !span.is_recording() {
        return;
    }
    let a = &endpoint.authority;
    span.set_attribute(KeyValue::new("server.address", a.host().to_string()));
    if let Some(p) = a.port_u16() {
        span.set_attribute(KeyValue::new("server.port", i64::from(p)));
    }
    span.set_attribute(KeyValue::new("spindle.cluster", cluster.to_string()));
    span.set_attribute(KeyValue::new("spindle.endpoint", endpoint.address.clone()));
}

/// Records the URL an attempt sends to.
pub fn attempt_url(trace: &mut RequestTrace, authority: &str, path_and_query: &str) {
    if let Some(span) = trace.attempt.as_mut()
        && span.is_recording()
    {
        span.set_attribute(KeyValue::new(
            "url.full",
            format!("http://{authority}{path_and_query}"),
        ));
    }
}

/// Ends an attempt's client span with its result.
pub fn end_attempt(trace: &mut RequestTrace, status: Option<u16>, error: Option<&'static str>) {
    let Some(mut span) = trace.attempt.take() else {
        return;
    };
    if let Some(s) = status {
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
        if s >= 400 {
            span.set_attribute(KeyValue::new("error.type", s.to_string()));
            span.set_status(Status::error(""));
        }
    }
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.type", e));
        span.set_status(Status::error(e));
    }
    span.end();
}

/// Ends the server span with the status sent downstream.
pub fn end_server(mut trace: Box<RequestTrace>, status: u16, cluster: Option<&str>) {
    end_attempt(&mut trace, None, None);
    let span = &mut trace.server;
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(c) = cluster {
        span.set_attribute(KeyValue::new("spindle.cluster", c.to_string()));
    }
    if status >= 500 {
        span.set_attribute(KeyValue::new("error.type", status.to_string()));
        span.set_status(Status::error(""));
    }
    span.end();
}

/// Adds a filter's attribute to the request's current span; false when the
/// filter has used up its share or the text is too long.
pub fn filter_attribute(trace: &mut RequestTrace, key: &str, value: &str) -> bool {
    if !take_item(trace, key, value) {
        return false;
    }
    trace
        .current()
        .set_attribute(KeyValue::new(key.to_string(), value.to_string()));
    true
}

/// Adds a filter's event (with attributes) to the request's current span.
pub fn filter_event(
    trace: &mut RequestTrace,
    filter: &str,
    name: &str,
    attributes: &[(String, String)],
) -> bool {
    if !take_item(trace, name, "")
        || attributes.len() > 32
        || attributes
            .iter()
            .any(|(k, v)| k.len() > MAX_FILTER_SPAN_TEXT || v.len() > MAX_FILTER_SPAN_TEXT)
    {
        return false;
    }
    let mut attrs = Vec::with_capacity(attributes.len() + 1);
    attrs.push(KeyValue::new("spindle.filter", filter.to_string()));
    attrs.extend(
        attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    trace.current().add_event(name.to_string(), attrs);
    true
}

fn take_item(trace: &mut RequestTrace, key: &str, value: &str) -> bool {
    if trace.filter_items >= MAX_FILTER_SPAN_ITEMS
        || key.is_empty()
        || key.len() > MAX_FILTER_SPAN_TEXT
        || value.len() > MAX_FILTER_SPAN_TEXT
    {
        return false;
    }
    trace.filter_items += 1;
    // An unsampled span records nothing: spend no work on it.
    trace.current().is_recording()
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `http://host:4318` means the collector's standard path `/v1/traces`; a URL
/// with a path of its own is used as it is.
pub fn http_traces_url(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(u) if u.path() == "/" || u.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_string(),
    }
}

struct HeaderRead<'a>(&'a HeaderMap);

impl Extractor for HeaderRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderWrite<'a>(&'a mut HeaderMap);

impl Injector for HeaderWrite<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Hands finished spans to the export task without waiting.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    stats: Arc<ExportStats>,
}

impl std::fmt::Debug for ExportStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportStats").finish_non_exhaustive()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Collects spans into batches of up to `batch_size`, sent when full or
/// `delay` after the first span of the batch; on stop, sends what is left.
async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    mut stop: oneshot::Receiver<()>,
    stats: Arc<ExportStats>,
    batch_size: usize,
    delay: Duration,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(batch_size);
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            n = rx.recv_many(&mut batch, batch_size) => if n == 0 { stopping = true },
            _ = &mut stop => stopping = true,
        }
        if !stopping {
            let fill = tokio::time::sleep(delay);
            tokio::pin!(fill);
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = &mut fill => break,
                    _ = &mut stop => { stopping = true; break }
                }
            }
        }
        if stopping {
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
        }
        for chunk in std::mem::take(&mut batch).chunks(batch_size) {
            send(&exporter, chunk.to_vec(), &stats, timeout).await;
        }
    }
}

async fn send<E: SpanExporter>(
    exporter: &E,
    spans: Vec<SpanData>,
    stats: &ExportStats,
    timeout: Duration,
) {
    let n = spans.len() as u64;
    if n == 0 {
        return;
    }
    match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(Ok(())) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!("trace export failed ({n} spans): {e}");
        }
        Err(_) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!("trace export timed out ({n} spans)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_path_is_appended_only_to_a_bare_endpoint() {
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://collector/custom/traces"),
            "http://collector/custom/traces"
        );
    }
}
