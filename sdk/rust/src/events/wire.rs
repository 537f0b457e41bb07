//! Conversions between the event types and their protobuf messages.

use std::time::SystemTime;

use super::{Delivery, Event, OutgoingEvent, Published, Source, Start};
use crate::pb;

impl Start {
    pub(super) fn to_proto(self) -> pb::StartPosition {
        use pb::start_position::Position;
        let position = match self {
            Start::New => Position::New(true),
            Start::Sequence(sequence) => Position::Sequence(sequence),
            Start::Time(time) => Position::Time(prost_types::Timestamp::from(time)),
        };
        pb::StartPosition {
            position: Some(position),
        }
    }
}

impl Source {
    pub(super) fn into_subscribe_proto(self) -> pb::subscribe_open::Source {
        match self {
            Source::Topic(filter) => pb::subscribe_open::Source::TopicFilter(filter),
            Source::Keyspace(name) => pb::subscribe_open::Source::Keyspace(name),
        }
    }

    pub(super) fn into_replay_proto(self) -> pb::replay_request::Source {
        match self {
            Source::Topic(filter) => pb::replay_request::Source::TopicFilter(filter),
            Source::Keyspace(name) => pb::replay_request::Source::Keyspace(name),
        }
    }
}

impl OutgoingEvent {
    pub(super) fn into_proto(self) -> pb::PublishRequest {
        pb::PublishRequest {
            topic: self.topic,
            key: self.key,
            payload: self.payload,
            event_id: self.event_id,
            headers: self.headers.into_iter().collect(),
        }
    }
}

impl Event {
    fn from_proto(e: pb::Event) -> Self {
        Event {
            topic: e.topic,
            key: e.key,
            payload: e.payload,
            event_id: e.event_id,
            headers: e.headers.into_iter().collect(),
            origin_region: e.origin_region,
            origin_sequence: e.origin_sequence,
            published_at: e.published_at.and_then(|t| SystemTime::try_from(t).ok()),
        }
    }
}

impl Delivery {
    pub(super) fn from_proto(d: pb::Delivery) -> Self {
        Delivery {
            id: d.delivery_id,
            attempt: d.attempt,
            sequence: d.sequence,
            event: Event::from_proto(d.event.unwrap_or_default()),
        }
    }
}

impl From<pb::PublishResponse> for Published {
    fn from(response: pb::PublishResponse) -> Self {
        Published {
            sequence: response.sequence,
            region: response.region,
            duplicate: response.duplicate,
        }
    }
}
