//! `testdata/errors.json`, the agent's error table (written by
//! `scripts/gen-vectors` from `src/meridian/transport/errors.py`), against
//! this SDK: every row's code, sent as the agent sends it (its gRPC code and
//! an `ErrorInfo` with the code as reason), must come back as the typed
//! variant with that code, transient exactly when the row is retryable; and
//! every typed variant must have a row. Python and Go check the same file.
//!
//! The checker is a function of the document, so the last test feeds it
//! wrong tables and sees that it notices.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use meridian::Error;
use serde_json::{Value, json};
use tonic_types::{ErrorDetails, StatusExt};

const DOMAIN: &str = "meridian.dev";
const ROW_KEYS: [&str; 4] = ["code", "grpc_code", "http_status", "retryable"];

fn load() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/errors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The gRPC code a row names (its name in the gRPC spec).
fn grpc_code(name: &str) -> Option<tonic::Code> {
    use tonic::Code::*;
    Some(match name {
        "CANCELLED" => Cancelled,
        "UNKNOWN" => Unknown,
        "INVALID_ARGUMENT" => InvalidArgument,
        "DEADLINE_EXCEEDED" => DeadlineExceeded,
        "NOT_FOUND" => NotFound,
        "ALREADY_EXISTS" => AlreadyExists,
        "PERMISSION_DENIED" => PermissionDenied,
        "RESOURCE_EXHAUSTED" => ResourceExhausted,
        "FAILED_PRECONDITION" => FailedPrecondition,
        "ABORTED" => Aborted,
        "OUT_OF_RANGE" => OutOfRange,
        "UNIMPLEMENTED" => Unimplemented,
        "INTERNAL" => Internal,
        "UNAVAILABLE" => Unavailable,
        "DATA_LOSS" => DataLoss,
        "UNAUTHENTICATED" => Unauthenticated,
        _ => return None,
    })
}

/// One error of every typed variant this SDK has (every variant with a
/// Meridian code but `Other`, which stands for codes it does not know).
fn every_typed_variant() -> Vec<Error> {
    let message = || "why".to_owned();
    vec![
        Error::InvalidArgument {
            field: "key".into(),
            rule: message(),
        },
        Error::NotFound { message: message() },
        Error::Conflict {
            current_revision: 1,
            message: message(),
        },
        Error::ClockSkew { message: message() },
        Error::QuorumUnavailable { message: message() },
        Error::Unavailable { message: message() },
        Error::DeadlineExceeded { message: message() },
        Error::Internal { message: message() },
        Error::Fenced { message: message() },
        Error::IdempotencyInProgress {
            message: message(),
            lease_expires_at: None,
        },
        Error::IdempotencyMismatch { message: message() },
        Error::ResourceExhausted { message: message() },
        Error::PermissionDenied { message: message() },
        Error::ResidencyViolation { message: message() },
    ]
}

/// What the SDK makes of `code` when the agent sends it with `grpc`.
fn decode(grpc: tonic::Code, code: &str) -> Error {
    Error::from(tonic::Status::with_error_details(
        grpc,
        "why",
        ErrorDetails::with_error_info(code, DOMAIN, HashMap::new()),
    ))
}

/// What is wrong with `doc` as the error table, for this SDK; empty when
/// nothing is.
fn problems(doc: &Value) -> Vec<String> {
    let mut found = Vec::new();
    if doc["domain"] != json!(DOMAIN) {
        found.push(format!(
            "domain is {}, the SDK reads {DOMAIN:?}",
            doc["domain"]
        ));
    }
    let Some(rows) = doc["errors"].as_array() else {
        found.push("no 'errors' list".to_owned());
        return found;
    };
    let mut seen = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let keys: BTreeSet<&str> = row
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if keys != ROW_KEYS.into_iter().collect() {
            found.push(format!(
                "row {i} does not have exactly the keys {ROW_KEYS:?}: {row}"
            ));
            continue;
        }
        let (Some(code), Some(grpc_name), Some(http), Some(retryable)) = (
            row["code"].as_str(),
            row["grpc_code"].as_str(),
            row["http_status"].as_u64(),
            row["retryable"].as_bool(),
        ) else {
            found.push(format!("row {i} has a value of the wrong type: {row}"));
            continue;
        };
        if !seen.insert(code.to_owned()) {
            found.push(format!("row {i}: {code} appears twice"));
            continue;
        }
        let Some(grpc) = grpc_code(grpc_name).filter(|_| grpc_name != "OK") else {
            found.push(format!(
                "row {i}: {code} has no gRPC error code {grpc_name:?}"
            ));
            continue;
        };
        if !(400..600).contains(&http) {
            found.push(format!(
                "row {i}: {code} has HTTP status {http}, not an error"
            ));
        }
        let err = decode(grpc, code);
        if matches!(err, Error::Other { .. }) {
            found.push(format!("row {i}: {code} is not a code this SDK knows"));
            continue;
        }
        if err.code() != Some(code) {
            found.push(format!("row {i}: {code} decodes as {:?}", err.code()));
        }
        if err.is_transient() != retryable {
            found.push(format!(
                "row {i}: {code} has retryable {retryable}, the SDK's is_transient is {}",
                err.is_transient()
            ));
        }
    }
    for err in every_typed_variant() {
        let code = err.code().expect("a typed variant has a code");
        if !seen.contains(code) {
            found.push(format!("{code} is a variant of the SDK but has no row"));
        }
    }
    found
}

#[test]
fn the_table_file_agrees_with_the_sdk() {
    let problems = problems(&load());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_typed_variant_is_covered_once() {
    let codes: BTreeSet<_> = every_typed_variant()
        .iter()
        .map(|e| e.code().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), every_typed_variant().len());
    assert_eq!(load()["errors"].as_array().unwrap().len(), codes.len());
}

/// A change that breaks a copy of the table.
type Change = Box<dyn Fn(&mut Value)>;

#[test]
fn the_checker_notices_a_wrong_table() {
    let conflict = |doc: &mut Value| -> usize {
        doc["errors"]
            .as_array()
            .unwrap()
            .iter()
            .position(|r| r["code"] == "CONFLICT")
            .expect("a CONFLICT row")
    };
    let broken = |change: &dyn Fn(&mut Value)| {
        let mut doc = load();
        change(&mut doc);
        problems(&doc)
    };
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "retryable flipped",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"][i]["retryable"] = json!(true);
            }),
            "CONFLICT has retryable true, the SDK's is_transient is false",
        ),
        (
            "retryable as a number",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"][i]["retryable"] = json!(0);
            }),
            "has a value of the wrong type",
        ),
        (
            "a gRPC code that does not exist",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"][i]["grpc_code"] = json!("Aborted");
            }),
            "CONFLICT has no gRPC error code \"Aborted\"",
        ),
        (
            "OK as an error",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"][i]["grpc_code"] = json!("OK");
            }),
            "CONFLICT has no gRPC error code \"OK\"",
        ),
        (
            "a success as the HTTP status",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"][i]["http_status"] = json!(200);
            }),
            "CONFLICT has HTTP status 200",
        ),
        (
            "a missing row",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"].as_array_mut().unwrap().remove(i);
            }),
            "CONFLICT is a variant of the SDK but has no row",
        ),
        (
            "an unknown code",
            Box::new(move |d| {
                let i = conflict(d);
                let mut row = d["errors"][i].clone();
                row["code"] = json!("TEAPOT");
                d["errors"].as_array_mut().unwrap().push(row);
            }),
            "TEAPOT is not a code this SDK knows",
        ),
        (
            "a duplicate row",
            Box::new(move |d| {
                let i = conflict(d);
                let row = d["errors"][i].clone();
                d["errors"].as_array_mut().unwrap().push(row);
            }),
            "CONFLICT appears twice",
        ),
        (
            "an extra key",
            Box::new(move |d| {
                let i = conflict(d);
                d["errors"][i]["message"] = json!("lost");
            }),
            "does not have exactly the keys",
        ),
        (
            "another domain",
            Box::new(|d| d["domain"] = json!("example.com")),
            "domain is \"example.com\"",
        ),
    ];
    for (name, change, says) in cases {
        let found = broken(change.as_ref());
        assert!(
            found.iter().any(|p| p.contains(says)),
            "{name}: {says:?} not in {found:#?}"
        );
    }
}

#[test]
fn a_status_the_sdk_builds_round_trips_through_tonic_types() {
    // The checker relies on tonic-types reading back what it wrote.
    let status = tonic::Status::with_error_details(
        tonic::Code::Aborted,
        "why",
        ErrorDetails::with_error_info("CONFLICT", DOMAIN, HashMap::new()),
    );
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("CONFLICT", DOMAIN)
    );
}
