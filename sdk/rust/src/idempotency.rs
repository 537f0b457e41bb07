//! The Idempotency API: run a command once per idempotency key
//! (`proto/meridian/v1/idempotency.proto`).
//!
//! A caller [`begin`](IdempotencyClient::begin)s a key with its request.
//! Exactly one caller at a time gets [`Outcome::New`] and a fencing token; it
//! runs the command, then [`complete`](IdempotencyClient::complete)s the key
//! with the command's response (errors included) or
//! [`abort`](IdempotencyClient::abort)s it so that a retry may run the command
//! again. Later begins of the same key get [`Outcome::Completed`] and the
//! stored response. Keys are scoped by the caller's identity (`scope`).
//!
//! [`IdempotencyClient::once`] does all of that around a closure:
//!
//! ```no_run
//! use meridian::{Client, Error, OnceError, StoredResponse};
//!
//! # async fn charge_card(body: &[u8], token: u64) -> Result<Vec<u8>, std::io::Error> { Ok(vec![]) }
//! # async fn demo(client: Client, body: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! let idem = client.idempotency();
//! let result = idem
//!     .once("shop", "order-7f3a", &body, |token| {
//!         let body = body.clone();
//!         async move {
//!             // Failures the client should see again are stored like
//!             // successes: return them as a response.
//!             let receipt = charge_card(&body, token).await?;
//!             Ok::<_, std::io::Error>(StoredResponse::new(201, receipt))
//!         }
//!     })
//!     .await;
//! match result {
//!     Ok(done) if done.replayed => println!("ran before: {}", done.response.status),
//!     Ok(done) => println!("ran now: {}", done.response.status),
//!     // Someone else is running it: retry later.
//!     Err(OnceError::Meridian(Error::IdempotencyInProgress { .. })) => {}
//!     // The command failed; the key was released, so a retry runs it again.
//!     Err(OnceError::Command(e)) => return Err(e.into()),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! Request fingerprints are computed here with
//! [`canonical::fingerprint`](crate::canonical::fingerprint) (RFC 8785
//! canonical JSON by default, raw bytes with `.binary()`), so only the 64-hex
//! digest travels to the agent.

mod calls;
mod once;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use crate::canonical::PayloadKind;
use crate::client::{CallOptions, TracedChannel};
use crate::error::Error;
use crate::pb;
use crate::pb::idempotency_service_client::IdempotencyServiceClient;

/// Idempotency API calls on one agent; from
/// [`Client::idempotency`](crate::Client::idempotency). Cheap to clone.
#[derive(Clone, Debug)]
pub struct IdempotencyClient {
    inner: IdempotencyServiceClient<TracedChannel>,
    timeout: Option<Duration>,
}

/// What a command returned, stored as given and replayed to later callers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StoredResponse {
    /// The caller's status: an HTTP status, a gRPC code, or its own.
    pub status: i32,
    /// The body (at most 1 MiB).
    pub body: Vec<u8>,
    /// Headers (at most 64, 8 KiB in all).
    pub headers: BTreeMap<String, String>,
}

impl StoredResponse {
    /// A response with `status` and `body` and no headers.
    pub fn new(status: i32, body: impl Into<Vec<u8>>) -> Self {
        StoredResponse {
            status,
            body: body.into(),
            headers: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// What [`IdempotencyClient::begin`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The caller holds the key: run the command, then complete or abort.
    New,
    /// Another caller holds the key now; try again after
    /// [`Begun::lease_expires_at`].
    InProgress,
    /// The command ran before: [`Begun::response`] is what it returned.
    Completed,
    /// The key was used with a different request; [`Begun::fingerprint`] is
    /// that request's.
    Mismatch,
}

/// The answer to a begin.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Begun {
    /// What the agent found.
    pub outcome: Outcome,
    /// The fingerprint the key is bound to (on a mismatch: the other request's).
    pub fingerprint: String,
    /// [`Outcome::New`]: pass it to complete or abort (0 otherwise). Every
    /// token issued for a key is larger than the ones before, so a resource
    /// can refuse writes from older holders.
    pub fencing_token: u64,
    /// [`Outcome::New`] and [`Outcome::InProgress`]: when the holder's lease
    /// runs out.
    pub lease_expires_at: Option<SystemTime>,
    /// [`Outcome::Completed`]: the stored response.
    pub response: Option<StoredResponse>,
    /// [`Outcome::New`]: the key was taken over from a holder whose lease
    /// ran out.
    pub took_over: bool,
    /// [`Outcome::Completed`]: when the record will be forgotten.
    pub expires_at: Option<SystemTime>,
}

/// The answer to [`IdempotencyClient::once`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OnceResult {
    /// The command's response: returned by it now, or stored before.
    pub response: StoredResponse,
    /// True when the command had run before and this is its stored response.
    pub replayed: bool,
}

/// Why [`IdempotencyClient::once`] returned no response.
#[derive(Debug)]
pub enum OnceError<E> {
    /// Meridian's answer: [`Error::IdempotencyInProgress`] while another
    /// caller runs the command, [`Error::IdempotencyMismatch`] if the key was
    /// used for a different request, or a failed begin or complete (if the
    /// complete failed, the command ran but its response was not stored: the
    /// key frees up when the lease runs out).
    Meridian(Error),
    /// The command itself failed. The key was released (aborted), so a retry
    /// runs the command again.
    Command(E),
}

impl<E> OnceError<E> {
    /// The Meridian error, if that is what this is.
    pub fn meridian(&self) -> Option<&Error> {
        match self {
            OnceError::Meridian(e) => Some(e),
            OnceError::Command(_) => None,
        }
    }

    /// Whether another caller is running the command now (retry later).
    pub fn is_in_progress(&self) -> bool {
        matches!(
            self,
            OnceError::Meridian(Error::IdempotencyInProgress { .. })
        )
    }
}

impl OnceError<Error> {
    /// For a command whose errors are Meridian errors too: either one.
    pub fn into_inner(self) -> Error {
        match self {
            OnceError::Meridian(e) | OnceError::Command(e) => e,
        }
    }
}

impl<E> From<Error> for OnceError<E> {
    fn from(e: Error) -> Self {
        OnceError::Meridian(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for OnceError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnceError::Meridian(e) => e.fmt(f),
            OnceError::Command(e) => write!(f, "the idempotent command failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for OnceError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OnceError::Meridian(e) => Some(e),
            OnceError::Command(e) => Some(e),
        }
    }
}

impl IdempotencyClient {
    pub(crate) fn new(
        inner: IdempotencyServiceClient<TracedChannel>,
        timeout: Option<Duration>,
    ) -> Self {
        IdempotencyClient { inner, timeout }
    }

    /// Claims `key` (within `scope`) for `request`, or says why not.
    ///
    /// The fingerprint of `request` is computed here: of its RFC 8785
    /// canonical JSON, or of its bytes with [`Begin::binary`]. Resolves to a
    /// [`Begun`]. Errors: [`Error::InvalidArgument`] naming `scope`, `key`,
    /// `payload` (not canonicalizable JSON) or `lease`;
    /// [`Error::QuorumUnavailable`], [`Error::ClockSkew`].
    pub fn begin(&self, scope: impl Into<String>, key: impl Into<String>, request: &[u8]) -> Begin {
        Begin {
            client: self.clone(),
            options: CallOptions::new(self.timeout),
            scope: scope.into(),
            key: key.into(),
            payload: request.to_vec(),
            kind: PayloadKind::Json,
            lease: None,
        }
    }

    /// Stores `response` as the result of the command run under
    /// `fencing_token`; resolves to when the record will be forgotten.
    /// Completing again with the same token is a no-op. [`Error::Fenced`] if
    /// the token no longer holds the key.
    pub fn complete(
        &self,
        scope: impl Into<String>,
        key: impl Into<String>,
        fencing_token: u64,
        response: StoredResponse,
    ) -> Complete {
        Complete {
            client: self.clone(),
            options: CallOptions::new(self.timeout),
            request: pb::CompleteRequest {
                scope: scope.into(),
                key: key.into(),
                fencing_token,
                response: Some(response.to_proto()),
            },
        }
    }

    /// Releases the key without a response, so the command may run again.
    /// [`Error::Fenced`] if `fencing_token` no longer holds the key.
    pub fn abort(
        &self,
        scope: impl Into<String>,
        key: impl Into<String>,
        fencing_token: u64,
    ) -> Abort {
        Abort {
            client: self.clone(),
            options: CallOptions::new(self.timeout),
            request: pb::AbortRequest {
                scope: scope.into(),
                key: key.into(),
                fencing_token,
            },
        }
    }

    /// Runs `command(fencing_token)` at most once per (`scope`, `key`) and
    /// resolves to its response; a repeat resolves to the stored response
    /// without running it ([`OnceResult::replayed`]).
    ///
    /// The command reports the failures its callers should see again in the
    /// response it returns: they are stored and replayed like successes. If it
    /// returns `Err` (or panics), the key is aborted (a failed abort is
    /// ignored: the lease runs out on its own) and the error is
    /// [`OnceError::Command`] (the panic resumes), so a retry runs it again.
    /// Otherwise the response is completed; a failed complete is
    /// [`OnceError::Meridian`].
    ///
    /// Fails with [`Error::IdempotencyInProgress`] while another caller runs
    /// the command and [`Error::IdempotencyMismatch`] if the key was used for
    /// a different request. If the returned future is dropped while the
    /// command runs, the key stays held until its lease runs out.
    pub fn once<'a, F, Fut, E>(
        &self,
        scope: impl Into<String>,
        key: impl Into<String>,
        request: &[u8],
        command: F,
    ) -> Once<'a, F>
    where
        F: FnOnce(u64) -> Fut + Send + 'a,
        Fut: Future<Output = Result<StoredResponse, E>> + Send + 'a,
        E: Send + 'a,
    {
        Once {
            begin: self.begin(scope, key, request),
            command,
            _lifetime: PhantomData,
        }
    }
}

/// Declares the options every call has.
macro_rules! call_options {
    ($name:ident $(<$lt:lifetime, $f:ident>)?, $($options:ident).+) => {
        impl$(<$lt, $f>)? $name$(<$lt, $f>)? {
            /// Fails with [`Error::DeadlineExceeded`] if no answer came within
            /// `timeout` (sent to the agent as the gRPC deadline too).
            pub fn timeout(mut self, timeout: Duration) -> Self {
                self.$($options).+.timeout = Some(timeout);
                self
            }

            /// No deadline.
            pub fn no_timeout(mut self) -> Self {
                self.$($options).+.timeout = None;
                self
            }

            /// Propagates `cx`'s trace context instead of the one that was
            /// current when the call was built.
            pub fn context(mut self, cx: opentelemetry::Context) -> Self {
                self.$($options).+.context = cx;
                self
            }
        }
    };
}

/// A begin; see [`IdempotencyClient::begin`].
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct Begin {
    client: IdempotencyClient,
    options: CallOptions,
    scope: String,
    key: String,
    payload: Vec<u8>,
    kind: PayloadKind,
    lease: Option<Duration>,
}

call_options!(Begin, options);

impl Begin {
    /// Fingerprints the request as opaque bytes instead of JSON.
    pub fn binary(self) -> Self {
        self.kind(PayloadKind::Binary)
    }

    /// How the request is fingerprinted (default [`PayloadKind::Json`]).
    pub fn kind(mut self, kind: PayloadKind) -> Self {
        self.kind = kind;
        self
    }

    /// How long the key is held before another caller may take it over
    /// (default and maximum: the agent's configuration, 30 s and 300 s
    /// unless set otherwise).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// A complete; see [`IdempotencyClient::complete`].
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct Complete {
    client: IdempotencyClient,
    options: CallOptions,
    request: pb::CompleteRequest,
}

call_options!(Complete, options);

/// An abort; see [`IdempotencyClient::abort`].
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct Abort {
    client: IdempotencyClient,
    options: CallOptions,
    request: pb::AbortRequest,
}

call_options!(Abort, options);

/// A command run once; see [`IdempotencyClient::once`]. The timeout and
/// trace context apply to each call to the agent, not to the command.
#[must_use = "a call does nothing until it is awaited"]
pub struct Once<'a, F> {
    begin: Begin,
    command: F,
    _lifetime: PhantomData<fn() -> &'a ()>,
}

call_options!(Once<'a, F>, begin.options);

impl<F> std::fmt::Debug for Once<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once")
            .field("begin", &self.begin)
            .finish_non_exhaustive()
    }
}

impl<F> Once<'_, F> {
    /// Fingerprints the request as opaque bytes instead of JSON.
    pub fn binary(mut self) -> Self {
        self.begin = self.begin.binary();
        self
    }

    /// How the request is fingerprinted (default [`PayloadKind::Json`]).
    pub fn kind(mut self, kind: PayloadKind) -> Self {
        self.begin = self.begin.kind(kind);
        self
    }

    /// How long the key is held while the command runs; see [`Begin::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.begin = self.begin.lease(lease);
        self
    }
}

#[cfg(test)]
mod tests;
