//! The TOML configuration: schema, parsing with `file:line` errors, and the
//! `validate()` step that checks references before anything runs.
//!
//! Parsing is a pure function of text ([`Config::parse`]), so tests build
//! configs from strings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// A configuration error, pointing at the file and line it is about.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Downstream listeners, each with its filter chain.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Filters by name.
    #[serde(default, rename = "filter")]
    pub filters: BTreeMap<String, Spanned<FilterConfig>>,
    /// Upstream clusters by name.
    #[serde(default, rename = "cluster")]
    pub clusters: BTreeMap<String, Spanned<ClusterConfig>>,
    /// Host-wide runtime settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Traces (OpenTelemetry, OTLP export).
    #[serde(default)]
    pub telemetry: Option<Spanned<TelemetryConfig>>,
    /// The file this came from (not part of the TOML).
    #[serde(skip)]
    pub path: PathBuf,
    /// The text it was parsed from, for line numbers.
    #[serde(skip)]
    pub text: String,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener (loopback by default).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".to_string()
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// `ip:port` to bind; port 0 lets the OS choose.
    pub listen: Spanned<String>,
    /// The filter chain, in order.
    #[serde(default)]
    pub filters: Vec<Spanned<String>>,
    /// TLS (not supported yet: refused with a clear error).
    #[serde(default)]
    pub tls: Option<Spanned<toml::Value>>,
    /// Largest request head accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Concurrent downstream connections; more wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request bodies up to this size are buffered so that they can be retried.
    #[serde(default = "default_retry_buffer_bytes")]
    pub retry_buffer_bytes: usize,
    /// Where to write one JSON line per request: a file (appended to) or
    /// `"stdout"`. Off when absent.
    #[serde(default)]
    pub access_log: Option<Spanned<String>>,
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_retry_buffer_bytes() -> usize {
    64 * 1024
}

/// What happens to a request when a filter breaks (trap, deadline, bad answer).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// The request gets a 503 naming the filter.
    #[default]
    Closed,
    /// The filter is skipped for this request.
    Open,
}

/// `[filter.NAME]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Path of the Wasm component (relative to the config file's folder).
    pub module: PathBuf,
    /// `closed` (default) or `open`.
    #[serde(default)]
    pub fail: FailMode,
    /// Handed to the filter as JSON; the filter checks it.
    #[serde(default)]
    pub config: Option<Spanned<toml::Value>>,
    /// Linear memory cap per instance, in MiB.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// Deadline for one hook call, in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Warm instances kept idle in the pool.
    #[serde(default = "default_max_idle_instances")]
    pub max_idle_instances: usize,
    /// Label sets each metric the filter defines may have; recording a new
    /// one past this is refused (the filter gets an error).
    #[serde(default = "default_max_metric_series")]
    pub max_metric_series: usize,
}

fn default_memory_limit_mb() -> u64 {
    32
}
fn default_call_timeout_ms() -> u64 {
    20
}
fn default_max_idle_instances() -> usize {
    64
}
fn default_max_metric_series() -> usize {
    1000
}

/// `[cluster.NAME]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Static members.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Default per-try timeout (until the response head); the retry filter may override it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Speak HTTP/2 with prior knowledge to the endpoints.
    #[serde(default)]
    pub http2: bool,
    /// Idle upstream connections kept per endpoint.
    #[serde(default = "default_max_idle_per_endpoint")]
    pub max_idle_per_endpoint: usize,
    /// Dynamic discovery (not supported yet: refused with a clear error).
    #[serde(default)]
    pub discovery: Option<toml::Value>,
    /// Upstream TLS (not supported yet: refused with a clear error).
    #[serde(default)]
    pub tls: Option<toml::Value>,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    15_000
}
fn default_max_idle_per_endpoint() -> usize {
    64
}

/// One static endpoint: `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// Just the address, weight 1.
    Address(String),
    /// Address and weight.
    Weighted(WeightedEndpoint),
}

/// `{ address, weight }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpoint {
    /// `host:port`.
    pub address: String,
    /// Relative weight, at least 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl EndpointSpec {
    pub fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(a) => a,
            EndpointSpec::Weighted(w) => &w.address,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            EndpointSpec::Address(_) => 1,
            EndpointSpec::Weighted(w) => w.weight,
        }
    }
}

/// `[runtime]`: host-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled filters are cached (default: `$SPINDLE_CACHE_DIR`,
    /// else `$XDG_CACHE_HOME/spindle`, else `~/.cache/spindle`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Threads that serve traffic (tokio workers); 0, the default, means
    /// one per CPU. Read at start only.
    #[serde(default)]
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            drain_timeout_ms: default_drain_timeout_ms(),
            worker_threads: 0,
        }
    }
}

/// `[telemetry]`: trace export, off unless `otlp_endpoint` is set. Read at
/// start only.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector: `http://host:4318` (HTTP/protobuf, `/v1/traces` is
    /// added when the URL has no path) or `http://host:4317` with `grpc`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded, 0.0 to 1.0; a request that arrives with
    /// a `traceparent` follows its sampled flag.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// Finished spans waiting for export; more are dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Spans per export request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    #[serde(default = "default_batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// Deadline of one export request.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            service_name: default_service_name(),
            sampling_ratio: default_sampling_ratio(),
            queue_size: default_queue_size(),
            batch_size: default_batch_size(),
            batch_delay_ms: default_batch_delay_ms(),
            export_timeout_ms: default_export_timeout_ms(),
        }
    }
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies.
    #[default]
    Http,
    /// OTLP/gRPC.
    Grpc,
}

fn default_service_name() -> String {
    "spindle".to_string()
}
fn default_sampling_ratio() -> f64 {
    1.0
}
fn default_queue_size() -> usize {
    4096
}
fn default_batch_size() -> usize {
    512
}
fn default_batch_delay_ms() -> u64 {
    500
}
fn default_export_timeout_ms() -> u64 {
    5_000
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

impl Config {
    /// Reads and parses a file, then validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let config = Config::parse(path, &text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses text; `path` is used for messages and relative paths only.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: improve_message(e.message()),
        })?;
        config.path = path.to_path_buf();
        config.text = text.to_string();
        Ok(config)
    }

    fn error(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: span.map(|s| line_of(&self.text, s.start)),
            message,
        }
    }

    /// Line of a byte offset in this config's text.
    pub fn line_of(&self, offset: usize) -> usize {
        line_of(&self.text, offset)
    }

    /// Checks everything that can be checked without loading filters:
    /// addresses, names, references between sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.admin.listen.parse::<SocketAddr>() {
            return Err(self.error(
                None,
                format!(
                    "admin: listen `{}` is not an ip:port ({e})",
                    self.admin.listen
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.listeners {
            if !names.insert(l.name.as_str()) {
                return Err(self.error(
                    Some(l.listen.span()),
                    format!("listener `{}` is defined twice", l.name),
                ));
            }
            if let Err(e) = l.listen.get_ref().parse::<SocketAddr>() {
                return Err(self.error(
                    Some(l.listen.span()),
                    format!(
                        "listener `{}`: listen `{}` is not an ip:port ({e})",
                        l.name,
                        l.listen.get_ref()
                    ),
                ));
            }
            if let Some(tls) = &l.tls {
                return Err(self.error(
                    Some(tls.span()),
                    format!(
                        "listener `{}`: downstream TLS is not supported by this version yet",
                        l.name
                    ),
                ));
            }
            if let Some(a) = &l.access_log
                && a.get_ref().is_empty()
            {
                return Err(self.error(
                    Some(a.span()),
                    format!(
                        "listener `{}`: access_log must be a file path or \"stdout\"",
                        l.name
                    ),
                ));
            }
            if l.max_header_bytes < 1024 {
                return Err(self.error(
                    Some(l.listen.span()),
                    format!("listener `{}`: max_header_bytes must be >= 1024", l.name),
                ));
            }
            for f in &l.filters {
                if !self.filters.contains_key(f.get_ref()) {
                    return Err(self.error(
                        Some(f.span()),
                        format!(
                            "listener `{}`: filter `{}` is not defined (add a [filter.{}] section)",
                            l.name,
                            f.get_ref(),
                            f.get_ref()
                        ),
                    ));
                }
            }
        }
        let t = self.telemetry();
        let tspan = self.telemetry.as_ref().map(Spanned::span);
        if !(0.0..=1.0).contains(&t.sampling_ratio) {
            return Err(self.error(
                tspan,
                format!(
                    "telemetry: sampling_ratio must be between 0.0 and 1.0, not {}",
                    t.sampling_ratio
                ),
            ));
        }
        if let Some(e) = &t.otlp_endpoint {
            let ok = e.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(self.error(
                    tspan,
                    format!("telemetry: otlp_endpoint `{e}` is not an http:// or https:// URL"),
                ));
            }
        }
        if t.queue_size == 0 || t.batch_size == 0 {
            return Err(self.error(
                tspan,
                "telemetry: queue_size and batch_size must be at least 1".into(),
            ));
        }
        for (name, f) in &self.filters {
            if f.get_ref().memory_limit_mb == 0 || f.get_ref().memory_limit_mb > MAX_MEMORY_MB {
                return Err(self.error(
                    Some(f.span()),
                    format!(
                        "filter `{name}`: memory_limit_mb must be between 1 and {MAX_MEMORY_MB}"
                    ),
                ));
            }
            if f.get_ref().max_metric_series == 0 {
                return Err(self.error(
                    Some(f.span()),
                    format!("filter `{name}`: max_metric_series must be at least 1"),
                ));
            }
            if f.get_ref().call_timeout_ms == 0 {
                return Err(self.error(
                    Some(f.span()),
                    format!("filter `{name}`: call_timeout_ms must be at least 1"),
                ));
            }
            if let Some(cfg) = &f.get_ref().config {
                self.check_cluster_refs(name, cfg)?;
            }
        }
        for (name, c) in &self.clusters {
            let span = Some(c.span());
            let c = c.get_ref();
            if c.discovery.is_some() {
                return Err(self.error(
                    span,
                    format!("cluster `{name}`: discovery is not supported by this version yet"),
                ));
            }
            if c.tls.is_some() {
                return Err(self.error(
                    span,
                    format!("cluster `{name}`: upstream TLS is not supported by this version yet"),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for e in &c.endpoints {
                let addr = e.address();
                if e.weight() == 0 {
                    return Err(self.error(
                        span.clone(),
                        format!("cluster `{name}`: endpoint `{addr}` has weight 0"),
                    ));
                }
                if addr.parse::<http::uri::Authority>().is_err() || addr.rsplit_once(':').is_none()
                {
                    return Err(self.error(
                        span.clone(),
                        format!("cluster `{name}`: endpoint `{addr}` is not a host:port"),
                    ));
                }
                if !seen.insert(addr) {
                    return Err(self.error(
                        span.clone(),
                        format!("cluster `{name}`: endpoint `{addr}` is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every string under a key named `cluster` in a filter's config must name a cluster.
    fn check_cluster_refs(
        &self,
        filter: &str,
        cfg: &Spanned<toml::Value>,
    ) -> Result<(), ConfigError> {
        let mut missing = Vec::new();
        collect_cluster_refs(cfg.get_ref(), false, &mut |c| {
            if !self.clusters.contains_key(c) {
                missing.push(c.to_string());
            }
        });
        match missing.first() {
            None => Ok(()),
            Some(c) => Err(self.error(
                Some(cfg.span()),
                format!(
                    "filter `{filter}`: cluster `{c}` is not defined (add a [cluster.{c}] section)"
                ),
            )),
        }
    }

    /// `[telemetry]`, or its defaults (tracing off).
    pub fn telemetry(&self) -> TelemetryConfig {
        self.telemetry
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_default()
    }

    /// Resolves a path from the config relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// A filter's config as JSON text (`{}` when absent).
    pub fn filter_config_json(f: &FilterConfig) -> String {
        match &f.config {
            None => "{}".to_string(),
            Some(v) => {
                serde_json::to_string(&toml_to_json(v.get_ref())).unwrap_or_else(|_| "{}".into())
            }
        }
    }
}

/// The largest per-instance memory a filter may ask for.
pub const MAX_MEMORY_MB: u64 = 1024;

fn collect_cluster_refs(v: &toml::Value, under_cluster_key: bool, f: &mut impl FnMut(&str)) {
    match v {
        toml::Value::String(s) if under_cluster_key => f(s),
        toml::Value::Array(a) => a
            .iter()
            .for_each(|x| collect_cluster_refs(x, under_cluster_key, f)),
        toml::Value::Table(t) => {
            for (k, x) in t {
                collect_cluster_refs(x, k == "cluster", f);
            }
        }
        _ => {}
    }
}

/// TOML values as JSON values (datetimes become strings).
pub fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a message
/// with a suggestion.
pub fn improve_message(msg: &str) -> String {
    let msg = msg.trim();
    let Some(at) = msg.find("unknown field `") else {
        return msg.to_string();
    };
    let (prefix, rest) = (&msg[..at], &msg[at + "unknown field `".len()..]);
    let Some((unknown, expected)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(unknown, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min();
    let mut out = format!("{prefix}unknown key `{unknown}`");
    match best {
        Some((_, c)) => out.push_str(&format!(" (did you mean `{c}`?)")),
        None if !candidates.is_empty() => {
            out.push_str(&format!(" (expected one of: {})", candidates.join(", ")))
        }
        None => {}
    }
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(Path::new("spindle.toml"), text)?;
        c.validate()?;
        Ok(c)
    }

    const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
filters = ["router"]

[filter.router]
module = "router.wasm"
[filter.router.config]
routes = [ { path_prefix = "/", cluster = "api" } ]

[cluster.api]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]
"#;

    #[test]
    fn parses_the_contract_example() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.listeners[0].name, "edge");
        let api = c.clusters["api"].get_ref();
        assert_eq!(api.endpoints[1].weight(), 2);
        assert_eq!(api.connect_timeout_ms, 1000);
        let json = Config::filter_config_json(c.filters["router"].get_ref());
        assert_eq!(json, r#"{"routes":[{"cluster":"api","path_prefix":"/"}]}"#);
        assert_eq!(c.resolve(Path::new("x.wasm")), PathBuf::from("x.wasm"));
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let text = GOOD.replace(
            "module = \"router.wasm\"",
            "module = \"router.wasm\"\nfial = \"open\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(
            e.to_string()
                .contains("unknown key `fial` (did you mean `fail`?)"),
            "{e}"
        );
        assert!(e.to_string().starts_with("spindle.toml:12: "), "{e}");
    }

    #[test]
    fn undefined_filter_and_cluster_are_refused() {
        let text = GOOD.replace(
            "filters = [\"router\"]",
            "filters = [\"router\", \"retry\"]",
        );
        let e = parse(&text).unwrap_err();
        assert!(
            e.to_string().contains("filter `retry` is not defined"),
            "{e}"
        );
        assert_eq!(e.line, Some(8));

        let text = GOOD.replace("cluster = \"api\"", "cluster = \"web\"");
        let e = parse(&text).unwrap_err();
        assert!(
            e.to_string().contains("cluster `web` is not defined"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let e = parse(&GOOD.replace(
            "listen = \"127.0.0.1:0\"\nfilters",
            "listen = \"nowhere\"\nfilters",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not an ip:port"), "{e}");
        let e = parse(&GOOD.replace("weight = 2", "weight = 0")).unwrap_err();
        assert!(e.to_string().contains("weight 0"), "{e}");
        let e = parse(&GOOD.replace(
            "[cluster.api]",
            "[cluster.api]\ndiscovery = { kind = \"dns\" }",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
    }

    #[test]
    fn suggestion_distance() {
        assert_eq!(edit_distance("atempts", "attempts"), 1);
        assert_eq!(
            improve_message("unknown field `atempts`, expected one of `attempts`, `retry_on`"),
            "unknown key `atempts` (did you mean `attempts`?)"
        );
        assert_eq!(
            improve_message("unknown field `zzz`, expected `name`"),
            "unknown key `zzz` (expected one of: name)"
        );
    }
}
