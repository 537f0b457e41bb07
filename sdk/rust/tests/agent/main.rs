//! The SDK against a real three-region sandbox.
//!
//! `scripts/test-sdks rust` starts one and exports where its agents listen:
//! `MERIDIAN_TEST_GRPC` (the us-east agent, `host:port`) and
//! `MERIDIAN_TEST_REGIONS` (`us-east=host:port,eu-west=...,ap-south=...`).
//! Without them these tests fail; they never skip. If the agents serve
//! mutual TLS, `MERIDIAN_TEST_TLS_DIR` names a service identity's folder
//! (`cert.pem`, `key.pem`, `bundle.pem`) and every connection uses it;
//! unset, they connect in plaintext.
//!
//! The sandbox must declare the keyspaces of tests/e2e: `accounts` (global),
//! `carts` (replicated, lww), `stock` (replicated, counter) and `tags`
//! (replicated, set). The event tests use topics, groups and event ids of
//! their own (event ids are the dedup identity across topics); the flag
//! tests use flag keys of their own.
//!
//! One test binary with a module per API, so that `cargo test` runs all of
//! them in one process, side by side: a binary each would run one after the
//! other, and most of these tests wait on the network, not the CPU.

mod client;
mod common;
mod events;
mod flags;
mod idempotency;
mod registry;
mod state;
mod subscriptions;
