//! Checking the agent's certificate the SPIFFE way (X.509-SVID): it chains
//! to the trust bundle and names an agent of our trust domain. Its host names
//! are not looked at: the identity is the URI SAN, not the address dialled.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::spiffe;

/// What is wrong with a certificate that did not verify, as a phrase to
/// follow its name ("the agent's certificate does not chain to ...").
pub(crate) fn certificate_problem(error: &CertificateError, bundle: &Path) -> String {
    let bundle = bundle.display();
    match error {
        CertificateError::UnknownIssuer => format!("does not chain to a root in {bundle}"),
        CertificateError::BadSignature => {
            format!("has a signature that does not verify against the roots in {bundle}")
        }
        CertificateError::Expired => "has expired".into(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired {} s ago (not valid after {} UNIX)",
            time.as_secs().saturating_sub(not_after.as_secs()),
            not_after.as_secs()
        ),
        CertificateError::NotValidYet => "is not valid yet".into(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "is not valid for another {} s (not valid before {} UNIX)",
            not_before.as_secs().saturating_sub(time.as_secs()),
            not_before.as_secs()
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "may not be used for this connection (see its extended key usage)".into()
        }
        other => format!("is not valid: {other}"),
    }
}

/// Why the agent's certificate was refused; the handshake fails with it.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the agent's certificate {}", self.0)
    }
}

impl StdError for Refused {}

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(why)))))
}

/// Accepts a server certificate that chains to `roots` (the trust bundle,
/// as read when the connection started) and names exactly one SPIFFE ID,
/// `spiffe://<trust_domain>/region/<region>/agent`. The trust domain is the
/// one our own certificate names.
#[derive(Debug)]
pub(crate) struct AgentVerifier {
    roots: Arc<RootCertStore>,
    /// Where `roots` came from, for messages.
    bundle: PathBuf,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl AgentVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        bundle: PathBuf,
        trust_domain: String,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        AgentVerifier {
            roots,
            bundle,
            trust_domain,
            provider,
        }
    }
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain first: nothing a certificate says counts before that.
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(c) => refused(certificate_problem(&c, &self.bundle)),
            e => e,
        })?;
        let id = spiffe::svid_id(end_entity).map_err(refused)?;
        if id.trust_domain() != self.trust_domain {
            return Err(refused(format!(
                "names {id}, in trust domain {:?}, not {:?} (the trust domain of tls.cert)",
                id.trust_domain(),
                self.trust_domain
            )));
        }
        if id.agent_region().is_none() {
            return Err(refused(format!(
                "names {id}, which is not an agent (spiffe://{}/region/<region>/agent)",
                self.trust_domain
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
