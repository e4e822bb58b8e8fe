//! How requests to the director authenticate (§2.2): the mode `/info` announces, basic
//! credentials, and UAA client-credentials tokens cached across passes.

use std::future::Future;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::time::Instant;
use url::Url;

use super::error::Error;
use crate::secret::Secret;

/// A cached token is replaced once less than this much validity remains, so that a request
/// never leaves with a token that expires on the way (the older programs used 60 s too).
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// What `/info` says about authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Basic,
    Uaa { url: Url },
}

/// The part of `/info` this client reads.
#[derive(serde::Deserialize)]
pub(crate) struct Info {
    #[serde(default)]
    user_authentication: Option<UserAuthentication>,
}

#[derive(serde::Deserialize)]
struct UserAuthentication {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    options: Option<UaaOptions>,
}

#[derive(serde::Deserialize)]
struct UaaOptions {
    #[serde(default)]
    url: Option<String>,
}

impl Info {
    /// `"uaa"` means UAA at `options.url`; anything else, or nothing, means basic auth.
    pub(crate) fn mode(&self) -> Result<Mode, String> {
        let Some(auth) = &self.user_authentication else {
            return Ok(Mode::Basic);
        };
        if auth.kind.as_deref() != Some("uaa") {
            return Ok(Mode::Basic);
        }
        let raw = auth
            .options
            .as_ref()
            .and_then(|o| o.url.as_deref())
            .ok_or("user_authentication.type is \"uaa\" but options.url is missing")?;
        let url = Url::parse(raw)
            .map_err(|e| format!("user_authentication.options.url {raw:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
            return Err(format!(
                "user_authentication.options.url {raw:?} is not an HTTP(S) URL"
            ));
        }
        Ok(Mode::Uaa { url })
    }
}

/// `{uaa}/oauth/token`, keeping any path the UAA URL already has.
pub(crate) fn token_url(uaa: &Url) -> Url {
    let mut url = uaa.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().extend(["oauth", "token"]);
    }
    url
}

/// What one request carries in its `Authorization` header.
pub(crate) enum Credentials {
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

impl Credentials {
    /// reqwest marks both headers sensitive, which keeps them out of its own Debug output.
    pub(crate) fn apply(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credentials::Basic { user, password } => {
                builder.basic_auth(user, Some(password.expose()))
            }
            Credentials::Bearer(token) => builder.bearer_auth(token.expose()),
        }
    }
}

/// A token as UAA handed it out.
pub(crate) struct FetchedToken {
    pub token: Secret,
    pub expires_in: Duration,
}

/// The body of a successful `/oauth/token` response; deliberately not `Debug`.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// The current UAA token. Invariant: a cached token came from `uaa` and was valid (and, when
/// a key is configured, verified) when it was stored; it is used while at least
/// `REFRESH_MARGIN` of its lifetime remains.
struct Cached {
    uaa: Url,
    token: Secret,
    expires_at: Instant,
}

/// Holds at most one token for the process. The lock is held across a fetch so the
/// concurrent `/vms` requests of a pass share one token request instead of racing.
#[derive(Default)]
pub(crate) struct TokenCache {
    slot: tokio::sync::Mutex<Option<Cached>>,
}

impl TokenCache {
    /// The cached token for `uaa` when it still has `REFRESH_MARGIN` to live, else a new one
    /// from `fetch`. A failed fetch leaves the cache empty.
    pub(crate) async fn get_or_fetch<F, Fut>(&self, uaa: &Url, fetch: F) -> Result<Secret, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedToken, Error>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref()
            && cached.uaa == *uaa
            && cached.expires_at.saturating_duration_since(Instant::now()) >= REFRESH_MARGIN
        {
            return Ok(cached.token.clone());
        }
        *slot = None;
        let fetched = fetch().await?;
        let token = fetched.token.clone();
        *slot = Some(Cached {
            uaa: uaa.clone(),
            token: fetched.token,
            expires_at: Instant::now() + fetched.expires_in,
        });
        Ok(token)
    }

    /// Drops the cached token, e.g. after the director refused it: the next request gets a
    /// fresh one instead of repeating the refusal until expiry.
    pub(crate) async fn invalidate(&self) {
        *self.slot.lock().await = None;
    }
}

/// Parses `uaa_public_key` once; `None` when it is blank (no verification).
pub(crate) fn verification_key(pem: Option<&str>) -> Result<Option<DecodingKey>, String> {
    match pem.map(str::trim) {
        None | Some("") => Ok(None),
        Some(pem) => DecodingKey::from_rsa_pem(pem.as_bytes())
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// Checks the token's RSA signature (RS256/384/512 only: the header's `alg` cannot talk the
/// client into HMAC or `none`) and that `exp` is present and not past. The audience is not
/// checked: UAA's is the client itself, and the director does its own checks.
pub(crate) fn verify_token(token: &str, key: &DecodingKey) -> Result<(), String> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.algorithms = vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
    validation.validate_aud = false;
    validation.validate_exp = true;
    validation.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<serde::de::IgnoredAny>(token, key, &validation)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const KEY_A: &str = include_str!("testdata/jwt_key_a.pem");
    const PUB_A: &str = include_str!("testdata/jwt_key_a.pub.pem");
    const KEY_B: &str = include_str!("testdata/jwt_key_b.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, exp: Option<u64>) -> String {
        let claims = match exp {
            Some(exp) => serde_json::json!({"sub": "nats-sync", "aud": ["other"], "exp": exp}),
            None => serde_json::json!({"sub": "nats-sync"}),
        };
        jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign")
    }

    fn rsa(pem: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa key")
    }

    fn key_a() -> DecodingKey {
        verification_key(Some(PUB_A))
            .expect("parse")
            .expect("non-blank")
    }

    #[test]
    fn accepts_rs256_rs384_rs512_from_the_right_key() {
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            let token = sign(alg, &rsa(KEY_A), Some(now() + 600));
            assert_eq!(verify_token(&token, &key_a()), Ok(()), "{alg:?}");
        }
    }

    #[test]
    fn rejects_wrong_key_hmac_other_rsa_schemes_expired_and_no_exp() {
        let wrong_key = sign(Algorithm::RS256, &rsa(KEY_B), Some(now() + 600));
        assert!(verify_token(&wrong_key, &key_a()).is_err());

        // HS256 keyed with the public key's text: the classic algorithm-confusion attack.
        let hmac = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(PUB_A.as_bytes()),
            Some(now() + 600),
        );
        assert!(verify_token(&hmac, &key_a()).is_err());

        let pss = sign(Algorithm::PS256, &rsa(KEY_A), Some(now() + 600));
        assert!(verify_token(&pss, &key_a()).is_err());

        let expired = sign(Algorithm::RS256, &rsa(KEY_A), Some(now() - 3600));
        assert!(verify_token(&expired, &key_a()).is_err());

        let no_exp = sign(Algorithm::RS256, &rsa(KEY_A), None);
        assert!(verify_token(&no_exp, &key_a()).is_err());

        let tampered = {
            let token = sign(Algorithm::RS256, &rsa(KEY_A), Some(now() + 600));
            let mut parts: Vec<&str> = token.split('.').collect();
            let other = sign(Algorithm::RS256, &rsa(KEY_A), Some(now() + 900));
            let other_payload = other.split('.').nth(1).expect("payload").to_string();
            parts[1] = &other_payload;
            parts.join(".")
        };
        assert!(verify_token(&tampered, &key_a()).is_err());
        assert!(verify_token("not a jwt", &key_a()).is_err());
    }

    #[test]
    fn blank_key_means_no_verification_and_bad_key_is_an_error() {
        assert!(verification_key(None).expect("none").is_none());
        assert!(verification_key(Some(" \n")).expect("blank").is_none());
        assert!(
            verification_key(Some(
                "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"
            ))
            .is_err()
        );
    }

    #[test]
    fn info_modes() {
        let parse = |json: &str| serde_json::from_str::<Info>(json).expect("json").mode();
        assert_eq!(parse("{}"), Ok(Mode::Basic));
        assert_eq!(
            parse(r#"{"name":"d","user_authentication":{"type":"basic","options":{}}}"#),
            Ok(Mode::Basic)
        );
        assert_eq!(parse(r#"{"user_authentication":null}"#), Ok(Mode::Basic));
        assert_eq!(
            parse(
                r#"{"user_authentication":{"type":"uaa","options":{"url":"https://10.0.0.6:8443"}}}"#
            ),
            Ok(Mode::Uaa {
                url: Url::parse("https://10.0.0.6:8443").expect("url")
            })
        );
        assert!(parse(r#"{"user_authentication":{"type":"uaa","options":{}}}"#).is_err());
        assert!(
            parse(r#"{"user_authentication":{"type":"uaa","options":{"url":"not a url"}}}"#)
                .is_err()
        );
    }

    #[test]
    fn token_url_keeps_the_uaa_path() {
        let t = |u: &str| token_url(&Url::parse(u).expect("url")).to_string();
        assert_eq!(
            t("https://10.0.0.6:8443"),
            "https://10.0.0.6:8443/oauth/token"
        );
        assert_eq!(
            t("https://10.0.0.6:8443/"),
            "https://10.0.0.6:8443/oauth/token"
        );
        assert_eq!(t("https://h/uaa/"), "https://h/uaa/oauth/token");
        assert_eq!(t("https://h/uaa?x=1"), "https://h/uaa/oauth/token");
    }

    /// Counts fetches; each returns a token named after its sequence number.
    struct Fetcher {
        count: AtomicUsize,
        expires_in: Duration,
    }

    impl Fetcher {
        fn new(expires_in: Duration) -> Self {
            Self {
                count: AtomicUsize::new(0),
                expires_in,
            }
        }
        async fn fetch(&self) -> Result<FetchedToken, Error> {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(FetchedToken {
                token: Secret::new(format!("token-{n}")),
                expires_in: self.expires_in,
            })
        }
        fn count(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }
    }

    fn uaa(u: &str) -> Url {
        Url::parse(u).expect("url")
    }

    #[tokio::test(start_paused = true)]
    async fn token_is_reused_until_less_than_the_margin_remains() {
        let cache = TokenCache::default();
        let f = Fetcher::new(Duration::from_secs(300));
        let u = uaa("https://uaa:8443");
        let t1 = cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
        assert_eq!(t1.expose(), "token-1");
        tokio::time::advance(Duration::from_secs(239)).await;
        let t = cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
        assert_eq!((t.expose(), f.count()), ("token-1", 1));
        tokio::time::advance(Duration::from_secs(2)).await;
        let t = cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
        assert_eq!((t.expose(), f.count()), ("token-2", 2));
        let t = cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
        assert_eq!((t.expose(), f.count()), ("token-2", 2));
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_tokens_are_used_once() {
        let cache = TokenCache::default();
        let f = Fetcher::new(Duration::from_secs(30));
        let u = uaa("https://uaa:8443");
        for n in 1..=3 {
            let t = cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
            assert_eq!(t.expose(), format!("token-{n}"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn another_uaa_invalidation_and_failures_force_a_fetch() {
        let cache = TokenCache::default();
        let f = Fetcher::new(Duration::from_secs(3600));
        let u = uaa("https://uaa:8443");
        cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
        cache
            .get_or_fetch(&uaa("https://other:8443"), || f.fetch())
            .await
            .expect("token");
        assert_eq!(f.count(), 2);
        cache.invalidate().await;
        cache
            .get_or_fetch(&uaa("https://other:8443"), || f.fetch())
            .await
            .expect("token");
        assert_eq!(f.count(), 3);

        let err = cache
            .get_or_fetch(&u, || async {
                Err(Error::Auth {
                    detail: "down".into(),
                })
            })
            .await
            .expect_err("failure passed through");
        assert_eq!(err.reason(), "auth");
        // The failure did not leave the other UAA's token behind as if it were current.
        let t = cache.get_or_fetch(&u, || f.fetch()).await.expect("token");
        assert_eq!((t.expose(), f.count()), ("token-4", 4));
    }
}
