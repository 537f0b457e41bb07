//! The connection to one agent.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::Uri;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use crate::error::Error;
use crate::events::EventsClient;
use crate::flags::FlagsClient;
use crate::idempotency::IdempotencyClient;
use crate::invocation::Invoke;
use crate::pb;
use crate::registry::RegistryClient;
use crate::state::StateClient;
use crate::tls::{self, TlsFiles};
use crate::trace::{self, TraceContextInterceptor};
use crate::types::Health;

/// The channel every generated client runs on: tonic's, with the trace
/// context interceptor in front.
pub type TracedChannel = InterceptedService<tonic::transport::Channel, TraceContextInterceptor>;

/// Largest message sent or received: the agent's limit (room for an 8 MiB
/// value plus its envelope). tonic's default of 4 MiB would refuse large values.
pub const MAX_MESSAGE_BYTES: usize = 10 << 20;

/// The per-call timeout used unless [`ClientBuilder::timeout`] or a call's own
/// `timeout` says otherwise (the Python client's default too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A connection to one Meridian agent, normally the one in the caller's region.
///
/// Cheap to clone: clones share one HTTP/2 connection, which tonic
/// re-establishes if it drops (with [`ClientBuilder::tls`], each new
/// connection reads the certificate files as they are then). Calls need a
/// tokio runtime with timers enabled.
#[derive(Clone, Debug)]
pub struct Client {
    channel: tonic::transport::Channel,
    timeout: Option<Duration>,
}

/// Options for a [`Client`]; see [`Client::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientBuilder {
    target: String,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    tls: Option<TlsFiles>,
}

impl ClientBuilder {
    /// The default deadline of each unary call (`None`: no deadline). Each
    /// call can override it. A watch has no deadline unless its own
    /// `timeout` sets one. Default: [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait for the connection to the agent (with TLS, the
    /// handshake included). Default: no limit beyond the operating system's.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Connect with mutual TLS: present the certificate in `files`, and
    /// accept only an agent whose certificate chains to their bundle and
    /// names an agent of the same trust domain (see [`crate::tls`]). The
    /// target is then `https://host:port` or a bare `host:port`. Without
    /// this the connection is plaintext HTTP/2.
    ///
    /// The files are read by [`connect`](Self::connect) or
    /// [`connect_lazy`](Self::connect_lazy), and again by every later
    /// connection if they changed.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let (scheme, rest) = match self.target.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, self.target.as_str()),
        };
        let mut endpoint = match (&self.tls, scheme) {
            (None, None) => Endpoint::from_shared(format!("http://{rest}"))?,
            (None, Some("https")) => {
                return Err(invalid_target(
                    "https:// needs TLS: set ClientBuilder::tls, or use http:// for plaintext",
                ));
            }
            (None, Some(_)) => Endpoint::from_shared(self.target.clone())?,
            (Some(_), None | Some("https")) => {
                let origin: Uri = format!("https://{rest}").parse().map_err(|e| {
                    invalid_target(&format!("{:?} is not an address: {e}", self.target))
                })?;
                let host = origin.host().unwrap_or_default();
                let port = origin.port_u16().unwrap_or(443);
                // tonic dials the endpoint's URI, which stays http:// so that
                // tonic's own TLS (if a feature turned it on) leaves the
                // connection to our connector; requests carry the origin.
                Endpoint::from_shared(format!("http://{host}:{port}"))?.origin(origin)
            }
            (Some(_), Some(scheme)) => {
                return Err(invalid_target(&format!(
                    "with TLS the target is https://host:port or host:port, not {scheme}://"
                )));
            }
        };
        if let Some(t) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(t);
        }
        Ok(endpoint)
    }

    /// Reads the TLS files, if any.
    fn connector(&self) -> Result<Option<tls::Connector>, Error> {
        self.tls.clone().map(tls::Connector::new).transpose()
    }

    /// Connects now.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `target`, `tls.cert`, `tls.key` or
    /// `tls.bundle` (a file missing, unreadable, not PEM, a key that is not
    /// the certificate's, a certificate without a SPIFFE ID or that does not
    /// chain to the bundle); [`Error::Transport`] if the address is
    /// malformed or the agent can't be reached, or (with TLS) the handshake
    /// fails: its source says why (e.g. the agent's certificate names
    /// another trust domain).
    pub async fn connect(self) -> Result<Client, Error> {
        let endpoint = self.endpoint()?;
        let channel = match self.connector()? {
            None => endpoint.connect().await?,
            Some(connector) => endpoint.connect_with_connector(connector).await?,
        };
        Ok(Client {
            channel,
            timeout: self.timeout,
        })
    }

    /// Returns at once; the connection is made by the first call (whose error,
    /// if the agent is down, is [`Error::Unavailable`]). The TLS files are
    /// read now all the same.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad target or TLS file, as
    /// [`connect`](Self::connect); [`Error::Transport`] if the address is
    /// malformed.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let endpoint = self.endpoint()?;
        let channel = match self.connector()? {
            None => endpoint.connect_lazy(),
            Some(connector) => endpoint.connect_with_connector_lazy(connector),
        };
        Ok(Client {
            channel,
            timeout: self.timeout,
        })
    }
}

fn invalid_target(rule: &str) -> Error {
    Error::InvalidArgument {
        field: "target".into(),
        rule: rule.into(),
    }
}

impl Client {
    /// Connects to the agent at `target`: a URI such as
    /// `http://127.0.0.1:14020`, or a bare `host:port` (plaintext HTTP/2;
    /// for mutual TLS see [`ClientBuilder::tls`]).
    ///
    /// # Errors
    /// [`Error::Transport`] if the address is malformed or the agent can't be
    /// reached.
    pub async fn connect(target: impl Into<String>) -> Result<Self, Error> {
        Self::builder(target).connect().await
    }

    /// Options beyond the defaults: timeouts, lazy connection, mutual TLS.
    pub fn builder(target: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: target.into(),
            timeout: Some(DEFAULT_TIMEOUT),
            connect_timeout: None,
            tls: None,
        }
    }

    /// The State API: keys in the keyspaces the agent's configuration declares.
    pub fn state(&self) -> StateClient {
        StateClient::new(self.raw_state(), self.timeout)
    }

    /// The Idempotency API: run a command once per idempotency key.
    pub fn idempotency(&self) -> IdempotencyClient {
        IdempotencyClient::new(self.raw_idempotency(), self.timeout)
    }

    /// The Event API: publish, subscribe (topics or a keyspace's change
    /// feed), replay and cache invalidation.
    pub fn events(&self) -> EventsClient {
        EventsClient::new(self.raw_events(), self.timeout)
    }

    /// The Registry API: register this service's instances (leases kept
    /// alive in the background) and list every region's instances.
    pub fn registry(&self) -> RegistryClient {
        RegistryClient::new(self.raw_registry(), self.timeout)
    }

    /// The Flag API: set, kill and delete feature flags (flagd's format) for
    /// every region, and evaluate them in this agent's region.
    pub fn flags(&self) -> FlagsClient {
        FlagsClient::new(self.raw_flags(), self.timeout)
    }

    /// A call to `method` (the path after the service name, e.g.
    /// `orders/42`) of the `http` service `service`, through the agent: a
    /// healthy instance, local first, with the service's resilience policy.
    /// Set the verb (default `POST`), headers, query and body on the
    /// returned [`Invoke`], then await it.
    pub fn invoke(&self, service: impl Into<String>, method: impl Into<String>) -> Invoke {
        Invoke::new(
            self.raw_invocation(),
            self.timeout,
            service.into(),
            method.into(),
        )
    }

    /// The agent's health: serving, degraded or not, and why.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the agent can't be reached,
    /// [`Error::DeadlineExceeded`] past the client's timeout.
    pub async fn health(&self) -> Result<Health, Error> {
        let mut client = pb::health_service_client::HealthServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        );
        let response = unary(
            CallOptions::new(self.timeout),
            pb::HealthCheckRequest {},
            move |r| async move { client.check(r).await },
        )
        .await?;
        Ok(response.into_inner().into())
    }

    /// What the agent observes: NATS, JetStream, the `global` quorum, its
    /// peer regions and its clock (the proto message as sent).
    ///
    /// # Errors
    /// As [`Client::health`].
    pub async fn status(&self) -> Result<pb::AgentStatus, Error> {
        let mut client = pb::status_service_client::StatusServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        );
        let response = unary(
            CallOptions::new(self.timeout),
            pb::GetStatusRequest {},
            move |r| async move { client.get_status(r).await },
        )
        .await?;
        response.into_inner().status.ok_or_else(|| Error::Internal {
            message: "GetStatus answered without a status".into(),
        })
    }

    /// The generated StateService client on this connection, for calls the
    /// typed wrapper does not cover. Its errors are raw `tonic::Status`es;
    /// `Error::from(status)` types them.
    pub fn raw_state(&self) -> pb::state_service_client::StateServiceClient<TracedChannel> {
        pb::state_service_client::StateServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated IdempotencyService client on this connection. Its errors
    /// are raw `tonic::Status`es; `Error::from(status)` types them.
    pub fn raw_idempotency(
        &self,
    ) -> pb::idempotency_service_client::IdempotencyServiceClient<TracedChannel> {
        pb::idempotency_service_client::IdempotencyServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated EventService client on this connection. Its errors are
    /// raw `tonic::Status`es; `Error::from(status)` types them.
    pub fn raw_events(&self) -> pb::event_service_client::EventServiceClient<TracedChannel> {
        pb::event_service_client::EventServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated RegistryService client on this connection. Its errors
    /// are raw `tonic::Status`es; `Error::from(status)` types them.
    pub fn raw_registry(
        &self,
    ) -> pb::registry_service_client::RegistryServiceClient<TracedChannel> {
        pb::registry_service_client::RegistryServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        )
    }

    /// The generated InvocationService client on this connection. Its errors
    /// are raw `tonic::Status`es; `Error::from(status)` types them.
    pub fn raw_invocation(
        &self,
    ) -> pb::invocation_service_client::InvocationServiceClient<TracedChannel> {
        pb::invocation_service_client::InvocationServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated FlagService client on this connection. Its errors are
    /// raw `tonic::Status`es; `Error::from(status)` types them.
    pub fn raw_flags(&self) -> pb::flag_service_client::FlagServiceClient<TracedChannel> {
        pb::flag_service_client::FlagServiceClient::with_interceptor(
            self.channel.clone(),
            TraceContextInterceptor,
        )
    }

    /// The underlying tonic channel, to build any other generated client
    /// (wrap it with [`TraceContextInterceptor`] to keep trace propagation).
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }
}

/// The deadline and trace context of one call.
#[derive(Clone, Debug)]
pub(crate) struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) context: opentelemetry::Context,
}

impl CallOptions {
    /// The client's default timeout, and the trace context current now (when
    /// the call is built), so a call awaited elsewhere keeps its caller's trace.
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        CallOptions {
            timeout,
            context: opentelemetry::Context::current(),
        }
    }
}

/// Sends one unary request with the call's trace context and deadline.
///
/// The deadline travels as `grpc-timeout`, so the agent stops working on the
/// call when it passes, and is also enforced here, so a call never outlives
/// it even if the agent does not answer. Dropping the future cancels the RPC.
pub(crate) async fn unary<Req, Resp, F, Fut>(
    options: CallOptions,
    message: Req,
    send: F,
) -> Result<tonic::Response<Resp>, Error>
where
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut request = tonic::Request::new(message);
    trace::inject(&options.context, request.metadata_mut());
    let result = match options.timeout {
        None => send(request).await,
        Some(timeout) => {
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, send(request)).await {
                Ok(result) => result,
                Err(_) => return Err(Error::deadline(format!("no answer within {timeout:?}"))),
            }
        }
    };
    result.map_err(Error::from)
}

/// Declares how a unary call is sent and what its answer becomes: `$convert`
/// turns the response into the call's `Result`. One definition for every module.
macro_rules! unary_call {
    ($name:ident, $method:ident, $output:ty, |$response:ident| $convert:expr) => {
        impl ::std::future::IntoFuture for $name {
            type Output = Result<$output, $crate::error::Error>;
            type IntoFuture = $crate::client::BoxFuture<Self::Output>;

            fn into_future(self) -> Self::IntoFuture {
                let mut inner = self.client.inner;
                Box::pin(async move {
                    let $response =
                        $crate::client::unary(self.options, self.request, move |r| async move {
                            inner.$method(r).await
                        })
                        .await?
                        .into_inner();
                    $convert
                })
            }
        }
    };
}
pub(crate) use unary_call;

#[cfg(test)]
mod tests {
    use super::*;

    /// The URI tonic dials for `target`, or the field and rule refusing it.
    fn dialled(target: &str, tls: bool) -> Result<String, (String, String)> {
        let mut builder = Client::builder(target);
        if tls {
            builder = builder.tls(TlsFiles::in_dir("/nowhere"));
        }
        match builder.endpoint() {
            Ok(endpoint) => Ok(endpoint.uri().to_string()),
            Err(Error::InvalidArgument { field, rule }) => Err((field, rule)),
            Err(e) => panic!("{target}: {e:?}"),
        }
    }

    #[test]
    fn plaintext_targets_are_as_before() {
        assert_eq!(
            dialled("127.0.0.1:14020", false).unwrap(),
            "http://127.0.0.1:14020/"
        );
        assert_eq!(
            dialled("http://agent:14020", false).unwrap(),
            "http://agent:14020/"
        );
        let (field, rule) = dialled("https://agent:14020", false).unwrap_err();
        assert_eq!(field, "target");
        assert!(rule.contains("set ClientBuilder::tls"), "{rule}");
    }

    #[test]
    fn a_tls_target_is_dialled_by_our_connector_not_tonics() {
        // http:// so that tonic's own TLS, if some crate enables it, stays out.
        assert_eq!(
            dialled("127.0.0.1:14020", true).unwrap(),
            "http://127.0.0.1:14020/"
        );
        assert_eq!(
            dialled("https://agent:14020", true).unwrap(),
            "http://agent:14020/"
        );
        assert_eq!(dialled("https://agent", true).unwrap(), "http://agent:443/");
        assert_eq!(dialled("[::1]:14020", true).unwrap(), "http://[::1]:14020/");
        for plain in ["http://agent:14020", "unix:///run/agent.sock"] {
            let (field, rule) = dialled(plain, true).unwrap_err();
            assert_eq!(field, "target");
            assert!(rule.contains("https://host:port or host:port"), "{rule}");
        }
    }
}
