//! The HTTP API: JSON in, JSON out; every outcome of the store becomes a
//! status and a body here, and nowhere else.
//!
//! | request | answer |
//! |---|---|
//! | `POST /reservations` `{"order_id","sku","qty"}` | 200 `{"reservation_id","expires_at"}`; 409 `{"error":"out_of_stock","available":n}`; 503 `{"error":"reservation_in_progress"}` |
//! | `POST /reservations/{order_id}/confirm` | 200 `{"reservation_id","expires_at","state"}`; 404; 409 `{"error":"reservation_released"}` |
//! | `POST /stock/{sku}` `{"available":n}` | 200 `{"sku","available"}` |
//! | `GET /stock/{sku}` | 200 `{"sku","available"}`; 404 `{"error":"unknown_sku"}` |
//! | `GET /healthz` | 200 `ok` |
//!
//! Bad input is 400 `{"error":"invalid_request","detail"}`; a failure of the
//! agent is 503 (transient: retry) or 500 `{"error":..., "detail"}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{Reservation, Stock, check_id};
use crate::store::{ConfirmError, Inventory, ReserveError, StoreError};

/// The service's routes.
pub fn router(inventory: Inventory) -> Router {
    Router::new()
        .route("/reservations", post(reserve))
        .route("/reservations/{order_id}/confirm", post(confirm))
        .route("/stock/{sku}", get(stock).post(set_stock))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(inventory)
}

#[derive(Deserialize)]
struct ReserveRequest {
    order_id: String,
    sku: String,
    qty: u64,
}

#[derive(Deserialize)]
struct StockRequest {
    available: u64,
}

async fn reserve(
    State(inventory): State<Inventory>,
    body: Result<Json<ReserveRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return invalid(rejection.body_text()),
    };
    if let Err(rule) = check_id("order_id", &request.order_id)
        .and_then(|()| check_id("sku", &request.sku))
        .and_then(|()| positive(request.qty))
    {
        return invalid(rule);
    }
    match inventory
        .reserve(&request.order_id, &request.sku, request.qty)
        .await
    {
        Ok(r) => ok(reservation_body(&r)),
        Err(ReserveError::OutOfStock(out)) => answer(
            StatusCode::CONFLICT,
            json!({"error": "out_of_stock", "available": out.available}),
        ),
        Err(ReserveError::Mismatch(existing)) => answer(
            StatusCode::CONFLICT,
            json!({
                "error": "reservation_mismatch",
                "detail": "this order already has a reservation for another SKU or quantity",
                "sku": existing.sku,
                "qty": existing.qty,
            }),
        ),
        Err(ReserveError::Released(existing)) => released(existing.released_because),
        Err(e @ ReserveError::InProgress(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(json!({"error": "reservation_in_progress", "detail": e.to_string()})),
        )
            .into_response(),
        Err(ReserveError::Store(e)) => failed(&e),
    }
}

async fn confirm(State(inventory): State<Inventory>, Path(order_id): Path<String>) -> Response {
    if let Err(rule) = check_id("order_id", &order_id) {
        return invalid(rule);
    }
    match inventory.confirm(&order_id).await {
        Ok(r) => ok(reservation_body(&r)),
        Err(ConfirmError::NotFound) => answer(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown_reservation"}),
        ),
        Err(ConfirmError::Released(why)) => released(why.0),
        Err(ConfirmError::Store(e)) => failed(&e),
    }
}

async fn stock(State(inventory): State<Inventory>, Path(sku): Path<String>) -> Response {
    if let Err(rule) = check_id("sku", &sku) {
        return invalid(rule);
    }
    match inventory.stock(&sku).await {
        Ok(Some(stock)) => ok(stock_body(&sku, stock)),
        Ok(None) => answer(StatusCode::NOT_FOUND, json!({"error": "unknown_sku"})),
        Err(e) => failed(&e),
    }
}

async fn set_stock(
    State(inventory): State<Inventory>,
    Path(sku): Path<String>,
    body: Result<Json<StockRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return invalid(rejection.body_text()),
    };
    if let Err(rule) = check_id("sku", &sku) {
        return invalid(rule);
    }
    match inventory.set_stock(&sku, request.available).await {
        Ok(stock) => ok(stock_body(&sku, stock)),
        Err(e) => failed(&e),
    }
}

fn positive(qty: u64) -> Result<(), String> {
    if qty == 0 {
        Err("qty: must be at least 1".into())
    } else {
        Ok(())
    }
}

fn reservation_body(r: &Reservation) -> Value {
    json!({
        "reservation_id": r.reservation_id,
        "expires_at": r.expires_at_rfc3339(),
        "state": r.state,
    })
}

fn stock_body(sku: &str, stock: Stock) -> Value {
    json!({"sku": sku, "available": stock.available})
}

fn ok(body: Value) -> Response {
    answer(StatusCode::OK, body)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn invalid(detail: impl Into<String>) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_request", "detail": detail.into()}),
    )
}

fn released(why: Option<crate::model::Release>) -> Response {
    answer(
        StatusCode::CONFLICT,
        json!({"error": "reservation_released", "released_because": why}),
    )
}

/// A failure of the store: 503 when retrying may help, 500 otherwise.
fn failed(e: &StoreError) -> Response {
    let transient = match e {
        StoreError::Meridian(e) => {
            e.is_transient() || matches!(e, meridian::Error::DeadlineExceeded { .. })
        }
        StoreError::Corrupt { .. } => false,
    };
    tracing::warn!(error = %e, "request failed");
    let (status, error) = if transient {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
    };
    answer(status, json!({"error": error, "detail": e.to_string()}))
}
