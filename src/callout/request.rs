//! An authorization request as nats-server publishes it on `$SYS.REQ.USER.AUTH` (§12): opened
//! first when it comes sealed, its signature verified with the server key it names, its
//! claims checked — and then only the parts an answer reads.
//!
//! The checks are nats-io/jwt's and the NATS maintainers' callout service's: a JWT of type
//! `authorization_request`, version 2, for the audience `nats-authorization-request`, issued
//! by a server key (`N…`) that is the `server_id` it describes, for a client whose
//! `user_nkey` is a user key (`U…`), and not expired.

use std::borrow::Cow;

use nkeys::{KeyPairType, XKey};
use serde::Deserialize;

use super::jwt::{self, Claims, JwtError};
use super::keys::{Keys, public_kind};

/// The audience of every authorization request.
pub const AUDIENCE: &str = "nats-authorization-request";
/// The claim type of an authorization request.
pub const TYPE: &str = "authorization_request";
/// The message header naming the curve key a sealed request was sealed with; the answer is
/// sealed back to it.
pub const SERVER_XKEY_HEADER: &str = "Nats-Server-Xkey";
/// How a sealed request (nkeys' `xkv1` format) begins; a plain one is a JWT (`eyJ…`).
const SEALED_PREFIX: &[u8] = b"xkv1";

/// The `nats` part of an authorization request: the fields this program reads. Others —
/// `connect_opts` among them, which may carry a client's password — are not read at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthorizationRequest {
    pub server_id: ServerId,
    pub user_nkey: String,
    #[serde(default)]
    pub client_info: ClientInfo,
    #[serde(default)]
    pub client_tls: Option<ClientTls>,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub version: i64,
}

/// The server that asks: its id (a server public key, and the request's issuer) is the
/// audience of the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ServerId {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub host: String,
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub xkey: String,
}

/// The connecting client as the server sees it; `id` is the connection's `cid`, the one a
/// revocation kicks (§12).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
}

/// The client's TLS: `verified_chains` are the chains nats-server verified against its CA,
/// each PEM certificates leaf first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClientTls {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub cipher: String,
    #[serde(default)]
    pub verified_chains: Vec<Vec<String>>,
}

impl AuthorizationRequest {
    /// The client's own certificate (PEM), as verified by nats-server: the leaf of the first
    /// verified chain. `None` when the client presented none that verified.
    pub fn leaf_certificate(&self) -> Option<&str> {
        let chain = self.client_tls.as_ref()?.verified_chains.first()?;
        chain.first().map(String::as_str)
    }
}

/// A request that opened, verified and passed its checks.
#[derive(Debug, Clone)]
pub struct Request {
    pub claims: Claims<AuthorizationRequest>,
    /// The server's curve key when the request came sealed: the answer is sealed to it.
    pub(crate) sealed_by: Option<XKey>,
}

impl Request {
    /// The requesting server's id: the audience of the answer.
    pub fn server_id(&self) -> &str {
        &self.claims.nats.server_id.id
    }

    /// The connecting client's nkey: the subject of the answer and of its user JWT.
    pub fn user_nkey(&self) -> &str {
        &self.claims.nats.user_nkey
    }

    /// The connection's id on its server (`cid`).
    pub fn client_id(&self) -> u64 {
        self.claims.nats.client_info.id
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed_by.is_some()
    }
}

/// Why a request is not answered. Every one is a `bad_request` (§12); none names a key's
/// seed, and none quotes the request beyond its key names and times.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is sealed, but no xkey is configured")]
    Sealed,
    #[error("the request is not sealed, but an xkey is configured")]
    NotSealed,
    #[error("the sealed request has no {SERVER_XKEY_HEADER} header")]
    NoServerXkey,
    #[error("the {SERVER_XKEY_HEADER} header is not a curve public key")]
    ServerXkey,
    #[error("the sealed request does not open with the configured xkey")]
    Unopened,
    #[error("the server's xkey in the request is not the one in the {SERVER_XKEY_HEADER} header")]
    XkeyMismatch,
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("issued by {0}, which is not a server key")]
    NotServer(String),
    #[error("issued by {issuer}, but describes server {server}")]
    IssuerMismatch { issuer: String, server: String },
    #[error("audience {0:?}, not {AUDIENCE:?}")]
    Audience(String),
    #[error("claim type {0:?}, not {TYPE:?}")]
    Type(String),
    #[error("claims version {0}, not 2")]
    Version(i64),
    #[error("expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("user_nkey {0:?} is not a user public key")]
    UserNkey(String),
}

impl RequestError {
    /// The metric label of every request that cannot be answered (§12).
    pub fn reason(&self) -> &'static str {
        "bad_request"
    }
}

/// Opens `payload` (sealed to `keys.xkey`, or plain when no xkey is configured — the two
/// must agree), verifies it, and checks its claims at `now` (seconds since the epoch).
/// `server_xkey` is the message's [`SERVER_XKEY_HEADER`].
pub fn open(
    keys: &Keys,
    payload: &[u8],
    server_xkey: Option<&str>,
    now: i64,
) -> Result<Request, RequestError> {
    let sealed = payload.starts_with(SEALED_PREFIX);
    let (token, sealed_by) = match (&keys.xkey, sealed) {
        (None, false) => (Cow::Borrowed(payload), None),
        (None, true) => return Err(RequestError::Sealed),
        (Some(_), false) => return Err(RequestError::NotSealed),
        (Some(ours), true) => {
            let header = server_xkey.ok_or(RequestError::NoServerXkey)?;
            let theirs = XKey::from_public_key(header).map_err(|_| RequestError::ServerXkey)?;
            let opened = ours.open(payload, &theirs).ok_or(RequestError::Unopened)?;
            (Cow::Owned(opened), Some((header, theirs)))
        }
    };
    let token = std::str::from_utf8(&token).map_err(|_| JwtError::Shape)?;
    let claims: Claims<AuthorizationRequest> = jwt::decode(token)?;
    check(&claims, now)?;
    if let Some((header, _)) = &sealed_by {
        let named = &claims.nats.server_id.xkey;
        if !named.is_empty() && named != header {
            return Err(RequestError::XkeyMismatch);
        }
    }
    Ok(Request {
        claims,
        sealed_by: sealed_by.map(|(_, key)| key),
    })
}

fn check(claims: &Claims<AuthorizationRequest>, now: i64) -> Result<(), RequestError> {
    let request = &claims.nats;
    if public_kind(&claims.iss) != Some(KeyPairType::Server) {
        return Err(RequestError::NotServer(claims.iss.clone()));
    }
    if claims.iss != request.server_id.id {
        return Err(RequestError::IssuerMismatch {
            issuer: claims.iss.clone(),
            server: request.server_id.id.clone(),
        });
    }
    if claims.aud != AUDIENCE {
        return Err(RequestError::Audience(claims.aud.clone()));
    }
    if request.kind != TYPE {
        return Err(RequestError::Type(request.kind.clone()));
    }
    if request.version != 2 {
        return Err(RequestError::Version(request.version));
    }
    if claims.exp > 0 && now > claims.exp {
        return Err(RequestError::Expired {
            exp: claims.exp,
            now,
        });
    }
    if claims.nbf > 0 && claims.nbf > now {
        return Err(RequestError::NotYetValid {
            nbf: claims.nbf,
            now,
        });
    }
    if public_kind(&request.user_nkey) != Some(KeyPairType::User) {
        return Err(RequestError::UserNkey(request.user_nkey.clone()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::callout::keys::{CurveKey, IssuerKey};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use nkeys::KeyPair;
    use serde_json::{Value, json};

    /// The request nats-server 2.14.5 published for agent `a1` (see testdata/README.md).
    pub(crate) const CAPTURED: &str = include_str!("testdata/request.jwt");
    /// A moment inside the captured request's validity (`iat` 1796541455, `exp` +2 s).
    pub(crate) const CAPTURED_AT: i64 = 1_796_541_456;

    pub(crate) fn plain_keys() -> Keys {
        Keys {
            issuer: IssuerKey::generate(),
            xkey: None,
        }
    }

    #[test]
    fn the_captured_request_verifies_and_its_claims_come_out() {
        let token = CAPTURED.trim();
        let request = open(&plain_keys(), token.as_bytes(), None, CAPTURED_AT).unwrap();
        let server = "NDCXU76ZPG7JIXAFUJGRPO3L5MRJJU557NG5J7HAW4P4UQY2572N6PWL";
        assert_eq!(request.server_id(), server);
        assert_eq!(request.claims.iss, server);
        assert_eq!(
            request.user_nkey(),
            "UBBIV5ZQGNM6GACO4QJBAASTXF4HBT32EKGJCHJTQCEJG6ER3FUES4TE"
        );
        assert_eq!(request.client_id(), 11);
        assert!(!request.is_sealed());
        let nats = &request.claims.nats;
        assert_eq!(nats.server_id.name, "n1");
        assert_eq!(nats.server_id.version, "2.14.5");
        assert_eq!(nats.client_info.name, "a1");
        let tls = nats.client_tls.as_ref().unwrap();
        assert_eq!(tls.verified_chains.len(), 1);
        assert_eq!(tls.verified_chains[0].len(), 2, "leaf and CA");
        let leaf = nats.leaf_certificate().unwrap();
        assert!(leaf.starts_with(
            "-----BEGIN CERTIFICATE-----\nMIIBbTCCAROgAwIBAgIUNo/JJNwAXNzznav1pXsaWXktTUow"
        ));
        assert_eq!(leaf, tls.verified_chains[0][0]);
        // nats-server computed its jti as nats-io/jwt does.
        assert_eq!(
            request.claims.jti,
            "A5WOZZRWGH3JOHGAF3KB6IKNAFIB5AT2TRH5227YTST6WH2D6N3Q"
        );
        assert_eq!(jwt::jti(&request.claims), request.claims.jti);
        // A plain request to a service that expects sealed ones is refused.
        let sealed_keys = Keys {
            xkey: Some(CurveKey::generate()),
            ..plain_keys()
        };
        assert_eq!(
            open(&sealed_keys, token.as_bytes(), None, CAPTURED_AT).unwrap_err(),
            RequestError::NotSealed
        );
    }

    #[test]
    fn a_tampered_or_stale_captured_request_is_refused() {
        let token = CAPTURED.trim();
        let keys = plain_keys();
        let (header, rest) = token.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        // Another agent's certificate in place of a1's: the signature no longer verifies.
        claims["nats"]["client_info"]["name"] = json!("a2");
        let tampered = format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert_eq!(
            open(&keys, tampered.as_bytes(), None, CAPTURED_AT).unwrap_err(),
            RequestError::Jwt(JwtError::Signature)
        );
        let mut flipped = token.as_bytes().to_vec();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open(&keys, &flipped, None, CAPTURED_AT).unwrap_err(),
            RequestError::Jwt(JwtError::Signature)
        );
        assert_eq!(
            open(&keys, token.as_bytes(), None, 1_796_541_458).unwrap_err(),
            RequestError::Expired {
                exp: 1_796_541_457,
                now: 1_796_541_458
            }
        );
        assert_eq!(
            open(&keys, b"xkv1sealed", None, CAPTURED_AT).unwrap_err(),
            RequestError::Sealed
        );
    }

    /// A request as nats-server makes one, signed by `server` (with `edit` applied to its
    /// claims first).
    pub(crate) fn signed_request(server: &KeyPair, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = json!({
            "aud": AUDIENCE,
            "exp": CAPTURED_AT + 2,
            "iat": CAPTURED_AT,
            "iss": server.public_key(),
            "sub": "ABKDHUK5CZAXXYNKYD3PSUVKBYETSOSKOKCMFTO6RWDXGQQUOIPO6FFM",
            "nats": {
                "server_id": {"name": "n0", "host": "127.0.0.1", "id": server.public_key()},
                "user_nkey": KeyPair::new_user().public_key(),
                "client_info": {"id": 7},
                "connect_opts": {"protocol": 1, "pass": "not read"},
                "type": TYPE,
                "version": 2
            }
        });
        edit(&mut claims);
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(jwt::HEADER),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        let signature = URL_SAFE_NO_PAD.encode(server.sign(signed.as_bytes()).unwrap());
        format!("{signed}.{signature}")
    }

    #[test]
    fn every_claim_check_refuses() {
        let server = KeyPair::new_server();
        let keys = plain_keys();
        let check = |edit: fn(&mut Value)| {
            open(
                &keys,
                signed_request(&server, edit).as_bytes(),
                None,
                CAPTURED_AT,
            )
            .map(drop)
        };
        assert_eq!(check(|_| {}), Ok(()));
        assert_eq!(
            check(|c| c["aud"] = json!("someone")),
            Err(RequestError::Audience("someone".into()))
        );
        assert_eq!(
            check(|c| c["nats"]["type"] = json!("user")),
            Err(RequestError::Type("user".into()))
        );
        assert_eq!(
            check(|c| c["nats"]["version"] = json!(1)),
            Err(RequestError::Version(1))
        );
        assert!(matches!(
            check(|c| c["nats"]["server_id"]["id"] = json!("NOTHER")),
            Err(RequestError::IssuerMismatch { .. })
        ));
        assert_eq!(
            check(|c| c["exp"] = json!(CAPTURED_AT - 1)),
            Err(RequestError::Expired {
                exp: CAPTURED_AT - 1,
                now: CAPTURED_AT
            })
        );
        assert_eq!(
            check(|c| c["exp"] = json!(CAPTURED_AT)),
            Ok(()),
            "expires after exp"
        );
        assert!(matches!(
            check(|c| c["nbf"] = json!(CAPTURED_AT + 1)),
            Err(RequestError::NotYetValid { .. })
        ));
        assert!(matches!(
            check(|c| c["nats"]["user_nkey"] = json!(KeyPair::new_account().public_key())),
            Err(RequestError::UserNkey(_))
        ));
        assert!(matches!(
            check(|c| c["nats"]
                .as_object_mut()
                .unwrap()
                .remove("user_nkey")
                .map(drop)
                .unwrap()),
            Err(RequestError::Jwt(JwtError::Claims(_)))
        ));
        // Signed by an account key, naming itself as the server: not a server.
        let account = KeyPair::new_account();
        let by_account = signed_request(&account, |_| {});
        assert_eq!(
            open(&keys, by_account.as_bytes(), None, CAPTURED_AT).unwrap_err(),
            RequestError::NotServer(account.public_key())
        );
        assert_eq!(RequestError::Sealed.reason(), "bad_request");
    }

    #[test]
    fn a_sealed_request_opens_with_the_server_xkey_header() {
        let server = KeyPair::new_server();
        let server_xkey = CurveKey::generate();
        let keys = Keys {
            xkey: Some(CurveKey::generate()),
            ..plain_keys()
        };
        let ours = XKey::from_public_key(&keys.xkey.as_ref().unwrap().public_key()).unwrap();
        let header = server_xkey.public_key();
        let token = signed_request(&server, |c| c["nats"]["server_id"]["xkey"] = json!(header));
        let sealed = server_xkey.seal(token.as_bytes(), &ours);
        let request = open(&keys, &sealed, Some(&header), CAPTURED_AT).unwrap();
        assert!(request.is_sealed());
        assert_eq!(request.server_id(), server.public_key());

        assert_eq!(
            open(&keys, &sealed, None, CAPTURED_AT).unwrap_err(),
            RequestError::NoServerXkey
        );
        assert_eq!(
            open(&keys, &sealed, Some(&server.public_key()), CAPTURED_AT).unwrap_err(),
            RequestError::ServerXkey
        );
        let stranger = CurveKey::generate().public_key();
        assert_eq!(
            open(&keys, &sealed, Some(&stranger), CAPTURED_AT).unwrap_err(),
            RequestError::Unopened
        );
        // Sealed with one server key while the claims name another.
        let other = CurveKey::generate();
        let resealed = other.seal(token.as_bytes(), &ours);
        assert_eq!(
            open(&keys, &resealed, Some(&other.public_key()), CAPTURED_AT).unwrap_err(),
            RequestError::XkeyMismatch
        );
        // Sealed to a service without an xkey.
        assert_eq!(
            open(&plain_keys(), &sealed, Some(&header), CAPTURED_AT).unwrap_err(),
            RequestError::Sealed
        );
    }
}
