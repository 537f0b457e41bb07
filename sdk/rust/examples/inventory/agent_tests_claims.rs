//! The inventory's claims against a real agent (the sandbox and the helpers
//! of [`super`]): duplicates in two regions racing for one order, a
//! duplicate waiting for a claim in progress, stale claims taken over, and
//! the sweep settling the takes a crash left.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use meridian::Consistency;
use meridian::state::StateClient;
use serde::Serialize;

use super::{KEYSPACE, available, client, env, eventually, inventory, sandbox, unique};
use crate::model::{
    Claim, OutOfStock, Release, Reservation, State, Stock, Take, reservation_key, stock_key,
};
use crate::store::{Inventory, ReserveError};

/// One inventory per region, as two processes would be: each its own agent
/// connection and its own in-process lock map, so only the store keeps them
/// apart.
async fn two_regions(ttl: Duration) -> (Inventory, Inventory) {
    let ap_south = env("MERIDIAN_TEST_REGIONS")
        .split(',')
        .find_map(|part| part.strip_prefix("ap-south=").map(str::to_owned))
        .expect("MERIDIAN_TEST_REGIONS names ap-south");
    let here = inventory(ttl).await;
    let there = Inventory::new(sandbox::connect(&ap_south).await.state(), KEYSPACE, ttl);
    (here, there)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_in_two_regions_agree_on_the_last_unit_and_take_it_once() {
    let (here, there) = two_regions(Duration::from_secs(600)).await;
    for round in 0..10 {
        // The last unit, or two units of which the order must take one.
        let seeded = 1 + round % 2;
        let sku = unique("sku");
        let order_id = unique("order");
        here.set_stock(&sku, seeded).await.expect("seed");
        // The far region starts first by a varying head start, so that
        // either one may take the stock while the other looks.
        let head_start = Duration::from_millis(80 * (round % 10));
        let (a, b) = tokio::join!(
            async {
                tokio::time::sleep(head_start).await;
                here.reserve(&order_id, &sku, 1).await
            },
            there.reserve(&order_id, &sku, 1)
        );
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            other => panic!("round {round}: the duplicates disagree or failed: {other:?}"),
        };
        assert_eq!(a.reservation_id, b.reservation_id, "round {round}");
        assert_eq!(
            available(&here, &sku).await,
            seeded - 1,
            "round {round}: the order's unit is taken once"
        );
    }
}

/// Writes `value` at `key` as another process of the inventory would have.
async fn put_json(state: &StateClient, key: &str, value: &impl Serialize) {
    state
        .put(KEYSPACE, key, serde_json::to_vec(value).unwrap())
        .await
        .unwrap_or_else(|e| panic!("write {key}: {e}"));
}

/// A record's revision, read strongly.
async fn revision(state: &StateClient, key: &str) -> u64 {
    state
        .get(KEYSPACE, key, Consistency::Strong)
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e}"))
        .entry
        .revision
}

/// A stock of `available` units with `takes` in flight (order id, take).
fn stock_with(available: u64, takes: &[(&str, &Take)]) -> Stock {
    Stock {
        available,
        takes: takes
            .iter()
            .map(|(order_id, take)| (order_id.to_string(), (*take).clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

const TTL: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_waits_for_a_claim_in_progress_and_answers_what_it_made() {
    let client = client().await;
    let state = client.state();
    let (_, there) = two_regions(TTL).await;
    let now = SystemTime::now();
    // Two orders claimed by an instance elsewhere that is at work: it took
    // the last unit of the first SKU, and found none of the second.
    let (sku, order) = (unique("sku"), unique("order"));
    let (empty_sku, refused) = (unique("sku"), unique("order"));
    let claim = Claim {
        id: "elsewhere".into(),
        at: now,
    };
    let take = Take {
        claim: claim.id.clone(),
        qty: 1,
        at: now,
    };
    let pending = Reservation::pending(&order, &sku, 1, claim.clone(), TTL);
    let pending_refused = Reservation::pending(&refused, &empty_sku, 1, claim.clone(), TTL);
    put_json(&state, &stock_key(&sku), &stock_with(0, &[(&order, &take)])).await;
    put_json(&state, &stock_key(&empty_sku), &stock_with(0, &[])).await;
    put_json(&state, &reservation_key(&order), &pending).await;
    put_json(&state, &reservation_key(&refused), &pending_refused).await;

    // Duplicates arrive in another region while the claim is pending.
    let duplicate = {
        let (there, order, sku) = (there.clone(), order.clone(), sku.clone());
        tokio::spawn(async move { there.reserve(&order, &sku, 1).await })
    };
    let duplicate_refused = {
        let (there, refused, sku) = (there.clone(), refused.clone(), empty_sku.clone());
        tokio::spawn(async move { there.reserve(&refused, &sku, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!duplicate.is_finished() && !duplicate_refused.is_finished());

    // The claimant finishes: one made, one refused.
    let key = reservation_key(&order);
    let held = pending.held(&claim.id, SystemTime::now(), TTL);
    let at = revision(&state, &key).await;
    state
        .put(KEYSPACE, &key, serde_json::to_vec(&held).unwrap())
        .if_revision(at)
        .await
        .expect("finish the claim");
    let key = reservation_key(&refused);
    let at = revision(&state, &key).await;
    let no = pending_refused.refused(OutOfStock { available: 0 });
    state
        .put(KEYSPACE, &key, serde_json::to_vec(&no).unwrap())
        .if_revision(at)
        .await
        .expect("refuse the claim");

    let made = duplicate
        .await
        .expect("task")
        .expect("the same reservation");
    assert_eq!(made.reservation_id, held.reservation_id);
    assert_eq!(made.taken_under.as_deref(), Some("elsewhere"));
    match duplicate_refused.await.expect("task") {
        Err(ReserveError::OutOfStock(out)) => assert_eq!(out.available, 0),
        other => panic!("the claimant refused it, the duplicate said {other:?}"),
    }
    // Nothing taken twice, and a later retry answers the same.
    assert_eq!(available(&there, &sku).await, 0);
    assert!(matches!(
        there.reserve(&refused, &empty_sku, 1).await,
        Err(ReserveError::OutOfStock(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_claim_is_taken_over_and_stock_is_taken_once() {
    let client = client().await;
    let state = client.state();
    let inventory =
        Inventory::new(state.clone(), KEYSPACE, TTL).with_claim_timeout(Duration::from_secs(1));
    let sku = unique("sku");
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let dead = |id: &str| Claim {
        id: id.into(),
        at: long_ago,
    };
    // Three orders whose claimant died: before taking stock, after taking
    // it, and just now (so the duplicate first waits for it).
    let (before, after, just_now) = (unique("order"), unique("order"), unique("order"));
    let took = Take {
        claim: "died-after".into(),
        qty: 2,
        at: long_ago,
    };
    put_json(&state, &stock_key(&sku), &stock_with(8, &[(&after, &took)])).await;
    for (order, claim) in [
        (&before, dead("died-before")),
        (&after, dead("died-after")),
        (
            &just_now,
            Claim {
                id: "died-just-now".into(),
                at: SystemTime::now(),
            },
        ),
    ] {
        let pending = Reservation::pending(order, &sku, 2, claim, TTL);
        put_json(&state, &reservation_key(order), &pending).await;
    }

    let r = inventory
        .reserve(&before, &sku, 2)
        .await
        .expect("taken over");
    assert_eq!(r.state, State::Held);
    assert_ne!(r.taken_under.as_deref(), Some("died-before"));
    assert_eq!(available(&inventory, &sku).await, 6, "its stock taken now");

    let r = inventory
        .reserve(&after, &sku, 2)
        .await
        .expect("taken over");
    assert_eq!(
        r.taken_under.as_deref(),
        Some("died-after"),
        "the dead claimant's take is used"
    );
    let stock = inventory.stock(&sku).await.unwrap().unwrap();
    assert_eq!(
        stock,
        stock_with(6, &[]),
        "not taken again; the take accounted for"
    );

    let r = inventory
        .reserve(&just_now, &sku, 2)
        .await
        .expect("taken over");
    assert_eq!(r.state, State::Held);
    assert_eq!(available(&inventory, &sku).await, 4);
    // The reservations live on as any other: released once.
    assert!(
        inventory
            .release(&after, Release::Cancelled)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        inventory
            .release(&after, Release::Cancelled)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(available(&inventory, &sku).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_settles_the_takes_a_crash_left() {
    let client = client().await;
    let state = client.state();
    let inventory =
        Inventory::new(state.clone(), KEYSPACE, TTL).with_claim_timeout(Duration::from_secs(1));
    let sku = unique("sku");
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let take = |claim: &str| Take {
        claim: claim.into(),
        qty: 1,
        at: long_ago,
    };
    let (unfinished, surplus, uncleared) = (unique("order"), unique("order"), unique("order"));
    // A claimant took stock and died; nobody retried the order.
    let claim = Claim {
        id: "died".into(),
        at: long_ago,
    };
    let pending = Reservation::pending(&unfinished, &sku, 1, claim, TTL);
    put_json(&state, &reservation_key(&unfinished), &pending).await;
    // A slow claimant took stock after its claim was taken over and
    // finished from another take, and died before giving it back.
    let held = Reservation::hold(&surplus, &sku, 1, SystemTime::now(), TTL);
    let held = Reservation {
        taken_under: Some("finished".into()),
        ..held
    };
    put_json(&state, &reservation_key(&surplus), &held).await;
    // A claimant finished its reservation and died before clearing its take.
    let done = Reservation {
        taken_under: Some("done".into()),
        ..Reservation::hold(&uncleared, &sku, 1, SystemTime::now(), TTL)
    };
    put_json(&state, &reservation_key(&uncleared), &done).await;
    let (t1, t2, t3) = (take("died"), take("slow"), take("done"));
    let takes = [(&*unfinished, &t1), (&*surplus, &t2), (&*uncleared, &t3)];
    put_json(&state, &stock_key(&sku), &stock_with(5, &takes)).await;

    // The sweep's scan is eventual: it finds the takes in time.
    eventually("the sweep settles the takes", || async {
        inventory.settle_takes().await.expect("sweep");
        inventory
            .stock(&sku)
            .await
            .unwrap()
            .unwrap()
            .takes
            .is_empty()
    })
    .await;
    let r = inventory.reservation(&unfinished).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.taken_under.as_deref()),
        (State::Held, Some("died"))
    );
    // The surplus unit came back; the others stay taken, accounted for.
    assert_eq!(available(&inventory, &sku).await, 6);
    // Settled once: another sweep changes nothing.
    inventory.settle_takes().await.expect("sweep");
    assert_eq!(available(&inventory, &sku).await, 6);
}
