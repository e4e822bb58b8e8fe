//! Who a connecting client is (§12): the subject of the leaf certificate nats-server verified,
//! read attribute by attribute. An agent's certificate has exactly `C=USA`, `O=Cloud Foundry`
//! and `CN=A.agent.bosh-internal` (or `CN=A.bootstrap.agent.bosh-internal`) with a valid agent
//! id A (§3.3), in any order and however grouped into RDNs; any other subject — an attribute
//! more or less, one repeated, a different value — is not an agent's.
//!
//! Attributes, not strings: nats-server reports a subject in its own order (`CN=…,O=…,C=…`),
//! OpenSSL in another, and a string compare would depend on which.

use x509_cert::Certificate;
use x509_cert::der::DecodePem;
use x509_cert::der::oid::db::rfc4519::{COMMON_NAME, COUNTRY_NAME, ORGANIZATION_NAME};
use x509_cert::ext::pkix::name::DirectoryString;

use crate::users::AgentId;
use crate::users::agent;

/// What a certificate's subject says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An agent's certificate: its permanent one, or (`bootstrap`) the one it boots with.
    Agent { id: AgentId, bootstrap: bool },
    /// Anything else.
    NotAgent,
}

/// The leaf is not a PEM certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the client certificate cannot be read: {0}")]
pub struct UnreadableCertificate(String);

/// The identity the subject of `leaf_pem` (one PEM certificate) names.
pub fn identify(leaf_pem: &str) -> Result<Identity, UnreadableCertificate> {
    let certificate = Certificate::from_pem(leaf_pem.as_bytes())
        .map_err(|e| UnreadableCertificate(e.to_string()))?;
    Ok(identify_name(certificate.tbs_certificate().subject()))
}

/// The identity a subject written as RFC 4514 text names — nats-server's own spelling in
/// CONNZ's `tls_peer_certs[].subject` (`CN=…,O=…,C=…`, Go's order and escaping) — read
/// attribute by attribute exactly as [`identify`] reads a certificate's. Text that does not
/// parse is not an agent's.
pub fn identify_subject(subject: &str) -> Identity {
    match subject.parse::<x509_cert::name::Name>() {
        Ok(name) => identify_name(&name),
        Err(_) => Identity::NotAgent,
    }
}

fn identify_name(subject: &x509_cert::name::Name) -> Identity {
    let (mut country, mut organization, mut common_name) = (None, None, None);
    for attribute in subject.iter() {
        let slot = match attribute.oid {
            COUNTRY_NAME => &mut country,
            ORGANIZATION_NAME => &mut organization,
            COMMON_NAME => &mut common_name,
            _ => return Identity::NotAgent,
        };
        let Ok(value) = DirectoryString::try_from(&attribute.value) else {
            return Identity::NotAgent;
        };
        if slot.replace(value).is_some() {
            return Identity::NotAgent;
        }
    }
    let text = |value: &Option<DirectoryString>| value.as_ref().map(|v| v.value().into_owned());
    if text(&country).as_deref() != Some(agent::COUNTRY)
        || text(&organization).as_deref() != Some(agent::ORGANIZATION)
    {
        return Identity::NotAgent;
    }
    let Some(cn) = text(&common_name) else {
        return Identity::NotAgent;
    };
    match agent::parse_cn(&cn).map(|(id, bootstrap)| (AgentId::parse(id), bootstrap)) {
        Some((Ok(id), bootstrap)) => Identity::Agent { id, bootstrap },
        _ => Identity::NotAgent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::request::tests::CAPTURED;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    fn certificate(attributes: &[(DnType, &str)]) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (kind, value) in attributes {
            dn.push(kind.clone(), DnValue::Utf8String((*value).to_owned()));
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn agent(id: &str, bootstrap: bool) -> Identity {
        Identity::Agent {
            id: AgentId::parse(id).unwrap(),
            bootstrap,
        }
    }

    /// Every permutation of `items`.
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut all = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                all.push(tail);
            }
        }
        all
    }

    #[test]
    fn an_agent_certificate_in_every_attribute_order() {
        for (cn, expected) in [
            ("a1.agent.bosh-internal", agent("a1", false)),
            ("a1.bootstrap.agent.bosh-internal", agent("a1", true)),
            (
                "4e3f6a3c-2b1d-4b8a-9c1e-0f2d3c4b5a69.agent.bosh-internal",
                agent("4e3f6a3c-2b1d-4b8a-9c1e-0f2d3c4b5a69", false),
            ),
        ] {
            let attributes = [
                (DnType::CountryName, "USA"),
                (DnType::OrganizationName, "Cloud Foundry"),
                (DnType::CommonName, cn),
            ];
            let orders = permutations(&attributes);
            assert_eq!(orders.len(), 6);
            for order in orders {
                assert_eq!(
                    identify(&certificate(&order)).unwrap(),
                    expected,
                    "{order:?}"
                );
            }
        }
    }

    #[test]
    fn extra_missing_or_different_attributes_are_not_an_agent() {
        use DnType::*;
        let c = (CountryName, "USA");
        let o = (OrganizationName, "Cloud Foundry");
        let cn = (CommonName, "a1.agent.bosh-internal");
        let cases: Vec<Vec<(DnType, &str)>> = vec![
            vec![o.clone(), cn.clone()],
            vec![c.clone(), cn.clone()],
            vec![c.clone(), o.clone()],
            vec![cn.clone()],
            vec![],
            vec![
                c.clone(),
                o.clone(),
                cn.clone(),
                (OrganizationalUnitName, "x"),
            ],
            vec![(LocalityName, "x"), c.clone(), o.clone(), cn.clone()],
            vec![(CountryName, "US"), o.clone(), cn.clone()],
            vec![c.clone(), (OrganizationName, "cloud foundry"), cn.clone()],
            vec![
                c.clone(),
                o.clone(),
                (CommonName, "a1.director.bosh-internal"),
            ],
            vec![
                c.clone(),
                o.clone(),
                (CommonName, "x.>.agent.bosh-internal"),
            ],
            vec![c.clone(), o.clone(), (CommonName, ".agent.bosh-internal")],
            vec![
                c.clone(),
                o.clone(),
                (CommonName, "a1.agent.bosh-internal "),
            ],
            vec![
                c.clone(),
                o.clone(),
                (CommonName, "default.sync.bosh-internal"),
            ],
        ];
        for attributes in cases {
            assert_eq!(
                identify(&certificate(&attributes)).unwrap(),
                Identity::NotAgent,
                "{attributes:?}"
            );
        }
    }

    /// Subjects rcgen cannot make (it keeps one value per attribute type), as RFC 4514 text.
    #[test]
    fn a_repeated_attribute_is_not_an_agent_and_grouping_does_not_matter() {
        let subject = identify_subject;
        for repeated in [
            "CN=a1.agent.bosh-internal,CN=a2.agent.bosh-internal,O=Cloud Foundry,C=USA",
            "CN=a1.agent.bosh-internal,CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA",
            "CN=a1.agent.bosh-internal,O=Cloud Foundry,O=Cloud Foundry,C=USA",
            "CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA,C=USA",
        ] {
            assert_eq!(subject(repeated), Identity::NotAgent, "{repeated}");
        }
        assert_eq!(
            subject("CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA"),
            agent("a1", false)
        );
        assert_eq!(
            subject("CN=a1.agent.bosh-internal,O=Cloud Foundry+C=USA"),
            agent("a1", false)
        );
    }

    /// nats-server writes a certificate's subject with Go's `pkix.Name.String()`: RDNs last
    /// first, joined by `,`, special characters escaped with `\`. Read attribute by attribute,
    /// the text names the same identity as the certificate it came from.
    #[test]
    fn subjects_as_nats_server_spells_them() {
        for (text, expected) in [
            (
                "CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA",
                agent("a1", false),
            ),
            (
                "CN=a1.bootstrap.agent.bosh-internal,O=Cloud Foundry,C=USA",
                agent("a1", true),
            ),
            (
                "C=USA,O=Cloud Foundry,CN=a1.agent.bosh-internal",
                agent("a1", false),
            ),
            // The subject files' spelling is not RFC 4514 (a space after `,` belongs to the
            // next attribute's type), and nats-server never writes it.
            (
                "C=USA, O=Cloud Foundry, CN=a1.agent.bosh-internal",
                Identity::NotAgent,
            ),
            (
                "CN=default.director.bosh-internal,O=Cloud Foundry,C=USA",
                Identity::NotAgent,
            ),
            (
                "CN=default.nats-sync.bosh-internal,O=Cloud Foundry,C=USA",
                Identity::NotAgent,
            ),
            ("CN=accept-ca", Identity::NotAgent),
            // An escaped comma is part of the value, not a second attribute.
            (
                "CN=a1.agent.bosh-internal\\,O=Cloud Foundry,O=Cloud Foundry,C=USA",
                Identity::NotAgent,
            ),
            (
                "CN=a1.agent.bosh-internal,OU=x,O=Cloud Foundry,C=USA",
                Identity::NotAgent,
            ),
            (
                "CN=a1.agent.bosh-internal,O=Cloud Foundry,C=US",
                Identity::NotAgent,
            ),
            ("", Identity::NotAgent),
            ("not a subject", Identity::NotAgent),
            (
                "CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA,",
                Identity::NotAgent,
            ),
        ] {
            assert_eq!(identify_subject(text), expected, "{text:?}");
        }
    }

    /// Every subject a certificate can have reads the same from the certificate and from
    /// the text nats-server makes of it (its attributes in reverse order).
    #[test]
    fn a_certificate_and_its_subject_text_agree() {
        use DnType::*;
        for attributes in [
            vec![
                (CountryName, "USA"),
                (OrganizationName, "Cloud Foundry"),
                (CommonName, "a1.agent.bosh-internal"),
            ],
            vec![
                (CommonName, "b2.bootstrap.agent.bosh-internal"),
                (CountryName, "USA"),
                (OrganizationName, "Cloud Foundry"),
            ],
            vec![
                (CountryName, "USA"),
                (OrganizationName, "Cloud Foundry"),
                (CommonName, "default.hm.bosh-internal"),
            ],
        ] {
            let text = attributes
                .iter()
                .rev()
                .map(|(kind, value)| {
                    let name = match kind {
                        CountryName => "C",
                        OrganizationName => "O",
                        CommonName => "CN",
                        _ => unreachable!(),
                    };
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join(",");
            assert_eq!(
                identify_subject(&text),
                identify(&certificate(&attributes)).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn the_captured_leaf_is_agent_a1() {
        let token = CAPTURED.trim();
        let request = crate::callout::request::open(
            &crate::callout::request::tests::plain_keys(),
            token.as_bytes(),
            None,
            crate::callout::request::tests::CAPTURED_AT,
        )
        .unwrap();
        let chain = &request
            .claims
            .nats
            .client_tls
            .as_ref()
            .unwrap()
            .verified_chains[0];
        assert_eq!(identify(&chain[0]).unwrap(), agent("a1", false));
        // Its CA (`CN=accept-ca`) is a certificate, but not an agent's.
        assert_eq!(identify(&chain[1]).unwrap(), Identity::NotAgent);
    }

    #[test]
    fn what_is_not_a_certificate_is_unreadable() {
        for text in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(identify(text).is_err(), "{text:?}");
        }
    }
}
