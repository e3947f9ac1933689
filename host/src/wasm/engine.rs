//! The wasmtime engine: pooling allocator, epoch ticker for call deadlines,
//! and the on-disk cache of precompiled components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::SpindleFilter;
use super::host::HostState;
use crate::config::MAX_MEMORY_MB;

/// How often the epoch advances while a guest call may be running: the unit of per-call
/// deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long the idle ticker sleeps before it looks whether its engine is gone.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Advances the engine's epoch every [`EPOCH_TICK`] while a guest call's deadline lies ahead,
/// and sleeps when none does: an idle host does not wake a thousand times a second.
///
/// Every call (and every deadline extension) says how many ticks its deadline is away through
/// [`EpochTicker::cover`]; the ticker runs at least until then. Under load that costs each call
/// two atomic loads and, about once per tick, one `fetch_max`; the first call after a quiet
/// spell also wakes the ticker thread.
#[derive(Debug, Default)]
pub struct EpochTicker {
    /// Ticks so far: the engine's epoch (only the ticker thread writes it).
    epoch: AtomicU64,
    /// The ticker goes on while `epoch` is below this.
    until: AtomicU64,
    /// The ticker thread sleeps for want of calls.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl EpochTicker {
    /// Keeps the epoch advancing for at least `ticks` more ticks: a deadline set `ticks` ahead
    /// now is reached.
    #[inline]
    pub fn cover(&self, ticks: u64) {
        // One more: the engine's epoch may be a tick ahead of the mirror read here.
        let want = self.epoch.load(Ordering::Relaxed) + ticks + 1;
        if self.until.load(Ordering::Relaxed) >= want {
            return;
        }
        let before = self.until.fetch_max(want, Ordering::SeqCst);
        if before < want
            && self.parked.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// Ticks done so far.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Starts the thread that advances `engine`'s epoch; it ends soon after the engine does.
    fn start(self: &Arc<Self>, engine: &Engine) -> std::io::Result<()> {
        let weak = engine.weak();
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("spindle-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    let epoch = me.epoch.load(Ordering::Relaxed);
                    if epoch < me.until.load(Ordering::SeqCst) {
                        engine.increment_epoch();
                        me.epoch.store(epoch + 1, Ordering::Relaxed);
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                        continue;
                    }
                    drop(engine);
                    // Parked is announced before the last look at `until`: a `cover` after
                    // that look sees it and wakes the thread (an unpark before the park makes
                    // the park return at once).
                    me.parked.store(true, Ordering::SeqCst);
                    if me.epoch.load(Ordering::Relaxed) >= me.until.load(Ordering::SeqCst) {
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
    fn the_epoch_advances_only_while_a_deadline_is_ahead() {
        let e = WasmEngine::new(None).expect("engine");
        // No call yet: the ticker sleeps.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(e.ticker.epoch(), 0);
        e.ticker.cover(5);
        let start = std::time::Instant::now();
        while e.ticker.epoch() < 5 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the ticker did not wake"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Past the covered ticks it stops again.
        std::thread::sleep(Duration::from_millis(30));
        let settled = e.ticker.epoch();
        assert!(settled <= 6, "ticked past the cover: {settled}");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(e.ticker.epoch(), settled);
        // A second cover wakes it once more.
        e.ticker.cover(3);
        while e.ticker.epoch() < settled + 3 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the ticker did not wake again"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
