//! Label values: the program's, handed to the registry. This crate has no vocabulary of its
//! own — what a pass, a reload or the watch can end in is decided where the program decides
//! it — so the program hands over, at construction, every value a label can take that is
//! known in advance ([`Labels`]), and the registry exports each of those series at 0 from
//! start-up (§8). After that it records the values it is given, as they are given.

/// A closed set of label values, defined by the program: typically a field-less enum whose
/// variants are the values of one label. The registry takes the strings; the trait is how the
/// program states each value and the full list in one place.
pub trait Label: Copy + 'static {
    /// Every value, in the order the program lists them.
    const ALL: &'static [Self];

    /// The value as the metric shows it: short and fixed, never anything unbounded (a
    /// deployment name, an agent id).
    fn as_str(self) -> &'static str;

    /// [`Label::ALL`] as the metric shows them: what [`Labels`] is filled with.
    fn values() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

/// Every label value known in advance, by the label it fills. A registry made with them
/// ([`crate::Metrics::with_labels`]) exports each counter and gauge series at 0 from
/// start-up, so a healthy process already has the series alert rules and dashboard panels
/// query. An empty list presets nothing: a value then appears when it is first recorded.
/// Histograms are never preset (a zero-count histogram has no latency to show).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// The `result` of `bosh_nats_sync_passes_total`: how a pass can end.
    pub pass_results: Vec<&'static str>,
    /// The `reason` of `bosh_nats_sync_errors_total`: every reason a failed pass can be
    /// counted under (the program's error types list theirs).
    pub error_reasons: Vec<&'static str>,
    /// The `kind` of `bosh_nats_sync_desired_users`: which rule made a user.
    pub user_kinds: Vec<&'static str>,
    /// The `reason` of `bosh_nats_sync_skipped_vms_total`: why a VM was left out.
    pub skip_reasons: Vec<&'static str>,
    /// The `kind` of `bosh_nats_sync_subjects_rejected_total`: whose subject was refused.
    pub subject_kinds: Vec<&'static str>,
    /// The `result` of `bosh_nats_sync_reloads_total`: how a reload can end.
    pub reload_results: Vec<&'static str>,
    /// The `endpoint` of `bosh_nats_sync_director_requests_total`: every request the
    /// director client makes. Each is preset with every one of `director_statuses`.
    pub director_endpoints: Vec<&'static str>,
    /// The `status` of `bosh_nats_sync_director_requests_total` known in advance (a
    /// successful answer's); other statuses and error classes appear when they occur.
    pub director_statuses: Vec<&'static str>,
    /// The `result` of `bosh_nats_sync_uaa_token_fetches_total`.
    pub uaa_token_results: Vec<&'static str>,
    /// The `state` of `bosh_nats_sync_watch_state` and
    /// `bosh_nats_sync_watch_state_changes_total`. The first is the state before the watch
    /// reports: its gauge starts at 1.
    pub watch_states: Vec<&'static str>,
    /// The `kind` of `bosh_nats_sync_watch_passes_total`.
    pub pass_kinds: Vec<&'static str>,
    /// The `result` of `bosh_nats_sync_callout_requests_total`: how the callout responder
    /// can answer a request.
    pub callout_results: Vec<&'static str>,
    /// The `result` of `bosh_nats_sync_callout_revocations_total`: what closing a connection
    /// the admitted set no longer allows can do.
    pub revocation_results: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Light {
        Red,
        Amber,
        Green,
    }

    impl Label for Light {
        const ALL: &'static [Self] = &[Self::Red, Self::Amber, Self::Green];

        fn as_str(self) -> &'static str {
            match self {
                Self::Red => "red",
                Self::Amber => "amber",
                Self::Green => "green",
            }
        }
    }

    #[test]
    fn values_are_every_value_in_order() {
        assert_eq!(Light::values(), ["red", "amber", "green"]);
    }
}
