//! Publishing events and where they are delivered: across regions, once per
//! event id, in batches, from a keyspace's change feed and invalidations,
//! with the caller's trace; and bad input.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use meridian::{Error, OutgoingEvent, Source, Start};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use crate::common::{
    REPLICATED, eu_west, fresh, next_delivery, nothing_more, ok, ok_published, unique, us_east,
};

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
