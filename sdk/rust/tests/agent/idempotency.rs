//! The Idempotency API: begin, complete and abort, leases and fencing, and
//! `once` across regions.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use meridian::canonical::PayloadKind;
use meridian::{Error, OnceError, Outcome, StoredResponse};

use crate::common::{connect, eu_west, ok, regions, unique, us_east};

const SCOPE: &str = "shop";
const ORDER: &[u8] = br#"{"sku":"A-1","qty":2}"#;

fn stored_ok() -> StoredResponse {
    StoredResponse::new(201, br#"{"order":"o-1"}"#.to_vec())
        .header("content-type", "application/json")
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
