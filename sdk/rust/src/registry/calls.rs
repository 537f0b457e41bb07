//! The registry's RPCs: what each sends, and what its answer becomes.

use std::future::IntoFuture;
use std::time::{Duration, SystemTime};

use super::wire::time;
use super::{Instance, InstanceStatus, Lease, ListInstances};
use crate::client::{BoxFuture, CallOptions, TracedChannel, unary};
use crate::error::Error;
use crate::pb;
use crate::pb::registry_service_client::RegistryServiceClient;
use crate::types::{duration_from_proto, duration_to_proto};

pub(super) async fn register_call(
    mut inner: RegistryServiceClient<TracedChannel>,
    options: CallOptions,
    instance: &Instance,
    ttl: Duration,
) -> Result<Lease, Error> {
    let request = pb::RegisterRequest {
        instance: Some(instance.to_proto()),
        ttl: Some(duration_to_proto(ttl)),
    };
    let response = unary(
        options,
        request,
        move |r| async move { inner.register(r).await },
    )
    .await?
    .into_inner();
    Ok(Lease {
        instance_id: response.instance_id,
        lease_expires_at: time(response.lease_expires_at),
        // An agent that did not say keeps the requested length.
        ttl: Some(duration_from_proto(response.ttl))
            .filter(|t| !t.is_zero())
            .unwrap_or(ttl),
    })
}

pub(super) async fn heartbeat_call(
    mut inner: RegistryServiceClient<TracedChannel>,
    options: CallOptions,
    instance_id: &str,
) -> Result<Option<SystemTime>, Error> {
    let request = pb::HeartbeatRequest {
        instance_id: instance_id.to_owned(),
    };
    let response = unary(options, request, move |r| async move {
        inner.heartbeat(r).await
    })
    .await?;
    Ok(time(response.into_inner().lease_expires_at))
}

pub(super) async fn deregister_call(
    mut inner: RegistryServiceClient<TracedChannel>,
    options: CallOptions,
    instance_id: &str,
) -> Result<(), Error> {
    let request = pb::DeregisterRequest {
        instance_id: instance_id.to_owned(),
    };
    unary(options, request, move |r| async move {
        inner.deregister(r).await
    })
    .await?;
    Ok(())
}

impl IntoFuture for ListInstances {
    type Output = Result<Vec<InstanceStatus>, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        Box::pin(async move {
            let response = unary(self.options, self.request, move |r| async move {
                inner.list_instances(r).await
            })
            .await?
            .into_inner();
            Ok(response
                .instances
                .into_iter()
                .map(InstanceStatus::from_proto)
                .collect())
        })
    }
}
