//! Keeping a registration alive: the background task that renews its lease.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::calls::{heartbeat_call, register_call};
use super::{Instance, Register, Registration, Shared, lock};
use crate::client::{BoxFuture, CallOptions, TracedChannel};
use crate::error::Error;
use crate::pb::registry_service_client::RegistryServiceClient;

impl IntoFuture for Register {
    type Output = Result<Registration, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let inner = self.client.inner.clone();
            let lease = register_call(
                inner.clone(),
                self.options.clone(),
                &self.instance,
                self.ttl,
            )
            .await?;
            // Renewals and re-registrations keep the id the agent granted.
            let instance = Instance {
                instance_id: lease.instance_id.clone(),
                ..self.instance
            };
            let (stop, stopped) = watch::channel(false);
            let shared = Arc::new(Shared {
                lease_expires_at: Mutex::new(lease.lease_expires_at),
                last_error: Mutex::new(None),
            });
            let task = tokio::spawn(keep_alive(KeepAlive {
                inner: inner.clone(),
                timeout: self.options.timeout,
                instance,
                ttl: self.ttl,
                granted: lease.ttl,
                shared: Arc::clone(&shared),
                stopped,
            }));
            Ok(Registration {
                inner,
                timeout: self.options.timeout,
                instance_id: lease.instance_id,
                ttl: lease.ttl,
                shared,
                stop,
                task: Some(task),
            })
        })
    }
}

struct KeepAlive {
    inner: RegistryServiceClient<TracedChannel>,
    timeout: Option<Duration>,
    instance: Instance,
    /// The length asked for, used again when re-registering.
    ttl: Duration,
    /// The length granted, which sets the renewal period.
    granted: Duration,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
}

/// The renewal period for a lease of `ttl`: a third of it, so two renewals
/// in a row can fail before the lease runs out.
pub(crate) fn renewal_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// The wait before trying again after a failed renewal: a tenth of the
/// lease, so a passing failure costs little of it.
pub(crate) fn retry_period(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100))
}

/// Renews the lease every third of its length (a tenth after a failure)
/// until told to stop. A renewal answered NOT_FOUND (the lease ran out: the
/// process was paused, the agent restarted) registers the instance again
/// under the same id. Other errors are recorded and retried.
async fn keep_alive(mut k: KeepAlive) {
    let mut ttl = k.granted;
    let mut wait = renewal_period(ttl);
    loop {
        tokio::select! {
            // A dropped Registration (Err) stops the task too.
            _ = k.stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(wait) => {}
        }
        // A renewal must not hang past the next one.
        let period = renewal_period(ttl);
        let options = CallOptions {
            timeout: Some(k.timeout.map_or(period, |t| t.min(period))),
            context: opentelemetry::Context::new(),
        };
        let renewed =
            match heartbeat_call(k.inner.clone(), options.clone(), &k.instance.instance_id).await {
                Err(Error::NotFound { .. }) => {
                    register_call(k.inner.clone(), options, &k.instance, k.ttl)
                        .await
                        .map(|lease| {
                            ttl = lease.ttl;
                            lease.lease_expires_at
                        })
                }
                other => other,
            };
        match renewed {
            Ok(expires) => {
                *lock(&k.shared.lease_expires_at) = expires;
                *lock(&k.shared.last_error) = None;
                wait = renewal_period(ttl);
            }
            Err(e) => {
                *lock(&k.shared.last_error) = Some(Arc::new(e));
                wait = retry_period(ttl);
            }
        }
    }
}
