//! The [`Request`] handle.

use std::time::Duration;

use crate::sys;
use crate::types::millis_u32;

/// The request a hook runs for.
///
/// A handle, not a copy: every accessor is one host call (but see [`path`](Request::path) and
/// [`set_cluster`](Request::set_cluster)), so a filter pays only for the headers
/// it reads. Outside a request-bound hook getters return nothing and setters are ignored.
#[derive(Debug)]
pub struct Request {
    _private: (),
}

impl Request {
    pub(crate) fn current() -> Request {
        Request { _private: () }
    }

    /// The method (`GET`, `POST`, ...).
    pub fn method(&self) -> String {
        sys::method()
    }

    /// The path with its query (`/api/users?limit=5`). In `on_request` of a filter whose
    /// [`wants_path`](crate::Filter::wants_path) is `true`, the first call returns the path the
    /// host passed with the hook, without a host call.
    pub fn path(&self) -> String {
        sys::path()
    }

    /// Replaces the path (and query) sent upstream.
    pub fn set_path(&mut self, path: &str) {
        sys::set_path(path);
    }

    /// The authority: the URI's, else the `host` header (may carry a port).
    pub fn authority(&self) -> Option<String> {
        sys::authority()
    }

    /// The downstream peer, `ip:port`.
    pub fn client_address(&self) -> String {
        sys::client_address()
    }

    /// The downstream peer's IP address, without the port (which changes with every
    /// connection) and without IPv6 brackets: `192.0.2.1`, `2001:db8::1`. Use it to key
    /// per-client state (rate limits, hashing).
    pub fn client_ip(&self) -> String {
        ip_of(&self.client_address()).to_owned()
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        sys::request_header(name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        sys::request_header_all(name)
    }

    /// Replaces every value of a header.
    pub fn set_header(&mut self, name: &str, value: &str) {
        sys::set_request_header(name, value);
    }

    /// Adds a value to a header.
    pub fn add_header(&mut self, name: &str, value: &str) {
        sys::add_request_header(name, value);
    }

    /// Removes a header.
    pub fn remove_header(&mut self, name: &str) {
        sys::remove_request_header(name);
    }

    /// The cluster chosen so far, if any.
    pub fn cluster(&self) -> Option<String> {
        sys::cluster()
    }

    /// Chooses the cluster (the router does this). An unknown name becomes a 503 later. In
    /// `on_request` the choice goes back to the host with the hook's answer, as the number the
    /// host gave the name (asked once per name and instance, then kept): no host call.
    pub fn set_cluster(&mut self, name: &str) {
        sys::set_cluster(name);
    }

    /// Overrides the per-try timeout of this request (whole milliseconds, saturating).
    pub fn set_per_try_timeout(&mut self, timeout: Duration) {
        sys::set_per_try_timeout(millis_u32(timeout));
    }

    /// A unique id of this request (also sent upstream as `x-request-id`).
    pub fn request_id(&self) -> String {
        sys::request_id()
    }

    /// A per-request variable private to this filter. The hooks of one request may run in
    /// different instances: keep per-request state here, not in fields.
    pub fn var(&self, name: &str) -> Option<String> {
        sys::request_var(name)
    }

    /// Sets a per-request variable private to this filter.
    pub fn set_var(&mut self, name: &str, value: &str) {
        sys::set_request_var(name, value);
    }
}

/// The IP of an `ip:port` address: `[::1]:5000` -> `::1`, `10.0.0.1:5000` -> `10.0.0.1`; an
/// address without a port (a bare IPv6 has colons but no brackets) is returned as it is.
pub(crate) fn ip_of(address: &str) -> &str {
    let ip = match address.rsplit_once(':') {
        Some((ip, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (ip.starts_with('[') || !ip.contains(':')) =>
        {
            ip
        }
        _ => address,
    };
    ip.strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip)
}

#[cfg(test)]
mod ip_tests {
    use super::ip_of;

    #[test]
    fn ip_of_strips_the_port_and_brackets() {
        assert_eq!(ip_of("192.0.2.1:5"), "192.0.2.1");
        assert_eq!(ip_of("[2001:db8::1]:5"), "2001:db8::1");
        assert_eq!(ip_of("2001:db8::1"), "2001:db8::1");
        assert_eq!(ip_of("[::1]"), "::1");
        assert_eq!(ip_of("10.0.0.1"), "10.0.0.1");
    }
}
