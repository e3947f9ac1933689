//! The `spindle` command line: `run`, `check`, `--version`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use spindle_host::config::Config;
use spindle_host::runtime::Proxy;
use spindle_host::telemetry::access::AccessLog;
use spindle_host::telemetry::trace::Tracing;
use spindle_host::{admin, listener, runtime, telemetry};

#[derive(Parser)]
#[command(
    name = "spindle",
    version,
    about = "A WebAssembly-programmable HTTP proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT, then drain in-flight requests.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Parse, validate, compile every filter and run its config check.
    Check {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(&cli.log_level, matches!(cli.log_format, LogFormat::Json));
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    print_errors(&[e.to_string()]);
                    return ExitCode::from(2);
                }
            };
            // One serving thread: a current-thread runtime, which has no work-stealing queues,
            // no cross-thread wake-ups and no per-worker scheduling statistics to keep.
            let mut builder = match config.runtime.worker_threads {
                1 => tokio::runtime::Builder::new_current_thread(),
                0 => tokio::runtime::Builder::new_multi_thread(),
                n => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
            };
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("spindle: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            start(&rt, config)
        }
    }
}

fn print_errors(errors: &[String]) {
    for e in errors {
        eprintln!("error: {e}");
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            print_errors(&[e.to_string()]);
            return ExitCode::from(2);
        }
    };
    match runtime::check(config) {
        Ok(n) => {
            println!("{}: ok ({n} filters loaded and configured)", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

/// Loads the filters (on this thread, inside the runtime so that what they start can spawn
/// tasks), then serves until a signal.
fn start(rt: &tokio::runtime::Runtime, config: Config) -> ExitCode {
    let started = Instant::now();
    // On the main thread, before any serving: compilation's memory goes back to the main heap,
    // not to a blocking thread's arena that keeps it.
    let proxy = {
        let _entered = rt.enter();
        match Proxy::new(config) {
            Ok(p) => p,
            Err(errors) => {
                print_errors(&errors);
                return ExitCode::FAILURE;
            }
        }
    };
    rt.block_on(run(proxy, started))
}

async fn run(proxy: Arc<Proxy>, started: Instant) -> ExitCode {
    let runtime = proxy.runtime.load_full();
    let admin_addr = &runtime.config.admin.listen;
    let admin = match tokio::net::TcpListener::bind(admin_addr).await {
        Ok(l) => l,
        Err(e) => {
            print_errors(&[format!("admin: cannot listen on {admin_addr}: {e}")]);
            return ExitCode::FAILURE;
        }
    };
    let telemetry = runtime.config.telemetry();
    if telemetry.otlp_endpoint.is_some() {
        match Tracing::start(&telemetry) {
            Ok(t) => {
                proxy.metrics.add_collector(t.stats.clone());
                let _ = proxy.tracing.set(Arc::new(t));
            }
            Err(e) => {
                print_errors(&[e]);
                return ExitCode::FAILURE;
            }
        }
    }
    let config_dir = runtime
        .config
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    for l in &runtime.config.listeners {
        if let Some(target) = &l.access_log {
            match AccessLog::open(&l.name, target.get_ref(), &config_dir) {
                Ok(log) => proxy.access_logs.add(log),
                Err(e) => {
                    print_errors(&[e]);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    announce(&format!("admin listening on {}", local_addr(&admin)));
    tokio::spawn(admin::serve(admin, proxy.clone()));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let conns = Arc::new(listener::Connections::default());
    let mut accept_loops = Vec::new();
    for l in &runtime.config.listeners {
        let addr = l.listen.get_ref();
        let socket = match tokio::net::TcpListener::bind(addr.as_str()).await {
            Ok(s) => s,
            Err(e) => {
                print_errors(&[format!(
                    "listener `{}`: cannot listen on {addr}: {e}",
                    l.name
                )]);
                return ExitCode::FAILURE;
            }
        };
        announce(&format!(
            "listener {} listening on {}",
            l.name,
            local_addr(&socket)
        ));
        accept_loops.push(tokio::spawn(listener::serve(
            socket,
            l.clone(),
            proxy.clone(),
            conns.clone(),
            shutdown_rx.clone(),
        )));
    }
    drop(runtime);
    if let Err(e) = runtime::watch(proxy.clone()) {
        tracing::warn!("hot swap disabled: cannot watch files: {e}");
    }
    let sweeping = proxy.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweeping.env.store.sweep();
            sweeping.upstreams.sweep_idle();
        }
    });
    proxy.ready.store(true, Ordering::Release);
    tracing::info!(startup_ms = started.elapsed().as_millis() as u64, "ready");
    announce("ready");

    wait_for_signal().await;
    let drain = Duration::from_millis(proxy.runtime.load().config.runtime.drain_timeout_ms);
    tracing::info!(
        open_connections = conns.open(),
        "shutting down: draining in-flight requests"
    );
    proxy.ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    for a in accept_loops {
        let _ = a.await;
    }
    let deadline = Instant::now() + drain;
    while conns.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if conns.open() > 0 {
        tracing::warn!(
            open_connections = conns.open(),
            "drain timeout: closing the rest"
        );
    }
    if let Some(t) = proxy.tracing.get() {
        t.shutdown(Duration::from_secs(2)).await;
    }
    ExitCode::SUCCESS
}

/// The lines tests and scripts read from stdout to find ports.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "spindle: {line}");
    let _ = out.flush();
}

fn local_addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
