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
//! A reservation takes stock first and then records the reservation; a
//! release marks the reservation released first and then gives the stock
//! back. A crash between the two writes can so only leave stock unavailable
//! (logged with the order id), never sell it twice.

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
    AlreadyReleased, OutOfStock, RESERVATION_PREFIX, Release, Reservation, State, Stock,
    reservation_key, stock_key,
};

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
    /// One lock per order id being reserved in this process: concurrent
    /// requests for the same order would otherwise each take its stock before
    /// one of them records the reservation, and a request could be refused
    /// for stock its own duplicates held for a moment.
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
            reserving: Arc::default(),
        }
    }

    /// Sets a SKU's stock, whatever it was (an administrator's count).
    pub async fn set_stock(&self, sku: &str, available: u64) -> Result<Stock, StoreError> {
        let stock = Stock { available };
        self.state
            .put(&self.keyspace, stock_key(sku), to_json(&stock))
            .await?;
        Ok(stock)
    }

    /// A SKU's stock, or `None` if it was never set.
    pub async fn stock(&self, sku: &str) -> Result<Option<Stock>, StoreError> {
        Ok(self.read(&stock_key(sku)).await?.map(|(stock, _)| stock))
    }

    /// An order's reservation, if it has one.
    pub async fn reservation(&self, order_id: &str) -> Result<Option<Reservation>, StoreError> {
        Ok(self.read(&reservation_key(order_id)).await?.map(|(r, _)| r))
    }

    /// Reserves `qty` of `sku` for `order_id`, once per order: a retry with
    /// the same SKU and quantity gets the reservation made before.
    pub async fn reserve(
        &self,
        order_id: &str,
        sku: &str,
        qty: u64,
    ) -> Result<Reservation, ReserveError> {
        let lock = Arc::clone(
            self.reserving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(order_id.to_owned())
                .or_default(),
        );
        let result = {
            let _held = lock.lock().await;
            self.reserve_once(order_id, sku, qty).await
        };
        let mut locks = self.reserving.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(order_id);
        }
        result
    }

    async fn reserve_once(
        &self,
        order_id: &str,
        sku: &str,
        qty: u64,
    ) -> Result<Reservation, ReserveError> {
        if let Some(existing) = self.reservation(order_id).await? {
            return retried(existing, sku, qty);
        }
        if let Err(out) = self.change_stock(sku, |s| s.take(qty)).await? {
            // A duplicate in another process may have recorded the order's
            // reservation meanwhile (with the stock that is now missing).
            if let Some(existing) = self.reservation(order_id).await? {
                return retried(existing, sku, qty);
            }
            return Err(ReserveError::OutOfStock(out));
        }
        let reservation =
            Reservation::hold(order_id, sku, qty, SystemTime::now(), self.reservation_ttl);
        let key = reservation_key(order_id);
        match self
            .state
            .create(&self.keyspace, &key, to_json(&reservation))
            .await
        {
            Ok(_) => Ok(reservation),
            Err(Error::Conflict { .. }) => {
                // A concurrent request for the same order recorded its
                // reservation first: ours is not needed, nor its stock.
                self.give_back(sku, qty).await?;
                let existing = self.reservation(order_id).await?.ok_or_else(|| {
                    StoreError::from(Error::Conflict {
                        current_revision: 0,
                        message: format!("{key} was created and deleted meanwhile"),
                    })
                })?;
                retried(existing, sku, qty)
            }
            Err(e) => {
                tracing::error!(
                    order_id, sku, qty, error = %e,
                    "stock was taken but the reservation may not be recorded; \
                     if it is not, the stock stays unavailable until corrected"
                );
                Err(e.into())
            }
        }
    }

    /// Confirms an order's reservation: its stock stays taken. Confirming
    /// twice is fine.
    pub async fn confirm(&self, order_id: &str) -> Result<Reservation, ConfirmError> {
        let key = reservation_key(order_id);
        loop {
            let Some((current, revision)) = self.read::<Reservation>(&key).await? else {
                return Err(ConfirmError::NotFound);
            };
            let confirmed = match current.confirmed() {
                Ok(Some(confirmed)) => confirmed,
                Ok(None) => return Ok(current),
                Err(released) => return Err(ConfirmError::Released(released)),
            };
            match self.write_if(&key, &confirmed, revision).await {
                Ok(()) => return Ok(confirmed),
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
                Ok(()) => break released,
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
            let (stock, revision) = current.unwrap_or((Stock { available: 0 }, 0));
            let new = match change(stock) {
                Ok(new) => new,
                Err(refused) => return Ok(Err(refused)),
            };
            match self.write_if(&key, &new, revision).await {
                Ok(()) => return Ok(Ok(new)),
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

    /// Writes `value` at `key` if the key is at `revision` (0: if absent).
    fn write_if<'a, T: Serialize>(
        &'a self,
        key: &'a str,
        value: &T,
        revision: u64,
    ) -> impl Future<Output = Result<(), Error>> + 'a {
        let value = to_json(value);
        async move {
            if revision == 0 {
                self.state.create(&self.keyspace, key, value).await?;
            } else {
                self.state
                    .put(&self.keyspace, key, value)
                    .if_revision(revision)
                    .await?;
            }
            Ok(())
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

/// The answer to a reservation request for an order that has one already.
fn retried(existing: Reservation, sku: &str, qty: u64) -> Result<Reservation, ReserveError> {
    if !existing.is_same_request(sku, qty) {
        Err(ReserveError::Mismatch(Box::new(existing)))
    } else if existing.state == State::Released {
        Err(ReserveError::Released(Box::new(existing)))
    } else {
        Ok(existing)
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // The model's types are plain data: serializing cannot fail.
    serde_json::to_vec(value).expect("the inventory's types serialize to JSON")
}
