//! The running state: a [`Runtime`] snapshot (config, loaded filters, chains)
//! swapped atomically on every successful reload, and the long-lived
//! [`Proxy`] that owns it with everything that outlives a reload
//! (clusters and their stats, metrics, the shared store, the engine).

mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

pub use self::watch::watch;
use crate::FastMap;
use crate::config::Config;
use crate::telemetry::{ListenerStats, Metrics};
use crate::upstream::Upstreams;
use crate::wasm::{FilterModule, Hooks, HostEnv, LoadError, SharedStore, WasmEngine, sha256_hex};

/// A listener's filters, in order, with what the request path needs to know
/// about them precomputed.
pub struct Chain {
    pub filters: Vec<Arc<FilterModule>>,
    /// The first filter that declares the pick hook.
    pub balancer: Option<Arc<FilterModule>>,
    pub has_response_hooks: bool,
    pub has_done_hooks: bool,
    /// Some filter's `on-attempt` sees only failures and recoveries.
    pub watches_recoveries: bool,
    pub retry_buffer_bytes: usize,
    pub stats: Arc<ListenerStats>,
}

/// One consistent generation of config and filters.
pub struct Runtime {
    pub config: Arc<Config>,
    pub filters: BTreeMap<String, Arc<FilterModule>>,
    pub chains: FastMap<String, Arc<Chain>>,
}

/// Everything that lives as long as the process.
pub struct Proxy {
    pub runtime: ArcSwap<Runtime>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub env: Arc<HostEnv>,
    pub engine: WasmEngine,
    pub ready: AtomicBool,
    pub config_path: PathBuf,
    /// Trace export, when `[telemetry]` turns it on (set once by `run`).
    pub tracing: std::sync::OnceLock<Arc<crate::telemetry::trace::Tracing>>,
    /// Listeners' access logs (opened by `run`).
    pub access_logs: Arc<crate::telemetry::access::AccessLogs>,
}

impl Proxy {
    /// Builds the proxy from a validated config, loading every filter.
    /// Errors are one line per problem, each naming file, line or filter.
    pub fn new(config: Config) -> Result<Arc<Proxy>, Vec<String>> {
        let start = Instant::now();
        let cache_dir = config
            .runtime
            .cache_dir
            .as_ref()
            .map(|d| config.resolve(d))
            .or_else(crate::wasm::default_cache_dir);
        let engine = WasmEngine::new(cache_dir).map_err(|e| vec![format!("{e:#}")])?;
        let metrics = Arc::new(Metrics::default());
        let upstreams = Arc::new(Upstreams::new(start));
        metrics.add_collector(upstreams.clone());
        let access_logs = Arc::new(crate::telemetry::access::AccessLogs::default());
        metrics.add_collector(access_logs.clone());
        let env = Arc::new(HostEnv {
            store: SharedStore::default(),
            upstreams: upstreams.clone(),
            metrics: metrics.clone(),
            start,
            cluster_refs: Default::default(),
        });
        let config_path = config.path.clone();
        let runtime = build(&engine, &env, &metrics, config, None)?;
        apply_clusters(&upstreams, &runtime.config);
        Ok(Arc::new(Proxy {
            runtime: ArcSwap::from_pointee(runtime),
            upstreams,
            metrics,
            env,
            engine,
            ready: AtomicBool::new(false),
            config_path,
            tracing: std::sync::OnceLock::new(),
            access_logs,
        }))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Re-reads the config file and every module; swaps in a new runtime if
    /// anything changed and everything loads, else keeps the old one.
    pub fn reload(&self) -> Result<bool, Vec<String>> {
        let current = self.runtime.load_full();
        let text = std::fs::read_to_string(&self.config_path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", self.config_path.display())])?;
        let config_changed = text != current.config.text;
        let config = if config_changed {
            let parsed =
                Config::parse(&self.config_path, &text).and_then(|c| c.validate().map(|_| c));
            match parsed {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.config_reload(false);
                    return Err(vec![e.to_string()]);
                }
            }
        } else {
            (*current.config).clone()
        };
        if config_changed {
            let listeners: Vec<_> = current
                .config
                .listeners
                .iter()
                .map(|l| (&l.name, l.listen.get_ref()))
                .collect();
            let next: Vec<_> = config
                .listeners
                .iter()
                .map(|l| (&l.name, l.listen.get_ref()))
                .collect();
            if listeners != next || current.config.admin.listen != config.admin.listen {
                tracing::warn!(
                    "listener names and addresses are fixed at start; restart spindle to change them"
                );
            }
            let logs = |c: &Config| -> Vec<_> {
                c.listeners
                    .iter()
                    .map(|l| l.access_log.as_ref().map(|a| a.get_ref().clone()))
                    .collect()
            };
            if current.config.telemetry() != config.telemetry()
                || logs(&current.config) != logs(&config)
            {
                tracing::warn!(
                    "[telemetry] and access logs are read at start; restart spindle to change them"
                );
            }
        }
        let runtime = match build(
            &self.engine,
            &self.env,
            &self.metrics,
            config,
            Some(&current),
        ) {
            Ok(r) => r,
            Err(e) => {
                if config_changed {
                    self.metrics.config_reload(false);
                }
                return Err(e);
            }
        };
        let changed = config_changed
            || runtime.filters.iter().any(|(n, f)| {
                current
                    .filters
                    .get(n)
                    .is_none_or(|old| !Arc::ptr_eq(old, f))
            });
        if !changed {
            return Ok(false);
        }
        if config_changed {
            apply_clusters(&self.upstreams, &runtime.config);
            self.metrics.config_reload(true);
        }
        self.runtime.store(Arc::new(runtime));
        Ok(true)
    }
}

fn apply_clusters(upstreams: &Upstreams, config: &Config) {
    let clusters: Vec<_> = config
        .clusters
        .iter()
        .map(|(n, c)| (n.clone(), c.get_ref().clone()))
        .collect();
    upstreams.apply(&clusters);
}

/// Loads every filter of `config` (reusing unchanged versions from
/// `previous`) and assembles the chains.
fn build(
    engine: &WasmEngine,
    env: &Arc<HostEnv>,
    metrics: &Metrics,
    config: Config,
    previous: Option<&Runtime>,
) -> Result<Runtime, Vec<String>> {
    let mut errors = Vec::new();
    let mut filters = BTreeMap::new();
    for (name, spanned) in &config.filters {
        let spec = spanned.get_ref();
        let path = config.resolve(&spec.module);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("filter `{name}`: {}: cannot read: {e}", path.display());
                metrics.filter_reload(name, false, &msg);
                errors.push(msg);
                continue;
            }
        };
        let sha = sha256_hex(&bytes);
        if let Some(old) = previous.and_then(|p| p.filters.get(name))
            && old.sha256 == sha
            && old.spec == *spec
            && old.path == path
        {
            filters.insert(name.clone(), old.clone());
            continue;
        }
        let json = Config::filter_config_json(spec);
        match FilterModule::from_bytes(engine, env, name, spec, &json, path.clone(), &bytes) {
            Ok(m) => {
                tracing::info!(filter = %name, module = %path.display(), sha256 = %&sha[..12], "filter loaded");
                metrics.filter_reload(name, true, &sha);
                filters.insert(name.clone(), m);
            }
            Err(e) => {
                let msg = match &e {
                    LoadError::Config { message } => {
                        let span = spec.config.as_ref().map_or(spanned.span(), |c| c.span());
                        let line = config.line_of(key_offset(&config.text, span, message));
                        format!(
                            "{}:{line}: filter `{name}`: config: {}",
                            config.path.display(),
                            crate::config::improve_message(message)
                        )
                    }
                    other => format!("filter `{name}`: {other}"),
                };
                metrics.filter_reload(name, false, &msg);
                errors.push(msg);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut chains = FastMap::default();
    for l in &config.listeners {
        let list: Vec<Arc<FilterModule>> = l
            .filters
            .iter()
            .filter_map(|n| filters.get(n.get_ref()).cloned())
            .collect();
        let chain = Chain {
            balancer: list.iter().find(|f| f.has(Hooks::PICK)).cloned(),
            has_response_hooks: list.iter().any(|f| f.has(Hooks::RESPONSE)),
            has_done_hooks: list.iter().any(|f| f.has(Hooks::DONE)),
            watches_recoveries: list.iter().any(|f| f.failures_and_recoveries),
            retry_buffer_bytes: l.retry_buffer_bytes,
            stats: metrics.listener(&l.name),
            filters: list,
        };
        chains.insert(l.name.clone(), Arc::new(chain));
    }
    Ok(Runtime {
        config: Arc::new(config),
        filters,
        chains,
    })
}

/// `spindle check`: everything `run` does before binding sockets.
pub fn check(config: Config) -> Result<usize, Vec<String>> {
    let n = config.filters.len();
    Proxy::new(config).map(|_| n)
}

/// `GET /config`.
pub fn config_json(runtime: &Runtime) -> serde_json::Value {
    let c = &runtime.config;
    let filters: serde_json::Map<String, serde_json::Value> = runtime
        .filters
        .iter()
        .map(|(name, f)| {
            let mut v = version_json(f);
            v["memory_limit_mb"] = f.spec.memory_limit_mb.into();
            v["call_timeout_ms"] = f.spec.call_timeout_ms.into();
            v["config"] =
                serde_json::from_str(&Config::filter_config_json(&f.spec)).unwrap_or_default();
            (name.clone(), v)
        })
        .collect();
    let listeners: Vec<_> = c
        .listeners
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "listen": l.listen.get_ref(),
                "filters": l.filters.iter().map(|f| f.get_ref().clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let clusters: serde_json::Map<String, serde_json::Value> = c
        .clusters
        .iter()
        .map(|(n, cl)| {
            let cl = cl.get_ref();
            (
                n.clone(),
                serde_json::json!({
                    "endpoints": cl.endpoints.iter().map(|e| serde_json::json!({"address": e.address(), "weight": e.weight()})).collect::<Vec<_>>(),
                    "connect_timeout_ms": cl.connect_timeout_ms,
                    "timeout_ms": cl.timeout_ms,
                    "http2": cl.http2,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "path": c.path.display().to_string(),
        "admin": { "listen": c.admin.listen },
        "listeners": listeners,
        "filters": filters,
        "clusters": clusters,
    })
}

fn hook_names(h: Hooks) -> Vec<&'static str> {
    let all = [
        (Hooks::REQUEST, "request"),
        (Hooks::PICK, "pick"),
        (Hooks::ATTEMPT, "attempt"),
        (Hooks::RESPONSE, "response"),
        (Hooks::DONE, "done"),
    ];
    all.iter()
        .filter(|(f, _)| h.contains(*f))
        .map(|(_, n)| *n)
        .collect()
}

/// Where in `span` the key a filter's config error is about stands, so that
/// the error names the key's own line; the span's start when not found.
fn key_offset(text: &str, span: std::ops::Range<usize>, message: &str) -> usize {
    let key = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("missing field `"))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k);
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return span.start;
    };
    // A `[table]` header's span may cover only the header: look on to the
    // next table.
    let rest = text.get(span.start..).unwrap_or("");
    let table_end = rest
        .get(1..)
        .and_then(|r| r.find("\n[").map(|i| span.start + 1 + i))
        .unwrap_or(text.len());
    let end = span.end.max(table_end).min(text.len());
    let region = text.get(span.start..end).unwrap_or("");
    let mut from = 0;
    while let Some(i) = region[from..].find(key) {
        let at = from + i;
        let before = region[..at].chars().next_back();
        let after = region[at + key.len()..].trim_start();
        let starts_key =
            before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '"');
        let after = after.strip_prefix('"').unwrap_or(after).trim_start();
        if starts_key && after.starts_with('=') {
            return span.start + at;
        }
        from = at + key.len();
    }
    span.start
}

/// What `/config` and `/filters` both say of a running filter version.
fn version_json(f: &FilterModule) -> serde_json::Value {
    let loaded = f
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({
        "module": f.path.display().to_string(),
        "sha256": f.sha256,
        "loaded_at_unix_ms": loaded,
        "hooks": hook_names(f.hooks),
        "per_try_timeout_ms": f.per_try_timeout.map(|d| d.as_millis() as u64),
        "request_min_in_flight": f.request_min_in_flight,
        "attempt_outcomes": if f.failures_and_recoveries { "failures_and_recoveries" } else { "all" },
        "request_path": f.request_path,
        "fail": f.spec.fail,
        "instances": f.instances.load(Ordering::Relaxed),
        "idle_instances": f.idle_instances(),
        "calls": f.calls.load(Ordering::Relaxed),
        "errors": f.errors.load(Ordering::Relaxed),
    })
}

/// `GET /filters`: each filter's running version, pool and reload history.
pub fn filters_json(runtime: &Runtime, metrics: &Metrics) -> serde_json::Value {
    let filters: Vec<serde_json::Value> = runtime
        .filters
        .iter()
        .map(|(name, f)| {
            let mut v = version_json(f);
            v["name"] = name.as_str().into();
            v["reloads"] = metrics.reload_history(name).into();
            v
        })
        .collect();
    serde_json::json!({ "filters": filters })
}

/// A per-filter gauge: name, help, and its value.
type FilterGauge = (&'static str, &'static str, fn(&FilterModule) -> usize);

/// Gauges that describe the running filter versions, appended to `/metrics`.
pub fn render_filter_gauges(runtime: &Runtime, out: &mut String) {
    use std::fmt::Write as _;
    let gauges: [FilterGauge; 2] = [
        (
            "spindle_filter_instances",
            "Live instances of the running version of each filter.",
            |f| f.instances.load(Ordering::Relaxed),
        ),
        (
            "spindle_filter_idle_instances",
            "Warm instances waiting in each filter's pool.",
            FilterModule::idle_instances,
        ),
    ];
    for (metric, help, value) in gauges {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for (name, f) in &runtime.filters {
            let _ = writeln!(
                out,
                "{metric}{{filter=\"{}\"}} {}",
                crate::telemetry::escape(name),
                value(f)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key_offset;

    #[test]
    fn finds_the_line_of_an_unknown_key() {
        let text = "[filter.retry.config]\nattempts2 = 1\natempts = 3\n";
        let at = key_offset(
            text,
            0..text.len(),
            "unknown field `atempts`, expected `attempts`",
        );
        assert_eq!(&text[at..at + 7], "atempts");
        let inline = "config = { x = 1, atempts = 3 }";
        let at = key_offset(
            inline,
            9..inline.len(),
            "routes[0]: unknown field `atempts`",
        );
        assert_eq!(&inline[at..at + 7], "atempts");
        assert_eq!(key_offset(text, 3..text.len(), "something else"), 3);
    }
}
