//! The wasmtime engine: pooling allocator, epoch ticker for call deadlines,
//! and the on-disk cache of precompiled components.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::SpindleFilter;
use super::host::HostState;
use crate::config::MAX_MEMORY_MB;
use crate::telemetry::lock;

/// How often the epoch advances while a guest call runs: the unit of per-call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long the ticker sleeps between looks while calls come and go but none is running when
/// it looks: how late it may notice a call that has begun.
pub const WATCH_STEP: Duration = Duration::from_millis(5);

/// How long without a call before the ticker parks (the next call wakes it): calls further
/// apart than this each wake the ticker (a futex wake), closer ones find it watching.
const IDLE_AFTER: Duration = Duration::from_millis(100);

/// How long the parked ticker sleeps before it looks whether its engine is gone (and, should a
/// call's wake-up have crossed its going to sleep, whether a call runs).
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Advances the engine's epoch every [`EPOCH_TICK`] while a guest call is running, and only
/// then: under load, calls last microseconds, and a ticker that ticked as long as some call's
/// deadline lay ahead woke a thousand times a second on the serving core.
///
/// A call's deadline is the epoch when it starts plus its limit in ticks. The epoch moves only
/// while some call runs, one tick per [`EPOCH_TICK`] at least: no call is stopped before its
/// limit has passed. Each thread counts the calls it starts and finishes ([`Running`], two
/// stores to its own counters); the ticker looks at the counts every [`WATCH_STEP`] while calls
/// come and go, ticks while one runs, and parks after [`IDLE_AFTER`] without any (the next
/// call wakes it). A call that spins is noticed within a [`WATCH_STEP`], then stopped a tick
/// after its deadline.
#[derive(Debug, Default)]
pub struct EpochTicker {
    /// Ticks so far: the engine's epoch (only the ticker thread writes it).
    epoch: AtomicU64,
    /// Each thread's calls through this ticker's engine.
    threads: Mutex<Vec<Arc<ThreadCalls>>>,
    /// The ticker thread sleeps for want of calls.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// One thread's guest calls: each count is written only by that thread.
#[derive(Debug, Default)]
struct ThreadCalls {
    started: AtomicU64,
    finished: AtomicU64,
}

/// This thread's counts and the ticker they are registered with (one engine per process: set
/// once per thread; a call through another engine's ticker moves them there).
struct Registration {
    ticker: Weak<EpochTicker>,
    calls: Arc<ThreadCalls>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.upgrade() {
            lock(&t.threads).retain(|c| !Arc::ptr_eq(c, &self.calls));
        }
    }
}

thread_local! {
    static CALLS: RefCell<Option<Registration>> = const { RefCell::new(None) };
}

/// A guest call in progress on this thread (see [`EpochTicker::running`]); it ends when
/// dropped, on the same thread.
#[must_use]
pub struct Running(PhantomData<*const ()>);

impl Drop for Running {
    fn drop(&mut self) {
        CALLS.with(|c| {
            if let Some(r) = c.borrow().as_ref() {
                let n = r.calls.finished.load(Ordering::Relaxed);
                r.calls.finished.store(n + 1, Ordering::Relaxed);
            }
        });
    }
}

impl EpochTicker {
    /// Marks a guest call running on this thread until the guard drops: the epoch advances
    /// meanwhile, so that the call's deadline comes.
    #[inline]
    pub fn running(self: &Arc<Self>) -> Running {
        CALLS.with(|c| {
            let mut c = c.borrow_mut();
            if !c
                .as_ref()
                .is_some_and(|r| std::ptr::eq(r.ticker.as_ptr(), Arc::as_ptr(self)))
            {
                let calls = Arc::new(ThreadCalls::default());
                lock(&self.threads).push(calls.clone());
                *c = Some(Registration {
                    ticker: Arc::downgrade(self),
                    calls,
                });
            }
            if let Some(r) = c.as_ref() {
                let n = r.calls.started.load(Ordering::Relaxed);
                r.calls.started.store(n + 1, Ordering::Relaxed);
            }
        });
        if self.parked.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Running(PhantomData)
    }

    /// Ticks done so far.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Calls started over every thread (a sum that changes when calls come), and whether one
    /// runs now.
    fn calls(&self) -> (u64, bool) {
        let threads = lock(&self.threads);
        let mut started_all = 0u64;
        let mut running = false;
        for t in threads.iter() {
            let started = t.started.load(Ordering::Relaxed);
            running |= started != t.finished.load(Ordering::Relaxed);
            started_all = started_all.wrapping_add(started);
        }
        (started_all, running)
    }

    /// Starts the thread that advances `engine`'s epoch; it ends soon after the engine does.
    fn start(self: &Arc<Self>, engine: &Engine) -> std::io::Result<()> {
        let weak = engine.weak();
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("spindle-epoch".into())
            .spawn(move || {
                let mut seen = 0u64;
                let mut quiet_since = std::time::Instant::now();
                while let Some(engine) = weak.upgrade() {
                    let (started, running) = me.calls();
                    if running {
                        engine.increment_epoch();
                        me.epoch.fetch_add(1, Ordering::Relaxed);
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                        continue;
                    }
                    drop(engine);
                    if started != seen {
                        seen = started;
                        quiet_since = std::time::Instant::now();
                    }
                    if quiet_since.elapsed() < IDLE_AFTER {
                        std::thread::sleep(WATCH_STEP);
                        continue;
                    }
                    // Parked is announced before the last look at the counts: a call after
                    // that look sees it and wakes the thread (an unpark before the park makes
                    // the park return at once).
                    me.parked.store(true, Ordering::SeqCst);
                    if me.calls() == (seen, false) {
                        std::thread::park_timeout(IDLE_CHECK);
                    }
                    me.parked.store(false, Ordering::SeqCst);
                }
            })?;
        let _ = self.thread.set(handle.thread().clone());
        Ok(())
    }
}

/// Why a module could not be turned into something runnable.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("is a core Wasm module, not a component: turn it into one with `spindle-componentize`")]
    CoreModule,
    #[error("is not a Wasm component (bad magic bytes)")]
    NotWasm,
    #[error("does not compile: {0}")]
    Compile(String),
}

/// The engine plus what every filter load needs.
pub struct WasmEngine {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    /// False when the pooling allocator could not reserve its memory.
    pub pooling: bool,
    /// Advances `engine`'s epoch while calls run.
    pub ticker: Arc<EpochTicker>,
    cache_dir: Option<PathBuf>,
    cache_key: String,
}

impl WasmEngine {
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let (engine, pooling) = match Engine::new(&config(true)) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(
                    "pooling allocator unavailable ({e}); using on-demand instance allocation"
                );
                let e =
                    Engine::new(&config(false)).map_err(|e| anyhow::anyhow!("wasm engine: {e}"))?;
                (e, false)
            }
        };
        let mut linker = Linker::new(&engine);
        SpindleFilter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("linking the host API: {e}"))?;

        let ticker = Arc::new(EpochTicker::default());
        ticker.start(&engine)?;

        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let cache_key = format!("{:016x}", h.finish());
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), "cannot create the compile cache ({e}); compiling every time");
        }
        Ok(Self {
            engine,
            pooling,
            ticker,
            linker,
            cache_dir,
            cache_key,
        })
    }

    /// Compiles a component, or loads it precompiled from the cache.
    pub fn component(&self, bytes: &[u8], sha256: &str) -> Result<Component, CompileError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(CompileError::NotWasm);
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(CompileError::CoreModule);
        }
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{sha256}-{}.cwasm", self.cache_key)));
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the cache directory belongs to this host; files are
            // written only by `store_cached` below, atomically, and named by
            // the source's sha256 and the engine's compatibility hash.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring bad cache entry: {e}"),
            }
        }
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| CompileError::Compile(format!("{e:#}")))?;
        if let Some(path) = &cached {
            store_cached(path, &compiled);
        }
        // SAFETY: `compiled` was produced by this engine just above.
        unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| CompileError::Compile(format!("{e:#}")))
    }
}

fn store_cached(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(path = %path.display(), "cannot write compile cache: {e}");
    }
}

/// Set (to anything but `0`), the engine writes a perf map of the compiled filters.
pub const PERFMAP_ENV: &str = "SPINDLE_WASM_PERFMAP";

fn config(pooling: bool) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    // Measured: a sync call costs ~170 ns without, ~520 ns with (DESIGN.md).
    cfg.concurrency_support(false);
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // For profiling the filters' own code: `/tmp/perf-<pid>.map` names each compiled function,
    // where perf (and `bench/icount.sh`'s callgrind profiles) would show bare addresses.
    if std::env::var_os(PERFMAP_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        // A filter built by spindle-componentize runs four core instances (its module,
        // wit-component's two import shims, the hooks' forwarder).
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(1000)
            .total_tables(2000)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size((MAX_MEMORY_MB as usize) << 20);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// The default compile-cache folder.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SPINDLE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("spindle"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("spindle"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_starts_and_refuses_non_components() {
        let dir = std::env::temp_dir().join(format!("spindle-engine-test-{}", std::process::id()));
        let e = WasmEngine::new(Some(dir.clone())).expect("engine");
        assert!(e.pooling, "the pooling allocator is available here");
        assert!(matches!(
            e.component(b"garbage!", "x"),
            Err(CompileError::NotWasm)
        ));
        assert!(matches!(
            e.component(b"\0asm\x01\0\0\0", "x"),
            Err(CompileError::CoreModule)
        ));
        assert!(matches!(
            e.component(b"\0asm\x0d\0\x01\0\xff\xff", "x"),
            Err(CompileError::Compile(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_epoch_advances_only_while_a_call_runs() {
        let e = WasmEngine::new(None).expect("engine");
        let wait_for = |epoch: u64, what: &str| {
            let start = std::time::Instant::now();
            while e.ticker.epoch() < epoch {
                assert!(start.elapsed() < Duration::from_secs(5), "{what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // No call yet: the ticker sleeps.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(e.ticker.epoch(), 0);
        let running = e.ticker.running();
        wait_for(5, "the ticker did not wake for a call");
        drop(running);
        // The call is over: the epoch stops (within a tick of the ticker's last look).
        std::thread::sleep(WATCH_STEP * 2);
        let settled = e.ticker.epoch();
        std::thread::sleep(WATCH_STEP * 6);
        assert_eq!(e.ticker.epoch(), settled, "ticked with no call running");
        // A call in another thread moves it again, a tick a millisecond at most.
        let ticker = e.ticker.clone();
        std::thread::spawn(move || {
            let _running = ticker.running();
            std::thread::sleep(Duration::from_millis(40));
        })
        .join()
        .expect("the calling thread");
        assert!(
            e.ticker.epoch() >= settled + 10,
            "40 ms of a call took the epoch from {settled} to {}",
            e.ticker.epoch()
        );
        // That thread's counts left with it.
        assert_eq!(lock(&e.ticker.threads).len(), 1);
    }

    #[test]
    fn the_ticker_parks_after_a_quiet_spell_and_a_call_wakes_it() {
        let e = WasmEngine::new(None).expect("engine");
        drop(e.ticker.running());
        let start = std::time::Instant::now();
        while !e.ticker.parked.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(5), "never parked");
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = e.ticker.epoch();
        let running = e.ticker.running();
        let woke = std::time::Instant::now();
        while e.ticker.epoch() < before + 3 {
            assert!(
                woke.elapsed() < Duration::from_secs(5),
                "the call did not wake it"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(running);
    }
}
