//! What the director answered to one request, and what each endpoint's answer means (§2.1,
//! §2.4, §2.5). Pure: [`super::http::send`] reads a response into an [`Answer`], and the
//! reader of the endpoint — [`info`], [`deployments`], [`vms`], [`events`] — turns it into a
//! value or an [`Error`] naming the URL and what was wrong. The tests feed the same readers
//! the answers captured from the real director (`testdata/director-responses/`).
//!
//! The `Content-Type` never decides anything: the director sends its JSON under
//! `text/html;charset=utf-8` on `/deployments` and `/vms` (their JSON errors too) and the
//! plain-text `400` of `/events` under `application/json`. It only appears in the message of
//! a body that is not JSON.

use serde::de::IgnoredAny;

use super::Refetched;
use super::auth::{Info, Mode};
use super::error::Error;
use super::events::{Event, decode_events};
use super::http::display_url;
use super::{decode_deployments, decode_vms};

/// How much of an error answer's text goes into the error message: enough for the
/// director's `description` or UAA's `error_description`, not enough to flood a log line.
const DETAIL_CHARS: usize = 200;

/// How much of a body that is not JSON is shown in a decode error.
const SHOWN_BODY_CHARS: usize = 60;

/// One HTTP answer, as far as its meaning depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    /// `Content-Type` as sent; shown in errors, never checked (see the module's comment).
    pub content_type: Option<String>,
    /// `Location`, for a redirect's message (redirects are never followed: they would carry
    /// the credentials somewhere the configuration never named).
    pub location: Option<String>,
    /// The whole body of a 2xx answer; of any other, its start (enough for the message).
    pub body: Vec<u8>,
}

impl Answer {
    /// The body of a 2xx answer; any other status is `Error::Status`, with what the
    /// director said about it.
    pub(crate) fn success(&self, endpoint: &'static str, url: &str) -> Result<&[u8], Error> {
        if (200..300).contains(&self.status) {
            Ok(&self.body)
        } else {
            Err(Error::Status {
                endpoint,
                url: url.to_owned(),
                status: self.status,
                detail: status_detail(self),
            })
        }
    }

    /// [`Answer::success`], keeping the body.
    pub(crate) fn into_success(self, endpoint: &'static str, url: &str) -> Result<Vec<u8>, Error> {
        self.success(endpoint, url)?;
        Ok(self.body)
    }
}

/// `GET /info`: how the director authenticates. Read without credentials; the director
/// answers the same with them (then `user` names the user, which is not read).
pub(crate) fn info(url: &str, answer: &Answer) -> Result<Mode, Error> {
    let body = answer.success("info", url)?;
    let info: Info =
        serde_json::from_slice(body).map_err(|e| decode_error("info", url, answer, &e))?;
    info.mode().map_err(|detail| Error::Decode {
        endpoint: "info",
        url: url.to_owned(),
        detail,
    })
}

/// `GET /deployments`: the deployment names, in the director's order.
pub(crate) fn deployments(url: &str, answer: &Answer) -> Result<Vec<String>, Error> {
    let body = answer.success("deployments", url)?;
    decode_deployments(body).map_err(|e| decode_error("deployments", url, answer, &e))
}

/// `GET /deployments/{name}/vms`: the VMs in the director's order, or [`Refetched::Gone`]
/// for a `404` (the deployment does not exist, §2.4). A redirect (the director answers
/// `?format=full` with one to a task) is an error like any other status.
pub(crate) fn vms(url: &str, answer: &Answer) -> Result<Refetched, Error> {
    if answer.status == 404 {
        return Ok(Refetched::Gone);
    }
    let body = answer.success("vms", url)?;
    decode_vms(body)
        .map(Refetched::Vms)
        .map_err(|e| decode_error("vms", url, answer, &e))
}

/// `GET /events`: one page of the event log, as sent (newest first).
pub(crate) fn events(url: &str, answer: &Answer) -> Result<Vec<Event>, Error> {
    let body = answer.success("events", url)?;
    decode_events(body).map_err(|e| decode_error("events", url, answer, &e))
}

/// A body the endpoint's decoder refused. When it is not JSON at all (an HTML page from a
/// proxy, a truncated body), the message says what it is instead.
fn decode_error(
    endpoint: &'static str,
    url: &str,
    answer: &Answer,
    error: &dyn std::fmt::Display,
) -> Error {
    let mut detail = error.to_string();
    if serde_json::from_slice::<IgnoredAny>(&answer.body).is_err() {
        let kind = answer.content_type.as_deref().map_or_else(
            || "no Content-Type".to_owned(),
            |t| format!("Content-Type {t}"),
        );
        let shown = printable(&answer.body, SHOWN_BODY_CHARS);
        detail = if shown.is_empty() {
            format!("{detail} (the body is empty; {kind})")
        } else {
            format!(
                "{detail} (the body is not JSON: {kind}, {} bytes, starting {shown:?})",
                answer.body.len()
            )
        };
    }
    Error::Decode {
        endpoint,
        url: url.to_owned(),
        detail,
    }
}

/// The director's own error body (`{"code":70000,"description":"Deployment 'x' doesn't
/// exist"}`).
#[derive(serde::Deserialize)]
struct DirectorError {
    code: i64,
    description: String,
}

/// What a non-2xx answer says: the director's `description` and code, where a redirect
/// leads, or the start of the body as text (the director's `401` and `400` are plain text).
fn status_detail(answer: &Answer) -> String {
    let said = match serde_json::from_slice::<DirectorError>(&answer.body) {
        Ok(error) => format!(
            "{} (director error {})",
            printable(error.description.as_bytes(), DETAIL_CHARS),
            error.code
        ),
        Err(_) => printable(&answer.body, DETAIL_CHARS),
    };
    if !(300..400).contains(&answer.status) {
        return said;
    }
    let to = answer
        .location
        .as_deref()
        .map(|location| format!(" to {}", shown_location(location)))
        .unwrap_or_default();
    let redirect = format!("a redirect{to}, which is not followed");
    if said.is_empty() {
        redirect
    } else {
        format!("{redirect}: {said}")
    }
}

/// A `Location` as it may appear in a message: without user info or query.
fn shown_location(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(url) => printable(display_url(&url).as_bytes(), DETAIL_CHARS),
        Err(_) => {
            let path = location.split(['?', '#']).next().unwrap_or_default();
            printable(path.as_bytes(), DETAIL_CHARS)
        }
    }
}

/// At most `chars` characters of `bytes` as text: control characters become spaces and runs
/// of white space one space, so a body cannot break a log line.
fn printable(bytes: &[u8], chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(chars)
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Answer {
        Answer {
            status,
            content_type: content_type.map(str::to_owned),
            location: None,
            body: body.to_vec(),
        }
    }

    const URL: &str = "https://d/deployments/cf/vms";

    #[test]
    fn the_directors_json_error_is_shown_as_its_description_and_code() {
        let err = answer(
            500,
            Some("text/html;charset=utf-8"),
            br#"{"code":100,"description":"An error has occurred"}"#,
        )
        .success("vms", URL)
        .expect_err("500 accepted");
        assert_eq!(
            err.to_string(),
            "https://d/deployments/cf/vms answered HTTP 500: An error has occurred (director error 100)"
        );
    }

    #[test]
    fn text_bodies_are_shown_cleaned_and_shortened() {
        let err = answer(400, None, b"line one\r\n\tline two\x07 ")
            .success("events", "https://d/events")
            .expect_err("400 accepted");
        assert_eq!(
            err.to_string(),
            "https://d/events answered HTTP 400: line one line two"
        );
        let long = "x".repeat(5000);
        let err = answer(502, None, long.as_bytes())
            .success("events", "https://d/events")
            .expect_err("502 accepted");
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn a_redirect_says_where_it_leads_without_query_or_credentials() {
        let mut redirect = answer(302, None, b"");
        redirect.location = Some("https://admin:hunter2@d/tasks/7?token=hunter2".into());
        let err = redirect.success("vms", URL).expect_err("302 accepted");
        assert_eq!(
            err.to_string(),
            "https://d/deployments/cf/vms answered HTTP 302: a redirect to https://d/tasks/7, which is not followed"
        );
        redirect.location = Some("/tasks/7?x=hunter2".into());
        let err = redirect.success("vms", URL).expect_err("302 accepted");
        assert!(
            err.to_string()
                .ends_with("to /tasks/7, which is not followed")
        );
        redirect.location = None;
        let err = redirect.success("vms", URL).expect_err("302 accepted");
        assert!(
            err.to_string()
                .ends_with("HTTP 302: a redirect, which is not followed")
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_described() {
        let err = deployments(
            "https://d/deployments",
            &answer(200, Some("text/html"), b"<html><body>Login</body></html>"),
        )
        .expect_err("HTML accepted");
        let shown = err.to_string();
        assert!(
            shown.starts_with("unexpected response from https://d/deployments: expected value"),
            "{shown}"
        );
        assert!(
            shown.ends_with(
                r#"(the body is not JSON: Content-Type text/html, 31 bytes, starting "<html><body>Login</body></html>")"#
            ),
            "{shown}"
        );
        let err = events("https://d/events", &answer(200, None, b"")).expect_err("empty");
        assert!(
            err.to_string()
                .ends_with("(the body is empty; no Content-Type)"),
            "{err}"
        );
        // JSON of the wrong shape: the decoder's own words are enough.
        let err = vms(URL, &answer(200, None, br#"{"vms":[]}"#)).expect_err("object");
        assert!(!err.to_string().contains("not JSON"), "{err}");
        assert_eq!(err.reason(), "decode");
    }

    #[test]
    fn only_a_vms_404_means_gone() {
        let missing = answer(404, None, b"Not Found");
        assert_eq!(vms(URL, &missing).expect("gone"), Refetched::Gone);
        for result in [
            deployments("https://d/deployments", &missing).map(|_| ()),
            events("https://d/events", &missing).map(|_| ()),
            info("https://d/info", &missing).map(|_| ()),
        ] {
            let err = result.expect_err("404 accepted");
            assert!(matches!(err, Error::Status { status: 404, .. }), "{err}");
        }
    }
}
