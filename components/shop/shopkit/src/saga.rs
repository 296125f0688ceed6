//! The order saga's shared vocabulary: the order as it travels in every event body,
//! and the subjects (docs/SHOP.md, "The saga").
//!
//! Each service keeps its own data; what they share is this event contract. Readers
//! are tolerant: unknown fields are ignored, and `status` defaults to `pending`.

use serde::{Deserialize, Serialize};

/// `orders`: an order was placed (status `pending`).
pub const ORDERS_CREATED: &str = "orders.created";
/// `orders`: payment went through.
pub const ORDERS_CONFIRMED: &str = "orders.confirmed";
/// `orders`: not enough stock.
pub const ORDERS_REJECTED: &str = "orders.rejected";
/// `orders`: payment declined, stock released.
pub const ORDERS_CANCELLED: &str = "orders.cancelled";
/// `inventory`: every item is reserved.
pub const INVENTORY_RESERVED: &str = "inventory.reserved";
/// `inventory`: some item is short; nothing stays reserved.
pub const INVENTORY_REJECTED: &str = "inventory.rejected";
/// `inventory`: a reservation was given back after a failed payment.
pub const INVENTORY_RELEASED: &str = "inventory.released";
/// `payments`: the order was charged.
pub const PAYMENTS_COMPLETED: &str = "payments.completed";
/// `payments`: the charge was declined.
pub const PAYMENTS_FAILED: &str = "payments.failed";

/// An order: the body of `GET /v1/orders/{id}` and of every saga event (events on
/// rejections and failures carry `reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// `o<n>`.
    pub id: String,
    /// The user who placed it.
    pub user_id: String,
    /// What was ordered, priced when the order was placed.
    pub items: Vec<OrderItem>,
    /// Sum of quantity × price over the items.
    pub total_cents: u64,
    /// Where the order is in the saga.
    #[serde(default)]
    pub status: OrderStatus,
    /// Why the order (or this step) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Order {
    /// The same order with `reason` set (for a rejection or failure event).
    pub fn with_reason(&self, reason: impl Into<String>) -> Order {
        Order {
            reason: Some(reason.into()),
            ..self.clone()
        }
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    /// The product.
    pub sku: String,
    /// How many, at least 1.
    pub quantity: u32,
    /// The unit price when the order was placed.
    pub price_cents: u64,
}

/// An order's status: `pending`, then one final status that never changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Placed; the saga is running.
    #[default]
    Pending,
    /// Stock reserved and payment completed.
    Confirmed,
    /// Not enough stock.
    Rejected,
    /// Payment declined.
    Cancelled,
}

impl OrderStatus {
    /// Whether this status is final.
    pub fn is_final(self) -> bool {
        self != OrderStatus::Pending
    }

    /// The lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The final status an `orders.*` outcome subject announces, if it is one.
    pub fn from_outcome_subject(subject: &str) -> Option<OrderStatus> {
        match subject {
            ORDERS_CONFIRMED => Some(OrderStatus::Confirmed),
            ORDERS_REJECTED => Some(OrderStatus::Rejected),
            ORDERS_CANCELLED => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }

    /// The `orders.*` subject announcing this status.
    pub fn subject(self) -> &'static str {
        match self {
            OrderStatus::Pending => ORDERS_CREATED,
            OrderStatus::Confirmed => ORDERS_CONFIRMED,
            OrderStatus::Rejected => ORDERS_REJECTED,
            OrderStatus::Cancelled => ORDERS_CANCELLED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_round_trips_and_omits_missing_reason() {
        let order = Order {
            id: "o1".into(),
            user_id: "u1".into(),
            items: vec![OrderItem {
                sku: "book".into(),
                quantity: 2,
                price_cents: 1250,
            }],
            total_cents: 2500,
            status: OrderStatus::Pending,
            reason: None,
        };
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(
            json,
            r#"{"id":"o1","user_id":"u1","items":[{"sku":"book","quantity":2,"price_cents":1250}],"total_cents":2500,"status":"pending"}"#
        );
        assert_eq!(serde_json::from_str::<Order>(&json).unwrap(), order);
        let rejected = order.with_reason("short");
        assert!(
            serde_json::to_string(&rejected)
                .unwrap()
                .ends_with(r#""reason":"short"}"#)
        );
    }

    #[test]
    fn outcome_subjects_map_to_final_statuses() {
        for status in [
            OrderStatus::Confirmed,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(
                OrderStatus::from_outcome_subject(status.subject()),
                Some(status)
            );
            assert!(status.is_final());
        }
        assert_eq!(OrderStatus::from_outcome_subject(ORDERS_CREATED), None);
    }
}
