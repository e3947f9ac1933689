//! Spindle's router: chooses the cluster of each request.
//!
//! ```toml
//! [filter.router.config]
//! routes = [
//!   { path_prefix = "/api/", cluster = "api" },
//!   { path_prefix = "/", headers = { x-canary = "1" }, cluster = "web-canary" },
//!   { host = "admin.example.com", cluster = "admin" },
//!   { path_prefix = "/", split = [ { cluster = "web", weight = 90 }, { cluster = "web-canary", weight = 10 } ] },
//! ]
//! ```
//!
//! Routes are tried in order and the first match wins. A route matches when the request path
//! (without its query) starts with `path_prefix` (default `/`), every header of `headers` has
//! exactly that value (names are case-insensitive), and the authority equals `host` when given
//! (ASCII case-insensitive, port included if the client sent one). A route names exactly one of
//! `cluster` or `split`; a split draws its cluster with the host's randomness, in proportion to
//! the weights. When no route matches, the request is answered `404` with the body
//! `no route for <path>\n`.

use std::collections::BTreeMap;

use serde::Deserialize;
use spindle_sdk::{Action, Filter, InitError, Request, random};

/// The router's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The routes, tried in order.
    pub routes: Vec<RouteConfig>,
}

/// One route of the config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path must start with this (default `/`: every path).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Request headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The exact authority (`host[:port]`) the request must be for.
    #[serde(default)]
    pub host: Option<String>,
    /// The cluster to send matching requests to.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Or: clusters to share matching requests between, by weight.
    #[serde(default)]
    pub split: Option<Vec<SplitConfig>>,
}

/// One share of a split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The cluster.
    pub cluster: String,
    /// Its relative weight (0 takes it out of rotation).
    pub weight: u32,
}

/// A checked route.
#[derive(Debug)]
struct Route {
    path_prefix: String,
    headers: Vec<(String, String)>,
    host: Option<String>,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Cluster(String),
    /// Clusters with their cumulative weights; the last is the total (> 0).
    Split(Vec<(String, u64)>),
}

/// The router filter.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Route {
    fn check(index: usize, config: RouteConfig) -> Result<Route, InitError> {
        let at = |field: &str| format!("routes[{index}]{field}");
        let path_prefix = config.path_prefix.unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            return Err(InitError::key(
                &at(".path_prefix"),
                format!("`{path_prefix}` must start with `/`"),
            ));
        }
        if let Some(host) = &config.host
            && host.is_empty()
        {
            return Err(InitError::key(&at(".host"), "must not be empty"));
        }
        if let Some(name) = config.headers.keys().find(|n| n.is_empty()) {
            return Err(InitError::key(
                &at(".headers"),
                format!("invalid header name `{name}`"),
            ));
        }
        let target = match (config.cluster, config.split) {
            (Some(cluster), None) => {
                if cluster.is_empty() {
                    return Err(InitError::key(&at(".cluster"), "must not be empty"));
                }
                Target::Cluster(cluster)
            }
            (None, Some(split)) => Target::Split(check_split(&at(".split"), split)?),
            (Some(_), Some(_)) => {
                return Err(InitError::key(
                    &at(""),
                    "has both `cluster` and `split`: give exactly one",
                ));
            }
            (None, None) => {
                return Err(InitError::key(
                    &at(""),
                    "needs `cluster` or `split` (exactly one)",
                ));
            }
        };
        Ok(Route {
            path_prefix,
            headers: config.headers.into_iter().collect(),
            host: config.host,
            target,
        })
    }

    fn matches(&self, req: &Request, path: &str, authority: &mut Option<Option<String>>) -> bool {
        if !path.starts_with(&self.path_prefix) {
            return false;
        }
        if let Some(host) = &self.host {
            // Asked of the host at most once per request.
            let authority = authority.get_or_insert_with(|| req.authority());
            if !authority
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(host))
            {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| req.header(name).as_deref() == Some(value.as_str()))
    }
}

fn check_split(at: &str, split: Vec<SplitConfig>) -> Result<Vec<(String, u64)>, InitError> {
    if split.is_empty() {
        return Err(InitError::key(at, "must name at least one cluster"));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(split.len());
    for (i, share) in split.into_iter().enumerate() {
        if share.cluster.is_empty() {
            return Err(InitError::key(
                &format!("{at}[{i}].cluster"),
                "must not be empty",
            ));
        }
        total += u64::from(share.weight);
        out.push((share.cluster, total));
    }
    if total == 0 {
        return Err(InitError::key(at, "the weights add up to 0"));
    }
    Ok(out)
}

/// Draws a cluster of a split.
fn draw(split: &[(String, u64)]) -> &str {
    let total = split.last().map_or(0, |(_, cumulative)| *cumulative);
    let roll = random::below(total);
    split
        .iter()
        .find(|(_, cumulative)| roll < *cumulative)
        .or(split.last())
        .map_or("", |(cluster, _)| cluster.as_str())
}

#[spindle_sdk::filter]
impl Filter for Router {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        let routes = config
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, route)| Route::check(i, route))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Router { routes })
    }

    // Every request's route depends on its path: the host passes it with the call.
    fn wants_path(&self) -> bool {
        true
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let full = req.path();
        let path = full.split_once('?').map_or(full.as_str(), |(p, _)| p);
        let mut authority = None;
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.matches(req, path, &mut authority))
        else {
            return Action::respond(404, format!("no route for {path}\n"));
        };
        // The matched route on the request's trace span (a no-op when not traced).
        spindle_sdk::trace::set_attribute("spindle.route", &route.path_prefix);
        match &route.target {
            Target::Cluster(cluster) => req.set_cluster(cluster),
            Target::Split(split) => req.set_cluster(draw(split)),
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
