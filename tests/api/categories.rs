//! Notification categories (the catalogue, users' choices, eligibility in a category) and
//! the consent history (its rows, its order under concurrency, eligibility as recorded).

use std::time::Duration;

use api_tests::{Reply, TestApp};
use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const OPS_KEY: &str = "ops-key-0123456789abcdef";
const GATEWAY_KEY: &str = "gateway-key-0123456789abcdef";

/// An instance whose keys are scoped: `ops` may manage the catalogue, `gateway` may only read.
async fn scoped_app() -> TestApp {
    let keys = format!(
        "ops:{OPS_KEY}:admin,users.read;gateway:{GATEWAY_KEY}:users.read,eligibility.read;all:{}:*",
        api_tests::SERVICE_KEY
    );
    TestApp::spawn_with(&[("SERVICE_API_KEYS", &keys)]).await
}

async fn as_key(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
    let body = body.map(|body| body.to_string());
    app.request_as(&app.anonymous, &[("X-Service-Key", key)], method, path, body.as_deref()).await
}

async fn create_category(app: &TestApp, body: Value) -> Reply {
    let reply = app.send(Method::POST, "/api/v1/categories", &body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply
}

async fn history(app: &TestApp, user: &str, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/api/v1/users/{user}/consent-history?{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.assert_envelope();
    reply.body["data"]["records"].as_array().unwrap().clone()
}

async fn eligibility(app: &TestApp, user: &str, query: &str) -> Reply {
    app.get(&format!("/api/v1/users/{user}/eligibility?{query}")).await
}

fn reason(reply: &Reply) -> (bool, String) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    (reply.body["data"]["allowed"].as_bool().unwrap(), reply.body["data"]["reason"].as_str().unwrap().to_owned())
}

fn parse_time(raw: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(raw.as_str().unwrap(), &Rfc3339).unwrap()
}

fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_is_changed_by_admin_keys_only_and_read_by_any_caller() {
    let app = scoped_app().await;
    let body = json!({"key": "marketing", "name": "Marketing", "default": {"email": true, "push": false}});

    let refused = as_key(&app, GATEWAY_KEY, Method::POST, "/api/v1/categories", Some(body.clone())).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    refused.assert_envelope();
    let anonymous = app.request_as(&app.anonymous, &[], Method::GET, "/api/v1/categories", None).await;
    assert_eq!(anonymous.status, 401);

    let created = as_key(&app, OPS_KEY, Method::POST, "/api/v1/categories", Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.assert_envelope();
    assert_eq!(created.header("location"), Some("/api/v1/categories/marketing"));
    let data = &created.body["data"];
    assert_eq!(
        (&data["key"], &data["critical"], &data["default"], &data["description"]),
        (&json!("marketing"), &json!(false), &json!({"email": true, "push": false}), &Value::Null)
    );

    // Any service reads the catalogue, and so does an end user (a settings page lists it).
    let listed = as_key(&app, GATEWAY_KEY, Method::GET, "/api/v1/categories", None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["data"][0]["key"], "marketing");
    app.register("reader@example.com").await;
    let token = app.login("reader@example.com", "StrongPass123!").await;
    let bearer = format!("Bearer {token}");
    let by_user = app
        .request_as(&app.anonymous, &[("Authorization", &bearer)], Method::GET, "/api/v1/categories/marketing", None)
        .await;
    assert_eq!(by_user.status, 200, "{}", by_user.body);

    let patch = json!({"critical": true, "default": {"push": true}, "description": "Deals and news"});
    let refused = as_key(&app, GATEWAY_KEY, Method::PATCH, "/api/v1/categories/marketing", Some(patch.clone())).await;
    assert_eq!(refused.status, 403);
    let patched = as_key(&app, OPS_KEY, Method::PATCH, "/api/v1/categories/marketing", Some(patch)).await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["data"]["default"], json!({"email": true, "push": true}));
    assert_eq!(patched.body["data"]["critical"], true);
    assert_eq!(patched.body["data"]["description"], "Deals and news");

    let refused = as_key(&app, GATEWAY_KEY, Method::DELETE, "/api/v1/categories/marketing", None).await;
    assert_eq!(refused.status, 403);
    let removed = as_key(&app, OPS_KEY, Method::DELETE, "/api/v1/categories/marketing", None).await;
    assert_eq!(removed.status, 204);
    assert_eq!(app.get("/api/v1/categories/marketing").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn catalogue_errors_are_404_409_and_422_with_the_envelope() {
    let app = TestApp::spawn().await;
    create_category(&app, json!({"key": "news", "name": "News"})).await;

    let taken = app.send(Method::POST, "/api/v1/categories", &json!({"key": "news", "name": "Again"})).await;
    assert_eq!((taken.status, taken.body["error"].as_str()), (409, Some("category_exists")));
    taken.assert_envelope();

    for path in ["/api/v1/categories/nope", "/api/v1/categories/other-key"] {
        let missing = app.get(path).await;
        assert_eq!((missing.status, missing.body["error"].as_str()), (404, Some("category_not_found")));
        let patch = app.send(Method::PATCH, path, &json!({"name": "X"})).await;
        assert_eq!(patch.status, 404);
        let delete = app.request(Method::DELETE, path, None).await;
        assert_eq!(delete.status, 404);
    }

    for bad in ["News", "-news", "news letter", "néws", "a/b", &"a".repeat(65), ""] {
        let reply = app.send(Method::POST, "/api/v1/categories", &json!({"key": bad, "name": "Bad"})).await;
        assert_eq!(reply.status, 422, "{bad:?}: {}", reply.body);
        reply.assert_envelope();
        assert_eq!(reply.body["details"][0]["field"], "key");
    }
    for bad in ["News", "UPPER", "dot.ted", "%E2%82%AC"] {
        let reply = app.get(&format!("/api/v1/categories/{bad}")).await;
        assert_eq!(reply.status, 422, "{bad:?}: {}", reply.body);
        reply.assert_envelope();
    }
    let empty_name = app.send(Method::POST, "/api/v1/categories", &json!({"key": "ok", "name": "  "})).await;
    assert_eq!((empty_name.status, &empty_name.body["details"][0]["field"]), (422, &json!("name")));
    let unknown_field =
        app.send(Method::POST, "/api/v1/categories", &json!({"key": "ok", "name": "Ok", "id": 7})).await;
    assert_eq!(unknown_field.status, 422);
    let not_bool =
        app.send(Method::POST, "/api/v1/categories", &json!({"key": "ok", "name": "Ok", "critical": "yes"})).await;
    assert_eq!(not_bool.status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn preferences_list_every_category_with_the_users_setting_and_its_source() {
    let app = TestApp::spawn().await;
    create_category(&app, json!({"key": "marketing", "name": "Marketing", "default": {"email": true, "push": false}}))
        .await;
    create_category(&app, json!({"key": "security", "name": "Security", "critical": true})).await;
    let user = app.register("chooser@example.com").await;
    let preferences = format!("/api/v1/users/{user}/preferences");

    let initial = app.get(&preferences).await;
    assert_eq!(initial.status, 200, "{}", initial.body);
    assert_eq!(
        initial.body["data"]["categories"],
        json!({
            "marketing": {"email": true, "push": false, "source": "default"},
            "security": {"email": true, "push": true, "source": "default"},
        })
    );
    // The seed's flat switches keep their meaning (the global channel switch).
    assert_eq!((&initial.body["data"]["email"], &initial.body["data"]["push"]), (&json!(true), &json!(true)));

    let choice = format!("{preferences}/categories/marketing");
    let set = app.send(Method::PUT, &choice, &json!({"push": true})).await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        set.body["data"],
        json!({"key": "marketing", "critical": false, "email": true, "push": true, "source": "user"})
    );
    let second = app.send(Method::PUT, &choice, &json!({"email": false})).await;
    assert_eq!(second.body["data"]["push"], true, "a partial choice keeps the other channel");
    assert_eq!(second.body["data"]["email"], false);
    assert_eq!(
        app.get(&preferences).await.body["data"]["categories"]["marketing"],
        json!({"email": false, "push": true, "source": "user"})
    );
    // The representation every sender reads carries the user's own choices.
    let representation = app.get(&format!("/api/v1/users/{user}")).await;
    assert_eq!(representation.body["data"]["category_choices"], json!({"marketing": {"email": false, "push": true}}));

    let cleared = app.request(Method::DELETE, &choice, None).await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert_eq!(cleared.body["data"]["source"], "default");
    assert_eq!(app.get(&format!("/api/v1/users/{user}")).await.body["data"]["category_choices"], json!({}));

    let unknown = app.send(Method::PUT, &format!("{preferences}/categories/unknown"), &json!({"email": true})).await;
    assert_eq!((unknown.status, unknown.body["error"].as_str()), (404, Some("category_not_found")));
    let bad_slug = app.send(Method::PUT, &format!("{preferences}/categories/Bad"), &json!({"email": true})).await;
    assert_eq!(bad_slug.status, 422);
    let not_bool = app.send(Method::PUT, &choice, &json!({"email": "no"})).await;
    assert_eq!(not_bool.status, 422);
    let no_user = app
        .send(
            Method::PUT,
            "/api/v1/users/00000000-0000-4000-8000-000000000000/preferences/categories/marketing",
            &json!({"email": true}),
        )
        .await;
    assert_eq!((no_user.status, no_user.body["error"].as_str()), (404, Some("user_not_found")));

    // Another user's token cannot choose for this user.
    app.register("intruder@example.com").await;
    let token = app.login("intruder@example.com", "StrongPass123!").await;
    let bearer = format!("Bearer {token}");
    let intrusion = app
        .request_as(&app.anonymous, &[("Authorization", &bearer)], Method::PUT, &choice, Some(r#"{"email": true}"#))
        .await;
    assert_eq!(intrusion.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_category_in_use_needs_force_and_each_dropped_choice_is_recorded() {
    let app = scoped_app().await;
    create_category(&app, json!({"key": "promo", "name": "Promotions"})).await;
    let user = app.register("promo@example.com").await;
    let choice = format!("/api/v1/users/{user}/preferences/categories/promo");
    assert_eq!(app.send(Method::PUT, &choice, &json!({"email": false})).await.status, 200);
    // Read once, so that the representation is cached when the category goes.
    assert_eq!(
        app.get(&format!("/api/v1/users/{user}")).await.body["data"]["category_choices"]["promo"]["email"],
        false
    );

    let in_use = as_key(&app, OPS_KEY, Method::DELETE, "/api/v1/categories/promo", None).await;
    assert_eq!((in_use.status, in_use.body["error"].as_str()), (409, Some("category_in_use")), "{}", in_use.body);
    in_use.assert_envelope();
    let bad_force = as_key(&app, OPS_KEY, Method::DELETE, "/api/v1/categories/promo?force=maybe", None).await;
    assert_eq!(bad_force.status, 400, "{}", bad_force.body);

    let forced = as_key(&app, OPS_KEY, Method::DELETE, "/api/v1/categories/promo?force=true", None).await;
    assert_eq!(forced.status, 204, "{}", forced.body);
    assert_eq!(app.get(&format!("/api/v1/users/{user}")).await.body["data"]["category_choices"], json!({}));
    assert_eq!(app.get(&format!("/api/v1/users/{user}/preferences")).await.body["data"]["categories"], json!({}));

    let rows = history(&app, &user, "limit=1").await;
    assert_eq!(rows[0]["field"], "categories.promo.email");
    assert_eq!((&rows[0]["old"], &rows[0]["new"]), (&json!(false), &Value::Null));
    assert_eq!(rows[0]["actor"], json!({"kind": "service", "name": "ops"}));

    // A category created again under the same key starts from its own defaults.
    create_category(&app, json!({"key": "promo", "name": "Promotions", "default": {"email": true, "push": true}}))
        .await;
    let setting = app.get(&format!("/api/v1/users/{user}/preferences")).await;
    assert_eq!(setting.body["data"]["categories"]["promo"], json!({"email": true, "push": true, "source": "default"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn eligibility_in_a_category_follows_the_order_of_reasons() {
    let app = TestApp::spawn().await;
    create_category(&app, json!({"key": "marketing", "name": "Marketing", "default": {"email": true, "push": false}}))
        .await;
    create_category(&app, json!({"key": "security", "name": "Security", "critical": true})).await;
    let user = app.register("ordered@example.com").await;
    let noon = "at=2026-06-01T12:00:00Z";

    // Nowhere to send beats everything, a critical category included.
    let nowhere = eligibility(&app, &user, &format!("channel=push&category=security&{noon}")).await;
    assert_eq!(reason(&nowhere), (false, "no_active_device".to_owned()));

    app.send(Method::POST, &format!("/api/v1/users/{user}/devices"), &json!({"token": "phone-1", "platform": "ios"}))
        .await;
    let by_default = eligibility(&app, &user, &format!("channel=push&category=marketing&{noon}")).await;
    assert_eq!(reason(&by_default), (false, "category_opted_out".to_owned()));
    assert_eq!(by_default.body["data"]["category"], "marketing");
    assert!(by_default.body["data"]["targets"].is_null());
    let without_category = eligibility(&app, &user, &format!("channel=push&{noon}")).await;
    assert_eq!(reason(&without_category), (true, "ok".to_owned()));

    let choice = format!("/api/v1/users/{user}/preferences/categories/marketing");
    app.send(Method::PUT, &choice, &json!({"push": true})).await;
    let chosen = eligibility(&app, &user, &format!("channel=push&category=marketing&{noon}")).await;
    assert_eq!(reason(&chosen), (true, "ok".to_owned()));
    assert_eq!(chosen.body["data"]["targets"], json!({"tokens": [{"token": "phone-1", "platform": "ios"}]}));

    // Quiet hours hold a category back, but not a critical one.
    let preferences = format!("/api/v1/users/{user}/preferences");
    app.send(Method::PUT, &preferences, &json!({"quiet_hours_start": "11:00", "quiet_hours_end": "13:00"})).await;
    let quiet = eligibility(&app, &user, &format!("channel=push&category=marketing&{noon}")).await;
    assert_eq!(reason(&quiet), (false, "quiet_hours".to_owned()));
    assert_eq!(quiet.body["data"]["next_allowed_at"], "2026-06-01T13:00:00Z");
    let critical = eligibility(&app, &user, &format!("channel=push&category=security&{noon}")).await;
    assert_eq!(reason(&critical), (true, "critical".to_owned()));
    assert!(critical.body["data"]["targets"]["tokens"].is_array());

    // The global switch comes before the category; a critical category ignores both.
    app.send(Method::PUT, &preferences, &json!({"push": false})).await;
    let opted_out = eligibility(&app, &user, &format!("channel=push&category=marketing&{noon}")).await;
    assert_eq!(reason(&opted_out), (false, "opted_out".to_owned()));
    let still_critical = eligibility(&app, &user, &format!("channel=push&category=security&{noon}")).await;
    assert_eq!(reason(&still_critical), (true, "critical".to_owned()));

    let unknown = eligibility(&app, &user, "channel=push&category=nope").await;
    assert_eq!((unknown.status, unknown.body["error"].as_str()), (404, Some("category_not_found")));
    let bad = eligibility(&app, &user, "channel=push&category=Not%20A%20Slug").await;
    assert_eq!((bad.status, &bad.body["details"][0]["field"]), (422, &json!("category")));

    // Bulk: one decision per id in the category; an unknown category is named per id.
    let missing = "00000000-0000-4000-8000-000000000000";
    let bulk = app
        .send(
            Method::POST,
            "/api/v1/eligibility",
            &json!({"channel": "email", "category": "marketing", "at": "2026-06-01T12:00:00Z", "user_ids": [user, missing]}),
        )
        .await;
    assert_eq!(bulk.status, 200, "{}", bulk.body);
    let reasons: Vec<&str> =
        bulk.body["data"].as_array().unwrap().iter().map(|decision| decision["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["quiet_hours", "user_not_found"]);
    let unknown_bulk = app
        .send(
            Method::POST,
            "/api/v1/eligibility",
            &json!({"channel": "email", "category": "nope", "user_ids": [user, missing]}),
        )
        .await;
    assert_eq!(unknown_bulk.status, 200);
    for decision in unknown_bulk.body["data"].as_array().unwrap() {
        assert_eq!((&decision["allowed"], &decision["reason"]), (&json!(false), &json!("unknown_category")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_records_each_change_with_its_actor_and_request() {
    let app = TestApp::spawn_with(&[("TRUST_INTERNAL_NETWORK", "true")]).await;
    let user = app.register("history@example.com").await;
    let registration: Vec<String> = history(&app, &user, "").await.iter().map(|row| row["field"].to_string()).collect();
    assert_eq!(
        registration,
        ["\"contact.email\"", "\"preferences.timezone\"", "\"preferences.push\"", "\"preferences.email\""],
        "newest first"
    );

    let token = app.login("history@example.com", "StrongPass123!").await;
    let bearer = format!("Bearer {token}");
    let body =
        r#"{"push": false, "timezone": "Africa/Lagos", "quiet_hours_start": "22:00", "quiet_hours_end": "06:00"}"#;
    let own = app
        .request_as(
            &app.anonymous,
            &[("Authorization", &bearer), ("X-Request-Id", "req-own-change-1")],
            Method::PUT,
            &format!("/api/v1/users/{user}/preferences"),
            Some(body),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    let rows = history(&app, &user, "limit=3").await;
    let changes: Vec<(Value, Value, Value)> =
        rows.iter().map(|row| (row["field"].clone(), row["old"].clone(), row["new"].clone())).collect();
    assert_eq!(
        changes,
        [
            (json!("preferences.timezone"), json!("UTC"), json!("Africa/Lagos")),
            (json!("preferences.quiet_hours"), Value::Null, json!("22:00-06:00")),
            (json!("preferences.push"), json!(true), json!(false)),
        ]
    );
    for row in &rows {
        assert_eq!(row["actor"], json!({"kind": "user", "name": user}));
        assert_eq!(row["request_id"], "req-own-change-1");
    }
    // The name is not a consent; the phone is.
    app.send(Method::PATCH, &format!("/api/v1/users/{user}"), &json!({"name": "Renamed", "phone": "+2348012345678"}))
        .await;
    let contact = &history(&app, &user, "limit=1").await[0];
    assert_eq!((&contact["field"], &contact["new"]), (&json!("contact.phone"), &json!("+2348012345678")));
    assert_eq!(contact["actor"]["kind"], "service");

    // A device, deactivated by a caller the network vouches for (the seed's push sender).
    let device = app
        .send(
            Method::POST,
            &format!("/api/v1/users/{user}/devices"),
            &json!({"token": "dead-token", "platform": "android"}),
        )
        .await;
    let device_id = device.body["data"]["id"].as_str().unwrap().to_owned();
    let deactivated = app
        .request_as(
            &app.anonymous,
            &[],
            Method::PUT,
            &format!("/api/v1/users/{user}/devices/dead-token/deactivate"),
            None,
        )
        .await;
    assert_eq!(deactivated.status, 200, "{}", deactivated.body);
    let rows = history(&app, &user, "limit=2").await;
    let field = format!("devices.{device_id}.active");
    assert_eq!((&rows[0]["field"], &rows[0]["old"], &rows[0]["new"]), (&json!(field), &json!(true), &json!(false)));
    assert_eq!(rows[0]["actor"], json!({"kind": "trusted", "name": "internal-network"}));
    assert_eq!((&rows[1]["field"], &rows[1]["old"], &rows[1]["new"]), (&json!(field), &Value::Null, &json!(true)));

    // Only the user itself or a service with `consent.read` reads it: not a caller the
    // network vouches for (it holds `users.read`, and a history holds past addresses).
    let trusted =
        app.request_as(&app.anonymous, &[], Method::GET, &format!("/api/v1/users/{user}/consent-history"), None).await;
    assert_eq!(trusted.status, 403, "{}", trusted.body);
    assert!(trusted.body["message"].as_str().unwrap().contains("consent.read"), "{}", trusted.body);
    app.register("other@example.com").await;
    let other = app.login("other@example.com", "StrongPass123!").await;
    let other_bearer = format!("Bearer {other}");
    let path = format!("/api/v1/users/{user}/consent-history");
    let refused = app.request_as(&app.anonymous, &[("Authorization", &other_bearer)], Method::GET, &path, None).await;
    assert_eq!(refused.status, 403);
    let own_read = app.request_as(&app.anonymous, &[("Authorization", &bearer)], Method::GET, &path, None).await;
    assert_eq!(own_read.status, 200);
    for bad in ["limit=0", "limit=101", "cursor=abc", "cursor=-1", "limit=x"] {
        let reply = app.get(&format!("{path}?{bad}")).await;
        assert!(matches!(reply.status, 400 | 422), "{bad}: {}", reply.status);
        reply.assert_envelope();
    }

    // A registration without a credential of its own (the gateway forwards the app's, from
    // the network it vouches for) is the user registering itself.
    let body = r#"{"name": "Self", "email": "self@example.com", "password": "StrongPass123!"}"#;
    let registered = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/users", Some(body)).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let newcomer = registered.body["data"]["id"].as_str().unwrap().to_owned();
    for row in history(&app, &newcomer, "").await {
        assert_eq!(row["actor"], json!({"kind": "user", "name": newcomer}), "{row}");
    }

    // Erasure wins: the history goes with the user.
    assert_eq!(app.request(Method::DELETE, &format!("/api/v1/users/{user}"), None).await.status, 204);
    let gone = app.get(&path).await;
    assert_eq!((gone.status, gone.body["error"].as_str()), (404, Some("user_not_found")));
    let rows_left =
        app.db.count(&format!("SELECT count(*) AS count FROM consent_history WHERE user_id = '{user}'")).await.unwrap();
    assert_eq!(rows_left, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_changes_leave_one_consistent_chain_in_the_history() {
    let app = TestApp::spawn().await;
    let user = app.register("concurrent@example.com").await;
    let zones = [
        "Africa/Lagos",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Tokyo",
        "Australia/Sydney",
        "Europe/London",
        "America/Chicago",
        "Asia/Kolkata",
        "Europe/Paris",
        "America/Sao_Paulo",
        "Africa/Nairobi",
        "Asia/Dubai",
        "Europe/Madrid",
        "America/Denver",
        "Asia/Singapore",
        "Pacific/Auckland",
        "Europe/Rome",
        "Asia/Seoul",
        "America/Toronto",
        "Africa/Cairo",
    ];
    let path = format!("/api/v1/users/{user}/preferences");
    let writes = zones.iter().enumerate().map(|(index, zone)| {
        let (app, path) = (&app, &path);
        async move { app.send(Method::PUT, path, &json!({"timezone": zone, "email": index % 2 == 0})).await }
    });
    for reply in futures_util::future::join_all(writes).await {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // Read it all back page by page, newest first.
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("limit=7&cursor={cursor}"),
            None => "limit=7".to_owned(),
        };
        let reply = app.get(&format!("/api/v1/users/{user}/consent-history?{query}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        rows.extend(reply.body["data"]["records"].as_array().unwrap().iter().cloned());
        match reply.body["data"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let times: Vec<OffsetDateTime> = rows.iter().map(|row| parse_time(&row["at"])).collect();
    assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "newest first: {times:?}");

    for field in ["preferences.timezone", "preferences.email"] {
        let chain: Vec<&Value> = rows.iter().filter(|row| row["field"] == field).collect();
        // Newest first: each row's old value is the next older row's new value.
        for pair in chain.windows(2) {
            assert_eq!(pair[0]["old"], pair[1]["new"], "{field}: a broken chain {pair:?}");
        }
        assert!(chain.last().unwrap()["old"].is_null(), "{field} starts at registration");
    }
    let zone_rows = rows.iter().filter(|row| row["field"] == "preferences.timezone").count();
    assert_eq!(zone_rows, 21, "registration and every one of the 20 distinct zones");
    let final_zone = app.get(&path).await.body["data"]["timezone"].clone();
    assert_eq!(rows.iter().find(|row| row["field"] == "preferences.timezone").unwrap()["new"], final_zone);
}

#[tokio::test(flavor = "multi_thread")]
async fn eligibility_as_recorded_answers_from_the_history_at_known_times() {
    let app = TestApp::spawn().await;
    create_category(&app, json!({"key": "digest", "name": "Digest"})).await;
    let user = app.register("recorded@example.com").await;
    let preferences = format!("/api/v1/users/{user}/preferences");
    app.send(Method::POST, &format!("/api/v1/users/{user}/devices"), &json!({"token": "phone-r", "platform": "web"}))
        .await;

    // A sequence of changes; the time of each is the one its history row records.
    let mut change_times = Vec::new();
    let mut record = async |method: Method, path: &str, body: Value| {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(app.send(method, path, &body).await.status, 200);
        let newest = history(&app, &user, "limit=1").await;
        change_times.push(parse_time(&newest[0]["at"]));
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    record(Method::PUT, &preferences, json!({"push": false})).await;
    record(Method::PUT, &preferences, json!({"push": true})).await;
    // A window that holds every instant of the test, whatever the hour of the run.
    record(Method::PUT, &preferences, json!({"quiet_hours_start": "00:00", "quiet_hours_end": "23:59"})).await;
    record(Method::PUT, &format!("{preferences}/categories/digest"), json!({"push": false})).await;
    let registered = parse_time(&app.get(&format!("/api/v1/users/{user}")).await.body["data"]["created_at"]);

    let half_ms = time::Duration::milliseconds(15);
    let ask = |at: OffsetDateTime, extra: &str| {
        let query = format!("channel=push&as_recorded=true&at={}{extra}", format_time(at).replace('+', "%2B"));
        let (app, user) = (&app, &user);
        async move { eligibility(app, user, &query).await }
    };
    // (instant, extra query, expected decision, the change the answer rests on)
    let expectations = [
        (change_times[0] - half_ms, "", (true, "ok"), None),
        (change_times[0] + half_ms, "", (false, "opted_out"), Some(change_times[0])),
        (change_times[1] + half_ms, "", (true, "ok"), Some(change_times[1])),
        (change_times[2] + half_ms, "", (false, "quiet_hours"), Some(change_times[2])),
        (change_times[2] + half_ms, "&category=digest", (false, "quiet_hours"), Some(change_times[2])),
        (change_times[3] + half_ms, "&category=digest", (false, "category_opted_out"), Some(change_times[3])),
    ];
    for (at, extra, (allowed, expected_reason), rests_on) in &expectations {
        let reply = ask(*at, extra).await;
        assert_eq!(reason(&reply), (*allowed, (*expected_reason).to_owned()), "at {at} {extra}: {}", reply.body);
        let data = &reply.body["data"];
        assert_eq!(data["as_recorded"], true);
        assert!(data["targets"].is_null(), "an as-recorded answer names no targets");
        let since = parse_time(&data["recorded_state_since"]);
        assert!(registered <= since && since <= *at, "the state it rests on precedes the instant");
        if let Some(change) = rests_on {
            assert_eq!(since, *change, "an answer after a change rests on exactly that change");
        }
    }
    // Today's answer without as_recorded agrees with the last one.
    let now = eligibility(&app, &user, "channel=push&category=digest").await;
    assert_eq!(reason(&now), (false, "category_opted_out".to_owned()));

    let before = ask(registered - time::Duration::seconds(5), "").await;
    assert_eq!((before.status, before.body["error"].as_str()), (404, Some("not_yet_registered")));
    let future = ask(OffsetDateTime::now_utc() + time::Duration::hours(1), "").await;
    assert_eq!((future.status, &future.body["details"][0]["field"]), (422, &json!("at")));
    let without_instant = eligibility(&app, &user, "channel=push&as_recorded=true").await;
    assert_eq!(without_instant.status, 422);
}
