//! The client's readers (`answer`) against what the real director answers: every file of
//! `testdata/director-responses/` (captured from the director's own controllers; its README
//! says how) goes through the reader of its endpoint, status, headers and body as received,
//! and must give the values or the error an operator should see (§2.1, §2.4, §2.5).
//!
//! `check` has one arm per file and fails on a file it does not know, so a file added to the
//! directory needs its expectation here.

use std::path::Path;

use sim::captured::Captured;

use super::Refetched;
use super::answer::{self, Answer};
use super::auth::Mode;
use super::error::Error;
use super::events::Event;
use super::http::display_url;
use crate::vm::Vm;

fn all() -> Vec<Captured> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/director/testdata/director-responses"
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

fn captured(name: &str) -> Captured {
    all()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no captured response {name}"))
}

/// The answer as `http::send` hands it to a reader.
fn answer_of(c: &Captured) -> Answer {
    Answer {
        status: c.status,
        content_type: c.header("content-type").map(str::to_owned),
        location: c.header("location").map(str::to_owned),
        body: c.body.clone(),
    }
}

/// The request URL as the client shows it in errors (`DIRECTOR` is a host name to it).
fn url_of(c: &Captured) -> String {
    display_url(&url::Url::parse(&c.url_on("http://DIRECTOR")).expect("url"))
}

fn vm(agent_id: &str) -> Vm {
    Vm {
        agent_id: Some(agent_id.to_owned()),
        permanent_nats_credentials: false,
    }
}

fn zookeeper_vms() -> Vec<Vm> {
    vec![
        vm("6af463bb-47d4-49c7-acae-4199142ccb98"),
        vm("63ace299-67eb-4224-a73e-44b582a0a0a6"),
        vm("3ba933f7-0da8-4390-a120-f3cef9a7aa62"),
    ]
}

fn ids(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// The error's message and reason, after checking that it is a status error of `status`.
fn status_error(err: Error, status: u16) -> (String, &'static str) {
    assert!(
        matches!(err, Error::Status { status: s, .. } if s == status),
        "{err:?}"
    );
    (err.to_string(), err.reason())
}

/// The events of a `/events` answer that must decode.
fn events_of(c: &Captured) -> Vec<Event> {
    answer::events(&url_of(c), &answer_of(c)).unwrap_or_else(|e| panic!("{}: {e}", c.name))
}

fn check(c: &Captured) {
    let url = url_of(c);
    let a = answer_of(c);
    match c.name.as_str() {
        // `/info`, with or without (right or wrong) credentials: basic auth.
        "info_auth" | "info_badauth" | "info_noauth" => {
            assert_eq!(answer::info(&url, &a).expect("info"), Mode::Basic);
        }

        // `/deployments`: JSON under text/html; only `name` is read.
        "deployments" | "deployments_excludes" => {
            assert_eq!(
                answer::deployments(&url, &a).expect("deployments"),
                ["cf", "empty", "zookeeper"]
            );
        }
        "deployments_badauth" | "deployments_noauth" => {
            let err = answer::deployments(&url, &a).expect_err("401 accepted");
            assert_eq!(
                status_error(err, 401),
                (
                    "http://director/deployments answered HTTP 401: Not authorized: '/deployments'"
                        .to_owned(),
                    "unauthorized"
                )
            );
        }

        // `/deployments/NAME/vms`: extra fields ignored, other query parameters ignored.
        "vms_zookeeper" | "vms_full_bogus" | "vms_full_eq1" => {
            assert_eq!(
                answer::vms(&url, &a).expect("vms"),
                Refetched::Vms(zookeeper_vms())
            );
        }
        "vms_cf" => {
            assert_eq!(
                answer::vms(&url, &a).expect("vms"),
                Refetched::Vms(vec![
                    vm("dbfdc94a-bb0a-48f9-afe3-c95d0ee7963b"),
                    vm("3f7ba897-f8c5-4d77-a22c-e40be40d25dc"),
                ])
            );
        }
        "vms_empty" => {
            assert_eq!(answer::vms(&url, &a).expect("vms"), Refetched::Vms(vec![]));
        }
        "vms_unknown" => {
            assert_eq!(answer::vms(&url, &a).expect("404"), Refetched::Gone);
            // Were it shown, the director's JSON error reads as its description.
            let err = a.success("vms", &url).expect_err("404 is not a success");
            assert_eq!(
                err.to_string(),
                "http://director/deployments/nope/vms answered HTTP 404: \
                 Deployment 'nope' doesn't exist (director error 70000)"
            );
        }
        "vms_noauth" => {
            let err = answer::vms(&url, &a).expect_err("401 accepted");
            assert_eq!(
                status_error(err, 401),
                (
                    "http://director/deployments/zookeeper/vms answered HTTP 401: \
                     Not authorized: '/deployments/zookeeper/vms'"
                        .to_owned(),
                    "unauthorized"
                )
            );
        }
        // `?format=full` is a task: the client never asks for it, and a redirect is an error
        // saying where it leads.
        "vms_full" => {
            let err = answer::vms(&url, &a).expect_err("302 accepted");
            assert_eq!(
                status_error(err, 302),
                (
                    "http://director/deployments/zookeeper/vms answered HTTP 302: \
                     a redirect to http://director/tasks/1, which is not followed"
                        .to_owned(),
                    "status"
                )
            );
        }
        // Where that redirect leads: a task, which the `/vms` reader refuses.
        "vms_full_task" => {
            let err = answer::vms(&url, &a).expect_err("a task read as VMs");
            assert_eq!(err.reason(), "decode");
            assert!(
                err.to_string().starts_with(
                    "unexpected response from http://director/tasks/1: invalid type: map"
                ),
                "{err}"
            );
        }
        // `/instances` (not read): the same records plus instances without a VM, which
        // `/vms` leaves out; the `/vms` decoding copes with their nulls all the same.
        "instances_zookeeper" => {
            let mut expected = zookeeper_vms();
            expected.push(Vm {
                agent_id: None,
                permanent_nats_credentials: false,
            });
            assert_eq!(super::decode_vms(&c.body).expect("instances"), expected);
        }
        // `/deployments/NAME` (not read): also JSON under text/html, errors included.
        "deployment_manifest" => {
            assert_eq!(c.header("content-type"), Some("text/html;charset=utf-8"));
            let manifest: serde_json::Value = serde_json::from_slice(&c.body).expect("json");
            assert!(manifest["manifest"].is_string(), "{manifest}");
        }
        "deployment_unknown" => {
            let err = a.success("deployments", &url).expect_err("404 accepted");
            assert_eq!(
                err.to_string(),
                "http://director/deployments/nope answered HTTP 404: \
                 Deployment 'nope' doesn't exist (director error 70000)"
            );
        }

        // `/events`: 200 at most, newest first by id, ids as strings.
        "events"
        | "events_after_time_int"
        | "events_after_time_date"
        | "events_after_time_iso"
        | "events_after_time_tz"
        | "events_after_time_neg" => {
            let events = events_of(c);
            assert_eq!(ids(&events), (52..=251).rev().collect::<Vec<_>>());
            for e in &events {
                assert_eq!(e.parent_id, None);
                assert_eq!(
                    (e.action.as_deref(), e.object_type.as_deref()),
                    (Some("create"), Some("vm"))
                );
                assert_eq!(e.deployment.as_deref(), Some("cf"));
                assert!(
                    e.object_name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("vm-bulk-"))
                );
                assert!(
                    e.instance
                        .as_deref()
                        .is_some_and(|i| i.starts_with("router/"))
                );
                assert!((1_704_067_234..=1_704_067_333).contains(&e.timestamp));
            }
            assert_eq!(
                events[0],
                Event {
                    id: 251,
                    parent_id: None,
                    timestamp: 1_704_067_333,
                    action: Some("create".into()),
                    object_type: Some("vm".into()),
                    object_name: Some("vm-bulk-229".into()),
                    deployment: Some("cf".into()),
                    instance: Some("router/59f0b476-878e-4563-a94a-755a3b9db93a".into()),
                }
            );
        }
        // Nothing at all: a time after every event, and every `before_id` that is not a
        // positive integer above 1 (the director reads it with `to_i`).
        "events_after_time_future"
        | "events_before_id_0"
        | "events_before_id_1"
        | "events_before_id_abc"
        | "events_before_id_empty"
        | "events_before_id_neg" => {
            assert_eq!(events_of(c), []);
        }
        // `5.9` reads as 5.
        "events_before_id_5" | "events_before_id_float" => {
            let events = events_of(c);
            assert_eq!(ids(&events), [4, 3, 2, 1]);
            assert_eq!(events[0].parent_id, Some(3));
            assert_eq!(
                events[0].object_name.as_deref(),
                Some("vm-66d6f027-7918-4272-a241-ef27d6f49719")
            );
            // The opening `create vm` has no object_name yet.
            assert_eq!(events[1].object_name, None);
            assert_eq!(events[1].parent_id, None);
        }
        // The last page: fewer than 200, down to the first event.
        "events_before_id_last" => {
            assert_eq!(ids(&events_of(c)), (1..=51).rev().collect::<Vec<_>>());
        }
        // Newest first by id, not by timestamp: event 1 is the director's own `start`,
        // stamped when the director started, after every other event here.
        "events_after_before_id" => {
            let events = events_of(c);
            assert_eq!(ids(&events), [19, 18, 17, 16, 15, 14, 13, 12, 1]);
            let start = &events[8];
            assert_eq!(
                (start.action.as_deref(), start.object_type.as_deref()),
                (Some("start"), Some("director"))
            );
            assert_eq!(start.deployment, None);
            assert!(events[..8].iter().all(|e| e.timestamp < start.timestamp));
            let deployment = &events[4];
            assert_eq!(deployment.id, 15);
            assert_eq!(deployment.object_type.as_deref(), Some("deployment"));
            assert_eq!(deployment.parent_id, Some(10));
            assert_eq!(deployment.instance, None);
        }
        "events_before_time_int" => {
            assert_eq!(ids(&events_of(c)), [5, 4, 3, 2]);
        }
        // Filters combine with AND; `error` is present on a failed step, and ignored.
        "events_filter_deployment" => {
            let events = events_of(c);
            assert_eq!(ids(&events), [21, 20, 17, 16]);
            assert_eq!(events[0].parent_id, Some(20));
            assert!(
                events
                    .iter()
                    .all(|e| e.deployment.as_deref() == Some("zookeeper")
                        && e.action.as_deref() == Some("delete")
                        && e.object_type.as_deref() == Some("vm"))
            );
        }
        // A bad time is a 400 in plain text (under application/json).
        "events_after_time_abc"
        | "events_after_time_empty"
        | "events_after_time_float"
        | "events_before_time_abc" => {
            let err = answer::events(&url, &a).expect_err("400 accepted");
            let said = match c.name.as_str() {
                "events_after_time_abc" => "Invalid after parameter: 'abc'",
                "events_after_time_empty" => "Invalid after parameter: ''",
                "events_after_time_float" => "Invalid after parameter: '1704067210.5'",
                _ => "Invalid before parameter: 'abc'",
            };
            assert_eq!(
                status_error(err, 400),
                (
                    format!("http://director/events answered HTTP 400: {said}"),
                    "status"
                )
            );
        }
        "events_noauth" => {
            let err = answer::events(&url, &a).expect_err("401 accepted");
            assert_eq!(
                status_error(err, 401),
                (
                    "http://director/events answered HTTP 401: Not authorized: '/events'"
                        .to_owned(),
                    "unauthorized"
                )
            );
        }
        // `/events/ID` (not read): one event, the same as in a page; not a page itself.
        "events_by_id" => {
            let err = answer::events(&url, &a).expect_err("one event read as a page");
            assert_eq!(err.reason(), "decode");
            let mut page = b"[".to_vec();
            page.extend_from_slice(&c.body);
            page.push(b']');
            let one = super::decode_events(&page).expect("the event");
            assert_eq!(one[..], events_of(&captured("events_before_id_5"))[1..2]);
        }
        "events_by_id_unknown" => {
            let err = a.success("events", &url).expect_err("404 accepted");
            assert_eq!(
                err.to_string(),
                "http://director/events/99999 answered HTTP 404: Event not found"
            );
        }
        // A route the director does not have (an `/events` older than the endpoint would
        // answer the same way): a status error, not "no events".
        "unknown_route" => {
            let err = answer::events(&url, &a).expect_err("404 accepted");
            assert_eq!(
                status_error(err, 404),
                (
                    "http://director/nosuch answered HTTP 404: Not Found: /nosuch".to_owned(),
                    "status"
                )
            );
        }
        other => panic!("no expectation for the captured response {other}: add one"),
    }
}

#[test]
fn every_captured_answer_reads_as_the_client_should_read_it() {
    for c in all() {
        check(&c);
    }
}

/// The director's JSON comes under `text/html;charset=utf-8`: the content type never
/// decides whether a body is read.
#[test]
fn json_is_read_whatever_its_content_type() {
    for name in ["deployments", "vms_cf", "events_before_id_5", "info_noauth"] {
        let c = captured(name);
        let url = url_of(&c);
        let read = |content_type: Option<&str>| {
            let a = Answer {
                content_type: content_type.map(str::to_owned),
                ..answer_of(&c)
            };
            match c.path() {
                "/deployments" => format!("{:?}", answer::deployments(&url, &a)),
                "/events" => format!("{:?}", answer::events(&url, &a)),
                "/info" => format!("{:?}", answer::info(&url, &a)),
                _ => format!("{:?}", answer::vms(&url, &a)),
            }
        };
        let as_captured = read(c.header("content-type"));
        assert!(as_captured.starts_with("Ok("), "{name}: {as_captured}");
        for other in [
            None,
            Some("application/json"),
            Some("text/html;charset=utf-8"),
            Some("text/plain"),
        ] {
            assert_eq!(read(other), as_captured, "{name} under {other:?}");
        }
    }
}

/// The captured answers' shapes the readers rely on: what the files hold, so that a
/// replaced file that no longer shows a fact fails here rather than silently.
#[test]
fn the_files_show_what_the_contract_says() {
    let header = |name: &str, h: &str| captured(name).header(h).map(str::to_owned);
    for name in ["deployments", "vms_cf", "vms_unknown", "deployments_noauth"] {
        assert_eq!(
            header(name, "content-type").as_deref(),
            Some("text/html;charset=utf-8"),
            "{name}"
        );
    }
    for name in ["events", "events_after_time_abc", "info_noauth"] {
        assert_eq!(
            header(name, "content-type").as_deref(),
            Some("application/json"),
            "{name}"
        );
    }
    assert_eq!(
        header("deployments_noauth", "www-authenticate").as_deref(),
        Some("Basic realm=\"BOSH Director\"")
    );
    assert_eq!(
        captured("events_after_time_abc").body,
        b"Invalid after parameter: 'abc' "
    );
    // Every event carries `context`, `{}` when empty; ids are strings, timestamps integers.
    let page: serde_json::Value =
        serde_json::from_slice(&captured("events_after_before_id").body).expect("json");
    for event in page.as_array().expect("array") {
        assert!(event["context"].is_object(), "{event}");
        assert!(event["id"].is_string(), "{event}");
        assert!(event["timestamp"].is_i64(), "{event}");
        if let Some(parent) = event.get("parent_id") {
            assert!(parent.is_string(), "{event}");
        }
    }
    // Every VM carries the extra fields, `index` an integer.
    let vms: serde_json::Value = serde_json::from_slice(&captured("vms_cf").body).expect("json");
    for vm in vms.as_array().expect("array") {
        let keys: Vec<&str> = vm
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "agent_id",
            "cid",
            "job",
            "index",
            "id",
            "az",
            "ips",
            "vm_created_at",
            "active",
            "permanent_nats_credentials",
        ] {
            assert!(keys.contains(&key), "{key} missing from {vm}");
        }
        assert!(vm["index"].is_u64(), "{vm}");
    }
}
