use super::*;

fn canon(text: &str) -> Result<String, Rule> {
    canonicalize(text.as_bytes())
        .map(|b| String::from_utf8(b).unwrap())
        .map_err(|e| e.rule())
}

#[test]
fn a_deep_document_is_rejected_without_overflowing_the_stack() {
    let deep = "[".repeat(200_000) + &"]".repeat(200_000);
    assert_eq!(canon(&deep), Err(Rule::TooDeep));
    let open = "{\"a\":".repeat(100_000);
    assert_eq!(canon(&open), Err(Rule::NotJson));
}

#[test]
fn a_syntax_error_wins_over_a_deferred_rule() {
    assert_eq!(canon(r#"["\ud800",]"#), Err(Rule::NotJson));
    assert_eq!(canon(r#"["\ud800", 1e999]"#), Err(Rule::NotADouble));
}

#[test]
fn the_first_deferred_violation_in_document_order_wins() {
    let deep = "[".repeat(130) + &"]".repeat(130);
    assert_eq!(
        canon(&format!(r#"["\udc00",{deep}]"#)),
        Err(Rule::LoneSurrogate)
    );
    assert_eq!(canon(&format!(r#"[{deep},"\udc00"]"#)), Err(Rule::TooDeep));
}

#[test]
fn distinct_lone_surrogates_are_distinct_keys() {
    assert_eq!(
        canon(r#"{"\ud800":1,"\ud801":2}"#),
        Err(Rule::LoneSurrogate)
    );
}

#[test]
fn a_too_large_document_is_rejected() {
    let big = format!("\"{}\"", "a".repeat(MAX_DOCUMENT_BYTES));
    assert_eq!(canon(&big), Err(Rule::TooLarge));
}

#[test]
fn a_tiny_number_rounds_to_zero() {
    assert_eq!(canon("1e-400").as_deref(), Ok("0"));
    assert_eq!(canon("-1e-400").as_deref(), Ok("0"));
}
