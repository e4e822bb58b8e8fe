//! `bosh-nats-sync -c FILE init` (contract §12.3): the auth file nats-server starts with,
//! started by the real nats-server (`$NATS_SERVER`; `scripts/test` runs this file under
//! 2.9.10, 2.14.5 and 2.15.1) with TLS `verify_and_map`, and real certificates.
//!
//! - File mode: the director, the health monitor and the agents of an existing users config
//!   are admitted; a placeholder gives the components only.
//! - Callout mode (2.10 and later): with no responder, the static users connect and an agent
//!   waits out the authorization timeout and is refused; the service's own certificate is
//!   matched to its user in the system account, may take the authorization requests and
//!   answer them, list every connection (CONNZ, paged) and close an agent's (KICK) — all that
//!   revocation (§12.6) needs — and may neither publish to an agent nor subscribe to
//!   everything.
//! - Callout mode on 2.9.10: the server refuses to start with the file, and the start-up check
//!   of `/varz` says why.
//! - What cannot work is refused with exit status 2 and one line naming the file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bosh_nats_sync::callout::admitted::AdmittedSet;
use bosh_nats_sync::callout::connz::{self, Gather, Kicked};
use bosh_nats_sync::callout::keys::{CurveKey, IssuerKey, Keys};
use bosh_nats_sync::callout::request::{self, SERVER_XKEY_HEADER};
use bosh_nats_sync::callout::revoke::{self, AdmittedBy};
use bosh_nats_sync::callout::server_version;
use bosh_nats_sync::callout::{UserTtl, decide, reply, unix_now};
use bosh_nats_sync::pass::desired::{self, Subjects};
use bosh_nats_sync::vm::Vm;
use futures::StreamExt;
use sim::nats::{NatsClient, NatsError, NatsServer, Permission};
use sim::pki::{CertFiles, Pki, agent_cn, bootstrap_agent_cn, bosh_subject};
use tempfile::TempDir;

use common::{DIRECTOR_CN, HM_CN, binary, nats_server_path};

/// The service's certificate: a subject of its own, as BOSH would issue it.
const SERVICE_CN: &str = "default.nats-sync.bosh-internal";
/// The placeholder BOSH's pre-start writes.
const PLACEHOLDER: &str = "{authorization: {token: f0oBar}}\n";

/// One test's files: a PKI, subject files, the service's certificate, seeds, a config.
struct World {
    dir: TempDir,
    pki: Pki,
    ca_file: PathBuf,
    auth_file: PathBuf,
    director_subject_file: PathBuf,
    hm_subject_file: PathBuf,
    service: CertFiles,
    issuer_seed_file: PathBuf,
    xkey_seed_file: PathBuf,
    config_path: PathBuf,
    issuer: IssuerKey,
    xkey: CurveKey,
    /// How many nats-servers were started (each gets a directory of its own).
    started: AtomicUsize,
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate().unwrap();
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let ca_file = pki.write_to(&pki_dir).unwrap().ca_cert;
        let service = pki
            .client(SERVICE_CN)
            .unwrap()
            .write_to(&pki_dir, "service")
            .unwrap();
        let director_subject_file = dir.path().join("director-subject");
        let hm_subject_file = dir.path().join("hm-subject");
        std::fs::write(
            &director_subject_file,
            format!("{}\n", bosh_subject(DIRECTOR_CN)),
        )
        .unwrap();
        std::fs::write(&hm_subject_file, format!("{}\n", bosh_subject(HM_CN))).unwrap();
        let (issuer, xkey) = (IssuerKey::generate(), CurveKey::generate());
        let issuer_seed_file = dir.path().join("issuer.seed");
        let xkey_seed_file = dir.path().join("xkey.seed");
        write_mode(&issuer_seed_file, &issuer.seed(), 0o600);
        write_mode(&xkey_seed_file, &xkey.seed(), 0o600);
        let auth_file = dir.path().join("auth.json");
        std::fs::write(&auth_file, PLACEHOLDER).unwrap();
        let config_path = dir.path().join("bosh_nats_sync_config.yml");
        World {
            dir,
            pki,
            ca_file,
            auth_file,
            director_subject_file,
            hm_subject_file,
            service,
            issuer_seed_file,
            xkey_seed_file,
            config_path,
            issuer,
            xkey,
            started: AtomicUsize::new(0),
        }
    }

    /// The BOSH template's keys (a director that is never contacted), then `nats.admission`
    /// and, in callout mode, `nats.callout` (with `xkey_seed_file` when `xkey`).
    fn write_config(&self, admission: &str, xkey: bool) {
        let callout = if admission == "callout" {
            format!(
                "  callout:\n    cert_file: {cert}\n    key_file: {key}\n    ca_file: {ca}\n\
                 \x20   issuer_seed_file: {issuer}\n{xkey}    timeout: 1\n",
                cert = self.service.cert.display(),
                key = self.service.key.display(),
                ca = self.ca_file.display(),
                issuer = self.issuer_seed_file.display(),
                xkey = if xkey {
                    format!("    xkey_seed_file: {}\n", self.xkey_seed_file.display())
                } else {
                    String::new()
                },
            )
        } else {
            String::new()
        };
        let text = format!(
            "---\ndirector:\n  url: https://127.0.0.1:1\n  user: u\n  password: p\n\
             \x20 director_subject_file: {ds}\n  hm_subject_file: {hs}\n\
             intervals:\n  poll_user_sync: 60\n\
             nats:\n  config_file_path: {auth}\n  nats_server_pid_file: {pid}\n\
             \x20 admission: {admission}\n{callout}\
             http:\n  enabled: false\n",
            ds = self.director_subject_file.display(),
            hs = self.hm_subject_file.display(),
            auth = self.auth_file.display(),
            pid = self.dir.path().join("nats.pid").display(),
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// `bosh-nats-sync -c CONFIG init`.
    fn init(&self) -> Output {
        std::process::Command::new(binary())
            .arg("-c")
            .arg(&self.config_path)
            .arg("init")
            .output()
            .unwrap()
    }

    /// `init`, which must succeed; its stdout.
    fn init_ok(&self) -> String {
        let out = self.init();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "init exited {:?}\nstdout: {stdout}\nstderr: {}\nfile:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.auth_text()
        );
        stdout
    }

    fn auth_text(&self) -> String {
        std::fs::read_to_string(&self.auth_file).unwrap_or_default()
    }

    /// Starts the nats-server under test on the auth file, in a directory of its own.
    async fn start_nats(&self) -> Result<NatsServer, NatsError> {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        let dir = self.dir.path().join(format!("nats-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        NatsServer::start_with(&nats_server_path(), &dir, &self.pki, &self.auth_file).await
    }

    fn cert(&self, cn: &str) -> CertFiles {
        let certs = self.dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        self.pki.client(cn).unwrap().write_to(&certs, cn).unwrap()
    }

    async fn connect(
        &self,
        nats: &NatsServer,
        cn: &str,
    ) -> Result<NatsClient, sim::async_nats::ConnectError> {
        nats.connect(&self.cert(cn)).await
    }

    /// Whether nats-server admits `cn`; a refusal must be an authorization violation.
    async fn admitted(&self, nats: &NatsServer, cn: &str) -> bool {
        match self.connect(nats, cn).await {
            Ok(_) => true,
            Err(e) if sim::nats::is_authorization_violation(&e) => false,
            Err(e) => panic!("connecting as {cn} failed for another reason: {e}"),
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `client` has been told `Permissions Violation for <kind> to "<subject>"`.
async fn violation(client: &NatsClient, kind: &str, subject: &str) -> bool {
    let needle = format!("Permissions Violation for {kind} to \"{subject}\"");
    common::poll(Duration::from_secs(5), || {
        let found = client.server_errors().iter().any(|e| e.contains(&needle));
        async move { if found { Ok(()) } else { Err(()) } }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn file_mode_keeps_the_agents_of_the_file_and_nats_server_admits_them() {
    let world = World::new();
    world.write_config("file", false);

    // A placeholder: the components only.
    let out = world.init_ok();
    assert!(
        out.starts_with(&format!(
            "wrote {} (file admission, mode 0644, 2 users)",
            world.auth_file.display()
        )),
        "{out}"
    );
    assert!(out.contains(&bosh_subject(DIRECTOR_CN)), "{out}");
    assert!(
        out.contains("no agents: the existing file is not a users config"),
        "{out}"
    );
    let nats = world.start_nats().await.expect("nats-server starts");
    assert!(world.admitted(&nats, DIRECTOR_CN).await);
    assert!(world.admitted(&nats, HM_CN).await);
    assert!(!world.admitted(&nats, &agent_cn("a1")).await);
    drop(nats);

    // A users config a pass wrote: its agents stay, with the subjects the files hold now
    // (the health monitor's left out here, its file gone).
    let vms = vec![
        Vm {
            agent_id: Some("a1".into()),
            permanent_nats_credentials: true,
        },
        Vm {
            agent_id: Some("b2".into()),
            permanent_nats_credentials: false,
        },
    ];
    let old_director = desired::Subject::parse("C=USA, O=Cloud Foundry, CN=old.director")
        .unwrap()
        .unwrap();
    let written = desired::compute(
        &Subjects {
            director: Some(old_director),
            hm: None,
        },
        vms,
    );
    bosh_nats_sync::authfile::write(&world.auth_file, &written.users).unwrap();
    std::fs::set_permissions(&world.auth_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::remove_file(&world.hm_subject_file).unwrap();
    let out = world.init_ok();
    assert!(
        out.starts_with(&format!(
            "wrote {} (file admission, mode 0640, 4 users)",
            world.auth_file.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("2 agents kept from the existing file (1 with a bootstrap user)"),
        "{out}"
    );
    assert!(
        out.contains("the health monitor is left out: director.hm_subject_file:"),
        "{out}"
    );
    let text = world.auth_text();
    assert!(
        !text.contains("old.director") && !text.contains("\\u"),
        "{text}"
    );

    let nats = world.start_nats().await.expect("nats-server starts");
    for cn in [
        DIRECTOR_CN.to_owned(),
        agent_cn("a1"),
        agent_cn("b2"),
        bootstrap_agent_cn("b2"),
    ] {
        assert!(world.admitted(&nats, &cn).await, "{cn} is admitted");
    }
    for cn in [HM_CN.to_owned(), agent_cn("c3"), bootstrap_agent_cn("a1")] {
        assert!(!world.admitted(&nats, &cn).await, "{cn} is refused");
    }

    // Run again: the file already holds it, and is not touched.
    let before = common::identity(&world.auth_file);
    let out = world.init_ok();
    assert!(out.starts_with("unchanged: "), "{out}");
    assert_eq!(common::identity(&world.auth_file), before);
}

/// Answers every authorization request on the service's connection — admitting the agents in
/// `admitted`, refusing the rest — the way the program does, with the library's answer; how
/// many requests arrived is counted.
async fn respond(
    service: &NatsClient,
    keys: Keys,
    admitted: &'static [&'static str],
) -> Arc<AtomicUsize> {
    let client = service.client().clone();
    let mut requests = client
        .queue_subscribe("$SYS.REQ.USER.AUTH", "bosh-nats-sync".to_owned())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let reply_to = message
                .reply
                .clone()
                .expect("a request carries a reply subject");
            let server_xkey = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SERVER_XKEY_HEADER))
                .map(|v| v.as_str().to_owned());
            let request =
                request::open(&keys, &message.payload, server_xkey.as_deref(), unix_now())
                    .expect("nats-server's request opens and verifies");
            let verdict = decide(&request.claims.nats, |id| {
                admitted.contains(&id.as_str()).then_some(false)
            });
            let answer = reply(&keys, &request, &verdict, UserTtl::DEFAULT, unix_now()).unwrap();
            client.publish(reply_to, answer.into()).await.unwrap();
            client.flush().await.unwrap();
        }
    });
    count
}

/// Callout mode end to end; with `xkey`, nats-server seals its requests, and the health
/// monitor's subject file holds the subject as modern OpenSSL prints it (`subject= C = USA, …`),
/// kept as read (§3.2) in `users` and `auth_users` alike.
async fn callout_mode(xkey: bool) {
    let world = World::new();
    world.write_config("callout", xkey);
    let hm_subject = if xkey {
        let openssl = format!("C = USA, O = Cloud Foundry, CN = {HM_CN}");
        std::fs::write(&world.hm_subject_file, format!("subject= {openssl}\n")).unwrap();
        openssl
    } else {
        bosh_subject(HM_CN)
    };
    let out = world.init_ok();
    let service_subject = world.pki.client(SERVICE_CN).unwrap().subject().to_owned();
    assert!(
        out.starts_with(&format!(
            "wrote {} (callout admission, mode 0644, 3 users)",
            world.auth_file.display()
        )),
        "{out}"
    );
    assert!(out.contains(&service_subject), "{out}");
    assert!(out.contains(&world.issuer.public_key()), "{out}");
    assert_eq!(out.contains(&world.xkey.public_key()), xkey, "{out}");
    assert!(
        !out.contains(world.issuer.seed().as_str()) && !out.contains(world.xkey.seed().as_str())
    );

    // The file: the shape of §12.3, the service's subject read from its
    // certificate exactly as the subject files spell theirs.
    let text = world.auth_text();
    assert!(!text.contains("\\u"), "{text}");
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let callout = &file["authorization"]["auth_callout"];
    assert_eq!(callout["issuer"], world.issuer.public_key());
    assert_eq!(callout["account"], "SYS");
    assert_eq!(
        callout["auth_users"],
        serde_json::json!([bosh_subject(DIRECTOR_CN), hm_subject, service_subject])
    );
    assert_eq!(
        callout.get("xkey").and_then(|x| x.as_str()),
        xkey.then(|| world.xkey.public_key()).as_deref()
    );
    assert_eq!(file["authorization"]["users"][1]["user"], hm_subject);
    assert_eq!(file["authorization"]["timeout"], 1);
    assert_eq!(file["system_account"], "SYS");
    assert_eq!(file["accounts"]["SYS"]["users"][0]["user"], service_subject);

    let started = world.start_nats().await;
    let version = sim::nats::version(&nats_server_path()).unwrap();
    if !sim::nats::has_auth_callout(&version) {
        // 2.9.10: no auth_callout, and it says so by refusing the file.
        match started {
            Err(NatsError::Exited { log, status, .. }) => {
                eprintln!("nats-server {version} refused the callout file ({status}): {log}");
                assert!(
                    log.contains("auth.json:") && log.contains("unknown field \"auth_callout\""),
                    "{log}"
                );
                assert_eq!(status, "exit status: 1");
            }
            other => panic!("nats-server {version} must refuse the callout file: {other:?}"),
        }
        return;
    }
    let nats = started.unwrap_or_else(|e| panic!("nats-server {version} starts: {e}"));

    // No responder: the static users connect; an agent waits out the authorization
    // timeout and is refused.
    assert!(world.admitted(&nats, DIRECTOR_CN).await);
    assert!(world.admitted(&nats, HM_CN).await);
    let asked = Instant::now();
    assert!(!world.admitted(&nats, &agent_cn("a1")).await);
    let waited = asked.elapsed();
    eprintln!("nats-server {version}: with no responder, an agent was refused after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "refused after {waited:?}, before the 1 s authorization timeout"
    );

    // The service's certificate is matched to its user in SYS; it takes the requests and
    // answers them with nothing more than its least permissions.
    let service = nats
        .connect(&world.service)
        .await
        .expect("the service's certificate connects");
    let keys = Keys::from_files(
        &world.issuer_seed_file,
        xkey.then_some(world.xkey_seed_file.as_path()),
    )
    .unwrap();
    let requests = respond(&service, keys, &["a1"]).await;
    let agent = world
        .connect(&nats, &agent_cn("a1"))
        .await
        .expect("the answer admits a1");
    assert!(requests.load(Ordering::SeqCst) >= 1);
    let asked = Instant::now();
    assert!(
        !world.admitted(&nats, &agent_cn("c3")).await,
        "unknown agent"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(900),
        "refused by the answer, not the timeout"
    );
    assert!(!world.admitted(&nats, &bootstrap_agent_cn("a1")).await);

    // The admitted agent lands in $G beside the static users: the director reaches it.
    let director = world.connect(&nats, DIRECTOR_CN).await.unwrap();
    assert_eq!(
        sim::nats::probe_publish(&director, &agent, "agent.a1")
            .await
            .unwrap(),
        Permission::Allowed
    );
    // The service may not publish to an agent, nor subscribe to everything.
    assert_eq!(
        sim::nats::probe_publish(&service, &agent, "agent.a1")
            .await
            .unwrap(),
        Permission::Denied
    );
    service
        .client()
        .publish("agent.x", "x".into())
        .await
        .unwrap();
    service.client().flush().await.unwrap();
    assert!(
        violation(&service, "Publish", "agent.x").await,
        "{:?}",
        service.server_errors()
    );
    let _all = service.client().subscribe(">").await.unwrap();
    service.client().flush().await.unwrap();
    assert!(
        violation(&service, "Subscription", ">").await,
        "{:?}",
        service.server_errors()
    );
    // …and none of that cost it the requests: still answering.
    assert!(world.admitted(&nats, &agent_cn("a1")).await);
    assert!(
        !service
            .server_errors()
            .iter()
            .any(|e| e.contains("$SYS.REQ.USER.AUTH") || e.contains("_INBOX")),
        "{:?}",
        service.server_errors()
    );

    // Revocation (§12.6), through the same connection and nothing more than the same
    // permissions: CONNZ lists every connection with its certificate's subject in
    // nats-server's spelling, static users named as such; a KICK by cid closes the agent.
    let errors_before = service.server_errors().len();
    // The connection `admitted` just dropped may still be closing: wait until nats-server
    // holds a1's held connection alone, so that both observations below see the same.
    let a1_subject = "CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA";
    common::poll(Duration::from_secs(10), || async {
        let connz = nats.connz().await.map_err(|e| e.to_string())?;
        let a1s = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["tls_peer_certs"][0]["subject"].as_str() == Some(a1_subject))
            .count();
        if a1s == 1 {
            Ok(())
        } else {
            Err(format!("{a1s} connections of a1"))
        }
    })
    .await
    .expect("a1's dropped connection closes");
    let observation = connz::observe(service.client(), &Gather::default())
        .await
        .expect("CONNZ answers through the system account");
    assert!(
        observation.incomplete.is_empty(),
        "{:?}",
        observation.incomplete
    );
    assert_eq!(observation.servers.len(), 1);
    let server = observation.servers[0].server.clone();
    let by_subject = |subject: &str| {
        observation.servers[0]
            .connections
            .iter()
            .filter(|c| c.subject.as_deref() == Some(subject))
            .cloned()
            .collect::<Vec<_>>()
    };
    let a1 = by_subject(a1_subject);
    assert_eq!(a1.len(), 1, "{observation:?}");
    assert!(
        a1.iter().all(|c| c.admitted_by == AdmittedBy::Callout),
        "{a1:?}"
    );
    for cn in [DIRECTOR_CN, SERVICE_CN] {
        let statics = by_subject(&format!("CN={cn},O=Cloud Foundry,C=USA"));
        assert!(!statics.is_empty(), "{cn}: {observation:?}");
        assert!(
            statics
                .iter()
                .all(|c| c.admitted_by == AdmittedBy::StaticUser),
            "{cn}: {statics:?}"
        );
    }
    // Paging: a page of one connection at a time sees the same.
    let paged = connz::observe(
        service.client(),
        &Gather {
            page: 1,
            ..Gather::default()
        },
    )
    .await
    .unwrap();
    let seen = |o: &connz::Observation| {
        o.servers[0]
            .connections
            .iter()
            .map(|c| (c.cid, c.subject.clone(), c.admitted_by))
            .collect::<Vec<_>>()
    };
    assert!(paged.incomplete.is_empty(), "{:?}", paged.incomplete);
    assert_eq!(seen(&paged), seen(&observation), "paged one at a time");
    // With a1 taken out of the set, the decision closes a1 and nothing else.
    let decision = revoke::decide(
        &observation.servers,
        &AdmittedSet::default(),
        Duration::from_secs(2),
    );
    assert_eq!(
        decision.kicks.iter().map(|k| k.cid).collect::<Vec<_>>(),
        a1.iter().map(|c| c.cid).collect::<Vec<_>>()
    );
    let held = a1.iter().map(|c| c.cid).min().unwrap();
    assert_eq!(
        connz::kick(service.client(), &server.id, held, Duration::from_secs(2)).await,
        Kicked::Closed
    );
    let gone = connz::observe(service.client(), &Gather::default())
        .await
        .unwrap();
    assert!(
        !gone.servers[0].connections.iter().any(|c| c.cid == held),
        "{gone:?}"
    );
    assert_eq!(
        connz::kick(service.client(), &server.id, held, Duration::from_secs(2)).await,
        Kicked::Gone
    );
    assert_eq!(
        service.server_errors()[errors_before..],
        [] as [String; 0],
        "CONNZ and KICK are within the service's permissions"
    );
    // Still nothing more: no publishing to an agent, no subscribing to everything.
    service
        .client()
        .publish("agent.x", "x".into())
        .await
        .unwrap();
    let _all_again = service.client().subscribe(">").await.unwrap();
    service.client().flush().await.unwrap();
    let refused_again = common::poll(Duration::from_secs(5), || {
        let errors = service.server_errors()[errors_before..].to_vec();
        async move {
            let seen = |needle: &str| errors.iter().any(|e| e.contains(needle));
            if seen("Permissions Violation for Publish to \"agent.x\"")
                && seen("Permissions Violation for Subscription to \">\"")
            {
                Ok(())
            } else {
                Err(errors)
            }
        }
    });
    assert!(refused_again.await.is_ok(), "{:?}", service.server_errors());

    // The start-up check agrees: this server has the callout.
    let checked = server_version::check(&nats.monitoring_url().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(format!("v{checked}"), nats.version());
}

#[tokio::test]
async fn callout_mode_starts_nats_server_and_admits_the_static_users_without_a_responder() {
    callout_mode(false).await;
}

#[tokio::test]
async fn callout_mode_with_an_xkey() {
    callout_mode(true).await;
}

#[tokio::test]
async fn the_start_up_check_refuses_a_server_without_callout() {
    let world = World::new();
    world.write_config("file", false);
    world.init_ok();
    let nats = world.start_nats().await.expect("nats-server starts");
    let checked = server_version::check(&nats.monitoring_url().parse().unwrap()).await;
    if nats.has_auth_callout() {
        assert_eq!(format!("v{}", checked.unwrap()), nats.version());
    } else {
        let e = checked.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "nats-server {} has no auth callout (2.10 or later needed)",
                nats.version().trim_start_matches('v')
            )
        );
        assert_eq!(nats.version(), "v2.9.10");
    }
}

#[test]
fn init_refuses_what_cannot_work_naming_the_file() {
    let world = World::new();
    world.write_config("callout", true);
    let refused = |what: &str, needles: &[&str]| {
        let out = world.init();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(err.starts_with("bosh-nats-sync: init: "), "{what}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: {needle:?} in {err}");
        }
        assert!(out.stdout.is_empty(), "{what}");
        assert_eq!(world.auth_text(), PLACEHOLDER, "{what}: nothing written");
        assert!(!err.contains(world.issuer.seed().as_str()));
    };

    // A seed file others may read.
    std::fs::set_permissions(
        &world.issuer_seed_file,
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let issuer = world.issuer_seed_file.display().to_string();
    refused(
        "a 0644 seed",
        &[
            "nats.callout.issuer_seed_file",
            &issuer,
            "0644",
            "chmod 600",
        ],
    );
    std::fs::set_permissions(
        &world.issuer_seed_file,
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        &world.xkey_seed_file,
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let xkey = world.xkey_seed_file.display().to_string();
    refused(
        "a 0640 xkey seed",
        &["nats.callout.xkey_seed_file", &xkey, "0640"],
    );
    std::fs::set_permissions(
        &world.xkey_seed_file,
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // Unknown subjects: the component could never connect.
    let director = world.director_subject_file.display().to_string();
    std::fs::remove_file(&world.director_subject_file).unwrap();
    refused(
        "no director subject",
        &[
            "director.director_subject_file",
            &director,
            "does not exist",
            "the director could never connect",
        ],
    );
    std::fs::write(&world.director_subject_file, "  \n").unwrap();
    refused("a blank director subject", &[&director, "is blank"]);
    std::fs::write(&world.director_subject_file, bosh_subject(DIRECTOR_CN)).unwrap();
    std::fs::remove_file(&world.hm_subject_file).unwrap();
    refused(
        "no health monitor subject",
        &[
            "director.hm_subject_file",
            "the health monitor could never connect",
        ],
    );
    std::fs::write(&world.hm_subject_file, bosh_subject(HM_CN)).unwrap();

    // A certificate that is none, or that carries the director's subject.
    let certificate = std::fs::read(&world.service.cert).unwrap();
    std::fs::write(&world.service.cert, "not a certificate\n").unwrap();
    let cert = world.service.cert.display().to_string();
    refused(
        "an unreadable certificate",
        &["nats.callout.cert_file", &cert, "holds no PEM certificate"],
    );
    let director_cert = world.pki.client(DIRECTOR_CN).unwrap();
    std::fs::write(&world.service.cert, director_cert.cert_pem()).unwrap();
    refused(
        "the director's certificate",
        &["nats.callout.cert_file", "the director's subject"],
    );
    std::fs::write(&world.service.cert, certificate).unwrap();

    // All well: written, mode 0644 kept from the placeholder's.
    std::fs::set_permissions(&world.auth_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    world.init_ok();
    assert!(world.auth_text().contains("auth_callout"));

    // A file that cannot be written: status 1, naming it.
    let mut text = std::fs::read_to_string(&world.config_path).unwrap();
    let elsewhere = world.dir.path().join("no-such-dir").join("auth.json");
    text = text.replace(
        &world.auth_file.display().to_string(),
        &elsewhere.display().to_string(),
    );
    std::fs::write(&world.config_path, text).unwrap();
    let out = world.init();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&elsewhere.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
}
