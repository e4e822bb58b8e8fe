//! One request to the director or UAA: send, read the body under a size cap, classify
//! transport failures, and record the outcome in metrics and a tracing span. What the status
//! and body mean is the endpoint's reader's business (`answer`).

use tokio::time::Instant;
use tracing::Instrument;

use super::answer::Answer;
use super::error::{Error, chain};

/// How much of a non-2xx answer's body is read: its start is all its message shows.
const ERROR_BODY_BYTES: usize = 800;

/// A request about to be sent. `url` is the display form used in errors and spans.
pub(crate) struct Request<'a> {
    pub endpoint: &'static str,
    pub url: String,
    pub builder: reqwest::RequestBuilder,
    pub max_body_bytes: usize,
    pub metrics: &'a metrics::Metrics,
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

/// Sends the request and returns the answer, whatever its status. `Err` is a failure to
/// get one: connection, timeout, TLS, or a 2xx body over `max_body_bytes`.
pub(crate) async fn send(req: Request<'_>) -> Result<Answer, Error> {
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
            Ok(answer) => answer.status.to_string(),
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
        result
    }
    .instrument(span)
    .await
}

async fn exchange(
    endpoint: &'static str,
    url: &str,
    builder: reqwest::RequestBuilder,
    max_body_bytes: usize,
) -> Result<Answer, Error> {
    let transport = |e| Error::from_transport(endpoint, url.to_string(), e);
    let mut response = builder.send().await.map_err(transport)?;
    let status = response.status();
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let location = header(reqwest::header::LOCATION);
    let body = if status.is_success() {
        success_body(&mut response, endpoint, url, max_body_bytes).await?
    } else {
        error_body(&mut response).await
    };
    Ok(Answer {
        status: status.as_u16(),
        content_type,
        location,
        body,
    })
}

/// The whole body, refused once it exceeds `max_body_bytes`.
async fn success_body(
    response: &mut reqwest::Response,
    endpoint: &'static str,
    url: &str,
    max_body_bytes: usize,
) -> Result<Vec<u8>, Error> {
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
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::from_transport(endpoint, url.to_string(), e))?
    {
        if body.len() + chunk.len() > max_body_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error answer's body. Best effort: a body that cannot be read is left
/// short rather than hiding the status.
async fn error_body(response: &mut reqwest::Response) -> Vec<u8> {
    let mut raw = Vec::new();
    while raw.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => raw.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %chain(&e), "cannot read error response body");
                break;
            }
        }
    }
    raw.truncate(ERROR_BODY_BYTES);
    raw
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
