//! Calls to other services through the local agent
//! (`proto/meridian/v1/invocation.proto`, DESIGN §5).
//!
//! [`Client::invoke`](crate::Client::invoke) builds an HTTP-style call to a
//! registered `http` service. The agent picks a healthy instance (local
//! region first, fewest outstanding requests), fails over to other regions
//! when the local ones are unhealthy, and applies the service's resilience
//! policy (timeouts, retries of idempotent or keyed requests, breakers,
//! bulkheads).
//!
//! ```no_run
//! use std::time::Duration;
//! use meridian::{Client, Error};
//!
//! # async fn demo(client: Client) -> Result<(), Error> {
//! let response = client
//!     .invoke("inventory", "reservations")
//!     .verb("POST")
//!     .header("content-type", "application/json")
//!     .body(br#"{"order_id":"o-1","sku":"sku-1","qty":2}"#.to_vec())
//!     .timeout(Duration::from_secs(2))
//!     .await?;
//! println!(
//!     "{} from {} in {} after {} attempt(s)",
//!     response.status, response.instance, response.region, response.attempts
//! );
//! # Ok(()) }
//! ```
//!
//! A 4xx or 5xx from the instance is a response, not an error. Errors are
//! the call's own: [`Error::Unavailable`] (no healthy instance anywhere, or a
//! breaker open), [`Error::ResourceExhausted`] (the target's bulkhead is
//! full), [`Error::DeadlineExceeded`], [`Error::InvalidArgument`] (a bad
//! service name, verb or header).

use std::future::IntoFuture;
use std::time::Duration;

use crate::client::{BoxFuture, CallOptions, TracedChannel, unary};
use crate::error::Error;
use crate::pb;
use crate::pb::invocation_service_client::InvocationServiceClient;

/// A call to a service; from [`Client::invoke`](crate::Client::invoke).
/// Set its options, then `.await` it for an [`InvokeResponse`].
///
/// It carries the trace context current when it was built (override with
/// [`Invoke::context`]) to the agent, and to the instance as the HTTP headers
/// `traceparent` and `tracestate` (unless set with [`Invoke::header`]). Its deadline (the client's default unless
/// [`Invoke::timeout`] says otherwise) travels as the gRPC deadline and bounds
/// every attempt the agent makes.
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct Invoke {
    inner: InvocationServiceClient<TracedChannel>,
    options: CallOptions,
    request: pb::InvokeRequest,
}

impl Invoke {
    pub(crate) fn new(
        inner: InvocationServiceClient<TracedChannel>,
        timeout: Option<Duration>,
        service: String,
        method: String,
    ) -> Self {
        Invoke {
            inner,
            options: CallOptions::new(timeout),
            request: pb::InvokeRequest {
                service,
                method: method.trim_start_matches('/').to_owned(),
                http_verb: "POST".to_owned(),
                query: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
            },
        }
    }

    /// The HTTP verb: `GET`, `POST` (the default), `PUT`, `PATCH`, `DELETE`,
    /// `HEAD` or `OPTIONS`. The agent retries only idempotent verbs, or
    /// requests with an `Idempotency-Key` header.
    pub fn verb(mut self, verb: impl Into<String>) -> Self {
        self.request.http_verb = verb.into().to_ascii_uppercase();
        self
    }

    /// Adds a header (a name may repeat).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push(pb::Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Sets the raw query string, without the `?` (e.g. `limit=10&after=k7`).
    /// Replaces what [`Invoke::query_pair`] added.
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.request.query = query.into();
        self
    }

    /// Appends `name=value` to the query string, percent-encoding both.
    pub fn query_pair(mut self, name: &str, value: &str) -> Self {
        if !self.request.query.is_empty() {
            self.request.query.push('&');
        }
        self.request.query.push_str(&percent_encode(name));
        self.request.query.push('=');
        self.request.query.push_str(&percent_encode(value));
        self
    }

    /// Sets the request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Fails with [`Error::DeadlineExceeded`] if no answer came within
    /// `timeout`, all attempts included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// No deadline for this call (the agent's policy for the route may still
    /// set one).
    pub fn no_timeout(mut self) -> Self {
        self.options.timeout = None;
        self
    }

    /// Propagates `cx`'s trace context instead of the one that was current
    /// when the call was built.
    pub fn context(mut self, cx: opentelemetry::Context) -> Self {
        self.options.context = cx;
        self
    }
}

impl Invoke {
    /// The client, options and request as sent. The trace context also goes
    /// to the instance, as HTTP headers: the gRPC metadata only reaches the
    /// agent. Headers the caller set win.
    fn into_parts(
        mut self,
    ) -> (
        InvocationServiceClient<TracedChannel>,
        CallOptions,
        pb::InvokeRequest,
    ) {
        let has_parent = self
            .request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(crate::trace::TRACEPARENT));
        if !has_parent {
            for (name, value) in crate::trace::headers(&self.options.context) {
                self.request.headers.push(pb::Header {
                    name: name.to_owned(),
                    value,
                });
            }
        }
        (self.inner, self.options, self.request)
    }
}

impl IntoFuture for Invoke {
    type Output = Result<InvokeResponse, Error>;
    type IntoFuture = BoxFuture<Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let (mut inner, options, request) = self.into_parts();
        Box::pin(async move {
            let response = unary(
                options,
                request,
                move |r| async move { inner.invoke(r).await },
            )
            .await?
            .into_inner();
            Ok(InvokeResponse::from_proto(response))
        })
    }
}

/// An instance's answer to an [`Invoke`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvokeResponse {
    /// The instance's HTTP status.
    pub status: u16,
    /// The instance's response headers, in order (names as sent).
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
    /// The region of the instance that answered.
    pub region: String,
    /// The id of the instance that answered.
    pub instance: String,
    /// Attempts the agent made, the first included.
    pub attempts: u32,
    /// The version the instance that answered registered.
    pub version: String,
}

impl InvokeResponse {
    fn from_proto(r: pb::InvokeResponse) -> Self {
        InvokeResponse {
            // An out-of-range status would be the agent's bug; 0 says so
            // rather than a made-up status.
            status: u16::try_from(r.status).unwrap_or(0),
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
            region: r.region,
            instance: r.instance_id,
            attempts: r.attempts,
            version: r.version,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Invoke {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let inner = InvocationServiceClient::with_interceptor(
            channel,
            crate::trace::TraceContextInterceptor,
        );
        Invoke::new(inner, None, "orders".into(), "/orders/42".into())
    }

    #[tokio::test]
    async fn the_builder_fills_the_request() {
        let invoke = call()
            .verb("get")
            .header("accept", "application/json")
            .header("x-a", "1")
            .query_pair("q", "a b&c")
            .query_pair("n", "ü")
            .body(b"hi".to_vec());
        let r = &invoke.request;
        assert_eq!(r.method, "orders/42");
        assert_eq!(r.http_verb, "GET");
        assert_eq!(r.query, "q=a%20b%26c&n=%C3%BC");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.body, b"hi");
        assert_eq!(call().request.http_verb, "POST");
        assert_eq!(call().query("a=1").request.query, "a=1");
    }

    fn traced() -> opentelemetry::Context {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[tokio::test]
    async fn the_trace_context_goes_to_the_instance_unless_the_caller_set_one() {
        let (_, _, untraced) = call().context(opentelemetry::Context::new()).into_parts();
        assert!(untraced.headers.is_empty());
        let parent = |invoke: Invoke| {
            let (_, _, request) = invoke.context(traced()).into_parts();
            request
                .headers
                .into_iter()
                .filter(|h| h.name.eq_ignore_ascii_case("traceparent"))
                .map(|h| h.value)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parent(call()),
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
        );
        assert_eq!(parent(call().header("Traceparent", "00-mine")), ["00-mine"]);
    }

    #[test]
    fn a_response_is_built_from_its_proto() {
        let r = InvokeResponse::from_proto(pb::InvokeResponse {
            status: 503,
            headers: vec![pb::Header {
                name: "Content-Type".into(),
                value: "text/plain".into(),
            }],
            body: b"down".to_vec(),
            region: "eu-west".into(),
            instance_id: "orders-eu-west-1".into(),
            attempts: 2,
            version: "v2".into(),
        });
        assert_eq!(r.status, 503);
        assert!(!r.is_success());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-missing"), None);
        assert_eq!(
            (
                r.region.as_str(),
                r.instance.as_str(),
                r.attempts,
                r.version.as_str()
            ),
            ("eu-west", "orders-eu-west-1", 2, "v2")
        );
    }
}
