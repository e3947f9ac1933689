//! The README's examples work as written: every complete config in it (a
//! ```toml block with a `[[listener]]`) passes `spindle check` with the real
//! filters, and so does the quickstart's config file.

use std::path::Path;
use std::time::Duration;

use spindle_tests::{bounded, filters_dir, run_spindle, workspace_root};

const LIMIT: Duration = Duration::from_secs(120);

/// The ```toml blocks of a markdown file.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Points module paths at the built filters, wherever the README put them.
fn with_real_modules(config: &str) -> String {
    let dir = filters_dir();
    config
        .lines()
        .map(|l| match l.trim_start().strip_prefix("module = \"") {
            Some(rest) => {
                let file = rest.trim_end_matches('"');
                let name = Path::new(file)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(file);
                format!("module = \"{}\"", dir.join(name).display())
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn check(path: &Path) {
    let out = run_spindle(
        vec![
            "check".into(),
            "--config".into(),
            path.display().to_string(),
        ],
        LIMIT,
    )
    .await;
    assert!(
        out.status.success(),
        "spindle check {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_configs_pass_check() {
    bounded(LIMIT, async {
        let readme =
            std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
        let configs: Vec<String> = toml_blocks(&readme)
            .into_iter()
            .filter(|b| b.contains("[[listener]]"))
            .collect();
        assert!(
            !configs.is_empty(),
            "the README shows at least one complete config"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, c) in configs.iter().enumerate() {
            let path = dir.path().join(format!("readme-{i}.toml"));
            std::fs::write(&path, with_real_modules(c)).expect("write config");
            check(&path).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_config_passes_check() {
    bounded(LIMIT, async {
        let path = workspace_root().join("examples/quickstart/spindle.toml");
        let text = std::fs::read_to_string(&path).expect("quickstart config");
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("spindle.toml");
        std::fs::write(&copy, with_real_modules(&text)).expect("write config");
        check(&copy).await;
    })
    .await;
}
