//! Properties of canonical JSON over generated documents: any JSON text has a
//! canonical form that is its own canonical form, and no input panics.

use meridian::canonical::canonicalize;
use meridian::hlc::Timestamp;
use proptest::prelude::*;

/// A JSON string literal, with a random mix of raw and escaped characters.
fn json_string() -> impl Strategy<Value = String> {
    prop::collection::vec((any::<char>(), 0u8..4), 0..8).prop_map(|chars| {
        let mut out = String::from("\"");
        for (c, style) in chars {
            match (c, style) {
                ('"', _) => out.push_str("\\\""),
                ('\\', _) => out.push_str("\\\\"),
                (c, _) if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                // Escape some characters as \u (surrogate pairs beyond the BMP).
                (c, 0) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                (c, _) => out.push(c),
            }
        }
        out.push('"');
        out
    })
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (any::<i32>(), 0u32..1000, -300i32..300).prop_map(|(i, f, e)| format!("{i}.{f}E{e}")),
        "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?",
    ]
}

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,2}"
}

fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec((inner.clone(), ws()), 0..6).prop_map(|items| {
                let body: Vec<String> = items
                    .into_iter()
                    .map(|(v, w)| format!("{w}{v}{w}"))
                    .collect();
                format!("[{}]", body.join(","))
            }),
            prop::collection::btree_map(json_string(), inner, 0..6).prop_map(|members| {
                // Unique keys by construction (distinct literals may still
                // decode to the same key; such documents must be rejected).
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k} : {v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

proptest! {
    // Failures print their input; nothing to persist in the source tree.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn canonical_form_is_a_fixed_point(text in json_text()) {
        match canonicalize(text.as_bytes()) {
            Ok(canonical) => prop_assert_eq!(canonicalize(&canonical).unwrap(), canonical),
            // Only two distinct spellings of one key may make generated text invalid.
            Err(e) => prop_assert!(e.to_string().contains("unique"), "{text}: {e}"),
        }
    }

    #[test]
    fn canonical_form_agrees_with_serde_json(text in json_text()) {
        if let Ok(canonical) = canonicalize(text.as_bytes()) {
            let ours: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert!(same_json(&ours, &theirs), "{text}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = canonicalize(&bytes);
    }

    #[test]
    fn json_like_text_never_panics(text in "[\\[\\]{}\":,0-9eE+\\-.\\\\u tfnrl aNI]{0,64}") {
        if let Ok(canonical) = canonicalize(text.as_bytes()) {
            prop_assert_eq!(canonicalize(&canonical).unwrap(), canonical);
        }
    }

    #[test]
    fn hlc_round_trips(value in any::<u64>()) {
        let ts = Timestamp::from_u64(value);
        prop_assert_eq!(ts.to_u64(), value);
        prop_assert_eq!(Timestamp::decode(&ts.encode()).unwrap(), ts);
    }

    #[test]
    fn hlc_text_order_is_time_order(a in any::<u64>(), b in any::<u64>()) {
        let (ta, tb) = (Timestamp::from_u64(a), Timestamp::from_u64(b));
        prop_assert_eq!(ta.encode().cmp(&tb.encode()), a.cmp(&b));
        prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
    }
}

/// Equal as JSON values, numbers compared as doubles.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q)),
        (Object(x), Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
