package meridian

// Mutual TLS with SPIFFE identities, from files that are replaced while the
// process runs (src/meridian/security/tls.py is the agent's side).

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The files `meridian ca issue` writes into an identity's folder.
const (
	certFile   = "cert.pem"
	keyFile    = "key.pem"
	bundleFile = "bundle.pem"
)

// The fields an invalid TLS setup is reported under (Error.Field).
const (
	fieldTLSCert   = "tls.cert"
	fieldTLSKey    = "tls.key"
	fieldTLSBundle = "tls.bundle"
)

const spiffeScheme = "spiffe://"

var (
	// trustDomainRE and nameRE are the agent's rules for a trust domain and
	// a region name (src/meridian/security/model.py).
	trustDomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$`)
	nameRE        = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
)

// WithTLSDir makes Dial use mutual TLS with the identity in dir: its
// cert.pem, key.pem and bundle.pem, as `meridian ca issue` writes them
// (<ca-dir>/identities/<slug>/). It is WithTLSFiles with those three paths.
func WithTLSDir(dir string) Option {
	return WithTLSFiles(filepath.Join(dir, certFile), filepath.Join(dir, keyFile), filepath.Join(dir, bundleFile))
}

// WithTLSFiles makes Dial use mutual TLS: the client presents the
// certificate in cert (PEM; intermediates may follow the leaf) with the
// PKCS#8, PKCS#1 or SEC 1 PEM private key in key, and trusts an agent whose
// certificate chains to a root in bundle (PEM, one or more roots) and names
// the agent identity spiffe://<trust domain>/region/<region>/agent in the
// client certificate's own trust domain. The files are read again when they
// change, for new connections; see TLSConfig.
//
// Dial reads the files before it connects and fails at once with an *Error
// (ErrInvalidArgument, Field "tls.cert", "tls.key" or "tls.bundle") when one
// is missing, unreadable, or does not fit the others. This option and
// WithTransportCredentials replace each other: the last one given applies.
// Without either, Dial connects in plaintext.
func WithTLSFiles(cert, key, bundle string) Option {
	return func(o *options) {
		o.tlsFiles = &tlsFiles{cert: cert, key: key, bundle: bundle}
		o.creds = nil
	}
}

// TLSConfigDir is TLSConfig for the identity in dir (cert.pem, key.pem,
// bundle.pem), as `meridian ca issue` writes it.
func TLSConfigDir(dir string) (*tls.Config, error) {
	return TLSConfig(filepath.Join(dir, certFile), filepath.Join(dir, keyFile), filepath.Join(dir, bundleFile))
}

// TLSConfig is the client side of mutual TLS with an agent, what Dial uses
// with WithTLSFiles. Use it for the agent's HTTP/JSON API too:
//
//	cfg, err := meridian.TLSConfigDir(".meridian/ca/identities/service-orders")
//	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
//	resp, err := hc.Get("https://127.0.0.1:14021/v1/health")
//
// The config asks for TLS 1.3 at least. Each handshake:
//
//   - presents the certificate in cert with the key in key, read again when
//     either file has changed (size, modification time or inode), so a
//     re-issued certificate reaches new connections without a restart;
//     connections already open keep theirs. While the pair on disk does not
//     load (a rotation half done: the new key beside the old certificate) the
//     last good pair is presented and the files are tried again next time.
//   - verifies the agent's certificate, not its host name (SPIFFE X.509-SVID
//     verification): it must chain to a root in bundle, read again when the
//     bundle file changes (a bundle that gains a second root during a root
//     rotation trusts both), be valid now and allowed for server
//     authentication; it must name exactly one spiffe:// ID, that ID must be
//     spiffe://<trust domain>/region/<region>/agent, and its trust domain must
//     be the one of the client's own certificate. A handshake that fails
//     this returns an error that says which rule was broken.
//
// TLSConfig reads the three files now and returns an *Error
// (ErrInvalidArgument) naming each that is missing, unreadable or wrong:
// Field "tls.cert" (not a PEM certificate, no single spiffe:// ID, not
// chaining to a root of the bundle for client authentication, expired),
// "tls.key" (not a PEM private key, or not the certificate's) or
// "tls.bundle" (no PEM certificate). The config is safe for concurrent use
// and may be shared by many clients.
func TLSConfig(cert, key, bundle string) (*tls.Config, error) {
	src, err := newTLSSource(tlsFiles{cert: cert, key: key, bundle: bundle})
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: src.clientCertificate,
		// The host name is not what identifies an agent: its SPIFFE ID is,
		// and VerifyConnection checks it (with the chain) on every
		// handshake, resumed ones included.
		InsecureSkipVerify: true,
		VerifyConnection:   src.verifyAgent,
	}, nil
}

// tlsFiles are the paths of an identity's certificate, key and trust bundle.
type tlsFiles struct {
	cert, key, bundle string
}

// fileStamp is what changes when a file is replaced or rewritten.
type fileStamp struct {
	info os.FileInfo
}

func stampOf(path string) (fileStamp, error) {
	info, err := os.Stat(path)
	return fileStamp{info}, err
}

func (s fileStamp) same(o fileStamp) bool {
	if s.info == nil || o.info == nil {
		return false
	}
	// os.SameFile compares device and inode: an atomic rename changes it
	// even when size and modification time happen to match.
	return os.SameFile(s.info, o.info) && s.info.Size() == o.info.Size() && s.info.ModTime().Equal(o.info.ModTime())
}

// keyPair is a loaded certificate and key, and the identity it names.
type keyPair struct {
	cert      tls.Certificate
	chain     []*x509.Certificate // cert's, parsed: the leaf first
	id        spiffeID
	certStamp fileStamp
	keyStamp  fileStamp
}

// bundleRoots is a loaded trust bundle.
type bundleRoots struct {
	pool  *x509.CertPool
	stamp fileStamp
}

// tlsSource holds the last good key pair and bundle, and loads the files
// again when they change.
type tlsSource struct {
	files tlsFiles

	mu     sync.Mutex
	pair   keyPair
	bundle bundleRoots
}

// newTLSSource loads the files and checks that they fit together, naming
// every field that is wrong.
func newTLSSource(files tlsFiles) (*tlsSource, error) {
	var violations []FieldViolation
	bad := func(field, rule string) { violations = append(violations, FieldViolation{Field: field, Rule: rule}) }

	bundle, bundleErr := loadBundle(files.bundle)
	if bundleErr != nil {
		bad(fieldTLSBundle, bundleErr.Error())
	}
	pair, field, pairErr := loadKeyPair(files.cert, files.key)
	if pairErr != nil {
		bad(field, pairErr.Error())
	}
	if pairErr == nil && bundleErr == nil {
		if err := verifyCerts(pair.chain, bundle.pool, x509.ExtKeyUsageClientAuth); err != nil {
			bad(fieldTLSCert, fmt.Sprintf("%s (%s) is not valid for client authentication under %s: %v", files.cert, pair.id, files.bundle, err))
		}
	}
	if len(violations) > 0 {
		return nil, invalidTLS(violations)
	}
	return &tlsSource{files: files, pair: pair, bundle: bundle}, nil
}

// invalidTLS is the *Error of a TLS setup that can't work.
func invalidTLS(violations []FieldViolation) *Error {
	parts := make([]string, len(violations))
	for i, v := range violations {
		parts[i] = v.Field + ": " + v.Rule
	}
	msg := strings.Join(parts, "; ")
	return &Error{
		Code:       CodeInvalidArgument,
		Message:    msg,
		Field:      violations[0].Field,
		Rule:       violations[0].Rule,
		Violations: violations,
		status:     status.New(codes.InvalidArgument, msg),
	}
}

// loadKeyPair reads a certificate and its key; on failure it says which
// field is at fault.
func loadKeyPair(certPath, keyPath string) (keyPair, string, error) {
	// Stamped before reading: a file replaced in between is read again
	// next time rather than never.
	certStamp, err := stampOf(certPath)
	if err != nil {
		return keyPair{}, fieldTLSCert, readError(err)
	}
	keyStamp, err := stampOf(keyPath)
	if err != nil {
		return keyPair{}, fieldTLSKey, readError(err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return keyPair{}, fieldTLSCert, readError(err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return keyPair{}, fieldTLSKey, readError(err)
	}
	certs, err := parseCertificates(certPEM)
	if err != nil {
		return keyPair{}, fieldTLSCert, fmt.Errorf("%s: %w", certPath, err)
	}
	id, err := identityOf(certs[0])
	if err != nil {
		return keyPair{}, fieldTLSCert, fmt.Errorf("%s: %w", certPath, err)
	}
	if block, _ := pem.Decode(keyPEM); block == nil || !strings.HasSuffix(block.Type, "PRIVATE KEY") {
		return keyPair{}, fieldTLSKey, fmt.Errorf("%s: holds no PEM private key", keyPath)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return keyPair{}, fieldTLSKey, fmt.Errorf("%s is not the key of the certificate in %s: %v", keyPath, certPath, err)
	}
	pair.Leaf = certs[0]
	return keyPair{cert: pair, chain: certs, id: id, certStamp: certStamp, keyStamp: keyStamp}, "", nil
}

// loadBundle reads a trust bundle: every certificate in it is a root.
func loadBundle(path string) (bundleRoots, error) {
	stamp, err := stampOf(path)
	if err != nil {
		return bundleRoots{}, readError(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return bundleRoots{}, readError(err)
	}
	certs, err := parseCertificates(raw)
	if err != nil {
		return bundleRoots{}, fmt.Errorf("%s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return bundleRoots{pool: pool, stamp: stamp}, nil
}

// readError is a file that can't be read, said plainly: "open /x/cert.pem:
// no such file or directory" names the file already.
func readError(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s does not exist", pe.Path)
		}
	}
	return err
}

// parseCertificates reads every CERTIFICATE block of a PEM file; it needs
// at least one, and every one must parse.
func parseCertificates(raw []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := raw; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d does not parse: %v", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return certs, nil
}

// verifyCerts checks that certs (the leaf, then any intermediates) chain to
// a root of pool, are valid now and allow usage.
func verifyCerts(certs []*x509.Certificate, pool *x509.CertPool, usage x509.ExtKeyUsage) error {
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: intermediates,
		CurrentTime:   time.Now(),
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	return err
}

// spiffeID is a parsed spiffe://<trust domain><path>.
type spiffeID struct {
	trustDomain string
	path        string
}

func (id spiffeID) String() string { return spiffeScheme + id.trustDomain + id.path }

// isAgent reports whether id is a region's agent: /region/<region>/agent.
func (id spiffeID) isAgent() bool {
	parts := strings.Split(id.path, "/")
	return len(parts) == 4 && parts[0] == "" && parts[1] == "region" && parts[3] == "agent" && nameRE.MatchString(parts[2])
}

// identityOf is the one SPIFFE ID among cert's URI SANs.
func identityOf(cert *x509.Certificate) (spiffeID, error) {
	var ids, all []string
	for _, u := range cert.URIs {
		s := u.String()
		all = append(all, s)
		if strings.HasPrefix(s, spiffeScheme) {
			ids = append(ids, s)
		}
	}
	if len(ids) != 1 {
		return spiffeID{}, fmt.Errorf("names %d spiffe:// IDs (URI SANs %v), want exactly one", len(ids), all)
	}
	return parseSPIFFE(ids[0])
}

// parseSPIFFE reads "spiffe://<trust domain>/<path>" by the agent's rules:
// no port, user, query, fragment or percent-encoding.
func parseSPIFFE(s string) (spiffeID, error) {
	rest := strings.TrimPrefix(s, spiffeScheme)
	td, path, ok := strings.Cut(rest, "/")
	if !ok || path == "" || strings.ContainsAny(rest, "?#%@:") {
		return spiffeID{}, fmt.Errorf("names %q, which is not spiffe://<trust domain>/<path> without port, user, query, fragment or percent-encoding", s)
	}
	if !trustDomainRE.MatchString(td) {
		return spiffeID{}, fmt.Errorf("names %q, whose trust domain is not 1-255 characters of a-z, 0-9, '.', '-' and '_'", s)
	}
	return spiffeID{trustDomain: td, path: "/" + path}, nil
}

// current is the key pair and bundle to use now: the files as they are on
// disk if they changed and load, the last good ones otherwise.
func (s *tlsSource) current() (keyPair, bundleRoots) {
	s.mu.Lock()
	defer s.mu.Unlock()
	certStamp, certErr := stampOf(s.files.cert)
	keyStamp, keyErr := stampOf(s.files.key)
	if certErr == nil && keyErr == nil && (!certStamp.same(s.pair.certStamp) || !keyStamp.same(s.pair.keyStamp)) {
		// A pair that does not load (the key renamed into place, the
		// certificate not yet) keeps the last good one; the stamps are left
		// alone so the next handshake tries again.
		if pair, _, err := loadKeyPair(s.files.cert, s.files.key); err == nil {
			s.pair = pair
		}
	}
	if stamp, err := stampOf(s.files.bundle); err == nil && !stamp.same(s.bundle.stamp) {
		if b, err := loadBundle(s.files.bundle); err == nil {
			s.bundle = b
		}
	}
	return s.pair, s.bundle
}

// clientCertificate is tls.Config.GetClientCertificate: the current pair.
func (s *tlsSource) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	pair, _ := s.current()
	return &pair.cert, nil
}

// verifyAgent is tls.Config.VerifyConnection: the peer must be an agent of
// the client's trust domain, with a chain to the current bundle.
func (s *tlsSource) verifyAgent(cs tls.ConnectionState) error {
	pair, bundle := s.current()
	if len(cs.PeerCertificates) == 0 {
		return errors.New("meridian: the agent sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	want := spiffeScheme + pair.id.trustDomain + "/region/<region>/agent"
	id, idErr := identityOf(leaf)
	if err := verifyCerts(cs.PeerCertificates, bundle.pool, x509.ExtKeyUsageServerAuth); err != nil {
		name := fmt.Sprintf("(subject %q)", leaf.Subject.String())
		if idErr == nil {
			name = id.String()
		}
		return fmt.Errorf("meridian: agent certificate %s does not verify with the bundle %s: %v", name, s.files.bundle, err)
	}
	if idErr != nil {
		return fmt.Errorf("meridian: agent certificate %v; want %s", idErr, want)
	}
	if !id.isAgent() {
		return fmt.Errorf("meridian: agent certificate names %s, want %s", id, want)
	}
	if id.trustDomain != pair.id.trustDomain {
		return fmt.Errorf("meridian: agent certificate names %s, in trust domain %s; want trust domain %s, the client's (%s)",
			id, id.trustDomain, pair.id.trustDomain, pair.id)
	}
	return nil
}
