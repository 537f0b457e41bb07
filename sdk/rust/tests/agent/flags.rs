//! The Flag API: set, get and list a flag, evaluate it in two regions (the
//! agent puts its own region in the context), a fractional rollout bucketed
//! as flagd does, the kill switch, deletion, and definitions refused.
//! Every flag has a key of its own (flags are global: other tests and runs
//! share the set).

use meridian::flags::fractional;
use meridian::{Error, FlagEvaluation, FlagsClient};
use serde_json::{Value, json};

use crate::common::{eu_west, eventually, ok, unique, us_east};

/// `on` in us-east and `off` elsewhere, by targeting on `region`.
const REGIONAL: &str = r#"{
    "state": "ENABLED",
    "variants": {"on": true, "off": false},
    "defaultVariant": "off",
    "targeting": {"if": [{"==": [{"var": "region"}, "us-east"]}, "on", "off"]},
    "metadata": {"team": "checkout"}
}"#;

/// Waits until `flags`' agent evaluates `key` for `context` as `accept` wants
/// (a flag set elsewhere reaches each agent through its watch).
async fn evaluated(
    flags: &FlagsClient,
    key: &str,
    context: Value,
    what: &str,
    accept: impl Fn(&FlagEvaluation) -> bool,
) -> FlagEvaluation {
    eventually(
        what,
        || flags.evaluate_flag(key, context.clone()).into_future(),
        |r| matches!(r, Ok(e) if accept(e)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_flag_is_set_read_and_listed() {
    let flags = us_east().await.flags();
    let key = unique("flag-set");
    let set = ok(flags.set_flag(&key, REGIONAL, None).await, "set_flag");
    assert_eq!(set.key, key);
    assert!(set.revision > 0, "{set:?}");
    assert!(
        set.author.starts_with("spiffe://") && set.author.ends_with("/service/sdk-test"),
        "the author is the caller's SPIFFE ID: {set:?}"
    );
    assert!(set.updated_at.is_some(), "{set:?}");
    assert_eq!(set.killed_variant, None);
    // Stored as canonical JSON: the SDK's canonical form of what was sent.
    let canonical = meridian::canonical::canonicalize(REGIONAL.as_bytes()).unwrap();
    assert_eq!(set.definition.as_bytes(), canonical, "{set:?}");

    let got = eventually(
        "the agent holds the flag",
        || flags.get_flag(&key).into_future(),
        |r| matches!(r, Ok(f) if f.revision == set.revision),
    )
    .await
    .unwrap();
    assert_eq!(got, set);
    let listed = ok(flags.list_flags().await, "list_flags");
    assert_eq!(
        listed.iter().filter(|f| f.key == key).collect::<Vec<_>>(),
        [&set],
        "listed once, as set"
    );

    // Compare-and-set: Some(0) means "must not exist yet".
    match flags.set_flag(&key, REGIONAL, Some(0)).await {
        Err(Error::Conflict {
            current_revision, ..
        }) => assert_eq!(current_revision, set.revision),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let again = ok(
        flags.set_flag(&key, REGIONAL, Some(set.revision)).await,
        "set_flag at its revision",
    );
    assert!(again.revision > set.revision, "{again:?} after {set:?}");
    let fresh = unique("flag-new");
    let created = ok(
        flags.set_flag(&fresh, REGIONAL, Some(0)).await,
        "set_flag of a new key at revision 0",
    );
    assert_eq!(created.key, fresh);
}

#[tokio::test]
async fn evaluation_targets_the_agents_own_region() {
    let us = us_east().await.flags();
    let eu = eu_west().await.flags();
    let key = unique("flag-region");
    let set = ok(us.set_flag(&key, REGIONAL, None).await, "set_flag");

    // The caller's `region` does not count: the agent puts in its own.
    let context = json!({"targetingKey": "user-1", "region": "eu-west"});
    let on = evaluated(&us, &key, context.clone(), "us-east evaluates it", |e| {
        e.error_code.is_none()
    })
    .await;
    assert_eq!(on.key, key);
    assert_eq!(on.value, json!(true), "{on:?}");
    assert_eq!(on.variant.as_deref(), Some("on"), "{on:?}");
    assert_eq!(on.reason, "TARGETING_MATCH", "{on:?}");
    assert_eq!(on.error_details, None, "{on:?}");
    assert_eq!(on.metadata.get("team"), Some(&json!("checkout")), "{on:?}");

    let context = json!({"targetingKey": "user-1", "region": "us-east"});
    let off = evaluated(&eu, &key, context, "eu-west evaluates it", |e| {
        e.error_code.is_none()
    })
    .await;
    assert_eq!(off.value, json!(false), "{off:?}");
    assert_eq!(off.variant.as_deref(), Some("off"), "{off:?}");
    assert_eq!(off.reason, "TARGETING_MATCH", "{off:?}");

    // Every flag at once, with the revision of the set evaluated.
    let (all, revision) = ok(
        us.evaluate_all_flags(json!({"targetingKey": "user-1"}))
            .await,
        "evaluate_all_flags",
    );
    assert!(revision >= set.revision, "{revision} < {}", set.revision);
    let ours: Vec<_> = all.iter().filter(|e| e.key == key).collect();
    assert_eq!(ours.len(), 1, "{all:?}");
    assert_eq!(ours[0].variant.as_deref(), Some("on"), "{ours:?}");

    // Without targeting the default variant is served, STATIC; a Map is a context too.
    let plain = unique("flag-static");
    let definition =
        r##"{"state":"ENABLED","variants":{"red":"#f00","blue":"#00f"},"defaultVariant":"blue"}"##;
    ok(us.set_flag(&plain, definition, None).await, "set_flag");
    let context = json!({"targetingKey": "user-2"})
        .as_object()
        .unwrap()
        .clone();
    let blue = evaluated(&us, &plain, context.into(), "a static flag", |e| {
        e.error_code.is_none()
    })
    .await;
    assert_eq!(blue.value, json!("#00f"), "{blue:?}");
    assert_eq!(blue.variant.as_deref(), Some("blue"), "{blue:?}");
    assert_eq!(blue.reason, "STATIC", "{blue:?}");
    assert!(blue.metadata.is_empty(), "{blue:?}");
}

#[tokio::test]
async fn a_fractional_rollout_buckets_as_flagd_does() {
    let flags = us_east().await.flags();
    let key = unique("flag-fractional");
    let definition = json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", 50], ["off", 50]]},
    })
    .to_string();
    ok(flags.set_flag(&key, &definition, None).await, "set_flag");
    evaluated(
        &flags,
        &key,
        json!({"targetingKey": "user-0"}),
        "the agent holds the flag",
        |e| e.error_code.is_none(),
    )
    .await;

    let weights = [("on", 50), ("off", 50)];
    let mut seen = Vec::new();
    for i in 0..40 {
        let targeting_key = format!("user-{i}");
        let context = json!({ "targetingKey": targeting_key });
        let e = ok(flags.evaluate_flag(&key, context).await, "evaluate_flag");
        // bucket_by is the flag key followed by the targeting key.
        let expected = fractional(&format!("{key}{targeting_key}"), &weights);
        assert_eq!(e.variant.as_deref(), expected, "{targeting_key}: {e:?}");
        assert_eq!(e.value, json!(expected == Some("on")), "{e:?}");
        assert_eq!(e.reason, "TARGETING_MATCH", "{e:?}");
        seen.push(expected);
    }
    // 40 keys on a 50/50 split: both sides (all on one side: 2^-39).
    assert!(seen.contains(&Some("on")) && seen.contains(&Some("off")));
}

#[tokio::test]
async fn a_killed_flag_serves_its_off_variant_everywhere() {
    let us = us_east().await.flags();
    let eu = eu_west().await.flags();
    let key = unique("flag-kill");
    let set = ok(us.set_flag(&key, REGIONAL, None).await, "set_flag");
    let context = json!({"targetingKey": "user-1"});
    evaluated(&us, &key, context.clone(), "the flag is on", |e| {
        e.variant.as_deref() == Some("on")
    })
    .await;

    let killed = ok(us.kill_flag(&key, None, Some(set.revision)).await, "kill");
    assert_eq!(killed.killed_variant.as_deref(), Some("off"), "{killed:?}");
    assert!(killed.revision > set.revision, "{killed:?}");
    assert_eq!(killed.definition, set.definition, "the definition is kept");
    for (region, flags) in [("us-east", &us), ("eu-west", &eu)] {
        let off = evaluated(
            flags,
            &key,
            context.clone(),
            &format!("{region} serves the killed flag"),
            |e| e.reason == "DISABLED",
        )
        .await;
        assert_eq!(off.variant.as_deref(), Some("off"), "{region}: {off:?}");
        assert_eq!(off.value, json!(false), "{region}: {off:?}");
        assert_eq!(off.error_code, None, "{region}: {off:?}");
    }

    // Set again, it is revived.
    let revived = ok(us.set_flag(&key, REGIONAL, None).await, "set_flag");
    assert_eq!(revived.killed_variant, None, "{revived:?}");
    evaluated(&us, &key, context, "the revived flag is on", |e| {
        e.variant.as_deref() == Some("on") && e.reason == "TARGETING_MATCH"
    })
    .await;
}

#[tokio::test]
async fn a_deleted_flag_is_not_found() {
    let flags = us_east().await.flags();
    let key = unique("flag-delete");
    let set = ok(flags.set_flag(&key, REGIONAL, None).await, "set_flag");
    let context = json!({"targetingKey": "user-1"});
    evaluated(&flags, &key, context.clone(), "the flag is there", |e| {
        e.error_code.is_none()
    })
    .await;

    let revision = ok(flags.delete_flag(&key, None).await, "delete_flag");
    assert!(revision > set.revision, "{revision} <= {}", set.revision);
    let gone = evaluated(&flags, &key, context, "the flag is gone", |e| {
        e.error_code.is_some()
    })
    .await;
    assert_eq!(
        gone.error_code.as_deref(),
        Some("FLAG_NOT_FOUND"),
        "{gone:?}"
    );
    assert_eq!(gone.reason, "ERROR", "{gone:?}");
    assert_eq!(gone.value, Value::Null, "{gone:?}");
    assert_eq!(gone.variant, None, "{gone:?}");
    match flags.get_flag(&key).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }

    // A flag never set is not found either, and that is no error of the call.
    let never = ok(
        flags.evaluate_flag(unique("flag-never"), Value::Null).await,
        "evaluate_flag",
    );
    assert_eq!(
        never.error_code.as_deref(),
        Some("FLAG_NOT_FOUND"),
        "{never:?}"
    );
}

#[tokio::test]
async fn a_bad_definition_is_refused_and_nothing_stored() {
    let flags = us_east().await.flags();
    let key = unique("flag-bad");
    let no_such_default =
        r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"maybe"}"#;
    match flags.set_flag(&key, no_such_default, None).await {
        Err(Error::InvalidArgument { field, rule }) => {
            assert_eq!(field, "definition.defaultVariant", "{rule}");
            assert!(!rule.is_empty());
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match flags.set_flag(&key, "{not json", None).await {
        Err(Error::InvalidArgument { field, .. }) => {
            assert!(field.starts_with("definition"), "{field}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match flags.get_flag(&key).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("nothing is stored: expected NotFound, got {other:?}"),
    }
    let e = ok(
        flags.evaluate_flag(&key, Value::Null).await,
        "evaluate_flag",
    );
    assert_eq!(e.error_code.as_deref(), Some("FLAG_NOT_FOUND"), "{e:?}");
}
