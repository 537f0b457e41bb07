//! Conversions between the idempotency types and their protobuf messages.

use std::time::SystemTime;

use super::{Begun, Outcome, StoredResponse};
use crate::error::Error;
use crate::pb;

impl StoredResponse {
    pub(super) fn from_proto(r: pb::StoredResponse) -> Self {
        StoredResponse {
            status: r.status,
            body: r.body,
            headers: r.headers.into_iter().collect(),
        }
    }

    pub(super) fn to_proto(&self) -> pb::StoredResponse {
        pb::StoredResponse {
            status: self.status,
            body: self.body.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl Begun {
    pub(super) fn from_proto(r: pb::BeginResponse) -> Result<Self, Error> {
        use pb::begin_response::Outcome as O;
        let outcome = match O::try_from(r.outcome) {
            Ok(O::New) => Outcome::New,
            Ok(O::InProgress) => Outcome::InProgress,
            Ok(O::Completed) => Outcome::Completed,
            Ok(O::Mismatch) => Outcome::Mismatch,
            Ok(O::Unspecified) | Err(_) => {
                return Err(Error::Internal {
                    message: format!("Begin answered with an unknown outcome ({})", r.outcome),
                });
            }
        };
        let response = r.response.map(StoredResponse::from_proto);
        if outcome == Outcome::Completed && response.is_none() {
            return Err(Error::Internal {
                message: "Begin answered COMPLETED without the stored response".into(),
            });
        }
        Ok(Begun {
            outcome,
            fingerprint: r.fingerprint,
            fencing_token: r.fencing_token,
            lease_expires_at: r.lease_expires_at.and_then(system_time),
            response,
            took_over: r.took_over,
            expires_at: r.expires_at.and_then(system_time),
        })
    }
}

pub(super) fn system_time(t: prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(t).ok()
}
