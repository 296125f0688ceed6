//! Calls to other services: plain outgoing HTTP to `http://NAME/v1/...`, which the
//! host turns into an in-process call to component `NAME` of the app, under the
//! caller's `calls.NAME` policy (timeout, retries, circuit breaker, fallback).
//!
//! The mesh answers a failed call like a proxy would (the target's 5xx, 504 for a
//! timeout, 503 for an open circuit) or with the policy's fallback, marked
//! `wasmhive-fallback: 1` ([`Reply::is_fallback`]). An `Err` here means the request
//! could not be made at all (for example a target missing from `calls`).
//!
//! [`fetch_all`] starts every request before waiting for any, then waits on them all
//! together (`wasi:io/poll`), so a page composed from five services takes as long as
//! the slowest of them, not the sum.

use serde::Serialize;
use serde::de::DeserializeOwned;
use support::wasip2::http::outgoing_handler;
use support::wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method,
    OutgoingRequest, Scheme,
};
use support::wasip2::io::poll;
use support::wasip2::io::streams::{InputStream, StreamError};

use crate::{Error, Result};

/// Header the mesh sets on a policy's fallback answer.
pub const FALLBACK_HEADER: &str = "wasmhive-fallback";

/// A request to make.
#[derive(Debug, Clone)]
pub struct Call {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl Call {
    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Self {
        Call {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// `POST url` with `value` as a JSON body.
    pub fn post_json<T: Serialize + ?Sized>(url: impl Into<String>, value: &T) -> Self {
        let body = crate::to_json(value);
        Call {
            method: Method::Post,
            url: url.into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Some(body),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Whether the mesh answered with the caller's fallback for this target.
    pub fn is_fallback(&self) -> bool {
        self.header(FALLBACK_HEADER) == Some("1")
    }

    /// The body parsed as JSON; a malformed body is a 502 (the other service broke
    /// its contract, not the client).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::new(502, format!("invalid JSON from upstream: {e}")))
    }
}

/// The outcome of one call: the reply (any status), or why no reply came.
pub type Outcome = std::result::Result<Reply, String>;

/// Makes one request and waits for its reply.
pub fn fetch(call: &Call) -> Outcome {
    fetch_all(std::slice::from_ref(call))
        .pop()
        .unwrap_or_else(|| Err("no outcome".to_string()))
}

/// `GET url`, expecting JSON: `Ok(Some(value))` on 200, `Ok(None)` on 404, and a 503
/// naming `what` for any other answer (a 5xx, a timeout, an open circuit).
pub fn get_json<T: DeserializeOwned>(url: &str, what: &str) -> Result<Option<T>> {
    expect_json(fetch(&Call::get(url)), what)
}

/// Interprets an outcome as [`get_json`] does.
pub fn expect_json<T: DeserializeOwned>(outcome: Outcome, what: &str) -> Result<Option<T>> {
    match outcome {
        Ok(reply) if reply.status == 200 => reply.json().map(Some),
        Ok(reply) if reply.status == 404 => Ok(None),
        Ok(reply) => Err(Error::unavailable(format!(
            "{what} unavailable (status {})",
            reply.status
        ))),
        Err(e) => Err(Error::unavailable(format!("{what} unavailable ({e})"))),
    }
}

/// Makes every request at once and returns their outcomes in the same order.
pub fn fetch_all(calls: &[Call]) -> Vec<Outcome> {
    // Start every request (writing its body, if any) before waiting for any response.
    let mut states: Vec<State> = calls
        .iter()
        .map(|call| match start(call) {
            Ok(future) => State::Waiting(future),
            Err(e) => State::Done(Err(e)),
        })
        .collect();

    loop {
        let pending: Vec<usize> = (0..states.len())
            .filter(|&i| !matches!(states[i], State::Done(_)))
            .collect();
        if pending.is_empty() {
            break;
        }
        let pollables: Vec<_> = pending
            .iter()
            .filter_map(|&i| match &states[i] {
                State::Waiting(future) => Some(future.subscribe()),
                State::Reading(reading) => Some(reading.stream.subscribe()),
                State::Done(_) => None,
            })
            .collect();
        let ready = poll::poll(&pollables.iter().collect::<Vec<_>>());
        drop(pollables);
        for index in ready {
            let state = &mut states[pending[index as usize]];
            let current = std::mem::replace(state, State::Done(Err(String::new())));
            *state = advance(current);
        }
    }
    states
        .into_iter()
        .map(|state| match state {
            State::Done(outcome) => outcome,
            _ => Err("request not finished".to_string()),
        })
        .collect()
}

/// The resources of a response whose body is being read, children first so they are
/// dropped before their parents.
struct Reading {
    stream: InputStream,
    _body: IncomingBody,
    _response: IncomingResponse,
    _future: FutureIncomingResponse,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

/// Where one request is.
enum State {
    Waiting(FutureIncomingResponse),
    Reading(Reading),
    Done(Outcome),
}

/// Sends the request (head and body) and returns its response future.
fn start(call: &Call) -> std::result::Result<FutureIncomingResponse, String> {
    let (scheme, rest) = call
        .url
        .split_once("://")
        .ok_or_else(|| format!("not an absolute URL: {}", call.url))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut headers = call.headers.clone();
    if let Some(body) = &call.body {
        headers.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields = Fields::from_list(&headers).map_err(|e| format!("bad header: {e:?}"))?;
    let request = OutgoingRequest::new(fields);
    let bad_url = |()| format!("bad URL: {}", call.url);
    request
        .set_method(&call.method)
        .map_err(|()| "bad method".to_string())?;
    request
        .set_scheme(Some(&if scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        }))
        .map_err(bad_url)?;
    request.set_authority(Some(authority)).map_err(bad_url)?;
    request.set_path_with_query(Some(path)).map_err(bad_url)?;
    let body = request
        .body()
        .map_err(|()| "request body already taken".to_string())?;
    let future = outgoing_handler::handle(request, None).map_err(|e| error_name(&e))?;
    // The mesh buffers small bodies, so writing before waiting for the head is safe.
    crate::http::write_body(body, call.body.as_deref().unwrap_or_default());
    Ok(future)
}

/// Moves a request whose pollable is ready one step on.
fn advance(state: State) -> State {
    match state {
        State::Waiting(future) => match future.get() {
            None => State::Waiting(future),
            Some(Err(())) => State::Done(Err("response already taken".to_string())),
            Some(Ok(Err(code))) => State::Done(Err(error_name(&code))),
            Some(Ok(Ok(response))) => {
                let status = response.status();
                let headers = response.headers().entries();
                let Ok(body) = response.consume() else {
                    return State::Done(Err("response body already taken".to_string()));
                };
                let Ok(stream) = body.stream() else {
                    return State::Done(Err("response stream already taken".to_string()));
                };
                State::Reading(Reading {
                    stream,
                    _body: body,
                    _response: response,
                    _future: future,
                    status,
                    headers,
                    data: Vec::new(),
                })
            }
        },
        State::Reading(mut reading) => match reading.stream.read(64 * 1024) {
            Ok(chunk) => {
                reading.data.extend_from_slice(&chunk);
                State::Reading(reading)
            }
            Err(StreamError::Closed) => {
                let Reading {
                    status,
                    headers,
                    data,
                    ..
                } = reading;
                State::Done(Ok(Reply {
                    status,
                    headers,
                    body: data,
                }))
            }
            Err(StreamError::LastOperationFailed(e)) => State::Done(Err(format!(
                "reading the response failed: {}",
                e.to_debug_string()
            ))),
        },
        done @ State::Done(_) => done,
    }
}

/// The error code's variant name, e.g. `HttpRequestDenied`.
fn error_name(code: &ErrorCode) -> String {
    format!("{code:?}")
        .trim_start_matches("ErrorCode::")
        .to_string()
}
