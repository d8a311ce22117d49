//! Signing in from a browser: the login form, the session cookie's flags, the CSRF token a
//! signed-in page carries, and every way a write without the right proof is refused.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp};

/// Status, headers and body of one response, redirects not followed.
pub struct Raw {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

pub fn raw(mut resp: ureq::http::Response<ureq::Body>) -> Raw {
    Raw {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

pub fn post_login(app: &TestApp, token: &str, next: &str) -> Raw {
    let resp = agent()
        .post(&app.url("/login"))
        .send_form([("token", token), ("next", next)])
        .unwrap();
    raw(resp)
}

pub fn get_with_cookie(app: &TestApp, path: &str, cookie: Option<&str>) -> Raw {
    let mut req = agent().get(&app.url(path));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    raw(req.call().unwrap())
}

/// POST a command as a browser would: the session cookie, and the CSRF header if given.
pub fn post_command(app: &TestApp, run: i64, cookie: &str, csrf: Option<&str>) -> (u16, Value) {
    let mut req = agent()
        .post(&app.url(&format!("/api/v1/runs/{run}/commands")))
        .content_type("application/json")
        .header("Cookie", cookie);
    if let Some(t) = csrf {
        req = req.header("X-CSRF-Token", t);
    }
    let r = raw(req.send(json!({"kind": "pause"}).to_string()).unwrap());
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// The `Set-Cookie` header of a sign-in, and the `name=value` part a browser sends back.
pub fn session_cookie(r: &Raw) -> (String, String) {
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (set, pair)
}

/// The CSRF token in a run page's `<meta name="csrf-token">`, if the page carries one.
pub fn csrf_of(page: &str) -> Option<String> {
    let at = page.find(r#"<meta name="csrf-token" content=""#)?;
    let rest = &page[at + r#"<meta name="csrf-token" content=""#.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// Signs in and reads the CSRF token from the run page: (cookie pair, csrf token).
pub fn signed_in(app: &TestApp, run: i64) -> (String, String) {
    let r = post_login(app, TOKEN, &format!("/runs/{run}"));
    assert_eq!(r.status, 303, "{}", r.body);
    let (_, cookie) = session_cookie(&r);
    let page = get_with_cookie(app, &format!("/runs/{run}"), Some(&cookie));
    let csrf = csrf_of(&page.body).expect("a signed-in page carries the CSRF token");
    (cookie, csrf)
}

#[test]
fn signing_in_sets_an_httponly_samesite_strict_cookie_and_returns_to_the_page() {
    let app = TestApp::spawn();
    let form = get_with_cookie(&app, "/login?next=/runs/7", None);
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"name="token""#), "{}", form.body);
    assert!(form.body.contains(r#"value="/runs/7""#));
    let r = post_login(&app, TOKEN, "/runs/7");
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/runs/7");
    let (set, pair) = session_cookie(&r);
    assert!(
        pair.starts_with("keel_session=") && pair.len() > 20,
        "{set}"
    );
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{flag} missing from {set}");
    }
    assert!(!set.contains("Secure"), "not asked for: {set}");
    assert!(
        !set.contains(TOKEN),
        "the operator token is not the session id"
    );
}

#[test]
fn the_cookie_is_secure_when_configured_and_next_never_leaves_the_server() {
    let app = TestApp::on_temp(|c| c.secure_cookie = true);
    for (next, to) in [
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/", "/"),
    ] {
        let r = post_login(&app, TOKEN, next);
        assert_eq!(r.headers["location"], to, "{next}");
        assert!(session_cookie(&r).0.contains("; Secure"));
    }
}

#[test]
fn a_wrong_token_at_sign_in_is_a_401_login_page_without_a_cookie() {
    let app = TestApp::spawn();
    let r = post_login(&app, "not-the-token", "/");
    assert_eq!(r.status, 401);
    assert!(r.headers.get("set-cookie").is_none());
    assert!(r.body.contains("Wrong token"), "{}", r.body);
    assert!(r.body.contains(r#"name="token""#));
}

#[test]
fn a_command_without_token_or_session_is_a_401() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let r = app.post_raw(
        &format!("/api/v1/runs/{id}/commands"),
        br#"{"kind": "pause"}"#,
        None,
    );
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("Bearer"));
}

#[test]
fn a_session_needs_the_csrf_token_and_then_issues_commands_as_the_browser() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let (cookie, csrf) = signed_in(&app, id);
    let (status, body) = post_command(&app, id, &cookie, None);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    let (status, _) = post_command(&app, id, &cookie, Some("0123456789abcdef0123456789abcdef"));
    assert_eq!(status, 403);
    let (status, body) = post_command(&app, id, &cookie, Some(&csrf));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["issued_by"], "browser");
    // The bearer token still works, and says so in the audit.
    let r = app.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "resume"}),
    );
    assert_eq!(r.body["issued_by"], "token");
}

#[test]
fn an_expired_session_is_a_401_and_its_page_has_no_controls() {
    let app = TestApp::on_temp(|c| c.session_ttl = Duration::from_millis(300));
    let id = app.create_run("r", 2);
    let (cookie, csrf) = signed_in(&app, id);
    std::thread::sleep(Duration::from_millis(400));
    let (status, body) = post_command(&app, id, &cookie, Some(&csrf));
    assert_eq!(status, 401, "{body}");
    let page = get_with_cookie(&app, &format!("/runs/{id}"), Some(&cookie));
    assert!(csrf_of(&page.body).is_none());
}

#[test]
fn signing_out_ends_the_session() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let (cookie, csrf) = signed_in(&app, id);
    let r = raw(agent()
        .post(&app.url("/logout"))
        .header("Cookie", &cookie)
        .send_form([("next", "/runs/1")])
        .unwrap());
    assert_eq!(r.status, 303);
    assert!(session_cookie(&r).0.contains("Max-Age=0"));
    let (status, _) = post_command(&app, id, &cookie, Some(&csrf));
    assert_eq!(status, 401);
}

#[test]
fn a_visitor_sees_the_run_without_controls_or_csrf_token_and_a_sign_in_link() {
    let app = TestApp::spawn();
    let id = app.create_run("r", 2);
    let page = get_with_cookie(&app, &format!("/runs/{id}"), None);
    assert_eq!(page.status, 200);
    assert!(csrf_of(&page.body).is_none());
    assert!(!page.body.contains("csrf"), "no CSRF token for a visitor");
    assert!(!page.body.contains(r#"id="controls""#));
    assert!(page.body.contains("Sign in to steer this run"));
    assert!(page.body.contains(&format!("/login?next=/runs/{id}")));
    // An unknown cookie is a visitor too.
    let page = get_with_cookie(&app, &format!("/runs/{id}"), Some("keel_session=nope"));
    assert!(!page.body.contains(r#"id="controls""#));
    // Signed in, the controls are there.
    let (cookie, _) = signed_in(&app, id);
    let page = get_with_cookie(&app, &format!("/runs/{id}"), Some(&cookie));
    assert!(page.body.contains(r#"id="controls""#));
    assert!(!page.body.contains("Sign in to steer"));
}
