//! Stock and reservations in a `global` keyspace, changed only by
//! compare-and-set, so concurrent requests in any region never oversell.
//!
//! Every change is one read at `Consistency::Strong` and one conditional
//! write (`put(..).if_revision(r)`, or `create` for a key not there yet),
//! repeated when another writer got in first (`Error::Conflict`). Only a
//! conflict is retried: after an ambiguous failure (a timeout, the agent
//! gone) the write may have been applied, and writing again could count it
//! twice, so the error goes back to the caller.
//!
//! Reserving (claim first) and settling the takes of stock that crashed
//! claimants left live in [`claims`].
//!
//! A release marks the reservation released first and then gives the
//! stock back. A crash between the two writes can so only leave stock
//! unavailable (logged with the order id), never sell it twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use meridian::state::StateClient;
use meridian::{Consistency, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex as AsyncMutex;

use crate::model::{
    AlreadyReleased, OutOfStock, RESERVATION_PREFIX, Release, Reservation, Stock, reservation_key,
    stock_key,
};

// A child module, so that it works on the inventory's private parts.
#[path = "claims.rs"]
mod claims;

/// How long a claim may stay pending before a duplicate takes it over, by
/// default: far longer than a claimant needs to take stock and write once
/// (a few global round trips), short enough that an order whose claimant
/// died is finished by the next retry.
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of the store itself (not a business outcome).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The agent refused or could not make the call.
    #[error(transparent)]
    Meridian(#[from] Error),
    /// A stored value is not what this service writes.
    #[error("{key} does not hold valid JSON for it: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        source: serde_json::Error,
    },
}

/// Why a reservation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Not enough stock.
    #[error("out of stock: {} available", .0.available)]
    OutOfStock(OutOfStock),
    /// The order already has a reservation, for another SKU or quantity.
    #[error("order {} already reserved {} x {}", .0.order_id, .0.qty, .0.sku)]
    Mismatch(Box<Reservation>),
    /// The order's reservation was released (expired or cancelled).
    #[error("the reservation of order {} was released", .0.order_id)]
    Released(Box<Reservation>),
    /// Another request for the order is still making its reservation, and
    /// did not finish (nor go stale) while this one waited. Retry.
    #[error("order {0} is being reserved by another request")]
    InProgress(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for ReserveError {
    fn from(e: Error) -> Self {
        ReserveError::Store(e.into())
    }
}

/// Why a confirmation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// The order has no reservation.
    #[error("no reservation for this order")]
    NotFound,
    /// It was released before it was confirmed.
    #[error("the reservation was released")]
    Released(AlreadyReleased),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The inventory's state: stock per SKU and reservations per order, in one
/// `global` keyspace. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inventory {
    state: StateClient,
    keyspace: String,
    reservation_ttl: Duration,
    claim_timeout: Duration,
    /// One lock per order id being reserved in this process: duplicates in
    /// one process then wait here rather than polling the order's claim.
    /// Duplicates in other processes are kept apart by the claim alone.
    reserving: Arc<StdMutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

impl Inventory {
    /// The inventory kept in `keyspace` (which must be `global`), whose
    /// reservations are held for `reservation_ttl` unless confirmed.
    pub fn new(state: StateClient, keyspace: impl Into<String>, reservation_ttl: Duration) -> Self {
        Inventory {
            state,
            keyspace: keyspace.into(),
            reservation_ttl,
            claim_timeout: DEFAULT_CLAIM_TIMEOUT,
            reserving: Arc::default(),
        }
    }

    /// The same inventory, taking over claims left pending for `timeout`
    /// (instead of [`DEFAULT_CLAIM_TIMEOUT`]).
    pub fn with_claim_timeout(self, timeout: Duration) -> Self {
        Inventory {
            claim_timeout: timeout,
            ..self
        }
    }

    /// Sets a SKU's available units, whatever they were (an administrator's
    /// count). Takes in flight are kept.
    pub async fn set_stock(&self, sku: &str, available: u64) -> Result<Stock, StoreError> {
        let set = self
            .change_stock(sku, |stock| {
                Ok::<_, Infallible>(Stock { available, ..stock })
            })
            .await?;
        match set {
            Ok(stock) => Ok(stock),
            Err(never) => match never {},
        }
    }

    /// A SKU's stock, or `None` if it was never set.
    pub async fn stock(&self, sku: &str) -> Result<Option<Stock>, StoreError> {
        Ok(self.read(&stock_key(sku)).await?.map(|(stock, _)| stock))
    }

    /// An order's reservation, if it has one.
    pub async fn reservation(&self, order_id: &str) -> Result<Option<Reservation>, StoreError> {
        Ok(self.read(&reservation_key(order_id)).await?.map(|(r, _)| r))
    }

    /// Confirms an order's reservation: its stock stays taken. Confirming
    /// twice is fine.
    pub async fn confirm(&self, order_id: &str) -> Result<Reservation, ConfirmError> {
        let key = reservation_key(order_id);
        loop {
            let Some((current, revision)) = self
                .read::<Reservation>(&key)
                .await?
                .filter(|(r, _)| r.is_made())
            else {
                // Pending or refused: no reservation (yet) to confirm.
                return Err(ConfirmError::NotFound);
            };
            let confirmed = match current.confirmed() {
                Ok(Some(confirmed)) => confirmed,
                Ok(None) => return Ok(current),
                Err(released) => return Err(ConfirmError::Released(released)),
            };
            match self.write_if(&key, &confirmed, revision).await {
                Ok(_) => return Ok(confirmed),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(StoreError::from(e).into()),
            }
        }
    }

    /// Releases an order's reservation and gives its stock back, exactly
    /// once however often (and wherever) it is called. Resolves to the
    /// released reservation if this call released it, `None` if there was
    /// nothing to release (no reservation, already released, or for
    /// [`Release::Expired`] confirmed or not due).
    pub async fn release(
        &self,
        order_id: &str,
        why: Release,
    ) -> Result<Option<Reservation>, StoreError> {
        let key = reservation_key(order_id);
        let released = loop {
            let Some((current, revision)) = self.read::<Reservation>(&key).await? else {
                return Ok(None);
            };
            let Some(released) = current.released(why, SystemTime::now()) else {
                return Ok(None);
            };
            // Whoever moves the record to released gives the stock back:
            // one writer wins this compare-and-set.
            match self.write_if(&key, &released, revision).await {
                Ok(_) => break released,
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let qty = released.qty;
        if let Err(e) = self.give_back(&released.sku, qty).await {
            tracing::error!(
                order_id, sku = released.sku, qty, error = %e,
                "the reservation is released but its stock may not be given back"
            );
            return Err(e);
        }
        Ok(Some(released))
    }

    /// Releases every held reservation past its expiry; resolves to how many
    /// this call released. Safe to run in many instances at once.
    pub async fn release_expired(&self) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let mut due = Vec::new();
        // An eventual scan finds the candidates; each release then reads
        // the reservation strongly before changing it.
        let mut entries = std::pin::pin!(
            self.state
                .scan(&self.keyspace, RESERVATION_PREFIX)
                .limit(500)
                .stream()
        );
        while let Some(entry) = entries.try_next().await? {
            match serde_json::from_slice::<Reservation>(&entry.value) {
                Ok(r) if r.is_due(now) => due.push(r.order_id),
                Ok(_) => {}
                Err(e) => tracing::warn!(key = entry.key, error = %e, "skipping a bad reservation"),
            }
        }
        let mut released = 0;
        for order_id in due {
            if self.release(&order_id, Release::Expired).await?.is_some() {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Changes a SKU's stock by compare-and-set: `change` gets the current
    /// stock (0 if never set) and returns the new one, or refuses. Repeated
    /// while another writer gets in first.
    async fn change_stock<E>(
        &self,
        sku: &str,
        change: impl Fn(Stock) -> Result<Stock, E>,
    ) -> Result<Result<Stock, E>, StoreError> {
        let key = stock_key(sku);
        loop {
            let current = self.read::<Stock>(&key).await?;
            let (stock, revision) = current.unwrap_or_default();
            let new = match change(stock) {
                Ok(new) => new,
                Err(refused) => return Ok(Err(refused)),
            };
            match self.write_if(&key, &new, revision).await {
                Ok(_) => return Ok(Ok(new)),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Adds `qty` back to a SKU's stock.
    async fn give_back(&self, sku: &str, qty: u64) -> Result<Stock, StoreError> {
        match self
            .change_stock(sku, |s| Ok::<_, Infallible>(s.give(qty)))
            .await?
        {
            Ok(stock) => Ok(stock),
            Err(never) => match never {},
        }
    }

    /// Writes `value` at `key` if the key is at `revision` (0: if absent);
    /// resolves to the key's new revision.
    fn write_if<'a, T: Serialize>(
        &'a self,
        key: &'a str,
        value: &T,
        revision: u64,
    ) -> impl Future<Output = Result<u64, Error>> + 'a {
        let value = to_json(value);
        async move {
            let written = if revision == 0 {
                self.state.create(&self.keyspace, key, value).await?
            } else {
                self.state
                    .put(&self.keyspace, key, value)
                    .if_revision(revision)
                    .await?
            };
            Ok(written.revision)
        }
    }

    /// A key's value and revision, read strongly; `None` if absent.
    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        match self
            .state
            .get(&self.keyspace, key, Consistency::Strong)
            .await
        {
            Ok(read) => serde_json::from_slice(&read.entry.value)
                .map(|value| Some((value, read.entry.revision)))
                .map_err(|source| StoreError::Corrupt {
                    key: key.to_owned(),
                    source,
                }),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // The model's types are plain data: serializing cannot fail.
    serde_json::to_vec(value).expect("the inventory's types serialize to JSON")
}
