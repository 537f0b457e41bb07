//! Reading the three files into a rustls client configuration, and reading
//! them again when they change.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, InconsistentKeys, RootCertStore};

use super::TlsFiles;
use super::spiffe::{self, SpiffeId};
use super::verify::{AgentVerifier, certificate_problem};
use crate::error::Error;

/// What identifies one version of a file: a file replaced by rename has
/// another inode, one rewritten in place another length or mtime.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// The stamps of the certificate, key and bundle, in that order.
type Stamps = [Stamp; 3];

fn stamps(files: &TlsFiles) -> std::io::Result<Stamps> {
    let of = |path: &Path| std::fs::metadata(path).map(|m| Stamp::of(&m));
    Ok([of(&files.cert)?, of(&files.key)?, of(&files.bundle)?])
}

/// One consistent reading of the files.
struct Loaded {
    stamps: Stamps,
    config: Arc<ClientConfig>,
}

/// The client configuration for new connections, following the files: each
/// call to [`Reloading::config`] looks at them and rebuilds the configuration
/// if any changed. A set that does not load (a rotation caught half-way: a
/// new key beside the old certificate, a certificate from a root the bundle
/// does not hold yet) keeps the last good configuration, and is tried again
/// on the next connection.
pub(crate) struct Reloading {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Reloading {
    /// Loads the files now.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `tls.cert`, `tls.key` or
    /// `tls.bundle` and what is wrong with it.
    pub(crate) fn new(files: TlsFiles) -> Result<Self, Error> {
        // rustls 0.23.48 deprecates its ring provider because ring has no
        // post-quantum key exchange; the other one, aws-lc-rs, needs cmake and
        // nasm to build. Classical X25519/P-256 key exchange it is, for now.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(&files, &provider)?;
        Ok(Reloading {
            files,
            provider,
            current: Mutex::new(loaded),
        })
    }

    /// The configuration for a connection made now. Reads the files' metadata
    /// (and the files, if they changed): call it off the async threads.
    pub(crate) fn config(&self) -> Arc<ClientConfig> {
        // A panic elsewhere while holding the lock leaves a whole `Loaded`.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let unchanged = stamps(&self.files).is_ok_and(|now| now == current.stamps);
        if !unchanged && let Ok(loaded) = load(&self.files, &self.provider) {
            *current = loaded;
        }
        Arc::clone(&current.config)
    }
}

fn invalid(field: &str, rule: String) -> Error {
    Error::InvalidArgument {
        field: field.to_owned(),
        rule,
    }
}

/// The bytes of `path` and the stamp of exactly those bytes (taken from the
/// open file, so a rename in between can't pair one version's stamp with
/// another's content).
fn read(path: &Path, field: &str) -> Result<(Vec<u8>, Stamp), Error> {
    let cannot = |e: std::io::Error| invalid(field, format!("cannot read {}: {e}", path.display()));
    let mut file = File::open(path).map_err(cannot)?;
    let stamp = Stamp::of(&file.metadata().map_err(cannot)?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(cannot)?;
    Ok((bytes, stamp))
}

/// Every certificate in a PEM file, in order; at least one.
fn certificates(
    bytes: &[u8],
    path: &Path,
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            field,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// Reads and checks the three files and builds a configuration from them.
fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Loaded, Error> {
    let (cert_pem, cert_stamp) = read(&files.cert, "tls.cert")?;
    let (key_pem, key_stamp) = read(&files.key, "tls.key")?;
    let (bundle_pem, bundle_stamp) = read(&files.bundle, "tls.bundle")?;
    let (cert_path, key_path, bundle_path) = (
        files.cert.display(),
        files.key.display(),
        files.bundle.display(),
    );

    let chain = certificates(&cert_pem, &files.cert, "tls.cert")?;
    let identity: SpiffeId = spiffe::svid_id(&chain[0])
        .map_err(|why| invalid("tls.cert", format!("the certificate in {cert_path} {why}")))?;

    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            "tls.key",
            format!("{key_path} holds no PEM private key (PKCS#8, SEC1 or PKCS#1)"),
        ),
        e => invalid("tls.key", format!("{key_path} is not valid PEM: {e}")),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            invalid(
                "tls.key",
                format!(
                    "{key_path} is not a key this SDK can sign with \
                 (ECDSA P-256 or P-384, Ed25519, RSA): {e}"
                ),
            )
        })?;
    // `InconsistentKeys::Unknown` (a key that can't name its public half)
    // passes: the handshake will tell.
    if let Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) =
        CertifiedKey::new(chain.clone(), signing_key).keys_match()
    {
        return Err(invalid(
            "tls.key",
            format!("{key_path} is not the private key of tls.cert ({cert_path})"),
        ));
    }

    let mut roots = RootCertStore::empty();
    for (i, root) in certificates(&bundle_pem, &files.bundle, "tls.bundle")?
        .into_iter()
        .enumerate()
    {
        roots.add(root).map_err(|e| {
            invalid(
                "tls.bundle",
                format!(
                    "certificate {} in {bundle_path} is not a usable root: {e}",
                    i + 1
                ),
            )
        })?;
    }
    let roots = Arc::new(roots);

    // The agent checks our certificate against the same bundle: a pair that
    // does not chain (wrong folder, expired leaf) would only fail there, later,
    // with a bare alert.
    let own = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
        .build()
        .map_err(|e| {
            invalid(
                "tls.bundle",
                format!("{bundle_path} holds no usable root: {e}"),
            )
        })?;
    own.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| {
            let problem = match &e {
                rustls::Error::InvalidCertificate(c) => certificate_problem(c, &files.bundle),
                e => format!("is not valid: {e}"),
            };
            invalid(
                "tls.cert",
                format!("the certificate in {cert_path} {problem}"),
            )
        })?;

    let verifier = AgentVerifier::new(
        roots,
        files.bundle.clone(),
        identity.trust_domain().to_owned(),
        Arc::clone(provider),
    );
    let mut config = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid("tls", format!("TLS 1.3 with the ring provider: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid("tls.key", format!("{key_path}: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        stamps: [cert_stamp, key_stamp, bundle_stamp],
        config: Arc::new(config),
    })
}
