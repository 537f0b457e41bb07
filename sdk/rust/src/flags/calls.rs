//! Sending the flag calls, and what their answers become.

use std::future::IntoFuture;

use super::{
    DeleteFlag, EvaluateAllFlags, EvaluateFlag, Flag, FlagEvaluation, GetFlag, KillFlag, ListFlags,
    SetFlag,
};
use crate::client::{BoxFuture, unary, unary_call};
use crate::error::Error;
use crate::pb;

impl IntoFuture for EvaluateFlag {
    type Output = Result<FlagEvaluation, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        Box::pin(async move {
            // A context that is not an object fails here, before anything is sent.
            let request = self.request?;
            let response = unary(self.options, request, move |r| async move {
                inner.evaluate(r).await
            })
            .await?
            .into_inner();
            response
                .evaluation
                .map(FlagEvaluation::from_proto)
                .ok_or_else(|| Error::Internal {
                    message: "Evaluate answered without an evaluation".into(),
                })
        })
    }
}

impl IntoFuture for EvaluateAllFlags {
    type Output = Result<(Vec<FlagEvaluation>, u64), Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        Box::pin(async move {
            let request = self.request?;
            let response = unary(self.options, request, move |r| async move {
                inner.evaluate_all(r).await
            })
            .await?
            .into_inner();
            let evaluations = response
                .evaluations
                .into_iter()
                .map(FlagEvaluation::from_proto)
                .collect();
            Ok((evaluations, response.revision))
        })
    }
}

/// The flag of a Set, Get or Kill answer.
fn flag(flag: Option<pb::Flag>, rpc: &str) -> Result<Flag, Error> {
    flag.map(Flag::from_proto).ok_or_else(|| Error::Internal {
        message: format!("{rpc} answered without a flag"),
    })
}

unary_call!(SetFlag, set_flag, Flag, |response| flag(
    response.flag,
    "SetFlag"
));
unary_call!(GetFlag, get_flag, Flag, |response| flag(
    response.flag,
    "GetFlag"
));
unary_call!(KillFlag, kill_flag, Flag, |response| flag(
    response.flag,
    "KillFlag"
));
unary_call!(ListFlags, list_flags, Vec<Flag>, |response| Ok(response
    .flags
    .into_iter()
    .map(Flag::from_proto)
    .collect()));
unary_call!(DeleteFlag, delete_flag, u64, |response| Ok(
    response.revision
));
