//! Certificates as `meridian ca` makes them, made with rcgen, and identity
//! folders written as it writes them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

// -- certificates -------------------------------------------------------------

/// A root, as `meridian ca init` or `rotate` makes one.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
    alg: &'static SignatureAlgorithm,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    pub fn new(common_name: &str) -> Self {
        Ca::with_algorithm(common_name, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    pub fn with_algorithm(common_name: &str, alg: &'static SignatureAlgorithm) -> Self {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            alg,
        }
    }

    /// A leaf naming `uri`, valid from 1975 to 4096.
    pub fn leaf(&self, uri: &str) -> Leaf {
        self.leaf_with(uri, |_| {})
    }

    pub fn leaf_with(&self, uri: &str, change: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate_for(self.alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(uri.rsplit('/').next().unwrap_or("leaf"));
        params.subject_alt_names = vec![
            SanType::URI(uri.try_into().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        change(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Leaf {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }
}

pub fn bundle(roots: &[&Ca]) -> String {
    roots.iter().map(|ca| ca.pem.as_str()).collect()
}

// -- identity folders ---------------------------------------------------------

/// A fresh empty folder under the target directory's tmp, removed on drop.
pub struct Folder(PathBuf);

impl Folder {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tls-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Folder(dir)
    }
}

impl std::ops::Deref for Folder {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Folder {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `data` at `path` by rename, as the CA writes.
pub fn write(path: &Path, data: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Issues `leaf` into `dir` the way `meridian ca issue` does.
pub fn issue(dir: &Path, leaf: &Leaf, roots: &[&Ca]) {
    write(&dir.join("key.pem"), &leaf.key_pem);
    write(&dir.join("cert.pem"), &leaf.cert_pem);
    write(&dir.join("bundle.pem"), &bundle(roots));
}

pub fn identity(name: &str, leaf: &Leaf, roots: &[&Ca]) -> Folder {
    let dir = Folder::new(name);
    issue(&dir, leaf, roots);
    dir
}
