//! A fake UAA: the OAuth2 client-credentials grant at `POST /oauth/token`, issuing RSA-signed JWTs, with knobs for expiry, algorithm, bad signatures and faults.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Form;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use base64::Engine as _;
/// The JWT signing algorithms ([`UaaHandle::set_algorithm`]), re-exported from `jsonwebtoken`.
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};
use rand::Rng;
use serde_json::{Value, json};

use crate::director::DirectorAuth;
#[cfg(test)]
use crate::director::verify_token;
use crate::fault::{
    Fault, FaultAction, FaultTable, delay_then_action, json_response, lock, mangle,
};
use crate::server::{Server, Transport};

/// The private key the UAA signs tokens with (PKCS#8 PEM, RSA 2048, fixed: a simulator needs
/// no secrecy, and a fixed key avoids slow RSA key generation in every test).
const SIGNING_KEY_PEM: &str = include_str!("keys/uaa_signing.key.pem");
/// Its public key — what BOSH writes into `director.uaa_public_key`.
pub const PUBLIC_KEY_PEM: &str = include_str!("keys/uaa_signing.pub.pem");
/// An unrelated key, used by [`UaaHandle::set_sign_with_wrong_key`].
const WRONG_KEY_PEM: &str = include_str!("keys/wrong_signing.key.pem");
/// The public half of the unrelated key, for tests that configure the wrong verification key.
pub const WRONG_PUBLIC_KEY_PEM: &str = include_str!("keys/wrong_signing.pub.pem");

/// The scope every issued token carries.
pub const SCOPE: &str = "bosh.admin";

/// How to start a [`UaaSim`].
#[derive(Clone)]
pub struct UaaConfig {
    /// The accepted client id.
    pub client_id: String,
    /// The accepted client secret.
    pub client_secret: String,
    /// Plain HTTP or HTTPS.
    pub transport: Transport,
    /// Token lifetime in seconds (`expires_in` and the JWT's `exp`); may be zero or negative
    /// to issue already-expired tokens.
    pub expires_in: i64,
    /// Signing algorithm: RS256, RS384 or RS512.
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for UaaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaaConfig")
            .field("client_id", &self.client_id)
            .field("transport", &self.transport)
            .field("expires_in", &self.expires_in)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl UaaConfig {
    /// A UAA over plain HTTP accepting this client, issuing RS256 tokens valid for 12 hours.
    pub fn new(client_id: &str, client_secret: &str) -> Self {
        UaaConfig {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            transport: Transport::Plain,
            expires_in: 43_199,
            algorithm: Algorithm::RS256,
        }
    }

    /// Serve HTTPS with this server configuration.
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.transport = Transport::Tls(config);
        self
    }
}

/// How a token request authenticated its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    Basic,
    /// `client_id` / `client_secret` in the form body.
    Form,
    /// No client credentials.
    None,
}

/// One token request the UAA answered (no credentials recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `grant_type` form field.
    pub grant_type: Option<String>,
    /// How the client authenticated.
    pub client_auth: ClientAuth,
    /// The status sent.
    pub status: u16,
}

struct Shared {
    client_id: String,
    client_secret: String,
    url: Mutex<String>,
    expires_in: AtomicI64,
    algorithm: Mutex<Algorithm>,
    wrong_key: AtomicBool,
    issued: AtomicU64,
    requests: Mutex<Vec<TokenRequest>>,
    faults: FaultTable<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client secret stays out of Debug output.
        f.debug_struct("Shared")
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("expires_in", &self.expires_in)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle on a running UAA.
///
/// Invariant: `issued` counts tokens actually handed out (status 200); `requests` holds every
/// request including refused ones.
#[derive(Debug, Clone)]
pub struct UaaHandle {
    shared: Arc<Shared>,
}

/// A running fake UAA; it stops when dropped. Dereferences to its [`UaaHandle`].
#[derive(Debug)]
pub struct UaaSim {
    server: Server,
    handle: UaaHandle,
}

impl std::ops::Deref for UaaSim {
    type Target = UaaHandle;
    fn deref(&self) -> &UaaHandle {
        &self.handle
    }
}

impl UaaSim {
    /// Starts the UAA on `127.0.0.1:<free port>`; requires a Tokio runtime.
    pub async fn start(config: UaaConfig) -> io::Result<UaaSim> {
        let shared = Arc::new(Shared {
            client_id: config.client_id,
            client_secret: config.client_secret,
            url: Mutex::new(String::new()),
            expires_in: AtomicI64::new(config.expires_in),
            algorithm: Mutex::new(config.algorithm),
            wrong_key: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            faults: FaultTable::new(),
        });
        let router = Router::new()
            .route("/oauth/token", post(token))
            .with_state(shared.clone());
        let server = Server::start(router, config.transport).await?;
        *lock(&shared.url) = server.url();
        Ok(UaaSim {
            server,
            handle: UaaHandle { shared },
        })
    }

    /// The base URL, e.g. `https://127.0.0.1:40124` (no trailing slash).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A cloneable handle.
    pub fn handle(&self) -> UaaHandle {
        self.handle.clone()
    }

    /// The director configuration for a director that trusts this UAA: its URL and public key.
    pub fn director_auth(&self) -> DirectorAuth {
        DirectorAuth::Uaa {
            url: self.url(),
            public_key_pem: PUBLIC_KEY_PEM.to_owned(),
        }
    }

    /// `true`: close the port (connections refused); `false`: listen again on the same port.
    pub fn set_down(&self, down: bool) {
        self.server.set_down(down);
    }
}

impl UaaHandle {
    /// The PEM public key tokens are signed with (`director.uaa_public_key`).
    pub fn public_key_pem(&self) -> &'static str {
        PUBLIC_KEY_PEM
    }

    /// Lifetime of tokens issued from now on, in seconds (zero or negative: already expired).
    pub fn set_expires_in(&self, seconds: i64) {
        self.shared.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// Algorithm for tokens issued from now on (RS256, RS384 or RS512).
    pub fn set_algorithm(&self, algorithm: Algorithm) {
        *lock(&self.shared.algorithm) = algorithm;
    }

    /// Sign tokens with an unrelated key, so their signature does not verify against
    /// [`PUBLIC_KEY_PEM`].
    pub fn set_sign_with_wrong_key(&self, wrong: bool) {
        self.shared.wrong_key.store(wrong, Ordering::SeqCst);
    }

    /// Tokens issued (requests answered 200).
    pub fn tokens_issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Every token request so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Installs a fault rule for `POST /oauth/token`.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.faults.set((), fault);
    }

    /// Removes the fault rule.
    pub fn clear_fault(&self) {
        self.shared.faults.clear(&());
    }

    /// Issues a token directly, as the endpoint would (counts as issued), for tests that
    /// need a token without HTTP.
    pub fn issue_token(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let token = self.shared.sign()?;
        self.shared.issued.fetch_add(1, Ordering::SeqCst);
        Ok(token)
    }
}

impl Shared {
    fn sign(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        let jti = format!("{:032x}", rand::rng().random::<u128>());
        let url = lock(&self.url).clone();
        let claims = json!({
            "jti": jti,
            "sub": self.client_id,
            "authorities": [SCOPE],
            "scope": [SCOPE],
            "client_id": self.client_id,
            "cid": self.client_id,
            "azp": self.client_id,
            "grant_type": "client_credentials",
            "rev_sig": "0a1b2c3d",
            "iat": now,
            "exp": now + expires_in,
            "iss": format!("{url}/oauth/token"),
            "zid": "uaa",
            "aud": ["bosh", self.client_id],
        });
        let algorithm = *lock(&self.algorithm);
        let mut header = Header::new(algorithm);
        header.kid = Some("uaa-jwt-key-1".to_owned());
        let pem = if self.wrong_key.load(Ordering::SeqCst) {
            WRONG_KEY_PEM
        } else {
            SIGNING_KEY_PEM
        };
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())?;
        jsonwebtoken::encode(&header, &claims, &key)
    }

    fn client_auth(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> (ClientAuth, bool) {
        if let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let ok = value
                .strip_prefix("Basic ")
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .is_some_and(|decoded| {
                    decoded == format!("{}:{}", self.client_id, self.client_secret).as_bytes()
                });
            return (ClientAuth::Basic, ok);
        }
        match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (
                ClientAuth::Form,
                *id == self.client_id && *secret == self.client_secret,
            ),
            _ => (ClientAuth::None, false),
        }
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    let grant_type = form.get("grant_type").cloned();
    let (client_auth, authenticated) = shared.client_auth(&headers, &form);
    let response = token_response(&shared, grant_type.as_deref(), authenticated).await;
    if response.status() == StatusCode::OK {
        shared.issued.fetch_add(1, Ordering::SeqCst);
    }
    lock(&shared.requests).push(TokenRequest {
        grant_type,
        client_auth,
        status: response.status().as_u16(),
    });
    response
}

async fn token_response(
    shared: &Shared,
    grant_type: Option<&str>,
    authenticated: bool,
) -> Response {
    let action = delay_then_action(shared.faults.fire(&())).await;
    if let FaultAction::Status(code) = action {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return oauth_error(status, "server_error", "simulated failure");
    }
    if !authenticated {
        let mut response = oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"UAA/client\", error=\"unauthorized\""),
        );
        return response;
    }
    if grant_type != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant type",
        );
    }
    match shared.sign() {
        Ok(access_token) => {
            let jti = access_token
                .split('.')
                .nth(1)
                .and_then(|claims| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(claims)
                        .ok()
                })
                .and_then(|claims| serde_json::from_slice::<Value>(&claims).ok())
                .and_then(|claims| claims["jti"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let body = json!({
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": shared.expires_in.load(Ordering::SeqCst),
                "scope": SCOPE,
                "jti": jti,
            });
            mangle(&action, body.to_string().into_bytes())
        }
        Err(error) => oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &error.to_string(),
        ),
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description})
            .to_string()
            .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(expires_in: i64) -> Shared {
        Shared {
            client_id: "c".into(),
            client_secret: "topsecret".into(),
            url: Mutex::new("https://127.0.0.1:1".into()),
            expires_in: AtomicI64::new(expires_in),
            algorithm: Mutex::new(Algorithm::RS256),
            wrong_key: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            faults: FaultTable::new(),
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let s = shared(1);
        assert!(!format!("{s:?}").contains("topsecret"));
        let config = UaaConfig::new("id", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn issued_tokens_verify_for_every_rsa_algorithm() {
        let s = shared(600);
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            *lock(&s.algorithm) = alg;
            let token = s.sign().unwrap();
            assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, alg);
            let claims = verify_token(&token, PUBLIC_KEY_PEM).unwrap();
            assert_eq!(claims["client_id"], "c");
        }
    }

    #[test]
    fn wrong_key_and_expired_tokens_are_rejected() {
        let s = shared(600);
        s.wrong_key.store(true, Ordering::SeqCst);
        let token = s.sign().unwrap();
        assert!(verify_token(&token, PUBLIC_KEY_PEM).is_err());
        assert!(verify_token(&token, WRONG_PUBLIC_KEY_PEM).is_ok());
        let expired = shared(-5).sign().unwrap();
        let err = verify_token(&expired, PUBLIC_KEY_PEM).unwrap_err();
        assert_eq!(err.reason(), "invalid");
    }
}
