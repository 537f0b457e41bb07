package main

import (
	"fmt"
	"hash/fnv"
	"strconv"
)

// Fixed when the binary is built, so that one binary is one version of the
// service:
//
//	go build -ldflags "-X main.version=v2 -X main.failPercent=30" ./examples/orders
//
// The demo builds a deliberately bad v2 this way and rolls it out canary
// first: its errors must make the rollout analysis fail and roll it back.
var (
	// version is the default of -version (and ORDERS_VERSION), the version
	// this instance registers with the agent.
	version = "1.0.0"
	// failPercent is the share of new orders, 0 to 100, that POST /orders
	// fails on purpose with a 500 before doing anything. Read once, by
	// parseConfig; a value that is not a whole number from 0 to 100 stops
	// the service at start-up.
	failPercent = "0"
)

// parseFailPercent reads the build's failPercent; the error names the build
// flag that set it.
func parseFailPercent(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 100 {
		return 0, fmt.Errorf("main.failPercent (go build -ldflags \"-X main.failPercent=N\"): %q must be a whole number from 0 to 100", s)
	}
	return n, nil
}

// failsOrder reports whether a build with failPercent percent fails the order
// id: when FNV-1a of the id, mod 100, is below percent.
//
// The choice hangs on the order id, which is derived from the
// Idempotency-Key, rather than on a random draw: every retry of one order
// gets the same answer from every instance of the faulty build, so its
// failures are reproducible and a client can't get an order through it by
// retrying until the dice land well. Over many orders the ids are uniform,
// so close to percent of them fail: the error rate the rollout analysis
// should see.
func failsOrder(id string, percent int) bool {
	if percent <= 0 {
		return false
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32()%100) < percent
}
