//! How the simulated director authenticates its API clients: HTTP basic, or bearer tokens a
//! UAA signed (checked as the director checks them), the `401` its controllers' filter halts
//! with, and the user `/info` names.

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::{HTML, REALM, Shared};

/// How the director authenticates its API clients.
#[derive(Clone)]
pub enum DirectorAuth {
    /// HTTP basic with this user and password; `/info` reports `"type":"basic"`.
    Basic {
        /// Accepted user name.
        user: String,
        /// Accepted password.
        password: String,
    },
    /// Bearer tokens from a UAA; `/info` reports `"type":"uaa"` and this URL.
    Uaa {
        /// The UAA base URL reported in `/info` (`user_authentication.options.url`).
        url: String,
        /// PEM public key that must have signed the tokens (RS256/384/512).
        public_key_pem: String,
    },
}

impl std::fmt::Debug for DirectorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectorAuth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
            DirectorAuth::Uaa { url, .. } => f
                .debug_struct("Uaa")
                .field("url", url)
                .finish_non_exhaustive(),
        }
    }
}

/// Why [`verify_token`] rejected a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Signature, expiry, algorithm or format check failed.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The token verified but does not grant a BOSH scope.
    #[error("token lacks a bosh.admin or bosh.read scope")]
    Scope,
}

impl TokenError {
    /// A short, stable label for metrics and assertions.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Invalid(_) => "invalid",
            TokenError::Scope => "scope",
        }
    }
}

/// Verifies a bearer token the way the director does: RS256/384/512 signature by
/// `public_key_pem`, not expired (no leeway), and a `bosh.admin` or `bosh.read` scope.
/// Returns the claims.
pub fn verify_token(token: &str, public_key_pem: &str) -> Result<Value, TokenError> {
    let key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.algorithms = vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
    validation.leeway = 0;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)?;
    let scoped = data.claims["scope"]
        .as_array()
        .is_some_and(|scopes| scopes.iter().any(|s| s == "bosh.admin" || s == "bosh.read"));
    if scoped {
        Ok(data.claims)
    } else {
        Err(TokenError::Scope)
    }
}

impl Shared {
    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        match &self.auth {
            DirectorAuth::Basic { user, password } => {
                let Some(encoded) = value.strip_prefix("Basic ") else {
                    return false;
                };
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
                else {
                    return false;
                };
                decoded == format!("{user}:{password}").as_bytes()
            }
            DirectorAuth::Uaa { public_key_pem, .. } => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "));
                token.is_some_and(|t| verify_token(t.trim(), public_key_pem).is_ok())
            }
        }
    }

    /// What the controllers' `before` filter halts with: the path as text, the challenge.
    pub(super) fn unauthorized(&self, uri: &Uri) -> Response {
        let mut response = Response::new(axum::body::Body::from(format!(
            "Not authorized: '{}'\n",
            uri.path()
        )));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HTML));
        response
    }

    /// The user named by valid basic credentials, as `/info` reports it (`null` otherwise;
    /// in UAA mode too, where the simulator does not read the token's user).
    pub(super) fn user(&self, headers: &HeaderMap) -> Value {
        match &self.auth {
            DirectorAuth::Basic { user, .. } if self.authorized(headers) => json!(user),
            _ => Value::Null,
        }
    }
}
