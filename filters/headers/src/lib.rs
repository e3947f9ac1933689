//! Spindle's headers filter: adds, sets and removes request and response headers.
//!
//! ```toml
//! [filter.headers]
//! [filter.headers.config]
//! request = { set = { x-client-ip = "%CLIENT_IP%" }, add = { x-via = "spindle" }, remove = ["x-debug"] }
//! response = { set = { x-request-id = "%REQUEST_ID%", x-served-by = "%ENDPOINT% (endpoint %ENDPOINT_ID%)" }, remove = ["server"] }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `request.remove` | `[]` | request headers removed before the request goes upstream |
//! | `request.set` | `{}` | request headers replaced (every earlier value goes) |
//! | `request.add` | `{}` | request headers added (earlier values stay) |
//! | `response.remove` | `[]` | response headers removed before the response goes downstream |
//! | `response.set` | `{}` | response headers replaced |
//! | `response.add` | `{}` | response headers added |
//!
//! In each phase, `remove` runs first, then `set`, then `add`. Header names are checked at init
//! (RFC 9110 tokens, any case) and used lowercased.
//!
//! Values may hold `%VARIABLE%`s, replaced per request; `%%` is a literal `%`:
//!
//! | variable | value |
//! |---|---|
//! | `%CLIENT_ADDRESS%` | the downstream peer, `ip:port` |
//! | `%CLIENT_IP%` | the downstream peer's IP address |
//! | `%REQUEST_ID%` | the request id (also sent upstream as `x-request-id`) |
//! | `%METHOD%`, `%PATH%`, `%AUTHORITY%` | the request's method, path and query, authority (empty when none) |
//! | `%CLUSTER%` | the cluster routed to so far (empty when none; put the filter after the router) |
//! | `%ENDPOINT%` | response only: the address (`host:port`) of the endpoint of the last attempt (empty when none, or when it has left its cluster since) |
//! | `%ENDPOINT_ID%` | response only: the host id of the endpoint of the last attempt (empty when none) |
//! | `%STATUS%` | response only: the response status |
//!
//! An unknown variable, or a response-only one in `request`, is a config error. With
//! `%ENDPOINT%` or `%ENDPOINT_ID%` the filter also watches attempts (`on_attempt`) to learn the
//! last attempt's endpoint id (the id is the one of `/clusters` on the admin listener);
//! `%ENDPOINT%` then asks the host for that endpoint's address
//! ([`endpoint_address`](spindle_sdk::endpoints::endpoint_address)) when the response is rendered.

use std::collections::BTreeMap;

use serde::Deserialize;
use spindle_sdk::{
    Action, AttemptAction, AttemptOutcome, Filter, Hooks, InitError, Request, Response, endpoints,
};

/// The request variable holding the last attempt's endpoint id.
const ENDPOINT_VAR: &str = "endpoint";

/// Changes to the headers of one phase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers replaced.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers added.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// The headers filter's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Changes to the request headers.
    #[serde(default)]
    pub request: Changes,
    /// Changes to the response headers.
    #[serde(default)]
    pub response: Changes,
}

/// A `%VARIABLE%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `%CLIENT_ADDRESS%`.
    ClientAddress,
    /// `%CLIENT_IP%`.
    ClientIp,
    /// `%REQUEST_ID%`.
    RequestId,
    /// `%METHOD%`.
    Method,
    /// `%PATH%`.
    Path,
    /// `%AUTHORITY%`.
    Authority,
    /// `%CLUSTER%`.
    Cluster,
    /// `%ENDPOINT%` (response only).
    Endpoint,
    /// `%ENDPOINT_ID%` (response only).
    EndpointId,
    /// `%STATUS%` (response only).
    Status,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "CLIENT_ADDRESS" => Var::ClientAddress,
            "CLIENT_IP" => Var::ClientIp,
            "REQUEST_ID" => Var::RequestId,
            "METHOD" => Var::Method,
            "PATH" => Var::Path,
            "AUTHORITY" => Var::Authority,
            "CLUSTER" => Var::Cluster,
            "ENDPOINT" => Var::Endpoint,
            "ENDPOINT_ID" => Var::EndpointId,
            "STATUS" => Var::Status,
            _ => return None,
        })
    }

    fn response_only(self) -> bool {
        matches!(self, Var::Endpoint | Var::EndpointId | Var::Status)
    }
}

/// A piece of a value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text as is.
    Literal(String),
    /// A variable.
    Var(Var),
}

/// A header value with its variables parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `%VARIABLE%`s and `%%`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(format!(
                    "`{text}`: unclosed `%` (write `%%` for a literal `%`)"
                ));
            };
            let name = &after[..end];
            if name.is_empty() {
                literal.push('%');
            } else {
                let var = Var::parse(name).ok_or_else(|| {
                    format!(
                        "`{text}`: unknown variable `%{name}%` (known: %CLIENT_ADDRESS%, \
                         %CLIENT_IP%, %REQUEST_ID%, %METHOD%, %PATH%, %AUTHORITY%, %CLUSTER%, \
                         %ENDPOINT%, %ENDPOINT_ID%, %STATUS%)"
                    )
                })?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Var(var));
            }
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template(parts))
    }

    fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.0.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            Part::Literal(_) => None,
        })
    }

    /// The value for the current request (and response, if any).
    fn render(&self, req: &Request, resp: Option<&Response>) -> String {
        // Fast path: a constant value costs no host call.
        if let [Part::Literal(text)] = self.0.as_slice() {
            return text.clone();
        }
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(var) => out.push_str(&value_of(*var, req, resp)),
            }
        }
        out
    }
}

fn value_of(var: Var, req: &Request, resp: Option<&Response>) -> String {
    match var {
        Var::ClientAddress => req.client_address(),
        Var::ClientIp => req.client_ip(),
        Var::RequestId => req.request_id(),
        Var::Method => req.method(),
        Var::Path => req.path(),
        Var::Authority => req.authority().unwrap_or_default(),
        Var::Cluster => req.cluster().unwrap_or_default(),
        Var::Endpoint => req
            .var(ENDPOINT_VAR)
            .and_then(|id| id.parse().ok())
            .and_then(endpoints::endpoint_address)
            .unwrap_or_default(),
        Var::EndpointId => req.var(ENDPOINT_VAR).unwrap_or_default(),
        Var::Status => resp
            .and_then(Response::status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One phase's changes, checked and parsed.
#[derive(Debug, Default)]
struct Phase {
    remove: Vec<String>,
    set: Vec<(String, Template)>,
    add: Vec<(String, Template)>,
}

impl Phase {
    fn new(changes: Changes, phase: &str, response: bool) -> Result<Phase, InitError> {
        let name = |key: &str, n: &str| {
            if valid_header_name(n) {
                Ok(n.to_ascii_lowercase())
            } else {
                Err(InitError::key(
                    key,
                    format!("`{n}` is not a valid header name"),
                ))
            }
        };
        let templates = |kind: &str, map: BTreeMap<String, String>| {
            map.into_iter()
                .map(|(n, v)| {
                    let key = format!("{phase}.{kind}.{n}");
                    let n = name(&key, &n)?;
                    let t = Template::parse(&v).map_err(|e| InitError::key(&key, e))?;
                    if !response && let Some(var) = t.vars().find(|v| v.response_only()) {
                        return Err(InitError::key(
                            &key,
                            format!("`{v}`: {var:?} is only known in `response`"),
                        ));
                    }
                    if v.contains(['\r', '\n']) {
                        return Err(InitError::key(&key, "a header value cannot hold a newline"));
                    }
                    Ok((n, t))
                })
                .collect::<Result<Vec<_>, InitError>>()
        };
        let remove = changes
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(&format!("{phase}.remove[{i}]"), n))
            .collect::<Result<_, _>>()?;
        Ok(Phase {
            remove,
            set: templates("set", changes.set)?,
            add: templates("add", changes.add)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn needs_endpoint(&self) -> bool {
        self.set.iter().chain(&self.add).any(|(_, t)| {
            t.vars()
                .any(|v| matches!(v, Var::Endpoint | Var::EndpointId))
        })
    }
}

/// The headers filter.
#[derive(Debug)]
pub struct Headers {
    request: Phase,
    response: Phase,
}

#[spindle_sdk::filter]
impl Filter for Headers {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        Ok(Headers {
            request: Phase::new(config.request, "request", false)?,
            response: Phase::new(config.response, "response", true)?,
        })
    }

    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::NONE;
        if !self.request.is_empty() {
            hooks = hooks.union(Hooks::REQUEST);
        }
        if !self.response.is_empty() {
            hooks = hooks.union(Hooks::RESPONSE);
        }
        if self.response.needs_endpoint() {
            hooks = hooks.union(Hooks::ATTEMPT);
        }
        hooks
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        for name in &self.request.remove {
            req.remove_header(name);
        }
        for (name, value) in &self.request.set {
            let value = value.render(req, None);
            req.set_header(name, &value);
        }
        for (name, value) in &self.request.add {
            let value = value.render(req, None);
            req.add_header(name, &value);
        }
        Action::Continue
    }

    fn on_attempt(&mut self, outcome: &AttemptOutcome) -> AttemptAction {
        outcome
            .request()
            .set_var(ENDPOINT_VAR, &outcome.endpoint.to_string());
        AttemptAction::Done
    }

    fn on_response(&mut self, resp: &mut Response) {
        let req = resp.request();
        for name in &self.response.remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.response.set {
            let value = value.render(&req, Some(resp));
            resp.set_header(name, &value);
        }
        for (name, value) in &self.response.add {
            let value = value.render(&req, Some(resp));
            resp.add_header(name, &value);
        }
    }
}

#[cfg(test)]
mod tests;
