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
//! **Reserving: claim first.** Duplicates of one order's reservation may
//! run at once in several processes (the agent retries a call in another
//! region, the orders service retries after a timeout), so the order is
//! claimed before its stock is touched: `create` of the reservation record
//! in state `pending` lets exactly one request make it. The claimant takes
//! the stock, then turns its claim into `held`, or into `refused` if there
//! was too little (both by compare-and-set at the claim's revision). A
//! duplicate that finds the claim pending waits for that and answers what
//! the record says, so every duplicate gets the same answer: the same
//! reservation, or out of stock. (Taking stock first would let a duplicate
//! see the last unit gone, and no reservation yet, and answer out of stock
//! for an order that has its stock.)
//!
//! **Crashes.** A claim whose holder died must not block its order: a
//! duplicate that finds it pending for longer than the claim timeout takes
//! it over (compare-and-set on its revision, under a claim of its own) and
//! finishes the reservation. The dead holder may or may not have taken the
//! stock, so the take is recorded in the same compare-and-set that takes
//! the units: in the stock record's `takes`, under the order id and the
//! claim's id. Whoever finishes the reservation first looks there: a take
//! already there is used (the record is marked held `taken_under` that
//! claim), never a second one made. An entry goes only once the record is
//! held or refused, so while the order is pending every claimant, old or
//! new, finds the same take. A holder that was only slow finds its
//! claim taken over when it writes: its take, if it made one, is either the
//! one the reservation uses (`taken_under` names its claim), or surplus and
//! given back. Which of the two is final once the record is held or
//! refused, and the entry is removed by the same compare-and-set that gives
//! its units back, so they come back once. Entries are settled by whoever
//! finished the reservation, or else by the background sweep
//! ([`Inventory::settle_takes`]). Clocks decide only when a claim counts as
//! stale: a claim taken over too early (clock skew, a slow holder) costs
//! work, never stock.
//!
//! A release marks the reservation released first and then gives the
//! stock back. A crash between the two writes can so only leave stock
//! unavailable (logged with the order id), never sell it twice.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use meridian::state::StateClient;
use meridian::{Consistency, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::model::{
    AlreadyReleased, Claim, NotTaken, OutOfStock, RESERVATION_PREFIX, Release, Reservation,
    STOCK_PREFIX, State, Stock, Take, reservation_key, stock_key,
};

/// How long a claim may stay pending before a duplicate takes it over, by
/// default: far longer than a claimant needs to take stock and write once
/// (a few global round trips), short enough that an order whose claimant
/// died is finished by the next retry.
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// The first and the longest pause between looks at a pending claim.
const WAIT_FIRST: Duration = Duration::from_millis(25);
const WAIT_MAX: Duration = Duration::from_millis(400);

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

    /// Reserves `qty` of `sku` for `order_id`, once per order: a retry with
    /// the same SKU and quantity gets the reservation made before, or the
    /// same [`ReserveError::OutOfStock`], however many run at once and
    /// wherever. A duplicate that finds the order being reserved waits (up
    /// to about twice the claim timeout, then [`ReserveError::InProgress`]).
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
        let key = reservation_key(order_id);
        // A hang guard: a claim is finished or stale (and then ours) within
        // the claim timeout, unless takeovers keep racing.
        let deadline = Instant::now() + 2 * self.claim_timeout;
        let mut pause = WAIT_FIRST;
        loop {
            let claim = new_claim();
            let (pending, revision) = match self.read::<Reservation>(&key).await? {
                None => {
                    let pending =
                        Reservation::pending(order_id, sku, qty, claim, self.reservation_ttl);
                    match self.write_if(&key, &pending, 0).await {
                        Ok(revision) => (pending, revision),
                        // A duplicate claimed it first: see what it made.
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some((current, revision)) => {
                    if !current.is_same_request(sku, qty) {
                        return Err(ReserveError::Mismatch(Box::new(current)));
                    }
                    if current.state != State::Pending {
                        return answer(current);
                    }
                    if !current.is_stale(SystemTime::now(), self.claim_timeout) {
                        // Its holder is at work: wait for what it makes.
                        if Instant::now() + pause > deadline {
                            return Err(ReserveError::InProgress(order_id.to_owned()));
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(WAIT_MAX);
                        continue;
                    }
                    let taken_over = current.taken_over(claim);
                    match self.write_if(&key, &taken_over, revision).await {
                        Ok(revision) => {
                            tracing::warn!(
                                order_id,
                                stale = ?current.claim,
                                "took over a stale claim on a reservation"
                            );
                            (taken_over, revision)
                        }
                        // Finished, or taken over by another, meanwhile.
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if let Some(made) = self.finish(&key, &pending, revision).await? {
                return Ok(made);
            }
            // The claim was taken over while we worked: the record says
            // what became of the order.
        }
    }

    /// Makes the reservation `pending` claims, as the holder of its claim at
    /// `revision`: takes the stock (or finds it taken for the order under an
    /// earlier claim, and uses that), then marks the claim held, or refused
    /// if there is too little. `Ok(None)` if the claim was taken over
    /// meanwhile (the record changed): the caller reads it again.
    async fn finish(
        &self,
        key: &str,
        pending: &Reservation,
        revision: u64,
    ) -> Result<Option<Reservation>, ReserveError> {
        let Reservation {
            order_id, sku, qty, ..
        } = pending;
        let claim = pending
            .claim
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let taken = self
            .change_stock(sku, |stock| {
                stock.take_for(order_id, &claim, *qty, SystemTime::now())
            })
            .await;
        let done = match taken {
            Ok(Ok(_)) => pending.held(&claim, SystemTime::now(), self.reservation_ttl),
            Ok(Err(NotTaken::Taken(Take { claim: under, .. }))) => {
                pending.held(&under, SystemTime::now(), self.reservation_ttl)
            }
            Ok(Err(NotTaken::OutOfStock(out))) => pending.refused(out),
            Err(e) => {
                tracing::error!(
                    order_id, sku, qty, error = %e,
                    "the order is claimed and its stock may be taken; a retry takes the \
                     claim over once it is stale and finishes the reservation"
                );
                return Err(e.into());
            }
        };
        match self.write_if(key, &done, revision).await {
            Ok(_) => {}
            Err(Error::Conflict { .. }) => {
                // Taken over: a take of ours is either what the reservation
                // uses or surplus, and the record says which (or will: if
                // it is still pending, its holder finds our take and uses it).
                if let Err(e) = self.settle_take(sku, order_id, &claim).await {
                    tracing::warn!(order_id, sku, error = %e, "settling a take; the sweep will");
                }
                return Ok(None);
            }
            Err(e) => {
                tracing::error!(
                    order_id, sku, qty, error = %e,
                    "the order's claim may not be finished; a retry takes it over once \
                     it is stale"
                );
                return Err(e.into());
            }
        }
        match done.taken_under.as_deref() {
            Some(under) => {
                // The reservation accounts for the take now: drop its entry.
                if let Err(e) = self.clear_take(sku, order_id, under, false).await {
                    tracing::warn!(order_id, sku, error = %e, "clearing a take; the sweep will");
                }
                Ok(Some(done))
            }
            None => Err(ReserveError::OutOfStock(OutOfStock {
                available: done.available.unwrap_or_default(),
            })),
        }
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

    /// Settles the takes of stock left behind by claimants that crashed or
    /// failed (entries of [`Stock::takes`] older than the claim timeout):
    /// an order still pending under a stale claim is finished (taken over;
    /// its reservation uses the take), a take the reservation uses is
    /// cleared, a surplus one given back. Resolves to how many it settled.
    /// Safe to run in many instances at once, and beside reservations.
    pub async fn settle_takes(&self) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let mut left = Vec::new();
        // An eventual scan finds the candidates (a take it misses is found
        // by the next sweep); each is settled on strong reads and
        // compare-and-set, so one it sees late is not settled twice.
        let mut entries = std::pin::pin!(
            self.state
                .scan(&self.keyspace, STOCK_PREFIX)
                .limit(500)
                .stream()
        );
        while let Some(entry) = entries.try_next().await? {
            let sku = entry.key.strip_prefix(STOCK_PREFIX).unwrap_or(&entry.key);
            match serde_json::from_slice::<Stock>(&entry.value) {
                Ok(stock) => left.extend(
                    stock
                        .takes
                        .into_iter()
                        .filter(|(_, take)| now >= take.at + self.claim_timeout)
                        .map(|(order_id, take)| (sku.to_owned(), order_id, take)),
                ),
                Err(e) => tracing::warn!(key = entry.key, error = %e, "skipping a bad stock"),
            }
        }
        let mut settled = 0;
        for (sku, order_id, take) in left {
            let reservation = self.reservation(&order_id).await?;
            match reservation.filter(|r| r.state == State::Pending) {
                // Its holder may still finish it.
                Some(r) if !r.is_stale(SystemTime::now(), self.claim_timeout) => {}
                // Finished as a duplicate would: taken over, using the take.
                Some(_) => match self.reserve(&order_id, &sku, take.qty).await {
                    Ok(_) | Err(ReserveError::OutOfStock(_)) => settled += 1,
                    Err(ReserveError::Store(e)) => return Err(e),
                    Err(e) => tracing::debug!(order_id, error = %e, "not finished yet"),
                },
                None => {
                    if self.settle_take(&sku, &order_id, &take.claim).await? {
                        settled += 1;
                    }
                }
            }
        }
        Ok(settled)
    }

    /// Settles `order_id`'s take of `sku` under `claim`, if it is still
    /// there, by what its reservation says: a made reservation taken under
    /// that claim uses it (the entry goes, the units stay taken); a refused
    /// one, or one made from another take, does not (the units go back). A
    /// pending one is left alone: its holder finds the take and uses it.
    /// Resolves to whether it changed the stock.
    async fn settle_take(
        &self,
        sku: &str,
        order_id: &str,
        claim: &str,
    ) -> Result<bool, StoreError> {
        let Some(reservation) = self.reservation(order_id).await? else {
            // Claims are made before stock is taken, and never deleted.
            tracing::warn!(
                order_id,
                sku,
                claim,
                "a take of stock for an order without a claim"
            );
            return Ok(false);
        };
        if reservation.state == State::Pending {
            return Ok(false);
        }
        let surplus = !reservation.accounts_for(claim);
        if surplus {
            tracing::info!(
                order_id,
                sku,
                claim,
                "giving back stock no reservation uses"
            );
        }
        self.clear_take(sku, order_id, claim, surplus).await
    }

    /// Removes `order_id`'s take under `claim` from `sku`'s stock, giving
    /// its units back if `give_back`, in one compare-and-set: however many
    /// do this, they come back once. Resolves to whether the take was there.
    async fn clear_take(
        &self,
        sku: &str,
        order_id: &str,
        claim: &str,
        give_back: bool,
    ) -> Result<bool, StoreError> {
        let cleared = self
            .change_stock(sku, |stock| {
                stock.settled(order_id, claim, give_back).ok_or(())
            })
            .await?;
        Ok(cleared.is_ok())
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

/// The answer a finished reservation record gives a request for the same
/// SKU and quantity: what its claimant answered, to every duplicate.
fn answer(existing: Reservation) -> Result<Reservation, ReserveError> {
    match existing.state {
        State::Held | State::Confirmed => Ok(existing),
        State::Released => Err(ReserveError::Released(Box::new(existing))),
        State::Refused => Err(ReserveError::OutOfStock(OutOfStock {
            available: existing.available.unwrap_or_default(),
        })),
        State::Pending => Err(ReserveError::InProgress(existing.order_id)),
    }
}

/// A new claim, unique across processes and regions: the claim's time,
/// the process, a counter and the hasher's per-process random keys, hashed.
fn new_claim() -> Claim {
    static CLAIMS: AtomicU64 = AtomicU64::new(0);
    let at = SystemTime::now();
    let id = RandomState::new().hash_one((
        at,
        std::process::id(),
        CLAIMS.fetch_add(1, Ordering::Relaxed),
    ));
    Claim {
        id: format!("{id:016x}"),
        at,
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // The model's types are plain data: serializing cannot fail.
    serde_json::to_vec(value).expect("the inventory's types serialize to JSON")
}
