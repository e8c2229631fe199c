//! Reading the one request: from CGI's environment and stdin, or as
//! HTTP/1.1 from the connection on stdin, bounded in size and time.

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postroom::proto::http::{self, HttpError};

use crate::Request;

/// Why there is no request to answer.
pub enum Failure {
    /// A request the codec refuses: answered with its status.
    Http(HttpError),
    /// Not whole within the time allowed (`--timeout`).
    TimedOut,
    /// The client closed the connection before the request was whole.
    Closed,
    Io(io::Error),
}

impl From<HttpError> for Failure {
    fn from(e: HttpError) -> Failure {
        Failure::Http(e)
    }
}

/// The request a web server hands a CGI program (RFC 3875 §4.1): the
/// method, PATH_INFO and CONTENT_TYPE from the environment, and
/// CONTENT_LENGTH bytes of body on stdin.
pub fn cgi(stdin: impl Read, max_body: usize) -> Result<Request, Failure> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let length = match var("CONTENT_LENGTH") {
        None => 0,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n <= max_body => n,
            Ok(_) => return Err(HttpError::BodyTooLarge(max_body).into()),
            Err(_) => {
                let e = HttpError::Malformed(format!("CONTENT_LENGTH {text:?}"));
                return Err(e.into());
            }
        },
    };
    let mut body = Vec::with_capacity(length);
    stdin
        .take(length as u64)
        .read_to_end(&mut body)
        .map_err(Failure::Io)?;
    if body.len() < length {
        return Err(Failure::Closed);
    }
    Ok(Request {
        method: var("REQUEST_METHOD").unwrap_or_else(|| "GET".into()),
        path: var("PATH_INFO").unwrap_or_else(|| "/".into()),
        content_type: var("CONTENT_TYPE"),
        body,
    })
}

/// One HTTP/1.1 request from `input` (the connection), whole within
/// `limit`. A thread reads, so a client that stops sending cannot hold the
/// process past the deadline: when it passes, the answer is 408 and the
/// process exits, reader and all.
/// A client that sent `Expect: 100-continue` (RFC 9110 §10.1.1) is told
/// on `output` to go on once the head is read and the body is welcome.
pub fn http(
    input: impl Read + Send + 'static,
    output: &mut impl Write,
    limit: Duration,
    max_body: usize,
) -> Result<Request, Failure> {
    let deadline = Instant::now() + limit;
    let (chunks, received) = mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut input = input;
        let mut buffer = vec![0u8; 8192];
        loop {
            let chunk = match input.read(&mut buffer) {
                Ok(n) => Ok(buffer[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let last = !matches!(&chunk, Ok(c) if !c.is_empty());
            if chunks.send(chunk).is_err() || last {
                return;
            }
        }
    });
    let mut data = Vec::new();
    let mut continued = false;
    let head = loop {
        // The head is bounded (`http::MAX_HEAD`) and so is the body
        // (`max_body`, checked against Content-Length before it is read);
        // bytes past the body (a pipelined request) are not read.
        if let Some(head) = http::parse_head(&data, max_body)? {
            if data.len() >= head.head_len + head.content_length {
                break head;
            }
            let expects = head
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
            if expects && !continued {
                continued = true;
                output
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .and_then(|()| output.flush())
                    .map_err(Failure::Io)?;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(Ok(chunk)) if chunk.is_empty() => return Err(Failure::Closed),
            Ok(Ok(chunk)) => data.extend_from_slice(&chunk),
            Ok(Err(e)) => return Err(Failure::Io(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(Failure::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Failure::Closed),
        }
    };
    let (path, _query) = http::split_target(&head.target)?;
    let body = data[head.head_len..head.head_len + head.content_length].to_vec();
    Ok(Request {
        content_type: head.header("content-type").map(str::to_string),
        method: head.method,
        path,
        body,
    })
}
