//! Durable delivery through JetStream: at least once, with acks, redelivery with
//! backoff, and dead letters.
//!
//! Durable subjects are captured by one stream, [`EVENTS_STREAM`] (in a named
//! lattice `WASMHIVE_<lattice>_EVENTS`, over its own subject space: see
//! [`SubjectSpace`]), with interest
//! retention: every deploy of a durable component adds its subjects (kept minimal: a
//! pattern covered by another is dropped). Each durable component has its own durable
//! pull consumer on that stream, named after its queue group and filtered to its
//! subjects, shared by every host running the component. So one event can be
//! delivered durably to several services (each consumer gets it once), and the
//! stream forgets a message once every interested consumer has acked it. Each
//! message is handed to the handler once a bulkhead slot is free:
//!
//! - handler returns ok → ack (the stream forgets the message);
//! - handler error, trap or deadline → nak with the next `backoff` delay (the last
//!   one repeats; none configured: 1 s), and JetStream redelivers it;
//! - the delivery that fails for the `max_deliver`-th time → the message is published
//!   to `wasmhive.dlq.<app>.<component>` (kept in the stream `WASMHIVE_DLQ`) with
//!   headers `Wasmhive-Component`, `Wasmhive-Subject`, `Wasmhive-Error` and
//!   `Wasmhive-Deliveries`, then terminated;
//! - the host dies mid-handler → unacked, redelivered after the ack wait (the
//!   component's timeout plus [`ACK_MARGIN`]).
//!
//! A NATS disconnect ends the pull; it is re-established until the host stops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::DeployedComponent;
use crate::bus::Message;
use crate::bus::nats::{NatsBus, SubjectSpace, from_nats};
use crate::envelope::Failure;
use crate::envelope::failure::{self, Settle};
use crate::scaler::Permit;
use crate::telemetry::metrics::RequestMetrics;

/// What handles one durable message (admitted: `Permit` held).
pub type Handler = Arc<
    dyn Fn(Message, Permit) -> futures::future::BoxFuture<'static, Result<(), Failure>>
        + Send
        + Sync,
>;

/// One durable consumer: the subjects it takes, its name, and how failures are
/// retried.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Subjects (as the component sees them).
    pub subjects: Vec<String>,
    /// The consumer's name, shared by every host running the component.
    pub group: String,
    /// Deliveries before dead-lettering.
    pub max_deliver: u32,
    /// Delays before redeliveries.
    pub backoff: Vec<Duration>,
    /// How long a delivery may take before the server redelivers it.
    pub ack_wait: Duration,
}

/// Added to the component's timeout to get the consumer's ack wait.
pub const ACK_MARGIN: Duration = Duration::from_secs(5);
/// Deliveries before dead-lettering when the manifest does not say.
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// The stream that keeps dead letters.
pub const DLQ_STREAM: &str = "WASMHIVE_DLQ";
/// A durable consumer no host has pulled from for this long is deleted by the server.
pub const CONSUMER_INACTIVE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Messages older than this leave the events stream even if unacknowledged.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The stream that captures every durable subscription's subjects.
pub const EVENTS_STREAM: &str = "WASMHIVE_EVENTS";

/// `wasmhive.dlq.<app>.<component>`
pub fn dead_letter_subject(component: &DeployedComponent) -> String {
    format!(
        "wasmhive.dlq.{}.{}",
        component.id.app, component.id.component
    )
}

fn consumer_name(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates (or updates) the stream and consumer, then pulls until `stop`. With the
/// bus disconnected (NATS not reachable yet), the deploy goes on and the subscription
/// is set up in the background once NATS is back (retried until `stop`).
pub async fn start(
    component: Arc<DeployedComponent>,
    bus: NatsBus,
    metrics: Arc<RequestMetrics>,
    stop: CancellationToken,
    handlers: TaskTracker,
) -> anyhow::Result<()> {
    let delivery = Delivery {
        subjects: component.spec.caps.messaging.subscribe.clone(),
        group: super::queue_group(&component),
        max_deliver: component
            .spec
            .triggers
            .message
            .max_deliver
            .unwrap_or(DEFAULT_MAX_DELIVER),
        backoff: component.spec.triggers.message.backoff.clone(),
        ack_wait: component.timeout + ACK_MARGIN,
    };
    let handler: Handler = {
        let component = component.clone();
        Arc::new(move |message, permit| {
            let (component, metrics) = (component.clone(), metrics.clone());
            Box::pin(async move { super::handle(&component, &metrics, message, permit).await })
        })
    };
    start_with(component, delivery, handler, bus, stop, handlers).await
}

/// [`start`] for any durable consumer of a component: `delivery` says what it takes,
/// `handler` handles each message.
pub async fn start_with(
    component: Arc<DeployedComponent>,
    delivery: Delivery,
    handler: Handler,
    bus: NatsBus,
    stop: CancellationToken,
    handlers: TaskTracker,
) -> anyhow::Result<()> {
    use crate::bus::Bus;
    let delivery = Arc::new(delivery);
    let js = jetstream::new(bus.client().clone());
    let space = bus.space().clone();
    if bus.connected() {
        let consumer = setup(&component, &delivery, &bus, &js).await?;
        tokio::spawn(pull_loop(
            component,
            (js, space),
            consumer,
            (delivery, handler),
            stop,
            handlers,
        ));
        return Ok(());
    }
    tracing::warn!(component = %component.id, "NATS is not connected: the durable subscription starts when it is");
    tokio::spawn(async move {
        loop {
            if bus.connected() {
                match setup(&component, &delivery, &bus, &js).await {
                    Ok(consumer) => {
                        return pull_loop(
                            component,
                            (js, space),
                            consumer,
                            (delivery, handler),
                            stop,
                            handlers,
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::warn!(component = %component.id, error = %format!("{e:#}"), "durable subscription set-up failed; retrying")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
    Ok(())
}

/// Creates or updates the events stream, the dead-letter stream and the component's
/// consumer.
async fn setup(
    component: &DeployedComponent,
    delivery: &Delivery,
    bus: &NatsBus,
    js: &jetstream::Context,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let space = bus.space();
    let subscribe: Vec<String> = delivery.subjects.iter().map(|s| space.outer(s)).collect();
    let subscribe = &subscribe;
    let events = space.stream(EVENTS_STREAM);
    let mut stream = events_stream(js, subscribe, bus.replicas(), &events).await?;
    // From now on this host's publishes to these subjects wait for JetStream to
    // store them (the bus's `publish`).
    bus.add_captured(subscribe.clone());
    match stream.info().await {
        Ok(info) => bus.add_captured(info.config.subjects.clone()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the events stream's subjects; publishing to other durable subjects without waiting for JetStream")
        }
    }
    let dlq = space.stream(DLQ_STREAM);
    js.create_or_update_stream(stream::Config {
        name: dlq.clone(),
        subjects: vec![space.outer("wasmhive.dlq.>")],
        max_age: Duration::from_secs(14 * 24 * 3600),
        num_replicas: bus.replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create JetStream stream {dlq}: {e}"))?;
    let name = consumer_name(&delivery.group);
    let max_deliver = delivery.max_deliver;
    let consumer_cfg = pull::Config {
        durable_name: Some(name.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: delivery.ack_wait,
        // The host counts deliveries and dead-letters itself; the server keeps
        // redelivering, so a delivery lost to a crash is not the end of a message.
        max_deliver: -1,
        max_ack_pending: i64::from(component.scaler.policy().max_instances.max(1)) * 4,
        filter_subjects: subscribe.clone(),
        // Removed by the server once no host has pulled for this long (every host
        // undeployed the component), so its interest stops pinning messages.
        inactive_threshold: CONSUMER_INACTIVE,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer =
        match stream.update_consumer(consumer_cfg.clone()).await {
            Ok(c) => c,
            Err(_) => stream
                .create_consumer(consumer_cfg)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create JetStream consumer {name}: {e}"))?,
        };
    tracing::info!(component = %component.id, stream = %events, consumer = %name, max_deliver, "durable subscription");
    Ok(consumer)
}

/// The events stream, created or widened to capture `subjects`. Other hosts may
/// widen it at the same time: read back and retry until it covers what this
/// component needs, keeping the stream's other settings.
async fn events_stream(
    js: &jetstream::Context,
    subjects: &[String],
    replicas: usize,
    name: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    use crate::bus::subject::covers;
    for _ in 0..10 {
        let existing = match js.get_stream(name).await {
            Ok(mut s) => Some(
                s.info()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?
                    .config
                    .clone(),
            ),
            Err(_) => None,
        };
        let have: Vec<String> = existing.iter().flat_map(|c| c.subjects.clone()).collect();
        if existing.is_some() && subjects.iter().all(|w| have.iter().any(|h| covers(h, w))) {
            return js
                .get_stream(name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open stream {name}: {e}"));
        }
        let wanted = crate::bus::subject::minimal(have.into_iter().chain(subjects.iter().cloned()));
        let result = match existing {
            Some(mut config) => {
                config.subjects = wanted;
                js.update_stream(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => js
                .create_stream(stream::Config {
                    name: name.to_string(),
                    subjects: wanted,
                    retention: stream::RetentionPolicy::Interest,
                    max_age: EVENTS_MAX_AGE,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "events stream update raced; retrying");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("cannot widen JetStream stream {name} to {subjects:?}")
}

/// How long one pull request stays open at the server.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Hands back (nak, for immediate redelivery) the messages pulled but not yet
/// started, so the subscription replacing this one gets them now rather than after
/// the ack wait.
async fn release_buffered(messages: &mut jetstream::consumer::pull::Stream) {
    use futures::FutureExt;
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

async fn pull_loop(
    component: Arc<DeployedComponent>,
    (js, space): (jetstream::Context, SubjectSpace),
    consumer: jetstream::consumer::PullConsumer,
    (delivery, handler): (Arc<Delivery>, Handler),
    stop: CancellationToken,
    handlers: TaskTracker,
) {
    let batch = component.scaler.policy().max_instances.clamp(1, 256) as usize;
    'outer: loop {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            // Short pull requests: when a redeploy replaces this loop, a pull still
            // open at the server could take a new message for a subscriber that is
            // gone, where it would wait out the ack wait.
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(component = %component.id, error = %e, "durable pull failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => {
                    release_buffered(&mut messages).await;
                    return;
                }
                m = messages.next() => m,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::debug!(component = %component.id, error = %e, "durable pull interrupted; re-establishing");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'outer,
                    }
                }
                None => continue 'outer,
            };
            // Waiting for a slot must not run out the ack wait: tell the server the
            // message is being worked on.
            let admit = component.scaler.admit_wait();
            tokio::pin!(admit);
            // First tick one period from now. (Not `interval` + a first `tick()`: that
            // tick goes through the timer, which fires at millisecond granularity, and
            // cost every message about a millisecond: 930 messages/s at most.)
            let period = ACK_MARGIN / 2;
            let mut progress =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let permit = loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        release_buffered(&mut messages).await;
                        return;
                    }
                    p = &mut admit => break p,
                    _ = progress.tick() => {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            };
            handlers.spawn(settle(
                component.clone(),
                (js.clone(), space.clone()),
                (delivery.clone(), handler.clone()),
                message,
                permit,
            ));
        }
    }
}

/// Handles one pulled message and settles it with the server: ack on success; on
/// failure nak with the next backoff, or dead-letter and terminate it on its
/// `max_deliver`-th delivery.
async fn settle(
    component: Arc<DeployedComponent>,
    (js, space): (jetstream::Context, SubjectSpace),
    (delivery, handler): (Arc<Delivery>, Handler),
    message: jetstream::Message,
    permit: Permit,
) {
    let max_deliver = delivery.max_deliver;
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
    let mut bus_message = from_nats(message.message.clone());
    // The reply subject of a JetStream delivery is the ack protocol's, not a
    // sender's: never let the guest publish into it.
    bus_message.reply_to = None;
    bus_message.subject = space.inner(&bus_message.subject);
    let subject = bus_message.subject.clone();
    let result = handler(bus_message, permit).await;
    let backoff = &delivery.backoff;
    let outcome = match result
        .as_ref()
        .map_err(|e| (e, failure::settle(delivered, max_deliver, backoff)))
    {
        Ok(()) => message.ack().await,
        Err((e, Settle::DeadLetter)) => {
            tracing::warn!(component = %component.id, %subject, delivered, error = %e, "message dead-lettered");
            dead_letter(&js, &space, &component, &message, e, delivered).await;
            message.ack_with(AckKind::Term).await
        }
        Err((_, Settle::Redeliver(delay))) => {
            // The envelope logged the failure; this is the decision.
            tracing::info!(component = %component.id, %subject, delivered, retry_in = ?delay, "message will be redelivered");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(component = %component.id, %subject, error = %e, "cannot acknowledge message; it will be redelivered");
    }
}

async fn dead_letter(
    js: &jetstream::Context,
    space: &SubjectSpace,
    component: &DeployedComponent,
    message: &jetstream::Message,
    error: &Failure,
    delivered: u32,
) {
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert("Wasmhive-Component", component.id.to_string().as_str());
    headers.insert("Wasmhive-Subject", space.inner(&message.subject).as_str());
    headers.insert(
        "Wasmhive-Error",
        error.to_string().replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert("Wasmhive-Deliveries", delivered.to_string().as_str());
    let subject = space.outer(&dead_letter_subject(component));
    let sent = match js
        .publish_with_headers(subject.clone(), headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::error!(component = %component.id, %subject, error = %e, "cannot publish dead letter");
    }
}
