//! Named people with roles (`keel users`): each token names its person in the audit log, the
//! command log and rule firings; viewers see but cannot steer, operators steer, admins also
//! launch; the server's own token stays an admin; `--private` makes reads need a sign-in.

use keel_protocol::Role;
use keel_server::storage::users::Directory;
use serde_json::{Value, json};

use crate::helpers::{Reply, TOKEN, TestApp};
use crate::sessions::{csrf_of, get_with_cookie, post_login, session_cookie};

/// Adds people to the server's database, as `keel users add` does beside a running server.
fn add(app: &TestApp, people: &[(&str, Role)]) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = Directory::open(&app.db).await.unwrap();
        let mut tokens = Vec::new();
        for (name, role) in people {
            tokens.push(dir.add(name, *role).await.unwrap());
        }
        dir.close().await;
        tokens
    })
}

fn remove(app: &TestApp, name: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = Directory::open(&app.db).await.unwrap();
        assert!(dir.remove(name).await.unwrap());
        dir.close().await;
    });
}

fn post(app: &TestApp, path: &str, body: &Value, token: &str) -> Reply {
    app.post_raw(path, body.to_string().as_bytes(), Some(token))
}

fn refused(r: &Reply, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let msg = r.body["error"].as_str().unwrap_or_default();
    assert!(msg.contains(says), "{msg:?} should say {says:?}");
}

#[test]
fn each_role_does_what_it_may_and_is_named_for_it() {
    let app = TestApp::spawn();
    let [vic, olga, ada] = &add(
        &app,
        &[
            ("vic", Role::Viewer),
            ("olga", Role::Operator),
            ("ada", Role::Admin),
        ],
    )[..] else {
        unreachable!()
    };
    let spec = json!({"name": "r", "layers": 1});

    // A viewer reads but cannot create, stream, steer or launch.
    let r = post(&app, "/api/v1/runs", &spec, vic);
    refused(
        &r,
        403,
        "`vic` is a viewer: steering runs needs an operator or an admin",
    );
    let r = post(&app, "/api/v1/launches", &json!({"grid": "g"}), vic);
    refused(&r, 403, "`vic` is a viewer");

    // An operator creates, streams and steers, named as itself; launching needs an admin.
    let r = post(&app, "/api/v1/runs", &spec, olga);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    let steps = json!({"steps": [{"step": 0, "scalars": {"loss": 2.0}}]});
    let r = post(&app, &format!("/api/v1/runs/{id}/steps"), &steps, olga);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &app,
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "pause"}),
        olga,
    );
    assert!(r.status < 300, "{}", r.body);
    assert_eq!(r.body["issued_by"], "olga");
    let r = post(&app, "/api/v1/launches", &json!({"grid": "g"}), olga);
    refused(
        &r,
        403,
        "`olga` is an operator: launching grids and managing people needs an admin",
    );
    let r = post(
        &app,
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "pause"}),
        vic,
    );
    refused(&r, 403, "`vic` is a viewer");

    // An admin, a person or the server's own token, gets past the role check (this server
    // does not launch, so that is a 404).
    let r = post(&app, "/api/v1/launches", &json!({"grid": "g"}), ada);
    refused(&r, 404, "does not launch");
    let r = post(&app, "/api/v1/launches", &json!({"grid": "g"}), TOKEN);
    refused(&r, 404, "does not launch");
    let r = post(
        &app,
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "resume"}),
        ada,
    );
    assert_eq!(r.body["issued_by"], "ada", "{}", r.body);
    let r = post(
        &app,
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "checkpoint"}),
        TOKEN,
    );
    assert_eq!(r.body["issued_by"], "token", "{}", r.body);

    // The command log and the audit log say who.
    let log = app.get(&format!("/api/v1/runs/{id}/commands")).body;
    let by: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["issued_by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["olga", "ada", "token"]);
    let events = app
        .get(&format!("/api/v1/runs/{id}/events"))
        .body
        .to_string();
    assert!(events.contains("pause queued by olga"), "{events}");
    assert!(events.contains("resume queued by ada"), "{events}");

    // A removed person's token stops working at once.
    remove(&app, "olga");
    let r = post(
        &app,
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "pause"}),
        olga,
    );
    refused(&r, 401, "the token is wrong");
}

#[test]
fn a_rule_firing_names_who_set_the_rules() {
    let app = TestApp::spawn();
    let [olga] = &add(&app, &[("olga", Role::Operator)])[..] else {
        unreachable!()
    };
    let id = app.create_run("r", 1);
    let rules = json!({"rules": [{"on": "loss_spike", "do": {"kind": "checkpoint"}}]});
    let r = app.put_raw(
        &format!("/api/v1/runs/{id}/rules"),
        rules.to_string().as_bytes(),
        Some(olga),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let losses = crate::commands::spiky_losses(0..400, &[300]);
    assert_eq!(app.ingest(id, losses).status, 200);
    let events = app.get(&format!("/api/v1/runs/{id}/events")).body;
    let fired: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rule")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(fired.len(), 1, "{events}");
    assert!(
        fired[0].contains("(on loss_spike, set by olga)"),
        "{}",
        fired[0]
    );
    let settings = events.to_string();
    assert!(settings.contains("rules set by olga"), "{settings}");
}

#[test]
fn a_person_signs_in_with_their_token_and_the_page_offers_what_their_role_allows() {
    let app = TestApp::spawn();
    let [vic, olga] = &add(&app, &[("vic", Role::Viewer), ("olga", Role::Operator)])[..] else {
        unreachable!()
    };
    let id = app.create_run("r", 1);
    let page = format!("/runs/{id}");

    // A viewer's page says who they are and has no controls.
    let r = post_login(&app, vic, &page);
    assert_eq!(r.status, 303, "{}", r.body);
    let (_, cookie) = session_cookie(&r);
    let shown = get_with_cookie(&app, &page, Some(&cookie));
    assert!(csrf_of(&shown.body).is_none());
    assert!(
        shown.body.contains("Signed in as vic (viewer)"),
        "{}",
        shown.body
    );

    // An operator's page has the controls, and a command from it is the operator's.
    let r = post_login(&app, olga, &page);
    let (_, cookie) = session_cookie(&r);
    let shown = get_with_cookie(&app, &page, Some(&cookie));
    let csrf = csrf_of(&shown.body).expect("an operator's page carries the CSRF token");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut resp = agent
        .post(&app.url(&format!("/api/v1/runs/{id}/commands")))
        .content_type("application/json")
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send(json!({"kind": "pause"}).to_string())
        .unwrap();
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body["issued_by"], "olga", "{body}");

    // An operator's runs page does not offer launching; the server's token still does.
    let runs = get_with_cookie(&app, "/", Some(&cookie));
    assert!(!runs.body.contains("id=\"launch-form\""));
    let r = post_login(&app, "neither", "/");
    assert_eq!(r.status, 401);
}

#[test]
fn a_private_server_needs_a_sign_in_to_read() {
    let app = TestApp::on_temp(|c| c.private = true);
    let [vic] = &add(&app, &[("vic", Role::Viewer)])[..] else {
        unreachable!()
    };
    let id = app.create_run("r", 1);
    refused(&app.get("/api/v1/runs"), 401, "this server is private");
    refused(&app.get(&format!("/api/v1/runs/{id}")), 401, "private");
    // A page sends a visitor to the sign-in form, which stays open, as do /healthz and the
    // static files.
    let r = get_with_cookie(&app, &format!("/runs/{id}?x=1"), None);
    assert_eq!(r.status, 303);
    assert_eq!(
        r.headers["location"].to_str().unwrap(),
        format!("/login?next=/runs/{id}%3Fx%3D1")
    );
    assert_eq!(get_with_cookie(&app, "/login", None).status, 200);
    assert_eq!(get_with_cookie(&app, "/healthz", None).status, 200);
    assert_eq!(get_with_cookie(&app, "/static/keel.css", None).status, 200);
    // Any person's token reads, as does a signed-in session.
    let r = app
        .agent
        .get(&app.url("/api/v1/runs"))
        .header("Authorization", &format!("Bearer {vic}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = post_login(&app, vic, "/");
    let (_, cookie) = session_cookie(&r);
    assert_eq!(get_with_cookie(&app, "/", Some(&cookie)).status, 200);
    assert_eq!(get_with_cookie(&app, "/api/v1/live", None).status, 401);
    let wrong = app
        .agent
        .get(&app.url("/api/v1/runs"))
        .header("Authorization", "Bearer nope")
        .call()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
}

#[test]
fn a_session_outlives_a_restart_takes_its_persons_new_role_and_ends_with_them() {
    let app = TestApp::spawn();
    let [olga] = &add(&app, &[("olga", Role::Operator)])[..] else {
        unreachable!()
    };
    let id = app.create_run("r", 1);
    let page = format!("/runs/{id}");
    let r = post_login(&app, olga, &page);
    let (_, cookie) = session_cookie(&r);
    let db = app.db.clone();
    let dir = app.stop();

    // The same database, a new server: still signed in, with the controls.
    let app = TestApp::on(db, |_| {});
    let shown = get_with_cookie(&app, &page, Some(&cookie));
    assert!(csrf_of(&shown.body).is_some(), "signed out by the restart");

    // A role changed applies to the session at its next request.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let people = Directory::open(&app.db).await.unwrap();
        assert!(people.set_role("olga", Role::Viewer).await.unwrap());
        people.close().await;
    });
    let shown = get_with_cookie(&app, &page, Some(&cookie));
    assert!(csrf_of(&shown.body).is_none());
    assert!(
        shown.body.contains("Signed in as olga (viewer)"),
        "{}",
        shown.body
    );

    // Removed, they are signed out.
    remove(&app, "olga");
    let shown = get_with_cookie(&app, &page, Some(&cookie));
    assert!(!shown.body.contains("Signed in as olga"));
    assert!(shown.body.contains(&format!("/login?next=/runs/{id}")));
    drop(dir);
}

#[test]
fn an_admin_manages_people_through_the_api_and_nobody_else_can() {
    let app = TestApp::spawn();
    let [olga] = &add(&app, &[("olga", Role::Operator)])[..] else {
        unreachable!()
    };
    let put = |path: &str, body: &Value, token: &str| {
        app.put_raw(path, body.to_string().as_bytes(), Some(token))
    };
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "ada", "role": "admin"}),
        TOKEN,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["name"], "ada");
    assert_eq!(r.body["role"], "admin");
    let ada = r.body["token"].as_str().unwrap().to_owned();

    // The new admin manages people in turn; their token is not listed.
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "vic", "role": "viewer"}),
        &ada,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let vic = r.body["token"].as_str().unwrap().to_owned();
    let listed = app
        .agent
        .get(&app.url("/api/v1/users"))
        .header("Authorization", &format!("Bearer {ada}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json::<Value>()
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada", "olga", "vic"]);
    assert!(!listed.to_string().contains(&vic));

    let r = put("/api/v1/users/vic", &json!({"role": "operator"}), &ada);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["role"], "operator");
    let r = post(
        &app,
        "/api/v1/runs",
        &json!({"name": "r", "layers": 1}),
        &vic,
    );
    assert_eq!(r.status, 201, "the new role applies at once: {}", r.body);

    // Refusals: a name taken or not allowed, an unknown field or role, nobody of that name,
    // and anyone but an admin.
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "vic", "role": "viewer"}),
        &ada,
    );
    refused(&r, 409, "`vic` is there already");
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "token", "role": "viewer"}),
        &ada,
    );
    refused(&r, 422, "server's own token");
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "a b", "role": "viewer"}),
        &ada,
    );
    refused(&r, 422, "cannot name a person");
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "x", "role": "boss"}),
        &ada,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "x", "role": "viewer", "y": 1}),
        &ada,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = put("/api/v1/users/nobody", &json!({"role": "viewer"}), &ada);
    refused(&r, 404, "person `nobody` not found");
    let r = post(
        &app,
        "/api/v1/users",
        &json!({"name": "x", "role": "viewer"}),
        olga,
    );
    refused(
        &r,
        403,
        "`olga` is an operator: launching grids and managing people needs an admin",
    );
    let r = app
        .agent
        .get(&app.url("/api/v1/users"))
        .header("Authorization", &format!("Bearer {olga}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(app.get("/api/v1/users").status, 401);

    // Removed, a person's token stops working.
    let gone = app
        .agent
        .delete(&app.url("/api/v1/users/vic"))
        .header("Authorization", &format!("Bearer {ada}"))
        .call()
        .unwrap();
    assert_eq!(gone.status().as_u16(), 204);
    let r = post(
        &app,
        "/api/v1/runs",
        &json!({"name": "r", "layers": 1}),
        &vic,
    );
    refused(&r, 401, "the token is wrong");
    let again = app
        .agent
        .delete(&app.url("/api/v1/users/vic"))
        .header("Authorization", &format!("Bearer {ada}"))
        .call()
        .unwrap();
    assert_eq!(again.status().as_u16(), 404);
}
