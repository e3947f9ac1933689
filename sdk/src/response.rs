//! The [`Response`] handle.

use crate::request::Request;
use crate::sys;

/// The response head a hook runs for (in [`Filter::on_response`](crate::Filter::on_response)).
///
/// A handle, like [`Request`]: every accessor is one host call.
#[derive(Debug)]
pub struct Response {
    _private: (),
}

impl Response {
    pub(crate) fn current() -> Response {
        Response { _private: () }
    }

    /// The status code; `None` outside the response phase.
    pub fn status(&self) -> Option<u16> {
        sys::response_status()
    }

    /// Replaces the status code.
    pub fn set_status(&mut self, status: u16) {
        sys::set_response_status(status);
    }

    /// The first value of a response header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        sys::response_header(name)
    }

    /// Replaces every value of a response header.
    pub fn set_header(&mut self, name: &str, value: &str) {
        sys::set_response_header(name, value);
    }

    /// Adds a value to a response header.
    pub fn add_header(&mut self, name: &str, value: &str) {
        sys::add_response_header(name, value);
    }

    /// Removes a response header.
    pub fn remove_header(&mut self, name: &str) {
        sys::remove_response_header(name);
    }

    /// The request this response answers (method, path, headers, request variables).
    pub fn request(&self) -> Request {
        Request::current()
    }
}
