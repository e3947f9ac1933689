//! Spindle's rate limiter: a token bucket per key, shared by every instance of the host.
//!
//! ```toml
//! [filter.ratelimit]
//! config = { key = "header:x-api-key", rate_per_second = 100, burst = 200 }
//! ```
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `key` | `"client"` | what a bucket is kept per: `"client"`, `"route"` or `"header:NAME"` |
//! | `rate_per_second` | required | tokens added to a bucket per second (more than 0) |
//! | `burst` | required | the bucket's size: requests allowed at once after a quiet spell (at least 1) |
//!
//! Keys: `client` is the client's IP address (without the port); `route` is the cluster the
//! request was routed to (put this filter after the router), or one bucket for every unrouted
//! request; `header:NAME` is the header's first value, and every request without the header
//! shares one bucket of its own.
//!
//! Each request takes one token; a request that finds the bucket empty is answered `429` with
//! `retry-after` (whole seconds until a token is back, at least 1) and a short body, and
//! counted in `spindle_filter_<name>_limited_total{key}` (`key` is the key's kind, not its value,
//! to keep the metric's cardinality bounded).
//!
//! Buckets live in the host's shared store as `spindle.ratelimit.<rate>/<burst>.<key>.<value>`
//! (micro-tokens and the last refill time), updated with compare-and-swap, so every instance and
//! thread of the host draws from the same bucket. A bucket expires once it would be full again.
//! When the store stays contended for 8 tries in a row the request is let through (a rate
//! limiter should not fail traffic on contention); this is logged at debug level.

use std::time::Duration;

use serde::Deserialize;
use spindle_sdk::metrics::Counter;
use spindle_sdk::{Action, Filter, InitError, LocalReply, Request, store, time};

/// Micro-tokens per token: bucket levels are integers.
const MICRO: u64 = 1_000_000;
/// Compare-and-swap attempts before letting a request through.
const CAS_TRIES: usize = 8;

/// What buckets are kept per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The client's IP address.
    Client,
    /// The routed cluster.
    Route,
    /// The first value of a request header (lowercase name).
    Header(String),
}

impl Key {
    fn kind(&self) -> &'static str {
        match self {
            Key::Client => "client",
            Key::Route => "route",
            Key::Header(_) => "header",
        }
    }
}

impl TryFrom<String> for Key {
    type Error = String;

    fn try_from(spec: String) -> Result<Key, String> {
        match spec.as_str() {
            "client" => Ok(Key::Client),
            "route" => Ok(Key::Route),
            other => match other.strip_prefix("header:") {
                Some(name) if valid_header_name(name) => Ok(Key::Header(name.to_ascii_lowercase())),
                Some(name) => Err(format!("`{name}` is not a valid header name")),
                None => Err(format!(
                    "unknown key `{other}`, expected `client`, `route` or `header:NAME`"
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        Key::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn default_key() -> Key {
    Key::Client
}

/// The rate limiter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What buckets are kept per.
    #[serde(default = "default_key")]
    pub key: Key,
    /// Tokens added per second.
    pub rate_per_second: f64,
    /// The bucket's size.
    pub burst: u32,
}

/// The rate-limit filter.
#[derive(Debug)]
pub struct RateLimit {
    key: Key,
    /// Micro-tokens added per second.
    rate_micro: f64,
    rate_per_second: f64,
    burst: u32,
    prefix: String,
    limited: Option<Counter>,
}

/// A bucket as stored: `"<micro-tokens> <last refill, host monotonic ns>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens left, in millionths.
    pub micro_tokens: u64,
    /// When it was last refilled.
    pub at_ns: u64,
}

impl Bucket {
    fn parse(bytes: &[u8]) -> Option<Bucket> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (tokens, at) = text.split_once(' ')?;
        Some(Bucket {
            micro_tokens: tokens.parse().ok()?,
            at_ns: at.parse().ok()?,
        })
    }

    fn encode(&self) -> String {
        format!("{} {}", self.micro_tokens, self.at_ns)
    }
}

/// What taking a token decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// Empty: a token is back after this long.
    Limited(Duration),
}

impl RateLimit {
    fn capacity(&self) -> u64 {
        u64::from(self.burst) * MICRO
    }

    /// The bucket refilled up to `now_ns`.
    fn refill(&self, bucket: Option<Bucket>, now_ns: u64) -> Bucket {
        let Some(b) = bucket else {
            return Bucket {
                micro_tokens: self.capacity(),
                at_ns: now_ns,
            };
        };
        let elapsed_s = now_ns.saturating_sub(b.at_ns) as f64 / 1e9;
        let added = (elapsed_s * self.rate_micro).min(self.capacity() as f64) as u64;
        Bucket {
            micro_tokens: b.micro_tokens.saturating_add(added).min(self.capacity()),
            at_ns: now_ns.max(b.at_ns),
        }
    }

    /// How long until an empty bucket is full: its TTL.
    fn ttl(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst) / self.rate_per_second + 1.0)
    }

    fn take(&self, key: &str) -> Verdict {
        for _ in 0..CAS_TRIES {
            let current = store::get(key);
            let now = time::monotonic_ns();
            let bucket = self.refill(current.as_deref().and_then(Bucket::parse), now);
            if bucket.micro_tokens < MICRO {
                let missing = (MICRO - bucket.micro_tokens) as f64;
                return Verdict::Limited(Duration::from_secs_f64(missing / self.rate_micro));
            }
            let next = Bucket {
                micro_tokens: bucket.micro_tokens - MICRO,
                ..bucket
            };
            if store::cas(
                key,
                current.as_deref(),
                next.encode().as_bytes(),
                self.ttl(),
            ) {
                return Verdict::Allowed;
            }
        }
        spindle_sdk::debug!("bucket {key} stayed contended: request let through");
        Verdict::Allowed
    }

    fn bucket_key(&self, req: &Request) -> String {
        let value = match &self.key {
            Key::Client => req.client_ip(),
            Key::Route => req.cluster().unwrap_or_else(|| "-".to_owned()),
            Key::Header(name) => req
                .header(name)
                .map_or_else(|| "-".to_owned(), |v| format!("={v}")),
        };
        format!("{}{value}", self.prefix)
    }
}

#[spindle_sdk::filter]
impl Filter for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, InitError> {
        if !(config.rate_per_second.is_finite() && config.rate_per_second > 0.0) {
            return Err(InitError::key(
                "rate_per_second",
                format!("{} is not a number above 0", config.rate_per_second),
            ));
        }
        if config.burst == 0 {
            return Err(InitError::key("burst", "must be at least 1"));
        }
        let spec = match &config.key {
            Key::Header(name) => format!("header:{name}"),
            other => other.kind().to_owned(),
        };
        let limited = Counter::new(
            "limited_total",
            "Requests answered 429 because their bucket was empty, by key kind.",
            &["key"],
        )
        .map_err(|e| spindle_sdk::warn!("ratelimit: no metric: {e}"))
        .ok();
        Ok(RateLimit {
            prefix: format!(
                "spindle.ratelimit.{}/{}.{spec}.",
                config.rate_per_second, config.burst
            ),
            key: config.key,
            rate_micro: config.rate_per_second * MICRO as f64,
            rate_per_second: config.rate_per_second,
            burst: config.burst,
            limited,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let key = self.bucket_key(req);
        match self.take(&key) {
            Verdict::Allowed => Action::Continue,
            Verdict::Limited(wait) => {
                if let Some(limited) = &self.limited {
                    let _ = limited.inc(&[self.key.kind()]);
                }
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                Action::Respond(
                    LocalReply::text(
                        429,
                        format!(
                            "rate limited: more than {} requests per second (burst {}); retry in \
                             {seconds} s\n",
                            self.rate_per_second, self.burst
                        ),
                    )
                    .header("retry-after", seconds.to_string()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
