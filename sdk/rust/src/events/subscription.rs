//! A subscription's gRPC stream: opening it, queuing acks and nacks on it,
//! and receiving its deliveries.

use std::future::IntoFuture;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::mpsc;

use super::{Delivery, Requests, Subscribe, Subscription};
use crate::client::{BoxFuture, DEFAULT_TIMEOUT};
use crate::error::Error;
use crate::pb;
use crate::trace;
use crate::types::duration_to_proto;

impl IntoFuture for Subscribe {
    type Output = Result<Subscription, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        let close_timeout = self.options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        Box::pin(async move {
            let (sender, receiver) = mpsc::unbounded_channel::<Option<pb::SubscribeRequest>>();
            let open = pb::SubscribeRequest {
                kind: Some(pb::subscribe_request::Kind::Open(self.open)),
            };
            // Cannot fail: the receiver is alive.
            let _ = sender.send(Some(open));
            // The request stream ends on `None` (sent by `close`) or when the
            // subscription is dropped (an `Acker` holds a weak sender only).
            let requests = futures_util::stream::unfold(receiver, |mut receiver| async move {
                match receiver.recv().await {
                    Some(Some(request)) => Some((request, receiver)),
                    _ => None,
                }
            });
            let mut request = tonic::Request::new(requests);
            trace::inject(&self.options.context, request.metadata_mut());
            // The agent answers with its headers once the group is ready, or
            // with an error (a bad open) at once.
            let opening = inner.subscribe(request);
            let response = match self.options.timeout {
                None => opening.await,
                Some(t) => tokio::time::timeout(t, opening).await.map_err(|_| {
                    Error::deadline(format!("the subscription did not open within {t:?}"))
                })?,
            }?;
            let traceparent = response
                .metadata()
                .get(trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(Subscription {
                sender,
                inner: response.into_inner(),
                traceparent,
                close_timeout,
                done: false,
            })
        })
    }
}

pub(super) fn ack(id: u64) -> pb::subscribe_request::Kind {
    pb::subscribe_request::Kind::Ack(pb::Ack { delivery_id: id })
}

pub(super) fn nack(id: u64, delay: Option<Duration>) -> pb::subscribe_request::Kind {
    pb::subscribe_request::Kind::Nack(pb::Nack {
        delivery_id: id,
        delay: delay.map(duration_to_proto),
    })
}

/// Queues an ack or nack on the subscription's request stream.
pub(super) fn settle(
    sender: Option<&Requests>,
    id: u64,
    kind: pb::subscribe_request::Kind,
) -> Result<(), Error> {
    sender
        .and_then(|s| s.send(Some(pb::SubscribeRequest { kind: Some(kind) })).ok())
        .ok_or_else(|| Error::Unavailable {
            message: format!(
                "the subscription has ended; delivery {id} was not settled and will be redelivered"
            ),
        })
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("traceparent", &self.traceparent)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => {
                Poll::Ready(Some(Ok(Delivery::from_proto(delivery))))
            }
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                Poll::Ready(Some(Err(status.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads the delivery stream to its end, dropping the deliveries that arrive
/// meanwhile unhandled; [`Error::DeadlineExceeded`] if the agent does not end
/// it within `timeout`.
pub(super) async fn drain(
    inner: &mut tonic::codec::Streaming<pb::Delivery>,
    timeout: Duration,
) -> Result<(), Error> {
    let drain = async {
        loop {
            match inner.message().await {
                Ok(Some(_unhandled)) => {}
                Ok(None) => return Ok(()),
                Err(status) => return Err(Error::from(status)),
            }
        }
    };
    match tokio::time::timeout(timeout, drain).await {
        Ok(result) => result,
        Err(_) => Err(Error::deadline(format!(
            "the agent did not end the subscription within {timeout:?}"
        ))),
    }
}
