//! Mutual TLS to the agent, with SPIFFE identities read from files.
//!
//! An agent that serves mutual TLS wants a client certificate that chains to
//! its trust bundle, and proves its own identity with a certificate of the
//! same trust domain. `meridian ca issue` writes both halves, one folder per
//! identity: `cert.pem` (the leaf; its identity is one `spiffe://` URI SAN,
//! e.g. `spiffe://<td>/service/orders`), `key.pem` (its PKCS#8 private key,
//! ECDSA P-256 or Ed25519) and `bundle.pem` (the trusted roots: one, or two
//! during a root rotation). [`TlsFiles`] names those three files and
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls) makes the client use them:
//!
//! ```no_run
//! use meridian::{Client, TlsFiles};
//!
//! # async fn demo() -> Result<(), meridian::Error> {
//! let client = Client::builder("127.0.0.1:14020")
//!     .tls(TlsFiles::in_dir(".meridian/ca/identities/service-orders"))
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! What a TLS client checks:
//!
//! - TLS 1.3 only, ALPN `h2`, rustls with the `ring` provider;
//! - the agent's certificate chains to a root in the bundle and is valid
//!   now, and names exactly one `spiffe://` ID, which is an agent's
//!   (`/region/<region>/agent`) in the trust domain of our own certificate.
//!   Its DNS and IP names are not looked at (SPIFFE X.509-SVID
//!   verification): the address dialled may be anything that reaches it;
//! - our certificate is presented to the agent, which checks it against its
//!   own bundle.
//!
//! The files are read again for every new connection (the first one, and
//! each reconnection tonic makes after a connection drops) if their size,
//! modification time or inode changed, so certificates re-issued in place
//! and a second root added to the bundle are used without a restart; open
//! connections keep the identity they shook hands with. If the files fail
//! to load at that point (a rotation caught half-way, where the CA has
//! renamed in a new key but not its certificate yet), the last good set is
//! used and the files are tried again on the next connection.

mod connect;
mod load;
mod spiffe;
mod verify;

use std::path::{Path, PathBuf};

pub(crate) use connect::Connector;

/// The certificate, private key and trust bundle of this client's identity,
/// as PEM files; see the [module docs](crate::tls).
///
/// Constructing one reads nothing: the files are read and checked when the
/// client connects (and again for later connections, when they change).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// The client's certificate, leaf first (any intermediates after it).
    /// It names the client's SPIFFE ID, whose trust domain the agent's
    /// must share.
    pub cert: PathBuf,
    /// The private key of `cert`: PKCS#8 (what `meridian ca` writes), SEC1
    /// or PKCS#1 PEM; ECDSA P-256 or P-384, Ed25519 or RSA.
    pub key: PathBuf,
    /// The trusted roots, concatenated PEM certificates.
    pub bundle: PathBuf,
}

impl TlsFiles {
    /// The three files at these paths.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
        }
    }

    /// `cert.pem`, `key.pem` and `bundle.pem` in `dir`: the folder `meridian
    /// ca issue` writes for an identity (`<ca-dir>/identities/<slug>/`).
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        TlsFiles::new(
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("bundle.pem"),
        )
    }
}
