package meridian_test

// Mutual TLS against an in-process gRPC server that requires a client
// certificate, with certificates made here the way `meridian ca` makes them:
// a root per CA, leaves with one spiffe:// URI SAN, files replaced by rename
// (key, then certificate, then bundle).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// testRoot is a CA: a self-signed root and its key.
type testRoot struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// testLeaf is an issued certificate and its key, as PEM.
type testLeaf struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
}

// leafOpts varies a leaf from the default: ECDSA P-256, valid for an hour.
type leafOpts struct {
	ed25519  bool
	alsoURIs []string     // more URI SANs after the identity
	validity [2]time.Time // not before, not after
}

func newRoot(t *testing.T, name string) *testRoot {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{"Meridian"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testRoot{cert: cert, key: key}
}

func (r *testRoot) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.cert.Raw})
}

// issue makes a leaf for the SPIFFE ID uri (agents also get localhost and
// 127.0.0.1, as `meridian ca issue` gives them), for server and client
// authentication.
func (r *testRoot) issue(t *testing.T, uri string, opts leafOpts) testLeaf {
	t.Helper()
	var key crypto.Signer
	var err error
	if opts.ed25519 {
		_, key, err = ed25519.GenerateKey(rand.Reader)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	notBefore, notAfter := opts.validity[0], opts.validity[1]
	if notBefore.IsZero() {
		notBefore, notAfter = time.Now().Add(-30*time.Second), time.Now().Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{"Meridian"}, CommonName: u.Path},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{u},
	}
	for _, more := range opts.alsoURIs {
		u, err := url.Parse(more)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	if strings.HasSuffix(uri, "/agent") {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, key.Public(), r.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testLeaf{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func bundleOf(roots ...*testRoot) []byte {
	var out []byte
	for _, r := range roots {
		out = append(out, r.pem()...)
	}
	return out
}

// replaceFile writes data to path the way the CA does: a temporary file,
// then a rename, so a reader sees the old file or the new one.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// writeIdentity writes an identity's folder: key first, then the
// certificate, then the bundle, as `meridian ca issue` does.
func writeIdentity(t *testing.T, dir string, leaf testLeaf, bundle []byte) {
	t.Helper()
	replaceFile(t, filepath.Join(dir, "key.pem"), leaf.keyPEM)
	replaceFile(t, filepath.Join(dir, "cert.pem"), leaf.certPEM)
	replaceFile(t, filepath.Join(dir, "bundle.pem"), bundle)
}

// tlsAgent serves the agent's health check over mutual TLS and records the
// client certificate of every handshake it accepted.
type tlsAgent struct {
	meridianv1.UnimplementedHealthServiceServer

	addr    string
	mu      sync.Mutex
	clients []*x509.Certificate // per accepted handshake, in order
	checked []string            // the SPIFFE ID the health check saw, per call
}

func (a *tlsAgent) Check(ctx context.Context, _ *meridianv1.HealthCheckRequest) (*meridianv1.HealthCheckResponse, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			a.mu.Lock()
			for _, u := range info.State.PeerCertificates[0].URIs {
				a.checked = append(a.checked, u.String())
			}
			a.mu.Unlock()
		}
	}
	return &meridianv1.HealthCheckResponse{Status: meridianv1.HealthCheckResponse_SERVING_STATUS_SERVING, Region: "us-east"}, nil
}

// lastClient is the client certificate of the latest handshake, or nil.
func (a *tlsAgent) lastClient() *x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.clients) == 0 {
		return nil
	}
	return a.clients[len(a.clients)-1]
}

func (a *tlsAgent) handshakes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.clients)
}

// serve serves the agent at addr ("127.0.0.1:0" for a free port) with the
// certificate server, requiring a client certificate from clientRoots, until
// the returned stop is called (or the test ends).
func (a *tlsAgent) serve(t *testing.T, addr string, server testLeaf, clientRoots ...*testRoot) (stop func()) {
	t.Helper()
	pair, err := tls.X509KeyPair(server.certPEM, server.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range clientRoots {
		pool.AddCert(r.cert)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.clients = append(a.clients, cs.PeerCertificates[0])
			return nil
		},
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a.addr = lis.Addr().String()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	meridianv1.RegisterHealthServiceServer(srv, a)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return srv.Stop
}

// tlsWorld is one trust domain "td": its root, the us-east agent's
// certificate, and the orders service's identity folder.
type tlsWorld struct {
	root    *testRoot
	agent   testLeaf
	service testLeaf
	dir     string // the service's cert.pem, key.pem, bundle.pem
}

const (
	agentID   = "spiffe://td/region/us-east/agent"
	serviceID = "spiffe://td/service/orders"
)

func newTLSWorld(t *testing.T) *tlsWorld {
	t.Helper()
	w := &tlsWorld{root: newRoot(t, "Meridian root td"), dir: t.TempDir()}
	w.agent = w.root.issue(t, agentID, leafOpts{})
	w.service = w.root.issue(t, serviceID, leafOpts{})
	writeIdentity(t, w.dir, w.service, bundleOf(w.root))
	return w
}

// dialTLS dials addr with opts within limit.
func dialTLS(t *testing.T, addr string, limit time.Duration, opts ...meridian.Option) (*meridian.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	c, err := meridian.Dial(ctx, addr, opts...)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func TestTLSDialPresentsTheServiceIdentity(t *testing.T) {
	w := newTLSWorld(t)
	agent := &tlsAgent{}
	agent.serve(t, "127.0.0.1:0", w.agent, w.root)

	c, err := dialTLS(t, agent.addr, 10*time.Second, meridian.WithTLSDir(w.dir))
	if err != nil {
		t.Fatalf("Dial with the service identity: %v", err)
	}
	if c.Region() != "us-east" {
		t.Errorf("Region() = %q, want us-east", c.Region())
	}
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatalf("Health: %v", err)
	}
	agent.mu.Lock()
	checked := append([]string(nil), agent.checked...)
	agent.mu.Unlock()
	if len(checked) != 2 || checked[0] != serviceID || checked[1] != serviceID {
		t.Errorf("the agent saw callers %v, want %s twice", checked, serviceID)
	}
	if got := agent.lastClient(); got.SerialNumber.Cmp(w.service.cert.SerialNumber) != 0 {
		t.Errorf("the client presented serial %v, want the service's %v", got.SerialNumber, w.service.cert.SerialNumber)
	}
}

func TestTLSConfigServesHTTPClients(t *testing.T) {
	w := newTLSWorld(t)
	pair, err := tls.X509KeyPair(w.agent.certPEM, w.agent.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(w.root.cert)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(rw, r.TLS.PeerCertificates[0].URIs[0].String())
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	cfg, err := meridian.TLSConfigDir(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion %x, want TLS 1.3", cfg.MinVersion)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := hc.Get(srv.URL + "/v1/health")
	if err != nil {
		t.Fatalf("GET over mutual TLS: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != serviceID {
		t.Errorf("the server saw %d %q, want the client identity %s", resp.StatusCode, body, serviceID)
	}
	if resp.TLS.Version != tls.VersionTLS13 {
		t.Errorf("negotiated TLS version %x, want 1.3", resp.TLS.Version)
	}
}

func TestTLSRefusesAServerThatIsNotAnAgentOfTheTrustDomain(t *testing.T) {
	w := newTLSWorld(t)
	other := newRoot(t, "another CA")
	past := [2]time.Time{time.Now().Add(-2 * time.Hour), time.Now().Add(-time.Hour)}
	for _, tc := range []struct {
		name   string
		server testLeaf
		want   string
	}{
		{"another CA", other.issue(t, agentID, leafOpts{}), "agent certificate spiffe://td/region/us-east/agent does not verify with the bundle"},
		{"a service identity", w.root.issue(t, "spiffe://td/service/x", leafOpts{}),
			"agent certificate names spiffe://td/service/x, want spiffe://td/region/<region>/agent"},
		{"another trust domain", w.root.issue(t, "spiffe://other/region/us-east/agent", leafOpts{}),
			"names spiffe://other/region/us-east/agent, in trust domain other; want trust domain td"},
		{"two identities", w.root.issue(t, agentID, leafOpts{alsoURIs: []string{"spiffe://td/region/eu-west/agent"}}),
			"names 2 spiffe:// IDs"},
		{"expired", w.root.issue(t, agentID, leafOpts{validity: past}), "certificate has expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			agent := &tlsAgent{}
			agent.serve(t, "127.0.0.1:0", tc.server, w.root, other)

			// What a handshake says, with the config Dial uses.
			cfg, err := meridian.TLSConfigDir(w.dir)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := tls.Dial("tcp", agent.addr, cfg)
			if err == nil {
				_ = conn.Close()
				t.Fatal("the handshake succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("handshake error %q, want it to say %q", err, tc.want)
			}

			// Dial gives up, and nothing reaches the agent's services.
			c, err := dialTLS(t, agent.addr, 2*time.Second, meridian.WithTLSDir(w.dir))
			if err == nil {
				t.Fatalf("Dial succeeded, to %s", c.Region())
			}
			var merr *meridian.Error
			if !errors.As(err, &merr) || !(errors.Is(err, meridian.ErrDeadlineExceeded) || errors.Is(err, meridian.ErrUnavailable)) {
				t.Fatalf("Dial: %v, want an *Error, ErrDeadlineExceeded or ErrUnavailable", err)
			}
			if !strings.Contains(merr.Message, tc.want) {
				t.Errorf("Dial error %q, want it to say %q", merr.Message, tc.want)
			}
			agent.mu.Lock()
			defer agent.mu.Unlock()
			if len(agent.checked) != 0 {
				t.Errorf("the agent served %d health checks", len(agent.checked))
			}
		})
	}
}

func TestTLSReissuedClientCertificateReachesNewConnections(t *testing.T) {
	w := newTLSWorld(t)
	agent := &tlsAgent{}
	stop := agent.serve(t, "127.0.0.1:0", w.agent, w.root)
	addr := agent.addr
	c, err := dialTLS(t, addr, 10*time.Second, meridian.WithTLSDir(w.dir))
	if err != nil {
		t.Fatal(err)
	}
	if got := agent.lastClient(); got.SerialNumber.Cmp(w.service.cert.SerialNumber) != 0 {
		t.Fatalf("first connection presented serial %v, want %v", got.SerialNumber, w.service.cert.SerialNumber)
	}

	// Re-issued (a new key, of another type), while the client runs; the
	// agent restarts, so the client makes a new connection.
	renewed := w.root.issue(t, serviceID, leafOpts{ed25519: true})
	writeIdentity(t, w.dir, renewed, bundleOf(w.root))
	stop()
	agent.serve(t, addr, w.agent, w.root)
	eventually(t, "a health check through a new connection", func() (bool, error) {
		_, err := c.Health(context.Background())
		return err == nil, err
	})
	if got := agent.lastClient(); got.SerialNumber.Cmp(renewed.cert.SerialNumber) != 0 {
		t.Errorf("the new connection presented serial %v, want the re-issued %v (the first was %v)",
			got.SerialNumber, renewed.cert.SerialNumber, w.service.cert.SerialNumber)
	}
}

func TestTLSKeepsTheLastGoodPairWhileARotationIsHalfDone(t *testing.T) {
	w := newTLSWorld(t)
	agent := &tlsAgent{}
	agent.serve(t, "127.0.0.1:0", w.agent, w.root)
	cfg, err := meridian.TLSConfigDir(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	// One config for every connection, as a long-running process holds it.
	creds := meridian.WithTransportCredentials(credentials.NewTLS(cfg))
	connect := func(what string) *x509.Certificate {
		t.Helper()
		c, err := dialTLS(t, agent.addr, 10*time.Second, creds)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		_ = c.Close()
		return agent.lastClient()
	}
	first := connect("before the rotation")

	// The CA renames the new key into place before the new certificate.
	renewed := w.root.issue(t, serviceID, leafOpts{})
	replaceFile(t, filepath.Join(w.dir, "key.pem"), renewed.keyPEM)
	if got := connect("with the new key beside the old certificate"); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("mid-rotation the client presented serial %v, want the last good %v", got.SerialNumber, first.SerialNumber)
	}
	replaceFile(t, filepath.Join(w.dir, "cert.pem"), renewed.certPEM)
	if got := connect("after the rotation"); got.SerialNumber.Cmp(renewed.cert.SerialNumber) != 0 {
		t.Errorf("after the rotation the client presented serial %v, want the new %v", got.SerialNumber, renewed.cert.SerialNumber)
	}
}

func TestTLSBundleThatGainsARootIsPickedUp(t *testing.T) {
	w := newTLSWorld(t)
	newer := newRoot(t, "Meridian root td (rotated)")
	agent := &tlsAgent{}
	stop := agent.serve(t, "127.0.0.1:0", w.agent, w.root, newer)
	addr := agent.addr
	c, err := dialTLS(t, addr, 10*time.Second, meridian.WithTLSDir(w.dir))
	if err != nil {
		t.Fatal(err)
	}

	// `meridian ca rotate`: every bundle trusts both roots; then the agent
	// is re-issued by the new root and restarts. The service's own
	// certificate stays on the old root.
	replaceFile(t, filepath.Join(w.dir, "bundle.pem"), bundleOf(w.root, newer))
	stop()
	agent.serve(t, addr, newer.issue(t, agentID, leafOpts{}), w.root, newer)
	eventually(t, "a health check of the agent on the new root", func() (bool, error) {
		_, err := c.Health(context.Background())
		return err == nil, err
	})
	if n := agent.handshakes(); n == 0 {
		t.Error("no handshake with the re-issued agent")
	}
}

func TestTLSUnusableFilesAreInvalidArguments(t *testing.T) {
	w := newTLSWorld(t)
	other := newRoot(t, "another CA")
	cert, key, bundle := filepath.Join(w.dir, "cert.pem"), filepath.Join(w.dir, "key.pem"), filepath.Join(w.dir, "bundle.pem")
	missing := filepath.Join(t.TempDir(), "nothing.pem")
	write := func(name string, data []byte) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noSPIFFE := w.root.issue(t, "https://td/service/orders", leafOpts{})
	for _, tc := range []struct {
		name              string
		cert, key, bundle string
		field, rule       string
	}{
		{"no certificate", missing, key, bundle, "tls.cert", "does not exist"},
		{"no key", cert, missing, bundle, "tls.key", "does not exist"},
		{"no bundle", cert, key, missing, "tls.bundle", "does not exist"},
		{"a directory as certificate", w.dir, key, bundle, "tls.cert", "is a directory"},
		{"not a certificate", write("cert.pem", []byte("hello")), key, bundle, "tls.cert", "holds no PEM certificate"},
		{"not a key", cert, write("key.pem", []byte("hello")), bundle, "tls.key", "holds no PEM private key"},
		{"an empty bundle", cert, key, write("bundle.pem", nil), "tls.bundle", "holds no PEM certificate"},
		{"the key of another certificate", cert, write("key.pem", w.agent.keyPEM), bundle, "tls.key", "is not the key of the certificate"},
		{"a bundle without the certificate's root", cert, key, write("bundle.pem", bundleOf(other)), "tls.cert", "not valid for client authentication"},
		{"a certificate without a SPIFFE ID", write("cert.pem", noSPIFFE.certPEM), write("key.pem", noSPIFFE.keyPEM), bundle,
			"tls.cert", "names 0 spiffe:// IDs (URI SANs [https://td/service/orders]), want exactly one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cfgErr := meridian.TLSConfig(tc.cert, tc.key, tc.bundle)
			// Nothing listens on port 1: only a check before connecting
			// can make this an invalid argument.
			_, dialErr := dialTLS(t, "127.0.0.1:1", 10*time.Second, meridian.WithTLSFiles(tc.cert, tc.key, tc.bundle))
			for what, err := range map[string]error{"TLSConfig": cfgErr, "Dial": dialErr} {
				var merr *meridian.Error
				if !errors.Is(err, meridian.ErrInvalidArgument) || !errors.As(err, &merr) {
					t.Fatalf("%s: %v, want ErrInvalidArgument", what, err)
				}
				if merr.Field != tc.field || !strings.Contains(merr.Rule, tc.rule) {
					t.Errorf("%s: field %q rule %q, want field %q and a rule saying %q", what, merr.Field, merr.Rule, tc.field, tc.rule)
				}
				if !strings.Contains(err.Error(), tc.field+": ") {
					t.Errorf("%s: %q does not name %s", what, err, tc.field)
				}
			}
		})
	}

	// Every field at fault is named, not just the first.
	_, err := meridian.TLSConfig(missing, key, missing)
	var merr *meridian.Error
	if !errors.As(err, &merr) || len(merr.Violations) != 2 {
		t.Fatalf("two missing files: %v, want two violations", err)
	}
}

// A client without TLS options still speaks plaintext: it can't reach an
// agent that requires mutual TLS.
func TestTLSIsOffWithoutAnOption(t *testing.T) {
	w := newTLSWorld(t)
	agent := &tlsAgent{}
	agent.serve(t, "127.0.0.1:0", w.agent, w.root)
	if _, err := dialTLS(t, agent.addr, time.Second); err == nil {
		t.Fatal("a plaintext Dial reached an agent that requires mutual TLS")
	}
	if agent.handshakes() != 0 {
		t.Errorf("%d TLS handshakes from a plaintext client", agent.handshakes())
	}
}
