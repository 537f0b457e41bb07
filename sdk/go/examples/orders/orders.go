package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// The names this service uses in Meridian.
const (
	// keyspaceOrders is a global keyspace: an order is written once, through
	// a quorum of regions, and read strong, bounded or eventual anywhere.
	keyspaceOrders = "orders"
	// topicOrders carries OrderPlaced and OrderCancelled, keyed by order id.
	topicOrders = "orders"
	// idempotencyScope scopes Idempotency-Keys. A service with authenticated
	// callers would use the caller's identity instead.
	idempotencyScope = "orders"
	// inventoryService is the service that reserves stock.
	inventoryService = "inventory"
)

// Order statuses.
const (
	statusPlaced    = "placed"
	statusCancelled = "cancelled"
)

// Order is the value stored under the order's id in the orders keyspace,
// and the body of the responses about it.
type Order struct {
	ID       string `json:"id"`
	SKU      string `json:"sku"`
	Qty      int    `json:"qty"`
	Customer string `json:"customer"`
	Status   string `json:"status"`
	// Region is where the order was placed.
	Region string `json:"region"`
	// ReservationID is inventory's (confirmed) reservation of the stock.
	ReservationID string     `json:"reservation_id"`
	CreatedAt     time.Time  `json:"created_at"`
	CancelledAt   *time.Time `json:"cancelled_at,omitempty"`
}

// OrderEvent is the payload of the events on topicOrders.
type OrderEvent struct {
	Type          string `json:"type"` // OrderPlaced or OrderCancelled
	OrderID       string `json:"order_id"`
	SKU           string `json:"sku"`
	Qty           int    `json:"qty"`
	Region        string `json:"region"`
	ReservationID string `json:"reservation_id"`
}

// Event types.
const (
	eventPlaced    = "OrderPlaced"
	eventCancelled = "OrderCancelled"
)

// service holds the order handlers. Its fields are set once, before it serves.
type service struct {
	client   *meridian.Client
	region   string
	keyspace string
	log      *slog.Logger
	// version is the version this instance registered, named in the
	// faulty build's errors.
	version string
	// failPercent is the share of orders this build fails on purpose
	// (build.go); 0 for a good build.
	failPercent int
}

// placeRequest is the body of POST /orders.
type placeRequest struct {
	SKU      string `json:"sku"`
	Qty      int    `json:"qty"`
	Customer string `json:"customer"`
}

// skuPattern is what inventory accepts as a SKU.
var skuPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// maxBodyBytes bounds request bodies.
const maxBodyBytes = 64 << 10

// parsePlaceRequest decodes and checks a POST /orders body; the error
// names the field and the rule.
func parsePlaceRequest(body []byte) (placeRequest, error) {
	var req placeRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("body: must be a JSON object {\"sku\", \"qty\", \"customer\"}: %v", err)
	}
	if dec.More() {
		return req, errors.New("body: must hold one JSON object")
	}
	switch {
	case !skuPattern.MatchString(req.SKU):
		return req, errors.New("sku: must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_' and '.'")
	case req.Qty < 1 || req.Qty > 1000:
		return req, errors.New("qty: must be 1 to 1000")
	case req.Customer == "" || len(req.Customer) > 128:
		return req, errors.New("customer: must be 1 to 128 bytes")
	}
	return req, nil
}

// orderID derives the order's id from its idempotency key, so that every
// attempt of one request works on the same order: a retry after a failure
// halfway (stock reserved, order not yet written) finishes that order
// instead of placing a second one.
func orderID(key string) string {
	sum := sha256.Sum256([]byte(idempotencyScope + "\x00" + key))
	return "o-" + hex.EncodeToString(sum[:10])
}

// placeOrder is POST /orders: reserve and confirm stock, write the order,
// publish OrderPlaced, once per Idempotency-Key.
func (s *service) placeOrder(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		writeError(w, http.StatusBadRequest, "missing_idempotency_key", "Idempotency-Key: required")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "body: "+err.Error())
		return
	}
	req, err := parsePlaceRequest(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	// A deliberately faulty build fails its share of orders here, before
	// Once claims the key: nothing is reserved or written, so the order is
	// neither lost nor half placed, and a retry elsewhere places it whole.
	if id := orderID(key); failsOrder(id, s.failPercent) {
		writeError(w, http.StatusInternalServerError, "faulty_build", fmt.Sprintf(
			"orders %s is a deliberately faulty build: it fails %d%% of orders, and order %s is one of them; nothing was written",
			s.version, s.failPercent, id))
		return
	}
	// Once fingerprints body by its canonical JSON: the same order sent
	// again, respaced or reordered, is the same request.
	var merr *meridian.Error
	res, err := s.client.Idempotency().Once(r.Context(), idempotencyScope, key, body,
		func(ctx context.Context, _ uint64) (meridian.StoredResponse, error) {
			return storedAnswer(s.place(ctx, orderID(key), req))
		})
	switch {
	case errors.Is(err, meridian.ErrIdempotencyInProgress):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusConflict, "request_in_progress", "a request with this Idempotency-Key is running")
		return
	case errors.Is(err, meridian.ErrIdempotencyMismatch):
		writeError(w, http.StatusUnprocessableEntity, "idempotency_key_reused", "this Idempotency-Key was used for a different request")
		return
	case errors.As(err, &merr) && merr.Code == meridian.CodeInvalidArgument && merr.Field == "key":
		writeError(w, http.StatusBadRequest, "invalid_request", "Idempotency-Key: "+merr.Rule)
		return
	case err != nil && res.Response.Status != 0:
		// The order is placed, but its response could not be stored; a
		// retry will find the order and answer the same.
		s.log.Warn("order placed, response not stored", "key", key, "err", err)
	case err != nil:
		writeMeridianError(w, s.log, "place order", err)
		return
	}
	if res.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	for k, v := range res.Response.Headers {
		w.Header().Set(k, v)
	}
	w.WriteHeader(int(res.Response.Status))
	_, _ = w.Write(res.Response.Body)
}

// storedAnswer is what Once stores for the outcome of place: 201 with the
// order, or 409 when inventory refused. Other errors are not stored: Once
// releases the key and the client may retry.
func storedAnswer(order Order, err error) (meridian.StoredResponse, error) {
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		return jsonResponse(http.StatusConflict, errorBody{Error: refused.reason}), nil
	case err != nil:
		return meridian.StoredResponse{}, err
	}
	return jsonResponse(http.StatusCreated, order), nil
}

// place runs the command under the idempotency key: every step can be run
// again by a retry of the same request (same key, same order id) without
// doing anything twice.
func (s *service) place(ctx context.Context, id string, req placeRequest) (Order, error) {
	// 1. Reserve the stock.
	ask, _ := json.Marshal(map[string]any{"order_id": id, "sku": req.SKU, "qty": req.Qty})
	resp, err := s.callInventory(ctx, "reservations", ask, id)
	if err != nil {
		return Order{}, err
	}
	var rsv struct {
		ReservationID string `json:"reservation_id"`
	}
	if err := json.Unmarshal(resp.Body, &rsv); err != nil || rsv.ReservationID == "" {
		return Order{}, &upstreamError{service: inventoryService, status: resp.Status, body: resp.Body}
	}

	// 2. Confirm it, or inventory gives the stock back at expires_at. Doing
	// so before writing the order means a request abandoned in between
	// leaves stock held without an order (until it is retried with its
	// key), never an order whose stock went back.
	if _, err := s.callInventory(ctx, "reservations/"+id+"/confirm", nil, id); err != nil {
		return Order{}, err
	}

	// 3. Write the order. The id is the key's, so an order already there
	// was written by an earlier attempt of this same request: keep it.
	order := Order{
		ID: id, SKU: req.SKU, Qty: req.Qty, Customer: req.Customer, Status: statusPlaced, Region: s.region,
		ReservationID: rsv.ReservationID, CreatedAt: time.Now().UTC(),
	}
	value, _ := json.Marshal(order)
	st := s.client.State()
	if _, err := st.Create(ctx, s.keyspace, id, value); errors.Is(err, meridian.ErrConflict) {
		cur, err := st.Get(ctx, s.keyspace, id, meridian.Strong())
		if err != nil {
			return Order{}, fmt.Errorf("read the order written before: %w", err)
		}
		if err := json.Unmarshal(cur.Value, &order); err != nil {
			return Order{}, fmt.Errorf("order %s: %w", id, err)
		}
	} else if err != nil {
		return Order{}, fmt.Errorf("write the order: %w", err)
	}

	// 4. Tell everyone. The event id is fixed per order, so a retry
	// publishes nothing new.
	if err := s.publish(ctx, eventPlaced, "order-"+id+"-placed", order); err != nil {
		return Order{}, err
	}
	return order, nil
}

// refusedError is inventory saying no for a reason the client should hear:
// out_of_stock, or reservation_released (a retry that came after the
// order's reservation expired or was cancelled). place stores it as its
// answer.
type refusedError struct{ reason string }

func (e *refusedError) Error() string { return "inventory refused: " + e.reason }

// callInventory POSTs to inventory through the agent. The order id doubles
// as inventory's Idempotency-Key, which also lets the agent retry the
// POST. Anything but a 200 or a refusal is an *upstreamError.
func (s *service) callInventory(ctx context.Context, method string, body []byte, orderID string) (*meridian.Response, error) {
	resp, err := s.client.Invoke(ctx, inventoryService, method, body,
		meridian.Header("Content-Type", "application/json"), meridian.Header("Idempotency-Key", orderID))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", inventoryService, method, err)
	}
	if err := inventoryError(resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// inventoryError is nil for inventory's 200, a *refusedError for a refusal,
// an *upstreamError for anything else.
func inventoryError(resp *meridian.Response) error {
	if resp.Status == http.StatusOK {
		return nil
	}
	var refusal errorBody
	if resp.Status == http.StatusConflict && json.Unmarshal(resp.Body, &refusal) == nil &&
		(refusal.Error == "out_of_stock" || refusal.Error == "reservation_released") {
		return &refusedError{reason: refusal.Error}
	}
	return &upstreamError{service: inventoryService, status: resp.Status, body: resp.Body}
}

// cancelOrder is POST /orders/{id}/cancel: mark the order cancelled
// (compare-and-set, so a concurrent change is never overwritten) and publish
// OrderCancelled, which makes inventory release the stock. Cancelling again
// answers the same and publishes the same event again (a no-op for
// subscribers), so a caller whose first attempt failed halfway can retry.
func (s *service) cancelOrder(w http.ResponseWriter, r *http.Request) {
	ctx, id := r.Context(), r.PathValue("id")
	st := s.client.State()
	var order Order
	for attempt := 1; ; attempt++ {
		cur, err := st.Get(ctx, s.keyspace, id, meridian.Strong())
		if errors.Is(err, meridian.ErrNotFound) {
			writeError(w, http.StatusNotFound, "not_found", "no order "+id)
			return
		}
		if err != nil {
			writeMeridianError(w, s.log, "read order", err)
			return
		}
		if err := json.Unmarshal(cur.Value, &order); err != nil {
			writeMeridianError(w, s.log, "read order", fmt.Errorf("order %s: %w", id, err))
			return
		}
		if order.Status == statusCancelled {
			break
		}
		now := time.Now().UTC()
		order.Status, order.CancelledAt = statusCancelled, &now
		value, _ := json.Marshal(order)
		_, err = st.Put(ctx, s.keyspace, id, value, meridian.IfRevision(cur.Revision))
		if err == nil {
			break
		}
		if !errors.Is(err, meridian.ErrConflict) || attempt == 5 {
			writeMeridianError(w, s.log, "cancel order", err)
			return
		}
		// Someone changed the order since we read it: read it again.
	}
	if err := s.publish(ctx, eventCancelled, "order-"+id+"-cancelled", order); err != nil {
		writeMeridianError(w, s.log, "cancel order", err)
		return
	}
	writeJSON(w, http.StatusOK, order)
}

// publish sends an event about o, keyed by its id (so one order's events
// stay in order within a region). eventID names what happened, never the
// attempt, so that publishing it again is absorbed as a duplicate.
func (s *service) publish(ctx context.Context, eventType, eventID string, o Order) error {
	payload, _ := json.Marshal(OrderEvent{
		Type: eventType, OrderID: o.ID, SKU: o.SKU, Qty: o.Qty, Region: o.Region, ReservationID: o.ReservationID,
	})
	_, err := s.client.Events().Publish(ctx, topicOrders, o.ID, payload, eventID,
		meridian.Headers(map[string]string{"content-type": "application/json", "type": eventType}))
	if err != nil {
		return fmt.Errorf("publish %s: %w", eventType, err)
	}
	return nil
}

// parseConsistency reads ?consistency=strong|bounded|eventual (default
// strong) and, for bounded, max_staleness_ms.
func parseConsistency(r *http.Request) (meridian.Consistency, error) {
	q := r.URL.Query()
	switch c := q.Get("consistency"); c {
	case "", "strong":
		return meridian.Strong(), nil
	case "eventual":
		return meridian.Eventual(), nil
	case "bounded":
		ms, err := strconv.ParseInt(q.Get("max_staleness_ms"), 10, 64)
		if err != nil || ms < 1 {
			return meridian.Consistency{}, errors.New("max_staleness_ms: bounded reads need a positive number of milliseconds")
		}
		return meridian.Bounded(time.Duration(ms) * time.Millisecond), nil
	default:
		return meridian.Consistency{}, fmt.Errorf("consistency: %q is not strong, bounded or eventual", c)
	}
}

// getOrder is GET /orders/{id}. The body is the order; the headers say how
// it was read: ETag (its revision), Consistency-Served and
// Staleness-Bound-Ms (how stale it may be).
func (s *service) getOrder(w http.ResponseWriter, r *http.Request) {
	consistency, err := parseConsistency(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	id := r.PathValue("id")
	// The faulty build fails reads of its share of orders too (by the same
	// id), before reading anything.
	if failsOrder(id, s.failPercent) {
		writeError(w, http.StatusInternalServerError, "faulty_build", fmt.Sprintf(
			"orders %s is a deliberately faulty build: it fails %d%% of orders, and order %s is one of them",
			s.version, s.failPercent, id))
		return
	}
	res, err := s.client.State().Get(r.Context(), s.keyspace, id, consistency)
	if errors.Is(err, meridian.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", "no order "+id)
		return
	}
	if err != nil {
		writeMeridianError(w, s.log, "read order", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("ETag", strconv.Quote(strconv.FormatUint(res.Revision, 10)))
	w.Header().Set("Consistency-Served", res.Served.String())
	w.Header().Set("Staleness-Bound-Ms", strconv.FormatInt(res.StalenessBound.Milliseconds(), 10))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(res.Value)
}
