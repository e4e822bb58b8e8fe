//! Responses captured from the real BOSH director, and a reader for the files that hold them.
//!
//! Each file (the repository keeps them in `src/director/testdata/director-responses/`, with a
//! README saying how they were made) is one request and its answer, byte for byte:
//!
//! ```text
//! ### curl -u admin:admin http://DIRECTOR/deployments/cf/vms    <- the request, LF
//! HTTP/1.1 200 OK                                               <- status line, CRLF
//! Content-Type: text/html;charset=utf-8                         <- headers, CRLF
//! Content-Length: 579
//!                                                               <- empty line, CRLF
//! [{"agent_id":…}]                                              <- Content-Length bytes
//!                                                               <- one LF
//! ```
//!
//! `DIRECTOR` stands for the director's address. The client's decoding tests feed these
//! answers to the client's readers; the simulator's tests compare its answers with them.

use std::path::Path;

/// One captured request and the director's answer to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The file name without `.txt`, e.g. `vms_cf`.
    pub name: String,
    /// The path and query as requested (still percent-encoded), e.g. `/events?before_id=5`.
    pub path_and_query: String,
    /// The basic-auth user and password of the request (`-u user:password`), if any.
    pub credentials: Option<(String, String)>,
    /// The status code.
    pub status: u16,
    /// The headers, in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, exactly `Content-Length` bytes.
    pub body: Vec<u8>,
}

impl Captured {
    /// Reads one file's bytes. `name` is only used to name the file in errors and in
    /// [`Captured::name`].
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Captured, String> {
        let fail = |what: String| format!("captured response {name}: {what}");
        let request_end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| fail("no request line".into()))?;
        let request = std::str::from_utf8(&bytes[..request_end])
            .map_err(|e| fail(format!("request line is not UTF-8: {e}")))?;
        let (path_and_query, credentials) = parse_request(request).map_err(fail)?;
        let rest = &bytes[request_end + 1..];
        let head_end = find(rest, b"\r\n\r\n")
            .ok_or_else(|| fail("no empty line (CRLF CRLF) after the headers".into()))?;
        let head = std::str::from_utf8(&rest[..head_end])
            .map_err(|e| fail(format!("headers are not UTF-8: {e}")))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| fail(format!("status line {status_line:?} is not HTTP/1.1 NNN")))?;
        let headers = lines
            .map(|line| {
                line.split_once(": ")
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| fail(format!("header line {line:?} has no \": \"")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .ok_or_else(|| fail("no Content-Length".into()))?
            .1
            .parse()
            .map_err(|e| fail(format!("Content-Length: {e}")))?;
        let after_head = &rest[head_end + 4..];
        if after_head.len() != length + 1 || after_head[length] != b'\n' {
            return Err(fail(format!(
                "{} bytes follow the headers; expected the {length}-byte body and one LF",
                after_head.len()
            )));
        }
        Ok(Captured {
            name: name.to_owned(),
            path_and_query,
            credentials,
            status,
            headers,
            body: after_head[..length].to_vec(),
        })
    }

    /// Every `*.txt` file of `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Captured>, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let mut all = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
                .path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".txt"))
            else {
                continue;
            };
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            all.push(Captured::parse(name, &bytes)?);
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The first header of this name (compared ignoring ASCII case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(path, _)| path)
    }

    /// The request's URL with `DIRECTOR` replaced by `base` (e.g. `http://DIRECTOR`).
    pub fn url_on(&self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.path_and_query)
    }
}

/// `### curl [-u user:password] http://DIRECTOR/path?query`
fn parse_request(line: &str) -> Result<(String, Option<(String, String)>), String> {
    let words: Vec<&str> = line.split(' ').collect();
    let (credentials, url) = match words.as_slice() {
        ["###", "curl", url] => (None, *url),
        ["###", "curl", "-u", user_password, url] => {
            let (user, password) = user_password
                .split_once(':')
                .ok_or_else(|| format!("-u {user_password:?} is not user:password"))?;
            (Some((user.to_owned(), password.to_owned())), *url)
        }
        _ => {
            return Err(format!(
                "request line {line:?} is not `### curl [-u u:p] URL`"
            ));
        }
    };
    let path_and_query = url
        .strip_prefix("http://DIRECTOR")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| format!("request URL {url:?} does not start with http://DIRECTOR/"))?;
    Ok((path_and_query.to_owned(), credentials))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &[u8] = b"### curl -u admin:pw http://DIRECTOR/events?after_time=abc\n\
        HTTP/1.1 400 Bad Request\r\n\
        Content-Type: application/json\r\n\
        Content-Length: 31\r\n\
        \r\n\
        Invalid after parameter: 'abc' \n";

    #[test]
    fn a_file_reads_as_request_status_headers_and_exact_body() {
        let c = Captured::parse("x", FILE).expect("parse");
        assert_eq!(c.path_and_query, "/events?after_time=abc");
        assert_eq!(c.path(), "/events");
        assert_eq!(c.credentials, Some(("admin".into(), "pw".into())));
        assert_eq!(c.status, 400);
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert_eq!(c.body, b"Invalid after parameter: 'abc' ");
        assert_eq!(
            c.url_on("http://127.0.0.1:9/"),
            "http://127.0.0.1:9/events?after_time=abc"
        );
    }

    #[test]
    fn a_file_that_is_not_exactly_one_answer_is_refused_with_its_name() {
        let lf_only = String::from_utf8_lossy(FILE).replace("\r\n", "\n");
        let short = &FILE[..FILE.len() - 3];
        let no_request = &FILE[FILE.iter().position(|&b| b == b'\n').unwrap() + 1..];
        for bad in [lf_only.as_bytes(), short, no_request, b""] {
            let err = Captured::parse("bad_one", bad).expect_err("accepted");
            assert!(err.starts_with("captured response bad_one: "), "{err}");
        }
    }
}
