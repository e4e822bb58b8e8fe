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

use std::collections::BTreeMap;
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

/// A subject of a set, for counting what a write adds and removes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dn<'a> {
    Agent(&'a str, bool),
    Other(&'a str),
}

/// The subjects a change adds and removes, and those whose permissions it changes: what
/// `diff` lists. Each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
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

    /// The distinct subjects, sorted (agent subjects as their id and kind).
    fn subjects(&self) -> Vec<Dn<'_>> {
        let mut out = Vec::with_capacity(self.len);
        for u in &self.others {
            out.push(match agent::parse_dn(&u.user) {
                Some((id, bootstrap)) => Dn::Agent(id, bootstrap),
                None => Dn::Other(&u.user),
            });
        }
        let before = out.len();
        // In `Dn` order: by id, the permanent user's subject (false) before the bootstrap's.
        for a in &self.agents {
            if a.agent > 0 {
                out.push(Dn::Agent(a.id.as_str(), false));
            }
            if a.bootstrap > 0 {
                out.push(Dn::Agent(a.id.as_str(), true));
            }
        }
        if before > 0 {
            out.sort_unstable();
        }
        out.dedup();
        out
    }

    /// How many subjects going from `self` to `to` adds and removes: `(added, removed)`.
    /// Cheap (no DN is built): what every pass reports.
    pub fn subject_changes(&self, to: &UserSet) -> (usize, usize) {
        let (mine, theirs) = (self.subjects(), to.subjects());
        let (mut i, mut j, mut added, mut removed) = (0, 0, 0, 0);
        while i < mine.len() && j < theirs.len() {
            match mine[i].cmp(&theirs[j]) {
                std::cmp::Ordering::Less => {
                    removed += 1;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    added += 1;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            }
        }
        (added + theirs.len() - j, removed + mine.len() - i)
    }

    /// The subjects going from `self` to `to` adds, removes, and gives other permissions
    /// (a subject listed more than once compares all its entries), by name: what `diff`
    /// prints. Builds every DN, so it is for the command line, not for every pass.
    pub fn list_changes(&self, to: &UserSet) -> SubjectChanges {
        type Grants = Vec<Option<Permissions>>;
        let by_subject = |set: &UserSet| {
            let mut map: BTreeMap<String, Grants> = BTreeMap::new();
            for user in canonical(&set.to_users()) {
                map.entry(user.user).or_default().push(user.permissions);
            }
            map
        };
        let (mine, theirs) = (by_subject(self), by_subject(to));
        let mut changes = SubjectChanges::default();
        for (subject, grants) in &mine {
            match theirs.get(subject) {
                None => changes.removed.push(subject.clone()),
                Some(other) if other != grants => changes.changed.push(subject.clone()),
                Some(_) => {}
            }
        }
        changes.added = theirs
            .keys()
            .filter(|s| !mine.contains_key(*s))
            .cloned()
            .collect();
        changes
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
    fn to_users_and_subject_changes_agree_with_the_users() {
        let lists = lists();
        for a in &lists {
            let sa = UserSet::from_users(a.0.clone());
            assert!(Users(sa.to_users()).same_as(a), "{a:?}");
            for b in &lists {
                let sb = UserSet::from_users(b.0.clone());
                let (added, removed) = a.diff(b);
                assert_eq!(
                    sa.subject_changes(&sb),
                    (added.len(), removed.len()),
                    "{a:?} -> {b:?}"
                );
                // The listing `diff` prints names the same subjects, and finds a change of
                // permissions exactly when the values differ with no subject added or removed.
                let listed = sa.list_changes(&sb);
                assert_eq!(listed.added, added, "{a:?} -> {b:?}");
                assert_eq!(listed.removed, removed, "{a:?} -> {b:?}");
                if listed.added.is_empty() && listed.removed.is_empty() {
                    assert_eq!(listed.changed.is_empty(), a.same_as(b), "{a:?} -> {b:?}");
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
