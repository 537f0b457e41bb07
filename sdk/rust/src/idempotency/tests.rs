use super::*;

#[test]
fn a_stored_response_round_trips_through_its_proto() {
    let response = StoredResponse::new(201, b"{}".to_vec())
        .header("content-type", "application/json")
        .header("x-b", "2");
    assert_eq!(
        StoredResponse::from_proto(response.to_proto()),
        response,
        "headers, status and body survive"
    );
}

#[test]
fn an_unknown_outcome_is_an_internal_error() {
    let err = Begun::from_proto(pb::BeginResponse {
        outcome: 99,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, Error::Internal { .. }), "{err:?}");
}

#[test]
fn once_error_exposes_the_meridian_error() {
    let busy: OnceError<std::io::Error> = Error::IdempotencyInProgress {
        message: "busy".into(),
        lease_expires_at: None,
    }
    .into();
    assert!(busy.is_in_progress());
    assert_eq!(
        busy.meridian().and_then(Error::code),
        Some("IDEMPOTENCY_IN_PROGRESS")
    );
    let failed: OnceError<Error> = OnceError::Command(Error::NotFound {
        message: "x".into(),
    });
    assert!(!failed.is_in_progress());
    assert_eq!(failed.into_inner().code(), Some("NOT_FOUND"));
}
