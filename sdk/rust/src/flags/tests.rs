use serde_json::json;

use super::wire::{context_to_proto, value_from_proto, value_to_proto};
use super::*;

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

#[test]
fn json_round_trips_through_struct_values() {
    let value = json!({
        "targetingKey": "user-1",
        "beta": true,
        "age": 42,
        "score": 0.25,
        "tags": ["a", null, {"nested": [1, -2]}],
        "none": null,
    });
    assert_eq!(value_from_proto(value_to_proto(value.clone())), value);
    let Some(prost_types::value::Kind::StructValue(s)) = value_to_proto(value).kind else {
        panic!("an object is a Struct");
    };
    assert_eq!(s.fields.len(), 6);
    assert_eq!(s.fields["age"], number(42.0), "numbers travel as doubles");
}

#[test]
fn numbers_come_back_as_integers_when_integral() {
    assert_eq!(value_from_proto(number(3.0)), json!(3));
    assert_eq!(value_from_proto(number(-0.0)), json!(0));
    assert_eq!(value_from_proto(number(1.5)), json!(1.5));
    assert_eq!(
        value_from_proto(number(9_007_199_254_740_992.0)),
        json!(9_007_199_254_740_992_i64)
    );
    // Past 2^53 a double is not an exact integer any more: kept as a double.
    assert_eq!(value_from_proto(number(1e300)), json!(1e300));
    // A u64 past 2^53 is rounded to the nearest double on the way out.
    assert_eq!(
        value_to_proto(json!(9_007_199_254_740_993_u64)),
        number(9_007_199_254_740_992.0)
    );
    // JSON has no NaN or infinity; an absent kind is null too.
    assert_eq!(value_from_proto(number(f64::NAN)), Value::Null);
    assert_eq!(value_from_proto(number(f64::INFINITY)), Value::Null);
    assert_eq!(
        value_from_proto(prost_types::Value { kind: None }),
        Value::Null
    );
}

#[test]
fn a_context_is_an_object_or_nothing() {
    assert_eq!(context_to_proto(Value::Null).unwrap(), None);
    let context = context_to_proto(json!({"targetingKey": "u"}))
        .unwrap()
        .unwrap();
    assert_eq!(context.fields.len(), 1);
    for bad in [json!([1]), json!("user-1"), json!(1), json!(true)] {
        match context_to_proto(bad.clone()) {
            Err(Error::InvalidArgument { field, rule }) => {
                assert_eq!(field, "context");
                assert!(rule.contains("JSON object"), "{rule}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_context_fails_before_anything_is_sent() {
    // Nothing listens on port 9 of the discard service here: a call that
    // were sent would fail with Unavailable, not InvalidArgument.
    let client = crate::Client::builder("127.0.0.1:9")
        .connect_lazy()
        .unwrap();
    let flags = client.flags();
    for result in [
        flags
            .evaluate_flag("f", json!(["not", "an", "object"]))
            .await
            .err(),
        flags.evaluate_all_flags(json!(7)).await.err(),
    ] {
        assert!(
            matches!(&result, Some(Error::InvalidArgument { field, .. }) if field == "context"),
            "{result:?}"
        );
    }
}

#[test]
fn an_evaluation_is_built_from_its_proto() {
    let ok = FlagEvaluation::from_proto(pb::FlagEvaluation {
        key: "new-checkout".into(),
        value: Some(value_to_proto(json!(true))),
        variant: "on".into(),
        reason: "TARGETING_MATCH".into(),
        error_code: String::new(),
        error_details: String::new(),
        metadata: Some(super::wire::struct_to_proto(
            json!({"team": "checkout"}).as_object().unwrap().clone(),
        )),
    });
    assert_eq!(ok.value, json!(true));
    assert_eq!(ok.variant.as_deref(), Some("on"));
    assert_eq!(ok.error_code, None);
    assert_eq!(ok.metadata["team"], json!("checkout"));

    let missing = FlagEvaluation::from_proto(pb::FlagEvaluation {
        key: "gone".into(),
        reason: "ERROR".into(),
        error_code: "FLAG_NOT_FOUND".into(),
        error_details: "no flag gone".into(),
        ..pb::FlagEvaluation::default()
    });
    assert_eq!(missing.value, Value::Null);
    assert_eq!(missing.variant, None);
    assert_eq!(missing.error_code.as_deref(), Some("FLAG_NOT_FOUND"));
    assert_eq!(missing.error_details.as_deref(), Some("no flag gone"));
    assert!(missing.metadata.is_empty());
}

#[test]
fn a_flag_is_built_from_its_proto() {
    let flag = Flag::from_proto(pb::Flag {
        key: "k".into(),
        definition: r#"{"defaultVariant":"off"}"#.into(),
        revision: 7,
        author: "spiffe://td/service/ops".into(),
        updated_at: Some(prost_types::Timestamp {
            seconds: 5,
            nanos: 0,
        }),
        killed_variant: String::new(),
    });
    assert_eq!(flag.revision, 7);
    assert_eq!(
        flag.updated_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5))
    );
    assert_eq!(flag.killed_variant, None);
    let killed = Flag::from_proto(pb::Flag {
        killed_variant: "off".into(),
        ..pb::Flag::default()
    });
    assert_eq!(killed.killed_variant.as_deref(), Some("off"));
    assert_eq!(killed.updated_at, None);
}

#[test]
fn fractional_needs_some_weight() {
    let none: [(&str, u32); 0] = [];
    assert_eq!(fractional("anything", &none), None);
    assert_eq!(fractional("anything", &[("a", 0), ("b", 0)]), None);
    // A variant of weight 0 never wins, wherever the bucket falls.
    for i in 0..200 {
        let by = format!("key-{i}");
        assert_eq!(
            fractional(&by, &[("never", 0), ("always", 1)]),
            Some("always")
        );
        assert_eq!(
            fractional(&by, &[("always", 1), ("never", 0)]),
            Some("always")
        );
    }
    // Owned names work as well as borrowed ones.
    let owned = vec![("on".to_owned(), 50), ("off".to_owned(), 50)];
    assert_eq!(
        fractional("new-checkoutuser-1", &owned),
        fractional("new-checkoutuser-1", &[("on", 50), ("off", 50)])
    );
}

#[test]
fn weights_past_u32_do_not_overflow() {
    // Each weight is a u32; their sum, and its product with the hash, may
    // not be. The bucket stays below the total, so some variant always wins.
    let weights = [("a", u32::MAX), ("b", u32::MAX), ("c", u32::MAX)];
    for i in 0..100 {
        assert!(fractional(&format!("k{i}"), &weights).is_some());
    }
}

#[test]
fn shares_follow_the_weights() {
    // Not a vector check (tests/vectors.rs does that), a sanity check that
    // the buckets spread: 10,000 keys on 25/75 land near 25 %.
    let weights = [("a", 25), ("b", 75)];
    let a = (0..10_000)
        .filter(|i| fractional(&format!("flag-user-{i}"), &weights) == Some("a"))
        .count();
    assert!((2_200..2_800).contains(&a), "{a} of 10000 in a 25% variant");
}
