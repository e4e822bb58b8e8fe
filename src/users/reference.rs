//! The reference model of a users list (tests and the `reference-model` feature only): users
//! as plain values, compared by sorting. Production code holds users as a compact
//! [`UserSet`](crate::users::UserSet) and compares files as bytes; this slow, obvious model is
//! what unit tests, the integration tests and the fuzz targets check that code against.

use serde::Deserialize;

pub use crate::users::{Permissions, User};

/// A list of users in file order. Comparison with [`Users::same_as`] is by value: the order
/// of users and of subjects inside a permission list does not matter to nats-server, so it
/// must not cause a write either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Users(pub Vec<User>);

impl Users {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.0.iter()
    }

    /// True when both lists grant exactly the same rights to the same subjects.
    ///
    /// Runs on every pass over every user (150 000 on a big director), so the usual case —
    /// no subject listed twice — compares references sorted by subject, and a permission
    /// list is only sorted (as references) when the two sides list it in different orders.
    /// A subject listed twice takes the general path through [`Users::canonical`].
    pub fn same_as(&self, other: &Users) -> bool {
        if self.len() != other.len() {
            return false;
        }
        // A file this program wrote lists the users in the order it would write them now:
        // the steady state compares equal without sorting or allocating.
        if self.0 == other.0 {
            return true;
        }
        match (self.by_subject(), other.by_subject()) {
            (Some(mine), Some(theirs)) => mine.iter().zip(&theirs).all(|(a, b)| {
                a.user == b.user && same_permissions(a.permissions.as_ref(), b.permissions.as_ref())
            }),
            _ => self.canonical() == other.canonical(),
        }
    }

    /// The users sorted by subject, or `None` when a subject appears more than once.
    fn by_subject(&self) -> Option<Vec<&User>> {
        let mut users: Vec<&User> = self.0.iter().collect();
        users.sort_unstable_by(|a, b| a.user.cmp(&b.user));
        users
            .windows(2)
            .all(|w| w[0].user != w[1].user)
            .then_some(users)
    }

    /// Sorted users with sorted permission lists; duplicates are kept, so a file that lists
    /// a user twice never compares equal to one that lists it once.
    fn canonical(&self) -> Vec<User> {
        let mut users: Vec<User> = self
            .0
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
        users.sort_unstable_by(|a, b| {
            a.user
                .cmp(&b.user)
                .then_with(|| format!("{:?}", a.permissions).cmp(&format!("{:?}", b.permissions)))
        });
        users
    }

    /// The subjects in `self` that `other` lacks, and those `other` has that `self` lacks,
    /// for the dry run and the pass summary: `(added, removed)` going from `self` to `other`.
    pub fn diff<'a>(&'a self, other: &'a Users) -> (Vec<&'a str>, Vec<&'a str>) {
        use std::collections::BTreeSet;
        let mine: BTreeSet<&str> = self.iter().map(|u| u.user.as_str()).collect();
        let theirs: BTreeSet<&str> = other.iter().map(|u| u.user.as_str()).collect();
        let added = theirs.difference(&mine).copied().collect();
        let removed = mine.difference(&theirs).copied().collect();
        (added, removed)
    }
}

fn same_permissions(a: Option<&Permissions>, b: Option<&Permissions>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            same_list(a.publish.as_deref(), b.publish.as_deref())
                && same_list(a.subscribe.as_deref(), b.subscribe.as_deref())
        }
        _ => false,
    }
}

/// Equal as multisets: the order inside a permission list means nothing to nats-server.
fn same_list(a: Option<&[String]>, b: Option<&[String]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.len() == b.len() && (a == b || sorted(a) == sorted(b)),
        _ => false,
    }
}

fn sorted(list: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = list.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::user::u;

    #[test]
    fn order_does_not_matter_but_content_does() {
        let a = Users(vec![u("a", &["x", "y"], &["s"]), u("b", &[], &["t"])]);
        let b = Users(vec![u("b", &[], &["t"]), u("a", &["y", "x"], &["s"])]);
        assert!(a.same_as(&b));
        let c = Users(vec![u("b", &[], &["t"]), u("a", &["y"], &["s"])]);
        assert!(!a.same_as(&c));
        let dup = Users(vec![
            u("a", &["x", "y"], &["s"]),
            u("a", &["x", "y"], &["s"]),
        ]);
        assert!(!dup.same_as(&Users(vec![u("a", &["x", "y"], &["s"])])));
    }

    #[test]
    fn an_absent_list_is_not_an_empty_list() {
        let empty = Users(vec![u("hm", &[], &["s"])]);
        let mut absent = empty.clone();
        absent.0[0].permissions.as_mut().unwrap().publish = None;
        assert!(!empty.same_as(&absent));
    }

    /// The fast comparison agrees with comparing the canonical forms, duplicates included.
    #[test]
    fn same_as_agrees_with_the_canonical_comparison() {
        let lists = [
            Users(vec![u("a", &["x", "y"], &["s"]), u("b", &[], &["t"])]),
            Users(vec![u("b", &[], &["t"]), u("a", &["y", "x"], &["s"])]),
            Users(vec![u("b", &[], &["t"]), u("a", &["y", "y"], &["s"])]),
            Users(vec![u("b", &["t"], &[]), u("a", &["x", "y"], &["s"])]),
            Users(vec![u("a", &["x", "y"], &["s"]), u("c", &[], &["t"])]),
            Users(vec![u("a", &["x", "y"], &["s"]), u("a", &[], &["t"])]),
            Users(vec![u("a", &[], &["t"]), u("a", &["y", "x"], &["s"])]),
            Users(vec![
                u("a", &["x", "y"], &["s"]),
                u("a", &["x", "y"], &["s"]),
            ]),
            Users(vec![
                u("a", &["x", "y"], &["s"]),
                User {
                    user: "b".into(),
                    permissions: None,
                },
            ]),
            Users(vec![u("a", &["x", "y"], &["s"]), u("b", &[], &[])]),
            Users(vec![]),
        ];
        for a in &lists {
            for b in &lists {
                let reference = a.len() == b.len() && a.canonical() == b.canonical();
                assert_eq!(a.same_as(b), reference, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn diff_names_added_and_removed_subjects() {
        let old = Users(vec![u("a", &[], &[]), u("b", &[], &[])]);
        let new = Users(vec![u("b", &[], &[]), u("c", &[], &[])]);
        assert_eq!(old.diff(&new), (vec!["c"], vec!["a"]));
    }
}
