//! `spindle check` (and `run`) reject bad configs with the file, line and key.

use std::time::Duration;

use spindle_tests::config::{cluster, filter, head, round_robin, router_all_to};
use spindle_tests::{Upstream, Workdir, bounded, run_spindle};

const LIMIT: Duration = Duration::from_secs(60);

fn good_config() -> String {
    head(&["router", "balancer", "retry", "breaker"])
        + &router_all_to("api")
        + &round_robin()
        + &filter(
            "retry",
            "retry",
            "attempts = 3\nretry_on = [\"5xx\", \"connect-failure\"]",
        )
        + &filter(
            "breaker",
            "breaker",
            "consecutive_failures = 5\nbase_ejection_ms = 500",
        )
        + &cluster("api", &["a"])
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

/// Whether `stderr` names `spindle.toml:LINE` (not a longer line number).
fn names_line(stderr: &str, line: usize) -> bool {
    let needle = format!("spindle.toml:{line}");
    stderr.match_indices(&needle).any(|(i, _)| {
        !stderr[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

async fn check(wd: &Workdir, template: &str) -> (bool, String, String) {
    let text = wd.write_config(template);
    let out = run_spindle(
        vec![
            "check".into(),
            "--config".into(),
            wd.config_path().to_string_lossy().into_owned(),
        ],
        LIMIT,
    )
    .await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_good_config() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let (ok, stderr, _) = check(&wd, &good_config()).await;
        assert!(ok, "a good config passes check: {stderr}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_typo_in_a_filter_config_with_its_line() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let bad = good_config().replace("attempts = 3", "atempts = 3");
        let (ok, stderr, text) = check(&wd, &bad).await;
        assert!(!ok, "`atempts` must fail check");
        assert!(stderr.contains("atempts"), "names the key: {stderr}");
        let line = line_of(&text, "atempts");
        assert!(
            names_line(&stderr, line),
            "names spindle.toml:{line}: {stderr}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_an_unknown_listener_key_with_its_line() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let bad = good_config().replace("name = \"edge\"", "name = \"edge\"\nmax_conections = 10");
        let (ok, stderr, text) = check(&wd, &bad).await;
        assert!(!ok, "an unknown listener key must fail check");
        assert!(stderr.contains("max_conections"), "names the key: {stderr}");
        let line = line_of(&text, "max_conections");
        assert!(
            names_line(&stderr, line),
            "names spindle.toml:{line}: {stderr}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_undefined_filters_and_clusters() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);

        let bad = good_config().replace(
            "filters = [\"router\", \"balancer\", \"retry\", \"breaker\"]",
            "filters = [\"router\", \"balancer\", \"retyr\", \"breaker\"]",
        );
        assert!(bad.contains("retyr"));
        let (ok, stderr, _) = check(&wd, &bad).await;
        assert!(!ok, "a chain naming an undefined filter must fail check");
        assert!(stderr.contains("retyr"), "names the filter: {stderr}");

        let bad = good_config().replace("cluster = \"api\"", "cluster = \"apii\"");
        let (ok, stderr, _) = check(&wd, &bad).await;
        assert!(!ok, "a route to an undefined cluster must fail check");
        assert!(stderr.contains("apii"), "names the cluster: {stderr}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_bad_config() {
    bounded(Duration::from_secs(120), async {
        let a = Upstream::start("a").await;
        let wd = Workdir::new(&[&a]);
        let bad = good_config().replace("attempts = 3", "atempts = 3");
        wd.write_config(&bad);
        let out = run_spindle(
            vec![
                "run".into(),
                "--config".into(),
                wd.config_path().to_string_lossy().into_owned(),
            ],
            LIMIT,
        )
        .await;
        assert!(
            !out.status.success(),
            "run must exit non-zero on a bad config"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("atempts"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_help() {
    bounded(Duration::from_secs(60), async {
        for flag in ["--version", "--help"] {
            let out = run_spindle(vec![flag.into()], LIMIT).await;
            assert!(out.status.success(), "spindle {flag}");
            assert!(!out.stdout.is_empty(), "spindle {flag} prints something");
        }
    })
    .await
}
