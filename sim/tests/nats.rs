//! A real nats-server with verify_and_map: listed certificates connect with their permissions,
//! others are refused — and every fact the program relies on about nats-server (docs/contract.md
//! §4.1, §5.2, §11), checked against whichever server `$NATS_SERVER` names (`scripts/test` runs
//! this file under 2.9.10, 2.14.5 and 2.15.1; each test's output starts with the version).

use std::time::Duration;

use sim::nats::{
    NatsError, NatsServer, Permission, is_authorization_violation, probe_publish, probe_subscribe,
};
use sim::pki::{DIRECTOR_CN, Pki, agent_cn, bosh_subject};

fn auth_file(users: &[(&str, &[&str], &[&str])]) -> String {
    let users: Vec<serde_json::Value> = users
        .iter()
        .map(|(user, publish, subscribe)| {
            serde_json::json!({"user": user, "permissions": {"publish": publish, "subscribe": subscribe}})
        })
        .collect();
    serde_json::json!({"authorization": {"users": users}}).to_string()
}

/// A server started on the BOSH pre-start placeholder `{authorization: {token: f0oBar}}`:
/// its directory, the PKI, the auth file.
async fn with_the_bosh_placeholder() -> (tempfile::TempDir, Pki, std::path::PathBuf, NatsServer) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, "{authorization: {token: f0oBar}}").unwrap();
    let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
    (dir, pki, auth, nats)
}

#[tokio::test]
async fn verify_and_map_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let agent = bosh_subject(&agent_cn("a1"));
    let director = bosh_subject(DIRECTOR_CN);
    let auth = dir.path().join("auth.json");
    std::fs::write(
        &auth,
        auth_file(&[
            (
                &agent,
                &["hm.agent.heartbeat.a1", "director.*.a1.*"],
                &["agent.a1"],
            ),
            (
                &director,
                &["agent.*"],
                &["director.>", "hm.agent.heartbeat.*"],
            ),
        ]),
    )
    .unwrap();
    let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
    assert!(nats.client_url().starts_with("tls://127.0.0.1:"));
    assert!(nats.pid_file().exists());

    let agent_files = pki
        .client(&agent_cn("a1"))
        .unwrap()
        .write_to(dir.path(), "a1")
        .unwrap();
    let director_files = pki
        .client(DIRECTOR_CN)
        .unwrap()
        .write_to(dir.path(), "director")
        .unwrap();
    let agent_client = nats.connect(&agent_files).await.unwrap();
    let director_client = nats.connect(&director_files).await.unwrap();

    assert_eq!(
        probe_publish(&agent_client, &director_client, "hm.agent.heartbeat.a1")
            .await
            .unwrap(),
        Permission::Allowed
    );
    assert_eq!(
        probe_publish(&agent_client, &director_client, "hm.agent.heartbeat.a2")
            .await
            .unwrap(),
        Permission::Denied
    );
    assert_eq!(
        probe_publish(&agent_client, &director_client, "director.x.a1.y")
            .await
            .unwrap(),
        Permission::Allowed
    );
    assert_eq!(
        probe_subscribe(&agent_client, &director_client, "agent.a1")
            .await
            .unwrap(),
        Permission::Allowed
    );
    assert_eq!(
        probe_subscribe(&agent_client, &director_client, "agent.a2")
            .await
            .unwrap(),
        Permission::Denied
    );
    // The observer itself may not subscribe to this subject: no false "denied".
    let err = probe_publish(&director_client, &agent_client, "agent.zzz")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "inconclusive", "{err}");
    assert!(
        agent_client
            .server_errors()
            .iter()
            .any(|e| e.contains("Permissions Violation for Publish to \"hm.agent.heartbeat.a2\"")),
        "{:?}",
        agent_client.server_errors()
    );

    // A certificate of the right CA whose subject is not listed is refused.
    let stranger = pki
        .client(&agent_cn("a2"))
        .unwrap()
        .write_to(dir.path(), "a2")
        .unwrap();
    let err = nats.connect(&stranger).await.unwrap_err();
    assert!(is_authorization_violation(&err), "{err:?}");

    // A listed subject from another CA is refused during the handshake.
    let forged = pki
        .other_ca
        .client_cert(&agent_cn("a1"))
        .unwrap()
        .write_to(dir.path(), "forged")
        .unwrap();
    assert!(nats.connect(&forged).await.is_err());
}

#[tokio::test]
async fn reload_is_visible_in_config_load_time_and_bad_files_are_kept_out() {
    let (dir, pki, auth, nats) = with_the_bosh_placeholder().await;
    let agent_files = pki
        .client(&agent_cn("a1"))
        .unwrap()
        .write_to(dir.path(), "a1")
        .unwrap();
    // The BOSH placeholder holds no users: every certificate is refused.
    assert!(nats.connect(&agent_files).await.is_err());

    let before = nats.config_load_time().await.unwrap();
    let agent = bosh_subject(&agent_cn("a1"));
    std::fs::write(&auth, auth_file(&[(&agent, &["x"], &["agent.a1"])])).unwrap();
    // The pid file works with the reload command the BOSH job's programs use.
    let signal = std::process::Command::new(nats.executable())
        .arg("--signal")
        .arg(format!("reload={}", nats.pid_file().display()))
        .output()
        .unwrap();
    assert!(signal.status.success(), "{signal:?}");
    let after = nats
        .wait_for_reload(&before, Duration::from_secs(10))
        .await
        .unwrap();
    // Read once the good file is loaded: before that, the signal's reload may or may not have
    // happened yet.
    let digest_before = nats.config_digest().await.unwrap();
    nats.connect(&agent_files).await.unwrap();

    // An unparseable file: the signal is accepted, the configuration is not.
    std::fs::write(
        &auth,
        r#"{"authorization": {"users": [{"user": "\u003e"}]}}"#,
    )
    .unwrap();
    // `--signal reload` still exits 0: only /varz tells.
    let signal = std::process::Command::new(nats.executable())
        .arg("--signal")
        .arg(format!("reload={}", nats.pid_file().display()))
        .output()
        .unwrap();
    assert!(signal.status.success(), "{signal:?}");
    let err = nats
        .wait_for_reload(&after, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::ReloadTimeout(_)));
    assert_eq!(
        nats.config_digest().await.unwrap(),
        digest_before,
        "a rejected reload leaves the digest alone"
    );
    assert!(
        nats.connect(&agent_files).await.is_ok(),
        "the old users stay"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !nats.log().contains("Invalid escape character 'u'") {
        assert!(tokio::time::Instant::now() < deadline, "{}", nats.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_missing_or_broken_auth_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let auth = dir.path().join("absent.json");
    let err = NatsServer::start(dir.path(), &pki, &auth)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "exited", "{err}");
    assert!(
        err.to_string().contains("error parsing include file"),
        "{err}"
    );

    std::fs::write(&auth, "garbage {{").unwrap();
    let err = NatsServer::start(dir.path(), &pki, &auth)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "exited", "{err}");

    let err = NatsServer::start_with(
        std::path::Path::new("/nonexistent/nats-server"),
        dir.path(),
        &pki,
        &auth,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "not_installed");
    assert!(err.to_string().contains("apt-get install nats-server"));
}

#[tokio::test]
async fn include_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let auth_dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let auth = auth_dir.path().join("auth.json");
    std::fs::write(&auth, "{}").unwrap();
    let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
    let config = std::fs::read_to_string(nats.config_file()).unwrap();
    assert!(config.contains("include \"../"), "{config}");
}

/// Danger worth knowing: with no users at all, verify_and_map admits every certificate the CA
/// signed, with no permission limits (the BOSH placeholder `token` config admits none).
#[tokio::test]
async fn an_empty_object_admits_any_certificate_of_the_ca_without_limits() {
    for contents in ["{}", "", r#"{"authorization": {"users": []}}"#] {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate().unwrap();
        let auth = dir.path().join("auth.json");
        std::fs::write(&auth, contents).unwrap();
        let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
        let anyone = pki
            .client("anyone")
            .unwrap()
            .write_to(dir.path(), "anyone")
            .unwrap();
        let other = pki
            .client("other")
            .unwrap()
            .write_to(dir.path(), "other")
            .unwrap();
        let anyone = nats.connect(&anyone).await.unwrap();
        let other = nats.connect(&other).await.unwrap();
        let outcome = probe_publish(&anyone, &other, "agent.whatever")
            .await
            .unwrap();
        assert_eq!(outcome, Permission::Allowed, "auth file {contents:?}");
    }
}

/// nats-server 2.9.10 matches the BOSH spelling `C=USA, O=…, CN=…`, the OpenSSL spelling
/// `C = USA, O = …, CN = …` and the RFC 2253 spelling `CN=…,O=…,C=USA` of the same subject.
#[tokio::test]
async fn all_three_spellings_of_the_subject_match() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let auth = dir.path().join("auth.json");
    let bosh = bosh_subject(&agent_cn("a1"));
    let openssl = format!("C = USA, O = Cloud Foundry, CN = {}", agent_cn("a2"));
    let rfc2253 = format!("CN={},O=Cloud Foundry,C=USA", agent_cn("a3"));
    let director = bosh_subject(DIRECTOR_CN);
    std::fs::write(
        &auth,
        auth_file(&[
            (&bosh, &["x.a1"], &[]),
            (&openssl, &["x.a2"], &[]),
            (&rfc2253, &["x.a3"], &[]),
            (&director, &[], &["x.>"]),
        ]),
    )
    .unwrap();
    let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
    let d = pki
        .client(DIRECTOR_CN)
        .unwrap()
        .write_to(dir.path(), "d")
        .unwrap();
    let d = nats.connect(&d).await.unwrap();
    for id in ["a1", "a2", "a3"] {
        let files = pki
            .client(&agent_cn(id))
            .unwrap()
            .write_to(dir.path(), id)
            .unwrap();
        let client = nats
            .connect(&files)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let own = probe_publish(&client, &d, &format!("x.{id}"))
            .await
            .unwrap();
        assert_eq!(own, Permission::Allowed, "{id}");
        let other = probe_publish(&client, &d, "x.other").await.unwrap();
        assert_eq!(other, Permission::Denied, "{id}");
    }
}

/// A reload that drops a user closes that user's open connections.
#[tokio::test]
async fn removing_a_user_disconnects_it_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let auth = dir.path().join("auth.json");
    let agent = bosh_subject(&agent_cn("a1"));
    let director = bosh_subject(DIRECTOR_CN);
    std::fs::write(
        &auth,
        auth_file(&[
            (&agent, &["x.>"], &["agent.a1"]),
            (&director, &["agent.*"], &[]),
        ]),
    )
    .unwrap();
    let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
    let a1 = pki
        .client(&agent_cn("a1"))
        .unwrap()
        .write_to(dir.path(), "a1")
        .unwrap();
    let client = nats.connect(&a1).await.unwrap();
    std::fs::write(&auth, auth_file(&[(&director, &["agent.*"], &[])])).unwrap();
    let before = nats.config_load_time().await.unwrap();
    nats.reload().unwrap();
    nats.wait_for_reload(&before, Duration::from_secs(10))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.client().connection_state() == async_nats::connection::State::Connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected after the reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(nats.connect(&a1).await.is_err());
}

/// SIGHUP to the pid the server wrote into its pid file (what the sidecar does, with no
/// nats-server binary of its own) reloads it.
#[tokio::test]
async fn sighup_to_the_pid_in_the_pid_file_reloads() {
    let (dir, pki, auth, nats) = with_the_bosh_placeholder().await;
    let pid: i32 = std::fs::read_to_string(nats.pid_file())
        .unwrap()
        .trim()
        .parse()
        .expect("the pid file holds a pid");
    assert_eq!(pid as u32, nats.pid());
    let agent = bosh_subject(&agent_cn("a1"));
    std::fs::write(&auth, auth_file(&[(&agent, &["x"], &["agent.a1"])])).unwrap();
    let before = nats.config_load_time().await.unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    nats.wait_for_reload(&before, Duration::from_secs(10))
        .await
        .unwrap();
    let files = pki
        .client(&agent_cn("a1"))
        .unwrap()
        .write_to(dir.path(), "a1")
        .unwrap();
    nats.connect(&files).await.unwrap();
}

/// `/varz` `config_digest` (docs/contract.md §5.2): published from 2.14 on (2.14.5 and 2.15.1
/// here), not by 2.9.10. It is a digest of the loaded configuration with included files
/// resolved: a changed user changes it, a whitespace-only rewrite does not, and an accepted
/// reload of the same content keeps it while `config_load_time` still advances.
#[tokio::test]
async fn config_digest_follows_the_loaded_users_where_the_server_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate().unwrap();
    let auth = dir.path().join("auth.json");
    let a1 = bosh_subject(&agent_cn("a1"));
    let a2 = bosh_subject(&agent_cn("a2"));
    std::fs::write(&auth, auth_file(&[(&a1, &["x"], &["agent.a1"])])).unwrap();
    let nats = NatsServer::start(dir.path(), &pki, &auth).await.unwrap();
    let version = nats.version().to_owned();
    let minor: u32 = version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("a version like v2.14.5: {version}"));
    let Some(first) = nats.config_digest().await.unwrap() else {
        assert!(minor < 14, "{version} publishes no config_digest");
        return;
    };
    assert!(minor >= 14, "{version} publishes config_digest {first}");

    let reload = |what: &'static str| {
        let nats = &nats;
        async move {
            let before = nats.config_load_time().await.unwrap();
            nats.reload().unwrap();
            nats.wait_for_reload(&before, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            nats.config_digest().await.unwrap().unwrap()
        }
    };
    assert_eq!(reload("the same file").await, first, "{version}");
    let spaced = serde_json::to_string_pretty(
        &serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&auth).unwrap())
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&auth, spaced).unwrap();
    assert_eq!(reload("whitespace only").await, first, "{version}");
    std::fs::write(
        &auth,
        auth_file(&[(&a1, &["x"], &["agent.a1"]), (&a2, &["x"], &[])]),
    )
    .unwrap();
    let second = reload("a user added").await;
    assert_ne!(second, first, "{version}");
    std::fs::write(
        &auth,
        auth_file(&[(&a1, &["x", "y"], &["agent.a1"]), (&a2, &["x"], &[])]),
    )
    .unwrap();
    assert_ne!(reload("a permission added").await, second, "{version}");
}

/// An absolute `include` path is joined onto the including file's directory (which is why the
/// launcher and the Helm chart write a relative one): `/x/auth.json` included from `DIR/n.conf`
/// opens `DIR/x/auth.json`.
#[tokio::test]
async fn an_absolute_include_is_resolved_against_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, "{}").unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("n.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:-1\"\ninclude {:?}\n",
            auth.display().to_string()
        ),
    )
    .unwrap();
    let exe = sim::nats::executable();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(&exe)
            .arg("-c")
            .arg(&config)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("nats-server exits")
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{} started: {text}", exe.display());
    let joined = etc.join(auth.strip_prefix("/").unwrap());
    assert!(
        text.contains("error parsing include file") && text.contains(&*joined.to_string_lossy()),
        "{}: {text}",
        exe.display()
    );
}

/// A stopped server started again listens where it did (clients and the program find it at
/// the same URLs), on the same configuration, its log going on in the same file.
#[tokio::test]
async fn a_server_started_again_listens_on_the_same_ports() {
    let (_dir, _pki, _auth, mut nats) = with_the_bosh_placeholder().await;
    let (client_url, monitoring_url, pid) = (
        nats.client_url().to_owned(),
        nats.monitoring_url().to_owned(),
        nats.pid(),
    );
    nats.stop().await;
    assert!(nats.varz().await.is_err(), "stopped");
    nats.start_again().await.unwrap();
    assert_ne!(nats.pid(), pid);
    assert_eq!(nats.client_url(), client_url);
    assert_eq!(nats.monitoring_url(), monitoring_url);
    assert!(nats.varz().await.is_ok());
    assert!(nats.connz().await.is_ok());
    assert_eq!(
        nats.log().matches("Server is ready").count(),
        2,
        "{}",
        nats.log()
    );
}
