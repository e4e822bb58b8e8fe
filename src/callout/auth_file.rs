//! The auth file of callout mode (§12.3): what nats-server must hold when it starts, because
//! it cannot take `auth_callout` on a reload ("config reload not supported for AuthCallout").
//!
//! One JSON object, written as nats-server's own parser reads it (no `\u` escapes, §4.1):
//!
//! - `authorization`: the authorization `timeout`, the static users — the director and the
//!   health monitor with their §3.1 permissions, who bypass the callout and connect while the
//!   service is down — and `auth_callout { issuer, auth_users, account: "SYS", xkey }`, the
//!   static users' subjects and the service's in `auth_users`;
//! - `accounts { SYS { users: [the service] } }` and `system_account: "SYS"`: the service's
//!   own user lives in the system account with the least permissions that let it answer
//!   (`$SYS.REQ.USER.AUTH`, replies) and revoke (`CONNZ`, `KICK`), one connection for both.
//!
//! The service's subject is read from its certificate ([`certificate_subject`]), in the form of
//! the subject files (`C=USA, O=Cloud Foundry, CN=…`), which `verify_and_map` matches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::Ia5StringRef;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::name::DirectoryString;

use crate::users::User;

/// The system account the service's user belongs to (`accounts`, `system_account`,
/// `auth_callout.account`).
pub const SYSTEM_ACCOUNT: &str = "SYS";

/// What the service may publish: the two system requests revocation sends (CONNZ, KICK).
pub const SERVICE_PUBLISH: [&str; 2] = ["$SYS.REQ.SERVER.*.KICK", "$SYS.REQ.SERVER.PING.CONNZ"];
/// What the service may subscribe to: the authorization requests, and the inbox its own
/// requests' replies come to. Answers go out through `allow_responses`.
pub const SERVICE_SUBSCRIBE: [&str; 2] = ["$SYS.REQ.USER.AUTH", "_INBOX.>"];

/// Everything the callout-mode auth file says. [`CalloutFile::render`] writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CalloutFile {
    /// `authorization.timeout`: how long a connect waits for its answer.
    pub timeout: Duration,
    /// The static users, in file order: the director's and the health monitor's (§3.1).
    pub static_users: Vec<User>,
    /// The service's subject, as [`certificate_subject`] writes it.
    pub service: String,
    /// `auth_callout.issuer`: the public account key (`A…`) answers are signed with.
    pub issuer: String,
    /// `auth_callout.xkey`: the public curve key (`X…`) requests are sealed to, if any.
    pub xkey: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    authorization: Authorization<'a>,
    accounts: Accounts<'a>,
    system_account: &'static str,
}

#[derive(Serialize)]
struct Authorization<'a> {
    timeout: serde_json::Number,
    users: &'a [User],
    auth_callout: AuthCallout<'a>,
}

#[derive(Serialize)]
struct AuthCallout<'a> {
    issuer: &'a str,
    auth_users: Vec<&'a str>,
    account: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    xkey: Option<&'a str>,
}

#[derive(Serialize)]
struct Accounts<'a> {
    #[serde(rename = "SYS")]
    system: Account<'a>,
}

#[derive(Serialize)]
struct Account<'a> {
    users: [ServiceUser<'a>; 1],
}

#[derive(Serialize)]
struct ServiceUser<'a> {
    user: &'a str,
    permissions: ServicePermissions,
}

#[derive(Serialize)]
struct ServicePermissions {
    publish: Allow,
    subscribe: Allow,
    allow_responses: bool,
}

#[derive(Serialize)]
struct Allow {
    allow: [&'static str; 2],
}

impl CalloutFile {
    /// The subjects of `auth_callout.auth_users`: every static user, then the service.
    pub fn auth_users(&self) -> Vec<&str> {
        let statics = self.static_users.iter().map(|u| u.user.as_str());
        statics.chain([self.service.as_str()]).collect()
    }

    /// The file's bytes: pretty-printed JSON ending in a newline. serde_json escapes only
    /// `"`, `\` and control characters, and no subject here holds a control character, so
    /// nothing is written as `\u…` (§4.1).
    pub fn render(&self) -> Vec<u8> {
        let body = Body {
            authorization: Authorization {
                timeout: seconds(self.timeout),
                users: &self.static_users,
                auth_callout: AuthCallout {
                    issuer: &self.issuer,
                    auth_users: self.auth_users(),
                    account: SYSTEM_ACCOUNT,
                    xkey: self.xkey.as_deref(),
                },
            },
            accounts: Accounts {
                system: Account {
                    users: [ServiceUser {
                        user: &self.service,
                        permissions: ServicePermissions {
                            publish: Allow {
                                allow: SERVICE_PUBLISH,
                            },
                            subscribe: Allow {
                                allow: SERVICE_SUBSCRIBE,
                            },
                            allow_responses: true,
                        },
                    }],
                },
            },
            system_account: SYSTEM_ACCOUNT,
        };
        let mut out = serde_json::to_vec_pretty(&body)
            .expect("serialising plain strings and numbers into memory cannot fail");
        out.push(b'\n');
        out
    }
}

/// Whole seconds as an integer, anything else as a decimal: nats-server takes both.
fn seconds(timeout: Duration) -> serde_json::Number {
    if timeout.subsec_nanos() == 0 {
        timeout.as_secs().into()
    } else {
        serde_json::Number::from_f64(timeout.as_secs_f64())
            .expect("a Duration's seconds are finite")
    }
}

/// Why a certificate's subject cannot be a user in the auth file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{} holds no PEM certificate ({message})", path.display())]
    NotACertificate { path: PathBuf, message: String },
    #[error("{}: the certificate's subject is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: the certificate's subject has an attribute nats-server cannot match by name (OID {oid}); \
         verify_and_map matches only CN, O, OU, C, L, ST, STREET, POSTALCODE, SERIALNUMBER and DC",
        path.display()
    )]
    Attribute { path: PathBuf, oid: String },
    #[error(
        "{}: the certificate's subject has a {name} that is not a text string or holds a control character",
        path.display()
    )]
    Value { path: PathBuf, name: &'static str },
}

/// The attribute names nats-server knows when it matches a certificate's subject to a user
/// (its `ldap.attributeTypeNames`); a subject with any other attribute matches no user
/// written this way.
const NAMES: [(ObjectIdentifier, &str); 10] = [
    (ObjectIdentifier::new_unwrap("2.5.4.3"), "CN"),
    (ObjectIdentifier::new_unwrap("2.5.4.5"), "SERIALNUMBER"),
    (ObjectIdentifier::new_unwrap("2.5.4.6"), "C"),
    (ObjectIdentifier::new_unwrap("2.5.4.7"), "L"),
    (ObjectIdentifier::new_unwrap("2.5.4.8"), "ST"),
    (ObjectIdentifier::new_unwrap("2.5.4.9"), "STREET"),
    (ObjectIdentifier::new_unwrap("2.5.4.10"), "O"),
    (ObjectIdentifier::new_unwrap("2.5.4.11"), "OU"),
    (ObjectIdentifier::new_unwrap("2.5.4.17"), "POSTALCODE"),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25"),
        "DC",
    ),
];

/// The subject of the first certificate in the PEM file `path`, written as the subject files
/// hold one: the RDNs in certificate order, each `TYPE=value` (a multi-valued RDN's
/// attributes joined by `+`), joined by `, ` — `C=USA, O=Cloud Foundry, CN=…`. Characters
/// a DN gives meaning to are escaped with `\` as RFC 4514 does.
pub fn certificate_subject(path: &Path) -> Result<String, SubjectError> {
    let bytes = std::fs::read(path).map_err(|e| SubjectError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let not_a_certificate = |message: String| SubjectError::NotACertificate {
        path: path.to_owned(),
        message,
    };
    let chain =
        Certificate::load_pem_chain(&bytes).map_err(|e| not_a_certificate(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| not_a_certificate("the file is empty".to_owned()))?;
    subject_text(leaf.tbs_certificate().subject(), path)
}

fn subject_text(subject: &x509_cert::name::Name, path: &Path) -> Result<String, SubjectError> {
    let mut rdns = Vec::new();
    for rdn in subject.iter_rdn() {
        let attributes: Result<Vec<String>, SubjectError> =
            rdn.iter().map(|a| attribute_text(a, path)).collect();
        rdns.push(attributes?.join("+"));
    }
    if rdns.is_empty() {
        return Err(SubjectError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(rdns.join(", "))
}

fn attribute_text(attribute: &AttributeTypeAndValue, path: &Path) -> Result<String, SubjectError> {
    let Some((_, name)) = NAMES.iter().find(|(oid, _)| *oid == attribute.oid) else {
        return Err(SubjectError::Attribute {
            path: path.to_owned(),
            oid: attribute.oid.to_string(),
        });
    };
    let value = match DirectoryString::try_from(&attribute.value) {
        Ok(text) => Some(text.value().into_owned()),
        Err(_) => (attribute.value)
            .decode_as::<Ia5StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_owned()),
    };
    match value {
        Some(value) if !value.is_empty() && !value.chars().any(char::is_control) => {
            Ok(format!("{name}={}", escape(&value)))
        }
        _ => Err(SubjectError::Value {
            path: path.to_owned(),
            name,
        }),
    }
}

/// `value` with the characters a DN gives meaning to escaped (RFC 4514 §2.4), as
/// nats-server's DN parser reads them back: `\` before each of `\ , + = " ; < > #`, and
/// before a space at either end.
fn escape(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge_space = c == ' ' && (i == 0 || i == last);
        if edge_space || matches!(c, '\\' | ',' | '+' | '=' | '"' | ';' | '<' | '>' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    fn pem(attributes: &[(DnType, DnValue)]) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (kind, value) in attributes {
            dn.push(kind.clone(), value.clone());
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn subject_of(text: &str) -> Result<String, SubjectError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, text).unwrap();
        certificate_subject(&path).map_err(|e| match e {
            SubjectError::Attribute { oid, .. } => SubjectError::Attribute {
                path: PathBuf::new(),
                oid,
            },
            other => other,
        })
    }

    fn utf8(text: &str) -> DnValue {
        DnValue::Utf8String(text.to_owned())
    }

    #[test]
    fn a_bosh_certificate_reads_as_the_subject_files_write_it() {
        let text = pem(&[
            (
                DnType::CountryName,
                DnValue::PrintableString("USA".try_into().unwrap()),
            ),
            (DnType::OrganizationName, utf8("Cloud Foundry")),
            (DnType::CommonName, utf8("default.sync.bosh-internal")),
        ]);
        assert_eq!(
            subject_of(&text).unwrap(),
            "C=USA, O=Cloud Foundry, CN=default.sync.bosh-internal"
        );
        // Certificate order, whatever it is; a chain's first certificate.
        let reversed = pem(&[
            (DnType::CommonName, utf8("x")),
            (DnType::OrganizationalUnitName, utf8("ou")),
        ]);
        let chain = format!("{reversed}{text}");
        assert_eq!(subject_of(&chain).unwrap(), "CN=x, OU=ou");
    }

    #[test]
    fn special_characters_are_escaped() {
        let text = pem(&[(DnType::CommonName, utf8(" a,b+c=d\\e\"#; "))]);
        assert_eq!(subject_of(&text).unwrap(), r#"CN=\ a\,b\+c\=d\\e\"\#\;\ "#);
        assert_eq!(escape("plain text"), "plain text");
    }

    #[test]
    fn what_nats_server_cannot_match_is_refused() {
        // An e-mail address attribute (1.2.840.113549.1.9.1) is not in nats-server's table.
        let text = pem(&[
            (DnType::CommonName, utf8("x")),
            (
                DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
                DnValue::Ia5String("a@b".try_into().unwrap()),
            ),
        ]);
        assert_eq!(
            subject_of(&text).unwrap_err(),
            SubjectError::Attribute {
                path: PathBuf::new(),
                oid: "1.2.840.113549.1.9.1".into()
            }
        );
        let text = pem(&[(DnType::CommonName, utf8("a\nb"))]);
        assert!(matches!(
            subject_of(&text).unwrap_err(),
            SubjectError::Value { name: "CN", .. }
        ));
        assert!(matches!(
            subject_of(&pem(&[])).unwrap_err(),
            SubjectError::Empty { .. }
        ));
        for garbage in [
            "",
            "not a certificate",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(
                matches!(
                    subject_of(garbage).unwrap_err(),
                    SubjectError::NotACertificate { .. }
                ),
                "{garbage:?}"
            );
        }
        let missing = certificate_subject(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read /nonexistent/cert.pem: ")
        );
    }

    fn file(xkey: Option<&str>) -> CalloutFile {
        CalloutFile {
            timeout: Duration::from_secs(1),
            static_users: vec![
                User::new(
                    "C=USA, O=Cloud Foundry, CN=default.director.bosh-internal".into(),
                    vec!["agent.*".into(), "hm.director.alert".into()],
                    vec!["director.>".into()],
                ),
                User::new(
                    "C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal".into(),
                    vec![],
                    vec!["hm.agent.heartbeat.*".into()],
                ),
            ],
            service: "C=USA, O=Cloud Foundry, CN=default.sync.bosh-internal".into(),
            issuer: "AISSUER".into(),
            xkey: xkey.map(str::to_owned),
        }
    }

    #[test]
    fn renders_the_shape_of_section_12_3() {
        let text = String::from_utf8(file(Some("XKEY")).render()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = serde_json::json!({
            "authorization": {
                "timeout": 1,
                "users": [
                    {"user": "C=USA, O=Cloud Foundry, CN=default.director.bosh-internal",
                     "permissions": {"publish": ["agent.*", "hm.director.alert"], "subscribe": ["director.>"]}},
                    {"user": "C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal",
                     "permissions": {"publish": [], "subscribe": ["hm.agent.heartbeat.*"]}}
                ],
                "auth_callout": {
                    "issuer": "AISSUER",
                    "auth_users": [
                        "C=USA, O=Cloud Foundry, CN=default.director.bosh-internal",
                        "C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal",
                        "C=USA, O=Cloud Foundry, CN=default.sync.bosh-internal"
                    ],
                    "account": "SYS",
                    "xkey": "XKEY"
                }
            },
            "accounts": {"SYS": {"users": [{
                "user": "C=USA, O=Cloud Foundry, CN=default.sync.bosh-internal",
                "permissions": {
                    "publish": {"allow": ["$SYS.REQ.SERVER.*.KICK", "$SYS.REQ.SERVER.PING.CONNZ"]},
                    "subscribe": {"allow": ["$SYS.REQ.USER.AUTH", "_INBOX.>"]},
                    "allow_responses": true
                }
            }]}},
            "system_account": "SYS"
        });
        assert_eq!(value, expected);
        assert!(!text.contains("\\u"), "nats-server rejects \\u escapes");
        assert!(text.ends_with("}\n"));
        // Keys in the order nats-server's documentation shows them.
        let at = |needle: &str| text.find(needle).unwrap();
        assert!(at("\"authorization\"") < at("\"accounts\""));
        assert!(at("\"accounts\"") < at("\"system_account\""));
        assert!(at("\"timeout\"") < at("\"users\""));

        let plain = String::from_utf8(file(None).render()).unwrap();
        assert!(!plain.contains("xkey"), "{plain}");
    }

    #[test]
    fn a_fractional_timeout_is_written_as_a_decimal() {
        let mut f = file(None);
        f.timeout = Duration::from_millis(2500);
        let value: serde_json::Value = serde_json::from_slice(&f.render()).unwrap();
        assert_eq!(value["authorization"]["timeout"], serde_json::json!(2.5));
    }
}
