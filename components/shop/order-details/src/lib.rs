//! order-details: the API composer. One page about an order, built from five
//! services through the mesh; it owns no data. See docs/SHOP.md.
//!
//! - `GET /v1/order-details/{id}`: fetches the order from `orders` (404 → 404, any
//!   other failure → 503), then in parallel the user (`users`), the payment
//!   (`payments`), the reservation (`inventory`) and the reviews of each distinct
//!   sku (`analytics`), and answers 200
//!   `{"order", "user", "payment", "inventory", "reviews": [{"sku", "rating",
//!   "reviews"}], "degraded": [...]}`.
//!
//! How each part degrades:
//!
//! - a 404 means the part does not exist (yet): `null`, not degraded (a payment is
//!   404 until the saga reaches payments);
//! - a reviews answer that is the mesh's fallback (`wasmhive-fallback: 1`, the
//!   manifest's `{"rating":null,"reviews":0}`) is used as is, with the sku added, and
//!   `reviews` is named in `degraded`;
//! - any other failure (5xx, timeout, open circuit, bad JSON) makes the part `null`
//!   (for a review: `{"sku", "rating": null, "reviews": null}`) and names it in
//!   `degraded` (`user`, `payment`, `inventory`, `reviews`).
//!
//! The page never fails because analytics is slow or down: the manifest gives the
//! analytics call a short timeout, a circuit breaker and the fallback.

use serde::Serialize;
use shopkit::client::{self, Call, Outcome};
use shopkit::http::{Request, Response};
use shopkit::saga::Order;
use shopkit::serde_json::{Map, Value, json};
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result, encode_segment};

/// The page.
#[derive(Serialize)]
struct Details {
    order: Value,
    user: Value,
    payment: Value,
    inventory: Value,
    reviews: Vec<Value>,
    degraded: Vec<&'static str>,
}

struct OrderDetails;

impl Guest for OrderDetails {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("GET", ["v1", "order-details", id]) => details(id),
        _ => Err(shopkit::http::no_route()),
    }
}

fn details(id: &str) -> Result<Response> {
    let order_id = encode_segment(id);
    let order_json: Value =
        client::get_json(&format!("http://orders/v1/orders/{order_id}"), "orders")?
            .ok_or_else(|| Error::not_found(format!("no order {id}")))?;
    let order: Order = shopkit::serde_json::from_value(order_json.clone())
        .map_err(|e| Error::new(502, format!("invalid order from orders: {e}")))?;

    let mut skus: Vec<&str> = order.items.iter().map(|i| i.sku.as_str()).collect();
    skus.sort_unstable();
    skus.dedup();

    let mut calls = vec![
        Call::get(format!(
            "http://users/v1/users/{}",
            encode_segment(&order.user_id)
        )),
        Call::get(format!("http://payments/v1/payments/{order_id}")),
        Call::get(format!("http://inventory/v1/reservations/{order_id}")),
    ];
    calls.extend(skus.iter().map(|sku| {
        Call::get(format!(
            "http://analytics/v1/reviews/{}",
            encode_segment(sku)
        ))
    }));
    let mut outcomes = client::fetch_all(&calls).into_iter();
    let mut next = || outcomes.next().unwrap_or_else(|| Err("no outcome".into()));

    let mut degraded = Vec::new();
    let mut take = |name: &'static str, outcome: Outcome| {
        let (value, ok) = part(outcome);
        if !ok {
            degraded.push(name);
        }
        value
    };
    let user = take("user", next());
    let payment = take("payment", next());
    let inventory = take("inventory", next());

    let mut reviews_degraded = false;
    let reviews = skus
        .iter()
        .map(|sku| {
            let (value, ok) = review(sku, next());
            reviews_degraded |= !ok;
            value
        })
        .collect();
    if reviews_degraded {
        degraded.push("reviews");
    }

    Ok(Response::ok(&Details {
        order: order_json,
        user,
        payment,
        inventory,
        reviews,
        degraded,
    }))
}

/// A part from its call's outcome: the JSON on 200, `null` otherwise; and whether
/// it is whole (a 404 is: the part does not exist).
fn part(outcome: Outcome) -> (Value, bool) {
    match outcome {
        Ok(reply) if reply.status == 200 && !reply.is_fallback() => match reply.json() {
            Ok(value) => (value, true),
            Err(_) => (Value::Null, false),
        },
        Ok(reply) if reply.status == 404 => (Value::Null, true),
        _ => (Value::Null, false),
    }
}

/// The reviews of `sku`, and whether they are the real ones.
fn review(sku: &str, outcome: Outcome) -> (Value, bool) {
    let missing = || json!({ "sku": sku, "rating": null, "reviews": null });
    match outcome {
        Ok(reply) if reply.status == 200 => match reply.json::<Map<String, Value>>() {
            Ok(mut fields) => {
                fields
                    .entry("sku")
                    .or_insert_with(|| Value::String(sku.to_string()));
                (Value::Object(fields), !reply.is_fallback())
            }
            Err(_) => (missing(), false),
        },
        Ok(reply) if reply.status == 404 => (missing(), true),
        _ => (missing(), false),
    }
}

shopkit::support::wasip2::http::proxy::export!(OrderDetails with_types_in shopkit::support::wasip2);

#[cfg(test)]
mod tests {
    use super::*;
    use shopkit::client::Reply;

    fn reply(status: u16, fallback: bool, body: &str) -> Outcome {
        let mut headers = Vec::new();
        if fallback {
            headers.push(("wasmhive-fallback".to_string(), b"1".to_vec()));
        }
        Ok(Reply {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn parts_are_null_when_missing_and_degraded_when_failed() {
        assert_eq!(
            part(reply(200, false, r#"{"id":"u1"}"#)),
            (json!({"id": "u1"}), true)
        );
        assert_eq!(part(reply(404, false, "{}")), (Value::Null, true));
        assert_eq!(part(reply(503, false, "{}")), (Value::Null, false));
        assert_eq!(part(reply(200, true, "{}")), (Value::Null, false));
        assert_eq!(part(reply(200, false, "not json")), (Value::Null, false));
        assert_eq!(part(Err("HttpRequestDenied".into())), (Value::Null, false));
    }

    #[test]
    fn a_fallback_review_is_used_with_its_sku_and_degrades() {
        let (value, ok) = review("book", reply(200, true, r#"{"rating":null,"reviews":0}"#));
        assert_eq!(value, json!({"rating": null, "reviews": 0, "sku": "book"}));
        assert!(!ok);
        let (value, ok) = review(
            "book",
            reply(200, false, r#"{"sku":"book","rating":4.2,"reviews":17}"#),
        );
        assert_eq!(value, json!({"sku": "book", "rating": 4.2, "reviews": 17}));
        assert!(ok);
        let (value, ok) = review("book", reply(504, false, ""));
        assert_eq!(
            value,
            json!({"sku": "book", "rating": null, "reviews": null})
        );
        assert!(!ok);
    }
}
