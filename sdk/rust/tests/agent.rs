//! The SDK against a real three-region sandbox.
//!
//! `scripts/test-sdks rust` starts one and exports where its agents listen:
//! `MERIDIAN_TEST_GRPC` (the us-east agent, `host:port`) and
//! `MERIDIAN_TEST_REGIONS` (`us-east=host:port,eu-west=...,ap-south=...`).
//! Without them these tests fail; they never skip.
//!
//! The sandbox must declare the keyspaces of tests/e2e: `accounts` (global),
//! `carts` (replicated, lww), `stock` (replicated, counter) and `tags`
//! (replicated, set). The event tests use topics, groups and event ids of
//! their own (event ids are the dedup identity across topics).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use meridian::canonical::PayloadKind;
use meridian::{
    Client, Consistency, Delivery, Error, Instance, InstanceHealth, InstanceStatus, InvokeResponse,
    OnceError, Outcome, OutgoingEvent, Protocol, Published, PutItem, ReadLevel, ServingStatus,
    Source, Start, StoredResponse, Subscription, WatchKind,
};
use opentelemetry::trace::{
    FutureExt as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
};

const GLOBAL: &str = "accounts";
const COUNTER: &str = "stock";
const SET: &str = "tags";
const REPLICATED: &str = "carts";

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

fn regions() -> HashMap<String, String> {
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

async fn connect(addr: &str) -> Client {
    Client::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the agent at {addr}: {e}"))
}

async fn us_east() -> Client {
    connect(&env("MERIDIAN_TEST_GRPC")).await
}

/// A key no other test (or earlier run) uses.
fn unique(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("rs-{name}-{}-{nanos}-{n}", std::process::id())
}

/// Unwraps a call's result; says clearly when the sandbox lacks a keyspace.
fn ok<T>(result: Result<T, Error>, what: &str) -> T {
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
async fn eventually<T, F, Fut>(what: &str, mut probe: F, accept: impl Fn(&T) -> bool) -> T
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

#[tokio::test]
async fn the_agent_is_healthy_and_in_us_east() {
    let health = ok(us_east().await.health().await, "health");
    assert_eq!(health.region, "us-east");
    assert_eq!(health.status, ServingStatus::Serving, "{health:?}");
    let status = ok(us_east().await.status().await, "status");
    assert_eq!(status.region, "us-east");
}

#[tokio::test]
async fn put_then_get_at_each_consistency() {
    let state = us_east().await.state();
    let key = unique("rt");
    let written = ok(state.put(GLOBAL, &key, b"v1".to_vec()).await, "put");
    assert!(written.revision > 0);
    assert!(written.hlc.wall_ms() > 0);

    let strong = ok(
        state.get(GLOBAL, &key, Consistency::Strong).await,
        "strong get",
    );
    assert_eq!(strong.entry.key, key);
    assert_eq!(strong.entry.value, b"v1");
    assert_eq!(strong.entry.revision, written.revision);
    assert_eq!(strong.entry.hlc, written.hlc);
    assert_eq!(strong.entry.region, "us-east");
    assert_eq!(strong.served, ReadLevel::Strong);
    assert_eq!(strong.staleness_bound, Duration::ZERO);

    let eventual = eventually(
        "the write is visible to an eventual read",
        || state.get(GLOBAL, &key, Consistency::Eventual).into_future(),
        |r| matches!(r, Ok(r) if r.entry.revision == written.revision),
    )
    .await
    .unwrap();
    assert_eq!(eventual.served, ReadLevel::Eventual);
    assert_eq!(eventual.entry.value, b"v1");
    assert!(
        eventual.staleness_bound < Duration::from_secs(60),
        "{eventual:?}"
    );

    let bound = Duration::from_secs(5);
    let bounded = eventually(
        "a bounded read is served locally",
        || {
            state
                .get(GLOBAL, &key, Consistency::Bounded(bound))
                .into_future()
        },
        |r| matches!(r, Ok(r) if r.served == ReadLevel::Bounded),
    )
    .await
    .unwrap();
    assert_eq!(bounded.entry.value, b"v1");
    assert!(bounded.staleness_bound <= bound, "{bounded:?}");

    // A bound tighter than the cache can prove is served as a strong read.
    let tight = ok(
        state
            .get(
                GLOBAL,
                &key,
                Consistency::Bounded(Duration::from_nanos(1000)),
            )
            .await,
        "tight bounded get",
    );
    assert_eq!(tight.served, ReadLevel::Strong);
    assert_eq!(tight.entry.revision, written.revision);

    // A replicated keyspace takes bounded and eventual reads.
    let cart = unique("cart");
    let w = ok(
        state.put(REPLICATED, &cart, b"c1".to_vec()).await,
        "replicated put",
    );
    let read = eventually(
        "a replicated write is readable",
        || {
            state
                .get(REPLICATED, &cart, Consistency::Eventual)
                .into_future()
        },
        |r| r.is_ok(),
    )
    .await
    .unwrap();
    assert_eq!(read.entry.value, b"c1");
    assert_eq!(read.entry.hlc, w.hlc);
}

#[tokio::test]
async fn put_many_and_get_many_have_per_item_results() {
    let state = us_east().await.state();
    let base = unique("many");
    let first = ok(
        state
            .put(GLOBAL, format!("{base}-cas"), b"1".to_vec())
            .await,
        "put",
    );
    let newer = ok(
        state
            .put(GLOBAL, format!("{base}-cas"), b"2".to_vec())
            .if_revision(first.revision)
            .await,
        "cas",
    );
    let item = |suffix: &str, value: &[u8], if_revision: Option<u64>| PutItem {
        keyspace: GLOBAL.into(),
        key: format!("{base}-{suffix}"),
        value: value.to_vec(),
        if_revision,
    };
    let written = ok(
        state
            .put_many([
                item("a", b"a", None),
                item("cas", b"lost", Some(first.revision)),
                item("b", b"b", None),
            ])
            .await,
        "put_many",
    );
    assert_eq!(written.len(), 3);
    let a = written[0].as_ref().expect("a written").revision;
    assert!(written[2].is_ok(), "{:?}", written[2]);
    match &written[1] {
        Err(Error::Conflict {
            current_revision, ..
        }) => assert_eq!(*current_revision, newer.revision),
        other => panic!("the lost CAS in a batch: {other:?}"),
    }
    let keys = ["a", "missing", "b"].map(|k| format!("{base}-{k}"));
    let read = ok(
        state.get_many(GLOBAL, keys, Consistency::Strong).await,
        "get_many",
    );
    assert_eq!(read.len(), 3);
    let got = read[0].as_ref().expect("a read");
    assert_eq!(
        (got.entry.value.as_slice(), got.entry.revision),
        (&b"a"[..], a)
    );
    assert!(
        matches!(read[1], Err(Error::NotFound { .. })),
        "{:?}",
        read[1]
    );
    assert_eq!(read[2].as_ref().expect("b read").entry.value, b"b");
    // One bad Put refuses the whole batch, naming it, and writes nothing.
    match state
        .put_many([
            item("c", b"c", None),
            PutItem {
                keyspace: "no-such-keyspace".into(),
                key: "k".into(),
                ..Default::default()
            },
        ])
        .await
    {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "puts[1].keyspace"),
        other => panic!("a bad Put in a batch: {other:?}"),
    }
    assert!(matches!(
        state
            .get(GLOBAL, format!("{base}-c"), Consistency::Strong)
            .await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn compare_and_set_reports_the_current_revision_on_conflict() {
    let state = us_east().await.state();
    let key = unique("cas");
    let first = ok(state.put(GLOBAL, &key, b"1".to_vec()).await, "put");
    let second = ok(
        state
            .put(GLOBAL, &key, b"2".to_vec())
            .if_revision(first.revision)
            .await,
        "cas at the current revision",
    );
    assert!(second.revision > first.revision);

    match state
        .put(GLOBAL, &key, b"3".to_vec())
        .if_revision(first.revision)
        .await
    {
        Err(Error::Conflict {
            current_revision, ..
        }) => {
            assert_eq!(current_revision, second.revision)
        }
        other => panic!("a stale compare-and-set must conflict, got {other:?}"),
    }
    match state.delete(GLOBAL, &key).if_revision(first.revision).await {
        Err(Error::Conflict {
            current_revision, ..
        }) => {
            assert_eq!(current_revision, second.revision)
        }
        other => panic!("a stale conditional delete must conflict, got {other:?}"),
    }
    let read = ok(state.get(GLOBAL, &key, Consistency::Strong).await, "get");
    assert_eq!(
        read.entry.value, b"2",
        "a lost compare-and-set wrote nothing"
    );

    ok(
        state
            .delete(GLOBAL, &key)
            .if_revision(second.revision)
            .await,
        "delete",
    );
    assert!(matches!(
        state.get(GLOBAL, &key, Consistency::Strong).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn create_on_an_existing_key_conflicts() {
    let state = us_east().await.state();
    let key = unique("create");
    let created = ok(
        state.create(GLOBAL, &key, b"first".to_vec()).await,
        "create",
    );
    match state.create(GLOBAL, &key, b"second".to_vec()).await {
        Err(err @ Error::Conflict { .. }) => {
            assert_eq!(err.code(), Some("CONFLICT"));
            let Error::Conflict {
                current_revision, ..
            } = err
            else {
                unreachable!()
            };
            assert_eq!(current_revision, created.revision);
        }
        other => panic!("creating an existing key must conflict, got {other:?}"),
    }
    let read = ok(state.get(GLOBAL, &key, Consistency::Strong).await, "get");
    assert_eq!(read.entry.value, b"first");
}

#[tokio::test]
async fn a_missing_key_is_not_found() {
    let state = us_east().await.state();
    for consistency in [Consistency::Strong, Consistency::Eventual] {
        match state.get(GLOBAL, unique("nobody"), consistency).await {
            Err(err @ Error::NotFound { .. }) => assert_eq!(err.code(), Some("NOT_FOUND")),
            other => panic!("{consistency:?}: expected NotFound, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_arguments_name_the_field() {
    let state = us_east().await.state();
    let cases = [
        (state.get(GLOBAL, "a b", Consistency::Strong), "key"),
        (state.get(GLOBAL, "", Consistency::Strong), "key"),
        (
            state.get("no-such-keyspace", "k", Consistency::Strong),
            "keyspace",
        ),
        (
            state.get(GLOBAL, "k", Consistency::Bounded(Duration::ZERO)),
            "consistency.max_staleness",
        ),
        // Replicated keyspaces have no leader to read through.
        (
            state.get(REPLICATED, "k", Consistency::Strong),
            "consistency",
        ),
    ];
    for (call, expected) in cases {
        match call.await {
            Err(Error::InvalidArgument { field, rule }) => {
                assert!(
                    field.starts_with(expected),
                    "field {field:?}, expected {expected:?}"
                );
                assert!(!rule.is_empty());
            }
            other => panic!("expected InvalidArgument naming {expected:?}, got {other:?}"),
        }
    }
    match state.put(GLOBAL, "a*", b"v".to_vec()).await {
        Err(Error::InvalidArgument { field, rule }) => {
            assert_eq!(field, "key");
            assert!(rule.contains("may only contain"), "{rule}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test]
async fn a_strong_read_in_another_region_sees_an_acknowledged_write() {
    let regions = regions();
    let state = us_east().await.state();
    for (region, addr) in &regions {
        if region == "us-east" {
            continue;
        }
        let remote = connect(addr).await.state();
        let key = unique("xr");
        let written = ok(
            state.put(GLOBAL, &key, region.as_bytes().to_vec()).await,
            "put in us-east",
        );
        // Right after the acknowledgement: no waiting.
        let read = ok(
            remote.get(GLOBAL, &key, Consistency::Strong).await,
            &format!("strong get in {region}"),
        );
        assert_eq!(read.entry.value, region.as_bytes(), "{region}");
        assert_eq!(read.entry.revision, written.revision, "{region}");
        assert_eq!(read.entry.region, "us-east", "{region}");
        assert_eq!(read.served, ReadLevel::Strong);
    }
    assert!(regions.len() >= 3, "expected three regions: {regions:?}");
}

#[tokio::test]
async fn a_counter_adds_up_increments() {
    let state = us_east().await.state();
    let key = unique("count");
    for delta in [5, 3, -2] {
        ok(state.increment(COUNTER, &key, delta).await, "increment");
    }
    let read = eventually(
        "the counter reaches 6",
        || {
            state
                .get(COUNTER, &key, Consistency::Eventual)
                .into_future()
        },
        |r| matches!(r, Ok(r) if r.entry.counter == 6),
    )
    .await
    .unwrap();
    assert!(read.entry.value.is_empty());
}

#[tokio::test]
async fn a_set_adds_and_removes_elements() {
    let state = us_east().await.state();
    let key = unique("set");
    ok(
        state.set_add(SET, &key, ["red", "green", "blue"]).await,
        "set_add",
    );
    ok(state.set_remove(SET, &key, ["green"]).await, "set_remove");
    ok(
        state.set_add(SET, &key, vec!["amber".to_owned()]).await,
        "set_add",
    );
    eventually(
        "the set holds amber, blue, red",
        || state.get(SET, &key, Consistency::Eventual).into_future(),
        |r| matches!(r, Ok(r) if r.entry.elements == ["amber", "blue", "red"]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn scan_pages_through_a_prefix_in_key_order() {
    let state = us_east().await.state();
    let prefix = format!("{}.", unique("scan"));
    let keys: Vec<String> = (0..7).map(|i| format!("{prefix}{i:02}")).collect();
    for key in &keys {
        ok(state.put(GLOBAL, key, key.as_bytes().to_vec()).await, "put");
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token = None;
    loop {
        let mut scan = state
            .scan(GLOBAL, &prefix)
            .limit(3)
            .consistency(Consistency::Strong);
        if let Some(t) = token.take() {
            scan = scan.page_token(t);
        }
        let page = ok(scan.await, "scan");
        assert_eq!(page.served, ReadLevel::Strong);
        pages += 1;
        seen.extend(page.entries.into_iter().map(|e| e.key));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, keys);
    assert_eq!(pages, 3);

    let streamed: Vec<String> = state
        .scan(GLOBAL, &prefix)
        .limit(2)
        .consistency(Consistency::Strong)
        .stream()
        .map_ok(|e| e.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed, keys);
}

#[tokio::test]
async fn a_watch_sees_puts_and_deletes() {
    let state = us_east().await.state();
    let prefix = format!("{}.", unique("watch"));
    let (k0, k1) = (format!("{prefix}a"), format!("{prefix}b"));
    let w0 = ok(state.put(GLOBAL, &k0, b"zero".to_vec()).await, "put k0");
    // Replaying from w0 makes the test independent of when the agent's
    // subscription starts: every later write is after it.
    let mut watch = ok(
        state
            .watch(GLOBAL, &prefix)
            .from_revision(w0.revision)
            .await,
        "watch",
    );
    let w1 = ok(state.put(GLOBAL, &k1, b"one".to_vec()).await, "put k1");
    ok(state.delete(GLOBAL, &k0).await, "delete k0");

    let mut events = Vec::new();
    while let Some(event) = watch.next().await {
        let event = ok(event, "watch event");
        let done = event.kind == WatchKind::Delete;
        events.push(event);
        if done {
            break;
        }
    }
    let summary: Vec<(WatchKind, &str)> = events
        .iter()
        .map(|e| (e.kind, e.entry.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (WatchKind::Put, k0.as_str()),
            (WatchKind::Put, k1.as_str()),
            (WatchKind::Delete, k0.as_str())
        ]
    );
    assert_eq!(events[0].entry.revision, w0.revision);
    assert_eq!(events[1].entry.revision, w1.revision);
    assert_eq!(events[1].entry.value, b"one");
    assert_eq!(events[1].entry.hlc, w1.hlc);
}

#[tokio::test]
async fn a_tiny_timeout_is_deadline_exceeded() {
    let state = us_east().await.state();
    let result = state
        .get(GLOBAL, unique("slow"), Consistency::Strong)
        .timeout(Duration::from_nanos(1))
        .await;
    match result {
        Err(err @ Error::DeadlineExceeded { .. }) => {
            assert_eq!(err.code(), Some("DEADLINE_EXCEEDED"))
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }

    // A watch's timeout bounds the whole stream.
    let mut watch = ok(
        state
            .watch(GLOBAL, format!("{}.", unique("quiet")))
            .timeout(Duration::from_millis(300))
            .await,
        "watch",
    );
    match watch.next().await {
        Some(Err(Error::DeadlineExceeded { .. })) => {}
        other => panic!("expected the watch to end with DeadlineExceeded, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after its error"
    );
}

#[tokio::test]
async fn calls_carry_the_callers_trace_context() {
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let client = us_east().await;
    let wanted = format!("-{trace_id}-");

    // The typed API: the agent's span for the watch joins our trace.
    let watch = ok(
        client
            .state()
            .watch(GLOBAL, format!("{}.", unique("trace")))
            .context(cx.clone())
            .await,
        "watch",
    );
    let parent = watch
        .traceparent()
        .expect("the agent sends its traceparent");
    assert!(
        parent.contains(&wanted),
        "{parent} is not in trace {trace_id}"
    );

    // The generated client, through the interceptor and the current context.
    let mut raw = client.raw_state();
    let request = meridian::pb::GetRequest {
        keyspace: GLOBAL.into(),
        key: unique("trace"),
        consistency: None,
    };
    let status = async move { raw.get(request).await }
        .with_context(cx)
        .await
        .expect_err("the key does not exist");
    let parent = status
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the agent sends its traceparent");
    assert!(
        parent.contains(&wanted),
        "{parent} is not in trace {trace_id}"
    );
    assert!(matches!(Error::from(status), Error::NotFound { .. }));
}

// -- idempotency ------------------------------------------------------------

const SCOPE: &str = "shop";
const ORDER: &[u8] = br#"{"sku":"A-1","qty":2}"#;

fn stored_ok() -> StoredResponse {
    StoredResponse::new(201, br#"{"order":"o-1"}"#.to_vec())
        .header("content-type", "application/json")
}

async fn eu_west() -> Client {
    let regions = regions();
    let addr = regions
        .get("eu-west")
        .unwrap_or_else(|| panic!("MERIDIAN_TEST_REGIONS lacks eu-west: {regions:?}"));
    connect(addr).await
}

fn fingerprint(payload: &[u8]) -> String {
    meridian::canonical::fingerprint(payload, PayloadKind::Json).expect("valid JSON")
}

#[tokio::test]
async fn idempotency_new_then_completed_replays_in_every_region() {
    let east = us_east().await.idempotency();
    let key = unique("order");
    let first = ok(east.begin(SCOPE, &key, ORDER).await, "begin");
    assert_eq!(first.outcome, Outcome::New);
    assert!(first.fencing_token > 0);
    assert_eq!(first.fingerprint, fingerprint(ORDER));
    assert!(!first.took_over);
    assert!(first.response.is_none());
    let lease = first.lease_expires_at.expect("a NEW begin has a lease");
    assert!(
        lease > SystemTime::now() - Duration::from_secs(5),
        "{lease:?}"
    );

    let expires = ok(
        east.complete(SCOPE, &key, first.fencing_token, stored_ok())
            .await,
        "complete",
    );
    assert!(expires > SystemTime::now(), "{expires:?}");

    // Same request, reordered and respaced: the same fingerprint, so a replay.
    let again = ok(
        east.begin(SCOPE, &key, br#"{ "qty": 2, "sku": "A-1" }"#)
            .await,
        "begin again",
    );
    assert_eq!(again.outcome, Outcome::Completed);
    assert_eq!(again.response, Some(stored_ok()));
    assert_eq!(again.fencing_token, 0);

    // Every other region sees the same record.
    for (region, addr) in regions() {
        let begun = ok(
            connect(&addr)
                .await
                .idempotency()
                .begin(SCOPE, &key, ORDER)
                .await,
            &format!("begin in {region}"),
        );
        assert_eq!(begun.outcome, Outcome::Completed, "{region}");
        assert_eq!(begun.response, Some(stored_ok()), "{region}");
        assert_eq!(begun.fingerprint, fingerprint(ORDER), "{region}");
    }
}

#[tokio::test]
async fn idempotency_an_error_response_is_stored_and_replayed() {
    let east = us_east().await.idempotency();
    let west = eu_west().await.idempotency();
    let key = unique("declined");
    let declined = StoredResponse::new(402, br#"{"error":"card declined"}"#.to_vec());
    let runs = AtomicU32::new(0);
    let command = |_token: u64| {
        runs.fetch_add(1, Ordering::SeqCst);
        let response = declined.clone();
        async move { Ok::<_, std::io::Error>(response) }
    };
    let first = east
        .once(SCOPE, &key, ORDER, command)
        .await
        .expect("first once");
    let second = east
        .once(SCOPE, &key, ORDER, command)
        .await
        .expect("second once");
    let third = west
        .once(SCOPE, &key, ORDER, command)
        .await
        .expect("once in eu-west");
    assert_eq!(
        (first.replayed, second.replayed, third.replayed),
        (false, true, true)
    );
    assert_eq!(first.response, declined);
    assert_eq!(second.response, declined);
    assert_eq!(third.response, declined);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idempotency_a_key_reused_for_another_request_is_a_mismatch() {
    let east = us_east().await.idempotency();
    let key = unique("reuse");
    let begun = ok(east.begin(SCOPE, &key, ORDER).await, "begin");
    let other = br#"{"sku":"A-1","qty":3}"#;
    // A mismatch wins even while the first request is still in progress.
    let early = ok(east.begin(SCOPE, &key, other).await, "begin other");
    assert_eq!(early.outcome, Outcome::Mismatch);
    ok(
        east.complete(SCOPE, &key, begun.fencing_token, stored_ok())
            .await,
        "complete",
    );
    let mismatch = ok(east.begin(SCOPE, &key, other).await, "begin other again");
    assert_eq!(mismatch.outcome, Outcome::Mismatch);
    assert_eq!(mismatch.fingerprint, fingerprint(ORDER));
    assert!(mismatch.response.is_none());

    let ran = AtomicU32::new(0);
    let result = east
        .once(SCOPE, &key, other, |_| {
            ran.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(stored_ok()) }
        })
        .await;
    match result {
        Err(OnceError::Meridian(err @ Error::IdempotencyMismatch { .. })) => {
            assert_eq!(err.code(), Some("IDEMPOTENCY_MISMATCH"));
            assert!(err.to_string().contains(&fingerprint(ORDER)), "{err}");
        }
        other => panic!("expected IdempotencyMismatch, got {other:?}"),
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    // Binary payloads are fingerprinted as bytes: the same JSON respaced differs.
    let bkey = unique("binary");
    let first = ok(east.begin(SCOPE, &bkey, ORDER).binary().await, "binary");
    assert_eq!(first.outcome, Outcome::New);
    let respaced = ok(
        east.begin(SCOPE, &bkey, br#"{ "sku":"A-1","qty":2}"#)
            .binary()
            .await,
        "binary respaced",
    );
    assert_eq!(respaced.outcome, Outcome::Mismatch);
}

#[tokio::test]
async fn idempotency_a_live_lease_is_in_progress_in_another_region() {
    let east = us_east().await.idempotency();
    let west = eu_west().await.idempotency();
    let key = unique("busy");
    let holder = ok(
        east.begin(SCOPE, &key, ORDER)
            .lease(Duration::from_secs(30))
            .await,
        "begin",
    );
    assert_eq!(holder.outcome, Outcome::New);
    let held_until = holder.lease_expires_at.expect("a lease");

    let busy = ok(west.begin(SCOPE, &key, ORDER).await, "begin in eu-west");
    assert_eq!(busy.outcome, Outcome::InProgress);
    assert_eq!(busy.fencing_token, 0);
    let until = busy.lease_expires_at.expect("in progress says until when");
    let gap = until
        .duration_since(held_until)
        .unwrap_or_else(|e| e.duration());
    assert!(
        gap <= Duration::from_millis(10),
        "{until:?} vs {held_until:?}"
    );

    let result = west
        .once(SCOPE, &key, ORDER, |_| async {
            Ok::<_, std::io::Error>(stored_ok())
        })
        .await;
    match result {
        Err(e @ OnceError::Meridian(Error::IdempotencyInProgress { .. })) => {
            assert!(e.is_in_progress());
            let Some(Error::IdempotencyInProgress {
                lease_expires_at, ..
            }) = e.meridian()
            else {
                unreachable!()
            };
            assert_eq!(*lease_expires_at, Some(until));
            assert!(e.meridian().is_some_and(Error::is_transient));
        }
        other => panic!("expected IdempotencyInProgress, got {other:?}"),
    }
}

#[tokio::test]
async fn idempotency_an_expired_lease_is_taken_over_and_the_old_holder_fenced() {
    let east = us_east().await.idempotency();
    let west = eu_west().await.idempotency();
    let key = unique("slow");
    let old = ok(
        east.begin(SCOPE, &key, ORDER)
            .lease(Duration::from_millis(200))
            .await,
        "begin with a short lease",
    );
    assert_eq!(old.outcome, Outcome::New);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = ok(
        west.begin(SCOPE, &key, ORDER)
            .lease(Duration::from_secs(30))
            .await,
        "begin after the lease ran out",
    );
    assert_eq!(new.outcome, Outcome::New);
    assert!(new.took_over);
    assert!(new.fencing_token > old.fencing_token);

    // The late holder can neither complete nor abort.
    match east
        .complete(SCOPE, &key, old.fencing_token, stored_ok())
        .await
    {
        Err(err @ Error::Fenced { .. }) => assert_eq!(err.code(), Some("FENCED")),
        other => panic!("expected Fenced, got {other:?}"),
    }
    match east.abort(SCOPE, &key, old.fencing_token).await {
        Err(Error::Fenced { .. }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    ok(
        west.complete(SCOPE, &key, new.fencing_token, stored_ok())
            .await,
        "complete by the new holder",
    );
    let done = ok(east.begin(SCOPE, &key, ORDER).await, "begin after");
    assert_eq!(done.outcome, Outcome::Completed);
    assert_eq!(done.response, Some(stored_ok()));
}

#[tokio::test]
async fn idempotency_a_failed_command_releases_its_key() {
    let east = us_east().await.idempotency();
    let key = unique("crash");
    let failed = east
        .once(SCOPE, &key, ORDER, |_| async {
            Err::<StoredResponse, _>(std::io::Error::other("handler crashed"))
        })
        .await;
    match failed {
        Err(OnceError::Command(e)) => assert_eq!(e.to_string(), "handler crashed"),
        other => panic!("expected the command's error, got {other:?}"),
    }
    let result = east
        .once(SCOPE, &key, ORDER, |token| async move {
            assert!(token > 0);
            Ok::<_, std::io::Error>(stored_ok())
        })
        .await
        .expect("the retry runs the command");
    assert!(!result.replayed);
    assert_eq!(result.response, stored_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_once_runs_the_command_once_across_regions() {
    let clients = [us_east().await.idempotency(), eu_west().await.idempotency()];
    for round in 0..3 {
        let key = unique(&format!("race{round}"));
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let client = clients[i % 2].clone();
            let (key, runs) = (key.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    let runs = runs.clone();
                    let result = client
                        .once(SCOPE, &key, ORDER, move |token| async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, std::io::Error>(StoredResponse::new(
                                200,
                                format!("token {token}"),
                            ))
                        })
                        .await;
                    match result {
                        Ok(done) => return done.response,
                        Err(e) if e.is_in_progress() => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("once: {e}"),
                    }
                }
                panic!("the key stayed in progress for 10 s")
            }));
        }
        let mut responses = Vec::new();
        for task in tasks {
            responses.push(task.await.expect("caller task"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "round {round}");
        assert!(
            responses.iter().all(|r| *r == responses[0]),
            "round {round}: {responses:?}"
        );
        assert_eq!(responses[0].status, 200);
    }
}

#[tokio::test]
async fn idempotency_invalid_arguments_name_the_field() {
    let east = us_east().await.idempotency();
    let long_scope = "s".repeat(129);
    let long_key = "k".repeat(256);
    let cases = [
        ("", "k", "scope"),
        ("has space", "k", "scope"),
        (long_scope.as_str(), "k", "scope"),
        (SCOPE, "", "key"),
        (SCOPE, long_key.as_str(), "key"),
        (SCOPE, "tab\there", "key"),
        (SCOPE, "caf\u{e9}", "key"),
    ];
    for (scope, key, expected) in cases {
        match east.begin(scope, key, ORDER).await {
            Err(Error::InvalidArgument { field, rule }) => {
                assert_eq!(field, expected, "scope {scope:?} key {key:?}: {rule}");
                assert!(!rule.is_empty());
            }
            other => panic!("scope {scope:?} key {key:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // Checked here, before anything is sent.
    match east.begin(SCOPE, "k", br#"{"a":1,"a":2}"#).await {
        Err(Error::InvalidArgument { field, rule }) => {
            assert_eq!(field, "payload");
            assert!(rule.contains("unique"), "{rule}");
        }
        other => panic!("expected InvalidArgument on payload, got {other:?}"),
    }
    match east
        .begin(SCOPE, unique("lease"), ORDER)
        .lease(Duration::from_secs(3600))
        .await
    {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "lease"),
        other => panic!("expected InvalidArgument on lease, got {other:?}"),
    }
    match east.complete(SCOPE, "k", 0, stored_ok()).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "fencing_token"),
        other => panic!("expected InvalidArgument on fencing_token, got {other:?}"),
    }
}

// -- events -----------------------------------------------------------------

/// How long a test waits for a delivery that should come: a hang guard, not a
/// speed check (cross-region sourcing takes the WAN latency and more).
const DELIVERY_GUARD: Duration = Duration::from_secs(60);

/// A topic (or namespace, or group) no other test or run uses: tokens of
/// a-z 0-9 _ - only.
fn fresh(name: &str) -> String {
    unique(name).replace('.', "-")
}

/// The next delivery; fails on an error, the end of the stream or a hang.
async fn next_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(DELIVERY_GUARD, sub.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {DELIVERY_GUARD:?}"),
    }
}

/// Nothing is delivered for `wait`.
async fn nothing_more(sub: &mut Subscription, wait: Duration) {
    if let Ok(next) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected no delivery for {wait:?}, got {next:?}");
    }
}

fn ok_published(result: Result<Published, Error>, what: &str) -> Published {
    let published = ok(result, what);
    assert!(published.sequence > 0, "{what}: {published:?}");
    assert!(!published.duplicate, "{what}: {published:?}");
    published
}

#[test]
fn subscriptions_and_ackers_cross_tasks() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Subscription>();
    send_sync::<meridian::Acker>();
    send_sync::<meridian::EventsClient>();
    send::<<meridian::events::Subscribe as std::future::IntoFuture>::IntoFuture>();
    send::<<meridian::events::Publish as std::future::IntoFuture>::IntoFuture>();
}

#[tokio::test]
async fn an_event_published_in_us_east_reaches_a_group_in_eu_west() {
    let (east, west) = (us_east().await.events(), eu_west().await.events());
    let topic = fresh("orders");
    let event_id = unique("placed");
    let published = ok_published(
        east.publish(
            format!("{topic}.placed"),
            "o-1",
            br#"{"total":42}"#.to_vec(),
            &event_id,
        )
        .header("content-type", "application/json")
        .await,
        "publish",
    );
    assert_eq!(published.region, "us-east");
    // JetStream recognises the id again inside its window: nothing is stored.
    let again = ok(
        east.publish(
            format!("{topic}.placed"),
            "o-1",
            b"other".to_vec(),
            &event_id,
        )
        .await,
        "publish again",
    );
    assert!(again.duplicate, "{again:?}");

    let mut sub = ok(
        west.subscribe(fresh("billing"), Source::Topic(format!("{topic}.*")))
            .start_sequence(1)
            .await,
        "subscribe in eu-west",
    );
    let d = next_delivery(&mut sub, "the event in eu-west").await;
    assert_eq!(d.attempt, 1);
    assert!(d.sequence > 0);
    let e = &d.event;
    assert_eq!(e.topic, format!("{topic}.placed"));
    assert_eq!(e.key, "o-1");
    assert_eq!(e.payload, br#"{"total":42}"#);
    assert_eq!(e.event_id, event_id);
    assert_eq!(e.headers["content-type"], "application/json");
    assert_eq!(e.origin_region, "us-east");
    assert_eq!(e.origin_sequence, published.sequence);
    let at = e.published_at.expect("published_at");
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    assert!(age < Duration::from_secs(300), "published {age:?} ago");
    sub.ack(&d).expect("ack");
    // The duplicate is not delivered.
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn a_nacked_delivery_is_redelivered_with_attempt_2() {
    let events = us_east().await.events();
    let topic = fresh("retry");
    let event_id = unique("retry");
    ok_published(
        events.publish(&topic, "k", b"x".to_vec(), &event_id).await,
        "publish",
    );
    let mut sub = ok(
        events
            .subscribe(fresh("g"), Source::Topic(topic.clone()))
            .start_sequence(1)
            .await,
        "subscribe",
    );
    let first = next_delivery(&mut sub, "the first delivery").await;
    assert_eq!(
        (first.event.event_id.as_str(), first.attempt),
        (event_id.as_str(), 1)
    );
    sub.nack(&first, Some(Duration::from_millis(50)))
        .expect("nack");
    let second = next_delivery(&mut sub, "the redelivery").await;
    assert_eq!(second.event.event_id, event_id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.id, first.id, "each delivery has its own id");
    assert_eq!(second.sequence, first.sequence);
    // Without a delay: the backoff for attempt 2.
    sub.nack(&second, None).expect("nack");
    let third = next_delivery(&mut sub, "the second redelivery").await;
    assert_eq!(third.attempt, 3);
    sub.ack(&third).expect("ack");
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn after_max_deliveries_the_event_is_dead_lettered_and_not_delivered_again() {
    let events = us_east().await.events();
    let topic = fresh("poison");
    let group = fresh("parser");
    let poison = unique("poison");
    ok_published(
        events
            .publish(&topic, "k", b"cannot parse".to_vec(), &poison)
            .await,
        "publish",
    );
    let mut sub = ok(
        events
            .subscribe(&group, Source::Topic(topic.clone()))
            .start_sequence(1)
            .max_deliveries(3)
            .await,
        "subscribe",
    );
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut sub, "the poison event").await;
        assert_eq!(d.event.event_id, poison);
        attempts.push(d.attempt);
        sub.nack(&d, Some(Duration::from_millis(50))).expect("nack");
    }
    assert_eq!(attempts, [1, 2, 3]);
    // The next event comes; the poison one never again.
    let fine = unique("fine");
    ok_published(
        events.publish(&topic, "k", b"ok".to_vec(), &fine).await,
        "publish",
    );
    let d = next_delivery(&mut sub, "the event after the poison one").await;
    assert_eq!(d.event.event_id, fine, "{d:?}");
    sub.ack(&d).expect("ack");
    nothing_more(&mut sub, Duration::from_secs(2)).await;
    ok(sub.close().await, "close");
    // Nor to a later subscriber of the group.
    let mut sub = ok(
        events.subscribe(&group, Source::Topic(topic.clone())).await,
        "subscribe again",
    );
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn a_published_batch_is_stored_in_order_and_its_retry_is_all_duplicates() {
    let events = us_east().await.events();
    let topic = fresh("batch");
    let batch: Vec<OutgoingEvent> = (0..30)
        .map(|i| OutgoingEvent {
            topic: topic.clone(),
            key: format!("k-{}", i % 3),
            payload: i.to_string().into_bytes(),
            event_id: format!("{topic}-{i}"),
            headers: vec![("x-batch".into(), "1".into())],
        })
        .collect();
    let got = ok(events.publish_batch(batch.clone()).await, "publish_batch");
    assert_eq!(got.len(), batch.len());
    for (i, p) in got.iter().enumerate() {
        assert!(!p.duplicate && p.region == "us-east", "{i}: {p:?}");
        assert_eq!(p.sequence, got[0].sequence + i as u64, "{i}");
    }
    let again = ok(events.publish_batch(batch).await, "publish_batch again");
    for (p, first) in again.iter().zip(&got) {
        assert!(
            p.duplicate && p.sequence == first.sequence,
            "{p:?} vs {first:?}"
        );
    }
    // One bad event: the whole batch is refused, naming it.
    let bad = vec![
        OutgoingEvent {
            topic: topic.clone(),
            key: "k".into(),
            event_id: unique("fine"),
            ..Default::default()
        },
        OutgoingEvent {
            topic: "Bad Topic".into(),
            key: "k".into(),
            event_id: unique("bad"),
            ..Default::default()
        },
    ];
    match events.publish_batch(bad).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "events[1].topic"),
        other => panic!("a bad event in a batch: {other:?}"),
    }
}

#[tokio::test]
async fn the_same_event_id_published_in_two_regions_is_delivered_once() {
    let (east, west) = (us_east().await.events(), eu_west().await.events());
    let topic = fresh("dup");
    // A producer retried in another region after a timeout: the same event id.
    let retried = unique("retried");
    ok_published(
        east.publish(&topic, "k", b"x".to_vec(), &retried).await,
        "publish in us-east",
    );
    ok_published(
        west.publish(&topic, "k", b"x".to_vec(), &retried).await,
        "publish in eu-west",
    );
    // Published after the copy in eu-west: once it arrived, so did that copy.
    let after = unique("after");
    ok_published(
        west.publish(&topic, "k", b"y".to_vec(), &after).await,
        "publish after",
    );
    for (region, events) in [("us-east", &east), ("eu-west", &west)] {
        let mut sub = ok(
            events
                .subscribe(fresh("billing"), Source::Topic(topic.clone()))
                .start_sequence(1)
                .await,
            "subscribe",
        );
        let mut seen: HashMap<String, u32> = HashMap::new();
        while !seen.contains_key(&after) {
            let d = next_delivery(&mut sub, &format!("{region}: both events")).await;
            *seen.entry(d.event.event_id.clone()).or_default() += 1;
            sub.ack(&d).expect("ack");
        }
        nothing_more(&mut sub, Duration::from_secs(2)).await;
        assert_eq!(
            seen,
            HashMap::from([(retried.clone(), 1), (after.clone(), 1)]),
            "{region}"
        );
        ok(sub.close().await, "close");
    }
}

#[tokio::test]
async fn a_keyspace_change_feed_delivers_a_put() {
    let client = us_east().await;
    let events = client.events();
    // A new group starts with the writes after it is created: when the
    // subscribe call returns.
    let mut sub = ok(
        events
            .subscribe(fresh("feed"), Source::Keyspace(REPLICATED.into()))
            .await,
        "subscribe to the change feed",
    );
    let key = unique("cart");
    ok(
        client
            .state()
            .put(REPLICATED, &key, b"apples".to_vec())
            .await,
        "put",
    );
    // Other tests write carts too: skip (and ack) their changes.
    let d = loop {
        let d = next_delivery(&mut sub, "the put in the change feed").await;
        sub.ack(&d).expect("ack");
        if d.event.key == key {
            break d;
        }
    };
    assert_eq!(d.event.topic, format!("_state.{REPLICATED}"));
    assert_eq!(d.event.headers["operation"], "put");
    assert!(!d.event.headers["hlc"].is_empty());
    assert_eq!(d.event.origin_region, "us-east");
    assert!(!d.event.payload.is_empty());
    assert!(d.event.published_at.is_some());
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn an_invalidation_reaches_a_subscriber_in_another_region() {
    let (east, west) = (us_east().await.events(), eu_west().await.events());
    let namespace = fresh("products");
    let mut sub = ok(
        west.subscribe(
            fresh("cache"),
            Source::Topic(format!("_invalidate.{namespace}")),
        )
        .await,
        "subscribe to the invalidations",
    );
    let sequence = ok(
        east.invalidate(&namespace, ["sku-1", "sku-2"]).await,
        "invalidate",
    );
    assert!(sequence > 0);
    let d = next_delivery(&mut sub, "the invalidation in eu-west").await;
    assert_eq!(d.event.topic, format!("_invalidate.{namespace}"));
    assert_eq!(d.event.origin_region, "us-east");
    assert_eq!(d.event.origin_sequence, sequence);
    let payload: serde_json::Value =
        serde_json::from_slice(&d.event.payload).expect("a JSON payload");
    assert_eq!(
        payload,
        serde_json::json!({"namespace": namespace, "keys": ["sku-1", "sku-2"]})
    );
    sub.ack(&d).expect("ack");
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn close_flushes_the_acks_so_the_group_resumes_after_them() {
    let events = us_east().await.events();
    let topic = fresh("flush");
    let group = fresh("g");
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("flush{i}"))).collect();
    for id in &ids {
        ok_published(
            events.publish(&topic, "k", b"x".to_vec(), id).await,
            "publish",
        );
    }
    let mut sub = ok(
        events
            .subscribe(&group, Source::Topic(topic.clone()))
            .start_sequence(1)
            .ack_wait(Duration::from_secs(30))
            .await,
        "subscribe",
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut sub, "the batch").await;
        got.push(d.event.event_id.clone());
        sub.ack(&d).expect("ack");
    }
    assert_eq!(got, ids, "in order per key");
    // Closed at once after the acks: they are applied, nothing comes again.
    ok(sub.close().await, "close");
    let later = unique("later");
    ok_published(
        events.publish(&topic, "k", b"x".to_vec(), &later).await,
        "publish",
    );
    let mut sub = ok(
        events.subscribe(&group, Source::Topic(topic.clone())).await,
        "subscribe again",
    );
    let d = next_delivery(&mut sub, "the later event").await;
    assert_eq!(d.event.event_id, later, "{d:?}");
    assert_eq!(d.attempt, 1);
    sub.ack(&d).expect("ack");
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn replay_redelivers_from_a_sequence() {
    let events = us_east().await.events();
    let topic = fresh("replay");
    let group = fresh("g");
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("replay{i}"))).collect();
    for id in &ids {
        ok_published(
            events.publish(&topic, "k", b"x".to_vec(), id).await,
            "publish",
        );
    }
    let mut sub = ok(
        events
            .subscribe(&group, Source::Topic(topic.clone()))
            .start_sequence(1)
            .await,
        "subscribe",
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut sub, "the events").await;
        sub.ack(&d).expect("ack");
        got.push(d);
    }
    ok(sub.close().await, "close");
    ok(
        events
            .replay(
                &group,
                Source::Topic(topic.clone()),
                Start::Sequence(got[1].sequence),
            )
            .await,
        "replay",
    );
    let mut sub = ok(
        events.subscribe(&group, Source::Topic(topic.clone())).await,
        "subscribe again",
    );
    for id in &ids[1..] {
        let d = next_delivery(&mut sub, "the replayed events").await;
        assert_eq!(&d.event.event_id, id);
        sub.ack(&d).expect("ack");
    }
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn run_acks_on_ok_and_nacks_on_err() {
    let events = us_east().await.events();
    let topic = fresh("run");
    let group = fresh("g");
    let event_id = unique("run");
    ok_published(
        events.publish(&topic, "k", b"x".to_vec(), &event_id).await,
        "publish",
    );
    let mut sub = ok(
        events
            .subscribe(&group, Source::Topic(topic.clone()))
            .start_sequence(1)
            .await,
        "subscribe",
    );
    let (handled, mut done) = tokio::sync::mpsc::unbounded_channel();
    let run = sub.run(|d: Delivery| {
        let handled = handled.clone();
        async move {
            let _ = handled.send(d.attempt);
            // The first attempt fails: run nacks it, and the event comes back.
            if d.attempt == 1 {
                Err("not yet")
            } else {
                Ok(())
            }
        }
    });
    let attempts = tokio::select! {
        result = run => panic!("run ended: {result:?}"),
        attempts = async {
            let mut attempts = Vec::new();
            while attempts.len() < 2 {
                attempts.push(done.recv().await.expect("the handler"));
            }
            // Room for run to send the ack of the second attempt.
            tokio::time::sleep(Duration::from_millis(200)).await;
            attempts
        } => attempts,
    };
    assert_eq!(attempts, [1, 2]);
    ok(sub.close().await, "close");
    // Acked: the group does not get it again.
    let mut sub = ok(
        events.subscribe(&group, Source::Topic(topic.clone())).await,
        "subscribe again",
    );
    nothing_more(&mut sub, Duration::from_millis(1500)).await;
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn an_acker_settles_deliveries_from_another_task() {
    let events = us_east().await.events();
    let topic = fresh("acker");
    let event_id = unique("acker");
    ok_published(
        events.publish(&topic, "k", b"x".to_vec(), &event_id).await,
        "publish",
    );
    let mut sub = ok(
        events
            .subscribe(fresh("g"), Source::Topic(topic.clone()))
            .start_sequence(1)
            .await,
        "subscribe",
    );
    let d = next_delivery(&mut sub, "the event").await;
    let acker = sub.acker();
    let held = d.clone();
    tokio::spawn(async move { acker.nack(&held, Some(Duration::from_millis(50))) })
        .await
        .expect("task")
        .expect("nack");
    let again = next_delivery(&mut sub, "the redelivery").await;
    assert_eq!(
        (again.event.event_id.as_str(), again.attempt),
        (event_id.as_str(), 2)
    );
    let acker = sub.acker();
    sub.ack(&again).expect("ack");
    ok(sub.close().await, "close");
    // The subscription is gone: an acker can't settle anything any more.
    assert!(matches!(acker.ack(&d), Err(Error::Unavailable { .. })));
}

#[tokio::test]
async fn a_published_event_carries_the_callers_trace() {
    let trace_id = TraceId::from_hex("5bf92f3577b34da6a3ce929d0e0e4737").unwrap();
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_hex("00f067aa0ba902b8").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let events = us_east().await.events();
    let topic = fresh("traced");
    let event_id = unique("traced");
    ok_published(
        events
            .publish(&topic, "k", b"x".to_vec(), &event_id)
            .context(cx.clone())
            .await,
        "publish",
    );
    let mut sub = ok(
        events
            .subscribe(fresh("g"), Source::Topic(topic.clone()))
            .start_sequence(1)
            .context(cx)
            .await,
        "subscribe",
    );
    let wanted = format!("-{trace_id}-");
    let served = sub.traceparent().expect("the agent sends its traceparent");
    assert!(
        served.contains(&wanted),
        "{served} is not in trace {trace_id}"
    );
    let d = next_delivery(&mut sub, "the traced event").await;
    let parent = &d.event.headers["traceparent"];
    assert!(
        parent.contains(&wanted),
        "{parent} is not in trace {trace_id}"
    );
    sub.ack(&d).expect("ack");
    ok(sub.close().await, "close");
}

#[tokio::test]
async fn events_invalid_arguments_name_the_field() {
    let events = us_east().await.events();
    let publish = |topic: &str, key: &str, event_id: &str| {
        events.publish(topic, key, b"x".to_vec(), event_id)
    };
    let id = unique("bad");
    let cases = [
        (publish("Bad Topic", "k", &id), "topic"),
        (publish("a..b", "k", &id), "topic"),
        (publish("_reserved", "k", &id), "topic"),
        (publish("ok", "", &id), "key"),
        (publish("ok", "k", ""), "event_id"),
        (
            publish("ok", "k", &id).header("Nats-Msg-Id", "sneaky"),
            "headers",
        ),
    ];
    for (call, expected) in cases {
        let request = format!("{call:?}");
        match call.await {
            Err(Error::InvalidArgument { field, rule }) => {
                assert_eq!(field, expected, "{request}: {rule}");
                assert!(!rule.is_empty());
            }
            other => panic!("{request}: expected InvalidArgument, got {other:?}"),
        }
    }
    let subscribe_cases = [
        (
            events.subscribe("Bad Group", Source::Topic("x".into())),
            "group",
        ),
        (
            events.subscribe("g", Source::Topic("a.>.b".into())),
            "topic_filter",
        ),
        (
            events
                .subscribe("g", Source::Topic("x".into()))
                .start_sequence(0),
            "start.sequence",
        ),
        (
            events
                .subscribe("g", Source::Topic("x".into()))
                .max_deliveries(1000),
            "max_deliveries",
        ),
        (
            events
                .subscribe("g", Source::Topic("x".into()))
                .ack_wait(Duration::from_millis(1)),
            "ack_wait",
        ),
        (
            events.subscribe("g", Source::Keyspace("nope".into())),
            "keyspace",
        ),
    ];
    for (call, expected) in subscribe_cases {
        let request = format!("{call:?}");
        match call.await {
            Err(Error::InvalidArgument { field, rule }) => {
                assert_eq!(field, expected, "{request}: {rule}");
            }
            other => panic!("{request}: expected InvalidArgument, got {other:?}"),
        }
    }
    match events.invalidate("products", Vec::<String>::new()).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "keys"),
        other => panic!("expected InvalidArgument on keys, got {other:?}"),
    }
    match events
        .replay("g", Source::Topic("x".into()), Start::Sequence(0))
        .await
    {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "start.sequence"),
        other => panic!("expected InvalidArgument on start.sequence, got {other:?}"),
    }
}

// -- registry and invocation -------------------------------------------------

/// A service name (a DNS label) no other test or run uses.
fn service_name(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or_default();
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "rs-{name}-{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A small HTTP service on 127.0.0.1: `GET /healthz` answers 200, `/fail`
/// answers 503, and any other request is echoed back as JSON (method, path,
/// query, headers, body).
async fn echo_server() -> std::net::SocketAddr {
    use axum::http::{HeaderMap, Method, StatusCode, Uri};

    async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> String {
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        serde_json::json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query().unwrap_or(""),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string()
    }

    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/fail",
            axum::routing::any(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Waits until `client`'s agent lists `instance_id` of `service` healthy.
async fn listed_healthy(client: &Client, service: &str, instance_id: &str) -> InstanceStatus {
    let registry = client.registry();
    let statuses = eventually(
        "the instance is listed healthy",
        || registry.list_instances().service(service).into_future(),
        |r| {
            matches!(r, Ok(list) if list.iter().any(|s| {
                s.instance.instance_id == instance_id && s.health == InstanceHealth::Healthy
            }))
        },
    )
    .await
    .unwrap();
    statuses
        .into_iter()
        .find(|s| s.instance.instance_id == instance_id)
        .unwrap()
}

fn echoed(response: &InvokeResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "{} {:?}: {e}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })
}

#[test]
fn registry_and_invocation_calls_cross_tasks() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<meridian::Registration>();
    send_sync::<meridian::RegistryClient>();
    send::<meridian::Invoke>();
    send::<<meridian::Invoke as std::future::IntoFuture>::IntoFuture>();
    send::<<meridian::registry::Register as std::future::IntoFuture>::IntoFuture>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_is_listed_healthy_invoked_from_every_region_and_deregistered() {
    let client = us_east().await;
    let addr = echo_server().await;
    let service = service_name("echo");
    let registration = ok(
        client
            .registry()
            .register(
                Instance::http(&service, addr.to_string())
                    .version("1.2.3")
                    .metadata("team", "sdk")
                    .health_path("/healthz")
                    .health_interval(Duration::from_millis(200)),
                Duration::from_secs(3),
            )
            .await,
        "register",
    );
    let id = registration.instance_id().to_owned();
    assert!(!id.is_empty());
    assert_eq!(registration.ttl(), Duration::from_secs(3));
    assert!(registration.lease_expires_at().is_some());

    let status = listed_healthy(&client, &service, &id).await;
    let listed = &status.instance;
    assert_eq!(listed.region, "us-east");
    assert_eq!(listed.endpoint, addr.to_string());
    assert_eq!(listed.protocol, Protocol::Http);
    assert_eq!(listed.version, "1.2.3");
    assert_eq!(listed.metadata.get("team").map(String::as_str), Some("sdk"));
    assert!(status.checked_at.is_some() && status.lease_expires_at.is_some());

    // A call with everything set, in a trace of ours.
    let trace_id = TraceId::from_hex("5bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_hex("10f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let response = ok(
        client
            .invoke(&service, "/things/42")
            .verb("put")
            .header("x-test", "yes")
            .query_pair("q", "a b")
            .body(b"payload".to_vec())
            .timeout(Duration::from_secs(5))
            .context(cx)
            .await,
        "invoke",
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.region, "us-east");
    assert_eq!(response.instance, id);
    assert!(response.attempts >= 1);
    let echo = echoed(&response);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/things/42");
    assert_eq!(echo["query"], "q=a%20b");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["headers"]["x-test"], "yes");
    // The deadline travels on, and so does the trace.
    assert!(echo["headers"]["meridian-timeout-ms"].is_string(), "{echo}");
    let parent = echo["headers"]["traceparent"].as_str().unwrap_or_default();
    assert!(
        parent.contains(&format!("-{trace_id}-")),
        "the instance got traceparent {parent:?}, not in trace {trace_id}"
    );

    // eu-west has no instance: once the registration has reached it, its
    // agent sends the call to us-east's.
    let eu_west = eu_west().await;
    listed_healthy(&eu_west, &service, &id).await;
    let remote = ok(
        eu_west.invoke(&service, "ping").verb("GET").await,
        "invoke from eu-west",
    );
    assert_eq!(remote.status, 200);
    assert_eq!(
        (remote.region.as_str(), remote.instance.as_str()),
        ("us-east", id.as_str())
    );
    assert_eq!(echoed(&remote)["path"], "/ping");

    // A 5xx from the instance is its answer, not an error.
    let failed = ok(client.invoke(&service, "fail").await, "invoke /fail");
    assert_eq!(failed.status, 503);
    assert!(!failed.is_success());
    assert_eq!(failed.body, b"down");

    ok(registration.close().await, "close");
    let registry = client.registry();
    let _ = eventually(
        "the instance is gone from the registry",
        || registry.list_instances().service(&service).into_future(),
        |r| matches!(r, Ok(list) if list.iter().all(|s| s.instance.instance_id != id)),
    )
    .await;
    match client.invoke(&service, "ping").await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("a service without instances: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_the_agent_lost_is_registered_again_under_the_same_id() {
    let client = us_east().await;
    let addr = echo_server().await;
    let service = service_name("lease");
    let registry = client.registry();
    let registration = ok(
        registry
            .register(
                Instance::http(&service, addr.to_string()),
                Duration::from_secs(1),
            )
            .await,
        "register",
    );
    let id = registration.instance_id().to_owned();
    listed_healthy(&client, &service, &id).await;

    // Behind the Registration's back: its next renewal finds no lease.
    ok(registry.deregister(&id).await, "deregister");
    match registry.heartbeat(&id).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("a heartbeat of a removed lease: expected NotFound, got {other:?}"),
    }
    listed_healthy(&client, &service, &id).await;
    assert!(registration.last_error().is_none());

    // Dropped, not closed: the renewals stop and the lease runs out.
    drop(registration);
    let _ = eventually(
        "the lease runs out",
        || registry.list_instances().service(&service).into_future(),
        |r| matches!(r, Ok(list) if list.iter().all(|s| s.instance.instance_id != id)),
    )
    .await;
}

#[tokio::test]
async fn registry_and_invocation_invalid_arguments_name_the_field() {
    let client = us_east().await;
    let registry = client.registry();
    let cases = [
        (
            Instance::http("Not_A_Label", "127.0.0.1:1"),
            Duration::from_secs(5),
            "instance.service",
        ),
        (
            Instance::http("fine", "no-port"),
            Duration::from_secs(5),
            "instance.endpoint",
        ),
        (
            Instance::http("fine", "127.0.0.1:1"),
            Duration::from_millis(500),
            "ttl",
        ),
        (
            Instance::http("fine", "127.0.0.1:1").health_path("no-slash"),
            Duration::from_secs(5),
            "instance.health_check.http_path",
        ),
    ];
    for (instance, ttl, expected) in cases {
        let what = format!("{instance:?} for {ttl:?}");
        match registry.register(instance, ttl).await {
            Err(Error::InvalidArgument { field, rule }) => {
                assert_eq!(field, expected, "{what}: {rule}");
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
    match client.invoke("fine", "x").verb("BREW").await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "http_verb"),
        other => panic!("expected InvalidArgument on http_verb, got {other:?}"),
    }
    match client.invoke("Bad Service", "x").await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "service"),
        other => panic!("expected InvalidArgument on service, got {other:?}"),
    }
}
