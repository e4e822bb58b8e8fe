//! The director client's error types: what failed, where, and which class of failure it is.

use std::error::Error as StdError;
use std::path::PathBuf;

/// A problem with the client's settings, found when the client is built (CA files, the UAA
/// key, the URL) or when `/info` asks for a mode whose credentials are not configured. The
/// operator's to fix; never transient.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("CA file {path}: cannot read it: {source}")]
    CaFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path}: not valid PEM: {detail}")]
    CaFileInvalidPem { path: PathBuf, detail: String },
    #[error("CA file {path}: holds no PEM certificate")]
    CaFileNoCertificate { path: PathBuf },
    #[error("CA file {path}: certificate #{index} is not usable as a trust anchor: {detail}")]
    CaCertificateRejected {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error(
        "no CA file is configured and the system trust store holds no usable certificate{detail}"
    )]
    NoSystemRoots { detail: String },
    #[error("TLS setup: {detail}")]
    Tls { detail: String },
    #[error("director.uaa_public_key is not a usable RSA public key in PEM form: {detail}")]
    UaaPublicKey { detail: String },
    #[error("director.url {url} is not an http(s) URL with a host")]
    DirectorUrl { url: String },
    #[error("HTTP client setup: {detail}")]
    HttpClient { detail: String },
    #[error("the director uses {mode} authentication but {keys} are not configured")]
    MissingCredentials {
        mode: &'static str,
        keys: &'static str,
    },
}

impl SettingsError {
    /// Every reason [`SettingsError::reason`] returns: the metrics export each from start-up.
    pub const ALL_REASONS: [&'static str; 1] = ["config"];

    pub fn reason(&self) -> &'static str {
        "config"
    }
}

/// Why one read of the director failed. `endpoint` is the metric label of the request
/// (`info`, `deployments`, `vms`, `events`, `uaa_token`); `url` is the request URL without
/// user info or query, so messages say where without ever carrying a credential.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused, reset, unreachable, DNS failure, EOF mid-response: worth retrying.
    #[error("cannot reach {url}: {detail}")]
    Connection {
        endpoint: &'static str,
        url: String,
        detail: String,
    },
    /// Connect or whole-request timeout: worth retrying.
    #[error("request to {url} timed out: {detail}")]
    Timeout {
        endpoint: &'static str,
        url: String,
        detail: String,
    },
    /// The server answered with a status other than 2xx (and, for `/vms`, other than 404).
    #[error("{url} answered HTTP {status}{}", fmt_detail(.detail))]
    Status {
        endpoint: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    /// The peer's certificate was not accepted (or the TLS handshake failed otherwise).
    #[error("TLS failure talking to {url}: {detail}")]
    Tls {
        endpoint: &'static str,
        url: String,
        detail: String,
    },
    /// The body is not the JSON the endpoint should return.
    #[error("unexpected response from {url}: {detail}")]
    Decode {
        endpoint: &'static str,
        url: String,
        detail: String,
    },
    /// The body exceeds `Settings::max_body_bytes`.
    #[error("response from {url} is larger than the {limit}-byte limit")]
    BodyTooLarge {
        endpoint: &'static str,
        url: String,
        limit: usize,
    },
    /// No usable UAA token: the token request failed.
    #[error("UAA authentication failed: {detail}")]
    Auth { detail: String },
    /// UAA issued a token that fails verification against `uaa_public_key` (bad signature,
    /// expired, wrong algorithm): UAA's key changed, or something impersonates UAA.
    #[error("UAA token rejected: {detail}")]
    TokenInvalid { detail: String },
    #[error(transparent)]
    Config(#[from] SettingsError),
}

fn fmt_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl Error {
    /// Every reason [`Error::reason`] returns (a settings error's included): the metrics
    /// export each from start-up (§8).
    pub const ALL_REASONS: [&'static str; 10] = [
        "connection",
        "timeout",
        "unauthorized",
        "status",
        "tls",
        "decode",
        "body_too_large",
        "auth",
        "token_invalid",
        SettingsError::ALL_REASONS[0],
    ];

    /// A short, fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Connection { .. } => "connection",
            Error::Timeout { .. } => "timeout",
            // Refused credentials need a person, not patience: their own reason, to alert on.
            Error::Status {
                status: 401 | 403, ..
            } => "unauthorized",
            Error::Status { .. } => "status",
            Error::Tls { .. } => "tls",
            Error::Decode { .. } => "decode",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::Auth { .. } => "auth",
            Error::TokenInvalid { .. } => "token_invalid",
            Error::Config(e) => e.reason(),
        }
    }

    /// Connection-class failures (§2.4): the director may simply not be up yet.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }

    /// Classifies a transport error from reqwest. TLS is checked first because a failed
    /// handshake also reports itself as a connect error, and it must not be retried as one.
    pub(crate) fn from_transport(
        endpoint: &'static str,
        url: String,
        err: reqwest::Error,
    ) -> Error {
        let err = err.without_url();
        let detail = chain(&err);
        if has_tls_cause(&err) {
            Error::Tls {
                endpoint,
                url,
                detail,
            }
        } else if err.is_timeout() {
            Error::Timeout {
                endpoint,
                url,
                detail,
            }
        } else {
            Error::Connection {
                endpoint,
                url,
                detail,
            }
        }
    }
}

/// The error and its causes, joined the way a person reads them. Hyper and reqwest repeat
/// themselves along the chain, so consecutive duplicates are dropped.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Whether rustls produced any error in the chain. `std::io::Error::source` skips the error
/// it wraps (it returns the wrapped error's source), so wrapped errors are looked at directly.
fn has_tls_cause(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && (inner.is::<rustls::Error>() || has_tls_cause(inner))
        {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn sample(kind: &str) -> Error {
        let endpoint = "vms";
        let url = "https://10.0.0.6:25555/deployments/cf/vms".to_string();
        let detail = "x".to_string();
        match kind {
            "connection" => Error::Connection {
                endpoint,
                url,
                detail,
            },
            "timeout" => Error::Timeout {
                endpoint,
                url,
                detail,
            },
            "status" => Error::Status {
                endpoint,
                url,
                status: 500,
                detail,
            },
            "tls" => Error::Tls {
                endpoint,
                url,
                detail,
            },
            "decode" => Error::Decode {
                endpoint,
                url,
                detail,
            },
            "body_too_large" => Error::BodyTooLarge {
                endpoint,
                url,
                limit: 10,
            },
            "auth" => Error::Auth { detail },
            "token_invalid" => Error::TokenInvalid { detail },
            "unauthorized" => Error::Status {
                endpoint,
                url,
                status: 401,
                detail,
            },
            "config" => Error::Config(SettingsError::CaFileNoCertificate {
                path: "/ca.pem".into(),
            }),
            other => panic!("no sample for {other}"),
        }
    }

    #[test]
    fn reasons_and_transience() {
        for (kind, transient) in [
            ("connection", true),
            ("timeout", true),
            ("status", false),
            ("tls", false),
            ("decode", false),
            ("body_too_large", false),
            ("auth", false),
            ("token_invalid", false),
            ("unauthorized", false),
            ("config", false),
        ] {
            let e = sample(kind);
            assert_eq!(e.reason(), kind);
            assert_eq!(e.is_transient(), transient, "{kind}");
        }
        assert!(matches!(
            sample("status"),
            Error::Status { status: 500, .. }
        ));
    }

    /// The index of `e`'s variant. Exhaustive on purpose: a new variant does not compile
    /// until it has an arm here (the next index, with [`VARIANTS`] raised) and a sample in
    /// the test below, which then checks its reason is listed.
    fn variant(e: &Error) -> usize {
        match e {
            Error::Connection { .. } => 0,
            Error::Timeout { .. } => 1,
            Error::Status { .. } => 2,
            Error::Tls { .. } => 3,
            Error::Decode { .. } => 4,
            Error::BodyTooLarge { .. } => 5,
            Error::Auth { .. } => 6,
            Error::TokenInvalid { .. } => 7,
            Error::Config(_) => 8,
        }
    }
    const VARIANTS: usize = 9;

    #[test]
    fn all_reasons_lists_the_reason_of_every_variant() {
        let samples: Vec<Error> = Error::ALL_REASONS.iter().map(|r| sample(r)).collect();
        let variants: BTreeSet<usize> = samples.iter().map(variant).collect();
        assert_eq!(
            variants,
            (0..VARIANTS).collect(),
            "a sample of every variant"
        );
        // Every variant's reason is listed, and every listed reason is one a variant has.
        let reasons: BTreeSet<&str> = samples.iter().map(Error::reason).collect();
        let listed: BTreeSet<&str> = Error::ALL_REASONS.into_iter().collect();
        assert_eq!(reasons, listed);
        assert_eq!(listed.len(), Error::ALL_REASONS.len(), "no reason twice");
        // A settings error of any variant is `config`, which is listed.
        let settings = SettingsError::UaaPublicKey { detail: "x".into() };
        assert_eq!(SettingsError::ALL_REASONS, [settings.reason()]);
        assert!(Error::ALL_REASONS.contains(&Error::Config(settings).reason()));
    }

    #[test]
    fn messages_say_where() {
        let e = sample("status");
        assert_eq!(
            e.to_string(),
            "https://10.0.0.6:25555/deployments/cf/vms answered HTTP 500: x"
        );
        let e = Error::Status {
            endpoint: "info",
            url: "https://d/info".into(),
            status: 502,
            detail: String::new(),
        };
        assert_eq!(e.to_string(), "https://d/info answered HTTP 502");
        assert!(sample("config").to_string().contains("/ca.pem"));
    }

    #[test]
    fn tls_cause_found_through_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert!(has_tls_cause(&Outer(io)));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!has_tls_cause(&Outer(plain)));
    }
}
