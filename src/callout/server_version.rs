//! Whether the nats-server at hand can call out at all (§12.3): `auth_callout` came with
//! nats-server 2.10. An older server refuses to start with the callout-mode auth file
//! (2.9.10: `unknown field "auth_callout"`), and one already running from another file never
//! asks; so callout mode reads the server's version from `/varz` at start-up and refuses
//! below 2.10, saying so.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The first nats-server release with `auth_callout`.
pub const CALLOUT_SINCE: Version = Version {
    major: 2,
    minor: 10,
    patch: 0,
};

/// A nats-server release number, as `/varz` `version` or `--version` give it (`2.14.5`,
/// `v2.9.10`, `2.11.0-RC.1`: a pre-release suffix is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `None` when `text` is not `MAJOR.MINOR[.PATCH]` (with an optional leading `v` and a
    /// `-…` or `+…` suffix).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let number = |part: Option<&str>| -> Option<u32> {
            let part = part?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        let patch = match parts.next() {
            None => 0,
            part => number(part)?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    /// Whether this release has `auth_callout` (2.10 or later).
    pub fn has_auth_callout(self) -> bool {
        self >= CALLOUT_SINCE
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why callout mode cannot use the server.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// Too old: the one error an operator must act on by upgrading.
    #[error("nats-server {version} has no auth callout (2.10 or later needed)")]
    NoCallout { version: String },
    #[error("cannot read nats-server's version from {url}: {message}")]
    Unreadable { url: String, message: String },
}

impl VersionError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VersionError::NoCallout { .. } => "no_callout",
            VersionError::Unreadable { .. } => "monitoring",
        }
    }
}

/// Checks `version` as `/varz` gives it: its release when it has `auth_callout`.
pub fn require_callout(version: &str) -> Result<Version, VersionError> {
    match Version::parse(version) {
        Some(v) if v.has_auth_callout() => Ok(v),
        Some(_) => Err(VersionError::NoCallout {
            version: version.trim().trim_start_matches('v').to_owned(),
        }),
        None => Err(VersionError::Unreadable {
            url: "/varz".to_owned(),
            message: format!("{version:?} is not a version number"),
        }),
    }
}

#[derive(Deserialize)]
struct Varz {
    version: String,
}

/// Reads `/varz` `version` from nats-server's monitoring endpoint (`nats.monitoring_url`, e.g.
/// `http://127.0.0.1:8222`) and refuses a server without `auth_callout`: what callout mode
/// checks at start-up.
pub async fn check(monitoring_url: &url::Url) -> Result<Version, VersionError> {
    crate::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a reqwest client with only timeouts set always builds");
    let varz = monitoring_url
        .join("varz")
        .map_err(|e| VersionError::Unreadable {
            url: monitoring_url.to_string(),
            message: e.to_string(),
        })?;
    let unreadable = |message: String| VersionError::Unreadable {
        url: varz.to_string(),
        message,
    };
    let response = http
        .get(varz.clone())
        .send()
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(unreadable(format!("HTTP status {}", response.status())));
    }
    let body: Varz = response
        .json()
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    require_callout(&body.version).map_err(|e| match e {
        VersionError::Unreadable { message, .. } => unreadable(message),
        too_old => too_old,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_nats_server_prints() {
        let v = |major, minor, patch| Version {
            major,
            minor,
            patch,
        };
        assert_eq!(Version::parse("2.14.5"), Some(v(2, 14, 5)));
        assert_eq!(Version::parse("v2.9.10"), Some(v(2, 9, 10)));
        assert_eq!(Version::parse(" 2.15.1\n"), Some(v(2, 15, 1)));
        assert_eq!(Version::parse("2.11.0-RC.1"), Some(v(2, 11, 0)));
        assert_eq!(Version::parse("2.10.0-beta.5+abc"), Some(v(2, 10, 0)));
        assert_eq!(Version::parse("2.10"), Some(v(2, 10, 0)));
        for bad in [
            "", "v", "2", "2.x.1", "2..1", "2.10.1.4", "-2.10.0", "two.ten",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn compares_numbers_not_text() {
        let has = |s: &str| Version::parse(s).unwrap().has_auth_callout();
        // As text, "2.9.10" > "2.10.0" and "2.14.5" < "2.9": numbers decide.
        assert!(!has("2.9.10"));
        assert!(!has("2.9.99"));
        assert!(!has("1.99.0"));
        assert!(has("2.10.0"));
        assert!(has("2.10.0-RC.1"));
        assert!(has("2.14.5"));
        assert!(has("2.15.1"));
        assert!(has("3.0.0"));
        assert!(Version::parse("2.14.5") > Version::parse("2.9.10"));
    }

    #[test]
    fn refuses_a_server_without_callout_saying_which() {
        let e = require_callout("2.9.10").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nats-server 2.9.10 has no auth callout (2.10 or later needed)"
        );
        assert_eq!(e.reason(), "no_callout");
        assert_eq!(
            require_callout("2.14.5").unwrap(),
            Version::parse("2.14.5").unwrap()
        );
        assert!(matches!(
            require_callout("unknown"),
            Err(VersionError::Unreadable { .. })
        ));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unreadable_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: url::Url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let e = check(&url).await.unwrap_err();
        assert_eq!(e.reason(), "monitoring");
        assert!(e.to_string().contains("/varz"), "{e}");
    }
}
