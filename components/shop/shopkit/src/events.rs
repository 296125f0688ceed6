//! Events: publish JSON to a subject, and handle the messages of the component's
//! subscriptions.
//!
//! A service with subscriptions implements [`MessageHandler`] and exports it:
//!
//! ```ignore
//! struct Inventory;
//! impl shopkit::events::MessageHandler for Inventory {
//!     fn handle(subject: &str, body: &[u8]) -> shopkit::Result<()> { ... }
//! }
//! shopkit::export_message_handler!(Inventory);
//! ```
//!
//! Delivery is at least once (durable subscriptions), so a handler must be
//! idempotent: record the decision first, and on a redelivery publish the recorded
//! outcome again instead of deciding anew.
//!
//! What a handler's error means for the message:
//!
//! - a 4xx [`Error`] (a malformed body, an event for something unknown): logged as an
//!   error and the message is *acknowledged*: delivering it again would fail again;
//! - a 5xx (storage or publish failed): logged as a warning and returned as `Err`, so
//!   the host redelivers it after the subscription's backoff (and dead-letters it
//!   after `max_deliver`).

use serde::Serialize;

use crate::bindings::wasmcloud::messaging::consumer;
use crate::bindings::wasmcloud::messaging::types::BrokerMessage;
use crate::{Error, Result};

/// A component's handler for the messages of its subscriptions.
pub trait MessageHandler {
    /// Handles one message (the subject it was published to and its body).
    fn handle(subject: &str, body: &[u8]) -> Result<()>;
}

/// Publishes `value` as JSON to `subject` (which the manifest's `messaging.publish`
/// must allow). A failure is a 503.
pub fn publish<T: Serialize + ?Sized>(subject: &str, value: &T) -> Result<()> {
    consumer::publish(&BrokerMessage {
        subject: subject.to_string(),
        body: crate::to_json(value),
        reply_to: None,
    })
    .map_err(|e| Error::unavailable(format!("publish to {subject} failed: {e}")))
}

/// Runs `H` on a message and maps its outcome as the module docs describe. Called by
/// the code [`export_message_handler!`](crate::export_message_handler) generates.
#[doc(hidden)]
pub fn dispatch<H: MessageHandler>(subject: &str, body: &[u8]) -> std::result::Result<(), String> {
    match H::handle(subject, body) {
        Ok(()) => Ok(()),
        Err(e) if e.status < 500 => {
            crate::log::error(
                "events",
                &format!("dropped message on {subject}: {}", e.message),
            );
            Ok(())
        }
        Err(e) => {
            crate::log::warn(
                "events",
                &format!("failed on {subject} (will be redelivered): {}", e.message),
            );
            Err(e.message)
        }
    }
}

/// Exports a [`MessageHandler`] as the component's `wasmcloud:messaging/handler`.
///
/// It generates, in the calling crate, bindings for a world with only that export
/// (reusing shopkit's `wasmcloud:messaging/types`), so only components that call it
/// export a message handler. The WIT is read from `../../../wit` relative to the
/// calling crate, which is where it is for every crate in `components/shop/`.
#[macro_export]
macro_rules! export_message_handler {
    ($handler:ident) => {
        #[doc(hidden)]
        mod __shopkit_message_handler {
            shopkit::wit_bindgen::generate!({
                inline: "
                    package shopkit:handler;
                    world handler { export wasmcloud:messaging/handler@0.2.0; }
                ",
                path: "../../../wit",
                with: {
                    "wasmcloud:messaging/types@0.2.0": shopkit::bindings::wasmcloud::messaging::types,
                },
                runtime_path: "shopkit::wit_bindgen::rt",
            });

            struct Handler;

            impl exports::wasmcloud::messaging::handler::Guest for Handler {
                fn handle_message(
                    msg: shopkit::bindings::wasmcloud::messaging::types::BrokerMessage,
                ) -> Result<(), String> {
                    shopkit::events::dispatch::<super::$handler>(&msg.subject, &msg.body)
                }
            }

            export!(Handler);
        }
    };
}
