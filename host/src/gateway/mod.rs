//! The public HTTP listener: match a route, hand the request to the component that
//! serves it, and turn every failure into a status code in one place ([`error`]).
//!
//! Before a guest sees a request the gateway removes headers a client must not be able
//! to forge (`wasmhive-*`) and adds what the route matched: one
//! `wasmhive-param-NAME` per captured parameter and `wasmhive-route` (the pattern,
//! only when it has parameters: each header costs the guest work), and sets
//! `traceparent` to the invocation's span (continuing the client's trace if it sent
//! one; see `telemetry::trace`). Hop-by-hop headers
//! are removed by the runtime (see `runtime::hooks`).

mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::apps::{Apps, DeployedComponent};
use crate::body::{self, Body};
use crate::routes::RouteMatch;
use crate::telemetry::metrics::{RequestMetrics, Trigger};
use crate::telemetry::trace::{TRACEPARENT_HEADER, TraceContext, hex128, random_u128};

/// Header prefix reserved for the host; stripped from client requests.
pub const RESERVED_HEADER_PREFIX: &str = "wasmhive-";
/// Header identifying a request across every service it reaches.
pub const REQUEST_ID: &str = "x-request-id";
/// [`REQUEST_ID`] as a header name (no parsing per lookup).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
/// Header carrying the matched route pattern to the guest.
pub const ROUTE_HEADER: &str = "wasmhive-route";
/// Prefix of headers carrying captured path parameters to the guest.
pub const PARAM_HEADER_PREFIX: &str = "wasmhive-param-";

/// The gateway's shared state.
pub struct Gateway {
    apps: Arc<Apps>,
    local_addr: SocketAddr,
    next_id: AtomicU64,
    metrics: Arc<RequestMetrics>,
}

impl Gateway {
    /// A gateway serving the apps in `apps`, reachable at `local_addr`, recording
    /// each answered request in `metrics`.
    pub fn new(apps: Arc<Apps>, local_addr: SocketAddr, metrics: Arc<RequestMetrics>) -> Arc<Self> {
        Arc::new(Gateway {
            apps,
            local_addr,
            next_id: AtomicU64::new(1),
            metrics,
        })
    }

    /// Handles one request from a client.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let invocation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let trace = TraceContext::for_invocation(
            req.headers()
                .get(&TRACEPARENT_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let traceparent = trace.header_value();
        let snapshot = self.apps.snapshot();
        let path = req.uri().path().to_string();
        let (component, req) = match snapshot.route(req.method(), &path) {
            RouteMatch::Found {
                value,
                pattern,
                params,
            } => match self.prepare_request(req, pattern, &params, traceparent) {
                Ok(req) => (value.clone(), req),
                Err(status) => return body::text(status, "bad request"),
            },
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
        drop(snapshot);

        component.stats.started();
        let method = req.method().clone();
        let response = match self.invoke(&component, req).await {
            Ok(response) => {
                tracing::debug!(
                    invocation,
                    trace_id = %trace.trace_id_hex(),
                    component = %component.id,
                    %method,
                    path = %path,
                    status = response.status().as_u16(),
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "request served"
                );
                response
            }
            Err(e) => {
                component.stats.failed();
                error::respond(
                    &e,
                    &component.id,
                    invocation,
                    &trace.trace_id_hex(),
                    &method,
                    &path,
                )
            }
        };
        self.metrics.record_for(
            &component.series,
            &component.id,
            Trigger::Http,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response
    }

    /// Admits the request (or sheds it), wakes the component if it is at zero, and
    /// runs it. The admission permit travels with the instance and is released when
    /// the instance is gone.
    async fn invoke(
        &self,
        component: &DeployedComponent,
        req: Request<Body>,
    ) -> Result<Response<Body>, error::Failure> {
        let permit = component.scaler.admit().await?;
        let prepared = component.scaler.prepared().await?;
        Ok(prepared.handle(req, permit).await?)
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
        // Absolute URI: wasi:http needs an authority; use Host, else our own address.
        let authority = match parts.headers.get(http::header::HOST) {
            Some(host) => http::uri::Authority::try_from(host.as_bytes()),
            None => http::uri::Authority::try_from(self.local_addr.to_string()),
        }
        .map_err(|_| StatusCode::BAD_REQUEST)?;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).map_err(|_| StatusCode::BAD_REQUEST)?;

        let reserved: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with(RESERVED_HEADER_PREFIX))
            .cloned()
            .collect();
        for k in reserved {
            parts.headers.remove(k);
        }
        parts.headers.insert(TRACEPARENT_HEADER, traceparent);
        // A request id for the whole call chain: the client's, else a new one.
        let has_id = parts
            .headers
            .get(&REQUEST_ID_HEADER)
            .is_some_and(|v| !v.is_empty() && v.len() <= 128);
        if !has_id && let Ok(v) = HeaderValue::try_from(hex128(random_u128())) {
            parts.headers.insert(REQUEST_ID_HEADER, v);
        }
        add_route_headers(&mut parts.headers, pattern, params);
        let body = incoming
            .map_err(wasmtime_wasi_http::Error::from)
            .boxed_unsync();
        Ok(Request::from_parts(parts, body))
    }
}

/// Adds what the route matched to a request for the guest: one
/// `wasmhive-param-NAME` header per captured parameter and, when the pattern has
/// parameters, `wasmhive-route` with the pattern. A literal pattern is the path
/// itself, so it is not repeated: every header a guest receives costs it work on
/// every request (wasi:http lowers and the guest parses each one).
pub(crate) fn add_route_headers(
    headers: &mut http::HeaderMap,
    pattern: &str,
    params: &[(&str, &str)],
) {
    if params.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(pattern) {
        headers.insert(HeaderName::from_static(ROUTE_HEADER), v);
    }
    for (name, value) in params {
        let header = HeaderName::from_bytes(
            format!("{PARAM_HEADER_PREFIX}{}", name.to_ascii_lowercase()).as_bytes(),
        );
        if let (Ok(h), Ok(v)) = (header, HeaderValue::from_str(value)) {
            headers.insert(h, v);
        }
    }
}
