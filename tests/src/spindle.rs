//! [`Workdir`] and [`Spindle`]: the real binary in a fresh temp dir.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::metrics::parse_metric;
use crate::upstream::Upstream;
use crate::{filter_module, filters_dir, spindle_bin};

/// How long `spindle run` may take to print `spindle: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERMed spindle may take to exit before it is killed.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// A temp dir holding a config (`spindle.toml`) and any module copies, plus what the
/// placeholders of a template expand to. Removed when dropped.
pub struct Workdir {
    dir: tempfile::TempDir,
    upstreams: HashMap<String, String>,
}

impl Workdir {
    /// A fresh dir; `{up:NAME}` expands to the address of the upstream named NAME.
    pub fn new(upstreams: &[&Upstream]) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("spindle-test-")
            .tempdir()
            .expect("create a temp dir");
        Workdir {
            dir,
            upstreams: upstreams
                .iter()
                .map(|u| (u.name().to_string(), u.address()))
                .collect(),
        }
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/spindle.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("spindle.toml")
    }

    /// Expands `{filters}`, `{dir}` and `{up:NAME}` in `template`; panics on an unknown upstream
    /// or a missing `{filters}/NAME.wasm` (with a hint to build the filters).
    pub fn render(&self, template: &str) -> String {
        for (at, _) in template.match_indices("{filters}/") {
            let rest = &template[at + "{filters}/".len()..];
            if let Some(name) = rest.split('"').next().and_then(|f| f.strip_suffix(".wasm")) {
                filter_module(name);
            }
        }
        let mut text = template
            .replace("{filters}", &filters_dir().to_string_lossy())
            .replace("{dir}", &self.dir().to_string_lossy());
        while let Some(start) = text.find("{up:") {
            let end = start
                + text[start..]
                    .find('}')
                    .unwrap_or_else(|| panic!("unterminated {{up:...}} in template"));
            let name = &text[start + 4..end];
            let addr = self
                .upstreams
                .get(name)
                .unwrap_or_else(|| panic!("template names unknown upstream {name:?}"))
                .clone();
            text.replace_range(start..=end, &addr);
        }
        text
    }

    /// Writes `contents` to `<dir>/<name>` atomically (a temp file renamed over it).
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir().join(name);
        let tmp = self.dir().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("rename onto {}: {e}", path.display()));
        path
    }

    /// Renders `template` into `spindle.toml` (atomically); returns the text written.
    pub fn write_config(&self, template: &str) -> String {
        let text = self.render(template);
        self.write_file("spindle.toml", text.as_bytes());
        text
    }

    /// Copies the built filter `filter` (e.g. `testbed`) to `<dir>/<dest>` atomically.
    pub fn install_module(&self, dest: &str, filter: &str) -> PathBuf {
        let src = filter_module(filter);
        let bytes = std::fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        self.write_file(dest, &bytes)
    }
}

/// Runs `spindle ARGS...` to completion (killing it after `timeout`).
pub async fn run_spindle(args: Vec<String>, timeout: Duration) -> Output {
    let bin = spindle_bin();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = stderr.join().unwrap_or_default();
                    panic!(
                        "spindle {args:?} did not exit within {timeout:?}; stderr:\n{}",
                        String::from_utf8_lossy(&stderr)
                    );
                }
            }
        };
        Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    })
    .await
    .expect("spindle runner thread")
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A running `spindle run --config <dir>/spindle.toml`. Dropping it sends SIGTERM, then SIGKILL
/// after [`TERM_GRACE`]; if the thread is panicking, its stdout and stderr are printed.
pub struct Spindle {
    child: Option<Child>,
    workdir: Workdir,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    client: Client,
}

enum Line {
    Out(String),
    Closed,
}

impl Spindle {
    /// Renders `template` with `upstreams` into a fresh dir and starts spindle on it.
    pub async fn start(template: &str, upstreams: &[&Upstream]) -> Spindle {
        Spindle::start_in(Workdir::new(upstreams), template).await
    }

    /// Starts spindle on `template` rendered in `workdir` (modules may be installed there first).
    /// Waits for `spindle: ready`; panics (with spindle's stderr) if it exits or takes too long.
    pub async fn start_in(workdir: Workdir, template: &str) -> Spindle {
        Spindle::start_bin(&spindle_bin(), workdir, template).await
    }

    /// [`Spindle::start_in`] with an explicit binary.
    pub async fn start_bin(bin: &Path, workdir: Workdir, template: &str) -> Spindle {
        workdir.write_config(template);
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(workdir.config_path())
            .current_dir(workdir.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        // Reap nothing here: `Spindle`'s Drop owns the child from now on.

        let stdout_buf = Arc::new(Mutex::new(Vec::new()));
        let stderr_buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let buf = stdout_buf.clone();
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(out);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    if let Ok(mut b) = buf.lock() {
                        b.extend_from_slice(line.as_bytes());
                    }
                    let _ = tx.send(Line::Out(line.trim_end().to_string()));
                    line.clear();
                }
                let _ = tx.send(Line::Closed);
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let buf = stderr_buf.clone();
            readers.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut b) = buf.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }));
        }

        let mut spindle = Spindle {
            child: Some(child),
            workdir,
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            listeners: HashMap::new(),
            stdout: stdout_buf,
            stderr: stderr_buf,
            readers,
            client: Client::new(),
        };
        let waited = tokio::task::spawn_blocking(move || wait_ready(rx))
            .await
            .expect("ready waiter thread");
        match waited {
            Ok((admin, listeners)) => {
                spindle.admin = admin;
                spindle.listeners = listeners;
                spindle
            }
            // Panicking with `spindle` alive stops the process and dumps its output.
            Err(why) => panic!("spindle did not become ready: {why}"),
        }
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://ADMIN` (no trailing slash).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("spindle announced no listener {name:?}"))
    }

    /// `http://LISTENER` (no trailing slash).
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.listener_addr(listener))
    }

    /// The working dir (config, modules).
    pub fn workdir(&self) -> &Workdir {
        &self.workdir
    }

    /// The temp dir holding the config.
    pub fn dir(&self) -> &Path {
        self.workdir.dir()
    }

    /// The config file spindle watches.
    pub fn config_path(&self) -> PathBuf {
        self.workdir.config_path()
    }

    /// Renders `template` and renames it over the watched config; returns the text written.
    pub fn rewrite_config(&self, template: &str) -> String {
        self.workdir.write_config(template)
    }

    /// Copies a built filter over `<dir>/<dest>` atomically.
    pub fn install_module(&self, dest: &str, filter: &str) -> PathBuf {
        self.workdir.install_module(dest, filter)
    }

    /// Writes a file in the dir atomically.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        self.workdir.write_file(name, contents)
    }

    /// A GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Result<crate::Resp, String> {
        self.client
            .get(&format!("{}{path}", self.admin_url()), &[])
            .await
    }

    /// One filter's entry of `GET /filters`; panics if there is none.
    pub async fn filter_view(&self, name: &str) -> serde_json::Value {
        let resp = self
            .admin_get("/filters")
            .await
            .unwrap_or_else(|e| panic!("GET /filters: {e}"));
        assert_eq!(resp.status, 200, "GET /filters: {}", resp.body);
        let all: serde_json::Value = serde_json::from_str(&resp.body).expect("/filters is JSON");
        all["filters"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no filter `{name}` in /filters: {all}"))
    }

    /// The `/metrics` text; panics if the admin listener does not answer 200.
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .admin_get("/metrics")
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body);
        resp.body
    }

    /// The sum of the series of `name` whose labels include `labels`, or `None`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        parse_metric(&self.metrics_text().await, name, labels)
    }

    /// Like [`Spindle::metric`], 0 when absent.
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).await.unwrap_or(0.0)
    }

    /// What spindle printed to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().map(|b| b.clone()).unwrap_or_default())
            .into_owned()
    }

    /// What spindle printed to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().map(|b| b.clone()).unwrap_or_default())
            .into_owned()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (does not wait).
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGTERM);
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (the `Child` is alive).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn wait_ready(
    rx: mpsc::Receiver<Line>,
) -> Result<(SocketAddr, HashMap<String, SocketAddr>), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut admin = None;
    let mut listeners = HashMap::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(Line::Out(line)) => line,
            Ok(Line::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("spindle closed stdout (exited?) before `spindle: ready`".into());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no `spindle: ready` within {READY_TIMEOUT:?}"));
            }
        };
        if let Some(addr) = line.strip_prefix("spindle: admin listening on ") {
            admin = Some(
                addr.trim()
                    .parse()
                    .map_err(|e| format!("bad admin address in {line:?}: {e}"))?,
            );
        } else if let Some(rest) = line.strip_prefix("spindle: listener ") {
            let (name, addr) = rest
                .split_once(" listening on ")
                .ok_or_else(|| format!("unexpected line {line:?}"))?;
            let addr = addr
                .trim()
                .parse()
                .map_err(|e| format!("bad listener address in {line:?}: {e}"))?;
            listeners.insert(name.trim().to_string(), addr);
        } else if line.trim() == "spindle: ready" {
            let admin = admin.ok_or("`spindle: ready` before the admin address")?;
            return Ok((admin, listeners));
        }
    }
}

impl Drop for Spindle {
    fn drop(&mut self) {
        let mut status = None;
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
            } else {
                signal(&child, libc::SIGTERM);
                let deadline = Instant::now() + TERM_GRACE;
                loop {
                    match child.try_wait() {
                        Ok(Some(s)) => {
                            status = Some(s);
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            let _ = child.kill();
                            status = child.wait().ok();
                            break;
                        }
                    }
                }
            }
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if std::thread::panicking() || std::env::var_os("SPINDLE_TEST_LOG").is_some() {
            eprintln!(
                "---- spindle (config {}) exit {status:?}\n---- stdout:\n{}\n---- stderr:\n{}\n----",
                self.config_path().display(),
                self.stdout(),
                self.stderr()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn render_expands_placeholders() {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let text = wd.render(
            "m = \"{filters}/router\"\nd = \"{dir}\"\ne = [\"{up:a}\", \"{up:a}\"]\nt = { x = 1 }",
        );
        assert!(text.contains(&format!("{}/router\"", filters_dir().display())));
        assert!(text.contains(&wd.dir().display().to_string()));
        assert!(text.contains(&format!("[\"{0}\", \"{0}\"]", a.address())));
        assert!(text.ends_with("t = { x = 1 }"));
        wd.write_config("x = 1");
        assert_eq!(std::fs::read_to_string(wd.config_path()).unwrap(), "x = 1");
    }

    fn fake_spindle(wd: &Workdir, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = wd.write_file("fake-spindle.sh", format!("#!/bin/sh\n{body}\n").as_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn process_lifecycle_with_a_fake_binary() {
        let wd = Workdir::new(&[]);
        let bin = fake_spindle(
            &wd,
            r#"test "$1" = run && test "$2" = --config && test -f "$3" || exit 3
echo "spindle: admin listening on 127.0.0.1:4100"
echo "some log" >&2
echo "spindle: listener edge listening on 127.0.0.1:4101"
echo "spindle: ready"
trap 'exit 0' TERM
while true; do sleep 0.05; done"#,
        );
        let mut sp = Spindle::start_bin(&bin, wd, "x = 1").await;
        assert_eq!(sp.url("edge"), "http://127.0.0.1:4101");
        assert_eq!(sp.admin_url(), "http://127.0.0.1:4100");
        assert!(sp.stdout().contains("spindle: ready"));
        assert!(wait_until_sync(|| sp.stderr().contains("some log")));
        sp.sigterm();
        let status = sp.wait_exit(Duration::from_secs(5)).await.expect("exited");
        assert!(status.success());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_kills_a_binary_that_ignores_sigterm() {
        let wd = Workdir::new(&[]);
        let bin = fake_spindle(
            &wd,
            // The trap is set before "ready": a SIGTERM sent right after must find it.
            r#"trap '' TERM
echo "spindle: admin listening on 127.0.0.1:4100"
echo "spindle: ready"
while true; do sleep 0.05; done"#,
        );
        let sp = Spindle::start_bin(&bin, wd, "").await;
        let pid = sp.pid().unwrap() as libc::pid_t;
        let started = Instant::now();
        drop(sp);
        assert!(started.elapsed() >= TERM_GRACE);
        // SAFETY: signal 0 only probes; the pid was reaped by Drop, so it no longer exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "did not become ready")]
    async fn early_exit_is_reported() {
        let wd = Workdir::new(&[]);
        let bin = fake_spindle(&wd, "echo 'config error' >&2; exit 1");
        let _ = Spindle::start_bin(&bin, wd, "").await;
    }

    fn wait_until_sync(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn ready_lines_are_parsed() {
        let (tx, rx) = mpsc::channel();
        for line in [
            "spindle: admin listening on 127.0.0.1:4000",
            "something else",
            "spindle: listener edge listening on 127.0.0.1:4001",
            "spindle: listener inner listening on 127.0.0.1:4002",
            "spindle: ready",
        ] {
            tx.send(Line::Out(line.to_string())).unwrap();
        }
        let (admin, listeners) = wait_ready(rx).unwrap();
        assert_eq!(admin.port(), 4000);
        assert_eq!(listeners["edge"].port(), 4001);
        assert_eq!(listeners["inner"].port(), 4002);

        let (tx, rx) = mpsc::channel();
        tx.send(Line::Out("spindle: ready".into())).unwrap();
        assert!(wait_ready(rx).is_err());
        let (tx, rx) = mpsc::channel();
        tx.send(Line::Closed).unwrap();
        assert!(wait_ready(rx).is_err());
    }
}
