//! The inventory's data and rules, without I/O: what is stored under which
//! key, how stock is taken and given back, how a reservation moves between
//! states, and which order events matter.
//!
//! Keyspace `inventory` (locality `global`, so compare-and-set is
//! linearizable across regions):
//!
//! - `stock/<sku>`: `{"available": n}`
//! - `reservation/<order_id>`: `{"reservation_id", "order_id", "sku", "qty",
//!   "expires_at" (RFC 3339), "state" ("held" | "confirmed" | "released"),
//!   "released_because" ("cancelled" | "expired", once released)}`

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The key of a SKU's stock.
pub fn stock_key(sku: &str) -> String {
    format!("stock/{sku}")
}

/// Every reservation's key starts with this.
pub const RESERVATION_PREFIX: &str = "reservation/";

/// The key of an order's reservation.
pub fn reservation_key(order_id: &str) -> String {
    format!("{RESERVATION_PREFIX}{order_id}")
}

/// Checks an id (order id or SKU) used in a key: 1..=128 of
/// `A-Z a-z 0-9 - _ .`, so keys stay readable and `/` keeps its meaning.
pub fn check_id(field: &'static str, id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: must be 1..128 characters of A-Z, a-z, 0-9, '-', '_' and '.'"
        ))
    }
}

/// A SKU's stock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// Units that can still be reserved.
    pub available: u64,
}

/// Not enough stock for a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfStock {
    /// What there is.
    pub available: u64,
}

impl Stock {
    /// The stock after taking `qty`, or how much there is if that's too little.
    pub fn take(self, qty: u64) -> Result<Stock, OutOfStock> {
        self.available
            .checked_sub(qty)
            .map(|available| Stock { available })
            .ok_or(OutOfStock {
                available: self.available,
            })
    }

    /// The stock after giving `qty` back.
    pub fn give(self, qty: u64) -> Stock {
        Stock {
            available: self.available.saturating_add(qty),
        }
    }
}

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Stock is taken; it goes back at `expires_at` unless confirmed.
    Held,
    /// The order went through: the stock stays taken (until a cancellation).
    Confirmed,
    /// The stock went back. Final.
    Released,
}

/// Why a reservation's stock went back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// The order was cancelled (an `OrderCancelled` event).
    Cancelled,
    /// It was held past `expires_at` without being confirmed.
    Expired,
}

/// One order's reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Its id (derived from the order id, so a retry gets the same one).
    pub reservation_id: String,
    /// The order it is for: one reservation per order.
    pub order_id: String,
    /// What is reserved.
    pub sku: String,
    /// How many.
    pub qty: u64,
    /// When a held reservation's stock goes back.
    #[serde(with = "rfc3339")]
    pub expires_at: SystemTime,
    /// Held, confirmed or released.
    pub state: State,
    /// Why it was released, once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_because: Option<Release>,
}

/// Why a reservation could not be confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlreadyReleased(pub Option<Release>);

impl Reservation {
    /// A new held reservation that expires `ttl` after `now`.
    pub fn hold(order_id: &str, sku: &str, qty: u64, now: SystemTime, ttl: Duration) -> Self {
        Reservation {
            reservation_id: format!("res-{order_id}"),
            order_id: order_id.to_owned(),
            sku: sku.to_owned(),
            qty,
            expires_at: now + ttl,
            state: State::Held,
            released_because: None,
        }
    }

    /// `expires_at` as stored: RFC 3339, UTC, milliseconds.
    pub fn expires_at_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.expires_at).to_string()
    }

    /// Whether a request for `sku` and `qty` is a retry of this one.
    pub fn is_same_request(&self, sku: &str, qty: u64) -> bool {
        self.sku == sku && self.qty == qty
    }

    /// Whether the expiry sweep should release it at `now`.
    pub fn is_due(&self, now: SystemTime) -> bool {
        self.state == State::Held && now >= self.expires_at
    }

    /// The released reservation, if `why` releases it: a cancellation
    /// releases a held or confirmed one, an expiry only a held one that is
    /// due. `None`: nothing to do (already released, confirmed, not due).
    pub fn released(&self, why: Release, now: SystemTime) -> Option<Reservation> {
        let releases = match why {
            Release::Cancelled => self.state != State::Released,
            Release::Expired => self.is_due(now),
        };
        releases.then(|| Reservation {
            state: State::Released,
            released_because: Some(why),
            ..self.clone()
        })
    }

    /// The confirmed reservation; `Ok(None)` if it already is confirmed.
    pub fn confirmed(&self) -> Result<Option<Reservation>, AlreadyReleased> {
        match self.state {
            State::Held => Ok(Some(Reservation {
                state: State::Confirmed,
                ..self.clone()
            })),
            State::Confirmed => Ok(None),
            State::Released => Err(AlreadyReleased(self.released_because)),
        }
    }
}

/// An event on topic `orders`, as the orders service publishes it:
/// `{"type": "OrderPlaced" | "OrderCancelled", "order_id", "sku", "qty",
/// "region"}`. Only `type` and `order_id` are needed here: a cancellation
/// releases what the reservation record says.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OrderEvent {
    /// The event's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The order.
    pub order_id: String,
    /// The SKU ordered.
    #[serde(default)]
    pub sku: String,
    /// How many.
    #[serde(default)]
    pub qty: u64,
    /// Where the order was placed.
    #[serde(default)]
    pub region: String,
}

/// The topic the orders service publishes to.
pub const ORDERS_TOPIC: &str = "orders";

/// The event type that releases stock.
pub const ORDER_CANCELLED: &str = "OrderCancelled";

impl OrderEvent {
    /// Parses an `orders` payload. `Ok(None)` for the types inventory ignores
    /// (`OrderPlaced`, and any added later).
    pub fn cancellation(payload: &[u8]) -> Result<Option<OrderEvent>, serde_json::Error> {
        let event: OrderEvent = serde_json::from_slice(payload)?;
        Ok((event.kind == ORDER_CANCELLED).then_some(event))
    }
}

/// `SystemTime` as an RFC 3339 string in UTC with milliseconds, which Go's
/// `time.Time` and most JSON tools read as they are.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_760_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    #[test]
    fn stock_is_taken_only_when_there_is_enough() {
        let stock = Stock { available: 5 };
        assert_eq!(stock.take(5), Ok(Stock { available: 0 }));
        assert_eq!(stock.take(6), Err(OutOfStock { available: 5 }));
        assert_eq!(stock.give(2), Stock { available: 7 });
    }

    #[test]
    fn a_reservation_round_trips_as_json_with_an_rfc3339_expiry() {
        let r = Reservation::hold("o-1", "sku-1", 2, now(), Duration::from_secs(60));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["reservation_id"], "res-o-1");
        assert_eq!(json["state"], "held");
        assert_eq!(json["expires_at"], "2025-10-09T08:54:20.000Z");
        assert!(json.get("released_because").is_none());
        let back: Reservation = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_held_reservation_expires_only_when_due() {
        let r = Reservation::hold("o-1", "sku-1", 2, now(), Duration::from_secs(60));
        assert_eq!(r.released(Release::Expired, now()), None);
        let later = now() + Duration::from_secs(60);
        let released = r.released(Release::Expired, later).unwrap();
        assert_eq!(released.state, State::Released);
        assert_eq!(released.released_because, Some(Release::Expired));
        // Released once: releasing again does nothing.
        assert_eq!(released.released(Release::Expired, later), None);
        assert_eq!(released.released(Release::Cancelled, later), None);
    }

    #[test]
    fn a_confirmed_reservation_does_not_expire_but_a_cancellation_releases_it() {
        let r = Reservation::hold("o-1", "sku-1", 2, now(), Duration::from_secs(1));
        let confirmed = r.confirmed().unwrap().unwrap();
        assert_eq!(confirmed.confirmed(), Ok(None));
        let much_later = now() + Duration::from_secs(3600);
        assert!(!confirmed.is_due(much_later));
        assert_eq!(confirmed.released(Release::Expired, much_later), None);
        let cancelled = confirmed.released(Release::Cancelled, now()).unwrap();
        assert_eq!(
            cancelled.confirmed(),
            Err(AlreadyReleased(Some(Release::Cancelled)))
        );
    }

    #[test]
    fn only_order_cancelled_events_release_stock() {
        let cancelled = br#"{"type":"OrderCancelled","order_id":"o-1","sku":"sku-1","qty":2,"region":"eu-west"}"#;
        let event = OrderEvent::cancellation(cancelled).unwrap().unwrap();
        assert_eq!(
            (event.order_id.as_str(), event.sku.as_str(), event.qty),
            ("o-1", "sku-1", 2)
        );
        let placed =
            br#"{"type":"OrderPlaced","order_id":"o-1","sku":"sku-1","qty":2,"region":"eu-west"}"#;
        assert_eq!(OrderEvent::cancellation(placed).unwrap(), None);
        assert!(OrderEvent::cancellation(b"{\"type\":\"OrderCancelled\"}").is_err());
        assert!(OrderEvent::cancellation(b"not json").is_err());
    }

    #[test]
    fn ids_in_keys_are_checked() {
        assert!(check_id("sku", "sku-1_A.b").is_ok());
        assert!(check_id("sku", "").is_err());
        assert!(check_id("order_id", "a/b").is_err());
        assert!(check_id("order_id", &"x".repeat(129)).is_err());
        assert_eq!(stock_key("sku-1"), "stock/sku-1");
        assert_eq!(reservation_key("o-1"), "reservation/o-1");
    }
}
