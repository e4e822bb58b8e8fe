//! The JWTs of the callout exchange, as nats-io/jwt (v2) writes and reads them: the header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`; header, claims and signature each base64url without
//! padding; the signature an ed25519 one by the `iss` nkey over `header.claims`; and `jti`
//! the SHA-512/256 of the registered claims, base32 without padding (see [`jti`]).
//!
//! nats-server signs its requests this way and reads our answers this way; the claim types
//! themselves are [`super::request`]'s and [`super::answer`]'s.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};

use super::keys::IssuerKey;

/// The header of every JWT nats-io/jwt v2 writes.
pub const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// nats-io/jwt refuses a longer token; so do we, before decoding anything.
pub const MAX_TOKEN_LEN: usize = 1024 * 1024;

/// A JWT's claims: the registered ones in nats-io/jwt's order (`ClaimsData`, which is also
/// what its `jti` hashes), then the NATS-specific part under `nats`. Empty and zero values
/// are left out, as Go's `omitempty` does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims<N> {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exp: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nbf: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
    pub nats: N,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The registered claims without `jti`: what nats-io/jwt hashes into `jti`.
#[derive(Serialize)]
struct Registered<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    exp: i64,
    #[serde(skip_serializing_if = "is_zero")]
    iat: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    nbf: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    sub: &'a str,
}

/// The `jti` nats-io/jwt gives these claims: the registered claims with `jti` empty (so left
/// out), as Go's `json.Marshal` writes them, hashed with SHA-512/256 and written in base32
/// without padding. The `nats` part is not hashed.
pub fn jti<N>(claims: &Claims<N>) -> String {
    let registered = Registered {
        aud: &claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        iss: &claims.iss,
        name: &claims.name,
        nbf: claims.nbf,
        sub: &claims.sub,
    };
    let json = serde_json::to_string(&registered)
        .expect("serialising a struct of strings and integers cannot fail");
    data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(go_escaped(&json).as_bytes()))
}

/// JSON as Go's `encoding/json` writes it: serde_json's output, but with `<`, `>`, `&`,
/// U+2028 and U+2029 escaped as `\u003c` and so on. Outside strings JSON has none of them,
/// so replacing them everywhere is replacing them in strings.
fn go_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Signs `claims` as `issuer` at `now` (seconds since the epoch): sets `iss`, `iat` and `jti`
/// as nats-io/jwt's `Encode` does, and returns the token.
pub fn encode<N: Serialize>(mut claims: Claims<N>, issuer: &IssuerKey, now: i64) -> String {
    claims.iss = issuer.public_key();
    claims.iat = now;
    claims.jti = String::new();
    claims.jti = jti(&claims);
    let payload = serde_json::to_vec(&claims)
        .expect("serialising claims of strings, integers and lists cannot fail");
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()));
    format!("{signed}.{signature}")
}

/// Why a token is not a JWT signed by the key it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("the token is not three base64url parts separated by dots")]
    Shape,
    #[error("the header is not {HEADER}")]
    Header,
    #[error("the claims cannot be read: {0}")]
    Claims(String),
    #[error("the issuer {0:?} is not a public nkey")]
    Issuer(String),
    #[error("the signature does not verify with the issuer's key")]
    Signature,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    typ: String,
    #[serde(default)]
    alg: String,
}

/// The claims of `token`, once its signature verifies with the public key its `iss` names.
/// Whether that issuer is to be trusted, and what the claims say, is the caller's to check.
pub fn decode<N: DeserializeOwned>(token: &str) -> Result<Claims<N>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let base64 = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Shape);
    let header: Header = serde_json::from_slice(&base64(header)?).map_err(|_| JwtError::Header)?;
    // As nats-io/jwt reads them: the type in any case, the algorithm v2's only.
    if !header.typ.eq_ignore_ascii_case("JWT") || !header.alg.eq_ignore_ascii_case("ed25519-nkey") {
        return Err(JwtError::Header);
    }
    let claims: Claims<N> =
        serde_json::from_slice(&base64(payload)?).map_err(|e| JwtError::Claims(e.to_string()))?;
    let signature = base64(signature)?;
    let key = nkeys::KeyPair::from_public_key(&claims.iss)
        .map_err(|_| JwtError::Issuer(claims.iss.clone()))?;
    let signed = &token[..token.len() - signature_len(token)];
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    Ok(claims)
}

/// The length of the signature part of a three-part token, with its leading dot.
fn signature_len(token: &str) -> usize {
    token.len() - token.rfind('.').expect("a three-part token has a dot")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn round_trip_sets_issuer_time_and_jti() {
        let issuer = IssuerKey::generate();
        let claims = Claims {
            sub: "UABC".into(),
            aud: "$G".into(),
            exp: 2_000_000_100,
            name: "a name".into(),
            nats: json!({"type": "user", "version": 2}),
            ..Default::default()
        };
        let token = encode(claims.clone(), &issuer, 2_000_000_000);
        let mut parts = token.split('.');
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap(),
            HEADER.as_bytes()
        );
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        let back: Claims<Value> = decode(&token).unwrap();
        assert_eq!(back.iss, issuer.public_key());
        assert_eq!(back.iat, 2_000_000_000);
        assert_eq!(
            back.jti,
            jti(&Claims {
                jti: String::new(),
                ..back.clone()
            })
        );
        assert_eq!(
            Claims {
                iss: String::new(),
                iat: 0,
                jti: String::new(),
                ..back
            },
            claims
        );
    }

    #[test]
    fn jti_hashes_the_registered_claims_in_go_order_only() {
        let claims = Claims {
            aud: "$G".to_owned(),
            iat: 7,
            iss: "AISSUER".to_owned(),
            sub: "U<&>".to_owned(),
            nats: json!({"anything": 1}),
            ..Default::default()
        };
        // Written out as Go's json.Marshal writes ClaimsData, escapes included.
        let go = r#"{"aud":"$G","iat":7,"iss":"AISSUER","sub":"U\u003c\u0026\u003e"}"#;
        let expected = data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(go.as_bytes()));
        assert_eq!(jti(&claims), expected);
        assert_eq!(
            jti(&Claims {
                nats: json!(null),
                ..claims.clone()
            }),
            expected
        );
        assert_eq!(
            jti(&Claims {
                jti: "X".into(),
                ..claims.clone()
            }),
            expected
        );
        assert_ne!(jti(&Claims { exp: 1, ..claims }), expected);
    }

    #[test]
    fn refuses_what_is_not_a_signed_jwt() {
        let issuer = IssuerKey::generate();
        let token = encode(
            Claims {
                sub: "UABC".into(),
                nats: json!({}),
                ..Default::default()
            },
            &issuer,
            1,
        );
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let (header, payload) = signed.split_once('.').unwrap();
        let other = IssuerKey::generate();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&json!({"iss": other.public_key(), "sub": "UABC", "nats": {}}))
                .unwrap(),
        );
        let v1_header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519"}"#);
        let cases = [
            (signed.to_owned(), JwtError::Shape),
            (format!("{token}.x"), JwtError::Shape),
            (format!("{header}.{payload}.!!"), JwtError::Shape),
            (
                format!("{v1_header}.{payload}.{signature}"),
                JwtError::Header,
            ),
            (
                format!("{header}.{forged_payload}.{signature}"),
                JwtError::Signature,
            ),
            ("a".repeat(MAX_TOKEN_LEN + 1), JwtError::TooLarge),
        ];
        for (bad, expected) in cases {
            assert_eq!(decode::<Value>(&bad).unwrap_err(), expected, "{bad:.80}");
        }
        let list = format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(b"[]"));
        assert!(matches!(decode::<Value>(&list), Err(JwtError::Claims(_))));
        let not_a_key = URL_SAFE_NO_PAD.encode(br#"{"iss":"AXYZ","nats":{}}"#);
        assert_eq!(
            decode::<Value>(&format!("{header}.{not_a_key}.{signature}")).unwrap_err(),
            JwtError::Issuer("AXYZ".into())
        );
        assert!(decode::<Value>(&token).is_ok());
    }
}
