//! Mutual TLS against a real gRPC server: tonic behind a rustls acceptor
//! that requires a client certificate from its bundle, as the agent does,
//! and answers `HealthService/Check` with the SPIFFE ID of the caller it
//! saw. Certificates are made here with rcgen, as `meridian ca` makes them
//! (roots with `pathLen 0`; leaves with one URI SAN, `localhost` and
//! `127.0.0.1`, both extended key usages), and written to identity folders
//! the way the CA writes them: key, then certificate, then bundle, each by
//! rename.
//!
//! The files are read when the client connects and again for every new
//! connection; to make the client open a new connection, a test stops the
//! server and starts another on the same port.
//!
//! `certs.rs` makes the certificates and folders, `server.rs` the server.

mod certs;
mod server;

use std::path::Path;
use std::time::Duration;

use meridian::{Client, Error, ServingStatus, TlsFiles};
use rcgen::{SanType, date_time_ymd};
use rustls::pki_types::CertificateDer;

use crate::certs::{Ca, Leaf, bundle, identity, issue, write};
use crate::server::{Agent, seen};

const AGENT: &str = "spiffe://td/region/us-east/agent";
const ORDERS: &str = "spiffe://td/service/orders";
/// A hang guard, not a speed check.
const GUARD: Duration = Duration::from_secs(20);

// -- helpers ------------------------------------------------------------------

/// `error` and every source under it, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(" <- ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

async fn connect(agent: &Agent, dir: &Path) -> Result<Client, Error> {
    tokio::time::timeout(
        GUARD,
        Client::builder(agent.addr.to_string())
            .tls(TlsFiles::in_dir(dir))
            .connect(),
    )
    .await
    .expect("connect hangs")
}

/// Who the server says called, through a new or existing connection.
async fn caller(client: &Client) -> Result<String, Error> {
    let health = client.health().await?;
    assert_eq!(health.status, ServingStatus::Serving);
    Ok(health.reasons.join(" "))
}

/// Polls until the server has completed a handshake with `want` (and a call
/// on it succeeded).
async fn until_presented(client: &Client, agent: &Agent, want: &CertificateDer<'static>) {
    for _ in 0..200 {
        if caller(client).await.is_ok() && seen(&agent.seen).last() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never saw the expected client certificate");
}

/// A client of `root`'s trust domain `td` refuses a server presenting
/// `server`: `connect` fails saying `says`, and the server saw no handshake.
async fn refused(root: &Ca, server: &Leaf, says: &str) {
    let agent = Agent::start(server, &[root]).await;
    let dir = identity("client", &root.leaf(ORDERS), &[root]);
    let err = connect(&agent, &dir)
        .await
        .expect_err("the server is refused");
    let why = chain(&err);
    assert!(matches!(err, Error::Transport(_)), "{why}");
    assert!(why.contains(says), "{why:?} lacks {says:?}");
    assert!(seen(&agent.seen).is_empty(), "a handshake completed: {why}");
}

fn invalid_argument(err: Error) -> (String, String) {
    match err {
        Error::InvalidArgument { field, rule } => (field, rule),
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

/// `connect` and `connect_lazy` with `dir` fail at once, naming `field` and
/// saying `says`.
async fn bad_files(files: TlsFiles, field: &str, says: &str) {
    // Nothing listens there: the files are refused before any dialling.
    let builder = Client::builder("127.0.0.1:9").tls(files);
    let (got, rule) = invalid_argument(builder.clone().connect().await.unwrap_err());
    assert_eq!(got, field, "{rule}");
    assert!(rule.contains(says), "{field}: {rule:?} lacks {says:?}");
    let (lazy, _) = invalid_argument(builder.connect_lazy().unwrap_err());
    assert_eq!(lazy, field);
}

// -- the handshake ------------------------------------------------------------

#[tokio::test]
async fn the_agent_sees_the_clients_spiffe_id() {
    let root = Ca::new("root");
    // Only the URI SAN: the address dialled is not what is checked.
    let server = root.leaf_with(AGENT, |p| p.subject_alt_names.truncate(1));
    let agent = Agent::start(&server, &[&root]).await;
    let client_leaf = root.leaf(ORDERS);
    let dir = identity("orders", &client_leaf, &[&root]);

    let client = connect(&agent, &dir).await.expect("connect");
    assert_eq!(caller(&client).await.unwrap(), format!("caller {ORDERS}"));
    assert_eq!(seen(&agent.seen), vec![client_leaf.der()]);

    let by_name = Client::builder(format!("https://localhost:{}", agent.addr.port()))
        .tls(TlsFiles::in_dir(&dir))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(caller(&by_name).await.unwrap(), format!("caller {ORDERS}"));
}

#[tokio::test]
async fn ed25519_identities_work_too() {
    let root = Ca::with_algorithm("root", &rcgen::PKCS_ED25519);
    let agent = Agent::start(&root.leaf(AGENT), &[&root]).await;
    let dir = identity("ed25519", &root.leaf(ORDERS), &[&root]);
    let client = connect(&agent, &dir).await.expect("connect");
    assert_eq!(caller(&client).await.unwrap(), format!("caller {ORDERS}"));
}

#[tokio::test]
async fn a_lazy_client_shakes_hands_on_its_first_call() {
    let root = Ca::new("root");
    let agent = Agent::start(&root.leaf(AGENT), &[&root]).await;
    let dir = identity("lazy", &root.leaf(ORDERS), &[&root]);
    let client = Client::builder(agent.addr.to_string())
        .tls(TlsFiles::in_dir(&dir))
        .connect_lazy()
        .expect("files load");
    assert!(seen(&agent.seen).is_empty());
    assert_eq!(caller(&client).await.unwrap(), format!("caller {ORDERS}"));
    assert_eq!(seen(&agent.seen).len(), 1);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let root = Ca::new("root");
    let stranger = Ca::new("stranger");
    refused(
        &root,
        &stranger.leaf(AGENT),
        "the agent's certificate does not chain to a root in",
    )
    .await;
}

#[tokio::test]
async fn a_server_certificate_naming_anything_but_an_agent_is_refused() {
    let root = Ca::new("root");
    refused(
        &root,
        &root.leaf(ORDERS),
        "the agent's certificate names spiffe://td/service/orders, which is not an agent \
         (spiffe://td/region/<region>/agent)",
    )
    .await;
    for (uri, says) in [
        ("spiffe://td/gateway", "which is not an agent"),
        (
            "spiffe://td/region/us-east/agent/x",
            "which is not an agent",
        ),
        ("spiffe://td/region/US/agent", "which is not an agent"),
        ("https://td/region/us-east/agent", "names no spiffe:// ID"),
    ] {
        refused(&root, &root.leaf(uri), says).await;
    }
    let two = root.leaf_with(AGENT, |p| {
        p.subject_alt_names.push(SanType::URI(
            "spiffe://td/region/eu-west/agent".try_into().unwrap(),
        ));
    });
    refused(&root, &two, "names 2 spiffe:// IDs").await;
}

#[tokio::test]
async fn an_agent_of_another_trust_domain_is_refused() {
    let root = Ca::new("root");
    refused(
        &root,
        &root.leaf("spiffe://other.td/region/us-east/agent"),
        "in trust domain \"other.td\", not \"td\" (the trust domain of tls.cert)",
    )
    .await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let root = Ca::new("root");
    let expired = root.leaf_with(AGENT, |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    refused(&root, &expired, "the agent's certificate expired").await;
}

// -- files that change --------------------------------------------------------

#[tokio::test]
async fn a_reissued_client_certificate_is_presented_by_the_next_connection() {
    let root = Ca::new("root");
    let server = root.leaf(AGENT);
    let agent = Agent::start(&server, &[&root]).await;
    let first = root.leaf(ORDERS);
    let dir = identity("reissue", &first, &[&root]);
    let client = connect(&agent, &dir).await.expect("connect");
    caller(&client).await.unwrap();

    let second = root.leaf(ORDERS);
    issue(&dir, &second, &[&root]);
    // The open connection keeps the identity it shook hands with.
    caller(&client).await.unwrap();
    assert_eq!(seen(&agent.seen), vec![first.der()]);

    let agent = agent.restart(&server, &[&root]).await;
    until_presented(&client, &agent, &second.der()).await;
    assert_eq!(seen(&agent.seen).first(), Some(&first.der()));
}

#[tokio::test]
async fn a_second_root_in_the_bundle_is_trusted_by_the_next_connection() {
    let old = Ca::new("old root");
    let new = Ca::new("new root");
    // The agent moved to the new root first; it trusts both.
    let agent = Agent::start(&old.leaf(AGENT), &[&old, &new]).await;
    let dir = identity("rotation", &old.leaf(ORDERS), &[&old]);
    let client = connect(&agent, &dir).await.expect("connect");
    caller(&client).await.unwrap();

    let agent = agent.restart(&new.leaf(AGENT), &[&old, &new]).await;
    // Our bundle does not hold the new root yet: every new connection is refused.
    for _ in 0..3 {
        assert!(caller(&client).await.is_err());
    }
    assert_eq!(
        seen(&agent.seen).len(),
        1,
        "only the first handshake completed"
    );

    write(&dir.join("bundle.pem"), &bundle(&[&old, &new]));
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(who) = caller(&client).await {
            assert_eq!(who, format!("caller {ORDERS}"));
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the new root was never trusted");
    assert_eq!(seen(&agent.seen).len(), 2);
}

#[tokio::test]
async fn files_caught_mid_rotation_keep_the_last_good_ones() {
    let root = Ca::new("root");
    let server = root.leaf(AGENT);
    let agent = Agent::start(&server, &[&root]).await;
    let first = root.leaf(ORDERS);
    let dir = identity("midway", &first, &[&root]);
    let client = connect(&agent, &dir).await.expect("connect");
    caller(&client).await.unwrap();

    // The CA renames the new key in before the new certificate: for a moment
    // the pair does not match.
    let second = root.leaf(ORDERS);
    write(&dir.join("key.pem"), &second.key_pem);
    let agent = agent.restart(&server, &[&root]).await;
    until_presented(&client, &agent, &first.der()).await;
    assert_eq!(
        seen(&agent.seen).len(),
        2,
        "a new connection, with the old files"
    );

    write(&dir.join("cert.pem"), &second.cert_pem);
    let agent = agent.restart(&server, &[&root]).await;
    until_presented(&client, &agent, &second.der()).await;
}

// -- bad input ----------------------------------------------------------------

#[tokio::test]
async fn missing_files_name_their_field() {
    let root = Ca::new("root");
    let dir = identity("missing", &root.leaf(ORDERS), &[&root]);
    let nowhere = dir.join("nowhere.pem");
    let files = TlsFiles::in_dir(&dir);
    for (field, broken) in [
        (
            "tls.cert",
            TlsFiles {
                cert: nowhere.clone(),
                ..files.clone()
            },
        ),
        (
            "tls.key",
            TlsFiles {
                key: nowhere.clone(),
                ..files.clone()
            },
        ),
        (
            "tls.bundle",
            TlsFiles {
                bundle: nowhere.clone(),
                ..files.clone()
            },
        ),
    ] {
        bad_files(broken, field, &format!("cannot read {}", nowhere.display())).await;
    }
    bad_files(
        TlsFiles::in_dir(dir.join("absent")),
        "tls.cert",
        "cannot read",
    )
    .await;
}

#[tokio::test]
async fn mismatched_files_name_their_field_and_the_rule() {
    let root = Ca::new("root");
    let other = Ca::new("other");
    let leaf = root.leaf(ORDERS);
    let dir = identity("mismatched", &leaf, &[&root]);
    let at = |name: &str, data: &str| {
        let path = dir.join(name);
        write(&path, data);
        path
    };
    let files = TlsFiles::in_dir(&dir);

    let key = at("other-key.pem", &root.leaf(ORDERS).key_pem);
    bad_files(
        TlsFiles {
            key: key.clone(),
            ..files.clone()
        },
        "tls.key",
        &format!(
            "{} is not the private key of tls.cert ({})",
            key.display(),
            files.cert.display()
        ),
    )
    .await;

    let no_key = at("no-key.pem", &leaf.cert_pem);
    bad_files(
        TlsFiles {
            key: no_key,
            ..files.clone()
        },
        "tls.key",
        "holds no PEM private key",
    )
    .await;

    let no_cert = at("no-cert.pem", &leaf.key_pem);
    bad_files(
        TlsFiles {
            cert: no_cert.clone(),
            ..files.clone()
        },
        "tls.cert",
        "holds no PEM certificate",
    )
    .await;
    bad_files(
        TlsFiles {
            bundle: no_cert,
            ..files.clone()
        },
        "tls.bundle",
        "holds no PEM certificate",
    )
    .await;

    let foreign = at("foreign-bundle.pem", &other.pem);
    bad_files(
        TlsFiles {
            bundle: foreign.clone(),
            ..files.clone()
        },
        "tls.cert",
        &format!("does not chain to a root in {}", foreign.display()),
    )
    .await;

    let anonymous = root.leaf_with(ORDERS, |p| {
        p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    });
    let anonymous_dir = identity("anonymous", &anonymous, &[&root]);
    bad_files(
        TlsFiles::in_dir(&anonymous_dir),
        "tls.cert",
        "names no spiffe:// ID in its URI SANs",
    )
    .await;

    let expired = root.leaf_with(ORDERS, |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let expired_dir = identity("expired", &expired, &[&root]);
    bad_files(TlsFiles::in_dir(&expired_dir), "tls.cert", "expired").await;
}

#[tokio::test]
async fn the_target_must_not_say_plaintext() {
    let root = Ca::new("root");
    let dir = identity("target", &root.leaf(ORDERS), &[&root]);
    let err = Client::builder("http://127.0.0.1:9")
        .tls(TlsFiles::in_dir(&dir))
        .connect()
        .await
        .unwrap_err();
    let (field, rule) = invalid_argument(err);
    assert_eq!(field, "target");
    assert!(rule.contains("not http://"), "{rule}");

    let err = Client::builder("https://127.0.0.1:9")
        .connect_lazy()
        .unwrap_err();
    let (field, rule) = invalid_argument(err);
    assert_eq!(field, "target");
    assert!(rule.contains("https:// needs TLS"), "{rule}");
}

#[test]
fn in_dir_names_the_files_the_ca_writes() {
    let files = TlsFiles::in_dir("/ca/identities/service-orders");
    assert_eq!(
        files,
        TlsFiles::new(
            "/ca/identities/service-orders/cert.pem",
            "/ca/identities/service-orders/key.pem",
            "/ca/identities/service-orders/bundle.pem",
        )
    );
}
