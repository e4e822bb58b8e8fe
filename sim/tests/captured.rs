//! The simulated director answers with the real director's shapes: every request captured
//! from the real director (`src/director/testdata/director-responses/`, see its README) is
//! sent to the simulator, and its answer must have the captured status, `Content-Type`,
//! `WWW-Authenticate` and redirect, the same text where the body is text, and where it is JSON
//! the same fields with the same JSON types — none the real director does not send, none it
//! always sends missing. A drift in either fails here.
//!
//! Events are compared with every event captured, not one page's: which fields an event has
//! depends on what it records (a page of bulk-created VMs all have `object_name`, the opening
//! `create`/`vm` of a real creation has none), while `id`, `timestamp`, `user`, `action`,
//! `object_type` and `context` are always there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use sim::captured::Captured;
use sim::director::{DirectorConfig, DirectorSim, Vm};
use sim::pki::Pki;

/// Requests to endpoints the simulator does not serve (the client never reads them): the
/// simulator answers them as the director answers a path it has no route for.
const NOT_SERVED: [&str; 4] = [
    "deployment_manifest", // GET /deployments/NAME
    "deployment_unknown",  // GET /deployments/NAME
    "instances_zookeeper", // GET /deployments/NAME/instances
    "vms_full_task",       // GET /tasks/N
];

fn captured() -> Vec<Captured> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../src/director/testdata/director-responses"
    ));
    let all = Captured::load_dir(dir).expect("the captured responses");
    assert!(
        all.len() >= 40,
        "only {} files in {}",
        all.len(),
        dir.display()
    );
    all
}

fn vm(agent_id: &str, index: u32, az: &str) -> Vm {
    Vm {
        index,
        az: Some(az.to_owned()),
        ..Vm::agent(agent_id)
    }
}

/// A director holding what the captured one held: `zookeeper` (3 VMs, one of them
/// recreated), `cf` (2 VMs, then many more created one by one, so `/events` fills a page),
/// `empty`; the events stamped at the captured times, and the director's own `start` event
/// first, stamped when it started.
async fn director(pki: &Pki) -> DirectorSim {
    let director = DirectorSim::start(
        DirectorConfig::basic("admin", "admin")
            .with_tls(pki.server_config().unwrap())
            .with_start_event(true),
    )
    .await
    .unwrap();
    director.set_time(Some(1_704_067_201));
    director.create_deployment(
        "zookeeper",
        vec![vm("z0", 0, "z1"), vm("z1", 1, "z2"), vm("z2", 2, "z3")],
    );
    director.set_time(Some(1_704_067_210));
    director.create_deployment("cf", vec![vm("r0", 0, "z1"), vm("r1", 1, "z2")]);
    director.create_deployment("empty", vec![]);
    director.set_time(Some(1_704_067_215));
    director.delete_vm("zookeeper", "vm-z2").expect("z2's VM");
    director.create_vm("zookeeper", vm("z2b", 2, "z3"));
    director.set_time(Some(1_704_067_219));
    for i in 0..115 {
        director.create_vm("cf", vm(&format!("bulk-{i}"), i + 2, "z1"));
    }
    director
}

/// The JSON types seen at one place of a body, and below it: an object's fields (with how
/// many of the objects held each), an array's items.
#[derive(Debug, Default)]
struct Shape {
    types: BTreeSet<&'static str>,
    objects: usize,
    fields: BTreeMap<String, (usize, Shape)>,
    items: Option<Box<Shape>>,
}

impl Shape {
    fn of(value: &Value) -> Shape {
        let mut shape = Shape::default();
        shape.add(value);
        shape
    }

    fn add(&mut self, value: &Value) {
        self.types.insert(match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        });
        match value {
            Value::Object(map) => {
                self.objects += 1;
                for (key, field) in map {
                    let (count, shape) = self.fields.entry(key.clone()).or_default();
                    *count += 1;
                    shape.add(field);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.items.get_or_insert_default().add(item);
                }
            }
            _ => {}
        }
    }

    /// Where `self` (the simulator's) differs from `real`: a type the real answer never had
    /// there, a field it never sent, a field it always sent that is missing. Where the real
    /// answer shows nothing (an empty array), there is nothing to compare.
    fn drift(&self, real: &Shape, at: &str, found: &mut Vec<String>) {
        let extra: Vec<_> = self.types.difference(&real.types).collect();
        if !extra.is_empty() {
            found.push(format!(
                "{at}: {extra:?}, the director sends {:?}",
                real.types
            ));
        }
        if self.objects > 0 && real.objects > 0 {
            for (key, (_, shape)) in &self.fields {
                match real.fields.get(key) {
                    None => found.push(format!("{at}.{key}: not sent by the director")),
                    Some((_, real_shape)) => shape.drift(real_shape, &format!("{at}.{key}"), found),
                }
            }
            for (key, (count, _)) in &real.fields {
                let always = *count == real.objects;
                let ours = self.fields.get(key).map_or(0, |(n, _)| *n);
                if always && ours < self.objects {
                    found.push(format!(
                        "{at}.{key}: always sent by the director, missing from {} of {}",
                        self.objects - ours,
                        self.objects
                    ));
                }
            }
        }
        if let (Some(ours), Some(real)) = (&self.items, &real.items) {
            ours.drift(real, &format!("{at}[]"), found);
        }
    }
}

/// The events of an `/events` body: a page's items, or the one event of `/events/ID`.
fn events_in(body: &Value) -> Vec<&Value> {
    match body {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// Every event the director answered with, in one shape.
fn event_shape(all: &[Captured]) -> Shape {
    let mut shape = Shape::default();
    for c in all
        .iter()
        .filter(|c| c.status == 200 && c.path().starts_with("/events"))
    {
        let body: Value = serde_json::from_slice(&c.body).expect("an /events answer is JSON");
        for event in events_in(&body) {
            shape.add(event);
        }
    }
    assert!(
        shape.objects > 200,
        "too few events captured: {}",
        shape.objects
    );
    shape
}

/// The ids of a page of events, or `None` for any other body.
fn event_ids(body: &Value) -> Option<Vec<u64>> {
    body.as_array()?
        .iter()
        .map(|e| e.get("id")?.as_str()?.parse().ok())
        .collect()
}

/// Where the simulator's answer to `c`'s request differs from the director's.
async fn differences(
    http: &reqwest::Client,
    base: &str,
    c: &Captured,
    events: &Shape,
) -> Vec<String> {
    let mut request = http.get(c.url_on(base));
    if let Some((user, password)) = &c.credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let mut found = Vec::new();
    let status = response.status().as_u16();
    if status != c.status {
        found.push(format!("status {status}, the director's {}", c.status));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for name in ["content-type", "www-authenticate"] {
        let ours = header(name);
        let real = c.header(name).map(str::to_owned);
        if ours != real {
            found.push(format!("{name} {ours:?}, the director's {real:?}"));
        }
    }
    // The same kind of place: `/tasks/N` on the director's own address.
    let task = |location: Option<&str>, base: &str| {
        location
            .and_then(|l| l.strip_prefix(base))
            .and_then(|l| l.strip_prefix("/tasks/"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let ours = header("location");
    if c.header("location").is_some()
        && !(task(c.header("location"), "http://DIRECTOR") && task(ours.as_deref(), base))
    {
        found.push(format!(
            "location {ours:?}, the director's {:?}",
            c.header("location")
        ));
    } else if c.header("location").is_none() && ours.is_some() {
        found.push(format!("location {ours:?}, the director sends none"));
    }
    let body = response.bytes().await.unwrap();
    match serde_json::from_slice::<Value>(&c.body) {
        Err(_) => {
            if body[..] != c.body[..] {
                found.push(format!(
                    "body {:?}, the director's {:?}",
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(&c.body)
                ));
            }
        }
        Ok(real) => match serde_json::from_slice::<Value>(&body) {
            Err(e) => found.push(format!("body is not JSON ({e}), the director's is")),
            // An error names what the request named: the same text.
            Ok(ours) if c.status >= 400 && ours != real => {
                found.push(format!("body {ours}, the director's {real}"));
            }
            Ok(ours) if c.path().starts_with("/events") => {
                let mut shape = Shape::default();
                for event in events_in(&ours) {
                    shape.add(event);
                }
                shape.drift(events, "event", &mut found);
                found.extend(page_differences(&ours, &real));
            }
            Ok(ours) => {
                Shape::of(&ours).drift(&Shape::of(&real), "body", &mut found);
                found.extend(page_differences(&ours, &real));
            }
        },
    }
    found
}

/// An array answer against the director's: both empty or neither, capped alike, events
/// newest first.
fn page_differences(ours: &Value, real: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let len = |v: &Value| v.as_array().map(Vec::len);
    let (ours_len, real_len) = (len(ours), len(real));
    if ours_len.map(|n| n == 0) != real_len.map(|n| n == 0) {
        found.push(format!(
            "{ours_len:?} items, the director's {real_len:?} (empty on one side)"
        ));
    }
    if real_len == Some(200) && ours_len != Some(200) {
        found.push(format!("{ours_len:?} items, the director's capped 200"));
    }
    if let Some(ids) = event_ids(ours)
        && !ids.windows(2).all(|w| w[0] > w[1])
    {
        found.push(format!("event ids not newest first: {ids:?}"));
    }
    found
}

#[tokio::test]
async fn the_simulator_answers_every_captured_request_as_the_director_did() {
    let pki = Pki::generate().unwrap();
    let director = director(&pki).await;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(pki.client_config())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = director.url();
    let all = captured();
    let events = event_shape(&all);
    let mut report = Vec::new();
    for c in all
        .iter()
        .filter(|c| !NOT_SERVED.contains(&c.name.as_str()))
    {
        for difference in differences(&http, &base, c, &events).await {
            report.push(format!(
                "{} (GET {}): {difference}",
                c.name, c.path_and_query
            ));
        }
    }
    assert!(
        report.is_empty(),
        "the simulator differs from the director:\n{}",
        report.join("\n")
    );
    // The files the simulator is not compared with exist, and it has no route for them.
    for name in NOT_SERVED {
        let c = all
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no captured response {name}"));
        let response = http
            .get(c.url_on(&base))
            .basic_auth("admin", Some("admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{name}");
        assert_eq!(response.headers()["x-cascade"], "pass", "{name}");
    }
}

/// The comparison itself can fail: an answer with a field of another type, a field the
/// director never sends, or one it always sends left out, is a drift.
#[test]
fn a_drifted_shape_is_found() {
    let real: Value = serde_json::from_str(
        r#"[{"id":"2","timestamp":1,"context":{},"parent_id":"1"},{"id":"1","timestamp":0,"context":{}}]"#,
    )
    .unwrap();
    let drift = |ours: &str| {
        let mut found = Vec::new();
        Shape::of(&serde_json::from_str(ours).unwrap()).drift(
            &Shape::of(&real),
            "body",
            &mut found,
        );
        found
    };
    // `parent_id` is not always there: leaving it out is no drift.
    assert!(drift(r#"[{"id":"3","timestamp":2,"context":{}}]"#).is_empty());
    assert_eq!(
        drift(r#"[{"id":3,"timestamp":2,"context":{}}]"#),
        [r#"body[].id: ["integer"], the director sends {"string"}"#]
    );
    assert_eq!(
        drift(r#"[{"id":"3","timestamp":2.5,"context":{}}]"#),
        [r#"body[].timestamp: ["float"], the director sends {"integer"}"#]
    );
    assert_eq!(
        drift(r#"[{"id":"3","timestamp":2,"context":{},"extra":null}]"#),
        ["body[].extra: not sent by the director"]
    );
    assert_eq!(
        drift(r#"[{"id":"3","timestamp":2}]"#),
        ["body[].context: always sent by the director, missing from 1 of 1"]
    );
}
