//! What every test of the binary shares: where the agents are, unique names,
//! result and delivery checks, and polling. Connections go through
//! `tests/support/sandbox.rs`: mutual TLS when `MERIDIAN_TEST_TLS_DIR` is set.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian::{Client, Delivery, Error, Published, Subscription};

pub const GLOBAL: &str = "accounts";
pub const COUNTER: &str = "stock";
pub const SET: &str = "tags";
pub const REPLICATED: &str = "carts";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the agent tests need a real Meridian sandbox. From the \
             repository root run `scripts/test-sdks rust` (with MERIDIAN_SDK_BASE_PORT=<port> \
             to use other ports), which starts one and sets MERIDIAN_TEST_GRPC and \
             MERIDIAN_TEST_REGIONS"
        )
    })
}

pub fn regions() -> HashMap<String, String> {
    let spec = env("MERIDIAN_TEST_REGIONS");
    let regions: HashMap<String, String> = spec
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, addr) = part.split_once('=').unwrap_or_else(|| {
                panic!("MERIDIAN_TEST_REGIONS: {part:?} is not region=host:port")
            });
            (name.to_owned(), addr.to_owned())
        })
        .collect();
    assert!(
        regions.contains_key("us-east"),
        "MERIDIAN_TEST_REGIONS lacks us-east: {spec}"
    );
    regions
}

#[path = "../support/sandbox.rs"]
mod sandbox;

/// A client of the agent at `addr`, plaintext or with mutual TLS.
pub use sandbox::connect;

pub async fn us_east() -> Client {
    connect(&env("MERIDIAN_TEST_GRPC")).await
}

/// A key no other test (or earlier run) uses.
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("rs-{name}-{}-{nanos}-{n}", std::process::id())
}

/// Unwraps a call's result; says clearly when the sandbox lacks a keyspace.
pub fn ok<T>(result: Result<T, Error>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(Error::InvalidArgument { field, rule }) if field == "keyspace" => panic!(
            "{what}: the sandbox does not declare the keyspace these tests use ({rule}); \
             scripts/test-sdks must declare accounts, carts, stock and tags as tests/e2e does"
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Polls `probe` until `accept` holds. The limit is a hang guard, not a speed check.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F, accept: impl Fn(&T) -> bool) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut last = None;
    for _ in 0..600 {
        let value = probe().await;
        if accept(&value) {
            return value;
        }
        last = Some(value);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never held; last value: {last:?}")
}

pub async fn eu_west() -> Client {
    let regions = regions();
    let addr = regions
        .get("eu-west")
        .unwrap_or_else(|| panic!("MERIDIAN_TEST_REGIONS lacks eu-west: {regions:?}"));
    connect(addr).await
}

// -- events -----------------------------------------------------------------

/// How long a test waits for a delivery that should come: a hang guard, not a
/// speed check (cross-region sourcing takes the WAN latency and more).
const DELIVERY_GUARD: Duration = Duration::from_secs(60);

/// A topic (or namespace, or group) no other test or run uses: tokens of
/// a-z 0-9 _ - only.
pub fn fresh(name: &str) -> String {
    unique(name).replace('.', "-")
}

/// The next delivery; fails on an error, the end of the stream or a hang.
pub async fn next_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(DELIVERY_GUARD, sub.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {DELIVERY_GUARD:?}"),
    }
}

/// Nothing is delivered for `wait`.
pub async fn nothing_more(sub: &mut Subscription, wait: Duration) {
    if let Ok(next) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected no delivery for {wait:?}, got {next:?}");
    }
}

pub fn ok_published(result: Result<Published, Error>, what: &str) -> Published {
    let published = ok(result, what);
    assert!(published.sequence > 0, "{what}: {published:?}");
    assert!(!published.duplicate, "{what}: {published:?}");
    published
}
