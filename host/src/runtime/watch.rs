//! Hot swap: watch the config file and every module file, and reload when
//! one changes (written in place, renamed over, or created).
//!
//! Folders are watched rather than files, so that a file replaced by rename
//! is still seen. Events are debounced so that a burst of writes makes one
//! reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Proxy;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest wait between the first event of a burst and the reload.
const MAX_DELAY: Duration = Duration::from_millis(400);

/// Watches until the process ends. Returns an error only if no watcher can
/// be created at all.
pub fn watch(proxy: Arc<Proxy>) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    let mut dirs = BTreeSet::new();
    let mut files = watched_files(&proxy);
    rewatch(&mut watcher, &mut dirs, &files);
    tokio::spawn(async move {
        while let Some(path) = rx.recv().await {
            if !files.contains(&path) {
                continue;
            }
            // Debounce: wait until events stop for a moment, but never
            // longer than MAX_DELAY, so a file that keeps changing still
            // goes live within a second.
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let quiet = tokio::time::Instant::now() + DEBOUNCE;
                match tokio::time::timeout_at(quiet.min(deadline), rx.recv()).await {
                    Ok(Some(_)) if tokio::time::Instant::now() < deadline => continue,
                    Ok(Some(_)) => break,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let p = proxy.clone();
            let result = tokio::task::spawn_blocking(move || p.reload()).await;
            match result {
                Ok(Ok(true)) => tracing::info!("reloaded"),
                Ok(Ok(false)) => tracing::debug!("nothing changed"),
                Ok(Err(errors)) => {
                    for e in errors {
                        tracing::error!("reload refused, the running version keeps serving: {e}");
                    }
                }
                Err(e) => tracing::error!("reload task failed: {e}"),
            }
            files = watched_files(&proxy);
            rewatch(&mut watcher, &mut dirs, &files);
        }
    });
    Ok(())
}

/// The config file and every module file of the running config, as the
/// watcher will report them (canonical folder + file name).
fn watched_files(proxy: &Proxy) -> BTreeSet<PathBuf> {
    let runtime = proxy.runtime.load();
    let mut files = BTreeSet::new();
    files.insert(canonical(&proxy.config_path));
    for f in runtime.config.filters.values() {
        files.insert(canonical(&runtime.config.resolve(&f.get_ref().module)));
    }
    files
}

fn canonical(p: &Path) -> PathBuf {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match p.file_name() {
        Some(n) => dir.join(n),
        None => dir,
    }
}

fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut BTreeSet<PathBuf>,
    files: &BTreeSet<PathBuf>,
) {
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for d in dirs.difference(&wanted) {
        let _ = watcher.unwatch(d);
    }
    for d in wanted.difference(dirs) {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), "cannot watch for changes: {e}");
        }
    }
    *dirs = wanted;
}
