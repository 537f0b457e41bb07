//! The connector tonic calls for each new connection: TCP, then a TLS
//! handshake with the configuration the files give at that moment.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::CertificateError;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use super::TlsFiles;
use super::load::Reloading;
use crate::error::Error;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Dials the agent over TCP and shakes hands with mutual TLS; see
/// [`crate::tls`]. tonic calls it for the channel's first connection and
/// each reconnection, so each one presents the certificate on disk then.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    tls: Arc<Reloading>,
}

impl Connector {
    /// Reads the files now.
    ///
    /// # Errors
    /// As [`Reloading::new`]: invalid argument naming the file.
    pub(crate) fn new(files: TlsFiles) -> Result<Self, Error> {
        let mut tcp = HttpConnector::new();
        // What tonic's own connector does: no Nagle delay for small gRPC frames.
        tcp.set_nodelay(true);
        Ok(Connector {
            tcp,
            tls: Arc::new(Reloading::new(files)?),
        })
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = Arc::clone(&self.tls);
        let target = uri
            .authority()
            .map_or_else(|| uri.to_string(), ToString::to_string);
        let host = uri.host().unwrap_or_default();
        // An IPv6 literal comes bracketed; SNI is sent for DNS names only.
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map(|n| n.to_owned());
        let tcp = self.tcp.call(uri);
        Box::pin(async move {
            let name = name.map_err(|e| format!("{target}: not a host name or address: {e}"))?;
            // stat(2) of three files, and reading them when they changed.
            let config = tokio::task::spawn_blocking(move || tls.config()).await?;
            let stream = tcp.await?.into_inner();
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|source| HandshakeFailed { target, source })?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The TLS handshake with the agent failed: the agent's certificate was
/// refused (the source says why), or the agent refused ours.
#[derive(Debug)]
struct HandshakeFailed {
    target: String,
    source: io::Error,
}

impl fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause is spelled out too: tonic's own message says only
        // "transport error", and many callers print just the top. rustls
        // shows a refusal of ours by its Debug form: unwrap it.
        write!(f, "TLS handshake with {} failed: ", self.target)?;
        match self.source.get_ref().and_then(|e| e.downcast_ref()) {
            Some(rustls::Error::InvalidCertificate(CertificateError::Other(why))) => {
                write!(f, "{}", why.0)
            }
            _ => write!(f, "{}", self.source),
        }
    }
}

impl StdError for HandshakeFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}
