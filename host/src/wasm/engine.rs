//! The wasmtime engine: pooling allocator, epoch ticker for call deadlines,
//! and the on-disk cache of precompiled components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::SpindleFilter;
use super::host::HostState;
use crate::config::MAX_MEMORY_MB;

/// How often the epoch advances: the unit of per-call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

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

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("spindle-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

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

fn config(pooling: bool) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    // Measured: a sync call costs ~170 ns without, ~520 ns with (DESIGN.md).
    cfg.concurrency_support(false);
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(2000)
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
}
