//! Sending the unary calls, and what their answers become.

use super::{Invalidate, Publish, PublishBatch, Published, Replay};
use crate::client::unary_call;

unary_call!(Publish, publish, Published, |response| Ok(response.into()));
unary_call!(PublishBatch, publish_batch, Vec<Published>, |response| {
    Ok(response.results.into_iter().map(Published::from).collect())
});
unary_call!(Replay, replay, (), |_response| Ok(()));
unary_call!(
    Invalidate,
    invalidate,
    u64,
    |response| Ok(response.sequence)
);
