//! Running a command once: begin, then run it and complete, or abort.

use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::SystemTime;

use futures_util::FutureExt as _;

use super::{IdempotencyClient, Once, OnceError, OnceResult, Outcome, StoredResponse};
use crate::error::Error;

impl<'a, F, Fut, E> IntoFuture for Once<'a, F>
where
    F: FnOnce(u64) -> Fut + Send + 'a,
    Fut: Future<Output = Result<StoredResponse, E>> + Send + 'a,
    E: Send + 'a,
{
    type Output = Result<OnceResult, OnceError<E>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let client = self.begin.client.clone();
            let options = self.begin.options.clone();
            let (scope, key) = (self.begin.scope.clone(), self.begin.key.clone());
            let begun = self.begin.send().await?;
            let token = match begun.outcome {
                Outcome::Completed => {
                    let response = begun.response.ok_or_else(|| Error::Internal {
                        message: "Begin answered COMPLETED without the stored response".into(),
                    })?;
                    return Ok(OnceResult {
                        response,
                        replayed: true,
                    });
                }
                Outcome::InProgress => {
                    let wait = begun
                        .lease_expires_at
                        .and_then(|t| t.duration_since(SystemTime::now()).ok())
                        .unwrap_or_default();
                    return Err(Error::IdempotencyInProgress {
                        message: format!(
                            "idempotency key {key:?} is being run by another caller; retry \
                             after its lease (which runs out in {wait:?})"
                        ),
                        lease_expires_at: begun.lease_expires_at,
                    }
                    .into());
                }
                Outcome::Mismatch => {
                    return Err(Error::IdempotencyMismatch {
                        message: format!(
                            "idempotency key {key:?} was used with a different request \
                             (fingerprint {})",
                            begun.fingerprint
                        ),
                    }
                    .into());
                }
                Outcome::New => begun.fencing_token,
            };
            let abort = |client: &IdempotencyClient| {
                let mut call = client.abort(scope.clone(), key.clone(), token);
                call.options = options.clone();
                call
            };
            match AssertUnwindSafe((self.command)(token)).catch_unwind().await {
                Ok(Ok(response)) => {
                    let mut call = client.complete(scope, key, token, response.clone());
                    call.options = options;
                    call.await?;
                    Ok(OnceResult {
                        response,
                        replayed: false,
                    })
                }
                Ok(Err(e)) => {
                    // If the abort fails too, the lease runs out on its own.
                    let _ = abort(&client).await;
                    Err(OnceError::Command(e))
                }
                Err(panic) => {
                    let _ = abort(&client).await;
                    std::panic::resume_unwind(panic)
                }
            }
        })
    }
}
