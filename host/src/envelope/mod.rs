//! The invocation envelope: every trigger (HTTP, service call, message, ...) runs each
//! invocation through [`invoke`], which does, in this order and only here:
//!
//! 1. **counters**: the component's invocation count and last-invocation time;
//! 2. **admission**: the component's bulkhead (shed with 503, or a permit the trigger
//!    already took while applying back-pressure);
//! 3. **wake from zero**: load the component from the compile cache if it is at zero;
//! 4. **the call**: the trigger's [`Call`], holding the permit until the instance is
//!    done; instance reuse (`instances.max_requests`) applies to every trigger;
//! 5. **outcome**: the status of a success ([`Call::status`]) or of a failure (the
//!    table in [`failure`]), the failure counter, and one log line per failure with
//!    the component, invocation id, trigger, what was invoked and the trace id;
//! 6. **metrics**: the request series of the component for this trigger and status.
//!
//! Steps 5 and 6 wait for the end of an output that keeps streaming from the guest
//! (a response body, [`Settle`]): a guest that fails after its response head is
//! counted, logged and recorded as a failure, and the client sees the response fail.
//!
//! A trigger supplies only how it starts the guest (its [`Call`]) and what its caller
//! gets from the outcome (an HTTP response, an ack or a nak, a proxy's answer).

pub mod failure;

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Instant;

use http_body::Body as _;
use http_body_util::BodyExt;

pub use failure::Failure;

use crate::apps::DeployedComponent;
use crate::body::Body;
use crate::runtime::{InvokeError, PreparedComponent};
use crate::scaler::Permit;
use crate::telemetry::metrics::{RequestMetrics, TriggerLabel};
use crate::telemetry::trace::TraceContext;
use crate::trigger::{Labelled, Trigger};

/// How an invocation is admitted.
pub enum Admission {
    /// Take a slot now, wait in the queue, or be shed (HTTP, service calls).
    Admit,
    /// The trigger already holds a slot (messages wait for one before they are taken
    /// off the bus: back-pressure instead of shedding).
    Admitted(Permit),
}

/// How one trigger starts the guest.
pub trait Call: Send {
    /// The trigger (its label and failure message).
    type Trigger: Labelled;
    /// What the guest produced.
    type Output: Send;

    /// Calls the guest in `prepared`; `permit` must be held until the instance is
    /// done with the invocation.
    fn call(
        self,
        prepared: PreparedComponent,
        permit: Permit,
    ) -> impl Future<Output = Result<Self::Output, InvokeError>> + Send;

    /// The status a success reports (an HTTP response's own status; else 200).
    fn status(_output: &Self::Output) -> u16 {
        200
    }

    /// Hands the outcome of a successful call to `settle`: at once (the default), or,
    /// for an output that keeps streaming from the guest (a response body), when it
    /// ends.
    fn settle(output: Self::Output, settle: Settle) -> Self::Output {
        settle.done(Self::status(&output));
        output
    }
}

/// A call of the component's HTTP handler (WASI 0.2 or 0.3) for trigger `T` (HTTP
/// requests, service calls).
pub struct HttpCall<T>(pub http::Request<Body>, pub PhantomData<T>);

impl<T> HttpCall<T> {
    /// Calls the handler with `request`.
    pub fn new(request: http::Request<Body>) -> Self {
        HttpCall(request, PhantomData)
    }
}

impl<T: Labelled + Send> Call for HttpCall<T> {
    type Trigger = T;
    type Output = http::Response<Body>;

    async fn call(
        self,
        prepared: PreparedComponent,
        permit: Permit,
    ) -> Result<Self::Output, InvokeError> {
        prepared.handle(self.0, permit).await
    }

    fn status(output: &Self::Output) -> u16 {
        output.status().as_u16()
    }

    fn settle(output: Self::Output, settle: Settle) -> Self::Output {
        let status = output.status().as_u16();
        output.map(|body| {
            if body.is_end_stream() {
                settle.done(status);
                return body;
            }
            SettledBody {
                body,
                status,
                settle: Some(settle),
            }
            .boxed_unsync()
        })
    }
}

/// What the envelope needs to know about one invocation besides its call.
pub struct Context<'a> {
    /// The component invoked.
    pub component: &'a Arc<DeployedComponent>,
    /// Where the outcome is recorded.
    pub metrics: &'a Arc<RequestMetrics>,
    /// The invocation's span.
    pub trace: &'a TraceContext,
    /// What was invoked, for the log ("GET /v1/orders", "orders.created").
    pub what: &'a (dyn fmt::Display + Sync),
}

/// Invocation ids, unique within this host process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Runs one invocation of `cx.component` through the envelope.
pub async fn invoke<C: Call>(
    cx: Context<'_>,
    admission: Admission,
    call: C,
) -> Result<C::Output, Failure> {
    let started = Instant::now();
    let component = cx.component;
    component.stats.started();
    let outcome = async {
        let permit = match admission {
            Admission::Admit => component.scaler.admit().await?,
            Admission::Admitted(permit) => permit,
        };
        let prepared = component.scaler.prepared().await?;
        Ok::<_, Failure>(call.call(prepared, permit).await?)
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let trigger = <C::Trigger as Labelled>::LABEL;
    let invocation = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let settle = Settle {
        component: component.clone(),
        metrics: cx.metrics.clone(),
        trigger,
        failed_message: <C::Trigger as Trigger>::FAILED,
        invocation,
        trace_id: cx.trace.trace_id,
        seconds,
        status: 200,
        settled: false,
    };
    match outcome {
        Ok(output) => {
            tracing::debug!(
                invocation,
                trace_id = %TraceId(cx.trace.trace_id),
                component = %component.id,
                trigger = trigger.name,
                what = %cx.what,
                status = C::status(&output),
                elapsed_ms = seconds * 1000.0,
                "invocation served"
            );
            Ok(C::settle(output, settle))
        }
        Err(e) => {
            component.stats.failed();
            let status = e.status().as_u16();
            log_failure::<C::Trigger>(&cx, invocation, status, &e);
            settle.done(status);
            Err(e)
        }
    }
}

/// Logs a failure once: shedding at debug (the system working as configured; logging
/// each would flood the log exactly when it matters), the rest as warnings.
fn log_failure<T: Trigger>(cx: &Context<'_>, invocation: u64, status: u16, e: &Failure) {
    let (component, trace_id, what) = (&cx.component.id, TraceId(cx.trace.trace_id), cx.what);
    if e.is_shed() {
        tracing::debug!(invocation, %trace_id, %component, trigger = T::NAME, %what, status, error = %e, "invocation shed");
    } else {
        tracing::warn!(invocation, %trace_id, %component, trigger = T::NAME, %what, status, error = %e, "{}", T::FAILED);
    }
}

/// The rest of an invocation's outcome, for when the call's output is finished: the
/// metrics, and a late failure's count and log line. Dropped without `done` or
/// `failed` (the consumer went away mid-body), it records the status of the head.
pub struct Settle {
    component: Arc<DeployedComponent>,
    metrics: Arc<RequestMetrics>,
    trigger: TriggerLabel,
    failed_message: &'static str,
    invocation: u64,
    trace_id: u128,
    /// Admission to the response head (for calls that do not stream, to the end).
    seconds: f64,
    status: u16,
    settled: bool,
}

impl Settle {
    /// The output ended as the guest meant: record `status`.
    pub fn done(mut self, status: u16) {
        self.status = status;
        self.record();
    }

    /// The guest failed after its output started (a trap or the deadline while it
    /// streamed a response body): counted, logged once, recorded as a 500.
    pub fn failed(mut self, error: &dyn fmt::Display) {
        self.component.stats.failed();
        tracing::warn!(
            invocation = self.invocation,
            trace_id = %TraceId(self.trace_id),
            component = %self.component.id,
            trigger = self.trigger.name,
            status = 500,
            error = %error,
            "{} after its response head",
            self.failed_message
        );
        self.status = 500;
        self.record();
    }

    fn record(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if self.status >= 500 {
            self.component
                .stats
                .server_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.component.stats.latency.record(self.seconds);
        self.metrics.record_for(
            &self.component.series,
            &self.component.id,
            self.trigger,
            self.status,
            self.seconds,
        );
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.record();
    }
}

/// A response body that settles its invocation when it ends: done at its end, failed
/// at an error (the runtime ends a failed guest's body with one).
struct SettledBody {
    body: Body,
    status: u16,
    settle: Option<Settle>,
}

impl http_body::Body for SettledBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                let status = self.status;
                if let Some(s) = self.settle.take() {
                    s.done(status);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(s) = self.settle.take() {
                    s.failed(e);
                }
            }
            _ => {}
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

/// A trace id in hex, formatted only when a log line is written.
struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}
