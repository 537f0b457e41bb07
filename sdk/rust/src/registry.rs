//! The Registry API: register service instances with the local agent, keep
//! their leases alive, and list every region's instances
//! (`proto/meridian/v1/invocation.proto`, DESIGN §5).
//!
//! A registration is a lease of `ttl`. [`RegistryClient::register`] resolves
//! to a [`Registration`], which renews the lease from a background task every
//! `ttl / 3` and registers the instance again (same instance id) if the agent
//! answers that the lease ran out. [`Registration::close`] stops the renewals
//! and deregisters. The agent health-checks its local instances (an HTTP
//! `GET` of the health path, 2xx is healthy; or `grpc.health.v1.Health/Check`)
//! and only sends calls to healthy ones.
//!
//! ```no_run
//! use std::time::Duration;
//! use meridian::{Client, Error, Instance};
//!
//! # async fn demo(client: Client) -> Result<(), Error> {
//! let registry = client.registry();
//! let registration = registry
//!     .register(
//!         Instance::http("inventory", "127.0.0.1:8080").version("1.4.2").health_path("/healthz"),
//!         Duration::from_secs(10),
//!     )
//!     .await?;
//! println!("registered as {}", registration.instance_id());
//!
//! for status in registry.list_instances().service("inventory").await? {
//!     println!("{} in {}: {:?}", status.instance.instance_id, status.instance.region, status.health);
//! }
//!
//! registration.close().await?; // stop heartbeating, deregister
//! # Ok(()) }
//! ```

mod calls;
mod renewal;
mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::calls::{deregister_call, heartbeat_call, register_call};
use crate::client::{CallOptions, TracedChannel};
use crate::error::Error;
use crate::pb;
use crate::pb::registry_service_client::RegistryServiceClient;

/// How the agent talks to an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1: reached with [`Client::invoke`](crate::Client::invoke).
    #[default]
    Http,
    /// gRPC: reached through the agent's gRPC port as a transparent proxy
    /// (metadata `meridian-service: <service>`).
    Grpc,
}

/// One instance of a service, as registered (and as listed).
///
/// Build one with [`Instance::http`] or [`Instance::grpc`] and the setters,
/// or as a struct literal with `..Default::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    /// Unique per instance. Empty when registering: the agent makes one
    /// (`<service>-<region>-<random>`).
    pub instance_id: String,
    /// The service's name.
    pub service: String,
    /// The version it runs (free text).
    pub version: String,
    /// The region it is in. Ignored when registering: the agent fills in its own.
    pub region: String,
    /// `host:port` where the local agent reaches the instance.
    pub endpoint: String,
    /// HTTP or gRPC.
    pub protocol: Protocol,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
    /// HTTP instances: the path the agent `GET`s to check health (2xx is
    /// healthy). Empty: the agent's default, `/healthz`.
    pub health_path: String,
    /// gRPC instances: the service name asked of `grpc.health.v1.Health/Check`
    /// (empty: the server as a whole).
    pub health_grpc_service: String,
    /// Between health checks. `None`: the agent's default (1 s; at least 100 ms).
    pub health_interval: Option<Duration>,
}

impl Instance {
    /// An HTTP instance of `service` at `endpoint` (`host:port`).
    pub fn http(service: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Instance {
            service: service.into(),
            endpoint: endpoint.into(),
            protocol: Protocol::Http,
            ..Instance::default()
        }
    }

    /// A gRPC instance of `service` at `endpoint` (`host:port`).
    pub fn grpc(service: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Instance {
            protocol: Protocol::Grpc,
            ..Instance::http(service, endpoint)
        }
    }

    /// Sets the version.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the instance id (default: the agent makes one).
    #[must_use]
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = id.into();
        self
    }

    /// Adds (or replaces) a metadata label.
    #[must_use]
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Sets the HTTP health check path (default `/healthz`).
    #[must_use]
    pub fn health_path(mut self, path: impl Into<String>) -> Self {
        self.health_path = path.into();
        self
    }

    /// Sets the interval between health checks.
    #[must_use]
    pub fn health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = Some(interval);
        self
    }
}

/// An instance's health, as its agent's checks found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstanceHealth {
    /// Registered, not checked yet.
    Unknown,
    /// The last check passed.
    Healthy,
    /// The last check failed (see [`InstanceStatus::health_detail`]).
    Unhealthy,
}

/// One instance as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceStatus {
    /// The instance, with its region.
    pub instance: Instance,
    /// Its health.
    pub health: InstanceHealth,
    /// Why the last check failed, if it did.
    pub health_detail: String,
    /// When its lease runs out unless renewed.
    pub lease_expires_at: Option<SystemTime>,
    /// When it was last checked.
    pub checked_at: Option<SystemTime>,
    /// When its agent last announced it to the other regions.
    pub announced_at: Option<SystemTime>,
}

/// A lease the agent granted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The instance's id (the agent's, if it made one).
    pub instance_id: String,
    /// When the lease runs out unless renewed.
    pub lease_expires_at: Option<SystemTime>,
    /// The lease's length, as granted.
    pub ttl: Duration,
}

/// Registry API calls on one agent; from
/// [`Client::registry`](crate::Client::registry). Cheap to clone.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    inner: RegistryServiceClient<TracedChannel>,
    timeout: Option<Duration>,
}

impl RegistryClient {
    pub(crate) fn new(
        inner: RegistryServiceClient<TracedChannel>,
        timeout: Option<Duration>,
    ) -> Self {
        RegistryClient { inner, timeout }
    }

    fn options(&self) -> CallOptions {
        CallOptions::new(self.timeout)
    }

    /// Registers `instance` with a lease of `ttl` (the agent allows 1 s to
    /// 300 s) and resolves to a [`Registration`] that keeps it alive.
    ///
    /// The background task needs a tokio runtime (it is spawned on the current
    /// one). Errors of the first registration are returned here
    /// ([`Error::InvalidArgument`] naming the field: `instance.service`,
    /// `instance.endpoint`, `ttl`, ...); later renewal errors are retried and
    /// can be seen in [`Registration::last_error`].
    pub fn register(&self, instance: Instance, ttl: Duration) -> Register {
        Register {
            client: self.clone(),
            options: self.options(),
            instance,
            ttl,
        }
    }

    /// Registers once, without a background task: the lease runs out after
    /// `ttl` unless [`RegistryClient::heartbeat`] renews it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field.
    pub async fn register_once(&self, instance: &Instance, ttl: Duration) -> Result<Lease, Error> {
        register_call(self.inner.clone(), self.options(), instance, ttl).await
    }

    /// Renews the lease of `instance_id`; resolves to its new expiry.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the lease has already run out (or the agent
    /// never had it): register again.
    pub async fn heartbeat(&self, instance_id: &str) -> Result<Option<SystemTime>, Error> {
        heartbeat_call(self.inner.clone(), self.options(), instance_id).await
    }

    /// Removes `instance_id` from the registry at once.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the agent does not hold its lease (it ran out);
    /// [`Error::Unavailable`] and the like if the agent can't be reached.
    pub async fn deregister(&self, instance_id: &str) -> Result<(), Error> {
        deregister_call(self.inner.clone(), self.options(), instance_id).await
    }

    /// Every region's instances, as this agent's replica of the registry
    /// knows them; narrow it with [`ListInstances::service`] and
    /// [`ListInstances::region`].
    pub fn list_instances(&self) -> ListInstances {
        ListInstances {
            client: self.clone(),
            options: self.options(),
            request: pb::ListInstancesRequest::default(),
        }
    }
}

/// A registration being made; see [`RegistryClient::register`]. Await it for
/// a [`Registration`].
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct Register {
    client: RegistryClient,
    options: CallOptions,
    instance: Instance,
    ttl: Duration,
}

impl Register {
    /// Bounds the first registration (and each later renewal) by `timeout`
    /// instead of the client's default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Propagates `cx`'s trace context on the first registration instead of
    /// the one current when the call was built.
    pub fn context(mut self, cx: opentelemetry::Context) -> Self {
        self.options.context = cx;
        self
    }
}

/// What the renewal task and its [`Registration`] share.
#[derive(Debug)]
struct Shared {
    lease_expires_at: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<Arc<Error>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is plain values, always consistent: a panic elsewhere cannot
    // leave it half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A registered instance whose lease a background task keeps renewing.
///
/// [`close`](Registration::close) stops the renewals and deregisters at once.
/// Dropping it stops the renewals too, without deregistering: the instance
/// stays listed until its lease runs out (at most `ttl`).
#[derive(Debug)]
pub struct Registration {
    inner: RegistryServiceClient<TracedChannel>,
    timeout: Option<Duration>,
    instance_id: String,
    ttl: Duration,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// The instance's id (the agent's, if it made one); stays the same across
    /// re-registrations.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The lease's length, as the agent granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the lease runs out unless renewed, as of the latest renewal.
    pub fn lease_expires_at(&self) -> Option<SystemTime> {
        *lock(&self.shared.lease_expires_at)
    }

    /// The error of the latest renewal, if it failed (cleared by the next
    /// one that succeeds).
    pub fn last_error(&self) -> Option<Arc<Error>> {
        lock(&self.shared.last_error).clone()
    }

    /// Stops renewing the lease and deregisters the instance, so the agent
    /// stops sending it calls at once. An instance the agent no longer knows
    /// counts as deregistered.
    ///
    /// # Errors
    /// The deregistration's error ([`Error::Unavailable`], ...); the renewals
    /// have stopped all the same, so the lease runs out within `ttl`.
    pub async fn close(mut self) -> Result<(), Error> {
        self.stop_renewals().await;
        match deregister_call(
            self.inner.clone(),
            CallOptions::new(self.timeout),
            &self.instance_id,
        )
        .await
        {
            Err(Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn stop_renewals(&mut self) {
        // The task may have ended already; then there is nobody to tell.
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // It only ends by being told to, or by panicking: nothing to report.
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A listing; see [`RegistryClient::list_instances`]. Await it for the
/// instances.
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct ListInstances {
    client: RegistryClient,
    options: CallOptions,
    request: pb::ListInstancesRequest,
}

impl ListInstances {
    /// Only instances of `service`.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.request.service = service.into();
        self
    }

    /// Only instances in `region`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.request.region = region.into();
        self
    }

    /// Fails with [`Error::DeadlineExceeded`] if no answer came within `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Propagates `cx`'s trace context instead of the one that was current
    /// when the call was built.
    pub fn context(mut self, cx: opentelemetry::Context) -> Self {
        self.options.context = cx;
        self
    }
}

#[cfg(test)]
mod tests;
