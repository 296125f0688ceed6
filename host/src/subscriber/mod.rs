//! Message triggers: one bus subscription per subscribed subject of each deployed
//! component, delivering each message to a fresh instance's `handle-message`.
//!
//! Subscriptions join the component's queue group (default `APP.COMPONENT`), so the
//! instances of a component — on this host and on every other host of the lattice —
//! share the messages: each message is handled once. Delivery is at most once (core
//! NATS): a handler that fails or traps is logged and counted, not retried.
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
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::DeployedComponent;
use crate::bus::{Bus, Message};
use crate::runtime::InvokeError;
use crate::runtime::messaging::BrokerMessage;
use crate::telemetry::metrics::{RequestMetrics, Trigger};
use crate::telemetry::trace::{TRACEPARENT, TraceContext};

/// The queue group a component's subscriptions join.
pub fn queue_group(component: &DeployedComponent) -> String {
    component
        .spec
        .messaging
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
    if component.spec.messaging.subscribe.is_empty() {
        return Ok(());
    }
    if component.spec.messaging.durable {
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
    for subject in &component.spec.messaging.subscribe {
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
        handlers.spawn(async move {
            let subject = message.subject.clone();
            if let Err(e) = handle(&component, &metrics, message, permit).await {
                tracing::warn!(component = %component.id, %subject, error = %e, "message handler failed");
            }
        });
    }
}

/// Delivers one admitted message to the component (loading it if at zero), counting
/// the invocation in its stats and in the request metrics (trigger `message`).
pub(crate) async fn handle(
    component: &DeployedComponent,
    metrics: &RequestMetrics,
    message: Message,
    permit: crate::scaler::Permit,
) -> Result<(), InvokeError> {
    let started = Instant::now();
    component.stats.started();
    let result = invoke(component, message, permit).await;
    let status = match &result {
        Ok(()) => 200,
        Err(InvokeError::Timeout(_)) => 504,
        Err(_) => 500,
    };
    if result.is_err() {
        component.stats.failed();
    }
    metrics.record_for(
        &component.series,
        &component.id,
        Trigger::Message,
        status,
        started.elapsed().as_secs_f64(),
    );
    result
}

async fn invoke(
    component: &DeployedComponent,
    message: Message,
    permit: crate::scaler::Permit,
) -> Result<(), InvokeError> {
    let prepared = component
        .scaler
        .prepared()
        .await
        .map_err(|e| InvokeError::Instantiate(format!("cannot load from zero: {e}")))?;
    let trace = TraceContext::for_invocation(message.header(TRACEPARENT));
    tracing::debug!(component = %component.id, subject = %message.subject, trace_id = %trace.trace_id_hex(), "message delivered");
    let message = BrokerMessage {
        subject: message.subject,
        body: message.body.to_vec(),
        reply_to: message.reply_to,
    };
    prepared
        .handle_message(message, Some(trace.header_value()), permit)
        .await
}
