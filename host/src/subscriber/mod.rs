//! The message trigger's source: one bus subscription per subscribed subject of each
//! deployed component, delivering each message through the invocation envelope to the
//! component's `handle-message` (a fresh instance, or a reused one when
//! `instances.max_requests > 1`).
//!
//! Subscriptions join the component's queue group (default `APP.COMPONENT`), so the
//! instances of a component — on this host and on every other host of the lattice —
//! share the messages: each message is handled once. Delivery is at most once (core
//! NATS): a handler that fails or traps is logged and counted (by the envelope), not
//! retried; `durable = true` delivers at least once ([`durable`]).
//!
//! Handlers run on the control plane's handler tracker, so shutdown waits for them
//! (bounded by the drain timeout) as it does for HTTP requests.
//!
//! Flow control: a subscription takes the next message only once the component's
//! bulkhead admits it (`max_instances`), so a busy component slows its own intake
//! instead of piling up instances; messages wait in the bus client meanwhile. A
//! message wakes a component at zero, like a request does.

pub mod durable;

use std::sync::Arc;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::DeployedComponent;
use crate::bus::{Bus, Message};
use crate::capability::messaging::BrokerMessage;
use crate::envelope::{self, Admission, Call, Context, Failure};
use crate::headers::TRACEPARENT;
use crate::runtime::{InvokeError, PreparedComponent};
use crate::scaler::Permit;
use crate::telemetry::metrics::RequestMetrics;
use crate::telemetry::trace::TraceContext;
use crate::trigger::message::MessageTrigger;

/// The queue group a component's subscriptions join.
pub fn queue_group(component: &DeployedComponent) -> String {
    component
        .spec
        .triggers
        .message
        .queue_group
        .clone()
        .unwrap_or_else(|| format!("{}.{}", component.id.app, component.id.component))
}

/// Starts the subscriptions of `component`; they stop when `stop` is cancelled.
/// Fails (and starts none) if the bus refuses a subscription.
pub async fn start(
    component: Arc<DeployedComponent>,
    bus: Arc<dyn Bus>,
    metrics: Arc<RequestMetrics>,
    stop: CancellationToken,
    handlers: TaskTracker,
) -> Result<(), crate::bus::BusError> {
    if component.spec.caps.messaging.subscribe.is_empty() {
        return Ok(());
    }
    if component.spec.triggers.message.durable {
        let Some(nats) = bus.as_nats() else {
            return Err(crate::bus::BusError::Unavailable(
                "durable = true needs NATS with JetStream; this host runs the in-process bus (start it with --nats URL, or with nats-server installed)".into(),
            ));
        };
        return durable::start(component, nats.clone(), metrics, stop, handlers)
            .await
            .map_err(|e| crate::bus::BusError::Unavailable(format!("{e:#}")));
    }
    let group = queue_group(&component);
    let mut subs = Vec::new();
    for subject in &component.spec.caps.messaging.subscribe {
        subs.push((subject.clone(), bus.subscribe(subject, Some(&group)).await?));
    }
    for (subject, sub) in subs {
        tracing::info!(component = %component.id, %subject, queue_group = %group, bus = bus.kind(), "subscribed");
        tokio::spawn(deliver(
            component.clone(),
            sub,
            metrics.clone(),
            stop.clone(),
            handlers.clone(),
        ));
    }
    Ok(())
}

async fn deliver(
    component: Arc<DeployedComponent>,
    mut sub: crate::bus::Subscription,
    metrics: Arc<RequestMetrics>,
    stop: CancellationToken,
    handlers: TaskTracker,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = component.scaler.admit_wait() => p,
        };
        let component = component.clone();
        let metrics = metrics.clone();
        // The envelope logs and counts a failure; at most once, nothing more to do.
        handlers.spawn(async move {
            let _ = handle(&component, &metrics, message, permit).await;
        });
    }
}

/// Delivers one admitted message to the component through the envelope (loading it
/// if at zero, counting it, trigger `message` in the metrics).
pub(crate) async fn handle(
    component: &Arc<DeployedComponent>,
    metrics: &Arc<RequestMetrics>,
    message: Message,
    permit: Permit,
) -> Result<(), Failure> {
    let trace = TraceContext::for_invocation(message.header(TRACEPARENT));
    let subject = message.subject.clone();
    let cx = Context {
        component,
        metrics,
        trace: &trace,
        what: &subject,
    };
    let call = MessageCall {
        message: BrokerMessage {
            subject: message.subject,
            body: message.body.to_vec(),
            reply_to: message.reply_to,
        },
        traceparent: trace.header_value(),
    };
    envelope::invoke(cx, Admission::Admitted(permit), call).await
}

/// A call of the component's message handler.
struct MessageCall {
    message: BrokerMessage,
    traceparent: http::HeaderValue,
}

impl Call for MessageCall {
    type Trigger = MessageTrigger;
    type Output = ();

    async fn call(self, prepared: PreparedComponent, permit: Permit) -> Result<(), InvokeError> {
        prepared
            .handle_message(self.message, Some(self.traceparent), permit)
            .await
    }
}
