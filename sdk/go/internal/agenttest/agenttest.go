// Package agenttest is how the tests that need a real agent (the SDK's and
// the example services') connect to it, plaintext or mutual TLS, so every
// test connects the same way.
//
// scripts/test-sdks exports where the sandbox's agents listen
// (MERIDIAN_TEST_GRPC, MERIDIAN_TEST_HTTP, MERIDIAN_TEST_REGIONS). When the
// agents serve mutual TLS it also exports MERIDIAN_TEST_TLS_DIR: the folder
// of a service identity (cert.pem, key.pem, bundle.pem, as `meridian ca
// issue` writes it). Unset, the tests connect in plaintext, as to an agent
// in insecure mode.
package agenttest

import (
	"net/http"
	"os"
	"testing"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// TLSDirEnv names the identity folder the tests present to the agents.
const TLSDirEnv = "MERIDIAN_TEST_TLS_DIR"

// TLSDir is the identity folder of MERIDIAN_TEST_TLS_DIR; "" for plaintext.
func TLSDir() string { return os.Getenv(TLSDirEnv) }

// DialOptions are the options for every meridian.Dial of a test agent:
// WithTLSDir(TLSDir()) when it is set, none otherwise. Files that can't be
// used make Dial fail with ErrInvalidArgument naming them.
func DialOptions() []meridian.Option {
	if dir := TLSDir(); dir != "" {
		return []meridian.Option{meridian.WithTLSDir(dir)}
	}
	return nil
}

// HTTPClient is the client for the agent's HTTP/JSON API
// (MERIDIAN_TEST_HTTP): with meridian.TLSConfigDir(TLSDir()) when it is set,
// a plain one otherwise. It fails t if the files can't be used.
func HTTPClient(t testing.TB) *http.Client {
	t.Helper()
	dir := TLSDir()
	if dir == "" {
		return &http.Client{}
	}
	cfg, err := meridian.TLSConfigDir(dir)
	if err != nil {
		t.Fatalf("%s=%s: %v", TLSDirEnv, dir, err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}
