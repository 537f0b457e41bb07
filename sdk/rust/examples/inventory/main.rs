//! `inventory`: a small HTTP service on Meridian that reserves stock for
//! orders without ever overselling, in any region. See README.md beside this
//! file for how to run it.
//!
//! - stock and reservations live in a `global` keyspace and change only by
//!   compare-and-set ([`store`]);
//! - it registers with its local agent as service `inventory`, so other
//!   services reach it with `invoke("inventory", "reservations")`;
//! - it consumes `OrderCancelled` events of topic `orders` to give stock back,
//!   and releases reservations that expire unconfirmed ([`events`]);
//! - on SIGTERM or ctrl-c it deregisters, closes its subscription and drains
//!   its HTTP requests before exiting.

mod events;
mod http;
mod model;
mod store;

#[cfg(test)]
mod agent_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_address_is_advertised_as_loopback() {
        let any: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        assert_eq!(advertised(any), "127.0.0.1:8081".parse().unwrap());
        let own: SocketAddr = "10.1.2.3:8081".parse().unwrap();
        assert_eq!(advertised(own), own);
    }

    #[test]
    fn the_flags_parse_with_their_defaults() {
        let config = Config::try_parse_from(["inventory", "--reservation-ttl", "2m"]).unwrap();
        assert_eq!(config.reservation_ttl, Duration::from_secs(120));
        assert_eq!(config.claim_timeout, store::DEFAULT_CLAIM_TIMEOUT);
        assert_eq!(config.service, "inventory");
        assert_eq!(config.keyspace, "inventory");
        assert_eq!(config.tls_dir, None, "plaintext unless asked");
        assert!(Config::try_parse_from(["inventory", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn tls_dir_names_the_identity_folder() {
        let config = Config::try_parse_from([
            "inventory",
            "--tls-dir",
            ".meridian/ca/identities/service-inventory",
        ])
        .unwrap();
        assert_eq!(
            config.tls_dir.as_deref(),
            Some(std::path::Path::new(
                ".meridian/ca/identities/service-inventory"
            ))
        );
    }
}

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use meridian::{Client, Instance, Registration, TlsFiles};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::Inventory;

/// Reserves stock for orders; registers with the local Meridian agent.
#[derive(Parser, Clone, Debug)]
#[command(version, about)]
struct Config {
    /// The local Meridian agent's gRPC address.
    #[arg(long, env = "MERIDIAN_AGENT", default_value = "127.0.0.1:14020")]
    agent: String,
    /// Where to serve HTTP.
    #[arg(long, env = "INVENTORY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// `host:port` the agent reaches this instance at [default: the address
    /// bound, with 127.0.0.1 for a wildcard host].
    #[arg(long, env = "INVENTORY_ADVERTISE")]
    advertise: Option<String>,
    /// This instance's region, which names its consumer group
    /// (`inventory-<region>`); checked against the agent's [default: the
    /// agent's region].
    #[arg(long, env = "MERIDIAN_REGION")]
    region: Option<String>,
    /// The `global` keyspace holding stock and reservations.
    #[arg(long, env = "INVENTORY_KEYSPACE", default_value = "inventory")]
    keyspace: String,
    /// The name to register under.
    #[arg(long, default_value = "inventory")]
    service: String,
    /// How long a reservation holds its stock unless confirmed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    reservation_ttl: Duration,
    /// How often to look for expired reservations (and for stock taken by
    /// reservations whose claimant crashed).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    sweep_interval: Duration,
    /// How long a reservation may stay pending (claimed, being made) before
    /// a duplicate request takes it over.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    claim_timeout: Duration,
    /// The registration's lease (renewed every third of it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    lease_ttl: Duration,
    /// Connect to the agent with mutual TLS, as the identity in this folder
    /// (`cert.pem`, `key.pem`, `bundle.pem`, as `meridian ca issue` writes
    /// them; re-issued files are picked up without a restart) [default:
    /// plaintext]. The service's own HTTP listener stays plain.
    #[arg(long, env = "MERIDIAN_TLS_DIR")]
    tls_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let config = Config::parse();
    let running = start(&config).await?;
    tracing::info!(
        addr = %running.addr,
        region = running.region,
        instance_id = running.registration.instance_id(),
        "inventory is serving"
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    running.stop().await
}

/// A started service.
struct Running {
    addr: SocketAddr,
    region: String,
    registration: Registration,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Binds, serves, registers, and starts the background work. Registration
/// comes after the listener is bound, so the agent's first health check can
/// pass.
async fn start(config: &Config) -> Result<Running, Box<dyn Error>> {
    let mut agent = Client::builder(config.agent.clone());
    if let Some(dir) = &config.tls_dir {
        agent = agent.tls(TlsFiles::in_dir(dir));
    }
    let client = agent.connect().await?;
    let region = client.health().await?.region;
    if let Some(expected) = config.region.as_ref().filter(|r| **r != region) {
        return Err(format!(
            "the agent at {} serves {region}, not {expected}",
            config.agent
        )
        .into());
    }
    let inventory = Inventory::new(client.state(), &config.keyspace, config.reservation_ttl)
        .with_claim_timeout(config.claim_timeout);

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let mut until_stopped = stopped.clone();
    let app = http::router(inventory.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = until_stopped.wait_for(|stop| *stop).await;
            })
            .await
    });

    let endpoint = config
        .advertise
        .clone()
        .unwrap_or_else(|| advertised(addr).to_string());
    let instance = Instance::http(&config.service, endpoint)
        .version(env!("CARGO_PKG_VERSION"))
        .health_path("/healthz");
    let registration = client
        .registry()
        .register(instance, config.lease_ttl)
        .await?;

    let workers = vec![
        tokio::spawn(events::consume_orders(
            inventory.clone(),
            client.events(),
            events::group(&region),
            stopped.clone(),
        )),
        tokio::spawn(events::sweep_expired(
            inventory,
            config.sweep_interval,
            stopped,
        )),
    ];
    Ok(Running {
        addr,
        region,
        registration,
        stop,
        workers,
        server,
    })
}

impl Running {
    /// Stops in order: deregister (the agent sends no new calls), then stop
    /// the consumer (closing its subscription flushes its acks) and the
    /// sweeper, and let the HTTP server finish the requests in flight.
    async fn stop(self) -> Result<(), Box<dyn Error>> {
        if let Err(e) = self.registration.close().await {
            tracing::warn!(error = %e, "deregistering; the lease runs out by itself");
        }
        // Every receiver may be gone already: nothing left to tell.
        let _ = self.stop.send(true);
        for worker in self.workers {
            worker.await?;
        }
        self.server.await??;
        Ok(())
    }
}

/// The address the local agent can dial for one bound to `addr`.
fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
