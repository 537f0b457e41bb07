//! Typed errors, rebuilt from the stable codes the agent sends.
//!
//! The agent maps each error it raises to a gRPC status and a stable string
//! code (`src/meridian/api/errors.py`), carried in trailing metadata:
//! `meridian-error-code`, plus `meridian-current-revision` for a conflict and
//! `meridian-error-field` for an invalid argument. [`Error`] rebuilds the
//! typed error from those, so callers match on variants, not strings:
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
//! ├── Other                 a Meridian code this SDK version does not know yet
//! ├── Rpc                   any other gRPC status, without a Meridian code
//! └── Transport             the channel could not be set up
//! ```

use std::error::Error as _;
use std::time::SystemTime;

use tonic::metadata::MetadataMap;

/// Trailer with the stable error code.
pub const ERROR_CODE_METADATA: &str = "meridian-error-code";
/// Trailer with a conflicting key's current revision.
pub const CURRENT_REVISION_METADATA: &str = "meridian-current-revision";
/// Trailer naming the offending field of an invalid argument.
pub const ERROR_FIELD_METADATA: &str = "meridian-error-field";

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
            Error::Other { code, .. } => code,
            Error::Rpc(_) | Error::Transport(_) => return None,
        })
    }

    /// Whether the same call may succeed if retried later (after a backoff):
    /// quorum loss, unavailability, clock skew and an idempotency key in
    /// progress elsewhere and a full bulkhead are transient; a deadline is retryable only for
    /// calls that are safe to repeat.
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
    /// Rebuilds the typed error from the status and its trailers. A status
    /// without a Meridian code maps by its gRPC code: `DEADLINE_EXCEEDED`
    /// (and tonic's own client-side timeout) to [`Error::DeadlineExceeded`],
    /// `UNAVAILABLE` to [`Error::Unavailable`], anything else to [`Error::Rpc`].
    fn from(status: tonic::Status) -> Self {
        let md = status.metadata();
        let message = status.message().to_owned();
        match text(md, ERROR_CODE_METADATA) {
            Some("INVALID_ARGUMENT") => {
                let field = text(md, ERROR_FIELD_METADATA)
                    .unwrap_or("request")
                    .to_owned();
                // The agent's message is "field: rule[; field2: rule2]".
                let rule = message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&message)
                    .to_owned();
                Error::InvalidArgument { field, rule }
            }
            Some(code) if !code.is_empty() => Error::from_code(
                code,
                message,
                text(md, CURRENT_REVISION_METADATA)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            _ => match status.code() {
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

fn text<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
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
    use super::*;

    fn status(
        code: tonic::Code,
        message: &str,
        trailers: &[(&'static str, &str)],
    ) -> tonic::Status {
        let mut md = MetadataMap::new();
        for (k, v) in trailers {
            md.insert(*k, v.parse().unwrap());
        }
        tonic::Status::with_metadata(code, message, md)
    }

    #[test]
    fn a_conflict_carries_the_current_revision() {
        let err = Error::from(status(
            tonic::Code::Aborted,
            "accounts/a is at revision 7",
            &[
                (ERROR_CODE_METADATA, "CONFLICT"),
                (CURRENT_REVISION_METADATA, "7"),
            ],
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
    fn an_invalid_argument_names_the_field_and_the_rule() {
        let err = Error::from(status(
            tonic::Code::InvalidArgument,
            "key: must not be empty",
            &[
                (ERROR_CODE_METADATA, "INVALID_ARGUMENT"),
                (ERROR_FIELD_METADATA, "key"),
            ],
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
    fn the_stable_code_wins_over_the_grpc_code() {
        let err = Error::from(status(
            tonic::Code::Unavailable,
            "no quorum",
            &[(ERROR_CODE_METADATA, "QUORUM_UNAVAILABLE")],
        ));
        assert!(matches!(err, Error::QuorumUnavailable { .. }));
        assert!(err.is_transient());
    }

    #[test]
    fn a_status_without_a_code_maps_by_grpc_code() {
        let plain = |code| Error::from(status(code, "x", &[]));
        assert!(matches!(
            plain(tonic::Code::DeadlineExceeded),
            Error::DeadlineExceeded { .. }
        ));
        assert!(matches!(
            plain(tonic::Code::Unavailable),
            Error::Unavailable { .. }
        ));
        assert!(matches!(plain(tonic::Code::Unimplemented), Error::Rpc(_)));
    }

    #[test]
    fn a_code_from_a_newer_agent_is_kept() {
        let err = Error::from(status(
            tonic::Code::FailedPrecondition,
            "something new",
            &[(ERROR_CODE_METADATA, "SOMETHING_NEW")],
        ));
        assert_eq!(err.code(), Some("SOMETHING_NEW"));
        assert!(matches!(err, Error::Other { .. }));
    }

    #[test]
    fn the_idempotency_codes_are_typed() {
        let typed = |code: &'static str, grpc| {
            let err = Error::from(status(grpc, "why", &[(ERROR_CODE_METADATA, code)]));
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
        let err = Error::from(status(
            tonic::Code::ResourceExhausted,
            "bulkhead of orders is full (64 in flight)",
            &[(ERROR_CODE_METADATA, "RESOURCE_EXHAUSTED")],
        ));
        assert!(matches!(err, Error::ResourceExhausted { .. }), "{err:?}");
        assert_eq!(err.code(), Some("RESOURCE_EXHAUSTED"));
        assert!(err.is_transient());
    }
}
