//! W3C trace context propagation (DESIGN §7).
//!
//! Every call carries a `traceparent` (and `tracestate`, when there is one)
//! built from an [`opentelemetry::Context`], so the agent's span for the call
//! joins the caller's trace. Only the `opentelemetry` API crate is needed: the
//! header is written here from the span context, so it works whether or not
//! the application installed a global propagator.

use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Interceptor;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace state header.
pub const TRACESTATE: &str = "tracestate";

/// The `traceparent` value for `cx`'s span: `00-<trace id>-<span id>-<flags>`,
/// or `None` when `cx` has no valid span context.
pub fn traceparent(cx: &opentelemetry::Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Writes `cx`'s trace context into `metadata`, unless it already carries a
/// `traceparent`. Does nothing when `cx` has no valid span context.
pub fn inject(cx: &opentelemetry::Context, metadata: &mut MetadataMap) {
    if metadata.contains_key(TRACEPARENT) {
        return;
    }
    let Some(parent) = traceparent(cx) else {
        return;
    };
    if let Ok(value) = MetadataValue::try_from(parent) {
        metadata.insert(TRACEPARENT, value);
    }
    let state = cx.span().span_context().trace_state().header();
    if !state.is_empty()
        && let Ok(value) = MetadataValue::try_from(state)
    {
        metadata.insert(TRACESTATE, value);
    }
}

/// `cx`'s trace context as HTTP headers: `traceparent`, and `tracestate`
/// when there is one; nothing when `cx` has no valid span context.
pub fn headers(cx: &opentelemetry::Context) -> Vec<(&'static str, String)> {
    let Some(parent) = traceparent(cx) else {
        return Vec::new();
    };
    let mut out = vec![(TRACEPARENT, parent)];
    let state = cx.span().span_context().trace_state().header();
    if !state.is_empty() {
        out.push((TRACESTATE, state));
    }
    out
}

/// A tonic interceptor that injects the *current* OpenTelemetry context
/// ([`opentelemetry::Context::current`]) into every outgoing request that does
/// not already carry a `traceparent`.
///
/// [`Client`](crate::Client) installs it on every generated client it hands
/// out, so calls made through [`Client::raw_state`](crate::Client::raw_state)
/// and friends are traced too. The typed wrappers capture the context when a
/// call is built, which also works for futures polled elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(&opentelemetry::Context::current(), request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn context(state: TraceState) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            state,
        ))
    }

    #[test]
    fn writes_the_w3c_header() {
        let mut md = MetadataMap::new();
        inject(&context(TraceState::default()), &mut md);
        assert_eq!(
            md.get(TRACEPARENT).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(md.get(TRACESTATE).is_none());
    }

    #[test]
    fn carries_the_trace_state() {
        let mut md = MetadataMap::new();
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap();
        inject(&context(state), &mut md);
        assert_eq!(md.get(TRACESTATE).unwrap(), "vendor=v1");
    }

    #[test]
    fn the_http_headers_carry_the_same_context() {
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap();
        assert_eq!(
            headers(&context(state)),
            vec![
                (
                    TRACEPARENT,
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
                ),
                (TRACESTATE, "vendor=v1".to_owned()),
            ]
        );
        assert!(headers(&opentelemetry::Context::new()).is_empty());
    }

    #[test]
    fn leaves_no_header_without_a_span_and_keeps_an_existing_one() {
        let mut md = MetadataMap::new();
        inject(&opentelemetry::Context::new(), &mut md);
        assert!(md.is_empty());
        md.insert(TRACEPARENT, MetadataValue::from_static("00-keep"));
        inject(&context(TraceState::default()), &mut md);
        assert_eq!(md.get(TRACEPARENT).unwrap(), "00-keep");
    }
}
