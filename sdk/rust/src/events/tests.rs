use super::*;

#[test]
fn start_positions_become_the_proto_oneof() {
    use pb::start_position::Position;
    assert_eq!(Start::New.to_proto().position, Some(Position::New(true)));
    assert_eq!(
        Start::Sequence(7).to_proto().position,
        Some(Position::Sequence(7))
    );
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
    assert_eq!(
        Start::Time(at).to_proto().position,
        Some(Position::Time(prost_types::Timestamp {
            seconds: 1,
            nanos: 500_000_000
        }))
    );
}

#[test]
fn a_delivery_is_built_from_its_proto() {
    let d = Delivery::from_proto(pb::Delivery {
        delivery_id: 3,
        attempt: 2,
        sequence: 41,
        event: Some(pb::Event {
            topic: "orders.placed".into(),
            key: "o-1".into(),
            payload: b"{}".to_vec(),
            event_id: "e-1".into(),
            headers: [("traceparent".to_owned(), "00-x".to_owned())].into(),
            origin_region: "eu-west".into(),
            origin_sequence: 9,
            published_at: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 0,
            }),
        }),
    });
    assert_eq!((d.id, d.attempt, d.sequence), (3, 2, 41));
    assert_eq!(d.event.topic, "orders.placed");
    assert_eq!(d.event.headers["traceparent"], "00-x");
    assert_eq!(
        (d.event.origin_region.as_str(), d.event.origin_sequence),
        ("eu-west", 9)
    );
    assert_eq!(
        d.event.published_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2))
    );
    let bare = Delivery::from_proto(pb::Delivery::default());
    assert_eq!(bare.event.published_at, None);
}
