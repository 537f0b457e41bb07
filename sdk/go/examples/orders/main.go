// Command orders is the example orders service: it places orders exactly
// once per Idempotency-Key (reserving stock with the inventory service
// through the local Meridian agent), keeps them in a global keyspace,
// publishes OrderPlaced and OrderCancelled events, and builds a per-region
// read model from those events. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

type config struct {
	agent     string // the local agent's gRPC address
	tlsDir    string // the identity to dial the agent with (mutual TLS); "" for plaintext
	listen    string // where to serve HTTP
	advertise string // host:port the agent reaches us at ("" for listen's)
	region    string // must be the agent's region ("" takes the agent's)
	version   string
	ttl       time.Duration // registration lease
	grace     time.Duration // shutdown budget
	keyspace  string

	failPercent int // the build's share of orders to fail on purpose (build.go)
}

// parseConfig reads flags, with defaults from the environment.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	cfg := config{keyspace: keyspaceOrders}
	fs := flag.NewFlagSet("orders", flag.ContinueOnError)
	fs.StringVar(&cfg.agent, "agent", env("MERIDIAN_AGENT", "127.0.0.1:14020"), "gRPC address of the local Meridian agent (env MERIDIAN_AGENT)")
	fs.StringVar(&cfg.tlsDir, "tls-dir", env("MERIDIAN_TLS_DIR", ""), "folder with this service's cert.pem, key.pem and bundle.pem (meridian ca issue service/orders), to dial the agent with mutual TLS; default: plaintext (env MERIDIAN_TLS_DIR)")
	fs.StringVar(&cfg.listen, "listen", env("ORDERS_LISTEN", "127.0.0.1:8080"), "HTTP listen address (env ORDERS_LISTEN)")
	fs.StringVar(&cfg.advertise, "advertise", env("ORDERS_ADVERTISE", ""), "host:port the agent reaches this instance at; default: the listen address, 127.0.0.1 for a wildcard host (env ORDERS_ADVERTISE)")
	fs.StringVar(&cfg.region, "region", env("MERIDIAN_REGION", ""), "the region this instance runs in; must match the agent's (env MERIDIAN_REGION; default: the agent's)")
	fs.StringVar(&cfg.version, "version", env("ORDERS_VERSION", version), "version to register (env ORDERS_VERSION; default: the build's, main.version)")
	fs.DurationVar(&cfg.ttl, "ttl", 10*time.Second, "registration lease; renewed every third of it")
	fs.DurationVar(&cfg.grace, "grace", 10*time.Second, "how long shutdown may take")
	fs.Usage = func() {
		// Says what the binary was built as (build.go), whatever the environment.
		build := "orders, build " + version
		if failPercent != "0" {
			build += ", failing " + failPercent + "% of new orders on purpose"
		}
		fmt.Fprintf(fs.Output(), "%s\n\nFlags:\n", build)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	n, err := parseFailPercent(failPercent)
	if err != nil {
		return cfg, err
	}
	cfg.failPercent = n
	return cfg, nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		log.Error("bad configuration", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	if err := serve(ctx, cfg, lis, log); err != nil {
		log.Error("orders stopped", "err", err)
		os.Exit(1)
	}
}

// serve runs the service on lis until ctx is done, then shuts down in
// order: deregister (so the agent stops sending calls here), let requests
// in flight finish, stop the read model's subscription (its acks are
// flushed), close the agent connection.
func serve(ctx context.Context, cfg config, lis net.Listener, log *slog.Logger) error {
	defer lis.Close()
	var dialOpts []meridian.Option
	if cfg.tlsDir != "" {
		// The files are read again when they change: a renewed certificate
		// reaches the next connection without a restart.
		dialOpts = append(dialOpts, meridian.WithTLSDir(cfg.tlsDir))
	}
	client, err := meridian.Dial(ctx, cfg.agent, dialOpts...)
	if err != nil {
		return fmt.Errorf("dial the agent at %s: %w", cfg.agent, err)
	}
	defer client.Close()
	region := client.Region()
	if cfg.region != "" && cfg.region != region {
		return fmt.Errorf("-region is %s but the agent at %s serves %s", cfg.region, cfg.agent, region)
	}
	log = log.With("region", region)

	model := newReadModel()
	svc := &service{client: client, region: region, keyspace: cfg.keyspace, log: log, version: cfg.version, failPercent: cfg.failPercent}
	if cfg.failPercent > 0 {
		log.Warn("a deliberately faulty build: failing a share of new orders", "version", cfg.version, "fail_percent", cfg.failPercent)
	}
	srv := &http.Server{Handler: newHandler(svc, model), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	subCtx, stopSub := context.WithCancel(context.Background())
	defer stopSub()
	subDone := make(chan error, 1)
	go func() { subDone <- model.run(subCtx, client.Events(), readModelGroup(region, cfg.version), log) }()

	// Register once the server answers, so the first health check passes.
	endpoint := advertised(cfg.advertise, lis.Addr())
	reg, err := client.Registry().Register(ctx, meridian.Instance{
		Service: "orders", Version: cfg.version, Endpoint: endpoint,
		Protocol: meridian.ProtocolHTTP, HealthPath: "/healthz",
		Metadata: map[string]string{"example": "go"},
	}, cfg.ttl, meridian.OnHeartbeatError(func(err error) { log.Warn("registration heartbeat failed", "err", err) }))
	if err != nil {
		_ = srv.Close()
		stopSub()
		<-subDone
		return fmt.Errorf("register with the agent: %w", err)
	}
	log.Info("orders serving", "listen", lis.Addr().String(), "endpoint", endpoint, "instance", reg.ID())

	// Run until told to stop, or until the server or the read model fails.
	var errs []error
	subRunning := true
	select {
	case <-ctx.Done():
	case err := <-served:
		errs = append(errs, fmt.Errorf("serve HTTP: %w", err))
	case err := <-subDone:
		subRunning = false
		errs = append(errs, err)
	}
	log.Info("orders shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.grace)
	defer cancel()
	if err := reg.Close(shutdownCtx); err != nil {
		errs = append(errs, fmt.Errorf("deregister: %w", err))
	}
	if err := srv.Shutdown(shutdownCtx); err != nil {
		errs = append(errs, fmt.Errorf("drain HTTP: %w", err))
	}
	stopSub()
	if subRunning {
		errs = append(errs, <-subDone)
	}
	return errors.Join(errs...)
}

// advertised is the endpoint to register: the flag, or the listener's
// address with a wildcard host replaced by loopback (the agent runs on the
// same host).
func advertised(flagValue string, addr net.Addr) string {
	if flagValue != "" {
		return flagValue
	}
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
