//! How tests reach the sandbox's agents: plaintext, or mutual TLS when
//! `MERIDIAN_TEST_TLS_DIR` names an identity folder (a service's `cert.pem`,
//! `key.pem` and `bundle.pem`, as `meridian ca issue` writes them).
//!
//! The one helper for `tests/agent` and `examples/inventory/agent_tests.rs`,
//! which both include this file with `#[path]`: every connection they make
//! goes through [`connect`]. It is not a test target of its own (no
//! `main.rs` beside it).

use std::path::PathBuf;

use meridian::{Client, TlsFiles};

/// The identity folder to connect with (`MERIDIAN_TEST_TLS_DIR`), or `None`
/// for plaintext.
pub fn tls_dir() -> Option<PathBuf> {
    std::env::var_os("MERIDIAN_TEST_TLS_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// A client of the agent at `addr` (`host:port`), with mutual TLS when
/// [`tls_dir`] names a folder. Panics, saying why, if it can't connect.
pub async fn connect(addr: &str) -> Client {
    let mut builder = Client::builder(addr);
    let tls = tls_dir();
    if let Some(dir) = &tls {
        builder = builder.tls(TlsFiles::in_dir(dir));
    }
    builder.connect().await.unwrap_or_else(|e| {
        let how = tls.map_or_else(
            || "in plaintext".to_owned(),
            |dir| format!("with the identity in {}", dir.display()),
        );
        // Debug: a transport error's cause is in its sources.
        panic!("cannot connect to the agent at {addr} {how}: {e:?}")
    })
}
