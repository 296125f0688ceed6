//! Serving a request: read it whole ([`Request`]), run the service's handler, send its
//! [`Response`] (or its [`Error`] as `{"error": "..."}`).
//!
//! ```ignore
//! impl Guest for Users {
//!     fn handle(request: IncomingRequest, out: ResponseOutparam) {
//!         shopkit::http::serve(request, out, |req| match (req.method(), req.segments().as_slice()) {
//!             ("GET", ["v1", "users", id]) => get_user(id),
//!             _ => Err(Error::not_found("no such route")),
//!         });
//!     }
//! }
//! ```
//!
//! Routing is by method and path segments (percent-decoded) rather than by the
//! `wasmhive-route` header, so a service behaves the same on any wasi:http host.

use serde::Serialize;
use serde::de::DeserializeOwned;
use support::wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use support::wasip2::io::streams::StreamError;

use crate::{Error, Result};

/// Largest request body a service reads; a larger one is answered 413.
pub const MAX_BODY: usize = 1 << 20;

/// An incoming request, read whole.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    segments: Vec<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// Reads `request` (head and body, at most [`MAX_BODY`] bytes).
    pub fn read(request: &IncomingRequest) -> Result<Self> {
        let method = support::method_name(request.method());
        let path_with_query = request.path_with_query().unwrap_or_default();
        let path = path_with_query.split('?').next().unwrap_or("/").to_string();
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(support::percent_decode)
            .collect();
        let headers = request.headers().entries();
        let body = read_body(request)?;
        Ok(Request {
            method,
            path,
            segments,
            headers,
            body,
        })
    }

    /// The method, upper case (`GET`, `POST`, ...).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path's non-empty segments, percent-decoded: `/v1/users/u1` →
    /// `["v1", "users", "u1"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// The first value of header `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as raw bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body parsed as JSON; malformed or missing fields are a 400.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        crate::from_json(&self.body)
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Headers besides `content-type` (which is always `application/json`).
    pub headers: Vec<(String, String)>,
    /// The body, JSON.
    pub body: Vec<u8>,
}

impl Response {
    /// `value` as JSON with `status`.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        Response::raw(status, crate::to_json(value))
    }

    /// 200 with `value` as JSON.
    pub fn ok<T: Serialize + ?Sized>(value: &T) -> Self {
        Response::json(200, value)
    }

    /// A body that is already JSON, sent as it is.
    pub fn raw(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The value of header `name` (case-insensitive), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<Error> for Response {
    fn from(error: Error) -> Self {
        Response::json(error.status, &serde_json::json!({ "error": error.message }))
    }
}

/// Reads `request`, runs `handler` on it and sends what it returns. A 5xx answer is
/// logged (`warn`, context `http`).
pub fn serve(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(&Request) -> Result<Response>,
) {
    let response = match Request::read(&request) {
        Ok(req) => {
            let response = handler(&req).unwrap_or_else(Response::from);
            if response.status >= 500 {
                crate::log::warn(
                    "http",
                    &format!(
                        "{} {} -> {} {}",
                        req.method(),
                        req.path(),
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    ),
                );
            }
            response
        }
        Err(error) => Response::from(error),
    };
    respond(out, &response);
}

/// The error for a request whose method is not one of `allowed` on an existing path.
pub fn method_not_allowed(allowed: &str) -> Error {
    Error::new(405, format!("method not allowed (use {allowed})"))
}

/// The error for a path the service does not serve.
pub fn no_route() -> Error {
    Error::not_found("no such route")
}

/// Sends `response` as a JSON response. Failures to write (the client went away) are
/// ignored: there is nobody left to tell.
pub fn respond(out: ResponseOutparam, response: &Response) {
    let mut headers = vec![("content-type".to_string(), b"application/json".to_vec())];
    headers.extend(
        response
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
    );
    let fields = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(response.status).is_err() {
        let _ = outgoing.set_status_code(500);
    }
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(outgoing));
    write_body(body, &response.body);
}

/// Writes `data` to `body` and finishes it; stops quietly if the stream fails.
pub(crate) fn write_body(body: OutgoingBody, data: &[u8]) {
    let Ok(stream) = body.write() else {
        return;
    };
    for chunk in data.chunks(support::CHUNK) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// Reads the request body, at most [`MAX_BODY`] bytes.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>> {
    let body = request
        .consume()
        .map_err(|()| Error::internal("request body already taken"))?;
    let stream = body
        .stream()
        .map_err(|()| Error::internal("request body stream already taken"))?;
    let mut all = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                all.extend_from_slice(&chunk);
                if all.len() > MAX_BODY {
                    return Err(Error::new(413, "request body too large"));
                }
            }
            Err(StreamError::Closed) => return Ok(all),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::bad_request(format!(
                    "reading the body failed: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
}
