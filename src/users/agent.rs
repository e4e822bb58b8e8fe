//! The agent user, in one place (§3.1, §3.3): the [`AgentId`] type, the DN and permission
//! templates, recognising an agent user in a file (and an agent's certificate name, for
//! callout mode), writing one as the file's bytes, and merging several reports of one agent.
//!
//! Every other module goes through these functions; none spells a DN or a permission
//! pattern of its own, so the value ([`user`]), the recognition ([`recognise`]) and the
//! bytes ([`write_json`]) cannot drift apart. One round-trip test covers all three.

use std::fmt;
use std::io::{self, Write};

use crate::users::{Permissions, User};

/// An agent id that is safe inside a NATS subject and a DN: `[A-Za-z0-9_-]{1,128}`.
/// A boxed `str` (16 bytes, no spare capacity): a big director has 100 000 of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(Box<str>);

/// Why an agent id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidAgentId {
    Empty,
    TooLong,
    ForbiddenCharacter,
}

impl AgentId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidAgentId> {
        check(raw)?;
        Ok(Self(raw.into()))
    }

    /// [`AgentId::parse`] for an id the caller owns (a director response's): keeps its
    /// allocation, and hands the refused text back with the reason.
    pub fn parse_string(raw: String) -> Result<Self, (InvalidAgentId, String)> {
        match check(&raw) {
            Ok(()) => Ok(Self(raw.into_boxed_str())),
            Err(e) => Err((e, raw)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(raw: &str) -> Result<(), InvalidAgentId> {
    if raw.is_empty() {
        return Err(InvalidAgentId::Empty);
    }
    if raw.len() > AgentId::MAX_LEN {
        return Err(InvalidAgentId::TooLong);
    }
    if !raw.bytes().all(|b| ALLOWED[usize::from(b)]) {
        return Err(InvalidAgentId::ForbiddenCharacter);
    }
    Ok(())
}

/// The bytes an agent id may hold, `[A-Za-z0-9_-]`, as a table: checked for every VM of every
/// pass, and a table lookup per byte is what a size-optimised build runs fastest.
const ALLOWED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// The country and organisation of every agent certificate's subject (callout mode compares a
/// certificate's attributes with them, §12); the DN prefix spells them for the auth file.
pub const COUNTRY: &str = "USA";
pub const ORGANIZATION: &str = "Cloud Foundry";
const DN_PREFIX: &str = "C=USA, O=Cloud Foundry, CN=";
const BOOTSTRAP_CN_SUFFIX: &str = ".bootstrap.agent.bosh-internal";
const CN_SUFFIX: &str = ".agent.bosh-internal";

/// The publish patterns of agent `id`, as `(prefix, suffix)` around the id, in file order.
const PUBLISH: [(&str, &str); 4] = [
    ("hm.agent.heartbeat.", ""),
    ("hm.agent.alert.", ""),
    ("hm.agent.shutdown.", ""),
    ("director.*.", ".*"),
];
/// The subscribe pattern of agent `id`.
const SUBSCRIBE: (&str, &str) = ("agent.", "");

fn cn_suffix(bootstrap: bool) -> &'static str {
    if bootstrap {
        BOOTSTRAP_CN_SUFFIX
    } else {
        CN_SUFFIX
    }
}

/// The DN of an agent's user: the one with permanent credentials, or its bootstrap user.
pub fn dn(id: &str, bootstrap: bool) -> String {
    format!("{DN_PREFIX}{id}{}", cn_suffix(bootstrap))
}

/// The user of an agent: the one with permanent credentials, or its bootstrap user.
pub fn user(id: &AgentId, bootstrap: bool) -> User {
    User {
        user: dn(id.as_str(), bootstrap),
        permissions: Some(permissions(id)),
    }
}

/// What agent `id` may publish and subscribe to — its bootstrap user and its user alike. The
/// auth file's entries and callout mode's user JWTs (§12) both take them from here.
pub fn permissions(id: &AgentId) -> Permissions {
    let around = |(prefix, suffix): (&str, &str)| format!("{prefix}{id}{suffix}");
    Permissions {
        publish: Some(PUBLISH.into_iter().map(around).collect()),
        subscribe: Some(vec![around(SUBSCRIBE)]),
    }
}

/// The agent a DN names, if it is an agent DN with a valid id: `(id, is the bootstrap
/// user's DN)`. Borrowed from `dn`; permissions are not looked at.
pub fn parse_dn(dn: &str) -> Option<(&str, bool)> {
    parse_cn(dn.strip_prefix(DN_PREFIX)?)
}

/// The agent a certificate's common name names, if it is `A.agent.bosh-internal` or
/// `A.bootstrap.agent.bosh-internal` with a valid id A: `(A, is the bootstrap name)`.
pub fn parse_cn(cn: &str) -> Option<(&str, bool)> {
    let (id, bootstrap) = match cn.strip_suffix(BOOTSTRAP_CN_SUFFIX) {
        Some(id) => (id, true),
        None => (cn.strip_suffix(CN_SUFFIX)?, false),
    };
    check(id).ok()?;
    Some((id, bootstrap))
}

/// `(id, is the bootstrap user)` when `user` is exactly what [`user`] makes: the agent DN and
/// the agent permissions, each list compared as a multiset (order means nothing to
/// nats-server).
pub fn recognise(user: &User) -> Option<(AgentId, bool)> {
    let (id, bootstrap) = parse_dn(&user.user)?;
    let permissions = user.permissions.as_ref()?;
    let publish = permissions.publish.as_deref()?;
    let subscribe = permissions.subscribe.as_deref()?;
    let is = |subject: &str, (prefix, suffix): (&str, &str)| {
        subject
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            == Some(id)
    };
    if subscribe.len() != 1 || !is(&subscribe[0], SUBSCRIBE) || publish.len() != PUBLISH.len() {
        return None;
    }
    // As many entries as distinct patterns, and every pattern matched: the same multiset.
    let mut seen = 0u8;
    for subject in publish {
        let i = PUBLISH.iter().position(|&p| is(subject, p))?;
        seen |= 1 << i;
    }
    if seen != (1 << PUBLISH.len()) - 1 {
        return None;
    }
    Some((AgentId::parse(id).ok()?, bootstrap))
}

/// Writes [`user`]`(id, bootstrap)` exactly as serde_json serialises it, without building it
/// (a valid agent id needs no escaping).
pub fn write_json(w: &mut impl Write, id: &AgentId, bootstrap: bool) -> io::Result<()> {
    let id = id.as_str().as_bytes();
    w.write_all(b"{\"user\":\"")?;
    w.write_all(DN_PREFIX.as_bytes())?;
    w.write_all(id)?;
    w.write_all(cn_suffix(bootstrap).as_bytes())?;
    w.write_all(b"\",\"permissions\":{\"publish\":[")?;
    for (i, (prefix, suffix)) in PUBLISH.into_iter().enumerate() {
        w.write_all(if i == 0 { b"\"" } else { b",\"" })?;
        for part in [prefix.as_bytes(), id, suffix.as_bytes()] {
            w.write_all(part)?;
        }
        w.write_all(b"\"")?;
    }
    w.write_all(b"],\"subscribe\":[\"")?;
    for part in [SUBSCRIBE.0.as_bytes(), id, SUBSCRIBE.1.as_bytes()] {
        w.write_all(part)?;
    }
    w.write_all(b"\"]}}")
}

/// Sorts `entries` by agent id and merges the entries of one id into the first of them with
/// `combine(kept, later)`, keeping entries of different ids in id order. Stable: of equal
/// ids, the entry that came first is the one kept. Returns how many entries were merged away.
///
/// The one way reports of an agent are merged: the director reporting an id twice, a file
/// listing an agent's users separately, damping adding back agents a pass would remove.
pub fn merge_by_id<T, K: AsRef<str>>(
    entries: &mut Vec<T>,
    id: impl Fn(&T) -> &K,
    mut combine: impl FnMut(&mut T, T),
) -> usize {
    entries.sort_by(|a, b| id(a).as_ref().cmp(id(b).as_ref()));
    let before = entries.len();
    let mut merged: Vec<T> = Vec::with_capacity(before);
    for entry in entries.drain(..) {
        match merged.last_mut() {
            Some(kept) if id(kept).as_ref() == id(&entry).as_ref() => combine(kept, entry),
            _ => merged.push(entry),
        }
    }
    *entries = merged;
    before - entries.len()
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_table() {
        let long = "a".repeat(129);
        for bad in [
            "x.>", "*", ">", "a b", "a,b=c", "a\"b", "a'b", "a\\b", "ä", "a\tb", "a\nb", "", "a.b",
            &long,
        ] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} must be rejected");
            assert!(AgentId::parse_string(bad.to_owned()).is_err(), "{bad:?}");
        }
        let max = "Z".repeat(128);
        for good in [
            "4e3f6a3c-2b1d-4b8a-9c1e-0f2d3c4b5a69",
            "abc_DEF-123",
            "a",
            &max,
        ] {
            assert_eq!(AgentId::parse(good).unwrap().as_str(), good);
        }
    }

    /// Every encoding of an agent user agrees: the value, its DN, its recognition and its
    /// bytes (which must be what serde_json makes of the value, with no `\u` escape).
    #[test]
    fn value_dn_recognition_and_bytes_round_trip() {
        for raw in ["a", "4e3f6a3c-2b1d-4b8a-9c1e-0f2d3c4b5a69", "Z_-9"] {
            let id = AgentId::parse(raw).unwrap();
            for bootstrap in [false, true] {
                let value = user(&id, bootstrap);
                let kind = if bootstrap { ".bootstrap" } else { "" };
                assert_eq!(
                    value.user,
                    format!("C=USA, O=Cloud Foundry, CN={raw}{kind}.agent.bosh-internal")
                );
                let p = value.permissions.as_ref().unwrap();
                assert_eq!(
                    p.publish.as_deref().unwrap(),
                    [
                        format!("hm.agent.heartbeat.{raw}"),
                        format!("hm.agent.alert.{raw}"),
                        format!("hm.agent.shutdown.{raw}"),
                        format!("director.*.{raw}.*"),
                    ]
                );
                assert_eq!(p.subscribe.as_deref().unwrap(), [format!("agent.{raw}")]);
                assert_eq!(parse_dn(&value.user), Some((raw, bootstrap)));
                assert_eq!(
                    parse_cn(&format!("{raw}{kind}.agent.bosh-internal")),
                    Some((raw, bootstrap))
                );
                assert_eq!(value.permissions.as_ref(), Some(&permissions(&id)));
                assert_eq!(recognise(&value), Some((id.clone(), bootstrap)));
                let mut bytes = Vec::new();
                write_json(&mut bytes, &id, bootstrap).unwrap();
                assert_eq!(bytes, serde_json::to_vec(&value).unwrap());
                assert!(!String::from_utf8(bytes).unwrap().contains("\\u"));
            }
        }
    }

    #[test]
    fn dn_prefix_spells_the_country_and_organization() {
        assert_eq!(DN_PREFIX, format!("C={COUNTRY}, O={ORGANIZATION}, CN="));
        for cn in [
            "a.agent.bosh-internal.x",
            "a.Agent.bosh-internal",
            ".agent.bosh-internal",
            "x.>.agent.bosh-internal",
            "a",
        ] {
            assert_eq!(parse_cn(cn), None, "{cn}");
        }
    }

    #[test]
    fn recognition_takes_permission_lists_as_multisets_and_nothing_else() {
        let id = AgentId::parse("a").unwrap();
        let changed = |f: fn(&mut User)| {
            let mut u = user(&id, false);
            f(&mut u);
            recognise(&u)
        };

        fn publish(u: &mut User) -> &mut Vec<String> {
            u.permissions.as_mut().unwrap().publish.as_mut().unwrap()
        }
        assert!(changed(|u| publish(u).reverse()).is_some(), "order");
        assert!(changed(|u| drop(publish(u).pop())).is_none(), "one fewer");
        assert!(
            changed(|u| publish(u)[3] = publish(u)[0].clone()).is_none(),
            "repeated"
        );
        assert!(
            changed(|u| publish(u).push("x".into())).is_none(),
            "one more"
        );
        assert!(
            changed(|u| u.permissions.as_mut().unwrap().subscribe = Some(vec!["agent.b".into()]))
                .is_none(),
            "another agent's subscription"
        );
        assert!(
            changed(|u| u.permissions = None).is_none(),
            "no permissions"
        );
        assert!(changed(|u| u.user = "CN=a.agent.bosh-internal".into()).is_none());
        assert_eq!(
            parse_dn("C=USA, O=Cloud Foundry, CN=default.director.bosh-internal"),
            None
        );
        assert_eq!(
            parse_dn("C=USA, O=Cloud Foundry, CN=x.>.agent.bosh-internal"),
            None
        );
    }

    #[test]
    fn merge_keeps_the_first_of_each_id_in_id_order() {
        let mut v = vec![("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)];
        let merged = merge_by_id(&mut v, |e| &e.0, |kept, later| kept.1 += later.1 * 10);
        assert_eq!(merged, 2);
        assert_eq!(v, [("a", 52), ("b", 31), ("c", 4)]);
    }
}
