//! Background work: releasing the stock of cancelled orders (consumed from
//! topic `orders`) and of reservations that expired unconfirmed, and
//! settling the stock taken by reservations whose claimant crashed.

use std::time::Duration;

use meridian::{Delivery, Error, EventsClient, Source, Subscription};
use tokio::sync::watch;

use crate::model::{ORDERS_TOPIC, OrderEvent, Release};
use crate::store::{Inventory, StoreError};

/// The consumer group of the inventory service in `region`: every region
/// handles each cancellation (events are sourced into every region), and
/// the compare-and-set in [`Inventory::release`] makes only one of them give
/// the stock back.
pub fn group(region: &str) -> String {
    format!("inventory-{region}")
}

/// Consumes `orders` in `group` until `shutdown` turns true, then closes the
/// subscription (which lets the agent apply the last acks). A broken
/// stream (the agent restarting) is opened again after a pause.
pub async fn consume_orders(
    inventory: Inventory,
    events: EventsClient,
    group: String,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let subscribe = events.subscribe(&group, Source::Topic(ORDERS_TOPIC.into()));
        let mut sub = match subscribe.await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(group, error = %e, "cannot subscribe to {ORDERS_TOPIC}; retrying");
                pause(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(group, "consuming {ORDERS_TOPIC}");
        let ended = tokio::select! {
            ended = handle_all(&inventory, &mut sub) => ended,
            _ = shutdown.wait_for(|stop| *stop) => Ok(()),
        };
        if let Err(e) = sub.close().await {
            tracing::warn!(group, error = %e, "closing the subscription");
        }
        if let Err(e) = ended {
            tracing::warn!(group, error = %e, "the subscription broke; subscribing again");
            pause(&mut shutdown, Duration::from_secs(1)).await;
        }
    }
}

/// Handles deliveries one at a time: ack when handled (or nothing to do),
/// nack when the store failed (redelivered with backoff) or the payload is
/// not an order event (after `max_deliveries` it rests in the dead-letter
/// stream for someone to look at).
async fn handle_all(inventory: &Inventory, sub: &mut Subscription) -> Result<(), Error> {
    sub.run(|delivery: Delivery| async move {
        match handle(inventory, &delivery.event.payload).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(event_id = delivery.event.event_id, attempt = delivery.attempt, error = %e, "event not handled");
                Err(e)
            }
        }
    })
    .await
}

/// Why an event was not handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Not an order event.
    #[error("not an order event: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Releases the reservation of a cancelled order; ignores other events.
pub async fn handle(inventory: &Inventory, payload: &[u8]) -> Result<(), HandleError> {
    let Some(cancelled) = OrderEvent::cancellation(payload)? else {
        return Ok(());
    };
    match inventory
        .release(&cancelled.order_id, Release::Cancelled)
        .await?
    {
        Some(r) => tracing::info!(
            order_id = r.order_id,
            sku = r.sku,
            qty = r.qty,
            "order cancelled: stock released"
        ),
        None => tracing::debug!(
            order_id = cancelled.order_id,
            "order cancelled: nothing to release"
        ),
    }
    Ok(())
}

/// Releases expired reservations, and settles takes of stock left by
/// crashed claimants ([`Inventory::settle_takes`]), every `interval` until
/// `shutdown`.
pub async fn sweep_expired(
    inventory: Inventory,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        match inventory.release_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "expired reservations released"),
            Err(e) => tracing::warn!(error = %e, "releasing expired reservations"),
        }
        match inventory.settle_takes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(settled = n, "takes of stock left by a crash settled"),
            Err(e) => tracing::warn!(error = %e, "settling takes of stock"),
        }
        pause(&mut shutdown, interval).await;
    }
}

/// Sleeps for `d`, or less if shutdown comes first.
async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}
