//! Conversions between the registry's types and their protobuf messages.

use std::time::SystemTime;

use super::{Instance, InstanceHealth, InstanceStatus, Protocol};
use crate::pb;
use crate::types::{duration_from_proto, duration_to_proto};

impl Protocol {
    fn to_proto(self) -> pb::Protocol {
        match self {
            Protocol::Http => pb::Protocol::Http,
            Protocol::Grpc => pb::Protocol::Grpc,
        }
    }

    fn from_proto(p: i32) -> Self {
        match pb::Protocol::try_from(p) {
            Ok(pb::Protocol::Grpc) => Protocol::Grpc,
            _ => Protocol::Http,
        }
    }
}

impl Instance {
    pub(super) fn to_proto(&self) -> pb::Instance {
        pb::Instance {
            instance_id: self.instance_id.clone(),
            service: self.service.clone(),
            version: self.version.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            protocol: self.protocol.to_proto().into(),
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            health_check: Some(pb::HealthCheck {
                http_path: self.health_path.clone(),
                grpc_service: self.health_grpc_service.clone(),
                interval: self.health_interval.map(duration_to_proto),
            }),
        }
    }

    pub(super) fn from_proto(i: pb::Instance) -> Self {
        let check = i.health_check.unwrap_or_default();
        Instance {
            instance_id: i.instance_id,
            service: i.service,
            version: i.version,
            region: i.region,
            endpoint: i.endpoint,
            protocol: Protocol::from_proto(i.protocol),
            metadata: i.metadata.into_iter().collect(),
            health_path: check.http_path,
            health_grpc_service: check.grpc_service,
            health_interval: check.interval.map(|d| duration_from_proto(Some(d))),
        }
    }
}

impl InstanceHealth {
    fn from_proto(h: i32) -> Self {
        match pb::InstanceHealth::try_from(h) {
            Ok(pb::InstanceHealth::Healthy) => InstanceHealth::Healthy,
            Ok(pb::InstanceHealth::Unhealthy) => InstanceHealth::Unhealthy,
            _ => InstanceHealth::Unknown,
        }
    }
}

impl InstanceStatus {
    pub(super) fn from_proto(s: pb::InstanceStatus) -> Self {
        InstanceStatus {
            instance: Instance::from_proto(s.instance.unwrap_or_default()),
            health: InstanceHealth::from_proto(s.health),
            health_detail: s.health_detail,
            lease_expires_at: time(s.lease_expires_at),
            checked_at: time(s.checked_at),
            announced_at: time(s.announced_at),
        }
    }
}

pub(super) fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}
