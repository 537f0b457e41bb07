//! The Event API: publish events, consume them in durable consumer groups in
//! every region, replay, and fan cache invalidations out
//! (`proto/meridian/v1/events.proto`).
//!
//! - [`EventsClient::publish`] writes an event to this region's stream; every
//!   region's groups see it. The `event_id` is the event's identity for
//!   deduplication (across topics and regions): a republished id is dropped
//!   ([`Published::duplicate`]) or absorbed by each group's inbox, so a group
//!   handles an event once.
//! - [`EventsClient::subscribe`] joins a consumer group of this region and
//!   resolves to a [`Subscription`]: a stream of [`Delivery`]s, each to be
//!   [`ack`](Subscription::ack)ed or [`nack`](Subscription::nack)ed on the same
//!   stream. A nack, or no ack within `ack_wait`, redelivers (with a higher
//!   [`Delivery::attempt`]); after `max_deliveries` attempts the event moves to
//!   the region's dead-letter stream and is not delivered again.
//! - [`Source::Keyspace`] consumes a keyspace's change feed the same way:
//!   every write is one event (topic `_state.<keyspace>`, header `operation`
//!   `put` or `delete`).
//! - [`EventsClient::replay`] moves a group back (or forward);
//!   [`EventsClient::invalidate`] publishes a cache invalidation that every
//!   region's subscribers of `_invalidate.<namespace>` receive.
//!
//! ```no_run
//! use std::time::Duration;
//! use meridian::{Client, Error, Source};
//!
//! # async fn apply(payload: &[u8]) -> Result<(), std::io::Error> { Ok(()) }
//! # async fn demo(client: Client) -> Result<(), Error> {
//! let events = client.events();
//! let published = events
//!     .publish("orders.placed", "order-7f3a", b"{\"total\":42}".to_vec(), "order-7f3a-placed")
//!     .header("content-type", "application/json")
//!     .await?;
//! println!("stored as {} in {}", published.sequence, published.region);
//!
//! let mut sub = events
//!     .subscribe("billing", Source::Topic("orders.*".into()))
//!     .max_deliveries(5)
//!     .ack_wait(Duration::from_secs(30))
//!     .await?;
//! while let Some(delivery) = sub.next().await {
//!     let delivery = delivery?;
//!     match apply(&delivery.event.payload).await {
//!         Ok(()) => sub.ack(&delivery)?,
//!         // Redelivered after the backoff for its attempt.
//!         Err(_) => sub.nack(&delivery, None)?,
//!     }
//! #   break;
//! }
//! // Ends the stream once the agent has applied every ack sent.
//! sub.close().await?;
//! # Ok(()) }
//! ```
//!
//! Every call carries the caller's trace context; the agent records it on a
//! published event as its `traceparent` header.

mod calls;
mod subscription;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_core::Stream;
use tokio::sync::mpsc;

use self::subscription::{ack, drain, nack, settle};
use crate::client::{CallOptions, TracedChannel};
use crate::error::Error;
use crate::pb;
use crate::pb::event_service_client::EventServiceClient;
use crate::types::duration_to_proto;

/// Event API calls on one agent; from [`Client::events`](crate::Client::events).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventsClient {
    inner: EventServiceClient<TracedChannel>,
    timeout: Option<Duration>,
}

/// What a subscription (or a replay) consumes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Events of the topics matching a filter: `orders.placed`, `orders.*`
    /// (one token), `orders.>` (one or more tokens).
    Topic(String),
    /// The change feed of a keyspace: one event per write.
    Keyspace(String),
}

/// Where a new consumer group starts, or where [`EventsClient::replay`] moves
/// a group to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Start {
    /// Only events published from now on (a new group's default).
    #[default]
    New,
    /// From this sequence of the region's aggregate stream on (at least 1;
    /// [`Delivery::sequence`] is one).
    Sequence(u64),
    /// From the first event stored at or after this time.
    Time(SystemTime),
}

/// One event of [`EventsClient::publish_batch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingEvent {
    /// As in [`EventsClient::publish`].
    pub topic: String,
    /// Order is kept per key within the publishing region.
    pub key: String,
    /// At most 1 MiB.
    pub payload: Vec<u8>,
    /// The event's identity for deduplication (required).
    pub event_id: String,
    /// Headers, as [`Publish::header`] adds them.
    pub headers: Vec<(String, String)>,
}

/// The answer to a publish.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Published {
    /// The event's sequence in the publishing region's stream.
    pub sequence: u64,
    /// The publishing region (the agent's).
    pub region: String,
    /// True when the agent recognised the `event_id` as one published before
    /// (inside JetStream's duplicate window): nothing new was stored.
    pub duplicate: bool,
}

/// One event, as a subscriber receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The topic it was published to (`_state.<keyspace>` for a change feed).
    pub topic: String,
    /// Its key: order is kept per key within the publishing region.
    pub key: String,
    /// The payload, as published (a change feed: the key's stored state).
    pub payload: Vec<u8>,
    /// Its identity for deduplication.
    pub event_id: String,
    /// The headers it was published with, plus the publisher's `traceparent`
    /// (a change feed: `operation` and `hlc`).
    pub headers: BTreeMap<String, String>,
    /// The region it was published in.
    pub origin_region: String,
    /// Its sequence in the origin region's stream ([`Published::sequence`]).
    pub origin_sequence: u64,
    /// When it was published, if known.
    pub published_at: Option<SystemTime>,
}

/// One delivery of an event to a subscriber. Ack or nack it with the
/// [`Subscription`] (or an [`Acker`]) it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Identifies this delivery on its subscription's stream.
    pub id: u64,
    /// 1 on the first delivery, then 2, 3, ... on redeliveries.
    pub attempt: u32,
    /// The event's sequence in this region's aggregate stream (for
    /// [`Start::Sequence`]).
    pub sequence: u64,
    /// The event.
    pub event: Event,
}

impl EventsClient {
    pub(crate) fn new(inner: EventServiceClient<TracedChannel>, timeout: Option<Duration>) -> Self {
        EventsClient { inner, timeout }
    }

    fn options(&self) -> CallOptions {
        CallOptions::new(self.timeout)
    }

    /// Publishes an event to `topic` (dot-separated tokens of `a-z 0-9 _ -`;
    /// topics starting with `_` are reserved). `event_id` (1..128 printable
    /// ASCII) is required: publishing the same id again, under any topic and
    /// in any region, is a duplicate that each group handles once.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the field (`topic`, `key`,
    /// `payload`, `event_id`, `headers`); nothing is published then.
    pub fn publish(
        &self,
        topic: impl Into<String>,
        key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        event_id: impl Into<String>,
    ) -> Publish {
        Publish {
            client: self.clone(),
            options: self.options(),
            request: pb::PublishRequest {
                topic: topic.into(),
                key: key.into(),
                payload: payload.into(),
                event_id: event_id.into(),
                headers: Default::default(),
            },
        }
    }

    /// Publishes up to 1000 events (8 MiB of payloads in all) in one call, for
    /// throughput. Resolves to one [`Published`] per event, in order.
    ///
    /// Every event is checked first: one bad event fails the call with
    /// [`Error::InvalidArgument`] naming `events[i].<field>`, and nothing is
    /// published. If an event is not stored the call fails and others of the
    /// batch may have been: send the same batch again, and those come back
    /// with `duplicate` set.
    pub fn publish_batch<I>(&self, events: I) -> PublishBatch
    where
        I: IntoIterator<Item = OutgoingEvent>,
    {
        PublishBatch {
            client: self.clone(),
            options: self.options(),
            request: pb::PublishBatchRequest {
                events: events.into_iter().map(OutgoingEvent::into_proto).collect(),
            },
        }
    }

    /// Joins consumer group `group` (1..64 of `a-z 0-9 _ -`) of this region,
    /// for `source`. Await it for a [`Subscription`]; every subscriber of a
    /// group shares its deliveries.
    ///
    /// The options (start, limits) take effect when the group is created; a
    /// group that exists keeps its position (move it with
    /// [`EventsClient::replay`]). A bad option fails the await with
    /// [`Error::InvalidArgument`] naming it. Opening must complete within the
    /// client's timeout (or [`Subscribe::timeout`]); the subscription itself
    /// has no deadline.
    pub fn subscribe(&self, group: impl Into<String>, source: Source) -> Subscribe {
        let source = source.into_subscribe_proto();
        Subscribe {
            client: self.clone(),
            options: self.options(),
            open: pb::SubscribeOpen {
                source: Some(source),
                group: group.into(),
                start: None,
                max_in_flight: 0,
                max_deliveries: 0,
                ack_wait: None,
            },
        }
    }

    /// Moves consumer group `group` of `source` to `start`: its events from
    /// there on are delivered again (the group's record of processed events
    /// is cleared), or skipped with [`Start::New`]. Deliveries in flight to
    /// current subscribers are redelivered.
    pub fn replay(&self, group: impl Into<String>, source: Source, start: Start) -> Replay {
        let source = source.into_replay_proto();
        Replay {
            client: self.clone(),
            options: self.options(),
            request: pb::ReplayRequest {
                group: group.into(),
                source: Some(source),
                start: Some(start.to_proto()),
            },
        }
    }

    /// Tells every region's subscribers of `_invalidate.<namespace>` to drop
    /// `keys` (1..1000) from their caches. The event's payload is the JSON
    /// `{"namespace": ..., "keys": [...]}`. Resolves to its sequence in this
    /// region's stream.
    pub fn invalidate<I, S>(&self, namespace: impl Into<String>, keys: I) -> Invalidate
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Invalidate {
            client: self.clone(),
            options: self.options(),
            request: pb::InvalidateRequest {
                namespace: namespace.into(),
                keys: keys.into_iter().map(Into::into).collect(),
            },
        }
    }
}

/// Declares a call builder with the options every call has.
macro_rules! call {
    ($(#[$doc:meta])* $name:ident { $field:ident: $request:ty }) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a call does nothing until it is awaited"]
        pub struct $name {
            client: EventsClient,
            options: CallOptions,
            $field: $request,
        }

        impl $name {
            /// Fails with [`Error::DeadlineExceeded`] if no answer came within
            /// `timeout`.
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
    /// A publish; see [`EventsClient::publish`].
    Publish { request: pb::PublishRequest }
}
impl Publish {
    /// Adds (or replaces) a header: at most 32, 8 KiB in all; names of
    /// `A-Z a-z 0-9 -`, not starting with `Nats-` or `Meridian-`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.insert(name.into(), value.into());
        self
    }

    /// Adds (or replaces) several headers.
    pub fn headers<I, K, V>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.request
            .headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
}

call! {
    /// A batch of publishes; see [`EventsClient::publish_batch`].
    PublishBatch { request: pb::PublishBatchRequest }
}

call! {
    /// A replay; see [`EventsClient::replay`].
    Replay { request: pb::ReplayRequest }
}

call! {
    /// A cache invalidation; see [`EventsClient::invalidate`]. Resolves to the
    /// invalidation event's sequence in this region's stream.
    Invalidate { request: pb::InvalidateRequest }
}

call! {
    /// Opening a subscription; see [`EventsClient::subscribe`]. Await it for a
    /// [`Subscription`]. Its `timeout` bounds the opening only.
    Subscribe { open: pb::SubscribeOpen }
}
impl Subscribe {
    /// Where a new group starts (default [`Start::New`]).
    pub fn start(mut self, start: Start) -> Self {
        self.open.start = Some(start.to_proto());
        self
    }

    /// A new group starts at this sequence of the region's aggregate stream
    /// (at least 1; 1 is its beginning).
    pub fn start_sequence(self, sequence: u64) -> Self {
        self.start(Start::Sequence(sequence))
    }

    /// A new group starts at the first event stored at or after `time`.
    pub fn start_time(self, time: SystemTime) -> Self {
        self.start(Start::Time(time))
    }

    /// Deliveries this subscriber may hold unacked at once (default 64, at
    /// most 1024).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.open.max_in_flight = n;
        self
    }

    /// Deliveries of an event before it moves to the dead-letter stream
    /// (default 5, at most 100).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.open.max_deliveries = n;
        self
    }

    /// How long a delivery may stay unacked before it is redelivered
    /// (default 30 s; 0.1 s at least).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.open.ack_wait = Some(duration_to_proto(wait));
        self
    }
}

type Requests = mpsc::UnboundedSender<Option<pb::SubscribeRequest>>;

/// Acks and nacks deliveries of one [`Subscription`]; from
/// [`Subscription::acker`]. Cheap to clone, `Send` and `Sync`, so deliveries
/// can be handled on other tasks while the subscription keeps receiving.
/// It does not keep the subscription open: once the [`Subscription`] is
/// closed or dropped, its acks fail.
#[derive(Clone, Debug)]
pub struct Acker {
    sender: mpsc::WeakUnboundedSender<Option<pb::SubscribeRequest>>,
}

impl Acker {
    /// The delivery was handled: the group will not see its event again
    /// (under this or any other event id's copy).
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the subscription has ended (the agent
    /// redelivers the event).
    pub fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        settle(
            self.sender.upgrade().as_ref(),
            delivery.id,
            ack(delivery.id),
        )
    }

    /// The delivery failed: redeliver it after `delay`, or (`None`) after the
    /// exponential backoff for its attempt. On its last attempt
    /// (`max_deliveries`) the event moves to the dead-letter stream instead.
    ///
    /// # Errors
    /// As [`Acker::ack`].
    pub fn nack(&self, delivery: &Delivery, delay: Option<Duration>) -> Result<(), Error> {
        settle(
            self.sender.upgrade().as_ref(),
            delivery.id,
            nack(delivery.id, delay),
        )
    }
}

/// One subscriber of a consumer group: a [`Stream`] of [`Delivery`]s, acked
/// or nacked on the same gRPC stream.
///
/// Ack or nack every delivery; one left alone is redelivered after the
/// group's `ack_wait`. End it with [`Subscription::close`], which lets the
/// agent apply every ack sent before it. Dropping it instead cancels the
/// stream: acks still in transit may be lost, so their events may be
/// redelivered (each group's inbox absorbs the ones whose acks arrived).
///
/// The stream ends after the first error ([`Error::Unavailable`] if the agent
/// went away, ...); subscribe again to carry on where the group is.
pub struct Subscription {
    sender: Requests,
    inner: tonic::codec::Streaming<pb::Delivery>,
    traceparent: Option<String>,
    close_timeout: Duration,
    done: bool,
}

impl Subscription {
    /// The next delivery; `None` once the agent ended the stream (after
    /// [`close`](Subscription::close), or an agent shutting down).
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Acks `delivery`; see [`Acker::ack`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the subscription has ended.
    pub fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        settle(Some(&self.sender), delivery.id, ack(delivery.id))
    }

    /// Nacks `delivery`; see [`Acker::nack`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the subscription has ended.
    pub fn nack(&self, delivery: &Delivery, delay: Option<Duration>) -> Result<(), Error> {
        settle(Some(&self.sender), delivery.id, nack(delivery.id, delay))
    }

    /// A handle that acks and nacks this subscription's deliveries from
    /// other tasks.
    pub fn acker(&self) -> Acker {
        Acker {
            sender: self.sender.downgrade(),
        }
    }

    /// The `traceparent` of the agent's span serving this subscription, when
    /// it sent one: a child of the caller's trace.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Calls `handler` for each delivery, one at a time, and acks the
    /// delivery when it returns `Ok`, nacks it (default backoff) when it
    /// returns `Err`. The handler should report its own errors: `run` only
    /// nacks.
    ///
    /// Returns `Ok(())` when the agent ends the stream, or the stream's
    /// error. To stop earlier, drop the future (for instance in a
    /// `tokio::select!` with a shutdown signal) and then
    /// [`close`](Subscription::close): a delivery whose handler was
    /// interrupted is neither acked nor nacked, so it is redelivered.
    ///
    /// # Errors
    /// The stream's error ([`Error::Unavailable`], ...).
    pub async fn run<F, Fut, E>(&mut self, mut handler: F) -> Result<(), Error>
    where
        F: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        while let Some(delivery) = self.next().await {
            let delivery = delivery?;
            let id = delivery.id;
            let outcome = match handler(delivery).await {
                Ok(()) => ack(id),
                Err(_) => nack(id, None),
            };
            settle(Some(&self.sender), id, outcome)?;
        }
        Ok(())
    }

    /// Ends the subscription gracefully: ends the request stream, then waits
    /// (up to the client's timeout, 10 s by default) for the agent to end the
    /// delivery stream, which it does once it has applied every ack and nack
    /// sent before. Deliveries that arrive meanwhile are dropped unhandled,
    /// and the agent hands them (and any other unacked delivery) back to the
    /// group at once.
    ///
    /// # Errors
    /// The stream's error, if it ended with one; [`Error::DeadlineExceeded`]
    /// if the agent did not end it in time (the stream is cancelled then).
    pub async fn close(mut self) -> Result<(), Error> {
        // The receiver may be gone already (the stream ended): nothing to flush.
        let _ = self.sender.send(None);
        if self.done {
            return Ok(());
        }
        drain(&mut self.inner, self.close_timeout).await
    }
}

#[cfg(test)]
mod tests;
