//! Desired state (§3): subject files and agent ids are validated at the edge, and
//! `compute` only ever builds users and permissions from valid parts — no `*`, `>` or `.`
//! from an agent id reaches a NATS subject or a DN.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use bosh_nats_sync::pass::desired::{self, Subjects};
use bosh_nats_sync::vm::Vm;
use libfuzzer_sys::fuzz_target;

/// Exactly 64 characters, so any byte picks one: ids from the valid alphabet are common.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

#[derive(Arbitrary, Debug)]
enum ArbId {
    Null,
    Raw(String),
    /// Bytes mapped onto the valid alphabet (may still be empty or too long).
    Alphabet(Vec<u8>),
    /// A valid id with an arbitrary string appended (`x.>`, `x y`, …).
    Suffixed(Vec<u8>, String),
}

impl ArbId {
    fn into_raw(self) -> Option<String> {
        let alpha = |bytes: Vec<u8>| -> String {
            bytes
                .into_iter()
                .map(|b| char::from(ALPHABET[usize::from(b % 64)]))
                .collect()
        };
        match self {
            ArbId::Null => None,
            ArbId::Raw(s) => Some(s),
            ArbId::Alphabet(b) => Some(alpha(b)),
            ArbId::Suffixed(b, s) => Some(alpha(b) + &s),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    director: String,
    hm: String,
    vms: Vec<(ArbId, bool)>,
}

fuzz_target!(|input: Input| {
    let subjects = Subjects {
        director: common::check_subject(&input.director),
        hm: common::check_subject(&input.hm),
    };
    let vms: Vec<Vm> = input
        .vms
        .into_iter()
        .map(|(id, permanent)| Vm {
            agent_id: id.into_raw(),
            permanent_nats_credentials: permanent,
        })
        .collect();
    for vm in &vms {
        if let Some(raw) = &vm.agent_id {
            common::check_agent_id(raw);
        }
    }
    let desired = desired::compute(&subjects, vms.clone());
    common::check_desired(&subjects, &vms, &desired);
});
