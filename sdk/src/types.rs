//! The values hooks receive and return.

use std::time::Duration;

use crate::request::Request;

/// What [`Filter::on_request`](crate::Filter::on_request) decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on with the chain.
    Continue,
    /// Stop the chain and answer with this response instead of the upstream's.
    Respond(LocalReply),
    /// Wait this long, then go on with the chain from the next filter (this filter's
    /// `on_request` is not called again). The host waits without holding an instance.
    /// Whole milliseconds; longer delays saturate at `u32::MAX` ms (about 49.7 days), so bound
    /// them in the filter.
    Delay(Duration),
}

impl Action {
    /// Answers with `status` and a plain-text `body`.
    ///
    /// ```
    /// use spindle_sdk::Action;
    /// let action = Action::respond(403, "forbidden\n");
    /// ```
    pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Action {
        Action::Respond(LocalReply::text(status, body))
    }

    /// Waits `ms` milliseconds, then goes on with the chain.
    ///
    /// ```
    /// use std::time::Duration;
    /// use spindle_sdk::Action;
    /// assert_eq!(Action::delay_ms(200), Action::Delay(Duration::from_millis(200)));
    /// ```
    pub fn delay_ms(ms: u32) -> Action {
        Action::Delay(Duration::from_millis(u64::from(ms)))
    }
}

/// A response produced by a filter instead of the upstream.
///
/// ```
/// use spindle_sdk::LocalReply;
/// let reply = LocalReply::new(429).header("retry-after", "1").body("slow down\n");
/// assert_eq!(reply.status, 429);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// The status code.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl LocalReply {
    /// An empty response with this status.
    pub fn new(status: u16) -> LocalReply {
        LocalReply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response with this status and body.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> LocalReply {
        LocalReply::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> LocalReply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> LocalReply {
        self.body = body.into();
        self
    }

    /// The first value of a header of this reply (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One member of a cluster, as passed to
/// [`Filter::endpoints_changed`](crate::Filter::endpoints_changed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host-assigned id, stable for the endpoint's lifetime.
    pub id: u32,
    /// `host:port`.
    pub address: String,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// What [`Filter::pick_endpoint`](crate::Filter::pick_endpoint) picks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickContext {
    /// The cluster to pick from.
    pub cluster: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// The endpoint of the previous attempt, if it failed.
    pub previous: Option<u32>,
    /// This pick's number among the cluster's picks: the host counts every pick of the cluster
    /// (first attempts and retries, from every listener and instance) from 0, so consecutive
    /// picks get consecutive tickets: round robin needs no shared counter of its own. The mock
    /// host ([`TestFilter::pick_with`](crate::testing::TestFilter::pick_with)) numbers picks
    /// per cluster the same way.
    pub ticket: u64,
}

impl PickContext {
    /// The request being balanced (to hash on a header, for instance).
    pub fn request(&self) -> Request {
        Request::current()
    }
}

/// Which attempt outcomes the host passes to [`Filter::on_attempt`](crate::Filter::on_attempt),
/// declared with [`Filter::attempt_outcomes`](crate::Filter::attempt_outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttemptOutcomes {
    /// Every outcome.
    #[default]
    All,
    /// Failures as the host counts them (any [`AttemptError`], or a status from 500 up); an
    /// outcome that is no failure only when the endpoint had failed before it (its
    /// `consecutive_failures` was above 0), or when it is the first such outcome once an
    /// ejection of the endpoint is over (the half-open probe). For breakers, to which a success
    /// on a healthy endpoint says nothing new: the common request then costs no hook call.
    FailuresAndRecoveries,
}

impl AttemptOutcomes {
    /// Whether the host counts this outcome as a failure of its endpoint.
    pub fn is_host_failure(outcome: &AttemptOutcome) -> bool {
        outcome.error.is_some() || outcome.status.is_some_and(|s| s >= 500)
    }
}

/// Why an attempt failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptError {
    /// The TCP (or TLS) connection could not be made.
    ConnectFailure,
    /// The connection was reset or closed before a full response head.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// Anything else (protocol error, body too large to replay, ...).
    Other,
}

/// The outcome of one upstream attempt, as seen by
/// [`Filter::on_attempt`](crate::Filter::on_attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The cluster of the attempt.
    pub cluster: String,
    /// The endpoint tried.
    pub endpoint: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The upstream status, when a response head arrived.
    pub status: Option<u16>,
    /// The failure, when none did.
    pub error: Option<AttemptError>,
    /// Time from sending to the response head (or the failure).
    pub latency: Duration,
    /// False when the request body was too large to buffer: it cannot be replayed.
    pub retryable_body: bool,
    /// The response's `Retry-After`, as a delay from now (an HTTP-date is converted by the
    /// host; a past date is zero). `None` without a response, without the header, or when
    /// its value does not parse.
    pub retry_after: Option<Duration>,
}

impl AttemptOutcome {
    /// An attempt that got a response head with `status`.
    pub fn response(cluster: &str, endpoint: u32, attempt: u32, status: u16) -> AttemptOutcome {
        AttemptOutcome {
            cluster: cluster.to_owned(),
            endpoint,
            attempt,
            status: Some(status),
            error: None,
            latency: Duration::from_millis(1),
            retryable_body: true,
            retry_after: None,
        }
    }

    /// The same outcome with a `Retry-After` of `delay` (for tests).
    ///
    /// ```
    /// use std::time::Duration;
    /// use spindle_sdk::AttemptOutcome;
    /// let outcome = AttemptOutcome::response("api", 1, 1, 503).with_retry_after(Duration::from_secs(1));
    /// assert_eq!(outcome.retry_after, Some(Duration::from_secs(1)));
    /// ```
    pub fn with_retry_after(mut self, delay: Duration) -> AttemptOutcome {
        self.retry_after = Some(delay);
        self
    }

    /// An attempt that failed with `error`.
    pub fn failed(
        cluster: &str,
        endpoint: u32,
        attempt: u32,
        error: AttemptError,
    ) -> AttemptOutcome {
        AttemptOutcome {
            status: None,
            error: Some(error),
            ..AttemptOutcome::response(cluster, endpoint, attempt, 0)
        }
    }

    /// The request this attempt was for (method, headers, request variables).
    pub fn request(&self) -> Request {
        Request::current()
    }
}

/// What [`Filter::on_attempt`](crate::Filter::on_attempt) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptAction {
    /// Keep this outcome.
    Done,
    /// Try again after this delay (whole milliseconds; longer delays saturate at `u32::MAX` ms).
    Retry(Duration),
}

/// What [`Filter::on_done`](crate::Filter::on_done) is told about a finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    /// The status sent downstream.
    pub status: u16,
    /// The cluster chosen, if any.
    pub cluster: Option<String>,
    /// The endpoint of the last attempt, if any.
    pub endpoint: Option<u32>,
    /// How many upstream attempts were made.
    pub attempts: u32,
    /// Time from the request head to the end of the response.
    pub duration: Duration,
}

impl RequestSummary {
    /// The finished request (method, headers, request variables).
    pub fn request(&self) -> Request {
        Request::current()
    }
}

/// Host-kept statistics of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Exponentially weighted moving average of its latency.
    pub ewma: Duration,
    /// Failures since its last success.
    pub consecutive_failures: u32,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Requests sent to it since it appeared.
    pub total_requests: u64,
    /// Of which failed.
    pub total_failures: u64,
}

/// Host-kept statistics of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterStats {
    /// Its members.
    pub endpoints: u32,
    /// Of which ejected now.
    pub ejected: u32,
    /// Requests in flight to all its members.
    pub in_flight: u32,
}

/// Milliseconds of a duration for the ABI, saturating.
pub(crate) fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
