//! The public HTTP listener's handler, the HTTP trigger's source: match a route, turn
//! the client's request into what the guest receives, and run it through the
//! invocation envelope (admission, wake from zero, the call, status, metrics, the
//! trace). A failure becomes its status through the envelope's one failure table.
//!
//! Order of work for one request: trace context (continue the client's
//! `traceparent` or start a trace) → the host-wide per-client rate limit (429) → route
//! (404, 405 with `Allow`) → rewrite (absolute
//! URI, client `wasmhive-*` headers removed, `wasmhive-route`/`wasmhive-param-*`
//! added, headers named in `Connection:` removed, `traceparent` set to the
//! invocation's span, `x-request-id` kept or made) → the route's guard
//! ([`guard`]: authentication 401, authorization 403, rate limit 429; the verified
//! identity added as `wasmhive-auth-*`) → envelope. The standard hop-by-hop headers
//! are also removed by the runtime's wasi:http hooks.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

mod guard;

pub use guard::GuardConfig;

use crate::apps::Apps;
use crate::body::{self, Body};
use crate::envelope::{self, Admission, Context, HttpCall};
use crate::headers::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use crate::listener::PeerAddr;
use crate::routes::RouteMatch;
use crate::telemetry::metrics::RequestMetrics;
use crate::telemetry::trace::{TraceContext, new_request_id};
use crate::trigger::http::HttpTrigger;

/// The gateway's shared state.
pub struct Gateway {
    apps: Arc<Apps>,
    local_addr: SocketAddr,
    metrics: Arc<RequestMetrics>,
    body_read_timeout: std::time::Duration,
    guard: GuardConfig,
    /// The lattice, when routes may be served by other hosts.
    lattice: crate::lattice::Slot,
}

/// What a guest reading the request body learns when the client's body fails: a
/// short code, never the host's error chain (the detail goes to the host's log).
fn client_body_error(e: hyper::Error) -> wasmtime_wasi_http::Error {
    tracing::debug!(error = %e, "request body from the client failed");
    if e.is_incomplete_message() || e.is_canceled() {
        wasmtime_wasi_http::Error::ConnectionTerminated
    } else if e.is_timeout() {
        wasmtime_wasi_http::Error::ConnectionReadTimeout
    } else {
        wasmtime_wasi_http::Error::HttpProtocolError
    }
}

/// A client's request body that fails when the client sends nothing for `gap` (so a
/// client trickling its body cannot hold an instance and a connection forever).
struct GapLimited {
    inner: Incoming,
    gap: std::time::Duration,
    /// Armed at the first read (a guest that reads its body late is not the client's
    /// fault), reset by every piece that arrives.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl GapLimited {
    fn new(inner: Incoming, gap: std::time::Duration) -> Self {
        GapLimited {
            inner,
            gap,
            timer: None,
        }
    }
}

impl http_body::Body for GapLimited {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let gap = self.gap;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = self.timer.as_mut() {
                    timer.as_mut().reset(tokio::time::Instant::now() + gap);
                }
                Poll::Ready(frame.map(|f| f.map_err(client_body_error)))
            }
            Poll::Pending => {
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(?gap, "request body stalled: timed out");
                        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `METHOD /path`, for the log.
struct RequestLine<'a>(&'a Method, &'a str);

impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

impl Gateway {
    /// A gateway serving the apps in `apps`, reachable at `local_addr`, recording
    /// each answered request in `metrics`. A request body with a gap longer than
    /// `body_read_timeout` fails (the guest reading it sees a read timeout).
    pub fn new(
        apps: Arc<Apps>,
        local_addr: SocketAddr,
        metrics: Arc<RequestMetrics>,
        body_read_timeout: std::time::Duration,
        guard: GuardConfig,
        lattice: crate::lattice::Slot,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            apps,
            local_addr,
            metrics,
            body_read_timeout,
            guard,
            lattice,
        })
    }

    /// Handles one request from a client.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let trace = TraceContext::for_invocation(
            req.headers()
                .get(&TRACEPARENT_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let ip = guard::client_ip(
            req.extensions().get::<PeerAddr>(),
            req.headers(),
            &self.guard.trusted_proxies,
        );
        if let Some(refused) = self.guard.host_limit(ip) {
            self.metrics.record_refused(None, refused.status().as_u16());
            return refused;
        }
        let snapshot = self.apps.snapshot();
        let path = req.uri().path().to_string();
        let (component, mut req, guarded) = match snapshot.route(req.method(), &path) {
            RouteMatch::Found {
                value,
                pattern,
                params,
            } => {
                // Only routes with rules pay for keeping the pattern.
                let guarded = (value.auth.is_some() || value.rate_limit.is_some())
                    .then(|| pattern.to_string());
                match self.prepare_request(req, pattern, &params, trace.header_value()) {
                    Ok(req) => (value.clone(), req, guarded),
                    Err(status) => return body::text(status, "bad request"),
                }
            }
            RouteMatch::MethodNotAllowed(allowed) => {
                let mut r = body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                let allow = allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    r.headers_mut().insert(http::header::ALLOW, v);
                }
                return r;
            }
            RouteMatch::NotFound => {
                return body::text(
                    StatusCode::NOT_FOUND,
                    format!("no route for {} {path}", req.method()),
                );
            }
        };
        // During a rollout the new version may take the request (decided once the
        // caller is known, for sticky routing by subject).
        let candidate = snapshot.candidate(&component.id.app).cloned();
        drop(snapshot);

        let mut limit = None;
        if let Some(pattern) = guarded {
            match self
                .guard
                .check(&component, req.method(), &pattern, req.headers(), ip)
                .await
            {
                Ok(passed) => {
                    if let Some(identity) = &passed.identity {
                        identity.set_headers(req.headers_mut());
                    }
                    limit = passed.limit;
                }
                Err(refused) => {
                    self.metrics
                        .record_refused(Some(&component.id), refused.status().as_u16());
                    return *refused;
                }
            }
        }

        let component = match candidate {
            Some(c) if c.takes(req.headers(), ip) => {
                c.component(&component).cloned().unwrap_or(component)
            }
            _ => component,
        };
        let buffer = component
            .spec
            .limits
            .request_buffer
            .unwrap_or(crate::manifest::DEFAULT_REQUEST_BUFFER);
        let req = match receive_small_body(req, buffer).await {
            Ok(req) => req,
            Err(refused) => return refused,
        };
        // In a lattice, a component placed on other hosts is served there.
        let req = match self.lattice.get() {
            Some(lattice) if !component.placement.here() => {
                use crate::lattice::Routed;
                match lattice
                    .route(&component, crate::lattice::wire::Kind::Http, req)
                    .await
                {
                    Routed::Local(req) => req,
                    Routed::Remote(_, mut response) => {
                        if let Some(d) = limit {
                            d.set_headers(response.headers_mut());
                        }
                        return response;
                    }
                    Routed::Unavailable(why) => {
                        tracing::warn!(component = %component.id, reason = %why, "no host can serve the request");
                        self.metrics.record_refused(Some(&component.id), 503);
                        let mut r = body::text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{} is not running on any host now", component.id.component),
                        );
                        r.headers_mut().insert(
                            http::header::RETRY_AFTER,
                            HeaderValue::from(envelope::failure::RETRY_AFTER_SECS),
                        );
                        return r;
                    }
                }
            }
            _ => req,
        };
        let method = req.method().clone();
        let cx = Context {
            component: &component,
            metrics: &self.metrics,
            trace: &trace,
            what: &RequestLine(&method, &path),
        };
        let mut response =
            match envelope::invoke(cx, Admission::Admit, HttpCall::<HttpTrigger>::new(req)).await {
                Ok(response) => response,
                Err(e) => envelope::failure::respond(&e),
            };
        if let Some(d) = limit {
            d.set_headers(response.headers_mut());
        }
        response
    }

    /// Rewrites the client's request into what the guest receives.
    fn prepare_request(
        &self,
        req: Request<Incoming>,
        pattern: &str,
        params: &[(&str, &str)],
        traceparent: HeaderValue,
    ) -> Result<Request<Body>, StatusCode> {
        let (mut parts, incoming) = req.into_parts();
        rewrite_head(&mut parts, self.local_addr, pattern, params, traceparent)?;
        let body = GapLimited::new(incoming, self.body_read_timeout).boxed_unsync();
        Ok(Request::from_parts(parts, body))
    }
}

/// Receives a request body of a known length up to `limit` whole before the
/// component starts, so a guest that reads without blocking and takes an empty read
/// for the end (a common pattern in components written for other hosts) sees all of
/// it even when the client sent the body after the head. Longer bodies, and bodies
/// of unknown length, stream to the component as they arrive. The body's gap clock
/// still applies; a client that breaks off gets 400.
async fn receive_small_body(
    req: Request<Body>,
    limit: u64,
) -> Result<Request<Body>, Response<Body>> {
    use http_body::Body as _;
    let known = req.body().size_hint().exact();
    if !known.is_some_and(|n| n > 0 && n <= limit) || req.body().is_end_stream() {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    match body.collect().await {
        Ok(b) => Ok(Request::from_parts(parts, body::full(b.to_bytes()))),
        Err(e) => {
            tracing::debug!(error = %e, "request body broke off before the component started");
            Err(body::text(
                StatusCode::BAD_REQUEST,
                "request body incomplete",
            ))
        }
    }
}

/// Rewrites a client's request head into what the guest receives: an absolute URI
/// (wasi:http needs an authority: the `Host` header's, else the URI's (HTTP/2), else
/// `local_addr`; the scheme the client used: https over TLS terminated here), no
/// client `wasmhive-*` header, the route's `wasmhive-route`/`wasmhive-param-*`, the
/// invocation's `traceparent`, and an `x-request-id` (the client's if it is usable,
/// else a new one). A head that cannot be made into a valid request is 400.
pub fn rewrite_head(
    parts: &mut http::request::Parts,
    local_addr: SocketAddr,
    pattern: &str,
    params: &[(&str, &str)],
    traceparent: HeaderValue,
) -> Result<(), StatusCode> {
    // HTTP/1.1 names it in `Host`, HTTP/2 in the URI (`:authority`).
    let authority = match (parts.headers.get(http::header::HOST), parts.uri.authority()) {
        (Some(host), _) => http::uri::Authority::try_from(host.as_bytes()),
        (None, Some(a)) => Ok(a.clone()),
        (None, None) => http::uri::Authority::try_from(local_addr.to_string()),
    }
    .map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    // The scheme the client used to reach this host (TLS terminated here: https).
    uri.scheme = Some(
        if parts.extensions.get::<crate::listener::ViaTls>().is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        },
    );
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| StatusCode::BAD_REQUEST)?;

    crate::headers::strip_reserved(&mut parts.headers);
    crate::headers::strip_connection_named(&mut parts.headers);
    parts.headers.insert(TRACEPARENT_HEADER, traceparent);
    // A request id for the whole call chain: the client's, else a new one.
    let has_id = parts
        .headers
        .get(&REQUEST_ID_HEADER)
        .is_some_and(|v| !v.is_empty() && v.len() <= 128);
    if !has_id {
        parts.headers.insert(REQUEST_ID_HEADER, new_request_id());
    }
    crate::headers::add_route(&mut parts.headers, pattern, params);
    Ok(())
}
