//! The State API: reads at each consistency, batches, compare-and-set,
//! counters, sets, scans and watches.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use meridian::{Consistency, Error, PutItem, ReadLevel, WatchKind};

use crate::common::{
    COUNTER, GLOBAL, REPLICATED, SET, connect, eventually, ok, regions, unique, us_east,
};

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
