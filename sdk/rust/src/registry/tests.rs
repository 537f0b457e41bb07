use super::renewal::{renewal_period, retry_period};
use super::*;

#[test]
fn an_instance_round_trips_through_its_proto() {
    let instance = Instance::http("inventory", "127.0.0.1:8080")
        .version("1.2.3")
        .metadata("zone", "a")
        .health_path("/healthz")
        .health_interval(Duration::from_millis(500));
    let proto = instance.to_proto();
    assert_eq!(proto.protocol, i32::from(pb::Protocol::Http));
    assert_eq!(proto.health_check.as_ref().unwrap().http_path, "/healthz");
    assert_eq!(Instance::from_proto(proto), instance);
    let grpc = Instance::grpc("pricing", "127.0.0.1:9090");
    assert_eq!(
        Instance::from_proto(grpc.to_proto()).protocol,
        Protocol::Grpc
    );
}

#[test]
fn a_status_is_built_from_its_proto() {
    let status = InstanceStatus::from_proto(pb::InstanceStatus {
        instance: Some(pb::Instance {
            instance_id: "inventory-us-east-1".into(),
            region: "us-east".into(),
            ..pb::Instance::default()
        }),
        health: pb::InstanceHealth::Unhealthy.into(),
        health_detail: "GET /healthz: 503".into(),
        lease_expires_at: Some(prost_types::Timestamp {
            seconds: 3,
            nanos: 0,
        }),
        ..pb::InstanceStatus::default()
    });
    assert_eq!(status.instance.region, "us-east");
    assert_eq!(status.health, InstanceHealth::Unhealthy);
    assert_eq!(
        status.lease_expires_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(3))
    );
    assert_eq!(status.checked_at, None);
    let bare = InstanceStatus::from_proto(pb::InstanceStatus::default());
    assert_eq!(bare.health, InstanceHealth::Unknown);
}

#[test]
fn leases_are_renewed_three_times_per_ttl_and_retried_sooner() {
    assert_eq!(
        retry_period(Duration::from_secs(9)),
        Duration::from_millis(900)
    );
    assert_eq!(
        retry_period(Duration::from_millis(500)),
        Duration::from_millis(100)
    );
    assert_eq!(
        renewal_period(Duration::from_secs(9)),
        Duration::from_secs(3)
    );
    assert_eq!(
        renewal_period(Duration::from_millis(30)),
        Duration::from_millis(100)
    );
}
