//! notifications: tells the customer how their order ended (bucket `notifications`).
//! See docs/SHOP.md. There is no mail server: each notification is recorded and
//! logged through `wasi:logging` (`email to <user>: ...`).
//!
//! Routes:
//!
//! - `GET /v1/notifications/{order_id}` → 200 `{"order_id", "notifications":
//!   [{"order_id", "user_id", "kind", "message"}]}` (an empty list when there are
//!   none).
//!
//! Events (durable subscriptions): `orders.confirmed`, `orders.rejected`,
//! `orders.cancelled` → one notification of kind `confirmed`, `rejected` or
//! `cancelled`.
//!
//! Keys: `order/<order_id>` → the list of the order's notifications.
//!
//! Idempotency: the notification is added with a compare-and-swap only if the order
//! has none of that kind yet, and logged ("sent") only by the delivery that added
//! it, so a redelivered event sends nothing twice.

use serde::{Deserialize, Serialize};
use shopkit::events::MessageHandler;
use shopkit::http::{Request, Response};
use shopkit::kv::{Bucket, Change};
use shopkit::saga::{Order, OrderStatus};
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

const BUCKET: &str = "notifications";

#[derive(Clone, Serialize, Deserialize)]
struct Notification {
    order_id: String,
    user_id: String,
    kind: OrderStatus,
    message: String,
}

struct Notifications;

impl Guest for Notifications {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("GET", ["v1", "notifications", order_id]) => {
            let list: Vec<Notification> = Bucket::open(BUCKET)?
                .get(&key(order_id))?
                .unwrap_or_default();
            Ok(Response::ok(&shopkit::serde_json::json!({
                "order_id": order_id,
                "notifications": list,
            })))
        }
        _ => Err(shopkit::http::no_route()),
    }
}

impl MessageHandler for Notifications {
    fn handle(subject: &str, body: &[u8]) -> Result<()> {
        let kind = OrderStatus::from_outcome_subject(subject)
            .ok_or_else(|| Error::bad_request(format!("unexpected subject {subject}")))?;
        let order: Order = shopkit::from_json(body)?;
        let notification = Notification {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            kind,
            message: message(&order, kind),
        };
        let added =
            Bucket::open(BUCKET)?.update(&key(&order.id), |list: Option<Vec<Notification>>| {
                let mut list = list.unwrap_or_default();
                if list.iter().any(|n| n.kind == kind) {
                    return Ok((Change::Keep, false));
                }
                list.push(notification.clone());
                Ok((Change::Put(list), true))
            })?;
        if added {
            shopkit::log::info(
                "notifications",
                &format!("email to {}: {}", order.user_id, notification.message),
            );
        }
        Ok(())
    }
}

/// The text the customer gets.
fn message(order: &Order, kind: OrderStatus) -> String {
    let reason = order.reason.as_deref().unwrap_or("no reason given");
    match kind {
        OrderStatus::Confirmed => format!(
            "your order {} is confirmed, {} paid",
            order.id,
            shopkit::money(order.total_cents)
        ),
        OrderStatus::Rejected => format!("your order {} was rejected: {reason}", order.id),
        OrderStatus::Cancelled => format!("your order {} was cancelled: {reason}", order.id),
        OrderStatus::Pending => format!("your order {} is being processed", order.id),
    }
}

fn key(order_id: &str) -> String {
    format!("order/{order_id}")
}

shopkit::support::wasip2::http::proxy::export!(Notifications with_types_in shopkit::support::wasip2);
shopkit::export_message_handler!(Notifications);
