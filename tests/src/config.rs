//! Building blocks for config templates (see the crate docs for placeholders).

/// `[admin]` and one `[[listener]]` named `edge`, both on `127.0.0.1:0`, with this chain.
pub fn head(chain: &[&str]) -> String {
    let chain: Vec<String> = chain.iter().map(|f| format!("{f:?}")).collect();
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
filters = [{}]
"#,
        chain.join(", ")
    )
}

/// `[filter.NAME]` with the standard module `{filters}/MODULE.wasm` and a `config` table body
/// (TOML lines, may be empty).
pub fn filter(name: &str, module: &str, config: &str) -> String {
    format!(
        "\n[filter.{name}]\nmodule = \"{{filters}}/{module}.wasm\"\n[filter.{name}.config]\n{config}\n"
    )
}

/// A router sending every path to `cluster`.
pub fn router_all_to(cluster: &str) -> String {
    filter(
        "router",
        "router",
        &format!("routes = [ {{ path_prefix = \"/\", cluster = \"{cluster}\" }} ]"),
    )
}

/// A round-robin balancer.
pub fn round_robin() -> String {
    filter("balancer", "balancer", "policy = \"round_robin\"")
}

/// `[cluster.NAME]` over these upstream names (`{up:NAME}`), each with weight 1.
pub fn cluster(name: &str, upstreams: &[&str]) -> String {
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{{up:{u}}}\""))
        .collect();
    format!(
        "\n[cluster.{name}]\nendpoints = [{}]\nconnect_timeout_ms = 500\n",
        endpoints.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_render_as_expected() {
        assert!(head(&["router", "balancer"]).contains("filters = [\"router\", \"balancer\"]"));
        let f = filter("retry", "retry", "attempts = 3");
        assert!(f.contains("module = \"{filters}/retry.wasm\""));
        assert!(f.contains("[filter.retry.config]\nattempts = 3"));
        assert!(cluster("api", &["a", "b"]).contains("endpoints = [\"{up:a}\", \"{up:b}\"]"));
        assert!(
            router_all_to("api")
                .contains("routes = [ { path_prefix = \"/\", cluster = \"api\" } ]")
        );
    }
}
