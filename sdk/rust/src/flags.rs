//! The Flag API: feature flags in flagd's format, set once for every region
//! and evaluated by the local agent (`proto/meridian/v1/flags.proto`).
//!
//! A flag is a JSON definition (`state`, `variants`, `defaultVariant`, and
//! optionally `targeting`, a JsonLogic rule that names a variant, and
//! `metadata`). [`FlagsClient::set_flag`] validates and stores it with one
//! write to the `global` quorum; every agent watches the flags into memory
//! and evaluates them locally, so an evaluation never leaves the region. The
//! agent puts its own region in every evaluation context as `region` (over
//! any `region` the caller sent), so a regional rollout is plain targeting.
//!
//! ```no_run
//! use meridian::{Client, Error};
//! use serde_json::json;
//!
//! # async fn demo(client: Client) -> Result<(), Error> {
//! let flags = client.flags();
//! let definition = r#"{
//!     "state": "ENABLED",
//!     "variants": {"on": true, "off": false},
//!     "defaultVariant": "off",
//!     "targeting": {"if": [{"==": [{"var": "region"}, "us-east"]}, "on", "off"]}
//! }"#;
//! let flag = flags.set_flag("new-checkout", definition, None).await?;
//!
//! let evaluation = flags
//!     .evaluate_flag("new-checkout", json!({"targetingKey": "user-1", "plan": "pro"}))
//!     .await?;
//! if evaluation.value == json!(true) {
//!     // the new checkout, in us-east only
//! }
//!
//! // The kill switch: the off variant everywhere, whatever the targeting.
//! flags.kill_flag("new-checkout", None, Some(flag.revision)).await?;
//! # Ok(()) }
//! ```
//!
//! An evaluation that fails (an unknown flag, targeting that names no
//! variant) is not an `Err`: as in OpenFeature, it is an evaluation with
//! reason `ERROR` and an [`error_code`](FlagEvaluation::error_code)
//! (`FLAG_NOT_FOUND`, `PARSE_ERROR`, `TARGETING_KEY_MISSING`,
//! `INVALID_CONTEXT`, `GENERAL`), so the caller falls back to its default.
//! The calls' own errors are [`Error`]s: a definition that does not validate
//! is [`Error::InvalidArgument`] naming the field and the rule (e.g.
//! `definition.defaultVariant`), a lost compare-and-set is
//! [`Error::Conflict`], an identity the policy does not allow is
//! [`Error::PermissionDenied`].
//!
//! Every call carries the trace context current when it was built (override
//! it with `.context(cx)`) and a deadline: the client's default unless the
//! call's `timeout` says otherwise.
//!
//! [`fractional`] is flagd's fractional bucketing, the same in every
//! language, for predicting which variant a targeting key gets.

mod bucketing;
mod calls;
mod wire;

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

pub use self::bucketing::{bucket_hash, fractional};
use self::wire::context_to_proto;
use crate::client::{CallOptions, TracedChannel};
use crate::error::Error;
use crate::pb;
use crate::pb::flag_service_client::FlagServiceClient;

/// One flag evaluated for one context, as OpenFeature describes it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FlagEvaluation {
    /// The flag's key.
    pub key: String,
    /// The variant's value (`true`, `"blue"`, `3`, an object, ...);
    /// [`Value::Null`] when the evaluation failed. Numbers travel as doubles:
    /// an integral one comes back as a JSON integer.
    pub value: Value,
    /// The variant's name; `None` when the evaluation failed.
    pub variant: Option<String>,
    /// OpenFeature's reason: `STATIC` (no targeting), `DEFAULT` (targeting
    /// named no variant, so the default), `TARGETING_MATCH`, `DISABLED` (the
    /// flag is disabled or killed) or `ERROR`.
    pub reason: String,
    /// When `reason` is `ERROR`, OpenFeature's error code: `FLAG_NOT_FOUND`,
    /// `PARSE_ERROR`, `TARGETING_KEY_MISSING`, `INVALID_CONTEXT` or `GENERAL`.
    pub error_code: Option<String>,
    /// What went wrong, in words, when the evaluation failed.
    pub error_details: Option<String>,
    /// The flag's `metadata`, as defined (empty if it has none).
    pub metadata: Map<String, Value>,
}

/// A stored flag.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Flag {
    /// The flag's key.
    pub key: String,
    /// Its definition in flagd's format, as canonical JSON (RFC 8785): the
    /// same text for the same definition, whatever its spacing or key order.
    pub definition: String,
    /// The storage revision: the `if_revision` for the next change.
    pub revision: u64,
    /// The identity that stored it (a SPIFFE ID).
    pub author: String,
    /// When it was stored.
    pub updated_at: Option<SystemTime>,
    /// Set while the flag is killed: the variant every evaluation returns.
    pub killed_variant: Option<String>,
}

/// Flag API calls on one agent; from [`Client::flags`](crate::Client::flags).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct FlagsClient {
    inner: FlagServiceClient<TracedChannel>,
    timeout: Option<Duration>,
}

impl FlagsClient {
    pub(crate) fn new(inner: FlagServiceClient<TracedChannel>, timeout: Option<Duration>) -> Self {
        FlagsClient { inner, timeout }
    }

    fn options(&self) -> CallOptions {
        CallOptions::new(self.timeout)
    }

    /// Evaluates flag `key` for `context` (a JSON object: `targetingKey` and
    /// any attributes, or `null` for none; a `serde_json::Map` works too).
    /// The agent adds its region as `region`. Resolves to a
    /// [`FlagEvaluation`], which reports a failed evaluation (an unknown
    /// flag: `error_code` `FLAG_NOT_FOUND`) rather than failing.
    ///
    /// Errors: [`Error::InvalidArgument`] naming `key`, or `context` if it is
    /// not an object (found here, before anything is sent);
    /// [`Error::PermissionDenied`], [`Error::Unavailable`],
    /// [`Error::DeadlineExceeded`].
    pub fn evaluate_flag(&self, key: impl Into<String>, context: impl Into<Value>) -> EvaluateFlag {
        let key = key.into();
        EvaluateFlag {
            client: self.clone(),
            options: self.options(),
            request: context_to_proto(context.into())
                .map(|context| pb::EvaluateFlagRequest { key, context }),
        }
    }

    /// Evaluates every flag the agent holds for `context`, as
    /// [`evaluate_flag`](Self::evaluate_flag) does. Resolves to the
    /// evaluations, by key, and the revision of the flag set evaluated (the
    /// highest revision held; the OFREP endpoint's ETag).
    ///
    /// Errors: as [`evaluate_flag`](Self::evaluate_flag).
    pub fn evaluate_all_flags(&self, context: impl Into<Value>) -> EvaluateAllFlags {
        EvaluateAllFlags {
            client: self.clone(),
            options: self.options(),
            request: context_to_proto(context.into())
                .map(|context| pb::EvaluateAllFlagsRequest { context }),
        }
    }

    /// Validates `definition` (JSON in flagd's format, at most 64 KiB) and,
    /// if it validates, stores it as flag `key` for every region; resolves to
    /// the stored [`Flag`]. With `if_revision`, stores only if the flag is at
    /// that revision (`Some(0)`: only if it does not exist yet). Setting a
    /// killed flag revives it.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the field and the rule
    /// (`key`, `definition`, `definition.defaultVariant`,
    /// `definition.targeting`, ...), and nothing is stored;
    /// [`Error::Conflict`] with the current revision if `if_revision` did not
    /// match; [`Error::QuorumUnavailable`]; [`Error::PermissionDenied`].
    pub fn set_flag(
        &self,
        key: impl Into<String>,
        definition: &str,
        if_revision: Option<u64>,
    ) -> SetFlag {
        SetFlag {
            client: self.clone(),
            options: self.options(),
            request: pb::SetFlagRequest {
                key: key.into(),
                definition: definition.to_owned(),
                if_revision,
            },
        }
    }

    /// Flag `key` as this agent holds it. [`Error::NotFound`] if it holds
    /// no such flag.
    pub fn get_flag(&self, key: impl Into<String>) -> GetFlag {
        GetFlag {
            client: self.clone(),
            options: self.options(),
            request: pb::GetFlagRequest { key: key.into() },
        }
    }

    /// Every flag this agent holds, by key.
    pub fn list_flags(&self) -> ListFlags {
        ListFlags {
            client: self.clone(),
            options: self.options(),
            request: pb::ListFlagsRequest {},
        }
    }

    /// The kill switch: from this one global write on, flag `key` evaluates
    /// to `variant` in every region, whatever its targeting, with reason
    /// `DISABLED`. `None`: the variant named `off`, else the one variant
    /// whose value is `false`. The definition is kept;
    /// [`set_flag`](Self::set_flag) revives it. Resolves to the killed
    /// [`Flag`] (its [`killed_variant`](Flag::killed_variant) set).
    ///
    /// Errors: [`Error::NotFound`]; [`Error::InvalidArgument`] naming
    /// `variant` (not one of the flag's, or no off variant to default to);
    /// [`Error::Conflict`] if `if_revision` did not match.
    pub fn kill_flag(
        &self,
        key: impl Into<String>,
        variant: Option<&str>,
        if_revision: Option<u64>,
    ) -> KillFlag {
        KillFlag {
            client: self.clone(),
            options: self.options(),
            request: pb::KillFlagRequest {
                key: key.into(),
                variant: variant.unwrap_or_default().to_owned(),
                if_revision,
            },
        }
    }

    /// Removes flag `key` for every region; its evaluations then fail with
    /// `FLAG_NOT_FOUND`. Resolves to the revision of the removal.
    ///
    /// Errors: [`Error::NotFound`]; [`Error::Conflict`] if `if_revision` did
    /// not match.
    pub fn delete_flag(&self, key: impl Into<String>, if_revision: Option<u64>) -> DeleteFlag {
        DeleteFlag {
            client: self.clone(),
            options: self.options(),
            request: pb::DeleteFlagRequest {
                key: key.into(),
                if_revision,
            },
        }
    }
}

/// Declares a call builder with the options every call has.
macro_rules! call {
    ($(#[$doc:meta])* $name:ident($request:ty)) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a call does nothing until it is awaited"]
        pub struct $name {
            client: FlagsClient,
            options: CallOptions,
            request: $request,
        }

        impl $name {
            /// Fails with [`Error::DeadlineExceeded`] if no answer came within
            /// `timeout` (sent to the agent as the gRPC deadline too).
            pub fn timeout(mut self, timeout: Duration) -> Self {
                self.options.timeout = Some(timeout);
                self
            }

            /// No deadline for this call.
            pub fn no_timeout(mut self) -> Self {
                self.options.timeout = None;
                self
            }

            /// Propagates `cx`'s trace context instead of the one that was
            /// current when the call was built.
            pub fn context(mut self, cx: opentelemetry::Context) -> Self {
                self.options.context = cx;
                self
            }
        }
    };
}

call! {
    /// An evaluation; see [`FlagsClient::evaluate_flag`]. Await it for a
    /// [`FlagEvaluation`].
    EvaluateFlag(Result<pb::EvaluateFlagRequest, Error>)
}

call! {
    /// An evaluation of every flag; see [`FlagsClient::evaluate_all_flags`].
    /// Await it for the evaluations and the flag set's revision.
    EvaluateAllFlags(Result<pb::EvaluateAllFlagsRequest, Error>)
}

call! {
    /// A flag being stored; see [`FlagsClient::set_flag`].
    SetFlag(pb::SetFlagRequest)
}

call! {
    /// A read of one flag; see [`FlagsClient::get_flag`].
    GetFlag(pb::GetFlagRequest)
}

call! {
    /// A listing of the flags; see [`FlagsClient::list_flags`].
    ListFlags(pb::ListFlagsRequest)
}

call! {
    /// A kill; see [`FlagsClient::kill_flag`].
    KillFlag(pb::KillFlagRequest)
}

call! {
    /// A removal; see [`FlagsClient::delete_flag`].
    DeleteFlag(pb::DeleteFlagRequest)
}

#[cfg(test)]
mod tests;
