//! Reserving an order's stock once, claim first, however many duplicates
//! of the request run at once and wherever; and settling the takes of stock
//! that crashed claimants left behind.
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

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use meridian::Error;
use tokio::time::Instant;

use super::{Inventory, ReserveError, StoreError};
use crate::model::{
    Claim, NotTaken, OutOfStock, Reservation, STOCK_PREFIX, State, Stock, Take, reservation_key,
};

/// The first and the longest pause between looks at a pending claim.
const WAIT_FIRST: Duration = Duration::from_millis(25);
const WAIT_MAX: Duration = Duration::from_millis(400);

impl Inventory {
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
