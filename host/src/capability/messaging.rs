//! Messaging: `wasmcloud:messaging@0.2.0` consumer (publish and request).
//!
//! Manifest: `messaging.publish` (subjects, NATS wildcards allowed, the guest may
//! publish and send requests to) and `messaging.subscribe` (the subjects it receives;
//! delivery itself is the message trigger's, which reads the other `[messaging]`
//! keys). A guest may also always answer the reply subject of the message it is
//! handling. Anything else fails with an error string the guest sees, and nothing is
//! sent. A published message's reply-to must be one of its subscriptions or publish
//! grants (otherwise it could aim others' replies at subjects it was never granted).
//!
//! On NATS, a publish to a subject the durable events stream captures returns once
//! JetStream has stored it; others once written to the connection (see `bus`).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;

use super::{Capability, GrantContext, Grants, HasView, Instance, View, view_of};
use crate::bus::{self, Bus, BusError};
use crate::section::{ManifestError, Table};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:messaging-host;
                 world messaging { import wasmcloud:messaging/consumer@0.2.0; }",
        path: "../wit",
        world: "wasmhive:messaging-host/messaging",
        imports: { default: async },
    });
}

use bindings::wasmcloud::messaging::consumer;
/// `wasmcloud:messaging/types` as the host sees them (the message trigger's export
/// bindings share them).
pub use bindings::wasmcloud::messaging::types;
pub use types::BrokerMessage;

/// The capability.
pub struct Messaging;

/// `messaging.publish` and `messaging.subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagingSpec {
    /// Subjects (wildcards allowed) delivered to the component's message handler.
    pub subscribe: Vec<String>,
    /// Subjects (wildcards allowed) it may publish and send requests to.
    pub publish: Vec<String>,
}

/// What a component may send, and where.
#[derive(Clone)]
pub struct MessagingGrant {
    /// Its subjects.
    pub spec: MessagingSpec,
    /// The bus its calls go to (`None`: unavailable, e.g. offline validation).
    pub bus: Option<Arc<dyn Bus>>,
}

impl std::fmt::Debug for MessagingGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingGrant")
            .field("spec", &self.spec)
            .field("bus", &self.bus.as_ref().map(|b| b.kind()))
            .finish()
    }
}

/// Checks a subject pattern a component may subscribe to or publish on (wildcards
/// allowed; the host's own subjects refused).
pub fn subject_pattern(s: &str) -> Result<String, String> {
    bus::subject::check(s, true)?;
    if let Some(why) = bus::subject::reserved(s) {
        return Err(why);
    }
    Ok(s.to_string())
}

impl Capability for Messaging {
    const INTERFACES: &'static [&'static str] = &["wasmcloud:messaging/"];
    type Spec = MessagingSpec;
    type Grant = MessagingGrant;
    type Ctx = ();

    fn spec(component: &mut Table<'_>) -> Result<MessagingSpec, ManifestError> {
        let Some(m) = component.table("messaging")? else {
            return Ok(MessagingSpec::default());
        };
        Ok(MessagingSpec {
            subscribe: m.list("subscribe", subject_pattern)?,
            publish: m.list("publish", subject_pattern)?,
        })
    }

    fn grant(spec: &MessagingSpec, cx: &GrantContext<'_>) -> Result<MessagingGrant, String> {
        Ok(MessagingGrant {
            spec: spec.clone(),
            bus: cx.services.bus.clone(),
        })
    }

    fn instance(_grants: &Arc<Grants>) {}

    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        _concurrent: bool,
    ) -> anyhow::Result<()> {
        bindings::Messaging::add_to_linker::<_, HasView<Messaging>>(
            linker,
            view_of::<X, Messaging>,
        )?;
        Ok(())
    }
}

impl View<'_, Messaging> {
    fn may_publish(&self, subject: &str) -> Result<Arc<dyn Bus>, String> {
        let Some(bus) = self.grant.bus.as_ref() else {
            return Err("messaging is not available on this host".into());
        };
        let allowed = self
            .grant
            .spec
            .publish
            .iter()
            .any(|p| bus::subject::matches(p, subject))
            || self.invocation.reply_to.as_deref() == Some(subject);
        if !allowed {
            tracing::warn!(
                app = %self.id.app,
                component = %self.id.component,
                subject,
                "publish denied: subject not in messaging.publish"
            );
            return Err(format!(
                "publish to {subject:?} denied: not granted by this component's messaging.publish"
            ));
        }
        Ok(bus.clone())
    }

    /// Headers of what the guest sends: the invocation's `traceparent`.
    fn headers(&self) -> Vec<(String, String)> {
        self.invocation
            .traceparent
            .as_ref()
            .and_then(|t| t.to_str().ok())
            .map(|t| (crate::headers::TRACEPARENT.to_string(), t.to_string()))
            .into_iter()
            .collect()
    }
}

impl types::Host for View<'_, Messaging> {}

impl consumer::Host for View<'_, Messaging> {
    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<BrokerMessage, String> {
        let bus = self.may_publish(&subject)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let mut message = bus::Message::new(subject, body);
        message.headers = self.headers();
        let reply = bus.request(message, timeout).await.map_err(|e| match e {
            BusError::NoResponders(s) => format!("no responders on {s}"),
            other => other.to_string(),
        })?;
        Ok(BrokerMessage {
            subject: reply.subject,
            body: reply.body.to_vec(),
            reply_to: reply.reply_to,
        })
    }

    async fn publish(&mut self, msg: BrokerMessage) -> Result<(), String> {
        let bus = self.may_publish(&msg.subject)?;
        if let Some(reply_to) = &msg.reply_to {
            let spec = &self.grant.spec;
            let ok = spec
                .subscribe
                .iter()
                .chain(spec.publish.iter())
                .any(|p| bus::subject::matches(p, reply_to));
            if !ok {
                return Err(format!(
                    "reply-to {reply_to:?} denied: not covered by this component's messaging.subscribe or messaging.publish"
                ));
            }
        }
        bus.publish(bus::Message {
            subject: msg.subject,
            reply_to: msg.reply_to,
            headers: self.headers(),
            body: msg.body.into(),
        })
        .await
        .map_err(|e| e.to_string())
    }
}
