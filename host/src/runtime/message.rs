//! Calling a component's message handler (`wasmcloud:messaging/handler@0.2.x`), in a
//! fresh or reused instance like every other invocation.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::invoke::{ExportCall, InvokeError, PreparedComponent};
use super::{InstanceState, RuntimeError};
use crate::capability::Invocation;
use crate::capability::messaging::BrokerMessage;

/// Bindings for calling a component's message handler (export).
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmcloud:messaging/messaging-handler",
        exports: { default: async },
        with: {
            "wasmcloud:messaging/types": crate::capability::messaging::types,
        },
    });
}

/// The export called (any 0.2.x).
const EXPORT: &str = "wasmcloud:messaging/handler@0.2";

/// The message handler's export, looked up and type-checked once per prepared
/// component.
pub(super) type Indices = bindings::MessagingHandlerIndices;

/// The handler's indices if the component exports one (`Ok(None)` if not); an export
/// of that name with the wrong type refuses the component (at deploy).
pub(super) fn indices(
    pre: &InstancePre<InstanceState>,
    exports: &[String],
) -> Result<Option<Indices>, RuntimeError> {
    if !exports.iter().any(|e| e.starts_with(EXPORT)) {
        return Ok(None);
    }
    Indices::new(pre)
        .map(Some)
        .map_err(|e| RuntimeError::Link(format!("{EXPORT}.x: {e:#}")))
}

struct HandleMessage(Indices, BrokerMessage);

impl ExportCall for HandleMessage {
    type Output = Result<(), String>;

    async fn call(
        self,
        store: &mut Store<InstanceState>,
        instance: Instance,
    ) -> wasmtime::Result<Result<(), String>> {
        let handler = self.0.load(&mut *store, &instance)?;
        handler
            .wasmcloud_messaging_handler()
            .call_handle_message(store, &self.1)
            .await
    }
}

impl PreparedComponent {
    /// Delivers one message to the component's `handle-message` (in a fresh instance,
    /// or a reused one when `instances.max_requests > 1`). `guard` is held until the
    /// instance is done. A handler returning `Err` is [`InvokeError::Handler`].
    pub async fn handle_message<G: Send + 'static>(
        &self,
        message: BrokerMessage,
        traceparent: Option<http::HeaderValue>,
        guard: G,
    ) -> Result<(), InvokeError> {
        let Some(indices) = self.inner.messages.clone() else {
            return Err(InvokeError::NotExported("message handler"));
        };
        let invocation = Invocation {
            traceparent,
            request_id: None,
            reply_to: message.reply_to.clone(),
            identity: None,
            command: None,
        };
        self.run(invocation, guard, HandleMessage(indices, message))
            .await?
            .map_err(InvokeError::Handler)
    }
}
