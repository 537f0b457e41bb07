//! The State API: reads, writes, scans and watches of keys (DESIGN §3).
//!
//! [`StateClient`] builds one call per method. A call is a builder: set its
//! options, then `.await` it (each implements [`IntoFuture`]):
//!
//! ```no_run
//! # async fn demo(client: meridian::Client) -> Result<(), meridian::Error> {
//! use std::time::Duration;
//! use meridian::Consistency;
//!
//! let state = client.state();
//! let read = state.get("accounts", "alice", Consistency::Bounded(Duration::from_millis(500))).await?;
//! state
//!     .put("accounts", "alice", b"90".to_vec())
//!     .if_revision(read.entry.revision)
//!     .timeout(Duration::from_secs(2))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Every call carries the trace context current when it was built (override
//! it with `.context(cx)`) and a deadline: the client's default unless the
//! call's `timeout` says otherwise. Dropping a call's future cancels the RPC;
//! a write cancelled or timed out may or may not have been applied.

mod calls;
mod watch;

use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use tokio::time::Sleep;

use crate::client::{CallOptions, TracedChannel};
use crate::error::Error;
use crate::pb;
use crate::pb::state_service_client::StateServiceClient;
use crate::types::{Consistency, Entry};

/// State API calls on one agent; from [`Client::state`](crate::Client::state).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateClient {
    inner: StateServiceClient<TracedChannel>,
    timeout: Option<Duration>,
}

impl StateClient {
    pub(crate) fn new(inner: StateServiceClient<TracedChannel>, timeout: Option<Duration>) -> Self {
        StateClient { inner, timeout }
    }

    fn options(&self) -> CallOptions {
        CallOptions::new(self.timeout)
    }

    /// Reads `key` at `consistency`.
    ///
    /// Resolves to a [`ReadResult`](crate::ReadResult): the entry (value, revision, HLC, region),
    /// the consistency served and how stale it may be. Errors:
    /// [`Error::NotFound`] if the key does not exist, [`Error::InvalidArgument`]
    /// for a bad key or keyspace (or a strong read of a `replicated` keyspace),
    /// [`Error::QuorumUnavailable`] if a strong read can't reach the leader.
    pub fn get(
        &self,
        keyspace: impl Into<String>,
        key: impl Into<String>,
        consistency: Consistency,
    ) -> Get {
        Get {
            client: self.clone(),
            options: self.options(),
            request: pb::GetRequest {
                keyspace: keyspace.into(),
                key: key.into(),
                consistency: Some(consistency.to_proto()),
            },
        }
    }

    /// Reads up to 1000 keys of `keyspace` at `consistency` in one call, for
    /// throughput. Resolves to one result per key, in order: its
    /// [`ReadResult`](crate::ReadResult), or its own error ([`Error::NotFound`] for a missing
    /// key). A bad request (keyspace, consistency, a key) fails the whole call
    /// with [`Error::InvalidArgument`] naming the field (`keys[i]`).
    pub fn get_many<I, S>(
        &self,
        keyspace: impl Into<String>,
        keys: I,
        consistency: Consistency,
    ) -> GetMany
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GetMany {
            client: self.clone(),
            options: self.options(),
            request: pb::GetManyRequest {
                keyspace: keyspace.into(),
                keys: keys.into_iter().map(Into::into).collect(),
                consistency: Some(consistency.to_proto()),
            },
        }
    }

    /// Makes up to 1000 independent Puts (8 MiB of values in all) in one call,
    /// for throughput; not a transaction. Every Put is checked first: a bad
    /// one fails the call with [`Error::InvalidArgument`] naming
    /// `puts[i].<field>`, and nothing is written. Resolves to one result per
    /// Put, in order: its [`WriteResult`](crate::WriteResult), or its own error
    /// ([`Error::Conflict`] with the current revision, ...).
    pub fn put_many(&self, puts: impl IntoIterator<Item = PutItem>) -> PutMany {
        PutMany {
            client: self.clone(),
            options: self.options(),
            request: pb::PutManyRequest {
                puts: puts
                    .into_iter()
                    .map(|p| pb::PutRequest {
                        keyspace: p.keyspace,
                        key: p.key,
                        value: p.value,
                        if_revision: p.if_revision,
                        supersedes: Vec::new(),
                    })
                    .collect(),
            },
        }
    }

    /// Writes `key`; resolves to the new revision and HLC. With
    /// [`Put::if_revision`] it is a compare-and-set.
    pub fn put(
        &self,
        keyspace: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Put {
        Put {
            client: self.clone(),
            options: self.options(),
            request: pb::PutRequest {
                keyspace: keyspace.into(),
                key: key.into(),
                value: value.into(),
                if_revision: None,
                supersedes: Vec::new(),
            },
        }
    }

    /// Writes `key` only if it does not exist (or was deleted); otherwise
    /// [`Error::Conflict`] with the key's current revision.
    pub fn create(
        &self,
        keyspace: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Create {
        Create {
            client: self.clone(),
            options: self.options(),
            request: pb::CreateRequest {
                keyspace: keyspace.into(),
                key: key.into(),
                value: value.into(),
            },
        }
    }

    /// Deletes `key`; with [`Delete::if_revision`], only at that revision.
    pub fn delete(&self, keyspace: impl Into<String>, key: impl Into<String>) -> Delete {
        Delete {
            client: self.clone(),
            options: self.options(),
            request: pb::DeleteRequest {
                keyspace: keyspace.into(),
                key: key.into(),
                if_revision: None,
            },
        }
    }

    /// Lists the keys under `prefix` (`""` for all) in key order. Await it for
    /// one [`Page`](crate::Page), or call [`Scan::stream`] for every entry. Reads are
    /// [`Consistency::Eventual`] unless [`Scan::consistency`] says otherwise.
    pub fn scan(&self, keyspace: impl Into<String>, prefix: impl Into<String>) -> Scan {
        Scan {
            client: self.clone(),
            options: self.options(),
            request: pb::ScanRequest {
                keyspace: keyspace.into(),
                prefix: prefix.into(),
                limit: 0,
                page_token: String::new(),
                consistency: Some(Consistency::Eventual.to_proto()),
            },
        }
    }

    /// Adds `delta` (negative to subtract) to a PN-counter key of a `counter`
    /// keyspace. Read the total from [`Entry::counter`].
    pub fn increment(
        &self,
        keyspace: impl Into<String>,
        key: impl Into<String>,
        delta: i64,
    ) -> Increment {
        Increment {
            client: self.clone(),
            options: self.options(),
            request: pb::IncrementRequest {
                keyspace: keyspace.into(),
                key: key.into(),
                delta,
            },
        }
    }

    /// Adds `elements` to an OR-set key of a `set` keyspace (a concurrent add
    /// wins over a remove). Read them from [`Entry::elements`].
    pub fn set_add<I, S>(
        &self,
        keyspace: impl Into<String>,
        key: impl Into<String>,
        elements: I,
    ) -> SetAdd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SetAdd {
            client: self.clone(),
            options: self.options(),
            request: set_request(keyspace, key, elements),
        }
    }

    /// Removes the `elements` this region has seen from an OR-set key.
    pub fn set_remove<I, S>(
        &self,
        keyspace: impl Into<String>,
        key: impl Into<String>,
        elements: I,
    ) -> SetRemove
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SetRemove {
            client: self.clone(),
            options: self.options(),
            request: set_request(keyspace, key, elements),
        }
    }

    /// Streams every change to keys under `prefix`, in the order this region
    /// applied them: from the next change on, or replayed from
    /// [`Watch::from_revision`]. Await it for a [`WatchStream`].
    ///
    /// A watch has no deadline unless [`Watch::timeout`] sets one; the
    /// client's default timeout only bounds how long it may take to open.
    pub fn watch(&self, keyspace: impl Into<String>, prefix: impl Into<String>) -> Watch {
        Watch {
            client: self.clone(),
            options: CallOptions::new(None),
            request: pb::WatchRequest {
                keyspace: keyspace.into(),
                prefix: prefix.into(),
                from_revision: None,
            },
        }
    }
}

fn set_request<I, S>(
    keyspace: impl Into<String>,
    key: impl Into<String>,
    elements: I,
) -> pb::SetRequest
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    pb::SetRequest {
        keyspace: keyspace.into(),
        key: key.into(),
        elements: elements.into_iter().map(Into::into).collect(),
    }
}

/// Declares a call builder with the options every call has.
macro_rules! call {
    ($(#[$doc:meta])* $name:ident($request:ty)) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a call does nothing until it is awaited"]
        pub struct $name {
            client: StateClient,
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
    /// A read; see [`StateClient::get`].
    Get(pb::GetRequest)
}

call! {
    /// A batch of reads; see [`StateClient::get_many`].
    GetMany(pb::GetManyRequest)
}

call! {
    /// A batch of writes; see [`StateClient::put_many`].
    PutMany(pb::PutManyRequest)
}

/// One write of [`StateClient::put_many`], with the arguments of
/// [`StateClient::put`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutItem {
    /// The keyspace.
    pub keyspace: String,
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// A compare-and-set at this revision (`global` keyspaces).
    pub if_revision: Option<u64>,
}

call! {
    /// A write; see [`StateClient::put`].
    Put(pb::PutRequest)
}
impl Put {
    /// Writes only if the key's current revision is exactly `revision`
    /// (compare-and-set; `global` keyspaces). Otherwise the call fails with
    /// [`Error::Conflict`] carrying the current revision.
    pub fn if_revision(mut self, revision: u64) -> Self {
        self.request.if_revision = Some(revision);
        self
    }

    /// `multi_value` keyspaces: the sibling HLCs this write replaces.
    pub fn supersedes(mut self, hlcs: impl IntoIterator<Item = crate::hlc::Timestamp>) -> Self {
        self.request.supersedes = hlcs.into_iter().map(|t| t.to_u64()).collect();
        self
    }
}

call! {
    /// A write of an absent key; see [`StateClient::create`].
    Create(pb::CreateRequest)
}

call! {
    /// A delete; see [`StateClient::delete`].
    Delete(pb::DeleteRequest)
}
impl Delete {
    /// Deletes only if the key's current revision is exactly `revision`,
    /// otherwise [`Error::Conflict`].
    pub fn if_revision(mut self, revision: u64) -> Self {
        self.request.if_revision = Some(revision);
        self
    }
}

call! {
    /// A counter increment; see [`StateClient::increment`].
    Increment(pb::IncrementRequest)
}

call! {
    /// An OR-set add; see [`StateClient::set_add`].
    SetAdd(pb::SetRequest)
}

call! {
    /// An OR-set remove; see [`StateClient::set_remove`].
    SetRemove(pb::SetRequest)
}

call! {
    /// A scan; see [`StateClient::scan`]. Await it for one page.
    Scan(pb::ScanRequest)
}
impl Scan {
    /// At most this many entries per page (the agent's default is 100, its
    /// maximum 1000).
    pub fn limit(mut self, limit: u32) -> Self {
        self.request.limit = limit;
        self
    }

    /// Continue after a previous page: its [`Page::next_page_token`](crate::Page::next_page_token).
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.request.page_token = token.into();
        self
    }

    /// Read at this consistency (default [`Consistency::Eventual`]).
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.request.consistency = Some(consistency.to_proto());
        self
    }

    /// Every entry from this page on, fetching pages as the stream is read.
    /// Each page is its own call, with this call's timeout. After an error
    /// the stream ends.
    pub fn stream(self) -> impl Stream<Item = Result<Entry, Error>> + Send + 'static {
        struct Cursor {
            scan: Option<Scan>,
            buffered: std::vec::IntoIter<Entry>,
        }
        let start = Cursor {
            scan: Some(self),
            buffered: Vec::new().into_iter(),
        };
        futures_util::stream::unfold(start, |mut cursor| async move {
            loop {
                if let Some(entry) = cursor.buffered.next() {
                    return Some((Ok(entry), cursor));
                }
                let scan = cursor.scan.take()?;
                let (client, options, request) = (
                    scan.client.clone(),
                    scan.options.clone(),
                    scan.request.clone(),
                );
                match scan.await {
                    Err(error) => return Some((Err(error), cursor)),
                    Ok(page) => {
                        cursor.buffered = page.entries.into_iter();
                        if let Some(token) = page.next_page_token {
                            cursor.scan = Some(Scan {
                                client,
                                options,
                                request: pb::ScanRequest {
                                    page_token: token,
                                    ..request
                                },
                            });
                        }
                    }
                }
            }
        })
    }
}

call! {
    /// A watch; see [`StateClient::watch`]. Await it for a [`WatchStream`].
    /// Its `timeout` bounds the whole stream, not just its opening.
    Watch(pb::WatchRequest)
}
impl Watch {
    /// First replay the changes from `revision` on (`global`: the last 64
    /// changes of each key are kept; `replicated`: the merged state after each
    /// change still held), then follow new ones.
    pub fn from_revision(mut self, revision: u64) -> Self {
        self.request.from_revision = Some(revision);
        self
    }
}

/// The changes a watch sees, as a [`Stream`] of [`WatchEvent`](crate::WatchEvent)s.
///
/// The stream ends after the first error (the agent went away, the deadline
/// passed: [`Error::Unavailable`], [`Error::DeadlineExceeded`], ...). Dropping
/// it cancels the watch on the agent.
pub struct WatchStream {
    inner: tonic::codec::Streaming<pb::WatchEvent>,
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    traceparent: Option<String>,
    done: bool,
}

impl WatchStream {
    /// The `traceparent` of the agent's span serving this watch, when it sent
    /// one: a child of the caller's trace, for correlating logs.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }
}
