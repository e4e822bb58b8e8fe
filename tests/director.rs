//! The director client over real HTTPS against the simulated director and UAA (§2).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bosh_nats_sync::director::{Client, Error, Event, EventsQuery, Refetched, Settings};
use bosh_nats_sync::secret::Secret;
use bosh_nats_sync::vm::Vm;
use sim::director::{AuthSeen, DirectorConfig, DirectorSim, Endpoint, Vm as SimVm};
use sim::fault::Fault;
use sim::pki::{Pki, PkiFiles};
use sim::uaa::{ClientAuth, UaaConfig, UaaSim};

/// Every VM of one full read, in deployment order: what these tests look at.
trait EveryVm {
    async fn fetch_vms(&self) -> Result<Vec<Vm>, Error>;
}

impl EveryVm for Client {
    async fn fetch_vms(&self) -> Result<Vec<Vm>, Error> {
        Ok(self
            .fetch_view()
            .await?
            .into_iter()
            .flat_map(|(_, vms)| vms)
            .collect())
    }
}

const USER: &str = "admin";
const PASSWORD: &str = "basic-pass-7d1e";
const CLIENT_ID: &str = "nats_sync";
const CLIENT_SECRET: &str = "uaa-secret-93af";

/// A PKI on disk; the temp dir lives as long as the test needs the files.
struct Env {
    pki: Pki,
    files: PkiFiles,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate().expect("pki");
        let files = pki.write_to(dir.path()).expect("write pki");
        Env {
            pki,
            files,
            _dir: dir,
        }
    }

    async fn basic_director(&self) -> DirectorSim {
        let config =
            DirectorConfig::basic(USER, PASSWORD).with_tls(self.pki.server_config().expect("tls"));
        DirectorSim::start(config).await.expect("start director")
    }

    async fn uaa(&self) -> UaaSim {
        let config = UaaConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_tls(self.pki.server_config().expect("tls"));
        UaaSim::start(config).await.expect("start uaa")
    }

    async fn uaa_director(&self, uaa: &UaaSim) -> DirectorSim {
        let config = DirectorConfig::uaa(uaa.director_auth())
            .with_tls(self.pki.server_config().expect("tls"));
        DirectorSim::start(config).await.expect("start director")
    }

    fn settings(&self, url: &str) -> Settings {
        Settings {
            url: url::Url::parse(url).expect("url"),
            basic: Some((USER.into(), Secret::new(PASSWORD))),
            uaa_client: Some((CLIENT_ID.into(), Secret::new(CLIENT_SECRET))),
            director_ca: Some(self.files.ca_cert.clone()),
            uaa_ca: None,
            uaa_public_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 << 20,
            max_concurrency: 4,
            connection_wait_timeout: Duration::from_secs(0),
        }
    }
}

struct Harness {
    client: Client,
    metrics: Arc<metrics::Metrics>,
}

fn client(settings: Settings) -> Harness {
    let metrics = Arc::new(metrics::Metrics::new());
    let client = Client::new(settings, metrics.clone()).expect("client");
    Harness { client, metrics }
}

impl Harness {
    /// The value of `bosh_nats_sync_director_requests_total{endpoint, status}` (0 if absent).
    fn requests(&self, endpoint: &str, status: &str) -> u64 {
        counter(
            &self.metrics.render(),
            "bosh_nats_sync_director_requests_total",
            &[("endpoint", endpoint), ("status", status)],
        )
    }

    fn token_fetches(&self, result: &str) -> u64 {
        counter(
            &self.metrics.render(),
            "bosh_nats_sync_uaa_token_fetches_total",
            &[("result", result)],
        )
    }
}

fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .expect("value")
                .parse::<f64>()
                .expect("number") as u64
        })
        .sum()
}

fn agent(id: &str) -> Vm {
    Vm {
        agent_id: Some(id.into()),
        permanent_nats_credentials: false,
    }
}

fn no_secrets(e: &Error) {
    let shown = format!("{e} {e:?}");
    for secret in [PASSWORD, CLIENT_SECRET] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[tokio::test]
async fn basic_mode_reads_every_deployment() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment(
        "cf",
        vec![
            SimVm::agent("a1"),
            SimVm::creating(),
            SimVm::agent("a2").permanent(true),
        ],
    );
    director.set_deployment("zookeeper", vec![SimVm::agent("z1")]);
    let mut legacy = SimVm::agent("old");
    legacy.permanent_nats_credentials = None;
    director.set_deployment("legacy", vec![legacy]);
    director.set_deployment("empty", vec![]);

    let h = client(env.settings(&director.url()));
    let vms = h.client.fetch_vms().await.expect("fetch");
    assert_eq!(
        vms,
        vec![
            agent("a1"),
            Vm {
                agent_id: None,
                permanent_nats_credentials: false
            },
            Vm {
                agent_id: Some("a2".into()),
                permanent_nats_credentials: true
            },
            agent("old"),
            agent("z1"),
        ]
    );

    let records = director.requests();
    let info: Vec<_> = records
        .iter()
        .filter(|r| r.endpoint == Endpoint::Info)
        .collect();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].auth, AuthSeen::None, "/info is unauthenticated");
    assert!(
        records
            .iter()
            .filter(|r| r.endpoint != Endpoint::Info)
            .all(|r| r.auth == AuthSeen::Basic)
    );
    assert_eq!(director.status_count(Endpoint::Vms, 200), 4);

    let queries = director.deployments_queries();
    assert_eq!(queries.len(), 1);
    for param in [
        "exclude_configs=true",
        "exclude_releases=true",
        "exclude_stemcells=true",
        "exclude_lock=true",
    ] {
        assert!(
            queries[0].split('&').any(|p| p == param),
            "{param} missing from {}",
            queries[0]
        );
    }

    assert_eq!(h.requests("info", "200"), 1);
    assert_eq!(h.requests("deployments", "200"), 1);
    assert_eq!(h.requests("vms", "200"), 4);
    assert_eq!(h.token_fetches("ok"), 0);
}

#[tokio::test]
async fn wrong_basic_password_is_a_status_error() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let mut settings = env.settings(&director.url());
    settings.basic = Some((USER.into(), Secret::new("wrong-password")));
    let err = client(settings)
        .client
        .fetch_vms()
        .await
        .expect_err("accepted");
    assert!(
        matches!(
            err,
            Error::Status {
                endpoint: "deployments",
                status: 401,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(err.reason(), "unauthorized");
    assert_eq!(
        err.to_string(),
        format!(
            "{}/deployments answered HTTP 401: Not authorized: '/deployments'",
            director.url()
        ),
        "the director's own words"
    );
    assert!(!format!("{err} {err:?}").contains("wrong-password"));
}

#[tokio::test]
async fn uaa_token_is_cached_across_fetches() {
    let env = Env::new();
    let uaa = env.uaa().await;
    let director = env.uaa_director(&uaa).await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    director.set_deployment("redis", vec![SimVm::agent("r1")]);
    let mut settings = env.settings(&director.url());
    settings.uaa_public_key = Some(uaa.public_key_pem().to_string());
    let h = client(settings);

    for _ in 0..2 {
        let vms = h.client.fetch_vms().await.expect("fetch");
        assert_eq!(vms, vec![agent("a1"), agent("r1")]);
    }
    assert_eq!(uaa.tokens_issued(), 1, "the token is reused across passes");
    let token_requests = uaa.requests();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].grant_type.as_deref(),
        Some("client_credentials")
    );
    assert_eq!(token_requests[0].client_auth, ClientAuth::Basic);
    assert!(
        director
            .requests()
            .iter()
            .filter(|r| r.endpoint != Endpoint::Info)
            .all(|r| r.auth == AuthSeen::Bearer)
    );
    assert_eq!(h.token_fetches("ok"), 1);
    assert_eq!(h.requests("uaa_token", "200"), 1);
}

#[tokio::test]
async fn short_lived_uaa_tokens_are_refreshed() {
    let env = Env::new();
    let uaa = env.uaa().await;
    uaa.set_expires_in(30);
    let director = env.uaa_director(&uaa).await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let mut settings = env.settings(&director.url());
    settings.uaa_public_key = Some(uaa.public_key_pem().to_string());
    let h = client(settings);

    h.client.fetch_vms().await.expect("first fetch");
    // Less than the 60 s margin left from the start: /deployments and /vms each need one.
    assert_eq!(uaa.tokens_issued(), 2);
    h.client.fetch_vms().await.expect("second fetch");
    assert_eq!(uaa.tokens_issued(), 4);

    uaa.set_expires_in(3600);
    h.client.fetch_vms().await.expect("third fetch");
    h.client.fetch_vms().await.expect("fourth fetch");
    assert_eq!(
        uaa.tokens_issued(),
        5,
        "a long-lived token is fetched once and kept"
    );
}

#[tokio::test]
async fn uaa_tokens_failing_verification_are_never_sent() {
    let env = Env::new();
    let uaa = env.uaa().await;
    let director = env.uaa_director(&uaa).await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let mut settings = env.settings(&director.url());
    settings.uaa_public_key = Some(uaa.public_key_pem().to_string());
    let h = client(settings);

    uaa.set_sign_with_wrong_key(true);
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("wrongly signed token accepted");
    assert_eq!(err.reason(), "token_invalid", "{err}");
    no_secrets(&err);

    uaa.set_sign_with_wrong_key(false);
    uaa.set_expires_in(-10);
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("expired token accepted");
    // The simulator marks its expired tokens with a negative `expires_in`, which no real
    // UAA sends: refused while decoding the response, before the signature check.
    assert_eq!(err.reason(), "auth", "{err}");

    assert_eq!(
        director.request_count(Endpoint::Deployments),
        0,
        "no request went out without a valid token"
    );
    assert_eq!(h.token_fetches("error"), 2);

    uaa.set_expires_in(3600);
    h.client
        .fetch_vms()
        .await
        .expect("recovers with a good token");
}

#[tokio::test]
async fn a_token_the_director_refuses_is_not_reused() {
    let env = Env::new();
    let uaa = env.uaa().await;
    // The director trusts another key than the one UAA signs with, so it answers 401.
    let auth = sim::director::DirectorAuth::Uaa {
        url: uaa.url(),
        public_key_pem: sim::uaa::WRONG_PUBLIC_KEY_PEM.to_string(),
    };
    let config = DirectorConfig::uaa(auth).with_tls(env.pki.server_config().expect("tls"));
    let director = DirectorSim::start(config).await.expect("start director");
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let h = client(env.settings(&director.url()));
    for _ in 0..2 {
        let err = h
            .client
            .fetch_vms()
            .await
            .expect_err("refused token accepted");
        assert!(
            matches!(
                err,
                Error::Status {
                    endpoint: "deployments",
                    status: 401,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(
        uaa.tokens_issued(),
        2,
        "each pass after a 401 asks UAA for a fresh token"
    );
}

#[tokio::test]
async fn uaa_refusing_the_client_is_an_auth_error() {
    let env = Env::new();
    let uaa = env.uaa().await;
    let director = env.uaa_director(&uaa).await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let mut settings = env.settings(&director.url());
    settings.uaa_client = Some((CLIENT_ID.into(), Secret::new("not-the-secret")));
    let h = client(settings);
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("bad client secret accepted");
    assert_eq!(err.reason(), "auth", "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!format!("{err} {err:?}").contains("not-the-secret"));
    assert_eq!(director.request_count(Endpoint::Deployments), 0);
    assert_eq!(h.requests("uaa_token", "401"), 1);
}

#[tokio::test]
async fn uaa_trust_falls_back_to_the_director_ca_and_honours_its_own() {
    let env = Env::new();
    let uaa = env.uaa().await;
    let director = env.uaa_director(&uaa).await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);

    let mut settings = env.settings(&director.url());
    settings.uaa_ca = Some(env.files.ca_cert.with_file_name("no-such-uaa-ca.crt"));
    client(settings.clone())
        .client
        .fetch_vms()
        .await
        .expect("UAA trusted through director_ca_cert");

    settings.uaa_ca = Some(env.files.other_ca_cert.clone());
    let err = client(settings)
        .client
        .fetch_vms()
        .await
        .expect_err("UAA with the wrong CA accepted");
    assert_eq!(err.reason(), "auth", "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn vanished_deployment_counts_as_no_vms() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("a-stays", vec![SimVm::agent("a1")]);
    director.set_deployment("b-goes", vec![SimVm::agent("b1")]);
    director.set_deployment("c-stays", vec![SimVm::agent("c1")]);
    director.delete_after_next_list("b-goes");
    let h = client(env.settings(&director.url()));
    let vms = h.client.fetch_vms().await.expect("404 is not a failure");
    assert_eq!(vms, vec![agent("a1"), agent("c1")]);
    assert_eq!(director.status_count(Endpoint::Vms, 404), 1);
    assert_eq!(h.requests("vms", "404"), 1);
}

#[tokio::test]
async fn server_errors_fail_the_whole_fetch() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("a", vec![SimVm::agent("a1")]);
    director.set_deployment("b", vec![SimVm::agent("b1")]);
    let h = client(env.settings(&director.url()));

    director.set_vms_fault("b", Fault::status(500));
    let err = h.client.fetch_vms().await.expect_err("500 ignored");
    assert!(
        matches!(
            err,
            Error::Status {
                endpoint: "vms",
                status: 500,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/deployments/b/vms"), "{err}");
    assert!(!err.is_transient());
    director.clear_faults();

    director.set_fault(Endpoint::Deployments, Fault::status(503));
    let err = h.client.fetch_vms().await.expect_err("503 ignored");
    assert!(
        matches!(
            err,
            Error::Status {
                endpoint: "deployments",
                status: 503,
                ..
            }
        ),
        "{err}"
    );
    director.clear_faults();

    director.set_fault(Endpoint::Info, Fault::status(500));
    let err = h.client.fetch_vms().await.expect_err("500 ignored");
    assert!(
        matches!(
            err,
            Error::Status {
                endpoint: "info",
                status: 500,
                ..
            }
        ),
        "{err}"
    );
    director.clear_faults();

    h.client.fetch_vms().await.expect("recovers");
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error_and_not_retried() {
    let env = Env::new();
    let director = env.basic_director().await;
    let mut settings = env.settings(&director.url());
    settings.director_ca = Some(env.files.other_ca_cert.clone());
    // Were TLS failures retried like connection failures, this would take 30 s.
    settings.connection_wait_timeout = Duration::from_secs(30);
    let h = client(settings);
    let started = Instant::now();
    let err = h.client.fetch_vms().await.expect_err("wrong CA accepted");
    assert!(
        matches!(
            err,
            Error::Tls {
                endpoint: "info",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.reason(), "tls");
    assert!(!err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(h.requests("info", "tls"), 1);
    assert_eq!(director.request_count(Endpoint::Info), 0);
}

#[tokio::test]
async fn unreachable_director_is_retried_until_the_wait_ends() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_down(true);
    let mut settings = env.settings(&director.url());
    settings.connection_wait_timeout = Duration::from_secs(2);
    let h = client(settings);
    let started = Instant::now();
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("down director answered");
    assert!(
        matches!(
            err,
            Error::Connection {
                endpoint: "info",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        h.requests("info", "connection") >= 2,
        "retried: {}",
        h.requests("info", "connection")
    );
}

#[tokio::test]
async fn director_coming_up_within_the_wait_is_read() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    director.set_down(true);
    let mut settings = env.settings(&director.url());
    settings.connection_wait_timeout = Duration::from_secs(60);
    let h = Arc::new(client(settings));
    let fetch = tokio::spawn({
        let h = h.clone();
        async move { h.client.fetch_vms().await }
    });
    common::eventually(
        Duration::from_secs(20),
        "a failed /info attempt",
        || async { h.requests("info", "connection") > 0 },
    )
    .await;
    director.set_down(false);
    let vms = tokio::time::timeout(Duration::from_secs(20), fetch)
        .await
        .expect("fetch finished")
        .expect("task")
        .expect("fetch succeeded once the director was up");
    assert_eq!(vms, vec![agent("a1")]);
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployments((0..12).map(|i| {
        (
            format!("dep-{i:02}"),
            vec![SimVm::agent(&format!("a{i:02}"))],
        )
    }));
    // Slow /vms answers make overlapping requests overlap for sure.
    director.set_fault(Endpoint::Vms, Fault::delay(Duration::from_millis(150)));

    for (limit, expect_parallel) in [(3, true), (1, false)] {
        director.reset_stats();
        let mut settings = env.settings(&director.url());
        settings.max_concurrency = limit;
        let vms = client(settings).client.fetch_vms().await.expect("fetch");
        let expected: Vec<Vm> = (0..12).map(|i| agent(&format!("a{i:02}"))).collect();
        assert_eq!(
            vms, expected,
            "deployment order is kept whatever order answers arrive in"
        );
        let max = director.max_concurrent_vms();
        assert!(max <= limit, "{max} in flight with a limit of {limit}");
        if expect_parallel {
            assert!(max > 1, "requests were not concurrent: {max}");
        }
    }
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let mut settings = env.settings(&director.url());
    settings.max_body_bytes = 1 << 20;
    let h = client(settings);

    for fault in [Fault::oversized(4 << 20), Fault::oversized_chunked(4 << 20)] {
        director.set_fault(Endpoint::Vms, fault);
        let err = h
            .client
            .fetch_vms()
            .await
            .expect_err("oversized body accepted");
        assert!(
            matches!(
                err,
                Error::BodyTooLarge {
                    endpoint: "vms",
                    limit: 1_048_576,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.reason(), "body_too_large");
    }
    assert_eq!(h.requests("vms", "body_too_large"), 2);
    // Just under the cap is fine.
    director.set_fault(Endpoint::Vms, Fault::oversized((1 << 20) - 16));
    let vms = h.client.fetch_vms().await.expect("body under the cap");
    assert!(vms.is_empty());
}

#[tokio::test]
async fn malformed_bodies_are_decode_errors() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let h = client(env.settings(&director.url()));

    director.set_fault(Endpoint::Vms, Fault::invalid_json());
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("invalid JSON accepted");
    assert!(
        matches!(
            err,
            Error::Decode {
                endpoint: "vms",
                ..
            }
        ),
        "{err:?}"
    );
    // The director's JSON comes as text/html: the type is only shown, for a body that is
    // not JSON.
    assert!(
        err.to_string().ends_with(
            r#"(the body is not JSON: Content-Type text/html;charset=utf-8, 16 bytes, starting "[{\"name\": \"trunc")"#
        ),
        "{err}"
    );
    director.clear_faults();

    director.set_deployment_raw("cf", serde_json::json!({"not": "an array"}));
    let err = h.client.fetch_vms().await.expect_err("object accepted");
    assert!(
        matches!(
            err,
            Error::Decode {
                endpoint: "vms",
                ..
            }
        ),
        "{err:?}"
    );

    director.set_deployment_raw(
        "cf",
        serde_json::json!([{"agent_id": "a1", "permanent_nats_credentials": null}]),
    );
    assert_eq!(
        h.client.fetch_vms().await.expect("null means false"),
        vec![agent("a1")]
    );

    director.set_fault(Endpoint::Deployments, Fault::invalid_json());
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("invalid JSON accepted");
    assert!(
        matches!(
            err,
            Error::Decode {
                endpoint: "deployments",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn broken_and_slow_responses_are_transient() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let mut settings = env.settings(&director.url());
    settings.request_timeout = Duration::from_millis(500);
    let h = client(settings);

    director.set_fault(Endpoint::Vms, Fault::reset_mid_body());
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("truncated body accepted");
    assert!(
        matches!(
            err,
            Error::Connection {
                endpoint: "vms",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());

    director.set_fault(Endpoint::Deployments, Fault::delay(Duration::from_secs(5)));
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("stalled response accepted");
    assert!(
        matches!(
            err,
            Error::Timeout {
                endpoint: "deployments",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    director.clear_faults();

    director.set_fault(Endpoint::Vms, Fault::stall_mid_body(Duration::from_secs(5)));
    let err = h
        .client
        .fetch_vms()
        .await
        .expect_err("stalled body accepted");
    assert!(
        matches!(
            err,
            Error::Timeout {
                endpoint: "vms",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(h.requests("deployments", "timeout"), 1);
}

#[tokio::test]
async fn deployment_names_needing_encoding_work() {
    let env = Env::new();
    let director = env.basic_director().await;
    let name = "a/b c?d#e%f";
    director.set_deployment(name, vec![SimVm::agent("x1")]);
    let h = client(env.settings(&director.url()));
    let vms = h.client.fetch_vms().await.expect("fetch");
    assert_eq!(vms, vec![agent("x1")]);
    let paths: Vec<String> = director
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Vms)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        vec!["/deployments/a%2Fb%20c%3Fd%23e%25f/vms".to_string()]
    );
}

#[tokio::test]
async fn garbage_ca_file_is_refused_at_construction() {
    let env = Env::new();
    let path: PathBuf = env.files.ca_cert.with_file_name("garbage.crt");
    std::fs::write(&path, "not a certificate").expect("write");
    let mut settings = env.settings("https://127.0.0.1:1");
    settings.director_ca = Some(path);
    let err =
        Client::new(settings, Arc::new(metrics::Metrics::new())).expect_err("garbage CA accepted");
    assert!(err.to_string().contains("garbage.crt"), "{err}");
}

fn vms_of(view: &[(String, Vec<Vm>)]) -> Vec<(&str, Vec<Vm>)> {
    view.iter()
        .map(|(name, vms)| (name.as_str(), vms.clone()))
        .collect()
}

#[tokio::test]
async fn fetch_view_groups_vms_by_deployment_in_listing_order() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("c", vec![SimVm::agent("c1"), SimVm::agent("c2")]);
    director.set_deployment("a", vec![SimVm::agent("a1")]);
    director.set_deployment("b-goes", vec![SimVm::agent("b1")]);
    director.set_deployment("empty", vec![]);
    director.delete_after_next_list("b-goes");
    let h = client(env.settings(&director.url()));
    let view = h.client.fetch_view().await.expect("fetch");
    assert_eq!(
        vms_of(&view),
        [
            ("a", vec![agent("a1")]),
            ("c", vec![agent("c1"), agent("c2")]),
            ("empty", vec![]),
        ],
        "a deployment deleted after the listing is left out"
    );
    director.set_deployment("b-goes", vec![SimVm::agent("b1")]);
    assert_eq!(
        h.client.fetch_vms().await.expect("fetch"),
        [agent("a1"), agent("b1"), agent("c1"), agent("c2")]
    );
}

/// The watch's goal (§6.6): a director that changes nothing costs at most 300 requests a
/// minute with a poll every second, so a poll is `/events` alone — no `/info`, and no
/// token request while the token is good.
#[tokio::test]
async fn an_event_poll_is_one_request() {
    let env = Env::new();
    let uaa = env.uaa().await;
    let director = env.uaa_director(&uaa).await;
    director.create_vm("cf", SimVm::agent("a1"));
    let h = client(env.settings(&director.url()));
    h.client.fetch_view().await.expect("full read");
    director.reset_stats();
    let newest = h
        .client
        .events(EventsQuery::default())
        .await
        .expect("events")[0]
        .clone();
    for _ in 0..59 {
        let page = h
            .client
            .events(EventsQuery {
                before_id: None,
                after_time: Some(newest.timestamp),
            })
            .await
            .expect("events");
        assert!(page.is_empty(), "a quiet director: {page:?}");
    }
    assert_eq!(director.request_count(Endpoint::Events), 60);
    let others: u64 = [
        Endpoint::Info,
        Endpoint::Deployments,
        Endpoint::Vms,
        Endpoint::Other,
    ]
    .into_iter()
    .map(|e| director.request_count(e))
    .sum();
    assert_eq!(
        others, 0,
        "a minute of polls costs 60 requests, all /events"
    );
    assert_eq!(
        uaa.tokens_issued(),
        1,
        "the full read's token serves the polls"
    );
    assert_eq!(h.requests("events", "200"), 60);
    assert!(
        director
            .requests()
            .iter()
            .all(|r| r.auth == AuthSeen::Bearer)
    );
}

#[tokio::test]
async fn events_are_decoded_and_the_query_is_sent() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_time(Some(1_700_000_000));
    director.create_vm("cf", SimVm::agent("a1"));
    let task = director.new_task();
    director.record_event(
        sim::events::NewEvent::new("acquire", "lock")
            .object_name("lock:release:x")
            .task(&task),
    );
    let h = client(env.settings(&director.url()));
    // No full read first: the first poll asks /info, the next ones do not.
    let events = h
        .client
        .events(EventsQuery::default())
        .await
        .expect("events");
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [3, 2, 1]);
    assert_eq!(
        events[1],
        Event {
            id: 2,
            parent_id: Some(1),
            timestamp: 1_700_000_000,
            action: Some("create".into()),
            object_type: Some("vm".into()),
            object_name: Some("vm-a1".into()),
            deployment: Some("cf".into()),
            instance: Some("worker/instance-a1".into()),
        }
    );
    assert_eq!(
        events[2].object_name, None,
        "the first create/vm names no VM"
    );
    assert_eq!(events[0].deployment, None, "a lock of no deployment");

    let older = h
        .client
        .events(EventsQuery {
            before_id: Some(3),
            after_time: Some(1_699_999_999),
        })
        .await
        .expect("events");
    assert_eq!(older.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 1]);
    let queries: Vec<Option<String>> = director
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Events)
        .map(|r| r.query)
        .collect();
    assert_eq!(
        queries,
        [None, Some("before_id=3&after_time=1699999999".to_string())]
    );
    assert_eq!(director.request_count(Endpoint::Info), 1);
    assert_eq!(h.requests("info", "200"), 1);
}

#[tokio::test]
async fn event_poll_failures_are_classified_like_every_request() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.record_event(sim::events::NewEvent::new("acquire", "lock"));
    let mut settings = env.settings(&director.url());
    settings.request_timeout = Duration::from_millis(500);
    let h = client(settings);
    let poll = || h.client.events(EventsQuery::default());

    for (status, reason) in [(403, "unauthorized"), (404, "status"), (500, "status")] {
        director.set_fault(Endpoint::Events, Fault::status(status).times(1));
        let err = poll().await.expect_err("fault ignored");
        assert!(
            matches!(
                &err,
                Error::Status { endpoint: "events", status: s, .. } if *s == status
            ),
            "{err}"
        );
        assert_eq!(err.reason(), reason);
        assert!(err.to_string().contains("/events"), "{err}");
        no_secrets(&err);
    }
    director.set_fault(Endpoint::Events, Fault::invalid_json().times(1));
    let err = poll().await.expect_err("invalid JSON accepted");
    assert!(
        matches!(
            err,
            Error::Decode {
                endpoint: "events",
                ..
            }
        ),
        "{err:?}"
    );
    director.set_fault(
        Endpoint::Events,
        Fault::delay(Duration::from_secs(5)).times(1),
    );
    let err = poll().await.expect_err("stall accepted");
    assert!(
        matches!(
            err,
            Error::Timeout {
                endpoint: "events",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(poll().await.expect("recovers").len(), 1);
    assert_eq!(h.requests("events", "403"), 1);
    assert_eq!(h.requests("events", "404"), 1);
    assert_eq!(
        h.requests("events", "decode"),
        0,
        "a decode failure is a 200"
    );
    assert_eq!(h.requests("events", "timeout"), 1);

    director.set_down(true);
    let err = poll().await.expect_err("down director answered");
    assert!(
        matches!(
            err,
            Error::Connection {
                endpoint: "events",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_401_forgets_the_auth_mode_and_the_next_read_asks_info_again() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let h = client(env.settings(&director.url()));
    h.client.fetch_view().await.expect("full read");
    h.client.events(EventsQuery::default()).await.expect("poll");
    assert_eq!(director.request_count(Endpoint::Info), 1);

    director.set_fault(Endpoint::Events, Fault::status(401).times(1));
    let err = h
        .client
        .events(EventsQuery::default())
        .await
        .expect_err("401 ignored");
    assert_eq!(err.reason(), "unauthorized");
    assert_eq!(director.request_count(Endpoint::Info), 1);
    h.client.events(EventsQuery::default()).await.expect("poll");
    assert_eq!(
        director.request_count(Endpoint::Info),
        2,
        "the poll after the 401 asked /info"
    );
    h.client.deployment_names().await.expect("names");
    h.client.events(EventsQuery::default()).await.expect("poll");
    assert_eq!(
        director.request_count(Endpoint::Info),
        2,
        "and then kept it"
    );
}

#[tokio::test]
async fn deployment_names_is_one_listing() {
    let env = Env::new();
    let director = env.basic_director().await;
    director.set_deployment("zookeeper", vec![SimVm::agent("z1")]);
    director.set_deployment("cf", vec![SimVm::agent("a1")]);
    let h = client(env.settings(&director.url()));
    h.client.fetch_view().await.expect("full read");
    director.reset_stats();
    assert_eq!(
        h.client.deployment_names().await.expect("names"),
        ["cf", "zookeeper"]
    );
    assert_eq!(director.request_count(Endpoint::Deployments), 1);
    assert_eq!(director.request_count(Endpoint::Vms), 0);
    assert_eq!(director.request_count(Endpoint::Info), 0);
    assert!(
        director.deployments_queries()[0]
            .split('&')
            .any(|p| p == "exclude_configs=true")
    );
}

#[tokio::test]
async fn refetch_reads_only_the_named_deployments() {
    let env = Env::new();
    let director = env.basic_director().await;
    for name in ["a", "b", "c", "a/b c", "ünï", "100%"] {
        director.set_deployment(name, vec![SimVm::agent(&format!("{name}-1"))]);
    }
    let h = client(env.settings(&director.url()));
    h.client.fetch_view().await.expect("full read");
    director.reset_stats();

    let names: Vec<String> = ["c", "gone", "a/b c", "ünï", "100%", "a"]
        .map(String::from)
        .to_vec();
    let answers = h.client.refetch(&names).await.expect("refetch");
    assert_eq!(
        answers,
        [
            ("c".to_string(), Refetched::Vms(vec![agent("c-1")])),
            ("gone".to_string(), Refetched::Gone),
            ("a/b c".to_string(), Refetched::Vms(vec![agent("a/b c-1")])),
            ("ünï".to_string(), Refetched::Vms(vec![agent("ünï-1")])),
            ("100%".to_string(), Refetched::Vms(vec![agent("100%-1")])),
            ("a".to_string(), Refetched::Vms(vec![agent("a-1")])),
        ],
        "answers in the order asked"
    );
    let mut paths: Vec<String> = director.requests().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/deployments/%C3%BCn%C3%AF/vms",
            "/deployments/100%25/vms",
            "/deployments/a%2Fb%20c/vms",
            "/deployments/a/vms",
            "/deployments/c/vms",
            "/deployments/gone/vms",
        ],
        "just the named /vms: no /info, no listing"
    );
    assert_eq!(h.requests("vms", "404"), 1);

    director.reset_stats();
    assert!(h.client.refetch(&[]).await.expect("nothing").is_empty());
    assert!(director.requests().is_empty(), "no names, no request");

    let err = h
        .client
        .refetch(&["a".to_string(), "..".to_string()])
        .await
        .expect_err("'..' sent");
    assert!(
        matches!(
            err,
            Error::Decode {
                endpoint: "events",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"..\""), "{err}");

    director.set_vms_fault("b", Fault::status(500));
    let err = h
        .client
        .refetch(&["a".to_string(), "b".to_string()])
        .await
        .expect_err("500 taken as an answer");
    assert!(
        matches!(
            err,
            Error::Status {
                endpoint: "vms",
                status: 500,
                ..
            }
        ),
        "{err}"
    );
    director.set_vms_fault("b", Fault::status(403));
    let err = h
        .client
        .refetch(&["b".to_string()])
        .await
        .expect_err("403 taken as gone");
    assert_eq!(err.reason(), "unauthorized");
}

#[tokio::test]
async fn refetch_keeps_to_the_concurrency_limit() {
    let env = Env::new();
    let director = env.basic_director().await;
    let names: Vec<String> = (0..8).map(|i| format!("dep-{i}")).collect();
    for name in &names {
        director.set_deployment(name, vec![SimVm::agent(name)]);
    }
    director.set_fault(Endpoint::Vms, Fault::delay(Duration::from_millis(150)));
    let mut settings = env.settings(&director.url());
    settings.max_concurrency = 3;
    let h = client(settings);
    let answers = h.client.refetch(&names).await.expect("refetch");
    assert_eq!(answers.len(), 8);
    let max = director.max_concurrent_vms();
    assert!(max <= 3 && max > 1, "{max} in flight with a limit of 3");
}

/// The pass spawns these futures, so they must be `Send` (a compile-time check).
#[allow(dead_code)]
fn the_watch_reads_are_send(client: &Client, names: &[String]) {
    fn send<T: Send>(_: T) {}
    send(client.events(EventsQuery::default()));
    send(client.deployment_names());
    send(client.refetch(names));
    send(client.fetch_view());
    send(client.fetch_vms());
}
