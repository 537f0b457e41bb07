//! The inventory against a real agent: the sandbox `scripts/test-sdks rust`
//! starts (`MERIDIAN_TEST_GRPC`, `MERIDIAN_TEST_REGIONS`, and
//! `MERIDIAN_TEST_TLS_DIR` if its agents serve mutual TLS). Without it these
//! tests fail; they never skip.
//!
//! The SDK sandbox declares no `inventory` keyspace, so the tests keep their
//! stock and reservations in its `global` keyspace `accounts`, under SKUs and
//! order ids of their own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian::{Client, InstanceHealth, InvokeResponse, Source};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::model::{ORDERS_TOPIC, Release, State};
use crate::store::{ConfirmError, Inventory, ReserveError};
use crate::{Config, events, start};

const KEYSPACE: &str = "accounts";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need a real Meridian sandbox; from the repository \
             root run `scripts/test-sdks rust`"
        )
    })
}

// Every connection to the agents, plaintext or mutual TLS: shared with tests/agent.
#[path = "../../tests/support/sandbox.rs"]
mod sandbox;

// The race, claim and takeover tests, which share the helpers here.
#[path = "agent_tests_claims.rs"]
mod claims;

async fn client() -> Client {
    // The service's logs, shown with a failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    sandbox::connect(&env("MERIDIAN_TEST_GRPC")).await
}

/// An id no other test (or earlier run) uses.
fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "rs-inv-{name}-{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn inventory(ttl: Duration) -> Inventory {
    Inventory::new(client().await.state(), KEYSPACE, ttl)
}

async fn available(inventory: &Inventory, sku: &str) -> u64 {
    inventory
        .stock(sku)
        .await
        .expect("stock")
        .expect("the SKU has stock")
        .available
}

/// Polls until `check` holds. The two minutes are a hang guard, not a speed
/// check: on a loaded machine each compare-and-set of the `global` keyspace
/// can take a second or more.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reservations_of_five_in_stock_reserve_exactly_five() {
    let inventory = inventory(Duration::from_secs(600)).await;
    let sku = unique("sku");
    inventory.set_stock(&sku, 5).await.expect("seed");

    let attempts = (0..20).map(|i| {
        let (inventory, sku) = (inventory.clone(), sku.clone());
        tokio::spawn(async move {
            let order_id = format!("{sku}-order-{i}");
            (
                order_id.clone(),
                inventory.reserve(&order_id, &sku, 1).await,
            )
        })
    });
    let mut reserved = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            (order_id, Ok(r)) => {
                assert_eq!(r.state, State::Held);
                reserved.push(order_id);
            }
            (_, Err(ReserveError::OutOfStock(_))) => refused += 1,
            (order_id, Err(e)) => panic!("{order_id}: {e}"),
        }
    }
    assert_eq!((reserved.len(), refused), (5, 15));
    assert_eq!(available(&inventory, &sku).await, 0);
    for order_id in reserved {
        let r = inventory.reservation(&order_id).await.expect("read");
        assert_eq!(r.map(|r| r.qty), Some(1), "{order_id}");
    }
    // Out of stock says how much there is.
    match inventory.reserve(&unique("late"), &sku, 1).await {
        Err(ReserveError::OutOfStock(out)) => assert_eq!(out.available, 0),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_reservation_of_an_order_takes_stock_once() {
    let inventory = inventory(Duration::from_secs(600)).await;
    let sku = unique("sku");
    let order_id = unique("order");
    inventory.set_stock(&sku, 10).await.expect("seed");

    // The same order five times at once, then once more.
    let attempts: Vec<_> = (0..5)
        .map(|_| {
            let (inventory, sku, order_id) = (inventory.clone(), sku.clone(), order_id.clone());
            tokio::spawn(async move { inventory.reserve(&order_id, &sku, 3).await })
        })
        .collect();
    let mut ids = Vec::new();
    for attempt in attempts {
        ids.push(
            attempt
                .await
                .expect("task")
                .expect("reserve")
                .reservation_id,
        );
    }
    let again = inventory.reserve(&order_id, &sku, 3).await.expect("retry");
    assert!(ids.iter().all(|id| *id == again.reservation_id), "{ids:?}");
    assert_eq!(available(&inventory, &sku).await, 7);

    // The same order for another quantity is refused, and takes nothing.
    assert!(matches!(
        inventory.reserve(&order_id, &sku, 4).await,
        Err(ReserveError::Mismatch(_))
    ));
    assert_eq!(available(&inventory, &sku).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_reservation_gives_its_stock_back_once_and_a_confirmed_one_stays() {
    let inventory = inventory(Duration::from_millis(500)).await;
    let sku = unique("sku");
    inventory.set_stock(&sku, 5).await.expect("seed");
    let expiring = unique("order");
    let confirmed = unique("order");
    inventory
        .reserve(&expiring, &sku, 2)
        .await
        .expect("reserve");
    inventory
        .reserve(&confirmed, &sku, 1)
        .await
        .expect("reserve");
    let c = inventory.confirm(&confirmed).await.expect("confirm");
    assert_eq!(c.state, State::Confirmed);
    assert_eq!(available(&inventory, &sku).await, 2);

    tokio::time::sleep(Duration::from_millis(600)).await;
    // The sweepers of three instances at once: the stock comes back once.
    let sweeps = futures_util::future::join_all((0..3).map(|_| {
        let inventory = inventory.clone();
        async move { inventory.release_expired().await }
    }))
    .await;
    for sweep in sweeps {
        sweep.expect("sweep");
    }
    assert_eq!(available(&inventory, &sku).await, 4);
    assert_eq!(
        inventory
            .release(&expiring, Release::Expired)
            .await
            .expect("release"),
        None
    );

    let r = inventory
        .reservation(&expiring)
        .await
        .expect("read")
        .unwrap();
    assert_eq!(
        (r.state, r.released_because),
        (State::Released, Some(Release::Expired))
    );
    assert!(matches!(
        inventory.confirm(&expiring).await,
        Err(ConfirmError::Released(_))
    ));
    assert!(matches!(
        inventory.reserve(&expiring, &sku, 2).await,
        Err(ReserveError::Released(_))
    ));
    assert_eq!(
        inventory
            .reservation(&confirmed)
            .await
            .unwrap()
            .unwrap()
            .state,
        State::Confirmed
    );
}

fn order_event(kind: &str, order_id: &str, sku: &str, qty: u64) -> Vec<u8> {
    json!({"type": kind, "order_id": order_id, "sku": sku, "qty": qty, "region": "us-east"})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_cancelled_event_gives_the_stock_back_once() {
    let client = client().await;
    let inventory = Inventory::new(client.state(), KEYSPACE, Duration::from_secs(600));
    let sku = unique("sku");
    let order_id = unique("order");
    inventory.set_stock(&sku, 5).await.expect("seed");
    inventory
        .reserve(&order_id, &sku, 2)
        .await
        .expect("reserve");

    // A group of its own, made before anything is published (a new group
    // starts at new events), then consumed as the service does.
    let group = unique("group");
    let events = client.events();
    let probe = events
        .subscribe(&group, Source::Topic(ORDERS_TOPIC.into()))
        .await
        .expect("create the group");
    probe.close().await.expect("close");
    let (stop, stopped) = watch::channel(false);
    let consumer = tokio::spawn(events::consume_orders(
        inventory.clone(),
        events.clone(),
        group,
        stopped,
    ));

    // Placed is ignored; the cancellation arrives twice, under two event
    // ids (as if published by two regions), and is applied once.
    for (kind, event_id) in [
        ("OrderPlaced", format!("{order_id}-placed")),
        ("OrderCancelled", format!("{order_id}-cancelled")),
        ("OrderCancelled", format!("{order_id}-cancelled-again")),
    ] {
        events
            .publish(
                ORDERS_TOPIC,
                &order_id,
                order_event(kind, &order_id, &sku, 2),
                event_id,
            )
            .await
            .expect("publish");
    }
    eventually("the cancelled order's stock is back", || async {
        available(&inventory, &sku).await == 5
    })
    .await;
    let r = inventory.reservation(&order_id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.released_because),
        (State::Released, Some(Release::Cancelled))
    );
    // The second copy had its chance; the stock is not given back twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(available(&inventory, &sku).await, 5);

    stop.send(true).expect("the consumer is running");
    tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer stops")
        .expect("task");
}

fn json_body(r: &InvokeResponse) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{} {:?}: {e}", r.status, String::from_utf8_lossy(&r.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_registers_and_answers_invocations_from_every_region() {
    // A service name of its own, so no other test's instances answer.
    let service = unique("svc");
    let config = Config {
        agent: env("MERIDIAN_TEST_GRPC"),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        region: Some("us-east".into()),
        keyspace: KEYSPACE.into(),
        service: service.clone(),
        reservation_ttl: Duration::from_secs(600),
        sweep_interval: Duration::from_secs(1),
        claim_timeout: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(3),
        tls_dir: sandbox::tls_dir(),
    };
    let elsewhere = Config {
        region: Some("mars".into()),
        ..config.clone()
    };
    let refused = start(&elsewhere)
        .await
        .err()
        .expect("the agent is not in mars");
    assert!(refused.to_string().contains("not mars"), "{refused}");
    let running = start(&config).await.expect("start");
    assert_eq!(running.region, "us-east");
    let instance_id = running.registration.instance_id().to_owned();
    let client = client().await;
    let eu_west = env("MERIDIAN_TEST_REGIONS")
        .split(',')
        .find_map(|part| part.strip_prefix("eu-west=").map(str::to_owned))
        .expect("MERIDIAN_TEST_REGIONS names eu-west");
    let remote = sandbox::connect(&eu_west).await;
    // Listed healthy by the us-east agent, and known to eu-west's.
    for agent in [&client, &remote] {
        let registry = agent.registry();
        eventually("the instance is listed healthy", || async {
            registry
                .list_instances()
                .service(&service)
                .await
                .is_ok_and(|list| {
                    list.iter().any(|s| {
                        s.instance.instance_id == instance_id && s.health == InstanceHealth::Healthy
                    })
                })
        })
        .await;
    }

    let sku = unique("sku");
    let call = |method: String, body: Value| {
        client
            .invoke(&service, method)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let seeded = call(format!("stock/{sku}"), json!({"available": 1}))
        .await
        .expect("seed");
    assert_eq!(seeded.status, 200, "{:?}", json_body(&seeded));
    assert_eq!(
        (seeded.region.as_str(), seeded.instance.as_str()),
        ("us-east", instance_id.as_str())
    );

    let order = json!({"order_id": unique("order"), "sku": sku, "qty": 1});
    let reserved = call("reservations".into(), order.clone())
        .await
        .expect("reserve");
    assert_eq!(reserved.status, 200, "{:?}", json_body(&reserved));
    let body = json_body(&reserved);
    assert!(body["reservation_id"].is_string(), "{body}");
    assert!(
        humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    // The same order again: the same reservation.
    let again = call("reservations".into(), order)
        .await
        .expect("reserve again");
    assert_eq!(json_body(&again)["reservation_id"], body["reservation_id"]);

    let other = json!({"order_id": unique("order"), "sku": sku, "qty": 1});
    let refused = call("reservations".into(), other).await.expect("reserve");
    assert_eq!(refused.status, 409);
    assert_eq!(
        json_body(&refused),
        json!({"error": "out_of_stock", "available": 0})
    );

    let bad = call(
        "reservations".into(),
        json!({"order_id": "a/b", "sku": sku, "qty": 1}),
    )
    .await
    .expect("bad reserve");
    assert_eq!(bad.status, 400);
    assert_eq!(json_body(&bad)["error"], "invalid_request");

    // eu-west has no instance: its agent sends the call to us-east.
    let stock = remote
        .invoke(&service, format!("stock/{sku}"))
        .verb("GET")
        .await
        .expect("get stock from eu-west");
    assert_eq!(stock.status, 200);
    assert_eq!(stock.region, "us-east");
    assert_eq!(json_body(&stock), json!({"sku": sku, "available": 0}));

    running.stop().await.expect("stop");
    let left = client
        .registry()
        .list_instances()
        .service(&service)
        .region("us-east")
        .await
        .expect("list");
    assert!(
        left.iter().all(|s| s.instance.instance_id != instance_id),
        "{left:?}"
    );
}
