//! Logs, metrics, traces and access logs.

pub mod access;
mod metrics;
pub mod trace;

pub use self::metrics::{
    Collector, FilterMetrics, Histogram, Kind, ListenerStats, Metrics, escape, lock,
};

/// Sets up `tracing` for the process: `RUST_LOG` wins over `--log-level`.
pub fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
