//! A set of NATS users held compactly: what a pass compares, renders and damps.
//!
//! A big director has 100 000 agents and 150 000 users. Held as [`User`] values, each agent
//! user is eight heap allocations and ~620 bytes; held here, an agent is one entry — its id
//! and how many users of each kind it has — and its users' DNs and permissions are produced
//! when the file is rendered. Any user that is not exactly an agent user this program would
//! write (the director's and the health monitor's, a hand-added one, an agent DN with other
//! permissions) is kept as it is.
//!
//! Equality is by value (§4.3): the order of users and the order inside a permission list do
//! not matter, a user listed twice differs from one listed once. Which part a user lands in
//! depends only on its value (permission lists compared as multisets, [`agent::recognise`]),
//! so two sets are equal exactly when their users are.

use std::hash::{Hash, Hasher};

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

use crate::users::agent::{self, AgentId};
use crate::users::{Permissions, User};

/// How many users of each kind one agent has in a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AgentUsers {
    id: AgentId,
    /// Users `…CN=<id>.bootstrap.agent.bosh-internal` with the agent permissions.
    bootstrap: u32,
    /// Users `…CN=<id>.agent.bosh-internal` with the agent permissions.
    agent: u32,
}

impl AgentUsers {
    fn new(id: AgentId, bootstrap: bool) -> Self {
        Self {
            id,
            bootstrap: u32::from(bootstrap),
            agent: 1,
        }
    }
}

/// Users, compactly (see the module documentation). Invariant: `agents` is sorted by id
/// with each id once and a non-zero count; `len` is the number of users.
#[derive(Debug, Clone, Default)]
pub struct UserSet {
    agents: Vec<AgentUsers>,
    /// Every other user, in the order given.
    others: Vec<User>,
    len: usize,
}

impl PartialEq for UserSet {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self.agents == other.agents
            && canonical(&self.others) == canonical(&other.others)
    }
}

impl Eq for UserSet {}

/// Users sorted, with sorted permission lists: equal exactly when the users are equal as
/// values. Only ever the few users that are not agents' (the director's, the health
/// monitor's, hand edits), so the copies are cheap.
fn canonical(users: &[User]) -> Vec<User> {
    let mut users: Vec<User> = users
        .iter()
        .map(|u| {
            let mut u = u.clone();
            if let Some(p) = u.permissions.as_mut() {
                for list in [p.publish.as_mut(), p.subscribe.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    list.sort_unstable();
                }
            }
            u
        })
        .collect();
    users.sort_unstable();
    users
}

/// One user of a set, as [`UserSet::for_each`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRef<'a> {
    /// A user that is not an agent user as this program writes it.
    Other(&'a User),
    /// The agent user of this id — its bootstrap user when the flag is set.
    Agent(&'a AgentId, bool),
}

/// A subject of a set, borrowed, in the order [`Changes`] lists them: agents' by id, the
/// permanent user's before the bootstrap user's, then every other DN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DnRef<'a> {
    Agent(&'a str, bool),
    Other(&'a str),
}

impl DnRef<'_> {
    fn owned(self) -> Dn {
        match self {
            DnRef::Agent(id, bootstrap) => Dn::Agent(id.into(), bootstrap),
            DnRef::Other(dn) => Dn::Other(dn.into()),
        }
    }
}

/// What one user of a subject is granted: exactly what this program writes for an agent,
/// or permissions of its own (sorted lists, so order does not count).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Grant {
    Agent,
    Own(Option<Permissions>),
}

fn canonical_permissions(permissions: &Option<Permissions>) -> Option<Permissions> {
    let mut p = permissions.clone()?;
    for list in [p.publish.as_mut(), p.subscribe.as_mut()]
        .into_iter()
        .flatten()
    {
        list.sort_unstable();
    }
    Some(p)
}

/// A subject (DN) a change touches, held compactly (an agent's by its id): [`std::fmt::Display`]
/// writes its DN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dn {
    /// The agent's permanent subject, or its bootstrap subject when the flag is set.
    Agent(Box<str>, bool),
    Other(Box<str>),
}

impl std::fmt::Display for Dn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dn::Agent(id, bootstrap) => f.write_str(&agent::dn(id, *bootstrap)),
            Dn::Other(dn) => f.write_str(dn),
        }
    }
}

/// What a change does, subject by subject ([`UserSet::changes`]): each list in subject order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<Dn>,
    pub removed: Vec<Dn>,
    /// Kept, with other permissions.
    pub changed: Vec<Dn>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl UserSet {
    /// The users in the given order, sorted into their parts.
    pub fn from_users(users: impl IntoIterator<Item = User>) -> Self {
        let mut agents = Vec::new();
        let mut others = Vec::new();
        for user in users {
            match agent::recognise(&user) {
                Some((id, bootstrap)) => agents.push(AgentUsers {
                    id,
                    bootstrap: u32::from(bootstrap),
                    agent: u32::from(!bootstrap),
                }),
                None => others.push(user),
            }
        }
        let len = agents.len() + others.len();
        agent::merge_by_id(
            &mut agents,
            |a| &a.id,
            |kept, later| {
                kept.bootstrap += later.bootstrap;
                kept.agent += later.agent;
            },
        );
        agents.shrink_to_fit();
        UserSet {
            agents,
            others,
            len,
        }
    }

    /// A desired state: `components` (director, health monitor) first, then one permanent
    /// user per agent and a bootstrap user for each agent flagged so. `agents` must be sorted
    /// by id, each id once (as [`agent::merge_by_id`] leaves them).
    pub fn desired(components: Vec<User>, agents: Vec<(AgentId, bool)>) -> Self {
        debug_assert!(agents.windows(2).all(|w| w[0].0 < w[1].0));
        let mut set = Self::from_users(components);
        set.add_agents(agents);
        set
    }

    /// Adds a permanent user (and a bootstrap user when flagged) for each agent that has no
    /// entry yet; an agent already present is left as it is.
    pub fn add_agents(&mut self, agents: impl IntoIterator<Item = (AgentId, bool)>) {
        let before = self.agents.len();
        self.agents.extend(
            agents
                .into_iter()
                .map(|(id, bootstrap)| AgentUsers::new(id, bootstrap)),
        );
        // Already sorted and merged when nothing was there before (a desired state).
        if before > 0 {
            agent::merge_by_id(&mut self.agents, |a| &a.id, |_kept, _later| {});
        }
        self.len = self.others.len()
            + self
                .agents
                .iter()
                .map(|a| (a.bootstrap + a.agent) as usize)
                .sum::<usize>();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Agents with an entry (a user with exactly the agent permissions).
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Agents with at least one bootstrap user.
    pub fn bootstrap_count(&self) -> usize {
        self.agents.iter().filter(|a| a.bootstrap > 0).count()
    }

    /// True when the set is exactly this one user.
    pub fn is_only(&self, user: &User) -> bool {
        self.len == 1 && self.others.first() == Some(user)
    }

    /// Every user, in file order: the other users as given, then per agent (by id) its
    /// bootstrap users and its permanent users. Stops at the first error.
    pub fn for_each<E>(&self, mut f: impl FnMut(UserRef<'_>) -> Result<(), E>) -> Result<(), E> {
        for user in &self.others {
            f(UserRef::Other(user))?;
        }
        for a in &self.agents {
            for _ in 0..a.bootstrap {
                f(UserRef::Agent(&a.id, true))?;
            }
            for _ in 0..a.agent {
                f(UserRef::Agent(&a.id, false))?;
            }
        }
        Ok(())
    }

    /// The users as values, in the order [`UserSet::for_each`] gives them.
    pub fn to_users(&self) -> Vec<User> {
        let mut users = Vec::with_capacity(self.len);
        let _: Result<(), ()> = self.for_each(|u| {
            users.push(match u {
                UserRef::Other(u) => u.clone(),
                UserRef::Agent(id, bootstrap) => agent::user(id, bootstrap),
            });
            Ok(())
        });
        users
    }

    /// Every agent with a user in the set, whatever that user's permissions: `(id, has a
    /// bootstrap user)`, sorted by id, each id once. Borrowed: no id is copied.
    pub fn agents(&self) -> Vec<(&str, bool)> {
        let mut out: Vec<(&str, bool)> = self
            .agents
            .iter()
            .map(|a| (a.id.as_str(), a.bootstrap > 0))
            .collect();
        let before = out.len();
        out.extend(self.others.iter().filter_map(|u| agent::parse_dn(&u.user)));
        if out.len() > before {
            agent::merge_by_id(&mut out, |a| &a.0, |kept, later| kept.1 |= later.1);
        }
        out
    }

    /// What going from `self` to `to` changes, subject by subject: the subjects it adds, those
    /// it removes, and those it keeps with other permissions (a subject listed more than once
    /// compares all its entries). The one account of a change: a pass logs its counts and
    /// `diff` prints its names. Compares the compact parts (no DN is built for an unchanged
    /// subject), so it costs a sort of the subjects, not a rendering of the users.
    pub fn changes(&self, to: &UserSet) -> Changes {
        let (mine, theirs) = (self.grants(), to.grants());
        let mut changes = Changes::default();
        let (mut i, mut j) = (0, 0);
        // The end of the run of entries for the subject at `at` (sorted: a run is together).
        fn end(list: &[(DnRef<'_>, Grant)], at: usize) -> usize {
            at + list[at..]
                .iter()
                .take_while(|(d, _)| *d == list[at].0)
                .count()
        }
        while i < mine.len() || j < theirs.len() {
            let order = match (mine.get(i), theirs.get(j)) {
                (Some((a, _)), Some((b, _))) => a.cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    changes.removed.push(mine[i].0.owned());
                    i = end(&mine, i);
                }
                std::cmp::Ordering::Greater => {
                    changes.added.push(theirs[j].0.owned());
                    j = end(&theirs, j);
                }
                std::cmp::Ordering::Equal => {
                    let (end_i, end_j) = (end(&mine, i), end(&theirs, j));
                    let (a, b) = (&mine[i..end_i], &theirs[j..end_j]);
                    if !a.iter().map(|(_, g)| g).eq(b.iter().map(|(_, g)| g)) {
                        changes.changed.push(mine[i].0.owned());
                    }
                    (i, j) = (end_i, end_j);
                }
            }
        }
        changes
    }

    /// Every user as its subject and its grant, sorted (by subject, then grant): agents'
    /// subjects by id and kind, whichever part of the set holds them.
    fn grants(&self) -> Vec<(DnRef<'_>, Grant)> {
        let mut out = Vec::with_capacity(self.len);
        for u in &self.others {
            let dn = match agent::parse_dn(&u.user) {
                Some((id, bootstrap)) => DnRef::Agent(id, bootstrap),
                None => DnRef::Other(&u.user),
            };
            out.push((dn, Grant::Own(canonical_permissions(&u.permissions))));
        }
        for a in &self.agents {
            for (bootstrap, n) in [(false, a.agent), (true, a.bootstrap)] {
                for _ in 0..n {
                    out.push((DnRef::Agent(a.id.as_str(), bootstrap), Grant::Agent));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// A hash of the set's content, for recognising the same desired state on a later pass
    /// (sets built the same way from the same input hash the same).
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.others.hash(&mut h);
        self.agents.hash(&mut h);
        h.finish()
    }
}

/// Reads a JSON list of users one at a time, so a file of 150 000 users is never held as
/// values.
impl<'de> Deserialize<'de> for UserSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = UserSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of users")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UserSet, A::Error> {
                // One user at a time: each is sorted into its part before the next is read.
                let users = std::iter::from_fn(|| seq.next_element::<User>().transpose());
                let mut error = None;
                let set = UserSet::from_users(users.map_while(|r| match r {
                    Ok(u) => Some(u),
                    Err(e) => {
                        error = Some(e);
                        None
                    }
                }));
                match error {
                    Some(e) => Err(e),
                    None => Ok(set),
                }
            }
        }
        deserializer.deserialize_seq(Each)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::pass::desired::{self, Subject, Subjects};
    use crate::users::reference::Users;
    use crate::users::user::u;
    use crate::vm::Vm;

    fn agent(id: &str, bootstrap: bool) -> User {
        agent::user(&AgentId::parse(id).unwrap(), bootstrap)
    }

    fn desired_for(ids: &[(&str, bool)]) -> UserSet {
        let subjects = Subjects {
            director: Subject::parse("CN=d").unwrap(),
            hm: Subject::parse("CN=h").unwrap(),
        };
        let vms = ids
            .iter()
            .map(|(id, permanent)| Vm {
                agent_id: Some(id.to_string()),
                permanent_nats_credentials: *permanent,
            })
            .collect();
        desired::compute(&subjects, vms).users
    }

    /// A table of user lists: agent users as written, reordered, duplicated, with other
    /// permissions, under another DN; component users; nothing.
    fn lists() -> Vec<Users> {
        // Agent a's user with its publish list changed by `change`.
        let publishing = |change: fn(&mut Vec<String>)| {
            let mut user = agent("a", false);
            change(user.permissions.as_mut().unwrap().publish.as_mut().unwrap());
            user
        };
        let reordered = publishing(|p| p.reverse());
        let fewer = publishing(|p| {
            p.pop();
        });
        let repeated = publishing(|p| p[3] = p[0].clone());
        let other_agent = {
            let mut x = agent("a", false);
            x.permissions.as_mut().unwrap().subscribe = Some(vec!["agent.b".into()]);
            x
        };
        let no_permissions = User {
            user: agent("a", false).user,
            permissions: None,
        };
        vec![
            Users(vec![]),
            Users(vec![agent("a", false)]),
            Users(vec![reordered.clone()]),
            Users(vec![fewer]),
            Users(vec![repeated]),
            Users(vec![other_agent.clone()]),
            Users(vec![no_permissions]),
            Users(vec![agent("a", true), agent("a", false)]),
            Users(vec![agent("a", false), agent("a", true)]),
            Users(vec![agent("a", false), agent("a", false)]),
            Users(vec![agent("a", false), reordered]),
            Users(vec![agent("a", false), other_agent]),
            Users(vec![agent("b", false), agent("a", true)]),
            Users(vec![u("CN=d", &["x", "y"], &["s"]), agent("a", false)]),
            Users(vec![agent("a", false), u("CN=d", &["y", "x"], &["s"])]),
            Users(vec![u("CN=d", &["x"], &["s"]), agent("a", false)]),
            Users(desired_for(&[("a", true), ("b", false)]).to_users()),
            Users(desired_for(&[("b", false), ("a", true)]).to_users()),
            Users(desired_for(&[("a", false), ("b", false)]).to_users()),
        ]
    }

    /// The compact comparison agrees with comparing the users as values, on every pair.
    #[test]
    fn equality_agrees_with_users_same_as() {
        let lists = lists();
        for a in &lists {
            for b in &lists {
                let (sa, sb) = (
                    UserSet::from_users(a.0.clone()),
                    UserSet::from_users(b.0.clone()),
                );
                assert_eq!(sa == sb, a.same_as(b), "{a:?} vs {b:?}");
                assert_eq!(sa.len(), a.len());
            }
        }
    }

    /// Expanding a set gives back the same users (as values), and the subject counts agree
    /// with `Users::diff`.
    #[test]
    fn to_users_and_changes_agree_with_the_users() {
        let lists = lists();
        for a in &lists {
            let sa = UserSet::from_users(a.0.clone());
            assert!(Users(sa.to_users()).same_as(a), "{a:?}");
            for b in &lists {
                let sb = UserSet::from_users(b.0.clone());
                let (added, removed) = a.diff(b);
                // The same subjects by name, and a change of permissions exactly when the
                // values differ with no subject added or removed.
                let changes = sa.changes(&sb);
                let names = |list: &[Dn]| {
                    let mut names: Vec<String> = list.iter().map(ToString::to_string).collect();
                    names.sort_unstable();
                    names
                };
                assert_eq!(names(&changes.added), added, "{a:?} -> {b:?}");
                assert_eq!(names(&changes.removed), removed, "{a:?} -> {b:?}");
                if changes.added.is_empty() && changes.removed.is_empty() {
                    assert_eq!(changes.changed.is_empty(), a.same_as(b), "{a:?} -> {b:?}");
                }
            }
        }
    }

    #[test]
    fn agents_lists_every_agent_dn_once() {
        let mut odd = agent("c", true);
        odd.permissions = None;
        let set = UserSet::from_users(vec![
            agent("b", false),
            odd,
            agent("a", true),
            agent("a", false),
            u("CN=d", &[], &[]),
        ]);
        assert_eq!(set.agents(), [("a", true), ("b", false), ("c", true)]);
    }

    #[test]
    fn add_agents_keeps_existing_entries() {
        let mut set = desired_for(&[("a", true), ("c", true)]);
        set.add_agents([
            (AgentId::parse("a").unwrap(), false),
            (AgentId::parse("b").unwrap(), true),
        ]);
        // `desired_for` takes "has permanent credentials": only b gets a bootstrap user.
        assert_eq!(set, desired_for(&[("a", true), ("b", false), ("c", true)]));
        assert_eq!(set.len(), 2 + 4);
    }

    #[test]
    fn fingerprint_follows_content() {
        let one = desired_for(&[("a", true), ("b", false)]);
        assert_eq!(
            one.fingerprint(),
            desired_for(&[("b", false), ("a", true)]).fingerprint()
        );
        assert_ne!(
            one.fingerprint(),
            desired_for(&[("a", false), ("b", false)]).fingerprint()
        );
    }
}
