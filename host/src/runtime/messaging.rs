//! Host side of `wasmcloud:messaging@0.2.0` and `wasi:logging@0.1.0-draft`.
//!
//! A guest publishes and sends requests through the bus its grants carry, only to
//! subjects its manifest lists under `messaging.publish` (NATS wildcards), plus the
//! reply subject of the message it is handling. Anything else fails with an error
//! string the guest sees, and nothing is sent. A guest's `wasi:logging` calls become
//! tracing events (target `wasmhive::guest`) carrying its app and component.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{self, Bus, BusError};

use super::{Grants, InstanceState};

use super::bindings::imports;

/// Bindings for calling a component's message handler (export).
#[allow(missing_docs)]
pub(crate) mod handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmcloud:messaging/messaging-handler",
        exports: { default: async },
        with: {
            "wasmcloud:messaging/types": crate::runtime::bindings::imports::wasmcloud::messaging::types,
        },
    });
}

use imports::wasi::logging::logging::{self, Level};
pub use imports::wasmcloud::messaging::types::BrokerMessage;
use imports::wasmcloud::messaging::{consumer, types};

/// A bus handle in the grants (a trait object, so `Debug` by hand).
#[derive(Clone)]
pub struct BusHandle(pub Arc<dyn Bus>);

impl std::fmt::Debug for BusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusHandle({})", self.0.kind())
    }
}

/// Per-instance messaging state.
#[derive(Default)]
pub(crate) struct MessagingCtx {
    /// Reply subject of the message being handled: always allowed.
    pub reply_to: Option<String>,
    /// `traceparent` of the invocation, carried by what the guest publishes (shared
    /// with the HTTP hooks: set once per invocation, copied only when used).
    pub traceparent: Option<http::HeaderValue>,
}

impl MessagingCtx {
    fn headers(&self) -> Vec<(String, String)> {
        self.traceparent()
            .map(|t| ("traceparent".to_string(), t.to_string()))
            .into_iter()
            .collect()
    }

    /// The invocation's `traceparent` (one the host built or parsed: visible ASCII).
    fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_ref().and_then(|t| t.to_str().ok())
    }
}

impl InstanceState {
    fn may_publish(&self, subject: &str) -> Result<Arc<dyn Bus>, String> {
        let grants = self.grants();
        let Some(bus) = grants.bus.as_ref() else {
            return Err("messaging is not available on this host".into());
        };
        let allowed = grants
            .publish
            .iter()
            .any(|p| bus::subject::matches(p, subject))
            || self.messaging.reply_to.as_deref() == Some(subject);
        if !allowed {
            tracing::warn!(
                app = %grants.id.app,
                component = %grants.id.component,
                subject,
                "publish denied: subject not in messaging.publish"
            );
            return Err(format!(
                "publish to {subject:?} denied: not granted by this component's messaging.publish"
            ));
        }
        Ok(bus.0.clone())
    }
}

impl types::Host for InstanceState {}

impl consumer::Host for InstanceState {
    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<BrokerMessage, String> {
        let bus = self.may_publish(&subject)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let mut message = bus::Message::new(subject, body);
        message.headers = self.messaging.headers();
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
            // Answers go where the guest may listen or send: its subscriptions or
            // publish grants. Anything else would let it aim others' replies at
            // subjects it was never granted.
            let g = self.grants();
            let ok = g
                .subscribe
                .iter()
                .chain(g.publish.iter())
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
            headers: self.messaging.headers(),
            body: msg.body.into(),
        })
        .await
        .map_err(|e| e.to_string())
    }
}

impl logging::Host for InstanceState {
    async fn log(&mut self, level: Level, context: String, message: String) {
        let g: &Grants = self.grants();
        let (app, component, version) = (&*g.id.app, &*g.id.component, &*g.id.version);
        // The trace id of the invocation (`00-<trace id>-<span>-<flags>`).
        let trace_id = self
            .messaging
            .traceparent()
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or("");
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(target: "wasmhive::guest", app, component, version, trace_id, context, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error | Level::Critical => emit!(error),
        }
    }
}
