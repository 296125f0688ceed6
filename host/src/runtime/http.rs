//! Calling a component's HTTP handler.
//!
//! WASI 0.2 guests run on the caller's task until they finish or set the response
//! head; if the head comes first, the guest gets one more turn (a small body is then
//! written and the guest done), and only if it is still running does the rest of the
//! invocation move to its own task while the body streams from it. That future owns
//! the instance and whatever guard the caller passes in (a scaler permit), so
//! capacity is released when the guest finishes, not when the head is sent. WASI 0.3
//! guests go through wasmtime's `ProxyHandler` (see `p3.rs`).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http_body_util::BodyExt;
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use super::invoke::{InvokeError, Phase, PreparedComponent, http_invocation};

impl PreparedComponent {
    /// Serves one request in a fresh instance, or in an idle reusable one when the
    /// component allows reuse (`instances.max_requests > 1`). `guard` is held until
    /// the instance is done with this request (after the response body has been
    /// produced or the invocation failed). What the guest sends out carries the
    /// request's `traceparent` and `x-request-id` (the caller puts them on it).
    pub async fn handle<G: Send + 'static>(
        &self,
        request: http::Request<WasiBody>,
        guard: G,
    ) -> Result<http::Response<WasiBody>, InvokeError> {
        self.wait_cpu_turn().await;
        if let Some(p3) = &self.inner.p3 {
            let (response, failed) = p3.handle(request).await?;
            // The body streams from the instance after the head: the guard (a
            // scaler permit) is held until it is done; if the instance fails
            // meanwhile, the body fails.
            return Ok(response.map(|body| {
                let body = Guarded {
                    body,
                    guard: Some(Box::new(guard)),
                }
                .boxed_unsync();
                FailsWithGuest { body, failed }.boxed_unsync()
            }));
        }
        let Some(indices) = &self.inner.proxy else {
            return Err(InvokeError::NotExported("HTTP handler"));
        };
        let (tx, rx) = oneshot::channel();
        let failed = Arc::new(OnceLock::new());
        let task = self.p2_task(indices.clone(), request, tx, guard, failed.clone());
        let response = head_or_end(Box::pin(task), rx).await?;
        // A guest that fails after its head: the body must fail too, not end cleanly.
        Ok(response.map(|body| FailsWithGuest { body, failed }.boxed_unsync()))
    }

    /// The whole invocation of a WASI 0.2 handler: take an instance, call it, give it
    /// back (or drop it after a trap or the deadline), then release `guard`. The
    /// response head is sent on `tx` by the guest.
    fn p2_task<G: Send + 'static>(
        &self,
        indices: wasmtime_wasi_http::p2::bindings::ProxyIndices,
        request: http::Request<WasiBody>,
        tx: oneshot::Sender<Result<http::Response<WasiBody>, ErrorCode>>,
        guard: G,
        failed: Arc<OnceLock<String>>,
    ) -> impl Future<Output = Result<(), InvokeError>> + Send + 'static {
        let timeout = self.timeout();
        let deadline = Instant::now() + timeout;
        let mut live = self.acquire(http_invocation(request.headers()), deadline);
        let this = self.clone();
        async move {
            let run = async {
                let instance = this.instance(&mut live).await?;
                let proxy = match live.proxy.take() {
                    Some(p) => p,
                    None => indices
                        .load(&mut live.store, &instance)
                        .map_err(|e| this.classify(e, Phase::Instantiate, &live.memory_hit))?,
                };
                let scheme = if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                    Scheme::Https
                } else {
                    Scheme::Http
                };
                let mut http = live.store.data_mut().http();
                let req = http
                    .new_incoming_request(scheme, request)
                    .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
                let out = http
                    .new_response_outparam(tx)
                    .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
                let called = proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut live.store, req, out)
                    .await;
                live.proxy = Some(proxy);
                called.map_err(|e| this.classify(e, Phase::Call, &live.memory_hit))
            };
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r,
                Err(_) => Err(InvokeError::Timeout(timeout)),
            };
            // Marked before the instance (and with it the body's sender) goes, so the
            // body's end sees it.
            if let Err(e) = &result {
                let _ = failed.set(e.to_string());
            }
            // A trap or deadline poisons the instance: it is dropped.
            this.release(live, result.is_ok());
            drop(guard);
            result
        }
    }
}

type Head = Result<http::Response<WasiBody>, ErrorCode>;

/// Runs the guest right here until it either finishes or sets the response head. A
/// small response usually finishes in one go: no task to spawn, no wakeup of another
/// thread. If the head comes first, the guest gets one more turn (a small body is
/// usually written and the guest done by then), and only if it is still running does
/// the rest (the body) move to its own task, its deadline enforced there, while the
/// head goes out.
async fn head_or_end(
    mut task: std::pin::Pin<Box<dyn Future<Output = Result<(), InvokeError>> + Send>>,
    mut rx: oneshot::Receiver<Head>,
) -> Result<http::Response<WasiBody>, InvokeError> {
    tokio::select! {
        biased;
        finished = &mut task => match rx.try_recv() {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(InvokeError::Guest(code)),
            Err(_) => match finished {
                Err(e) => Err(e),
                Ok(()) => Err(InvokeError::NoResponse),
            },
        },
        head = &mut rx => match head {
            Ok(head) => {
                if futures::FutureExt::now_or_never(&mut task).is_none() {
                    tokio::spawn(task);
                }
                head.map_err(InvokeError::Guest)
            }
            // The outparam was dropped unset: the guest's end says why.
            Err(_) => match task.await {
                Err(e) => Err(e),
                Ok(()) => Err(InvokeError::NoResponse),
            },
        }
    }
}

/// A guest's response body that ends with an error instead of cleanly when the guest
/// failed (trap, deadline) while producing it: wasmtime ends a body whose writer was
/// dropped unfinished like a finished one (WASI 0.2: the outgoing body; WASI 0.3: the
/// stream and its trailers future, dropped with the failed store), and the client
/// would take a truncated body for a whole one. An error makes hyper cut the response off
/// (HTTP/1.1: no final chunk, the connection closed; HTTP/2: the stream reset).
struct FailsWithGuest {
    body: WasiBody,
    /// How the guest failed, once it has.
    failed: Arc<OnceLock<String>>,
}

impl http_body::Body for FailsWithGuest {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None))
            && let Some(why) = self.failed.get()
        {
            // Seen by hyper and the envelope's log, not by the client.
            return std::task::Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(
                Some(why.clone()),
            ))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds `guard` until it has been produced to the end (or
/// dropped).
struct Guarded {
    body: WasiBody,
    guard: Option<Box<dyn std::any::Any + Send>>,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
