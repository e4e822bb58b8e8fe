//! A VM as the director reports it (§2.1): the plain value the director client decodes and
//! desired state is computed from. Holds exactly what the director sent; validating the
//! agent id is desired state's job (§3.3).

/// One VM of a deployment's `/vms`; only the fields this program uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Vm {
    /// `null` while the VM is being created.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Absent and `null` both mean false: directors older than the feature omit it.
    #[serde(default, deserialize_with = "null_as_false")]
    pub permanent_nats_credentials: bool,
}

fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(<Option<bool> as serde::Deserialize>::deserialize(d)?.unwrap_or(false))
}
