//! HTTP/1.1 requests and responses as `list-web` reads and writes them, with
//! no I/O: the request head (parsed by httparse, hyper's parser, which the
//! MTA-STS fetch already uses for responses, so no second HTTP parser is
//! written here), its limits and body framing, the request target, form
//! bodies (`application/x-www-form-urlencoded` and `multipart/form-data`,
//! both of which RFC 8058 one-click POSTs may use), and the response as an
//! HTTP/1.1 message or as CGI output (RFC 3875 §6).
//!
//! A request in HTTP/1.1 without a Host field, or any with two, is
//! refused with 400 (RFC 9112 §3.2).
//!
//! Bounded: a head past [`MAX_HEAD`] bytes or with more than
//! [`MAX_HEADERS`] fields, and a body past the caller's limit, are refused
//! before they are read. A body must come with Content-Length: a chunked
//! one is refused with 411 (RFC 9112 §6.3 lets a server ask for a length),
//! which every browser and one-click sender gives for a form.

use crate::proto::mime;

/// The most bytes a request head may have.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header fields a request may have.
pub const MAX_HEADERS: usize = 64;

/// A request this codec refuses, with the status that says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("not an HTTP/1.1 request: {0}")]
    Malformed(String),
    #[error(
        "the request head is longer than {MAX_HEAD} bytes or has more than {MAX_HEADERS} fields"
    )]
    HeadTooLarge,
    #[error("the body is longer than the {0} bytes taken")]
    BodyTooLarge(usize),
    #[error("a body needs a Content-Length (send it unchunked)")]
    LengthRequired,
    #[error("the request target {0:?} is not a path (it must start with /)")]
    BadTarget(String),
    #[error("the body is not a form: {0}")]
    BadForm(String),
    #[error("the body is {0:?}; send application/x-www-form-urlencoded or multipart/form-data")]
    NotAForm(String),
}

impl HttpError {
    /// The response status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadTarget(_) | HttpError::BadForm(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::LengthRequired => 411,
            HttpError::NotAForm(_) => 415,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (`/path?query`).
    pub target: String,
    /// Field names as sent, values trimmed (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// Where the body starts.
    pub head_len: usize,
    /// The body's length (0 without Content-Length).
    pub content_length: usize,
}

impl RequestHead {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the request head at the start of `data`: `Ok(None)` while more
/// bytes are needed. A body longer than `max_body` is refused here, before
/// it is read.
pub fn parse_head(data: &[u8], max_body: usize) -> Result<Option<RequestHead>, HttpError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let head_len = match request.parse(data) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) if data.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(HttpError::Malformed("no method or target".into()));
    };
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let head = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        head_len,
        content_length: 0,
    };
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::LengthRequired);
    }
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let content_length = match lengths.as_slice() {
        [] => 0,
        // Two lengths are how requests are smuggled past a proxy.
        [value] if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            match value.parse::<usize>() {
                Ok(n) if n <= max_body => n,
                _ => return Err(HttpError::BodyTooLarge(max_body)),
            }
        }
        _ => {
            return Err(HttpError::Malformed(format!(
                "bad Content-Length {:?}",
                lengths.join(", ")
            )));
        }
    };
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request
    // with two, is answered 400 (two are another way past a proxy).
    let hosts = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (hosts == 0 && request.version == Some(1)) {
        return Err(HttpError::Malformed(format!(
            "{hosts} Host fields; an HTTP/1.1 request has exactly one (RFC 9112 §3.2)"
        )));
    }
    Ok(Some(RequestHead {
        content_length,
        ..head
    }))
}

/// The path (percent-decoded, as CGI's PATH_INFO is) and the query
/// (as sent) of a request target in origin form.
pub fn split_target(target: &str) -> Result<(String, String), HttpError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(HttpError::BadTarget(target.to_string()));
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| HttpError::BadTarget(target.to_string()))?;
    Ok((decoded.into_owned(), query.to_string()))
}

/// The fields of a form: a query string, or a body sent as
/// `application/x-www-form-urlencoded` (the default when `content_type`
/// is `None`) or `multipart/form-data`.
pub fn form_fields(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, HttpError> {
    let ctype = content_type.unwrap_or("application/x-www-form-urlencoded");
    let essence = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()),
        "multipart/form-data" => multipart_fields(ctype, body),
        _ => Err(HttpError::NotAForm(ctype.to_string())),
    }
}

/// `multipart/form-data` (RFC 7578) through the tree's one MIME parser
/// (`proto::mime`, bounded and linear): the body is read as an entity of
/// that type, and each part named by its Content-Disposition is a field.
fn multipart_fields(ctype: &str, body: &[u8]) -> Result<Vec<(String, String)>, HttpError> {
    if ctype.contains(['\r', '\n']) {
        return Err(HttpError::BadForm("a line break in Content-Type".into()));
    }
    let mut entity = format!("Content-Type: {ctype}\r\n\r\n").into_bytes();
    let body_at = entity.len();
    entity.extend_from_slice(body);
    let root = mime::parse(&entity);
    if !root
        .params
        .iter()
        .any(|(k, v)| k == "boundary" && !v.is_empty())
    {
        return Err(HttpError::BadForm(
            "multipart/form-data with no boundary".into(),
        ));
    }
    if root.children.is_empty() && entity.len() > body_at {
        return Err(HttpError::BadForm("no part between the boundaries".into()));
    }
    let mut out = Vec::new();
    for part in &root.children {
        let Some((kind, params)) = &part.disposition else {
            continue;
        };
        if !kind.eq_ignore_ascii_case("form-data") {
            continue;
        }
        let Some((_, name)) = params.iter().find(|(k, _)| k == "name") else {
            continue;
        };
        let value = entity.get(part.body..part.end).unwrap_or_default();
        out.push((name.clone(), String::from_utf8_lossy(value).into_owned()));
    }
    Ok(out)
}

/// The reason phrase of the statuses list-web sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A response: status, extra header fields, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An HTML page that no cache or crawler should keep (its URL may
    /// carry a member's token).
    pub fn html(status: u16, body: String) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "text/html; charset=utf-8".into()),
                ("Cache-Control", "no-store".into()),
                ("X-Robots-Tag", "noindex".into()),
                ("Referrer-Policy", "no-referrer".into()),
                (
                    "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'self'".into(),
                ),
            ],
            body: body.into_bytes(),
        }
    }

    fn fields(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.headers {
            // Values are ours, but a line break would split the head.
            let value = value.replace(['\r', '\n'], " ");
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out
    }

    /// The response as HTTP/1.1, closing the connection; `head_only` for
    /// HEAD (the length of the body that GET would send, no body).
    pub fn to_http(&self, head_only: bool) -> Vec<u8> {
        let status = format!("HTTP/1.1 {} {}", self.status, reason(self.status));
        self.encode(&status, "Connection: close\r\n", head_only)
    }

    /// The response as CGI output: the web server writes the status line.
    pub fn to_cgi(&self, head_only: bool) -> Vec<u8> {
        let status = format!("Status: {} {}", self.status, reason(self.status));
        self.encode(&status, "", head_only)
    }

    fn encode(&self, status: &str, last_fields: &str, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "{status}\r\n{}Content-Length: {}\r\n{last_fields}\r\n",
            self.fields(),
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: usize = 1 << 20;

    #[test]
    fn heads_limits_and_framing() {
        let head = parse_head(
            b"POST /u/l%40x?a=b HTTP/1.1\r\nHost: w.test\r\nContent-Length: 5\r\n\r\nabcde",
            BIG,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("POST", "/u/l%40x?a=b")
        );
        assert_eq!((head.content_length, head.head_len), (5, 63));
        assert_eq!(head.header("host"), Some("w.test"));
        assert_eq!(
            split_target(&head.target).unwrap(),
            ("/u/l@x".into(), "a=b".into())
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", BIG), Ok(None));
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(parse_head(&long, BIG), Err(HttpError::HeadTooLarge));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked, BIG).unwrap_err().status(), 411);
        let big = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(parse_head(big, 10).unwrap_err().status(), 413);
        let two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_head(two, BIG).unwrap_err().status(), 400);
        let sign = b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n";
        assert_eq!(parse_head(sign, BIG).unwrap_err().status(), 400);
        assert_eq!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n", BIG)
                .unwrap_err()
                .status(),
            400
        );
        for hosts in [
            b"GET / HTTP/1.1\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nhost: a\r\nHOST: a\r\n\r\n",
        ] {
            let e = parse_head(hosts, BIG).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
        }
        assert!(
            parse_head(b"GET / HTTP/1.0\r\n\r\n", BIG)
                .unwrap()
                .is_some()
        );
        assert_eq!(split_target("http://x/").unwrap_err().status(), 400);
        assert!(split_target("/%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn forms_of_both_kinds() {
        assert_eq!(
            form_fields(None, b"List-Unsubscribe=One-Click").unwrap(),
            [("List-Unsubscribe".to_string(), "One-Click".to_string())]
        );
        assert_eq!(
            form_fields(
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                b"address=b%40x.test&action=subscribe+now"
            )
            .unwrap()[1],
            ("action".to_string(), "subscribe now".to_string())
        );
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n\
                     One-Click\r\n--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\
                     two\r\nlines\r\n--XyZ--\r\n";
        assert_eq!(
            form_fields(Some("multipart/form-data; boundary=XyZ"), body).unwrap(),
            [
                ("List-Unsubscribe".to_string(), "One-Click".to_string()),
                ("x".to_string(), "two\r\nlines".to_string())
            ]
        );
        assert_eq!(
            form_fields(Some("multipart/form-data"), body)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            form_fields(Some("text/plain"), b"").unwrap_err().status(),
            415
        );
    }

    #[test]
    fn responses_for_http_and_cgi() {
        let page = Response::html(403, "<p>no</p>".into());
        let http = String::from_utf8(page.to_http(false)).unwrap();
        assert!(http.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{http}");
        assert!(http.contains("Content-Length: 9\r\nConnection: close\r\n\r\n<p>no</p>"));
        let cgi = String::from_utf8(page.to_cgi(true)).unwrap();
        assert!(cgi.starts_with("Status: 403 Forbidden\r\n"), "{cgi}");
        assert!(cgi.ends_with("Content-Length: 9\r\n\r\n"), "{cgi}");
    }

    proptest! {
        #[test]
        fn parse_head_never_panics_and_keeps_its_bounds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            match parse_head(&data, 100) {
                Ok(Some(head)) => {
                    prop_assert!(head.head_len <= data.len().min(MAX_HEAD));
                    prop_assert!(head.content_length <= 100);
                }
                Ok(None) => prop_assert!(data.len() <= MAX_HEAD),
                Err(e) => prop_assert!(e.status() >= 400),
            }
        }

        #[test]
        fn a_request_round_trips(
            method in "(GET|POST|HEAD)",
            segments in proptest::collection::vec("\\PC{1,12}", 1..4),
            query in "[a-z0-9=&]{0,20}",
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let path: String = segments.iter().map(|s| format!("/{s}")).collect();
            let encoded: String = segments
                .iter()
                .map(|s| format!("/{}", percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)))
                .collect();
            let mut request = format!(
                "{method} {encoded}?{query} HTTP/1.1\r\nHost: w.test\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let head = parse_head(&request, 1000).unwrap().unwrap();
            prop_assert_eq!(&head.method, &method);
            prop_assert_eq!(&request[head.head_len..], &body[..]);
            prop_assert_eq!(head.content_length, body.len());
            prop_assert_eq!(split_target(&head.target).unwrap(), (path, query));
            // Every shorter prefix of the head asks for more.
            for cut in [0, head.head_len / 2, head.head_len - 1] {
                prop_assert_eq!(parse_head(&request[..cut], 1000), Ok(None));
            }
        }

        #[test]
        fn form_fields_round_trip(fields in proptest::collection::vec(("\\PC{1,10}", "\\PC{0,20}"), 0..5)) {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields.iter())
                .finish();
            prop_assert_eq!(form_fields(None, body.as_bytes()).unwrap(), fields.clone());
            let mut multipart = String::new();
            for (name, value) in &fields {
                let name = name.replace(['"', '\\', '\r', '\n'], "_");
                multipart.push_str(&format!(
                    "--b0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                ));
            }
            multipart.push_str("--b0undary--\r\n");
            let parsed = form_fields(Some("multipart/form-data; boundary=b0undary"), multipart.as_bytes());
            if fields.is_empty() {
                prop_assert!(parsed.is_err(), "no part at all");
            } else {
                let parsed = parsed.unwrap();
                let values: Vec<&String> = parsed.iter().map(|(_, v)| v).collect();
                let sent: Vec<&String> = fields.iter().map(|(_, v)| v).collect();
                prop_assert_eq!(values, sent);
            }
        }
    }
}
