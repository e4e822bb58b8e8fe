//! Decoding the director's `/deployments` and `/deployments/{name}/vms` bodies (§2.1):
//! never a panic, and what decodes holds exactly the documented fields and defaults. Decoded
//! VMs then go through `desired::compute`.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use bosh_nats_sync::pass::desired::{self, Subject, Subjects};
use bosh_nats_sync::director;
use bosh_nats_sync::vm::Vm;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The VM the documented rules make of one array element: `agent_id` a string or
/// null/absent (None); `permanent_nats_credentials` a bool, null/absent meaning false.
/// serde also accepts a struct written as a JSON array of its fields in order.
fn expected_vm(entry: &Value) -> Vm {
    let (agent_id, permanent) = match entry {
        Value::Object(m) => (m.get("agent_id"), m.get("permanent_nats_credentials")),
        Value::Array(a) => (a.first(), a.get(1)),
        other => panic!("decoded a VM from {other}"),
    };
    Vm {
        agent_id: match agent_id {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => panic!("decoded agent_id from {other}"),
        },
        permanent_nats_credentials: match permanent {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => panic!("decoded permanent_nats_credentials from {other}"),
        },
    }
}

fn expected_name(entry: &Value) -> &str {
    let name = match entry {
        Value::Object(m) => m.get("name"),
        Value::Array(a) => a.first(),
        other => panic!("decoded a deployment from {other}"),
    };
    name.and_then(Value::as_str)
        .unwrap_or_else(|| panic!("decoded a deployment without a string name: {entry}"))
}

fuzz_target!(|data: &[u8]| {
    // serde_json's Value parser refuses some inputs the typed decoders skip over (an
    // ignored number out of f64 range), so the cross-check runs only where it can.
    let value: Option<Value> = serde_json::from_slice(data).ok();

    if let Ok(names) = director::decode_deployments(data) {
        if let Some(value) = &value {
            let entries = value
                .as_array()
                .expect("deployments decode only from an array");
            let expected: Vec<&str> = entries.iter().map(expected_name).collect();
            assert_eq!(names, expected);
        }
    }

    if let Ok(vms) = director::decode_vms(data) {
        if let Some(value) = &value {
            let entries = value.as_array().expect("VMs decode only from an array");
            let expected: Vec<Vm> = entries.iter().map(expected_vm).collect();
            assert_eq!(vms, expected);
        }
        let subjects = Subjects {
            director: Subject::parse("C=USA, O=Cloud Foundry, CN=default.director.bosh-internal")
                .expect("a fixed valid subject"),
            hm: None,
        };
        let desired = desired::compute(&subjects, vms.clone());
        common::check_desired(&subjects, &vms, &desired);
    }
});
