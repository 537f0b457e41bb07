//! Typed errors, rebuilt from the stable codes the agent sends.
//!
//! The agent maps each error it raises to a gRPC status and a stable string
//! code in one table (`src/meridian/transport/errors.py`, written out as
//! `testdata/errors.json`), and sends them as `google.rpc.Status` details: an
//! `ErrorInfo` whose `reason` is the code (domain `meridian.dev`) and whose
//! `metadata` holds the structured fields (`currentRevision` for a conflict),
//! plus a `BadRequest` naming the fields of an invalid argument. [`Error`]
//! rebuilds the typed error from those details with `tonic-types`, never from
//! the message text, so callers match on variants, not strings:
//!
//! ```text
//! Error
//! ├── InvalidArgument       INVALID_ARGUMENT        a bad request; names the field and the rule
//! ├── NotFound              NOT_FOUND
//! ├── Conflict              CONFLICT                carries the key's current revision
//! ├── ClockSkew             CLOCK_SKEW              the agent's clock is off its peers
//! ├── QuorumUnavailable     QUORUM_UNAVAILABLE      a global write/strong read can't reach a quorum
//! ├── Unavailable           UNAVAILABLE             the agent or a dependency can't be reached
//! ├── DeadlineExceeded      DEADLINE_EXCEEDED       the call's timeout passed
//! ├── Internal              INTERNAL                a bug in the agent (it logs the cause)
//! ├── Fenced                FENCED                  an idempotency token that lost its key
//! ├── IdempotencyInProgress IDEMPOTENCY_IN_PROGRESS another caller is running the command
//! ├── IdempotencyMismatch   IDEMPOTENCY_MISMATCH    the key was used for another request
//! ├── ResourceExhausted     RESOURCE_EXHAUSTED      a concurrency limit (bulkhead) is full
//! ├── PermissionDenied      PERMISSION_DENIED       the caller's identity may not do this
//! ├── ResidencyViolation    RESIDENCY_VIOLATION     the data may not be stored or served in this region
//! ├── Other                 a Meridian code this SDK version does not know yet
//! ├── Rpc                   any other gRPC status, without a Meridian code
//! └── Transport             the channel could not be set up
//! ```

use std::error::Error as _;
use std::time::SystemTime;

use tonic_types::StatusExt;

/// Trailer with the stable error code. The agent still sends it for clients
/// older than the `google.rpc` details; this SDK reads the details.
pub const ERROR_CODE_METADATA: &str = "meridian-error-code";
/// Trailer with a conflicting key's current revision (sent for older
/// clients; this SDK reads the `ErrorInfo` metadata).
pub const CURRENT_REVISION_METADATA: &str = "meridian-current-revision";
/// Trailer naming the offending field of an invalid argument (sent for
/// older clients; this SDK reads the `BadRequest` detail).
pub const ERROR_FIELD_METADATA: &str = "meridian-error-field";

/// `ErrorInfo.domain` of the agent's errors: a reason from another domain is
/// not a Meridian code.
const ERROR_DOMAIN: &str = "meridian.dev";
/// `ErrorInfo.metadata` key of a conflict's current revision (decimal).
const CURRENT_REVISION_KEY: &str = "currentRevision";

/// Every error a Meridian call returns.
///
/// Each variant with a Meridian code keeps the agent's message, which says
/// what happened in words; [`Error::code`] gives the stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request broke a rule; nothing was written.
    #[error("invalid argument: {field}: {rule}")]
    InvalidArgument {
        /// The (first) offending field, e.g. `key` or `consistency.max_staleness`.
        field: String,
        /// The rule it broke, in words.
        rule: String,
    },
    /// The key (or keyspace entry) does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The agent's explanation.
        message: String,
    },
    /// A conditional write (`if_revision`, `create`) lost.
    #[error("conflict (current revision {current_revision}): {message}")]
    Conflict {
        /// The key's revision now; 0 if it does not exist.
        current_revision: u64,
        /// The agent's explanation.
        message: String,
    },
    /// The agent's clock is too far off its peers to stamp writes safely.
    #[error("clock skew: {message}")]
    ClockSkew {
        /// The agent's explanation.
        message: String,
    },
    /// A quorum of regions could not be reached for a `global` write or strong read.
    #[error("quorum unavailable: {message}")]
    QuorumUnavailable {
        /// The agent's explanation.
        message: String,
    },
    /// The agent, or something it depends on, can't be reached. Retrying
    /// later may help.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What could not be reached.
        message: String,
    },
    /// The call's deadline passed before it completed. A write may or may not
    /// have been applied.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// Where the deadline was noticed.
        message: String,
    },
    /// The agent failed in a way it should not have (a bug; it logs the cause).
    #[error("internal error in the agent: {message}")]
    Internal {
        /// The agent's explanation.
        message: String,
    },
    /// An idempotency `complete` or `abort` with a fencing token that no
    /// longer holds the key: its lease ran out and another caller took the key
    /// over (or it was already aborted). Nothing was stored.
    #[error("fenced: {message}")]
    Fenced {
        /// The agent's explanation.
        message: String,
    },
    /// Another caller holds the idempotency key and is running the command
    /// now. Retry after its lease runs out (or once it completes); see
    /// [`IdempotencyClient::once`](crate::IdempotencyClient::once).
    #[error("idempotency key in progress: {message}")]
    IdempotencyInProgress {
        /// Why, in words.
        message: String,
        /// When the current holder's lease runs out, if known.
        lease_expires_at: Option<SystemTime>,
    },
    /// The idempotency key was used before with a different request (another
    /// fingerprint). Using a fresh key is the only way forward.
    #[error("idempotency key mismatch: {message}")]
    IdempotencyMismatch {
        /// Why, in words (including the fingerprint the key is bound to).
        message: String,
    },
    /// A concurrency limit is full (the bulkhead of an invoked service, for
    /// example): the call was refused before it started, so it is safe to
    /// retry after a backoff. gRPC `RESOURCE_EXHAUSTED`, HTTP 503.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// Which limit, in words.
        message: String,
    },
    /// The caller's identity (the SPIFFE ID of its client certificate) may
    /// not do this: the agent's policy refused it. Not transient: the same
    /// caller is refused again until the policy changes. gRPC
    /// `PERMISSION_DENIED`, HTTP 403.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// Who was refused what, in words.
        message: String,
    },
    /// The keyspace or topic may only be stored and served in certain
    /// regions (its residency), and the agent called is in none of them;
    /// nothing was done. Not transient: this agent refuses it again; call an
    /// agent in an allowed region. gRPC `FAILED_PRECONDITION`, HTTP 451.
    #[error("residency violation: {message}")]
    ResidencyViolation {
        /// What may be stored and served where, in words.
        message: String,
    },
    /// A stable Meridian code this version of the SDK does not know (a newer
    /// agent's); match on `code` to handle it.
    #[error("{code}: {message}")]
    Other {
        /// The stable code, as the agent sent it.
        code: String,
        /// The agent's explanation.
        message: String,
    },
    /// A gRPC status that carries no Meridian code (for example from a proxy,
    /// or `UNIMPLEMENTED` from an older agent).
    #[error("rpc failed: {0}")]
    Rpc(Box<tonic::Status>),
    /// The channel to the agent could not be set up (bad address, refused
    /// connection on `connect`).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// The stable Meridian code (`CONFLICT`, `NOT_FOUND`, ...), or `None` for
    /// [`Error::Rpc`] and [`Error::Transport`].
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::Conflict { .. } => "CONFLICT",
            Error::ClockSkew { .. } => "CLOCK_SKEW",
            Error::QuorumUnavailable { .. } => "QUORUM_UNAVAILABLE",
            Error::Unavailable { .. } => "UNAVAILABLE",
            Error::DeadlineExceeded { .. } => "DEADLINE_EXCEEDED",
            Error::Internal { .. } => "INTERNAL",
            Error::Fenced { .. } => "FENCED",
            Error::IdempotencyInProgress { .. } => "IDEMPOTENCY_IN_PROGRESS",
            Error::IdempotencyMismatch { .. } => "IDEMPOTENCY_MISMATCH",
            Error::ResourceExhausted { .. } => "RESOURCE_EXHAUSTED",
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::ResidencyViolation { .. } => "RESIDENCY_VIOLATION",
            Error::Other { code, .. } => code,
            Error::Rpc(_) | Error::Transport(_) => return None,
        })
    }

    /// Whether the same call may succeed if retried later (after a backoff):
    /// quorum loss, unavailability, clock skew, an idempotency key in
    /// progress elsewhere and a full bulkhead are transient; a deadline is
    /// retryable only for calls that are safe to repeat. This is the
    /// `retryable` column of the agent's table (`testdata/errors.json`,
    /// checked by `tests/errors_table.rs`).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::QuorumUnavailable { .. }
                | Error::Unavailable { .. }
                | Error::ClockSkew { .. }
                | Error::IdempotencyInProgress { .. }
                | Error::ResourceExhausted { .. }
        )
    }

    /// The error of one item of a `get_many` or `put_many`.
    pub(crate) fn from_item(e: crate::pb::ItemError) -> Self {
        Self::from_code(&e.code, e.message, e.current_revision)
    }

    /// The error a stable code stands for (INVALID_ARGUMENT without its field).
    fn from_code(code: &str, message: String, current_revision: u64) -> Self {
        match code {
            "INVALID_ARGUMENT" => Error::InvalidArgument {
                field: "request".into(),
                rule: message,
            },
            "NOT_FOUND" => Error::NotFound { message },
            "CONFLICT" => Error::Conflict {
                current_revision,
                message,
            },
            "CLOCK_SKEW" => Error::ClockSkew { message },
            "QUORUM_UNAVAILABLE" => Error::QuorumUnavailable { message },
            "UNAVAILABLE" => Error::Unavailable { message },
            "DEADLINE_EXCEEDED" => Error::DeadlineExceeded { message },
            "INTERNAL" => Error::Internal { message },
            "FENCED" => Error::Fenced { message },
            "IDEMPOTENCY_IN_PROGRESS" => Error::IdempotencyInProgress {
                message,
                lease_expires_at: None,
            },
            "IDEMPOTENCY_MISMATCH" => Error::IdempotencyMismatch { message },
            "RESOURCE_EXHAUSTED" => Error::ResourceExhausted { message },
            "PERMISSION_DENIED" => Error::PermissionDenied { message },
            "RESIDENCY_VIOLATION" => Error::ResidencyViolation { message },
            code => Error::Other {
                code: code.to_owned(),
                message,
            },
        }
    }

    pub(crate) fn deadline(message: impl Into<String>) -> Self {
        Error::DeadlineExceeded {
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Error {
    /// Rebuilds the typed error from the status's `google.rpc` details: the
    /// `ErrorInfo` reason is the code, its metadata the current revision of
    /// a conflict, the first `BadRequest` violation the field and rule of an
    /// invalid argument. A status without a Meridian reason (no details,
    /// details that do not decode, another domain's `ErrorInfo`) maps by its
    /// gRPC code: `DEADLINE_EXCEEDED` (and tonic's own client-side timeout)
    /// to [`Error::DeadlineExceeded`], `UNAVAILABLE` to [`Error::Unavailable`],
    /// anything else to [`Error::Rpc`]. A reason this SDK does not know is
    /// [`Error::Other`].
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        let info = status
            .get_details_error_info()
            .filter(|info| info.domain == ERROR_DOMAIN && !info.reason.is_empty());
        match info {
            Some(info) if info.reason == "INVALID_ARGUMENT" => {
                let first = status
                    .get_details_bad_request()
                    .and_then(|bad| bad.field_violations.into_iter().next());
                match first {
                    Some(v) if !v.field.is_empty() => Error::InvalidArgument {
                        field: v.field,
                        rule: v.description,
                    },
                    Some(v) => Error::InvalidArgument {
                        field: "request".into(),
                        rule: v.description,
                    },
                    None => Error::InvalidArgument {
                        field: "request".into(),
                        rule: message,
                    },
                }
            }
            Some(info) => {
                let current_revision = info
                    .metadata
                    .get(CURRENT_REVISION_KEY)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Error::from_code(&info.reason, message, current_revision)
            }
            None => match status.code() {
                tonic::Code::DeadlineExceeded => Error::DeadlineExceeded { message },
                // tonic reports its own enforcement of `grpc-timeout` as CANCELLED.
                tonic::Code::Cancelled if is_client_timeout(&status) => {
                    Error::DeadlineExceeded { message }
                }
                tonic::Code::Unavailable => Error::Unavailable { message },
                _ => Error::Rpc(Box::new(status)),
            },
        }
    }
}

fn is_client_timeout(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic::metadata::MetadataMap;
    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    /// A status as the agent sends it: its reason in an `ErrorInfo`.
    fn agent(code: tonic::Code, message: &str, reason: &str) -> tonic::Status {
        agent_with(code, message, reason, &[])
    }

    fn agent_with(
        code: tonic::Code,
        message: &str,
        reason: &str,
        metadata: &[(&str, &str)],
    ) -> tonic::Status {
        let metadata: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tonic::Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
        )
    }

    #[test]
    fn a_conflict_carries_the_current_revision() {
        let err = Error::from(agent_with(
            tonic::Code::Aborted,
            "accounts/a is at revision 7",
            "CONFLICT",
            &[(CURRENT_REVISION_KEY, "7")],
        ));
        assert!(
            matches!(
                err,
                Error::Conflict {
                    current_revision: 7,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), Some("CONFLICT"));
    }

    #[test]
    fn the_revision_is_never_read_from_the_message() {
        let err = Error::from(agent(
            tonic::Code::Aborted,
            "accounts/a is at revision 7",
            "CONFLICT",
        ));
        assert!(matches!(
            err,
            Error::Conflict {
                current_revision: 0,
                ..
            }
        ));
        for bad in ["", "seven", "-3", "99999999999999999999999"] {
            let err = Error::from(agent_with(
                tonic::Code::Aborted,
                "x",
                "CONFLICT",
                &[(CURRENT_REVISION_KEY, bad)],
            ));
            assert!(
                matches!(
                    err,
                    Error::Conflict {
                        current_revision: 0,
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn an_invalid_argument_names_the_field_and_the_rule_from_bad_request() {
        let mut details =
            ErrorDetails::with_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
        details.set_bad_request(vec![
            FieldViolation::new("key", "must not be empty"),
            FieldViolation::new("value", "must be bytes"),
        ]);
        let err = Error::from(tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "whatever the message says",
            details,
        ));
        match err {
            Error::InvalidArgument { field, rule } => {
                assert_eq!(field, "key");
                assert_eq!(rule, "must not be empty");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_invalid_argument_without_bad_request_names_the_request() {
        let err = Error::from(agent(
            tonic::Code::InvalidArgument,
            "key: odd",
            "INVALID_ARGUMENT",
        ));
        match err {
            Error::InvalidArgument { field, rule } => {
                assert_eq!(field, "request");
                assert_eq!(rule, "key: odd");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_stable_code_wins_over_the_grpc_code() {
        let err = Error::from(agent(
            tonic::Code::Unavailable,
            "no quorum",
            "QUORUM_UNAVAILABLE",
        ));
        assert!(matches!(err, Error::QuorumUnavailable { .. }));
        assert!(err.is_transient());
    }

    #[test]
    fn a_status_without_details_maps_by_grpc_code() {
        let plain = |code| Error::from(tonic::Status::new(code, "x"));
        assert!(matches!(
            plain(tonic::Code::DeadlineExceeded),
            Error::DeadlineExceeded { .. }
        ));
        assert!(matches!(
            plain(tonic::Code::Unavailable),
            Error::Unavailable { .. }
        ));
        assert!(matches!(plain(tonic::Code::Unimplemented), Error::Rpc(_)));
        assert!(matches!(plain(tonic::Code::Aborted), Error::Rpc(_)));
    }

    #[test]
    fn the_older_trailers_are_not_read() {
        let mut md = MetadataMap::new();
        md.insert(ERROR_CODE_METADATA, "CONFLICT".parse().unwrap());
        md.insert(CURRENT_REVISION_METADATA, "7".parse().unwrap());
        let err = Error::from(tonic::Status::with_metadata(tonic::Code::Aborted, "x", md));
        assert!(matches!(err, Error::Rpc(_)), "{err:?}");
    }

    #[test]
    fn garbage_details_map_by_grpc_code() {
        for garbage in [
            &b"\xff\xfe\xfd"[..],
            b"not a protobuf at all",
            b"\x0a\x05ab",
            // A Status whose only detail is an ErrorInfo that does not decode.
            b"\x08\x05\x1a\x2d\x0a\x28type.googleapis.com/google.rpc.ErrorInfo\x12\x01\xff",
        ] {
            let status = tonic::Status::with_details(
                tonic::Code::NotFound,
                "gone",
                tonic::codegen::Bytes::copy_from_slice(garbage),
            );
            let err = Error::from(status);
            match &err {
                Error::Rpc(status) => assert_eq!(status.code(), tonic::Code::NotFound),
                other => panic!("{garbage:?}: {other:?}"),
            }
            let late = Error::from(tonic::Status::with_details(
                tonic::Code::DeadlineExceeded,
                "late",
                tonic::codegen::Bytes::copy_from_slice(garbage),
            ));
            assert!(matches!(late, Error::DeadlineExceeded { .. }), "{late:?}");
        }
    }

    #[test]
    fn an_error_info_of_another_domain_or_without_a_reason_is_ignored() {
        let foreign = tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            "x",
            ErrorDetails::with_error_info("NOT_FOUND", "example.com", HashMap::new()),
        );
        assert!(matches!(Error::from(foreign), Error::Unavailable { .. }));
        let empty = agent(tonic::Code::NotFound, "x", "");
        assert!(matches!(Error::from(empty), Error::Rpc(_)));
    }

    #[test]
    fn a_code_from_a_newer_agent_is_kept() {
        let err = Error::from(agent(
            tonic::Code::FailedPrecondition,
            "something new",
            "SOMETHING_NEW",
        ));
        assert_eq!(err.code(), Some("SOMETHING_NEW"));
        assert!(matches!(err, Error::Other { .. }));
    }

    #[test]
    fn the_idempotency_codes_are_typed() {
        let typed = |code: &'static str, grpc| {
            let err = Error::from(agent(grpc, "why", code));
            assert_eq!(err.code(), Some(code), "{err:?}");
            err
        };
        assert!(matches!(
            typed("FENCED", tonic::Code::FailedPrecondition),
            Error::Fenced { .. }
        ));
        let busy = typed("IDEMPOTENCY_IN_PROGRESS", tonic::Code::Aborted);
        assert!(matches!(
            busy,
            Error::IdempotencyInProgress {
                lease_expires_at: None,
                ..
            }
        ));
        assert!(busy.is_transient());
        let mismatch = typed("IDEMPOTENCY_MISMATCH", tonic::Code::FailedPrecondition);
        assert!(matches!(mismatch, Error::IdempotencyMismatch { .. }));
        assert!(!mismatch.is_transient());
    }

    #[test]
    fn a_full_bulkhead_is_resource_exhausted_and_transient() {
        let err = Error::from(agent(
            tonic::Code::ResourceExhausted,
            "bulkhead of orders is full (64 in flight)",
            "RESOURCE_EXHAUSTED",
        ));
        assert!(matches!(err, Error::ResourceExhausted { .. }), "{err:?}");
        assert_eq!(err.code(), Some("RESOURCE_EXHAUSTED"));
        assert!(err.is_transient());
    }

    #[test]
    fn a_refused_identity_is_permission_denied_and_final() {
        let err = Error::from(agent(
            tonic::Code::PermissionDenied,
            "spiffe://td/service/orders may not write keyspace accounts",
            "PERMISSION_DENIED",
        ));
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
        assert_eq!(err.code(), Some("PERMISSION_DENIED"));
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "permission denied: spiffe://td/service/orders may not write keyspace accounts"
        );
    }

    #[test]
    fn data_kept_elsewhere_is_a_residency_violation_and_final() {
        let err = Error::from(agent(
            tonic::Code::FailedPrecondition,
            "keyspace eu-accounts may only be stored and served in eu-west; \
             this agent is in us-east: call an agent in eu-west",
            "RESIDENCY_VIOLATION",
        ));
        assert!(matches!(err, Error::ResidencyViolation { .. }), "{err:?}");
        assert_eq!(err.code(), Some("RESIDENCY_VIOLATION"));
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "residency violation: keyspace eu-accounts may only be stored and served in eu-west; \
             this agent is in us-east: call an agent in eu-west"
        );
    }
}
