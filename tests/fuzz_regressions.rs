//! Fuzzing regressions (docs/fuzzing.md): the interesting seeds of `fuzz/corpus/` replayed on
//! the stable test run, with what each must produce, so the cases the fuzz targets start
//! from stay covered even where cargo-fuzz is not installed.

use bosh_nats_sync::authfile::{self, NOBODY, Observed};
use bosh_nats_sync::director;
use bosh_nats_sync::pass::desired::{self, Subject, Subjects};
use bosh_nats_sync::users::agent::{AgentId, InvalidAgentId};
use bosh_nats_sync::users::reference::{Permissions, User, Users};
use bosh_nats_sync::vm::Vm;

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/fuzz/corpus/{target}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("seed {path}: {e}"))
}

fn users_of(observed: Observed<Users>) -> Users {
    match observed {
        Observed::Users(u) => u,
        other => panic!("expected a users config, got {other:?}"),
    }
}

/// Escape characters in rendered JSON (every backslash serde_json writes starts one).
fn escapes(rendered: &[u8]) -> Vec<u8> {
    let mut found = Vec::new();
    let mut bytes = rendered.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            found.push(*bytes.next().expect("an escape never ends the output"));
        }
    }
    found
}

fn vm(id: Option<&str>, permanent: bool) -> Vm {
    Vm {
        agent_id: id.map(str::to_owned),
        permanent_nats_credentials: permanent,
    }
}

#[test]
fn auth_file_seeds_classify_into_the_documented_states() {
    let unparseable = [
        "bosh-prestart-placeholder",
        "truncated",
        "foreign-key",
        // A second `users` key would make the file mean whatever the last one says to
        // nats-server; serde refuses duplicate fields, so it is rewritten.
        "duplicate-key",
        // Recursion limit, not a stack overflow.
        "deep-nesting",
    ];
    for name in unparseable {
        assert!(
            matches!(
                authfile::reference::classify(&seed("authfile", name)),
                Observed::Unparseable(_)
            ),
            "{name}"
        );
    }
    for name in [
        "empty-object",
        "authorization-without-users",
        "empty-users-list",
    ] {
        assert_eq!(
            authfile::reference::classify(&seed("authfile", name)),
            Observed::Empty,
            "{name}"
        );
    }
    assert_eq!(
        authfile::reference::classify(&seed("authfile", "nobody")),
        Observed::Users(Users::default())
    );
    assert_eq!(
        users_of(authfile::reference::classify(&seed(
            "authfile",
            "rendered-two-agents"
        )))
        .len(),
        4
    );
    assert_eq!(
        users_of(authfile::reference::classify(&seed(
            "authfile",
            "reordered-keys-whitespace"
        ))),
        Users(vec![User {
            user: "CN=x".into(),
            permissions: Some(Permissions {
                publish: None,
                subscribe: Some(vec!["agent.x".into()]),
            }),
        }])
    );
    let absent = users_of(authfile::reference::classify(&seed(
        "authfile",
        "absent-permissions",
    )));
    assert_eq!(absent.0[0].permissions, None);
    assert_eq!(
        absent.0[1].permissions,
        Some(Permissions {
            publish: None,
            subscribe: None
        })
    );
    assert_eq!(
        users_of(authfile::reference::classify(&seed("authfile", "escapes"))).0[0].user,
        "CN=A\n\t\\\"\u{8}"
    );
    assert_eq!(
        users_of(authfile::reference::classify(&seed("authfile", "utf8"))).0[0].user,
        "C=DE, O=Zürich, CN=ö.agent"
    );
}

#[test]
fn what_was_read_renders_back_to_the_same_users() {
    for name in [
        "nobody",
        "rendered-two-agents",
        "reordered-keys-whitespace",
        "absent-permissions",
        "escapes",
        "utf8",
    ] {
        let read = authfile::reference::classify(&seed("authfile", name));
        let users = users_of(read.clone());
        assert_eq!(
            authfile::reference::classify(&authfile::reference::render(&users)),
            read,
            "{name}"
        );
    }
    // The rendered seed is byte-for-byte what render writes for the users it holds.
    let rendered = seed("authfile", "rendered-two-agents");
    assert_eq!(
        authfile::reference::render(&users_of(authfile::reference::classify(&rendered))),
        rendered
    );
}

/// render escapes what serde_json escapes; nats-server 2.9.10 accepts only `\"` `\\` `\n`
/// `\t` `\r` (and `\xXX`), so `\u`, `\b` and `\f` appear exactly when a string holds another
/// control character — which validated subjects and agent ids never do.
#[test]
fn render_needs_a_rejected_escape_only_for_control_characters() {
    let with_controls = users_of(authfile::reference::classify(&seed("authfile", "escapes")));
    let found = escapes(&authfile::reference::render(&with_controls));
    assert!(found.contains(&b'b'), "U+0008 is written as \\b: {found:?}");

    let subjects = Subjects {
        director: Subject::parse(r#"CN=quote " and backslash \ and Zürich > *"#).unwrap(),
        hm: Subject::parse(NOBODY).unwrap(),
    };
    let desired = desired::compute(&subjects, vec![vm(Some("a-b_C9"), false)]);
    let users = Users(desired.users.to_users());
    let found = escapes(&authfile::reference::render(&users));
    assert_eq!(
        found, b"\"\\",
        "only the quote and the backslash are escaped"
    );
    assert_eq!(
        users_of(authfile::reference::classify(&authfile::reference::render(
            &users
        ))),
        users
    );
    assert_eq!(
        authfile::reference::render_set(&desired.users),
        authfile::reference::render(&users)
    );
}

#[test]
fn vm_seeds_decode_with_the_documented_defaults() {
    let vms = director::decode_vms(&seed("director_decode", "vms-full")).unwrap();
    assert_eq!(
        vms,
        [
            vm(Some("0c5e4a9c-3b1c-4d0e-9a4b-7f2f1f3b2a10"), true),
            vm(None, false),
            vm(Some("1d2e"), false),
            vm(Some(""), false),
            vm(Some("x.>"), false),
            vm(Some("1d2e"), false),
        ]
    );
    let desired = desired::compute(&Subjects::default(), vms);
    assert_eq!(desired.skipped.no_agent_id, 2);
    assert_eq!(
        desired.skipped.invalid_agent_id, 1,
        "x.> never reaches a subject"
    );
    assert_eq!(desired.skipped.duplicate, 1);
    let users = Users(desired.users.to_users());
    let names: Vec<&str> = users.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(
        names,
        [
            "C=USA, O=Cloud Foundry, CN=0c5e4a9c-3b1c-4d0e-9a4b-7f2f1f3b2a10.agent.bosh-internal",
            "C=USA, O=Cloud Foundry, CN=1d2e.bootstrap.agent.bosh-internal",
            "C=USA, O=Cloud Foundry, CN=1d2e.agent.bosh-internal",
        ]
    );

    assert_eq!(director::decode_vms(b"[]").unwrap(), []);
    assert_eq!(
        director::decode_vms(&seed("director_decode", "many-vms"))
            .unwrap()
            .len(),
        300
    );
    for name in ["duplicate-field", "wrong-type", "director-error-object"] {
        assert!(
            director::decode_vms(&seed("director_decode", name)).is_err(),
            "{name}"
        );
    }
    // serde reads a struct written as an array of its fields in order; the same agent-id
    // validation applies to what it yields.
    assert_eq!(
        director::decode_vms(&seed("director_decode", "struct-as-array")).unwrap(),
        [vm(Some("positional-id"), true)]
    );
}

#[test]
fn deployment_seeds_decode_to_names_only() {
    assert_eq!(
        director::decode_deployments(&seed("director_decode", "deployments")).unwrap(),
        ["cf", "zookeeper"]
    );
    // An ignored field holding a number beyond f64 is skipped, not an error (serde_json's
    // `Value` parser refuses it, which is why the fuzz oracle skips such inputs).
    assert_eq!(
        director::decode_deployments(&seed("director_decode", "huge-number")).unwrap(),
        ["a"]
    );
    assert!(
        serde_json::from_slice::<serde_json::Value>(&seed("director_decode", "huge-number"))
            .is_err()
    );
    for name in ["director-error-object", "vms-full", "wrong-type"] {
        assert!(
            director::decode_deployments(&seed("director_decode", name)).is_err(),
            "{name}"
        );
    }
}

#[test]
fn event_seeds_decode_with_the_documented_rules() {
    let events = director::decode_events(&seed("events_decode", "director-page")).unwrap();
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [12, 11, 10, 9]);
    assert_eq!(
        events[0],
        director::Event {
            id: 12,
            parent_id: Some(11),
            timestamp: 1_700_000_042,
            action: Some("create".into()),
            object_type: Some("vm".into()),
            object_name: Some("i-0a1b2c3d".into()),
            deployment: Some("cf".into()),
            instance: Some("router/5f1c2d3e-4b5a-4c6d-8e7f-001122334455".into()),
        }
    );
    assert_eq!(events[1].object_name, None);
    assert_eq!(events[3].deployment, None, "a lock of no deployment");

    let integers = director::decode_events(&seed("events_decode", "integer-ids")).unwrap();
    assert_eq!((integers[0].id, integers[0].parent_id), (3, Some(2)));
    assert!(
        director::decode_events(&seed("events_decode", "empty-array"))
            .unwrap()
            .is_empty()
    );
    for name in ["omitted-fields", "empty-and-null-fields"] {
        for event in director::decode_events(&seed("events_decode", name)).unwrap() {
            assert_eq!(
                (
                    event.parent_id,
                    event.action,
                    event.object_type,
                    event.object_name,
                    event.deployment,
                    event.instance,
                ),
                (None, None, None, None, None, None),
                "{name}"
            );
        }
    }
    let names: Vec<Option<String>> =
        director::decode_events(&seed("events_decode", "deployment-names"))
            .unwrap()
            .into_iter()
            .map(|e| e.deployment)
            .collect();
    assert_eq!(
        names,
        [
            Some("ünï-日本".to_string()),
            Some("a/b%2F..%".to_string()),
            Some("..".to_string())
        ]
    );
    // serde reads a struct written as an array of its fields in order.
    let positional = director::decode_events(&seed("events_decode", "struct-as-array")).unwrap();
    assert_eq!(
        (
            positional[0].id,
            positional[0].parent_id,
            positional[0].instance.as_deref()
        ),
        (5, Some(4), Some("w/0"))
    );
    // An ignored field holding a number beyond f64 is skipped (the fuzz oracle's
    // `serde_json::Value` refuses it).
    assert_eq!(
        director::decode_events(&seed("events_decode", "huge-number-in-context"))
            .unwrap()
            .len(),
        1
    );

    for (name, message) in [
        (
            "non-numeric-id",
            r#"event at index 1: id "abc" is not an event id (an integer)"#,
        ),
        (
            "negative-id",
            r#"event at index 0: id "-1" is not an event id (an integer)"#,
        ),
        (
            "id-beyond-u64",
            r#"event at index 0: id "18446744073709551616" is not an event id (an integer)"#,
        ),
        ("missing-timestamp", "event at index 0 (id 7): no timestamp"),
    ] {
        let err = director::decode_events(&seed("events_decode", name)).expect_err(name);
        assert_eq!(err.to_string(), message, "{name}");
    }
    assert!(matches!(
        director::decode_events(&seed("events_decode", "director-error-object")),
        Err(director::EventsDecodeError::Json(_))
    ));
}

#[test]
fn agent_ids_are_ascii_only_and_at_most_128_bytes() {
    assert!(AgentId::parse(&"a".repeat(128)).is_ok());
    assert_eq!(
        AgentId::parse(&"a".repeat(129)),
        Err(InvalidAgentId::TooLong)
    );
    // Unicode letters and digits are alphanumeric to Rust's `char` methods, not to §3.3.
    for raw in ["ａ", "١٢٣", "é", "x.>", "x*", "a b", "a\u{0}"] {
        assert_eq!(
            AgentId::parse(raw),
            Err(InvalidAgentId::ForbiddenCharacter),
            "{raw:?}"
        );
    }
    // 64 two-byte characters: 128 bytes, refused for the characters rather than the length.
    assert_eq!(
        AgentId::parse(&"é".repeat(64)),
        Err(InvalidAgentId::ForbiddenCharacter)
    );
}

#[test]
fn subject_files_are_trimmed_stripped_and_refused_with_control_characters() {
    let parsed = |raw: &str| Subject::parse(raw).map(|s| s.map(|s| s.as_str().to_owned()));
    assert_eq!(parsed("subject=\t CN=x \n"), Ok(Some("CN=x".into())));
    assert_eq!(parsed(" subject= \n"), Ok(None));
    assert_eq!(
        parsed("\u{a0}CN=x\u{2003}"),
        Ok(Some("CN=x".into())),
        "Unicode spaces trim"
    );
    assert!(parsed("CN=x\u{7f}").is_err(), "DEL is a control character");
    assert!(parsed("CN=a\nCN=b").is_err());
}
