//! inventory: stock per sku and a reservation per order (bucket `inventory`); the
//! saga's first step. See docs/SHOP.md.
//!
//! Routes:
//!
//! - `PUT /v1/stock/{sku}` `{"quantity": n}` sets `on_hand` to n ≥ 0 (reservations are
//!   kept) → 200 `{"sku", "on_hand", "reserved", "available"}`.
//! - `GET /v1/stock/{sku}` → 200 the stock, 404.
//! - `GET /v1/reservations/{order_id}` → 200
//!   `{"order_id", "status", "items": [{"sku", "quantity"}], "reason"?}`, 404.
//!
//! Events (durable subscriptions):
//!
//! - `orders.created` → reserve every item; all available → `inventory.reserved`;
//!   some item short → release what was taken, `inventory.rejected` with a reason.
//! - `payments.completed` → commit: `on_hand -= quantity`, the reservation goes.
//! - `payments.failed` → release the reservation (the compensation),
//!   `inventory.released` with the payment's reason.
//!
//! Keys: `stock/<sku>` → `{"on_hand", "reservations": {"<order_id>": quantity}}`, and
//! `reservation/<order_id>` → the order's reservation (status `reserved`, `rejected`,
//! `released` or `committed`) plus the order, to republish.
//!
//! Idempotency (delivery is at least once): each stock change is a compare-and-swap
//! keyed by order id, so reserving, releasing or committing an order twice changes
//! the stock once; and the decision on an order is recorded with a compare-and-swap
//! against "absent" before its event is published, so a redelivered message
//! republishes the recorded outcome instead of deciding again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shopkit::events::{self, MessageHandler};
use shopkit::http::{Request, Response};
use shopkit::kv::{Bucket, Change};
use shopkit::saga::{self, Order};
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

const BUCKET: &str = "inventory";

/// The stock of one sku, as stored.
#[derive(Default, Serialize, Deserialize)]
struct Stock {
    on_hand: i64,
    /// Quantity reserved per order id.
    #[serde(default)]
    reservations: BTreeMap<String, u32>,
}

impl Stock {
    fn reserved(&self) -> i64 {
        self.reservations.values().map(|&q| i64::from(q)).sum()
    }

    fn available(&self) -> i64 {
        self.on_hand - self.reserved()
    }

    /// The answer of the stock routes.
    fn view(&self, sku: &str) -> StockView {
        StockView {
            sku: sku.to_string(),
            on_hand: self.on_hand,
            reserved: self.reserved(),
            available: self.available(),
        }
    }
}

#[derive(Serialize)]
struct StockView {
    sku: String,
    on_hand: i64,
    reserved: i64,
    available: i64,
}

/// Where an order's reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Reserved,
    Rejected,
    Released,
    Committed,
}

/// One sku of a reservation.
#[derive(Clone, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
}

/// An order's reservation: the answer of `GET /v1/reservations/{order_id}`.
#[derive(Clone, Serialize, Deserialize)]
struct Reservation {
    order_id: String,
    status: Status,
    items: Vec<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What is stored per order: the reservation and the order it is for (the body of
/// the events republished on redelivery).
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    reservation: Reservation,
    order: Order,
}

struct Inventory;

impl Guest for Inventory {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("PUT", ["v1", "stock", sku]) => set_stock(req, sku),
        ("GET", ["v1", "stock", sku]) => get_stock(sku),
        ("GET", ["v1", "reservations", order_id]) => get_reservation(order_id),
        _ => Err(shopkit::http::no_route()),
    }
}

/// The body of `PUT /v1/stock/{sku}`.
#[derive(Deserialize)]
struct SetStock {
    quantity: i64,
}

fn set_stock(req: &Request, sku: &str) -> Result<Response> {
    if !shopkit::valid_sku(sku) {
        return Err(Error::bad_request(shopkit::SKU_RULE));
    }
    let SetStock { quantity } = req.json()?;
    if quantity < 0 {
        return Err(Error::bad_request("quantity must be 0 or more"));
    }
    let view = Bucket::open(BUCKET)?.update(&stock_key(sku), |stock: Option<Stock>| {
        let stock = Stock {
            on_hand: quantity,
            ..stock.unwrap_or_default()
        };
        let view = stock.view(sku);
        Ok((Change::Put(stock), view))
    })?;
    Ok(Response::ok(&view))
}

fn get_stock(sku: &str) -> Result<Response> {
    let stock: Option<Stock> = Bucket::open(BUCKET)?.get(&stock_key(sku))?;
    stock
        .map(|s| Response::ok(&s.view(sku)))
        .ok_or_else(|| Error::not_found(format!("no stock for {sku}")))
}

fn get_reservation(order_id: &str) -> Result<Response> {
    let record: Option<Record> = Bucket::open(BUCKET)?.get(&reservation_key(order_id))?;
    record
        .map(|r| Response::ok(&r.reservation))
        .ok_or_else(|| Error::not_found(format!("no reservation for order {order_id}")))
}

impl MessageHandler for Inventory {
    fn handle(subject: &str, body: &[u8]) -> Result<()> {
        let order: Order = shopkit::from_json(body)?;
        let bucket = Bucket::open(BUCKET)?;
        match subject {
            saga::ORDERS_CREATED => reserve_order(&bucket, order),
            saga::PAYMENTS_COMPLETED => commit_order(&bucket, &order),
            saga::PAYMENTS_FAILED => release_order(&bucket, &order),
            other => Err(Error::bad_request(format!("unexpected subject {other}"))),
        }
    }
}

/// `orders.created`: reserve every item, or none.
fn reserve_order(bucket: &Bucket, order: Order) -> Result<()> {
    let key = reservation_key(&order.id);
    if let Some(record) = bucket.get::<Record>(&key)? {
        return announce_reservation(&record);
    }

    let lines = lines(&order);
    let mut taken = Vec::new();
    let mut short = None;
    for line in &lines {
        match reserve(bucket, &order.id, line)? {
            Ok(()) => taken.push(line.clone()),
            Err(reason) => {
                short = Some(reason);
                break;
            }
        }
    }
    if short.is_some() {
        // Give back what this order took before publishing the rejection.
        for line in &taken {
            release(bucket, &order.id, &line.sku)?;
        }
    }
    let record = Record {
        reservation: Reservation {
            order_id: order.id.clone(),
            status: if short.is_some() {
                Status::Rejected
            } else {
                Status::Reserved
            },
            items: lines.clone(),
            reason: short,
        },
        order,
    };

    if !bucket.insert_new(&key, &record)? {
        // Another delivery of this order recorded its decision first: that one
        // stands. If it rejected the order, nothing of this order may stay reserved.
        let recorded: Record = bucket
            .get(&key)?
            .ok_or_else(|| Error::internal(format!("reservation {key} vanished")))?;
        if recorded.reservation.status == Status::Rejected {
            for line in &lines {
                release(bucket, &recorded.order.id, &line.sku)?;
            }
        }
        return announce_reservation(&recorded);
    }
    announce_reservation(&record)
}

/// Publishes the outcome of the reservation step as recorded. Once the saga moved
/// past it (released, committed) there is nothing to say again.
fn announce_reservation(record: &Record) -> Result<()> {
    let r = &record.reservation;
    match r.status {
        Status::Reserved => events::publish(saga::INVENTORY_RESERVED, &record.order),
        Status::Rejected => events::publish(
            saga::INVENTORY_REJECTED,
            &record
                .order
                .with_reason(r.reason.clone().unwrap_or_default()),
        ),
        Status::Released | Status::Committed => Ok(()),
    }
}

/// `payments.completed`: the reserved items leave the shelf.
fn commit_order(bucket: &Bucket, order: &Order) -> Result<()> {
    let record = recorded(bucket, &order.id)?;
    match record.reservation.status {
        Status::Reserved => {}
        Status::Committed => return Ok(()),
        other => {
            return Err(Error::new(
                409,
                format!("cannot commit order {}: reservation is {other:?}", order.id),
            ));
        }
    }
    for line in &record.reservation.items {
        commit(bucket, &order.id, &line.sku)?;
    }
    set_status(bucket, &order.id, Status::Committed, None)?;
    Ok(())
}

/// `payments.failed`: the compensation, give the reserved items back.
fn release_order(bucket: &Bucket, order: &Order) -> Result<()> {
    let record = recorded(bucket, &order.id)?;
    let reason = order
        .reason
        .clone()
        .unwrap_or_else(|| "payment failed".to_string());
    match record.reservation.status {
        Status::Reserved => {
            for line in &record.reservation.items {
                release(bucket, &order.id, &line.sku)?;
            }
            set_status(bucket, &order.id, Status::Released, Some(reason))?;
        }
        Status::Released => {}
        other => {
            return Err(Error::new(
                409,
                format!(
                    "cannot release order {}: reservation is {other:?}",
                    order.id
                ),
            ));
        }
    }
    // Published on the first delivery and again on a redelivery (the recorded outcome).
    let record = recorded(bucket, &order.id)?;
    let reason = record.reservation.reason.clone().unwrap_or_default();
    events::publish(saga::INVENTORY_RELEASED, &record.order.with_reason(reason))
}

/// The recorded reservation of `order_id`; a 404 (the message is dropped) if there is
/// none, which the saga never produces.
fn recorded(bucket: &Bucket, order_id: &str) -> Result<Record> {
    bucket
        .get(&reservation_key(order_id))?
        .ok_or_else(|| Error::not_found(format!("no reservation for order {order_id}")))
}

/// Moves the reservation of `order_id` to `status` (setting `reason` if given).
fn set_status(
    bucket: &Bucket,
    order_id: &str,
    status: Status,
    reason: Option<String>,
) -> Result<()> {
    bucket.update(&reservation_key(order_id), |record: Option<Record>| {
        let Some(mut record) = record else {
            return Err(Error::not_found(format!(
                "no reservation for order {order_id}"
            )));
        };
        if record.reservation.status == status {
            return Ok((Change::Keep, ()));
        }
        record.reservation.status = status;
        if reason.is_some() {
            record.reservation.reason.clone_from(&reason);
        }
        Ok((Change::Put(record), ()))
    })
}

/// Reserves `line` for `order_id`: `Ok(Err(reason))` if the sku is short. Reserving
/// an order that already holds this sku changes nothing and succeeds.
fn reserve(bucket: &Bucket, order_id: &str, line: &Line) -> Result<Result<(), String>> {
    bucket.update(&stock_key(&line.sku), |stock: Option<Stock>| {
        let mut stock = stock.unwrap_or_default();
        if stock.reservations.contains_key(order_id) {
            return Ok((Change::Keep, Ok(())));
        }
        let available = stock.available();
        if available < i64::from(line.quantity) {
            let reason = format!(
                "insufficient stock for {}: {} requested, {} available",
                line.sku,
                line.quantity,
                available.max(0)
            );
            return Ok((Change::Keep, Err(reason)));
        }
        stock
            .reservations
            .insert(order_id.to_string(), line.quantity);
        Ok((Change::Put(stock), Ok(())))
    })
}

/// Drops `order_id`'s reservation of `sku`, if it holds one.
fn release(bucket: &Bucket, order_id: &str, sku: &str) -> Result<()> {
    bucket.update(&stock_key(sku), |stock: Option<Stock>| {
        Ok(match stock {
            Some(mut stock) => match stock.reservations.remove(order_id) {
                Some(_) => (Change::Put(stock), ()),
                None => (Change::Keep, ()),
            },
            None => (Change::Keep, ()),
        })
    })
}

/// Turns `order_id`'s reservation of `sku` into a sale: `on_hand` goes down by the
/// reserved quantity (never below zero) and the reservation goes.
fn commit(bucket: &Bucket, order_id: &str, sku: &str) -> Result<()> {
    bucket.update(&stock_key(sku), |stock: Option<Stock>| {
        Ok(match stock {
            Some(mut stock) => match stock.reservations.remove(order_id) {
                Some(quantity) => {
                    stock.on_hand = (stock.on_hand - i64::from(quantity)).max(0);
                    (Change::Put(stock), ())
                }
                None => (Change::Keep, ()),
            },
            None => (Change::Keep, ()),
        })
    })
}

/// The order's items as one line per sku (quantities of repeated skus added up),
/// sorted by sku.
fn lines(order: &Order) -> Vec<Line> {
    let mut per_sku: BTreeMap<&str, u32> = BTreeMap::new();
    for item in &order.items {
        let quantity = per_sku.entry(&item.sku).or_default();
        *quantity = quantity.saturating_add(item.quantity);
    }
    per_sku
        .into_iter()
        .map(|(sku, quantity)| Line {
            sku: sku.to_string(),
            quantity,
        })
        .collect()
}

fn stock_key(sku: &str) -> String {
    format!("stock/{sku}")
}

fn reservation_key(order_id: &str) -> String {
    format!("reservation/{order_id}")
}

shopkit::support::wasip2::http::proxy::export!(Inventory with_types_in shopkit::support::wasip2);
shopkit::export_message_handler!(Inventory);

#[cfg(test)]
mod tests {
    use super::*;
    use shopkit::saga::{OrderItem, OrderStatus};

    #[test]
    fn lines_add_up_repeated_skus_sorted_by_sku() {
        let item = |sku: &str, quantity| OrderItem {
            sku: sku.into(),
            quantity,
            price_cents: 100,
        };
        let order = Order {
            id: "o1".into(),
            user_id: "u1".into(),
            items: vec![item("mug", 1), item("book", 2), item("mug", 3)],
            total_cents: 600,
            status: OrderStatus::Pending,
            reason: None,
        };
        let lines: Vec<(String, u32)> = lines(&order)
            .into_iter()
            .map(|l| (l.sku, l.quantity))
            .collect();
        assert_eq!(lines, [("book".into(), 2), ("mug".into(), 4)]);
    }

    #[test]
    fn available_is_on_hand_minus_reserved() {
        let stock = Stock {
            on_hand: 10,
            reservations: [("o1".to_string(), 3), ("o2".to_string(), 4)].into(),
        };
        let view = stock.view("book");
        assert_eq!((view.on_hand, view.reserved, view.available), (10, 7, 3));
    }
}
