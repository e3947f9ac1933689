//! Access logs: one JSON line per request, per listener, to a file or
//! stdout. The request path only formats the line and hands it to a bounded
//! queue; a thread per log writes it. A full queue drops the line and counts it.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::telemetry::{Collector, escape, lock};

/// Lines waiting for the writer thread; more are dropped.
const QUEUE_LINES: usize = 16 * 1024;

/// One listener's access log.
pub struct AccessLog {
    pub listener: String,
    tx: SyncSender<String>,
    written: Arc<AtomicU64>,
    dropped: AtomicU64,
}

/// What one request's line says.
pub struct AccessEntry<'a> {
    pub start: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub attempts: u32,
    pub duration: std::time::Duration,
    pub trace_id: Option<String>,
    pub request_id: &'a str,
    pub client: std::net::SocketAddr,
}

impl AccessLog {
    /// Opens (creating or appending to) `target`, or stdout for `"stdout"`,
    /// and starts its writer thread.
    pub fn open(listener: &str, target: &str, base: &Path) -> Result<Arc<AccessLog>, String> {
        let out: Box<dyn std::io::Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            let path = if Path::new(target).is_absolute() {
                Path::new(target).to_path_buf()
            } else {
                base.join(target)
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| {
                    format!(
                        "listener `{listener}`: cannot open access log {}: {e}",
                        path.display()
                    )
                })?;
            Box::new(file)
        };
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        std::thread::Builder::new()
            .name(format!("access-log-{listener}"))
            .spawn(move || write_lines(rx, out, &counter))
            .map_err(|e| format!("listener `{listener}`: cannot start the access log: {e}"))?;
        Ok(Arc::new(AccessLog {
            listener: listener.to_string(),
            tx,
            written,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues one line; never blocks.
    pub fn log(&self, e: &AccessEntry<'_>) {
        let line = serde_json::json!({
            "time": rfc3339(e.start),
            "listener": self.listener,
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "cluster": e.cluster,
            "endpoint": e.endpoint,
            "attempts": e.attempts,
            "duration_ms": e.duration.as_secs_f64() * 1000.0,
            "trace_id": e.trace_id,
            "request_id": e.request_id,
            "client": e.client.to_string(),
        })
        .to_string();
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty.
fn write_lines(rx: Receiver<String>, out: Box<dyn std::io::Write + Send>, written: &AtomicU64) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut batch = vec![line];
        batch.extend(rx.try_iter().take(1024));
        for l in &batch {
            if out
                .write_all(l.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .is_err()
            {
                break;
            }
        }
        if out.flush().is_ok() {
            written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        } else {
            tracing::warn!("access log: write failed");
        }
    }
}

/// Every listener's access log, for `/metrics`.
#[derive(Default)]
pub struct AccessLogs {
    logs: Mutex<Vec<Arc<AccessLog>>>,
}

impl AccessLogs {
    pub fn add(&self, log: Arc<AccessLog>) {
        lock(&self.logs).push(log);
    }

    pub fn get(&self, listener: &str) -> Option<Arc<AccessLog>> {
        lock(&self.logs)
            .iter()
            .find(|l| l.listener == listener)
            .cloned()
    }
}

impl Collector for AccessLogs {
    fn collect(&self, out: &mut String) {
        let logs = lock(&self.logs);
        if logs.is_empty() {
            return;
        }
        out.push_str("# HELP spindle_access_log_lines_total Access log lines, written or dropped (queue full), by listener.\n");
        out.push_str("# TYPE spindle_access_log_lines_total counter\n");
        for l in logs.iter() {
            let name = escape(&l.listener);
            out.push_str(&format!(
                "spindle_access_log_lines_total{{listener=\"{name}\",result=\"written\"}} {}\n",
                l.written.load(Ordering::Relaxed)
            ));
            out.push_str(&format!(
                "spindle_access_log_lines_total{{listener=\"{name}\",result=\"dropped\"}} {}\n",
                l.dropped.load(Ordering::Relaxed)
            ));
        }
    }
}

/// `2026-11-27T10:26:28.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_775_188_123);
        assert_eq!(rfc3339(t), "2026-11-27T10:26:28.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn writes_json_lines_to_a_file() {
        let dir = std::env::temp_dir().join(format!("spindle-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = AccessLog::open("edge", "access.jsonl", &dir).unwrap();
        log.log(&AccessEntry {
            start: SystemTime::UNIX_EPOCH,
            method: "GET",
            path: "/a?b=1",
            status: 200,
            cluster: Some("api"),
            endpoint: Some("127.0.0.1:9001"),
            attempts: 2,
            duration: Duration::from_micros(1500),
            trace_id: None,
            request_id: "r1",
            client: "127.0.0.1:5000".parse().unwrap(),
        });
        let path = dir.join("access.jsonl");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let text = loop {
            let t = std::fs::read_to_string(&path).unwrap_or_default();
            if t.ends_with('\n') || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/a?b=1");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["endpoint"], "127.0.0.1:9001");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["trace_id"], serde_json::Value::Null);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
