//! The answer to an authorization request (§12): an authorization-response JWT addressed to
//! the requesting server (`aud`) about the connecting client (`sub` = its `user_nkey`), signed
//! by the issuer. It carries either a user JWT — the client's own nkey as subject, the global
//! account `$G` as audience, the agent's allow-lists, an expiry — or the refusal's message.
//! When the request came sealed, the answer is sealed back to the server's curve key.
//!
//! The user JWT has no `name`: with one, a reload of nats-server closes every connection the
//! callout admitted at once instead of re-asking for each (observed on 2.14.5).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::users::Permissions;

use super::decide::Verdict;
use super::jwt::{self, Claims};
use super::keys::{IssuerKey, Keys};
use super::request::Request;

/// The claim type of an authorization response.
pub const RESPONSE_TYPE: &str = "authorization_response";
/// The claim type of a user JWT.
pub const USER_TYPE: &str = "user";
/// The account admitted agents land in: nats-server's global account.
pub const USER_AUDIENCE: &str = "$G";
/// nats-io/jwt's `NoLimit`: what nats-server reads as no limit on subscriptions, data and
/// payload size (a 0 there would be a limit of nothing).
pub const NO_LIMIT: i64 = -1;

/// The `nats` part of an authorization response: a user JWT, or an error, never both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseClaims {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
}

/// The `nats` part of a user JWT: what the user may publish (`pub`) and subscribe to (`sub`),
/// and its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    #[serde(rename = "pub", default)]
    pub publish: Permission,
    #[serde(rename = "sub", default)]
    pub subscribe: Permission,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
}

/// Allow and deny lists of subjects; both empty means no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Permission {
    /// An auth-file permission list as a user JWT says it. In the file an absent list allows
    /// everything and an empty one nothing; in a JWT an empty allow-list allows everything,
    /// so nothing is said as a denial of `>`.
    fn of(list: Option<&[String]>) -> Self {
        match list {
            None => Self::default(),
            Some([]) => Self {
                allow: Vec::new(),
                deny: vec![">".to_owned()],
            },
            Some(subjects) => Self {
                allow: subjects.to_vec(),
                deny: Vec::new(),
            },
        }
    }
}

/// How long an admitted connection lives before nats-server must ask again (`user_ttl`):
/// zero means its user JWT never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserTtl(pub Duration);

impl UserTtl {
    /// The default: an hour (§12).
    pub const DEFAULT: Self = Self(Duration::from_secs(3600));

    /// When a user JWT issued `now` expires: the ttl from now, spread over ±10 % so that the
    /// connections admitted together are not all re-admitted together.
    pub fn expiry(self, now: i64) -> Option<i64> {
        self.expiry_at(now, rand::random::<f64>())
    }

    /// [`UserTtl::expiry`] with `draw` (in [0, 1)) as the random draw: 0 is 10 % early, 0.5
    /// on time, 1 10 % late.
    pub fn expiry_at(self, now: i64, draw: f64) -> Option<i64> {
        if self.0.is_zero() {
            return None;
        }
        let seconds = self.0.as_secs_f64() * (0.9 + 0.2 * draw.clamp(0.0, 1.0));
        // At least a second: a JWT that expires as it is issued admits nobody.
        Some(now + (seconds.round() as i64).max(1))
    }
}

/// The user JWT of an admitted client: subject its `user_nkey`, audience `$G`, no name, the
/// given permissions, unlimited otherwise, expiring at `expires` (never when `None`).
pub fn user_jwt(
    issuer: &IssuerKey,
    user_nkey: &str,
    permissions: &Permissions,
    expires: Option<i64>,
    now: i64,
) -> String {
    let claims = Claims {
        sub: user_nkey.to_owned(),
        aud: USER_AUDIENCE.to_owned(),
        exp: expires.unwrap_or(0),
        nats: UserClaims {
            publish: Permission::of(permissions.publish.as_deref()),
            subscribe: Permission::of(permissions.subscribe.as_deref()),
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            kind: USER_TYPE.to_owned(),
            version: 2,
        },
        ..Default::default()
    };
    jwt::encode(claims, issuer, now)
}

/// What an authorization response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Admitted, as this user JWT says.
    User(&'a str),
    /// Refused, for this reason.
    Error(&'a str),
}

/// The authorization response to `request`: audience the requesting server, subject the
/// client's nkey.
pub fn response_jwt(issuer: &IssuerKey, request: &Request, outcome: Outcome, now: i64) -> String {
    let (jwt, error) = match outcome {
        Outcome::User(jwt) => (jwt, ""),
        Outcome::Error(error) => ("", error),
    };
    let claims = Claims {
        sub: request.user_nkey().to_owned(),
        aud: request.server_id().to_owned(),
        nats: ResponseClaims {
            jwt: jwt.to_owned(),
            error: error.to_owned(),
            kind: RESPONSE_TYPE.to_owned(),
            version: 2,
        },
        ..Default::default()
    };
    jwt::encode(claims, issuer, now)
}

/// A sealed request cannot be answered without the curve key that opened it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request came sealed, but these keys have no xkey to seal the answer with")]
pub struct NoXkey;

/// The reply to publish for `request` decided as `verdict`: the response JWT, sealed to the
/// server's curve key when the request came sealed. An admitted client's user JWT expires
/// `user_ttl` from `now`, jittered.
pub fn reply(
    keys: &Keys,
    request: &Request,
    verdict: &Verdict,
    user_ttl: UserTtl,
    now: i64,
) -> Result<Vec<u8>, NoXkey> {
    let response = match verdict {
        Verdict::Allow(admission) => {
            let user = user_jwt(
                &keys.issuer,
                request.user_nkey(),
                &admission.permissions,
                user_ttl.expiry(now),
                now,
            );
            response_jwt(&keys.issuer, request, Outcome::User(&user), now)
        }
        Verdict::Refuse(refusal) => response_jwt(
            &keys.issuer,
            request,
            Outcome::Error(refusal.message()),
            now,
        ),
    };
    match &request.sealed_by {
        None => Ok(response.into_bytes()),
        Some(server) => {
            let ours = keys.xkey.as_ref().ok_or(NoXkey)?;
            Ok(ours.seal(response.as_bytes(), server))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::decide::{Refusal, decide};
    use crate::callout::keys::CurveKey;
    use crate::callout::request::tests::{CAPTURED, CAPTURED_AT, plain_keys, signed_request};
    use crate::callout::request::{self, SERVER_XKEY_HEADER};
    use crate::users::{AgentId, agent};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use nkeys::{KeyPair, XKey};
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    /// The answer the test responder gave to the captured request, which admitted `a1`.
    const CAPTURED_RESPONSE: &str = include_str!("testdata/response.jwt");

    fn captured_request(keys: &Keys) -> Request {
        request::open(keys, CAPTURED.trim().as_bytes(), None, CAPTURED_AT).unwrap()
    }

    /// The field names of a JSON object, and of the objects inside it as `outer.inner`.
    fn fields(value: &Value, prefix: &str, into: &mut BTreeSet<String>) {
        if let Value::Object(map) = value {
            for (key, inner) in map {
                let name = format!("{prefix}{key}");
                fields(inner, &format!("{name}."), into);
                into.insert(name);
            }
        }
    }

    fn field_set(value: &Value) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        fields(value, "", &mut set);
        set
    }

    /// The claims of `token` exactly as written, once its signature verifies.
    fn decoded(token: &str) -> Value {
        jwt::decode::<Value>(token).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn the_captured_answer_verifies_and_says_what_ours_says() {
        let keys = plain_keys();
        let request = captured_request(&keys);
        let a1 = AgentId::parse("a1").unwrap();
        let verdict = decide(&request.claims.nats, |id| (*id == a1).then_some(false));
        let now = CAPTURED_AT;
        let ours = reply(&keys, &request, &verdict, UserTtl::DEFAULT, now).unwrap();
        let ours = decoded(std::str::from_utf8(&ours).unwrap());
        let theirs = decoded(CAPTURED_RESPONSE.trim());

        // The same fields, outside and in the user JWT.
        assert_eq!(field_set(&ours), field_set(&theirs));
        let user = |v: &Value| decoded(v["nats"]["jwt"].as_str().unwrap());
        let (our_user, their_user) = (user(&ours), user(&theirs));
        assert_eq!(field_set(&our_user), field_set(&their_user));
        assert!(our_user.get("name").is_none(), "a user JWT without a name");

        // The same values, but for our own keys, times and ids.
        for field in ["sub", "aud"] {
            assert_eq!(ours[field], theirs[field], "{field}");
        }
        assert_eq!(ours["nats"]["type"], theirs["nats"]["type"]);
        assert_eq!(ours["nats"]["version"], theirs["nats"]["version"]);
        assert_eq!(ours["iss"], json!(keys.issuer.public_key()));
        assert_eq!(our_user["iss"], json!(keys.issuer.public_key()));
        for field in ["sub", "aud"] {
            assert_eq!(our_user[field], their_user[field], "user {field}");
        }
        assert_eq!(
            our_user["nats"], their_user["nats"],
            "permissions and limits"
        );
        assert_eq!(our_user["iat"], json!(now));
        let exp = our_user["exp"].as_i64().unwrap();
        assert!((now + 3240..=now + 3960).contains(&exp), "{exp}");

        // Both jtis are nats-io/jwt's.
        for claims in [&ours, &our_user] {
            let typed: Claims<Value> = serde_json::from_value(claims.clone()).unwrap();
            let jti = typed.jti.clone();
            assert_eq!(jwt::jti(&typed), jti);
            assert_eq!(jti.len(), 52);
        }
    }

    #[test]
    fn a_refusal_carries_its_message_and_no_user() {
        let keys = plain_keys();
        let request = captured_request(&keys);
        let verdict = Verdict::Refuse(Refusal::UnknownAgent(AgentId::parse("a1").unwrap()));
        let answer = reply(&keys, &request, &verdict, UserTtl::DEFAULT, CAPTURED_AT).unwrap();
        let claims: Claims<ResponseClaims> =
            jwt::decode(std::str::from_utf8(&answer).unwrap()).unwrap();
        assert_eq!(
            claims.nats,
            ResponseClaims {
                jwt: String::new(),
                error: "unknown agent".into(),
                kind: RESPONSE_TYPE.into(),
                version: 2,
            }
        );
        assert_eq!(claims.sub, request.user_nkey());
        assert_eq!(claims.aud, request.server_id());
        assert_eq!(claims.iss, keys.issuer.public_key());
        let raw: Value = serde_json::to_value(&claims).unwrap();
        assert!(raw["nats"].get("jwt").is_none(), "{raw}");
    }

    #[test]
    fn user_ttl_spreads_expiry_by_ten_percent_and_zero_never_expires() {
        let hour = UserTtl::DEFAULT;
        assert_eq!(hour.expiry_at(1000, 0.0), Some(1000 + 3240));
        assert_eq!(hour.expiry_at(1000, 0.5), Some(1000 + 3600));
        assert_eq!(hour.expiry_at(1000, 1.0), Some(1000 + 3960));
        assert_eq!(UserTtl(Duration::ZERO).expiry(1000), None);
        assert_eq!(UserTtl(Duration::ZERO).expiry_at(1000, 0.7), None);
        assert_eq!(
            UserTtl(Duration::from_secs(1)).expiry_at(1000, 0.0),
            Some(1001)
        );
        let draws: Vec<i64> = (0..200).map(|_| hour.expiry(0).unwrap()).collect();
        assert!(draws.iter().all(|e| (3240..=3960).contains(e)), "{draws:?}");
        let distinct: BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 50, "spread: {}", distinct.len());

        let issuer = IssuerKey::generate();
        let permissions = agent::permissions(&AgentId::parse("a").unwrap());
        let user = KeyPair::new_user().public_key();
        let forever: Claims<UserClaims> =
            jwt::decode(&user_jwt(&issuer, &user, &permissions, None, 5)).unwrap();
        assert_eq!(forever.exp, 0);
        let raw: Value = serde_json::to_value(&forever).unwrap();
        assert!(raw.get("exp").is_none(), "no exp: {raw}");
    }

    #[test]
    fn permission_lists_keep_their_meaning_in_a_user_jwt() {
        assert_eq!(Permission::of(None), Permission::default());
        assert_eq!(
            Permission::of(Some(&[])),
            Permission {
                allow: vec![],
                deny: vec![">".into()]
            }
        );
        let list = vec!["a.>".to_owned()];
        assert_eq!(
            Permission::of(Some(&list)),
            Permission {
                allow: list.clone(),
                deny: vec![]
            }
        );
        assert_eq!(
            serde_json::to_value(Permission::default()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn a_sealed_request_gets_a_sealed_answer_the_server_opens() {
        let server = KeyPair::new_server();
        let server_xkey = CurveKey::generate();
        let keys = Keys {
            xkey: Some(CurveKey::generate()),
            ..plain_keys()
        };
        let service_xkey =
            XKey::from_public_key(&keys.xkey.as_ref().unwrap().public_key()).unwrap();
        let header = server_xkey.public_key();
        let token = signed_request(&server, |_| {});
        let sealed = server_xkey.seal(token.as_bytes(), &service_xkey);
        let request = request::open(&keys, &sealed, Some(&header), CAPTURED_AT).unwrap();
        let verdict = Verdict::Refuse(Refusal::NotAgent);
        let answer = reply(&keys, &request, &verdict, UserTtl::DEFAULT, CAPTURED_AT).unwrap();
        assert!(answer.starts_with(b"xkv1"), "sealed");
        let opened = server_xkey
            .open(&answer, &service_xkey)
            .expect(SERVER_XKEY_HEADER);
        let claims: Claims<ResponseClaims> =
            jwt::decode(std::str::from_utf8(&opened).unwrap()).unwrap();
        assert_eq!(claims.nats.error, "not an agent certificate");
        assert_eq!(claims.aud, server.public_key());

        // The same request with keys that lost their xkey cannot be answered.
        assert_eq!(
            reply(
                &plain_keys(),
                &request,
                &verdict,
                UserTtl::DEFAULT,
                CAPTURED_AT
            ),
            Err(NoXkey)
        );
    }
}
