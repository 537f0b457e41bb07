//! What every call carries: the agent's health, deadlines and trace context.

use std::time::Duration;

use futures_util::StreamExt;
use meridian::{Consistency, Error, ServingStatus};
use opentelemetry::trace::{
    FutureExt as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
};

use crate::common::{GLOBAL, ok, unique, us_east};

#[tokio::test]
async fn the_agent_is_healthy_and_in_us_east() {
    let health = ok(us_east().await.health().await, "health");
    assert_eq!(health.region, "us-east");
    assert_eq!(health.status, ServingStatus::Serving, "{health:?}");
    let status = ok(us_east().await.status().await, "status");
    assert_eq!(status.region, "us-east");
}

#[tokio::test]
async fn a_tiny_timeout_is_deadline_exceeded() {
    let state = us_east().await.state();
    let result = state
        .get(GLOBAL, unique("slow"), Consistency::Strong)
        .timeout(Duration::from_nanos(1))
        .await;
    match result {
        Err(err @ Error::DeadlineExceeded { .. }) => {
            assert_eq!(err.code(), Some("DEADLINE_EXCEEDED"))
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }

    // A watch's timeout bounds the whole stream.
    let mut watch = ok(
        state
            .watch(GLOBAL, format!("{}.", unique("quiet")))
            .timeout(Duration::from_millis(300))
            .await,
        "watch",
    );
    match watch.next().await {
        Some(Err(Error::DeadlineExceeded { .. })) => {}
        other => panic!("expected the watch to end with DeadlineExceeded, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after its error"
    );
}

#[tokio::test]
async fn calls_carry_the_callers_trace_context() {
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let client = us_east().await;
    let wanted = format!("-{trace_id}-");

    // The typed API: the agent's span for the watch joins our trace.
    let watch = ok(
        client
            .state()
            .watch(GLOBAL, format!("{}.", unique("trace")))
            .context(cx.clone())
            .await,
        "watch",
    );
    let parent = watch
        .traceparent()
        .expect("the agent sends its traceparent");
    assert!(
        parent.contains(&wanted),
        "{parent} is not in trace {trace_id}"
    );

    // The generated client, through the interceptor and the current context.
    let mut raw = client.raw_state();
    let request = meridian::pb::GetRequest {
        keyspace: GLOBAL.into(),
        key: unique("trace"),
        consistency: None,
    };
    let status = async move { raw.get(request).await }
        .with_context(cx)
        .await
        .expect_err("the key does not exist");
    let parent = status
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the agent sends its traceparent");
    assert!(
        parent.contains(&wanted),
        "{parent} is not in trace {trace_id}"
    );
    assert!(matches!(Error::from(status), Error::NotFound { .. }));
}
