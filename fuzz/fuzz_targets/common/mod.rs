//! Oracles shared by the fuzz targets: what must hold of desired users and of rendered files.

#![allow(dead_code)] // each target uses a different subset

use bosh_nats_sync::authfile::{self, Observed};
use bosh_nats_sync::pass::desired::{self, Desired, Subject, SubjectError, Subjects};
use bosh_nats_sync::users::AgentId;
use bosh_nats_sync::vm::Vm;
use bosh_nats_sync::users::reference::{User, Users};
use bosh_nats_sync::users::UserSet;

const DN_PREFIX: &str = "C=USA, O=Cloud Foundry, CN=";

/// §3.3: `[A-Za-z0-9_-]{1,128}`, written out independently of `AgentId::parse`.
pub fn is_valid_agent_id(raw: &str) -> bool {
    (1..=128).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// `AgentId::parse` accepts exactly the valid ids, and keeps them unchanged.
pub fn check_agent_id(raw: &str) {
    match AgentId::parse(raw) {
        Ok(id) => {
            assert!(
                is_valid_agent_id(raw),
                "accepted an invalid agent id {raw:?}"
            );
            assert_eq!(id.as_str(), raw);
        }
        Err(_) => assert!(!is_valid_agent_id(raw), "refused a valid agent id {raw:?}"),
    }
}

/// §3.2 for one subject file's content; returns what `Subject::parse` made of it.
pub fn check_subject(raw: &str) -> Option<Subject> {
    let parsed = Subject::parse(raw);
    let trimmed = raw.trim();
    let stripped = trimmed
        .strip_prefix("subject=")
        .map_or(trimmed, str::trim_start);
    match &parsed {
        Ok(None) => assert!(stripped.is_empty(), "{raw:?} was taken as blank"),
        Ok(Some(s)) => {
            let s = s.as_str();
            assert!(!s.is_empty());
            assert!(
                !s.chars().any(char::is_control),
                "{s:?} holds a control character"
            );
            assert_eq!(s, s.trim(), "{s:?} keeps surrounding whitespace");
            // One `subject=` prefix is stripped (what `openssl x509 -subject` prints); only
            // content that carried it twice may still start with it.
            assert!(
                !s.starts_with("subject=")
                    || trimmed
                        .strip_prefix("subject=")
                        .is_some_and(|rest| rest.trim_start().starts_with("subject=")),
                "{raw:?} kept its subject= prefix"
            );
            assert_eq!(s, stripped);
        }
        Err(SubjectError::ControlCharacter) => assert!(
            stripped.chars().any(char::is_control),
            "{raw:?} refused without a control character"
        ),
    }
    parsed.ok().flatten()
}

/// The escape characters used in rendered JSON: every backslash in serde_json's output
/// starts an escape, so a plain scan that skips the escaped character is exact.
pub fn escapes(rendered: &[u8]) -> Vec<u8> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < rendered.len() {
        if rendered[i] == b'\\' {
            found.push(
                *rendered
                    .get(i + 1)
                    .expect("an escape never ends the output"),
            );
            i += 2;
        } else {
            i += 1;
        }
    }
    found
}

/// The escapes nats-server 2.9.10's config parser accepts (besides `\xXX`, which serde_json
/// never writes): it rejects `\u`, `\b`, `\f` and `\/` with "Invalid escape character".
pub const NATS_ESCAPES: &[u8] = b"\"\\ntr";

/// Characters serde_json can only write as an escape nats-server rejects.
pub fn needs_rejected_escape(c: char) -> bool {
    c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r') && c != '\x7f'
}

fn strings_of(users: &Users) -> impl Iterator<Item = &str> {
    users.iter().flat_map(|u| {
        std::iter::once(u.user.as_str()).chain(u.permissions.iter().flat_map(|p| {
            p.publish
                .iter()
                .chain(p.subscribe.iter())
                .flatten()
                .map(String::as_str)
        }))
    })
}

/// `render` is read back by `classify` as the same users (or, for no users, as the NOBODY
/// file: `Users` empty), and uses an escape nats-server rejects exactly when some string
/// holds a control character other than tab, newline and carriage return.
pub fn check_render(users: &Users) {
    let rendered = authfile::reference::render(users);
    let expected = if users.is_empty() || users.0 == [nobody()] {
        Users::default()
    } else {
        users.clone()
    };
    assert_eq!(authfile::reference::classify(&rendered), Observed::Users(expected));
    let bad_escape = escapes(&rendered).iter().any(|e| !NATS_ESCAPES.contains(e));
    let has_control = strings_of(users).any(|s| s.chars().any(needs_rejected_escape));
    assert_eq!(
        bad_escape,
        has_control,
        "escapes {:?} in {:?}",
        String::from_utf8_lossy(&escapes(&rendered)),
        String::from_utf8_lossy(&rendered)
    );
    assert!(
        std::str::from_utf8(&rendered).is_ok(),
        "render writes UTF-8"
    );
    check_set(users);
}

/// The compact set a pass uses holds the same users: it expands back to them (as values),
/// renders byte for byte what `render` makes of its expansion, reads back equal, and
/// compares like `Users::same_as` — with a reordered copy (equal) and a shortened one.
pub fn check_set(users: &Users) {
    let set = UserSet::from_users(users.0.iter().cloned());
    assert_eq!(set.len(), users.len());
    let expanded = Users(set.to_users());
    assert!(expanded.same_as(users), "{expanded:?} vs {users:?}");
    let rendered = authfile::reference::render_set(&set);
    assert_eq!(rendered, authfile::reference::render(&expanded));
    let back = UserSet::from_users(match authfile::reference::classify(&rendered) {
        Observed::Users(u) => u.0,
        other => panic!("render_set wrote {other:?}"),
    });
    if !users.0.is_empty() && users.0 != [nobody()] {
        assert_eq!(back, set);
    }

    let mut reordered = users.clone();
    reordered.0.reverse();
    for user in &mut reordered.0 {
        if let Some(p) = user.permissions.as_mut() {
            for list in [p.publish.as_mut(), p.subscribe.as_mut()].into_iter().flatten() {
                list.reverse();
            }
        }
    }
    assert!(reordered.same_as(users));
    assert_eq!(UserSet::from_users(reordered.0), set);
    if let Some((_, shorter)) = users.0.split_last() {
        let shorter = Users(shorter.to_vec());
        assert_eq!(
            UserSet::from_users(shorter.0.iter().cloned()) == set,
            shorter.same_as(users)
        );
    }
}

pub fn nobody() -> User {
    User::new(authfile::NOBODY.to_owned(), vec![], vec![])
}

fn agent_permissions(id: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![
            format!("hm.agent.heartbeat.{id}"),
            format!("hm.agent.alert.{id}"),
            format!("hm.agent.shutdown.{id}"),
            format!("director.*.{id}.*"),
        ],
        vec![format!("agent.{id}")],
    )
}

/// Everything §3 says of `compute(subjects, vms)`.
pub fn check_desired(subjects: &Subjects, vms: &[Vm], desired: &Desired) {
    let expanded = Users(desired.users.to_users());
    let users = &expanded.0;
    let mut rest = users.as_slice();
    if let Some(s) = &subjects.director {
        let expected = User::new(
            s.as_str().to_owned(),
            vec!["agent.*".into(), "hm.director.alert".into()],
            vec!["director.>".into()],
        );
        assert_eq!(rest.first(), Some(&expected), "director user first");
        rest = &rest[1..];
    }
    if let Some(s) = &subjects.hm {
        let expected = User::new(
            s.as_str().to_owned(),
            vec![],
            vec![
                "hm.agent.heartbeat.*".into(),
                "hm.agent.alert.*".into(),
                "hm.agent.shutdown.*".into(),
                "hm.director.alert".into(),
            ],
        );
        assert_eq!(rest.first(), Some(&expected), "health monitor user next");
        rest = &rest[1..];
    }

    // What the director reported, independently of `compute`: valid id -> needs bootstrap.
    let mut expected_agents = std::collections::BTreeMap::<&str, bool>::new();
    let (mut none, mut invalid, mut valid_reports) = (0, 0, 0);
    for vm in vms {
        match vm.agent_id.as_deref() {
            None | Some("") => none += 1,
            Some(id) if !is_valid_agent_id(id) => invalid += 1,
            Some(id) => {
                valid_reports += 1;
                *expected_agents.entry(id).or_default() |= !vm.permanent_nats_credentials;
            }
        }
    }
    assert_eq!(desired.skipped.no_agent_id, none);
    assert_eq!(desired.skipped.invalid_agent_id, invalid);
    assert_eq!(
        desired.skipped.duplicate,
        valid_reports - expected_agents.len()
    );

    // Each agent-derived user: a DN and permissions built from a valid id, so no `*`, `>`
    // or `.` reaches a subject except in the fixed patterns.
    let mut seen = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let user = &rest[i];
        let cn = user
            .user
            .strip_prefix(DN_PREFIX)
            .unwrap_or_else(|| panic!("agent user {:?} lacks the DN prefix", user.user));
        let (id, bootstrap) = if let Some(id) = cn.strip_suffix(".bootstrap.agent.bosh-internal") {
            (id, true)
        } else if let Some(id) = cn.strip_suffix(".agent.bosh-internal") {
            (id, false)
        } else {
            panic!("agent user {:?} has an unexpected CN", user.user)
        };
        assert!(
            is_valid_agent_id(id),
            "user {:?} built from an invalid id",
            user.user
        );
        let (publish, subscribe) = agent_permissions(id);
        assert_eq!(user, &User::new(user.user.clone(), publish, subscribe));
        if bootstrap {
            // A bootstrap user is always followed by the same agent's permanent user.
            let next = rest
                .get(i + 1)
                .expect("bootstrap user without its agent user");
            assert_eq!(next.user, format!("{DN_PREFIX}{id}.agent.bosh-internal"));
            i += 1;
        }
        seen.push((id, bootstrap));
        i += 1;
    }
    let expected: Vec<(&str, bool)> = expected_agents.into_iter().collect();
    assert_eq!(
        seen, expected,
        "one entry per valid agent id, sorted, bootstrap as reported"
    );

    let c = desired.counts;
    assert_eq!(c.director + c.hm + c.agent + c.agent_bootstrap, users.len());
    assert_eq!(c.agent, seen.len());

    // Deterministic whatever order the director answered in.
    let reversed: Vec<Vm> = vms.iter().rev().cloned().collect();
    assert_eq!(desired::compute(subjects, reversed), *desired);

    // Desired users never need an escape beyond `\"` and `\\`, and read back unchanged.
    let rendered = authfile::reference::render(&expanded);
    assert_eq!(authfile::reference::render_set(&desired.users), rendered);
    assert!(
        escapes(&rendered).iter().all(|e| matches!(e, b'"' | b'\\')),
        "{:?}",
        String::from_utf8_lossy(&rendered)
    );
    check_render(&expanded);
}
