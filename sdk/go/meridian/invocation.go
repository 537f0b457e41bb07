package meridian

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// InvokeOption configures Invoke: Verb, Header, Query.
type InvokeOption func(*meridianv1.InvokeRequest)

// Verb sets the HTTP method: GET, POST (the default), PUT, PATCH, DELETE,
// HEAD or OPTIONS.
func Verb(verb string) InvokeOption {
	return func(r *meridianv1.InvokeRequest) { r.HttpVerb = strings.ToUpper(verb) }
}

// Header adds a request header; call it again to add more values.
// An "Idempotency-Key" header makes a non-idempotent verb (POST, PATCH)
// eligible for the agent's retries.
func Header(name, value string) InvokeOption {
	return func(r *meridianv1.InvokeRequest) {
		r.Headers = append(r.Headers, &meridianv1.Header{Name: name, Value: value})
	}
}

// Query sets the query string to q, encoded (sorted by key).
func Query(q url.Values) InvokeOption {
	return func(r *meridianv1.InvokeRequest) { r.Query = q.Encode() }
}

// Response is what the instance that served an Invoke answered.
type Response struct {
	// Status is the instance's HTTP status. A 4xx or 5xx is a response,
	// not an error.
	Status int
	Header http.Header
	Body   []byte
	// Region and Instance say who served it: the region and the instance ID.
	Region   string
	Instance string
	// Attempts is how many attempts the agent made, the first included.
	Attempts int
	// Version is the version the serving instance registered.
	Version string
}

// Invoke calls method (the path after the service name, e.g. "orders/42";
// a leading "/" is dropped) of the HTTP service service through the agent,
// with body, and returns the instance's response. The agent picks a healthy
// instance, in its own region first, failing over to the next region when
// its region has none; it retries, breaks circuits and limits concurrency
// as its [resilience] policy for the service says.
//
// ctx's deadline travels with the call (the agent gives up at it and
// passes what is left on), and so does the W3C trace context of its span,
// so the instance's span joins the caller's trace.
//
// Errors are the call's own, as *Error: ErrUnavailable (no healthy
// instance anywhere, or every region's circuit open), ErrResourceExhausted
// (the service's bulkhead is full), ErrDeadlineExceeded, ErrCanceled,
// ErrInvalidArgument (a bad service, method, verb or header: Field names it).
func (c *Client) Invoke(ctx context.Context, service, method string, body []byte, opts ...InvokeOption) (*Response, error) {
	req := &meridianv1.InvokeRequest{Service: service, Method: strings.TrimPrefix(method, "/"), Body: body}
	for _, opt := range opts {
		opt(req)
	}
	resp, err := unary(ctx, c.invocationRPC.Invoke, req)
	if err != nil {
		return nil, err
	}
	out := &Response{
		Status:   int(resp.GetStatus()),
		Header:   make(http.Header, len(resp.GetHeaders())),
		Body:     resp.GetBody(),
		Region:   resp.GetRegion(),
		Instance: resp.GetInstanceId(),
		Attempts: int(resp.GetAttempts()),
		Version:  resp.GetVersion(),
	}
	for _, h := range resp.GetHeaders() {
		out.Header.Add(h.GetName(), h.GetValue())
	}
	return out, nil
}
