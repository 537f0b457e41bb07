//! Sending the unary calls, and what their answers become.

use std::future::IntoFuture;

use super::{Invalidate, Publish, PublishBatch, Published, Replay};
use crate::client::{BoxFuture, unary};
use crate::error::Error;

/// Declares how a unary call is sent and what its answer becomes.
macro_rules! unary_call {
    ($name:ident, $method:ident, $output:ty, |$response:ident| $convert:expr) => {
        impl IntoFuture for $name {
            type Output = Result<$output, Error>;
            type IntoFuture = BoxFuture<Self::Output>;

            fn into_future(self) -> Self::IntoFuture {
                let mut inner = self.client.inner;
                Box::pin(async move {
                    let $response = unary(self.options, self.request, move |r| async move {
                        inner.$method(r).await
                    })
                    .await?
                    .into_inner();
                    Ok($convert)
                })
            }
        }
    };
}

unary_call!(Publish, publish, Published, |response| response.into());
unary_call!(PublishBatch, publish_batch, Vec<Published>, |response| {
    response.results.into_iter().map(Published::from).collect()
});
unary_call!(Replay, replay, (), |_response| ());
unary_call!(Invalidate, invalidate, u64, |response| response.sequence);
