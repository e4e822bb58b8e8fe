//! One request to the director or UAA: send, read the body under a size cap, classify the
//! outcome, and record it in metrics and a tracing span.

use tokio::time::Instant;
use tracing::Instrument;

use super::error::{Error, chain};

/// How much of an error response's body goes into the error message: enough for UAA's
/// `error_description` or the director's `description`, not enough to flood a log line.
const ERROR_DETAIL_CHARS: usize = 200;

/// A request about to be sent. `url` is the display form used in errors and spans.
pub(crate) struct Request<'a> {
    pub endpoint: &'static str,
    pub url: String,
    pub builder: reqwest::RequestBuilder,
    pub max_body_bytes: usize,
    pub metrics: &'a monitoring::Metrics,
}

/// A URL as it may appear in a message: no user info, no query, no fragment.
pub(crate) fn display_url(url: &url::Url) -> String {
    // The usual case, once per request: nothing to remove (each setter below re-parses).
    if url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
    {
        return url.as_str().to_owned();
    }
    let mut shown = url.clone();
    // Both setters only fail for URLs that cannot have user info, which then have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.into()
}

/// Sends the request and returns the body of a 2xx response. Any other status is an
/// `Error::Status`; the caller decides whether one of them (a 404) means something else.
pub(crate) async fn send(req: Request<'_>) -> Result<Vec<u8>, Error> {
    let Request {
        endpoint,
        url,
        builder,
        max_body_bytes,
        metrics,
    } = req;
    let span = tracing::info_span!(
        "director.request",
        endpoint,
        url = %url,
        status = tracing::field::Empty,
        elapsed_ms = tracing::field::Empty,
    );
    async move {
        let start = Instant::now();
        let result = exchange(endpoint, &url, builder, max_body_bytes).await;
        let elapsed = start.elapsed();
        let label = match &result {
            Ok((status, _)) => status.to_string(),
            Err(Error::Status { status, .. }) => status.to_string(),
            Err(e) => e.reason().to_string(),
        };
        metrics.director_request(endpoint, &label, elapsed);
        let span = tracing::Span::current();
        span.record("status", label.as_str());
        span.record("elapsed_ms", elapsed.as_millis() as u64);
        match &result {
            Ok(_) => tracing::debug!(status = %label, "director request done"),
            Err(e) => tracing::debug!(error = %e, "director request failed"),
        }
        result.map(|(_, body)| body)
    }
    .instrument(span)
    .await
}

async fn exchange(
    endpoint: &'static str,
    url: &str,
    builder: reqwest::RequestBuilder,
    max_body_bytes: usize,
) -> Result<(u16, Vec<u8>), Error> {
    let transport = |e| Error::from_transport(endpoint, url.to_string(), e);
    let mut response = builder.send().await.map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        let detail = error_detail(&mut response).await;
        return Err(Error::Status {
            endpoint,
            url: url.to_string(),
            status: status.as_u16(),
            detail,
        });
    }
    let too_large = || Error::BodyTooLarge {
        endpoint,
        url: url.to_string(),
        limit: max_body_bytes,
    };
    let announced = response.content_length().unwrap_or(0);
    if announced > max_body_bytes as u64 {
        return Err(too_large());
    }
    // Content-Length is only a hint (chunked bodies have none), so the cap is enforced on
    // what actually arrives.
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > max_body_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status.as_u16(), body))
}

/// The start of an error response's body, printable characters only. Best effort: a body
/// that cannot be read leaves the detail empty rather than hiding the status.
async fn error_detail(response: &mut reqwest::Response) -> String {
    let mut raw = Vec::new();
    while raw.len() < ERROR_DETAIL_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %chain(&e), "cannot read error response body");
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_DETAIL_CHARS)
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_drops_credentials_and_query() {
        let url =
            url::Url::parse("https://admin:hunter2@10.0.0.6:25555/deployments?exclude_lock=true#x")
                .expect("url");
        let shown = display_url(&url);
        assert_eq!(shown, "https://10.0.0.6:25555/deployments");
        for plain in [
            "https://10.0.0.6:25555/deployments",
            "https://d/",
            "http://[::1]:8/x%20y",
        ] {
            let url = url::Url::parse(plain).expect("url");
            assert_eq!(display_url(&url), url.as_str());
        }
        let only_user = url::Url::parse("https://admin@d/x").expect("url");
        assert_eq!(display_url(&only_user), "https://d/x");
    }
}
