//! Opening a watch, and the stream of its events.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::Instant;

use super::{Watch, WatchStream};
use crate::client::{BoxFuture, unary};
use crate::error::Error;
use crate::types::WatchEvent;

impl IntoFuture for Watch {
    type Output = Result<WatchStream, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let mut inner = self.client.inner;
        let deadline = self.options.timeout.map(|t| (t, Instant::now() + t));
        // Without a deadline of its own, a watch still has to open (get the
        // agent's response headers) within the client's default timeout.
        let open_timeout = self.client.timeout.filter(|_| deadline.is_none());
        Box::pin(async move {
            let open = unary(self.options, self.request, move |r| async move {
                inner.watch(r).await
            });
            let response = match open_timeout {
                None => open.await?,
                Some(t) => tokio::time::timeout(t, open).await.map_err(|_| {
                    Error::deadline(format!("the watch did not open within {t:?}"))
                })??,
            };
            let traceparent = response
                .metadata()
                .get(crate::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(WatchStream {
                inner: response.into_inner(),
                traceparent,
                deadline: deadline.map(|(t, at)| (t, Box::pin(tokio::time::sleep_until(at)))),
                done: false,
            })
        })
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("deadline", &self.deadline.as_ref().map(|(t, _)| t))
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(Ok(WatchEvent::from_proto(event)))),
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                Poll::Ready(Some(Err(status.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((timeout, sleep)) = this.deadline.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    this.done = true;
                    let message = format!("watch deadline of {timeout:?} passed");
                    return Poll::Ready(Some(Err(Error::deadline(message))));
                }
                Poll::Pending
            }
        }
    }
}
