//! Sending begin, complete and abort, and what their answers become.

use std::future::IntoFuture;
use std::time::SystemTime;

use super::wire::system_time;
use super::{Abort, Begin, Begun, Complete};
use crate::canonical::{self, PayloadKind};
use crate::client::{BoxFuture, unary};
use crate::error::Error;
use crate::pb;
use crate::types::duration_to_proto;

impl Begin {
    pub(super) async fn send(self) -> Result<Begun, Error> {
        let fingerprint = canonical::fingerprint(&self.payload, self.kind).map_err(|e| {
            let message = e.to_string();
            Error::InvalidArgument {
                field: "payload".into(),
                rule: message
                    .strip_prefix("payload: ")
                    .unwrap_or(&message)
                    .to_owned(),
            }
        })?;
        let request = pb::BeginRequest {
            scope: self.scope,
            key: self.key,
            fingerprint,
            payload: Vec::new(),
            payload_kind: match self.kind {
                PayloadKind::Json => pb::PayloadKind::Json,
                PayloadKind::Binary => pb::PayloadKind::Binary,
            }
            .into(),
            lease: self.lease.map(duration_to_proto),
        };
        let mut inner = self.client.inner;
        let response = unary(self.options, request, move |r| async move {
            inner.begin(r).await
        })
        .await?;
        Begun::from_proto(response.into_inner())
    }
}

impl IntoFuture for Begin {
    type Output = Result<Begun, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

impl IntoFuture for Complete {
    type Output = Result<SystemTime, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        Box::pin(async move {
            let response = unary(self.options, self.request, move |r| async move {
                inner.complete(r).await
            })
            .await?
            .into_inner();
            response
                .expires_at
                .and_then(system_time)
                .ok_or_else(|| Error::Internal {
                    message: "Complete answered without a valid expires_at".into(),
                })
        })
    }
}

impl IntoFuture for Abort {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        Box::pin(async move {
            unary(self.options, self.request, move |r| async move {
                inner.abort(r).await
            })
            .await?;
            Ok(())
        })
    }
}
