// Command loadgen is the State API benchmark's native closed-loop load generator.
//
// It keeps -concurrency callers busy, each issuing its next call as soon as the
// previous one returns, against one agent over gRPC (Get or Put) or HTTP/JSON
// (POST /v1/state/get). Being native, it leaves more of a small machine to the
// agent than a Python client would, and it reports its own CPU time.
//
// Protocol with the benchmark (python -m bench.state): once connected and one call
// has succeeded it prints "ready". It then reads commands on stdin: "start" opens
// the measuring window, "stop" closes it; calls are counted only when they finish
// inside the window, in 1 s slices. After "stop" it prints one JSON object with
// the counts, latencies, errors and the CPU seconds it used inside the window.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
	pb "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

type result struct {
	Counts      map[int]int `json:"counts"`
	LatenciesS  []float64   `json:"latencies"`
	Errors      []string    `json:"errors"`
	NErrors     int         `json:"n_errors"`
	CPUS        float64     `json:"cpu_s"`
	WallS       float64     `json:"wall_s"`
	Connections int         `json:"connections"`
}

type caller struct {
	counts    map[int]int
	latencies []float64
	errors    []string
	nErrors   int
}

// window: 0 = not open, >0 = open since that UnixNano, and closed after stop.
type window struct {
	start atomic.Int64
	stop  atomic.Int64
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	mode := flag.String("mode", "grpc-get", "grpc-get, grpc-get-many, grpc-put, grpc-put-many, grpc-publish, grpc-publish-batch, grpc-publish-stream or http-get")
	target := flag.String("target", "", "host:port of the agent's gRPC or HTTP port")
	keyspace := flag.String("keyspace", "bench", "keyspace")
	key := flag.String("key", "read-key", "key read (gets), or prefix of keys written (puts) "+
		"and of event ids (publishes)")
	value := flag.String("value", "", "value written by puts, payload of publishes")
	topic := flag.String("topic", "bench.load", "topic of publishes")
	concurrency := flag.Int("concurrency", 32, "callers")
	conns := flag.Int("connections", 2, "gRPC connections shared round-robin by the callers (HTTP: one per caller)")
	batch := flag.Int("batch", 64, "events per PublishBatch call, keys per GetMany or PutMany call")
	tlsDir := flag.String("tls-dir", "", "cert.pem, key.pem and bundle.pem: gRPC modes call an mTLS agent as this identity")
	flag.Parse()
	if *tlsDir != "" {
		cfg, err := meridian.TLSConfigDir(*tlsDir)
		if err != nil {
			fail(err)
		}
		transport = credentials.NewTLS(cfg)
	}

	var op func(ctx context.Context, c, i int) (int, error)
	var closers []io.Closer
	var publishers []pb.EventServiceClient // grpc-publish-stream: one stream per connection
	switch *mode {
	case "grpc-get", "grpc-put":
		stubs := dial(*target, *conns, &closers, pb.NewStateServiceClient)
		if *mode == "grpc-get" {
			req := &pb.GetRequest{Keyspace: *keyspace, Key: *key,
				Consistency: &pb.Consistency{Level: pb.Consistency_LEVEL_EVENTUAL}}
			op = func(ctx context.Context, c, _ int) (int, error) {
				resp, err := stubs[c%len(stubs)].Get(ctx, req)
				if err == nil && resp.GetServed() != pb.Consistency_LEVEL_EVENTUAL {
					err = fmt.Errorf("the agent served %v, not EVENTUAL", resp.GetServed())
				}
				return 1, err
			}
		} else {
			val := []byte(*value)
			op = func(ctx context.Context, c, i int) (int, error) {
				_, err := stubs[c%len(stubs)].Put(ctx, &pb.PutRequest{
					Keyspace: *keyspace, Key: fmt.Sprintf("%s-%d-%d", *key, c, i), Value: val})
				return 1, err
			}
		}
	case "grpc-get-many", "grpc-put-many":
		// StateService GetMany (EVENTUAL, -batch distinct keys <key>-0, -1, ...) or
		// PutMany (-batch new keys per call); a call counts as -batch reads or writes.
		stubs := dial(*target, *conns, &closers, pb.NewStateServiceClient)
		if *mode == "grpc-get-many" {
			keys := make([]string, *batch)
			for j := range keys {
				keys[j] = fmt.Sprintf("%s-%d", *key, j)
			}
			req := &pb.GetManyRequest{Keyspace: *keyspace, Keys: keys,
				Consistency: &pb.Consistency{Level: pb.Consistency_LEVEL_EVENTUAL}}
			op = func(ctx context.Context, c, _ int) (int, error) {
				resp, err := stubs[c%len(stubs)].GetMany(ctx, req)
				if err != nil {
					return *batch, err
				}
				if len(resp.GetResults()) != *batch {
					return *batch, fmt.Errorf("%d results for %d keys", len(resp.GetResults()), *batch)
				}
				for j, r := range resp.GetResults() {
					if r.GetError() != nil {
						return *batch, fmt.Errorf("key %s: %s", keys[j], r.GetError().GetMessage())
					}
					if r.GetResponse().GetServed() != pb.Consistency_LEVEL_EVENTUAL {
						return *batch, fmt.Errorf("the agent served %v, not EVENTUAL", r.GetResponse().GetServed())
					}
				}
				return *batch, nil
			}
		} else {
			val := []byte(*value)
			op = func(ctx context.Context, c, i int) (int, error) {
				req := &pb.PutManyRequest{Puts: make([]*pb.PutRequest, *batch)}
				for j := range req.Puts {
					req.Puts[j] = &pb.PutRequest{Keyspace: *keyspace,
						Key: fmt.Sprintf("%s-%d-%d-%d", *key, c, i, j), Value: val}
				}
				resp, err := stubs[c%len(stubs)].PutMany(ctx, req)
				if err != nil {
					return *batch, err
				}
				for _, r := range resp.GetResults() {
					if r.GetError() != nil {
						return *batch, fmt.Errorf("%s: %s", r.GetError().GetCode(), r.GetError().GetMessage())
					}
				}
				return *batch, nil
			}
		}
	case "http-get":
		// HTTP/1.1 keep-alive, one connection per caller, the request bytes made once:
		// net/http's client cost several times the CPU per call of this.
		body, _ := json.Marshal(map[string]any{"keyspace": *keyspace, "key": *key,
			"consistency": map[string]string{"level": "LEVEL_EVENTUAL"}})
		request := []byte(fmt.Sprintf("POST /v1/state/get HTTP/1.1\r\nHost: %s\r\n"+
			"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", *target, len(body), body))
		want := []byte(`"served": "LEVEL_EVENTUAL"`)
		hc := make([]*httpConn, *concurrency) // hc[c] is caller c's own
		closers = append(closers, closeAll(hc))
		op = func(ctx context.Context, c, _ int) (int, error) {
			if hc[c] == nil {
				conn, err := net.DialTimeout("tcp", *target, 10*time.Second)
				if err != nil {
					return 1, err
				}
				hc[c] = &httpConn{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
			}
			status, got, err := hc[c].roundTrip(request)
			if err != nil {
				hc[c].conn.Close()
				hc[c] = nil
				return 1, err
			}
			if status != 200 {
				return 1, fmt.Errorf("HTTP %d: %.200s", status, got)
			}
			if !bytes.Contains(got, want) {
				return 1, fmt.Errorf("not served EVENTUAL: %.200s", got)
			}
			return 1, nil
		}
	case "grpc-publish":
		// Unary EventService.Publish; each caller publishes under an event key of its
		// own (order is kept per key), every event id distinct.
		stubs := dial(*target, *conns, &closers, pb.NewEventServiceClient)
		payload := []byte(*value)
		op = func(ctx context.Context, c, i int) (int, error) {
			resp, err := stubs[c%len(stubs)].Publish(ctx, &pb.PublishRequest{
				Topic: *topic, Key: fmt.Sprintf("%s-%d", *key, c), Payload: payload,
				EventId: fmt.Sprintf("%s-%d-%d", *key, c, i)})
			if err == nil && resp.GetDuplicate() {
				err = fmt.Errorf("event %s-%d-%d stored as a duplicate", *key, c, i)
			}
			return 1, err
		}
	case "grpc-publish-batch":
		// EventService.PublishBatch: each caller sends -batch events per call under
		// an event key of its own; a call counts as -batch publishes.
		stubs := dial(*target, *conns, &closers, pb.NewEventServiceClient)
		payload := []byte(*value)
		op = func(ctx context.Context, c, i int) (int, error) {
			req := &pb.PublishBatchRequest{Events: make([]*pb.PublishRequest, *batch)}
			for j := range req.Events {
				req.Events[j] = &pb.PublishRequest{Topic: *topic, Key: fmt.Sprintf("%s-%d", *key, c),
					Payload: payload, EventId: fmt.Sprintf("%s-%d-%d-%d", *key, c, i, j)}
			}
			resp, err := stubs[c%len(stubs)].PublishBatch(ctx, req)
			if err != nil {
				return *batch, err
			}
			if len(resp.GetResults()) != *batch {
				return *batch, fmt.Errorf("%d results for %d events", len(resp.GetResults()), *batch)
			}
			for j, r := range resp.GetResults() {
				if r.GetDuplicate() {
					return *batch, fmt.Errorf("event %s-%d-%d-%d stored as a duplicate", *key, c, i, j)
				}
			}
			return *batch, nil
		}
	case "grpc-publish-stream":
		publishers = dial(*target, *conns, &closers, pb.NewEventServiceClient)
	default:
		fail(fmt.Errorf("unknown -mode %q", *mode))
	}

	var w window
	var done atomic.Bool
	var callers []*caller
	var wg sync.WaitGroup
	if publishers != nil {
		callers = startStreams(publishers, *topic, *key, []byte(*value), *concurrency, &w, &done, &wg)
	} else {
		callers = startCallers(op, *concurrency, &w, &done, &wg)
	}
	fmt.Println("ready")

	in := bufio.NewScanner(os.Stdin)
	var cpu0, cpu1 float64
	var t0, t1 time.Time
	for in.Scan() {
		switch in.Text() {
		case "start":
			cpu0, t0 = cpuSeconds(), time.Now()
			w.start.Store(t0.UnixNano())
		case "stop":
			t1 = time.Now()
			w.stop.Store(t1.UnixNano())
			cpu1 = cpuSeconds()
		}
		if w.stop.Load() != 0 {
			break
		}
	}
	done.Store(true)
	wg.Wait()
	for _, c := range closers {
		c.Close()
	}
	out := result{Counts: map[int]int{}, Errors: []string{}, LatenciesS: []float64{},
		CPUS: cpu1 - cpu0, WallS: t1.Sub(t0).Seconds(), Connections: *conns}
	for _, cl := range callers {
		for k, v := range cl.counts {
			out.Counts[k] += v
		}
		out.LatenciesS = append(out.LatenciesS, cl.latencies...)
		out.NErrors += cl.nErrors
		if len(out.Errors) == 0 && len(cl.errors) > 0 {
			out.Errors = cl.errors[:1]
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

// startCallers starts the closed loop: concurrency callers, each issuing its next
// call as soon as the previous one returns. One call must succeed first.
func startCallers(op func(ctx context.Context, c, i int) (int, error), concurrency int,
	w *window, done *atomic.Bool, wg *sync.WaitGroup) []*caller {
	ctx := context.Background()
	call := func(c, i int) (int, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return op(cctx, c, i)
	}
	if _, err := call(0, -1); err != nil {
		fail(fmt.Errorf("first call: %w", err))
	}
	callers := make([]*caller, concurrency)
	for c := range callers {
		cl := &caller{counts: map[int]int{}}
		callers[c] = cl
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; !done.Load(); i++ {
				t0 := time.Now().UnixNano()
				n, err := call(c, i)
				t1 := time.Now().UnixNano()
				start, stop := w.start.Load(), w.stop.Load()
				if start == 0 || t0 < start || (stop != 0 && t1 >= stop) {
					if err != nil {
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				if err != nil {
					cl.nErrors++
					if len(cl.errors) == 0 {
						cl.errors = append(cl.errors, err.Error())
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				cl.counts[int((t1-start)/int64(time.Second))] += n
				cl.latencies = append(cl.latencies, float64(t1-t0)/1e9)
			}
		}(c)
	}
	return callers
}

// startStreams keeps concurrency publishes in flight on one PublishStream per
// connection (concurrency/len(stubs) each): a sender writes requests while the
// window has room, a receiver reads the responses (in request order) and times
// each from its send. Every stream's first publish must succeed first.
func startStreams(stubs []pb.EventServiceClient, topic, prefix string, payload []byte,
	concurrency int, w *window, done *atomic.Bool, wg *sync.WaitGroup) []*caller {
	callers := make([]*caller, len(stubs))
	per := max(1, concurrency/len(stubs))
	for s, stub := range stubs {
		cl := &caller{counts: map[int]int{}}
		callers[s] = cl
		stream, err := stub.PublishStream(context.Background())
		if err != nil {
			fail(err)
		}
		req := func(i int) *pb.PublishRequest {
			return &pb.PublishRequest{Topic: topic, Key: fmt.Sprintf("%s-%d", prefix, s),
				Payload: payload, EventId: fmt.Sprintf("%s-%d-%d", prefix, s, i)}
		}
		if err := stream.Send(req(-1)); err != nil {
			fail(fmt.Errorf("first publish: %w", err))
		}
		if resp, err := stream.Recv(); err != nil || resp.GetDuplicate() {
			fail(fmt.Errorf("first publish: %v (duplicate %v)", err, resp.GetDuplicate()))
		}
		slots := make(chan struct{}, per)
		sent := make(chan int64, per) // send times, in request order
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			defer stream.CloseSend()
			for i := 0; !done.Load(); i++ {
				slots <- struct{}{}
				sent <- time.Now().UnixNano()
				if err := stream.Send(req(i)); err != nil {
					return // the receiver sees the stream's error
				}
			}
		}()
		go func() { // receiver
			defer wg.Done()
			for {
				resp, err := stream.Recv()
				if err == io.EOF {
					return
				}
				t1 := time.Now().UnixNano()
				if err != nil {
					cl.nErrors++
					cl.errors = append(cl.errors, err.Error())
					for !done.Load() { // unblock the sender; its next Send fails and it ends
						select {
						case <-slots:
						case <-sent:
						case <-time.After(10 * time.Millisecond):
						}
					}
					return
				}
				t0 := <-sent
				<-slots
				start, stop := w.start.Load(), w.stop.Load()
				if start == 0 || t0 < start || (stop != 0 && t1 >= stop) {
					continue
				}
				if resp.GetDuplicate() {
					cl.nErrors++
					if len(cl.errors) == 0 {
						cl.errors = append(cl.errors, "an event stored as a duplicate")
					}
					continue
				}
				cl.counts[int((t1-start)/int64(time.Second))]++
				cl.latencies = append(cl.latencies, float64(t1-t0)/1e9)
			}
		}()
	}
	return callers
}

// dial opens n gRPC connections to target, each closed at the end (closers),
// and makes a stub on each.
// transport is plaintext unless -tls-dir names an identity (mutual TLS).
var transport = insecure.NewCredentials()

func dial[T any](target string, n int, closers *[]io.Closer, stub func(grpc.ClientConnInterface) T) []T {
	out := make([]T, n)
	for i := range out {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(transport))
		if err != nil {
			fail(err)
		}
		*closers = append(*closers, cc)
		out[i] = stub(cc)
	}
	return out
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}

type httpConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// roundTrip writes one request and reads one response with a Content-Length body.
func (h *httpConn) roundTrip(request []byte) (int, []byte, error) {
	if err := h.conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return 0, nil, err
	}
	if _, err := h.conn.Write(request); err != nil {
		return 0, nil, err
	}
	line, err := h.r.ReadSlice('\n')
	if err != nil {
		return 0, nil, err
	}
	var status int
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, err
	}
	length := -1
	for {
		line, err = h.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(k), "Content-Length") {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
				return 0, nil, err
			}
		}
	}
	if length < 0 {
		return 0, nil, fmt.Errorf("HTTP %d without Content-Length", status)
	}
	body := make([]byte, length)
	if _, err = io.ReadFull(h.r, body); err != nil {
		return 0, nil, err
	}
	return status, body, nil
}

type closeAll []*httpConn

func (cs closeAll) Close() error {
	for _, c := range cs {
		if c != nil {
			c.conn.Close()
		}
	}
	return nil
}
