//! Service-to-service calls: `http://NAME/...` from a component reaches component
//! `NAME` of the same app in process (no socket), under the caller's policy for it.
//!
//! Layers, outermost first, for one call:
//!
//! 1. **circuit breaker** ([`breaker`]): open → fail fast without touching the target;
//! 2. **retry** ([`retry`]): idempotent requests only, exponential backoff with jitter,
//!    within a per caller→target budget;
//! 3. **timeout**: per attempt, for the response head;
//! 4. **bulkhead and scaling**: the target's own admission (`max_instances`, queue),
//!    waking it from zero if needed; then the invocation itself.
//!
//! A call that still fails gets the policy's `fallback` response if there is one,
//! else what a proxy would answer: the target's own 5xx, 504 for a timeout, 503 for
//! an open circuit or a full bulkhead. The callee receives the caller's `traceparent`
//! (continued as its own span) and `x-request-id`.

pub mod breaker;
pub mod retry;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use crate::apps::{Apps, DeployedComponent};
use crate::body::{self, Body};
use crate::capability::http::{CallPolicy, Fallback, Mesh};
use crate::envelope::{self, Admission, Context, HttpCall};
use crate::headers::TRACEPARENT_HEADER;
use crate::ids::ComponentId;
use crate::routes::RouteMatch;
use crate::telemetry::metrics::RequestMetrics;
use crate::telemetry::trace::TraceContext;
use crate::trigger::mesh::MeshTrigger;
use breaker::Breaker;

/// Largest request body kept for replay by retries; larger requests are sent once.
pub const MAX_REPLAY_BODY: usize = 1 << 20;

type Key = (String, String);

/// The in-process mesh.
pub struct MeshRouter {
    apps: Arc<Apps>,
    metrics: Arc<RequestMetrics>,
    breakers: Mutex<HashMap<Key, Breaker>>,
    budgets: Mutex<HashMap<Key, retry::Budget>>,
    /// The lattice, when calls may cross hosts.
    lattice: crate::lattice::Slot,
}

/// How one attempt ended.
enum Attempt {
    Answered(Response<Body>),
    Timeout,
    Unavailable(String),
}

impl MeshRouter {
    /// A mesh over the apps in `apps`; with a `lattice`, a call to a component
    /// placed on another host is forwarded there.
    pub fn new(
        apps: Arc<Apps>,
        metrics: Arc<RequestMetrics>,
        lattice: crate::lattice::Slot,
    ) -> Arc<Self> {
        Arc::new(MeshRouter {
            apps,
            metrics,
            breakers: Mutex::default(),
            budgets: Mutex::default(),
            lattice,
        })
    }

    /// Breaker states of `caller`'s targets (`closed`, `open`, `half-open`).
    pub fn circuits(&self, caller: &ComponentId) -> Vec<(String, String)> {
        let now = Instant::now();
        let prefix = format!("{}/{}", caller.app, caller.component);
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = breakers
            .iter()
            .filter(|((c, _), _)| *c == prefix)
            .map(|((_, t), b)| (t.clone(), b.state(now).to_string()))
            .collect();
        out.sort();
        out
    }

    /// Every breaker: (caller app, caller component, target, state).
    pub fn all_circuits(&self) -> Vec<(String, String, String, &'static str)> {
        let now = Instant::now();
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .iter()
            .map(|((c, t), b)| {
                let (app, comp) = c.split_once('/').unwrap_or((c, ""));
                (app.to_string(), comp.to_string(), t.clone(), b.state(now))
            })
            .collect()
    }

    fn breaker_allows(&self, key: &Key, policy: &CallPolicy) -> bool {
        let Some(p) = &policy.circuit_breaker else {
            return true;
        };
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .entry(key.clone())
            .or_insert_with(|| Breaker::new(p.clone()))
            .allow(Instant::now())
    }

    fn breaker_record(&self, key: &Key, policy: &CallPolicy, success: bool) {
        if policy.circuit_breaker.is_none() {
            return;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = breakers.get_mut(key) {
            b.record(success, Instant::now());
        }
    }

    /// One invocation of `target` with `request` (no policy), through the envelope.
    async fn invoke(&self, target: &Arc<DeployedComponent>, request: Request<Body>) -> Attempt {
        let (request, trace) = self.prepare(target, request);
        let request = match self.lattice.get() {
            Some(lattice) if !target.placement.here() => {
                use crate::lattice::{Routed, wire::Outcome};
                match lattice
                    .route(target, crate::lattice::wire::Kind::Mesh, request)
                    .await
                {
                    Routed::Local(request) => request,
                    Routed::Remote(outcome, response) => {
                        target.stats.calls_remote.fetch_add(1, Ordering::Relaxed);
                        return match outcome {
                            Outcome::Answered => Attempt::Answered(response),
                            Outcome::Timeout => Attempt::Timeout,
                            Outcome::Unavailable => {
                                Attempt::Unavailable(format!("{} is unavailable", target.id))
                            }
                        };
                    }
                    Routed::Unavailable(why) => return Attempt::Unavailable(why),
                }
            }
            _ => request,
        };
        target.stats.calls_local.fetch_add(1, Ordering::Relaxed);
        let path = request.uri().path().to_string();
        let cx = Context {
            component: target,
            metrics: &self.metrics,
            trace: &trace,
            what: &path,
        };
        match envelope::invoke(cx, Admission::Admit, HttpCall::<MeshTrigger>::new(request)).await {
            Ok(response) => Attempt::Answered(response),
            Err(e) => match e.status() {
                StatusCode::GATEWAY_TIMEOUT => Attempt::Timeout,
                StatusCode::SERVICE_UNAVAILABLE => Attempt::Unavailable(e.to_string()),
                status => Attempt::Answered(status_response(
                    status,
                    &format!("{} failed", target.id.component),
                    None,
                )),
            },
        }
    }

    /// What the callee sees: host-reserved headers replaced, the route it matched,
    /// and its own span of the caller's trace.
    fn prepare(
        &self,
        target: &DeployedComponent,
        mut request: Request<Body>,
    ) -> (Request<Body>, TraceContext) {
        // The caller's hooks removed what the guest wrote and added the verified
        // identity (when forwarded); everything else reserved is the host's to set.
        crate::headers::strip_reserved_but_identity(request.headers_mut());
        let trace = TraceContext::for_invocation(
            request
                .headers()
                .get(&TRACEPARENT_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        request
            .headers_mut()
            .insert(TRACEPARENT_HEADER, trace.header_value());
        let snapshot = self.apps.snapshot();
        let path = request.uri().path().to_string();
        if let RouteMatch::Found {
            value,
            pattern,
            params,
        } = snapshot.route(request.method(), &path)
            && value.id == target.id
        {
            crate::headers::add_route(request.headers_mut(), pattern, &params);
        }
        (request, trace)
    }
}

/// The body of a call, kept for replay when it may be retried.
enum Replayable {
    /// Sent once.
    Once(Option<Body>),
    /// Small enough to send again.
    Bytes(Bytes),
}

impl Replayable {
    /// Keeps `body` for `attempts` attempts; `None` if it is too large to replay.
    async fn new(body: Body, attempts: u32) -> Option<Replayable> {
        if attempts <= 1 {
            return Some(Replayable::Once(Some(body)));
        }
        http_body_util::Limited::new(body, MAX_REPLAY_BODY)
            .collect()
            .await
            .ok()
            .map(|b| Replayable::Bytes(b.to_bytes()))
    }

    /// The body for the next attempt (`None`: a one-shot body already sent).
    fn next(&mut self) -> Option<Body> {
        match self {
            Replayable::Once(body) => body.take(),
            Replayable::Bytes(bytes) => Some(body::full(bytes.clone())),
        }
    }
}

/// One call's attempts: to whom, under which policy.
struct Attempts<'a> {
    key: &'a Key,
    target: &'a Arc<DeployedComponent>,
    policy: &'a CallPolicy,
    retries: Option<&'a crate::capability::http::RetryPolicy>,
}

impl MeshRouter {
    /// Tries the call as often as the policy and the retry budget allow: the first
    /// answer below 500 (`Ok`), else the last attempt's outcome (`Err`).
    async fn attempts(
        &self,
        call: Attempts<'_>,
        parts: &http::request::Parts,
        mut body: Replayable,
    ) -> Result<Response<Body>, Attempt> {
        self.budget(call.key, |b| b.deposit());
        let mut last = Attempt::Unavailable("no attempt".into());
        for attempt in 0..call.retries.map_or(1, |r| r.attempts) {
            if attempt > 0 {
                if !self.budget(call.key, |b| b.withdraw()) {
                    tracing::debug!(target = %call.target.id, "retry budget exhausted");
                    break;
                }
                if let Some(r) = call.retries {
                    tokio::time::sleep(retry::delay(r, attempt)).await;
                }
            }
            let Some(body) = body.next() else {
                break;
            };
            let request = rebuild(parts, body);
            let result = match call.policy.timeout {
                Some(t) => tokio::time::timeout(t, self.invoke(call.target, request))
                    .await
                    .unwrap_or(Attempt::Timeout),
                None => self.invoke(call.target, request).await,
            };
            match result {
                Attempt::Answered(r) if r.status().as_u16() < 500 => {
                    self.breaker_record(call.key, call.policy, true);
                    return Ok(r);
                }
                other => last = other,
            }
        }
        Err(last)
    }

    /// Runs `f` on the retry budget of `key`.
    fn budget<R>(&self, key: &Key, f: impl FnOnce(&mut retry::Budget) -> R) -> R {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        f(budgets.entry(key.clone()).or_default())
    }
}

/// A short text response the host makes up.
fn status_response(status: StatusCode, message: &str, detail: Option<String>) -> Response<Body> {
    if let Some(d) = detail {
        tracing::debug!(%status, detail = %d, "mesh call answered by the host");
    }
    body::text(status, message.to_string())
}

fn fallback_response(f: &Fallback) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from(f.body.clone())));
    *r.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::OK);
    for (k, v) in &f.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    r.headers_mut().insert(
        HeaderName::from_static(crate::headers::FALLBACK),
        HeaderValue::from_static("1"),
    );
    r
}

fn rebuild(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut b = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version);
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    b.body(body).expect("parts of a valid request")
}

#[async_trait::async_trait]
impl Mesh for MeshRouter {
    async fn call(
        &self,
        caller: &ComponentId,
        target: &str,
        policy: &CallPolicy,
        request: Request<Body>,
    ) -> Result<Response<Body>, ErrorCode> {
        let Some(component) =
            self.apps
                .snapshot()
                .callee(&caller.app, target, &caller.version, request.headers())
        else {
            tracing::warn!(caller = %caller, target, "mesh call to a component that is not deployed");
            return Err(ErrorCode::DestinationNotFound);
        };
        let key: Key = (
            format!("{}/{}", caller.app, caller.component),
            target.to_string(),
        );

        if !self.breaker_allows(&key, policy) {
            tracing::debug!(caller = %caller, target, "circuit open: failing fast");
            return Ok(match &policy.fallback {
                Some(f) => fallback_response(f),
                None => status_response(StatusCode::SERVICE_UNAVAILABLE, "circuit open", None),
            });
        }

        let (parts, body) = request.into_parts();
        let retries = policy
            .retries
            .as_ref()
            .filter(|_| retry::retryable(&parts.method, &parts.headers));
        let Some(body) = Replayable::new(body, retries.map_or(1, |r| r.attempts)).await else {
            return Ok(status_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large to retry",
                None,
            ));
        };
        let call = Attempts {
            key: &key,
            target: &component,
            policy,
            retries,
        };
        let last = match self.attempts(call, &parts, body).await {
            Ok(answer) => return Ok(answer),
            Err(last) => last,
        };
        self.breaker_record(&key, policy, false);
        if let Some(f) = &policy.fallback {
            return Ok(fallback_response(f));
        }
        Ok(match last {
            Attempt::Answered(r) => r,
            Attempt::Timeout => status_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("{target} did not answer in time"),
                None,
            ),
            Attempt::Unavailable(why) => status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{target} is unavailable"),
                Some(why),
            ),
        })
    }
}
