//! The message trigger: messages on the component's subscriptions, delivered to its
//! `wasmcloud:messaging/handler@0.2.x` export.
//!
//! Manifest (`[messaging]`, shared with the messaging capability, which owns
//! `subscribe` and `publish`): `queue_group` (default `APP.COMPONENT`), `durable`
//! (at-least-once through JetStream), `max_deliver` and `backoff` (durable only). The
//! source of its invocations is the subscriber.

use std::time::Duration;

use super::Trigger;
use crate::capability;
use crate::section::{ManifestError, Table};

/// The trigger.
pub struct MessageTrigger;

/// How messages are delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySpec {
    /// Queue group; `None` means `APP.COMPONENT`.
    pub queue_group: Option<String>,
    /// At-least-once delivery through JetStream.
    pub durable: bool,
    /// Deliveries before a message is dead-lettered (durable only).
    pub max_deliver: Option<u32>,
    /// Redelivery delays after a failure (durable only).
    pub backoff: Vec<Duration>,
}

fn queue_group(g: &str) -> Result<String, String> {
    let ok = !g.is_empty()
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(g.to_string())
    } else {
        Err("use letters, digits, '-', '_' and '.'".into())
    }
}

impl Trigger for MessageTrigger {
    const NAME: &'static str = "message";
    const EXPORTS: &'static [&'static str] = &["wasmcloud:messaging/handler@0.2"];
    const HANDLER: &'static str = "message handler (wasmcloud:messaging/handler@0.2.0)";
    const FAILED: &'static str = "message handler failed";
    const TAG: &'static str = "msg";
    type Spec = DeliverySpec;

    fn spec(component: &mut Table<'_>) -> Result<DeliverySpec, ManifestError> {
        let Some(m) = component.table("messaging")? else {
            return Ok(DeliverySpec::default());
        };
        Ok(DeliverySpec {
            queue_group: m.parsed("queue_group", queue_group)?,
            durable: m.take("durable")?.unwrap_or(false),
            max_deliver: m.count("max_deliver", 1, 10_000)?,
            backoff: m.list("backoff", crate::section::parse_duration)?,
        })
    }

    fn wanted(_spec: &DeliverySpec, caps: &capability::Specs) -> Option<&'static str> {
        (!caps.messaging.subscribe.is_empty()).then_some("messaging.subscribe is set")
    }

    fn describe(_spec: &DeliverySpec, caps: &capability::Specs) -> Option<String> {
        let subs = &caps.messaging.subscribe;
        Some(format!(
            "subscribes: {}",
            if subs.is_empty() {
                "none".into()
            } else {
                subs.join(", ")
            }
        ))
    }
}
