//! The fake director and UAA answer like the real ones, over HTTPS trusting the test CA.

use std::time::Duration;

use serde_json::{Value, json};
use sim::director::{DirectorConfig, DirectorSim, Endpoint, Vm};
use sim::fault::Fault;
use sim::pki::Pki;
use sim::uaa::{ClientAuth, UaaConfig, UaaSim};

fn client(pki: &Pki) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client_config())
        .build()
        .unwrap()
}

async fn basic_director(pki: &Pki) -> DirectorSim {
    DirectorSim::start(DirectorConfig::basic("admin", "pw").with_tls(pki.server_config().unwrap()))
        .await
        .unwrap()
}

#[tokio::test]
async fn basic_mode_endpoints() {
    let pki = Pki::generate().unwrap();
    let director = basic_director(&pki).await;
    assert!(director.url().starts_with("https://127.0.0.1:"));
    director.set_deployment(
        "cf",
        vec![
            Vm::agent("a1"),
            Vm::creating(),
            Vm::agent("a2").permanent(true),
        ],
    );
    director.set_deployment("zookeeper", vec![]);
    let http = client(&pki);

    let info: Value = http
        .get(format!("{}/info", director.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["user_authentication"],
        json!({"type": "basic", "options": {}})
    );
    assert_eq!(info["version"], "280.0.0 (00000000)");
    assert_eq!(info["user"], Value::Null);
    let as_admin: Value = http
        .get(format!("{}/info", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_admin["user"], "admin", "valid credentials name the user");

    let unauth = http
        .get(format!("{}/deployments", director.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    assert!(unauth.headers().contains_key("www-authenticate"));
    assert_eq!(
        unauth.text().await.unwrap(),
        "Not authorized: '/deployments'\n"
    );

    let wrong = http
        .get(format!("{}/deployments", director.url()))
        .basic_auth("admin", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let full: Value = http
        .get(format!("{}/deployments", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full[0]["name"], "cf");
    assert_eq!(full[1]["name"], "zookeeper");
    assert!(full[0].get("releases").is_some() && full[0].get("cloud_config").is_some());

    let slim: Value = http
        .get(format!(
            "{}/deployments?exclude_configs=true&exclude_releases=true&exclude_stemcells=true&exclude_lock=true",
            director.url()
        ))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        slim,
        json!([{"name": "cf", "teams": []}, {"name": "zookeeper", "teams": []}])
    );
    let queries = director.deployments_queries();
    assert_eq!(
        queries.last().unwrap(),
        "exclude_configs=true&exclude_releases=true&exclude_stemcells=true&exclude_lock=true"
    );

    let vms: Value = http
        .get(format!("{}/deployments/cf/vms", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vms[0]["agent_id"], "a1");
    assert_eq!(vms[0]["permanent_nats_credentials"], false);
    assert_eq!(vms[1]["agent_id"], Value::Null);
    assert_eq!(vms[2]["permanent_nats_credentials"], true);
    for key in [
        "cid",
        "job",
        "index",
        "id",
        "az",
        "ips",
        "vm_created_at",
        "active",
    ] {
        assert!(vms[0].get(key).is_some(), "missing {key}");
    }

    let missing = http
        .get(format!("{}/deployments/gone/vms", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"code": 70000, "description": "Deployment 'gone' doesn't exist"})
    );

    assert_eq!(director.request_count(Endpoint::Deployments), 4);
    assert_eq!(director.status_count(Endpoint::Deployments, 401), 2);
    assert_eq!(director.status_count(Endpoint::Vms, 404), 1);
    assert_eq!(director.status_count(Endpoint::Info, 200), 2);
}

#[tokio::test]
async fn deployment_deleted_between_list_and_vms() {
    let pki = Pki::generate().unwrap();
    let director = basic_director(&pki).await;
    director.set_deployment("ephemeral", vec![Vm::agent("a1")]);
    director.delete_after_next_list("ephemeral");
    let http = client(&pki);
    let list: Value = http
        .get(format!("{}/deployments", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "ephemeral");
    let vms = http
        .get(format!("{}/deployments/ephemeral/vms", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(vms.status(), 404);
}

#[tokio::test]
async fn faults() {
    let pki = Pki::generate().unwrap();
    let director = basic_director(&pki).await;
    director.set_deployment("cf", vec![Vm::agent("a1"), Vm::agent("a2")]);
    let http = client(&pki);
    let get = |path: &str| {
        http.get(format!("{}{path}", director.url()))
            .basic_auth("admin", Some("pw"))
            .send()
    };

    director.set_fault(Endpoint::Deployments, Fault::status(500).times(1));
    assert_eq!(get("/deployments").await.unwrap().status(), 500);
    assert_eq!(get("/deployments").await.unwrap().status(), 200);

    director.set_fault(Endpoint::Vms, Fault::invalid_json());
    let body = get("/deployments/cf/vms")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err());

    director.set_fault(Endpoint::Vms, Fault::reset_mid_body());
    let response = get("/deployments/cf/vms").await.unwrap();
    assert!(
        response.bytes().await.is_err(),
        "a reset mid-body must fail the body read"
    );

    director.set_fault(Endpoint::Vms, Fault::oversized(80 * 1024 * 1024));
    let response = get("/deployments/cf/vms").await.unwrap();
    assert_eq!(response.content_length(), Some(80 * 1024 * 1024));
    let mut response = response;
    let mut total = 0usize;
    while let Some(chunk) = response.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, 80 * 1024 * 1024);

    director.clear_fault(Endpoint::Vms);
    director.set_vms_fault("cf", Fault::status(404));
    let response = get("/deployments/cf/vms").await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 70000);
    director.clear_faults();
    assert_eq!(get("/deployments/cf/vms").await.unwrap().status(), 200);

    director.set_fault(Endpoint::Info, Fault::status(401));
    let response = http
        .get(format!("{}/info", director.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn stalled_requests_do_not_block_others_and_concurrency_is_measured() {
    let pki = Pki::generate().unwrap();
    let director = basic_director(&pki).await;
    director.set_deployment("slow", vec![Vm::agent("a1")]);
    director.set_deployment("fast", vec![Vm::agent("a2")]);
    director.set_vms_fault("slow", Fault::delay(Duration::from_secs(3600)));
    let http = client(&pki);
    let slow_url = format!("{}/deployments/slow/vms", director.url());
    let stalled = tokio::spawn({
        let http = http.clone();
        async move {
            http.get(slow_url)
                .basic_auth("admin", Some("pw"))
                .send()
                .await
        }
    });
    // Wait until the stalled request is in the handler before issuing the fast one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while director.max_concurrent_vms() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fast = http
        .get(format!("{}/deployments/fast/vms", director.url()))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.status(), 200);
    assert_eq!(director.max_concurrent_vms(), 2);
    assert!(!stalled.is_finished());
    stalled.abort();
}

#[tokio::test]
async fn down_refuses_connections_and_up_serves_on_the_same_port() {
    let pki = Pki::generate().unwrap();
    let director = basic_director(&pki).await;
    let http = client(&pki);
    let url = format!("{}/info", director.url());
    director.set_down(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match http.get(&url).send().await {
            Err(e) if e.is_connect() => break,
            _ => {
                assert!(tokio::time::Instant::now() < deadline, "port never closed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    director.set_down(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match http.get(&url).send().await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break;
            }
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "port never reopened"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let pki = Pki::generate().unwrap();
    let director = basic_director(&pki).await;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(pki.other_ca.client_config())
        .build()
        .unwrap();
    let err = http
        .get(format!("{}/info", director.url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn uaa_mode() {
    let pki = Pki::generate().unwrap();
    let uaa =
        UaaSim::start(UaaConfig::new("nats-sync", "s3cret").with_tls(pki.server_config().unwrap()))
            .await
            .unwrap();
    let director = DirectorSim::start(
        DirectorConfig::uaa(uaa.director_auth()).with_tls(pki.server_config().unwrap()),
    )
    .await
    .unwrap();
    director.set_deployment("cf", vec![Vm::agent("a1")]);
    let http = client(&pki);

    let info: Value = http
        .get(format!("{}/info", director.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["user_authentication"]["type"], "uaa");
    assert_eq!(info["user_authentication"]["options"]["url"], uaa.url());
    assert_eq!(
        info["user_authentication"]["options"]["urls"],
        json!([uaa.url()])
    );

    let token_url = format!("{}/oauth/token", uaa.url());
    let bad = http
        .post(&token_url)
        .basic_auth("nats-sync", Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(uaa.tokens_issued(), 0);

    let token: Value = http
        .post(&token_url)
        .basic_auth("nats-sync", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 43_199);
    assert_eq!(token["scope"], "bosh.admin");
    assert!(token["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(uaa.tokens_issued(), 1);
    assert_eq!(
        uaa.requests().last().unwrap().client_auth,
        ClientAuth::Basic
    );
    let access = token["access_token"].as_str().unwrap().to_owned();

    let ok = http
        .get(format!("{}/deployments/cf/vms", director.url()))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let basic = http
        .get(format!("{}/deployments", director.url()))
        .basic_auth("nats-sync", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(
        basic.headers()["www-authenticate"],
        "Basic realm=\"BOSH Director\"",
        "the director's challenge is basic in UAA mode too"
    );

    uaa.set_algorithm(sim::uaa::Algorithm::RS512);
    let form_token: Value = http
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nats-sync"),
            ("client_secret", "s3cret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(uaa.requests().last().unwrap().client_auth, ClientAuth::Form);
    let rs512 = form_token["access_token"].as_str().unwrap();
    let ok = http
        .get(format!("{}/deployments", director.url()))
        .bearer_auth(rs512)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    uaa.set_sign_with_wrong_key(true);
    let forged = uaa.issue_token().unwrap();
    let rejected = http
        .get(format!("{}/deployments", director.url()))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 401);
    uaa.set_sign_with_wrong_key(false);

    uaa.set_expires_in(-1);
    let expired = uaa.issue_token().unwrap();
    let rejected = http
        .get(format!("{}/deployments", director.url()))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 401);

    uaa.set_fault(Fault::status(500).times(1));
    let failed = http
        .post(&token_url)
        .basic_auth("nats-sync", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
}
