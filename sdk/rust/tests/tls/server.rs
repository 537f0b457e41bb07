//! A gRPC server with mutual TLS standing in for an agent: tonic behind a
//! rustls acceptor that requires a client certificate from its bundle.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use meridian::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::server::Connected;

use crate::GUARD;
use crate::certs::{Ca, Leaf};

// -- the server -------------------------------------------------------------

/// The SPIFFE ID of the client certificate a connection shook hands with.
#[derive(Clone, Debug)]
struct Caller(String);

/// A connection after the handshake, carrying its caller for the handler.
struct Accepted {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    caller: Caller,
}

impl Connected for Accepted {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `HealthService/Check`, answering who called; every other method is
/// unimplemented.
#[derive(Clone)]
struct Health;

struct Check(Caller);

impl tonic::server::UnaryService<HealthCheckRequest> for Check {
    type Response = HealthCheckResponse;
    type Future = Ready<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<HealthCheckRequest>) -> Self::Future {
        ready(Ok(tonic::Response::new(HealthCheckResponse {
            status: health_check_response::ServingStatus::Serving as i32,
            region: "us-east".into(),
            reasons: vec![format!("caller {}", self.0.0)],
        })))
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Health {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let caller = req.extensions().get::<Caller>().cloned();
        Box::pin(async move {
            match caller {
                Some(caller) if req.uri().path() == "/meridian.v1.HealthService/Check" => {
                    let codec =
                        tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default(
                        );
                    Ok(tonic::server::Grpc::new(codec)
                        .unary(Check(caller), req)
                        .await)
                }
                _ => Ok(tonic::Status::unimplemented(req.uri().path().to_owned()).into_http()),
            }
        })
    }
}

/// Every client certificate the server completed a handshake with, in order.
pub type Seen = Arc<Mutex<Vec<CertificateDer<'static>>>>;

pub fn seen(log: &Seen) -> Vec<CertificateDer<'static>> {
    log.lock().unwrap().clone()
}

/// A gRPC server with mutual TLS on 127.0.0.1, standing in for an agent.
pub struct Agent {
    pub addr: SocketAddr,
    pub seen: Seen,
    stop: oneshot::Sender<()>,
    accept: JoinHandle<()>,
    serve: JoinHandle<()>,
}

fn server_config(leaf: &Leaf, trusts: &[&Ca]) -> Arc<rustls::ServerConfig> {
    #[allow(deprecated)] // the ring provider, as the SDK uses (see src/tls/load.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in trusts {
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(
            vec![leaf.der()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The one spiffe:// URI SAN of `der`.
fn spiffe_id(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some((*uri).to_owned())
            }
            _ => None,
        })
        .unwrap()
}

impl Agent {
    /// Serves with `leaf`, requiring client certificates from `trusts`.
    pub async fn start(leaf: &Leaf, trusts: &[&Ca]) -> Agent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Agent::serve(listener, leaf, trusts, Seen::default())
    }

    fn serve(listener: TcpListener, leaf: &Leaf, trusts: &[&Ca], seen: Seen) -> Agent {
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(leaf, trusts));
        let (connections, mut incoming) = mpsc::channel::<io::Result<Accepted>>(16);
        let log = Arc::clone(&seen);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, connections, log) =
                    (acceptor.clone(), connections.clone(), Arc::clone(&log));
                // A handshake the client abandons fails here, and is not logged.
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(cert) = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                    else {
                        return;
                    };
                    let cert = cert.clone().into_owned();
                    let caller = Caller(spiffe_id(&cert));
                    log.lock().unwrap().push(cert);
                    let _ = connections.send(Ok(Accepted { stream, caller })).await;
                });
            }
        });
        let incoming = futures_util::stream::poll_fn(move |cx| incoming.poll_recv(cx));
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(Health, incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Agent {
            addr,
            seen,
            stop,
            accept,
            serve,
        }
    }

    /// Stops this server (its connections close) and serves on the same
    /// port with another certificate and bundle, keeping the log.
    pub async fn restart(self, leaf: &Leaf, trusts: &[&Ca]) -> Agent {
        let _ = self.stop.send(());
        self.accept.abort();
        let _ = self.accept.await;
        tokio::time::timeout(GUARD, self.serve)
            .await
            .expect("the test server stops")
            .unwrap();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        Agent::serve(listener, leaf, trusts, self.seen)
    }
}
