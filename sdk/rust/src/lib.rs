//! Rust client for a Meridian agent.
//!
//! A service talks to the Meridian agent in its own region over gRPC. This
//! crate wraps the generated client ([`pb`]) in a typed async API on tokio:
//!
//! - [`Client`]: one connection to an agent; [`Client::state`] for the State
//!   API, [`Client::health`] and [`Client::status`] for the agent itself;
//! - [`state`]: `get` at a chosen [`Consistency`], `put` (optionally
//!   compare-and-set with `if_revision`), `create`, `delete`, `scan` (by page
//!   or as a stream), `increment`, `set_add`, `set_remove` and `watch` (a
//!   stream of changes);
//! - [`idempotency`]: [`Client::idempotency`] runs a command once per
//!   idempotency key, across regions: `begin`/`complete`/`abort`, or
//!   [`IdempotencyClient::once`] around a closure;
//! - [`events`]: [`Client::events`] publishes events and consumes them in
//!   durable consumer groups of every region ([`Subscription`]: a stream of
//!   [`Delivery`]s to ack or nack), consumes a keyspace's change feed,
//!   replays a group and fans cache invalidations out;
//! - [`registry`]: [`Client::registry`] registers this service's instances
//!   (a [`Registration`] renews its lease in the background and deregisters
//!   on [`Registration::close`]) and lists every region's instances;
//! - [`invocation`]: [`Client::invoke`] calls another service's HTTP
//!   endpoint through the agent, which picks a healthy instance (local region
//!   first) and fails over across regions ([`InvokeResponse`] says who answered);
//! - [`flags`]: [`Client::flags`] sets, kills and deletes feature flags
//!   (flagd's format) for every region and evaluates them in the agent's
//!   own ([`FlagEvaluation`]); [`flags::fractional`] is flagd's bucketing;
//! - [`tls`]: [`ClientBuilder::tls`] connects with mutual TLS, presenting a
//!   SPIFFE identity from files ([`TlsFiles`]) that are read again when
//!   they are re-issued, and accepting only an agent of the same trust domain;
//! - [`Error`]: typed errors rebuilt from the agent's stable error codes;
//! - [`canonical`] and [`hlc`]: canonical JSON fingerprints and HLC
//!   timestamps, byte for byte the same as the agent's (checked against the
//!   shared vectors in `testdata/`).
//!
//! Every call carries the caller's OpenTelemetry trace context as a W3C
//! `traceparent` ([`trace`]) and a deadline (10 s unless set otherwise).
//!
//! ```no_run
//! use std::time::Duration;
//! use meridian::{Client, Consistency, Error};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::connect("http://127.0.0.1:14020").await?;
//! let state = client.state();
//!
//! let written = state.put("accounts", "alice", b"100".to_vec()).await?;
//! let read = state.get("accounts", "alice", Consistency::Strong).await?;
//! assert_eq!(read.entry.value, b"100");
//!
//! // Compare-and-set: fails with the current revision if someone else wrote first.
//! match state.put("accounts", "alice", b"90".to_vec()).if_revision(written.revision).await {
//!     Ok(w) => println!("now at revision {}", w.revision),
//!     Err(Error::Conflict { current_revision, .. }) => println!("lost to {current_revision}"),
//!     Err(e) => return Err(e),
//! }
//!
//! // A read that may be up to half a second stale, served from the local region.
//! let nearby = state
//!     .get("accounts", "alice", Consistency::Bounded(Duration::from_millis(500)))
//!     .timeout(Duration::from_secs(1))
//!     .await?;
//! println!("{:?} may be {:?} stale", nearby.entry.value, nearby.staleness_bound);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod canonical;
mod client;
mod error;
pub mod events;
pub mod flags;
pub mod hlc;
pub mod idempotency;
pub mod invocation;
pub mod registry;
pub mod state;
pub mod tls;
pub mod trace;
mod types;

/// The generated protobuf messages and gRPC clients of `proto/meridian/v1`
/// (every `.proto` there), built by `build.rs`. Never edited by hand.
pub mod pb {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        rustdoc::invalid_html_tags
    )]
    tonic::include_proto!("meridian.v1");
}

pub use client::{Client, ClientBuilder, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES, TracedChannel};
pub use error::{CURRENT_REVISION_METADATA, ERROR_CODE_METADATA, ERROR_FIELD_METADATA, Error};
pub use events::{
    Acker, Delivery, Event, EventsClient, OutgoingEvent, Published, Source, Start, Subscription,
};
pub use flags::{Flag, FlagEvaluation, FlagsClient};
pub use idempotency::{Begun, IdempotencyClient, OnceError, OnceResult, Outcome, StoredResponse};
pub use invocation::{Invoke, InvokeResponse};
pub use registry::{
    Instance, InstanceHealth, InstanceStatus, Lease, Protocol, Registration, RegistryClient,
};
pub use state::{PutItem, StateClient, WatchStream};
pub use tls::TlsFiles;
pub use types::{
    Consistency, Entry, Health, Page, ReadLevel, ReadResult, ServingStatus, Sibling, WatchEvent,
    WatchKind, WriteResult,
};
