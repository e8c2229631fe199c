//! What list-web answers: the routes, the one-click unsubscribe, the
//! subscription form, and the pages (every text from the tree or the
//! request goes through `html::escape`).

use postroom::config::Config;
use postroom::delivery::lists::{List, ListError, parse_one_click_path};
use postroom::proto::address::Address;
use postroom::proto::html::escape;
use postroom::proto::http::{self, HttpError, Response};

use crate::Request;

/// How long after a confirmation request the form sends no second one
/// to the same address for the same action.
const RESEND_SECONDS: u64 = 600;

/// The one field and value of an RFC 8058 one-click POST.
const ONE_CLICK_FIELD: &str = "List-Unsubscribe";
const ONE_CLICK_VALUE: &str = "One-Click";

/// Answers one request. `Err` is trouble with the tree (the page then
/// says to try again later); everything the client got wrong is a page.
pub fn handle(config: &Config, request: &Request) -> anyhow::Result<Response> {
    if let Some((list, member, token)) = parse_one_click_path(&request.path) {
        return one_click(config, request, &list, &member, &token);
    }
    let name = request.path.trim_start_matches('/');
    if name.is_empty() || name.contains('/') {
        return Ok(not_found());
    }
    match Address::parse(name) {
        Ok(list) => form(config, request, &list),
        Err(_) => Ok(not_found()),
    }
}

/// `/unsubscribe/LIST/MEMBER/TOKEN`: a valid POST removes the member; a
/// GET shows the button that POSTs; a forged token changes nothing.
fn one_click(
    config: &Config,
    request: &Request,
    list: &Address,
    member: &Address,
    token: &str,
) -> anyhow::Result<Response> {
    let Some(list) = open(config, list)? else {
        return Ok(not_found());
    };
    if !list.unsubscribe_token_matches(member, token)? {
        tracing::warn!(list = %list.address, %member, method = %request.method, "a one-click link with a wrong token; nothing changed");
        return Ok(message(
            403,
            "Not a valid link",
            &format!(
                "This unsubscribe link is not valid (a mail program may have cut it short). \
                 To leave {}, send a message with the subject \"unsubscribe\" to {}.",
                list.address,
                list.request_address()
            ),
        ));
    }
    match request.method.as_str() {
        // Mail scanners and link previews fetch every URL in a message, so
        // a GET never unsubscribes (RFC 8058 §3.2): it offers the button.
        "GET" | "HEAD" => Ok(page(
            200,
            &format!("Leave {}", list.address),
            &format!(
                "<p>Unsubscribe <b>{member}</b> from <b>{list}</b>?</p>\n\
                 <form method=\"post\" action=\"\">\n\
                 <input type=\"hidden\" name=\"{ONE_CLICK_FIELD}\" value=\"{ONE_CLICK_VALUE}\">\n\
                 <button type=\"submit\" id=\"unsubscribe\">Unsubscribe</button>\n\
                 </form>",
                member = escape(&member.to_string()),
                list = escape(&list.address.to_string()),
            ),
        )),
        "POST" => {
            let fields = match fields_of(request) {
                Ok(fields) => fields,
                Err(refused) => return Ok(refused),
            };
            let one_click = fields
                .iter()
                .any(|(k, v)| k == ONE_CLICK_FIELD && v == ONE_CLICK_VALUE);
            if !one_click {
                return Ok(message(
                    400,
                    "Not a one-click request",
                    "A one-click unsubscribe POST carries List-Unsubscribe=One-Click (RFC 8058).",
                ));
            }
            let removed = list.remove("members", std::slice::from_ref(member))?;
            tracing::info!(list = %list.address, %member, removed, "one-click unsubscribe");
            let text = if removed > 0 {
                format!("{member} has left {}.", list.address)
            } else {
                format!("{member} is not a member of {} (any more).", list.address)
            };
            Ok(message(200, "Unsubscribed", &text))
        }
        _ => Ok(not_allowed()),
    }
}

/// `/LIST`: the subscription form, and its POST, which sends the
/// confirmation request a message to LIST-request would.
fn form(config: &Config, request: &Request, list: &Address) -> anyhow::Result<Response> {
    let Some(list) = open(config, list)? else {
        return Ok(not_found());
    };
    match request.method.as_str() {
        "GET" | "HEAD" => Ok(form_page(&list, 200, "")),
        "POST" => {
            let fields = match fields_of(request) {
                Ok(fields) => fields,
                Err(refused) => return Ok(refused),
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.trim())
                    .unwrap_or("")
            };
            let action = match field("action") {
                action @ ("subscribe" | "unsubscribe") => action,
                _ => {
                    return Ok(form_page(&list, 400, "Choose Subscribe or Unsubscribe."));
                }
            };
            let who = match Address::parse(field("address")) {
                Ok(who) => who,
                Err(e) => {
                    let text = format!("{:?} is not a mail address: {e}", field("address"));
                    return Ok(form_page(&list, 400, &text));
                }
            };
            if list.asked_recently(action, &who, RESEND_SECONDS)? {
                // The page says the same, so it tells nobody whether a
                // request was pending.
                tracing::info!(list = %list.address, %who, action, "confirmation asked for again; not resent");
            } else {
                match list.send_confirmation(config, action, &who) {
                    Ok(()) => {}
                    Err(ListError::Undeliverable { reason, .. }) => {
                        tracing::info!(list = %list.address, %who, action, "no confirmation sent: {reason}");
                        let text = format!(
                            "{who} cannot receive mail ({reason}), so no confirmation can be \
                             sent to it; nothing was changed. Check the address."
                        );
                        return Ok(form_page(&list, 400, &text));
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(list = %list.address, %who, action, "confirmation request sent");
            }
            Ok(message(
                200,
                "Check your mail",
                &format!(
                    "A message was sent to {who}. To {action}, reply to it (or follow what it \
                     says) within {} hours.",
                    list.config.confirm_seconds / 3600
                ),
            ))
        }
        _ => Ok(not_allowed()),
    }
}

/// The fields of a POSTed form, or the page refusing its body.
fn fields_of(request: &Request) -> Result<Vec<(String, String)>, Response> {
    http::form_fields(request.content_type.as_deref(), &request.body).map_err(|e| refusal(&e))
}

/// The page for a request the codec refused.
pub fn refusal(e: &HttpError) -> Response {
    tracing::info!("request refused: {e}");
    message(e.status(), http::reason(e.status()), &e.to_string())
}

/// The list, or `None` when there is no such list.
fn open(config: &Config, address: &Address) -> Result<Option<List>, ListError> {
    match List::open(config, address) {
        Ok(list) => Ok(Some(list)),
        Err(ListError::NoSuchList(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn form_page(list: &List, status: u16, problem: &str) -> Response {
    let problem = if problem.is_empty() {
        String::new()
    } else {
        format!("<p class=\"problem\">{}</p>\n", escape(problem))
    };
    let description = if list.config.description.is_empty() {
        String::new()
    } else {
        format!("<p>{}</p>\n", escape(&list.config.description))
    };
    page(
        status,
        &list.address.to_string(),
        &format!(
            "{description}{problem}<form method=\"post\" action=\"\">\n\
             <label>Your address <input type=\"email\" name=\"address\" id=\"address\" required></label>\n\
             <button type=\"submit\" name=\"action\" value=\"subscribe\" id=\"subscribe\">Subscribe</button>\n\
             <button type=\"submit\" name=\"action\" value=\"unsubscribe\" id=\"unsubscribe\">Unsubscribe</button>\n\
             </form>\n\
             <p>Either way, a message comes to ask you to confirm. You can also send\n\
             \"subscribe\" or \"unsubscribe\" to {}.</p>",
            escape(&list.request_address())
        ),
    )
}

/// A page with a heading and one paragraph.
pub fn message(status: u16, title: &str, text: &str) -> Response {
    page(
        status,
        title,
        &format!("<p id=\"result\">{}</p>", escape(text)),
    )
}

fn not_found() -> Response {
    message(
        404,
        "No such list",
        "There is no list at this address. The list's own messages carry its links.",
    )
}

fn not_allowed() -> Response {
    let mut page = message(405, http::reason(405), "Use GET or POST.");
    page.headers.push(("Allow", "GET, HEAD, POST".into()));
    page
}

/// The page for trouble with the tree (logged with the details).
pub fn trouble() -> Response {
    message(
        503,
        "Try again later",
        "The list cannot be reached just now; nothing was changed. Please try again later.",
    )
}

/// `title` is text, `body` HTML (escaped by the caller).
fn page(status: u16, title: &str, body: &str) -> Response {
    let title = escape(title);
    Response::html(
        status,
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width\">\n\
             <meta name=\"robots\" content=\"noindex\">\n<title>{title}</title>\n\
             <style>body{{font-family:sans-serif;max-width:36em;margin:2em auto;padding:0 1em}}\
             .problem{{color:#a00}}button{{margin:.5em .5em 0 0}}</style>\n\
             </head><body>\n<h1>{title}</h1>\n{body}\n</body></html>\n"
        ),
    )
}
