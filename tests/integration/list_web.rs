//! list-web end to end: a real post goes through list-expand and
//! smtp-send into the members' maildirs; the one-click URL of its
//! List-Unsubscribe header, POSTed to list-web as CGI (environment and
//! stdin), as the HTTP responder systemd socket activation starts, and
//! from the button a browser shows, removes exactly its member; a forged
//! or replayed token and a GET change nothing; and the subscription form,
//! filled in and sent by headless Chromium, sends the confirmation a
//! request by mail does.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::list_expand::{list_expand, ok, open_team};
use crate::util::{
    Server, Tree, bin, chromium_dom, maildir_texts, run_queue, run_with, stderr, stdout,
};

const BASE: &str = "https://lists.example.test/cgi-bin/list-web";
const ONE_CLICK: &[u8] = b"List-Unsubscribe=One-Click";
const FORM: &str = "application/x-www-form-urlencoded";

/// team@example.test with local members and one-click URLs, and one post
/// sent and delivered to each member.
fn team_after_a_post(members: &[&str]) -> Tree {
    let tree = Tree::new();
    let mut lines = String::new();
    for member in members {
        tree.add_user(&format!("{member}@example.test"));
        lines.push_str(&format!("{member}@example.test\n"));
    }
    open_team_and_post(&tree, lines.as_bytes());
    run_queue(&tree);
    tree
}

/// team@example.test with `members`, its unsubscribe_url set to
/// list-web's base, and one post queued.
fn open_team_and_post(tree: &Tree, members: &[u8]) {
    open_team(tree, members);
    let config = tree.root().join("lists/team@example.test/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text + &format!("unsubscribe_url = \"{BASE}\"\n")).unwrap();
    ok(&list_expand(
        tree,
        &["post", "team@example.test", "--sender", "ann@example.test"],
        b"From: ann@example.test\nSubject: news\n\nhello all\n",
    ));
}

fn members(tree: &Tree) -> String {
    std::fs::read_to_string(tree.root().join("lists/team@example.test/members")).unwrap()
}

/// The path (after list-web's base URL) of the one-click URL in the
/// List-Unsubscribe header of `user`'s copy of the post.
fn one_click_path(tree: &Tree, user: &str) -> String {
    let mail = maildir_texts(&tree.maildir(user));
    assert_eq!(mail.len(), 1, "{user} got the post");
    let unfolded = mail[0].replace("\n ", " ");
    let header = unfolded
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: "))
        .unwrap_or_else(|| panic!("no List-Unsubscribe:\n{}", mail[0]));
    assert!(
        mail[0].contains("\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n"),
        "{}",
        mail[0]
    );
    let url = header
        .split(['<', '>'])
        .find(|part| part.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https URL in {header}"));
    url.strip_prefix(BASE)
        .unwrap_or_else(|| panic!("{url} is not under {BASE}"))
        .to_string()
}

/// list-web as a web server runs a CGI program; (status, whole output).
fn cgi(tree: &Tree, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut command = Command::new(bin("list-web"));
    command
        .arg("--config")
        .arg(&tree.config)
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", method)
        .env("SCRIPT_NAME", "/cgi-bin/list-web")
        // CGI hands the path decoded (RFC 3875 §4.1.5).
        .env(
            "PATH_INFO",
            percent_encoding::percent_decode_str(path)
                .decode_utf8()
                .unwrap()
                .as_ref(),
        )
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("CONTENT_TYPE", content_type);
    let out = run_with(command, body);
    assert!(out.status.success(), "{}", stderr(&out));
    status_after("Status: ", stdout(&out))
}

/// The status a response starts with after `prefix`, and the response.
fn status_after(prefix: &str, text: String) -> (u16, String) {
    let status = text
        .strip_prefix(prefix)
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status after {prefix:?}: {text:?}"));
    (status, text)
}

/// One request over TCP; (status, whole response).
fn http(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    status_after("HTTP/1.1 ", text)
}

fn post_request(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: lists.example.test\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[test]
fn one_click_from_a_real_post_removes_exactly_its_member() {
    let tree = team_after_a_post(&["bob", "cat", "dan", "eve"]);
    let everyone = "bob@example.test\ncat@example.test\ndan@example.test\neve@example.test\n";
    assert_eq!(members(&tree), everyone);
    let bob = one_click_path(&tree, "bob");
    let cat = one_click_path(&tree, "cat");
    assert!(
        bob.starts_with("/unsubscribe/team@example.test/bob@example.test/"),
        "{bob}"
    );
    assert_ne!(bob.rsplit('/').next(), cat.rsplit('/').next(), "per member");

    // A GET (a mail scanner, a link preview) shows the button, no more.
    let (status, page) = cgi(&tree, "GET", &bob, "", b"");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
        "{page}"
    );
    assert_eq!(members(&tree), everyone, "a GET unsubscribes nobody");

    // Forged: a token changed, another member's token on bob's address,
    // bob's token on another list. Nothing changes.
    let token = bob.rsplit('/').next().unwrap();
    let flipped = format!(
        "{}{}",
        &bob[..bob.len() - 1],
        if bob.ends_with('A') { 'B' } else { 'A' }
    );
    let swapped = bob.replace(token, cat.rsplit('/').next().unwrap());
    let elsewhere = bob.replace("/team@example.test/", "/other@example.test/");
    for forged in [&flipped, &swapped] {
        let (status, page) = cgi(&tree, "POST", forged, FORM, ONE_CLICK);
        assert_eq!(status, 403, "{forged}: {page}");
    }
    assert_eq!(cgi(&tree, "POST", &elsewhere, FORM, ONE_CLICK).0, 404);
    // A POST without the one-click field is no unsubscribe either.
    let (status, _) = cgi(&tree, "POST", &bob, FORM, b"List-Unsubscribe=Maybe");
    assert_eq!(status, 400);
    assert_eq!(members(&tree), everyone, "nothing forged changed anything");

    // The one-click POST, as CGI: bob and only bob leaves.
    let (status, page) = cgi(&tree, "POST", &bob, FORM, ONE_CLICK);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("bob@example.test has left team@example.test"),
        "{page}"
    );
    let without_bob = "cat@example.test\ndan@example.test\neve@example.test\n";
    assert_eq!(members(&tree), without_bob);

    // Replayed after bob left: nothing happens to anyone.
    let (status, page) = cgi(&tree, "POST", &bob, FORM, ONE_CLICK);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("not a member"), "{page}");
    assert_eq!(members(&tree), without_bob);

    // As the responder socket activation starts (Accept=yes, the
    // connection on stdin and stdout), with a multipart/form-data body.
    let activator = Server::start_with("systemd-socket-activate --inetd", 1, |base| {
        let mut command = Command::new("systemd-socket-activate");
        command
            .args(["--inetd", "-a", "-l", &format!("127.0.0.1:{base}")])
            .arg(bin("list-web"))
            .arg("--config")
            .arg(&tree.config)
            .args(["--http", "--timeout", "2"]);
        command
    });
    let multipart = b"--x7\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n\
                      One-Click\r\n--x7--\r\n";
    let (status, said) = http(
        activator.base,
        &post_request(&cat, "multipart/form-data; boundary=x7", multipart),
    );
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("Connection: close"), "{said}");
    assert_eq!(members(&tree), "dan@example.test\neve@example.test\n");
    // A forged token over HTTP changes nothing either.
    let (status, _) = http(
        activator.base,
        &post_request(&swapped.replace("bob@", "dan@"), FORM, ONE_CLICK),
    );
    assert_eq!(status, 403);
    // A client that waits for 100 Continue before its body (RFC 9110).
    let dan = one_click_path(&tree, "dan");
    let mut stream = TcpStream::connect(("127.0.0.1", activator.base)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = post_request(&dan, FORM, ONE_CLICK);
    let (head, body) = request.split_at(request.len() - ONE_CLICK.len());
    let head =
        String::from_utf8_lossy(head).replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body).unwrap();
    let mut said = String::new();
    stream.read_to_string(&mut said).unwrap();
    assert!(said.starts_with("HTTP/1.1 200 OK"), "{said}");
    assert_eq!(members(&tree), "eve@example.test\n");
    // Bad requests get a status, never a hang: a chunked body, a body too
    // large, a head that never ends (408 after --timeout).
    let (status, _) = http(
        activator.base,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(status, 411);
    let (status, _) = http(
        activator.base,
        b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert_eq!(status, 413);
    // HTTP/1.1 without Host, or with two (RFC 9112 §3.2).
    for request in [
        b"GET /team@example.test HTTP/1.1\r\n\r\n".as_slice(),
        b"GET /team@example.test HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ] {
        let (status, said) = http(activator.base, request);
        assert_eq!(status, 400, "{said}");
    }
    let (status, _) = http(activator.base, b"GET / HTTP/1.1\r\nX-A: b\r\n");
    assert_eq!(status, 408);
    assert_eq!(members(&tree), "eve@example.test\n");
}

#[test]
fn the_form_sends_no_confirmation_to_an_address_that_cannot_receive_mail() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    open_team(&tree, b"");
    let pending = tree.root().join("lists/team@example.test/pending");
    let form = |address: &str| {
        cgi(
            &tree,
            "POST",
            "/team@example.test",
            FORM,
            format!("address={}&action=subscribe", address.replace('@', "%40")).as_bytes(),
        )
    };
    let (status, page) = form("nosuch@example.test");
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("nosuch@example.test cannot receive mail"),
        "{page}"
    );
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);
    assert!(tree.queue().list().unwrap().is_empty(), "nothing queued");
    let (status, page) = form("x@far.test");
    assert_eq!(status, 200, "{page}");
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 1);
}

/// A loopback web server for a browser: `/test/NAME` answers with
/// `pages[NAME]` itself (a page that drives list-web's page in a frame);
/// every other connection is handed to `list-web --http` as its stdin and
/// stdout, as socket activation does.
struct Web {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Child>>>,
}

impl Web {
    fn start(tree: &Tree, pages: Vec<(&'static str, String)>) -> Web {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let config = tree.config.clone();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut children = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                if let Some(page) = wrapper(&mut stream, &pages) {
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{page}",
                            page.len()
                        )
                        .as_bytes(),
                    );
                    continue;
                }
                let fd = OwnedFd::from(stream);
                let Ok(out) = fd.try_clone() else { continue };
                let child = Command::new(bin("list-web"))
                    .arg("--config")
                    .arg(&config)
                    .arg("--http")
                    .stdin(Stdio::from(fd))
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::null())
                    .spawn();
                if let Ok(child) = child {
                    children.push(child);
                }
            }
            children
        });
        Web {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take()
            && let Ok(children) = thread.join()
        {
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The test page a request asks for (`GET /test/NAME`), its request read;
/// `None` (nothing read) for a request that is list-web's.
fn wrapper(stream: &mut TcpStream, pages: &[(&'static str, String)]) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut peeked = [0u8; 512];
    let line = loop {
        let n = stream.peek(&mut peeked).ok()?;
        let text = String::from_utf8_lossy(&peeked[..n]).to_string();
        match text.split_once("\r\n") {
            Some((line, _)) => break line.to_string(),
            None if n == peeked.len() || n == 0 => return None,
            None => continue,
        }
    };
    let name = line.strip_prefix("GET /test/")?.split(' ').next()?;
    let page = pages.iter().find(|(n, _)| *n == name)?.1.clone();
    // The request has no body: read its head, so closing sends no reset.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).ok()? == 1 {
        head.push(byte[0]);
    }
    Some(page)
}

/// A page that loads `src` (list-web's) in a frame, runs `act` on the
/// frame's document once, and when the frame has loaded what that sent,
/// copies its `#result` into `#out` for the dump.
fn driver(src: &str, act: &str) -> String {
    format!(
        "<!DOCTYPE html><html><body><iframe id=\"f\" src=\"{src}\"></iframe>\
         <pre id=\"out\">waiting</pre><script>\
         let sent = false; const f = document.getElementById('f');\
         f.onload = () => {{ const d = f.contentDocument;\
           if (!sent) {{ sent = true; {act} }}\
           else {{ const r = d.getElementById('result');\
             document.getElementById('out').textContent = 'RESULT: ' + (r ? r.textContent : d.body.innerHTML); }} }};\
         </script></body></html>"
    )
}

/// What headless Chromium shows of `url` once the page's work is done.
fn chromium(url: &str) -> String {
    // Runs the page's loads and timers to the end before the dump.
    chromium_dom(url, &["--virtual-time-budget=20000"])
}

#[test]
fn the_form_and_the_button_work_in_headless_chromium() {
    let tree = team_after_a_post(&["bob", "cat"]);
    tree.add_user("newbie@example.test");
    let bob = one_click_path(&tree, "bob");
    let pages = vec![
        (
            "subscribe",
            driver(
                "/team@example.test",
                "d.getElementById('address').value = 'newbie@example.test';\
                 d.getElementById('subscribe').click();",
            ),
        ),
        (
            "leave",
            driver(&bob, "d.getElementById('unsubscribe').click();"),
        ),
    ];
    let web = Web::start(&tree, pages);

    // The subscription form, filled in and sent by the browser: the
    // confirmation request is the one a request by mail gets, and
    // confirming it by mail makes newbie a member.
    let dom = chromium(&format!("http://127.0.0.1:{}/test/subscribe", web.port));
    assert!(
        dom.contains("RESULT: A message was sent to newbie@example.test"),
        "{dom}"
    );
    run_queue(&tree);
    let mail = maildir_texts(&tree.maildir("newbie"));
    assert_eq!(mail.len(), 1, "one confirmation request");
    let token = mail[0]
        .lines()
        .find_map(|l| l.strip_prefix("Subject: confirm "))
        .unwrap_or_else(|| panic!("no confirm subject:\n{}", mail[0]))
        .trim()
        .to_string();
    assert!(
        mail[0].contains("Auto-Submitted: auto-replied"),
        "{}",
        mail[0]
    );
    assert!(!members(&tree).contains("newbie"), "not before confirming");
    // Asked again at once (as CGI): the same page, no second message.
    let (status, page) = cgi(
        &tree,
        "POST",
        "/team@example.test",
        FORM,
        b"address=newbie%40example.test&action=subscribe",
    );
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("A message was sent to newbie@example.test"),
        "{page}"
    );
    let (status, page) = cgi(
        &tree,
        "POST",
        "/team@example.test",
        FORM,
        b"address=%3Cscript%3E&action=subscribe",
    );
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("&lt;script&gt;") && !page.contains("<script>"),
        "{page}"
    );
    run_queue(&tree);
    assert_eq!(
        maildir_texts(&tree.maildir("newbie")).len(),
        1,
        "not resent"
    );
    ok(&list_expand(
        &tree,
        &[
            "request",
            "team@example.test",
            "--sender",
            "newbie@example.test",
        ],
        format!("From: newbie@example.test\nSubject: Re: confirm {token}\n\nthanks\n").as_bytes(),
    ));
    assert!(
        members(&tree).contains("newbie@example.test"),
        "{}",
        members(&tree)
    );

    // The one-click link opened in a browser: the page loads (and leaves
    // bob in), and its button unsubscribes.
    let dom = chromium(&format!("http://127.0.0.1:{}/test/leave", web.port));
    assert!(
        dom.contains("RESULT: bob@example.test has left team@example.test"),
        "{dom}"
    );
    assert_eq!(
        members(&tree),
        "cat@example.test\nnewbie@example.test\n",
        "bob, and only bob, left"
    );
}

#[test]
fn each_members_copy_is_signed_over_its_own_one_click_url() {
    // RFC 8058 §4: the signature covers List-Unsubscribe and
    // List-Unsubscribe-Post, so the per-member fields need a signed copy
    // a member.
    let (tree, _records) = crate::dkim::tree_with_keys();
    open_team_and_post(&tree, b"bob@far.test\ncat@far.test\ndan@far.test\n");
    let queue = tree.queue();
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 3, "a copy a member");
    let mut urls = std::collections::BTreeSet::new();
    for id in ids {
        let message = queue.read(&id).unwrap();
        assert_eq!(message.envelope.recipients.len(), 1);
        assert!(message.envelope.verp);
        let member = message.envelope.recipients[0].address.to_string();
        let body = postroom::store::queue::read_body(&message).unwrap();
        let text = String::from_utf8_lossy(&body)
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        let url = format!("{BASE}/unsubscribe/team@example.test/{member}/");
        assert!(
            text.contains(&format!("List-Unsubscribe: <{url}")),
            "{text}"
        );
        urls.insert(member);
        for signature in text.lines().filter(|l| l.starts_with("DKIM-Signature:")) {
            let h = signature
                .split(';')
                .map(str::trim)
                .find_map(|tag| tag.strip_prefix("h="))
                .unwrap_or_default()
                .to_ascii_lowercase()
                .replace(' ', "");
            let names: Vec<&str> = h.split(':').collect();
            for name in ["list-unsubscribe", "list-unsubscribe-post"] {
                assert!(names.contains(&name), "{name} not signed: {signature}");
            }
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("DKIM-Signature:"))
                .count(),
            2,
            "signed with both keys: {text}"
        );
    }
    assert_eq!(urls.len(), 3, "each member's own URL");
}
