//! One loaded version of a filter: its compiled component, a pool of warm
//! instances, and the hook calls the chain makes.
//!
//! An instance is checked out for one hook call and put back right after, so
//! at most one request uses it at a time and the pool only needs as many
//! instances as there are threads calling. A call that traps, hits its
//! deadline or its memory cap throws the instance away; the filter stays live.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Store;

use super::bindings::exports::spindle::filter::filter::{
    AttemptAction, AttemptOutcome, Endpoint as WitEndpoint, PickContext,
    RequestAction as WitRequestAction, RequestSummary,
};
use super::bindings::spindle::filter::types::{AttemptOutcomes, Declaration, Hooks, LocalReply};
use super::bindings::{SpindleFilter, SpindleFilterPre};
use super::engine::{EpochTicker, WasmEngine};
use super::host::{DeadlineWatch, HostEnv, HostState};
use crate::chain::RequestCtx;
use crate::config::{FailMode, FilterConfig};
use crate::telemetry::{FilterMetrics, lock};
use crate::upstream::{Cluster, Healthy};

/// Why a filter version could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Compile {
        path: PathBuf,
        source: super::engine::CompileError,
    },
    #[error("{path}: cannot link (a filter may import only spindle:filter/host@0.3.0): {message}")]
    Link { path: PathBuf, message: String },
    #[error("{path}: cannot instantiate: {message}")]
    Instantiate { path: PathBuf, message: String },
    #[error("filter refused its config: {message}")]
    Config { message: String },
}

/// What a filter's `on-request` decided.
#[derive(Debug)]
pub enum RequestAction {
    Continue,
    /// Answer with this reply (the filter gave it with the `reply` host call).
    Respond(LocalReply),
    Delay(u32),
    /// Choose this cluster (the name behind the number the filter returned) and go on.
    Route(Arc<str>),
}

/// How a hook call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Trap,
    Deadline,
    Memory,
    Instantiate,
}

impl FailKind {
    pub fn label(self) -> &'static str {
        match self {
            FailKind::Trap => "trap",
            FailKind::Deadline => "deadline",
            FailKind::Memory => "memory",
            FailKind::Instantiate => "instantiate",
        }
    }
}

/// A failed hook call.
#[derive(Debug, thiserror::Error)]
#[error("filter `{filter}`: {} ({message})", kind.label())]
pub struct FilterError {
    pub filter: Arc<str>,
    pub kind: FailKind,
    pub message: String,
}

struct Slot {
    store: Store<HostState>,
    bindings: SpindleFilter,
    /// The generation of each cluster's healthy set this instance has seen.
    views: Vec<(Arc<str>, u64)>,
    /// The path passed to `on-request` (for a filter that declared `request-path`), copied
    /// out of the request bound in the store: its capacity is reused call after call.
    path: String,
}

/// One version of one filter.
pub struct FilterModule {
    pub name: Arc<str>,
    pub path: PathBuf,
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub spec: FilterConfig,
    pub hooks: Hooks,
    /// The per-try timeout it declared at init: applied to every request that passes it.
    pub per_try_timeout: Option<Duration>,
    /// It declared that `on-request` need only run from this many attempts in flight on the
    /// request's cluster.
    pub request_min_in_flight: Option<u32>,
    /// It declared that `on-attempt` need only see failures and recoveries.
    pub failures_and_recoveries: bool,
    /// It declared `request-path`: `on-request` gets the path as a parameter.
    pub request_path: bool,
    config_json: String,
    pre: SpindleFilterPre<HostState>,
    engine: wasmtime::Engine,
    ticker: Arc<EpochTicker>,
    env: Arc<HostEnv>,
    metrics: Arc<FilterMetrics>,
    /// Boxed: a check-out and check-in moves a pointer, not the instance's few hundred bytes.
    #[expect(
        clippy::vec_box,
        reason = "a slot moves out of the pool and back for every hook call"
    )]
    idle: Mutex<Vec<Box<Slot>>>,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub instances: AtomicUsize,
}

impl FilterModule {
    /// Compiles, links, instantiates and initialises a filter: a version
    /// that gets through all of this is ready to serve.
    pub fn from_bytes(
        engine: &WasmEngine,
        env: &Arc<HostEnv>,
        name: &str,
        spec: &FilterConfig,
        config_json: &str,
        path: PathBuf,
        bytes: &[u8],
    ) -> Result<Arc<FilterModule>, LoadError> {
        let sha256 = hex(&Sha256::digest(bytes));
        let component = engine
            .component(bytes, &sha256)
            .map_err(|source| LoadError::Compile {
                path: path.clone(),
                source,
            })?;
        let pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = SpindleFilterPre::new(pre).map_err(|e| LoadError::Link {
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
        let mut module = FilterModule {
            name: Arc::from(name),
            path: path.clone(),
            sha256,
            loaded_at: SystemTime::now(),
            spec: spec.clone(),
            hooks: Hooks::empty(),
            per_try_timeout: None,
            request_min_in_flight: None,
            failures_and_recoveries: false,
            request_path: false,
            config_json: config_json.to_string(),
            pre,
            engine: engine.engine.clone(),
            ticker: engine.ticker.clone(),
            env: env.clone(),
            metrics: {
                let m = env.metrics.filter(name);
                m.set_max_series(spec.max_metric_series);
                m
            },
            idle: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            instances: AtomicUsize::new(0),
        };
        let (slot, declared) = module.instantiate().map_err(|e| match e {
            InstantiateError::Config(message) => LoadError::Config { message },
            InstantiateError::Failed(message) => LoadError::Instantiate { path, message },
        })?;
        module.hooks = declared.hooks;
        module.per_try_timeout = declared
            .per_try_timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms.max(1))));
        // Only meaningful for a filter that has the hook.
        module.request_min_in_flight = declared
            .request_min_in_flight
            .filter(|_| declared.hooks.contains(Hooks::REQUEST));
        module.failures_and_recoveries = declared.hooks.contains(Hooks::ATTEMPT)
            && declared.attempt_outcomes == AttemptOutcomes::FailuresAndRecoveries;
        module.request_path = declared.request_path && declared.hooks.contains(Hooks::REQUEST);
        lock(&module.idle).push(slot);
        Ok(Arc::new(module))
    }

    pub fn fail_mode(&self) -> FailMode {
        self.spec.fail
    }

    pub fn has(&self, hook: Hooks) -> bool {
        self.hooks.contains(hook)
    }

    pub fn idle_instances(&self) -> usize {
        lock(&self.idle).len()
    }

    fn instantiate(&self) -> Result<(Box<Slot>, Declaration), InstantiateError> {
        let state = HostState {
            filter: self.name.clone(),
            env: self.env.clone(),
            filter_metrics: self.metrics.clone(),
            req: None,
            memory_limit: (self.spec.memory_limit_mb as usize) << 20,
            memory_exceeded: false,
            deadline: DeadlineWatch::default(),
            reply: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        let interval = self.spec.call_timeout_ms.max(1);
        store.epoch_deadline_callback(move |mut cx| {
            deadline_passed(&mut cx.data_mut().deadline, interval)
        });
        // Instantiation (start functions) and `init` run guest code too.
        let _running = self.ticker.running();
        store.set_epoch_deadline(interval * 10);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| InstantiateError::Failed(format!("{e:#}")))?;
        store.set_epoch_deadline(interval * 10);
        let declared = bindings
            .spindle_filter_filter()
            .call_init(&mut store, &self.config_json)
            .map_err(|e| InstantiateError::Failed(format!("init: {e:#}")))?
            .map_err(InstantiateError::Config)?;
        self.instances.fetch_add(1, Ordering::Relaxed);
        Ok((
            Box::new(Slot {
                store,
                bindings,
                views: Vec::new(),
                path: String::new(),
            }),
            declared,
        ))
    }

    fn checkout(&self) -> Result<Box<Slot>, FilterError> {
        if let Some(slot) = lock(&self.idle).pop() {
            return Ok(slot);
        }
        match self.instantiate() {
            Ok((slot, _)) => Ok(slot),
            Err(e) => {
                let message = match e {
                    InstantiateError::Config(m) | InstantiateError::Failed(m) => m,
                };
                Err(self.failed(FailKind::Instantiate, message))
            }
        }
    }

    fn checkin(&self, slot: Box<Slot>) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.spec.max_idle_instances {
            idle.push(slot);
        } else {
            drop(idle);
            self.instances.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Checks an instance out of the pool and back in without calling it:
    /// the pool's own share of every hook call, for the micro-benchmarks
    /// (`host/benches`).
    pub fn cycle_instance(&self) -> Result<(), FilterError> {
        let slot = self.checkout()?;
        self.checkin(slot);
        Ok(())
    }

    fn failed(&self, kind: FailKind, message: String) -> FilterError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.env.metrics.filter_error(&self.name, kind.label());
        tracing::warn!(filter = %self.name, kind = kind.label(), "filter failed: {message}");
        FilterError {
            filter: self.name.clone(),
            kind,
            message,
        }
    }

    /// Runs one guest call with the request bound to a checked-out instance.
    ///
    /// Deadlines are epochs, ticked every millisecond while a call runs (see
    /// [`EpochTicker`]), checked against CPU time: see [`deadline_passed`].
    fn call<R>(
        &self,
        hook: usize,
        req: &mut Option<Box<RequestCtx>>,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<R>,
    ) -> Result<R, FilterError> {
        // One call in TIMING_SAMPLE is timed: two clock reads are a fifth of
        // an empty hook's cost, and a sample gives the same distribution.
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let started = n
            .is_multiple_of(TIMING_SAMPLE)
            .then(std::time::Instant::now);
        let mut slot = match self.checkout() {
            Ok(s) => s,
            Err(e) => {
                self.calls.fetch_sub(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let data = slot.store.data_mut();
        data.req = req.take();
        data.deadline = DeadlineWatch::default();
        let ticks = self.spec.call_timeout_ms.max(1);
        slot.store.set_epoch_deadline(ticks);
        let running = self.ticker.running();
        let result = f(&mut slot);
        drop(running);
        *req = slot.store.data_mut().req.take();
        if let Some(c) = self.metrics.call_counts.get(hook) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(started), Some(h)) = (started, self.metrics.calls.get(hook)) {
            h.observe_ns(started.elapsed().as_nanos() as u64);
        }
        match result {
            Ok(v) => {
                self.checkin(slot);
                Ok(v)
            }
            Err(e) => {
                let kind = if slot.store.data().memory_exceeded {
                    FailKind::Memory
                } else if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                    FailKind::Deadline
                } else {
                    FailKind::Trap
                };
                self.instances.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
                Err(self.failed(kind, format!("{e:#}")))
            }
        }
    }

    pub fn on_request(
        &self,
        req: &mut Option<Box<RequestCtx>>,
    ) -> Result<RequestAction, FilterError> {
        let traced = traced(req);
        let pass_path = self.request_path;
        let action = self.call(HOOK_REQUEST, req, |s| {
            let path = match (pass_path, s.store.data().req.as_deref()) {
                (true, Some(r)) => {
                    s.path.clear();
                    s.path.push_str(r.path());
                    Some(s.path.as_str())
                }
                _ => None,
            };
            s.store.data_mut().reply = None;
            let action =
                s.bindings
                    .spindle_filter_filter()
                    .call_on_request(&mut s.store, path, traced)?;
            let reply = s.store.data_mut().reply.take();
            Ok(match action {
                WitRequestAction::Continue => Ok(RequestAction::Continue),
                WitRequestAction::Delay(ms) => Ok(RequestAction::Delay(ms)),
                WitRequestAction::Respond => reply
                    .map(RequestAction::Respond)
                    .ok_or_else(|| "on-request returned `respond` without a `reply`".to_string()),
                WitRequestAction::Route(n) => self
                    .env
                    .cluster_refs
                    .name(n)
                    .map(RequestAction::Route)
                    .ok_or_else(|| {
                        format!(
                            "on-request returned `route({n})`, a number `cluster-ref` never gave"
                        )
                    }),
            })
        })?;
        // A broken answer is the filter's fault, as a trap is; its instance is sound.
        action.map_err(|message| self.failed(FailKind::Trap, message))
    }

    /// Asks the balancer for an endpoint, first bringing the instance's view
    /// of the cluster up to date if it is stale.
    pub fn pick(
        &self,
        req: &mut Option<Box<RequestCtx>>,
        cluster: &Cluster,
        healthy: &Healthy,
        attempt: u32,
        previous: Option<u32>,
    ) -> Result<Option<u32>, FilterError> {
        let timeout_ms = self.spec.call_timeout_ms.max(1);
        let traced = traced(req);
        let ticket = cluster.next_ticket();
        self.call(HOOK_PICK, req, |s| {
            let known = s.views.iter().position(|(c, _)| **c == *cluster.name);
            if known.map(|i| s.views[i].1) != Some(healthy.generation) {
                let list: Vec<WitEndpoint> = healthy
                    .endpoints
                    .iter()
                    .map(|e| WitEndpoint {
                        id: e.id,
                        address: e.address.clone(),
                        weight: e.weight,
                    })
                    .collect();
                // Rebuilding a balancer's structures (a hash ring over 1,000
                // endpoints takes milliseconds) gets init's deadline, not a pick's.
                s.store.set_epoch_deadline(timeout_ms * 10);
                s.bindings.spindle_filter_filter().call_endpoints_changed(
                    &mut s.store,
                    cluster.id,
                    &cluster.name,
                    &list,
                )?;
                s.store.set_epoch_deadline(timeout_ms);
                match known {
                    Some(i) => s.views[i].1 = healthy.generation,
                    None => s.views.push((cluster.name.clone(), healthy.generation)),
                }
            }
            let ctx = PickContext {
                cluster_id: cluster.id,
                attempt,
                previous,
                ticket,
                traced,
            };
            s.bindings
                .spindle_filter_filter()
                .call_pick_endpoint(&mut s.store, ctx)
        })
    }

    pub fn on_attempt(
        &self,
        req: &mut Option<Box<RequestCtx>>,
        outcome: &AttemptOutcome,
    ) -> Result<AttemptAction, FilterError> {
        let traced = traced(req);
        self.call(HOOK_ATTEMPT, req, |s| {
            s.bindings
                .spindle_filter_filter()
                .call_on_attempt(&mut s.store, outcome, traced)
        })
    }

    pub fn on_response(&self, req: &mut Option<Box<RequestCtx>>) -> Result<(), FilterError> {
        let traced = traced(req);
        self.call(HOOK_RESPONSE, req, |s| {
            s.bindings
                .spindle_filter_filter()
                .call_on_response(&mut s.store, traced)
        })
    }

    pub fn on_done(
        &self,
        req: &mut Option<Box<RequestCtx>>,
        summary: &RequestSummary,
    ) -> Result<(), FilterError> {
        let traced = traced(req);
        self.call(HOOK_DONE, req, |s| {
            s.bindings
                .spindle_filter_filter()
                .call_on_done(&mut s.store, summary, traced)
        })
    }
}

/// Whether the request's current span records what filters add: the hooks' `traced`.
fn traced(req: &mut Option<Box<RequestCtx>>) -> bool {
    req.as_mut()
        .and_then(|r| r.trace.as_mut())
        .is_some_and(|t| t.is_recording())
}

// Indexes into `FilterMetrics::calls` (see `telemetry::HOOK_NAMES`).
const HOOK_REQUEST: usize = 0;
const HOOK_PICK: usize = 1;
const HOOK_ATTEMPT: usize = 2;
const HOOK_RESPONSE: usize = 3;
const HOOK_DONE: usize = 4;

enum InstantiateError {
    Config(String),
    Failed(String),
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// sha256 of a file's bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hook calls are timed for `spindle_filter_call_duration_seconds` one in
/// this many (the first of each filter version included).
pub const TIMING_SAMPLE: u64 = 32;

/// The most times a call's deadline is extended because its thread did not
/// run (a starved machine): past that the call fails even so.
const MAX_DEADLINE_EXTENSIONS: u32 = 50;

/// Called by wasmtime when a guest call's epoch deadline (`interval_ms` of
/// wall-clock time) passes. A guest that spins is stopped; a guest whose
/// thread the OS did not run (an overloaded machine) is not: the first
/// time the deadline passes, the thread's CPU time is noted and the call
/// gets another interval; at the next check it fails if the thread ran for
/// at least half that interval, else it goes on (at most
/// `MAX_DEADLINE_EXTENSIONS` times). A spinning guest thus stops within two
/// intervals, and a starved one is not punished for the host's load.
fn deadline_passed(
    watch: &mut DeadlineWatch,
    interval_ms: u64,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let now = thread_cpu_ns();
    if watch.cpu_mark_ns != 0 {
        let ran = now.saturating_sub(watch.cpu_mark_ns);
        if ran >= interval_ms * 1_000_000 / 2 || watch.extensions >= MAX_DEADLINE_EXTENSIONS {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        watch.extensions += 1;
    }
    watch.cpu_mark_ns = now.max(1);
    Ok(wasmtime::UpdateDeadline::Continue(interval_ms))
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traps(r: wasmtime::Result<wasmtime::UpdateDeadline>) -> bool {
        r.is_err_and(|e| e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt))
    }

    #[test]
    fn a_spinning_call_is_stopped_at_the_second_check() {
        let mut watch = DeadlineWatch::default();
        assert!(!traps(deadline_passed(&mut watch, 20)));
        assert!(watch.cpu_mark_ns > 0);
        // Burn 12 ms of this thread's CPU: more than half the interval.
        let until = thread_cpu_ns() + 12_000_000;
        while thread_cpu_ns() < until {
            std::hint::spin_loop();
        }
        assert!(traps(deadline_passed(&mut watch, 20)));
    }

    #[test]
    fn a_thread_that_did_not_run_gets_more_time_but_not_forever() {
        let mut watch = DeadlineWatch::default();
        assert!(!traps(deadline_passed(&mut watch, 20)));
        // Sleeping costs no CPU, like a thread the OS preempted.
        std::thread::sleep(std::time::Duration::from_millis(25));
        assert!(!traps(deadline_passed(&mut watch, 20)));
        assert_eq!(watch.extensions, 1);
        watch.extensions = MAX_DEADLINE_EXTENSIONS;
        assert!(traps(deadline_passed(&mut watch, 20)));
    }
}
