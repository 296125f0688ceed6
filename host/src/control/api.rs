//! The admin listener: health, readiness and the versioned JSON API the CLI uses.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/healthz` | 200 while the process serves |
//! | GET | `/readyz` | 200 once start-up deployments are done, the host joined its lattice (if it has one) and the bus is connected, else 503 (`starting`, `joining lattice NAME`, or `bus down: ...` while NATS is unreachable) |
//! | GET | `/metrics` | Prometheus text (see [`metrics`](super::metrics)) |
//! | GET | `/v1/status` | [`HostStatus`](super::status::HostStatus) as JSON |
//! | GET | `/v1/hosts` | the lattice's live hosts ([`Hosts`](super::status::Hosts)); 404 for a host alone |
//! | HEAD | `/v1/blobs/{digest}` | 200 if the component bytes are stored, else 404 |
//! | PUT | `/v1/blobs/{digest}` | store component bytes (checked against the digest) |
//! | POST | `/v1/apps` | deploy ([`DeployRequest`](super::DeployRequest) JSON) → [`DeployReport`](super::DeployReport) |
//! | DELETE | `/v1/apps/{name}` | undeploy |
//! | GET | `/v1/apps/{app}/components/{c}/kv/{bucket}` | the bucket's keys ([`KeyList`](super::kv::KeyList)); with `?key=K`, the value (raw bytes; 404 unset) |
//! | PUT / DELETE | `/v1/apps/{app}/components/{c}/kv/{bucket}?key=K` | set (the body) or delete one key; only buckets the manifest lists, values within `keyvalue.max_value_size` |
//! | POST | `/v1/apps/{app}/components/{c}/runs` | start a job run ([`RunBody`](super::jobs::RunBody) JSON) → 202 `{"run": ID}`; with `?follow=1` its output as JSON lines ([`RunEvent`]) until it ends |
//! | GET | `/v1/apps/{app}/components/{c}/runs[?limit=N]` | `{"runs": [...]}`, newest first, without output |
//! | GET | `/v1/apps/{app}/components/{c}/runs/{id}` | one run with its output ([`RunRecord`](crate::jobs::RunRecord)) |
//! | POST | `/v1/apps/{app}/components/{c}/runs/{id}/stop` | stops the run if it is going on this host |
//! | POST | `/v1/apps?strategy=S&force=1` | a deploy whose `[rollout]` strategy is overridden (`immediate`, `canary`, `blue-green`); `force` replaces a running rollout |
//! | GET | `/v1/apps/{app}/rollout` | the app's rollout, running or last ended ([`RolloutStatus`](super::rollout::RolloutStatus)) |
//! | POST | `/v1/apps/{app}/promote`, `/v1/apps/{app}/abort` | all traffic to the new version now (a deploy's swap) / back to the old one |
//! | GET | `/v1/apps/{app}/history` | the app's last versions, newest first ([`History`](super::history::History)) |
//! | POST | `/v1/apps/{app}/rollback` | `{"to": VERSION}` (optional): deploys that earlier version again, or the one before the running version → [`DeployReport`](super::DeployReport) |
//! | GET | `/v1/jobs[/{app}]` | every job: schedule, next run, last runs ([`JobList`](super::jobs::JobList)) |
//! | GET | `/v1/runs/{id}` | a run of any deployed job, with its output |
//! | POST | `/v1/publish` | publish ([`PublishRequest`](super::PublishRequest)); with `request_timeout_ms`, wait for the reply ([`PublishReply`](super::PublishReply)) |
//!
//! Every endpoint but `/healthz` and `/readyz` (and `/metrics` with `[admin]
//! public_metrics = true`) needs `Authorization: Bearer TOKEN` ([`super::token`]);
//! without it: 401 with `WWW-Authenticate: Bearer`, logged with the peer's address
//! (never what it sent).
//!
//! Errors are JSON `{"error": "..."}` with 400 (refused deploy), 401 (no or wrong
//! token), 404 (unknown app or blob), 413 (upload too large) or 500.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::token::AdminToken;
use super::{ControlPlane, DeployError, DeployRequest};
use crate::body::{self, Body};
use crate::listener::PeerAddr;

/// Largest component upload accepted.
pub const MAX_UPLOAD: u64 = 512 << 20;
/// Uploads accepted at once (each is streamed to disk, then validated).
pub const MAX_CONCURRENT_UPLOADS: usize = 2;
/// Largest deploy request (manifest text and digests) accepted.
pub const MAX_DEPLOY_REQUEST: usize = 4 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    body::json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// The admin API: the control plane behind its lock.
pub struct AdminApi {
    control: Arc<ControlPlane>,
    token: AdminToken,
    public_metrics: bool,
    uploads: tokio::sync::Semaphore,
}

impl AdminApi {
    /// The API over `control`, locked with `token`; `/metrics` is open with
    /// `public_metrics`.
    pub fn new(control: Arc<ControlPlane>, token: AdminToken, public_metrics: bool) -> Self {
        AdminApi {
            control,
            token,
            public_metrics,
            uploads: tokio::sync::Semaphore::new(MAX_CONCURRENT_UPLOADS),
        }
    }

    /// The control plane behind the API.
    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }
}

/// Handles one admin request: the lock, then the endpoint.
pub async fn handle(api: Arc<AdminApi>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz") || (api.public_metrics && path == "/metrics");
    if !open {
        let authorization = req.headers().get(http::header::AUTHORIZATION);
        if !api.token.verify(authorization) {
            let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
            tracing::warn!(
                peer = ?peer,
                method = %req.method(),
                path,
                reason = if authorization.is_some() { "wrong token" } else { "no token" },
                "admin request refused"
            );
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer TOKEN` (the token is in the host's \
                 <data_dir>/admin.token, or what --admin-token-file / WASMHIVE_ADMIN_TOKEN gave it)",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"wasmhive-admin\""),
            );
            return r;
        }
    }
    endpoint(&api, req).await
}

/// Routes one authorized admin request to its endpoint.
async fn endpoint(api: &AdminApi, req: Request<Incoming>) -> Response<Body> {
    let control = &api.control;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => body::text(StatusCode::OK, "ok"),
        (&Method::GET, ["readyz"]) => {
            if !control.is_ready() {
                body::text(StatusCode::SERVICE_UNAVAILABLE, "starting")
            } else if !control.bus().connected() {
                body::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("bus down: {} (reconnecting)", control.bus().describe()),
                )
            } else if let Some(lattice) = control.joining() {
                body::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("joining lattice {lattice}"),
                )
            } else {
                body::text(StatusCode::OK, "ready")
            }
        }
        (&Method::GET, ["metrics"]) => {
            let mut r = Response::new(body::full(control.metrics_text()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, ["v1", "status"]) => body::json(StatusCode::OK, &control.status()),
        (&Method::GET, ["v1", "hosts"]) => match control.hosts() {
            Some(hosts) => body::json(StatusCode::OK, &hosts),
            None => error(
                StatusCode::NOT_FOUND,
                "this host is not in a lattice (start it with --nats URL)",
            ),
        },
        (&Method::HEAD, ["v1", "blobs", digest]) => {
            let mut r = Response::new(body::empty());
            if !control.blobs().contains(digest) {
                *r.status_mut() = StatusCode::NOT_FOUND;
            }
            r
        }
        (&Method::PUT, ["v1", "blobs", digest]) => put_blob(api, digest, req).await,
        (&Method::POST, ["v1", "publish"]) => match read_json(req, "publish request").await {
            Ok(request) => publish(control, request).await,
            Err(r) => r,
        },
        (&Method::POST, ["v1", "apps"]) => {
            let local = req
                .extensions()
                .get::<PeerAddr>()
                .is_some_and(|p| p.0.ip().is_loopback());
            let options = match deploy_options(req.uri().query()) {
                Ok(o) => o,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match read_json::<DeployRequest>(req, "deploy request").await {
                Ok(mut request) => {
                    // Only a client on this machine names a directory of this machine.
                    if !local {
                        request.manifest_dir = None;
                    }
                    deploy(control, request, options).await
                }
                Err(r) => r,
            }
        }
        (
            &Method::POST,
            [
                "v1",
                "apps",
                app,
                "components",
                component,
                action @ ("stop" | "start"),
            ],
        ) => match control.set_stopped(app, component, *action == "stop").await {
            Ok(changed) => body::json(
                StatusCode::OK,
                &serde_json::json!({ "app": app, "component": component, "stopped": *action == "stop", "changed": changed }),
            ),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        (method, ["v1", "apps", app, "components", component, "kv", bucket]) => {
            kv(control, method, app, component, bucket, req).await
        }
        (
            method,
            [
                "v1",
                "apps",
                app,
                "components",
                component,
                "runs",
                rest @ ..,
            ],
        ) => runs(control, method, (app, component), rest, req).await,
        (&Method::GET, ["v1", "apps", app, "rollout"]) => match control.rollout_status(app) {
            Ok(r) => body::json(StatusCode::OK, &r),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        (&Method::POST, ["v1", "apps", app, "promote"]) => match control.promote(app).await {
            Ok(report) => body::json(StatusCode::OK, &report),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        (&Method::POST, ["v1", "apps", app, "abort"]) => match control.abort(app).await {
            Ok(status) => body::json(StatusCode::OK, &status),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        (&Method::GET, ["v1", "apps", app, "history"]) => match control.history(app).await {
            Ok(h) => body::json(StatusCode::OK, &h),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        (&Method::POST, ["v1", "apps", app, "rollback"]) => {
            let to: RollbackRequest = match read_json(req, "rollback request").await {
                Ok(r) => r,
                Err(r) => return r,
            };
            match control.rollback(app, to.to.as_deref()).await {
                Ok(report) => body::json(StatusCode::OK, &report),
                Err(e) => {
                    tracing::warn!(error = %e, "rollback refused");
                    error(deploy_status(&e), e.to_string())
                }
            }
        }
        (&Method::GET, ["v1", "jobs"]) => job_list(control, None).await,
        (&Method::GET, ["v1", "jobs", app]) => job_list(control, Some(app)).await,
        (&Method::GET, ["v1", "runs", id]) => match control.find_run(id).await {
            Ok(r) => body::json(StatusCode::OK, &r),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        (&Method::GET, ["v1", "subscribe"]) => {
            let Some(subject) = query_param(req.uri().query(), "subject") else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "name the subject: /v1/subscribe?subject=orders.>",
                );
            };
            subscribe(control, &subject).await
        }
        (&Method::DELETE, ["v1", "apps", name]) => match control.undeploy(name).await {
            Ok(()) => body::text(StatusCode::OK, format!("undeployed {name}")),
            Err(e) => error(deploy_status(&e), e.to_string()),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}"),
        ),
    }
}

/// `POST /v1/apps/{app}/rollback`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RollbackRequest {
    /// The version to go back to (default: the one before the running version).
    #[serde(default)]
    pub to: Option<String>,
}

/// `GET /v1/jobs[/{app}]`.
async fn job_list(control: &ControlPlane, app: Option<&str>) -> Response<Body> {
    match control.job_list(app).await {
        Ok(list) => body::json(StatusCode::OK, &list),
        Err(e) => error(deploy_status(&e), e.to_string()),
    }
}

/// `/v1/apps/{app}/components/{c}/runs[/{id}[/stop]]`: start a run (`POST`, with
/// `?follow=1` its output as JSON lines until it ends), list runs (`GET`, newest
/// first, `?limit=N`), one run with its output (`GET …/{id}`), stop a run going on
/// this host (`POST …/{id}/stop`).
async fn runs(
    control: &ControlPlane,
    method: &Method,
    (app, component): (&str, &str),
    rest: &[&str],
    req: Request<Incoming>,
) -> Response<Body> {
    let fail = |e: DeployError| error(deploy_status(&e), e.to_string());
    match (method, rest) {
        (&Method::POST, []) => {
            let follow = query_param(req.uri().query(), "follow").is_some_and(|v| v != "0");
            let body: super::jobs::RunBody = match read_json(req, "run request").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match control.start_run(app, component, body).await {
                Ok(started) if follow => follow_run(control, started),
                Ok(started) => body::json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({ "run": started.id }),
                ),
                Err(e) => fail(e),
            }
        }
        (&Method::GET, []) => {
            let limit = query_param(req.uri().query(), "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(super::jobs::MAX_LISTED_RUNS);
            match control.runs(app, component, limit).await {
                Ok(runs) => body::json(StatusCode::OK, &serde_json::json!({ "runs": runs })),
                Err(e) => fail(e),
            }
        }
        (&Method::GET, [id]) => match control.run(app, component, id).await {
            Ok(r) => body::json(StatusCode::OK, &r),
            Err(e) => fail(e),
        },
        (&Method::POST, [id, "stop"]) => match control.stop_run(app, component, id) {
            Ok(stopped) => body::json(
                StatusCode::OK,
                &serde_json::json!({ "run": id, "stopped": stopped }),
            ),
            Err(e) => fail(e),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "runs: POST …/runs, GET …/runs, GET …/runs/{id}, POST …/runs/{id}/stop",
        ),
    }
}

/// One line of a followed run ([`follow_run`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunEvent {
    /// The run's id (first line).
    Run(String),
    /// Output: which stream, and the bytes in base64.
    Output {
        /// `stdout` or `stderr`.
        stream: crate::jobs::Stream,
        /// base64
        data: String,
    },
    /// Output chunks this follower fell too far behind to receive (they are in the
    /// run's history, up to its bound).
    Lost(u64),
    /// The run ended (last line): its record, with the output tails.
    Done(Box<crate::jobs::RunRecord>),
    /// The run's task ended without a record (last line; the host log says why).
    Error(String),
}

/// What a follower is told when a run's task ended without its record.
const LOST_RUN: &str = "the run ended without a record (the host log says why)";

/// Streams a run's output as JSON lines ([`RunEvent`]) until it ends. The run goes on
/// if the follower goes away.
fn follow_run(control: &ControlPlane, started: crate::jobs::Started) -> Response<Body> {
    use base64::Engine as _;
    use futures::StreamExt;
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    fn line(event: &RunEvent) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(event).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
    fn chunk_event(c: crate::jobs::Chunk) -> RunEvent {
        RunEvent::Output {
            stream: c.stream,
            data: base64::engine::general_purpose::STANDARD.encode(&c.data),
        }
    }
    struct State {
        first: Option<Vec<u8>>,
        follow: tokio::sync::broadcast::Receiver<crate::jobs::Chunk>,
        done: Option<tokio::sync::oneshot::Receiver<crate::jobs::RunRecord>>,
        stop: tokio_util::sync::CancellationToken,
    }
    let state = State {
        first: Some(line(&RunEvent::Run(started.id))),
        follow: started.follow,
        done: Some(started.done),
        stop: control.shutdown.clone(),
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((first, st));
        }
        let done = st.done.as_mut()?;
        tokio::select! {
            c = st.follow.recv() => match c {
                Ok(c) => Some((line(&chunk_event(c)), st)),
                Err(RecvError::Lagged(n)) => Some((line(&RunEvent::Lost(n)), st)),
                // No more output: wait for the record.
                Err(RecvError::Closed) => {
                    let event = match done.await {
                        Ok(record) => RunEvent::Done(Box::new(record)),
                        Err(_) => RunEvent::Error(LOST_RUN.into()),
                    };
                    st.done = None;
                    Some((line(&event), st))
                }
            },
            record = &mut *done => {
                // Everything written is in the channel by now.
                let mut out = Vec::new();
                loop {
                    match st.follow.try_recv() {
                        Ok(c) => out.extend(line(&chunk_event(c))),
                        Err(TryRecvError::Lagged(n)) => out.extend(line(&RunEvent::Lost(n))),
                        Err(_) => break,
                    }
                }
                out.extend(line(&match record {
                    Ok(record) => RunEvent::Done(Box::new(record)),
                    Err(_) => RunEvent::Error(LOST_RUN.into()),
                }));
                st.done = None;
                Some((out, st))
            }
            _ = st.stop.cancelled() => None,
        }
    })
    .map(|bytes| {
        Ok::<_, wasmtime_wasi_http::Error>(http_body::Frame::data(bytes::Bytes::from(bytes)))
    });
    let mut r = Response::new(http_body_util::StreamBody::new(events).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// `/v1/apps/{app}/components/{c}/kv/{bucket}`: list its keys (`GET`), or with
/// `?key=K` read (`GET`, the raw value; 404 when unset), write (`PUT`, the body) or
/// delete (`DELETE`) one.
async fn kv(
    control: &ControlPlane,
    method: &Method,
    app: &str,
    component: &str,
    bucket: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let bucket = match control.bucket(app, component, bucket) {
        Ok(b) => b,
        Err(e) => return error(deploy_status(&e), e.to_string()),
    };
    let key = query_param(req.uri().query(), "key");
    let result = match (method, key) {
        (&Method::GET, None) => bucket.list().await.map(|l| body::json(StatusCode::OK, &l)),
        (&Method::GET, Some(key)) => bucket.get(&key).await.map(|v| match v {
            Some(v) => {
                let mut r = Response::new(body::full(v));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => error(StatusCode::NOT_FOUND, format!("no key {key:?}")),
        }),
        (&Method::PUT, Some(key)) => {
            let limit = usize::try_from(bucket.max_value_size()).unwrap_or(usize::MAX);
            let value = match Limited::new(req.into_body(), limit).collect().await {
                Ok(b) => b.to_bytes().to_vec(),
                Err(_) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("value larger than keyvalue.max_value_size ({limit} bytes)"),
                    );
                }
            };
            bucket
                .set(&key, value)
                .await
                .map(|()| body::text(StatusCode::OK, "ok"))
        }
        (&Method::DELETE, Some(key)) => bucket
            .delete(&key)
            .await
            .map(|()| body::text(StatusCode::OK, "deleted")),
        (&Method::PUT | &Method::DELETE, None) => {
            return error(StatusCode::BAD_REQUEST, "name the key: ?key=K");
        }
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "GET, PUT or DELETE"),
    };
    result.unwrap_or_else(|e| error(deploy_status(&e), e.to_string()))
}

/// Reads a JSON request body of at most [`MAX_DEPLOY_REQUEST`] bytes; the error is the
/// response to send (413 or 400).
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
) -> Result<T, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_DEPLOY_REQUEST)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{what} too large"),
            ));
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid {what}: {e}")))
}

/// `PUT /v1/blobs/{digest}`: streams component bytes to disk, checking size, digest
/// and that they are a valid component before they enter the store. At most
/// [`MAX_CONCURRENT_UPLOADS`] at once; more get 503 with `Retry-After`.
async fn put_blob(api: &AdminApi, digest: &str, req: Request<Incoming>) -> Response<Body> {
    use super::blobs::UploadError;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("uploads are limited to {MAX_UPLOAD} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD) {
        return too_large();
    }
    let Ok(_permit) = api.uploads.try_acquire() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_CONCURRENT_UPLOADS} uploads are in progress; retry shortly"),
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        return r;
    };
    let result = async {
        let mut upload = api.control.blobs().upload(digest, MAX_UPLOAD).await?;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| UploadError::Interrupted(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                upload.write(data).await?;
            }
        }
        upload.finish().await
    }
    .await;
    match result {
        Ok(()) => body::text(StatusCode::CREATED, "stored"),
        Err(UploadError::TooLarge { .. }) => too_large(),
        Err(e @ UploadError::Io(_)) => {
            tracing::warn!(error = %e, "upload failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `POST /v1/publish`.
async fn publish(control: &ControlPlane, request: super::PublishRequest) -> Response<Body> {
    use crate::bus::BusError;
    match control.publish(request).await {
        Ok(reply) => body::json(StatusCode::OK, &reply),
        Err(e @ (BusError::InvalidSubject(_) | BusError::InvalidHeader(_))) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ BusError::NoResponders(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ BusError::Timeout { .. }) => error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `?strategy=immediate|canary|blue-green&force=1` of `POST /v1/apps`.
fn deploy_options(query: Option<&str>) -> Result<super::rollout::DeployOptions, String> {
    let strategy = match query_param(query, "strategy") {
        Some(s) => Some(
            crate::manifest::rollout::Strategy::parse(&s).map_err(|e| format!("strategy: {e}"))?,
        ),
        None => None,
    };
    Ok(super::rollout::DeployOptions {
        strategy,
        force: query_param(query, "force").is_some_and(|v| v != "0"),
    })
}

/// `POST /v1/apps`.
async fn deploy(
    control: &Arc<ControlPlane>,
    request: DeployRequest,
    options: super::rollout::DeployOptions,
) -> Response<Body> {
    match control.deploy_with(request, options).await {
        Ok(report) => body::json(StatusCode::OK, &report),
        Err(e) => {
            tracing::warn!(error = %e, "deploy refused");
            error(deploy_status(&e), e.to_string())
        }
    }
}

/// Streams the messages on `subject` as JSON lines (`{"subject", "data", "headers"}`)
/// until the client goes away or the host shuts down. A plain subscriber: it joins no queue group, so it sees
/// every message without taking any from the services. NATS-internal traffic is left
/// out.
async fn subscribe(control: &ControlPlane, subject: &str) -> Response<Body> {
    use crate::bus::BusError;
    use futures::StreamExt;
    let messages = match control.bus().subscribe(subject, None).await {
        Ok(s) => s,
        Err(e @ BusError::InvalidSubject(_)) => {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    // What a user wants to watch are the events: not NATS's own traffic (JetStream
    // API calls, acks, request inboxes) and not JetStream's deliveries of an event to
    // each durable consumer (same subject, a `$JS.ACK.` reply), which would show every
    // event once per consumer.
    let events = messages.filter(|m| {
        let internal = m.subject.starts_with('$')
            || m.subject.starts_with("_INBOX.")
            || m.reply_to
                .as_deref()
                .is_some_and(|r| r.starts_with("$JS.ACK."));
        std::future::ready(!internal)
    });
    // The stream ends when the host shuts down, so the watcher sees a clean end and
    // the drain does not wait for it.
    let stop = control.shutdown.clone();
    let events = events.take_until(async move { stop.cancelled().await });
    let lines = events.map(|m| {
        let line = super::PublishReply {
            subject: m.subject,
            data: String::from_utf8_lossy(&m.body).into_owned(),
            headers: m.headers,
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, wasmtime_wasi_http::Error>(http_body::Frame::data(bytes::Bytes::from(bytes)))
    });
    let mut r = Response::new(http_body_util::StreamBody::new(lines).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name)
            .then(|| percent_decode(v))
            .filter(|v| !v.is_empty())
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn deploy_status(e: &DeployError) -> StatusCode {
    match e {
        DeployError::NotFound(_) | DeployError::Missing(_) => StatusCode::NOT_FOUND,
        DeployError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        DeployError::Invalid(_) => StatusCode::BAD_REQUEST,
        DeployError::Joining(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Extracts the message from an admin error response body.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string())
}
