//! The simulated director's `GET /events` answers like the real one (§2.5), over HTTPS,
//! and its event-recording changes record what the real director records.

use std::time::Duration;

use serde_json::{Value, json};
use sim::director::{DirectorConfig, DirectorSim, Endpoint, Vm};
use sim::events::NewEvent;
use sim::fault::Fault;
use sim::pki::Pki;
use sim::uaa::{UaaConfig, UaaSim};

struct World {
    director: DirectorSim,
    http: reqwest::Client,
}

impl World {
    async fn start(config: impl FnOnce(DirectorConfig) -> DirectorConfig) -> World {
        let pki = Pki::generate().unwrap();
        let director = DirectorSim::start(config(
            DirectorConfig::basic("admin", "pw").with_tls(pki.server_config().unwrap()),
        ))
        .await
        .unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(pki.client_config())
            .build()
            .unwrap();
        World { director, http }
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path_and_query}", self.director.url()))
            .basic_auth("admin", Some("pw"))
            .send()
            .await
            .unwrap()
    }

    /// `GET path` answered 200 with a JSON array; the array.
    async fn list(&self, path_and_query: &str) -> Vec<Value> {
        let response = self.get(path_and_query).await;
        assert_eq!(response.status(), 200, "{path_and_query}");
        match response.json::<Value>().await.unwrap() {
            Value::Array(items) => items,
            other => panic!("{path_and_query} answered {other}"),
        }
    }

    /// The ids `GET /events?query` answers, as numbers, in the order sent.
    async fn ids(&self, query: &str) -> Vec<u64> {
        self.list(&format!("/events{query}"))
            .await
            .iter()
            .map(|e| {
                e["id"]
                    .as_str()
                    .expect("ids are strings")
                    .parse()
                    .expect("ids hold integers")
            })
            .collect()
    }
}

fn lock_event() -> NewEvent {
    NewEvent::new("acquire", "lock").object_name("lock:release:bosh-dns")
}

#[tokio::test]
async fn newest_first_at_most_200_paged_back_with_before_id() {
    let w = World::start(|c| c).await;
    for _ in 0..450 {
        w.director.record_event(lock_event());
    }
    let first = w.ids("").await;
    assert_eq!(first, (251..=450).rev().collect::<Vec<_>>());
    let second = w.ids("?before_id=251").await;
    assert_eq!(second, (51..=250).rev().collect::<Vec<_>>());
    let third = w.ids("?before_id=51").await;
    assert_eq!(third, (1..=50).rev().collect::<Vec<_>>());
    assert!(w.ids("?before_id=1").await.is_empty());
    // Ruby's `to_i`: leading digits count, none means 0, which matches nothing.
    assert_eq!(w.ids("?before_id=3abc").await, [2, 1]);
    assert!(w.ids("?before_id=abc").await.is_empty());
    assert!(w.ids("?before_id=").await.is_empty());
    assert_eq!(w.ids("?before_id=99999999999999999999999").await.len(), 200);
    assert_eq!(w.director.last_event_id(), Some(450));
}

#[tokio::test]
async fn after_time_is_strictly_after_the_second_and_bad_times_are_400() {
    let w = World::start(|c| c).await;
    let t = 1_700_000_000;
    for (at, count) in [(t, 3), (t + 1, 2), (t + 2, 1)] {
        w.director.set_time(Some(at));
        for _ in 0..count {
            w.director.record_event(lock_event());
        }
    }
    assert_eq!(w.director.now(), t + 2);
    assert_eq!(w.ids(&format!("?after_time={}", t - 1)).await.len(), 6);
    assert_eq!(w.ids(&format!("?after_time={t}")).await, [6, 5, 4]);
    assert_eq!(w.ids(&format!("?after_time={}", t + 1)).await, [6]);
    assert!(w.ids(&format!("?after_time={}", t + 2)).await.is_empty());
    // A time string names the same second: 1700000000 is 2023-11-14T22:13:20Z.
    assert_eq!(w.ids("?after_time=2023-11-14T22:13:20Z").await, [6, 5, 4]);
    assert_eq!(w.ids(&format!("?before_time={}", t + 1)).await, [3, 2, 1]);
    assert_eq!(w.ids(&format!("?after_time={t}&before_id=6")).await, [5, 4]);
    assert_eq!(
        w.ids(&format!("?after_time={}&before_time={}", t - 1, t + 2))
            .await,
        [5, 4, 3, 2, 1]
    );

    for (query, body) in [
        ("after_time=soon", "Invalid after parameter: 'soon' "),
        ("after_time=", "Invalid after parameter: '' "),
        (
            "before_time=2023-13-01",
            "Invalid before parameter: '2023-13-01' ",
        ),
    ] {
        let response = w.get(&format!("/events?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "the director's 400 is text under a JSON content type"
        );
        assert_eq!(response.text().await.unwrap(), body);
    }
    assert_eq!(w.director.status_count(Endpoint::Events, 400), 3);
}

#[tokio::test]
async fn filters_match_exactly_and_never_match_a_missing_field() {
    let w = World::start(|c| c).await;
    w.director.create_vm("cf", Vm::agent("a1"));
    w.director.create_vm("zookeeper", Vm::agent("z1"));
    let task = w.director.new_task();
    w.director
        .record_event(lock_event().task(&task).user("scheduler"));

    assert_eq!(w.ids("?deployment=cf").await, [2, 1]);
    assert_eq!(w.ids("?deployment=zookeeper").await, [4, 3]);
    assert!(w.ids("?deployment=c").await.is_empty(), "no prefix match");
    assert_eq!(w.ids("?instance=worker/instance-z1").await, [4, 3]);
    assert_eq!(w.ids("?object_name=vm-a1").await, [2]);
    assert_eq!(w.ids("?object_type=lock").await, [5]);
    assert_eq!(w.ids("?action=create&object_type=vm").await.len(), 4);
    assert!(w.ids("?action=delete").await.is_empty());
    assert_eq!(w.ids(&format!("?task={task}")).await, [5]);
    assert_eq!(w.ids("?user=scheduler").await, [5]);
    assert_eq!(w.ids("?user=admin").await, [4, 3, 2, 1]);
    assert!(
        w.ids("?deployment=").await.is_empty(),
        "the lock has no deployment, which no value matches"
    );
    assert_eq!(
        w.ids("?deployment=cf&deployment=zookeeper").await,
        [4, 3],
        "the last value wins"
    );
    assert_eq!(w.ids("?deployment=cf&object_name=vm-a1").await, [2]);
}

#[tokio::test]
async fn a_vm_created_and_deleted_records_what_the_director_records() {
    let w = World::start(|c| c).await;
    w.director.set_time(Some(1_700_000_000));
    let creation = w.director.begin_create_vm("cf", Vm::agent("a1"));
    assert_eq!(creation.first_event(), Some(1));
    assert_eq!(
        w.list("/events").await,
        [
            json!({"id": "1", "timestamp": 1_700_000_000_i64, "user": "admin", "action": "create",
                "object_type": "vm", "task": "1", "deployment": "cf",
                "instance": "worker/instance-a1", "context": {}})
        ],
        "the first event: no object_name, no parent_id"
    );
    assert!(
        w.director.vms("cf").is_none(),
        "the row appears only when the CPI returns"
    );
    assert_eq!(w.director.finish_create_vm(creation), Some(2));
    assert_eq!(w.director.vms("cf").unwrap(), [Vm::agent("a1")]);
    let events = w.list("/events").await;
    assert_eq!(
        events[0],
        json!({"id": "2", "parent_id": "1", "timestamp": 1_700_000_000_i64, "user": "admin",
               "action": "create", "object_type": "vm", "object_name": "vm-a1", "task": "1",
               "deployment": "cf", "instance": "worker/instance-a1", "context": {}})
    );

    w.director.create_vm("cf", Vm::agent("a2"));
    assert_eq!(w.director.delete_vm("cf", "vm-a1"), Some(Vm::agent("a1")));
    assert_eq!(w.director.vms("cf").unwrap(), [Vm::agent("a2")]);
    let events = w.list("/events").await;
    assert_eq!(events.len(), 6);
    for (event, parent) in [(&events[1], None), (&events[0], Some("5"))] {
        assert_eq!(event["action"], "delete");
        assert_eq!(event["object_type"], "vm");
        assert_eq!(event["object_name"], "vm-a1");
        assert_eq!(event["deployment"], "cf");
        assert_eq!(event["instance"], "worker/instance-a1");
        assert_eq!(event["task"], "3");
        assert_eq!(event.get("parent_id").and_then(Value::as_str), parent);
    }
    assert_eq!(w.director.delete_vm("cf", "vm-a1"), None);
    assert_eq!(w.director.last_event_id(), Some(6), "no VM, no event");

    let one: Value = w.get("/events/2").await.json().await.unwrap();
    assert_eq!(one["object_name"], "vm-a1");
    let missing = w.get("/events/99").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "Event not found");
}

#[tokio::test]
async fn deployments_created_and_deleted_record_locks_deployment_and_vm_events() {
    let w = World::start(|c| c).await;
    w.director
        .create_deployment("cf", vec![Vm::agent("a1"), Vm::agent("a2")]);
    let names = |events: &[Value]| {
        events
            .iter()
            .rev()
            .map(|e| {
                format!(
                    "{}/{} {}",
                    e["action"].as_str().unwrap(),
                    e["object_type"].as_str().unwrap(),
                    e.get("object_name").and_then(Value::as_str).unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
    };
    let events = w.list("/events").await;
    assert_eq!(
        names(&events),
        [
            "acquire/lock lock:deployment:cf",
            "create/deployment cf",
            "create/vm -",
            "create/vm vm-a1",
            "create/vm -",
            "create/vm vm-a2",
            "create/deployment cf",
            "release/lock lock:deployment:cf",
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e["deployment"] == "cf" && e["task"] == "1")
    );
    assert_eq!(events[1]["parent_id"], "2");
    let listed = w.list("/deployments").await;
    assert_eq!(listed[0]["name"], "cf");

    w.director.create_deployment("cf", vec![Vm::agent("a3")]);
    assert_eq!(
        w.list("/events?object_type=deployment").await[0]["action"],
        "update",
        "deploying an existing deployment updates it"
    );
    assert_eq!(w.director.vms("cf").unwrap().len(), 3);

    assert!(w.director.delete_deployment("cf"));
    assert!(w.list("/deployments").await.is_empty());
    let deleted = w.list("/events?task=3").await;
    assert_eq!(
        names(&deleted),
        [
            "acquire/lock lock:deployment:cf",
            "delete/deployment cf",
            "delete/vm vm-a1",
            "delete/vm vm-a1",
            "delete/vm vm-a2",
            "delete/vm vm-a2",
            "delete/vm vm-a3",
            "delete/vm vm-a3",
            "delete/deployment cf",
            "release/lock lock:deployment:cf",
        ]
    );
    let before = w.director.last_event_id();
    assert!(!w.director.delete_deployment("cf"));
    assert_eq!(w.director.last_event_id(), before);
}

#[tokio::test]
async fn changes_without_events_record_none() {
    let w = World::start(|c| c).await;
    w.director.set_deployment("cf", vec![Vm::agent("a1")]);
    w.director.add_vm("cf", Vm::agent("a2"));
    w.director.remove_vm("cf", "a1");
    w.director.update_vms("cf", |vms| vms.clear());
    w.director
        .set_deployments([("x".to_owned(), vec![Vm::agent("x1")])]);
    w.director.remove_deployment("x");
    assert!(w.director.events().is_empty());
    assert!(w.list("/events").await.is_empty());
}

#[tokio::test]
async fn with_record_events_off_the_log_stays_empty() {
    let w = World::start(|c| c.with_record_events(false)).await;
    assert!(!w.director.records_events());
    assert_eq!(w.director.create_vm("cf", Vm::agent("a1")), None);
    w.director
        .create_deployment("zookeeper", vec![Vm::agent("z1")]);
    assert!(w.director.record_event(lock_event()).is_none());
    assert_eq!(w.director.vms("cf").unwrap(), [Vm::agent("a1")]);
    assert_eq!(w.director.vms("zookeeper").unwrap(), [Vm::agent("z1")]);
    let response = w.get("/events").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "[]");

    // Turned on (a redeploy of the director) it records; turned off again it stops, and the
    // director keeps serving what its table holds.
    w.director.set_record_events(true);
    assert_eq!(w.director.create_vm("cf", Vm::agent("a2")), Some(2));
    w.director.set_record_events(false);
    w.director.create_vm("cf", Vm::agent("a3"));
    assert_eq!(w.ids("").await, [2, 1]);
    w.director.clear_events();
    assert!(w.ids("").await.is_empty());
}

#[tokio::test]
async fn clean_up_keeps_the_newest_max_events() {
    let w = World::start(|c| c.with_max_events(5)).await;
    for _ in 0..8 {
        w.director.record_event(lock_event());
    }
    assert_eq!(w.director.clean_up_events(), 3);
    assert_eq!(w.ids("").await, [8, 7, 6, 5, 4]);
    assert_eq!(w.director.clean_up_events(), 0);
    assert_eq!(w.director.record_event(lock_event()), Some(9));
    w.director.set_max_events(2);
    assert_eq!(w.director.clean_up_events(), 4);
    assert_eq!(w.ids("").await, [9, 8]);
}

#[tokio::test]
async fn a_restored_director_goes_back_in_deployments_and_ids() {
    let w = World::start(|c| c).await;
    w.director.create_vm("cf", Vm::agent("a1"));
    let backup = w.director.snapshot();
    w.director.create_vm("cf", Vm::agent("a2"));
    w.director.create_deployment("redis", vec![Vm::agent("r1")]);
    let cursor = w.director.last_event_id().unwrap();
    assert_eq!(cursor, 10);

    w.director.restore(&backup);
    assert_eq!(w.director.vms("cf").unwrap(), [Vm::agent("a1")]);
    assert!(w.director.vms("redis").is_none());
    assert_eq!(w.ids("").await, [2, 1]);
    // New events get ids the watcher has seen already: the newest is below its cursor.
    assert_eq!(w.director.create_vm("cf", Vm::agent("a3")), Some(4));
    assert!(w.director.last_event_id().unwrap() < cursor);
    assert_eq!(w.ids("").await, [4, 3, 2, 1]);
}

#[tokio::test]
async fn events_need_the_same_auth_and_take_faults_like_other_endpoints() {
    let w = World::start(|c| c).await;
    w.director.record_event(lock_event());
    let anonymous = w
        .http
        .get(format!("{}/events", w.director.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let wrong = w
        .http
        .get(format!("{}/events", w.director.url()))
        .basic_auth("admin", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    for status in [403, 404, 500] {
        w.director
            .set_fault(Endpoint::Events, Fault::status(status).times(1));
        let response = w.get("/events").await;
        assert_eq!(response.status(), status);
        if status == 404 {
            // A director older than the endpoint: Rack's answer for a path without a route.
            assert_eq!(response.headers()["content-type"], "text/plain");
            assert!(!response.headers().contains_key("www-authenticate"));
            assert_eq!(response.text().await.unwrap(), "Not Found: /events");
        }
    }
    assert_eq!(w.ids("").await, [1], "the faults were used up");

    w.director
        .set_fault(Endpoint::Events, Fault::invalid_json());
    let body = w.get("/events").await.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err());
    w.director.clear_fault(Endpoint::Events);

    w.director.set_fault(
        Endpoint::Events,
        Fault::delay(Duration::from_millis(200)).times(1),
    );
    let started = std::time::Instant::now();
    assert_eq!(w.ids("").await, [1]);
    assert!(started.elapsed() >= Duration::from_millis(200));

    assert_eq!(w.director.request_count(Endpoint::Events), 8);
    assert_eq!(w.director.status_count(Endpoint::Events, 401), 2);
    assert_eq!(w.director.status_count(Endpoint::Events, 200), 3);
    assert_eq!(w.director.request_count(Endpoint::Other), 0);
    let record = w.director.requests().pop().unwrap();
    assert_eq!(
        (record.endpoint, record.path.as_str()),
        (Endpoint::Events, "/events")
    );
}

#[tokio::test]
async fn events_take_uaa_tokens_in_uaa_mode() {
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
    director.create_vm("cf", Vm::agent("a1"));
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client_config())
        .build()
        .unwrap();
    let token: Value = http
        .post(format!("{}/oauth/token", uaa.url()))
        .basic_auth("nats-sync", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = http
        .get(format!("{}/events", director.url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // The director's controllers send the basic challenge whatever the identity provider.
    assert_eq!(
        events.headers()["www-authenticate"],
        "Basic realm=\"BOSH Director\""
    );
    assert_eq!(events.json::<Vec<Value>>().await.unwrap().len(), 2);
    let basic = http
        .get(format!("{}/events", director.url()))
        .basic_auth("nats-sync", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(
        basic.headers()["www-authenticate"],
        "Basic realm=\"BOSH Director\""
    );
    assert_eq!(basic.headers()["content-type"], "text/html;charset=utf-8");
    assert_eq!(basic.text().await.unwrap(), "Not authorized: '/events'\n");
}

#[tokio::test]
async fn the_start_event_opens_the_log_when_asked_for() {
    let w = World::start(|c| c.with_start_event(true)).await;
    let before = w.director.now();
    let events = w.list("/events").await;
    assert_eq!(
        events,
        [
            json!({"id": "1", "timestamp": events[0]["timestamp"], "user": "_director",
                "action": "start", "object_type": "director",
                "object_name": "8b4b3c2e-0f0e-4a8e-9f6c-5a1d2e3f4a5b",
                "context": {"version": "280.0.0"}})
        ]
    );
    let stamped = events[0]["timestamp"].as_i64().expect("integer seconds");
    assert!(
        stamped <= before && before - stamped < 600,
        "{stamped} vs {before}"
    );
    // Events that follow go on from it; without the option the log starts empty.
    assert_eq!(w.director.create_vm("cf", Vm::agent("a1")), Some(3));
    let plain = World::start(|c| c).await;
    assert!(plain.list("/events").await.is_empty());
}
