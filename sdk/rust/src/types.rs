//! The typed values State API calls take and return.

use std::time::Duration;

use crate::hlc::Timestamp;
use crate::pb;

/// The consistency a read asks for (DESIGN §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Linearizable: the latest acknowledged write, read through the leader.
    /// `global` keyspaces only.
    #[default]
    Strong,
    /// At most this stale; the agent serves its local copy when it can show
    /// the copy is fresh enough, otherwise it forwards the read as strong. The
    /// duration must be above zero.
    Bounded(Duration),
    /// The agent's cache, kept current by the change feed; fastest, may be stale.
    Eventual,
}

impl Consistency {
    pub(crate) fn to_proto(self) -> pb::Consistency {
        use pb::consistency::Level;
        match self {
            Consistency::Strong => pb::Consistency {
                level: Level::Strong.into(),
                max_staleness: None,
            },
            Consistency::Bounded(max) => pb::Consistency {
                level: Level::Bounded.into(),
                max_staleness: Some(duration_to_proto(max)),
            },
            Consistency::Eventual => pb::Consistency {
                level: Level::Eventual.into(),
                max_staleness: None,
            },
        }
    }
}

/// The consistency a read was actually served at (a bounded read may be
/// served as strong).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadLevel {
    /// Through the leader: not stale.
    Strong,
    /// From a local copy shown to be fresh enough.
    Bounded,
    /// From the agent's cache.
    Eventual,
}

impl ReadLevel {
    fn from_proto(level: i32) -> Self {
        use pb::consistency::Level;
        match Level::try_from(level) {
            Ok(Level::Bounded) => ReadLevel::Bounded,
            Ok(Level::Eventual) => ReadLevel::Eventual,
            // UNSPECIFIED is STRONG by the contract; an unknown future level
            // is reported as the strongest claim rather than guessed at.
            _ => ReadLevel::Strong,
        }
    }
}

/// One stored value, as a read, a scan or a watch returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value (empty for `counter` and `set` keyspaces).
    pub value: Vec<u8>,
    /// Increases with every write to the keyspace; use it for compare-and-set.
    pub revision: u64,
    /// The hybrid logical clock of the write.
    pub hlc: Timestamp,
    /// The region whose agent made the write.
    pub region: String,
    /// `counter` keyspaces: the counter's value.
    pub counter: i64,
    /// `set` keyspaces: the elements, sorted.
    pub elements: Vec<String>,
    /// `multi_value` keyspaces: the concurrent values, oldest first.
    pub siblings: Vec<Sibling>,
}

impl Entry {
    pub(crate) fn from_proto(e: pb::Entry) -> Self {
        Entry {
            key: e.key,
            value: e.value,
            revision: e.revision,
            hlc: Timestamp::from_u64(e.hlc),
            region: e.region,
            counter: e.counter,
            elements: e.elements,
            siblings: e
                .siblings
                .into_iter()
                .map(|s| Sibling {
                    value: s.value,
                    hlc: Timestamp::from_u64(s.hlc),
                    region: s.region,
                })
                .collect(),
        }
    }
}

/// One of several concurrent values of a `multi_value` key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sibling {
    /// The value.
    pub value: Vec<u8>,
    /// Its write's HLC; name it in [`Put::supersedes`](crate::state::Put::supersedes)
    /// to resolve it.
    pub hlc: Timestamp,
    /// The region that wrote it.
    pub region: String,
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadResult {
    /// The value and its metadata.
    pub entry: Entry,
    /// The consistency actually served.
    pub served: ReadLevel,
    /// How stale the answer may be: zero for a strong read.
    pub staleness_bound: Duration,
}

/// The outcome of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WriteResult {
    /// The key's revision after the write.
    pub revision: u64,
    /// The write's hybrid logical clock.
    pub hlc: Timestamp,
}

impl From<pb::WriteResponse> for WriteResult {
    fn from(r: pb::WriteResponse) -> Self {
        WriteResult {
            revision: r.revision,
            hlc: Timestamp::from_u64(r.hlc),
        }
    }
}

/// One page of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// Pass to [`Scan::page_token`](crate::state::Scan::page_token) for the
    /// next page; `None` when there are no more keys.
    pub next_page_token: Option<String>,
    /// The consistency actually served.
    pub served: ReadLevel,
    /// How stale the page may be.
    pub staleness_bound: Duration,
}

/// What happened to a key, as a watch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// The key now has the event's entry.
    Put,
    /// The key was deleted; the entry has its key and revision.
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchKind,
    /// The entry after the change.
    pub entry: Entry,
}

impl WatchEvent {
    pub(crate) fn from_proto(e: pb::WatchEvent) -> Self {
        let kind = match pb::watch_event::Kind::try_from(e.kind) {
            Ok(pb::watch_event::Kind::Delete) => WatchKind::Delete,
            _ => WatchKind::Put,
        };
        WatchEvent {
            kind,
            entry: Entry::from_proto(e.entry.unwrap_or_default()),
        }
    }
}

/// An agent's health, as its HealthService reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Serving, degraded or not serving.
    pub status: ServingStatus,
    /// The agent's region.
    pub region: String,
    /// Why it is not fully serving, in words.
    pub reasons: Vec<String>,
}

/// Whether an agent serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServingStatus {
    /// Everything it depends on is reachable.
    Serving,
    /// It serves, but something is wrong (see the reasons).
    Degraded,
    /// It does not serve.
    NotServing,
    /// A status this SDK does not know.
    Unknown,
}

impl From<pb::HealthCheckResponse> for Health {
    fn from(r: pb::HealthCheckResponse) -> Self {
        use pb::health_check_response::ServingStatus as S;
        let status = match S::try_from(r.status) {
            Ok(S::Serving) => ServingStatus::Serving,
            Ok(S::Degraded) => ServingStatus::Degraded,
            Ok(S::NotServing) => ServingStatus::NotServing,
            _ => ServingStatus::Unknown,
        };
        Health {
            status,
            region: r.region,
            reasons: r.reasons,
        }
    }
}

pub(crate) fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9, so it always fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn duration_from_proto(d: Option<prost_types::Duration>) -> Duration {
    let Some(d) = d else {
        return Duration::ZERO;
    };
    match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => Duration::new(secs, nanos),
        // A negative or malformed bound: report no staleness rather than panic.
        _ => Duration::ZERO,
    }
}

pub(crate) fn read_level(level: i32) -> ReadLevel {
    ReadLevel::from_proto(level)
}
