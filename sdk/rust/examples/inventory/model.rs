//! The inventory's data and rules, without I/O: what is stored under which
//! key, how stock is taken and given back, how a reservation moves between
//! states, and which order events matter.
//!
//! Keyspace `inventory` (locality `global`, so compare-and-set is
//! linearizable across regions):
//!
//! - `stock/<sku>`: `{"available": n, "takes": {"<order_id>": {"claim",
//!   "qty", "at"}}}` (`takes` only while some are not yet accounted for)
//! - `reservation/<order_id>`: `{"reservation_id", "order_id", "sku", "qty",
//!   "expires_at" (RFC 3339), "state" ("pending" | "held" | "confirmed" |
//!   "released" | "refused"), "released_because" ("cancelled" | "expired",
//!   once released), "claim" ({"id", "at"}, while pending), "taken_under"
//!   (the claim whose take holds the stock, once held), "available" (once
//!   refused)}`
//!
//! Every field added since the first version has a default, so what that
//! version stored still reads.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Every stock's key starts with this.
pub const STOCK_PREFIX: &str = "stock/";

/// The key of a SKU's stock.
pub fn stock_key(sku: &str) -> String {
    format!("{STOCK_PREFIX}{sku}")
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

// A SKU's stock and the takes recorded in it.
#[path = "stock.rs"]
mod stock;

pub use stock::{NotTaken, OutOfStock, Stock, Take};

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Claimed: one request (its `claim`) is taking the stock. It becomes
    /// held or refused; duplicates wait for that, and take the claim over
    /// if it goes stale (its holder died).
    Pending,
    /// Stock is taken; it goes back at `expires_at` unless confirmed.
    Held,
    /// The order went through: the stock stays taken (until a cancellation).
    Confirmed,
    /// The stock went back. Final.
    Released,
    /// There was not enough stock: nothing was reserved. Final, so every
    /// duplicate of the request gets the same answer.
    Refused,
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
    /// Pending: who is making it, since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// Held, confirmed or released: the claim under which its stock was
    /// taken (the [`Take`] it accounts for). `None` in what the first
    /// version stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_under: Option<String>,
    /// Refused: the units there were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<u64>,
}

/// A request's claim on making an order's reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Unique per claim: names the request's [`Take`].
    pub id: String,
    /// When it was made (the claimant's clock).
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
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
            claim: None,
            taken_under: None,
            available: None,
        }
    }

    /// A new claim on making the reservation (`expires_at` is provisional:
    /// set again when it is held).
    pub fn pending(order_id: &str, sku: &str, qty: u64, claim: Claim, ttl: Duration) -> Self {
        Reservation {
            state: State::Pending,
            claim: Some(claim.clone()),
            ..Reservation::hold(order_id, sku, qty, claim.at, ttl)
        }
    }

    /// This pending reservation, claimed by `claim` instead.
    pub fn taken_over(&self, claim: Claim) -> Reservation {
        Reservation {
            claim: Some(claim),
            ..self.clone()
        }
    }

    /// Whether it is pending under a claim made at least `timeout` before
    /// `now`: its holder is presumed dead, and another may take it over.
    pub fn is_stale(&self, now: SystemTime, timeout: Duration) -> bool {
        self.state == State::Pending
            && self
                .claim
                .as_ref()
                .is_none_or(|claim| now >= claim.at + timeout)
    }

    /// The reservation made: held from `now` for `ttl`, with the stock taken
    /// under claim `taken_under`.
    pub fn held(&self, taken_under: &str, now: SystemTime, ttl: Duration) -> Reservation {
        Reservation {
            state: State::Held,
            expires_at: now + ttl,
            claim: None,
            taken_under: Some(taken_under.to_owned()),
            ..self.clone()
        }
    }

    /// The reservation refused: `out` is what there was.
    pub fn refused(&self, out: OutOfStock) -> Reservation {
        Reservation {
            state: State::Refused,
            claim: None,
            available: Some(out.available),
            ..self.clone()
        }
    }

    /// Whether stock was taken for it: held, confirmed or released (not
    /// pending, not refused).
    pub fn is_made(&self) -> bool {
        matches!(self.state, State::Held | State::Confirmed | State::Released)
    }

    /// Whether the take under `claim` is the one its stock came from: once
    /// made, it never changes, so this answer is final.
    pub fn accounts_for(&self, claim: &str) -> bool {
        self.is_made() && self.taken_under.as_deref() == Some(claim)
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
    /// due. `None`: nothing to do (already released, confirmed, not due,
    /// or no stock taken: pending or refused).
    pub fn released(&self, why: Release, now: SystemTime) -> Option<Reservation> {
        let releases = match why {
            Release::Cancelled => matches!(self.state, State::Held | State::Confirmed),
            Release::Expired => self.is_due(now),
        };
        releases.then(|| Reservation {
            state: State::Released,
            released_because: Some(why),
            ..self.clone()
        })
    }

    /// The confirmed reservation; `Ok(None)` if there is nothing to write:
    /// it already is confirmed, or it is not made (see
    /// [`Reservation::is_made`]; callers tell those apart first).
    pub fn confirmed(&self) -> Result<Option<Reservation>, AlreadyReleased> {
        match self.state {
            State::Held => Ok(Some(Reservation {
                state: State::Confirmed,
                ..self.clone()
            })),
            State::Confirmed | State::Pending | State::Refused => Ok(None),
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
    fn what_the_first_version_stored_still_reads() {
        let stock: Stock = serde_json::from_str(r#"{"available":5}"#).unwrap();
        assert_eq!(
            stock,
            Stock {
                available: 5,
                ..Stock::default()
            }
        );
        // And an inventory without takes in flight writes just that.
        assert_eq!(serde_json::to_string(&stock).unwrap(), r#"{"available":5}"#);
        let old = r#"{"reservation_id":"res-o-1","order_id":"o-1","sku":"sku-1","qty":2,
            "expires_at":"2025-10-09T08:54:20.000Z","state":"released","released_because":"expired"}"#;
        let r: Reservation = serde_json::from_str(old).unwrap();
        assert_eq!(
            (r.state, r.claim, r.taken_under),
            (State::Released, None, None)
        );
    }

    #[test]
    fn a_claim_becomes_held_or_refused_and_goes_stale_if_left() {
        let ttl = Duration::from_secs(600);
        let claim = Claim {
            id: "c-1".into(),
            at: now(),
        };
        let pending = Reservation::pending("o-1", "sku-1", 2, claim, ttl);
        assert_eq!(pending.state, State::Pending);
        let timeout = Duration::from_secs(5);
        assert!(!pending.is_stale(now() + Duration::from_secs(4), timeout));
        assert!(pending.is_stale(now() + timeout, timeout));
        // Nothing is taken yet: nothing to release, confirm or expire.
        assert!(!pending.is_made());
        assert_eq!(pending.released(Release::Cancelled, now()), None);
        assert_eq!(pending.released(Release::Expired, now() + ttl), None);
        assert_eq!(pending.confirmed(), Ok(None));

        let later = now() + Duration::from_secs(10);
        let again = pending.taken_over(Claim {
            id: "c-2".into(),
            at: later,
        });
        assert!(!again.is_stale(later, timeout));
        // Held from the first claimant's take, which the second one found.
        let held = again.held("c-1", later, ttl);
        assert_eq!((held.state, held.claim.as_ref()), (State::Held, None));
        assert_eq!(held.expires_at, later + ttl);
        assert!(held.accounts_for("c-1") && !held.accounts_for("c-2"));
        let json = serde_json::to_value(&held).unwrap();
        assert_eq!(json["taken_under"], "c-1");
        assert!(json.get("claim").is_none());
        assert!(
            held.released(Release::Cancelled, later)
                .unwrap()
                .accounts_for("c-1")
        );

        let refused = pending.refused(OutOfStock { available: 1 });
        assert_eq!(
            (refused.state, refused.available),
            (State::Refused, Some(1))
        );
        assert!(!refused.is_made() && !refused.accounts_for("c-1"));
        assert_eq!(refused.released(Release::Cancelled, later), None);
        let back: Reservation =
            serde_json::from_value(serde_json::to_value(&refused).unwrap()).unwrap();
        assert_eq!(back, refused);
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
