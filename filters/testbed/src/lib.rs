//! A filter that misbehaves on purpose, for the host's containment tests.
//!
//! ```toml
//! [filter.testbed.config]
//! mode = "trap"                     # ok | trap | loop | alloc | reject-config (default ok)
//! only_with_header = "x-misbehave"  # misbehave only on requests with this header
//! tag = "v2"                        # on_response sets `x-testbed: v2`
//! ```
//!
//! In `on_request`, when triggered (always, or only when the request has the header
//! `only_with_header`): `trap` panics (a Wasm trap), `loop` spins forever (calling the host
//! clock, so the optimizer cannot drop the loop), `alloc` allocates and touches 1 MiB chunks
//! until memory runs out. `reject-config` makes `init` fail. `ok` does nothing. With `tag`,
//! `on_response` sets the response header `x-testbed: <tag>` (a way to tell module versions
//! apart in hot-swap tests).

use std::hint::black_box;

use serde::Deserialize;
use spindle_sdk::{Action, Filter, InitError, Request, Response};

/// What the filter does when triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing.
    #[default]
    Ok,
    /// Panic: the instance traps.
    Trap,
    /// Never return.
    Loop,
    /// Allocate until the memory limit.
    Alloc,
    /// Refuse the config.
    RejectConfig,
}

/// The testbed's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to do (default `ok`).
    #[serde(default)]
    pub mode: Mode,
    /// The value of the `x-testbed` response header, if any.
    #[serde(default)]
    pub tag: Option<String>,
    /// Misbehave only on requests carrying this header.
    #[serde(default)]
    pub only_with_header: Option<String>,
}

/// The testbed filter.
#[derive(Debug)]
pub struct Testbed {
    config: Config,
}

/// Spins forever; every turn asks the host for the time, so the loop has an effect.
fn spin() -> ! {
    let mut turns = 0u64;
    loop {
        turns = black_box(turns.wrapping_add(spindle_sdk::time::monotonic_ns()));
    }
}

/// Allocates and touches 1 MiB chunks until the allocator gives up (an abort, a trap).
fn hog() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for page in chunk.iter_mut().step_by(4096) {
            *page = 1;
        }
        held.push(black_box(chunk));
        black_box(&held);
    }
}

#[spindle_sdk::filter]
impl Filter for Testbed {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        if config.mode == Mode::RejectConfig {
            return Err(InitError::key(
                "mode",
                "`reject-config`: this config is refused on purpose (testbed)",
            ));
        }
        Ok(Testbed { config })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let triggered = match &self.config.only_with_header {
            Some(name) => req.header(name).is_some(),
            None => true,
        };
        if triggered {
            match self.config.mode {
                Mode::Ok | Mode::RejectConfig => {}
                Mode::Trap => panic!("testbed: trap on purpose"),
                Mode::Loop => spin(),
                Mode::Alloc => hog(),
            }
        }
        Action::Continue
    }

    fn on_response(&mut self, resp: &mut Response) {
        if let Some(tag) = &self.config.tag {
            resp.set_header("x-testbed", tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spindle_sdk::testing::{MockHost, TestRequest};
    use spindle_sdk::{Action, Filter, Hooks};

    use super::Testbed;

    #[test]
    fn hooks() {
        assert_eq!(
            <Testbed as Filter>::HOOKS,
            Hooks::REQUEST.union(Hooks::RESPONSE)
        );
    }

    #[test]
    fn ok_mode_tags_responses() {
        let host = MockHost::new();
        let mut t = host.load::<Testbed>(json!({"tag": "v2"})).unwrap();
        host.start_request(TestRequest::get("/"));
        assert_eq!(t.on_request(), Action::Continue);
        host.set_response(200, &[]);
        t.on_response();
        assert_eq!(host.response_header("x-testbed").as_deref(), Some("v2"));
    }

    #[test]
    fn misbehaves_only_with_the_header() {
        let host = MockHost::new();
        for mode in ["trap", "loop", "alloc"] {
            let config = json!({"mode": mode, "only_with_header": "x-misbehave"});
            let mut t = host.load::<Testbed>(config).unwrap();
            host.start_request(TestRequest::get("/"));
            assert_eq!(t.on_request(), Action::Continue, "{mode}");
        }
    }

    #[test]
    #[should_panic(expected = "trap on purpose")]
    fn trap_panics() {
        let host = MockHost::new();
        let mut t = host.load::<Testbed>(json!({"mode": "trap"})).unwrap();
        host.start_request(TestRequest::get("/").header("x-misbehave", "1"));
        t.on_request();
    }

    #[test]
    fn reject_config_fails_init() {
        let host = MockHost::new();
        let err = host
            .load::<Testbed>(json!({"mode": "reject-config"}))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("mode: `reject-config`"),
            "{err}"
        );
        let err = host
            .load::<Testbed>(json!({"mode": "explode"}))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("mode: unknown variant `explode`"),
            "{err}"
        );
    }
}
