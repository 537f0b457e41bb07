package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// newHandler routes the service's endpoints.
func newHandler(s *service, m *readModel) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", s.placeOrder)
	mux.HandleFunc("GET /orders/{id}", s.getOrder)
	mux.HandleFunc("POST /orders/{id}/cancel", s.cancelOrder)
	mux.HandleFunc("GET /readmodel", m.getSummary)
	mux.HandleFunc("GET /readmodel/{id}", m.getOrder)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}

// errorBody is the body of every error response.
type errorBody struct {
	Error  string `json:"error"`
	Detail string `json:"detail,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, status int, code, detail string) {
	writeJSON(w, status, errorBody{Error: code, Detail: detail})
}

// jsonResponse is a response to store under an idempotency key.
func jsonResponse(status int, v any) meridian.StoredResponse {
	body, _ := json.Marshal(v)
	return meridian.StoredResponse{Status: int32(status), Body: body, Headers: map[string]string{"Content-Type": "application/json"}}
}

// upstreamError is a service we called answering something we can't use.
type upstreamError struct {
	service string
	status  int
	body    []byte
}

func (e *upstreamError) Error() string {
	const limit = 200
	body := e.body
	if len(body) > limit {
		body = body[:limit]
	}
	return fmt.Sprintf("%s answered %d: %q", e.service, e.status, body)
}

// writeMeridianError answers a failure of a call to the agent (or, through
// it, to another service) with the status a client can act on: 503 and
// Retry-After when retrying later may work, 504 when time ran out.
func writeMeridianError(w http.ResponseWriter, log *slog.Logger, what string, err error) {
	var upstream *upstreamError
	switch {
	case errors.As(err, &upstream):
		writeError(w, http.StatusBadGateway, "bad_gateway", err.Error())
	case errors.Is(err, meridian.ErrUnavailable), errors.Is(err, meridian.ErrQuorumUnavailable),
		errors.Is(err, meridian.ErrClockSkew), errors.Is(err, meridian.ErrResourceExhausted):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	case errors.Is(err, meridian.ErrDeadlineExceeded):
		writeError(w, http.StatusGatewayTimeout, "timeout", err.Error())
	case errors.Is(err, meridian.ErrCanceled):
		// The client went away; nobody reads this.
		writeError(w, http.StatusServiceUnavailable, "canceled", err.Error())
	default:
		log.Error(what, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}
