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
//! A trigger supplies only how it starts the guest (its [`Call`]) and what its caller
//! gets from the outcome (an HTTP response, an ack or a nak, a proxy's answer).

pub mod failure;

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use failure::Failure;

use crate::apps::DeployedComponent;
use crate::body::Body;
use crate::runtime::{InvokeError, PreparedComponent};
use crate::scaler::Permit;
use crate::telemetry::metrics::RequestMetrics;
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
}

/// What the envelope needs to know about one invocation besides its call.
pub struct Context<'a> {
    /// The component invoked.
    pub component: &'a DeployedComponent,
    /// Where the outcome is recorded.
    pub metrics: &'a RequestMetrics,
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
    let status = match &outcome {
        Ok(output) => C::status(output),
        Err(e) => e.status().as_u16(),
    };
    let trigger = <C::Trigger as Labelled>::LABEL;
    let invocation = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    match &outcome {
        Ok(_) => tracing::debug!(
            invocation,
            trace_id = %TraceId(cx.trace),
            component = %component.id,
            trigger = trigger.name,
            what = %cx.what,
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "invocation served"
        ),
        Err(e) => {
            component.stats.failed();
            log_failure::<C::Trigger>(&cx, invocation, status, e);
        }
    }
    cx.metrics.record_for(
        &component.series,
        &component.id,
        trigger,
        status,
        started.elapsed().as_secs_f64(),
    );
    outcome
}

/// Logs a failure once: shedding at debug (the system working as configured; logging
/// each would flood the log exactly when it matters), the rest as warnings.
fn log_failure<T: Trigger>(cx: &Context<'_>, invocation: u64, status: u16, e: &Failure) {
    let (component, trace_id, what) = (&cx.component.id, TraceId(cx.trace), cx.what);
    if e.is_shed() {
        tracing::debug!(invocation, %trace_id, %component, trigger = T::NAME, %what, status, error = %e, "invocation shed");
    } else {
        tracing::warn!(invocation, %trace_id, %component, trigger = T::NAME, %what, status, error = %e, "{}", T::FAILED);
    }
}

/// The trace id in hex, formatted only when a log line is written.
struct TraceId<'a>(&'a TraceContext);

impl fmt::Display for TraceId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0.trace_id)
    }
}
