//! The shared cross-language vectors in `testdata/` (see testdata/README.md),
//! checked byte for byte. Python and Go check the same files.

use std::path::PathBuf;

use meridian::canonical::{PayloadKind, canonicalize, fingerprint};
use meridian::flags::{bucket_hash, fractional};
use meridian::hlc::Timestamp;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn cases<'a>(doc: &'a Value, list: &str) -> &'a [Value] {
    let cases = doc[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list:?} list"));
    assert!(!cases.is_empty(), "the {list:?} list is empty");
    cases
}

fn field<'a>(case: &'a Value, name: &str) -> &'a str {
    case[name]
        .as_str()
        .unwrap_or_else(|| panic!("case {case} has no string {name:?}"))
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length: {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(200).collect()
}

#[test]
fn every_valid_canonical_json_vector() {
    let doc = load("canonical_json.json");
    let mut checked = 0;
    for case in cases(&doc, "valid") {
        let name = field(case, "name");
        let input = unhex(field(case, "input_hex"));
        let expected = unhex(field(case, "canonical_hex"));
        let got = canonicalize(&input).unwrap_or_else(|e| panic!("{name}: rejected: {e}"));
        assert!(
            got == expected,
            "{name}:\n  got      {}\n  expected {}",
            shown(&got),
            shown(&expected)
        );
        // The canonical form is its own canonical form.
        assert_eq!(
            canonicalize(&got).unwrap(),
            got,
            "{name}: not a fixed point"
        );
        checked += 1;
    }
    assert_eq!(checked, cases(&doc, "valid").len());
}

#[test]
fn every_invalid_canonical_json_vector() {
    let doc = load("canonical_json.json");
    for case in cases(&doc, "invalid") {
        let name = field(case, "name");
        let rule = field(case, "rule");
        let input = unhex(field(case, "input_hex"));
        match canonicalize(&input) {
            Ok(out) => panic!("{name}: accepted as {}", shown(&out)),
            Err(e) => assert!(
                e.to_string().contains(rule),
                "{name}: error {e:?} does not say {rule:?}"
            ),
        }
    }
}

#[test]
fn every_fingerprint_vector() {
    let doc = load("fingerprint.json");
    for case in cases(&doc, "cases") {
        let name = field(case, "name");
        let kind = match field(case, "kind") {
            "json" => PayloadKind::Json,
            "binary" => PayloadKind::Binary,
            other => panic!("{name}: unknown kind {other:?}"),
        };
        let payload = unhex(field(case, "payload_hex"));
        let got = fingerprint(&payload, kind).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, field(case, "fingerprint"), "{name}");
    }
}

#[test]
fn every_valid_hlc_vector() {
    let doc = load("hlc.json");
    for case in cases(&doc, "valid") {
        let wall_ms = case["wall_ms"].as_u64().expect("wall_ms");
        let logical = u16::try_from(case["logical"].as_u64().expect("logical")).expect("16 bits");
        let int: u64 = field(case, "int").parse().expect("int is a decimal u64");
        let encoded = field(case, "encoded");

        let ts = Timestamp::new(wall_ms, logical).expect("in range");
        assert_eq!(ts.to_u64(), int, "{case}");
        assert_eq!(ts.encode(), encoded, "{case}");
        assert_eq!(ts.to_string(), encoded, "{case}");
        assert_eq!(Timestamp::from_u64(int), ts, "{case}");
        assert_eq!(Timestamp::decode(encoded).expect("decodes"), ts, "{case}");
        assert_eq!((ts.wall_ms(), ts.logical()), (wall_ms, logical), "{case}");
    }
}

#[test]
fn every_invalid_hlc_vector() {
    let doc = load("hlc.json");
    for case in cases(&doc, "invalid") {
        let text = field(case, "text");
        let rule = field(case, "rule");
        match Timestamp::decode(text) {
            Ok(ts) => panic!("{text:?} decoded as {ts:?}"),
            Err(e) => assert!(
                e.to_string().contains(rule),
                "{text:?}: error {e} does not say {rule:?}"
            ),
        }
    }
}

/// A `fractional` case's weights, as (variant, weight) pairs.
fn weights(case: &Value) -> Vec<(String, u32)> {
    case["weights"]
        .as_array()
        .unwrap_or_else(|| panic!("case {case} has no weights list"))
        .iter()
        .map(|pair| {
            let variant = pair[0].as_str().unwrap_or_else(|| panic!("{case}: {pair}"));
            let weight = pair[1].as_u64().unwrap_or_else(|| panic!("{case}: {pair}"));
            let weight = u32::try_from(weight).unwrap_or_else(|_| panic!("{case}: {pair}"));
            (variant.to_owned(), weight)
        })
        .collect()
}

#[test]
fn every_bucketing_hash_vector() {
    let doc = load("flag_bucketing.json");
    for case in cases(&doc, "hash") {
        let input = field(case, "input");
        let expected = case["murmur3_x86_32"].as_u64().expect("murmur3_x86_32");
        assert_eq!(u64::from(bucket_hash(input)), expected, "{input:?}");
    }
}

#[test]
fn every_fractional_vector() {
    let doc = load("flag_bucketing.json");
    for case in cases(&doc, "fractional") {
        let bucket_by = field(case, "bucket_by");
        let weights = weights(case);
        assert_eq!(
            fractional(bucket_by, &weights),
            Some(field(case, "variant")),
            "{bucket_by:?} over {weights:?}"
        );
    }
}

#[test]
fn other_weights_move_some_fractional_vector() {
    // The check above is not vacuous: the same inputs over the same weights
    // in the other order (which moves the bucket boundaries) pick another
    // variant for some vectors. A 50/50 split reversed moves every one.
    let doc = load("flag_bucketing.json");
    let (mut tried, mut moved) = (0, 0);
    for case in cases(&doc, "fractional") {
        let mut reversed = weights(case);
        reversed.reverse();
        tried += 1;
        if fractional(field(case, "bucket_by"), &reversed) != Some(field(case, "variant")) {
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "reversing the weights moved none of {tried} vectors"
    );
}
