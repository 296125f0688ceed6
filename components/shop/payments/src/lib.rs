//! payments: charges orders whose stock is reserved (bucket `payments`); the saga's
//! second step. See docs/SHOP.md. There is no real payment provider: the decision
//! comes from config, so the failure path can be shown on demand.
//!
//! Routes:
//!
//! - `GET /v1/payments/{order_id}` → 200
//!   `{"order_id", "status": "completed"|"failed", "amount_cents", "reason"?}`, 404
//!   before the saga reaches payments.
//!
//! Events (durable subscription):
//!
//! - `inventory.reserved` → charge the order's total: `payments.completed`, or
//!   `payments.failed` with a reason when declined.
//!
//! Config: `decline_over_cents` (default `100000`: a total above it is declined, "the
//! magic amount"), `decline_all` (`"true"` declines every payment, "break payments").
//!
//! Keys: `payment/<order_id>` → the payment plus the order, to republish.
//!
//! Idempotency: the decision is recorded with a compare-and-swap against "absent"
//! before it is published; a redelivered `inventory.reserved` (or a concurrent
//! duplicate that lost the swap) republishes the recorded outcome. An order is never
//! charged twice.

use serde::{Deserialize, Serialize};
use shopkit::events::{self, MessageHandler};
use shopkit::http::{Request, Response};
use shopkit::kv::Bucket;
use shopkit::saga::{self, Order};
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

const BUCKET: &str = "payments";

/// Totals above this many cents are declined unless config says otherwise.
const DEFAULT_DECLINE_OVER_CENTS: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Completed,
    Failed,
}

/// A payment: the answer of `GET /v1/payments/{order_id}`.
#[derive(Clone, Serialize, Deserialize)]
struct Payment {
    order_id: String,
    status: Status,
    amount_cents: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What is stored per order: the payment and the order (the event body to republish).
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    payment: Payment,
    order: Order,
}

struct Payments;

impl Guest for Payments {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("GET", ["v1", "payments", order_id]) => {
            let record: Option<Record> = Bucket::open(BUCKET)?.get(&key(order_id))?;
            record
                .map(|r| Response::ok(&r.payment))
                .ok_or_else(|| Error::not_found(format!("no payment for order {order_id}")))
        }
        _ => Err(shopkit::http::no_route()),
    }
}

impl MessageHandler for Payments {
    fn handle(subject: &str, body: &[u8]) -> Result<()> {
        if subject != saga::INVENTORY_RESERVED {
            return Err(Error::bad_request(format!("unexpected subject {subject}")));
        }
        let order: Order = shopkit::from_json(body)?;
        let bucket = Bucket::open(BUCKET)?;
        let key = key(&order.id);
        if let Some(record) = bucket.get::<Record>(&key)? {
            return announce(&record);
        }
        let record = Record {
            payment: charge(&order),
            order,
        };
        if bucket.insert_new(&key, &record)? {
            announce(&record)
        } else {
            // A concurrent delivery decided first; its decision stands.
            let recorded: Record = bucket
                .get(&key)?
                .ok_or_else(|| Error::internal(format!("payment {key} vanished")))?;
            announce(&recorded)
        }
    }
}

/// Decides whether `order` is paid, by the config rules.
fn charge(order: &Order) -> Payment {
    let amount = order.total_cents;
    let limit = shopkit::config::get_or("decline_over_cents", DEFAULT_DECLINE_OVER_CENTS);
    let decline_all = shopkit::config::get("decline_all").is_some_and(|v| v.trim() == "true");
    let reason = if decline_all {
        Some("payment declined: payments are switched off (decline_all)".to_string())
    } else if amount > limit {
        Some(format!(
            "payment declined: total {} is over the limit of {}",
            shopkit::money(amount),
            shopkit::money(limit)
        ))
    } else {
        None
    };
    Payment {
        order_id: order.id.clone(),
        status: if reason.is_some() {
            Status::Failed
        } else {
            Status::Completed
        },
        amount_cents: amount,
        reason,
    }
}

/// Publishes the recorded outcome.
fn announce(record: &Record) -> Result<()> {
    match record.payment.status {
        Status::Completed => events::publish(saga::PAYMENTS_COMPLETED, &record.order),
        Status::Failed => events::publish(
            saga::PAYMENTS_FAILED,
            &record
                .order
                .with_reason(record.payment.reason.clone().unwrap_or_default()),
        ),
    }
}

fn key(order_id: &str) -> String {
    format!("payment/{order_id}")
}

shopkit::support::wasip2::http::proxy::export!(Payments with_types_in shopkit::support::wasip2);
shopkit::export_message_handler!(Payments);
