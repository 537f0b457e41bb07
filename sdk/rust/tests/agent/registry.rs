//! The Registry and Invocation APIs: registering a small HTTP service,
//! invoking it from every region, leases, and bad input.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian::{Client, Error, Instance, InstanceHealth, InstanceStatus, InvokeResponse, Protocol};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use crate::common::{eu_west, eventually, ok, us_east};

/// A service name (a DNS label) no other test or run uses.
fn service_name(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or_default();
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "rs-{name}-{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A small HTTP service on 127.0.0.1: `GET /healthz` answers 200, `/fail`
/// answers 503, and any other request is echoed back as JSON (method, path,
/// query, headers, body).
async fn echo_server() -> std::net::SocketAddr {
    use axum::http::{HeaderMap, Method, StatusCode, Uri};

    async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> String {
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        serde_json::json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query().unwrap_or(""),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string()
    }

    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/fail",
            axum::routing::any(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Waits until `client`'s agent lists `instance_id` of `service` healthy.
async fn listed_healthy(client: &Client, service: &str, instance_id: &str) -> InstanceStatus {
    let registry = client.registry();
    let statuses = eventually(
        "the instance is listed healthy",
        || registry.list_instances().service(service).into_future(),
        |r| {
            matches!(r, Ok(list) if list.iter().any(|s| {
                s.instance.instance_id == instance_id && s.health == InstanceHealth::Healthy
            }))
        },
    )
    .await
    .unwrap();
    statuses
        .into_iter()
        .find(|s| s.instance.instance_id == instance_id)
        .unwrap()
}

fn echoed(response: &InvokeResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "{} {:?}: {e}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })
}

#[test]
fn registry_and_invocation_calls_cross_tasks() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<meridian::Registration>();
    send_sync::<meridian::RegistryClient>();
    send::<meridian::Invoke>();
    send::<<meridian::Invoke as std::future::IntoFuture>::IntoFuture>();
    send::<<meridian::registry::Register as std::future::IntoFuture>::IntoFuture>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_is_listed_healthy_invoked_from_every_region_and_deregistered() {
    let client = us_east().await;
    let addr = echo_server().await;
    let service = service_name("echo");
    let registration = ok(
        client
            .registry()
            .register(
                Instance::http(&service, addr.to_string())
                    .version("1.2.3")
                    .metadata("team", "sdk")
                    .health_path("/healthz")
                    .health_interval(Duration::from_millis(200)),
                Duration::from_secs(3),
            )
            .await,
        "register",
    );
    let id = registration.instance_id().to_owned();
    assert!(!id.is_empty());
    assert_eq!(registration.ttl(), Duration::from_secs(3));
    assert!(registration.lease_expires_at().is_some());

    let status = listed_healthy(&client, &service, &id).await;
    let listed = &status.instance;
    assert_eq!(listed.region, "us-east");
    assert_eq!(listed.endpoint, addr.to_string());
    assert_eq!(listed.protocol, Protocol::Http);
    assert_eq!(listed.version, "1.2.3");
    assert_eq!(listed.metadata.get("team").map(String::as_str), Some("sdk"));
    assert!(status.checked_at.is_some() && status.lease_expires_at.is_some());

    // A call with everything set, in a trace of ours.
    let trace_id = TraceId::from_hex("5bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        SpanId::from_hex("10f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let response = ok(
        client
            .invoke(&service, "/things/42")
            .verb("put")
            .header("x-test", "yes")
            .query_pair("q", "a b")
            .body(b"payload".to_vec())
            .timeout(Duration::from_secs(5))
            .context(cx)
            .await,
        "invoke",
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.region, "us-east");
    assert_eq!(response.instance, id);
    assert!(response.attempts >= 1);
    let echo = echoed(&response);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/things/42");
    assert_eq!(echo["query"], "q=a%20b");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["headers"]["x-test"], "yes");
    // The deadline travels on, and so does the trace.
    assert!(echo["headers"]["meridian-timeout-ms"].is_string(), "{echo}");
    let parent = echo["headers"]["traceparent"].as_str().unwrap_or_default();
    assert!(
        parent.contains(&format!("-{trace_id}-")),
        "the instance got traceparent {parent:?}, not in trace {trace_id}"
    );

    // eu-west has no instance: once the registration has reached it, its
    // agent sends the call to us-east's.
    let eu_west = eu_west().await;
    listed_healthy(&eu_west, &service, &id).await;
    let remote = ok(
        eu_west.invoke(&service, "ping").verb("GET").await,
        "invoke from eu-west",
    );
    assert_eq!(remote.status, 200);
    assert_eq!(
        (remote.region.as_str(), remote.instance.as_str()),
        ("us-east", id.as_str())
    );
    assert_eq!(echoed(&remote)["path"], "/ping");

    // A 5xx from the instance is its answer, not an error.
    let failed = ok(client.invoke(&service, "fail").await, "invoke /fail");
    assert_eq!(failed.status, 503);
    assert!(!failed.is_success());
    assert_eq!(failed.body, b"down");

    ok(registration.close().await, "close");
    let registry = client.registry();
    let _ = eventually(
        "the instance is gone from the registry",
        || registry.list_instances().service(&service).into_future(),
        |r| matches!(r, Ok(list) if list.iter().all(|s| s.instance.instance_id != id)),
    )
    .await;
    match client.invoke(&service, "ping").await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("a service without instances: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_the_agent_lost_is_registered_again_under_the_same_id() {
    let client = us_east().await;
    let addr = echo_server().await;
    let service = service_name("lease");
    let registry = client.registry();
    let registration = ok(
        registry
            .register(
                Instance::http(&service, addr.to_string()),
                Duration::from_secs(1),
            )
            .await,
        "register",
    );
    let id = registration.instance_id().to_owned();
    listed_healthy(&client, &service, &id).await;

    // Behind the Registration's back: its next renewal finds no lease.
    ok(registry.deregister(&id).await, "deregister");
    match registry.heartbeat(&id).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("a heartbeat of a removed lease: expected NotFound, got {other:?}"),
    }
    listed_healthy(&client, &service, &id).await;
    assert!(registration.last_error().is_none());

    // Dropped, not closed: the renewals stop and the lease runs out.
    drop(registration);
    let _ = eventually(
        "the lease runs out",
        || registry.list_instances().service(&service).into_future(),
        |r| matches!(r, Ok(list) if list.iter().all(|s| s.instance.instance_id != id)),
    )
    .await;
}

#[tokio::test]
async fn registry_and_invocation_invalid_arguments_name_the_field() {
    let client = us_east().await;
    let registry = client.registry();
    let cases = [
        (
            Instance::http("Not_A_Label", "127.0.0.1:1"),
            Duration::from_secs(5),
            "instance.service",
        ),
        (
            Instance::http("fine", "no-port"),
            Duration::from_secs(5),
            "instance.endpoint",
        ),
        (
            Instance::http("fine", "127.0.0.1:1"),
            Duration::from_millis(500),
            "ttl",
        ),
        (
            Instance::http("fine", "127.0.0.1:1").health_path("no-slash"),
            Duration::from_secs(5),
            "instance.health_check.http_path",
        ),
    ];
    for (instance, ttl, expected) in cases {
        let what = format!("{instance:?} for {ttl:?}");
        match registry.register(instance, ttl).await {
            Err(Error::InvalidArgument { field, rule }) => {
                assert_eq!(field, expected, "{what}: {rule}");
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
    match client.invoke("fine", "x").verb("BREW").await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "http_verb"),
        other => panic!("expected InvalidArgument on http_verb, got {other:?}"),
    }
    match client.invoke("Bad Service", "x").await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "service"),
        other => panic!("expected InvalidArgument on service, got {other:?}"),
    }
}
