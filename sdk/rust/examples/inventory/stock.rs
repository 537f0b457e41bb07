//! A SKU's stock, and the takes of it recorded for orders: an order's stock
//! is taken at most once at a time, and a take no reservation uses is given
//! back once.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::rfc3339;

/// A SKU's stock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// Units that can still be reserved.
    pub available: u64,
    /// The stock taken for orders whose reservation record does not account
    /// for it yet, by order id. An entry is written in the same
    /// compare-and-set that takes the units, so whoever finishes an order's
    /// reservation (its first claimant, or one that took a stale claim over)
    /// can tell whether its stock is taken already, and the units of a take
    /// no reservation uses are given back once (see [`Stock::settled`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub takes: BTreeMap<String, Take>,
}

/// Stock taken for one order under one claim (see [`Claim`](super::Claim)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Take {
    /// The claim whose holder took it.
    pub claim: String,
    /// How many units.
    pub qty: u64,
    /// When.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
}

/// Why [`Stock::take_for`] took nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// The order's stock is taken already (by this take, not accounted for
    /// yet).
    Taken(Take),
    /// Not enough stock.
    OutOfStock(OutOfStock),
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
        match self.available.checked_sub(qty) {
            Some(available) => Ok(Stock { available, ..self }),
            None => Err(OutOfStock {
                available: self.available,
            }),
        }
    }

    /// The stock after giving `qty` back.
    pub fn give(self, qty: u64) -> Stock {
        Stock {
            available: self.available.saturating_add(qty),
            ..self
        }
    }

    /// The stock after taking `qty` for `order_id` under `claim` at `now`,
    /// recorded in [`Stock::takes`]; or, if the order's stock is taken
    /// already, that take: an order's stock is taken at most once at a time.
    pub fn take_for(
        &self,
        order_id: &str,
        claim: &str,
        qty: u64,
        now: SystemTime,
    ) -> Result<Stock, NotTaken> {
        if let Some(taken) = self.takes.get(order_id) {
            return Err(NotTaken::Taken(taken.clone()));
        }
        let mut stock = self.clone().take(qty).map_err(NotTaken::OutOfStock)?;
        stock.takes.insert(
            order_id.to_owned(),
            Take {
                claim: claim.to_owned(),
                qty,
                at: now,
            },
        );
        Ok(stock)
    }

    /// The stock with `order_id`'s take under `claim` settled: its entry
    /// gone, and its units given back if `give_back` (a take no reservation
    /// uses). `None` if there is no such take (settled already, or the
    /// order's take is another claim's), so units come back at most once.
    pub fn settled(&self, order_id: &str, claim: &str, give_back: bool) -> Option<Stock> {
        let take = self.takes.get(order_id).filter(|t| t.claim == claim)?;
        let mut stock = if give_back {
            self.clone().give(take.qty)
        } else {
            self.clone()
        };
        stock.takes.remove(order_id);
        Some(stock)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: Duration = Duration::from_secs(1_760_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    #[test]
    fn stock_is_taken_only_when_there_is_enough() {
        let stock = |available| Stock {
            available,
            ..Stock::default()
        };
        assert_eq!(stock(5).take(5), Ok(stock(0)));
        assert_eq!(stock(5).take(6), Err(OutOfStock { available: 5 }));
        assert_eq!(stock(5).give(2), stock(7));
    }

    #[test]
    fn an_orders_stock_is_taken_once_and_settled_once() {
        let stock = Stock {
            available: 3,
            ..Stock::default()
        };
        let taken = stock.take_for("o-1", "c-1", 2, now()).unwrap();
        assert_eq!(taken.available, 1);
        // A second claimant finds the take instead of taking again.
        match taken.take_for("o-1", "c-2", 2, now()) {
            Err(NotTaken::Taken(t)) => assert_eq!((t.claim.as_str(), t.qty), ("c-1", 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            taken.take_for("o-2", "c-3", 2, now()),
            Err(NotTaken::OutOfStock(OutOfStock { available: 1 }))
        );
        // Accounted for: the entry goes, the units stay taken.
        let kept = taken.settled("o-1", "c-1", false).unwrap();
        assert_eq!(
            kept,
            Stock {
                available: 1,
                ..Stock::default()
            }
        );
        // Used by no reservation: the units come back, once.
        let back = taken.settled("o-1", "c-1", true).unwrap();
        assert_eq!(
            back,
            Stock {
                available: 3,
                ..Stock::default()
            }
        );
        assert_eq!(back.settled("o-1", "c-1", true), None);
        assert_eq!(
            taken.settled("o-1", "c-2", true),
            None,
            "another claim's take"
        );
    }
}
