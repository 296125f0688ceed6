//! orders: places orders and follows them through the saga (buckets `orders` and
//! `idempotency`). See docs/SHOP.md.
//!
//! Routes:
//!
//! - `POST /v1/orders` `{"user_id", "items": [{"sku", "quantity"}]}`, optional header
//!   `Idempotency-Key`. Checks the user (`GET http://users/v1/users/{id}`) and prices
//!   every sku (`GET http://catalog/v1/products/{sku}`), all calls in parallel through
//!   the mesh; publishes `orders.created`, stores the order as `pending` and answers
//!   201 with the order and `location: /v1/orders/{id}`. Empty items or a quantity
//!   < 1 → 400; unknown user → 422 `unknown user`; unknown sku → 422
//!   `unknown product <sku>`; users or catalog failing → 503.
//! - `GET /v1/orders/{id}` → 200 the order, 404.
//!
//! Event first: the order is announced before it is stored, and orders subscribes
//! to its own `orders.created`, storing the order if it is not stored yet. So a host
//! that dies between the two steps loses nothing: the event is in JetStream and
//! both the saga and the store happen on delivery (no outbox needed, and no order
//! stays `pending` unannounced). A saga event that arrives before its order is
//! stored fails and is redelivered after the backoff.
//!
//! Events (durable subscriptions), each moving a `pending` order to its final status
//! and announcing it:
//!
//! - `inventory.rejected` → `rejected` (with the reason), `orders.rejected`;
//! - `payments.completed` → `confirmed`, `orders.confirmed`;
//! - `payments.failed` → `cancelled` (with the reason), `orders.cancelled`.
//!
//! A final status never changes. A redelivered event finds the order already in the
//! status it announces and publishes the recorded order again.
//!
//! Idempotent POST: the first request with a key claims it (compare-and-swap against
//! "absent" in `idempotency`, key `key/<Idempotency-Key>`) and records in the claim
//! the priced order, before announcing it. Its final answer (status, body, location)
//! replaces the claim, and later requests with the key get that answer byte for byte
//! with `idempotent-replayed: true`. A claim not yet answered → 409; a 5xx answer
//! releases the claim so the client can retry at once. A claim left by a request that
//! died (older than [`CLAIM_LEASE_MS`]), or released by a 5xx, is taken over together
//! with its order: if that order is stored, the answer is 201 with it; if not, it is
//! announced and stored exactly as recorded (the retry's own body is not priced
//! again). So a host dying after the announcement, or a publish that failed but went
//! out later, never turns one key into two orders. Every write to a claim after the
//! first is a compare-and-swap from what this request wrote last: a request whose
//! claim was taken over answers without touching it.
//!
//! Keys in `orders`: `order/<id>`, `next-id` (the counter behind `o<n>`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shopkit::client::{self, Call};
use shopkit::events::{self, MessageHandler};
use shopkit::http::{Request, Response};
use shopkit::kv::{Bucket, Change};
use shopkit::saga::{self, Order, OrderItem, OrderStatus};
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

const ORDERS: &str = "orders";
const IDEMPOTENCY: &str = "idempotency";

/// Header that makes a POST idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Header on a replayed answer.
const REPLAYED: &str = "idempotent-replayed";

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 200;

/// Age after which an unanswered claim is taken to be left by a request that died
/// (well above the component's `limits.timeout`, after which the host kills it).
const CLAIM_LEASE_MS: u64 = 60_000;

/// The body of `POST /v1/orders`.
#[derive(Deserialize)]
struct NewOrder {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    items: Vec<NewItem>,
}

#[derive(Deserialize)]
struct NewItem {
    sku: String,
    quantity: i64,
}

/// The part of a catalog product the order needs.
#[derive(Deserialize)]
struct Product {
    price_cents: u64,
}

/// What the `idempotency` bucket holds per key.
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum Claim {
    /// A request holds the key and has not answered yet; `order` once it has priced
    /// the order it is placing (recorded before announcing it).
    Pending {
        claimed_at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<Order>,
    },
    /// The key's final answer.
    Answered {
        status: u16,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<String>,
    },
}

struct Orders;

impl Guest for Orders {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("POST", ["v1", "orders"]) => match req.header(IDEMPOTENCY_KEY).map(str::trim) {
            None => place(req, |_| Ok(())),
            Some(key) => idempotent(key, |record| place(req, record)),
        },
        ("GET", ["v1", "orders", id]) => {
            let order: Option<Order> = Bucket::open(ORDERS)?.get(&order_key(id))?;
            order
                .map(|o| Response::ok(&o))
                .ok_or_else(|| Error::not_found(format!("no order {id}")))
        }
        _ => Err(shopkit::http::no_route()),
    }
}

/// Runs `handler` at most once per idempotency key (see the module docs).
///
/// `handler` gets a function that records the priced order in the claim; it must
/// call it before announcing the order.
fn idempotent(
    key: &str,
    handler: impl FnOnce(&dyn Fn(&Order) -> Result<()>) -> Result<Response>,
) -> Result<Response> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::bad_request(format!(
            "Idempotency-Key must be 1-{MAX_KEY_LEN} characters"
        )));
    }
    let bucket = Bucket::open(IDEMPOTENCY)?;
    let claim_key = format!("key/{key}");
    let claimed_at_ms = now_ms();
    let pending = |order: Option<&Order>| {
        shopkit::to_json(&Claim::Pending {
            claimed_at_ms,
            order: order.cloned(),
        })
    };

    // Claim the key, or find out who has it. `inherited`: the order a request that
    // died holding the claim (or failed with a 5xx) had recorded.
    let mut claim = None;
    let mut inherited = None;
    for _ in 0..3 {
        let fresh = pending(None);
        if bucket.swap(&claim_key, None, &fresh)? {
            claim = Some(fresh);
            break;
        }
        let Some(current) = bucket.get_raw(&claim_key)? else {
            continue; // released meanwhile: try to claim again
        };
        match shopkit::from_json::<Claim>(&current) {
            Ok(Claim::Answered {
                status,
                body,
                location,
            }) => return Ok(replay(status, body, location)),
            Ok(Claim::Pending { claimed_at_ms, .. })
                if now_ms().saturating_sub(claimed_at_ms) < CLAIM_LEASE_MS =>
            {
                return Err(Error::new(
                    409,
                    "a request with this Idempotency-Key is still in progress",
                ));
            }
            // A stale or unreadable claim: take it over, with its order.
            stale => {
                let order = match stale {
                    Ok(Claim::Pending { order, .. }) => order,
                    _ => None,
                };
                let takeover = pending(order.as_ref());
                if bucket.swap(&claim_key, Some(&current), &takeover)? {
                    claim = Some(takeover);
                    inherited = order;
                    break;
                }
            }
        }
    }
    let Some(claim) = claim else {
        return Err(Error::new(409, "Idempotency-Key is contended"));
    };
    // What the claim holds now (as written by this request), so every later write
    // is a compare-and-swap: a claim taken over meanwhile is never overwritten.
    let mine = std::cell::RefCell::new(claim);
    let lost = std::cell::Cell::new(false);
    let swap_mine = |new: Vec<u8>| -> Result<bool> {
        let current = mine.borrow().clone();
        let ok = bucket.swap(&claim_key, Some(&current), &new)?;
        if ok {
            *mine.borrow_mut() = new;
        } else {
            lost.set(true);
        }
        Ok(ok)
    };
    let record = |order: &Order| -> Result<()> {
        if swap_mine(pending(Some(order)))? {
            Ok(())
        } else {
            Err(Error::new(409, "Idempotency-Key was taken over"))
        }
    };

    let outcome = match inherited {
        // The request before may have announced its order: the answer is that order,
        // as stored, or else announced again exactly as it was priced then (every
        // saga step is keyed by the order id, so two announcements are one order).
        Some(order) => resume(&order),
        None => handler(&record),
    };
    let response = outcome.unwrap_or_else(Response::from);
    if lost.get() {
        return Ok(response);
    }
    let last = if response.status >= 500 {
        // Released so the client can retry at once: a claim anyone may take over
        // (a compare-and-swap, never a delete, so a claim taken over meanwhile
        // stays). A recorded order is kept in it: it may have been announced after
        // all (a publish that failed can still have gone out), so the retry answers
        // with it.
        let order = match shopkit::from_json::<Claim>(&mine.borrow()) {
            Ok(Claim::Pending { order, .. }) => order,
            _ => None,
        };
        shopkit::to_json(&Claim::Pending {
            claimed_at_ms: 0,
            order,
        })
    } else {
        shopkit::to_json(&Claim::Answered {
            status: response.status,
            body: String::from_utf8_lossy(&response.body).into_owned(),
            location: response.header("location").map(str::to_string),
        })
    };
    // A failure here leaves the claim to expire: the answer still stands.
    if let Err(e) = swap_mine(last) {
        shopkit::log::warn("orders", &format!("claim {key} not updated: {}", e.message));
    }
    Ok(response)
}

/// Finishes an order a dead request recorded: answers with it if it is stored, else
/// announces and stores it exactly as recorded.
fn resume(order: &Order) -> Result<Response> {
    let bucket = Bucket::open(ORDERS)?;
    let stored = match bucket.get::<Order>(&order_key(&order.id))? {
        Some(stored) => stored,
        None => {
            events::publish(saga::ORDERS_CREATED, order)?;
            store_new_or_warn(&bucket, order);
            order.clone()
        }
    };
    Ok(placed(&stored).with_header(REPLAYED, "true"))
}

/// The recorded answer for a key, again.
fn replay(status: u16, body: String, location: Option<String>) -> Response {
    let mut replay = Response::raw(status, body.into_bytes());
    if let Some(location) = location {
        replay = replay.with_header("location", location);
    }
    replay.with_header(REPLAYED, "true")
}

/// The answer to a placed order: 201 with the order and its location.
fn placed(order: &Order) -> Response {
    let location = format!("/v1/orders/{}", order.id);
    Response::json(201, order).with_header("location", location)
}

/// Validates, prices, announces and stores a new order; `record` gets the priced
/// order before it is announced.
fn place(req: &Request, record: impl FnOnce(&Order) -> Result<()>) -> Result<Response> {
    let new: NewOrder = req.json()?;
    let user_id = new.user_id.trim();
    if user_id.is_empty() {
        return Err(Error::bad_request("user_id is required"));
    }
    if new.items.is_empty() {
        return Err(Error::bad_request("items must not be empty"));
    }
    let mut quantities = Vec::with_capacity(new.items.len());
    for item in &new.items {
        let quantity = u32::try_from(item.quantity)
            .ok()
            .filter(|&q| q >= 1)
            .ok_or_else(|| Error::bad_request("quantity must be at least 1"))?;
        quantities.push(quantity);
    }

    // The user and every distinct sku, in parallel through the mesh.
    let skus: Vec<&str> = {
        let mut skus: Vec<&str> = new.items.iter().map(|i| i.sku.as_str()).collect();
        skus.sort_unstable();
        skus.dedup();
        skus
    };
    if let Some(bad) = skus.iter().find(|s| !shopkit::valid_sku(s)) {
        return Err(Error::unprocessable(format!("unknown product {bad}")));
    }
    let mut calls = vec![Call::get(format!(
        "http://users/v1/users/{}",
        shopkit::encode_segment(user_id)
    ))];
    calls.extend(
        skus.iter()
            .map(|sku| Call::get(format!("http://catalog/v1/products/{sku}"))),
    );
    let mut outcomes = client::fetch_all(&calls).into_iter();
    let user = outcomes.next().unwrap_or_else(|| Err("no outcome".into()));
    if client::expect_json::<serde::de::IgnoredAny>(user, "users")?.is_none() {
        return Err(Error::unprocessable("unknown user"));
    }
    let mut prices = BTreeMap::new();
    for (sku, outcome) in skus.iter().zip(outcomes) {
        match client::expect_json::<Product>(outcome, "catalog")? {
            Some(product) => prices.insert(*sku, product.price_cents),
            None => return Err(Error::unprocessable(format!("unknown product {sku}"))),
        };
    }

    let mut items = Vec::with_capacity(new.items.len());
    let mut total_cents: u64 = 0;
    for (item, quantity) in new.items.iter().zip(quantities) {
        let price_cents = prices.get(item.sku.as_str()).copied().unwrap_or_default();
        total_cents = price_cents
            .checked_mul(u64::from(quantity))
            .and_then(|line| total_cents.checked_add(line))
            .ok_or_else(|| Error::bad_request("order total is too large"))?;
        items.push(OrderItem {
            sku: item.sku.clone(),
            quantity,
            price_cents,
        });
    }

    let bucket = Bucket::open(ORDERS)?;
    let order = Order {
        id: format!("o{}", bucket.increment("next-id", 1)?),
        user_id: user_id.to_string(),
        items,
        total_cents,
        status: OrderStatus::Pending,
        reason: None,
    };
    // The event first: once `orders.created` is out, the saga runs and this
    // component's own durable subscription stores the order even if the host dies
    // before the store below. Storing first would leave a `pending` order nobody
    // hears of if the host died before the publish.
    record(&order)?;
    events::publish(saga::ORDERS_CREATED, &order)?;
    store_new_or_warn(&bucket, &order);
    Ok(placed(&order))
}

impl MessageHandler for Orders {
    fn handle(subject: &str, body: &[u8]) -> Result<()> {
        if subject == saga::ORDERS_CREATED {
            // Our own announcement: store the order unless placing it already did.
            // Whatever the event says, an order starts `pending`: only the saga's
            // own events move it on.
            let mut order: Order = shopkit::from_json(body)?;
            if order.id.is_empty() || order.user_id.is_empty() || order.items.is_empty() {
                return Err(Error::bad_request(
                    "orders.created without id, user or items",
                ));
            }
            order.status = OrderStatus::Pending;
            order.reason = None;
            return store_new(&Bucket::open(ORDERS)?, &order);
        }
        let status = match subject {
            saga::INVENTORY_REJECTED => OrderStatus::Rejected,
            saga::PAYMENTS_COMPLETED => OrderStatus::Confirmed,
            saga::PAYMENTS_FAILED => OrderStatus::Cancelled,
            other => return Err(Error::bad_request(format!("unexpected subject {other}"))),
        };
        let event: Order = shopkit::from_json(body)?;
        let reason = event.reason.filter(|_| status != OrderStatus::Confirmed);
        let bucket = Bucket::open(ORDERS)?;
        let outcome = bucket.update(&order_key(&event.id), |order: Option<Order>| {
            let Some(mut order) = order else {
                // Not stored yet (its own `orders.created` is still on its way): a
                // 503, so the event is redelivered after the backoff. An id that never
                // comes ends in the dead-letter subject after `max_deliver`.
                return Err(Error::unavailable(format!(
                    "order {} is not stored yet",
                    event.id
                )));
            };
            Ok(if order.status == OrderStatus::Pending {
                order.status = status;
                order.reason.clone_from(&reason);
                (Change::Put(order.clone()), Some(order))
            } else if order.status == status {
                // A redelivery: announce the recorded outcome again.
                (Change::Keep, Some(order))
            } else {
                (Change::Keep, None)
            })
        })?;
        match outcome {
            Some(order) => events::publish(status.subject(), &order),
            None => {
                shopkit::log::warn(
                    "orders",
                    &format!(
                        "{subject} for order {} ignored: its status is already final",
                        event.id
                    ),
                );
                Ok(())
            }
        }
    }
}

/// Stores a new order unless one with its id is already stored (by the POST that
/// placed it, or by its own `orders.created` event, whichever comes first; by then
/// the saga may have moved it on, and it must stay where the saga put it).
fn store_new(bucket: &Bucket, order: &Order) -> Result<()> {
    bucket.insert_new(&order_key(&order.id), order).map(drop)
}

/// [`store_new`] after the announcement: a failure is only logged, because the
/// order's own event stores it (retried until it is).
fn store_new_or_warn(bucket: &Bucket, order: &Order) {
    if let Err(e) = store_new(bucket, order) {
        shopkit::log::warn(
            "orders",
            &format!("order {} not stored yet ({e}); its event will", order.id),
        );
    }
}

fn order_key(id: &str) -> String {
    format!("order/{id}")
}

/// Milliseconds since the Unix epoch (wall clock).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

shopkit::support::wasip2::http::proxy::export!(Orders with_types_in shopkit::support::wasip2);
shopkit::export_message_handler!(Orders);
