//! Settling deliveries in a consumer group: ack, nack and redelivery,
//! dead-lettering, close, replay, `run` and an acker in another task.

use std::time::Duration;

use meridian::{Delivery, Error, Source, Start, Subscription};

use crate::common::{fresh, next_delivery, nothing_more, ok, ok_published, unique, us_east};

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
