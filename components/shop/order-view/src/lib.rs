//! order-view: the read side of CQRS (bucket `order-view`). Built only from order
//! events, never by calling orders. See docs/SHOP.md.
//!
//! Routes:
//!
//! - `GET /v1/order-view/{order_id}` → 200 `{"id", "user_id", "total_cents",
//!   "status"}`, 404.
//! - `GET /v1/order-summary/{user_id}` → 200 `{"user_id", "orders": [{"id", "status",
//!   "total_cents"}], "counts": {"pending", "confirmed", "rejected", "cancelled"},
//!   "total_spent_cents"}`: orders sorted by id (`o2` before `o10`),
//!   `total_spent_cents` sums the confirmed ones; an unknown user has an empty
//!   summary.
//!
//! Events (durable subscriptions): `orders.created` (status `pending`),
//! `orders.confirmed`, `orders.rejected`, `orders.cancelled`.
//!
//! Keys: `order/<id>` → the order's view; `user/<user_id>` → the user's orders by id.
//!
//! Events may arrive late, twice or out of order; both records follow one rule,
//! applied with compare-and-swap: a status moves only from `pending` (or nothing) to
//! something else, so a late or redelivered `orders.created` never moves a final
//! status back, and a final status never changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shopkit::events::MessageHandler;
use shopkit::http::{Request, Response};
use shopkit::kv::{Bucket, Change};
use shopkit::saga::{self, Order, OrderStatus};
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

const BUCKET: &str = "order-view";

/// One order as the view shows it.
#[derive(Clone, Serialize, Deserialize)]
struct OrderView {
    id: String,
    user_id: String,
    total_cents: u64,
    status: OrderStatus,
}

/// One order in a user's summary.
#[derive(Clone, Serialize, Deserialize)]
struct SummaryLine {
    id: String,
    status: OrderStatus,
    total_cents: u64,
}

/// What is stored per user: their orders by id.
#[derive(Default, Serialize, Deserialize)]
struct UserOrders {
    orders: BTreeMap<String, SummaryLine>,
}

#[derive(Default, Serialize)]
struct Counts {
    pending: u64,
    confirmed: u64,
    rejected: u64,
    cancelled: u64,
}

#[derive(Serialize)]
struct Summary {
    user_id: String,
    orders: Vec<SummaryLine>,
    counts: Counts,
    total_spent_cents: u64,
}

struct OrderViewService;

impl Guest for OrderViewService {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("GET", ["v1", "order-view", order_id]) => {
            let view: Option<OrderView> = Bucket::open(BUCKET)?.get(&order_key(order_id))?;
            view.map(|v| Response::ok(&v))
                .ok_or_else(|| Error::not_found(format!("no order {order_id}")))
        }
        ("GET", ["v1", "order-summary", user_id]) => {
            let stored: UserOrders = Bucket::open(BUCKET)?
                .get(&user_key(user_id))?
                .unwrap_or_default();
            Ok(Response::ok(&summary(user_id, stored)))
        }
        _ => Err(shopkit::http::no_route()),
    }
}

fn summary(user_id: &str, stored: UserOrders) -> Summary {
    let mut orders: Vec<SummaryLine> = stored.orders.into_values().collect();
    orders.sort_by(|a, b| shopkit::id_order(&a.id, &b.id));
    let mut counts = Counts::default();
    let mut total_spent_cents = 0u64;
    for line in &orders {
        match line.status {
            OrderStatus::Pending => counts.pending += 1,
            OrderStatus::Confirmed => {
                counts.confirmed += 1;
                total_spent_cents = total_spent_cents.saturating_add(line.total_cents);
            }
            OrderStatus::Rejected => counts.rejected += 1,
            OrderStatus::Cancelled => counts.cancelled += 1,
        }
    }
    Summary {
        user_id: user_id.to_string(),
        orders,
        counts,
        total_spent_cents,
    }
}

impl MessageHandler for OrderViewService {
    fn handle(subject: &str, body: &[u8]) -> Result<()> {
        let status = match subject {
            saga::ORDERS_CREATED => OrderStatus::Pending,
            other => OrderStatus::from_outcome_subject(other)
                .ok_or_else(|| Error::bad_request(format!("unexpected subject {other}")))?,
        };
        let order: Order = shopkit::from_json(body)?;
        let bucket = Bucket::open(BUCKET)?;

        bucket.update(&order_key(&order.id), |view: Option<OrderView>| {
            if !moves(view.as_ref().map(|v| v.status), status) {
                return Ok((Change::Keep, ()));
            }
            let view = OrderView {
                id: order.id.clone(),
                user_id: order.user_id.clone(),
                total_cents: order.total_cents,
                status,
            };
            Ok((Change::Put(view), ()))
        })?;

        bucket.update(&user_key(&order.user_id), |stored: Option<UserOrders>| {
            let mut stored = stored.unwrap_or_default();
            if !moves(stored.orders.get(&order.id).map(|l| l.status), status) {
                return Ok((Change::Keep, ()));
            }
            stored.orders.insert(
                order.id.clone(),
                SummaryLine {
                    id: order.id.clone(),
                    status,
                    total_cents: order.total_cents,
                },
            );
            Ok((Change::Put(stored), ()))
        })
    }
}

/// Whether an event announcing `incoming` changes a record whose status is
/// `current`: only an absent or pending record changes, and only to a new status.
fn moves(current: Option<OrderStatus>, incoming: OrderStatus) -> bool {
    match current {
        None => true,
        Some(OrderStatus::Pending) => incoming != OrderStatus::Pending,
        Some(_) => false,
    }
}

fn order_key(order_id: &str) -> String {
    format!("order/{order_id}")
}

fn user_key(user_id: &str) -> String {
    format!("user/{user_id}")
}

shopkit::support::wasip2::http::proxy::export!(OrderViewService with_types_in shopkit::support::wasip2);
shopkit::export_message_handler!(OrderViewService);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_never_move() {
        use OrderStatus::*;
        assert!(moves(None, Pending));
        assert!(moves(None, Confirmed));
        assert!(moves(Some(Pending), Cancelled));
        assert!(!moves(Some(Pending), Pending));
        assert!(!moves(Some(Confirmed), Pending));
        assert!(!moves(Some(Rejected), Confirmed));
    }
}
